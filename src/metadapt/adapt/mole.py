"""MOLe (seed 000, section 2 and Algorithm 1): online EM over a growing mixture of adapted models.

Every component is a copy of the meta-trained prior that has been adapted on
the data it was responsible for. All components live in one stacked parameter
dict (``C x ...`` per entry) evaluated with ``torch.func.vmap``, so an E and an M
step cost one batched call whatever the number of components.

Per time step, with the window (``metadapt.types.Window``) of the K latest
steps: ``x_t``, its states and actions (``obs``, ``act``), and ``y_t``, the
states that followed (``next_obs``):

1. E step: ``log p_T = log N(y_t; f_theta_T(x_t), sigma^2)`` summed over the
   window, for every component; the CRP prior is the soft count ``n_T`` (the sum
   of the component's past posteriors; Eq. 3-4, the normaliser cancels), so the
   posterior is ``softmax(log p_T + log n_T)`` (Eq. 5), computed in log space.
2. New-component test: ``theta_new`` is the prior adapted on the previous
   window. It is added when it explains the current window better than every
   component; by default "better" compares the CRP-weighted terms of Eq. 5,
   ``log alpha + log p_new > log n_T + log p_T``, which is how alpha "controls
   the instantiation of new tasks" (with alpha -> 0 none is ever created);
   ``creation_test="likelihood"`` compares the likelihoods alone, as Algorithm 1's
   pseudo-code reads. After an addition the posterior includes the new
   component with prior weight alpha.
3. M step (Eq. 7): every component takes one gradient step on the window,
   scaled by its posterior. ``grad log p`` is proportional to the gradient of the
   normalized-delta MSE that meta-training adapted with, so ``lr`` means the
   same step size as the prior's inner learning rate (seed 000 Table 2: 0.01).
4. The component planned with: ``choose="likelihood"`` (Algorithm 1:
   ``argmax_T p_theta_t(T)(y_t | x_t)``, the new component included when it was
   just added) or ``choose="posterior"`` (the text's "highest task
   probability"); its updated parameters ``theta_{t+1}(T*)`` are used.

Options against the extra components that Algorithm 1 creates from the mixed
windows around a switch (all off by default, which is the literal algorithm):
``creation_margin`` (nats) that ``theta_new`` must win by, and ``merge_kl``: after
each step, components whose predictions on the window are within ``merge_kl``
nats of the chosen component's are folded into it (counts added).

Two implementations of the same step (``fused``): the plain one is the
algorithm written with ``vmap(grad_and_value(loss))``; the fused one
(``models/stacked.py``, the default for ReLU and tanh networks) keeps the
candidate ``theta_new`` and a copy of the prior in two extra slots of the
stack, so the E step, the creation test's likelihood, the M step and the next
step's candidate come from one forward pass over ``C + 2`` networks (on an
agent's sliding window, only the newest transition through the slots that did
not change since the last step: ``WindowCache``) and one
in-place backward pass over those whose step is not negligible (a posterior
under ``IDLE_POSTERIOR`` moves no float32 weight, and with windows of 16 x 17
dimensions most posteriors are that small); the prior's step is written into
the next candidate's slot. Tests check both give the same numbers.

Optional cap (off by default, as in the paper): with ``max_components`` set, a
creation that would exceed it first removes the component with the smallest
soft count (the least used one); the prior is never stored as a component, so
it always stays available through the creation test.

Non-finite numbers (``adapt/base.py``): a window holding one is skipped (nothing
moves: no counts, no step, no new candidate). A component whose prediction is
not finite has likelihood 0 (log -inf): no posterior, no step, no choice; when
no component nor the candidate explains the window, the E step falls back to
the CRP prior's posterior and the step is refused (nothing moves). A step that
leaves a component non-finite is refused for that component: the plain step
keeps its previous parameters; the fused one, which updates in place, restarts
it from the prior (the previous parameters are gone by then; a step overflows
only on windows of absurd magnitude). A candidate that is not finite is never
added.
"""

from __future__ import annotations

import math

import torch
from torch.func import grad, grad_and_value, vmap

