"""Reliability of the lifelong job (``system: gcg``, issue 26's bar): a diverging fit never becomes the parameters
(training or online adaptation) and persistent divergence stops the run in one line; a resume refuses a config
edited since the run started; sizes no machine holds are refused before any work; a damaged run folder is one
line for ``metadapt report``. Tiny configs on the real code path (the real maze, model, planner and stream)."""

from __future__ import annotations

import copy
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from metadapt.cli import main
from metadapt.data.stream import FrameStream
from metadapt.experiments.reporting.lifelong import read_steps
from metadapt.meta.lifelong import LifelongLearner, LifelongSettings
from metadapt.models.latent_image import LatentImageModel

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "meta_gcg_maze.yaml")
# The brief's tiny run: seconds on one core (60 steps; training from step 10, every 4th step).
TINY = ["env.steps=60", "meta.window=10", "meta.meta_batch=1", "meta.batch=2", "meta.sequence_length=2",
        "adapt.window=4", "adapt.every=4", "planner.samples=4", "planner.iterations=1", "planner.horizon=2",
        "model.preset=cpu", "eval.video_steps=0", "eval.rate_window=5", "train.checkpoint_every=10",
        "model.widths={encoder_channels: [2, 2, 2, 2], hidden: 2, reward_channels: 2, reward_hidden: [4]}"]


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str]]:
    """``metadapt ARGV`` in-process: (exit code, the lines on stderr)."""
    code = main(list(argv))
    return code, capsys.readouterr().err.strip().splitlines()


