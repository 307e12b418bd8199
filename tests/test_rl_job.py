"""``system: rl`` through the command line: a tiny MAML-RL run with its baselines, its report, evaluation of a
saved run, SIGKILL then resume, and bad input as one line with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from killing import kill_when
from metadapt.envs import make_env
from metadapt.models.policy import GaussianMLPPolicy
from metadapt.rl.maml_rl import (
    MAMLRL,
    MAMLRLSettings,
    episode_advantages,
    evaluate_adaptation,
    policy_gradient_step,
)
from metadapt.rl.sampler import make_vector_env, sample_episodes, sample_tasks, to_env_action

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "maml_rl_navigation.yaml"
SMALL = ["meta.iterations=4", "meta.meta_batch=4", "meta.episodes=5", "policy.hidden=[16]", "eval.tasks=6",
         "eval.episodes=4", "eval.steps=2", "train.checkpoint_every=2"]


def _without_timings(path: Path) -> list[list[str]]:
    """``metrics.csv``'s rows without the wall-clock columns (which differ between runs of the same seed)."""
    rows = [r.split(",") for r in path.read_text().splitlines()]
    keep = [i for i, name in enumerate(rows[0]) if name not in ("sample_s", "update_s")]
    return [[r[i] for i in keep] for r in rows]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "metadapt.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=600)


