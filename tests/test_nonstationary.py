"""Non-stationary environments: physical effect of every perturbation, schedules, switching, bad input."""

from __future__ import annotations

import os
import subprocess
import sys
import zlib
from pathlib import Path

import mujoco
import numpy as np
import pytest

from metadapt.envs import REGISTRY, env_class, make_env
from metadapt.envs.describe import TABLE_BEGIN, TABLE_END, markdown_table
from metadapt.envs.tasks import PARAMETRIC_ID_BASE, Task, parse_schedule
from metadapt.errors import ConfigError, MetadaptError

ROOT = Path(__file__).resolve().parents[1]


def _forces(env, ctrl: np.ndarray) -> np.ndarray:
    """Actuator forces for ``ctrl`` from the current state (no time passes)."""
    u = env.unwrapped
    u.data.ctrl[:] = ctrl
    mujoco.mj_forward(u.model, u.data)
    return u.data.actuator_force.copy()


def _env(env_id: str, task, **kw):
    env = make_env(env_id, schedule={"type": "constant", "task": task}, **kw)
    env.reset(seed=0)
    return env


# ---- physical effects -------------------------------------------------------------------------------------------
def test_malfunction_flip_reverses_and_scale_scales_actuator_force():
    ctrl = np.linspace(-0.9, 0.8, 6)
    normal = _forces(_env("metadapt/HalfCheetahMalfunction-v0", "normal"), ctrl)
    assert np.all(np.abs(normal) > 0.1)
    env = _env("metadapt/HalfCheetahMalfunction-v0", "sign_negative")
    flipped = _forces(env, ctrl)
    np.testing.assert_allclose(flipped, -normal)
    # ...and so does the torque at the joints (qfrc_actuator on the six hinge dofs)
    gear = env.unwrapped.model.actuator_gear[:, 0]
    np.testing.assert_allclose(env.unwrapped.data.qfrc_actuator[3:9], -normal * gear)
    gains = [1.0, -0.5, 0.25, 1.0, 0.0, -1.0]
    scaled = _forces(_env("metadapt/HalfCheetahMalfunction-v0", {"gains": gains}), ctrl)
    np.testing.assert_allclose(scaled, normal * np.array(gains))


def test_disabled_joint_contributes_zero_force():
    ctrl = np.full(6, 0.7)
    normal = _forces(_env("metadapt/HalfCheetahDisabledJoint-v0", "normal"), ctrl)
    for j in range(6):
        f = _forces(_env("metadapt/HalfCheetahDisabledJoint-v0", f"joint_{j}"), ctrl)
        assert f[j] == 0.0
        np.testing.assert_allclose(np.delete(f, j), np.delete(normal, j))


def test_weakened_joint_scales_its_force_and_partial_training_never_touches_joint_0():
    env_id = "metadapt/HalfCheetahDisabledJoint-v0"
    ctrl = np.full(6, 0.7)
    normal = _forces(_env(env_id, "normal"), ctrl)
    f = _forces(_env(env_id, {"joint": 2, "gain": 0.35}), ctrl)
    np.testing.assert_allclose(f, normal * np.array([1, 1, 0.35, 1, 1, 1]))
    env = make_env(env_id, train_gain=[0.0, 1.0])
    u = env.unwrapped
    assert u.resolve_task({"joint": 4, "gain": 0.0}).name == "joint_4"  # gain 0 is the catalog task
    assert u.resolve_task({"joint": 4, "gain": 1.0}).name == "normal"
    rng = np.random.default_rng(0)
    tasks = [u.sample_train_task(rng) for _ in range(400)]
    weakened = [t for t in tasks if t.params["joint"] is not None]  # a draw of gain 1 is the normal robot
    assert {t.params["joint"] for t in weakened} == {1, 2, 3, 4, 5} and len(weakened) > 380
    gains = np.array([t.params["gain"] for t in weakened])
    assert gains.min() < 0.1 and gains.max() > 0.9 and len(set(gains.tolist())) > 15
    np.testing.assert_allclose(gains, np.round(gains / 0.05) * 0.05, atol=1e-9)
    # gains that differ in the third decimal are different tasks (same name and id made the second one a no-op)
    a, b = u.resolve_task({"joint": 1, "gain": 0.351}), u.resolve_task({"joint": 1, "gain": 0.354})
    assert a.name != b.name and a.task_id != b.task_id
    assert u.resolve_task({"joint": 1, "gain": 0.35000000001}).name == "joint_1_gain_0.35"
    narrow = make_env(env_id, train_gain=[0.31, 0.34]).unwrapped
    assert all(0.31 <= narrow.sample_train_task(rng).params["gain"] <= 0.34 for _ in range(50))
    # without train_gain the training tasks are the five disabled joints
    plain = make_env(env_id).unwrapped
    assert {plain.sample_train_task(rng).name for _ in range(100)} == {f"joint_{j}" for j in range(1, 6)}


