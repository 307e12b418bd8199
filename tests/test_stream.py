"""FrameStream: stacks rebuilt from single frames, episode-safe sequences, Meta-GCG's window tasks, checkpoints."""

from __future__ import annotations

import io

import pytest
import torch

from metadapt.data import FrameStream
from metadapt.types import TaskBatch

K = 3
SHAPE = (8, 8)


class StackingFrames:
    """A fake environment's observations: unique frames stacked K at a time, K copies of the first at reset.

    Frame ``f`` (counting every frame ever made) holds ``f`` in its first two pixels and noise elsewhere.
    The reward of a step is its global transition index, so a batch tells where it came from.
    """

    def __init__(self, stack: int = K, shape: tuple[int, int] = SHAPE, seed: int = 0) -> None:
        self.stack, self.shape = stack, shape
        self.generator = torch.Generator().manual_seed(seed)
        self.made = 0
        self.obs = torch.zeros(0)

    def frame(self) -> torch.Tensor:
        f = torch.randint(0, 256, self.shape, generator=self.generator, dtype=torch.uint8)
        f[0, 0], f[0, 1] = self.made % 256, self.made // 256
        self.made += 1
        return f

    def reset(self) -> torch.Tensor:
        self.obs = self.frame()[None].repeat(self.stack, 1, 1)
        return self.obs.clone()

    def step(self) -> torch.Tensor:
        self.obs = torch.cat([self.obs[1:], self.frame()[None]])
        return self.obs.clone()


def frame_id(frames: torch.Tensor) -> torch.Tensor:
    """The id of each frame in ``... x H x W``."""
    return frames[..., 0, 0].long() + 256 * frames[..., 0, 1].long()


def record(episode_lengths: list[int], stack: int = K, shape: tuple[int, int] = SHAPE, seed: int = 0):
    """A stream of episodes of the given lengths, and the stacks the fake environment produced before each step."""
    env = StackingFrames(stack, shape, seed)
    stream = FrameStream(stack, shape, capacity=4)  # small: growth happens
    before: list[torch.Tensor] = []
    gen = torch.Generator().manual_seed(seed + 1)
    t = 0
    for length in episode_lengths:
        obs = env.reset()
        stream.begin(obs)
        for _ in range(length):
            before.append(obs)
            obs = env.step()
            stream.append(int(torch.randint(4, (1,), generator=gen)), float(t), obs)
            t += 1
    return stream, torch.stack(before)


def test_stacks_rebuilt_from_single_frames_equal_the_environments():
    stream, before = record([7, 2, 5])  # the 2-step episode is shorter than K: padding all the way
    assert len(stream) == 14 and stream.num_episodes == 3
    assert torch.equal(stream.obs_stacks(torch.arange(14)), before)
    # the first observation of the second episode is K copies of its reset frame, not the last episode's frames
    first = stream.obs_stacks(torch.tensor([7]))[0]
    assert (first == first[-1]).all()
    assert torch.equal(stream.obs_stacks(torch.tensor([13, 0, 8])), before[[13, 0, 8]])


def test_frame_stack_of_one_and_default_shape():
    stream, before = record([4, 3], stack=1, shape=(64, 64))
    assert stream.frame_shape == (64, 64)
    assert torch.equal(stream.obs_stacks(torch.arange(7)), before)


def test_storage_is_one_frame_per_step():
    stream, _ = record([300, 200])
    h, w = SHAPE
    assert stream.frames.numel() == (500 + 2) * h * w
    assert stream.state_dict()["frames"].numel() == (500 + 2) * h * w
    # amortised doubling: the allocation is at most twice what is used
    assert stream._frames.numel() <= 2 * (500 + 2) * h * w


def test_sequences_return_the_model_batch():
    stream, before = record([10, 6])
    frames, actions, rewards = stream.sequences(torch.tensor([0, 11]), 4)
    assert frames.shape == (2, K, *SHAPE) and frames.dtype == torch.uint8
    assert actions.shape == (2, 4) and actions.dtype == torch.long
    assert rewards.shape == (2, 4) and rewards.dtype == torch.float32
    assert torch.equal(frames, before[[0, 11]])
    assert torch.equal(rewards, torch.tensor([[0.0, 1, 2, 3], [11, 12, 13, 14]]))
    assert torch.equal(actions[1], stream.actions[11:15])
    with pytest.raises(ValueError, match="crosses an episode"):
        stream.sequences(torch.tensor([8]), 4)
    with pytest.raises(ValueError, match="runs past"):
        stream.sequences(torch.tensor([14]), 4)
    with pytest.raises(ValueError, match=r"\[0, 16\)"):
        stream.obs_stacks(torch.tensor([16]))


def test_valid_starts_stay_within_one_episode():
    stream, _ = record([6, 3, 8])  # transitions 0-5, 6-8, 9-16
    assert stream.valid_starts(0, 17, 4).tolist() == [0, 1, 2, 9, 10, 11, 12, 13]
    assert stream.valid_starts(2, 12, 3).tolist() == [2, 3, 6, 9]
    assert stream.valid_starts(0, 3, 4).numel() == 0
    with pytest.raises(ValueError, match="lo <= hi"):
        stream.valid_starts(5, 18, 2)


