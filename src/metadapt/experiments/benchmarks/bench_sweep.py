"""``metadapt bench sweep``: the same sweep of equal runs with 1 and with 2 workers, side by side."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import yaml

from metadapt.experiments.jobs.sweep import load_sweep, run_sweep

ROOT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "mb_halfcheetah.yaml"  # the shipped configs
SMALL = {
    "train.iterations": 2, "train.steps_per_iteration": 300, "train.rollout_length": 150, "train.epochs": 5,
    "model.hidden": [64, 64], "planner.num_samples": 200, "planner.horizon": 5, "trial.steps": 200,
}


def bench_sweep(runs: int = 8, workers: tuple[int, ...] = (1, 2)) -> float:
    """Wall time of ``runs`` equal small runs (distinct seeds) per worker count; prints the speedup."""
    from metadapt.experiments.jobs.runner import preload

    preload()  # before timing, so that no case pays for the imports

    times = {}
    with tempfile.TemporaryDirectory() as tmp:
        spec = {"name": "bench", "set": SMALL, "grid": {"seed": list(range(runs))}}
        if ROOT_CONFIG.is_file():
            spec["base"] = str(ROOT_CONFIG)
        path = Path(tmp) / "bench.yaml"
        path.write_text(yaml.safe_dump(spec))
        for w in workers:
            sweep = load_sweep(path)
            start = time.perf_counter()
            results = run_sweep(sweep, Path(tmp) / f"w{w}", workers=w)
            times[w] = time.perf_counter() - start
            failed = sum(r["status"] != "done" for r in results)
            print(f"{w} worker(s): {times[w]:7.1f} s for {runs} runs ({failed} failed)", flush=True)
    speedup = times[workers[0]] / times[workers[-1]]
    print(f"sweep_speedup_{workers[-1]}_workers={speedup:.2f}")
    return speedup
