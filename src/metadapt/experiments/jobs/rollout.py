"""The one environment-stepping loop: trials, data collection and the benchmarks all run ``rollout``.

``rollout(env, policy, steps, seed)`` steps ``env`` with ``policy`` for
``steps`` steps, resetting the environment when an episode ends. The policy is
anything with ``act(obs) -> action``; the loop also calls its optional hooks:
``reset()`` at the start (and, with ``reset_each_episode``, at every episode's
start), ``new_episode()`` at the start of every later episode, and
``observe(obs, action, next_obs, reward, done)`` after every step, whose
returned dict (if any) becomes the step's ``metrics``. ``MPCAgent`` is such a
policy; ``RandomPolicy`` draws uniformly from the action space.

Callbacks see, in order, ``on_episode_start(episode, obs, info)``, every
``on_step(step)`` (a ``Step``: the transition, the environment's flags and
``info``, the episode and step indices, the policy's metrics and timings) and
``on_episode_end(end)`` (an ``EpisodeEnd``), the last one also for the episode
the step budget cut short (``end.done`` is then False). A plain callable counts
as an ``on_step``. The environment is not reset after the last step.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import gymnasium as gym

from metadapt.types import Window


class Policy(Protocol):
    """Chooses actions; ``reset``, ``new_episode`` and ``observe`` are optional hooks (see the module docstring)."""

    def act(self, obs: Any) -> Any: ...


@dataclass(frozen=True)
class Step:
    """One environment step as the loop saw it.

    ``t`` is the step's index in the rollout, ``episode`` the episode's (0 the
    first) and ``step`` the index within the episode. ``truncated`` is the
    environment's flag or the loop's ``episode_length`` reached.
    ``metrics`` is what ``policy.observe`` returned; ``act_seconds`` and
    ``observe_seconds`` time ``policy.act`` and ``policy.observe``.
    """

    t: int
    episode: int
    step: int
    obs: Any
    action: Any
    reward: float
    next_obs: Any
    terminated: bool
    truncated: bool
    info: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)
    act_seconds: float = 0.0
    observe_seconds: float = 0.0

    @property
    def done(self) -> bool:
        """The episode ended with this step."""
        return self.terminated or self.truncated

    def transition(self, device: Any = None) -> Window:
        """This step as a window of length 1 (float32 observations; see ``Window.from_step``)."""
        return Window.from_step(self.obs, self.action, self.next_obs, self.reward, self.done, self.episode,
                                self.step, device)


@dataclass(frozen=True)
class EpisodeEnd:
    """An episode's end: its index, length (steps), return, and how it ended.

    ``done`` is False for the episode that the rollout's step budget cut short.
    """

    episode: int
    length: int
    total_return: float
    terminated: bool
    truncated: bool

    @property
    def done(self) -> bool:
        return self.terminated or self.truncated


@dataclass(frozen=True)
class RolloutResult:
    """Per-episode returns and lengths (the last episode may be unfinished), in order."""

    steps: int
    episode_returns: list[float]
    episode_lengths: list[int]
    total_return: float

    @property
    def episodes(self) -> int:
        return len(self.episode_returns)


class Callback:
    """Base class of rollout callbacks: override what you need (every hook does nothing here)."""

    def on_episode_start(self, episode: int, obs: Any, info: dict[str, Any]) -> None:
        """After the environment's reset for ``episode``."""

    def on_step(self, step: Step) -> None:
        """After every step (and the policy's ``observe``)."""

    def on_episode_end(self, end: EpisodeEnd) -> None:
        """After the episode's last step, before the environment resets."""


class _StepFunction(Callback):
    def __init__(self, fn: Callable[[Step], Any]) -> None:
        self.fn = fn

    def on_step(self, step: Step) -> None:
        self.fn(step)


class RandomPolicy:
    """Uniform random actions from ``space`` (a copy of it, seeded with ``seed``): the same draws as
    ``space.seed(seed)`` then ``space.sample()``, without touching ``space``'s own generator."""

    def __init__(self, space: gym.Space, seed: int | None) -> None:
        self.space = copy.deepcopy(space)
        self.space.seed(seed)

    def act(self, obs: Any) -> Any:
        return self.space.sample()


Seed = int | None | Callable[[int], int | None]


def rollout(
    env: gym.Env,
    policy: Policy,
    steps: int,
    seed: Seed,
    *,
    episode_length: int | None = None,
    callbacks: Iterable[Callback | Callable[[Step], Any]] = (),
    reset_on_done: bool = True,
    reset_each_episode: bool = False,
) -> RolloutResult:
    """Step ``env`` with ``policy`` for ``steps`` steps; see the module docstring for hooks and callbacks.

    Args:
        seed: the first reset's seed (later resets continue the environment's
            generator), or ``episode -> seed`` for every reset (data collection
            draws one per episode).
        episode_length: end an episode (``truncated``) after this many steps
            (``None``: only the environment ends episodes).
        reset_on_done: reset and go on when an episode ends; False: stop there
            (one episode at most).
        reset_each_episode: call ``policy.reset()`` at every episode's start
            (independent rollouts, as data collection does) instead of
            ``reset()`` once and ``new_episode()`` afterwards.
    """
    cbs = [c if isinstance(c, Callback) else _StepFunction(c) for c in callbacks]
    reset_policy = getattr(policy, "reset", None)
    new_episode = getattr(policy, "new_episode", None)
    observe = getattr(policy, "observe", None)
    seed_of = seed if callable(seed) else (lambda e: seed if e == 0 else None)

    def start(episode: int) -> tuple[Any, dict[str, Any]]:
        obs, info = env.reset(seed=seed_of(episode))
        for c in cbs:
            c.on_episode_start(episode, obs, info)
        return obs, info

    if reset_policy is not None:
        reset_policy()
    obs, _ = start(0)
    episode, in_episode, ep_return, total = 0, 0, 0.0, 0.0
    returns: list[float] = []
    lengths: list[int] = []
    ended = False
    for t in range(steps):
        t0 = time.perf_counter()
        action = policy.act(obs)
        t1 = time.perf_counter()
        next_obs, reward, terminated, truncated, info = env.step(action)
        limit = episode_length is not None and in_episode + 1 >= episode_length
        done = bool(terminated or truncated or limit)
        t2 = time.perf_counter()
        metrics = observe(obs, action, next_obs, reward, done) if observe is not None else None
        t3 = time.perf_counter()
        record = Step(t, episode, in_episode, obs, action, float(reward), next_obs, bool(terminated),
                      bool(truncated or limit), info, dict(metrics or {}), t1 - t0, t3 - t2)
        ep_return += float(reward)
        total += float(reward)
        in_episode += 1
        for c in cbs:
            c.on_step(record)
        obs = next_obs
        if done:
            end = EpisodeEnd(episode, in_episode, ep_return, record.terminated, record.truncated)
            returns.append(ep_return)
            lengths.append(in_episode)
            for c in cbs:
                c.on_episode_end(end)
            if not reset_on_done or t + 1 == steps:
                ended = True
                break
            episode, in_episode, ep_return = episode + 1, 0, 0.0
            obs, _ = start(episode)
            if reset_each_episode and reset_policy is not None:
                reset_policy()
            elif not reset_each_episode and new_episode is not None:
                new_episode()
    if not ended:  # the step budget ran out inside an episode
        end = EpisodeEnd(episode, in_episode, ep_return, False, False)
        returns.append(ep_return)
        lengths.append(in_episode)
        for c in cbs:
            c.on_episode_end(end)
    return RolloutResult(sum(lengths), returns, lengths, total)