def test_sampled_sequences_never_cross_an_episode_and_are_reproducible():
    lengths = [9, 4, 12, 5, 20]
    stream, before = record(lengths)
    episode_of = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    frames, _, rewards = stream.sample_sequences(0, len(stream), 500, 5, torch.Generator().manual_seed(0))
    steps = rewards.long()  # a reward is its transition's index
    assert (steps[:, 1:] - steps[:, :-1] == 1).all()
    assert (episode_of[steps] == episode_of[steps[:, :1]]).all()
    assert torch.equal(frames, before[steps[:, 0]])
    again = stream.sample_sequences(0, len(stream), 500, 5, torch.Generator().manual_seed(0))
    assert torch.equal(again[2], rewards) and torch.equal(again[0], frames)
    other = stream.sample_sequences(0, len(stream), 500, 5, torch.Generator().manual_seed(1))
    assert not torch.equal(other[2], rewards)
    with pytest.raises(ValueError, match="no sequence of 5"):
        stream.sample_sequences(9, 13, 4, 5, torch.Generator())  # the 4-step episode alone


def test_window_tasks_support_in_first_half_query_in_second():
    stream, before = record([150, 37, 400])
    gen = torch.Generator().manual_seed(0)
    tasks = stream.window_tasks(8, 100, 32, 5, gen)
    assert isinstance(tasks, TaskBatch) and tasks.num_tasks == 8
    (sf, sa, sr), (qf, qa, qr) = tasks.support, tasks.query
    assert sf.shape == qf.shape == (8, 32, K, *SHAPE)
    assert sa.shape == qa.shape == sr.shape == qr.shape == (8, 32, 5)
    w0 = tasks.info["window_starts"][:, None, None]
    assert ((sr >= w0) & (sr < w0 + 50)).all()  # every support step in the first half
    assert ((qr >= w0 + 50) & (qr < w0 + 100)).all()  # every query step in the second
    assert torch.equal(sr[..., 0].long(), tasks.info["support_starts"])
    assert torch.equal(qr[..., 0].long(), tasks.info["query_starts"])
    # the newest frame of each observation is the environment's frame before the sequence's first step
    assert torch.equal(frame_id(sf[:, :, -1]), frame_id(before[tasks.info["support_starts"]][:, :, -1]))
    assert torch.equal(qf, before[tasks.info["query_starts"]])
    episode_of = torch.repeat_interleave(torch.arange(3), torch.tensor([150, 37, 400]))
    for r in (sr.long(), qr.long()):
        assert (episode_of[r] == episode_of[r[..., :1]]).all()
    again = stream.window_tasks(8, 100, 32, 5, torch.Generator().manual_seed(0))
    assert torch.equal(again.support[2], sr) and torch.equal(again.query[0], qf)


def test_window_tasks_cover_the_stream_and_cross_episodes():
    stream, _ = record([30, 30])
    starts = stream.window_tasks(400, 20, 4, 3, torch.Generator().manual_seed(0)).info["window_starts"]
    assert set(starts.tolist()) == set(range(41))  # every position of a 20-window in 60 steps
    newest = stream.window_tasks(3, 20, 4, 3, torch.Generator(), newest_only=True).info["window_starts"]
    assert newest.tolist() == [40, 40, 40]


def test_window_tasks_errors():
    stream, _ = record([30])
    with pytest.raises(ValueError, match="a window larger than the stream allows: window 40, stream 30"):
        stream.window_tasks(2, 40, 4, 5, torch.Generator())
    with pytest.raises(ValueError, match="each half"):
        stream.window_tasks(2, 9, 4, 5, torch.Generator())
    short, _ = record([4, 4, 4, 4])  # no episode holds a 5-step sequence
    with pytest.raises(ValueError, match="no window of 12"):
        short.window_tasks(2, 12, 4, 5, torch.Generator())


def test_last_gives_every_sequence_of_the_newest_steps():
    stream, before = record([40])
    frames, actions, rewards = stream.last(10, 5)
    assert rewards[:, 0].tolist() == [30.0, 31, 32, 33, 34, 35]
    assert torch.equal(frames, before[30:36]) and actions.shape == (6, 5)
    crossing, _ = record([33, 7])  # the newest 10 steps span two episodes: sequences of the 7-step one only
    assert crossing.last(10, 5)[2][:, 0].tolist() == [33.0, 34, 35]
    young, _ = record([3])
    empty = young.last(10, 5)
    assert empty[0].shape == (0, K, *SHAPE) and empty[1].shape == (0, 5) and empty[2].shape == (0, 5)


