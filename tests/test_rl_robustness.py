"""``system: rl`` against bad input and non-finite numbers: policy checkpoints that are damaged or diverged, sizes
that cannot fit, run folders that are not an rl run's, and adaptation or meta-training steps that go to NaN.

Bad input is one line and exit code 2; a diverged evaluation is a result (reported as diverged, exit 0); a
diverged meta-training step is refused and the policy kept."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from metadapt.cli import main
from metadapt.errors import MESSAGE_LIMIT
from metadapt.experiments.configuration.config import load_config
from metadapt.experiments.jobs import rl
from metadapt.models.policy import GaussianMLPPolicy
from metadapt.rl.maml_rl import MAMLRL, episode_advantages, policy_gradient_step
from metadapt.rl.sampler import sample_tasks

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "maml_rl_navigation.yaml")
TINY = ["meta.iterations=2", "meta.meta_batch=2", "meta.episodes=2", "policy.hidden=[8]", "eval.tasks=2",
        "eval.episodes=2", "eval.steps=2", "baselines.oracle=false", "baselines.random=false",
        "baselines.pretrained=false"]


def _fails(capsys, argv: list[str], needle: str) -> str:
    """Run the command line in-process: exit 2 and one short line on stderr holding ``needle``."""
    got = main(argv)
    err = capsys.readouterr().err.strip()
    assert got == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert len(err) <= MESSAGE_LIMIT + len("metadapt: ") and needle in err, err
    return err


def _strict_json(path: Path) -> dict:
    def refuse(name: str) -> None:
        raise ValueError(f"{path} holds {name}")

    return json.loads(path.read_text(), parse_constant=refuse)


# -- B: policy checkpoints ----------------------------------------------------------------------------------------
def _params(hidden: tuple[int, ...] = (8,), fill: float | None = None) -> dict[str, torch.Tensor]:
    params = GaussianMLPPolicy(2, 2, hidden).init_params(torch.Generator().manual_seed(0))
    return {k: torch.full_like(v, fill) for k, v in params.items()} if fill is not None else params


POLICY_FILES = {
    "nan parameters": ({"maml": {"params": _params(fill=math.nan), "rates": 0.5}}, "non-finite"),
    "infinite rate": ({"maml": {"params": _params(), "rates": math.inf}}, "inner rate"),
    "nan learned rates": ({"maml": {"params": _params(), "rates": _params(fill=math.nan)}}, "non-finite"),
    "methods a list": ([1, 2, 3], "not a mapping of trained policies"),
    "a policy that is a number": ({"maml": 3}, "not a mapping of parameters"),
    "other sizes": ({"maml": {"params": _params((16,)), "rates": 0.5}}, "do not match"),
    "unknown method": ({"mystery": {"params": _params(), "rates": 0.5}}, "mystery"),
}


@pytest.mark.parametrize("case", POLICY_FILES)
def test_a_damaged_or_diverged_policy_checkpoint_is_refused_at_check_and_train(tmp_path, capsys, case):
    methods, needle = POLICY_FILES[case]
    path = tmp_path / "model.pt"
    rl.save_policies(path, load_config(CONFIG, TINY), methods, 2)  # the job's own writer
    _fails(capsys, ["check", CONFIG, *TINY, f"policy.checkpoint={path}"], needle)
    out = tmp_path / "run"
    err = _fails(capsys, ["train", CONFIG, *TINY, f"policy.checkpoint={path}", "--out", str(out), "--quiet"], needle)
    assert str(path) in err and not (out / "summary.json").exists()


def test_a_resumed_run_whose_state_holds_a_non_finite_policy_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", CONFIG, *TINY, "--out", str(out), "--quiet"]) == 0
    path = out / "checkpoints" / "state.pt"
    state = torch.load(path, weights_only=True)
    state["results"]["maml"]["params"]["log_std"][0] = math.inf
    torch.save(state, path)
    _fails(capsys, ["train", "--resume", str(out), "--quiet"], "state.pt")


# -- D: sizes ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("override, needle", [
    (f"policy.hidden=[{10**11}]", "policy.hidden"),
    (f"meta.meta_batch={10**7}", "meta.meta_batch"),
    (f"eval.tasks={10**9}", "eval.tasks"),
])
def test_rl_sizes_that_cannot_fit_are_refused_before_work_starts(tmp_path, capsys, override, needle):
    _fails(capsys, ["check", CONFIG, override], needle)
    out = tmp_path / "run"
    _fails(capsys, ["train", CONFIG, override, "--out", str(out), "--quiet"], "memory")
    assert not out.exists()  # nothing started, nothing written


def test_the_sub_environments_are_part_of_the_estimate(capsys):
    """Each MuJoCo sub-environment holds its own model and data: ten million of them cannot exist."""
    _fails(capsys, ["check", str(ROOT / "configs" / "maml_rl_cheetah_dir.yaml"), f"env.num_envs={10**7}"],
           "env.num_envs")


def test_check_builds_one_sub_environment_not_the_runs_vector_env(capsys, monkeypatch):
    sizes = []
    real = rl.make_vector_env

    def recorded(env_id, num_envs, *args, **kwargs):
        sizes.append(num_envs)
        return real(env_id, num_envs, *args, **kwargs)

    monkeypatch.setattr(rl, "make_vector_env", recorded)
    assert main(["check", CONFIG, "meta.meta_batch=1000"]) == 0  # the run's vector env: 1000 x 20 points
    assert sizes == [1, 1]  # the task family and the oracle's


# -- E: reports of folders that are not an rl run's --------------------------------------------------------------
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rl") / "run"
    assert main(["train", CONFIG, *TINY, "eval.curve_every=1", "eval.curve_tasks=2", "--out", str(out),
                 "--quiet"]) == 0
    return out


def test_report_of_a_folder_that_says_rl_but_holds_no_rl_run_is_one_line(tmp_path, capsys):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "config.yaml").write_text("system: rl\n")
    _fails(capsys, ["report", str(foreign)], "summary.json")  # nothing but the config
    (foreign / "summary.json").write_text(json.dumps({"mean_return": 1.0, "returns": [1.0]}))  # a model-based run's
    (foreign / "metrics.csv").write_text("step,return,task_id\n0,1,0\n")
    _fails(capsys, ["report", str(foreign)], f"{foreign / 'summary.json'}")


@pytest.mark.parametrize("name, damage", [
    ("summary.json", lambda text: text[: len(text) // 2]),  # truncated
    ("summary.json", lambda text: json.dumps({**json.loads(text), "methods": {"maml": {"0": 3}}})),
    ("heldout.csv", lambda text: text[: text.index("\n", text.index("\n") + 1) + 20]),  # cut inside a row
    ("metrics.csv", lambda text: text[: text.index("\n") + 15]),
    ("metrics.csv", lambda text: "step,return,task_id\n0,1,0\n"),  # a model-based run's
    ("timing.json", lambda text: json.dumps({"maml": 3})),
])
def test_report_of_an_rl_run_with_a_damaged_file_names_the_file(finished_run, tmp_path, capsys, name, damage):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / name).write_text(damage((run / name).read_text()))
    _fails(capsys, ["report", str(run)], str(run / name))


def test_report_of_an_intact_rl_run_still_reads_its_held_out_curve(finished_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    assert main(["report", str(run)]) == 0, capsys.readouterr().err
    assert "Held-out return during training" in (run / "report.md").read_text()


# -- H: non-finite adaptation and meta-training steps ------------------------------------------------------------
def _spy_finite_sampling(monkeypatch) -> list[bool]:
    """Record, for every call of the rl job's sampler, whether the parameters it acts with are finite."""
    finite = []
    real = rl.sample_episodes

    def spy(envs, policy, params, *args, **kwargs):
        finite.append(all(bool(torch.isfinite(v).all()) for v in params.values()))
        return real(envs, policy, params, *args, **kwargs)

    monkeypatch.setattr(rl, "sample_episodes", spy)
    return finite


