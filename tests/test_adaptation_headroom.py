"""benchmarks/adaptation_headroom.py: more inner steps and an oracle around the prior's one step, on a tiny case."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from metadapt.meta.prior import load_prior

_spec = importlib.util.spec_from_file_location(
    "adaptation_headroom", Path(__file__).resolve().parents[1] / "benchmarks" / "adaptation_headroom.py")
assert _spec is not None and _spec.loader is not None
headroom = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(headroom)

ARGS = ["--env", "metadapt/HalfCheetahMalfunction-v0", "--task", "sign_negative", "--steps", "200",
        "--episode-length", "100", "--windows", "20", "--max-inner-steps", "2", "--oracle-steps", "400",
        "--oracle-epochs", "2"]


def test_headroom_reports_steps_oracle_and_the_learned_rates_per_actuator(capsys):
    assert headroom.main([*ARGS, "--prior", "builtin:halfcheetah_malfunction"]) == 0
    out = capsys.readouterr().out.splitlines()
    values = dict(line.split("=") for line in out[-2:])
    # Reversed motors are most of the prior's error: its own step and a fit on the task's data both remove some.
    assert float(values["grbal_reduction"]) > 0.3 and float(values["oracle_reduction"]) > 0
    assert any("inner step(s)" in line for line in out)
    rates = [line for line in out if line.startswith("learned rate")]
    assert len(rates) == 7 and any("bthigh" in line for line in rates)  # observations + 6 actuators


def test_a_missing_prior_is_one_line(capsys):
    assert headroom.main([*ARGS, "--prior", "/nonexistent/prior.pt"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "prior" in err[0]


def test_oracle_of_another_task_and_the_errors_per_dimension(capsys):
    """--oracle-task fits the oracle on another task's data; --per-dim prints prior, GrBAL and oracle per
    observation dimension, whose means are the rows above."""
    assert headroom.main([*ARGS, "--prior", "builtin:halfcheetah_malfunction", "--oracle-task", "normal",
                          "--per-dim"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert any("oracle (400 steps of normal)" in line for line in out)
    dims = [[float(v) for v in line.split()[1:]] for line in out if line.startswith("obs[")]
    assert len(dims) == 18 and all(len(d) == 3 for d in dims)
    rows = {"prior": "prior, not adapted", "GrBAL": "adapted, 1 inner step(s)", "oracle": "oracle (400 steps"}
    for col, start in enumerate(rows.values()):  # the shipped prior takes one inner step: GrBAL's row is 1 step
        line = next(line for line in out if line.startswith(start))
        value = float(line.split()[-1 if col == 0 else -2])
        assert abs(sum(d[col] for d in dims) / 18 - value) < 1e-3, (start, value)


@pytest.mark.parametrize("task", ["sideways", ""])
def test_an_unknown_oracle_task_is_one_line(capsys, task):
    """An empty --oracle-task is refused like any unknown one, not read as "the held-out task"."""
    assert headroom.main([*ARGS, "--prior", "builtin:halfcheetah_malfunction", "--oracle-task", task]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"unknown task '{task}'" in err[0]


@pytest.mark.parametrize("option", ["--oracle-steps", "--windows", "--max-inner-steps"])
def test_a_count_below_one_is_refused_by_name(capsys, option):
    with pytest.raises(SystemExit) as exc:
        headroom.main([*ARGS, "--prior", "builtin:halfcheetah_malfunction", option, "0"])
    assert exc.value.code == 2
    assert f"argument {option}: must be >= 1, got 0" in capsys.readouterr().err


def test_grbal_is_scored_with_the_priors_own_steps_beyond_max_inner_steps(capsys, tmp_path):
    """A two-step prior with --max-inner-steps 1: grbal_reduction is its two-step error, not the prior's."""
    import dataclasses

    from metadapt.meta.prior import load_prior, save_prior

    two = dataclasses.replace(load_prior("builtin:halfcheetah_malfunction"), inner_steps=2)
    save_prior(two, tmp_path / "prior.pt")
    assert headroom.main([*ARGS, "--max-inner-steps", "1", "--prior", str(tmp_path / "prior.pt")]) == 0
    out = capsys.readouterr().out.splitlines()
    base = float(next(line for line in out if line.startswith("prior, not adapted")).split()[-1])
    two_steps = float(next(line for line in out if line.startswith("adapted, 2 inner")).split()[-2])
    reduction = float(next(line for line in out if line.startswith("grbal_reduction=")).split("=")[1])
    assert reduction > 0.3 and abs(reduction - (1 - two_steps / base)) < 1e-3



def test_the_probes_neutral_extras_predict_as_the_model_does():
    """The family probes' forward with every extra at its neutral value is the model's own prediction."""
    prior = load_prior("builtin:halfcheetah_malfunction")
    gen = torch.Generator().manual_seed(0)
    obs, act = torch.randn(5, 18, generator=gen), torch.rand(5, 6, generator=gen) * 2 - 1
    torch.testing.assert_close(headroom.probe_delta(prior, prior.params, headroom.extras(prior), obs, act),
                               prior.model.predict_normalized_delta(prior.params, obs, act))


def test_a_family_fit_moves_that_family_only():
    prior = load_prior("builtin:halfcheetah_malfunction")
    gen = torch.Generator().manual_seed(0)
    obs = torch.randn(40, 18, generator=gen)
    data = (obs, torch.rand(40, 6, generator=gen) * 2 - 1, obs + 0.1 * torch.randn(40, 18, generator=gen))
    for keys in (["layers.0.bias"], ["film_gain.1", "film_shift.1"]):
        params, extra = headroom._fit_family(prior, prior.params, keys, data, 3, 1e-2, 0.1, None, gen)
        moved = {k for k, v in {**params, **extra}.items()
                 if not torch.equal(v, {**prior.params, **headroom.extras(prior)}[k])}
        assert moved == set(keys)


def test_families_print_one_row_each(capsys):
    """--families: a row per family (the shipped prior has no action gains); fitting everything on the task's
    data removes part of the prior's error."""
    assert headroom.main([*ARGS, "--windows", "3", "--prior", "builtin:halfcheetah_malfunction", "--families",
                          "--family-steps", "30"]) == 0
    out = capsys.readouterr().out.splitlines()
    start = next(i for i, line in enumerate(out) if line.startswith("family alone"))
    rows = {line[:30].strip(): [float(v.rstrip("%")) for v in line[30:].split()] for line in out[start + 1 : start + 7]}
    assert list(rows) == ["input gain + shift", "first layer's bias", "every bias", "hidden gain + shift (FiLM)",
                          "last layer", "everything"]
    assert all(len(v) == 4 for v in rows.values()) and rows["everything"][1] > 0
