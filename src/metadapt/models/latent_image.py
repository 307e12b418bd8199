"""Meta-GCG's latent image model (seed 001, Appendix A): encoder, ConvGRU dynamics, binned reward head.

The model never reconstructs images. It encodes the last ``K`` frames
(``N x K x S x S``, grayscale, uint8 or float in ``[0, 1]``) into a latent
grid, steps that grid with a convolutional GRU given discrete actions, and
predicts the reward of every step from the predicted grid as logits over
``bins`` evenly spaced reward values (trained with cross-entropy against
two-hot targets, read out as the expected value):

- encoder: unpadded convolutions ``encoder_channels`` / ``encoder_kernels`` /
  ``encoder_strides``, ELU after each; the paper's 32, 64, 64, 128 with kernels
  3, 3, 3, 2 and strides 2, 2, 2, 1 take 64 x 64 frames to a ``6 x 6 x 128``
  grid (64 -> 31 -> 15 -> 7 -> 6). If ``hidden`` differs from the last encoder
  width a linear 1 x 1 convolution (``project.*``) maps it to ``hidden``
  channels. The encoded observation is the GRU's initial hidden state.
- dynamics: a ConvGRU cell with ``hidden`` channels and a ``gru_kernel``
  convolution padded to keep the grid, whose input is the action's one-hot
  broadcast as ``num_actions`` constant channels; the textbook gates (Cho et
  al.): ``z, r = sigmoid(W_{z,r} * [x, h])``, ``n = tanh(W_n * [x, r h])``,
  ``h' = (1 - z) h + z n``.
- reward head, on every predicted grid ``h_{t+1}``: convolution
  ``reward_channels`` x ``reward_kernel`` (6 x 6 -> 5 x 5), ELU, flatten,
  dense ``reward_hidden`` with ELU, dense to ``bins`` logits.

The paper's table gives the dynamics output as 7 x 7 x 64, which contradicts
its own 6 x 6 x 128 encoder output and "hidden size 128"; this model keeps the
hidden grid at the encoder's shape and reads rewards from it.

Speed. The action enters the GRU as constant one-hot channels, so its
convolution (with the gate biases) is one ``A x 3C x G x G`` table per
parameter set (``action_table``), computed once per call by convolving the
``A`` one-hot images; a step adds its rows with one ``addmm`` of the one-hot
actions (gather and add in one pass) instead of convolving ``A`` extra
channels. The hidden-state convolutions use ``F.conv2d``, measured on this
project's CPU (one core, AVX-512, oneDNN): at batch 500 on the 6 x 6 grid it
was 1.6-3 times faster than ``unfold`` + matmul in every layout tried (NCHW
batched matmul, one GEMM over rows, channels-last im2col; float32 and
bfloat16; 32 and 128 channels), and a channels-last rollout was no faster.
Under ``vmap`` (meta-training) the convolutions become grouped convolutions,
2.5-4 times faster forward and backward than ``unfold`` + ``bmm`` and faster
than a loop over tasks for the GRU (a loop was about 25% faster for the
encoder alone, too little for a separate stacked path). In planning every
sequence starts from the same encoded observation, so the first step has only
``A`` distinct results: it is computed for the ``A`` actions once and gathered.

A pure function of its parameter dict. ``torch.func.vmap`` over stacked
parameters and batches (``in_dims=(0, 0)``) runs a meta-batch, with gradients
of any order (``metadapt.meta.inner``). Checkpoints store ``spec()`` beside the
parameters and rebuild with ``LatentImageModel.from_spec``; this model is not
a ``DynamicsModel`` (no state vector, normalizer or ``fold``), so it is not in
``models/registry.py``'s dynamics registry.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from metadapt.types import Params

SPEC_TYPE = "latent_image"

PRESETS: dict[str, dict[str, Any]] = {
    # Appendix A of seed 001.
    "paper": {
        "encoder_channels": (32, 64, 64, 128), "encoder_kernels": (3, 3, 3, 2), "encoder_strides": (2, 2, 2, 1),
        "hidden": 128, "gru_kernel": 3, "reward_channels": 64, "reward_kernel": 2, "reward_hidden": (128, 128),
        "bins": 41,
    },
    # The same shapes, narrower, for a 2-core CPU: planning 500 sequences x horizon 5 x 4 CEM rounds took about 0.11 s
    # (float32) and 0.06 s (bfloat16) on one core, hidden 32 twice that; a meta-training step of 8 tasks x 2 x 32
    # sequences of 5 steps with 3 inner steps 0.4 s first order, 0.9 s second order.
    "cpu": {
        "encoder_channels": (8, 16, 16, 16), "encoder_kernels": (3, 3, 3, 2), "encoder_strides": (2, 2, 2, 1),
        "hidden": 16, "gru_kernel": 3, "reward_channels": 16, "reward_kernel": 2, "reward_hidden": (64, 64),
        "bins": 41,
    },
}


def reward_support(bins: int, low: float, high: float, device: torch.device | str | None = None,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The ``bins`` reward values the logits range over: evenly spaced from ``low`` to ``high``."""
    return torch.linspace(low, high, bins, device=device, dtype=dtype)


