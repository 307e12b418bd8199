"""The Window type (env -> agent -> learner -> buffer) and the one rollout loop."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from metadapt.adapt.base import OnlineLearner, StepInfo
from metadapt.agent import MPCAgent
from metadapt.data.buffer import ReplayBuffer
from metadapt.experiments.jobs.rollout import Callback, EpisodeEnd, RandomPolicy, Step, rollout
from metadapt.models.mlp import MLPDynamics
from metadapt.planning import RandomShooting
from metadapt.types import Transitions, Window


# -- Window ------------------------------------------------------------------------------------------------
def test_window_fields_shapes_and_defaults():
    obs, act, nxt = torch.randn(5, 3), torch.randn(5, 2), torch.randn(5, 3)
    w = Window(obs, act, nxt)
    assert len(w) == 5 and w.lead == (5,)
    assert w.reward.shape == (5,) and w.reward.dtype == torch.float32 and float(w.reward.abs().sum()) == 0
    assert w.done.dtype == torch.bool and not bool(w.done.any())
    assert w.episode.dtype == torch.long and w.episode.tolist() == [0] * 5
    assert w.step.dtype == torch.long and w.step.tolist() == [0, 1, 2, 3, 4]
    newest = w[-1:]
    assert len(newest) == 1 and torch.equal(newest.obs, obs[-1:]) and newest.step.tolist() == [4]
    joined = Window.cat([w[:2], w[2:]])
    for name in ("obs", "act", "next_obs", "reward", "done", "episode", "step"):
        assert torch.equal(getattr(joined, name), getattr(w, name))
    moved = w.replace(episode=torch.full((5,), 7))
    assert moved.episode.tolist() == [7] * 5 and moved.obs is w.obs
    assert Transitions is Window  # the former name keeps working
    with pytest.raises(ValueError, match="leading shape"):
        Window(obs, act[:4], nxt)
    with pytest.raises(ValueError, match="'done'"):
        Window(obs, act, nxt, done=torch.zeros(5, 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="next_obs"):
        Window(obs, act, nxt[:, :2])


def test_an_image_window_with_discrete_actions():
    k = 6
    steps = [Window.from_step(np.random.rand(1, 8, 8), np.int64(i % 4), np.random.rand(1, 8, 8), reward=1.0,
                              done=i == k - 1, episode=2, step=i) for i in range(k)]
    assert steps[0].obs.shape == (1, 1, 8, 8) and steps[0].act.shape == (1,) and steps[0].act.dtype == torch.long
    w = Window.cat(steps)
    assert w.obs.shape == (k, 1, 8, 8) and w.next_obs.shape == (k, 1, 8, 8) and w.obs.dtype == torch.float32
    assert w.act.tolist() == [0, 1, 2, 3, 0, 1] and w.reward.tolist() == [1.0] * k
    assert w.done.tolist() == [False] * (k - 1) + [True] and w.episode.tolist() == [2] * k
    assert w.step.tolist() == list(range(k))
    assert w[2:4].obs.shape == (2, 1, 8, 8)


def test_a_batch_of_windows_has_two_leading_dimensions():
    b, k = 4, 3
    w = Window(torch.randn(b, k, 2), torch.randn(b, k, 1), torch.randn(b, k, 2), torch.zeros(b, k))
    assert w.lead == (b, k) and w.step.shape == (b, k) and w.step[1].tolist() == [0, 1, 2]
    assert w[:, 1:].lead == (b, 2)


# -- the buffer stores and returns windows ------------------------------------------------------------------------
def test_buffer_adds_and_returns_windows():
    buf, by_columns = ReplayBuffer(2, 1, capacity=100), ReplayBuffer(2, 1, capacity=100)
    for ep, n in enumerate((4, 6)):
        obs = torch.randn(n, 2)
        w = Window(obs, torch.randn(n, 1), obs + 1, torch.randn(n), episode=torch.full((n,), ep))
        buf.add(w, task_id=ep, val=np.arange(n) % 3 == 0)
        by_columns.add(w.obs, w.act, w.next_obs, w.reward, w.episode, w.step, np.full(n, ep), np.arange(n) % 3 == 0)
    for split in ("all", "train", "val"):
        a, b = buf.transitions(split), by_columns.transitions(split)
        for name in ("obs", "act", "next_obs", "reward", "episode", "step", "done"):
            assert torch.equal(getattr(a, name), getattr(b, name))
    every = buf.transitions()
    assert every.episode.tolist() == [0] * 4 + [1] * 6 and every.step.tolist() == [*range(4), *range(6)]
    assert every.done.nonzero().flatten().tolist() == [3, 9]  # the last stored step of each episode
    assert buf.column("task_id").tolist() == [0] * 4 + [1] * 6
    windows = buf.sample_windows(2, 2, 8, torch.Generator().manual_seed(0))
    assert windows.window.lead == (8, 4) and torch.equal(windows.past_window().obs, windows.past()[0])
    assert torch.equal(windows.future_window().next_obs, windows.future()[2])
    assert bool((windows.window.step[:, 1:] - windows.window.step[:, :-1] == 1).all())
    with pytest.raises(TypeError):
        buf.add(torch.zeros(3, 2))


# -- the agent hands its learner windows of single steps ---------------------------------------------------------
class _Recorder:
    """An online learner that keeps every window it is given."""

    def __init__(self, params: dict) -> None:
        self._params, self.windows = params, []

    def reset(self) -> None:
        self.windows.clear()

    def observe(self, window: Window) -> StepInfo:
        self.windows.append(window)
        return StepInfo({"k": float(len(window))})

    def params(self) -> dict:
        return self._params


def test_agent_builds_the_window_from_its_history():
    model = MLPDynamics(2, 1, [8])
    learner = _Recorder(model.init_params(torch.Generator().manual_seed(0)))
    assert isinstance(learner, OnlineLearner)
    agent = MPCAgent(model, learner, RandomShooting(-torch.ones(1), torch.ones(1), 3, 10, seed=0), _reward, window=3)
    agent.reset()
    rows = [(np.random.rand(2), np.random.rand(1).astype(np.float32), np.random.rand(2)) for _ in range(6)]
    for i, (o, a, o2) in enumerate(rows[:4]):
        metrics = agent.observe(o, a, o2, reward=float(i), done=i == 3)
        assert metrics["k"] == min(i + 1, 3)
    agent.new_episode()
    for o, a, o2 in rows[4:]:
        agent.observe(o, a, o2)
    last = learner.windows[3]
    assert len(last) == 3 and last.step.tolist() == [1, 2, 3] and last.reward.tolist() == [1.0, 2.0, 3.0]
    assert last.done.tolist() == [False, False, True] and last.episode.tolist() == [0, 0, 0]
    assert torch.equal(last.obs[-1], torch.as_tensor(rows[3][0], dtype=torch.float32))
    assert torch.equal(last.next_obs[0], torch.as_tensor(rows[1][2], dtype=torch.float32))
    # a new episode starts an empty window, with the next episode index
    assert learner.windows[5].episode.tolist() == [1, 1] and learner.windows[5].step.tolist() == [0, 1]


def _reward(obs: torch.Tensor, act: torch.Tensor, nxt: torch.Tensor) -> torch.Tensor:
    return -nxt.pow(2).sum(-1)


# -- the rollout loop -------------------------------------------------------------------------------------------
class _Countdown(gym.Env):
    """Observation ``[steps into the episode, the reset's seed or -1]``; terminates after ``length`` steps."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float64)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def __init__(self, length: int = 3) -> None:
        self.length, self.resets = length, []

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.resets.append(seed)
        self.t, self.seed_ = 0, -1 if seed is None else seed
        return self._obs(), {"reset": len(self.resets)}

    def step(self, action):
        self.t += 1
        return self._obs(), float(action[0]), self.t >= self.length, False, {"task_id": self.t % 2}

    def _obs(self) -> np.ndarray:
        return np.array([self.t, self.seed_], dtype=np.float64)


class _Events(Callback):
    def __init__(self) -> None:
        self.events: list[tuple] = []
        self.steps: list[Step] = []

    def on_episode_start(self, episode, obs, info):
        self.events.append(("start", episode, int(obs[0])))

    def on_step(self, step):
        self.steps.append(step)
        self.events.append(("step", step.t, step.episode, step.step, step.done))

    def on_episode_end(self, end: EpisodeEnd):
        self.events.append(("end", end.episode, end.length, end.done))


class _Policy:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def reset(self) -> None:
        self.calls.append("reset")

    def new_episode(self) -> None:
        self.calls.append("new_episode")

    def act(self, obs):
        return np.array([0.5], dtype=np.float32)

    def observe(self, obs, act, nxt, reward, done):
        self.calls.append("observe")
        return {"seen": float(nxt[0])}


def test_callbacks_see_every_step_and_episode_boundary_in_order():
    env, policy, log = _Countdown(3), _Policy(), _Events()
    plain: list[int] = []
    result = rollout(env, policy, 7, 11, callbacks=[log, lambda s: plain.append(s.t)])
    assert log.events == [
        ("start", 0, 0), ("step", 0, 0, 0, False), ("step", 1, 0, 1, False), ("step", 2, 0, 2, True),
        ("end", 0, 3, True),
        ("start", 1, 0), ("step", 3, 1, 0, False), ("step", 4, 1, 1, False), ("step", 5, 1, 2, True),
        ("end", 1, 3, True),
        ("start", 2, 0), ("step", 6, 2, 0, False), ("end", 2, 1, False),  # the budget cut the last one short
    ]
    assert plain == list(range(7))
    # terminated=True resets the env: the first reset with the seed, later ones continue its generator
    assert env.resets == [11, None, None]
    assert policy.calls.count("reset") == 1 and policy.calls.count("new_episode") == 2
    assert policy.calls.count("observe") == 7
    s = log.steps[2]
    assert s.terminated and not s.truncated and s.reward == 0.5 and s.metrics == {"seen": 3.0}
    assert s.obs.tolist() == [2, 11] and s.next_obs.tolist() == [3, 11] and s.info == {"task_id": 1}
    assert s.transition().obs.shape == (1, 2) and s.transition().done.tolist() == [True]
    assert result.episode_returns == [1.5, 1.5, 0.5] and result.episode_lengths == [3, 3, 1]
    assert result.steps == 7 and result.total_return == 3.5 and result.episodes == 3


def test_episode_length_seeds_per_episode_and_independent_episodes():
    env, policy, log = _Countdown(100), _Policy(), _Events()
    seeds = iter([5, 6, 7])
    result = rollout(env, policy, 5, lambda episode: next(seeds), episode_length=2, callbacks=[log],
                     reset_each_episode=True)
    assert env.resets == [5, 6, 7] and result.episode_lengths == [2, 2, 1]
    assert policy.calls.count("reset") == 3 and "new_episode" not in policy.calls
    truncated = [s.truncated for s in log.steps]
    assert truncated == [False, True, False, True, False] and not any(s.terminated for s in log.steps)
    assert [s.obs[1] for s in log.steps] == [5, 5, 6, 6, 7]


def test_stopping_at_the_first_episode_end_and_the_last_step_is_not_followed_by_a_reset():
    env = _Countdown(3)
    result = rollout(env, _Policy(), 10, 0, reset_on_done=False)
    assert result.steps == 3 and result.episode_lengths == [3] and env.resets == [0]
    env = _Countdown(3)
    result = rollout(env, _Policy(), 6, 0)
    assert result.episode_lengths == [3, 3] and env.resets == [0, None]


def test_random_collection_is_reproducible_from_its_seed():
    def collect(seed: int) -> Window:
        env = _Countdown(4)
        steps: list[Window] = []
        rng = np.random.default_rng(seed)
        rollout(env, RandomPolicy(env.action_space, seed), 10, lambda e: int(rng.integers(2**31)),
                callbacks=[lambda s: steps.append(s.transition())], reset_each_episode=True)
        return Window.cat(steps)

    a, b, c = collect(3), collect(3), collect(4)
    assert torch.equal(a.act, b.act) and torch.equal(a.obs, b.obs) and torch.equal(a.episode, b.episode)
    assert not torch.equal(a.act, c.act)
    # the draws are the space's own after seeding it, and the env's space is left alone
    space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    space.seed(3)
    assert np.array_equal(a.act.numpy(), np.stack([space.sample() for _ in range(10)]))
    assert a.episode.tolist() == [0] * 4 + [1] * 4 + [2] * 2 and a.step.tolist() == [0, 1, 2, 3] * 2 + [0, 1]
