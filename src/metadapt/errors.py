"""Errors that the command line reports as one line and exit code 2, and the one place that shortens them."""

from __future__ import annotations

# An error line is read by a person: past this many characters it is cut (a value repeated by YAML aliases
# can make a message of hundreds of megabytes).
MESSAGE_LIMIT = 300


class MetadaptError(Exception):
    """Bad user input: a config, a checkpoint, an environment id, an option."""


class ConfigError(MetadaptError):
    """A config key is unknown, has the wrong type or is out of range."""


class CheckpointError(MetadaptError):
    """A checkpoint or run directory is missing, corrupt or incompatible."""


def one_line(text: object, limit: int = MESSAGE_LIMIT) -> str:
    """``text`` as one readable line: line breaks become spaces and anything past ``limit`` characters is
    cut, ending in ``...``. Every error line metadapt prints or records goes through here."""
    # Only the head is ever shown, so a huge message is cut before it is scanned.
    raw = str(text)[: limit * 4 + 1]
    flat = " ".join(raw.split())
    if len(flat) > limit or len(raw) > limit * 4:
        return flat[: limit - 3].rstrip() + "..."
    return flat
