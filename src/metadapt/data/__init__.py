"""Raw transition storage and window sampling (the replay buffer, the lifelong frame stream)."""

from metadapt.data.buffer import ReplayBuffer, Windows
from metadapt.data.stream import FrameStream

__all__ = ["FrameStream", "ReplayBuffer", "Windows"]
