"""Few-shot supervised meta-learning as a job: MAML, FOMAML and Meta-SGD with the paper's comparisons.

``metadapt train configs/maml_sinusoid.yaml`` meta-trains on a task sampler,
trains the pretrained baseline (one network on all tasks, no adaptation in
training), scores both on held-out tasks after 0, 1, ... inner steps with 95%
intervals, and writes the run directory:

    config.yaml        the resolved config
    checkpoints/       state.pt every ``train.checkpoint_every`` iterations (resume continues bit for bit)
    metrics.csv        stage, iteration, mean training loss over ``train.log_every`` iterations
    model.pt           the meta-learned parameters and inner rates, and the baseline's parameters
    summary.json       held-out results: per method and number of steps, mean and 95% half-width
    report.md          the table, the training curves and the paper's figure
    timing.json        wall seconds of each training stage (kept apart: results never depend on it)

The run's randomness comes from three generators derived from ``seed``: the
initialisation, the training task stream and the held-out tasks, which
meta-training never draws from.
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from metadapt.data.sinusoid import SinusoidTasks
from metadapt.errors import CheckpointError, ConfigError, MetadaptError
from metadapt.experiments.configuration.components import TASKS
from metadapt.experiments.configuration.config import dump_config, refuse_result_changing_edits, with_later_defaults
from metadapt.experiments.configuration.files import write_json
from metadapt.experiments.configuration.resources import FLOAT, Need, check_memory, mlp_param_count
from metadapt.experiments.configuration.supervised_schema import SUPERVISED_SCHEMA
from metadapt.experiments.reporting.progress import Reporter
from metadapt.meta.checkpoint import check_finite, load_checkpoint, save_atomic
from metadapt.meta.inner import Rates, freeze_rates, frozen_names, init_rates, inner_adapt
from metadapt.meta.outer import MAML, evaluate_adaptation, maml_task_losses, mean_interval
from metadapt.models.base import FunctionalModel, check_params
from metadapt.models.regressor import MLPRegressor
from metadapt.types import Params, TaskBatch, TaskSampler

MODEL_FORMAT = "metadapt.supervised.v1"
STATE_FORMAT = "metadapt.supervised_state.v1"
# Offsets that keep the three generators of a run apart for every seed.
INIT_STREAM, TRAIN_STREAM, EVAL_STREAM = 0, 1_000_003, 2_000_006


@dataclass
class Problem:
    """What a task family gives the job: the model, the samplers and how results read."""

    model: FunctionalModel
    train: TaskSampler
    test: TaskSampler
    metric: str  # the name of the held-out number: "mse" (lower is better) or "accuracy"
    score: Any  # score(params, batch) -> the metric of one task (or ``B`` when stacked); the loss for "mse"
    # extra(generator, tasks, batch) -> {method: {"0": {"mean", "ci95"}}}: baselines that are not a network
    extra: Any = None
    # how the pretrained baseline trains when it is not the task model on pooled tasks
    pretrain: Pretrain | None = None
    # the ``model.*`` keys of the network's architecture that its parameters' shapes may not reveal (an
    # activation, a pooling): a checkpoint trained under other values is refused rather than evaluated as another
    # network
    architecture: tuple[str, ...] = ()


@dataclass
class Pretrain:
    """A baseline network trained on every training class at once, then given the task model's shape.

    ``sample(size, generator)`` is a batch of ``model.loss``; ``transfer(params)``
    turns its parameters into the task model's (e.g. the features with a fresh
    ``N``-way head), which evaluation then fine-tunes like MAML's.
    """

    model: FunctionalModel
    sample: Any
    transfer: Any


def sinusoid_problem(cfg: dict[str, Any], device: torch.device) -> Problem:
    """Sinusoid regression with the MAML paper's network (``task.type: sinusoid``)."""
    t, m = cfg["task"], cfg["model"]
    model = MLPRegressor(1, 1, m["hidden"], m["activation"])
    return Problem(model, SinusoidTasks(t["shots"], t["query"], device=device),
                   SinusoidTasks(t["shots"], t["eval_query"], device=device), "mse", model.loss,
                   architecture=("activation",))


