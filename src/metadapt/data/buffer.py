"""Ring buffer of raw transitions with episode index, in-episode step and true task id.

It stores and returns ``metadapt.types.Window``: ``add(window, task_id=...)``
appends an episode's steps, ``transitions()`` returns every stored step as one
window and ``sample_windows`` a batch of ``B x L`` windows of single episodes.

A transition with a non-finite observation, action or next observation is
dropped on the way in and counted (``dropped_nonfinite``): one NaN in the data
would otherwise make the normalizer, and through it every fitted parameter, NaN.
Its episode keeps a gap there, which no window spans (windows need consecutive
in-episode steps).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from metadapt.types import Window

FIELDS = ("obs", "act", "next_obs", "reward", "episode", "step", "task_id", "val")


def finite_rows(obs: torch.Tensor, act: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
    """``N`` (bool): the transitions whose ``N x ...`` obs, act and next obs are all finite."""
    ok = torch.isfinite(obs).flatten(1).all(1) & torch.isfinite(next_obs).flatten(1).all(1)
    return ok & torch.isfinite(act).flatten(1).all(1) if act.is_floating_point() else ok


@dataclass(frozen=True)
class Windows:
    """Contiguous windows of ``L = M + K`` steps from single episodes.

    ``window`` is a batch of ``B`` windows (``Window`` with leading shape
    ``B x L``): ``obs``/``next_obs`` ``B x L x O``, ``act`` ``B x L x A``, with
    rewards, ``done`` marks, episodes and in-episode steps ``B x L``;
    ``task_id`` is ``B`` (the task at the window's first step). The first ``M``
    steps are the adaptation set, the last ``K`` the evaluation set.
    """

    window: Window
    task_id: torch.Tensor
    past_len: int

    @property
    def obs(self) -> torch.Tensor:
        return self.window.obs

    @property
    def act(self) -> torch.Tensor:
        return self.window.act

    @property
    def next_obs(self) -> torch.Tensor:
        return self.window.next_obs

    def past(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(obs, act, next_obs)`` of the first M steps (``B x M x ...``)."""
        m = self.past_len
        return self.obs[:, :m], self.act[:, :m], self.next_obs[:, :m]

    def future(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(obs, act, next_obs)`` of the last K steps (``B x K x ...``)."""
        m = self.past_len
        return self.obs[:, m:], self.act[:, m:], self.next_obs[:, m:]

    def past_window(self) -> Window:
        """The first M steps as windows (``B x M``)."""
        return self.window[:, : self.past_len]

    def future_window(self) -> Window:
        """The last K steps as windows (``B x K``)."""
        return self.window[:, self.past_len :]


class ReplayBuffer:
    """Fixed-capacity FIFO store of raw (unnormalized) transitions.

    When full, the oldest transitions are overwritten. Every query returns data
    in chronological order. ``val`` marks transitions held out for validation;
    the mark is drawn once at insertion so the split never reshuffles. The
    buffer stores no ``done`` column: a returned window marks ``done`` on the
    last stored step of each episode.
    """

    def __init__(self, obs_dim: int, act_dim: int, capacity: int = 1_000_000) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.obs_dim, self.act_dim, self.capacity = obs_dim, act_dim, capacity
        self._data: dict[str, torch.Tensor] = {
            "obs": torch.zeros(capacity, obs_dim),
            "act": torch.zeros(capacity, act_dim),
            "next_obs": torch.zeros(capacity, obs_dim),
            "reward": torch.zeros(capacity),
            "episode": torch.zeros(capacity, dtype=torch.long),
            "step": torch.zeros(capacity, dtype=torch.long),
            "task_id": torch.zeros(capacity, dtype=torch.long),
            "val": torch.zeros(capacity, dtype=torch.bool),
        }
        self._ptr = 0
        self._size = 0
        self.total_added = 0  # transitions stored since the start (dropped ones are not)
        self.dropped_nonfinite = 0  # transitions refused for a non-finite obs, act or next obs
        self._starts_cache: dict[tuple[int, int, str], torch.Tensor] = {}
        self._done_cache: tuple[int, torch.Tensor] | None = None

    def __len__(self) -> int:
        return self._size

    def add(
        self,
        obs: Window | np.ndarray | torch.Tensor,
        act: np.ndarray | torch.Tensor | None = None,
        next_obs: np.ndarray | torch.Tensor | None = None,
        reward: np.ndarray | torch.Tensor | None = None,
        episode: np.ndarray | torch.Tensor | None = None,
        step: np.ndarray | torch.Tensor | None = None,
        task_id: np.ndarray | torch.Tensor | None = None,
        val: np.ndarray | torch.Tensor | None = None,
    ) -> None:
        """Append ``N`` transitions: a ``Window`` of length ``N`` (``add(window, task_id=..., val=...)``;
        its ``done`` marks are not stored), or every column, each with leading dimension ``N``.

        ``task_id`` (``N`` or one for all) defaults to 0, ``val`` (``N`` or one for all) to False (training data).
        Transitions with a non-finite obs, act or next obs are not stored; ``dropped_nonfinite`` counts them.
        """
        if isinstance(obs, Window):
            w = obs
            obs, act, next_obs, reward, episode, step = w.obs, w.act, w.next_obs, w.reward, w.episode, w.step
        elif act is None or next_obs is None or reward is None or episode is None or step is None:
            raise TypeError("buffer.add: pass a Window, or obs, act, next_obs, reward, episode and step")
        n = len(obs)
        cols = {
            "obs": obs, "act": act, "next_obs": next_obs, "reward": reward, "episode": episode, "step": step,
            "task_id": np.zeros(n, dtype=np.int64) if task_id is None else task_id,
            "val": np.zeros(n, dtype=bool) if val is None else val,
        }
        tensors = {k: torch.as_tensor(v if isinstance(v, torch.Tensor) else np.asarray(v),
                                      dtype=self._data[k].dtype, device="cpu") for k, v in cols.items()}
        for k in ("task_id", "val"):  # one task id or mark for every transition
            if tensors[k].dim() == 0:
                tensors[k] = tensors[k].expand(n)
        for k, v in tensors.items():
            if v.shape[0] != n:
                raise ValueError(f"buffer.add: '{k}' has {v.shape[0]} rows, expected {n}")
        if tensors["obs"].shape[1:] != (self.obs_dim,) or tensors["act"].shape[1:] != (self.act_dim,):
            raise ValueError(
                f"buffer.add: expected obs N x {self.obs_dim} and act N x {self.act_dim}, got "
                f"{tuple(tensors['obs'].shape)} and {tuple(tensors['act'].shape)}"
            )
        finite = finite_rows(tensors["obs"], tensors["act"], tensors["next_obs"])
        if not bool(finite.all()):
            tensors = {k: v[finite] for k, v in tensors.items()}
            self.dropped_nonfinite += n - int(finite.sum())
            n = int(finite.sum())
        if n > self.capacity:  # only the newest `capacity` rows survive
            tensors = {k: v[-self.capacity:] for k, v in tensors.items()}
            n = self.capacity
        idx = (self._ptr + torch.arange(n)) % self.capacity
        for k, v in tensors.items():
            self._data[k][idx] = v
        self._ptr = (self._ptr + n) % self.capacity
        self._size = min(self._size + n, self.capacity)
        self.total_added += n
        self._starts_cache = {}

    def ensure_validation(self, by_episode: bool) -> int:
        """Hold out the newest episode (``by_episode``) or the newest transition when nothing stored is held out.

        Validation marks are drawn at random per episode or transition, so a small ``val_fraction`` can leave
        none, and early stopping would then compare NaN losses. Nothing changes when some data is already held
        out, or when holding out would leave no training data. Returns how many transitions it marked.
        """
        order = self._order()
        if len(order) < 2 or bool(self._data["val"][order].any()):
            return 0
        if by_episode:
            episodes = self._data["episode"][order]
            newest = order[episodes == episodes[-1]]
            if len(newest) == len(order):
                return 0
        else:
            newest = order[-1:]
        self._data["val"][newest] = True
        self._starts_cache = {}
        return len(newest)

    def _order(self) -> torch.Tensor:
        if self._size < self.capacity:
            return torch.arange(self._size)
        return (self._ptr + torch.arange(self.capacity)) % self.capacity

    def column(self, name: str) -> torch.Tensor:
        """One field in chronological order (``N x ...``)."""
        return self._data[name][self._order()]

    def _done(self) -> torch.Tensor:
        """``N`` (chronological): the step is the last stored step of its episode."""
        if self._done_cache is None or self._done_cache[0] != self.total_added:
            ep = self.column("episode")
            self._done_cache = (self.total_added, torch.cat([ep[1:] != ep[:-1],
                                                              torch.ones(min(len(ep), 1), dtype=torch.bool)]))
        return self._done_cache[1]

    def transitions(self, split: str = "all") -> Window:
        """All transitions as one window (``N`` steps, chronological), or only the ``"train"`` or ``"val"`` part."""
        order = self._order()
        done = self._done()
        if split != "all":
            mask = self._data["val"][order]
            keep = mask if split == "val" else ~mask
            order, done = order[keep], done[keep]
        d = self._data
        return Window(d["obs"][order], d["act"][order], d["next_obs"][order], d["reward"][order], done,
                      d["episode"][order], d["step"][order])

    def window_starts(self, length: int, split: str = "all") -> torch.Tensor:
        """Chronological indices where ``length`` consecutive steps of one episode begin.

        ``split="train"`` / ``"val"`` keeps windows whose steps are all training
        / all validation steps (with per-episode marks: windows of held-out
        trajectories).
        """
        key = (self.total_added, length, split)
        if key in self._starts_cache:
            return self._starts_cache[key]
        ep, st = self.column("episode"), self.column("step")
        n = ep.shape[0]
        if n < length:
            starts = torch.zeros(0, dtype=torch.long)
        else:
            first = torch.arange(n - length + 1)
            last = first + length - 1
            ok = (ep[first] == ep[last]) & (st[last] - st[first] == length - 1)
            if split != "all":
                marks = torch.cat([torch.zeros(1, dtype=torch.long), self.column("val").long().cumsum(0)])
                held_out = marks[last + 1] - marks[first]
                ok &= held_out == (length if split == "val" else 0)
            starts = first[ok]
        self._starts_cache = {k: v for k, v in self._starts_cache.items() if k[0] == self.total_added}
        self._starts_cache[key] = starts
        return starts

    def sample_windows(
        self, past: int, future: int, batch: int, generator: torch.Generator, split: str = "all",
        device: torch.device | str | None = None,
    ) -> Windows:
        """``batch`` windows of ``past`` (M) then ``future`` (K) steps; M and K are independent.

        The draw happens on the CPU (the same windows whatever ``device``); the
        windows are then moved to ``device`` (default: stay on the CPU).
        """
        if past < 0 or future < 1:
            raise ValueError(f"need past >= 0 and future >= 1, got M={past}, K={future}")
        length = past + future
        starts = self.window_starts(length, split)
        if starts.numel() == 0:
            raise ValueError(f"no {'' if split == 'all' else split + ' '}episode in the buffer has {length} "
                             "consecutive steps")
        pick = starts[torch.randint(starts.numel(), (batch,), generator=generator)]
        rows = pick[:, None] + torch.arange(length)  # chronological positions, B x L
        idx = self._order()[rows]
        d = self._data
        window = Window(d["obs"][idx], d["act"][idx], d["next_obs"][idx], d["reward"][idx], self._done()[rows],
                        d["episode"][idx], d["step"][idx])
        w = Windows(window, d["task_id"][idx[:, 0]], past)
        if device is not None and torch.device(device) != w.obs.device:
            w = Windows(window.to(device), w.task_id.to(device), past)
        return w

    def state_dict(self) -> dict[str, torch.Tensor | int]:
        order = self._order()
        state: dict[str, torch.Tensor | int] = {k: self._data[k][order].clone() for k in FIELDS}
        state.update(capacity=self.capacity, total_added=self.total_added, dropped_nonfinite=self.dropped_nonfinite)
        return state

    @staticmethod
    def from_state_dict(state: dict[str, torch.Tensor | int]) -> ReplayBuffer:
        obs = state["obs"]
        act = state["act"]
        assert isinstance(obs, torch.Tensor) and isinstance(act, torch.Tensor)
        buf = ReplayBuffer(obs.shape[1], act.shape[1], int(state["capacity"]))
        if obs.shape[0]:
            buf.add(*(state[k] for k in FIELDS))  # type: ignore[arg-type]
        # A state written before non-finite transitions were dropped may hold some: they are dropped now.
        dropped_now = buf.dropped_nonfinite
        buf.total_added = int(state["total_added"]) - dropped_now
        buf.dropped_nonfinite = int(state.get("dropped_nonfinite", 0)) + dropped_now
        return buf
