"""Types shared across metadapt.

``Params`` is the currency between models, learners and planners: a flat dict
from parameter name to tensor, usable with ``torch.func.functional_call``. A
mixture of K models is the same dict with a leading K dimension on every tensor.

``Window`` is the currency of experience: the environment's steps (one step is
a window of length 1), what an agent hands its online learner (the K latest
steps), what the replay buffer stores and returns.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

Params = dict[str, torch.Tensor]

RewardFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``reward_fn(obs, act, next_obs) -> reward``: ``N x O, N x A, N x O -> N``."""

Objective = Callable[[torch.Tensor], torch.Tensor]
"""What a planner maximises: action sequences ``N x H x A`` -> returns ``N``."""


WINDOW_FIELDS = ("obs", "act", "next_obs", "reward", "done", "episode", "step")

UPSIDE_DOWN = "upside_down"
"""The step-info key of robots with a posture (``metadapt.envs.posture``): 1.0 while the up axis points below the
horizon. Here, below everything, so that reports can name it without importing the simulator."""


@dataclass(frozen=True, init=False, eq=False)
class Window:
    """Transitions in time order: the one type from the environment to the replay buffer to the learner.

    Every field has the same leading shape ``L``: ``K`` for a window of K steps
    (a single step is a window of length 1; a bag of transitions drawn from a
    buffer is a window whose steps need not follow each other), or ``B x K`` for
    a batch of ``B`` windows (``ReplayBuffer.sample_windows``).

    - ``obs``: ``L x ...``, the observation's own shape: ``K x O`` for flat
      observations, ``K x C x H x W`` for images (float32).
    - ``act``: ``L x A`` continuous actions (float32), or ``L`` discrete ones (int64).
    - ``next_obs``: the observations that followed, shaped as ``obs``.
    - ``reward``: ``L``, the reward of each step (float).
    - ``done``: ``L`` (bool), the episode ended after this step (terminated or truncated).
    - ``episode``: ``L`` (int64), the episode index.
    - ``step``: ``L`` (int64), the step's index within its episode.

    Only ``obs``, ``act`` and ``next_obs`` are required: the leading shape is
    then ``reward``'s when given, else ``obs``'s first dimension, and the rest
    default to zero rewards, no ``done``, episode 0 and steps ``0, 1, ...``
    (one episode's consecutive steps). Index with slices or index tensors on the
    leading dimensions (``window[-1:]``: the newest step, still a window);
    ``Window.cat`` joins windows, ``Window.from_step`` makes one step.
    """

    obs: torch.Tensor
    act: torch.Tensor
    next_obs: torch.Tensor
    reward: torch.Tensor
    done: torch.Tensor
    episode: torch.Tensor
    step: torch.Tensor

    def __init__(
        self,
        obs: torch.Tensor,
        act: torch.Tensor,
        next_obs: torch.Tensor,
        reward: torch.Tensor | None = None,
        done: torch.Tensor | None = None,
        episode: torch.Tensor | None = None,
        step: torch.Tensor | None = None,
    ) -> None:
        lead = tuple(reward.shape) if reward is not None else tuple(obs.shape[:1])
        dev = obs.device
        if reward is None:
            reward = torch.zeros(lead, dtype=obs.dtype if obs.is_floating_point() else torch.float32, device=dev)
        if done is None:
            done = torch.zeros(lead, dtype=torch.bool, device=dev)
        if episode is None:
            episode = torch.zeros(lead, dtype=torch.long, device=dev)
        if step is None:
            step = torch.arange(lead[-1] if lead else 1, device=dev).expand(lead)
        values = (obs, act, next_obs, reward, done, episode, step)
        for name, value in zip(WINDOW_FIELDS, values, strict=True):
            shape = tuple(value.shape)
            if shape[: len(lead)] != lead or (name in ("reward", "done", "episode", "step") and shape != lead):
                raise ValueError(f"Window: '{name}' is {shape}, expected leading shape {lead}"
                                 + ("" if name in ("obs", "act", "next_obs") else " exactly"))
        if next_obs.shape != obs.shape:
            raise ValueError(f"Window: next_obs is {tuple(next_obs.shape)}, obs {tuple(obs.shape)}")
        for name, value in zip(WINDOW_FIELDS, values, strict=True):
            object.__setattr__(self, name, value)

    @classmethod
    def _trusted(cls, *values: torch.Tensor) -> Window:
        """A window from fields already known to fit together (no checks: the hot path of ``cat``)."""
        w = cls.__new__(cls)
        for name, value in zip(WINDOW_FIELDS, values, strict=True):
            object.__setattr__(w, name, value)
        return w

    @property
    def lead(self) -> tuple[int, ...]:
        """The leading shape: ``(K,)``, or ``(B, K)`` for a batch of windows."""
        return tuple(self.reward.shape)

    def __len__(self) -> int:
        """The first leading dimension: K (B for a batch of windows)."""
        return int(self.reward.shape[0])

    def __getitem__(self, index: Any) -> Window:
        """The same index applied to every field; it must keep the leading dimensions (slices, index tensors)."""
        return Window(*(getattr(self, name)[index] for name in WINDOW_FIELDS))

    def to(self, device: torch.device | str) -> Window:
        return Window._trusted(*(getattr(self, name).to(device) for name in WINDOW_FIELDS))

    def replace(self, **changes: torch.Tensor) -> Window:
        """A copy with some fields replaced (``episode=...``)."""
        return Window(**{name: changes.get(name, getattr(self, name)) for name in WINDOW_FIELDS})

    @staticmethod
    def cat(windows: Sequence[Window], dim: int = 0) -> Window:
        """Windows joined along leading dimension ``dim`` (in order: oldest first)."""
        if not windows:
            raise ValueError("Window.cat needs at least one window")
        if dim >= len(windows[0].lead):
            raise ValueError(f"Window.cat: dim {dim} is not a leading dimension of {windows[0].lead}")
        # Valid windows joined along a leading dimension (torch.cat checks the others) make a valid window.
        return Window._trusted(*(torch.cat([getattr(w, name) for w in windows], dim) for name in WINDOW_FIELDS))

    @staticmethod
    def from_step(
        obs: Any, act: Any, next_obs: Any, reward: float = 0.0, done: bool = False, episode: int = 0,
        step: int = 0, device: torch.device | str | None = None,
    ) -> Window:
        """One environment step (unbatched ``obs``, ``act``, ``next_obs``: arrays or tensors) as a window of
        length 1: observations and continuous actions as float32, integer (discrete) actions as int64."""
        a = torch.as_tensor(act, device=device)
        a = a.long() if not (a.is_floating_point() or a.is_complex()) else a.float()
        return Window._trusted(
            torch.as_tensor(obs, dtype=torch.float32, device=device)[None],
            a[None],
            torch.as_tensor(next_obs, dtype=torch.float32, device=device)[None],
            torch.tensor([float(reward)], dtype=torch.float32, device=device),
            torch.tensor([bool(done)], device=device),
            torch.tensor([int(episode)], dtype=torch.long, device=device),
            torch.tensor([int(step)], dtype=torch.long, device=device),
        )