def build_problem(cfg: dict[str, Any]) -> Problem:
    device = torch.device(cfg["device"])
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MetadaptError("config key 'device' is cuda, but this PyTorch sees no CUDA GPU")
    problem = TASKS[cfg["task"]["type"]].build(cfg, device)
    if not isinstance(problem, Problem):
        raise MetadaptError(f"task type '{cfg['task']['type']}' built {type(problem).__name__}, not a Problem")
    try:  # the prefixes are names of the model's parameters: checked here, before anything trains
        frozen_names(problem.model.param_shapes(), cfg["meta"]["inner_frozen"])
    except ValueError as exc:
        raise ConfigError(f"config key 'meta.inner_frozen': {exc}") from None
    return problem


def _initial_rates(cfg: dict[str, Any], params: Params) -> Rates:
    m = cfg["meta"]
    return init_rates(params, m["inner_lr_per"] if m["learn_inner_lr"] else "scalar", m["inner_lr"])


def _generator(seed: int, stream: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed + stream) % 2**63)


class _Trainer:
    """Adam on the outer loss (MAML), or the pretrained baseline: Adam on the unadapted loss of all tasks
    pooled, or on the problem's own ``Pretrain`` (a network over every training class)."""

    def __init__(self, problem: Problem, cfg: dict[str, Any], pretrain: bool, device: torch.device) -> None:
        m, stacked = cfg["meta"], bool(getattr(problem.model, "stacked", False))
        self.problem, self.pretrain, self.stacked = problem, pretrain, stacked
        self.batch = cfg["baseline"]["batch_size"] if pretrain and problem.pretrain else m["meta_batch"]
        model = problem.pretrain.model if pretrain and problem.pretrain else problem.model
        self.model = model
        params = model.init_params(_generator(cfg["seed"], INIT_STREAM + (1 if model is not problem.model else 0)),
                                   device)
        if pretrain:
            self.maml = MAML(model.loss, params, 0.0, steps=1, stacked=stacked, outer_lr=cfg["baseline"]["lr"])
        else:
            self.maml = MAML(model.loss, params, _initial_rates(cfg, params), steps=m["inner_steps"],
                             first_order=m["first_order"], stacked=stacked, outer_lr=m["outer_lr"],
                             learn_rates=m["learn_inner_lr"], frozen=m["inner_frozen"])

    def step(self, gen: torch.Generator) -> float:
        if not self.pretrain:
            return self.maml.step(self.problem.train.sample(self.batch, gen, "train"))
        if self.problem.pretrain is not None:
            loss = self.model.loss(self.maml.params, self.problem.pretrain.sample(self.batch, gen))
        else:  # one network on all tasks: the unadapted loss of support and query together
            tasks = self.problem.train.sample(self.batch, gen, "train")
            flipped = TaskBatch(tasks.query, tasks.support)
            loss = 0.5 * (maml_task_losses(self.model.loss, self.maml.params, tasks, 0.0, 0, stacked=self.stacked)
                          + maml_task_losses(self.model.loss, self.maml.params, flipped, 0.0, 0,
                                             stacked=self.stacked)).mean()
        opt = self.maml.optimizer
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())

    def result(self) -> tuple[Params, Rates]:
        """The trained parameters as the task model's (the pretrained network with a fresh head) and rates."""
        params = {k: v.detach() for k, v in self.maml.params.items()}
        if self.pretrain and self.problem.pretrain is not None:
            params = self.problem.pretrain.transfer(params)
        return params, _detached(self.maml.rates)


