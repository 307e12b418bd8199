"""MAML-RL's parts against known answers: policies, returns, the baseline, the meta-gradient, CG and TRPO."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.distributions import Categorical, Normal, kl_divergence

from metadapt.models.policy import CategoricalMLPPolicy, GaussianMLPPolicy
from metadapt.rl.maml_rl import MAMLRL, MAMLRLSettings, Rollouts, pg_loss
from metadapt.rl.returns import (
    LinearFeatureBaseline,
    discounted_returns,
    gae,
    linear_features,
    normalize_per_task,
)
from metadapt.rl.sampler import Episodes
from metadapt.rl.trpo import conjugate_gradient, flat, trpo_step

B, E, H, O, A = 2, 3, 5, 3, 2


def _double(params):
    return {k: v.double() for k, v in params.items()}


def _episodes(gen, dtype=torch.float64, early=True):
    obs = torch.randn(B, E, H, O, generator=gen, dtype=dtype)
    act = torch.randn(B, E, H, A, generator=gen, dtype=dtype)
    reward = torch.randn(B, E, H, generator=gen, dtype=dtype)
    mask = torch.ones(B, E, H, dtype=dtype)
    if early:
        mask[0, 1, 3:] = 0  # one episode ended after 3 steps
    return Episodes(obs, act, reward * mask, mask, [{}] * B)


def test_gaussian_policy_matches_torch_distributions():
    gen = torch.Generator().manual_seed(0)
    pol = GaussianMLPPolicy(O, A, hidden=(8,), init_std=0.7)
    p, q = pol.init_params(gen), pol.init_params(gen)
    q["log_std"] = torch.tensor([0.1, -0.3])
    obs, act = torch.randn(7, O, generator=gen), torch.randn(7, A, generator=gen)
    dist = Normal(pol.mode(p, obs), p["log_std"].exp())
    torch.testing.assert_close(pol.log_prob(p, obs, act), dist.log_prob(act).sum(-1))
    torch.testing.assert_close(pol.entropy(p, obs), dist.entropy().sum(-1))
    other = Normal(pol.mode(q, obs), q["log_std"].exp())
    torch.testing.assert_close(pol.kl(p, q, obs), kl_divergence(dist, other).sum(-1))
    assert torch.allclose(p["log_std"].exp(), torch.full((A,), 0.7))


def test_categorical_policy_matches_torch_distributions():
    gen = torch.Generator().manual_seed(1)
    pol = CategoricalMLPPolicy(O, 4, hidden=(8,))
    p, q = pol.init_params(gen), pol.init_params(gen)
    obs = torch.randn(6, O, generator=gen)
    act = pol.sample(p, obs, gen)
    d0, d1 = Categorical(logits=pol._out(p, obs)), Categorical(logits=pol._out(q, obs))
    torch.testing.assert_close(pol.log_prob(p, obs, act), d0.log_prob(act))
    torch.testing.assert_close(pol.kl(p, q, obs), kl_divergence(d0, d1))
    torch.testing.assert_close(pol.entropy(p, obs), d0.entropy())


def test_stacked_policy_equals_one_policy_per_task():
    gen = torch.Generator().manual_seed(2)
    pol = GaussianMLPPolicy(O, A, hidden=(8, 8))
    ps = [pol.init_params(gen) for _ in range(B)]
    stacked = {k: torch.stack([p[k] for p in ps]) for k in ps[0]}
    ep = _episodes(gen, torch.float32)
    lp = pol.log_prob(stacked, ep.obs, ep.act)
    for b in range(B):
        torch.testing.assert_close(lp[b], pol.log_prob(ps[b], ep.obs[b], ep.act[b]))


def test_discounted_returns_and_gae_have_their_closed_forms():
    gen = torch.Generator().manual_seed(3)
    ep = _episodes(gen)
    gamma = 0.9
    ret = discounted_returns(ep.reward, ep.mask, gamma)
    r, m = ep.reward[0, 1], ep.mask[0, 1]
    expect = [sum(gamma ** (k - t) * float(r[k] * m[k]) for k in range(t, H)) * float(m[t]) for t in range(H)]
    torch.testing.assert_close(ret[0, 1], torch.tensor(expect, dtype=torch.float64))
    values = torch.randn(B, E, H, generator=gen, dtype=torch.float64)
    # lambda = 1: GAE is the return minus the value
    torch.testing.assert_close(gae(ep.reward, values, ep.mask, gamma, 1.0), (ret - values) * ep.mask)
    # lambda = 0: the one-step TD error, with V = 0 after an episode's last step
    td = gae(ep.reward, values, ep.mask, gamma, 0.0)
    v_next = torch.cat([values[..., 1:] * ep.mask[..., 1:], torch.zeros_like(values[..., :1])], -1)
    torch.testing.assert_close(td, (ep.reward + gamma * v_next - values) * ep.mask)


def test_linear_baseline_is_the_least_squares_fit():
    gen = torch.Generator().manual_seed(4)
    ep = _episodes(gen)
    ret = discounted_returns(ep.reward, ep.mask, 0.99)
    base = LinearFeatureBaseline(reg_coeff=1e-5)
    w = base.fit(ep.obs, ret, ep.mask)
    feats = linear_features(ep.obs, ep.mask)
    for b in range(B):
        x = feats[b].reshape(-1, feats.shape[-1]).numpy()
        y = (ret[b] * ep.mask[b]).reshape(-1).numpy()
        ridge = np.linalg.solve(x.T @ x + 1e-5 * np.eye(x.shape[1]), x.T @ y)
        np.testing.assert_allclose(w[b].numpy(), ridge, rtol=1e-6, atol=1e-8)
    pred = base.predict(ep.obs, ep.mask)
    assert pred.shape == (B, E, H) and torch.all(pred[ep.mask == 0] == 0)


def test_a_task_whose_baseline_fit_is_not_finite_leaves_the_other_tasks_fits_alone():
    """A NaN return in one task raised the regularisation of every task's fit (the others' baselines, and so
    their advantages, changed); now only that task is refitted with more regularisation."""
    gen = torch.Generator().manual_seed(4)
    ep = _episodes(gen)
    ret = discounted_returns(ep.reward, ep.mask, 0.99)
    clean = LinearFeatureBaseline(reg_coeff=1e-5).fit(ep.obs, ret, ep.mask)
    ret[1, 0, 0] = float("nan")
    w = LinearFeatureBaseline(reg_coeff=1e-5).fit(ep.obs, ret, ep.mask)
    assert not torch.isfinite(w[1]).all()
    keep = [b for b in range(B) if b != 1]
    torch.testing.assert_close(w[keep], clean[keep], rtol=0, atol=0)


def test_normalized_advantages_have_zero_mean_and_unit_variance_per_task():
    gen = torch.Generator().manual_seed(5)
    ep = _episodes(gen)
    adv = normalize_per_task(ep.reward * 3 + 1, ep.mask)
    for b in range(B):
        valid = adv[b][ep.mask[b] > 0]
        assert abs(float(valid.mean())) < 1e-9 and abs(float(valid.std(unbiased=False)) - 1) < 1e-6


@pytest.mark.parametrize("first_order", [False, True])
def test_meta_gradient_through_a_policy_gradient_step_equals_plain_autograd(first_order):
    """float64: the outer surrogate's gradient through the stacked inner step equals a per-task loop."""
    gen = torch.Generator().manual_seed(6)
    pol = GaussianMLPPolicy(O, A, hidden=(6, 6))
    theta = _double(pol.init_params(gen))
    pre, post = _episodes(gen), _episodes(gen)
    adv_pre = torch.randn(B, E, H, generator=gen, dtype=torch.float64) * pre.mask
    adv_post = torch.randn(B, E, H, generator=gen, dtype=torch.float64) * post.mask
    alpha = 0.3
    learner = MAMLRL(pol, theta, MAMLRLSettings(inner_lr=alpha, first_order=first_order))
    learner.params = {k: v.detach().clone().requires_grad_(True) for k, v in theta.items()}
    with torch.no_grad():
        sampled = learner.adapt_step({k: v.detach() for k, v in theta.items()}, pre, adv_pre, True)
    rollouts = Rollouts([pre], [adv_pre], post, adv_post, {k: v.detach() for k, v in sampled.items()})
    loss, _ = learner.surrogate(rollouts)
    got = torch.autograd.grad(loss, list(learner.params.values()))

    leaf = {k: v.detach().clone().requires_grad_(True) for k, v in theta.items()}
    inner = pg_loss(pol)
    total = 0.0
    for b in range(B):
        lb = inner(leaf, (pre.obs[b:b + 1], pre.act[b:b + 1], adv_pre[b:b + 1], pre.mask[b:b + 1]))
        grads = torch.autograd.grad(lb.sum(), list(leaf.values()), create_graph=not first_order)
        grads = [g.detach() if first_order else g for g in grads]
        adapted = {k: v - alpha * g for (k, v), g in zip(leaf.items(), grads, strict=True)}
        lp = pol.log_prob(adapted, post.obs[b], post.act[b])
        old = pol.log_prob({k: v[b] for k, v in rollouts.sampled_with.items()}, post.obs[b], post.act[b])
        m = post.mask[b]
        total = total - (torch.exp(lp - old) * adv_post[b] * m).sum() / m.sum()
    want = torch.autograd.grad(total / B, list(leaf.values()))
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-12)


