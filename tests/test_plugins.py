"""The seams are real: a learner, a planner, a model and a task family defined here, outside the package,
registered at run time and driven through the command line's config path with no edit to ``src/``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from metadapt.adapt.base import StepInfo
from metadapt.cli import main
from metadapt.experiments.components import LEARNERS, PLANNERS, TASKS
from metadapt.experiments.schema import Field
from metadapt.experiments.supervised import Problem
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
    yield
    for registry, name in ((LEARNERS, "toy_scaled"), (PLANNERS, "toy_constant"), (TASKS, "toy_lines")):
        registry.unregister(name)


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
