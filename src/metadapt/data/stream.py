"""The agent's lifelong stream of image transitions and the window tasks of Meta-GCG (seed 001, Section 4).

An observation is the last ``K`` frames (``K x H x W`` uint8; at reset ``K``
copies of the first frame). Storing the stacks would repeat every frame ``K``
times, so the stream keeps one frame per observation: each episode's reset frame
and the newest frame after every transition. The observation before transition
``i`` is rebuilt from them exactly as the environment stacks it: the ``K``
newest frames up to that point, the positions before the episode's first frame
filled with copies of it.

Meta-GCG's tasks are windows of the stream: a window of ``2 M`` consecutive
transitions, split in halves; the model adapts on sequences from the first
half (support) and is scored on sequences from the second (query). A window may
cross an episode boundary; each sequence in it stays within one episode.

Layout: transition ``i`` of episode ``e`` (counting from 0) follows frame
``i + e`` and leads to frame ``i + e + 1``, since each episode adds one reset
frame and each transition one frame; there are always ``transitions +
episodes`` frames. Storage grows by amortised doubling and stays on the CPU;
what a call returns goes to ``device`` (the call's, else the constructor's).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from metadapt.types import TaskBatch

Sequences = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
"""``(frames N x K x H x W uint8, actions N x L int64, rewards N x L float32)``: the model's loss batch."""


def _as_frames(obs: Any, what: str, stack: int, shape: tuple[int, int]) -> torch.Tensor:
    """``obs`` (array or tensor) as a CPU uint8 ``K x H x W`` tensor, or a ValueError naming ``what``."""
    t = torch.as_tensor(obs if isinstance(obs, torch.Tensor) else np.asarray(obs)).cpu()
    if t.dtype != torch.uint8:
        raise ValueError(f"{what}: expected uint8 frames, got {t.dtype}")
    if tuple(t.shape) != (stack, *shape):
        raise ValueError(f"{what}: expected shape {(stack, *shape)}, got {tuple(t.shape)}")
    return t


