"""Raw transition storage, window sampling and normalization statistics."""

from metadapt.data.buffer import ReplayBuffer, Windows
from metadapt.data.normalizer import Normalizer

__all__ = ["Normalizer", "ReplayBuffer", "Windows"]
