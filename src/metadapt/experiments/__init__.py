"""Entry-point jobs: configs, trials, training runs (the collect-and-fit loops), reports, benchmarks, sweeps."""
