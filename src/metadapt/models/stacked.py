"""Hand-written forward and in-place SGD step for a stack of MLPs that share one input window.

MOLe evaluates and updates every component on the same window each time
step. Through ``vmap(grad(...))`` that is a forward pass, a backward pass that
materialises a ``C x ...`` gradient per parameter, and an update that reads
the parameters and the gradients and writes new parameters: five passes over
``C`` copies of the network, which at 3 x 500 and ``C = 10`` is 20 MB each.
Here the per-member step scale is folded into the output error, so every
weight update is one ``addmm``/``baddbmm`` that reads the weights and writes
the result, in place or into another member's place (two passes, no gradient
tensor). The same numbers as ``vmap(grad(loss))``
followed by ``theta - lr * scale * grad``, to float rounding.

The stack is stored with every weight transposed (``S x in x out``,
``to_storage``): a batched product of 16 window rows against ``in x out``
weights runs about 1.3-2x faster than against ``nn.Linear``'s ``out x in``
(a transposed operand per member). ``from_storage`` gives the ``nn.Linear``
layout back as views.

Action gains (``MLPDynamics(action_gain=True)``) make the first layer's input
per member (``S x K x D``); their step is the action part of the error that
flows below the first layer, times the raw normalized actions, summed over the
window.

Sliding windows (``WindowCache``): an agent's window moves by one transition per
step, so a member whose parameters did not change since the last window already
has its activations on all but the newest row. With a cache, ``forward`` runs the
newest row through every member (a ``S x 1`` product, which reads each weight
once instead of multiplying 16 rows by it) and the whole window only through the
members the caller names as changed; the rows are kept in ring order (the oldest
is overwritten), which changes nothing the window is summed over: the loss and
every gradient are sums over rows.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

import torch

from metadapt.models.mlp import ACTION_GAIN, MLPDynamics
from metadapt.types import Params

FUSED_ACTIVATIONS = ("relu", "tanh")


@dataclass
class WindowCache:
    """What ``StackedMLP.forward`` computed on the last window, for reuse on the next one.

    ``x`` (the normalized inputs, ``K x D``), ``inputs``, ``err`` (``S x K x O``)
    and ``target`` (``K x O``) are ``forward``'s buffers, rows in ring order
    (``oldest`` is the row of the window's first transition); ``window`` is the
    raw window they were computed on (``K x O``, ``K x A``, ``K x O``, in order)
    and ``normalizer`` the normalizer that made ``x``: the next call reuses them
    only when its window is this one moved by exactly one transition, normalized
    by the same object. ``hits`` counts the calls that reused them.
    """

    x: torch.Tensor | None = None
    inputs: list[torch.Tensor] = field(default_factory=list)
    err: torch.Tensor | None = None
    target: torch.Tensor | None = None
    window: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    normalizer: object = None
    oldest: int = 0
    hits: int = 0

    def clear(self) -> None:
        """Forget the last window (the next ``forward`` runs every member on the whole window)."""
        self.fill(None, [], None, None, None, None)

    def fill(self, x: torch.Tensor | None, inputs: list[torch.Tensor], err: torch.Tensor | None,
             target: torch.Tensor | None, window: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None,
             normalizer: object) -> None:
        """A whole-window forward's buffers (oldest row first) and its raw window (copied)."""
        self.x, self.inputs, self.err, self.target, self.normalizer, self.oldest = x, inputs, err, target, normalizer, 0
        self.window = None if window is None else tuple(t.clone() for t in window)  # type: ignore[assignment]

    def select(self, members: list[int]) -> None:
        """Keep the rows of these members, in this order (members added, removed or reordered)."""
        if self.err is None:
            return
        index = torch.tensor(members, device=self.err.device)
        self.err = self.err[index]
        # The per-member buffers; the shared ones (the inputs without gains, the raw actions) stay.
        self.inputs = [h[index] if h.dim() == 3 else h for h in self.inputs]

    def slid(self, obs: torch.Tensor, act: torch.Tensor, next_obs: torch.Tensor, members: int,
             model: MLPDynamics) -> bool:
        """Whether the window (``K x O``, ``K x A``, ``K x O``) is the cached one moved by one transition, for
        ``members`` members and ``model``'s current normalizer."""
        if self.window is None or self.err is None or self.err.shape[0] != members or \
                self.normalizer is not model.normalizer:
            return False
        return all(new.shape == old.shape and torch.equal(new[:-1], old[1:])
                   for new, old in zip((obs, act, next_obs), self.window, strict=True))


class StackedMLP:
    """Forward and SGD step for ``S`` stacked copies of ``model``'s network.

    Args:
        model: the dynamics model (architecture, normalizer); its activation
            must be in ``FUSED_ACTIVATIONS``.
    """

    def __init__(self, model: MLPDynamics) -> None:
        if model.activation not in FUSED_ACTIVATIONS:
            raise ValueError(f"the fused MOLe step supports activations {FUSED_ACTIVATIONS}, not {model.activation}")
        self.model = model
        self.num_layers = len(model.hidden) + 1
        self.relu = model.activation == "relu"
        self._weights = frozenset(f"layers.{i}.weight" for i in range(self.num_layers))

    def to_storage(self, params: Params) -> Params:
        """``nn.Linear`` layout (``... x out x in`` weights) -> the stored one (``... x in x out``, contiguous)."""
        return {k: v.transpose(-1, -2).contiguous() if k in self._weights else v for k, v in params.items()}

    def from_storage(self, stored: Params) -> Params:
        """The stored layout -> ``nn.Linear``'s, as views (no copy)."""
        return {k: v.transpose(-1, -2) if k in self._weights else v for k, v in stored.items()}

    def forward(
        self, stack: Params, obs: torch.Tensor, act: torch.Tensor, next_obs: torch.Tensor,
        cache: WindowCache | None = None, changed: Collection[int] = (),
    ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """Every member on one window: ``K x O``, ``K x A``, ``K x O`` -> per-member MSE ``S``.

        ``stack`` is in the stored layout (``to_storage``).

        Also returns the layer inputs (``[K x D, S x K x H, ...]``; with action
        gains the first is ``S x K x D`` and the raw normalized actions ``K x A``
        follow the last) and the output error ``S x K x O`` that ``sgd_step_`` needs.

        With a ``cache``, when the window is the cached one moved by one
        transition, only the newest row runs through the members not in
        ``changed`` (indices of the members whose parameters changed since the
        cached call: every such member must be listed); otherwise, or when most
        members changed, the whole window runs through every member. The
        returned tensors are then the cache's buffers (rows in ring order) and are
        valid until the next call.
        """
        s = next(iter(stack.values())).shape[0]
        m = self.model
        changed = sorted(set(changed))  # a member listed twice is still one member (and counts once below)
        if cache is not None and 2 * len(changed) <= s and cache.slid(obs, act, next_obs, s, m):
            cache.hits += 1
            return self._forward_slid(stack, obs, act, next_obs, cache, changed)
        x = m.normalizer.normalize_inputs(obs, act)
        target = m.target(obs, next_obs)
        # The first layer's input is shared and broadcast (per member with action gains).
        h = m.gained_inputs(x, stack[ACTION_GAIN].unsqueeze(1)) if m.action_gain else x
        *hidden, err = self._through(stack, slice(None), h, target)
        inputs = [h, *hidden, *([x[:, m.obs_dim:]] if m.action_gain else [])]
        if cache is not None:
            cache.fill(x, inputs, err, target, (obs, act, next_obs), m.normalizer)
        return err.pow(2).mean((1, 2)), inputs, err

    def _through(
        self, stack: Params, members: int | slice, h: torch.Tensor, target: torch.Tensor
    ) -> list[torch.Tensor]:
        """The network of ``members`` (one, ``int``, or ``n``, a slice of the stack) on ``h`` (``[n x] R x D``,
        or ``R x D`` shared): each hidden layer's activations (``[n x] R x H``), then the output minus
        ``target`` (``[n x] R x O``)."""
        outs = []
        for i in range(self.num_layers):
            w, b = stack[f"layers.{i}.weight"][members], stack[f"layers.{i}.bias"][members]
            z = torch.matmul(h, w).add_(b if isinstance(members, int) else b.unsqueeze(-2))
            if i == self.num_layers - 1:
                return [*outs, z.sub_(target)]
            h = z.relu_() if self.relu else z.tanh_()
            outs.append(h)
        raise AssertionError("unreachable")

    def _forward_slid(
        self, stack: Params, obs: torch.Tensor, act: torch.Tensor, next_obs: torch.Tensor, cache: WindowCache,
        changed: list[int],
    ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """``forward`` on a window (``K x O``, ``K x A``, ``K x O``) that moved by one transition: the
        newest row through every member not in ``changed`` (member indices), the whole window through
        those in it; the newest row overwrites the oldest in the cache's buffers, which are returned."""
        m, r = self.model, cache.oldest
        assert cache.x is not None and cache.err is not None and cache.target is not None
        # The raw actions that follow the layer inputs with gains are a view of x: they move with it.
        x, inputs, err, target = cache.x, cache.inputs, cache.err, cache.target
        x[r] = m.normalizer.normalize_inputs(obs[-1], act[-1])
        target[r] = m.target(obs[-1], next_obs[-1])
        gain = stack[ACTION_GAIN] if m.action_gain else None
        # The newest row through each run of consecutive unchanged members (1 x D in, n x 1 x out at each
        # layer, on views of the stack: the weights are read once and not copied).
        for a, b in _runs(err.shape[0], changed):
            h = x[r:r + 1] if gain is None else m.gained_inputs(x[r:r + 1], gain[a:b].unsqueeze(1))
            for buf, out in zip([*inputs[1:self.num_layers], err], self._through(stack, slice(a, b), h, target[r]),
                                strict=True):
                buf[a:b, r] = out[:, 0]
            if gain is not None:
                inputs[0][a:b, r] = h[:, 0]
        # The whole window through each changed member, written into its buffers.
        for j in changed:
            h = x if gain is None else m.gained_inputs(x, gain[j])
            for buf, out in zip([*inputs[1:self.num_layers], err], self._through(stack, j, h, target), strict=True):
                buf[j] = out
            if gain is not None:
                inputs[0][j] = h
        cache.oldest = (r + 1) % err.shape[1]
        cache.window = tuple(t.clone() for t in (obs, act, next_obs))  # type: ignore[assignment]
        return err.pow(2).mean((1, 2)), inputs, err

    def sgd_step_(
        self, stack: Params, inputs: list[torch.Tensor], err: torch.Tensor, scale: torch.Tensor,
        lr: float | Params, member_lr: dict[int, float | Params] | None = None,
        member_out: dict[int, Params] | None = None,
    ) -> list[int]:
        """``theta_s -= lr * scale_s * grad_s(MSE)`` for every member, in place (or into ``member_out``).

        Members whose scale is exactly 0 are not touched: when most are idle
        (MOLe's posterior is nearly one-hot) the step runs member by member on
        views of the stack, reading only the weights that change.

        Args:
            stack: the parameters ``forward`` ran with (``S x ...`` each, stored layout), updated in place.
            inputs, err: from ``forward``.
            scale: ``S`` per-member step multipliers (MOLe's posterior).
            lr: a scalar or a per-parameter dict (Meta-SGD) of step sizes, the dict in the stored layout.
            member_lr: step sizes of particular members that differ from ``lr`` (dicts in the stored layout).
            member_out: particular members whose updated parameters are written to
                these tensors (stored layout, one member's shapes) instead of in
                place: one pass that reads the member and writes the result, where
                a copy followed by an in-place step would take two. A member that
                does not step is copied there.

        Returns:
            the members whose parameters in ``stack`` changed.
        """
        s, k, o = err.shape
        own, outs = dict(member_lr or {}), dict(member_out or {})
        base = scale.to(err.dtype) * (2.0 / (k * o))
        # A scalar rate is folded into the output error; a per-parameter (dict) one is applied per weight.
        per_member = base * (1.0 if isinstance(lr, dict) else float(lr))
        for j, r in own.items():
            per_member[j] = base[j] * (1.0 if isinstance(r, dict) else float(r))
        active = torch.nonzero(scale != 0).squeeze(1).tolist()
        for j in set(outs) - set(active):  # an out tensor always ends up holding the member's parameters
            for name, t in outs[j].items():
                t.copy_(stack[name][j])
        if 2 * len(active) > s and not own and not outs:
            # The scaled, negated gradient at the output, every member at once.
            self._backward_(stack, inputs, err * (-per_member).view(s, 1, 1), lr, None)
            return active
        for j in active:
            member = [h if h.dim() == 2 else h[j] for h in inputs]
            self._backward_(stack, member, err[j] * -per_member[j], own.get(j, lr), j, outs.get(j))
        return [j for j in active if j not in outs]

    def _backward_(
        self, stack: Params, inputs: list[torch.Tensor], dz: torch.Tensor, lr: float | Params, member: int | None,
        out: Params | None = None,
    ) -> None:
        """Backpropagate ``dz`` (``S x K x O``, or ``K x O`` for one ``member``); update in place or into ``out``."""
        for i in reversed(range(self.num_layers)):
            w, b = stack[f"layers.{i}.weight"], stack[f"layers.{i}.bias"]
            if member is not None:
                w, b = w[member], b[member]
            # Where the update goes: in place, or into the member's out tensors.
            w_to, b_to = (w, b) if out is None else (out[f"layers.{i}.weight"], out[f"layers.{i}.bias"])
            h = inputs[i]
            # The error flows to the layer below through the weights as they were before this step.
            below = torch.matmul(dz, w.transpose(-1, -2)) if i > 0 else None
            if i == 0 and self.model.action_gain:
                self._gain_step_(stack, inputs[-1], torch.matmul(dz, w[..., self.model.obs_dim:, :].transpose(-1, -2)),
                                 lr, member, out)
            if member is None and h.dim() == 2:
                h = h.expand(dz.shape[0], -1, -1)
            rows = dz.dim() - 2  # the row axis of dz (0 for one member, 1 for the stack)
            if isinstance(lr, dict):
                lr_w, lr_b = lr[f"layers.{i}.weight"], lr[f"layers.{i}.bias"]
                torch.addcmul(w, lr_w, torch.matmul(h.transpose(-1, -2), dz), out=w_to)
                torch.addcmul(b, lr_b, dz.sum(rows), out=b_to)
            elif member is None:
                w.baddbmm_(h.transpose(1, 2), dz)
                b.add_(dz.sum(rows))
            else:
                torch.addmm(w, h.t(), dz, out=w_to)
                torch.add(b, dz.sum(rows), out=b_to)
            if below is not None:
                # ReLU's derivative from its output, masked in one op (autograd's own kernel for it).
                dz = torch.ops.aten.threshold_backward(below, inputs[i], 0) if self.relu else \
                    below.mul_(1 - inputs[i].pow(2))

    @staticmethod
    def _gain_step_(stack: Params, act: torch.Tensor, below: torch.Tensor, lr: float | Params, member: int | None,
                    out: Params | None) -> None:
        """Action gains' step: ``below`` (``[S x] K x A``, the scaled error reaching the gained inputs) times
        the raw normalized actions ``act`` (``K x A``), summed over the window."""
        g = stack[ACTION_GAIN] if member is None else stack[ACTION_GAIN][member]
        step = (below * act).sum(-2)
        if isinstance(lr, dict):
            step = step * lr[ACTION_GAIN]
        torch.add(g, step, out=g if out is None else out[ACTION_GAIN])


def _runs(n: int, skip: list[int]) -> list[tuple[int, int]]:
    """The maximal ``[start, stop)`` ranges of ``range(n)`` that contain no index in ``skip`` (sorted, distinct:
    ``forward`` makes it so)."""
    runs, start = [], 0
    for j in skip:
        if j > start:
            runs.append((start, j))
        start = j + 1
    return [*runs, (start, n)] if start < n else runs