def test_begin_and_append_check_their_observations():
    stream = FrameStream(K, SHAPE)
    env = StackingFrames()
    with pytest.raises(ValueError, match="begin"):
        stream.append(0, 0.0, env.reset())
    with pytest.raises(ValueError, match="K copies"):
        stream.begin(torch.randint(0, 256, (K, *SHAPE), dtype=torch.uint8))
    with pytest.raises(ValueError, match="uint8"):
        stream.begin(torch.zeros(K, *SHAPE))
    with pytest.raises(ValueError, match="shape"):
        stream.begin(torch.zeros(K + 1, *SHAPE, dtype=torch.uint8))
    stream.begin(env.reset().numpy())  # arrays work too
    with pytest.raises(ValueError, match="next_obs"):
        stream.append(0, 0.0, torch.randint(0, 256, (K, *SHAPE), dtype=torch.uint8))
    with pytest.raises(ValueError, match="finite"):
        stream.append(0, float("nan"), env.step())
    with pytest.raises(ValueError, match="frame_stack"):
        FrameStream(0)


def test_state_dict_round_trip_and_truncate():
    stream, before = record([12, 9])
    buffer = io.BytesIO()
    torch.save(stream.state_dict(), buffer)
    buffer.seek(0)
    loaded = FrameStream(K, SHAPE)
    loaded.load_state_dict(torch.load(buffer, weights_only=True))
    assert len(loaded) == 21 and loaded.num_episodes == 2
    assert torch.equal(loaded.obs_stacks(torch.arange(21)), before)
    assert torch.equal(loaded.actions, stream.actions) and torch.equal(loaded.rewards, stream.rewards)
    with pytest.raises(ValueError, match="K=2"):
        FrameStream(2, SHAPE).load_state_dict(stream.state_dict())

    loaded.truncate(10)  # inside the first episode: the second goes
    assert len(loaded) == 10 and loaded.num_episodes == 1 and loaded.frames.shape[0] == 11
    assert torch.equal(loaded.obs_stacks(torch.arange(10)), before[:10])
    # the stream continues where it was cut: the next observation follows the kept frames
    nxt = torch.cat([before[9][1:], loaded.frames[-1:]])  # the observation after transition 9
    new = torch.full((1, *SHAPE), 7, dtype=torch.uint8)
    loaded.append(1, 0.5, torch.cat([nxt[1:], new]))
    assert len(loaded) == 11 and torch.equal(loaded.obs_stacks(torch.tensor([10]))[0], nxt)
    loaded.truncate(0)
    assert len(loaded) == 0 and loaded.num_episodes == 0


def test_batches_go_to_the_requested_device():
    stream, _ = record([20])
    meta = FrameStream(K, SHAPE, device="meta")
    meta.load_state_dict(stream.state_dict())
    assert meta.frames.device.type == "cpu"  # storage stays on the CPU
    assert meta.last(10, 5)[0].device.type == "meta"
    assert meta.sequences(torch.tensor([0]), 3, device="cpu")[1].device.type == "cpu"
    tasks = meta.window_tasks(2, 10, 3, 2, torch.Generator())
    assert tasks.support[0].device.type == "meta" and tasks.info["window_starts"].device.type == "cpu"


def test_window_sequence_starts_are_uniform_over_the_valid_ones():
    stream, _ = record([45, 15])  # the newest 20-window [40, 60) holds an episode boundary at 45
    tasks = stream.window_tasks(50, 20, 120, 3, torch.Generator().manual_seed(0), newest_only=True)
    support = tasks.info["support_starts"].flatten()
    counts = torch.bincount(support, minlength=60)
    assert set(support.tolist()) == {40, 41, 42, 45, 46, 47}  # 43 and 44 would cross into the next episode
    assert counts[[40, 41, 42, 45, 46, 47]].min() > 0.8 * 6000 / 6  # 1000 expected each, sd about 29
    assert set(tasks.info["query_starts"].flatten().tolist()) == set(range(50, 58))


def _two_episode_stream(first: int, second: int) -> FrameStream:
    s = FrameStream(2, (4, 4))
    for episode, steps in enumerate((first, second)):
        frame = torch.full((4, 4), 10 * episode, dtype=torch.uint8)
        obs = torch.stack([frame, frame])
        s.begin(obs)
        for t in range(steps):
            nxt = torch.stack([obs[-1], torch.full((4, 4), 10 * episode + t + 1, dtype=torch.uint8)])
            s.append(t % 4, 1.0, nxt)
            obs = nxt
    return s


def test_last_never_reaches_into_an_earlier_episode() -> None:
    # 7 steps of one episode, 3 of the next: of the newest 10 steps only the 3 of the current episode count.
    s = _two_episode_stream(7, 3)
    _, actions, _ = s.last(10, 3)
    assert actions.shape[0] == 1 and actions[0].tolist() == [0, 1, 2]
    assert s.last(10, 4)[1].shape[0] == 0  # no 4-step sequence in the current episode yet


def test_window_tasks_within_one_episode() -> None:
    s = _two_episode_stream(12, 12)
    gen = torch.Generator().manual_seed(0)
    tasks = s.window_tasks(200, 8, 2, 2, gen, within_episode=True)
    starts = tasks.info["window_starts"]
    assert bool(((starts + 7 < 12) | (starts >= 12)).all())  # no window spans the reset at transition 12
    assert bool((starts < 12).any()) and bool((starts >= 12).any())  # both episodes drawn
    with pytest.raises(ValueError, match="inside one episode"):
        s.window_tasks(2, 14, 2, 2, gen, within_episode=True)
