"""Meta-GCG's lifelong job (seed 001): the run, its files, reproducibility, resume after SIGKILL, bad input, and
the lifelong metrics against hand-computed answers. Small configs on the real code path (the real maze, model,
planner and stream)."""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from tests.killing import kill_when

from metadapt.experiments.reporting.lifelong import (
    adaptation_losses,
    j_average,
    read_steps,
    recovery_steps,
    summarize,
    switch_steps,
)

ROOT = Path(__file__).resolve().parents[1]
TINY = {"encoder_channels": [4, 8, 8, 8], "hidden": 8, "reward_channels": 4, "reward_hidden": [16, 16]}


def small_config(tmp: Path, method: str = "meta_gcg", /, **changes: object) -> Path:
    cfg = {
        "system": "gcg", "name": f"t_{method}", "seed": 3, "threads": 1, "method": method,
        "env": {"id": "metadapt/RotatingMaze-v0", "steps": 120,
                "kwargs": {"mode": "lifelong", "frame_stack": 2,
                           "schedule": {"type": "alternating", "tasks": ["rot0", "rot90"], "period": 60}}},
        "model": {"preset": "cpu", "widths": TINY},
        "planner": {"samples": 16, "iterations": 2, "horizon": 3, "epsilon": 0.1},
        "meta": {"window": 40, "meta_batch": 2, "batch": 4, "sequence_length": 3, "inner_steps": 1,
                 "train_every": 2},
        "adapt": {"window": 6, "every": 6},
        "train": {"checkpoint_every": 40, "log_every": 1000},
        "eval": {"rate_window": 20, "after_switch": 20},
    }
    for key, value in changes.items():
        node = cfg
        *path, last = key.split(".")
        for p in path:
            node = node.setdefault(p, {})
        node[last] = value
    path = tmp / f"{method}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "metadapt.cli", *args], capture_output=True, text=True,
                          cwd=cwd or ROOT, timeout=600)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("gcg")
    out = {}
    for method in ("meta_gcg", "gcg", "gcg_adapt", "oracle"):
        run_dir = tmp / method
        r = cli("run", str(small_config(tmp, method)), "--out", str(run_dir), "--quiet")
        assert r.returncode == 0, r.stderr
        out[method] = run_dir
    return out


def test_a_run_writes_its_files_and_its_numbers_agree(runs: dict[str, Path]) -> None:
    for method, run_dir in runs.items():
        for name in ("config.yaml", "steps.csv", "summary.json", "model.pt", "report.md", "j_average.png",
                     "checkpoints/state.pt"):
            assert (run_dir / name).is_file(), (method, name)
        cols = read_steps(run_dir / "steps.csv")
        assert cols["step"].tolist() == list(range(120))
        summary = yaml.safe_load((run_dir / "summary.json").read_text())
        assert summary["j_average"] == pytest.approx(cols["reward"].mean())
        assert summary["switches"] == 1.0  # period 60 over 120 steps
        assert set(np.unique(cols["rotation"])) == {0.0, 90.0}
        # Training starts once the stream holds a window (40 steps) and runs every second step.
        trained = np.isfinite(cols["train_loss"])
        assert not trained[:39].any() and trained[39::2].all()
        # Adaptations are scored every 6 steps once one happened (from the second on).
        scored = np.flatnonzero(np.isfinite(cols["ce_before"]))
        assert scored.size and np.all(np.diff(scored) == 6)
        assert "J_average" in (run_dir / "report.md").read_text()


def test_the_oracle_sees_movements_and_the_others_see_actions(runs: dict[str, Path]) -> None:
    from metadapt.envs.rotating_maze import movement

    for method in ("gcg", "oracle"):
        state = torch.load(runs[method] / "checkpoints" / "state.pt", weights_only=True)
        env_actions = state["env_actions"].numpy()
        model_actions = state["model_actions"].numpy()
        rotation = read_steps(runs[method] / "steps.csv")["rotation"].astype(int)
        if method == "oracle":
            assert np.array_equal(model_actions, movement(env_actions, rotation))
            assert not np.array_equal(model_actions, env_actions)  # rot90 steps differ
        else:
            assert np.array_equal(model_actions, env_actions)


def test_gcg_with_adaptation_trains_as_gcg_and_acts_adapted(runs: dict[str, Path]) -> None:
    """The ablation: GCG's theta (same data, same updates as long as the streams agree), adapted before acting."""
    states = {m: torch.load(runs[m] / "checkpoints" / "state.pt", weights_only=True) for m in ("gcg", "gcg_adapt")}
    acts = {m: s["env_actions"].numpy() for m, s in states.items()}
    cols = {m: read_steps(runs[m] / "steps.csv") for m in ("gcg", "gcg_adapt")}
    first_adapted = int(np.flatnonzero(np.isfinite(cols["gcg"]["ce_before"]))[0])  # scored from the 2nd on
    first_adapted -= 6  # the first adaptation came one period earlier (adapt.every = 6)
    same = int(np.argmax(acts["gcg"] != acts["gcg_adapt"]))
    assert not np.array_equal(acts["gcg"], acts["gcg_adapt"])
    assert same >= first_adapted, "gcg_adapt acted differently before it had adapted"
    loss = {m: c["train_loss"][:same] for m, c in cols.items()}
    np.testing.assert_array_equal(loss["gcg"], loss["gcg_adapt"])
    assert "GCG + adaptation" in (runs["gcg_adapt"] / "report.md").read_text()
    assert "adapted every 6 steps" in (runs["gcg_adapt"] / "report.md").read_text()
    assert "never adapted" in (runs["gcg"] / "report.md").read_text()