def test_conjugate_gradient_equals_the_dense_solve_of_a_policy_fisher_matrix():
    gen = torch.Generator().manual_seed(7)
    pol = GaussianMLPPolicy(2, 1, hidden=(3,))
    p = {k: v.double().requires_grad_(True) for k, v in pol.init_params(gen).items()}
    obs = torch.randn(50, 2, generator=gen, dtype=torch.float64)
    fixed = {k: v.detach() for k, v in p.items()}
    params = list(p.values())
    kl = pol.kl(fixed, p, obs).mean()
    g = flat(torch.autograd.grad(kl, params, create_graph=True))
    n = g.numel()
    fisher = torch.stack([flat(torch.autograd.grad(g[i], params, retain_graph=True)) for i in range(n)])
    fisher = fisher + 1e-3 * torch.eye(n, dtype=torch.float64)
    b = torch.randn(n, generator=gen, dtype=torch.float64)
    x = conjugate_gradient(lambda v: fisher @ v, b, iterations=4 * n, residual_tol=1e-24)
    torch.testing.assert_close(x, torch.linalg.solve(fisher, b), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("max_kl", [0.001, 0.01])
def test_a_trpo_step_improves_the_surrogate_within_the_kl_bound(max_kl):
    gen = torch.Generator().manual_seed(8)
    pol = GaussianMLPPolicy(O, A, hidden=(8,))
    p = {k: v.requires_grad_(True) for k, v in pol.init_params(gen).items()}
    old = {k: v.detach().clone() for k, v in p.items()}
    obs = torch.randn(200, O, generator=gen)
    act = pol.sample(old, obs, gen)
    adv = torch.randn(200, generator=gen)
    old_lp = pol.log_prob(old, obs, act).detach()

    def loss():
        return -(torch.exp(pol.log_prob(p, obs, act) - old_lp) * adv).mean()

    def kl():
        return pol.kl(old, p, obs).mean()

    def objective(differentiable):
        return loss(), kl()

    info = trpo_step(list(p.values()), objective, max_kl=max_kl)
    assert info.step_fraction > 0 and info.loss_after < info.loss_before
    assert float(kl()) <= max_kl * (1 + 1e-6) and abs(float(kl()) - info.kl) < 1e-6
    with pytest.raises(ValueError, match="max_kl"):
        trpo_step(list(p.values()), objective, max_kl=0.0)


def test_settings_refuse_bad_values():
    for bad in ({"inner_lr": 0}, {"inner_steps": -1}, {"outer": "sgd"}, {"max_kl": -1.0}, {"gamma": 1.5}):
        with pytest.raises(ValueError):
            MAMLRLSettings(**bad)


def _rollouts(learner, gen):
    pre, post = _episodes(gen, torch.float32), _episodes(gen, torch.float32)
    adv_pre = torch.randn(B, E, H, generator=gen) * pre.mask
    adv_post = torch.randn(B, E, H, generator=gen) * post.mask
    with torch.no_grad():
        sampled = learner.adapt_step({k: v.detach() for k, v in learner.params.items()}, pre, adv_pre, True)
    return Rollouts([pre], [adv_pre], post, adv_post, {k: v.detach() for k, v in sampled.items()})


def test_learned_inner_rates_are_stepped_by_the_outer_update_within_the_kl_bound():
    gen = torch.Generator().manual_seed(9)
    pol = GaussianMLPPolicy(O, A, hidden=(8,))
    learner = MAMLRL(pol, pol.init_params(gen), MAMLRLSettings(learn_inner_lr=True, max_kl=0.01))
    assert isinstance(learner.rates, dict) and all(r.requires_grad for r in learner.rates.values())
    before = {k: v.detach().clone() for k, v in learner.rates.items()}
    info = learner.outer_step(_rollouts(learner, gen))
    assert info["step_fraction"] > 0 and info["loss_after"] < info["loss_before"] and info["kl"] <= 0.01
    assert any(not torch.equal(before[k], v) for k, v in learner.rates.items())


def test_a_ppo_outer_step_lowers_the_clipped_surrogate():
    gen = torch.Generator().manual_seed(10)
    pol = GaussianMLPPolicy(O, A, hidden=(8,))
    learner = MAMLRL(pol, pol.init_params(gen), MAMLRLSettings(outer="ppo", ppo_epochs=10, ppo_lr=1e-2))
    rollouts = _rollouts(learner, gen)
    info = learner.outer_step(rollouts)
    assert info["loss_after"] < info["loss_before"]
    state = learner.state_dict()
    again = MAMLRL(pol, pol.init_params(gen), MAMLRLSettings(outer="ppo"))
    again.load_state_dict(state)
    for k, v in learner.params.items():
        assert torch.equal(v.detach(), again.params[k].detach())


@pytest.mark.parametrize("outer", ["trpo", "ppo"])
def test_with_no_inner_step_the_outer_step_is_plain_trpo_or_ppo_and_moves_the_policy(outer):
    """Regression: with zero inner steps the sampling policy aliased theta, so every TRPO step was refused."""
    from metadapt.envs import make_env
    from metadapt.rl.sampler import make_vector_env, sample_episodes, sample_tasks

    envs = make_vector_env("metadapt/PointNav-v0", 20, "auto")
    probe = make_env("metadapt/PointNav-v0")
    pol = GaussianMLPPolicy(2, 2, hidden=(16,))
    learner = MAMLRL(pol, pol.init_params(torch.Generator().manual_seed(0)), MAMLRLSettings(inner_steps=0,
                                                                                          outer=outer))
    tasks = sample_tasks(probe, 4, np.random.default_rng(0))
    rollouts = learner.sample(lambda p, t, s: sample_episodes(envs, pol, p, t, 5, 20, s), tasks, 0)
    before = {k: v.detach().clone() for k, v in learner.params.items()}
    info = learner.outer_step(rollouts)
    assert info["loss_after"] < info["loss_before"] and info["kl"] > 0
    assert outer == "ppo" or info["kl"] <= 0.01 * (1 + 1e-6)  # TRPO's bound; PPO bounds the ratio instead
    assert any(not torch.equal(before[k], v.detach()) for k, v in learner.params.items())
    envs.close()
    probe.close()
