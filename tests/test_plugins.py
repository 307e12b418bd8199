"""The seams are real: a learner, a planner, a model and a task family defined here, outside the package,
registered at run time and driven through the command line's config path with no edit to ``src/``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from metadapt.adapt.base import StepInfo
from metadapt.cli import main
from metadapt.experiments.configuration.components import LEARNERS, MODELS, PLANNERS, TASKS
from metadapt.experiments.configuration.schema import Field
from metadapt.experiments.jobs.supervised import Problem
from metadapt.meta.checkpoint import load_model
from metadapt.meta.prior import load_prior
from metadapt.models.base import DynamicsModel, FoldedDynamics
from metadapt.models.normalizer import Normalizer
from metadapt.models.registry import register_dynamics, unregister_dynamics
from metadapt.planning.base import Planner, PlanResult, WarmStart
from metadapt.types import TaskBatch, Window

ROOT = Path(__file__).resolve().parents[1]
TINY = ["train.iterations=1", "train.steps_per_iteration=80", "train.rollout_length=40", "train.epochs=1",
        "model.hidden=[8]", "planner.num_samples=4", "planner.horizon=2", "trial.steps=25", "trial.episode_length=25"]
CALLS: dict[str, int] = {"observe": 0, "plan": 0}


class CountingLearner:
    """Plans with the MB model's parameters scaled by a configured factor; counts its windows."""

    def __init__(self, params, scale: float) -> None:
        self._params = {k: v * scale for k, v in params.items()}

    def reset(self) -> None:
        pass

    def observe(self, window: Window) -> StepInfo:
        CALLS["observe"] += 1
        return StepInfo({"toy_window": float(len(window))})

    def params(self):
        return self._params


class ConstantPlanner(Planner):
    """Scores one constant action sequence and plays it."""

    def __init__(self, low, high, horizon, value: float, device="cpu") -> None:
        super().__init__(low, high, horizon, 1, 0, device)
        self.value = value

    def plan(self, objective, warm_start: WarmStart) -> PlanResult:
        CALLS["plan"] += 1
        seq = torch.full((1, self.horizon, self.act_dim), self.value, device=self.device)
        seq = torch.minimum(torch.maximum(seq, self.low), self.high)
        ret, nonfinite = self.score(objective, seq)
        return PlanResult(seq[0, 0], seq[0], float(ret[0]), 1, nonfinite)


class LineModel:
    """y = w x + b, a functional model of two numbers (stacked: ``B x 1``)."""

    stacked = True

    def param_shapes(self):
        return {"w": (1,), "b": (1,)}

    def init_params(self, generator, device="cpu"):
        return {"w": torch.zeros(1, device=device), "b": torch.zeros(1, device=device)}

    def loss(self, params, batch):
        x, y = batch
        w, b = params["w"], params["b"]
        if w.dim() == 2:  # stacked tasks: B x 1 -> B x 1 x 1
            w, b = w.unsqueeze(1), b.unsqueeze(1)
        return ((w * x + b - y) ** 2).mean(dim=(-2, -1))


class LineTasks:
    """Lines y = a x + 2 with a ~ U[-1, 1]: a meta-learned start knows the offset, adaptation finds a."""

    def __init__(self, shots: int, query: int) -> None:
        self.shots, self.query = shots, query

    def sample(self, num_tasks, generator, split="train"):
        a = torch.rand(num_tasks, 1, 1, generator=generator) * 2 - 1
        xs = torch.rand(num_tasks, self.shots, 1, generator=generator) * 2 - 1
        xq = torch.rand(num_tasks, self.query, 1, generator=generator) * 2 - 1
        return TaskBatch((xs, a * xs + 2), (xq, a * xq + 2), {"slope": a.flatten()})


