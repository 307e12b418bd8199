"""benchmarks/adaptation_headroom.py: more inner steps and an oracle around the prior's one step, on a tiny case."""

from __future__ import annotations

import importlib.util
from pathlib import Path

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