@pytest.mark.parametrize("train_gain", [[0.5, 0.2], [0.0, 1.5], "low", [0.1]])
def test_a_bad_train_gain_is_one_config_error(train_gain):
    with pytest.raises(ConfigError, match="train_gain"):
        make_env("metadapt/HalfCheetahDisabledJoint-v0", train_gain=train_gain)


@pytest.mark.parametrize("spec", [{"joint": 1, "gain": 1.5}, {"joint": 1, "gain": "half"}, {"joint": 1, "gains": 0}])
def test_a_bad_disabled_joint_task_is_one_config_error(spec):
    with pytest.raises(ConfigError, match="disabled-joint"):
        _env("metadapt/HalfCheetahDisabledJoint-v0", spec)


def _settled_height(env, x0: float, steps: int = 40) -> float:
    u = env.unwrapped
    qpos, qvel = u.data.qpos.copy(), np.zeros(u.model.nv)
    qpos[0], qpos[1] = x0, u.height_at(x0)
    u.set_state(qpos, qvel)
    u.after_step()  # the heightfield follows the robot
    for _ in range(steps):
        env.step(np.zeros(6))
    return float(u.data.qpos[1])


@pytest.mark.parametrize(("terrain", "x", "rise"), [("gentle", 8.0, 0.5), ("steep", 8.0, 2.0), ("basin", 8.0, -0.8),
                                                    ("gentle", 8.0 + 16 * 5, 0.5 + 5 * 1.0)])
def test_terrain_raises_the_torso_as_it_advances(terrain, x, rise):
    env = _env("metadapt/HalfCheetahTerrain-v0", terrain)
    base = _settled_height(env, 0.0)
    env.reset(seed=0)
    assert env.unwrapped.height_at(x) == pytest.approx(rise)
    assert _settled_height(env, x) - base == pytest.approx(rise, abs=0.05)


def test_terrain_follows_a_robot_far_from_the_start():
    env = _env("metadapt/HalfCheetahTerrain-v0", "slope_up")
    u = env.unwrapped
    x = 16.0 * 40
    assert _settled_height(env, x) > u.height_at(x) - 0.4  # standing on the ground, not fallen through it
    gid = mujoco.mj_name2id(u.model, mujoco.mjtObj.mjOBJ_GEOM, "floor")
    assert u.data.geom_xpos[gid][0] == pytest.approx(x)


def _block_motion(damping: float) -> np.ndarray:
    env = _env("metadapt/HalfCheetahPier-v0", {"damping": damping})
    heights = []
    for _ in range(40):
        env.step(np.zeros(6))
        heights.append(env.unwrapped.block_heights())
    return np.array(heights)


def test_pier_damping_changes_block_motion():
    bouncy, stiff = _block_motion(2.0), _block_motion(400.0)
    assert np.abs(bouncy).max() > 0.01  # the landing cheetah pushes the blocks down
    # Low damping: the blocks keep oscillating; high damping: they barely move after the landing.
    assert np.abs(np.diff(bouncy[10:], axis=0)).sum() > 3 * np.abs(np.diff(stiff[10:], axis=0)).sum()


def test_pier_recycles_blocks_around_the_robot():
    env = _env("metadapt/HalfCheetahPier-v0", "calm")
    u = env.unwrapped
    qpos = u.data.qpos.copy()
    qpos[0] = 50.0
    u.set_state(qpos, u.data.qvel.copy())
    env.step(np.zeros(6))
    xs = np.sort(u.model.body_pos[u._bodies, 0])
    from metadapt.envs.halfcheetah_pier import AHEAD, BEHIND, BLOCK

    np.testing.assert_allclose(np.diff(xs), BLOCK)
    x = u.data.qpos[0]
    # the blocks cover at least 1 m behind and ahead of the torso, none beyond the recycling bounds
    assert x - BEHIND * BLOCK <= xs[0] and xs[0] - BLOCK / 2 <= x - 1.0
    assert xs[-1] <= x + AHEAD * BLOCK and xs[-1] + BLOCK / 2 >= x + 1.0


