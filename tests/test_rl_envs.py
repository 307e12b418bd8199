"""MAML-RL's task environments: point navigation (and its native vector env), goal velocity and direction tasks.

Closed-form rewards, agreement of the vector env with ``SyncVectorEnv``, per-sub-env
tasks through ``set_attr("next_task", ...)`` (Sync, Async, native), task
distributions, ``task_in_obs`` and one-line errors for bad task specs.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from gymnasium.vector import AutoresetMode

from metadapt.envs import get_reward_fn, make_env
from metadapt.envs.point_nav import PointNavVectorEnv
from metadapt.errors import ConfigError

NAV = "metadapt/PointNav-v0"
GOALS = [[0.3, -0.2], [-0.45, 0.1], [0.0, 0.5]]


def _goal_of(info_task: str) -> np.ndarray:
    return np.array([float(v) for v in info_task.removeprefix("goal=(").removesuffix(")").split(",")])


# ---- point navigation ------------------------------------------------------------------------------------------------
def test_nav_reward_is_minus_the_distance_after_a_clipped_move():
    env = make_env(NAV, schedule={"type": "constant", "task": {"goal": [0.25, -0.4]}})
    obs, info = env.reset(seed=0)
    assert obs.dtype == np.float32 and obs.shape == (2,) and not obs.any()
    assert info["task"] == "goal=(0.2500,-0.4000)"
    obs, reward, terminated, truncated, _ = env.step(np.array([0.3, 0.0], dtype=np.float32))
    np.testing.assert_allclose(obs, [0.1, 0.0], atol=1e-7)  # (0.3, 0) moves 0.1
    assert reward == pytest.approx(-np.hypot(0.1 - 0.25, 0.4), abs=1e-7)
    obs, reward, *_ = env.step(np.array([-0.05, -1.0]))
    np.testing.assert_allclose(obs, [0.05, -0.1], atol=1e-7)
    assert reward == pytest.approx(-np.hypot(0.05 - 0.25, -0.1 + 0.4), abs=1e-7)
    # no termination, even on the goal (reached after 10 steps); the registry's time limit ends episodes at 100 steps
    env.reset()
    steps = 0
    while True:
        steps += 1
        _, reward, terminated, truncated, _ = env.step(np.array([0.025, -0.04]) if steps <= 10 else np.zeros(2))
        assert not terminated
        if truncated:
            break
    assert steps == 100 and reward == pytest.approx(0.0, abs=1e-6)


def test_goal_and_velocity_distributions_stay_in_their_bounds():
    rng = np.random.default_rng(0)
    nav = make_env(NAV).unwrapped
    goals = np.array([nav.sample_train_task(rng).params["goal"] for _ in range(2000)])
    test_goals = np.array([nav.sample_test_task(rng).params["goal"] for _ in range(2000)])
    for g in (goals, test_goals):
        assert g.min() >= -0.5 and g.max() <= 0.5 and g.min() < -0.49 and g.max() > 0.49
        assert abs(g.mean()) < 0.03
    cheetah = make_env("metadapt/HalfCheetahVel-v0").unwrapped
    v = np.array([cheetah.sample_train_task(rng).params["velocity"] for _ in range(2000)])
    assert v.min() >= 0.0 and v.max() <= 2.0 and v.min() < 0.01 and v.max() > 1.99
    for env_id in ("metadapt/HalfCheetahDir-v0", "metadapt/AntDir-v0"):
        env = make_env(env_id).unwrapped
        drawn = {env.sample_train_task(rng).params["direction"] for _ in range(50)}
        assert drawn == {1, -1} == {env.sample_test_task(rng).params["direction"] for _ in range(50)}


@pytest.mark.parametrize("env_id", ["metadapt/HalfCheetahDir-v0", "metadapt/HalfCheetahVel-v0"])
def test_goal_cheetahs_act_at_rllabs_control_period(env_id: str) -> None:
    """rllab's half_cheetah.xml steps 0.01 s per action: 200 steps are 2 s, as in the MAML paper (not
    Gymnasium's 5 physics steps per action); frame_skip=5 gives Gymnasium's period back."""
    env = make_env(env_id).unwrapped
    assert env.frame_skip == 1 and env.dt == pytest.approx(0.01)
    env.reset(seed=0)
    before = env.data.qpos[0]
    obs, *_ = env.step(np.full(6, 0.5))
    assert obs[17] == pytest.approx((env.data.qpos[0] - before) / 0.01)
    assert make_env(env_id, frame_skip=5).unwrapped.dt == pytest.approx(0.05)


def test_nav_renders_with_numpy():
    env = make_env(NAV, render_mode="rgb_array", width=64, height=48)
    env.reset(seed=0)
    frame = env.render()
    assert frame.shape == (48, 64, 3) and frame.dtype == np.uint8 and frame.std() > 0


# ---- the native vector env -------------------------------------------------------------------------------------------
def _assert_infos_equal(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for key in a:
        if isinstance(a[key], dict):
            _assert_infos_equal(a[key], b[key])
        elif a[key].dtype == object:
            for x, y in zip(a[key], b[key], strict=True):
                np.testing.assert_array_equal(x, y)
        else:
            np.testing.assert_array_equal(a[key], b[key])
            assert a[key].dtype == b[key].dtype


@pytest.mark.parametrize("mode", list(AutoresetMode))
def test_vector_env_equals_sync_vector_env_step_for_step(mode):
    n = 4
    sync = gym.vector.SyncVectorEnv([lambda: make_env(NAV) for _ in range(n)], autoreset_mode=mode)
    native = PointNavVectorEnv(n, autoreset_mode=mode)
    assert native.metadata["autoreset_mode"] is mode
    assert native.single_observation_space == sync.single_observation_space
    assert native.single_action_space == sync.single_action_space
    assert native.observation_space == sync.observation_space and native.action_space == sync.action_space
    a, b = sync.reset(seed=5), native.reset(seed=5)  # the same seeds draw the same goals
    np.testing.assert_array_equal(a[0], b[0])
    _assert_infos_equal(a[1], b[1])
    rng = np.random.default_rng(0)
    for t in range(230):
        if t == 120:  # half way, the first two sub-envs get goals from outside, the others keep their schedule
            for envs in (sync, native):
                envs.set_attr("next_task", [{"goal": GOALS[0]}, {"goal": GOALS[1]}, None, None])
        actions = rng.uniform(-0.2, 0.2, (n, 2)).astype(np.float32)  # beyond the bounds: clipping is exercised
        a, b = sync.step(actions), native.step(actions)
        for x, y in zip(a[:4], b[:4], strict=True):
            np.testing.assert_array_equal(x, y)
            assert x.dtype == y.dtype
        _assert_infos_equal(a[4], b[4])
        ended = a[2] | a[3]
        if mode is AutoresetMode.DISABLED and ended.any():
            a, b = sync.reset(options={"reset_mask": ended.copy()}), native.reset(options={"reset_mask": ended.copy()})
            np.testing.assert_array_equal(a[0], b[0])
            _assert_infos_equal(a[1], b[1])
    assert b[4]["task"][0] == "goal=(0.3000,-0.2000)"  # the goals set at step 120 run from the next episode


def test_vector_env_with_switching_schedule_and_oracle_obs_equals_sync():
    n, kwargs = 3, {"schedule": {"type": "random", "min_len": 10, "max_len": 30}, "task_in_obs": True}
    sync = gym.vector.SyncVectorEnv([lambda: make_env(NAV, **kwargs) for _ in range(n)])
    native = PointNavVectorEnv(n, **kwargs)
    np.testing.assert_array_equal(sync.reset(seed=1)[0], native.reset(seed=1)[0])
    rng = np.random.default_rng(1)
    for _ in range(150):
        actions = rng.uniform(-0.1, 0.1, (n, 2))
        a, b = sync.step(actions), native.step(actions)
        for x, y in zip(a[:4], b[:4], strict=True):
            np.testing.assert_array_equal(x, y)
        np.testing.assert_array_equal(a[4]["task_id"], b[4]["task_id"])
    assert b[0].shape == (n, 4)


def test_vector_env_is_deterministic_per_seed():
    def roll(seed: int) -> np.ndarray:
        envs = PointNavVectorEnv(8, task_in_obs=True)
        obs, _ = envs.reset(seed=seed)
        out = [obs]
        rng = np.random.default_rng(0)
        for _ in range(120):
            out.append(envs.step(rng.uniform(-0.1, 0.1, (8, 2)))[0])
        return np.array(out)

    np.testing.assert_array_equal(roll(2), roll(2))
    assert not np.array_equal(roll(2), roll(3))


# ---- next_task through vector envs -----------------------------------------------------------------------------------
def _check_next_task(envs) -> None:
    """Each sub-env runs its own goal from the next reset on, across resets, until next_task is None again."""
    envs.set_attr("next_task", [{"goal": g} for g in GOALS])
    assert [t.name for t in envs.get_attr("next_task")] == [f"goal=({x:.4f},{y:.4f})" for x, y in GOALS]
    _, info = envs.reset(seed=0)
    assert list(info["task"]) == [f"goal=({x:.4f},{y:.4f})" for x, y in GOALS]
    seen = []
    for _ in range(205):  # two episodes and the first step of a third (NEXT_STEP autoreset)
        obs, reward, _, truncated, info = envs.step(np.full((3, 2), 0.05, dtype=np.float32))
        seen.append(info["task"].copy())
        moved = ~truncated & (reward != 0)
        expected = -np.linalg.norm(obs.astype(np.float64) - np.array(GOALS), axis=1)
        np.testing.assert_allclose(reward[moved], expected[moved], atol=1e-7)
    assert all(list(tasks) == list(seen[0]) for tasks in seen)
    envs.set_attr("next_task", None)  # the schedule again: a new random goal at every reset
    _, info = envs.reset(seed=0)
    assert not set(info["task"]) & set(seen[0])
    envs.close()


def test_next_task_through_sync_vector_env():
    _check_next_task(gym.make_vec(NAV, num_envs=3, vectorization_mode="sync"))


def test_next_task_through_async_vector_env():
    _check_next_task(gym.vector.AsyncVectorEnv([lambda: gym.make(NAV) for _ in range(3)]))


def test_next_task_through_native_vector_env():
    _check_next_task(PointNavVectorEnv(3))


def test_next_task_reaches_a_mujoco_env_through_gym_make_wrappers():
    # gym.make's TimeLimit, OrderEnforcing and PassiveEnvChecker pass set_attr down to the TaskEnv.
    envs = gym.vector.SyncVectorEnv([lambda: make_env("metadapt/HalfCheetahMalfunction-v0") for _ in range(2)])
    envs.set_attr("next_task", ["sign_negative", {"gains": [1, 1, 1, 1, 1, -1]}])
    for wrapped in envs.envs:
        assert "next_task" not in vars(wrapped)  # not swallowed by the outermost wrapper
    for _ in range(2):
        _, info = envs.reset()
        assert list(info["task"]) == ["sign_negative", "flip_5"]
        *_, info = envs.step(np.zeros((2, 6)))
        assert list(info["task"]) == ["sign_negative", "flip_5"]


def test_next_task_episode_equals_a_constant_schedule_episode():
    # next_task draws nothing from the env's generator: the episode is exactly the one schedule=<task> gives.
    def roll(**kwargs) -> np.ndarray:
        env = make_env("metadapt/HalfCheetahDir-v0", **kwargs)
        if not kwargs:
            env.unwrapped.next_task = "backward"
        obs, _ = env.reset(seed=4)
        out = [obs]
        for t in range(10):
            out.append(env.step(np.sin(t + np.arange(6)))[0])
        return np.array(out)

    np.testing.assert_array_equal(roll(), roll(schedule="backward"))


def test_setting_next_task_mid_episode_waits_for_the_reset():
    env = make_env(NAV)
    _, info = env.reset(seed=0)
    env.unwrapped.next_task = {"goal": [0.1, 0.1]}
    *_, info_step = env.step(np.zeros(2))
    assert info_step["task"] == info["task"] != "goal=(0.1000,0.1000)"
    assert env.reset()[1]["task"] == "goal=(0.1000,0.1000)"


# ---- locomotion task families -------------------------------------------------------------------------------------
def test_cheetah_velocity_reward_is_minus_the_speed_error_minus_control():
    env = make_env("metadapt/HalfCheetahVel-v0", schedule={"type": "constant", "task": {"velocity": 1.25}})
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(20):
        act = rng.uniform(-1, 1, 6)
        obs, reward, terminated, _, info = env.step(act)
        assert info["task"] == "velocity=1.2500" and not terminated
        assert obs[-1] == info["x_velocity"]
        assert reward == pytest.approx(-abs(info["x_velocity"] - 1.25) - 0.05 * np.sum(act**2), abs=1e-12)


def test_direction_reward_flips_sign_with_the_direction():
    for env_id, costs in (("metadapt/HalfCheetahDir-v0", ("reward_ctrl",)),
                          ("metadapt/AntDir-v0", ("reward_ctrl", "reward_contact", "reward_survive"))):
        rolls = {}
        for direction in ("forward", "backward"):
            env = make_env(env_id, schedule=direction)
            env.reset(seed=1)
            rng = np.random.default_rng(1)
            rolls[direction] = [env.step(rng.uniform(-1, 1, env.action_space.shape))[1:] for _ in range(15)]
        for (r_f, *_, info_f), (r_b, *_, info_b) in zip(rolls["forward"], rolls["backward"], strict=True):
            assert info_f["x_velocity"] == info_b["x_velocity"]  # the task changes the reward, not the physics
            rest = sum(info_f[k] for k in costs)
            assert r_f == pytest.approx(info_f["x_velocity"] + rest, abs=1e-9)
            assert r_b == pytest.approx(-info_f["x_velocity"] + rest, abs=1e-9)


TASK_ENVS = ["metadapt/PointNav-v0", "metadapt/HalfCheetahVel-v0", "metadapt/HalfCheetahDir-v0", "metadapt/AntDir-v0"]


def _rollout(env, steps: int, seed: int, across_episodes: bool) -> tuple[list, list]:
    """Transitions and rewards, one list per episode; without ``across_episodes`` it stops where the first ends."""
    rng = np.random.default_rng(seed)
    episodes, rewards = [[]], [[]]
    obs, _ = env.reset(seed=seed)
    dim = env.action_space.shape[0]
    for t in range(steps):
        act = (rng.uniform(-1, 1, dim) if t % 40 < 20 else np.sin(0.3 * t + np.arange(dim))).astype(np.float32)
        nxt, r, terminated, truncated, _ = env.step(act)
        episodes[-1].append((obs, act, nxt))
        rewards[-1].append(r)
        obs = nxt
        if terminated or truncated:
            if not across_episodes:
                break
            obs, _ = env.reset()
            episodes.append([]), rewards.append([])
    return episodes, rewards


def _score(reward_fn, transitions: list, dtype=torch.float64) -> np.ndarray:
    obs, act, nxt = (torch.tensor(np.array(x), dtype=dtype) for x in zip(*transitions, strict=True))
    return reward_fn(obs, act, nxt).numpy()


@pytest.mark.parametrize("env_id", TASK_ENVS)
def test_reward_fn_matches_step_rewards_for_the_current_task(env_id):
    env = make_env(env_id, max_episode_steps=40)
    reward_fn = get_reward_fn(env)
    for seed in (0, 1):  # two episodes, two tasks: each scored while its task is the current one
        episodes, rewards = _rollout(env, 40, seed, across_episodes=False)
        np.testing.assert_allclose(_score(reward_fn, episodes[0]), rewards[0], atol=1e-5, rtol=0)
        np.testing.assert_allclose(_score(reward_fn, episodes[0], torch.float32), rewards[0], atol=1e-4, rtol=0)


@pytest.mark.parametrize("env_id", TASK_ENVS)
def test_reward_fn_with_task_in_obs_scores_any_task(env_id):
    # the oracle observation carries the task, so a rollout whose task switches every 10-25 steps is scored exactly
    env = make_env(env_id, task_in_obs=True, schedule={"type": "random", "min_len": 10, "max_len": 25},
                   max_episode_steps=50)
    episodes, rewards = _rollout(env, 60, 0, across_episodes=True)
    transitions = [t for e in episodes for t in e]
    rewards = [r for e in rewards for r in e]
    np.testing.assert_allclose(_score(get_reward_fn(env), transitions), rewards, atol=1e-5, rtol=0)
    assert len({t[2][-1] for t in transitions}) > 1  # the task did switch


@pytest.mark.parametrize(("env_id", "spec", "size"), [
    ("metadapt/PointNav-v0", {"goal": [0.2, -0.35]}, 2),
    ("metadapt/HalfCheetahVel-v0", {"velocity": 0.7}, 18),
    ("metadapt/HalfCheetahDir-v0", "backward", 18),
    ("metadapt/AntDir-v0", "backward", 106),
])
def test_task_in_obs_appends_the_task(env_id, spec, size):
    plain = make_env(env_id, schedule={"type": "constant", "task": spec})
    oracle = make_env(env_id, schedule={"type": "constant", "task": spec}, task_in_obs=True)
    a, _ = plain.reset(seed=2)
    b, _ = oracle.reset(seed=2)
    expected = {"goal": [0.2, -0.35], "velocity": [0.7], "direction": [-1]}
    task = next(v for k, v in expected.items() if k in oracle.unwrapped.task.params)
    for _ in range(2):
        assert a.shape == (size,) and b.shape == (size + len(task),)
        assert oracle.observation_space.shape == b.shape
        np.testing.assert_array_equal(b[:size], a)
        np.testing.assert_allclose(b[size:], task, atol=1e-7)
        act = np.full(plain.action_space.shape, 0.05, dtype=np.float32)
        a, b = plain.step(act)[0], oracle.step(act)[0]
    check_env(oracle.unwrapped, skip_render_check=True)


@pytest.mark.parametrize(("env_id", "spec", "words"), [
    ("metadapt/PointNav-v0", {"goal": [0.1, 0.2, 0.3]}, "two finite numbers"),
    ("metadapt/PointNav-v0", {"goal": [0.1, float("nan")]}, "finite number"),
    ("metadapt/PointNav-v0", "north", "{'goal': [0.1, -0.3]}"),
    ("metadapt/HalfCheetahVel-v0", {"velocity": "fast"}, "finite number"),
    ("metadapt/HalfCheetahVel-v0", {"speed": 1.0}, "exactly 'velocity'"),
    ("metadapt/HalfCheetahDir-v0", {"direction": 0}, "+1 (forward) or -1"),
    ("metadapt/AntDir-v0", {"direction": 0}, "+1 (forward) or -1"),
    ("metadapt/AntDir-v0", "sideways", "forward, backward"),
])
def test_bad_task_spec_is_one_config_error_line(env_id, spec, words):
    with pytest.raises(ConfigError) as schedule_error:
        make_env(env_id, schedule={"type": "constant", "task": spec})
    env = make_env(env_id).unwrapped
    with pytest.raises(ConfigError) as next_task_error:
        env.next_task = spec
    for exc in (schedule_error.value, next_task_error.value):
        assert "\n" not in str(exc) and words in str(exc), str(exc)
    assert str(next_task_error.value).startswith("next_task: ")
    assert env.next_task is None  # a bad value leaves the setting as it was


def test_bad_next_task_through_a_vector_env_is_one_line():
    envs = gym.make_vec(NAV, num_envs=2, vectorization_mode="sync")
    with pytest.raises(ConfigError, match=r"^next_task: .*two finite numbers") as error:
        envs.set_attr("next_task", [{"goal": [0.1, 0.2]}, {"goal": [1, 2, 3]}])
    assert "\n" not in str(error.value)
    native = PointNavVectorEnv(2)
    with pytest.raises(ConfigError, match=r"^next_task: "):
        native.set_attr("next_task", [{"goal": [0.1, 0.2]}, {"goal": "here"}])


@pytest.mark.parametrize("mode", list(AutoresetMode))
def test_goal_tolerance_ends_episodes_as_mamls_code_and_the_vector_env_agrees(mode):
    """With goal_tolerance=0.01 an episode ends when the point is within 0.01 of the goal on both axes."""
    env = make_env(NAV, goal_tolerance=0.01)
    env.reset(seed=0)
    env.unwrapped.next_task = {"goal": [0.05, -0.02]}
    env.reset(seed=0)
    _, _, terminated, _, _ = env.step(np.array([0.03, -0.02], dtype=np.float32))
    assert not terminated  # x is 0.02 off
    _, _, terminated, _, _ = env.step(np.array([0.015, 0.0], dtype=np.float32))
    assert terminated  # 0.005 off in x, 0 in y
    n = 6
    sync = gym.vector.SyncVectorEnv([lambda: make_env(NAV, goal_tolerance=0.05) for _ in range(n)],
                                    autoreset_mode=mode)
    native = PointNavVectorEnv(n, autoreset_mode=mode, goal_tolerance=0.05)
    a, b = sync.reset(seed=3), native.reset(seed=3)
    rng = np.random.default_rng(1)
    ends = 0
    for _ in range(300):
        # head for the goal with noise, so episodes end at different steps
        goal = np.array([t.params["goal"] for t in sync.get_attr("task")], dtype=np.float32)
        actions = (goal - a[0][:, :2]) + rng.normal(0, 0.05, (n, 2)).astype(np.float32)
        a, b = sync.step(actions), native.step(actions)
        for x, y in zip(a[:4], b[:4], strict=True):
            np.testing.assert_array_equal(x, y)
        ends += int(a[2].sum())
        if mode is AutoresetMode.DISABLED and (a[2] | a[3]).any():
            mask = (a[2] | a[3]).copy()
            a, b = sync.reset(options={"reset_mask": mask}), native.reset(options={"reset_mask": mask})
            np.testing.assert_array_equal(a[0], b[0])
    assert ends > 0
    with pytest.raises(Exception, match="goal_tolerance"):
        make_env(NAV, goal_tolerance=-1)
