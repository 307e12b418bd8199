"""Reports a reader can trust (issue 30): paper names, paired differences, MOLe's own file and section, the
before-adaptation loss, TensorBoard while training, links to videos."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from metadapt.cli import main
from metadapt.experiments.jobs.sweep import paired_differences, write_sweep_report
from metadapt.experiments.reporting.metrics import method_name
from metadapt.experiments.reporting.progress import Reporter, TensorBoardReporter
from metadapt.experiments.reporting.report import read_posterior, write_report

ROOT = Path(__file__).resolve().parents[1]
TINY = ["train.iterations=2", "train.steps_per_iteration=120", "train.rollout_length=60", "train.epochs=2",
        "model.hidden=[16,16]", "planner.num_samples=20", "planner.horizon=3", "trial.steps=30",
        "trial.episode_length=30"]


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_methods_are_named_as_the_papers_name_them():
    assert [method_name(m) for m in ("mole", "ts", "gs", "mb", "de", "rebal", "grbal")] == \
        ["MOLe", "TS", "GS", "MB", "DE", "ReBAL", "GrBAL"]
    assert method_name("my_variant") == "my_variant"
    assert method_name("mb_de") == "MB+DE"  # the held-out-task sweeps' label for MB with DE's online steps


def _sweep(out: Path, returns: dict[str, list[float]]) -> None:
    """A sweep folder as ``metadapt sweep`` writes it: results.csv and one trial per run."""
    rows = []
    for method, values in returns.items():
        for seed, value in enumerate(values):
            run = f"{method}{seed}"
            rows.append({"run": run, "status": "done", "mean_return": value, "method": method, "seed": seed})
            trial = out / "runs" / run / "trial_0"
            trial.mkdir(parents=True)
            steps = np.arange(40)
            with open(trial / "metrics.csv", "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["step", "reward", "return", "task_id"])
                for t in steps:
                    w.writerow([t, value / 40, value * (t + 1) / 40, int(t >= 20)])
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["run", "status", "mean_return", "method", "seed"])
        w.writeheader()
        w.writerows(rows)


def test_paired_differences_find_the_method_that_wins_on_every_seed(tmp_path):
    # The seeds move both methods together: unpaired intervals overlap, yet MOLe wins on every seed by 2 to 4.
    base = [-100.0, 0.0, 100.0, -50.0, 50.0]
    mole = [b + d for b, d in zip(base, [2.0, 3.0, 4.0, 3.0, 3.0], strict=True)]
    _sweep(tmp_path, {"mole": mole, "ts": base})
    rows = list(_rows(tmp_path / "results.csv"))
    [pair] = paired_differences(rows, ["method"])
    assert (pair["a"], pair["b"], pair["wins"], pair["losses"], pair["n"]) == ("mole", "ts", 5, 0, 5)
    assert pair["mean"] == pytest.approx(3.0)
    # Student's t with 4 degrees of freedom: 2.776 * std(ddof 1) / sqrt(5)
    assert pair["ci95"] == pytest.approx(2.776 * np.std([2, 3, 4, 3, 3], ddof=1) / np.sqrt(5), rel=1e-3)
    report = write_sweep_report(tmp_path).read_text()
    assert "| MOLe − TS | +3.0 | ± 0.9 | 5 | 0 | 5 |" in report
    assert "| MOLe | " in report and "| mole |" not in report  # the table names methods as the papers do


def test_a_run_whose_metrics_cannot_be_read_is_named_and_the_rest_of_the_sweep_reported(tmp_path):
    """One unreadable trial metrics.csv stopped the whole sweep report; now that run keeps its results.csv
    return, has no curve, and the report names it."""
    _sweep(tmp_path, {"mole": [1.0, 2.0], "ts": [0.0, 1.0]})
    (tmp_path / "runs" / "ts1" / "trial_0" / "metrics.csv").write_bytes(b"step,return\n\xff\xfe,1\n")
    report = write_sweep_report(tmp_path).read_text()
    section = report.split("## Runs whose files could not be read")[1]
    assert "`ts1`" in section and "metrics.csv" in section and "`mole0`" not in section
    assert "| TS | 0.5 |" in report  # both seeds of TS still in the table
    assert (tmp_path / "cumulative_reward.png").is_file()


def test_paired_differences_use_only_seeds_both_methods_completed(tmp_path):
    rows = [{"run": f"{m}{s}", "status": st, "mean_return": str(v), "method": m, "seed": str(s)}
            for m, s, st, v in (("a", 0, "done", 1), ("a", 1, "done", 5), ("b", 0, "done", 0), ("b", 1, "failed", ""))]
    [pair] = paired_differences(rows, ["method"])
    assert pair["n"] == 1 and pair["mean"] == 1.0
    assert paired_differences(rows, []) == []  # no method axis: nothing to pair


def test_tensorboard_reporter_writes_while_the_job_runs():
    class Writer:
        def __init__(self) -> None:
            self.scalars: list[tuple[str, float, int]] = []

        def add_scalar(self, tag: str, value: float, step: int) -> None:
            self.scalars.append((tag, value, step))

        def flush(self) -> None:
            pass

        def close(self) -> None:
            pass

    writer = Writer()
    with TensorBoardReporter(Reporter(), writer) as reporter:
        reporter.start("fit", "iter 0 fit", 2)
        reporter.advance("fit", train=0.5, val=0.7)
        reporter.start("fit", "iter 1 fit", 2)  # the next iteration's bar: the curve goes on
        reporter.advance("fit", train=0.25, val=0.5, note="text is not a scalar")
        reporter.scalars("iteration", {"val_loss": 0.5, "rollouts": 16, "diverged": False}, 1)
    assert writer.scalars == [("fit/train", 0.5, 1), ("fit/val", 0.7, 1), ("fit/train", 0.25, 2),
                              ("fit/val", 0.5, 2), ("iteration/val_loss", 0.5, 1), ("iteration/rollouts", 16.0, 1)]


def test_training_writes_tensorboard_events_of_every_epoch_and_iteration(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "t"
    assert main(["train", str(ROOT / "configs/mb_small.yaml"), *TINY, "logging.tensorboard=true", "--out", str(out),
                 "--quiet"]) == 0
    events = EventAccumulator(str(out / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"fit/train", "fit/val", "iteration/val_loss", "iteration/rollout_return_per_1000"} <= tags
    assert [e.step for e in events.Scalars("iteration/val_loss")] == [0, 1]
    logged = [float(r["val_loss"]) for r in _rows(out / "metrics.csv")]
    assert [e.value for e in events.Scalars("iteration/val_loss")] == pytest.approx(logged, rel=1e-6)


def test_a_meta_training_report_shows_the_loss_before_adaptation(tmp_path):
    out = tmp_path / "prior"
    # 8 trajectories of 30 steps per iteration, 30% held out: meta-validation needs whole held-out trajectories
    assert main(["train", str(ROOT / "configs/mb_small.yaml"), *TINY, "train.steps_per_iteration=240",
                 "train.rollout_length=30", "train.val_fraction=0.3", "meta.enabled=true", "meta.past=4",
                 "meta.future=4", "meta.meta_batch=4", "meta.batches_per_epoch=2", "meta.val_batches=1",
                 "env.id=metadapt/HalfCheetahMalfunction-v0", "learner.type=ts", "--out", str(out), "--quiet"]) == 0
    report = write_report(out).read_text()
    assert "| val loss before adaptation | reduction |" in report
    before = [float(r["val_loss_prior"]) for r in _rows(out / "metrics.csv")]
    assert f"| {before[-1]:.4f} |" in report


def test_a_mole_run_writes_its_posterior_per_component_and_reports_its_adaptation(tmp_path):
    out = tmp_path / "mole"
    assert main(["run", str(ROOT / "configs/mole_halfcheetah_malfunction.yaml"), "planner.num_samples=8",
                 "planner.horizon=2", "trial.steps=40", "trial.episode_length=40",
                 "env.kwargs.schedule={type: alternating, tasks: [normal, sign_negative], period: 20}",
                 "--out", str(out), "--quiet"]) == 0
    trial = out / "trial_0"
    header = (trial / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "posterior" not in header  # no packed strings in the per-step table
    rows = _rows(trial / "posterior.csv")
    assert len(rows) == 40 and next(iter(rows[0])) == "step"
    components = [k for k in rows[0] if k.startswith("component_")]
    assert components and all(abs(sum(float(r[c]) for c in components) - 1) < 1e-3 for r in rows)
    ids, probs = read_posterior(trial, {})
    assert probs.shape == (40, len(ids))
    report = (out / "report.md").read_text()
    summary = json.loads((trial / "summary.json").read_text())
    assert "### Adaptation (MOLe)" in report
    assert f"| trial_0 | {summary['analysis']['task_recovery_ari']:.3f} |" in report
    assert "- learner: MOLe (`learner.type=mole`)" in report
    assert "trial_0_tasks.png" in report and (out / "trial_0_tasks.png").is_file()


def test_a_posterior_column_of_an_older_run_still_reports(tmp_path):
    trial = tmp_path / "trial_0"
    trial.mkdir()
    m = {"posterior": np.array(["0:1", "0:0.25;1:0.75"], dtype=object)}
    ids, probs = read_posterior(trial, m)
    assert ids == [0, 1] and probs.tolist() == [[1.0, 0.0], [0.25, 0.75]]


def test_the_report_links_each_trials_video(tmp_path):
    out = tmp_path / "r"
    assert main(["run", str(ROOT / "configs/mb_small.yaml"), *TINY, "--out", str(out), "--quiet"]) == 0
    assert "trial.mp4" not in (out / "report.md").read_text()
    (out / "trial_0" / "trial.mp4").write_bytes(b"")  # what --video writes beside the metrics
    assert "[trial_0/trial.mp4](trial_0/trial.mp4)" in write_report(out).read_text()


def test_report_on_a_single_trial_folder_reports_that_trial(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["run", str(ROOT / "configs/mb_small.yaml"), *TINY, "--out", str(out), "--quiet"]) == 0
    assert main(["report", str(out / "trial_0")]) == 0
    report = (out / "trial_0" / "report.md").read_text()
    summary = json.loads((out / "trial_0" / "summary.json").read_text())
    assert "## Trials" in report and f"| trial_0 | 30 | {summary['total_return']:.1f} |" in report


def test_a_periodic_schedule_that_never_switches_within_the_trial_is_said_not_silent():
    from metadapt.envs import make_env
    from metadapt.experiments.jobs.build import schedule_warning

    env = make_env("metadapt/HalfCheetahMalfunction-v0", schedule="alternating_500")
    cfg = {"trial": {"steps": 300, "episode_length": 1000}}
    assert schedule_warning(cfg, env) == (
        "note: the schedule's first switch (step 500) comes after the trial's last step (trial.steps=300, "
        "trial.episode_length=1000): every trial runs only 'normal'")
    assert schedule_warning({"trial": {"steps": 501, "episode_length": 1000}}, env) is None
    assert schedule_warning(cfg, make_env("metadapt/HalfCheetahMalfunction-v0", schedule="normal")) is None


def test_the_schedule_note_is_said_by_check_and_by_a_quiet_run(tmp_path, capsys):
    # It went through the reporter only: `check` never printed it and `--quiet` dropped it.
    from metadapt.cli import main

    config = str(Path(__file__).resolve().parents[1] / "configs" / "mb_small.yaml")
    short = ["env.id=metadapt/HalfCheetahMalfunction-v0", "env.kwargs.schedule=alternating_500", "trial.steps=10",
             "trial.episode_length=10"]
    assert main(["check", config, *short]) == 0
    assert "note: the schedule's first switch (step 500)" in capsys.readouterr().err
    tiny = ["train.iterations=1", "train.steps_per_iteration=60", "train.rollout_length=60", "train.epochs=1",
            "model.hidden=[8]", "planner.num_samples=10", "planner.horizon=2"]
    assert main(["run", config, *short, *tiny, "--out", str(tmp_path / "r"), "--quiet"]) == 0
    assert "note: the schedule's first switch (step 500)" in capsys.readouterr().err


def test_a_small_val_fraction_that_draws_no_validation_data_still_validates(tmp_path):
    """Regression: 2 trajectories with val_fraction 0.1 held out neither, and every validation loss was NaN."""
    import math

    from metadapt.data.buffer import ReplayBuffer

    buffer = ReplayBuffer(2, 1)
    for episode in range(3):
        buffer.add(np.zeros((4, 2)), np.zeros((4, 1)), np.zeros((4, 2)), np.zeros(4), np.full(4, episode),
                   np.arange(4))
    assert buffer.ensure_validation(by_episode=True) == 4
    assert buffer.column("val").tolist() == [False] * 8 + [True] * 4
    assert buffer.ensure_validation(by_episode=True) == 0  # something is held out already: nothing changes
    one = ReplayBuffer(2, 1)
    one.add(np.zeros((4, 2)), np.zeros((4, 1)), np.zeros((4, 2)), np.zeros(4), np.zeros(4), np.arange(4))
    assert one.ensure_validation(by_episode=True) == 0  # the only episode stays training data
    assert one.ensure_validation(by_episode=False) == 1

    out = tmp_path / "t"
    assert main(["train", str(ROOT / "configs/mb_small.yaml"), *TINY, "train.val_fraction=0.001",
                 "meta.enabled=true", "meta.past=4",
                 "meta.future=4", "meta.meta_batch=4", "meta.batches_per_epoch=2", "meta.val_batches=1",
                 "env.id=metadapt/HalfCheetahMalfunction-v0", "learner.type=ts", "--out", str(out), "--quiet"]) == 0
    losses = [float(r["val_loss"]) for r in _rows(out / "metrics.csv")]
    assert losses and all(math.isfinite(v) for v in losses)


def test_a_resumed_training_continues_its_tensorboard_curves(tmp_path):
    """Regression: after --resume the per-epoch curves started again at step 1 over the first run's."""
    pytest.importorskip("tensorboard")
    import yaml
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "t"
    tiny = [t for t in TINY if not t.startswith("train.iterations")]
    assert main(["train", str(ROOT / "configs/mb_small.yaml"), *tiny, "train.iterations=1",
                 "logging.tensorboard=true", "--out", str(out), "--quiet"]) == 0
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    cfg["train"]["iterations"] = 2  # a resume may add iterations
    (out / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", "--resume", str(out), "--quiet"]) == 0
    events = EventAccumulator(str(out / "tb"))
    events.Reload()
    steps = [e.step for e in events.Scalars("fit/train")]
    epochs = [int(float(r["epochs"])) for r in _rows(out / "metrics.csv")]
    assert steps == list(range(1, sum(epochs) + 1))  # one curve, no step written twice
    assert [e.step for e in events.Scalars("iteration/val_loss")] == [0, 1]
