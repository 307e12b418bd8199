"""The custom-environment example runs end to end and beats random actions."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def test_custom_env_example(tmp_path):
    spec = importlib.util.spec_from_file_location("custom_env", ROOT / "examples" / "custom_env.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    steps = 100
    agent_return = mod.main(str(tmp_path / "run"), iterations=2, trial_steps=steps)

    env = mod.PointMass()
    env.action_space.seed(1)
    env.reset(seed=1)
    random_return = sum(env.step(env.action_space.sample())[1] for _ in range(steps))
    assert np.isfinite(agent_return)
    assert agent_return > random_return + 0.3 * abs(random_return)
    assert (tmp_path / "run" / "trial" / "metrics.csv").is_file()
