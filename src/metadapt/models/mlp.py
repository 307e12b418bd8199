"""MLP dynamics model as a pure function of a parameter dict.

The network maps normalized ``(s, a)`` to the normalized state delta
``(s' - s - delta_mean) / delta_std`` (0 for a dimension that never changed in
the data, see ``Normalizer``). Parameters live in a plain dict (``Params``) and
are always passed explicitly, so learners can adapt, stack and vmap them. The
forward pass is written with ``F.linear`` on the dict's tensors: the same
operations as ``torch.func.functional_call`` on the module (the same numbers,
bit for bit), without its per-call reparametrisation (a third of the time of a
one-transition prediction).
The normalizer is model state that is not adapted; it is recomputed from all
raw data whenever the training data grows.

With ``action_gain`` the network also has one gain per actuator
(``"action_gain"``, ``A`` numbers, 1 at initialisation) that scales the
normalized action before the first layer. It adds nothing the first layer could
not represent; it gives adaptation a direction of its own for "this actuator
acts weaker, not at all, or reversed" (a disabled joint, a crippled leg, a
motor malfunction): from 16 transitions the gradient of one gain, the
projection of its 500-entry weight column's gradient onto that column, is far
better determined than the column itself (docs/results.md, "Model adaptation").
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from metadapt.models.normalizer import Normalizer
from metadapt.types import Params

ACTION_GAIN = "action_gain"

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": torch.relu,
    "tanh": torch.tanh,
    "silu": F.silu,
    "elu": F.elu,
    "gelu": F.gelu,
}


def check_activation(name: str) -> None:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation '{name}' (allowed: {', '.join(ACTIVATIONS)})")


class _MLP(nn.Module):
    def __init__(self, sizes: Sequence[int], activation: str) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Linear(i, o, device="meta") for i, o in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.act = ACTIVATIONS[activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers[:-1]:
            x = self.act(layer(x))
        return self.layers[-1](x)


class MLPDynamics:
    """Deterministic MLP dynamics with a fixed-variance Gaussian likelihood.

    Args:
        obs_dim: ``O``, observation size.
        act_dim: ``A``, action size.
        hidden: hidden layer widths (paper default ``(500, 500, 500)``).
        activation: one of ``ACTIVATIONS``.
        sigma: the constant standard deviation of the Gaussian likelihood, in
            normalized delta units (MOLe's sigma).
        normalizer: statistics of the training data; identity if omitted.
        action_gain: add the per-actuator gains ``"action_gain"`` (``A``) that
            scale the normalized action (see the module docstring).
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden: Sequence[int] = (500, 500, 500),
        activation: str = "relu",
        sigma: float = 1.0,
        normalizer: Normalizer | None = None,
        action_gain: bool = False,
    ) -> None:
        check_activation(activation)
        if sigma <= 0:
            raise ValueError(f"sigma must be > 0, got {sigma}")
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.hidden = tuple(int(h) for h in hidden)
        self.activation = activation
        self.sigma = float(sigma)
        self.action_gain = bool(action_gain)
        self.net = _MLP((obs_dim + act_dim, *self.hidden, obs_dim), activation)
        self.normalizer = normalizer or Normalizer.identity(obs_dim, act_dim)

    def spec(self) -> dict[str, Any]:
        """The model protocol's spec: type ``"mlp"``, sizes, widths, likelihood and normalizer statistics."""
        return {
            "type": "mlp", "obs_dim": self.obs_dim, "act_dim": self.act_dim, "hidden": list(self.hidden),
            "activation": self.activation, "sigma": self.sigma, "action_gain": self.action_gain,
            "normalizer": {k: v.detach().cpu() for k, v in self.normalizer.state_dict().items()},
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> MLPDynamics:
        """The model ``spec()`` describes (``KeyError``/``ValueError`` on an incomplete one)."""
        return cls(int(spec["obs_dim"]), int(spec["act_dim"]), tuple(int(h) for h in spec["hidden"]),
                   str(spec["activation"]), float(spec["sigma"]), Normalizer.from_state_dict(spec["normalizer"]),
                   bool(spec.get("action_gain", False)))

    # -- parameters ---------------------------------------------------------
    def init_params(self, generator: torch.Generator, device: torch.device | str = "cpu") -> Params:
        """Fresh parameters, uniform in ``+-1/sqrt(fan_in)`` like ``nn.Linear``."""
        params: Params = {}
        for name, p in self.net.named_parameters():
            fan_in = p.shape[-1] if p.dim() == 2 else self.net.get_submodule(name.rsplit(".", 1)[0]).in_features
            bound = 1.0 / math.sqrt(fan_in)
            t = torch.empty(p.shape).uniform_(-bound, bound, generator=generator)
            params[name] = t.to(device)
        if self.action_gain:
            params[ACTION_GAIN] = torch.ones(self.act_dim, device=device)
        return params

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        shapes = {name: tuple(p.shape) for name, p in self.net.named_parameters()}
        if self.action_gain:
            shapes[ACTION_GAIN] = (self.act_dim,)
        return shapes

    def first_weight(self, params: Params) -> torch.Tensor:
        """The first layer's ``H x (O + A)`` weight acting on the normalized inputs, action gains included."""
        w = params["layers.0.weight"]
        if not self.action_gain:
            return w
        g = params[ACTION_GAIN]
        return w * torch.cat([g.new_ones(self.obs_dim), g]).to(w.dtype)

    def gained_inputs(self, x: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
        """Normalized ``... x (O + A)`` inputs with their actions scaled by ``gain`` (broadcastable to
        ``... x A``; a ``S x 1 x A`` stack of gains turns ``K x (O + A)`` inputs into ``S x K x (O + A)``)."""
        o = self.obs_dim
        a = x[..., o:] * gain
        return torch.cat([x[..., :o].expand(*a.shape[:-1], o), a], dim=-1)

    # -- prediction ----------------------------------------------------------
    def predict_normalized_delta(self, params: Params, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """``... x O`` obs and ``... x A`` act -> ``... x O`` normalized delta."""
        x = self.normalizer.normalize_inputs(obs, act)
        if self.action_gain:
            # Scaling the inputs rather than the weight: the window batches adapted on are 16 rows, the weight 500.
            x = self.gained_inputs(x, params[ACTION_GAIN])
        act_fn, last = self.net.act, len(self.hidden)
        for i in range(last):
            x = act_fn(F.linear(x, params[f"layers.{i}.weight"], params[f"layers.{i}.bias"]))
        return F.linear(x, params[f"layers.{last}.weight"], params[f"layers.{last}.bias"])

    def target(self, obs: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
        """The normalized delta the network is trained to output (``... x O``)."""
        return self.normalizer.target(obs, next_obs)

    def predict(self, params: Params, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """Predicted next observation, ``... x O``."""
        n = self.normalizer
        return obs + n.delta_mean + n.delta_gain * self.predict_normalized_delta(params, obs, act)

    def transition_loss(
        self, params: Params, obs: torch.Tensor, act: torch.Tensor, next_obs: torch.Tensor
    ) -> torch.Tensor:
        """Mean squared error in normalized delta space (a scalar)."""
        err = self.predict_normalized_delta(params, obs, act) - self.target(obs, next_obs)
        return err.pow(2).mean()

    def loss(self, params: Params, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """The model protocol's loss: ``transition_loss`` of ``(obs, act, next_obs)``, ``N x (O | A | O)``."""
        return self.transition_loss(params, *batch)

    def log_likelihood(
        self, params: Params, obs: torch.Tensor, act: torch.Tensor, next_obs: torch.Tensor
    ) -> torch.Tensor:
        """Gaussian log-density of each transition with constant variance ``sigma**2``.

        Computed in normalized delta space and summed over the ``O`` state
        dimensions: ``... x O`` inputs -> ``...``.
        """
        err = self.predict_normalized_delta(params, obs, act) - self.target(obs, next_obs)
        var = self.sigma**2
        return -0.5 * err.pow(2).sum(-1) / var - 0.5 * self.obs_dim * math.log(2 * math.pi * var)

    # -- fast planning path --------------------------------------------------
    def fold(
        self, params: Params, dtype: torch.dtype = torch.float32, fused: bool | None = None, prepack: bool = True
    ) -> FoldedMLP:
        """Weights with the normalizer folded in, for repeated planning rollouts.

        Call once per parameter update; the result is reused across control steps.
        ``fused`` and ``prepack`` as in ``FoldedMLP``.
        """
        return FoldedMLP(self, params, dtype, fused, prepack)


def fused_linear_available() -> bool:
    """Whether oneDNN's fused linear + bias + activation kernel is in this PyTorch build."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        torch.ops.mkldnn._linear_pointwise  # noqa: B018  (raises when the op is not built in)
    except (AttributeError, RuntimeError):
        return False
    return True


def _prepack(weight: torch.Tensor, enabled: bool) -> torch.Tensor:
    """``out x in`` weight -> oneDNN's prepacked layout for ``_linear_pointwise`` (the same products, bit for bit).

    Unpacked, every product first reorders the weight into oneDNN's blocked
    layout, which a small-batch product (warm-started CEM's 125 rows) pays
    for on each of its calls. The plain tensor is returned where this build
    cannot prepack.
    """
    if not enabled:
        return weight
    try:
        # The batch-size hint only selects among equivalent layouts; the result is valid for any batch.
        return torch.ops.mkldnn._reorder_linear_weight(weight, 1)
    except (AttributeError, RuntimeError):
        return weight


@functools.cache
def fast_bfloat16(device: str | torch.device = "cpu") -> bool:
    """Whether bfloat16 matrix products beat float32 on ``device``.

    CUDA: when the GPU supports bfloat16. CPU: when it has AMX or AVX-512 BF16
    instructions (read from ``/proc/cpuinfo``; elsewhere assumed absent, since
    without them PyTorch emulates bfloat16 products more slowly than float32).
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


class FoldedMLP:
    """An MLP prepared for repeated planning rollouts with fixed parameters.

    The output de-normalization is folded into the last layer
    (``s' = s + delta_mean + delta_std * (W h + b)``). The input normalization is
    applied to the state in float32 before the product rather than folded into
    the weights: folding it would subtract large, nearly equal terms, which
    bfloat16 inputs cannot resolve.

    Two equivalent paths:

    - plain: the first layer is split into state and action blocks so a whole
      ``N x H x A`` action tensor is projected in one product before the rollout;
    - fused (bfloat16 ReLU networks on CPU, by default): every hidden layer is
      one oneDNN call with the bias and ReLU applied in the product's epilogue.
      In bfloat16 a separate bias add and ReLU each cost a quarter of the AMX
      product they follow, so fusing them is most of the gap to the
      matrix-product floor.

    Args:
        model: the dynamics model (architecture and normalizer).
        params: its parameter dict.
        dtype: the weights' dtype (the state and returns stay float32).
        fused: force the fused path on or off; ``None`` picks it when available.
        prepack: the fused path's weights reordered once into oneDNN's layout
            (same results; off only to measure what it saves). Prepacked
            tensors are opaque: such a ``FoldedMLP`` cannot be deep-copied or
            pickled; fold the parameters again instead (under a millisecond).
    """

    def __init__(
        self, model: MLPDynamics, params: Params, dtype: torch.dtype = torch.float32, fused: bool | None = None,
        prepack: bool = True,
    ) -> None:
        layers = len(model.hidden) + 1
        o = model.obs_dim
        w1 = model.first_weight(params)
        can_fuse = (
            model.activation == "relu" and dtype == torch.bfloat16 and w1.device.type == "cpu"
            and fused_linear_available()
        )
        if fused and not can_fuse:
            raise ValueError("the fused planning path needs a ReLU network, bfloat16 weights and a CPU oneDNN build")
        self.fused = can_fuse if fused is None else fused
        with torch.no_grad():
            w1 = w1.float()
            n = model.normalizer.to(w1.device)
            self.obs_mean, self.obs_inv_std = n.obs_mean, n.obs_scale
            self.act_mean, self.act_inv_std = n.act_mean, n.act_scale
            self.b1 = params["layers.0.bias"].to(dtype)
            if self.fused:
                # oneDNN takes weights as stored by nn.Linear (out x in).
                # One pass each, also from a transposed view (MOLe's stored layout); then reordered once
                # into oneDNN's blocked layout, which the product would otherwise do on every call.
                dense = torch.contiguous_format
                self.w1 = _prepack(w1.to(dtype, memory_format=dense), prepack)
                self.mid = [
                    (_prepack(params[f"layers.{i}.weight"].to(dtype, memory_format=dense), prepack),
                     params[f"layers.{i}.bias"].to(dtype))
                    for i in range(1, layers - 1)
                ]
            else:
                self.ws_t = w1[:, :o].t().contiguous().to(dtype)
                self.wa_t = w1[:, o:].t().contiguous().to(dtype)
                self.mid = [
                    (params[f"layers.{i}.weight"].t().contiguous().to(dtype), params[f"layers.{i}.bias"].to(dtype))
                    for i in range(1, layers - 1)
                ]
            wl = params[f"layers.{layers - 1}.weight"].float() * n.delta_gain[:, None]
            self.wl_t = wl.t().contiguous().to(dtype)
            self.bl = params[f"layers.{layers - 1}.bias"].float() * n.delta_gain + n.delta_mean
        self.dtype = dtype
        self.relu = model.activation == "relu"
        self.act_fn = ACTIVATIONS[model.activation]

    def _act(self, h: torch.Tensor) -> torch.Tensor:
        return h.relu_() if self.relu else self.act_fn(h)

    def project_actions(self, actions: torch.Tensor) -> torch.Tensor:
        """``N x H x A`` -> ``H x N x C``, what ``step`` takes per time step.

        Plain path: the action block of layer 1 plus its bias (``C`` = hidden);
        fused path: the normalized actions in the weights' dtype (``C = A``).
        """
        a = ((actions.transpose(0, 1).float() - self.act_mean) * self.act_inv_std).to(self.dtype)
        if self.fused:
            return a
        return torch.matmul(a, self.wa_t).add_(self.b1)

    def step(self, obs: torch.Tensor, act_proj: torch.Tensor) -> torch.Tensor:
        """One model step: ``N x O`` float32 state, ``N x C`` prepared action -> ``N x O`` next state."""
        x = ((obs - self.obs_mean) * self.obs_inv_std).to(self.dtype)
        if self.fused:
            linear = torch.ops.mkldnn._linear_pointwise
            h = linear(torch.cat([x, act_proj], dim=-1), self.w1, self.b1, "relu", [], "")
            for w, b in self.mid:
                h = linear(h, w, b, "relu", [], "")
        else:
            h = self._act(torch.addmm(act_proj, x, self.ws_t))
            for w_t, b in self.mid:
                h = self._act(torch.addmm(b, h, w_t))
        # Bias and delta are added in float32 so the state does not accumulate bfloat16 rounding.
        return torch.mm(h, self.wl_t).float().add_(self.bl).add_(obs)
