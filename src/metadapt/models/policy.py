"""Stochastic policies as pure functions of a parameter dict (MAML-RL, and later model-free systems).

Both policies are MLPs (``models/regressor.py``'s stacked-capable forward pass)
with a distribution on top:

- ``GaussianMLPPolicy``: a diagonal Gaussian whose mean is the network's
  output and whose log standard deviation is one learned vector, independent of
  the state (``"log_std"``, ``A``), as in the original MAML-RL code (rllab).
- ``CategoricalMLPPolicy``: a categorical over ``A`` discrete actions whose
  logits are the network's output.

Parameters may be stacked (every tensor ``B x ...``, one policy per task of a
meta-batch): observations are then ``B x N x O`` and every method returns
``B x N`` values, in one batched pass (``stacked = True``). Unstacked
parameters take ``N x O`` (or any ``... x O``) observations.

Every method a policy-gradient algorithm needs is here: ``sample`` (with a
``torch.Generator``), ``log_prob``, ``kl`` (``KL(old || new)`` per state, what
TRPO bounds), ``entropy`` and ``mode`` (the deterministic action).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch

from metadapt.models.regressor import MLPRegressor
from metadapt.types import Params

LOG_STD = "log_std"
LOG_2PI = math.log(2 * math.pi)


@runtime_checkable
class Policy(Protocol):
    """What a policy-gradient learner needs of a policy (shapes: see the module docstring)."""

    obs_dim: int
    act_dim: int
    discrete: bool

    def init_params(self, generator: torch.Generator, device: torch.device | str = "cpu") -> Params:
        ...

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        ...

    def sample(self, params: Params, obs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Actions for ``... x O`` observations: ``... x A`` floats, or ``...`` integer indices when discrete."""
        ...

    def mode(self, params: Params, obs: torch.Tensor) -> torch.Tensor:
        ...

    def log_prob(self, params: Params, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """``...`` log-densities of ``act`` in the states ``obs``."""
        ...

    def kl(self, old: Params, new: Params, obs: torch.Tensor) -> torch.Tensor:
        """``...`` KL divergences ``KL(pi_old(.|s) || pi_new(.|s))``."""
        ...

    def entropy(self, params: Params, obs: torch.Tensor) -> torch.Tensor:
        ...


def _glorot_mlp(net: MLPRegressor, generator: torch.Generator, device: torch.device | str) -> Params:
    """Glorot-uniform weights and zero biases, the initialisation of rllab's MLP policies."""
    params: Params = {}
    for name, shape in net.param_shapes().items():
        if name.endswith("bias"):
            params[name] = torch.zeros(shape, device=device)
        else:
            bound = math.sqrt(6.0 / (shape[0] + shape[1]))
            params[name] = torch.empty(shape).uniform_(-bound, bound, generator=generator).to(device)
    return params


class _MLPPolicy:
    stacked = True
    discrete = False

    def __init__(self, obs_dim: int, out_dim: int, hidden: Sequence[int], activation: str) -> None:
        self.net = MLPRegressor(obs_dim, out_dim, hidden, activation)
        self.obs_dim, self.hidden, self.activation = int(obs_dim), self.net.hidden, activation

    def _out(self, params: Params, obs: torch.Tensor) -> torch.Tensor:
        """The network's output for ``B x ... x O`` (stacked) or ``... x O`` observations."""
        lead = obs.shape[:-1]
        if params["layers.0.weight"].dim() == 3:
            flat = obs.reshape(obs.shape[0], -1, obs.shape[-1])
        elif obs.dim() <= 2:
            return self.net.forward(params, obs)
        else:
            flat = obs.reshape(-1, obs.shape[-1])
        return self.net.forward(params, flat).reshape(*lead, -1)


class GaussianMLPPolicy(_MLPPolicy):
    """A diagonal Gaussian policy, ``a ~ N(mlp(s), diag(exp(log_std))^2)``.

    Args:
        obs_dim: ``O``.
        act_dim: ``A``.
        hidden: hidden widths (MAML-RL: ``(100, 100)``).
        activation: one of ``metadapt.models.ACTIVATIONS`` (MAML-RL: ReLU).
        init_std: the standard deviation before training (rllab: 1).
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int] = (100, 100), activation: str = "relu",
                 init_std: float = 1.0) -> None:
        if not init_std > 0:
            raise ValueError(f"init_std must be > 0, got {init_std}")
        super().__init__(obs_dim, act_dim, hidden, activation)
        self.act_dim, self.init_std = int(act_dim), float(init_std)

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return {**self.net.param_shapes(), LOG_STD: (self.act_dim,)}

    def init_params(self, generator: torch.Generator, device: torch.device | str = "cpu") -> Params:
        params = _glorot_mlp(self.net, generator, device)
        params[LOG_STD] = torch.full((self.act_dim,), math.log(self.init_std), device=device)
        return params

    def _log_std(self, params: Params, like: torch.Tensor) -> torch.Tensor:
        """``log_std`` broadcastable against ``like`` (stacked ``B x A`` against ``B x ... x A``: ``B x 1 .. x A``)."""
        s = params[LOG_STD]
        return s.view(s.shape[0], *([1] * (like.dim() - 2)), s.shape[1]) if s.dim() == 2 else s

    def mode(self, params: Params, obs: torch.Tensor) -> torch.Tensor:
        return self._out(params, obs)

    def sample(self, params: Params, obs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        with torch.no_grad():
            mean = self._out(params, obs)
            noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
            return mean + noise * self._log_std(params, mean).exp()

    def log_prob(self, params: Params, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        mean = self._out(params, obs)
        log_std = self._log_std(params, mean)
        z = (act - mean) * torch.exp(-log_std)
        return (-0.5 * z.pow(2) - log_std - 0.5 * LOG_2PI).sum(-1)

    def kl(self, old: Params, new: Params, obs: torch.Tensor) -> torch.Tensor:
        m0, m1 = self._out(old, obs), self._out(new, obs)
        s0, s1 = self._log_std(old, m0), self._log_std(new, m1)
        # KL(N0 || N1) per dimension: log(s1/s0) + (s0^2 + (m0 - m1)^2) / (2 s1^2) - 1/2
        return (s1 - s0 + (torch.exp(2 * s0) + (m0 - m1).pow(2)) / (2 * torch.exp(2 * s1)) - 0.5).sum(-1)

    def entropy(self, params: Params, obs: torch.Tensor) -> torch.Tensor:
        mean = self._out(params, obs)
        return (self._log_std(params, mean) + 0.5 * (LOG_2PI + 1)).expand_as(mean).sum(-1)


class CategoricalMLPPolicy(_MLPPolicy):
    """A categorical policy over ``A`` actions with logits ``mlp(s)``; actions are integer indices."""

    discrete = True

    def __init__(self, obs_dim: int, num_actions: int, hidden: Sequence[int] = (100, 100),
                 activation: str = "relu") -> None:
        if num_actions < 2:
            raise ValueError(f"a categorical policy needs at least 2 actions, got {num_actions}")
        super().__init__(obs_dim, num_actions, hidden, activation)
        self.act_dim = int(num_actions)

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return self.net.param_shapes()

    def init_params(self, generator: torch.Generator, device: torch.device | str = "cpu") -> Params:
        return _glorot_mlp(self.net, generator, device)

    def _log_probs(self, params: Params, obs: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self._out(params, obs), dim=-1)

    def mode(self, params: Params, obs: torch.Tensor) -> torch.Tensor:
        return self._out(params, obs).argmax(-1)

    def sample(self, params: Params, obs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        with torch.no_grad():
            probs = self._log_probs(params, obs).exp()
            flat = probs.reshape(-1, self.act_dim)
            return torch.multinomial(flat, 1, generator=generator).reshape(probs.shape[:-1])

    def log_prob(self, params: Params, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        return self._log_probs(params, obs).gather(-1, act.long().unsqueeze(-1)).squeeze(-1)

    def kl(self, old: Params, new: Params, obs: torch.Tensor) -> torch.Tensor:
        lp0, lp1 = self._log_probs(old, obs), self._log_probs(new, obs)
        return (lp0.exp() * (lp0 - lp1)).sum(-1)

    def entropy(self, params: Params, obs: torch.Tensor) -> torch.Tensor:
        lp = self._log_probs(params, obs)
        return -(lp.exp() * lp).sum(-1)
