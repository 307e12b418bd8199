"""Sweeps: grid expansion, resumability after SIGKILL, failures that stay local, the aggregated report."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from metadapt.experiments.jobs.sweep import aggregate, load_sweep, mean_ci

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "train.iterations": 1, "train.steps_per_iteration": 60, "train.rollout_length": 60, "train.epochs": 2,
    "model.hidden": [16], "planner.num_samples": 20, "planner.horizon": 3, "trial.steps": 30,
}


def _sweep_file(tmp_path: Path, grid: dict, name: str = "tiny") -> Path:
    import yaml

    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "base": str(ROOT / "configs/mb_halfcheetah.yaml"),
                                    "set": TINY, "grid": grid}))
    return path


def _sweep(path: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "metadapt.cli", "sweep", str(path), "--out", str(out), "--quiet",
                             *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _results(out: Path) -> list[dict[str, str]]:
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r.pop("seconds")
    return rows


def test_grid_expands_to_hashed_runs_and_bad_points_fail_alone(tmp_path):
    path = _sweep_file(tmp_path, {"seed": [0, 1], "planner.horizon": [3, -1]})
    sweep = load_sweep(path)
    assert len(sweep.points) == 4
    bad = [p for p in sweep.points if p.config is None]
    assert len(bad) == 2 and all("planner.horizon" in p.error for p in bad)
    assert len({p.run_id for p in sweep.points}) == 4


def test_methods_are_named_override_bundles_on_their_own_axis(tmp_path):
    import yaml

    from metadapt.errors import ConfigError

    spec = {"name": "m", "base": str(ROOT / "configs/mb_halfcheetah.yaml"), "set": TINY,
            "methods": {"mb": {"learner.type": "mb"}, "de": {"learner.type": "de", "learner.lr": 0.05}},
            "grid": {"seed": [0, 1]}}
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(spec))
    sweep = load_sweep(path)
    assert sweep.grid_keys == ["method", "seed"]
    got = {(p.labels["method"], p.labels["seed"]): p.config for p in sweep.points}
    assert got[("de", 1)]["learner"]["type"] == "de" and got[("de", 1)]["learner"]["lr"] == 0.05
    assert got[("mb", 0)]["learner"]["type"] == "mb" and got[("mb", 0)]["seed"] == 0
    assert len({p.run_id for p in sweep.points}) == 4
    spec["grid"]["method"] = ["x"]
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match="'method' is the axis"):
        load_sweep(path)


def test_sweep_killed_then_rerun_equals_uninterrupted(tmp_path):
    path = _sweep_file(tmp_path, {"seed": [0, 1], "learner.type": ["mb", "de"]})
    full = tmp_path / "full"
    proc = _sweep(path, full, "--workers", "2")
    assert proc.wait(timeout=900) == 0, proc.stderr.read()

    killed = tmp_path / "killed"
    proc = _sweep(path, killed, "--workers", "1")
    deadline = time.time() + 900
    while time.time() < deadline:
        done = list((killed / "runs").glob("*/status.json")) if (killed / "runs").is_dir() else []
        if done:
            break
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(0.5)  # the pool workers die with the sweep process (PR_SET_PDEATHSIG)
    finished_before = len(list((killed / "runs").glob("*/status.json")))
    assert 1 <= finished_before < 4

    again = subprocess.run([sys.executable, "-m", "metadapt.cli", "sweep", str(path), "--out", str(killed), "--quiet"],
                           capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr
    assert f"{finished_before} skipped" in again.stdout
    assert _results(killed) == _results(full)
    assert len(list((killed / "runs").iterdir())) == 4  # none lost, none duplicated
    report = (killed / "report.md").read_text()
    assert "mean return" in report and "95% CI" in report


def test_invalid_point_is_reported_and_the_rest_finish(tmp_path):
    path = _sweep_file(tmp_path, {"planner.horizon": [3, 0]})
    out = tmp_path / "s"
    proc = _sweep(path, out)
    assert proc.wait(timeout=900) == 0, proc.stderr.read()
    rows = _results(out)
    assert sorted(r["status"] for r in rows) == ["done", "failed"]
    failed = next(r for r in rows if r["status"] == "failed")
    assert "planner.horizon" in failed["error"]
    assert "Failed runs" in (out / "report.md").read_text()


def test_ray_backend_without_ray_is_one_line(tmp_path):
    # A "ray" package that fails to import stands in for a machine without Ray.
    (tmp_path / "noray" / "ray").mkdir(parents=True)
    (tmp_path / "noray" / "ray" / "__init__.py").write_text("raise ImportError('no ray here')\n")
    path = _sweep_file(tmp_path, {"seed": [0]})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "noray"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "metadapt.cli", "sweep", str(path), "--out", str(tmp_path / "r"),
                             "--quiet", "--backend", "ray"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    assert proc.wait(timeout=300) == 2
    err = proc.stderr.read()
    assert err.strip().count("\n") == 0 and "pip install 'metadapt[ray]'" in err


def test_ray_and_local_backends_give_identical_runs(tmp_path):
    """2 methods x 2 seeds under the local pool and under Ray (a local cluster): the same per-run metrics."""
    pytest.importorskip("ray")
    import yaml

    path = tmp_path / "both.yaml"
    path.write_text(yaml.safe_dump({
        "name": "both", "base": str(ROOT / "configs/mb_halfcheetah.yaml"), "set": TINY,
        "methods": {"mb": {"learner.type": "mb"}, "de": {"learner.type": "de"}}, "grid": {"seed": [0, 1]},
        "resources": {"cpus": 1}}))
    for backend in ("local", "ray"):
        proc = _sweep(path, tmp_path / backend, "--backend", backend, "--workers", "2")
        _out, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err[-2000:]
    local, ray_rows = _results(tmp_path / "local"), _results(tmp_path / "ray")
    assert len(local) == 4 and all(r["status"] == "done" for r in local + ray_rows)
    strip = lambda rows: sorted({k: v for k, v in r.items() if k != "seconds"}.items() for r in rows)  # noqa: E731
    assert strip(local) == strip(ray_rows)
    for r in local:  # per-step metrics too, not only the summary
        a = (tmp_path / "local" / "runs" / r["run"] / "trial_0" / "metrics.csv").read_text().splitlines()
        b = (tmp_path / "ray" / "runs" / r["run"] / "trial_0" / "metrics.csv").read_text().splitlines()
        cols = a[0].split(",")
        keep = [i for i, c in enumerate(cols) if not c.endswith("_ms")]  # wall times differ
        assert [[row.split(",")[i] for i in keep] for row in a] == [[row.split(",")[i] for i in keep] for row in b]


def test_confidence_interval_and_aggregation():
    mean, std, ci, n = mean_ci([1.0, 2.0, 3.0])
    assert (mean, std, n) == (2.0, 1.0, 3) and ci == pytest.approx(4.303 / 3**0.5)
    rows = [{"status": "done", "mean_return": "1", "m": "a"}, {"status": "done", "mean_return": "3", "m": "a"},
            {"status": "failed", "mean_return": "nan", "m": "b"}]
    table = {g["m"]: g for g in aggregate(rows, ["m"])}
    assert table["a"]["mean"] == 2.0 and table["a"]["n"] == 2 and table["b"]["failed"] == 1


def test_a_sweep_started_from_a_process_that_ran_torch_threads_does_not_hang(tmp_path):
    """A sweep started from a process whose torch threads are busy completes. In a full test session a forked
    worker hung in its first parallel torch op (allocating the replay buffer), a lock copied mid-use by fork;
    workers are spawned now. That hang could not be provoked on demand (this test also passes with fork), so
    it guards the spawned path: its workers import what the parent's sys.path holds and run to the end."""
    import subprocess
    import sys

    sweep = tmp_path / "s.yaml"
    sweep.write_text(f"name: s\nbase: {ROOT / 'configs/mb_small.yaml'}\ncommand: train\n"
                     "set: {train.iterations: 1, train.steps_per_iteration: 40, train.rollout_length: 20, "
                     "train.epochs: 1, model.hidden: [8], planner.num_samples: 4, planner.horizon: 2}\n"
                     "grid: {seed: [0, 1]}\n")
    # torch busy in another thread while the sweep starts its workers: a fork copies its pool's locks held
    code = ("import sys, threading, torch; torch.set_num_threads(2); x = torch.randn(300, 300)\n"
            "stop = threading.Event()\n"
            "def busy():\n    while not stop.is_set(): torch.zeros(200_000, 18).fill_(1.0); (x @ x).sum()\n"
            "thread = threading.Thread(target=busy); thread.start()\n"
            "from metadapt.cli import main\n"
            "try: code = main(['sweep', sys.argv[1], '--out', sys.argv[2], '--workers', '2', '--quiet'])\n"
            "finally: stop.set(); thread.join()\n"
            "sys.exit(code)")
    proc = subprocess.run([sys.executable, "-c", code, str(sweep), str(tmp_path / "out")], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "out" / "results.csv").read_text().count("done") == 2


