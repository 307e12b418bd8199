"""device=cuda on the meta-learning core: models, samplers, the inner step and the supervised job on a GPU,
equal to the CPU to float rounding (skipped where there is no GPU; the no-GPU refusal is tested here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from metadapt.cli import main
from metadapt.data.episodes import NWayKShot
from metadapt.data.omniglot import ImageClasses
from metadapt.data.sinusoid import SinusoidTasks
from metadapt.meta.outer import maml_loss
from metadapt.models.classifier import ConvClassifier
from metadapt.models.regressor import MLPRegressor
from metadapt.types import TaskBatch

ROOT = Path(__file__).resolve().parents[1]
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
SMALL = ["meta.iterations=50", "baseline.iterations=20", "eval.tasks=10", "train.checkpoint_every=50",
         "train.log_every=10"]


def test_supervised_device_cuda_without_a_gpu_is_one_line(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    code = main(["train", str(ROOT / "configs/maml_sinusoid.yaml"), *SMALL, "device=cuda", "--out",
                 str(tmp_path / "r"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "cuda" in err and len(err.splitlines()) == 1


def _to(tasks: TaskBatch, device: str) -> TaskBatch:
    return TaskBatch(tuple(t.to(device) for t in tasks.support), tuple(t.to(device) for t in tasks.query))


@gpu
@pytest.mark.parametrize("stacked", [True, False])
def test_maml_gradients_on_the_gpu_equal_the_cpus(stacked):
    g = torch.Generator().manual_seed(0)
    images = ImageClasses((torch.rand(12, 20, 28, 28, generator=g) * 255).to(torch.uint8),
                          [f"a/character{i:02d}" for i in range(12)])
    cases = [(MLPRegressor(1, 1, (16, 16)), SinusoidTasks(5, 5).sample(4, g), 0.01),
             (ConvClassifier(5, filters=8), NWayKShot(images, 5, 1, 2).sample(3, g), 0.4)]
    for model, tasks, rate in cases:
        params = model.init_params(torch.Generator().manual_seed(1))
        grads = {}
        for device in ("cpu", "cuda"):
            p = {k: v.to(device).requires_grad_() for k, v in params.items()}
            loss = maml_loss(model.loss, p, _to(tasks, device), rate, 2, False, stacked)
            grads[device] = torch.autograd.grad(loss, list(p.values()))
        for a, b in zip(grads["cpu"], grads["cuda"], strict=True):
            torch.testing.assert_close(a, b.cpu(), rtol=1e-3, atol=1e-5)


@gpu
def test_samplers_make_batches_on_the_gpu():
    tasks = SinusoidTasks(5, 5, device="cuda").sample(3, torch.Generator().manual_seed(0))
    assert tasks.support[0].is_cuda and tasks.query[1].is_cuda
    images = ImageClasses(torch.zeros(6, 20, 8, 8, dtype=torch.uint8), [f"a/c{i}" for i in range(6)])
    episodes = NWayKShot(images, 5, 1, 1, device="cuda").sample(2, torch.Generator().manual_seed(0))
    assert episodes.support[0].is_cuda and episodes.query[1].is_cuda


@gpu
def test_supervised_training_runs_on_the_gpu(tmp_path):
    out = tmp_path / "gpu"
    assert main(["train", str(ROOT / "configs/maml_sinusoid.yaml"), *SMALL, "device=cuda", "--out", str(out),
                 "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["methods"]["maml"]["1"]["mean"] < summary["methods"]["maml"]["0"]["mean"]
    state = torch.load(out / "model.pt", weights_only=True)
    assert all(not v.is_cuda for v in state["params"].values())  # files load anywhere
