"""Ring buffer of raw transitions with episode index, in-episode step and true task id."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from metadapt.types import Transitions

FIELDS = ("obs", "act", "next_obs", "reward", "episode", "step", "task_id", "val")


@dataclass(frozen=True)
class Windows:
    """Contiguous windows of ``L = M + K`` steps from single episodes.

    ``obs``/``next_obs`` are ``B x L x O``, ``act`` is ``B x L x A``,
    ``task_id`` is ``B`` (the task at the window's first step). The first
    ``M`` steps are the adaptation set, the last ``K`` the evaluation set.
    """

    obs: torch.Tensor
    act: torch.Tensor
    next_obs: torch.Tensor
    task_id: torch.Tensor
    past_len: int

    def past(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        m = self.past_len
        return self.obs[:, :m], self.act[:, :m], self.next_obs[:, :m]

    def future(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        m = self.past_len
        return self.obs[:, m:], self.act[:, m:], self.next_obs[:, m:]


class ReplayBuffer:
    """Fixed-capacity FIFO store of raw (unnormalized) transitions.

    When full, the oldest transitions are overwritten. Every query returns data
    in chronological order. ``val`` marks transitions held out for validation;
    the mark is drawn once at insertion so the split never reshuffles.
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
        self.total_added = 0
        self._starts_cache: dict[tuple[int, int, str], torch.Tensor] = {}

    def __len__(self) -> int:
        return self._size

    def add(
        self,
        obs: np.ndarray | torch.Tensor,
        act: np.ndarray | torch.Tensor,
        next_obs: np.ndarray | torch.Tensor,
        reward: np.ndarray | torch.Tensor,
        episode: np.ndarray | torch.Tensor,
        step: np.ndarray | torch.Tensor,
        task_id: np.ndarray | torch.Tensor,
        val: np.ndarray | torch.Tensor | None = None,
    ) -> None:
        """Append ``N`` transitions (every argument has leading dimension ``N``)."""
        cols = {
            "obs": obs, "act": act, "next_obs": next_obs, "reward": reward,
            "episode": episode, "step": step, "task_id": task_id,
        }
        n = len(obs)
        cols["val"] = np.zeros(n, dtype=bool) if val is None else val
        tensors = {k: torch.as_tensor(np.asarray(v), dtype=self._data[k].dtype) for k, v in cols.items()}
        for k, v in tensors.items():
            if v.shape[0] != n:
                raise ValueError(f"buffer.add: '{k}' has {v.shape[0]} rows, expected {n}")
        if tensors["obs"].shape[1:] != (self.obs_dim,) or tensors["act"].shape[1:] != (self.act_dim,):
            raise ValueError(
                f"buffer.add: expected obs N x {self.obs_dim} and act N x {self.act_dim}, got "
                f"{tuple(tensors['obs'].shape)} and {tuple(tensors['act'].shape)}"
            )
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

    def _order(self) -> torch.Tensor:
        if self._size < self.capacity:
            return torch.arange(self._size)
        return (self._ptr + torch.arange(self.capacity)) % self.capacity

    def column(self, name: str) -> torch.Tensor:
        """One field in chronological order (``N x ...``)."""
        return self._data[name][self._order()]

    def transitions(self, split: str = "all") -> Transitions:
        """All transitions, or only the ``"train"`` or ``"val"`` part."""
        order = self._order()
        if split != "all":
            mask = self._data["val"][order]
            order = order[mask] if split == "val" else order[~mask]
        d = self._data
        return Transitions(d["obs"][order], d["act"][order], d["next_obs"][order], d["reward"][order])

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
        idx = self._order()[pick[:, None] + torch.arange(length)]
        d = self._data
        w = Windows(d["obs"][idx], d["act"][idx], d["next_obs"][idx], d["task_id"][idx[:, 0]], past)
        if device is not None and torch.device(device) != w.obs.device:
            w = Windows(w.obs.to(device), w.act.to(device), w.next_obs.to(device), w.task_id.to(device), past)
        return w

    def state_dict(self) -> dict[str, torch.Tensor | int]:
        order = self._order()
        state: dict[str, torch.Tensor | int] = {k: self._data[k][order].clone() for k in FIELDS}
        state.update(capacity=self.capacity, total_added=self.total_added)
        return state

    @staticmethod
    def from_state_dict(state: dict[str, torch.Tensor | int]) -> ReplayBuffer:
        obs = state["obs"]
        act = state["act"]
        assert isinstance(obs, torch.Tensor) and isinstance(act, torch.Tensor)
        buf = ReplayBuffer(obs.shape[1], act.shape[1], int(state["capacity"]))
        if obs.shape[0]:
            buf.add(*(state[k] for k in FIELDS))  # type: ignore[arg-type]
        buf.total_added = int(state["total_added"])
        return buf
