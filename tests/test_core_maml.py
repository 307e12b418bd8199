"""The meta-learning core: one inner adaptation for any loss, the MAML outer loop over task samplers,
and the first system on it (MAML on sinusoid regression) through the command line."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from killing import kill_when
from metadapt.data.sinusoid import SinusoidTasks
from metadapt.meta.inner import freeze_rates, init_rates, inner_adapt, inner_adapt_with_loss
from metadapt.meta.outer import MAML, evaluate_adaptation, maml_loss, maml_task_losses, mean_interval
from metadapt.models.base import FunctionalModel, check_params
from metadapt.models.regressor import MLPRegressor
from metadapt.types import TaskBatch

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "maml_sinusoid.yaml"


def _linear_loss(params, batch):
    """Least squares of a linear model: 0.5 * mean((X w - y)^2)."""
    x, y = batch
    return 0.5 * ((x @ params["w"] - y) ** 2).mean(dim=(-2, -1))


def _double(tasks: TaskBatch) -> TaskBatch:
    return TaskBatch(tuple(t.double() for t in tasks.support), tuple(t.double() for t in tasks.query))


def test_inner_step_matches_the_closed_form_gradient_for_every_rate_shape():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 3, generator=g, dtype=torch.float64), torch.randn(8, 1, generator=g, dtype=torch.float64)
    w = torch.randn(3, 1, generator=g, dtype=torch.float64)
    grad = x.T @ (x @ w - y) / 8  # d/dw of 0.5 * mean((Xw - y)^2)
    for rates in (0.1, init_rates({"w": w}, "tensor", 0.1), init_rates({"w": w}, "entry", 0.1)):
        out, start = inner_adapt_with_loss(_linear_loss, {"w": w}, (x, y), rates, steps=1)
        torch.testing.assert_close(out["w"], w - 0.1 * grad, rtol=0, atol=1e-14)
        assert float(start) == pytest.approx(float(_linear_loss({"w": w}, (x, y))))
    per_entry = {"w": torch.tensor([[0.1], [0.0], [0.3]], dtype=torch.float64)}
    out = inner_adapt(_linear_loss, {"w": w}, (x, y), per_entry, steps=1)
    torch.testing.assert_close(out["w"], w - per_entry["w"] * grad, rtol=0, atol=1e-14)
    two = inner_adapt(_linear_loss, {"w": w}, (x, y), 0.1, steps=2)
    w1 = w - 0.1 * grad
    torch.testing.assert_close(two["w"], w1 - 0.1 * x.T @ (x @ w1 - y) / 8, rtol=0, atol=1e-14)
    assert inner_adapt(_linear_loss, {"w": w}, (x, y), 0.1, steps=0)["w"] is w


def test_bad_rates_and_steps_are_refused():
    p = {"w": torch.zeros(2)}
    with pytest.raises(ValueError, match="must be > 0"):
        init_rates(p, "entry", 0.0)
    with pytest.raises(ValueError, match="mode"):
        init_rates(p, "layer", 0.1)
    with pytest.raises(ValueError, match=">= 0"):
        inner_adapt(_linear_loss, p, None, 0.1, steps=-1)
    with pytest.raises(ValueError, match="one number"):
        MAML(_linear_loss, p, 0.1, learn_rates=True)


def _per_task_reference(model, params, tasks, rate, steps, first_order):
    """MAML written the plain way: a Python loop over tasks, torch.autograd.grad with create_graph."""
    total = 0.0
    for b in range(tasks.num_tasks):
        fast = dict(params)
        support = tuple(t[b] for t in tasks.support)
        for _ in range(steps):
            grads = torch.autograd.grad(model.loss(fast, support), list(fast.values()), create_graph=not first_order)
            fast = {k: v - rate * g for (k, v), g in zip(fast.items(), grads, strict=True)}
        total = total + model.loss(fast, tuple(t[b] for t in tasks.query))
    return total / tasks.num_tasks


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("stacked", [True, False])
def test_outer_gradient_equals_a_plain_autograd_maml(first_order, stacked):
    model = MLPRegressor(1, 1, (16, 16))
    g = torch.Generator().manual_seed(1)
    params = {k: v.double().requires_grad_() for k, v in model.init_params(g).items()}
    tasks = _double(SinusoidTasks(5, 7).sample(4, g))
    ours = torch.autograd.grad(maml_loss(model.loss, params, tasks, 0.01, 2, first_order, stacked),
                               list(params.values()))
    ref = torch.autograd.grad(_per_task_reference(model, params, tasks, 0.01, 2, first_order), list(params.values()))
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    if first_order:  # and FOMAML is not MAML
        second = torch.autograd.grad(maml_loss(model.loss, params, tasks, 0.01, 2, False, stacked),
                                     list(params.values()))
        assert max(float((a - b).abs().max()) for a, b in zip(ours, second, strict=True)) > 1e-6


def test_frozen_tensors_keep_their_values_in_the_inner_loop_and_are_still_meta_learned():
    gen = torch.Generator().manual_seed(3)
    model = MLPRegressor(1, 1, [8, 8])
    params = model.init_params(gen)
    head = tuple(k for k in params if k.startswith("layers.2"))
    assert head  # the output layer is frozen below: the inner loop may adapt only the body
    rates = freeze_rates(0.1, params, ["layers.2"])
    assert {k: float(v) for k, v in rates.items()} == pytest.approx({k: 0.0 if k in head else 0.1 for k in params})
    assert freeze_rates(0.1, params, []) == 0.1
    tasks = SinusoidTasks(5, 5).sample(4, gen)
    fast = inner_adapt(model.loss, params, (tasks.support[0][0], tasks.support[1][0]), rates, steps=3)
    for k in params:
        assert torch.equal(fast[k], params[k]) == (k in head), k
    # Meta-SGD with a frozen head: the head's rates stay zero, the others are learned; the outer loop learns all
    maml = MAML(model.loss, params, init_rates(params, "entry", 0.1), learn_rates=True, frozen=["layers.2"])
    before = {k: v.detach().clone() for k, v in maml.params.items()}
    for _ in range(3):
        maml.step(tasks)
    for k in params:
        assert not torch.equal(maml.params[k], before[k]), k
        assert torch.equal(maml.rates[k], torch.zeros_like(params[k]) if k in head
                           else maml.rates[k]) and (k in head or not torch.all(maml.rates[k] == 0.1)), k
    with pytest.raises(ValueError, match="names no parameter"):
        freeze_rates(0.1, params, ["norm."])
    with pytest.raises(ValueError, match="leave no parameter"):
        freeze_rates(0.1, params, ["layers."])


def test_learned_rates_get_the_autograd_gradient():
    model = MLPRegressor(1, 1, (8,))
    g = torch.Generator().manual_seed(2)
    params = {k: v.double().requires_grad_() for k, v in model.init_params(g).items()}
    rates = {k: v.detach().requires_grad_() for k, v in init_rates(params, "entry", 0.05).items()}
    tasks = _double(SinusoidTasks(5, 5).sample(3, g))
    ours = torch.autograd.grad(maml_loss(model.loss, params, tasks, rates, 1, False, True), list(rates.values()))
    total = 0.0
    for b in range(3):
        s = tuple(t[b] for t in tasks.support)
        grads = torch.autograd.grad(model.loss(params, s), list(params.values()), create_graph=True)
        fast = {k: v - rates[k] * gr for (k, v), gr in zip(params.items(), grads, strict=True)}
        total = total + model.loss(fast, tuple(t[b] for t in tasks.query))
    ref = torch.autograd.grad(total / 3, list(rates.values()))
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_evaluation_reads_every_step_count_from_one_adaptation():
    model = MLPRegressor(1, 1, (16,))
    g = torch.Generator().manual_seed(3)
    params = model.init_params(g)
    tasks = SinusoidTasks(10, 20).sample(6, g)
    got = evaluate_adaptation(model.loss, params, tasks, 0.02, [3, 0, 1], stacked=True)
    assert sorted(got) == [0, 1, 3]
    for steps in (0, 1, 3):
        want = maml_task_losses(model.loss, params, tasks, 0.02, steps, True, stacked=True)
        torch.testing.assert_close(got[steps], want.detach(), rtol=1e-5, atol=1e-6)
    vmapped = evaluate_adaptation(model.loss, params, tasks, 0.02, [3], stacked=False)
    torch.testing.assert_close(vmapped[3], got[3], rtol=1e-5, atol=1e-6)


def test_maml_meta_training_beats_its_start_on_held_out_tasks():
    model = MLPRegressor(1, 1, (40, 40))
    g = torch.Generator().manual_seed(4)
    maml = MAML(model.loss, model.init_params(g), 0.01, stacked=True, outer_lr=1e-3)
    held_out = SinusoidTasks(10, 50).sample(100, torch.Generator().manual_seed(99))
    before = float(maml_loss(model.loss, maml.params, held_out, 0.01, 1, stacked=True).detach())
    sampler = SinusoidTasks(10, 10)
    for _ in range(1500):
        maml.step(sampler.sample(25, g))
    after = float(maml_loss(model.loss, maml.params, held_out, 0.01, 1, stacked=True).detach())
    assert after < 0.5 * before


def test_sinusoid_tasks_are_the_papers_and_reproducible():
    s = SinusoidTasks(5, 7)
    a, b = s.sample(50, torch.Generator().manual_seed(5)), s.sample(50, torch.Generator().manual_seed(5))
    assert a.support[0].shape == (50, 5, 1) and a.query[1].shape == (50, 7, 1)
    torch.testing.assert_close(a.support[1], b.support[1], rtol=0, atol=0)
    amp, phase = a.info["amplitude"], a.info["phase"]
    assert float(amp.min()) >= 0.1 and float(amp.max()) <= 5
    assert 0 <= float(phase.min()) <= float(phase.max()) <= math.pi
    x = a.query[0]
    torch.testing.assert_close(a.query[1], amp.view(-1, 1, 1) * torch.sin(x - phase.view(-1, 1, 1)))
    assert float(x.min()) >= -5 and float(x.max()) <= 5
    with pytest.raises(ValueError):
        SinusoidTasks(0, 5)


def test_models_follow_the_protocol_and_parameters_are_checked():
    model = MLPRegressor(1, 1, (4,))
    assert isinstance(model, FunctionalModel)
    params = model.init_params(torch.Generator().manual_seed(0))
    check_params(model, params)
    with pytest.raises(ValueError, match=r"layers\.0\.weight"):
        check_params(MLPRegressor(1, 1, (5,)), params)
    with pytest.raises(ValueError, match="missing"):
        check_params(MLPRegressor(1, 1, (4, 4)), params)


def test_mean_interval_is_the_normal_95_percent_half_width():
    v = torch.tensor([1.0, 2.0, 3.0, 4.0])
    mean, half = mean_interval(v)
    assert mean == 2.5 and half == pytest.approx(1.96 * float(v.std()) / 2)


# -- the command line ----------------------------------------------------------------------------

SMALL = ["meta.iterations=600", "eval.tasks=60", "eval.batch=25", "train.checkpoint_every=100",
         "train.log_every=50", "baseline.iterations=300", "seed=3"]


def _cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "metadapt.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_train_writes_a_run_directory_with_the_papers_comparison(tmp_path):
    out = tmp_path / "run"
    res = _cli("train", str(CONFIG), *SMALL, "--out", str(out), "--quiet")
    assert res.returncode == 0, res.stderr
    for name in ("config.yaml", "metrics.csv", "model.pt", "summary.json", "report.md", "fits.png", "training.png"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    maml, pre = summary["methods"]["maml"], summary["methods"]["pretrained"]
    assert set(maml) == {"0", "1", "10"} and summary["tasks"] == 60
    # 600 meta-iterations already adapt better in one step than the pretrained network in ten
    assert maml["1"]["mean"] < pre["10"]["mean"] and maml["10"]["mean"] < maml["1"]["mean"] < maml["0"]["mean"]
    report = (out / "report.md").read_text()
    assert "MAML (second order)" in report and "pretrained, fine-tuned" in report
    (out / "report.md").unlink()
    res = _cli("report", str(out))  # rewritten from the run's files
    assert res.returncode == 0 and (out / "report.md").read_text() == report, res.stderr
    # a model.pt evaluates again without training, with the same numbers
    again = tmp_path / "again"
    res = _cli("train", str(CONFIG), *SMALL, f"model.checkpoint={out}", "--out", str(again), "--quiet")
    assert res.returncode == 0, res.stderr
    assert json.loads((again / "summary.json").read_text()) == summary


def _assert_same_run(whole: Path, cut: Path) -> None:
    """The resumed run's parameters, baseline, training curve and held-out results are the whole run's, bit for bit."""
    a, b = torch.load(whole / "model.pt", weights_only=True), torch.load(cut / "model.pt", weights_only=True)
    for part in ("params", "baseline"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)
    assert (whole / "metrics.csv").read_text() == (cut / "metrics.csv").read_text()
    assert (whole / "summary.json").read_text() == (cut / "summary.json").read_text()


def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    args = [*SMALL, "meta.iterations=3000", "baseline.iterations=1000", "eval.tasks=20"]
    whole = tmp_path / "whole"
    assert _cli("train", str(CONFIG), *args, "--out", str(whole), "--quiet").returncode == 0
    cut = tmp_path / "cut"
    kill_when([sys.executable, "-m", "metadapt.cli", "train", str(CONFIG), *args, "--out", str(cut), "--quiet"],
              cut / "checkpoints" / "state.pt", lambda s: s["stage"] == "meta" and s["iteration"] >= 500)
    assert not (cut / "summary.json").exists()
    res = _cli("train", "--resume", str(cut), "--quiet")
    assert res.returncode == 0, res.stderr
    _assert_same_run(whole, cut)


def test_a_resumed_run_may_be_given_fewer_or_more_iterations_and_equals_a_run_started_with_them(tmp_path):
    """Any edit of config.yaml was refused on resume, so a long run could be neither shortened nor extended; the
    iteration counts of stages that have not finished (and evaluation settings) may now change."""
    args = [*SMALL, "baseline.iterations=200", "eval.tasks=20"]
    whole = tmp_path / "whole"
    assert _cli("train", str(CONFIG), *args, "meta.iterations=400", "--out", str(whole), "--quiet").returncode == 0
    cut = tmp_path / "cut"
    kill_when([sys.executable, "-m", "metadapt.cli", "train", str(CONFIG), *args, "meta.iterations=3000", "--out",
               str(cut), "--quiet"], cut / "checkpoints" / "state.pt",
              lambda s: s["stage"] == "meta" and s["iteration"] >= 300)
    config = cut / "config.yaml"
    started = config.read_text()
    assert "  iterations: 3000\n" in started
    config.write_text(started.replace("  iterations: 3000\n", "  iterations: 100\n"))  # already past it
    res = _cli("train", "--resume", str(cut), "--quiet")
    assert res.returncode == 2 and "meta stage for 100 iterations" in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    config.write_text(started.replace("  iterations: 3000\n", "  iterations: 400\n"))
    res = _cli("train", "--resume", str(cut), "--quiet")
    assert res.returncode == 0, res.stderr
    _assert_same_run(whole, cut)
    # Once the meta stage has finished, its count is part of the result: changing it is refused.
    config.write_text(started.replace("  iterations: 3000\n", "  iterations: 500\n"))
    res = _cli("train", "--resume", str(cut), "--quiet")
    assert res.returncode == 2 and "finished" in res.stderr, res.stderr


def test_a_run_checkpointed_before_keys_were_added_resumes_under_their_defaults(tmp_path):
    """A checkpoint's config lacks the keys later versions added (model.pool, model.norm_scale,
    meta.inner_frozen); resuming it was refused as an edit of those keys."""
    out = tmp_path / "run"
    assert _cli("train", str(CONFIG), *SMALL, "meta.iterations=200", "baseline.pretrained=false", "eval.tasks=5",
                "--out", str(out), "--quiet").returncode == 0
    expected = json.loads((out / "summary.json").read_text())
    path = out / "checkpoints" / "state.pt"
    state = torch.load(path, weights_only=True)
    older = json.loads(state["config"])
    for section, key in (("model", "pool"), ("model", "norm_scale"), ("meta", "inner_frozen")):
        del older[section][key]
    torch.save({**state, "config": json.dumps(older)}, path)
    (out / "summary.json").unlink()
    res = _cli("train", "--resume", str(out), "--quiet")
    assert res.returncode == 0, res.stderr
    assert json.loads((out / "summary.json").read_text()) == expected


def test_an_evaluated_checkpoint_must_have_frozen_what_the_config_freezes(tmp_path):
    out = tmp_path / "run"
    assert _cli("train", str(CONFIG), *SMALL, "meta.iterations=100", "baseline.pretrained=false", "eval.tasks=5",
                "meta.inner_frozen=[layers.2]", "--out", str(out), "--quiet").returncode == 0
    res = _cli("train", str(CONFIG), *SMALL, f"model.checkpoint={out}", "eval.tasks=5", "--out",
               str(tmp_path / "unfrozen"), "--quiet")
    assert res.returncode == 2 and "meta.inner_frozen=['layers.2'], the config asks for meta.inner_frozen=[]" \
        in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    res = _cli("train", str(CONFIG), *SMALL, f"model.checkpoint={out}", "eval.tasks=5", "meta.inner_frozen=[layers.2]",
               "--out", str(tmp_path / "same"), "--quiet")
    assert res.returncode == 0, res.stderr
    with pytest.raises(TypeError, match="not the string"):
        freeze_rates(0.1, {"w": torch.zeros(2)}, "w")


def test_a_kill_before_the_first_checkpoint_resumes_from_the_start(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    cfg = _cli("train", str(CONFIG), *SMALL, "meta.iterations=100", "baseline.pretrained=false", "eval.tasks=5",
               "--out", str(out), "--quiet")
    assert cfg.returncode == 0, cfg.stderr
    (out / "checkpoints" / "state.pt").unlink()
    (out / "summary.json").unlink()
    res = _cli("train", "--resume", str(out), "--quiet")
    assert res.returncode == 0, res.stderr
    assert (out / "summary.json").is_file()


@pytest.mark.parametrize("extra, message", [
    (["meta.inner_lr=0"], "meta.inner_lr"),
    (["meta.inner_lr=-0.1"], "meta.inner_lr"),
    (["task.type=mnist"], "task.type"),
    (["system=quantum"], "'system'"),
    (["task.data=/nonexistent"], "task.data"),
    (["train.checkpoint_every=130"], "train.checkpoint_every"),
    (["eval.steps=[-1]"], "eval.steps"),
    (["meta.inner_frozen=[norm.]"], "meta.inner_frozen"),  # the sinusoid network has no batch norm
    (["meta.inner_frozen=[layers.]"], "leave no parameter"),
    (["meta.inner_frozen=norm."], "meta.inner_frozen"),
])
def test_bad_supervised_config_is_one_line_and_exit_2(tmp_path, extra, message):
    res = _cli("train", str(CONFIG), *SMALL, *extra, "--out", str(tmp_path / "x"), "--quiet")
    assert res.returncode == 2 and message in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_checkpoint_of_another_architecture_and_an_edited_resume_are_refused(tmp_path):
    out = tmp_path / "run"
    assert _cli("train", str(CONFIG), *SMALL, "meta.iterations=100", "baseline.pretrained=false", "eval.tasks=5",
                "--out", str(out), "--quiet").returncode == 0
    res = _cli("train", str(CONFIG), *SMALL, "model.hidden=[20]", f"model.checkpoint={out / 'model.pt'}",
               "--out", str(tmp_path / "other"), "--quiet")
    assert res.returncode == 2 and "do not match the model" in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    # the same shapes under another activation is another network: refused, not evaluated (it was, before)
    res = _cli("train", str(CONFIG), *SMALL, "model.activation=tanh", f"model.checkpoint={out}",
               "--out", str(tmp_path / "tanh"), "--quiet")
    assert res.returncode == 2 and "model.activation=relu, the config asks for model.activation=tanh" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    res = _cli("train", str(CONFIG), *SMALL, f"model.checkpoint={tmp_path / 'none.pt'}", "--out",
               str(tmp_path / "o2"), "--quiet")
    assert res.returncode == 2 and "not found" in res.stderr
    text = (out / "config.yaml").read_text().replace("activation: relu", "activation: tanh")
    (out / "config.yaml").write_text(text)
    res = _cli("train", "--resume", str(out), "--quiet")
    assert res.returncode == 2 and "model.activation" in res.stderr, res.stderr


def test_bench_maml_times_every_variant_on_the_same_meta_gradient():
    pytest.importorskip("higher")
    from metadapt.experiments.benchmarks.bench_maml import bench_maml

    lines: list[str] = []
    out = bench_maml(repeats=1, iterations=2, meta_batch=4, shots=3, hidden=(8,), print_fn=lines.append)
    assert lines[-1].startswith("maml_speedup_vs_higher=") and out["maml_speedup_vs_higher"] > 0
    assert out["first_loss_spread"] < 1e-5  # metadapt, vmap, the loop and higher computed the same first loss


@pytest.mark.parametrize("make, extra, message", [
    (None, ["task.data=/nonexistent/omniglot"], "not found"),
    ("empty_background", [], "no alphabet folders"),
    ("no_evaluation", [], "images_evaluation"),
    (None, ["task.shots=15", "task.eval_query=10"], "15 + 10 > 20"),
])
def test_bad_dataset_folders_and_episode_sizes_are_one_line(tmp_path, make, extra, message):
    root = tmp_path / "omniglot"
    if make == "empty_background":
        (root / "images_background").mkdir(parents=True)
        (root / "images_evaluation").mkdir()
    elif make == "no_evaluation":
        char = root / "images_background" / "Alpha" / "character01"
        char.mkdir(parents=True)
        from PIL import Image

        for d in range(20):
            Image.new("L", (28, 28), 255).save(char / f"0001_{d:02d}.png")
    data = [f"task.data={root}"] if make else []
    res = _cli("train", str(ROOT / "configs" / "maml_omniglot.yaml"), *data, *extra, "--out", str(tmp_path / "x"),
               "--quiet")
    assert res.returncode == 2 and message in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert not (tmp_path / "x").exists()  # nothing written for a run that cannot start


@pytest.mark.parametrize("affine", [[], ["model.norm_scale=true", "meta.inner_frozen=[]", "model.pool=stride"]])
def test_classification_trains_from_the_command_line_with_its_baselines(tmp_path, affine):
    """The shipped network (the MAML code's batch norm, max-pooling), and the affine batch norm adapted whole on
    the strided network."""
    from metadapt.data.glyphs import generate_glyphs

    root = generate_glyphs(tmp_path / "glyphs", seed=0, alphabets=["Latin", "Greek_1", "Armenian", "Hebrew"],
                           background_alphabets=["Latin", "Greek_1"], max_characters=6, drawers=8)
    out = tmp_path / "run"
    res = _cli("train", str(ROOT / "configs" / "maml_omniglot.yaml"), f"task.data={root}", "model.filters=8",
               "meta.iterations=20", "baseline.iterations=20", "meta.meta_batch=4", "eval.tasks=12", "eval.batch=6",
               "task.eval_query=2", "train.checkpoint_every=10", "train.log_every=10", *affine, "--out", str(out),
               "--quiet")
    assert res.returncode == 0, res.stderr
    saved = torch.load(out / "model.pt", weights_only=True)
    assert ("norm.0.weight" in saved["params"]) == bool(affine)
    assert float(saved["params"]["norm.0.bias"].abs().max()) > 0  # meta-learned (moved from zero) either way
    if affine:  # one rate for every tensor: the shifts are adapted too
        assert float(saved["rates"]) == pytest.approx(0.4)
    else:  # the shipped network leaves the shifts out of the inner loop
        assert float(saved["rates"]["norm.0.bias"]) == 0
        assert float(saved["rates"]["conv.0.weight"]) == pytest.approx(0.4)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metric"] == "accuracy"
    assert set(summary["methods"]) == {"maml", "pretrained", "nearest_neighbour"}
    for per in summary["methods"].values():
        assert all(0.0 <= r["mean"] <= 1.0 for r in per.values())
    # the pretrained network's head is replaced by a zero one: before fine-tuning it guesses (1 / N)
    assert summary["methods"]["pretrained"]["0"]["mean"] == pytest.approx(0.2)
    assert "nearest neighbour" in (out / "report.md").read_text()
    # the other pooling has parameters of the same shapes: its checkpoint is refused, not evaluated
    other = ["model.norm_scale=true", "meta.inner_frozen=[]", "model.pool=max"] if affine else ["model.pool=stride"]
    res = _cli("train", str(ROOT / "configs" / "maml_omniglot.yaml"), f"task.data={root}", "model.filters=8",
               *other, f"model.checkpoint={out}", "--out", str(tmp_path / "other"), "--quiet")
    assert res.returncode == 2 and "model.pool" in res.stderr and len(res.stderr.strip().splitlines()) == 1, \
        res.stderr


def test_diverged_tasks_are_counted_and_the_summary_stays_strict_json():
    from metadapt.experiments.jobs.supervised import summarize

    out = summarize(torch.tensor([0.1, float("nan"), float("inf"), 0.3]))
    assert out == {"mean": None, "ci95": None, "nonfinite": 2}
    json.loads(json.dumps(out, allow_nan=False))
    ok = summarize(torch.tensor([0.1, 0.3]))
    assert ok["nonfinite"] == 0 and ok["mean"] == pytest.approx(0.2)


def test_the_dynamics_models_follow_the_agents_protocol():
    from metadapt.models.base import DynamicsModel
    from metadapt.models.mlp import MLPDynamics
    from metadapt.models.recurrent import RecurrentDynamics

    assert isinstance(MLPDynamics(3, 2, (8,)), DynamicsModel)
    assert isinstance(RecurrentDynamics(3, 2, (8,), 4).planning_model(), DynamicsModel)
    assert not isinstance(MLPRegressor(), DynamicsModel)  # a functional model, not a dynamics model