def test_same_seed_same_numbers(runs: dict[str, Path], tmp_path: Path) -> None:
    r = cli("run", str(small_config(tmp_path, "meta_gcg")), "--out", str(tmp_path / "again"), "--quiet")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "again" / "steps.csv").read_text() == (runs["meta_gcg"] / "steps.csv").read_text()


def test_sigkilled_stream_resumes_to_the_same_result(runs: dict[str, Path], tmp_path: Path) -> None:
    config = small_config(tmp_path, "meta_gcg")
    out = tmp_path / "killed"
    kill_when([sys.executable, "-m", "metadapt.cli", "train", str(config), "--out", str(out), "--quiet"],
              out / "checkpoints" / "state.pt", lambda s: int(s["step"]) >= 40, cwd=ROOT)
    assert not (out / "summary.json").exists()
    r = cli("train", "--resume", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    assert (out / "steps.csv").read_text() == (runs["meta_gcg"] / "steps.csv").read_text()
    a = torch.load(out / "model.pt", weights_only=True)["params"]
    b = torch.load(runs["meta_gcg"] / "model.pt", weights_only=True)["params"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_video_shows_the_last_steps_with_their_rotation(tmp_path: Path) -> None:
    ffmpeg = pytest.importorskip("imageio_ffmpeg")

    out = tmp_path / "video"
    r = cli("run", str(small_config(tmp_path, "meta_gcg", **{"env.steps": 60, "meta.window": 20,
                                                               "eval.video_steps": 12})),
            "--out", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    assert ffmpeg.count_frames_and_secs(str(out / "video.mp4"))[0] == 12
    assert "video.mp4" in (out / "report.md").read_text()


def test_a_model_checkpoint_starts_a_new_stream(runs: dict[str, Path], tmp_path: Path) -> None:
    cfg = small_config(tmp_path, "gcg")
    r = cli("run", str(cfg), "--out", str(tmp_path / "warm"), "--quiet", f"model.checkpoint={runs['gcg']}")
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize(("changes", "needle"), [
    ({"env.steps": 30}, "larger than the stream"),
    ({"env.kwargs.schedule": {"type": "alternating", "tasks": ["rot0", {"rotation": 45}], "period": 10}},
     "rotation"),
    ({"env.kwargs.frame_stack": 0}, "frame"),
    ({"meta.window": 41}, "odd"),
    ({"adapt.window": 2}, "adapt.window"),
    ({"env.id": "metadapt/HalfCheetah-v0", "env.kwargs": {}}, "frames"),
    ({"method": "maml"}, "method"),
    ({"model.widths": {"bogus": 3}}, "model.widths"),
    ({"env.kwargs": {"mode": "episodic", "frame_stack": 2, "episode_steps": 30}}, "larger than the episodes"),
    ({"env.kwargs": {"mode": "episodic", "frame_stack": 2, "episode_steps": 2}}, "hold no sequence"),
    ({"method": "gcg", "meta.start": 2}, "meta.start"),
])
def test_bad_input_is_one_line_and_exit_code_2(tmp_path: Path, changes: dict, needle: str) -> None:
    cfg = small_config(tmp_path, "meta_gcg", **changes)
    r = cli("run", str(cfg), "--out", str(tmp_path / "x"), "--quiet")
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr and needle in lines[0], r.stderr
    assert not (tmp_path / "x").exists()


def test_episodic_streams_train_on_windows_inside_one_episode_and_adapt_within_it(tmp_path: Path) -> None:
    out = tmp_path / "episodic"
    cfg = small_config(tmp_path, "meta_gcg", **{"env.kwargs": {"mode": "episodic", "frame_stack": 2,
                                                                "episode_steps": 40}})
    r = cli("run", str(cfg), "--out", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    cols = read_steps(out / "steps.csv")
    assert cols["episode"].tolist() == [float(t // 40) for t in range(120)]
    # An adaptation (every 6 steps) is scored on the 6 steps after it, and only within its own episode: the one at
    # step t - 6 saw a sequence of 3 steps of the episode, which the scored steps did not end.
    scored = np.flatnonzero(np.isfinite(cols["ce_before"]))
    assert scored.size
    assert all((t - 6) // 40 == t // 40 and (t - 6) % 40 >= 2 for t in scored)
    assert 89 in scored  # adapted at step 83 on the new episode's first 4 steps, scored on the next 6


def test_checkpoints_of_the_wrong_kind_are_refused(runs: dict[str, Path], tmp_path: Path) -> None:
    # An image model given to a state-based run.
    r = cli("run", str(ROOT / "configs" / "mb_small.yaml"), "--out", str(tmp_path / "mb"), "--quiet",
            f"model.checkpoint={runs['meta_gcg'] / 'model.pt'}")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "image model" in r.stderr
    # A state-based model given to the image run.
    r = cli("run", str(small_config(tmp_path)), "--out", str(tmp_path / "g"), "--quiet",
            "model.checkpoint=builtin:halfcheetah_malfunction")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr


# -- the metrics, known answers -------------------------------------------------------------------------------------
def test_j_average_and_switches() -> None:
    assert j_average(np.array([1.0, 0.0, 2.0])).tolist() == [1.0, 0.5, 1.0]
    assert switch_steps(np.array([0, 0, 90, 90, 0])).tolist() == [2, 4]


def test_recovery_steps_known_answer() -> None:
    # Rate 1 for 100 steps, a switch at 100: zeros for 30 steps, then ones again. The first window of 20 steps
    # after the switch with a mean >= 0.8 holds 16 ones: it starts at 126 and ends at 146, 46 steps after the switch
    # (an outage of L reads L + 0.8 x 20).
    r = np.concatenate([np.ones(100), np.zeros(30), np.ones(100)])
    rec = recovery_steps(r, np.array([100]), window=20, fraction=0.8, short=20)
    assert len(rec) == 1 and rec[0].steps == 46 and not rec[0].censored and rec[0].rate_before == 1.0
    assert recovery_steps(r, np.array([100]), window=20, fraction=0.8, short=10)[0].steps == 38
    # Never recovering before the end: censored at the distance it had.
    rec = recovery_steps(np.concatenate([np.ones(100), np.zeros(50)]), np.array([100]), window=20)
    assert rec[0].censored and rec[0].steps == 50
    # A pre-switch rate <= 0 has nothing to recover to.
    assert recovery_steps(np.zeros(200), np.array([100]), window=20) == []


def test_adaptation_losses_split_after_switches() -> None:
    steps = np.arange(10.0) * 10
    before = np.full(10, 2.0)
    after = np.array([1.0, 3.0] * 5)
    out = adaptation_losses(steps, before, after, np.array([40]), after_switch=20)  # steps 40 and 50
    assert out["ce_before"] == 2.0 and out["ce_after"] == 2.0 and out["ce_lower_share"] == 0.5
    assert out["ce_after_after_switch"] == 2.0 and out["ce_lower_share_after_switch"] == 0.5
    s = summarize(np.ones(10), np.zeros(10), steps, before, after)
    assert s["j_average"] == 1.0 and s["switches"] == 0 and math.isnan(s["recovery_steps"])


def test_a_sweep_of_lifelong_runs_reports_j_average_per_method_with_intervals(tmp_path: Path) -> None:
    base = small_config(tmp_path, "meta_gcg", **{"env.steps": 60, "meta.window": 20, "eval.rate_window": 10})
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"name": "lifelong", "base": str(base), "command": "run",
                                     "grid": {"seed": [0, 1], "method": ["meta_gcg", "gcg"]}}))
    out = tmp_path / "out"
    r = cli("sweep", str(sweep), "--out", str(out), "--workers", "2", "--threads", "1")
    assert r.returncode == 0, r.stderr
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and all(row["status"] == "done" for row in rows)
    for row in rows:  # each row's J_average is its run's mean reward
        cols = read_steps(out / "runs" / row["run"] / "steps.csv")
        assert float(row["j_average"]) == pytest.approx(cols["reward"].mean())
        assert float(row["mean_return"]) == pytest.approx(cols["reward"].mean())
    report = (out / "report.md").read_text()
    assert "J_average at the end" in report and "Meta-GCG" in report and "GCG" in report
    assert "Meta-GCG − GCG" in report  # paired by seed
    assert (out / "j_average.png").is_file()
    # A run whose steps.csv is damaged (cut inside a row) stopped the whole report in one line; now the report
    # keeps that run's results.csv numbers, draws the others' curves and names it.
    damaged = out / "runs" / rows[0]["run"] / "steps.csv"
    damaged.write_bytes(damaged.read_bytes()[:200])
    (out / "j_average.png").unlink()
    r = cli("report", str(out))
    assert r.returncode == 0, r.stderr
    report = (out / "report.md").read_text()
    assert "## Runs whose files could not be read" in report and f"`{rows[0]['run']}`" in report
    assert "steps.csv" in report.split("## Runs whose files could not be read")[1]
    assert (out / "j_average.png").is_file() and "| 2 |" in report  # both seeds of every method still counted


def test_bench_gcg_prints_its_ratios() -> None:
    from metadapt.experiments.benchmarks.bench_gcg import bench_gcg

    lines: list[str] = []
    out = bench_gcg(repeats=1, print_fn=lines.append, presets=("cpu",))
    assert out["maze_steps_per_second"] > 0 and out["cpu_plan_ms"] > 0 and out["cpu_meta_step_ms"] > 0
    assert out["gcg_rollout_fraction_of_peak"] > 0 and lines[-1].startswith("gcg_rollout_fraction_of_peak=")