def _foot_length(env, geom: str) -> float:
    u = env.unwrapped
    return float(u.model.geom_size[mujoco.mj_name2id(u.model, mujoco.mjtObj.mjOBJ_GEOM, geom), 1])


def test_ant_crippled_leg_is_shorter_and_unpowered():
    ctrl = np.full(8, 0.6)
    normal_env = _env("metadapt/AntCrippled-v0", "normal")
    normal = _forces(normal_env, ctrl)
    for leg, geom in enumerate(("left_ankle_geom", "right_ankle_geom", "third_ankle_geom", "fourth_ankle_geom")):
        env = _env("metadapt/AntCrippled-v0", f"leg_{leg}")
        f = _forces(env, ctrl)
        dead = env.unwrapped._leg_actuators[leg]
        assert np.all(f[dead] == 0.0) and np.all(np.delete(f, dead) != 0.0)
        assert _foot_length(env, geom) == pytest.approx(0.5 * _foot_length(normal_env, geom))
    assert np.all(normal != 0.0)


def test_crawler_disabled_joints_and_crippled_legs():
    ctrl = np.full(12, 0.5)
    normal_env = _env("metadapt/Crawler-v0", "normal")
    normal = _forces(normal_env, ctrl)
    assert np.all(normal != 0.0)
    env = _env("metadapt/Crawler-v0", {"disabled": [3, 4, 5]})  # knee of leg 1, both joints of leg 2
    f = _forces(env, ctrl)
    assert np.all(f[[3, 4, 5]] == 0.0) and np.all(np.delete(f, [3, 4, 5]) != 0.0)
    assert env.unwrapped.crippled_legs() == [2]
    assert _foot_length(env, "foot_2") == pytest.approx(0.5 * _foot_length(normal_env, "foot_2"))
    assert _foot_length(env, "foot_1") == pytest.approx(_foot_length(normal_env, "foot_1"))


def test_crawler_command_changes_the_reward_not_the_dynamics():
    def roll(task):
        env = _env("metadapt/Crawler-v0", task)
        env.action_space.seed(0)
        out = [env.step(env.action_space.sample()) for _ in range(20)]
        return np.array([o[0][:-2] for o in out]), np.array([o[1] for o in out]), out[-1][4]

    obs_s, rew_s, _ = roll("normal")
    obs_l, rew_l, info_l = roll("turn_left")
    np.testing.assert_array_equal(obs_s, obs_l)
    assert not np.allclose(rew_s, rew_l)
    assert info_l["reward_turn"] == pytest.approx(info_l["yaw_rate"])


def test_crawler_reports_how_upright_its_torso_is():
    env = _env("metadapt/Crawler-v0", "normal")
    _, _, _, _, info = env.step(np.zeros(12))
    assert info["torso_up"] > 0.95
    u = env.unwrapped
    qpos, qvel = u.data.qpos.copy(), u.data.qvel.copy()
    qpos[2], qpos[3:7] = 0.5, [0.0, 1.0, 0.0, 0.0]  # rotated half a turn about x: on its back
    u.set_state(qpos, qvel)
    _, _, _, _, info = env.step(np.zeros(12))
    assert info["torso_up"] < -0.95


def test_crawler_walking_straight_is_rewarded_along_its_own_heading():
    env = _env("metadapt/Crawler-v0", "normal")
    u = env.unwrapped
    qpos, qvel = u.data.qpos.copy(), np.zeros(u.model.nv)
    qpos[3:7] = [np.cos(np.pi / 4), 0.0, 0.0, np.sin(np.pi / 4)]  # turned 90 degrees left: facing world +y
    qvel[1] = 1.0
    u.set_state(qpos, qvel)
    _, reward, _, _, info = env.step(np.zeros(12))
    assert info["forward_velocity"] > 0.3 and abs(info["x_velocity"]) < 0.05
    assert info["reward_forward"] == pytest.approx(info["forward_velocity"])
    assert reward == pytest.approx(info["forward_velocity"])


