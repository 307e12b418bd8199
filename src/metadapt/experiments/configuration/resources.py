"""Resources that cannot exist are refused before work starts.

A config can ask for tensors no machine holds (``planner.horizon=10**9``,
``model.hidden=[10**7]``, a buffer of ``10**12`` transitions): allocating them
fails deep inside PyTorch, or succeeds lazily and gets the process killed later.
Each system estimates the bytes of its largest tensors from the resolved config
(a lower bound: what must exist at once, not everything a run allocates) and
``check_memory`` refuses, in one line naming the keys, any estimate larger than
the machine's memory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from metadapt.errors import ConfigError

FLOAT = 4  # bytes of a float32
LONG = 8


@dataclass(frozen=True)
class Need:
    """The bytes one part of a run needs at least, and the config keys that size it."""

    what: str
    keys: str
    nbytes: int
    gpu: bool = True  # lives on the run's device (False: always host memory, e.g. the replay buffer)


def mlp_param_count(sizes: list[int]) -> int:
    """Weights and biases of an MLP through layer ``sizes`` (inputs first)."""
    return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:], strict=False))


def host_memory() -> int | None:
    """Bytes of physical memory of this machine (``None`` where the system does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def device_memory(device: str) -> int | None:
    """Bytes of memory of ``device`` (``cpu``: the machine's; ``cuda``: the first GPU's)."""
    if device != "cuda":
        return host_memory()
    import torch

    if not torch.cuda.is_available():
        return None  # refused elsewhere, in its own words
    return int(torch.cuda.get_device_properties(0).total_memory)


def _gib(n: int) -> str:
    return f"{n / 2**30:.3g} GiB" if n < 2**30 * 10**6 else f"{n / 2**30:.2e} GiB"


def check_memory(needs: list[Need], device: str) -> None:
    """Refuse in one line when the needs cannot fit in the memory of ``device`` (and of the host)."""
    if device == "cuda":
        groups = [("the GPU", device_memory("cuda"), [n for n in needs if n.gpu]),
                  ("this machine", host_memory(), [n for n in needs if not n.gpu])]
    else:
        groups = [("this machine", host_memory(), list(needs))]
    for where, have, parts in groups:
        if have is None or not parts:
            continue
        total = sum(n.nbytes for n in parts)
        if total > have:
            worst = max(parts, key=lambda n: n.nbytes)
            raise ConfigError(
                f"the config needs at least {_gib(total)} of memory, {where} has {_gib(have)}: {worst.what} alone "
                f"needs {_gib(worst.nbytes)} (lower {worst.keys})")