def _finite(params: dict[str, torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in params.values())


# -- A. divergence --------------------------------------------------------------------------------------------------
def _learner(meta: bool, **settings: float) -> tuple[LifelongLearner, FrameStream]:
    """A tiny model's learner and a stream of 40 random transitions (64 x 64 frames, 2 stacked, 4 actions)."""
    model = LatentImageModel.from_preset("cpu", frame_stack=2, num_actions=4, image_size=64, reward_low=-1.0,
                                         reward_high=1.0, encoder_channels=(2, 2, 2, 2), hidden=2,
                                         reward_channels=2, reward_hidden=(4,))
    params = model.init_params(torch.Generator().manual_seed(0))
    s = LifelongSettings(meta=meta, adapt=True, inner_steps=1, first_order=True, meta_batch=1, batch=2, window=10,
                         sequence_length=2, adapt_window=4, adapt_steps=1, **settings)
    g = torch.Generator().manual_seed(1)
    stream = FrameStream(2, (64, 64))
    stream.begin(torch.zeros(2, 64, 64, dtype=torch.uint8))
    frame = torch.zeros(2, 64, 64, dtype=torch.uint8)
    for _ in range(40):
        frame = torch.stack([frame[-1], torch.randint(0, 256, (64, 64), generator=g, dtype=torch.uint8)])
        stream.append(int(torch.randint(4, (), generator=g)), float(torch.randint(-1, 2, (), generator=g)), frame)
    return LifelongLearner(model.loss, params, s), stream


def _copy(params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in params.items()}


@pytest.mark.parametrize("meta", [True, False], ids=["meta_gcg", "gcg"])
def test_a_step_with_a_nonfinite_loss_is_refused_and_leaves_theta_and_adam_as_they_were(meta: bool) -> None:
    learner, stream = _learner(meta)
    learner.train_step(stream, torch.Generator().manual_seed(2))  # Adam has moments now
    theta, adam = _copy(learner.theta), copy.deepcopy(learner.state_dict()["maml"]["optimizer"])
    stream._rewards[: len(stream)] = math.nan  # every sampled sequence's loss is NaN
    loss = learner.train_step(stream, torch.Generator().manual_seed(3))
    assert not math.isfinite(loss)
    assert all(torch.equal(learner.theta[k], theta[k]) for k in theta)
    after = learner.state_dict()["maml"]["optimizer"]["state"]
    assert after.keys() == adam["state"].keys() and all(
        torch.equal(after[i][name], adam["state"][i][name]) for i in adam["state"] for name in after[i])
    assert (learner.refused_steps, learner.refused_in_a_row) == (1, 1)


def test_an_outer_step_that_would_make_theta_nonfinite_is_refused_and_a_good_one_ends_the_streak() -> None:
    learner, stream = _learner(False, outer_lr=1e30)
    g = torch.Generator().manual_seed(2)
    for _ in range(4):  # 1e30-sized steps: theta overflows, or the loss of the next batch does
        learner.train_step(stream, g)
        assert _finite(learner.theta)
    assert learner.refused_steps >= 3 and learner.refused_in_a_row >= 3
    state = learner.state_dict()
    assert state["refused"] == {"total": learner.refused_steps, "in_a_row": learner.refused_in_a_row}
    sane, _ = _learner(False)
    state["maml"] = sane.state_dict()["maml"]
    sane.load_state_dict(state)  # the counts travel with a checkpoint
    assert (sane.refused_steps, sane.refused_in_a_row) == (learner.refused_steps, learner.refused_in_a_row)
    assert math.isfinite(sane.train_step(stream, torch.Generator().manual_seed(5)))
    assert (sane.refused_steps, sane.refused_in_a_row) == (learner.refused_steps, 0)


def test_a_nonfinite_adaptation_is_never_acted_with_and_is_counted() -> None:
    learner, stream = _learner(True, inner_lr=1e30)
    assert learner.adapt(stream) is None
    assert learner.adapt_refused and learner.refused_adaptations == 1
    acting = learner.acting_params()
    assert all(torch.equal(acting[k], learner.theta[k]) for k in acting)
    sane, _ = _learner(True)
    assert sane.adapt(stream) is not None and not sane.adapt_refused and sane.refused_adaptations == 0


def test_a_persistently_diverging_run_stops_with_one_line_and_writes_no_model(tmp_path: Path, capsys) -> None:
    out = tmp_path / "nan"
    code, err = _cli(capsys, "train", CONFIG, *TINY, "meta.outer_lr=1e30", "meta.inner_lr=1e30", "--out", str(out),
                     "--quiet")
    assert code == 2 and len(err) == 1, err
    assert "diverged" in err[0] and "meta.outer_lr" in err[0] and "meta.inner_lr" in err[0], err
    assert not (out / "model.pt").exists() and not (out / "summary.json").exists()
    state = torch.load(out / "checkpoints" / "state.pt", weights_only=True)
    assert _finite(state["learner"]["maml"]["params"])
    assert all(_finite(p) for p in (state["learner"]["adapted"], *state["pending"].values()))
    cols = read_steps(out / "steps.csv")
    assert np.nansum(cols["train_refused"]) >= 10  # the refused optimizer steps in the step log


def test_nonfinite_adaptations_are_refused_and_the_run_acts_with_theta(tmp_path: Path, capsys) -> None:
    """gcg_adapt trains theta with Adam (sane) and adapts it with the inner rate (1e30: every adaptation explodes)."""
    out = tmp_path / "adapt"
    code, err = _cli(capsys, "train", CONFIG, *TINY, "method=gcg_adapt", "meta.inner_lr=1e30", "--out", str(out),
                     "--quiet")
    assert code == 0, err
    cols = read_steps(out / "steps.csv")
    adapted = np.arange(60) % 4 == 3  # adapt.every = 4
    assert cols["adapt_refused"][adapted].sum() >= 10 and cols["adapt_refused"][~adapted].sum() == 0
    planned = cols["explored"] == 0
    assert np.isfinite(cols["plan_return"][planned]).all()  # theta, never the non-finite adaptation
    assert _finite(torch.load(out / "model.pt", weights_only=True)["params"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["adaptations_refused"] == cols["adapt_refused"].sum() and summary["train_steps_refused"] == 0
    assert "refused" in (out / "report.md").read_text()


# -- B. resume ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run of 30 steps, checkpointed every 10."""
    out = tmp_path_factory.mktemp("gcg_rel") / "run"
    assert main(["train", CONFIG, *TINY, "env.steps=30", "--out", str(out), "--quiet"]) == 0
    return out


def _edited(src: Path, dst: Path, key: str, value: object) -> Path:
    shutil.copytree(src, dst)
    cfg = yaml.safe_load((dst / "config.yaml").read_text())
    *path, last = key.split(".")
    node = cfg
    for p in path:
        node = node[p]
    node[last] = value
    (dst / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return dst


@pytest.mark.parametrize(("key", "value"), [
    ("meta.outer_lr", 0.5), ("env.steps", 40), ("planner.horizon", 3), ("model.widths.hidden", 3), ("seed", 7),
])
def test_resume_refuses_an_edit_that_changes_the_results(finished: Path, tmp_path: Path, capsys, key: str,
                                                         value: object) -> None:
    run = _edited(finished, tmp_path / "run", key, value)
    before = (run / "checkpoints" / "state.pt").read_bytes()
    code, err = _cli(capsys, "train", "--resume", str(run), "--quiet")
    assert code == 2 and len(err) == 1 and key in err[0] and "Traceback" not in err[0], err
    assert (run / "checkpoints" / "state.pt").read_bytes() == before


def test_resume_takes_edits_that_do_not_change_the_results(finished: Path, tmp_path: Path, capsys) -> None:
    run = _edited(finished, tmp_path / "run", "train.log_every", 7)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["name"], cfg["eval"]["rate_window"] = "renamed", 6
    (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    code, err = _cli(capsys, "train", "--resume", str(run), "--quiet")
    assert code == 0, err
    assert (run / "steps.csv").read_text() == (finished / "steps.csv").read_text()


# -- C. memory ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("override", "key"), [
    ("planner.samples=1000000000000", "planner.samples"),
    ("env.steps=1000000000000", "env.steps"),
    ("model.widths={hidden: 1000000}", "model.widths"),
    ("meta.batch=1000000000", "meta.batch"),
])
@pytest.mark.parametrize("command", ["check", "train", "run"])
def test_sizes_no_machine_holds_are_refused_before_any_work(tmp_path: Path, capsys, command: str, override: str,
                                                            key: str) -> None:
    out = tmp_path / "big"
    extra = [] if command == "check" else ["--out", str(out), "--quiet"]
    code, err = _cli(capsys, command, CONFIG, override, *extra)
    assert code == 2 and len(err) == 1 and "memory" in err[0] and key in err[0], err
    assert not out.exists()


def test_the_shipped_configs_fit_in_memory(capsys) -> None:
    for name in ("meta_gcg_maze.yaml", "gcg_maze.yaml", "oracle_maze.yaml", "meta_gcg_maze_paper.yaml"):
        code, err = _cli(capsys, "check", str(ROOT / "configs" / name))
        assert code == 0, (name, err)


# -- D. reports of damaged run folders ------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "content"), [
    ("steps.csv", None),  # the first 200 bytes: cut inside a row
    ("steps.csv", b""),
    ("steps.csv", b"\x00\xff\xfe garbage\n1,2\n"),
    ("steps.csv", b"step,reward,rotation,x,episode,explored,plan_return,predicted_reward,train_loss,ce_before,"
                  b"ce_after\r\n"),
    ("steps.csv", b"step,reward\r\n0,1\r\n"),
    ("steps.csv", b"step,reward,rotation,x,episode,explored,plan_return,predicted_reward,train_loss,ce_before,"
                  b"ce_after\r\n0,one,0,0,0,0,,,,,\r\n"),
    ("summary.json", b""),
    ("summary.json", b"{\"j_average\": "),
    ("summary.json", b"[1, 2]"),
], ids=["steps-cut", "steps-empty", "steps-garbage", "steps-no-rows", "steps-few-columns", "steps-not-a-number",
        "summary-empty", "summary-cut", "summary-not-an-object"])
def test_report_of_a_damaged_run_folder_is_one_line_naming_the_file(finished: Path, tmp_path: Path, capsys,
                                                                     name: str, content: bytes | None) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    path = run / name
    path.write_bytes(path.read_bytes()[:200] if content is None else content)
    code, err = _cli(capsys, "report", str(run))
    assert code == 2 and len(err) == 1 and name in err[0] and "Traceback" not in err[0], err


def test_report_of_an_intact_run_folder_still_works(finished: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    (run / "report.md").unlink()
    code, err = _cli(capsys, "report", str(run))
    assert code == 0 and (run / "report.md").is_file(), err
