"""Errors that the command line reports as one line and exit code 2."""

from __future__ import annotations


class MetadaptError(Exception):
    """Bad user input: a config, a checkpoint, an environment id, an option."""


class ConfigError(MetadaptError):
    """A config key is unknown, has the wrong type or is out of range."""


class CheckpointError(MetadaptError):
    """A checkpoint or run directory is missing, corrupt or incompatible."""