from metadapt.adapt.base import REFUSED, SKIPPED, StepInfo, params_are_finite, window_is_finite
from metadapt.meta.maml import InnerLR, adapt
from metadapt.models.base import DynamicsModel
from metadapt.models.mlp import MLPDynamics
from metadapt.models.stacked import FUSED_ACTIVATIONS, StackedMLP, WindowCache
from metadapt.types import Params, Window

CHOICES = ("likelihood", "posterior")
IDLE_POSTERIOR = 1e-10
CREATION_TESTS = ("weighted", "likelihood")


class MOLeLearner:
    """Mixture of online-adapted models with a CRP prior. See the module docstring for the algorithm.

    Args:
        model: the dynamics model (``log_likelihood`` with its constant ``sigma``).
        prior: ``theta*``, the meta-trained parameters.
        lr: M-step size ``beta`` (and the step that makes ``theta_new``).
        alpha: CRP concentration.
        choose: ``"likelihood"`` (Algorithm 1) or ``"posterior"`` (the text's variant).
        creation_test: ``"weighted"`` (Eq. 5 terms, default) or ``"likelihood"``.
        max_components: optional cap on the number of components (``None``: no cap).
        creation_margin: nats by which ``theta_new`` must win the creation test.
        merge_kl: fold duplicates of the chosen component into it (``None``: off).
        fused: the fused step (see the module docstring); ``None`` picks it when
            the activation allows.
        new_lr: the step that adapts the prior into ``theta_new`` (default
            ``lr``); a Meta-SGD prior's learned rates belong here, not in ``lr``:
            they are meta-trained for one step from ``theta*`` and diverge when
            applied every step.
        reuse_window: fused step only: when the window moved by one transition,
            run only the newest one through the slots that did not change
            (``WindowCache``); the same numbers to float rounding, off to compare.
    """

    def __init__(
        self,
        model: DynamicsModel,
        prior: Params,
        lr: InnerLR = 0.01,
        alpha: float = 1.0,
        choose: str = "likelihood",
        creation_test: str = "weighted",
        max_components: int | None = None,
        creation_margin: float = 0.0,
        merge_kl: float | None = None,
        fused: bool | None = None,
        new_lr: InnerLR | None = None,
        reuse_window: bool = True,
    ) -> None:
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        if choose not in CHOICES:
            raise ValueError(f"choose must be one of {CHOICES}, got {choose!r}")
        if creation_test not in CREATION_TESTS:
            raise ValueError(f"creation_test must be one of {CREATION_TESTS}, got {creation_test!r}")
        if max_components is not None and max_components < 1:
            raise ValueError(f"max_components must be >= 1, got {max_components}")
        self.model, self.alpha, self.choose = model, alpha, choose
        self.creation_test, self.max_components = creation_test, max_components
        self.creation_margin, self.merge_kl = creation_margin, merge_kl
        self._window_pred = vmap(model.predict_normalized_delta, in_dims=(0, None, None))
        # A copy: the fused slots hold a snapshot of the prior, so the caller's tensors must not move it.
        self.prior = {k: v.detach().clone() for k, v in prior.items()}
        self.device = next(iter(self.prior.values())).device  # every tensor the learner makes lives here
        self.lr = {k: v.detach() for k, v in lr.items()} if isinstance(lr, dict) else lr
        new_lr = lr if new_lr is None else new_lr
        self.new_lr = {k: v.detach() for k, v in new_lr.items()} if isinstance(new_lr, dict) else new_lr
        # One batched pass gives every component's window loss (hence its log-likelihood) and gradient.
        self._grad_and_loss = vmap(grad_and_value(model.transition_loss), in_dims=(0, None, None, None))
        self._grad = grad(model.transition_loss)
        # The fused step is the MLP's own fast path; any other dynamics model takes the batched vmap one.
        supported = isinstance(model, MLPDynamics) and model.activation in FUSED_ACTIVATIONS
        if fused and not supported:
            raise ValueError(f"fused MOLe needs an MLP with one of the activations {FUSED_ACTIVATIONS}")
        self.fused = supported if fused is None else fused
        self._stacked = StackedMLP(model) if self.fused and isinstance(model, MLPDynamics) else None
        # The prior as the fused slots store it (a fresh candidate is a copy of it), and the step sizes in
        # the same layout, converted once rather than transposed on every step.
        self._prior_stored = self._stacked.to_storage(self.prior) if self._stacked else self.prior
        self._lr_stored, self._new_lr_stored = (self._stored_lr(self.lr), self._stored_lr(self.new_lr))
        # The last window's activations per slot, and the slots whose parameters changed since.
        self._cache, self._changed, self._reuse_window = WindowCache(), list[int](), reuse_window
        self.reset()

    def reset(self) -> None:
        """One component, the prior; no counts, no previous window."""
        self.stack = {k: v[None].clone() for k, v in self.prior.items()}
        self.counts = torch.zeros(1, dtype=torch.float64, device=self.device)
        self.ids = [0]  # a component's id never changes, even when others are removed
        self.steps = 0
        self.chosen = 0
        self.created_total = 0
        self.last_posterior = torch.ones(1, dtype=torch.float64, device=self.device)
        self._prev: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    # Storage. The plain step keeps the C components; the fused one C + 2 slots:
    # the components, then the candidate theta_new and a copy of the prior whose
    # step on this window becomes the next candidate (_extra: their indices), with
    # the weights transposed (StackedMLP's stored layout).
    @property
    def _extra(self) -> tuple[int, int]:
        """Fused slots: (candidate, prior copy), always right after the components."""
        return self._num, self._num + 1

    @property
    def stack(self) -> Params:
        """The components' parameters, ``C x ...`` per entry (``nn.Linear`` layout; views when fused).

        Replace them by assigning a new dict; writing into these tensors in place would go unseen by the
        fused step's window reuse."""
        c = self._num
        own = {k: v[:c] for k, v in self._slots.items()}
        return self._stacked.from_storage(own) if self._stacked else own

    @stack.setter
    def stack(self, value: Params) -> None:
        self._cache.clear()
        self._changed = []
        self._num = int(next(iter(value.values())).shape[0])
        if self._stacked:
            p, stored = self._prior_stored, self._stacked.to_storage(value)
            self._slots = {k: torch.cat([v, p[k][None], p[k][None]]) for k, v in stored.items()}
        else:
            self._slots = dict(value)

    @property
    def window_reuses(self) -> int:
        """How many fused steps reused the last window's activations (``reuse_window``)."""
        return self._cache.hits

    @property
    def num_components(self) -> int:
        return int(self.counts.shape[0])

    def _log_lik(self, loss: torch.Tensor, n: int) -> torch.Tensor:
        """Window log-likelihood from the window's normalized-delta MSE (float64).

        ``sum_k log N(y_k; f(x_k), sigma^2 I)`` over ``n`` transitions of ``O``
        dimensions equals ``-n O (mse / (2 sigma^2) + log(2 pi sigma^2) / 2)``:
        the same number as ``model.log_likelihood`` summed, from the pass that
        also gives the gradient.
        """
        size = n * self.model.obs_dim
        var = self.model.sigma**2
        ll = -size * (loss.double() / (2 * var) + 0.5 * math.log(2 * math.pi * var))
        # A component whose prediction is not finite explains nothing: it gets no posterior, no step, no choice.
        return torch.where(torch.isnan(ll), -math.inf, ll)

    def _stored_lr(self, lr: InnerLR) -> InnerLR:
        return self._stacked.to_storage(lr) if self._stacked is not None and isinstance(lr, dict) else lr

    def _lr(self, k: str) -> float | torch.Tensor:
        return self.lr[k] if isinstance(self.lr, dict) else self.lr

    def _m_step(self, key: str, value: torch.Tensor, scale: torch.Tensor, grad_: torch.Tensor) -> torch.Tensor:
        """Eq. 7 for every component at once: ``theta_T - lr * P(T) * grad_T`` (one fused pass)."""
        shaped = scale.view(-1, *([1] * (value.dim() - 1)))
        lr = self._lr(key)
        if isinstance(lr, torch.Tensor):
            return value - lr * shaped * grad_
        return torch.addcmul(value, shaped, grad_, value=-lr)

    def _drop_least_used(self) -> torch.Tensor:
        keep = torch.ones(self.num_components, dtype=torch.bool, device=self.device)
        keep[int(torch.argmin(self.counts))] = False
        self._keep(keep)
        return keep

    def observe(self, window: Window) -> StepInfo:
        """One EM step on the window's ``obs``, ``act`` and ``next_obs`` (``y_t``; raw observations).

        A window with a non-finite number is skipped (``skipped_nonfinite``); a step refused in whole or
        for some component is counted in ``step_refused`` (see the module docstring).
        """
        if not window_is_finite(window):
            return self._info(False, 0, self.last_posterior, skipped=True, refused=False)
        obs, act, y = window.obs, window.act, window.next_obs
        with torch.no_grad():
            created, merged, post, moved, refused = (self._step_fused if self.fused else self._step_plain)(obs, act, y)
            if moved:
                self._prev = (obs, act, y)
                self.steps += 1
        return self._info(created, merged, post, skipped=False, refused=refused)

    def _info(self, created: bool, merged: int, post: torch.Tensor, skipped: bool, refused: bool) -> StepInfo:
        return StepInfo({
            "components": float(self.num_components),
            "chosen": float(self.chosen_id),
            "created": float(created),
            "merged": float(merged),
            "posterior_chosen": float(self.last_posterior[self.chosen]),
            "posterior_entropy": float(-(post * torch.log(post.clamp_min(1e-300))).sum()),
            # id:probability of every component, for the task-probability figure
            "posterior": ";".join(f"{i}:{p:.4g}" for i, p in zip(self.ids, self.last_posterior.tolist(), strict=True)),
            REFUSED: float(refused),
            SKIPPED: float(skipped),
        })

    def _explains_nothing(self, log_post: torch.Tensor, log_prior: torch.Tensor) -> torch.Tensor | None:
        """The E step's fallback: ``None`` when some term of ``log_post`` is finite (the posterior is its
        softmax); else every likelihood is 0 (log -inf, whose softmax is NaN) and the posterior is the CRP
        prior's, ``softmax(log_prior)``, for the caller to report while it refuses the step."""
        if bool(torch.isfinite(log_post).any()):
            return None
        return torch.softmax(log_prior, 0)

    def _refuse(self, prior_post: torch.Tensor) -> tuple[bool, int, torch.Tensor, bool, bool]:
        """No component explains the window: nothing moves; the posterior reported is the prior's."""
        self.last_posterior = prior_post
        return False, 0, prior_post, False, True

    @property
    def _log_alpha(self) -> torch.Tensor:
        """``[log alpha]``: the CRP's prior weight of a new component."""
        return torch.tensor([math.log(self.alpha)], dtype=torch.float64, device=self.device)

    def _log_prior(self) -> torch.Tensor:
        # The first step has no history: the prior's single component is responsible for it.
        return torch.log(self.counts) if self.steps > 0 else torch.zeros_like(self.counts)

    def _creates(self, ll: torch.Tensor, log_prior: torch.Tensor, ll_new: torch.Tensor) -> bool:
        if self.creation_test == "weighted":
            return bool(math.log(self.alpha) + ll_new > torch.max(log_prior + ll) + self.creation_margin)
        return bool(ll_new > torch.max(ll) + self.creation_margin)

    def _finish(self, post: torch.Tensor, ll: torch.Tensor, log_post: torch.Tensor, obs: torch.Tensor,
                act: torch.Tensor) -> int:
        """Counts, choice and merging after the M step; returns how many components were merged."""
        self.counts = self.counts + post
        self.chosen = int(torch.argmax(ll if self.choose == "likelihood" else log_post))
        self.last_posterior = post
        return self._merge(obs, act) if self.merge_kl is not None else 0

    def _step_fused(
        self, obs: torch.Tensor, act: torch.Tensor, y: torch.Tensor
    ) -> tuple[bool, int, torch.Tensor, bool, bool]:
        """One EM step: (created, merged, posterior, whether anything moved, whether a step was refused)."""
        assert self._stacked is not None
        n, c = obs.shape[0], self._num
        cand, work = self._extra
        loss, inputs, err = self._stacked.forward(self._slots, obs, act, y, self._cache if self._reuse_window else None,
                                                  self._changed)
        ll_all = self._log_lik(loss, n)
        ll, log_prior = ll_all[:c], self._log_prior()
        created = False
        if self._prev is not None and self.alpha > 0:
            created = self._creates(ll, log_prior, ll_all[cand]) and self._slot_finite(cand)
        if not created and (prior_post := self._explains_nothing(ll + log_prior, log_prior)) is not None:
            self._changed = []  # the forward's buffers hold this window for the parameters as they are
            return self._refuse(prior_post)
        keep = torch.ones(c + 2, dtype=torch.bool, device=self.device)
        if created:
            if self.max_components is not None and c >= self.max_components:
                drop = int(torch.argmin(self.counts))
                keep[drop] = False
                self.counts = self.counts[keep[:c]]
                self.ids = [i for j, i in enumerate(self.ids) if j != drop]
                ll, log_prior = ll[keep[:c]], log_prior[keep[:c]]
            ll = torch.cat([ll, ll_all[cand][None]])
            log_prior = torch.cat([log_prior, self._log_alpha])
            self.counts = torch.cat([self.counts, torch.zeros(1, dtype=torch.float64, device=self.device)])
            self.ids.append(self.created_total + 1)
            self.created_total += 1
        log_post = ll + log_prior
        post = torch.softmax(log_post, 0)
        # Step multipliers per slot: components by their posterior, the prior copy by 1 (it becomes
        # the next candidate), the candidate by its posterior when it was just created, else 0.
        scale = torch.zeros(c + 2, dtype=torch.float64, device=self.device)
        # The prior's step on a window it cannot predict would make a non-finite candidate: the prior stays it.
        scale[work] = 1.0 if bool(torch.isfinite(loss[work])) else 0.0
        scale[torch.nonzero(keep[:c]).squeeze(1)] = post[: int(keep[:c].sum())]
        if created:
            scale[cand] = post[-1]
        # A posterior below IDLE_POSTERIOR scales a step under float32's resolution of the weights it
        # would change; treating it as 0 lets the step skip those components (and keeps denormals out).
        scale = torch.where(scale < IDLE_POSTERIOR, torch.zeros_like(scale), scale)
        # The prior copy stays the prior; its step is written straight into the next candidate's place:
        # the old candidate's slot, or a new tensor when the old candidate was just kept as a component.
        nxt = {k: torch.empty_like(v) for k, v in self._prior_stored.items()} if created else \
            {k: v[cand] for k, v in self._slots.items()}
        stepped = self._stacked.sgd_step_(self._slots, inputs, err, scale, self._lr_stored,
                                          {work: self._new_lr_stored}, {work: nxt})
        # The step is in place, so a component it left non-finite restarts from the prior (the fused slots
        # keep no copy of what it was; see the module docstring). The stepped slots only: the others did not
        # move. The next candidate is checked when the creation test picks it, not on every step.
        broken = [j for j in stepped if not self._slot_finite(j)]
        for j in broken:
            for k, v in self._slots.items():
                v[j].copy_(self._prior_stored[k])
        self._changed = sorted({*stepped, cand})
        if created:
            order = [*torch.nonzero(keep[:c]).squeeze(1).tolist(), cand]
            self._slots = {k: torch.cat([v[order], nxt[k][None], self._prior_stored[k][None]])
                           for k, v in self._slots.items()}
            self._num = len(order)
            # The new candidate's slot holds new parameters (changed); the cached rows of the others follow them.
            self._reorder([*order, cand, work], new_slot=self._num)
        merged = self._finish(post, ll, log_post, obs, act)
        return created, merged, post, True, bool(broken)

    def _slot_finite(self, j: int) -> bool:
        """Whether fused slot ``j``'s parameters are all finite."""
        return params_are_finite({k: v[j] for k, v in self._slots.items()})

    def _step_plain(
        self, obs: torch.Tensor, act: torch.Tensor, y: torch.Tensor
    ) -> tuple[bool, int, torch.Tensor, bool, bool]:
        """``_step_fused``'s step written with ``vmap(grad_and_value(loss))``; the same returns."""
        n = obs.shape[0]
        grads, loss = self._grad_and_loss(self.stack, obs, act, y)
        ll, log_prior = self._log_lik(loss, n), self._log_prior()
        created = False
        if self._prev is not None and self.alpha > 0:
            new = adapt(self.model, self.prior, *self._prev, self.new_lr, 1, first_order=True)
            ll_new = self._log_lik(self.model.transition_loss(new, obs, act, y), n)
            created = self._creates(ll, log_prior, ll_new) and params_are_finite(new)
            if created:
                if self.max_components is not None and self.num_components >= self.max_components:
                    keep = self._drop_least_used()
                    grads = {k: g[keep] for k, g in grads.items()}
                    ll, log_prior = ll[keep], log_prior[keep]
                new_grad = self._grad(new, obs, act, y)
                grads = {k: torch.cat([g, new_grad[k][None]]) for k, g in grads.items()}
                self.stack = {k: torch.cat([v, new[k][None]]) for k, v in self.stack.items()}
                self.counts = torch.cat([self.counts, torch.zeros(1, dtype=torch.float64, device=self.device)])
                self.ids.append(self.created_total + 1)
                ll = torch.cat([ll, ll_new[None]])
                log_prior = torch.cat([log_prior, self._log_alpha])
                self.created_total += 1
        if not created and (prior_post := self._explains_nothing(ll + log_prior, log_prior)) is not None:
            return self._refuse(prior_post)
        log_post = ll + log_prior
        post = torch.softmax(log_post, 0)
        scale = post.to(obs.dtype)
        old = self.stack
        new_stack = {k: self._m_step(k, v, scale, grads[k]) for k, v in old.items()}
        # Per component: is every entry finite (sums, as params_are_finite)? A component whose step is not keeps
        # its previous parameters (a component with no posterior gets 0 x its NaN gradient, which is NaN).
        ok = torch.isfinite(torch.stack([v.reshape(v.shape[0], -1).sum(1).float() for v in new_stack.values()]).sum(0))
        refused = not bool(ok.all())
        if refused:
            new_stack = {k: torch.where(ok.view(-1, *([1] * (v.dim() - 1))), v, old[k]) for k, v in new_stack.items()}
        self.stack = new_stack
        merged = self._finish(post, ll, log_post, obs, act)
        return created, merged, post, True, refused

    def _merge(self, obs: torch.Tensor, act: torch.Tensor) -> int:
        """Fold the chosen component's duplicates into it; returns how many were removed.

        Two components are duplicates when their predictive Gaussians on the
        current window are within ``merge_kl`` nats (KL of the product of the
        window's Gaussians). The chosen one survives and inherits the soft counts.
        """
        assert self.merge_kl is not None
        if self.num_components < 2:
            return 0
        pred = self._window_pred(self.stack, obs, act)  # C x K x O
        kl = (pred - pred[self.chosen]).pow(2).sum((1, 2)) / (2 * self.model.sigma**2)
        dup = kl < self.merge_kl
        dup[self.chosen] = False
        if not bool(dup.any()):
            return 0
        keep = ~dup
        self.counts[self.chosen] += self.counts[dup].sum()
        self.last_posterior[self.chosen] += self.last_posterior[dup].sum()
        self.chosen = int(keep[: self.chosen].sum())
        self._keep(keep)
        return int(dup.sum())

    def _reorder(self, order: list[int], new_slot: int | None = None) -> None:
        """The fused slots were rebuilt from the old ones ``order`` (by position; ``new_slot``, when given,
        holds new parameters): the window cache and the changed slots follow."""
        self._cache.select(order)
        position = {old: new for new, old in enumerate(order) if new != new_slot}
        self._changed = [position[j] for j in self._changed if j in position] + \
            ([] if new_slot is None else [new_slot])

    def _keep(self, keep: torch.Tensor) -> None:
        if self.fused:
            order = [*torch.nonzero(keep).squeeze(1).tolist(), *self._extra]
            self._slots = {k: v[order] for k, v in self._slots.items()}
            self._num = len(order) - 2
            self._reorder(order)
        else:
            self.stack = {k: v[keep] for k, v in self.stack.items()}
        self.counts = self.counts[keep]
        if self.last_posterior.shape == keep.shape:
            self.last_posterior = self.last_posterior[keep]
        self.ids = [i for i, k in zip(self.ids, keep.tolist(), strict=True) if k]

    @property
    def chosen_id(self) -> int:
        """The persistent id of the component planned with (0 is the first, the prior's)."""
        return self.ids[self.chosen]

    def params(self) -> Params:
        return {k: v[self.chosen] for k, v in self.stack.items()}
