"""Posture of the legged robots, the authors' planning cost, and a camera that follows the robot (issue 29)."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from metadapt.adapt.ts import KShotLearner
from metadapt.agent import MPCAgent
from metadapt.cli import main
from metadapt.envs import get_objective, get_reward_fn, make_env, objectives
from metadapt.envs.posture import Legged
from metadapt.errors import MetadaptError
from metadapt.experiments.jobs.rollout import rollout
from metadapt.experiments.jobs.trial import run_trial
from metadapt.experiments.reporting.metrics import trial_analysis
from metadapt.models.mlp import MLPDynamics
from metadapt.planning import RandomShooting

ROOT = Path(__file__).resolve().parents[1]
LEGGED = ("metadapt/HalfCheetah-v0", "metadapt/HalfCheetahMalfunction-v0", "metadapt/HalfCheetahTerrain-v0",
          "metadapt/AntCrippled-v0", "metadapt/Crawler-v0", "metadapt/AntDir-v0", "metadapt/HalfCheetahDir-v0")


def _quaternion_about_x(angle: float) -> np.ndarray:
    return np.array([math.cos(angle / 2), math.sin(angle / 2), 0.0, 0.0])


@pytest.mark.parametrize("env_id", LEGGED)
def test_a_robot_on_its_back_reads_upside_down_and_an_upright_one_does_not(env_id):
    env = make_env(env_id)
    env.reset(seed=0)
    robot = env.unwrapped
    info = env.step(np.zeros(env.action_space.shape))[-1]
    assert info["upside_down"] == 0.0 and info["torso_up"] > 0.9
    qpos = robot.data.qpos.copy()
    if robot.PLANAR:
        qpos[2] = math.pi - 0.1  # rooty: pitched almost all the way over
    else:
        qpos[3:7] = _quaternion_about_x(math.pi - 0.1)  # rolled onto its back
    robot.set_state(qpos, np.zeros(robot.model.nv))
    flipped = robot.posture()
    assert flipped["upside_down"] == 1.0 and flipped["torso_up"] < -0.9
    if robot.PLANAR:
        assert flipped["torso_pitch"] == pytest.approx(math.pi - 0.1, abs=1e-9)
        assert "torso_roll" not in flipped
    else:
        assert abs(flipped["torso_roll"]) == pytest.approx(math.pi - 0.1, abs=1e-6)
    # qpos past pi wraps: the cheetah's pitch is the angle, not the joint's unbounded value
    if robot.PLANAR:
        qpos[2] = 2 * math.pi + 0.2
        robot.set_state(qpos, np.zeros(robot.model.nv))
        assert robot.posture()["torso_pitch"] == pytest.approx(0.2) and robot.posture()["upside_down"] == 0.0


def _rollout(env_id: str, steps: int = 30) -> tuple[np.ndarray, list[float]]:
    env = make_env(env_id)
    env.reset(seed=5)
    rng = np.random.default_rng(0)
    observations, rewards = [], []
    for _ in range(steps):
        obs, reward, *_ = env.step(rng.uniform(-1, 1, env.action_space.shape))
        observations.append(obs)
        rewards.append(reward)
    return np.array(observations), rewards


@pytest.mark.parametrize("env_id", LEGGED)
def test_measuring_posture_changes_no_observation_or_reward(env_id, monkeypatch):
    """Regression: posture() ran mj_kinematics on the live MjData, and the ants' velocity (read from body
    positions) changed by up to 0.03 m/s per step."""
    measured = _rollout(env_id)
    monkeypatch.setattr(Legged, "posture", lambda self: {})
    unmeasured = _rollout(env_id)
    assert np.array_equal(measured[0], unmeasured[0]) and measured[1] == unmeasured[1]


def test_the_step_info_reports_the_posture_of_the_state_it_ends_in():
    env = make_env("metadapt/HalfCheetah-v0")
    env.reset(seed=3)
    for _ in range(5):
        info = env.step(env.action_space.sample())[-1]
    # qpos[2] is the cheetah's pitch joint: the info's pitch is that of the step's end, not a substep earlier
    assert info["torso_pitch"] == pytest.approx(float(env.unwrapped.data.qpos[2]), abs=1e-12)


def test_the_authors_cost_equals_a_hand_computation():
    env = make_env("metadapt/HalfCheetahMalfunction-v0")
    objective = get_objective(env, "authors")
    obs = torch.zeros(4, 18)
    nxt = torch.zeros(4, 18)
    nxt[:, -1] = torch.tensor([1.5, -0.5, 2.0, 0.0])  # the step's mean forward velocity
    obs[:, 6:8] = -0.1  # shin and foot bent back, where they belong
    obs[1, 5] = 0.2  # front thigh at its limit: penalised
    obs[2, 5], obs[2, 6], obs[2, 7] = 0.19, 0.0, 0.3  # thigh under its limit; shin and foot at or past theirs
    obs[3, 5], obs[3, 6], obs[3, 7] = 0.5, 0.1, 0.0  # all three
    obs[0, 5], obs[0, 6], obs[0, 7] = 0.1999, -1e-3, -0.2  # nothing
    act = torch.ones(4, 6)  # no control cost in the authors' planning cost
    expected = torch.tensor([1.5, -0.5 - 10, 2.0 - 20, 0.0 - 30])
    torch.testing.assert_close(objective(obs, act, nxt), expected)
    # the penalty reads the step's *current* state, as the authors' cost_fn does
    leaning = nxt.clone()
    leaning[:, 5:8] = 1.0
    torch.testing.assert_close(objective(obs, act, leaning), expected)


def test_an_environment_lists_its_objectives_and_refuses_others():
    assert objectives(make_env("metadapt/HalfCheetahTerrain-v0")) == ("reward", "authors")
    # forward progress is not what the goal-direction cheetah is asked for
    assert objectives(make_env("metadapt/HalfCheetahDir-v0")) == ("reward",)
    with pytest.raises(MetadaptError, match=r"no planning objective 'authors' .*offers: reward"):
        get_objective(make_env("metadapt/AntCrippled-v0"), "authors")


def test_an_unknown_objective_in_a_config_is_one_line(capsys):
    assert main(["check", str(ROOT / "configs/mb_small.yaml"), "planner.objective=forward"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "planner.objective" in err and "offers: reward, authors" in err


def _agent(env, objective) -> MPCAgent:
    model = MLPDynamics(18, 6, [16])
    params = model.init_params(torch.Generator().manual_seed(0))
    space = env.action_space
    planner = RandomShooting(torch.as_tensor(space.low), torch.as_tensor(space.high), horizon=3, num_samples=64,
                             seed=0)
    return MPCAgent(model, KShotLearner(model, params, 0.01), planner, objective, window=4)


def test_the_objective_changes_what_is_planned_never_the_reward_that_is_logged():
    seen = {}
    for name in ("reward", "authors"):
        env = make_env("metadapt/HalfCheetahMalfunction-v0", schedule="alternating_100")
        steps = []
        rollout(env, _agent(env, get_objective(env, name)), 25, seed=4, callbacks=[steps.append])
        seen[name] = steps
        # every logged reward is the environment's reward of the transition, never the planning objective
        obs = torch.as_tensor(np.stack([s.obs for s in steps]), dtype=torch.float64)
        act = torch.as_tensor(np.stack([s.action for s in steps]), dtype=torch.float64)
        nxt = torch.as_tensor(np.stack([s.next_obs for s in steps]), dtype=torch.float64)
        logged = torch.tensor([s.reward for s in steps], dtype=torch.float64)
        torch.testing.assert_close(get_reward_fn(env)(obs, act, nxt), logged)
        assert not torch.allclose(get_objective(env, "authors")(obs, act, nxt), logged)
    # replaying the actions planned with the authors' cost gives the same rewards in a fresh environment
    env = make_env("metadapt/HalfCheetahMalfunction-v0", schedule="alternating_100")
    env.reset(seed=4)
    replayed = [env.step(s.action)[1] for s in seen["authors"]]
    assert replayed == [s.reward for s in seen["authors"]]
    assert [s.action.tolist() for s in seen["reward"]] != [s.action.tolist() for s in seen["authors"]]


def test_a_trial_logs_posture_and_its_analysis_has_the_upside_down_share(tmp_path):
    env = make_env("metadapt/HalfCheetahMalfunction-v0", schedule="alternating_100")
    res = run_trial(env, _agent(env, get_reward_fn(env)), 12, seed=0, out_dir=tmp_path)
    with open(tmp_path / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    for column in ("env/torso_up", "env/torso_pitch", "env/upside_down", "env/x_velocity"):
        assert column in rows[0]
    flipped = np.mean([float(r["env/upside_down"]) for r in rows])
    assert res.analysis["upside_down"] == pytest.approx(flipped)
    assert res.analysis["forward_velocity"] == pytest.approx(np.mean([float(r["env/x_velocity"]) for r in rows]))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["analysis"]["segment_upside_down"] == [pytest.approx(flipped)]


def test_the_analysis_gives_the_upside_down_share_and_velocity_of_every_task_segment():
    columns = {"reward": np.ones(8), "task_id": np.array([0, 0, 0, 0, 1, 1, 1, 1]),
               "env/upside_down": np.array([0, 0, 1, 1, 1, 1, 1, 0], float),
               "env/x_velocity": np.array([1, 1, 1, 1, 0, 0, 2, 2], float)}
    out = trial_analysis(columns, window=2)
    assert out["upside_down"] == 5 / 8 and out["segment_upside_down"] == [0.5, 0.75]
    assert out["forward_velocity"] == 1.0 and out["segment_velocity"] == [1.0, 1.0]
    # the crawler's velocity along its heading wins over its x velocity
    out = trial_analysis({**columns, "env/forward_velocity": np.full(8, 3.0)}, window=2)
    assert out["forward_velocity"] == 3.0


def test_a_run_report_shows_the_upside_down_share_of_each_trial(tmp_path):
    out = tmp_path / "r"
    assert main(["run", str(ROOT / "configs/mb_small.yaml"), "env.id=metadapt/HalfCheetahMalfunction-v0",
                 "planner.objective=authors", "train.iterations=1", "train.steps_per_iteration=40",
                 "train.rollout_length=40", "train.epochs=1", "model.hidden=[8]", "planner.num_samples=8",
                 "planner.horizon=2", "trial.steps=10", "--quiet", "--out", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert "| trial | steps | return | upside down | velocity |" in report
    summary = json.loads((out / "trial_0" / "summary.json").read_text())
    share = summary["analysis"]["upside_down"]
    assert f"| {share:.1%} |" in report


_FRAMES = r"""
import sys
import numpy as np
from metadapt.envs import make_env