def test_an_evaluation_whose_adaptation_diverges_ends_with_its_results(tmp_path, capsys, monkeypatch):
    finite = _spy_finite_sampling(monkeypatch)
    out = tmp_path / "rly"
    assert main(["run", CONFIG, "meta.iterations=1", "meta.meta_batch=2", "meta.episodes=2", "eval.tasks=2",
                 "eval.episodes=2", "eval.steps=2", "baselines.pretrained=false", "baselines.oracle=false",
                 "baselines.random=false", "eval.later_lr_scale=1e30", "--out", str(out), "--quiet"]) == 0, \
        capsys.readouterr().err
    assert finite and all(finite)  # no policy acted with a NaN or an infinity
    maml = _strict_json(out / "summary.json")["methods"]["maml"]
    assert all(maml[s]["mean"] is not None and maml[s]["nonfinite"] == 0 for s in ("0", "1"))
    assert maml["2"] == {"mean": None, "ci95": None, "nonfinite": 2, "per_task": [None, None]}
    assert "n/a (diverged on 2 of 2 tasks)" in (out / "report.md").read_text()


@pytest.mark.parametrize("override, needle", [
    ("eval.later_lr_scale=1e39", "eval.later_lr_scale"),
    ("meta.inner_lr=1e39", "meta.inner_lr"),
    ("eval.random_lr=1e39", "eval.random_lr"),
])
def test_an_evaluation_rate_beyond_float32_is_refused(capsys, override, needle):
    _fails(capsys, ["check", CONFIG, override], needle)


def test_a_ppo_rate_whose_first_adam_step_overflows_is_refused(capsys):
    _fails(capsys, ["check", CONFIG, "meta.outer=ppo", "meta.ppo_lr=1e38"], "meta.ppo_lr")


