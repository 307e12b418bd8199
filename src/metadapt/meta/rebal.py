"""Training ReBAL's recurrent model on trajectory windows (M past steps -> context -> K next steps)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from metadapt.data.buffer import ReplayBuffer
from metadapt.models.recurrent import RecurrentDynamics
from metadapt.types import Params


@dataclass(frozen=True)
class RecurrentFitResult:
    epochs: int
    best_epoch: int
    train_loss: float
    val_loss: float


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
    """Adam on the K-step loss given the context of the M past steps; early stopping on held-out windows."""
    has_val = buffer.window_starts(past + future, "val").numel() > 0
    val_seed = int(torch.randint(2**31, (1,), generator=generator))
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    opt = torch.optim.Adam(list(leaves.values()), lr=lr)

    def val_loss(p: Params) -> float:
        if not has_val:
            return math.nan
        g = torch.Generator().manual_seed(val_seed)
        total = 0.0
        with torch.no_grad():
            for _ in range(val_batches):
                w = buffer.sample_windows(past, future, batch, g, split="val")
                total += float(model.window_loss(p, w.past(), w.future()))
        return total / val_batches

    best = {k: v.detach().clone() for k, v in leaves.items()}
    best_val, best_epoch, since, epoch, running = val_loss(best), 0, 0, 0, math.nan
    for epoch in range(1, epochs + 1):
        total = 0.0
        for _ in range(batches_per_epoch):
            w = buffer.sample_windows(past, future, batch, generator, split="train")
            loss = model.window_loss(leaves, w.past(), w.future())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach())
        running = total / batches_per_epoch
        v = val_loss(leaves)
        if math.isnan(v) or math.isnan(best_val) or v < best_val:
            best = {k: t.detach().clone() for k, t in leaves.items()}
            best_val, best_epoch, since = v, epoch, 0
        else:
            since += 1
            if since >= patience:
                break
    return best, RecurrentFitResult(epoch, best_epoch, running, best_val)
