"""A user's own environment from the command line (``env.id: module:id``, ``env.reward_fn``), and perturbations:
tasks written as data that set or scale fields of any MuJoCo model, switched by any schedule."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import mujoco
import numpy as np
import pytest
import torch
import yaml

from metadapt.cli import main
from metadapt.envs import load_reward_fn, make_env, task_env
from metadapt.envs.perturb import PerturbedEnv
from metadapt.errors import ConfigError, MetadaptError
from metadapt.experiments.configuration.config import load_config
from metadapt.experiments.jobs.build import build_env

ROOT = Path(__file__).resolve().parents[1]
MB = str(ROOT / "configs/mb_small.yaml")
CHEETAH = "metadapt/HalfCheetah-v0"
TINY = ["train.iterations=1", "train.steps_per_iteration=80", "train.rollout_length=40", "train.epochs=1",
        "model.hidden=[8]", "planner.num_samples=4", "planner.horizon=2", "trial.steps=30", "trial.episode_length=30"]
TINY_META = ["meta.enabled=true", "meta.past=4", "meta.future=4", "meta.meta_batch=4", "meta.batches_per_epoch=2",
             "meta.val_batches=1"]

# A user's robot in a module of its own, outside the package: a planar torso on two legs, registered with
# Gymnasium when the module is imported. ``Bot-v0`` carries its batched reward, ``BotNoReward-v0`` does not (its
# reward is named in the config), and the module holds reward functions good and bad.
ROBOT_XML = """
<mujoco model="bot">
  <option timestep="0.01"/>
  <default><joint limited="true" damping="0.05" stiffness="20"/><motor ctrllimited="true" ctrlrange="-1 1"/></default>
  <worldbody>
    <geom name="floor" type="plane" size="40 2 0.1" friction="0.8 0.1 0.1"/>
    <body name="torso" pos="0 0 0.2">
      <joint name="rootx" type="slide" axis="1 0 0" limited="false" stiffness="0" damping="0"/>
      <joint name="rootz" type="slide" axis="0 0 1" limited="false" stiffness="0" damping="0"/>
      <joint name="rooty" type="hinge" axis="0 1 0" limited="false" stiffness="0" damping="0"/>
      <geom name="torso" type="capsule" fromto="-0.2 0 0 0.2 0 0" size="0.04" mass="1"/>
      <body name="back" pos="-0.2 0 0">
        <joint name="back" type="hinge" axis="0 1 0" range="-0.8 0.8"/>
        <geom name="back" type="capsule" fromto="0 0 0 0 0 -0.16" size="0.03" mass="0.3" friction="0.8 0.1 0.1"/>
      </body>
      <body name="front" pos="0.2 0 0">
        <joint name="front" type="hinge" axis="0 1 0" range="-0.8 0.8"/>
        <geom name="front" type="capsule" fromto="0 0 0 0 0 -0.16" size="0.03" mass="0.3" friction="0.8 0.1 0.1"/>
      </body>
    </body>
  </worldbody>
  <actuator><motor name="back" joint="back" gear="3"/><motor name="front" joint="front" gear="3"/></actuator>
</mujoco>
"""
ROBOT_MODULE = '''
"""A user's robot: nothing here knows metadapt."""
from pathlib import Path

import gymnasium as gym
import numpy as np
from gymnasium.envs.mujoco.mujoco_env import MujocoEnv
from gymnasium.spaces import Box

NOT_CALLABLE = 3


def forward_reward(obs, act, next_obs):
    return next_obs[..., -1] - 0.05 * act.pow(2).sum(-1)


def scalar_reward(obs, act, next_obs):
    return next_obs.sum()


def broken_reward(obs, act, next_obs):
    return obs @ act