def test_a_diverged_task_is_sampled_with_a_placeholder_and_leaves_the_other_tasks_alone():
    cfg = load_config(CONFIG, [*TINY, "eval.episodes=3"])
    family = rl.TaskFamily(cfg)
    try:
        policy = rl.build_policy(cfg, family.obs_dim, family.action_space)
        tasks = sample_tasks(family.probe, 3, np.random.default_rng(0), "test")
        rows = [policy.init_params(torch.Generator().manual_seed(i)) for i in range(3)]
        clean = {k: torch.stack([r[k] for r in rows]) for k in rows[0]}
        broken = {k: v.clone() for k, v in clean.items()}
        broken["layers.0.weight"][1, 0, 0] = math.nan
        guarded = rl._GuardedSampler(cfg, family, policy)
        got = guarded(broken, tasks, 7)
        want = rl._GuardedSampler(cfg, family, policy)(clean, tasks, 7)
        for b in (0, 2):  # the same episodes and seeds as without the diverged task
            torch.testing.assert_close(got.obs[b], want.obs[b])
            torch.testing.assert_close(got.reward[b], want.reward[b])
        assert all(bool(torch.isfinite(t).all()) for t in (got.obs, got.act, got.reward))
        # and the next adaptation step: each task's own, the diverged one staying diverged
        settings = rl.settings(cfg)
        steps = [policy_gradient_step(policy, p, ep, episode_advantages(ep, settings), 0.5, True)
                 for p, ep in ((broken, got), (clean, want))]
        for k in clean:
            assert torch.equal(steps[0][k][[0, 2]], steps[1][k][[0, 2]]), k
        assert not all(bool(torch.isfinite(v[1]).all()) for v in steps[0].values())
        guarded(clean, tasks, 8)  # finite again: a diverged adaptation stays diverged
        assert [d.tolist() for d in guarded.diverged] == [[False, True, False]] * 2
        marked = guarded.mark(np.zeros((2, 3)))
        assert np.isnan(marked[:, 1]).all() and (marked[:, [0, 2]] == 0).all()
    finally:
        family.close()


def test_a_meta_iteration_whose_outer_step_diverges_is_refused_and_the_policy_kept(tmp_path, monkeypatch):
    """A NaN from the outer step (injected on the second iteration) is refused: the third iteration starts from the
    policy the second started from, the run goes on, and what it saves and reports is finite."""
    real = MAMLRL.outer_step
    entries: list[dict[str, torch.Tensor]] = []

    def faulty(self, rollouts):
        entries.append({k: v.detach().clone() for k, v in self.params.items()})
        info = real(self, rollouts)
        if len(entries) == 2:
            with torch.no_grad():
                self.params["layers.0.weight"][0, 0] = math.nan
        return info

    monkeypatch.setattr(MAMLRL, "outer_step", faulty)
    out = tmp_path / "run"
    assert main(["train", CONFIG, *TINY, "meta.iterations=4", "--out", str(out), "--quiet"]) == 0
    rows = [r.split(",") for r in (out / "metrics.csv").read_text().splitlines()]
    refused = rows[0].index("refused")
    assert [r[refused] for r in rows[1:]] == ["0", "1", "0", "0"]
    spread = rows[0].index("action_std")  # the refused iteration kept the policy, and so its spread
    assert rows[2][spread] == rows[1][spread] and float(rows[2][spread]) > 0
    assert all(torch.equal(entries[2][k], v) for k, v in entries[1].items())
    saved = torch.load(out / "model.pt", weights_only=True)["methods"]["maml"]["params"]
    assert all(bool(torch.isfinite(v).all()) for v in saved.values())
    assert _strict_json(out / "summary.json")["methods"]["maml"]["2"]["mean"] is not None
    assert "Meta-iterations refused" in (out / "report.md").read_text()


@pytest.mark.parametrize("overrides, needle", [
    (["meta.inner_lr=1e30"], "meta.inner_lr"),  # the inner step: adapted policies act with NaN
    (["meta.outer=ppo", "meta.ppo_lr=1e30"], "meta.ppo_lr"),  # the outer step
])
def test_persistent_divergence_stops_in_one_line_after_the_refused_iterations(tmp_path, capsys, overrides, needle):
    out = tmp_path / "run"
    _fails(capsys, ["train", CONFIG, *TINY, "meta.iterations=8", *overrides, "--out", str(out), "--quiet"],
           needle)
    rows = [r.split(",") for r in (out / "metrics.csv").read_text().splitlines()]
    refused = rows[0].index("refused")
    assert [r[refused] for r in rows[1:]] == ["1"] * rl.REFUSED_IN_A_ROW


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_device_cuda_without_a_gpu_is_one_line(tmp_path, capsys):
    _fails(capsys, ["check", CONFIG, "device=cuda"], "device")
    out = tmp_path / "run"
    _fails(capsys, ["train", CONFIG, *TINY, "device=cuda", "--out", str(out), "--quiet"], "device")
    assert not out.exists()
