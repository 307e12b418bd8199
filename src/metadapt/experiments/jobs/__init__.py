"""Which job trains, resumes and reports each system: one line per system.

Entries are ``module:function`` strings, imported on use, so a supervised run
never imports the simulators and a model-based run never imports the image data.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np

from metadapt.errors import CheckpointError, ConfigError
from metadapt.experiments.configuration.config import load_config, system_of
from metadapt.experiments.reporting.progress import Reporter

# system -> (train(cfg, run_dir, reporter, resume), report(run_dir) or None for the default report)
JOBS: dict[str, tuple[str, str | None]] = {
    "mbrl": ("metadapt.experiments.jobs.runner:train", None),
    "supervised": ("metadapt.experiments.jobs.supervised:train", "metadapt.experiments.jobs.supervised:report_run"),
    "rl": ("metadapt.experiments.jobs.rl:train", "metadapt.experiments.jobs.rl:report_run"),
    "gcg": ("metadapt.experiments.jobs.gcg:train", "metadapt.experiments.jobs.gcg:report_run"),
}


# system -> check(cfg): what ``metadapt check`` verifies beyond the schema without running anything (checkpoints,
# environments, memory). A system without an entry is checked by its schema alone.
CHECKS: dict[str, str] = {
    "mbrl": "metadapt.experiments.jobs.runner:check",
    "supervised": "metadapt.experiments.jobs.supervised:check",
    "rl": "metadapt.experiments.jobs.rl:check",
    "gcg": "metadapt.experiments.jobs.gcg:check",
}


def derive_seed(*parts: int) -> int:
    """An independent 31-bit seed for a tuple of integers (a run's seed, a stream, an iteration, ...): the same
    in every run, so a resumed job draws exactly what the uninterrupted one would have."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0] & 0x7FFFFFFF)


def _resolve(entry: str) -> Any:
    module, _, name = entry.partition(":")
    return getattr(importlib.import_module(module), name)


def train(cfg: dict[str, Any], run_dir: Path, reporter: Reporter, resume: bool = False, **options: Any) -> Any:
    """Run ``cfg``'s system's training job into ``run_dir`` (``options``: what that job takes, e.g. ``video``)."""
    return _resolve(JOBS[system_of(cfg)][0])(cfg, run_dir, reporter, resume=resume, **options)


def check(cfg: dict[str, Any]) -> None:
    """Refuse, as ``train`` or ``run`` would before starting, anything wrong with a resolved config."""
    entry = CHECKS.get(system_of(cfg))
    if entry is not None:
        _resolve(entry)(cfg)


def run_config(run_dir: Path) -> dict[str, Any]:
    """The resolved config of a run directory (one line naming the file when it has none or it is not valid)."""
    if not (run_dir / "config.yaml").is_file():
        raise CheckpointError(f"{run_dir} is not a training run directory (no config.yaml)")
    try:
        return load_config(run_dir / "config.yaml")
    except ConfigError as exc:
        where = str(run_dir / "config.yaml")
        raise ConfigError(str(exc) if where in str(exc) else f"{where}: {exc}") from None


def resume(run_dir: Path, reporter: Reporter) -> Any:
    """Continue a killed training run from its last checkpoint, with its own config.yaml."""
    return train(run_config(run_dir), run_dir, reporter, resume=True)


def report(run_dir: Path) -> Path | None:
    """Rewrite the report of a run of a system with its own report (``None``: the default report applies)."""
    if not (run_dir / "config.yaml").is_file():
        return None
    entry = JOBS[system_of(run_config(run_dir))][1]
    return _resolve(entry)(run_dir) if entry else None