class FrameStream:
    """One stream of transitions with image observations, stored one frame per step.

    Args:
        frame_stack: ``K``, frames per observation.
        frame_shape: ``(H, W)`` of one frame.
        device: where returned batches go by default (storage stays on the CPU).
        capacity: initial room in transitions (grows by doubling).
    """

    def __init__(self, frame_stack: int, frame_shape: tuple[int, int] = (64, 64),
                 device: torch.device | str | None = None, capacity: int = 1024) -> None:
        if frame_stack < 1:
            raise ValueError(f"frame_stack must be >= 1, got {frame_stack}")
        if len(frame_shape) != 2 or min(frame_shape) < 1:
            raise ValueError(f"frame_shape must be (H, W) with H, W >= 1, got {frame_shape}")
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.frame_stack = int(frame_stack)
        self.frame_shape = (int(frame_shape[0]), int(frame_shape[1]))
        self.device = None if device is None else torch.device(device)
        self._frames = torch.zeros(capacity, *self.frame_shape, dtype=torch.uint8)
        self._actions = torch.zeros(capacity, dtype=torch.long)
        self._rewards = torch.zeros(capacity, dtype=torch.float32)
        self._episode = torch.zeros(capacity, dtype=torch.long)  # episode of each transition
        self._starts = torch.zeros(16, dtype=torch.long)  # first transition of each episode
        self._len = 0
        self._num_episodes = 0

    # ---- sizes and raw views ---------------------------------------------------------------------------------

    def __len__(self) -> int:
        """Transitions stored."""
        return self._len

    @property
    def num_episodes(self) -> int:
        """Episodes begun."""
        return self._num_episodes

    @property
    def num_frames(self) -> int:
        """Frames stored: one per episode start and one per transition."""
        return self._len + self._num_episodes

    @property
    def frames(self) -> torch.Tensor:
        """``F x H x W`` uint8: the stored frames (a view, ``F = len + num_episodes``)."""
        return self._frames[: self.num_frames]

    @property
    def actions(self) -> torch.Tensor:
        """``T`` int64: the action of every transition (a view)."""
        return self._actions[: self._len]

    @property
    def rewards(self) -> torch.Tensor:
        """``T`` float32: the reward of every transition (a view)."""
        return self._rewards[: self._len]

    @property
    def episodes(self) -> torch.Tensor:
        """``T`` int64: the episode (0, 1, ...) of every transition (a view)."""
        return self._episode[: self._len]

    def _out(self, device: torch.device | str | None) -> torch.device | None:
        return torch.device(device) if device is not None else self.device

    # ---- writing ---------------------------------------------------------------------------------------------

    def _reserve(self, transitions: int, frames: int, episodes: int) -> None:
        """Room for that many in all; capacities double so appends cost O(1) amortised."""
        def grown(t: torch.Tensor, need: int) -> torch.Tensor:
            if need <= t.shape[0]:
                return t
            new = t.new_zeros(max(need, 2 * t.shape[0]), *t.shape[1:])
            new[: t.shape[0]] = t
            return new

        self._frames = grown(self._frames, frames)
        self._actions = grown(self._actions, transitions)
        self._rewards = grown(self._rewards, transitions)
        self._episode = grown(self._episode, transitions)
        self._starts = grown(self._starts, episodes)

    def begin(self, first_obs: Any) -> None:
        """Start an episode from its reset observation (``K x H x W`` uint8: ``K`` copies of one frame)."""
        obs = _as_frames(first_obs, "begin", self.frame_stack, self.frame_shape)
        if not bool((obs == obs[-1]).all()):
            raise ValueError("begin: a reset observation must be K copies of its first frame")
        self._reserve(self._len, self.num_frames + 1, self._num_episodes + 1)
        self._frames[self.num_frames] = obs[-1]
        self._starts[self._num_episodes] = self._len
        self._num_episodes += 1

    def append(self, action: int, reward: float, next_obs: Any) -> None:
        """One transition of the current episode; keeps only ``next_obs[-1]`` (``next_obs``: ``K x H x W`` uint8).

        The older ``K - 1`` frames of ``next_obs`` must be the newest ones of the
        observation before: otherwise the environment stacks frames differently from
        how ``obs_stacks`` rebuilds them, and every rebuilt observation would be wrong.
        """
        if self._num_episodes == 0:
            raise ValueError("append: call begin(first_obs) before the first transition")
        obs = _as_frames(next_obs, "append", self.frame_stack, self.frame_shape)
        action, reward = int(action), float(reward)
        if action < 0:
            raise ValueError(f"append: actions are indices >= 0, got {action}")
        if not math.isfinite(reward):  # one NaN reward would make every loss over it NaN
            raise ValueError(f"append: reward must be finite, got {reward}")
        k = self.frame_stack
        if k > 1 and not torch.equal(obs[:-1], self._stack_at_frame(self.num_frames - 1)[1:]):
            raise ValueError("append: next_obs[:-1] differs from the newest K-1 frames of the previous "
                             "observation; the stream rebuilds observations as a plain K-frame stack")
        self._reserve(self._len + 1, self.num_frames + 1, self._num_episodes)
        self._frames[self.num_frames] = obs[-1]
        self._actions[self._len] = action
        self._rewards[self._len] = reward
        self._episode[self._len] = self._num_episodes - 1
        self._len += 1

    def _stack_at_frame(self, frame: int) -> torch.Tensor:
        """``K x H x W``: the observation whose newest frame is ``frame`` of the current (last) episode."""
        first = int(self._starts[self._num_episodes - 1]) + self._num_episodes - 1
        idx = (torch.arange(self.frame_stack) + frame - self.frame_stack + 1).clamp(min=first)
        return self._frames[idx]

    # ---- reading ---------------------------------------------------------------------------------------------

    def _check_index(self, idx: torch.Tensor, what: str) -> torch.Tensor:
        idx = torch.as_tensor(idx, dtype=torch.long).cpu()
        if idx.dim() != 1:
            raise ValueError(f"{what}: expected a 1-D index tensor, got shape {tuple(idx.shape)}")
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self._len):
            raise ValueError(f"{what}: transition indices must be in [0, {self._len}), "
                             f"got [{int(idx.min())}, {int(idx.max())}]")
        return idx

    def _stacks(self, idx: torch.Tensor) -> torch.Tensor:
        """``N x K x H x W`` for valid CPU indices (no checks, no move)."""
        ep = self._episode[idx]
        newest = idx + ep  # the frame before transition idx
        first = self._starts[ep] + ep  # the episode's reset frame
        offsets = torch.arange(self.frame_stack) - (self.frame_stack - 1)
        return self._frames[torch.maximum(newest[:, None] + offsets, first[:, None])]

    def obs_stacks(self, idx: torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
        """``N x K x H x W`` uint8: the observation before each transition in ``idx`` (``N`` int64)."""
        idx = self._check_index(idx, "obs_stacks")
        out = self._stacks(idx)
        dev = self._out(device)
        return out if dev is None else out.to(dev)

    def _episode_ends(self) -> torch.Tensor:
        """``E``: one past the last transition of each episode."""
        starts = self._starts[: self._num_episodes]
        return torch.cat([starts[1:], torch.tensor([self._len])])

    def _fits(self, length: int) -> torch.Tensor:
        """``T`` bool: ``length`` transitions from here stay inside one episode (and the stream)."""
        s = torch.arange(self._len)
        return s + length <= self._episode_ends()[self._episode[: self._len]]

    def sequences(self, starts: torch.Tensor, length: int, device: torch.device | str | None = None) -> Sequences:
        """``(frames N x K x H x W uint8, actions N x L int64, rewards N x L float32)``.

        The observation before transition ``starts[n]`` and the ``L = length``
        actions and rewards from there; each sequence must stay within one episode.
        """
        if length < 1:
            raise ValueError(f"sequences: length must be >= 1, got {length}")
        starts = self._check_index(starts, "sequences")
        if starts.numel() and int(starts.max()) + length > self._len:
            raise ValueError(f"sequences: a sequence of {length} from {int(starts.max())} runs past the "
                             f"stream's {self._len} transitions")
        rows = starts[:, None] + torch.arange(length)
        if starts.numel() and not bool((self._episode[rows[:, -1]] == self._episode[starts]).all()):
            raise ValueError("sequences: a sequence crosses an episode boundary")
        out = (self._stacks(starts), self._actions[rows], self._rewards[rows])
        dev = self._out(device)
        return out if dev is None else (out[0].to(dev), out[1].to(dev), out[2].to(dev))

    def _check_range(self, lo: int, hi: int, length: int, what: str) -> None:
        if length < 1:
            raise ValueError(f"{what}: length must be >= 1, got {length}")
        if not 0 <= lo <= hi <= self._len:
            raise ValueError(f"{what}: need 0 <= lo <= hi <= {self._len} (transitions stored), got [{lo}, {hi})")

    def valid_starts(self, lo: int, hi: int, length: int) -> torch.Tensor:
        """Ascending int64 starts ``s`` in ``[lo, hi - length]`` whose ``length`` transitions share one episode."""
        self._check_range(lo, hi, length, "valid_starts")
        if hi - lo < length:
            return torch.zeros(0, dtype=torch.long)
        s = torch.arange(lo, hi - length + 1)
        return s[self._fits(length)[lo: hi - length + 1]]

    def sample_sequences(self, lo: int, hi: int, n: int, length: int, generator: torch.Generator,
                         device: torch.device | str | None = None) -> Sequences:
        """``n`` sequences (as ``sequences``) from starts drawn uniformly, with replacement, from
        ``valid_starts(lo, hi, length)``; ``generator`` is a CPU generator."""
        starts = self.valid_starts(lo, hi, length)
        if starts.numel() == 0:
            raise ValueError(f"sample_sequences: no sequence of {length} transitions of one episode lies in "
                             f"[{lo}, {hi}) (the stream has {self._len} transitions)")
        pick = starts[torch.randint(starts.numel(), (n,), generator=generator)]
        return self.sequences(pick, length, device)

    def window_tasks(self, num_tasks: int, window: int, batch: int, length: int, generator: torch.Generator,
                     newest_only: bool = False, device: torch.device | str | None = None,
                     within_episode: bool = False) -> TaskBatch:
        """Meta-GCG's tasks: ``num_tasks`` windows of ``window`` consecutive transitions, split in halves.

        A window starts at a position drawn uniformly among those where both halves
        hold at least one sequence of ``length`` transitions of one episode
        (``newest_only``: every task uses the newest window, the last ``window``
        transitions). The first half has ``M = window // 2`` transitions, the second
        the rest; support is ``batch`` sequences lying inside the first half, query
        ``batch`` inside the second, each start drawn uniformly with replacement
        among the valid ones. A window may cross an episode boundary (no sequence does) unless
        ``within_episode``: then only windows inside one episode are drawn, as episodic tasks need (an episode's
        rotation is drawn at its reset, so the halves of a window across a reset would hold two tasks).

        Returns ``TaskBatch(support, query, info)`` with support and query
        ``(frames B x n x K x H x W uint8, actions B x n x L int64, rewards B x n x L
        float32)`` (``B = num_tasks``, ``n = batch``, ``L = length``) and ``info``:
        ``window_starts`` (``B``), ``support_starts`` and ``query_starts`` (``B x n``),
        all int64 on the CPU. ``generator`` is a CPU generator.
        """
        if num_tasks < 1 or batch < 1 or length < 1:
            raise ValueError(f"window_tasks: num_tasks, batch and length must be >= 1, "
                             f"got {num_tasks}, {batch}, {length}")
        half = window // 2
        if half < length or window - half < length:
            raise ValueError(f"window_tasks: each half of the window ({window} -> {half} + {window - half}) "
                             f"must hold a sequence of length {length}")
        if window > self._len:
            raise ValueError(f"window_tasks: a window larger than the stream allows: window {window}, "
                             f"stream {self._len} transitions")
        # counts[i]: valid starts before i, so a range's valid starts are a difference and the r-th of them a search.
        counts = torch.cat([torch.zeros(1, dtype=torch.long), self._fits(length).long().cumsum(0)])
        w0 = torch.arange(self._len - window + 1)
        if newest_only:
            w0 = w0[-1:]
        if within_episode:
            episodes = self.episodes
            w0 = w0[episodes[w0] == episodes[w0 + window - 1]]
        in_first = counts[w0 + half - length + 1] - counts[w0]  # starts in [w0, w0 + half - length]
        in_second = counts[w0 + window - length + 1] - counts[w0 + half]
        w0 = w0[(in_first > 0) & (in_second > 0)]
        if w0.numel() == 0:
            raise ValueError(f"window_tasks: no {'newest ' if newest_only else ''}window of {window} transitions "
                             + ("inside one episode " if within_episode else "")
                             + f"has a sequence of {length} steps of one episode in each half")
        windows = w0[torch.randint(w0.numel(), (num_tasks,), generator=generator)]

        def draw(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
            """``B x n`` starts, each uniform among the valid starts in ``[lo, hi]`` (per task, inclusive)."""
            available = counts[hi + 1] - counts[lo]
            u = torch.rand(num_tasks, batch, generator=generator, dtype=torch.float64)
            rank = (u * available[:, None]).long().clamp(max=available[:, None] - 1)
            # The start holding valid-start number counts[lo] + rank is where the running count first exceeds it.
            target = counts[lo][:, None] + rank + 1
            return torch.searchsorted(counts, target) - 1

        support_starts = draw(windows, windows + half - length)
        query_starts = draw(windows + half, windows + window - length)

        def gather(starts: torch.Tensor) -> Sequences:
            frames, actions, rewards = self.sequences(starts.reshape(-1), length, device)
            b, n = starts.shape
            return frames.reshape(b, n, *frames.shape[1:]), actions.reshape(b, n, -1), rewards.reshape(b, n, -1)

        info = {"window_starts": windows, "support_starts": support_starts, "query_starts": query_starts}
        return TaskBatch(gather(support_starts), gather(query_starts), info)

    def last(self, steps: int, length: int, device: torch.device | str | None = None) -> Sequences:
        """Every sequence of ``length`` lying inside the newest ``steps`` transitions of the current episode.

        What online adaptation steps on (``steps=10, length=5``: 6 sequences, starts
        ``T-10 .. T-5``). With fewer transitions stored, or fewer since the current
        episode began, it uses those there are (never an earlier episode's: its task
        may be another); when no sequence fits, the batch is empty (``N = 0``) and the
        caller skips adapting.
        """
        if steps < 1:
            raise ValueError(f"last: steps must be >= 1, got {steps}")
        current = int(self._starts[self._num_episodes - 1]) if self._num_episodes else 0
        starts = self.valid_starts(max(0, self._len - steps, current), self._len, length)
        if starts.numel() == 0:  # sequences() of no rows: the empty batch with the right trailing shapes
            frames = torch.zeros(0, self.frame_stack, *self.frame_shape, dtype=torch.uint8)
            out = (frames, torch.zeros(0, length, dtype=torch.long), torch.zeros(0, length))
            dev = self._out(device)
            return out if dev is None else (out[0].to(dev), out[1].to(dev), out[2].to(dev))
        return self.sequences(starts, length, device)

    # ---- checkpoints -----------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, torch.Tensor | int]:
        """Plain tensors and ints (``torch.load(weights_only=True)`` reads them); copies, not views."""
        return {
            "frame_stack": self.frame_stack,
            "frame_height": self.frame_shape[0],
            "frame_width": self.frame_shape[1],
            "frames": self.frames.clone(),
            "actions": self.actions.clone(),
            "rewards": self.rewards.clone(),
            "episodes": self.episodes.clone(),
            "episode_starts": self._starts[: self._num_episodes].clone(),
        }

    def load_state_dict(self, state: dict[str, torch.Tensor | int]) -> None:
        """Replace the contents with ``state`` (from a stream with the same ``K`` and frame shape)."""
        k, h, w = int(state["frame_stack"]), int(state["frame_height"]), int(state["frame_width"])
        if (k, (h, w)) != (self.frame_stack, self.frame_shape):
            raise ValueError(f"load_state_dict: state has K={k}, frames {h} x {w}; this stream "
                             f"K={self.frame_stack}, frames {self.frame_shape[0]} x {self.frame_shape[1]}")
        frames, actions, rewards = state["frames"], state["actions"], state["rewards"]
        episodes, starts = state["episodes"], state["episode_starts"]
        assert isinstance(frames, torch.Tensor) and isinstance(actions, torch.Tensor)
        assert isinstance(rewards, torch.Tensor) and isinstance(episodes, torch.Tensor)
        assert isinstance(starts, torch.Tensor)
        t, e = actions.shape[0], starts.shape[0]
        if rewards.shape[0] != t or episodes.shape[0] != t or frames.shape[0] != t + e:
            raise ValueError(f"load_state_dict: inconsistent sizes: {t} actions, {rewards.shape[0]} rewards, "
                             f"{episodes.shape[0]} episode marks, {frames.shape[0]} frames for {e} episodes")
        self._frames = torch.zeros(0, h, w, dtype=torch.uint8)
        self._actions = torch.zeros(0, dtype=torch.long)
        self._rewards = torch.zeros(0, dtype=torch.float32)
        self._episode = torch.zeros(0, dtype=torch.long)
        self._starts = torch.zeros(0, dtype=torch.long)
        self._reserve(max(t, 1), max(t + e, 1), max(e, 1))
        self._frames[: t + e] = frames.to(torch.uint8)
        self._actions[:t] = actions.long()
        self._rewards[:t] = rewards.float()
        self._episode[:t] = episodes.long()
        self._starts[:e] = starts.long()
        self._len, self._num_episodes = t, e

    def truncate(self, n: int) -> None:
        """Keep the first ``n`` transitions: the stream as it was right after the ``n``-th ``append``.

        Episodes begun after that transition go too (``truncate(0)`` empties the
        stream); the next ``append`` continues the last kept episode, a ``begin``
        starts a new one. For resuming from a checkpoint taken at ``n`` transitions.
        """
        if not 0 <= n <= self._len:
            raise ValueError(f"truncate: n must be in [0, {self._len}], got {n}")
        episodes = int(self._episode[n - 1]) + 1 if n > 0 else 0
        self._len, self._num_episodes = n, episodes