class LinearDynamics:
    """A dynamics model of one linear layer on the normalized inputs: not an MLP, no fast path."""

    stacked = False

    def __init__(self, obs_dim: int, act_dim: int, sigma: float = 1.0, normalizer: Normalizer | None = None):
        self.obs_dim, self.act_dim, self.sigma = obs_dim, act_dim, sigma
        self.normalizer = normalizer or Normalizer.identity(obs_dim, act_dim)

    def param_shapes(self):
        return {"w": (self.obs_dim, self.obs_dim + self.act_dim), "b": (self.obs_dim,)}

    def init_params(self, generator, device="cpu"):
        return {k: (0.01 * torch.randn(shape, generator=generator)).to(device)
                for k, shape in self.param_shapes().items()}

    def predict_normalized_delta(self, params, obs, act):
        return torch.nn.functional.linear(self.normalizer.normalize_inputs(obs, act), params["w"], params["b"])

    def target(self, obs, next_obs):
        return self.normalizer.target(obs, next_obs)

    def transition_loss(self, params, obs, act, next_obs):
        return (self.predict_normalized_delta(params, obs, act) - self.target(obs, next_obs)).pow(2).mean()

    def loss(self, params, batch):
        return self.transition_loss(params, *batch)

    def log_likelihood(self, params, obs, act, next_obs):
        err = self.predict_normalized_delta(params, obs, act) - self.target(obs, next_obs)
        return -0.5 * err.pow(2).sum(-1) / self.sigma**2

    def fold(self, params, dtype=torch.float32, fused=None, prepack=True):
        return FoldedLinear(self, {k: v.detach() for k, v in params.items()})

    def spec(self):
        return {"type": "toy_linear", "obs_dim": self.obs_dim, "act_dim": self.act_dim, "sigma": self.sigma,
                "normalizer": self.normalizer.state_dict()}

    @classmethod
    def from_spec(cls, spec):
        return cls(spec["obs_dim"], spec["act_dim"], spec["sigma"], Normalizer.from_state_dict(spec["normalizer"]))


class FoldedLinear:
    def __init__(self, model: LinearDynamics, params) -> None:
        self.model, self.params = model, params

    def project_actions(self, actions):
        return actions.transpose(0, 1)

    def step(self, obs, act):
        n = self.model.normalizer
        return obs + n.delta_mean + n.delta_gain * self.model.predict_normalized_delta(self.params, obs, act)


@pytest.fixture
def registered():
    LEARNERS.register("toy_scaled", lambda own, ctx: CountingLearner(ctx.params, own["scale"]),
                      fields={"scale": Field("float", 1.0, low=0)}, needs="model", doc="a test's learner")
    PLANNERS.register("toy_constant", lambda own, ctx: ConstantPlanner(ctx.action_low, ctx.action_high,
                                                                      ctx.horizon, own["value"], ctx.device),
                      fields={"value": Field("float", 0.0)}, doc="a test's planner")

    def line_problem(cfg, device):
        model = LineModel()
        t = cfg["task"]
        return Problem(model, LineTasks(t["shots"], t["query"]), LineTasks(t["shots"], t["eval_query"]), "mse",
                       model.loss)

    TASKS.register("toy_lines", line_problem, doc="a test's task family")
    MODELS.register("toy_linear", lambda own, ctx: LinearDynamics(ctx.obs_dim, ctx.act_dim, ctx.section["sigma"]),
                    doc="a test's dynamics model")
    register_dynamics("toy_linear", LinearDynamics.from_spec)
    yield
    for registry, name in ((LEARNERS, "toy_scaled"), (PLANNERS, "toy_constant"), (TASKS, "toy_lines"),
                           (MODELS, "toy_linear")):
        registry.unregister(name)
    unregister_dynamics("toy_linear")