kwargs = dict(render_mode="rgb_array", width=96, height=64)
if sys.argv[1] == "fixed":
    kwargs["default_camera_config"] = {"distance": 4.0}  # Gymnasium's HalfCheetah camera
env = make_env("metadapt/HalfCheetah-v0", **kwargs)
robot = env.unwrapped
env.reset(seed=0)
model = robot.model
body = np.flatnonzero(model.geom_bodyid != 0)  # every geom but the floor's
rgba, material = model.geom_rgba.copy(), model.geom_matid.copy()
shares = []
for t in range(300):
    env.step(np.sin(0.5 * t + np.arange(6)))
    qpos = robot.data.qpos.copy()
    qpos[0] += 0.05  # a fast runner: 15 m in 300 steps on top of its own gait
    robot.set_state(qpos, robot.data.qvel)
    frame = env.render().astype(int)
    model.geom_rgba[body, 3], model.geom_matid[body] = 0.0, -1  # the same view without the robot
    floor = env.render().astype(int)
    model.geom_rgba[:], model.geom_matid[:] = rgba, material
    shares.append(float((np.abs(frame - floor).sum(-1) > 30).mean()))
print(min(shares), int(np.argmin(shares)))
"""


def test_the_camera_follows_the_cheetah_in_every_frame_of_300_steps(gl_backend):
    shares = {}
    for camera in ("follow", "fixed"):
        proc = subprocess.run([sys.executable, "-c", _FRAMES, camera], env={**os.environ, "MUJOCO_GL": gl_backend},
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-2000:]
        shares[camera] = float(proc.stdout.split()[0])
    # The robot covers over 1% of every followed frame; a fixed camera loses it (the check can fail).
    assert shares["follow"] > 0.01
    assert shares["fixed"] < 0.001
