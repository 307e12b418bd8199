"""benchmarks/crawler_falls.py: the first crawler's gear throws it on its back, the shipped one much less."""

from __future__ import annotations

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "crawler_falls", Path(__file__).resolve().parents[1] / "benchmarks" / "crawler_falls.py")
assert _spec is not None and _spec.loader is not None
falls = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(falls)


def test_gear_80_flips_the_crawler_under_random_actions_and_gear_30_does_not():
    strong = falls.on_back(80.0, "uniform", episodes=2, steps=200, hold=4, seed=0)
    shipped = falls.on_back(30.0, "uniform", episodes=2, steps=200, hold=4, seed=0)
    assert strong[0] > 0.2 and shipped == (0.0, 0.0)


def test_random_shooting_on_the_simulator_walks_the_crawler_forward():
    assert falls.perfect_model_mpc_speed(30.0, steps=12, samples=30) > 0.1


def test_report_ends_with_the_last_gears_fraction_and_bad_options_are_one_line(capsys):
    assert falls.main(["--gears", "30", "--episodes", "1", "--steps", "50"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1].startswith("on_back_fraction_bang=") and 0.0 <= float(out[-1].split("=")[1]) <= 1.0
    assert falls.main(["--gears", "0"]) == 2
    assert "--gears" in capsys.readouterr().err
