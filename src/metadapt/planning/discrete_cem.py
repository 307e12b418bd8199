"""Cross-entropy method over discrete action sequences (Meta-GCG, seed 001, Appendix A).

The paper: "Each CEM round, we sample 500 sequences of random actions, score each
sequence with the sum of predicted rewards from the model, and use the top 10% of
actions to create the next multinomial distribution to sample actions from for the
next round of CEM. We use 4 rounds of CEM." The distribution is one categorical per
step of the horizon (``H x A`` probabilities), refit to the elites' per-step action
frequencies.

What the paper leaves open, decided here:

- The plan is the best sequence seen over all rounds, not the argmax of the final
  distribution. The objective is deterministic for one state and one set of model
  parameters, so the best-scored sequence is a real, evaluated optimum whose
  ``expected_return`` is an actual score; the per-step argmax of the final marginals
  can combine the modes of different elites into a sequence never scored (poor for a
  non-additive return), and after 4 rounds the distribution need not have collapsed.
  Tracking it costs nothing. (With a noisy objective the best seen is biased upward:
  the winner's curse.)
- Elites are the top ``num_elites`` by score (rank, never row position), ties broken
  towards the lower row; only finite scores qualify. A round with no finite score
  leaves the distribution as it was.
- If no sequence ever scored finite, the plan is the per-step mode of the final
  distribution with ``expected_return = -inf``.
"""

from __future__ import annotations

import torch

from metadapt.planning.base import PlanResult, WarmStart
from metadapt.types import Objective


class DiscreteWarmStart(WarmStart):
    """The previous plan's final ``H x A`` probabilities, shifted one step, as the next problem's start.

    The step shifted in at the end is uniform. ``probs()`` mixes the stored
    probabilities with uniform, ``warm_mix * shifted + (1 - warm_mix) * uniform``:
    a fully concentrated previous distribution would otherwise let the first round
    sample only the old plan. Call ``reset()`` at every episode start.
    """

    def __init__(self, horizon: int, num_actions: int, warm_mix: float = 0.5,
                 device: torch.device | str = "cpu") -> None:
        if not 0.0 <= warm_mix <= 1.0:
            raise ValueError(f"warm_mix must be in [0, 1], got {warm_mix}")
        super().__init__(horizon, torch.full((num_actions,), 1.0 / num_actions, device=device))
        self.num_actions, self.warm_mix = num_actions, warm_mix

    def probs(self) -> torch.Tensor:
        """``H x A`` starting probabilities: uniform, or the shifted previous ones mixed with uniform."""
        uniform = self.default.expand(self.horizon, -1)
        if self._mean is None:
            return uniform.clone()
        return self.warm_mix * self._mean + (1.0 - self.warm_mix) * uniform

    def mean(self) -> torch.Tensor:
        """``H x A``: the same as ``probs()`` (a categorical's mean one-hot is its probability vector)."""
        return self.probs()

    def update(self, sequence: torch.Tensor) -> None:
        """Store ``H x A`` probabilities shifted by one step (the new last step uniform)."""
        if tuple(sequence.shape) != (self.horizon, self.num_actions):
            raise ValueError(f"warm start: expected {self.horizon} x {self.num_actions} probabilities, "
                             f"got {tuple(sequence.shape)}")
        super().update(sequence.float())


