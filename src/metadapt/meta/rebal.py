"""Training ReBAL's recurrent model on trajectory windows (M past steps -> context -> K next steps).

``fit_recurrent`` fits one model; ``rebal.pt`` holds the model (format
``metadapt.recurrent_dynamics.v1``). The iterative loop of seed 000 Table 1
with it is ``metadapt.experiments.jobs.rebal_training.RecurrentTrainer``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from metadapt.data.buffer import ReplayBuffer
from metadapt.errors import CheckpointError, MetadaptError
from metadapt.meta.checkpoint import check_finite, check_origin, load_checkpoint
from metadapt.meta.fit import finite, improves
from metadapt.models.normalizer import Normalizer
from metadapt.models.recurrent import RecurrentDynamics
from metadapt.types import Params

RECURRENT_FORMAT = "metadapt.recurrent_dynamics.v1"


@dataclass(frozen=True)
class RecurrentFitResult:
    """As ``meta.fit.FitResult``: ``diverged`` is the epoch whose training loss was not finite (0: none)."""

    epochs: int
    best_epoch: int
    train_loss: float
    val_loss: float
    diverged: int = 0


def fit_recurrent(
    model: RecurrentDynamics,
    params: Params,
    buffer: ReplayBuffer,
    *,
    past: int = 16,
    future: int = 16,
    batch: int = 64,
    batches_per_epoch: int = 100,
    val_batches: int = 8,
    epochs: int = 50,
    lr: float = 1e-3,
    patience: int = 5,
    generator: torch.Generator,
) -> tuple[Params, RecurrentFitResult]:
    """Adam on the K-step loss given the context of the M past steps; early stopping on held-out windows.

    A validation loss that is not finite never becomes the best; a batch whose loss is not finite stops the
    fit before its step (``RecurrentFitResult.diverged``), as in ``meta.fit.fit_dynamics``.
    """
    if buffer.window_starts(past + future, "train").numel() == 0:
        raise MetadaptError(
            f"ReBAL training needs training trajectories of at least M+K = {past + future} steps and none has "
            "been collected yet: raise the rollout length or lower the validation fraction"
        )
    has_val = buffer.window_starts(past + future, "val").numel() > 0
    val_seed = int(torch.randint(2**31, (1,), generator=generator))
    device = next(iter(params.values())).device  # training runs where the parameters live
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    opt = torch.optim.Adam(list(leaves.values()), lr=lr)

    def val_loss(p: Params) -> float:
        if not has_val:
            return math.nan
        g = torch.Generator().manual_seed(val_seed)
        total = 0.0
        with torch.no_grad():
            for _ in range(val_batches):
                w = buffer.sample_windows(past, future, batch, g, split="val", device=device)
                total += float(model.window_loss(p, w.past(), w.future()))
        return total / val_batches

    best = {k: v.detach().clone() for k, v in leaves.items()}
    best_val, best_epoch, since, epoch, running, diverged = val_loss(best), 0, 0, 0, math.nan, 0
    for epoch in range(1, epochs + 1):
        total = 0.0
        for _ in range(batches_per_epoch):
            w = buffer.sample_windows(past, future, batch, generator, split="train", device=device)
            loss = model.window_loss(leaves, w.past(), w.future())
            value = float(loss.detach())
            if not math.isfinite(value):  # its gradient would make every parameter NaN
                diverged = epoch
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += value
        if diverged:
            break
        running = total / batches_per_epoch
        v = val_loss(leaves)
        if improves(v, best_val, has_val) and finite(leaves):
            best = {k: t.detach().clone() for k, t in leaves.items()}
            best_val, best_epoch, since = v, epoch, 0
        else:
            since += 1
            if since >= patience:
                break
    return best, RecurrentFitResult(epoch, best_epoch, running, best_val, diverged)


def recurrent_state(
    model: RecurrentDynamics, params: Params, env_id: str | None = None, obs_version: int = 1
) -> dict[str, Any]:
    return {
        "format": RECURRENT_FORMAT, "env_id": env_id, "obs_version": obs_version,
        "obs_dim": model.obs_dim, "act_dim": model.act_dim,
        "hidden": list(model.hidden), "context": model.context_dim, "activation": model.activation,
        "sigma": model.sigma, "normalizer": {k: v.cpu() for k, v in model.normalizer.state_dict().items()},
        "params": {k: v.detach().cpu().clone() for k, v in params.items()},
    }


def load_recurrent(
    path: str | Path, env_id: str | None = None, obs_version: int = 1
) -> tuple[RecurrentDynamics, Params]:
    """Load ``rebal.pt`` (or a run directory holding one), checked against ``env_id``'s observation layout."""
    path = Path(path)
    if path.is_dir():
        path = path / "rebal.pt"
    state = load_checkpoint(path, ("format",))
    if state["format"] != RECURRENT_FORMAT:
        raise CheckpointError(f"{path} is not a ReBAL model of format {RECURRENT_FORMAT} (found {state['format']!r})")
    try:
        model = RecurrentDynamics(int(state["obs_dim"]), int(state["act_dim"]), tuple(state["hidden"]),
                                  int(state["context"]), str(state["activation"]), float(state["sigma"]),
                                  Normalizer.from_state_dict(state["normalizer"]))
        params = {k: v.float() for k, v in state["params"].items()}
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path} is incomplete: {exc}") from exc
    if {k: tuple(v.shape) for k, v in params.items()} != model.param_shapes():
        raise CheckpointError(f"{path}: its parameters do not match its architecture")
    check_finite(params, "parameters", str(path))
    check_finite(model.normalizer.state_dict(), "normalizer statistics", str(path))
    check_origin(state, path, env_id, obs_version)
    return model, params
