"""Entry-point jobs: configs, trials, training runs, reports, benchmarks."""