def two_hot(values: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """``...`` rewards -> ``... x bins`` targets whose expectation over ``support`` is the (clamped) value.

    A value is clamped into ``[support[0], support[-1]]`` and its mass split
    between the two neighbouring bins in proportion to closeness (a bin centre
    gets all of it, up to rounding). ``support`` is evenly spaced. Built from
    comparisons with the bin indices rather than a scatter, so it batches under
    ``vmap``; at most two entries, neighbours, are non-zero (a triangle kernel
    ``max(0, 1 - |v - s| / d)`` can leave a rounding crumb on a third).
    """
    bins = support.shape[-1]
    pos = ((values.to(support.dtype) - support[0]) / (support[1] - support[0])).clamp(0, bins - 1)
    lower = pos.floor().clamp(max=bins - 2).unsqueeze(-1)
    upper_weight = pos.unsqueeze(-1) - lower
    index = torch.arange(bins, device=support.device, dtype=support.dtype)
    return (index == lower) * (1.0 - upper_weight) + (index == lower + 1) * upper_weight


def expected_value(logits_or_probs: torch.Tensor, support: torch.Tensor, probs: bool = False) -> torch.Tensor:
    """``... x bins`` logits (or probabilities with ``probs=True``) -> ``...`` expected reward over ``support``."""
    p = logits_or_probs if probs else torch.softmax(logits_or_probs, dim=-1)
    return p @ support.to(p)


def _conv_out(side: int, kernel: int, stride: int) -> int:
    return (side - kernel) // stride + 1


class LatentImageModel:
    """Frames and action sequences -> binned reward logits of each step, with cross-entropy.

    Args:
        frame_stack: ``K``, frames the encoder sees (its input channels).
        num_actions: ``A``, discrete actions (int64 indices ``0..A-1``).
        image_size: ``S``, side of the square frames.
        encoder_channels, encoder_kernels, encoder_strides: one entry per unpadded encoder convolution.
        hidden: ``C``, channels of the GRU's hidden grid.
        gru_kernel: odd kernel of the GRU's convolutions (padded to keep the ``G x G`` grid).
        reward_channels, reward_kernel: the reward head's unpadded convolution.
        reward_hidden: the reward head's dense widths.
        bins: reward values the logits range over (``>= 2``), evenly spaced in ``[reward_low, reward_high]``.

    Raises:
        ValueError: a size below 1, mismatched encoder lists, an encoder or reward kernel that leaves no grid,
            an even GRU kernel, fewer than 2 bins or ``reward_low >= reward_high``.
    """

    def __init__(
        self,
        frame_stack: int,
        num_actions: int,
        image_size: int = 64,
        encoder_channels: Sequence[int] = (32, 64, 64, 128),
        encoder_kernels: Sequence[int] = (3, 3, 3, 2),
        encoder_strides: Sequence[int] = (2, 2, 2, 1),
        hidden: int = 128,
        gru_kernel: int = 3,
        reward_channels: int = 64,
        reward_kernel: int = 2,
        reward_hidden: Sequence[int] = (128, 128),
        bins: int = 41,
        reward_low: float = -1.0,
        reward_high: float = 1.0,
    ) -> None:
        if frame_stack < 1:
            raise ValueError(f"frame_stack must be >= 1, got {frame_stack}")
        if num_actions < 1:
            raise ValueError(f"num_actions must be >= 1, got {num_actions}")
        if image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {image_size}")
        if not len(encoder_channels) == len(encoder_kernels) == len(encoder_strides):
            raise ValueError(f"encoder_channels, encoder_kernels and encoder_strides need one entry per layer, got "
                             f"{len(encoder_channels)}, {len(encoder_kernels)} and {len(encoder_strides)}")
        if not encoder_channels:
            raise ValueError("the encoder needs at least one layer")
        if min((*encoder_channels, *encoder_kernels, *encoder_strides)) < 1:
            raise ValueError(f"encoder channels, kernels and strides must be >= 1, got {list(encoder_channels)}, "
                             f"{list(encoder_kernels)}, {list(encoder_strides)}")
        if hidden < 1 or reward_channels < 1 or any(w < 1 for w in reward_hidden):
            raise ValueError(f"widths must be >= 1, got hidden={hidden}, reward_channels={reward_channels}, "
                             f"reward_hidden={list(reward_hidden)}")
        if gru_kernel < 1 or gru_kernel % 2 == 0:
            raise ValueError(f"gru_kernel must be odd and >= 1 (padding keeps the grid), got {gru_kernel}")
        if bins < 2:
            raise ValueError(f"bins must be >= 2, got {bins}")
        if not (math.isfinite(reward_low) and math.isfinite(reward_high) and reward_low < reward_high):
            raise ValueError(f"need finite reward_low < reward_high, got {reward_low} and {reward_high}")
        side = int(image_size)
        for k, s in zip(encoder_kernels, encoder_strides, strict=True):
            if side < k:
                raise ValueError(f"the encoder shrinks a {image_size}-pixel image below 1 x 1 "
                                 f"(a {side}-pixel grid meets a kernel of {k})")
            side = _conv_out(side, int(k), int(s))
        if reward_kernel < 1 or reward_kernel > side:
            raise ValueError(f"reward_kernel must be in 1..{side} (the latent grid's side), got {reward_kernel}")

        self.frame_stack, self.num_actions, self.image_size = int(frame_stack), int(num_actions), int(image_size)
        self.encoder_channels = tuple(int(c) for c in encoder_channels)
        self.encoder_kernels = tuple(int(k) for k in encoder_kernels)
        self.encoder_strides = tuple(int(s) for s in encoder_strides)
        self.hidden, self.gru_kernel = int(hidden), int(gru_kernel)
        self.reward_channels, self.reward_kernel = int(reward_channels), int(reward_kernel)
        self.reward_hidden = tuple(int(w) for w in reward_hidden)
        self.bins, self.reward_low, self.reward_high = int(bins), float(reward_low), float(reward_high)
        self.grid = side
        """``G``: side of the latent grid (paper: 6)."""
        self.reward_grid = side - self.reward_kernel + 1
        self.project = self.hidden != self.encoder_channels[-1]
        self.support = reward_support(self.bins, self.reward_low, self.reward_high)
        """``bins`` reward values (CPU float32; functions taking parameters build it on their device)."""

    # -- construction -------------------------------------------------------
    @classmethod
    def from_preset(cls, name: str, frame_stack: int, num_actions: int, **overrides: Any) -> LatentImageModel:
        """The model of ``PRESETS[name]`` (``"paper"``, ``"cpu"``) with ``overrides`` on top."""
        if name not in PRESETS:
            raise ValueError(f"unknown latent image preset {name!r} (known: {', '.join(PRESETS)})")
        return cls(frame_stack, num_actions, **{**PRESETS[name], **overrides})

    def spec(self) -> dict[str, Any]:
        """``{"type": "latent_image", <every constructor argument>}`` in plain JSON values."""
        return {
            "type": SPEC_TYPE, "frame_stack": self.frame_stack, "num_actions": self.num_actions,
            "image_size": self.image_size, "encoder_channels": list(self.encoder_channels),
            "encoder_kernels": list(self.encoder_kernels), "encoder_strides": list(self.encoder_strides),
            "hidden": self.hidden, "gru_kernel": self.gru_kernel, "reward_channels": self.reward_channels,
            "reward_kernel": self.reward_kernel, "reward_hidden": list(self.reward_hidden), "bins": self.bins,
            "reward_low": self.reward_low, "reward_high": self.reward_high,
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> LatentImageModel:
        """The model ``spec()`` describes; ``ValueError`` for another type or an incomplete spec."""
        if not isinstance(spec, dict) or spec.get("type") != SPEC_TYPE:
            found = spec.get("type") if isinstance(spec, dict) else type(spec).__name__
            raise ValueError(f"not a '{SPEC_TYPE}' model spec (type {found!r})")
        try:
            return cls(
                int(spec["frame_stack"]), int(spec["num_actions"]), int(spec["image_size"]),
                tuple(int(c) for c in spec["encoder_channels"]), tuple(int(k) for k in spec["encoder_kernels"]),
                tuple(int(s) for s in spec["encoder_strides"]), int(spec["hidden"]), int(spec["gru_kernel"]),
                int(spec["reward_channels"]), int(spec["reward_kernel"]),
                tuple(int(w) for w in spec["reward_hidden"]), int(spec["bins"]),
                float(spec["reward_low"]), float(spec["reward_high"]),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"the spec of a '{SPEC_TYPE}' model is incomplete or malformed ({exc})") from exc

    # -- parameters ---------------------------------------------------------
    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        shapes: dict[str, tuple[int, ...]] = {}
        c_in = self.frame_stack
        for i, (c, k) in enumerate(zip(self.encoder_channels, self.encoder_kernels, strict=True)):
            shapes[f"encoder.{i}.weight"] = (c, c_in, k, k)
            shapes[f"encoder.{i}.bias"] = (c,)
            c_in = c
        if self.project:
            shapes["project.weight"] = (self.hidden, c_in, 1, 1)
            shapes["project.bias"] = (self.hidden,)
        c, k, a = self.hidden, self.gru_kernel, self.num_actions
        # One convolution over [one-hot action, h] split by input: rows are the z, r and candidate gates.
        shapes["gru.weight_x"] = (3 * c, a, k, k)
        shapes["gru.weight_h"] = (3 * c, c, k, k)
        shapes["gru.bias"] = (3 * c,)
        shapes["reward.conv.weight"] = (self.reward_channels, c, self.reward_kernel, self.reward_kernel)
        shapes["reward.conv.bias"] = (self.reward_channels,)
        width = self.reward_channels * self.reward_grid ** 2
        for j, w in enumerate(self.reward_hidden):
            shapes[f"reward.{j}.weight"] = (w, width)
            shapes[f"reward.{j}.bias"] = (w,)
            width = w
        shapes["reward.out.weight"] = (self.bins, width)
        shapes["reward.out.bias"] = (self.bins,)
        return shapes

    def _fan_in(self, name: str, shape: tuple[int, ...]) -> int:
        if name.startswith("gru."):  # both halves belong to one convolution over A + C channels
            return (self.num_actions + self.hidden) * self.gru_kernel ** 2
        weight = self.param_shapes()[name.rsplit(".", 1)[0] + ".weight"] if name.endswith(".bias") else shape
        return math.prod(weight[1:])

    def init_params(self, generator: torch.Generator, device: torch.device | str = "cpu") -> Params:
        """PyTorch's default for ``nn.Conv2d`` / ``nn.Linear``: weights and biases uniform in ``+-1/sqrt(fan_in)``
        (kaiming-uniform with ``a = sqrt(5)``); drawn on the CPU in ``param_shapes`` order, so a generator state gives
        the same parameters on every device."""
        params: Params = {}
        for name, shape in self.param_shapes().items():
            bound = 1.0 / math.sqrt(self._fan_in(name, shape))
            params[name] = torch.empty(shape).uniform_(-bound, bound, generator=generator).to(device)
        return params

    def num_params(self) -> int:
        return sum(math.prod(s) for s in self.param_shapes().values())

    # -- forward pieces -----------------------------------------------------
    def encode(self, params: Params, frames: torch.Tensor) -> torch.Tensor:
        """``N x K x S x S`` frames (uint8 scaled by 1/255, or float in ``[0, 1]``) -> ``N x C x G x G``, the initial
        hidden grid; in the parameters' dtype."""
        if tuple(frames.shape[-3:]) != (self.frame_stack, self.image_size, self.image_size):
            raise ValueError(f"frames must be N x {self.frame_stack} x {self.image_size} x {self.image_size}, "
                             f"got {tuple(frames.shape)}")
        w0 = params["encoder.0.weight"]
        x = frames.to(w0.dtype)
        if frames.dtype == torch.uint8:
            w0 = w0 * (1.0 / 255.0)  # the same as scaling the frames, at the cost of a weight-sized product
        for i, s in enumerate(self.encoder_strides):
            w = w0 if i == 0 else params[f"encoder.{i}.weight"]
            x = F.elu(F.conv2d(x, w, params[f"encoder.{i}.bias"], stride=s))
        if self.project:
            x = F.conv2d(x, params["project.weight"], params["project.bias"])
        return x

    def action_table(self, params: Params) -> torch.Tensor:
        """``A x 3C x G x G``: the GRU convolution of each action's constant one-hot channels, gate biases included.

        Exactly the action half of the convolution over ``[x, h]``, border effects of the zero padding included;
        computed once per parameter set so that a step gathers rows instead of convolving ``A`` channels.
        """
        w = params["gru.weight_x"]
        a, g = self.num_actions, self.grid
        onehot = torch.eye(a, dtype=w.dtype, device=w.device)[:, :, None, None].expand(a, a, g, g)
        return F.conv2d(onehot, w, params["gru.bias"], padding=self.gru_kernel // 2)

    def _tables(self, params: Params) -> tuple[torch.Tensor, torch.Tensor]:
        """The action table split for ``_step``: ``A x (2C G G)`` (z, r gates) and ``A x (C G G)`` (candidate)."""
        table = self.action_table(params)
        c = self.hidden
        return table[:, : 2 * c].flatten(1), table[:, 2 * c:].flatten(1)

    def _step(self, params: Params, tables: tuple[torch.Tensor, torch.Tensor], h: torch.Tensor,
              actions: torch.Tensor) -> torch.Tensor:
        c, pad = self.hidden, self.gru_kernel // 2
        wh = params["gru.weight_h"]
        # One-hot rows times the table add each sequence's action term in the same pass as the gather (addmm);
        # a separate index_select and add cost as much as the candidate convolution in bfloat16.
        onehot = (actions.unsqueeze(-1) == torch.arange(self.num_actions, device=actions.device)).to(h.dtype)
        zr = torch.sigmoid(torch.addmm(F.conv2d(h, wh[: 2 * c], padding=pad).flatten(1), onehot, tables[0]))
        z, r = zr.view(-1, 2 * c, self.grid, self.grid).chunk(2, dim=1)
        n = torch.tanh(torch.addmm(F.conv2d(r * h, wh[2 * c:], padding=pad).flatten(1), onehot, tables[1]))
        return torch.lerp(h, n.view_as(h), z)  # (1 - z) h + z n

    def step(self, params: Params, h: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """One ConvGRU step: ``N x C x G x G`` hidden grids and ``N`` int64 actions -> ``N x C x G x G``."""
        return self._step(params, self._tables(params), h, actions)

    def reward_logits(self, params: Params, h: torch.Tensor) -> torch.Tensor:
        """``N x C x G x G`` hidden grids -> ``N x bins`` reward logits."""
        x = F.elu(F.conv2d(h, params["reward.conv.weight"], params["reward.conv.bias"])).flatten(1)
        for j in range(len(self.reward_hidden)):
            x = F.elu(F.linear(x, params[f"reward.{j}.weight"], params[f"reward.{j}.bias"]))
        return F.linear(x, params["reward.out.weight"], params["reward.out.bias"])

    def rollout(self, params: Params, h: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """``N x C x G x G`` start grids and ``N x T`` actions -> ``N x T x C x G x G``, the grids ``h_1 .. h_T``."""
        tables = self._tables(params)
        hs = []
        for t in range(actions.shape[1]):
            h = self._step(params, tables, h, actions[:, t])
            hs.append(h)
        return torch.stack(hs, dim=1)

    def predict_logits(self, params: Params, frames: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """``N x K x S x S`` frames and ``N x T`` int64 actions -> ``N x T x bins``; step ``t``'s reward is read from
        ``h_{t+1}``, the grid after action ``t``."""
        hs = self.rollout(params, self.encode(params, frames), actions)
        return self.reward_logits(params, hs.flatten(0, 1)).unflatten(0, hs.shape[:2])

    # -- training -----------------------------------------------------------
    def losses(self, params: Params, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """``N`` losses of ``(frames N x K x S x S, actions N x T int64, rewards N x T)``: each sequence's mean over
        its steps of the cross-entropy between the predicted logits and the two-hot targets of the rewards."""
        frames, actions, rewards = batch
        logits = self.predict_logits(params, frames, actions)
        support = reward_support(self.bins, self.reward_low, self.reward_high, logits.device, logits.dtype)
        ce = -(two_hot(rewards, support) * torch.log_softmax(logits, dim=-1)).sum(dim=-1)
        return ce.mean(dim=-1)

    def loss(self, params: Params, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """The scalar mean over ``N`` sequences and ``T`` steps of ``losses``."""
        return self.losses(params, batch).mean()

    # -- planning -----------------------------------------------------------
    def planning_objective(self, params: Params, frames: torch.Tensor, dtype: torch.dtype | None = None,
                           share_prefixes: bool = True) -> Callable[[torch.Tensor], torch.Tensor]:
        """The objective a discrete planner maximises from one observation: ``N x H`` int64 actions -> ``N`` float32
        sums of the expected rewards of the ``H`` predicted steps.

        ``frames``: ``1 x K x S x S`` or ``K x S x S``. Everything that does not depend on the actions happens here,
        once: the parameters are detached and cast to ``dtype`` (e.g. ``torch.bfloat16``; default: their own), the
        observation is encoded and the action table built. The objective runs without gradients; the expectation
        over the bins is taken in float32.

        ``share_prefixes``: sequences that begin with the same actions share their predicted latents, so each step
        runs once per distinct prefix (at most ``A ** t`` at step ``t``, at most ``N``): on random sequences of
        4 actions and horizon 5 about half the work, less once CEM has concentrated. The results are the same
        (each prefix's latent is computed as it would be alone); off: every sequence steps on its own, the dense
        workload ``rollout_flops`` counts.
        """
        with torch.no_grad():
            p = {k: v.detach() if dtype is None else v.detach().to(dtype) for k, v in params.items()}
            if frames.dim() == 3:
                frames = frames.unsqueeze(0)
            if frames.shape[0] != 1:
                raise ValueError(f"plan from one observation (1 x K x S x S), got {tuple(frames.shape)}")
            h0 = self.encode(p, frames.to(p["encoder.0.weight"].device))
            tables = self._tables(p)
            support = reward_support(self.bins, self.reward_low, self.reward_high, h0.device)
            a = self.num_actions
            all_actions = torch.arange(a, device=h0.device)

        def reward(h: torch.Tensor) -> torch.Tensor:
            return expected_value(self.reward_logits(p, h).float(), support)

        def shared(actions: torch.Tensor) -> torch.Tensor:
            n, horizon = actions.shape
            total = torch.zeros(n, device=h0.device)
            codes = torch.zeros(n, dtype=torch.long, device=h0.device)
            rows = torch.zeros(n, dtype=torch.long, device=h0.device)  # each sequence's row of h
            h = h0
            for t in range(horizon):
                codes = codes * a + actions[:, t]  # the prefix up to step t as one base-A number
                unique, inverse = torch.unique(codes, return_inverse=True)
                # One member per distinct prefix: all members share its parent row and its last action.
                member = torch.empty(unique.numel(), dtype=torch.long, device=h0.device)
                member.scatter_(0, inverse, torch.arange(n, device=h0.device))
                h = self._step(p, tables, h.index_select(0, rows.index_select(0, member)),
                               actions[:, t].index_select(0, member))
                total = total + reward(h).index_select(0, inverse)
                rows = inverse
            return total

        def objective(actions: torch.Tensor) -> torch.Tensor:
            if actions.dim() != 2:
                raise ValueError(f"actions must be N x H int64 indices, got shape {tuple(actions.shape)}")
            n, horizon = actions.shape
            with torch.no_grad():
                actions = actions.to(h0.device)
                if horizon == 0:
                    return torch.zeros(n, device=h0.device)
                if share_prefixes and horizon * math.log(a) < 62 * math.log(2):  # codes fit in an int64
                    return shared(actions)
                total = torch.zeros(n, device=h0.device)
                first = actions[:, 0]
                if a < n:  # every sequence starts from h0: the first step has only A distinct results
                    h1 = self._step(p, tables, h0.expand(a, -1, -1, -1), all_actions)
                    h, total = h1.index_select(0, first), reward(h1).index_select(0, first)
                else:
                    h = self._step(p, tables, h0.expand(n, -1, -1, -1), first)
                    total = reward(h)
                for t in range(1, horizon):
                    h = self._step(p, tables, h, actions[:, t])
                    total = total + reward(h)
                return total

        return objective

    def expected_returns(self, params: Params, frames: torch.Tensor, actions: torch.Tensor,
                         dtype: torch.dtype | None = None) -> torch.Tensor:
        """``N`` float32 sums of predicted expected rewards of ``N x H`` int64 action sequences from one observation
        (``1 x K x S x S`` or ``K x S x S``): ``planning_objective(params, frames, dtype)(actions)``, no gradients.
        A planner calling it repeatedly from one observation should keep the ``planning_objective`` instead."""
        return self.planning_objective(params, frames, dtype)(actions)

    def rollout_flops(self, num_sequences: int, horizon: int) -> float:
        """Multiply-add FLOPs (2 per multiply-accumulate) of one ``planning_objective`` call on ``num_sequences`` x
        ``horizon`` actions, as it runs: the first step for ``min(A, N)`` grids, every later one for ``N``; per step
        the GRU's two hidden-state convolutions, its one-hot products with the action table and the reward head's
        convolution and dense layers. What ``torch.utils.flop_counter`` counts, from the widths alone; excludes the
        encoding and the action table (once per observation) and elementwise work (activations, the expectation)."""
        n, horizon = int(num_sequences), int(horizon)
        if n <= 0 or horizon <= 0:
            return 0.0
        g2, c = self.grid ** 2, self.hidden
        gru = g2 * self.gru_kernel ** 2 * c * 3 * c  # z, r from h (2C) and the candidate from r * h (C)
        gru += self.num_actions * 3 * c * g2  # one-hot rows times the action table
        head = self.reward_grid ** 2 * self.reward_kernel ** 2 * c * self.reward_channels
        width = self.reward_channels * self.reward_grid ** 2
        for w in (*self.reward_hidden, self.bins):
            head += width * w
            width = w
        rows = min(self.num_actions, n) + n * (horizon - 1)
        return 2.0 * rows * (gru + head)
