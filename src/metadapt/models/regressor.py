"""MLP regressor for few-shot regression (the MAML paper's sinusoid network: 1 -> 40 -> 40 -> 1, ReLU).

A pure function of its parameter dict. Parameters may be stacked (every tensor
``B x ...``, one network per task of a meta-batch): the forward pass is then one
``baddbmm`` per layer over the ``B`` tasks instead of ``B`` small products, and
``loss`` returns one loss per task (``stacked = True``, see ``models/base.py``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from metadapt.models.mlp import ACTIVATIONS, check_activation
from metadapt.types import Params


class MLPRegressor:
    """``x -> y`` with mean squared error.

    Args:
        in_dim: ``D``, input size.
        out_dim: ``E``, output size.
        hidden: hidden widths (MAML: ``(40, 40)``).
        activation: one of ``metadapt.models.ACTIVATIONS``.
    """

    stacked = True

    def __init__(self, in_dim: int = 1, out_dim: int = 1, hidden: Sequence[int] = (40, 40),
                 activation: str = "relu") -> None:
        check_activation(activation)
        if in_dim < 1 or out_dim < 1 or any(int(h) < 1 for h in hidden):
            raise ValueError(f"layer sizes must be >= 1, got {in_dim}, {list(hidden)}, {out_dim}")
        self.in_dim, self.out_dim = int(in_dim), int(out_dim)
        self.hidden = tuple(int(h) for h in hidden)
        self.activation = activation
        self._act = ACTIVATIONS[activation]
        self._sizes = (self.in_dim, *self.hidden, self.out_dim)

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        shapes: dict[str, tuple[int, ...]] = {}
        for i, (n_in, n_out) in enumerate(zip(self._sizes[:-1], self._sizes[1:], strict=True)):
            shapes[f"layers.{i}.weight"] = (n_out, n_in)
            shapes[f"layers.{i}.bias"] = (n_out,)
        return shapes

    def init_params(self, generator: torch.Generator, device: torch.device | str = "cpu") -> Params:
        """Uniform in ``+-1/sqrt(fan_in)``, as ``nn.Linear``."""
        params: Params = {}
        for name, shape in self.param_shapes().items():
            fan_in = self._sizes[int(name.split(".")[1])]
            bound = 1.0 / math.sqrt(fan_in)
            params[name] = torch.empty(shape).uniform_(-bound, bound, generator=generator).to(device)
        return params

    def forward(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        """``N x D -> N x E`` with plain parameters; ``B x N x D -> B x N x E`` with stacked ones."""
        n = len(self._sizes) - 1
        for i in range(n):
            w, b = params[f"layers.{i}.weight"], params[f"layers.{i}.bias"]
            x = torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2)) if w.dim() == 3 else F.linear(x, w, b)
            if i < n - 1:
                x = self._act(x)
        return x

    def loss(self, params: Params, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Mean squared error of ``(x, y)``: a scalar, or ``B`` per-task means when stacked."""
        x, y = batch
        err = (self.forward(params, x) - y).pow(2)
        return err.mean(dim=(-2, -1))