def _quat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = np.zeros(4)
    mujoco.mju_mulQuat(out, a, b)
    return out


@pytest.mark.parametrize("turn", [np.pi / 2, np.pi, 2 * np.pi, -2.5])
def test_crawler_observation_and_dynamics_do_not_depend_on_the_heading(turn):
    """The same state turned about the vertical (a full turn included: it negates the quaternion) and driven by
    the same actions gives the same observations and rewards. Before the heading frame the prior's K-step error
    on random actions rose from 0.27 facing +x to 0.40 facing -x."""
    schedule = {"type": "constant", "task": "normal"}
    a, b = (make_env("metadapt/Crawler-v0", schedule=schedule) for _ in range(2))
    a.reset(seed=3)
    b.reset(seed=3)
    ua, ub = a.unwrapped, b.unwrapped
    for _ in range(5):  # moving and tilted, not the rest pose
        a.step(np.full(12, 0.7))
        b.step(np.full(12, 0.7))
    qpos, qvel = ub.data.qpos.copy(), ub.data.qvel.copy()
    c, s = np.cos(turn), np.sin(turn)
    rot = np.array([[c, -s], [s, c]])
    qpos[:2], qvel[:2] = rot @ qpos[:2], rot @ qvel[:2]
    qpos[3:7] = _quat_mul(np.array([np.cos(turn / 2), 0.0, 0.0, np.sin(turn / 2)]), qpos[3:7])
    ub.set_state(qpos, qvel)
    np.testing.assert_allclose(ub._get_obs(), ua._get_obs(), atol=1e-9)
    rng = np.random.default_rng(0)
    for _ in range(20):
        act = rng.uniform(-1, 1, 12)
        obs_a, rew_a, *_ = a.step(act)
        obs_b, rew_b, *_ = b.step(act)
        np.testing.assert_allclose(obs_b, obs_a, atol=1e-6)
        assert rew_b == pytest.approx(rew_a, abs=1e-6)
    assert not np.allclose(ub.data.qpos[3:7], ua.data.qpos[3:7])  # the two really face different ways


@pytest.mark.parametrize("axis", [0, 1])
def test_crawler_observation_is_continuous_when_it_rolls_or_pitches_onto_its_back(axis):
    """Turning the torso through 200 degrees about its x (roll) or y (pitch) axis in 1-degree steps moves the
    observation by little at every step. The heading-frame quaternion (observation version 2) flipped sign when
    the roll passed lying flat on the back and when the pitch passed upside down (a jump of 2.0 in one entry)."""
    env = make_env("metadapt/Crawler-v0", schedule={"type": "constant", "task": "normal"})
    env.reset(seed=0)
    u = env.unwrapped
    qpos, qvel = u.data.qpos.copy(), u.data.qvel.copy()
    qvel[:] = 0.3
    base = _quat_mul(np.array([np.cos(0.3), 0.0, 0.0, np.sin(0.3)]), np.array([1.0, 0.0, 0.0, 0.0]))
    prev, jumps = None, []
    for deg in np.arange(0.0, 201.0, 1.0):
        half = np.deg2rad(deg) / 2
        q = np.zeros(4)
        q[0], q[1 + axis] = np.cos(half), np.sin(half)
        qpos[3:7] = _quat_mul(base, q)
        u.set_state(qpos, qvel)
        obs = u._get_obs()
        if prev is not None:
            jumps.append(np.abs(obs - prev).max())
        prev = obs
    assert max(jumps) < 0.05