def _stage_iterations(cfg: dict[str, Any]) -> list[tuple[str, int]]:
    stages = [("meta", cfg["meta"]["iterations"])]
    if cfg["baseline"]["pretrained"]:
        stages.append(("pretrained", cfg["baseline"]["iterations"] or cfg["meta"]["iterations"]))
    return stages


def _write_metrics(rows: list[dict[str, Any]], path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["stage", "iteration", "loss"])
        w.writeheader()
        w.writerows(rows)
    tmp.replace(path)


# Keys a resumed run may take from an edited config.yaml: they change neither what was trained so far nor what
# the rest of the training draws (the held-out tasks come from their own generator, after training).
RESUME_MAY_CHANGE = ("name", "device", "threads", "eval")


def _check_resume_edits(saved: dict[str, Any], cfg: dict[str, Any], stage: str, iteration: int,
                        run_dir: Path) -> None:
    """Refuse (one ``CheckpointError`` line) to resume a checkpoint of ``stage`` at ``iteration`` under ``cfg`` when
    it differs from ``saved``, the config of the checkpoint, in a key that changes results. A stage's iteration count
    (``meta.iterations``, ``baseline.iterations``) may change while that stage has not finished and has not gone past
    the new count: every iteration draws from the run's training stream alone, so the run equals one started with
    the new count."""
    stages = _stage_iterations(saved)
    old, order = dict(stages), [name for name, _ in stages] + ["done"]
    for name, total in _stage_iterations(cfg):
        if name in old and total != old[name]:
            finished = order.index(stage) > order.index(name)
            if finished or (stage == name and iteration > total):
                where = "finished" if finished else f"at iteration {iteration}"
                raise CheckpointError(f"{run_dir}/config.yaml asks the {name} stage for {total} iterations, but the "
                                      f"run's checkpoint is {where} of it: resume continues the same run (start a "
                                      "new run to change it)")
    refuse_result_changing_edits(saved, cfg, (*RESUME_MAY_CHANGE, "meta.iterations", "baseline.iterations"), run_dir)