class DiscreteCEM:
    """CEM with one categorical distribution per step over ``num_actions`` actions.

    Each of ``iterations`` rounds samples ``num_samples`` sequences (``N x H``
    int64) from the per-step categoricals, scores them with the objective
    (``N x H -> N``; NaN and inf count as ``-inf``, as in ``Planner.score``) and
    refits each step's categorical to the action frequencies of the elites:
    ``p <- smoothing * p + (1 - smoothing) * freq``, then
    ``p <- min_prob + (1 - num_actions * min_prob) * p`` so no action's
    probability falls below ``min_prob``. The plan is the best sequence seen
    (module docstring). Every random draw uses the planner's own generator.

    Args:
        num_actions: ``A``, actions ``0 .. A-1``.
        horizon: ``H``.
        num_samples: ``N``, sequences per round (the paper: 500).
        iterations: rounds (the paper: 4).
        elite_fraction: elites per round as a fraction of ``N`` (the paper: 0.1; at least one elite).
        smoothing: weight of the previous round's probabilities in the refit, in ``[0, 1)``.
        min_prob: probability floor of every action, in ``[0, 1/A)``.
        seed: seeds the planner's ``torch.Generator``.
        device: where sequences are sampled and handed to the objective.
        unique: score each distinct sequence once per round (``torch.unique`` over rows) and share
            its score with its duplicates. Free when the distribution has concentrated; the plan is
            the same as without it for an objective that scores each row on its own,
            deterministically and independently of the batch it comes in (a model whose float
            results depend on the batch size may differ in the last bits).
    """

    def __init__(
        self,
        num_actions: int,
        horizon: int,
        num_samples: int = 500,
        iterations: int = 4,
        elite_fraction: float = 0.1,
        smoothing: float = 0.0,
        min_prob: float = 0.0,
        seed: int = 0,
        device: torch.device | str = "cpu",
        unique: bool = True,
    ) -> None:
        if num_actions < 1:
            raise ValueError(f"num_actions must be >= 1, got {num_actions}")
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {iterations}")
        if not 0.0 < elite_fraction <= 1.0:
            raise ValueError(f"elite_fraction must be in (0, 1], got {elite_fraction}")
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
        if not 0.0 <= min_prob < 1.0 / num_actions:
            raise ValueError(f"min_prob must be in [0, 1/num_actions = {1.0 / num_actions:g}), got {min_prob}")
        self.num_actions, self.horizon, self.num_samples = int(num_actions), int(horizon), int(num_samples)
        self.iterations, self.elite_fraction = int(iterations), float(elite_fraction)
        self.num_elites = max(1, round(elite_fraction * num_samples))
        self.smoothing, self.min_prob, self.unique = float(smoothing), float(min_prob), bool(unique)
        self.device = torch.device(device)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)

    def seed(self, seed: int) -> None:
        """Reseed the planner's generator (the same seed replays the same draws)."""
        self.generator.manual_seed(seed)

    def make_warm_start(self, warm_mix: float = 0.5) -> DiscreteWarmStart:
        """A warm start for this planner's horizon and actions (uniform until the first plan)."""
        return DiscreteWarmStart(self.horizon, self.num_actions, warm_mix, self.device)

    def sample(self, probs: torch.Tensor) -> torch.Tensor:
        """``N x H`` int64 sequences, step ``t`` drawn from ``probs[t]`` (``H x A``)."""
        # One multinomial call draws N per row: H x N, transposed to sequences.
        return torch.multinomial(probs, self.num_samples, replacement=True, generator=self.generator).T.contiguous()

    def score(self, objective: Objective, sequences: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        """``(scores N, evaluated, nonfinite)`` of ``sequences`` (``N x H``), non-finite scores as ``-inf``.

        ``evaluated`` counts the rows handed to the objective (the distinct ones with ``unique``),
        ``nonfinite`` those among them whose score was NaN or inf.
        """
        rows, inverse = sequences, None
        if self.unique:
            rows, inverse = torch.unique(sequences, dim=0, return_inverse=True)
        scores = objective(rows)
        if tuple(scores.shape) != (rows.shape[0],):
            raise ValueError(f"objective returned shape {tuple(scores.shape)} for {rows.shape[0]} sequences, "
                             f"expected ({rows.shape[0]},)")
        scores = scores.float()
        bad = ~torch.isfinite(scores)
        nonfinite = int(bad.sum())
        if nonfinite:
            scores = scores.masked_fill(bad, float("-inf"))
        if inverse is not None:
            scores = scores[inverse]
        return scores, int(rows.shape[0]), nonfinite

    def elite_rows(self, scores: torch.Tensor) -> torch.Tensor:
        """Row indices of the elites, best first: the ``num_elites`` highest finite scores.

        A stable descending sort rather than ``torch.topk``: topk's order among equal
        scores is not specified, and elites must not depend on it.
        """
        order = torch.sort(scores, descending=True, stable=True).indices
        finite = int(torch.isfinite(scores).sum())  # -inf (every non-finite score) sorts last
        return order[: min(self.num_elites, finite)]

    def refit(self, probs: torch.Tensor, elites: torch.Tensor) -> torch.Tensor:
        """``H x A`` probabilities refit to ``elites`` (``E x H``), smoothed and floored."""
        freq = torch.nn.functional.one_hot(elites, self.num_actions).float().mean(0)
        new = self.smoothing * probs + (1.0 - self.smoothing) * freq
        if self.min_prob > 0:
            new = self.min_prob + (1.0 - self.num_actions * self.min_prob) * new
        return new

    def plan(self, objective: Objective, warm_start: WarmStart) -> PlanResult:
        """Solve one problem; updates ``warm_start`` with the final probabilities.

        ``objective`` maps ``N x H`` int64 sequences to ``N`` scores. The result's
        ``action`` is a 0-dim int64 tensor, ``sequence`` the ``H`` int64 plan,
        ``expected_return`` its score, ``evaluations`` the sequences handed to the
        objective and ``nonfinite`` those scored NaN or inf.
        """
        if not isinstance(warm_start, DiscreteWarmStart):
            raise TypeError("DiscreteCEM.plan needs a DiscreteWarmStart (planner.make_warm_start())")
        if (warm_start.horizon, warm_start.num_actions) != (self.horizon, self.num_actions):
            raise ValueError(f"warm start is {warm_start.horizon} x {warm_start.num_actions}, "
                             f"planner {self.horizon} x {self.num_actions}")
        probs = warm_start.probs().to(self.device)
        best_return, best = float("-inf"), None
        evaluations = nonfinite = 0
        for _ in range(self.iterations):
            sequences = self.sample(probs)
            scores, evaluated, bad = self.score(objective, sequences)
            evaluations, nonfinite = evaluations + evaluated, nonfinite + bad
            rows = self.elite_rows(scores)
            if rows.numel() == 0:  # nothing finite: nothing to learn from this round
                continue
            top = float(scores[rows[0]])
            if top > best_return:  # strict: among equal scores the earliest round's wins
                best_return, best = top, sequences[rows[0]].clone()
            probs = self.refit(probs, sequences[rows])
        if best is None:
            best = probs.argmax(1)
        warm_start.update(probs)
        return PlanResult(best[0].clone(), best, best_return, evaluations, nonfinite)