def test_crawler_turn_reward_is_the_rotation_about_the_vertical_not_the_heading_angle_change():
    """Pitching over through vertical with almost no rotation about the vertical: the old yaw rate (the heading
    angle's change over a step) read about pi / dt = 63 rad/s there, and planners exploited it (30 reward in one
    step of a sweep). Now the step's yaw rate is bounded by the torso's own angular speed."""
    env = make_env("metadapt/Crawler-v0", schedule={"type": "constant", "task": "turn_left"})
    env.reset(seed=0)
    u = env.unwrapped
    qpos, qvel = u.data.qpos.copy(), u.data.qvel.copy()
    pitch = np.deg2rad(-80.0)  # the nose nearly straight up, pitching further over
    qpos[:3] = [0.0, 0.0, 1.5]
    qpos[3:7] = _quat_mul(np.array([np.cos(0.2), 0.0, 0.0, np.sin(0.2)]),
                          np.array([np.cos(pitch / 2), 0.0, np.sin(pitch / 2), 0.0]))
    qvel[:] = 0.0
    qvel[4], qvel[3] = -8.0, 0.05  # body-frame rates: fast about y, slow about x
    u.set_state(qpos, qvel)
    for _ in range(3):
        _, reward, _, _, info = env.step(np.zeros(12))
        assert abs(info["yaw_rate"]) < 1.0 and abs(reward) < 1.0


def _on_its_back(env) -> None:
    u = env.unwrapped
    qpos, qvel = u.data.qpos.copy(), u.data.qvel.copy()
    qpos[:3], qpos[3:7] = [1.5, -0.5, 0.5], [0.0, 1.0, 0.0, 0.0]
    u.set_state(qpos, qvel)


def test_crawler_left_on_its_back_is_righted_where_it_lies_and_the_schedule_goes_on():
    schedule = {"type": "sequence", "entries": [[0, "normal"], [12, "leg_0"]]}
    env = make_env("metadapt/Crawler-v0", schedule=schedule, right_after=3)
    env.reset(seed=0)
    _on_its_back(env)
    infos = [env.step(np.zeros(12))[4] for _ in range(3)]
    assert [i["righted"] for i in infos] == [0.0, 0.0, 1.0]
    assert all(i["torso_up"] < 0 for i in infos)
    _, _, _, _, info = env.step(np.zeros(12))
    assert info["torso_up"] > 0.95 and info["righted"] == 0.0
    assert info["x_position"] == pytest.approx(1.5, abs=0.05) and info["y_position"] == pytest.approx(-0.5, abs=0.05)
    tasks = [env.step(np.zeros(12))[4]["task"] for _ in range(10)]
    assert tasks == ["normal"] * 8 + ["leg_0"] * 2  # steps 4-13: the righting did not restart the schedule

    never = make_env("metadapt/Crawler-v0", schedule="test_leg_0", right_after=None)
    never.reset(seed=0)
    _on_its_back(never)
    assert all(never.step(np.zeros(12))[4]["torso_up"] < 0 for _ in range(30))


@pytest.mark.parametrize("bad", [0, -2, 2.5, True, "10"])
def test_crawler_refuses_a_bad_right_after(bad):
    with pytest.raises(ConfigError, match="right_after"):
        make_env("metadapt/Crawler-v0", right_after=bad)


# ---- schedules and switching ---------------------------------------------------------------------------------
def test_three_task_schedule_switches_at_exact_steps_and_state_carries_over():
    schedule = {"type": "sequence", "entries": [[0, "normal"], [7, "sign_negative"], [15, "flip_2"]]}
    env = make_env("metadapt/HalfCheetahMalfunction-v0", schedule=schedule)
    u = env.unwrapped
    _, info = env.reset(seed=1)
    assert info["task"] == "normal"
    states_at_switch = []
    original = u.apply_task

    def recording_apply(task: Task) -> None:
        states_at_switch.append((u.data.time, u.data.qpos.copy(), u.data.qvel.copy()))
        original(task)

    u.apply_task = recording_apply
    rng = np.random.default_rng(0)
    ids, ends = [], []
    for _ in range(25):
        _, _, _, _, info = env.step(rng.uniform(-1, 1, 6))
        ids.append(info["task_id"])
        ends.append((u.data.time, u.data.qpos.copy(), u.data.qvel.copy()))
    index = list(u.CATALOG).index
    expected = [index("normal")] * 7 + [index("sign_negative")] * 8 + [index("flip_2")] * 10
    assert ids == expected
    assert len(states_at_switch) == 2
    for (t, q, v), step in zip(states_at_switch, (7, 15), strict=True):
        t_end, q_end, v_end = ends[step - 1]  # the state at the end of the step before the switch
        assert t == t_end
        np.testing.assert_array_equal(q, q_end)
        np.testing.assert_array_equal(v, v_end)

    # The state before the switch equals that of an env that never switches.
    ref = make_env("metadapt/HalfCheetahMalfunction-v0", schedule="normal")
    ref.reset(seed=1)
    rng = np.random.default_rng(0)
    for _ in range(7):
        ref.step(rng.uniform(-1, 1, 6))
    np.testing.assert_array_equal(ref.unwrapped.data.qpos, ends[6][1])


