"""ReBAL's recurrent dynamics model (seed 004): a GRU context read from recent transitions.

A GRU reads normalized transitions ``[s, a, s' - s]`` into a context ``h``
(``C`` numbers); an MLP predicts the normalized state delta from ``(s, a, h)``.
Trained on windows so that the context of the M past steps adapts the
predictions of the K next ones. All parameters are one dict
(``gru.*`` and ``mlp.*``) used through ``torch.func.functional_call``.

For planning, a fixed context is a constant input of the MLP's first layer,
so ``planning_params`` folds it into that layer's bias: the planner then runs
the plain ``MLPDynamics`` fast path, with the context broadcast to every
candidate at no cost.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.func import functional_call

from metadapt.models.mlp import _MLP, MLPDynamics, check_activation
from metadapt.models.normalizer import Normalizer
from metadapt.types import Params


class RecurrentDynamics:
    """GRU context + MLP dynamics.

    Args:
        obs_dim: ``O``. act_dim: ``A``.
        hidden: MLP widths. context: ``C``, the GRU state size.
        activation, sigma, normalizer: as ``MLPDynamics``.
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden: Sequence[int] = (500, 500, 500),
        context: int = 32,
        activation: str = "relu",
        sigma: float = 1.0,
        normalizer: Normalizer | None = None,
    ) -> None:
        check_activation(activation)
        self.obs_dim, self.act_dim, self.context_dim = obs_dim, act_dim, context
        self.hidden, self.activation, self.sigma = tuple(hidden), activation, float(sigma)
        self.gru = nn.GRU(2 * obs_dim + act_dim, context, batch_first=True, device="meta")
        self.mlp = _MLP((obs_dim + act_dim + context, *self.hidden, obs_dim), activation)
        self.normalizer = normalizer or Normalizer.identity(obs_dim, act_dim)

    def init_params(self, generator: torch.Generator, device: torch.device | str = "cpu") -> Params:
        params: Params = {}
        for prefix, module in (("gru", self.gru), ("mlp", self.mlp)):
            for name, p in module.named_parameters():
                # as PyTorch initialises them: GRU uniform in +-1/sqrt(C), Linear in +-1/sqrt(fan_in)
                owner = name.rsplit(".", 1)[0]
                fan = self.context_dim if prefix == "gru" else module.get_submodule(owner).in_features
                bound = 1.0 / math.sqrt(fan)
                params[f"{prefix}.{name}"] = torch.empty(p.shape).uniform_(-bound, bound, generator=generator)
        return {k: v.to(device) for k, v in params.items()}

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return {f"{prefix}.{n}": tuple(p.shape) for prefix, module in (("gru", self.gru), ("mlp", self.mlp))
                for n, p in module.named_parameters()}

    @staticmethod
    def _part(params: Params, prefix: str) -> Params:
        n = len(prefix) + 1
        return {k[n:]: v for k, v in params.items() if k.startswith(prefix + ".")}

    def _inputs(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        return self.normalizer.normalize_inputs(obs, act)

    def target(self, obs: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
        return self.normalizer.target(obs, next_obs)

    def context(
        self, params: Params, obs: torch.Tensor, act: torch.Tensor, next_obs: torch.Tensor,
        h0: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Context after reading transitions ``B x M x (O | A | O)`` (or ``M x ...``): ``B x C`` (or ``C``)."""
        x = torch.cat([self._inputs(obs, act), self.target(obs, next_obs)], dim=-1)
        single = x.dim() == 2
        if single:
            x = x[None]
        if h0 is not None:
            h0 = (h0[None] if single else h0)[None]
        if x.shape[1] == 0:
            h = torch.zeros(x.shape[0], self.context_dim, device=x.device) if h0 is None else h0[0]
        else:
            _, hn = functional_call(self.gru, self._part(params, "gru"), (x, h0))
            h = hn[0]
        return h[0] if single else h

    def predict_normalized_delta(self, params: Params, obs: torch.Tensor, act: torch.Tensor,
                                 h: torch.Tensor) -> torch.Tensor:
        """``... x O``, ``... x A`` and a context broadcastable to ``... x C`` -> ``... x O``."""
        x = self._inputs(obs, act)
        h = h.expand(*x.shape[:-1], self.context_dim)
        return functional_call(self.mlp, self._part(params, "mlp"), (torch.cat([x, h], dim=-1),))

    def window_loss(
        self, params: Params, past: tuple[torch.Tensor, ...], future: tuple[torch.Tensor, ...]
    ) -> torch.Tensor:
        """MSE of the K future predictions conditioned on the context of the M past steps (``B x ...``)."""
        h = self.context(params, *past)
        obs, act, nxt = future
        pred = self.predict_normalized_delta(params, obs, act, h[:, None, :])
        return (pred - self.target(obs, nxt)).pow(2).mean()

    def planning_model(self) -> MLPDynamics:
        """The plain MLP view used by the planner (same widths, activation, sigma and normalizer)."""
        return MLPDynamics(self.obs_dim, self.act_dim, self.hidden, self.activation, self.sigma, self.normalizer)

    def planning_params(self, params: Params, h: torch.Tensor) -> Params:
        """``MLPDynamics`` parameters equal to this model with the context fixed to ``h`` (``C``)."""
        mlp = self._part(params, "mlp")
        w0 = mlp["layers.0.weight"]
        d = self.obs_dim + self.act_dim
        out = dict(mlp)
        out["layers.0.weight"] = w0[:, :d]
        out["layers.0.bias"] = mlp["layers.0.bias"] + w0[:, d:] @ h
        return out