def _load_state(run_dir: Path, problem: Problem, cfg: dict[str, Any]) -> dict[str, Any] | None:
    """The last checkpoint of ``run_dir`` (``None`` when the kill came before the first), checked against
    the config: a resumed run continues the same run or refuses."""
    path = run_dir / "checkpoints" / "state.pt"
    if not path.is_file():
        return None
    state = load_checkpoint(path, ("format", "config", "stage", "iteration", "trainer", "metrics", "results"))
    if state["format"] != STATE_FORMAT:
        raise CheckpointError(f"{path} is not a supervised meta-learning checkpoint (format {state['format']!r})")
    try:
        saved = json.loads(state["config"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path} holds no readable config: start a new run") from exc
    # a run started by an earlier metadapt lacks the keys added since; their defaults are what it ran with
    saved = with_later_defaults(saved, "supervised") if isinstance(saved, dict) else saved
    _check_resume_edits(saved, json.loads(json.dumps(cfg)), state["stage"], int(state["iteration"]), run_dir)
    try:
        for name, result in state["results"].items():
            check_params(problem.model, result["params"], f"{path}'s {name} parameters")
        if state["trainer"] is not None:
            wide = state["stage"] == "pretrained" and problem.pretrain is not None
            stage_model = problem.pretrain.model if wide else problem.model  # type: ignore[union-attr]
            check_params(stage_model, state["trainer"]["params"], f"{path}'s parameters")
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise CheckpointError(str(exc)) from exc
    return state


def train(cfg: dict[str, Any], run_dir: Path, reporter: Reporter, resume: bool = False) -> Path:
    """Meta-train (and train the baseline), evaluate and report into ``run_dir``; returns ``model.pt``."""
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    check_memory(memory_needs(cfg), cfg["device"])
    problem = build_problem(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        dump_config(cfg, run_dir / "config.yaml")
    if cfg["model"]["checkpoint"]:
        meta_params, rates, baseline = load_supervised(cfg["model"]["checkpoint"], problem.model,
                                                       _expected(cfg, problem))
    else:
        meta_params, rates, baseline = _fit(cfg, problem, run_dir, reporter, resume)
    out = run_dir / "model.pt"
    save_atomic({"format": MODEL_FORMAT, "task": cfg["task"], "model": cfg["model"],
                 "meta": {"inner_frozen": cfg["meta"]["inner_frozen"]},
                 "params": _cpu(meta_params), "rates": _cpu(rates) if isinstance(rates, dict) else float(rates),
                 "baseline": _cpu(baseline) if baseline is not None else None}, out)
    summary = evaluate(cfg, problem, meta_params, rates, baseline, reporter)
    write_json(run_dir / "summary.json", summary)
    from metadapt.experiments.reporting.supervised_report import write_supervised_report

    write_supervised_report(run_dir, cfg, problem, meta_params, rates, baseline)
    return out


def _check_saved_keys(state: dict[str, Any], expect: dict[str, Any], path: Path) -> None:
    """Refuse a ``model.pt`` whose recorded config sections differ from ``expect`` (dotted keys)."""
    for dotted, want in expect.items():
        section, key = dotted.split(".", 1)
        saved = state.get(section) if isinstance(state.get(section), dict) else {}
        field = SUPERVISED_SCHEMA.get(section, {}).get(key)
        had = saved.get(key, field.default if field is not None else None)
        if had != want:
            raise CheckpointError(f"{path} was trained with {dotted}={had}, the config asks for {dotted}={want}")


def _expected(cfg: dict[str, Any], problem: Problem) -> dict[str, Any]:
    """What a ``model.checkpoint`` must have been trained with: the architecture and the frozen prefixes (its
    rates hold them, and the baseline's fine-tuning takes them from the config)."""
    return {**{f"model.{k}": cfg["model"][k] for k in problem.architecture},
            "meta.inner_frozen": cfg["meta"]["inner_frozen"]}


def _cpu(params: Params) -> Params:
    return {k: v.detach().cpu().clone() for k, v in params.items()}


def _fit(cfg: dict[str, Any], problem: Problem, run_dir: Path, reporter: Reporter,
         resume: bool) -> tuple[Params, Rates, Params | None]:
    device, seed = torch.device(cfg["device"]), cfg["seed"]
    stages = [name for name, _ in _stage_iterations(cfg)] + ["done"]
    totals = dict(_stage_iterations(cfg))
    state = _load_state(run_dir, problem, cfg) if resume else None
    rows: list[dict[str, Any]] = list(state["metrics"]) if state else []
    results: dict[str, tuple[Params, Rates]] = {}
    if state is not None:
        results = {k: (_to_device(v["params"], device), _rates_from(v["rates"], device))
                   for k, v in state["results"].items()}
    first = stages.index(state["stage"]) if state is not None else 0
    for index in range(first, len(stages) - 1):
        stage, total = stages[index], totals[stages[index]]
        trainer = _Trainer(problem, cfg, stage == "pretrained", device)
        gen = _generator(seed, TRAIN_STREAM + index)
        start = 0
        if state is not None and state["stage"] == stage:
            trainer.maml.load_state_dict(state["trainer"])
            gen.set_state(state["generator"])
            start = int(state["iteration"])
        reporter.start(stage, "meta-training" if stage == "meta" else "pretrained baseline", total)
        reporter.advance(stage, start)
        every, ckpt = cfg["train"]["log_every"], cfg["train"]["checkpoint_every"]
        running, count = 0.0, 0
        began = time.perf_counter()
        for it in range(start, total):
            loss = trainer.step(gen)
            if not math.isfinite(loss):
                raise MetadaptError(f"{stage} training diverged at iteration {it + 1} (loss {loss}): lower "
                                    f"{'baseline.lr' if stage == 'pretrained' else 'meta.outer_lr or meta.inner_lr'}")
            running, count = running + loss, count + 1
            if (it + 1) % every == 0 or it + 1 == total:
                rows.append({"stage": stage, "iteration": it + 1, "loss": running / count})
                reporter.advance(stage, count, loss=running / count)
                running, count = 0.0, 0
            if (it + 1) % ckpt == 0 and it + 1 < total:
                _save_state(run_dir, cfg, stage, it + 1, trainer.maml.state_dict(), gen, rows, results)
        results[stage] = trainer.result()
        _record_time(run_dir, stage, total - start, time.perf_counter() - began)
        # The next stage starts at its iteration 0 (or the run is done): a kill from here on resumes there.
        _save_state(run_dir, cfg, stages[index + 1], 0, None, None, rows, results)
        state = None
    baseline = results["pretrained"][0] if "pretrained" in results else None
    return results["meta"][0], results["meta"][1], baseline


def _record_time(run_dir: Path, stage: str, iterations: int, seconds: float) -> None:
    """Wall time of a stage in ``timing.json`` (apart from the results, which must not depend on it)."""
    path = run_dir / "timing.json"
    try:
        timing = json.loads(path.read_text()) if path.is_file() else {}
    except (ValueError, OSError):
        timing = {}  # a damaged record of wall times is not worth stopping a run for
    if not isinstance(timing, dict):
        timing = {}
    timing[stage] = {"iterations": iterations, "seconds": seconds, "threads": torch.get_num_threads()}
    write_json(path, timing)


def _detached(rates: Rates) -> Rates:
    return {k: v.detach() for k, v in rates.items()} if isinstance(rates, dict) else rates


def _to_device(params: Params, device: torch.device) -> Params:
    return {k: v.to(device) for k, v in params.items()}


def _rates_from(value: Any, device: torch.device | None = None) -> Rates:
    if isinstance(value, dict):
        return _to_device(value, device) if device is not None else value
    return float(value)


def _plain_rates(rates: Rates) -> Any:
    return _cpu(rates) if isinstance(rates, dict) else float(rates)


def _save_state(run_dir: Path, cfg: dict[str, Any], stage: str, iteration: int, trainer: dict[str, Any] | None,
                gen: torch.Generator | None, rows: list[dict[str, Any]],
                results: dict[str, tuple[Params, Rates]]) -> None:
    if trainer is not None:
        trainer = {**trainer, "params": _cpu(trainer["params"]), "rates": _plain_rates(trainer["rates"])}
    save_atomic({"format": STATE_FORMAT, "config": json.dumps(cfg, sort_keys=True), "stage": stage,
                 "iteration": iteration, "trainer": trainer,
                 "generator": gen.get_state() if gen is not None else None, "metrics": list(rows),
                 "results": {k: {"params": _cpu(p), "rates": _plain_rates(r)} for k, (p, r) in results.items()}},
                run_dir / "checkpoints" / "state.pt")
    _write_metrics(rows, run_dir / "metrics.csv")


def load_supervised(path: str | Path, model: FunctionalModel,
                    expect: dict[str, Any] | None = None) -> tuple[Params, Rates, Params | None]:
    """The meta-learned parameters, inner rates and baseline of a ``model.pt`` (or run directory), checked
    against ``model`` and refused (``CheckpointError``, one line naming the file) when any of them holds a NaN
    or an infinity: evaluating such a model gives no result, only ``null`` means. ``expect``: dotted config keys
    (``model.pool``, ``meta.inner_frozen``) whose values the file's own sections must hold too (a key an older
    file lacks is the schema's default)."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.pt"
    state = load_checkpoint(path, ("format", "params", "rates"))
    if state["format"] != MODEL_FORMAT:
        raise CheckpointError(f"{path} is not a supervised meta-learning model (format {state['format']!r})")
    try:
        for key, what in (("params", "parameters"), ("baseline", "baseline parameters")):
            if key == "baseline" and state.get(key) is None:
                continue
            if not isinstance(state[key], dict):  # a file may come from anyone: check its shape before use
                raise ValueError(f"{path}'s {what} are a {type(state[key]).__name__}, not a mapping of tensors")
            check_params(model, state[key], f"{path}'s {what}")
            check_finite(state[key], what, str(path))
        rates = _rates_from(state["rates"])
        if isinstance(rates, dict):
            if sorted(rates) != sorted(state["params"]):
                raise ValueError(f"{path}'s inner rates are not one per parameter tensor")
            check_finite(rates, "inner rates", str(path))
        elif not math.isfinite(rates):
            raise ValueError(f"{path}'s inner rate is {rates}, not a finite number")
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise CheckpointError(str(exc)) from exc
    _check_saved_keys(state, expect or {}, path)
    return state["params"], rates, state.get("baseline")


def memory_needs(cfg: dict[str, Any]) -> list[Need]:
    """The least memory a supervised run needs: the model, one adapted copy of it per task of a meta-batch and of
    an evaluation chunk, and for classification the first block's feature maps of every image in a batch."""
    t, m, e = cfg["task"], cfg["model"], cfg["eval"]
    meta_batch, chunk = cfg["meta"]["meta_batch"], e["batch"]
    needs: list[Need] = []
    if t["type"] == "omniglot":
        side, filters, ways = 28, m["filters"], t["ways"]
        params = 9 * (filters + 3 * filters * filters) + filters * ways
        image = FLOAT * filters * side * side  # one image's feature maps after the first convolution
        needs += [
            Need("one meta-batch's feature maps", "meta.meta_batch, task.ways, task.shots, task.query or model.filters",
                 2 * image * meta_batch * ways * (t["shots"] + t["query"])),
            Need("one evaluation chunk's feature maps", "eval.batch, task.ways, task.eval_query or model.filters",
                 image * chunk * ways * (t["shots"] + t["eval_query"])),
            Need("one baseline batch's feature maps", "baseline.batch_size or model.filters",
                 2 * image * cfg["baseline"]["batch_size"]),
        ]
    else:
        sizes = [1, *m["hidden"], 1]
        params = mlp_param_count(sizes)
        needs.append(Need("one evaluation chunk's activations", "eval.batch, task.eval_query or model.hidden",
                          FLOAT * chunk * t["eval_query"] * sum(sizes)))
    needs += [
        Need("the model with its gradients and Adam moments", "model.hidden or model.filters", 4 * FLOAT * params),
        Need("one adapted copy of the model per task of a meta-batch", "meta.meta_batch", FLOAT * params * meta_batch),
        Need("one adapted copy of the model per held-out task of a chunk", "eval.batch", FLOAT * params * chunk),
    ]
    return needs


def check(cfg: dict[str, Any]) -> None:
    """Everything ``train`` would refuse before training: memory, the device, the task family (built: its data is
    made on first use) and ``model.checkpoint`` (loaded and matched to the model)."""
    check_memory(memory_needs(cfg), cfg["device"])
    problem = build_problem(cfg)
    if cfg["model"]["checkpoint"]:
        load_supervised(cfg["model"]["checkpoint"], problem.model, _expected(cfg, problem))


def finetune_rates(cfg: dict[str, Any], baseline: Params) -> Rates:
    """The pretrained baseline's fine-tuning rate, ``baseline.finetune_lr`` (else MAML's inner rate), fine-tuning
    it the same way as MAML: the tensors MAML's inner loop leaves alone (``meta.inner_frozen``) stay as they are.
    One number without frozen prefixes, else one rate per tensor (shape ``()``, zero for the frozen ones)."""
    return freeze_rates(cfg["baseline"]["finetune_lr"] or cfg["meta"]["inner_lr"], baseline,
                        cfg["meta"]["inner_frozen"])


def evaluate(cfg: dict[str, Any], problem: Problem, params: Params, rates: Rates, baseline: Params | None,
             reporter: Reporter) -> dict[str, Any]:
    """Held-out tasks scored after each of ``eval.steps`` inner steps: ``{method: {steps: {mean, ci95}}}``.

    The held-out tasks are the same for every method (one generator, drawn once), and for a
    classification task they come from the held-out classes.
    """
    e, device = cfg["eval"], torch.device(cfg["device"])
    gen = _generator(cfg["seed"], EVAL_STREAM)
    stacked = bool(getattr(problem.model, "stacked", False))
    methods: dict[str, tuple[Params, Rates]] = {"maml": (params, rates)}
    if baseline is not None:
        methods["pretrained"] = (baseline, finetune_rates(cfg, baseline))
    # On the device once; every chunk of held-out tasks adapts from the same tensors.
    methods = {name: (_to_device(p, device), _to_device(r, device) if isinstance(r, dict) else r)
               for name, (p, r) in methods.items()}
    scores: dict[str, dict[int, list[torch.Tensor]]] = {m: {s: [] for s in e["steps"]} for m in methods}
    reporter.start("eval", "held-out tasks", e["tasks"])
    left = e["tasks"]
    while left > 0:
        tasks = problem.test.sample(min(e["batch"], left), gen, "test")
        for name, (p, r) in methods.items():
            for s, v in _scores(problem, p, r, tasks, e["steps"], stacked).items():
                scores[name][s].append(v.cpu())
        left -= tasks.num_tasks
        reporter.advance("eval", tasks.num_tasks)
    out: dict[str, Any] = {"metric": problem.metric, "tasks": e["tasks"], "methods": {}}
    for name, per in scores.items():
        out["methods"][name] = {}
        for s, chunks in per.items():
            out["methods"][name][str(s)] = summarize(torch.cat(chunks))
    if problem.extra is not None:
        out["methods"].update(problem.extra(_generator(cfg["seed"], EVAL_STREAM), e["tasks"], e["batch"]))
    return out


def summarize(values: torch.Tensor) -> dict[str, Any]:
    """Mean and 95% half-width of per-task scores; tasks whose score is not finite (an adaptation that
    diverged, e.g. learned one-step rates applied ten times) are counted, and then there is no mean: the
    summary stays strict JSON (``null``, never ``NaN``)."""
    finite = torch.isfinite(values)
    bad = int((~finite).sum())
    mean, half = mean_interval(values) if bad == 0 else (None, None)
    if half is not None and math.isnan(half):
        half = None
    return {"mean": mean, "ci95": half, "nonfinite": bad}


def _scores(problem: Problem, params: Params, rates: Rates, tasks: TaskBatch, steps: list[int],
            stacked: bool) -> dict[int, torch.Tensor]:
    return evaluate_adaptation(problem.model.loss, params, tasks, rates, steps, stacked, score_fn=problem.score)


def adapt_one(model: FunctionalModel, params: Params, support: Any, rates: Rates, steps: int) -> Params:
    """One task's parameters after ``steps`` inner steps (no outer graph)."""
    plain = {k: v.detach() for k, v in rates.items()} if isinstance(rates, dict) else rates
    with torch.no_grad():
        return inner_adapt(model.loss, {k: v.detach() for k, v in params.items()}, support, plain, steps,
                           first_order=True)


def report_run(run_dir: Path) -> Path:
    """Rewrite ``report.md`` of a finished run from its files (``metadapt report RUN_DIR``)."""
    from metadapt.experiments.configuration.config import load_config
    from metadapt.experiments.reporting.supervised_report import write_supervised_report

    cfg = load_config(run_dir / "config.yaml")
    if not (run_dir / "summary.json").is_file():
        raise MetadaptError(f"{run_dir} has no summary.json yet: finish the run with metadapt train --resume {run_dir}")
    problem = build_problem(cfg)
    params, rates, baseline = load_supervised(run_dir / "model.pt", problem.model)
    return write_supervised_report(run_dir, cfg, problem, params, rates, baseline)