def test_alternating_and_random_schedules():
    tasks = {n: Task(n, i) for i, n in enumerate("abc")}
    alt = parse_schedule({"type": "alternating", "tasks": ["a", "b"], "period": 3}, tasks.__getitem__)
    assert [alt.task_at(t).name for t in range(8)] == list("aaabbbaa")
    rnd = parse_schedule({"type": "random", "tasks": ["a", "b", "c"], "min_len": 4, "max_len": 6, "seed": 5},
                         tasks.__getitem__)
    rnd.reset(np.random.default_rng(0), lambda r: tasks["a"])
    names = [rnd.task_at(t).name for t in range(300)]
    runs, start = [], 0
    for t in range(1, 301):
        if t == 300 or names[t] != names[t - 1]:
            runs.append(t - start)
            start = t
    assert all(4 <= r <= 6 for r in runs[:-1]) and len(set(names)) == 3
    rnd.reset(np.random.default_rng(99), lambda r: tasks["a"])
    assert [rnd.task_at(t).name for t in range(300)] == names  # a seeded random schedule repeats


def test_sampled_schedule_draws_per_episode_deterministically():
    def tasks(seed):
        env = make_env("metadapt/HalfCheetahMalfunction-v0")
        out = [env.reset(seed=seed)[1]["task_id"]]
        out += [env.reset()[1]["task_id"] for _ in range(5)]
        return out

    assert tasks(0) == tasks(0)
    assert len(set(tasks(0))) > 1
    assert all(t >= PARAMETRIC_ID_BASE or t < 16 for t in tasks(0))


def test_task_ids_are_stable_across_instances():
    a = make_env("metadapt/Crawler-v0").unwrapped
    b = make_env("metadapt/Crawler-v0").unwrapped
    spec = {"disabled": [7, 1], "command": "left"}
    assert a.resolve_task(spec) == b.resolve_task({"command": "left", "disabled": [1, 7]})
    task = a.resolve_task(spec)
    assert task.name == "crawler(left; off 1,7)"
    # crc32 is fixed by zlib's specification: the id of this task is the same on every machine and run
    assert task.task_id == PARAMETRIC_ID_BASE + zlib.crc32(task.name.encode()) % 1_000_000_000
    assert a.resolve_task({"disabled": [2, 3]}).name == "leg_1"  # a parametric spec of a catalog task gets its id


def test_long_episodes_run():
    for env_id in ("metadapt/HalfCheetahTerrain-v0", "metadapt/HalfCheetahPier-v0"):
        env = make_env(env_id, max_episode_steps=2500, schedule={"type": "random", "min_len": 200, "max_len": 500})
        env.reset(seed=0)
        env.action_space.seed(0)
        truncs = [env.step(env.action_space.sample())[3] for _ in range(2500)]
        assert not any(truncs[:-1]) and truncs[-1]


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        ("no_such_task", "unknown task 'no_such_task'"),
        ({"type": "alternating", "tasks": ["normal", "flip_0"], "period": 0}, "period must be a positive integer"),
        ({"type": "alternating", "tasks": ["normal", "flip_0"], "period": -5}, "period must be a positive integer"),
        ({"type": "sequence", "entries": [[0, "normal"], [10, "flip_0"], [10, "flip_1"]]}, "strictly increasing"),
        ({"type": "sequence", "entries": [[0, "normal"], [20, "flip_0"], [10, "flip_1"]]}, "strictly increasing"),
        ({"type": "sequence", "entries": [[5, "normal"]]}, "must start at step 0"),
        ({"type": "sequence", "entries": [[0, "nope"]]}, "unknown task 'nope'"),
        ({"type": "random", "tasks": ["normal", "flip_0"], "min_len": 10, "max_len": 5}, "min_len <= max_len"),
        ({"type": "weekly"}, "schedule type 'weekly' is unknown"),
        ({"type": "alternating", "tasks": ["normal"], "period": 5, "phase": 1}, "unknown key"),
        ({"type": "constant", "task": {"gains": [1, 2]}}, "6 finite numbers"),
    ],
)
def test_bad_schedule_is_one_clear_error(schedule, message):
    with pytest.raises(MetadaptError) as err:
        make_env("metadapt/HalfCheetahMalfunction-v0", schedule=schedule)
    text = str(err.value)
    assert message in text and "\n" not in text and "HalfCheetahMalfunction" in text


