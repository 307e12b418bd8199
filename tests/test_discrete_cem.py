"""DiscreteCEM against known answers: additive and prefix-matching objectives, ranks, seeds, the warm start."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from metadapt.planning import DiscreteCEM, DiscreteWarmStart
from metadapt.planning.discrete_cem import __file__ as DISCRETE_CEM_FILE


def additive(w: torch.Tensor):
    """``sum_t w[t, a_t]``: the optimum is the per-step argmax."""

    def objective(seqs: torch.Tensor) -> torch.Tensor:
        return w[torch.arange(w.shape[0]), seqs].sum(1)

    return objective


def random_weights(seed: int, horizon: int, actions: int = 4) -> torch.Tensor:
    return torch.randn(horizon, actions, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("seed", range(20))
def test_additive_objective_paper_settings_finds_the_optimum(seed):
    w = random_weights(seed, 5)
    planner = DiscreteCEM(4, 5, num_samples=500, iterations=4, seed=seed)
    result = planner.plan(additive(w), planner.make_warm_start())
    assert torch.equal(result.sequence, w.argmax(1))
    assert result.action.dim() == 0 and result.action.dtype == torch.long
    assert int(result.action) == int(w[0].argmax())
    assert result.expected_return == pytest.approx(float(w.max(1).values.sum()), abs=1e-5)
    assert result.nonfinite == 0 and 0 < result.evaluations <= 4 * 500


def test_additive_objective_horizon_8_with_200_samples_mostly_finds_the_optimum():
    # Measured over 5000 seeds (weights seed s, planner seed s): 35 misses, a 0.7% miss rate (95% interval
    # about 0.5-1.0%), every miss within 0.30 of the optimum (per-step gaps that small). With a miss rate of
    # 1%, 8 or more misses in 200 has probability about 0.001, so "at most 7" is a fair bound; seeds 0-199
    # miss twice.
    misses = 0
    for seed in range(200):
        w = random_weights(seed, 8)
        planner = DiscreteCEM(4, 8, num_samples=200, seed=seed)
        result = planner.plan(additive(w), planner.make_warm_start())
        optimum = float(w.max(1).values.sum())
        misses += not torch.equal(result.sequence, w.argmax(1))
        assert optimum - result.expected_return < 0.5
    assert misses <= 7


def test_non_additive_prefix_objective_is_solved():
    target = torch.tensor([3, 1, 0, 2, 2])

    def objective(seqs: torch.Tensor) -> torch.Tensor:
        # partial credit only for the matching prefix (a step counts once every earlier step matches), plus a
        # bonus for the exact sequence: not a sum over steps
        prefix = (seqs == target).long().cumprod(1).sum(1).float()
        return prefix + 5.0 * (prefix == len(target)).float()

    for seed in range(5):
        planner = DiscreteCEM(4, 5, seed=seed)
        result = planner.plan(objective, planner.make_warm_start())
        assert torch.equal(result.sequence, target)
        assert result.expected_return == 10.0


def test_nonfinite_scores_never_become_the_plan():
    w = random_weights(0, 5)
    optimum = w.argmax(1)
    inner = additive(w)

    def objective(seqs: torch.Tensor) -> torch.Tensor:
        scores = inner(seqs)
        # +inf is not a win: a quarter of round 1's rows score it, and none may become the plan
        scores = torch.where(seqs[:, 0] == (optimum[0] + 1) % 4, torch.tensor(float("inf")), scores)
        return torch.where(seqs[:, 1] == optimum[1], torch.tensor(float("nan")), scores)

    planner = DiscreteCEM(4, 5, unique=False, seed=0)
    result = planner.plan(objective, planner.make_warm_start())
    assert result.nonfinite > 0
    assert int(result.sequence[1]) != int(optimum[1])
    assert result.expected_return == pytest.approx(float(inner(result.sequence[None])[0]))
    # the best finite sequence: the optimum at every step but the forbidden one, which takes its runner-up
    runner_up = w[1].clone()
    runner_up[optimum[1]] = -float("inf")
    best = optimum.clone()
    best[1] = runner_up.argmax()
    assert torch.equal(result.sequence, best)


def test_all_nonfinite_gives_the_mode_with_minus_infinity():
    planner = DiscreteCEM(4, 3, num_samples=50, iterations=2, unique=False)
    result = planner.plan(lambda seqs: torch.full((seqs.shape[0],), float("nan")), planner.make_warm_start())
    assert result.expected_return == float("-inf")
    assert result.nonfinite == result.evaluations == 100
    assert torch.equal(result.sequence, torch.zeros(3, dtype=torch.long))  # uniform: argmax is the first action


def test_same_seed_same_plan_and_different_seeds_differ():
    def flat(seqs: torch.Tensor) -> torch.Tensor:  # every sequence ties: the plan is whatever was drawn first
        return torch.zeros(seqs.shape[0])

    def plan(seed: int) -> torch.Tensor:
        planner = DiscreteCEM(4, 5, num_samples=100, seed=seed)
        return planner.plan(flat, planner.make_warm_start()).sequence

    assert torch.equal(plan(3), plan(3))
    assert len({tuple(plan(s).tolist()) for s in range(8)}) > 1
    planner = DiscreteCEM(4, 5, num_samples=100, seed=3)
    planner.plan(flat, planner.make_warm_start())
    planner.seed(3)  # reseeding replays the draws
    assert torch.equal(planner.plan(flat, planner.make_warm_start()).sequence, plan(3))


def test_elites_are_chosen_by_rank_not_by_row_position():
    rounds: list[torch.Tensor] = []

    def last_rows_best(seqs: torch.Tensor) -> torch.Tensor:
        rounds.append(seqs.clone())
        return torch.arange(seqs.shape[0], dtype=torch.float32)  # the last row scores highest

    planner = DiscreteCEM(4, 5, num_samples=200, iterations=2, unique=False, seed=1)
    result = planner.plan(last_rows_best, planner.make_warm_start())
    assert planner.num_elites == 20
    assert torch.equal(result.sequence, rounds[0][-1])  # best of round 1; round 2's equal best does not replace it
    assert result.expected_return == 199.0
    elites = rounds[0][-20:]
    for t in range(5):  # round 2 draws only actions the elites (the last 20 rows) took at that step
        assert set(rounds[1][:, t].tolist()) <= set(elites[:, t].tolist())


def test_ties_break_towards_the_earlier_row():
    planner = DiscreteCEM(4, 2, num_samples=10, iterations=1, elite_fraction=0.2)
    scores = torch.tensor([0.0, 5.0, 1.0, 5.0, 5.0, float("-inf"), 2.0, 5.0, 0.0, 0.0])
    assert planner.elite_rows(scores).tolist() == [1, 3]
    assert planner.elite_rows(torch.full((10,), float("-inf"))).numel() == 0


@pytest.mark.parametrize("seed", range(3))
def test_unique_scores_the_same_plan_with_fewer_evaluations(seed):
    w = random_weights(seed, 5)
    results, warm = [], []
    for unique in (True, False):
        planner = DiscreteCEM(4, 5, seed=seed, unique=unique)
        ws = planner.make_warm_start()
        results.append(planner.plan(additive(w), ws))
        warm.append(ws.probs())
    with_unique, without = results
    assert torch.equal(with_unique.sequence, without.sequence)
    assert with_unique.expected_return == without.expected_return
    assert torch.equal(warm[0], warm[1])
    assert without.evaluations == 4 * 500 and with_unique.evaluations < without.evaluations


def test_refit_smoothing_and_floor():
    planner = DiscreteCEM(4, 1, smoothing=0.5, min_prob=0.05)
    probs = torch.full((1, 4), 0.25)
    new = planner.refit(probs, torch.zeros(10, 1, dtype=torch.long))  # every elite took action 0
    expected = 0.05 + 0.8 * (0.5 * probs + 0.5 * torch.tensor([[1.0, 0, 0, 0]]))
    torch.testing.assert_close(new, expected)
    assert float(new.min()) >= 0.05 and float(new.sum()) == pytest.approx(1.0)


def test_warm_start_shifts_and_mixes_with_uniform():
    ws = DiscreteWarmStart(3, 4, warm_mix=0.5)
    assert not ws.active and torch.equal(ws.probs(), torch.full((3, 4), 0.25))
    onehot = torch.eye(4)[torch.tensor([0, 1, 2])]
    ws.update(onehot)
    shifted = torch.stack([torch.eye(4)[1], torch.eye(4)[2], torch.full((4,), 0.25)])
    torch.testing.assert_close(ws.probs(), 0.5 * shifted + 0.5 * 0.25)
    ws.reset()
    assert torch.equal(ws.probs(), torch.full((3, 4), 0.25))
    with pytest.raises(ValueError, match="3 x 4"):
        ws.update(torch.ones(2, 4))


def test_plan_updates_the_warm_start_with_the_shifted_final_probabilities():
    w = random_weights(0, 5) * 10  # well separated: the final distribution is one-hot on the optimum
    planner = DiscreteCEM(4, 5, seed=0)
    ws = planner.make_warm_start(warm_mix=1.0)
    result = planner.plan(additive(w), ws)
    expected = torch.cat([torch.eye(4)[result.sequence[1:]], torch.full((1, 4), 0.25)])
    torch.testing.assert_close(ws.probs(), expected)
    # the next problem, one step later, starts from the shifted plan and keeps it
    shifted_w = torch.cat([w[1:], torch.zeros(1, 4)])
    again = planner.plan(additive(shifted_w), ws)
    assert torch.equal(again.sequence[:4], result.sequence[1:])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_actions": 0}, "num_actions"),
        ({"horizon": 0}, "horizon"),
        ({"num_samples": 0}, "num_samples"),
        ({"iterations": 0}, "iterations"),
        ({"elite_fraction": 0.0}, "elite_fraction"),
        ({"elite_fraction": 1.5}, "elite_fraction"),
        ({"smoothing": 1.0}, "smoothing"),
        ({"smoothing": -0.1}, "smoothing"),
        ({"min_prob": 0.25}, "min_prob"),
        ({"min_prob": -0.01}, "min_prob"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DiscreteCEM(**{"num_actions": 4, "horizon": 5, **kwargs})


def test_bad_warm_start_and_objective_shape_raise():
    planner = DiscreteCEM(4, 5, num_samples=20)
    with pytest.raises(ValueError, match="warm_mix"):
        planner.make_warm_start(warm_mix=1.5)
    with pytest.raises(ValueError, match="warm start"):
        planner.plan(additive(random_weights(0, 5)), DiscreteWarmStart(4, 4))
    with pytest.raises(ValueError, match="objective returned shape"):
        planner.plan(lambda seqs: torch.zeros(seqs.shape[0], 1), planner.make_warm_start())


def test_no_model_imports():
    tree = ast.parse(Path(DISCRETE_CEM_FILE).read_text())
    modules = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    modules += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not any("models" in m for m in modules), modules
