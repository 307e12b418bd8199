"""device=cuda: the trial loop, every learner and the planners on a GPU (skipped where there is none)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from metadapt.cli import main
from metadapt.types import Window

ROOT = Path(__file__).resolve().parents[1]
SHORT = ["model.checkpoint=builtin:halfcheetah_malfunction", "env.id=metadapt/HalfCheetahMalfunction-v0",
         "env.kwargs={schedule: alternating_100}", "trial.steps=30", "trial.episode_length=30",
         "planner.num_samples=200", "planner.dtype=float32", "seed=3"]


def _errors(run: Path) -> np.ndarray:
    with open(run / "trial_0" / "metrics.csv") as f:
        return np.array([float(r["model_error"]) for r in csv.DictReader(f) if r["model_error"] not in ("", "nan")])


def test_device_cuda_without_a_gpu_is_one_line(capsys, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    code = main(["run", str(ROOT / "configs/mole_halfcheetah_malfunction.yaml"), *SHORT, "device=cuda",
                 "--out", str(tmp_path / "r"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code != 0 and "no CUDA GPU" in err and len(err.splitlines()) == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("learner", ["ts", "gs", "mole"])
@pytest.mark.parametrize("planner", ["rs", "cem", "mppi"])
def test_a_trial_on_cuda_matches_the_cpu_one(tmp_path, learner, planner):
    """Same seed, same task stream: the model errors the learners reach agree with the CPU run.

    The GPU draws its own random candidates, so actions differ after the first
    step; the learner's one-step errors stay finite and of the same size.
    """
    common = ["run", str(ROOT / "configs/mole_halfcheetah_malfunction.yaml"), *SHORT,
              f"learner.type={learner}", f"planner.type={planner}"]
    assert main([*common, "device=cuda", "--out", str(tmp_path / "gpu"), "--quiet"]) == 0
    assert main([*common, "device=cpu", "--out", str(tmp_path / "cpu"), "--quiet"]) == 0
    gpu, cpu = _errors(tmp_path / "gpu"), _errors(tmp_path / "cpu")
    assert len(gpu) == len(cpu) == 30 and np.isfinite(gpu).all()
    assert gpu.mean() == pytest.approx(cpu.mean(), rel=0.5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_mole_step_on_cuda_equals_cpu():
    """The fused MOLe EM step gives the CPU's posterior and parameters on the GPU (to float tolerance)."""
    from metadapt.adapt.mole import MOLeLearner
    from metadapt.meta.prior import load_prior

    prior = load_prior("builtin:halfcheetah_malfunction")
    gen = torch.Generator().manual_seed(0)
    o, a = prior.model.obs_dim, prior.model.act_dim
    windows = [(torch.randn(16, o + a, generator=gen), torch.randn(16, o, generator=gen)) for _ in range(6)]
    learners = {}
    for dev in ("cpu", "cuda"):
        model = prior.model
        params = {k: v.to(dev) for k, v in prior.params.items()}
        lrs = {k: v.to(dev) for k, v in prior.inner_lr.items()} if isinstance(prior.inner_lr, dict) else prior.inner_lr
        learner = MOLeLearner(model, params, 0.01, new_lr=lrs)
        model.normalizer = model.normalizer.to(dev)
        for x, y in windows:
            learner.observe(Window(x[:, :o], x[:, o:], y).to(dev))
        model.normalizer = model.normalizer.to("cpu")
        learners[dev] = learner
    cpu, gpu = learners["cpu"], learners["cuda"]
    assert cpu.ids == gpu.ids and cpu.chosen == gpu.chosen
    torch.testing.assert_close(gpu.counts.cpu(), cpu.counts, rtol=1e-4, atol=1e-6)
    for k, v in cpu.stack.items():
        torch.testing.assert_close(gpu.stack[k].cpu(), v, rtol=1e-3, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("method", ["mb", "grbal", "rebal"])
def test_training_on_cuda_writes_cpu_checkpoints_and_resumes(tmp_path, method):
    from metadapt.meta.checkpoint import load_checkpoint

    extra = {
        "mb": [],
        "grbal": ["meta.enabled=true", "learner.type=ts", "meta.learn_inner_lr=true"],
        "rebal": ["meta.enabled=true", "meta.method=rebal", "learner.type=rebal"],
    }[method]
    args = ["train", str(ROOT / "configs/mb_halfcheetah.yaml"), "env.id=metadapt/HalfCheetahMalfunction-v0",
            "train.iterations=2", "train.steps_per_iteration=120", "train.rollout_length=40", "train.epochs=2",
            "train.val_fraction=0.3", "model.hidden=[32,32]", "planner.num_samples=40", "planner.horizon=4",
            "meta.meta_batch=8", "meta.batches_per_epoch=3", "meta.val_batches=2", "meta.past=8", "meta.future=8",
            "device=cuda", *extra]
    out = tmp_path / "run"
    assert main([*args, "train.iterations=1", "--out", str(out), "--quiet"]) == 0
    state = load_checkpoint(out / "checkpoints" / "latest.pt")  # map_location=cpu
    tensors = [v for v in state["model"]["params"].values()]
    assert all(t.device.type == "cpu" and torch.isfinite(t).all() for t in tensors)
    # the config says 1 iteration: resume a copy that asks for 2 by editing nothing but the count
    cfg = (out / "config.yaml").read_text().replace("iterations: 1", "iterations: 2")
    (out / "config.yaml").write_text(cfg)
    assert main(["train", "--resume", str(out), "--quiet"]) == 0
    assert load_checkpoint(out / "checkpoints" / "latest.pt")["completed"] == 1