def test_bad_task_sampler():
    with pytest.raises(ConfigError, match="task_sampler must be"):
        make_env("metadapt/HalfCheetahPier-v0", task_sampler="holdout")
    with pytest.raises(ConfigError, match="'damping' must be a number"):
        make_env("metadapt/HalfCheetahPier-v0", task_sampler=[{"damping": -1}])


def test_cli_bad_schedule_is_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "metadapt.cli", "run", str(ROOT / "configs/mb_small.yaml"),
         "env.id=metadapt/HalfCheetahMalfunction-v0", "env.kwargs.schedule.type=sequence",
         "env.kwargs.schedule.entries=[[0, normal], [9, flip_0], [3, normal]]", "--out", str(tmp_path / "r")],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "strictly increasing" in proc.stderr


def test_envs_show_lists_tasks_and_presets(capsys):
    from metadapt.cli import main

    assert main(["envs", "--show", "metadapt/HalfCheetahTerrain-v0"]) == 0
    out = capsys.readouterr().out
    for word in ("basin", "hill", "gentle", "steep", "test_steep", "train"):
        assert word in out


def test_presets_and_tasks_do_not_share_names():
    for env_id in REGISTRY:
        cls = env_class(env_id)
        assert not set(cls.PRESETS) & set(cls.CATALOG), env_id
        env = make_env(env_id).unwrapped
        for preset in cls.PRESETS:
            parse_schedule(preset, env.resolve_task, cls.PRESETS)
        for name in (*cls.TRAIN, *cls.TEST):
            assert name in cls.CATALOG


def test_readme_table_is_generated_from_the_registry():
    readme = (ROOT / "README.md").read_text()
    start, end = readme.index(TABLE_BEGIN), readme.index(TABLE_END) + len(TABLE_END)
    assert readme[start:end] == markdown_table()


_RENDER = """
import os, sys
import numpy as np
from metadapt.envs import make_env
env = make_env(sys.argv[1], render_mode="rgb_array", width=64, height=48)
env.reset(seed=0)
frame = env.render()
assert frame.shape == (48, 64, 3) and frame.std() > 0, frame.shape
print("ok")
"""


@pytest.mark.parametrize("env_id", sorted(REGISTRY))
def test_renders_rgb_frames(env_id, gl_backend):
    proc = subprocess.run([sys.executable, "-c", _RENDER, env_id], env={**os.environ, "MUJOCO_GL": gl_backend},
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_run_video_writes_an_mp4_with_a_frame_per_step(tmp_path, gl_backend):
    pytest.importorskip("imageio_ffmpeg")
    import imageio.v2 as imageio

    out = tmp_path / "v"
    proc = subprocess.run(
        [sys.executable, "-m", "metadapt.cli", "run", str(ROOT / "configs/mb_small.yaml"),
         "env.id=metadapt/HalfCheetahMalfunction-v0", "env.kwargs.schedule=alternating_100",
         "train.iterations=1", "train.steps_per_iteration=60", "train.rollout_length=60", "train.epochs=1",
         "model.hidden=[16]", "planner.num_samples=10", "planner.horizon=2", "trial.steps=12",
         "--video", "--quiet", "--out", str(out)],
        env={**os.environ, "MUJOCO_GL": gl_backend}, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    frames = imageio.mimread(out / "trial_0" / "trial.mp4")
    assert len(frames) == 12 and frames[0].shape == (320, 480, 3)


def test_run_video_without_opengl_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "metadapt.cli", "run", str(ROOT / "configs/mb_small.yaml"),
                           "--video", "--out", str(tmp_path / "v")],
                          env={**os.environ, "MUJOCO_GL": "no-such-backend"}, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "MUJOCO_GL=no-such-backend" in proc.stderr
    assert not (tmp_path / "v").exists()