class Bot(MujocoEnv):
    metadata = {"render_modes": ["human", "rgb_array", "depth_array", "rgbd_tuple"], "render_fps": 20}

    def __init__(self, **kwargs):
        self._v = 0.0
        MujocoEnv.__init__(self, str(Path(__file__).with_name("__XML__")), 5,
                           observation_space=Box(-np.inf, np.inf, (10,), np.float64), **kwargs)

    def _get_obs(self):
        return np.concatenate((self.data.qpos[1:], self.data.qvel, [self._v]))

    def step(self, action):
        x = self.data.qpos[0]
        self.do_simulation(action, self.frame_skip)
        self._v = float((self.data.qpos[0] - x) / self.dt)
        return self._get_obs(), self._v - 0.05 * float(np.square(action).sum()), False, False, {}

    def reset_model(self):
        qpos = self.init_qpos + self.np_random.uniform(-0.02, 0.02, self.model.nq)
        self.set_state(qpos, self.init_qvel + 0.02 * self.np_random.standard_normal(self.model.nv))
        self._v = float(self.data.qvel[0])
        return self._get_obs()


class BotWithReward(Bot):
    reward_fn = staticmethod(forward_reward)


gym.register(id="__MODULE__/Bot-v0", entry_point=BotWithReward, max_episode_steps=1000)
gym.register(id="__MODULE__/BotNoReward-v0", entry_point=Bot, max_episode_steps=1000)
'''
BOT_TASKS = {
    "payload": [{"element": "body", "name": "torso", "field": "mass", "add": 2.0}],
    "slippery": [{"element": "geom", "name": "floor", "field": "friction", "set": [0.05, 0.005, 0.0001]},
                 {"element": "geom", "name": "floor", "field": "priority", "set": 1}],
}
PAYLOAD = [{"element": "body", "name": "torso", "field": "mass", "scale": 2.0}]
SLIPPERY = [{"element": "geom", "name": "floor", "field": "friction", "set": [0.05, 0.005, 0.0001]},
            {"element": "geom", "name": "floor", "field": "priority", "set": 1}]
DAMPED = [{"element": "joint", "name": "bthigh", "field": "damping", "set": 50.0}]


def _write_robot(folder: Path, module: str) -> Path:
    """The robot's module ``module`` (ids ``<module>/Bot-v0``, ``<module>/BotNoReward-v0``) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{module}.xml").write_text(ROBOT_XML)
    (folder / f"{module}.py").write_text(ROBOT_MODULE.replace("__XML__", f"{module}.xml").replace("__MODULE__", module))
    return folder


@pytest.fixture
def robot(tmp_path, monkeypatch):
    """The robot's module importable in this process (for in-process CLI calls); yields its name."""
    name = f"userbot_{abs(hash(str(tmp_path))) % 10**8}"
    monkeypatch.syspath_prepend(str(_write_robot(tmp_path / "userpkg", name)))
    yield name
    sys.modules.pop(name, None)


def _cli(*args: str, pythonpath: Path | str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(pythonpath), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "metadapt.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def _one_line(capsys, args: list[str], needle: str) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert needle in err, err
    return err


def _task_ids(metrics: Path) -> list[int]:
    with metrics.open() as f:
        return [int(r["task_id"]) for r in csv.DictReader(f)]


# ---- Task 1: a user's environment from the command line --------------------------------------------------------
def test_a_user_module_env_meta_trains_a_prior_and_runs_mole_from_the_command_line(tmp_path):
    """The bar: an environment defined in a module outside the package, a prior meta-trained on it with
    ``metadapt train`` and MOLe run with it by ``metadapt run``, from the command line alone."""
    folder = _write_robot(tmp_path / "userpkg", "mybot")
    config = tmp_path / "bot.yaml"
    config.write_text(yaml.safe_dump({
        "name": "bot", "env": {"id": "mybot:mybot/Bot-v0", "perturbations": BOT_TASKS,
                               "kwargs": {"schedule": {"type": "sampled"},
                                          "task_sampler": ["normal", "payload", "slippery"]}},
        "learner": {"type": "ts"}, "planner": {"type": "rs"}}))
    prior = tmp_path / "prior"
    train = _cli("train", str(config), *TINY, *TINY_META, "--out", str(prior), "--quiet", pythonpath=folder)
    assert train.returncode == 0, train.stderr
    assert (prior / "prior.pt").is_file() and (prior / "model.pt").is_file()
    out = tmp_path / "mole"
    schedule = "env.kwargs={schedule: {type: sequence, entries: [[0, normal], [10, payload], [20, slippery]]}}"
    run = _cli("run", str(config), *TINY, schedule, "learner.type=mole", f"model.checkpoint={prior}",
               "--out", str(out), "--quiet", pythonpath=folder)
    assert run.returncode == 0, run.stderr
    assert (out / "summary.json").is_file() and (out / "report.md").is_file()
    # the perturbation tasks were switched at their steps (normal 0, then payload 1, slippery 2)
    assert _task_ids(out / "trial_0" / "metrics.csv") == [0] * 10 + [1] * 10 + [2] * 10
    assert yaml.safe_load((out / "config.yaml").read_text())["env"]["id"] == "mybot:mybot/Bot-v0"


def test_check_and_sweep_take_a_module_id(tmp_path, robot, capsys):
    overrides = [f"env.id={robot}:{robot}/Bot-v0", "env.kwargs={}", *TINY]
    assert main(["check", MB, *overrides]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["env"]["id"] == f"{robot}:{robot}/Bot-v0"
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"name": "bots", "base": MB, "command": "run",
                                     "set": dict(o.split("=", 1) for o in overrides if o != "env.kwargs={}"),
                                     "grid": {"seed": [0]}}))
    assert main(["sweep", str(sweep), "--out", str(tmp_path / "s"), "--workers", "1", "--quiet"]) == 0
    with (tmp_path / "s" / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and rows[0]["status"] == "done", rows


def test_a_meta_rl_config_takes_a_module_id(tmp_path, monkeypatch, capsys):
    """system: rl builds its vector env from the id the module registered (Gymnasium's spec lookup does not
    import modules)."""
    (tmp_path / "navmodule_abc.py").write_text(
        "import gymnasium as gym\n"
        "gym.register(id='navmodule_abc/Nav-v0', entry_point='metadapt.envs.point_nav:PointNavEnv',\n"
        "             vector_entry_point='metadapt.envs.point_nav:PointNavVectorEnv', max_episode_steps=100)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["check", str(ROOT / "configs/maml_rl_navigation.yaml"), "env.id=navmodule_abc:navmodule_abc/Nav-v0",
                 "baselines.oracle=false"]) == 0
    capsys.readouterr()
    sys.modules.pop("navmodule_abc", None)


def test_a_module_that_cannot_be_imported_or_registers_nothing_is_one_line(tmp_path, monkeypatch, capsys):
    base = ["check", MB, *TINY]
    _one_line(capsys, [*base, "env.id=no_such_module_xyz:Thing-v0"], "cannot import module 'no_such_module_xyz'")
    (tmp_path / "quiet_module_abc.py").write_text("VALUE = 1\n")
    (tmp_path / "broken_module_abc.py").write_text("raise RuntimeError('my bug')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    err = _one_line(capsys, [*base, "env.id=quiet_module_abc:Quiet-v0"], "did not register 'Quiet-v0'")
    assert "quiet_module_abc" in err
    _one_line(capsys, [*base, "env.id=broken_module_abc:Broken-v0"], "RuntimeError: my bug")
    _one_line(capsys, [*base, "env.id=a:b:c"], "not of the form module:id")
    for name in ("quiet_module_abc", "broken_module_abc"):
        sys.modules.pop(name, None)


def test_the_config_names_the_batched_reward(robot, capsys):
    plain = [f"env.id={robot}:{robot}/BotNoReward-v0", "env.kwargs={}", *TINY]
    # an environment without reward_fn: one line that says how to name one
    _one_line(capsys, ["check", MB, *plain], "env.reward_fn")
    assert main(["check", MB, *plain, f"env.reward_fn={robot}:forward_reward"]) == 0
    capsys.readouterr()
    module = sys.modules[robot]
    cfg = load_config(MB, [*plain, f"env.reward_fn={robot}:forward_reward"])
    env, objective = build_env(cfg)
    env.close()
    assert objective is module.forward_reward
    # the config's reward wins over the environment's own
    cfg = load_config(MB, [f"env.id={robot}:{robot}/Bot-v0", "env.kwargs={}", f"env.reward_fn={robot}:scalar_reward"])
    with pytest.raises(ConfigError, match="scalar_reward' must return a tensor of N rewards"):
        build_env(cfg)
    cfg["env"]["reward_fn"] = f"{robot}:Bot.reward_fn"
    with pytest.raises(ConfigError, match=r"has no 'Bot\.reward_fn'"):
        build_env(cfg)
    for bad, needle in [("no_such_module_xyz:f", "cannot import module 'no_such_module_xyz'"),
                        (f"{robot}:missing", "has no 'missing'"), (f"{robot}:NOT_CALLABLE", "not a function"),
                        (f"{robot}:broken_reward", "failed on a batch of 2 zero transitions"),
                        ("forward_reward", "not of the form module:function")]:
        err = _one_line(capsys, ["check", MB, *plain, f"env.reward_fn={bad}"], needle)
        assert "env.reward_fn" in err
    fn = load_reward_fn(f"{robot}:forward_reward", 10, 2)
    assert fn(torch.zeros(5, 10), torch.ones(5, 2), torch.ones(5, 10)).shape == (5,)


# ---- Task 2: perturbations -----------------------------------------------------------------------------------
def _rollout(env: gym.Env, steps: int, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Observations after each of ``steps`` steps with the same seeded random actions, and the tasks."""
    obs, _ = env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    out, tasks = [obs], []
    for _ in range(steps):
        obs, _, _, _, info = env.step(rng.uniform(-1, 1, env.action_space.shape))
        out.append(obs)
        tasks.append(info["task"])
    return np.asarray(out), tasks


def test_a_payload_changes_the_physics_from_its_step_and_only_from_it():
    k = 6
    sequence = {"type": "sequence", "entries": [[0, "normal"], [k, "payload"]]}
    payload = make_env(CHEETAH, perturbations={"payload": PAYLOAD}, schedule=sequence)
    plain = make_env(CHEETAH, schedule="normal")
    assert payload.observation_space == plain.observation_space  # the learner never sees the task
    mass = plain.unwrapped.model.body("torso").mass[0]
    a, tasks = _rollout(payload, 12)
    b, _ = _rollout(plain, 12)
    assert tasks == ["normal"] * k + ["payload"] * (12 - k)
    np.testing.assert_array_equal(a[:k + 1], b[:k + 1])  # the reset and the k steps before the payload
    assert all(np.abs(a[t] - b[t]).max() > 1e-6 for t in range(k + 1, 13))  # every step from step k on
    assert payload.unwrapped.model.body("torso").mass[0] == 2 * mass
    # MuJoCo's derived constants follow the edit (mj_setConst): the robot weighs one more torso
    root = plain.unwrapped.model.body("torso")
    assert payload.unwrapped.model.body("torso").subtreemass[0] == pytest.approx(root.subtreemass[0] + mass)
    assert payload.unwrapped.task.task_id == 1  # after the cheetah's one catalog task


def test_a_slippery_floor_needs_the_floors_priority_as_documented():
    steps = 40
    normal, _ = _rollout(make_env(CHEETAH, schedule="normal"), steps)
    slippery_env = make_env(CHEETAH, perturbations={"slippery": SLIPPERY}, schedule="slippery")
    slippery, tasks = _rollout(slippery_env, steps)
    assert set(tasks) == {"slippery"}
    np.testing.assert_allclose(slippery_env.unwrapped.model.geom("floor").friction, [0.05, 0.005, 0.0001])
    assert np.abs(slippery[-1] - normal[-1]).max() > 0.1
    # MuJoCo takes the larger friction of the two geoms: the floor's alone changes nothing
    floor_only = make_env(CHEETAH, perturbations={"floor": SLIPPERY[:1]}, schedule="floor")
    np.testing.assert_array_equal(_rollout(floor_only, steps)[0], normal)


def test_a_joint_damping_edits_the_joints_dof_and_the_physics():
    env = make_env(CHEETAH, perturbations={"damped": DAMPED}, schedule="damped")
    model = env.unwrapped.model
    dof = model.joint("bthigh").dofadr[0]
    before = model.dof_damping.copy()
    damped, _ = _rollout(env, 20)
    after = before.copy()
    after[dof] = 50.0
    np.testing.assert_array_equal(model.dof_damping, after)
    assert np.abs(damped[-1] - _rollout(make_env(CHEETAH, schedule="normal"), 20)[0][-1]).max() > 1e-3


def _model_arrays(model: mujoco.MjModel) -> dict[str, np.ndarray]:
    return {a: np.array(getattr(model, a)) for a in dir(model)
            if not a.startswith("_") and isinstance(getattr(model, a), np.ndarray)}


def test_switching_back_restores_every_field_and_tasks_never_accumulate():
    tasks = {"payload": PAYLOAD, "slippery": SLIPPERY, "damped": DAMPED, "all": PAYLOAD + SLIPPERY + DAMPED}
    schedule = {"type": "sequence", "entries": [[0, "payload"], [2, "all"], [4, "payload"], [6, "slippery"],
                                                [8, "damped"], [10, "normal"]]}
    env = make_env(CHEETAH, perturbations=tasks, schedule=schedule)
    fresh = make_env(CHEETAH)
    model, pristine = env.unwrapped.model, _model_arrays(fresh.unwrapped.model)
    mass = pristine["body_mass"][model.body("torso").id]
    env.reset(seed=0)
    for step in range(12):
        env.step(np.zeros(6))
        if step in (1, 2, 5):  # payload, all, payload again: twice the mass, never four times
            assert model.body("torso").mass[0] == 2 * mass
    assert env.unwrapped.task.name == "normal"
    now = _model_arrays(model)
    changed = [k for k in pristine if not np.array_equal(pristine[k], now[k])]
    assert changed == []  # every field, the derived constants included, as built
    # the same state and action give the same next state as a never-perturbed cheetah
    fresh.reset(seed=0)
    spec = mujoco.mjtState.mjSTATE_INTEGRATION
    state = np.empty(mujoco.mj_stateSize(model, spec))
    mujoco.mj_getState(model, env.unwrapped.data, state, spec)
    mujoco.mj_setState(fresh.unwrapped.model, fresh.unwrapped.data, state, spec)
    action = np.full(6, 0.3)
    np.testing.assert_array_equal(env.step(action)[0][:17], fresh.step(action)[0][:17])


def test_a_switch_never_touches_the_simulator_state():
    env = make_env(CHEETAH, perturbations={"all": PAYLOAD + SLIPPERY + DAMPED})
    env.reset(seed=0)
    for _ in range(5):
        env.step(np.full(6, 0.5))
    unwrapped = env.unwrapped
    spec = mujoco.mjtState.mjSTATE_INTEGRATION
    size = mujoco.mj_stateSize(unwrapped.model, spec)
    before, after = np.empty(size), np.empty(size)
    mujoco.mj_getState(unwrapped.model, unwrapped.data, before, spec)
    unwrapped._set_task(unwrapped.resolve_task("all"))
    mujoco.mj_getState(unwrapped.model, unwrapped.data, after, spec)
    np.testing.assert_array_equal(before, after)
    assert unwrapped.model.body("torso").mass[0] > make_env(CHEETAH).unwrapped.model.body("torso").mass[0]


def test_a_perturbation_composes_with_a_builtin_task():
    tasks = {"reversed_payload": {"task": "sign_negative", "edits": PAYLOAD},
             "half_gear": {"task": "flip_0", "edits": [{"element": "actuator", "name": "bthigh", "field": "gear",
                                                       "index": 0, "scale": 0.5}]}}
    schedule = {"type": "sequence", "entries": [[0, "normal"], [2, "reversed_payload"], [4, "half_gear"],
                                                [6, "normal"]]}
    env = make_env("metadapt/HalfCheetahMalfunction-v0", perturbations=tasks, schedule=schedule)
    model, catalog = env.unwrapped.model, env.unwrapped.CATALOG
    gain, gear, mass = (model.actuator_gainprm[:, 0].copy(), model.actuator_gear[:, 0].copy(),
                        model.body("torso").mass[0])
    env.reset(seed=0)
    seen = {}
    for _ in range(8):
        info = env.step(np.zeros(6))[-1]
        seen[info["task"]] = (info["task_id"], model.actuator_gainprm[:, 0].copy(), model.actuator_gear[:, 0].copy(),
                              model.body("torso").mass[0])
    task_id, g, r, m = seen["reversed_payload"]
    assert task_id == len(catalog) and np.array_equal(g, -gain) and np.array_equal(r, gear) and m == 2 * mass
    task_id, g, r, m = seen["half_gear"]
    flipped = gain.copy()
    flipped[0] *= -1
    assert task_id == len(catalog) + 1 and np.array_equal(g, flipped) and r[0] == 0.5 * gear[0] and m == mass
    assert np.array_equal(r[1:], gear[1:])
    task_id, g, r, m = seen["normal"]
    assert task_id == 0 and np.array_equal(g, gain) and np.array_equal(r, gear) and m == mass


def test_a_perturbation_keeps_its_builtin_tasks_parameters():
    """A goal-velocity cheetah reads its task's goal: a perturbation on top of a goal keeps that goal."""
    tasks = {"heavy_fast": {"task": {"velocity": 1.5}, "edits": PAYLOAD}}
    env = make_env("metadapt/HalfCheetahVel-v0", perturbations=tasks, schedule="heavy_fast")
    env.reset(seed=0)
    info = env.step(np.zeros(6))[-1]
    unwrapped = env.unwrapped
    assert info["task"] == "heavy_fast" and unwrapped.task_value() == 1.5
    unwrapped.next_task = unwrapped.task  # a perturbation task round-trips through next_task
    assert unwrapped.next_task == unwrapped.task
    with pytest.raises(ConfigError, match="no default task"):
        make_env("metadapt/HalfCheetahVel-v0", perturbations={"heavy": PAYLOAD})


def test_a_plain_gymnasium_mujoco_env_gets_the_same_tasks_and_schedules():
    tasks = {"heavy": [{"element": "body", "name": "pole", "field": "mass", "scale": 3.0}],
             "sticky": [{"element": "joint", "name": "hinge", "field": "damping", "set": 1.0}]}
    env = make_env("InvertedPendulum-v5", perturbations=tasks,
                   schedule={"type": "alternating", "tasks": ["normal", "heavy", "sticky"], "period": 2})
    assert isinstance(env, PerturbedEnv) and task_env(env) is env and task_env(make_env(CHEETAH)) is not None
    assert task_env(gym.make("InvertedPendulum-v5")) is None
    mass = env.unwrapped.model.body("pole").mass[0]
    _, info = env.reset(seed=0)
    assert (info["task_id"], info["task"]) == (0, "normal")
    ids, masses = [], []
    for _ in range(6):
        info = env.step(np.zeros(1))[-1]
        ids.append(info["task_id"])
        masses.append(env.unwrapped.model.body("pole").mass[0])
    assert ids == [0, 0, 1, 1, 2, 2] and masses == [mass, mass, 3 * mass, 3 * mass, mass, mass]
    # the default schedule draws a task from all of them at every reset; next_task takes a perturbation's name
    sampled = make_env("InvertedPendulum-v5", perturbations=tasks)
    drawn = {sampled.reset(seed=s)[1]["task"] for s in range(30)}
    assert drawn == {"normal", "heavy", "sticky"}
    sampled.next_task = {"perturbation": "heavy"}
    assert {sampled.reset(seed=s)[1]["task"] for s in range(5)} == {"heavy"}


BAD = [
    ({"p": [{"element": "bodyy", "name": "torso", "field": "mass", "scale": 2}]}, "unknown element 'bodyy'"),
    ({"p": [{"element": "body", "name": "torsoo", "field": "mass", "scale": 2}]}, "no body named 'torsoo'"),
    ({"p": [{"element": "body", "name": 99, "field": "mass", "scale": 2}]}, "no body id 99"),
    ({"p": [{"element": "body", "name": "torso", "field": "mas", "scale": 2}]}, "field 'mas' of a body does not"),
    ({"p": [{"element": "body", "name": "torso", "field": "invweight0", "set": 1}]}, "derived by MuJoCo"),
    ({"p": [{"element": "body", "name": "torso", "field": "dofadr", "set": 1}]}, "not a floating-point field"),
    ({"p": [{"element": "geom", "name": "floor", "field": "friction", "set": [0.1, 0.2]}]},
     "'friction' has 3 entries, so 'set' needs 3 numbers, got 2"),
    ({"p": [{"element": "geom", "name": "floor", "field": "friction", "set": 0.1}]}, "needs 3 numbers, got 1"),
    ({"p": [{"element": "geom", "name": "floor", "field": "friction", "index": 3, "set": 0.1}]},
     "index 3 is out of range"),
    ({"p": [{"element": "geom", "name": "floor", "field": "priority", "scale": 2}]}, "is an integer field"),
    ({"p": [{"element": "body", "name": "torso", "field": "mass", "scale": -1}]}, "'mass' must stay >= 0"),
    ({"p": [{"element": "body", "name": "torso", "field": "mass", "scale": 2, "add": 1}]}, "exactly one of"),
    ({"p": [{"element": "body", "name": "torso", "field": "mass"}]}, "exactly one of set, scale, add (got none)"),
    ({"p": [{"element": "body", "name": "torso", "field": "mass", "scal": 2}]}, "unknown key(s) ['scal']"),
    ({"p": [{"element": "body", "name": "torso", "field": "mass", "scale": "two"}]}, "must be a number"),
    ({"p": []}, "needs a non-empty list of edits"),
    ({"normal": PAYLOAD}, "has the name of one of the environment's tasks"),
    ({"p": {"task": "no_such_task", "edits": PAYLOAD}}, "perturbation 'p' task: unknown task 'no_such_task'"),
]


@pytest.mark.parametrize(("perturbations", "needle"), BAD, ids=[n for _, n in BAD])
def test_a_bad_perturbation_is_one_line_naming_it_when_the_env_is_built(perturbations, needle):
    env_id = "metadapt/HalfCheetahMalfunction-v0" if "task" in str(perturbations) else CHEETAH
    with pytest.raises(ConfigError) as caught:
        make_env(env_id, perturbations=perturbations)
    message = str(caught.value)
    assert needle in message and "\n" not in message, message
    assert "perturbation" in message


def test_check_validates_perturbations_and_their_schedules(capsys):
    good = ("env.perturbations={payload: [{element: body, name: torso, field: mass, scale: 2.0}], "
            "slippery: [{element: geom, name: floor, field: friction, set: [0.1, 0.005, 0.0001]}]}")
    schedule = "env.kwargs={schedule: {type: sequence, entries: [[0, normal], [10, payload], [20, slippery]]}}"
    assert main(["check", MB, *TINY, good, schedule]) == 0
    capsys.readouterr()
    bad = "env.perturbations={payload: [{element: body, name: torsoo, field: mass, scale: 2.0}]}"
    _one_line(capsys, ["check", MB, *TINY, bad], "perturbation 'payload' edits[0]")
    _one_line(capsys, ["check", MB, *TINY, good, "env.kwargs={schedule: payloadd}"], "unknown task 'payloadd'")
    _one_line(capsys, ["check", MB, *TINY, good, "env.id=metadapt/PointNav-v0"], "has none")
    # a switch past the trial's end is refused as for the built-in tasks
    late = "env.kwargs={schedule: {type: sequence, entries: [[0, normal], [500, payload]]}}"
    _one_line(capsys, ["check", MB, *TINY, good, late], "would never be reached")


def test_perturbation_tasks_reach_the_trial_metrics_and_never_the_learner(tmp_path):
    out = tmp_path / "run"
    assert main(["run", MB, *TINY, "env.perturbations={payload: [{element: body, name: torso, field: mass, "
                 "scale: 3.0}]}", "env.kwargs={schedule: {type: alternating, tasks: [normal, payload], period: 5}}",
                 "--out", str(out), "--quiet"]) == 0
    assert _task_ids(out / "trial_0" / "metrics.csv") == ([0] * 5 + [1] * 5) * 3
    assert json.loads((out / "summary.json").read_text())


def test_the_my_robot_example_trains_a_prior_and_runs_mole_from_its_yaml(tmp_path):
    folder = ROOT / "examples" / "my_robot"
    prior = tmp_path / "prior"
    train = _cli("train", str(folder / "prior.yaml"), *TINY, *TINY_META, "--out", str(prior), "--quiet",
                 pythonpath=folder)
    assert train.returncode == 0, train.stderr
    entries = "env.kwargs.schedule.entries=[[0, normal], [10, payload], [20, slippery], [25, weak_hips]]"
    run = _cli("run", str(folder / "mole.yaml"), *TINY, entries, f"model.checkpoint={prior}", "--out",
               str(tmp_path / "mole"), "--quiet", pythonpath=folder)
    assert run.returncode == 0, run.stderr
    assert _task_ids(tmp_path / "mole" / "trial_0" / "metrics.csv") == [0] * 10 + [1] * 10 + [2] * 5 + [5] * 5


def test_make_env_errors_name_the_id():
    with pytest.raises(MetadaptError, match="unknown environment id 'Nope-v9'"):
        make_env("Nope-v9")
    with pytest.raises(MetadaptError, match="environment 'metadapt/HalfCheetah-v0': unknown task 'x'"):
        make_env(CHEETAH, perturbations={"payload": PAYLOAD}, schedule="x")


def test_the_wrapper_sets_the_episodes_task_before_the_reset_computes_the_first_state():
    """Regression: PerturbedEnv reset the inner env (pose, first forward pass) under the previous task's model."""
    tasks = {"heavy": [{"element": "body", "name": "pole", "field": "mass", "scale": 3.0}]}
    env = make_env("InvertedPendulum-v5", perturbations=tasks, schedule="normal")
    env.reset(seed=0)
    normal = env.unwrapped.data.cinert.copy()
    env.next_task = "heavy"
    _, info = env.reset(seed=0)
    assert info["task"] == "heavy"
    # the body inertias of the reset's forward pass is the heavy pole's
    assert not np.allclose(env.unwrapped.data.cinert, normal)
    fresh = make_env("InvertedPendulum-v5", perturbations=tasks, schedule="heavy")
    fresh.reset(seed=0)
    np.testing.assert_array_equal(env.unwrapped.data.cinert, fresh.unwrapped.data.cinert)
