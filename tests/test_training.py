"""The iterative MB training loop: checkpoints, SIGKILL and resume, determinism; the trial loop."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from metadapt.meta.checkpoint import load_checkpoint, load_model
from metadapt.meta.prior import load_prior

ROOT = Path(__file__).resolve().parents[1]
SMALL = [
    "train.iterations=4", "train.steps_per_iteration=150", "train.rollout_length=75", "train.epochs=3",
    "model.hidden=[32,32]", "planner.num_samples=40", "planner.horizon=4", "seed=7",
]


META = [  # GrBAL: a prior meta-trained on the malfunction tasks, collected with the adapted prior
    "meta.enabled=true", "learner.type=ts", "env.id=metadapt/HalfCheetahMalfunction-v0", "meta.meta_batch=8",
    "meta.batches_per_epoch=3", "meta.val_batches=2", "meta.past=8", "meta.future=8", "train.val_fraction=0.3",
    "train.rollout_length=30",
]


def _train(out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "metadapt.cli", "train", str(ROOT / "configs/mb_halfcheetah.yaml"), *SMALL,
         *extra, "--out", str(out), "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        rows = list(csv.DictReader(f))
    for r in rows:  # wall-clock columns differ between runs
        r.pop("collect_seconds"), r.pop("fit_seconds")
    return rows


@pytest.mark.parametrize("method", ["mb", "grbal"])
def test_sigkill_then_resume_equals_uninterrupted(tmp_path, method):
    extra = META if method == "grbal" else []
    full = tmp_path / "full"
    proc = _train(full, *extra)
    assert proc.wait(timeout=600) == 0, proc.stderr.read()

    killed = tmp_path / "killed"
    proc = _train(killed, *extra)
    ckpt = killed / "checkpoints" / "latest.pt"
    deadline = time.time() + 600
    while time.time() < deadline:
        if ckpt.is_file() and load_checkpoint(ckpt)["completed"] >= 1:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    completed = load_checkpoint(ckpt)["completed"]
    assert completed < 3, "the run finished before it could be killed"

    resumed = subprocess.run(
        [sys.executable, "-m", "metadapt.cli", "train", "--resume", str(killed), "--quiet"],
        capture_output=True, text=True, timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert _rows(killed / "metrics.csv") == _rows(full / "metrics.csv")
    _, p_full = load_model(full / "model.pt")
    _, p_res = load_model(killed / "model.pt")
    for k in p_full:
        assert torch.equal(p_full[k], p_res[k]), k
    if method == "grbal":
        prior_full, prior_res = load_prior(full), load_prior(killed)
        assert all(torch.equal(prior_full.params[k], prior_res.params[k]) for k in p_full)
        rows = _rows(full / "metrics.csv")
        assert any(r["val_loss_prior"] not in ("", "nan") for r in rows)  # validated on held-out trajectories


def test_train_refuses_to_overwrite_and_resume_rejects_extra_args(tmp_path):
    out = tmp_path / "r"
    proc = _train(out, "train.iterations=1")
    assert proc.wait(timeout=600) == 0
    again = _train(out, "train.iterations=1")
    assert again.wait(timeout=600) == 2
    assert "use --resume" in again.stderr.read()


def test_per_tensor_rates_train_a_prior_and_resume_refuses_other_rates(tmp_path):
    out = tmp_path / "r"
    proc = _train(out, *META, "train.iterations=1", "meta.learn_inner_lr=true", "meta.inner_lr_per=tensor")
    assert proc.wait(timeout=600) == 0, proc.stderr.read()
    prior = load_prior(out / "prior.pt")
    assert isinstance(prior.inner_lr, dict)
    for k, v in prior.params.items():  # stored in the parameters' shapes, one value per tensor
        assert prior.inner_lr[k].shape == v.shape and bool((prior.inner_lr[k] == prior.inner_lr[k].flatten()[0]).all())
    cfg = out / "config.yaml"
    cfg.write_text(cfg.read_text().replace("inner_lr_per: tensor", "inner_lr_per: entry")
                   .replace("iterations: 1", "iterations: 2"))
    resumed = subprocess.run([sys.executable, "-m", "metadapt.cli", "train", "--resume", str(out), "--quiet"],
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode != 0
    lines = resumed.stderr.strip().splitlines()
    assert len(lines) == 1 and "meta.inner_lr_per" in lines[0], resumed.stderr


def test_trial_is_reproducible_and_logs_every_step(tmp_path):
    from metadapt.cli import main

    args = ["run", str(ROOT / "configs/mb_small.yaml"), *SMALL, "train.iterations=2", "trial.steps=40",
            "trial.episode_length=25", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    with open(tmp_path / "a" / "trial_0" / "metrics.csv") as fa, open(tmp_path / "b" / "trial_0" / "metrics.csv") as fb:
        a, b = list(csv.DictReader(fa)), list(csv.DictReader(fb))
    assert len(a) == 40
    assert [r["reward"] for r in a] == [r["reward"] for r in b]
    assert {r["episode"] for r in a} == {"0", "1"}  # the env reset after 25 steps, the trial went on
    # The environment's numeric info is logged: Gymnasium's reward terms add up to the reward.
    assert "env/x_velocity" in a[0] and "env/task" not in a[0] and "env/task_id" not in a[0]
    for r in a:
        assert float(r["reward"]) == pytest.approx(float(r["env/reward_forward"]) + float(r["env/reward_ctrl"]))


def test_replaying_a_runs_data_fits_on_exactly_that_data(tmp_path):
    """train.data: MB refit, iteration by iteration, on the transitions a GrBAL run collected."""
    source = tmp_path / "grbal"
    proc = _train(source, *META, "train.iterations=2")
    assert proc.wait(timeout=600) == 0, proc.stderr.read()

    mb = tmp_path / "mb"
    # steps_per_iteration has no say in a replay: the source's iterations are what they are
    proc = _train(mb, "env.id=metadapt/HalfCheetahMalfunction-v0", "train.iterations=2", f"train.data={source}",
                  "train.steps_per_iteration=999")
    assert proc.wait(timeout=600) == 0, proc.stderr.read()
    src, got = (load_checkpoint(d / "checkpoints/latest.pt")["buffer"] for d in (source, mb))
    for k in ("obs", "act", "next_obs", "reward", "episode", "step", "task_id", "val"):
        assert torch.equal(src[k], got[k]), k
    assert bool(got["val"].any()) and not bool(got["val"].all())  # the source's held-out trajectories stay held out
    src_rows, mb_rows = _rows(source / "metrics.csv"), _rows(mb / "metrics.csv")
    for a, b in zip(src_rows, mb_rows, strict=True):
        for k in ("env_steps", "rollouts", "rollout_return_mean", "rollout_return_per_1000"):
            assert float(a[k]) == pytest.approx(float(b[k]), rel=1e-5), k

    for extra, why in (
        (["env.id=metadapt/HalfCheetahMalfunction-v0", "train.iterations=3"], "holds 2 completed iterations"),
        (["train.iterations=1"], "was collected in metadapt/HalfCheetahMalfunction-v0"),
        (["env.id=metadapt/HalfCheetahMalfunction-v0", "train.iterations=1", f"train.data={tmp_path / 'none'}"],
         "checkpoint not found"),
        (["env.id=metadapt/HalfCheetahMalfunction-v0", "train.iterations=1", "train.buffer_capacity=100"],
         "more than train.buffer_capacity"),
    ):
        bad = _train(tmp_path / f"bad{len(why)}", f"train.data={source}", *extra)
        assert bad.wait(timeout=600) != 0
        err = bad.stderr.read().strip()
        assert why in err and len(err.splitlines()) == 1, err

    # a plain run's single held-out steps cannot validate meta-training on whole trajectories
    plain = tmp_path / "plain"
    assert _train(plain, "env.id=metadapt/HalfCheetahMalfunction-v0", "train.iterations=1").wait(timeout=600) == 0
    bad = _train(tmp_path / "bad_meta", *META, "train.iterations=1", f"train.data={plain}")
    assert bad.wait(timeout=600) != 0
    err = bad.stderr.read().strip()
    assert "holds out single steps" in err and len(err.splitlines()) == 1, err

    # data collected under an older observation layout of the environment (the crawler's world-frame one) is
    # neither replayed nor resumed
    stale = tmp_path / "stale"
    shutil.copytree(source, stale)
    ckpt = stale / "checkpoints" / "latest.pt"
    state = torch.load(ckpt, weights_only=True)
    assert state["obs_version"] == 1 and state["env_id"] == "metadapt/HalfCheetahMalfunction-v0"
    state["obs_version"] = 0
    torch.save(state, ckpt)
    bad = _train(tmp_path / "bad_version", "env.id=metadapt/HalfCheetahMalfunction-v0", "train.iterations=1",
                 f"train.data={stale}")
    assert bad.wait(timeout=600) != 0
    err = bad.stderr.read().strip()
    assert "collected under observation version 0; the environment's is now 1" in err and len(err.splitlines()) == 1
    cfg = stale / "config.yaml"
    cfg.write_text(cfg.read_text().replace("iterations: 2", "iterations: 3"))
    resumed = subprocess.run([sys.executable, "-m", "metadapt.cli", "train", "--resume", str(stale), "--quiet"],
                             capture_output=True, text=True, timeout=600)
    err = resumed.stderr.strip()
    assert resumed.returncode != 0 and len(err.splitlines()) == 1 and "observation version 0" in err, err