def test_a_registered_learner_and_planner_run_from_the_config(tmp_path, registered):
    CALLS.update(observe=0, plan=0)
    out = tmp_path / "run"
    assert main(["run", str(ROOT / "configs/mb_small.yaml"), *TINY, "learner.type=toy_scaled",
                 "learner.toy_scaled.scale=0.5", "planner.type=toy_constant", "planner.toy_constant.value=0.25",
                 "--out", str(out), "--quiet"]) == 0
    assert CALLS["observe"] == 25 and CALLS["plan"] == 25
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["learner"] == {"type": "toy_scaled", "toy_scaled": {"scale": 0.5}, "window": 16, "lr": None}
    assert cfg["planner"]["toy_constant"] == {"value": 0.25}
    header = (out / "trial_0" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "toy_window" in header


def test_a_registered_type_checks_its_own_section(tmp_path, registered, capsys):
    code = main(["run", str(ROOT / "configs/mb_small.yaml"), *TINY, "learner.type=toy_scaled",
                 "learner.toy_scaled.scale=-1", "--out", str(tmp_path / "x"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "learner.toy_scaled.scale" in err and len(err.strip().splitlines()) == 1
    code = main(["run", str(ROOT / "configs/mb_small.yaml"), *TINY, "learner.type=toy_scaled",
                 "learner.toy_scaled.sclae=1", "--out", str(tmp_path / "y"), "--quiet"])
    assert code == 2 and "learner.toy_scaled.sclae" in capsys.readouterr().err


def test_unregistered_types_are_refused_with_the_registered_ones_listed(tmp_path, capsys):
    assert main(["run", str(ROOT / "configs/mb_small.yaml"), "learner.type=toy_scaled", "--out",
                 str(tmp_path / "x"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "learner.type" in err and "mole" in err and len(err.strip().splitlines()) == 1


def test_a_registered_model_and_task_family_meta_train_from_the_config(tmp_path, registered):
    out = tmp_path / "lines"
    assert main(["train", str(ROOT / "configs/maml_sinusoid.yaml"), "task.type=toy_lines", "task.shots=4",
                 "meta.iterations=300", "meta.inner_lr=0.3", "meta.outer_lr=0.01", "baseline.iterations=300",
                 "eval.tasks=50", "train.checkpoint_every=100", "train.log_every=50", "--out", str(out),
                 "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    maml = summary["methods"]["maml"]
    # the meta-learned start knows the offset 2 (error ~4 without it) and adaptation finds the slope
    assert maml["0"]["mean"] < 0.2 and maml["10"]["mean"] < 0.5 * maml["0"]["mean"] < maml["0"]["mean"]
    assert (out / "report.md").is_file()


def test_a_registered_dynamics_model_trains_checkpoints_meta_trains_and_plans(tmp_path, registered):
    """A model type the package has never seen goes through MB training, its checkpoint, GrBAL meta-training,
    the prior file and MOLe at run time (the generic path: no MLP fast path to fall back on)."""
    mb = tmp_path / "mb"
    assert main(["run", str(ROOT / "configs/mb_small.yaml"), *TINY, "model.type=toy_linear", "--out", str(mb),
                 "--quiet"]) == 0
    model, params = load_model(mb / "train" / "model.pt")
    assert isinstance(model, LinearDynamics) and isinstance(model, DynamicsModel)
    assert isinstance(model.fold(params), FoldedDynamics)
    assert model.normalizer.obs_mean.abs().sum() > 0  # fitted on the collected data, stored in the spec
    mole = tmp_path / "mole"
    assert main(["run", str(ROOT / "configs/mb_small.yaml"), *TINY, "model.type=toy_linear", "meta.enabled=true",
                 "meta.past=4", "meta.future=4", "meta.meta_batch=4", "meta.batches_per_epoch=2",
                 "meta.val_batches=1", "learner.type=mole", "--out", str(mole), "--quiet"]) == 0
    prior = load_prior(mole / "train")
    assert isinstance(prior.model, LinearDynamics)
    summary = json.loads((mole / "summary.json").read_text())
    assert len(summary["returns"]) == 1 and math.isfinite(summary["mean_return"])
    rows = (mole / "trial_0" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 26 and "components" in rows[0].split(",")


def test_a_checkpoint_of_an_unregistered_model_type_is_refused_in_one_line(tmp_path, registered, capsys):
    mb = tmp_path / "mb"
    assert main(["run", str(ROOT / "configs/mb_small.yaml"), *TINY, "model.type=toy_linear", "--out", str(mb),
                 "--quiet"]) == 0
    unregister_dynamics("toy_linear")
    code = main(["run", str(ROOT / "configs/mb_small.yaml"), *TINY, f"model.checkpoint={mb / 'train'}",
                 "--out", str(tmp_path / "again"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "toy_linear" in err and "not registered" in err and len(err.splitlines()) == 1
