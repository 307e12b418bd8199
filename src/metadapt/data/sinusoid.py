"""Sinusoid regression tasks of the MAML paper (Finn et al. 2017, Sec. 5.1).

A task is ``y = A sin(x - phi)`` with amplitude ``A ~ U[amp_low, amp_high]``
(0.1 to 5), phase ``phi ~ U[0, pi]`` and inputs ``x ~ U[-5, 5]``; the support
set holds ``K`` points, the query set ``query`` points of the same task.
The distribution has no splits: held-out tasks are fresh draws from a
generator that meta-training never uses.
"""

from __future__ import annotations

import math

import torch

from metadapt.types import TaskBatch


class SinusoidTasks:
    """Sampler of sinusoid regression tasks.

    Args:
        shots: ``K``, support points per task.
        query: query points per task.
        amplitude: ``(low, high)`` of the uniform amplitude.
        phase: ``(low, high)`` of the uniform phase.
        x_range: ``(low, high)`` of the uniform inputs.
        device: where the batches are made.
    """

    def __init__(self, shots: int = 10, query: int = 10, amplitude: tuple[float, float] = (0.1, 5.0),
                 phase: tuple[float, float] = (0.0, math.pi), x_range: tuple[float, float] = (-5.0, 5.0),
                 device: torch.device | str = "cpu") -> None:
        if shots < 1 or query < 1:
            raise ValueError(f"shots and query points must be >= 1, got {shots} and {query}")
        for name, (low, high) in (("amplitude", amplitude), ("phase", phase), ("x_range", x_range)):
            if not low <= high:
                raise ValueError(f"{name} needs low <= high, got ({low}, {high})")
        self.shots, self.query = int(shots), int(query)
        self.amplitude, self.phase, self.x_range = amplitude, phase, x_range
        self.device = torch.device(device)

    def _uniform(self, shape: tuple[int, ...], bounds: tuple[float, float], gen: torch.Generator) -> torch.Tensor:
        low, high = bounds
        return torch.rand(shape, generator=gen) * (high - low) + low

    def sample(self, num_tasks: int, generator: torch.Generator, split: str = "train") -> TaskBatch:
        """``num_tasks`` tasks: support ``(x, y)`` as ``B x K x 1``, query ``B x Q x 1``; ``info`` holds
        ``amplitude`` and ``phase`` (``B``). ``split`` is accepted for the sampler protocol; every split is
        the same distribution."""
        b = int(num_tasks)
        amp = self._uniform((b, 1, 1), self.amplitude, generator)
        phase = self._uniform((b, 1, 1), self.phase, generator)
        xs = self._uniform((b, self.shots, 1), self.x_range, generator)
        xq = self._uniform((b, self.query, 1), self.x_range, generator)
        d = self.device
        return TaskBatch(
            support=(xs.to(d), (amp * torch.sin(xs - phase)).to(d)),
            query=(xq.to(d), (amp * torch.sin(xq - phase)).to(d)),
            info={"amplitude": amp.flatten(), "phase": phase.flatten()},
        )

    @staticmethod
    def curve(amplitude: float, phase: float, x: torch.Tensor) -> torch.Tensor:
        """The true function of one task at ``x``."""
        return amplitude * torch.sin(x - phase)