def test_run_ids_of_sweeps_written_before_later_keys_existed_stay_the_same():
    """Keys added to the schema later (planner.objective, env.reward_fn, env.perturbations) at their defaults
    leave a point's run id as it was, so a sweep folder from before them resumes instead of rerunning."""
    from metadapt.experiments.jobs.sweep import load_sweep

    ids = [p.run_id for p in load_sweep(ROOT / "configs/sweeps/crawler_stc.yaml").points]
    # the ids release 7b2a334 (before the three keys) gave these points
    assert ids[:4] == ["a7814b12ed1a", "dd7f1290fbe9", "670f1adcb852", "99e9ebd002ab"]
    changed = [p.run_id for p in load_sweep(ROOT / "configs/sweeps/crawler_stc.yaml").points]
    assert changed == ids


def test_a_grid_key_named_method_sets_the_config_key_when_there_is_no_methods_axis():
    # system: gcg has a top-level "method"; a grid over it must give one run per method (it was dropped as if it
    # were the methods axis's label, so the points collapsed into one run each seed).
    sweep = load_sweep(ROOT / "configs/sweeps/gcg_maze_lifelong.yaml")
    assert len(sweep.points) == 20 and len({p.run_id for p in sweep.points}) == 20
    assert [p.config["method"] for p in sweep.points[:4]] == ["meta_gcg", "gcg", "oracle", "gcg_adapt"]
    assert [p.labels["seed"] for p in sweep.points[:4]] == [0, 0, 0, 0]  # seeds outer: whole seeds first


def test_a_sweep_of_a_system_without_an_aggregate_result_is_refused_before_it_runs(tmp_path):
    sweep = tmp_path / "rl.yaml"
    sweep.write_text(f"name: rl\nbase: {ROOT / 'configs/maml_rl_navigation.yaml'}\ngrid: {{seed: [0, 1]}}\n")
    from metadapt.errors import ConfigError

    with pytest.raises(ConfigError, match="system rl has no result a sweep can aggregate"):
        load_sweep(sweep)