Transitions = Window
"""The former name of a batch of transitions (``fit_dynamics``' data, ``ReplayBuffer.transitions``): a ``Window``."""


@dataclass(frozen=True)
class TaskBatch:
    """``B`` tasks of a meta-batch: what the inner loop adapts on and what the outer loss scores.

    ``support`` and ``query`` are batches of the model's loss (a tensor or a
    tuple of tensors) with a leading task dimension ``B``: for regression
    ``(x, y)`` as ``B x K x 1``; for N-way K-shot episodes images ``B x NK x C x
    H x W`` with labels ``B x NK``; for dynamics windows ``(obs, act, next_obs)``
    as ``B x M x ...`` (support) and ``B x K x ...`` (query). ``info`` carries
    what generated the tasks (amplitudes, classes, window starts) for reports;
    no learner reads it.
    """

    support: Any
    query: Any
    info: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def num_tasks(self) -> int:
        first = self.support[0] if isinstance(self.support, tuple | list) else self.support
        return int(first.shape[0])


class TaskSampler(Protocol):
    """Draws meta-batches of tasks: trajectory windows, regression tasks, N-way K-shot episodes, rollouts."""

    def sample(self, num_tasks: int, generator: torch.Generator, split: str = "train") -> TaskBatch:
        """``num_tasks`` tasks of ``split`` (``"train"``, ``"val"`` or ``"test"``) drawn with ``generator``."""
        ...
