"""Raw transition storage and window sampling."""

from metadapt.data.buffer import ReplayBuffer, Windows

__all__ = ["ReplayBuffer", "Windows"]
