"""Planner speed vs. the matrix-product peak, measured side by side in one run.

    python benchmarks/planner.py [--dtype bfloat16]      (same as `metadapt bench planner`)

The last line is ``planner_fraction_of_matmul_peak=<x>``: random shooting's
achieved FLOP rate over that of a plain ``N x 500 @ 500 x 500`` product.
"""

from __future__ import annotations

import sys

from metadapt.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "planner", *sys.argv[1:]]))