def test_a_small_run_trains_every_method_reports_and_evaluates_again(tmp_path):
    out = tmp_path / "run"
    res = _cli("train", str(CONFIG), *SMALL, "--out", str(out), "--quiet")
    assert res.returncode == 0, res.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["methods"]) == {"maml", "pretrained", "random", "oracle"}
    for per in summary["methods"].values():
        assert set(per) == {"0", "1", "2"} and all(len(per[s]["per_task"]) == 6 for s in per)
        assert all(np.isfinite(per[s]["mean"]) and per[s]["mean"] < 0 for s in per)  # minus a distance
        assert all("upside_down" not in per[s] for s in per)  # a point has no posture
    rows = (out / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + 3 * 4  # three trained stages of 4 iterations
    table = [dict(zip(rows[0].split(","), r.split(","), strict=True)) for r in rows[1:]]
    assert all(r["upside_down"] == "" for r in table)  # a point has no posture
    saved = torch.load(out / "model.pt", weights_only=True)["methods"]
    for stage in ("maml", "pretrained", "oracle"):  # the last row of a stage: its final policy's spread
        last = [r for r in table if r["stage"] == stage][-1]
        assert float(last["action_std"]) == pytest.approx(float(saved[stage]["params"]["log_std"].exp().mean()))
    report = (out / "report.md").read_text()
    assert "MAML-RL (second order, TRPO outer step)" in report and "oracle" in report
    assert (out / "adaptation.png").is_file() and (out / "learning.png").is_file()
    (out / "report.md").unlink()
    assert _cli("report", str(out)).returncode == 0 and (out / "report.md").read_text() == report
    again = tmp_path / "again"
    res = _cli("train", str(CONFIG), *SMALL, f"policy.checkpoint={out}", "--out", str(again), "--quiet")
    assert res.returncode == 0, res.stderr
    assert json.loads((again / "summary.json").read_text()) == summary


def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    args = [*SMALL, "meta.iterations=30", "baselines.oracle=false", "baselines.random=false", "eval.tasks=3",
            "eval.curve_every=4", "eval.curve_tasks=2"]
    whole = tmp_path / "whole"
    assert _cli("train", str(CONFIG), *args, "--out", str(whole), "--quiet").returncode == 0
    cut = tmp_path / "cut"
    kill_when([sys.executable, "-m", "metadapt.cli", "train", str(CONFIG), *args, "--out", str(cut), "--quiet"],
              cut / "checkpoints" / "state.pt", lambda s: s["stage"] == "maml" and s["iteration"] >= 6, cwd=ROOT)
    assert not (cut / "summary.json").exists()
    res = _cli("train", "--resume", str(cut), "--quiet")
    assert res.returncode == 0, res.stderr
    a, b = torch.load(whole / "model.pt", weights_only=True), torch.load(cut / "model.pt", weights_only=True)
    for method in a["methods"]:
        for k, v in a["methods"][method]["params"].items():
            assert torch.equal(v, b["methods"][method]["params"][k]), (method, k)
    assert _without_timings(whole / "metrics.csv") == _without_timings(cut / "metrics.csv")
    assert (whole / "summary.json").read_text() == (cut / "summary.json").read_text()
    assert (whole / "heldout.csv").read_text() == (cut / "heldout.csv").read_text()


def test_the_held_out_curve_leaves_training_alone_and_ends_at_the_last_iteration(tmp_path):
    args = [*SMALL, "meta.iterations=5", "baselines.oracle=false", "baselines.random=false"]
    plain, curved = tmp_path / "plain", tmp_path / "curved"
    assert _cli("train", str(CONFIG), *args, "--out", str(plain), "--quiet").returncode == 0
    res = _cli("train", str(CONFIG), *args, "eval.curve_every=2", "eval.curve_tasks=3", "eval.curve_steps=2",
               "--out", str(curved), "--quiet")
    assert res.returncode == 0, res.stderr
    assert _without_timings(plain / "metrics.csv") == _without_timings(curved / "metrics.csv")
    assert (plain / "summary.json").read_text() == (curved / "summary.json").read_text()
    rows = (curved / "heldout.csv").read_text().splitlines()
    assert rows[0] == "stage,iteration,env_steps,return_0,ci95_0,return_1,ci95_1,return_2,ci95_2"
    assert [tuple(r.split(",")[:2]) for r in rows[1:]] == [(s, str(i)) for s in ("maml", "pretrained")
                                                          for i in (0, 2, 4, 5)]
    report = (curved / "report.md").read_text()
    assert "Held-out return during training" in report and (curved / "heldout.png").is_file()
    # the curve's last MAML point is the final evaluation's first tasks, same seeds
    summary = json.loads((curved / "summary.json").read_text())["methods"]["maml"]
    last = next(r for r in rows if r.startswith("maml,5,")).split(",")
    assert np.isclose(float(last[3]), np.mean(summary["0"]["per_task"][:3]), rtol=1e-6)


@pytest.mark.parametrize("extra, message", [
    (["env.id=metadapt/Nowhere-v0"], "Nowhere"),
    (["env.id=CartPole-v1", "env.vector=sync", "env.kwargs={}"], "not a task family"),
    (["env.id=metadapt/HalfCheetah-v0", "env.vector=sync", "env.kwargs={}"], "baselines.oracle"),
    (["env.kwargs={goal_tolerance: -1}"], "goal_tolerance"),
    (["eval.steps=-1"], "eval.steps"),
    (["meta.max_kl=0"], "meta.max_kl"),
    (["meta.inner_lr=-0.1"], "meta.inner_lr"),
    (["meta.outer=sgd"], "meta.outer"),
    (["eval.later_lr_scale=0"], "eval.later_lr_scale"),
    (["eval.random_lr=-1"], "eval.random_lr"),
    (["env.kwargs={task_in_obs: true}"], "task_in_obs"),
])
def test_bad_rl_config_is_one_line_and_exit_2(tmp_path, extra, message):
    res = _cli("train", str(CONFIG), *SMALL, *extra, "--out", str(tmp_path / "x"), "--quiet")
    assert res.returncode == 2 and message in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_a_policy_checkpoint_for_another_observation_size_is_refused(tmp_path):
    out = tmp_path / "run"
    assert _cli("train", str(CONFIG), *SMALL, "baselines.oracle=false", "--out", str(out), "--quiet").returncode == 0
    res = _cli("train", str(CONFIG), *SMALL, f"policy.checkpoint={out}", "env.id=metadapt/HalfCheetahDir-v0",
               "env.vector=sync", "env.kwargs={}", "--out", str(tmp_path / "y"), "--quiet")
    assert res.returncode == 2 and "observation size" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_policies_trained_at_another_control_period_are_refused(tmp_path):
    """A run records its env's seconds per action: loading its policies into an env that steps at another period
    (a changed default, or env.kwargs) is refused in one line, when evaluating a checkpoint and when resuming."""
    out = tmp_path / "run"
    tiny = ["env.id=metadapt/HalfCheetahDir-v0", "env.vector=sync", "env.num_envs=2", "env.kwargs={}",
            "env.horizon=5", "meta.iterations=1", "meta.meta_batch=2", "meta.episodes=2", "policy.hidden=[8]",
            "baselines.pretrained=false", "baselines.oracle=false", "baselines.random=false", "eval.tasks=2",
            "eval.episodes=1", "eval.steps=1", "eval.curve_every=null"]
    assert _cli("train", str(CONFIG), *tiny, "--out", str(out), "--quiet").returncode == 0
    assert torch.load(out / "model.pt", weights_only=True)["env_dt"] == pytest.approx(0.01)
    res = _cli("train", str(CONFIG), *tiny, f"policy.checkpoint={out}", "env.kwargs={frame_skip: 5}",
               "--out", str(tmp_path / "y"), "--quiet")
    assert res.returncode == 2 and "stepping 0.01 s per action, it now steps 0.05 s" in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    state_path = out / "checkpoints" / "state.pt"
    state = torch.load(state_path, weights_only=True)
    assert state["env_dt"] == pytest.approx(0.01)
    torch.save({**state, "env_dt": 0.05}, state_path)  # as if the env's default period had changed since
    res = _cli("train", "--resume", str(out), "--quiet")
    assert res.returncode == 2 and "stepping 0.05 s per action, it now steps 0.01 s" in res.stderr, res.stderr
    assert "start a new run" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    # a policy file from before periods were recorded: this cheetah's were trained at Gymnasium's 0.05 s
    model = torch.load(out / "model.pt", weights_only=True)
    del model["env_dt"]
    torch.save(model, out / "model.pt")
    res = _cli("train", str(CONFIG), *tiny, f"policy.checkpoint={out}", "--out", str(tmp_path / "z"), "--quiet")
    assert res.returncode == 2 and "stepping 0.05 s per action, it now steps 0.01 s" in res.stderr, res.stderr
    res = _cli("train", str(CONFIG), *tiny, f"policy.checkpoint={out}", "env.kwargs={frame_skip: 5}",
               "--out", str(tmp_path / "w"), "--quiet")
    assert res.returncode == 0, res.stderr


def test_stacked_sampling_equals_sampling_each_task_alone():
    """Per-task parameters acting in one vector env give each task the episodes it gets on its own."""
    envs = make_vector_env("metadapt/PointNav-v0", 6, "sync")
    probe = make_env("metadapt/PointNav-v0")
    policy = GaussianMLPPolicy(2, 2, hidden=(8,))
    gen = torch.Generator().manual_seed(0)
    ps = [policy.init_params(gen) for _ in range(2)]
    stacked = {k: torch.stack([p[k] for p in ps]) for k in ps[0]}
    tasks = sample_tasks(probe, 2, np.random.default_rng(0))
    both = sample_episodes(envs, policy, stacked, tasks, 3, 10, seed=5, deterministic=True)
    for b in range(2):
        alone = sample_episodes(envs, policy, ps[b], [tasks[b]], 3, 10, seed=5, deterministic=True)
        torch.testing.assert_close(both.reward[b], alone.reward[0])
    assert both.mask.all() and both.obs.shape == (2, 3, 10, 2)
    envs.close()
    probe.close()


def test_recorded_step_infos_are_the_infos_of_replaying_each_episode_alone():
    """``info_keys`` records each sub-environment's own step info, laid out as the episodes are; a key no step
    reports is NaN and has no mean."""
    fast = {"frame_skip": 5}  # Gymnasium's control period: in 40 steps of it the wide noise tilts the torso far
    envs = make_vector_env("metadapt/HalfCheetahDir-v0", 2, "sync", kwargs=fast)
    policy = GaussianMLPPolicy(18, 6, hidden=(8,), init_std=3.0)
    params = policy.init_params(torch.Generator().manual_seed(0))
    tasks = [{"direction": 1}, {"direction": -1}]
    ep = sample_episodes(envs, policy, params, tasks, 1, 40, seed=7, info_keys=("torso_up", "upside_down", "nope"))
    envs.close()
    assert ep.info["torso_up"].shape == (2, 1, 40) and torch.isnan(ep.info["nope"]).all()
    assert ep.info_mean("nope") is None and ep.info_mean("absent") is None
    env = make_env("metadapt/HalfCheetahDir-v0", **fast)
    space = env.action_space
    for b, task in enumerate(tasks):  # one round: task b ran in sub-environment b, reset with seed 7 + b
        env.unwrapped.next_task = task
        env.reset(seed=7 + b)
        ups = []
        for t in range(40):
            act = to_env_action(ep.act[b, 0, t].numpy(), space.low.astype(np.float64), space.high.astype(np.float64))
            ups.append(env.step(act)[4]["torso_up"])
        torch.testing.assert_close(ep.info["torso_up"][b, 0], torch.tensor(ups, dtype=torch.float32))
    env.close()
    assert torch.equal(ep.info["upside_down"], (ep.info["torso_up"] < 0).float())
    assert ep.info["torso_up"].min() < 0.9  # the replay compared a moving torso, not a resting one
    assert ep.info_mean("upside_down") == pytest.approx(float(ep.info["upside_down"].mean()))
    assert ep.info_mean("torso_up", torch.tensor([False, True])) == pytest.approx(float(ep.info["torso_up"][1].mean()))


class _EndsEarly(gym.Env):
    """Ends its episodes after ``length`` steps; its info ``k`` counts the episode's steps (from 1) and ``odd``
    is reported on odd steps only (Gymnasium's vector envs mark the others absent in ``_odd``)."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (1,))
    action_space = gym.spaces.Box(-1.0, 1.0, (1,))

    def __init__(self, length: int) -> None:
        self.length, self.t, self.next_task = length, 0, None

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(1, dtype=np.float32), {}

    def step(self, action):
        self.t += 1
        info = {"k": float(self.t), **({"odd": 1.0} if self.t % 2 else {})}
        return np.zeros(1, dtype=np.float32), 1.0, self.t >= self.length, False, info


def test_recorded_infos_stop_where_the_episode_ends_and_absent_values_are_nan():
    """After an episode ends its sub-environment begins the next one (next-step autoreset) and goes on
    reporting: those steps are not the episode's and hold NaN, as do steps whose info lacked the key."""
    envs = gym.vector.SyncVectorEnv([lambda: _EndsEarly(2), lambda: _EndsEarly(4)])
    policy = GaussianMLPPolicy(1, 1, hidden=(4,))
    params = policy.init_params(torch.Generator().manual_seed(0))
    ep = sample_episodes(envs, policy, params, [{}], 2, 6, seed=0, info_keys=("k", "odd"))
    envs.close()
    nan = float("nan")
    torch.testing.assert_close(ep.mask[0], torch.tensor([[1.0, 1, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0]]))
    torch.testing.assert_close(ep.info["k"][0], torch.tensor([[1.0, 2, nan, nan, nan, nan], [1, 2, 3, 4, nan, nan]]),
                               equal_nan=True)
    torch.testing.assert_close(ep.info["odd"][0], torch.tensor([[1.0, nan, nan, nan, nan, nan],
                                                                [1, nan, 1, nan, nan, nan]]), equal_nan=True)
    assert ep.info_mean("k") == pytest.approx(13 / 6) and ep.info_mean("odd") == 1.0


def test_a_legged_robots_evaluation_reports_the_share_of_steps_on_its_back(tmp_path):
    out = tmp_path / "cheetah"
    res = _cli("train", str(ROOT / "configs" / "maml_rl_cheetah_dir.yaml"), "meta.iterations=1", "meta.meta_batch=2",
               "meta.episodes=2", "env.horizon=20", "env.num_envs=2", "policy.hidden=[8]", "baselines.oracle=false",
               "baselines.pretrained=false", "eval.tasks=2", "eval.episodes=2", "eval.steps=1", "--out", str(out),
               "--quiet")
    assert res.returncode == 0, res.stderr
    summary = json.loads((out / "summary.json").read_text())
    for per in summary["methods"].values():
        assert all(0.0 <= per[s]["upside_down"] <= 1.0 for s in ("0", "1"))
    assert "spent on the back" in (out / "report.md").read_text()
    rows = (out / "metrics.csv").read_text().splitlines()
    row = dict(zip(rows[0].split(","), rows[1].split(","), strict=True))
    assert 0.0 <= float(row["upside_down"]) <= 1.0 and float(row["action_std"]) > 0  # recorded while training
    assert "spent on the back, mean of each stage" in (out / "report.md").read_text()


def test_one_inner_step_of_a_meta_trained_navigation_policy_beats_its_start():
    """A few MAML-RL iterations on navigation already make one policy-gradient step pay on held-out goals."""
    envs = make_vector_env("metadapt/PointNav-v0", 100, "auto")
    probe = make_env("metadapt/PointNav-v0")
    policy = GaussianMLPPolicy(2, 2, hidden=(32, 32))
    learner = MAMLRL(policy, policy.init_params(torch.Generator().manual_seed(0)), MAMLRLSettings())

    def sample(params, tasks, seed):
        return sample_episodes(envs, policy, params, tasks, 10, 100, seed)

    for it in range(15):
        tasks = sample_tasks(probe, 10, np.random.default_rng(it))
        info = learner.outer_step(learner.sample(sample, tasks, 1000 + it))
        assert info["kl"] <= 0.01 * 1.0001
    held_out = sample_tasks(probe, 10, np.random.default_rng(999), "test")
    returns = evaluate_adaptation(policy, learner.params, learner.rates, learner.settings, sample, held_out, 1, 7)
    assert returns[1].mean() > returns[0].mean()
    envs.close()
    probe.close()


def test_later_evaluation_steps_take_the_scaled_rate():
    """The original's test scripts take the first step at the meta-trained rate and the later ones at half of it:
    ``later_scale`` must give exactly the steps taken by hand with those rates."""
    envs = make_vector_env("metadapt/PointNav-v0", 24, "auto")
    probe = make_env("metadapt/PointNav-v0")
    policy = GaussianMLPPolicy(2, 2, hidden=(16,))
    params = policy.init_params(torch.Generator().manual_seed(3))
    settings = MAMLRLSettings(inner_lr=0.5)
    tasks = sample_tasks(probe, 4, np.random.default_rng(5), "test")

    def sample(p, t, seed):
        return sample_episodes(envs, policy, p, t, 6, 100, seed)

    got = evaluate_adaptation(policy, params, 0.5, settings, sample, tasks, 3, 11, later_scale=0.5)
    seeds = np.random.SeedSequence(11).generate_state(4)
    p, want = params, []
    for i, rate in enumerate([0.5, 0.25, 0.25, None]):
        episodes = sample(p, tasks, int(seeds[i]))
        want.append(episodes.returns().mean(dim=1).numpy())
        if rate is not None:
            step = policy_gradient_step(policy, p, episodes, episode_advantages(episodes, settings), rate, True)
            p = {k: v.detach() for k, v in step.items()}
    np.testing.assert_allclose(got, np.stack(want), rtol=1e-6)
    unscaled = evaluate_adaptation(policy, params, 0.5, settings, sample, tasks, 3, 11)
    np.testing.assert_allclose(unscaled[:2], got[:2], rtol=1e-6)  # the first step is the same
    assert not np.allclose(unscaled[2:], got[2:])
    learned = {k: torch.full_like(v, 0.5) for k, v in params.items()}  # Meta-SGD rates scale entry by entry
    np.testing.assert_allclose(evaluate_adaptation(policy, params, learned, settings, sample, tasks, 3, 11,
                                                   later_scale=0.5), got, rtol=1e-5)
    envs.close()
    probe.close()


def test_a_baselines_evaluation_rate_changes_only_that_baseline(tmp_path):
    out = tmp_path / "run"
    assert _cli("train", str(CONFIG), *SMALL, "baselines.oracle=false", "--out", str(out), "--quiet").returncode == 0
    again = tmp_path / "again"
    res = _cli("train", str(CONFIG), *SMALL, "baselines.oracle=false", f"policy.checkpoint={out}",
               "eval.random_lr=0.05", "--out", str(again), "--quiet")
    assert res.returncode == 0, res.stderr
    first, second = (json.loads((d / "summary.json").read_text())["methods"] for d in (out, again))
    assert first["maml"] == second["maml"] and first["pretrained"] == second["pretrained"]
    assert first["random"]["0"] == second["random"]["0"] and first["random"]["1"] != second["random"]["1"]


def test_the_adapted_policy_is_rendered_after_each_step(tmp_path):
    pytest.importorskip("imageio_ffmpeg")
    import imageio.v2 as imageio

    from metadapt.experiments.configuration.config import load_config
    from metadapt.experiments.jobs.rl import load_policies, write_adaptation_video

    out = tmp_path / "run"
    assert _cli("train", str(CONFIG), *SMALL, "baselines.oracle=false", "baselines.pretrained=false",
                "env.kwargs={}", "--out", str(out), "--quiet").returncode == 0  # fixed-length episodes
    cfg = load_config(out / "config.yaml")
    policy = GaussianMLPPolicy(2, 2, cfg["policy"]["hidden"])
    path = write_adaptation_video(cfg, load_policies(out, policy, cfg["env"]["id"]), tmp_path / "a.mp4")
    frames = imageio.get_reader(str(path)).count_frames()
    assert frames == 100 * (cfg["eval"]["steps"] + 1)  # one 100-step episode after each of 0 .. steps


def test_the_sampling_benchmark_prints_its_ratio_last(capsys):
    from metadapt.experiments.benchmarks.bench_sampling import bench_sampling

    fraction = bench_sampling(mode="sync", tasks=2, episodes=2, horizon=20, repeats=2, sizes=(1, 2))
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == f"sampling_fraction_of_sim={fraction:.3f}" and fraction > 0
    assert any("one TRPO meta-iteration" in line and "% sampling" in line for line in lines)
    # each side's best over both sizes: the ratio is the best sampler line over the best raw line
    runs = [line.split() for line in lines if line.strip().startswith("repeat")]
    assert len(runs) == 4 and "vector env of 1:" in lines and "vector env of 2:" in lines
    best_raw = max(float(r[3].replace(",", "")) for r in runs)
    best_sampler = max(float(r[6].replace(",", "")) for r in runs)
    assert fraction == pytest.approx(best_sampler / best_raw, rel=0.02)  # the printed rates are rounded
