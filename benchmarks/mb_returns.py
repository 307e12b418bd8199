"""MB-MPC on HalfCheetah: 1000-step returns of trained models with random shooting, CEM and MPPI.

Trains ``configs/mb_halfcheetah.yaml`` for each seed (36k steps) unless
``--runs`` names finished training runs, then runs one 1000-step trial per
planner and model and prints mean and standard deviation per planner.
Its last line is ``best_planner_mean_return=<x>``. Hours of CPU at paper scale:

    python benchmarks/mb_returns.py --seeds 0 1 2 --out runs/mb_returns
    python benchmarks/mb_returns.py --runs runs/bar/mb_s0 runs/bar/mb_s1 runs/bar/mb_s2 --out runs/mb_eval
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "mb_halfcheetah.yaml"
PLANNERS = {
    "rs": [],
    "cem": ["planner.num_samples=500", "planner.cem.iterations=5", "planner.cem.num_elites=50"],
    "mppi": ["planner.num_samples=500", "planner.mppi.iterations=5"],
}


def metadapt(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "metadapt.cli", *args, "--quiet"], check=True, env=os.environ.copy())


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--runs", nargs="*", help="finished training runs (skips training)")
    parser.add_argument("--planners", nargs="*", default=list(PLANNERS), choices=list(PLANNERS))
    parser.add_argument("--out", default="runs/mb_returns")
    args = parser.parse_args(argv)
    out = Path(args.out)
    runs = [Path(r) for r in args.runs] if args.runs else []
    if not runs:
        for seed in args.seeds:
            run = out / f"train_s{seed}"
            if not (run / "model.pt").is_file():
                metadapt("train", str(CONFIG), f"seed={seed}", "--out", str(run))
            runs.append(run)
    table: dict[str, list[float]] = {p: [] for p in args.planners}
    for run in runs:
        label = str(run)
        for planner in args.planners:
            dest = out / f"{run.name}_{planner}"
            if not (dest / "summary.json").is_file():
                metadapt("run", str(CONFIG), f"model.checkpoint={run}", f"planner.type={planner}",
                         *PLANNERS[planner], "--out", str(dest))
            ret = json.loads((dest / "summary.json").read_text())["mean_return"]
            table[planner].append(ret)
            print(f"{label:<28} {planner:<5} return={ret:8.1f}", flush=True)
    best = -np.inf
    print(f"{'planner':<8}{'mean':>10}{'std':>10}  returns")
    for planner, rets in table.items():
        mean, std = float(np.mean(rets)), float(np.std(rets))
        best = max(best, mean)
        print(f"{planner:<8}{mean:>10.1f}{std:>10.1f}  {', '.join(f'{r:.1f}' for r in rets)}")
    print(f"best_planner_mean_return={best:.1f}")
    return best


if __name__ == "__main__":
    main()
