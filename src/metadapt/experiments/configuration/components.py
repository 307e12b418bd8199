"""Registries of the parts a run is assembled from: online learners, planners, dynamics models, task families.

Each registered type brings its own typed config section: ``learner.<type>``
(``learner.mole.alpha``), ``planner.<type>`` (``planner.cem.num_elites``). The
config validates the chosen type's section with that type's fields; sections
of other registered types may stand in a file (a sweep's base serves several
methods) and are checked, then left out of the resolved config.

Few-shot supervised task families (``task.type`` of ``system: supervised``)
are registered the same way in ``TASKS``; their builders take the resolved
config and the device and return an ``experiments.supervised.Problem`` (the
model, the task samplers and the metric).

Adding a type is its own file plus one ``register`` call; nothing here or in
the other types changes. A type registered from outside the package (a user's
module, a test) is used by ``metadapt run`` and ``metadapt train`` exactly as
the built-in ones::

    from metadapt.experiments.configuration.components import LEARNERS
    LEARNERS.register("mine", build_mine, fields={"rate": Field("float", 0.1, low=0)}, needs="model")

Builders take the type's resolved section (a dict) and a ``BuildContext`` and
return the library object; library classes themselves take typed arguments.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from metadapt.errors import ConfigError, MetadaptError
from metadapt.experiments.configuration.schema import Field
from metadapt.types import Params

NEEDS = ("model", "prior", "recurrent")


@dataclass
class BuildContext:
    """What a builder may use: the environment's spaces, the trained artefacts, the device and a seed.

    ``params`` are the parameters the learner starts from: an MB model's, a
    prior's (``prior.params``) or a ReBAL model's; ``prior`` and ``recurrent``
    are set when the learner type needs them.
    """

    obs_dim: int
    act_dim: int
    action_low: torch.Tensor | None = None
    action_high: torch.Tensor | None = None
    horizon: int = 10
    num_samples: int = 1000
    seed: int = 0
    device: str = "cpu"
    model: Any = None
    params: Params | None = None
    prior: Any = None
    recurrent: Any = None
    section: dict[str, Any] = field(default_factory=dict)  # the whole section (common keys: window, lr, ...)


@dataclass(frozen=True)
class Component:
    """One registered type: how to build it, its config fields and (learners) which artefact it needs."""

    name: str
    build: Callable[[dict[str, Any], BuildContext], Any]
    fields: dict[str, Field]
    needs: str = "model"
    doc: str = ""


class Registry:
    """Name -> ``Component`` for one kind of part (``"learner"``, ``"planner"``, ``"model"``)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, Component] = {}
        self._hints: dict[str, str] = {}  # names people try that are not types of this kind -> what to use

    def hint(self, name: str, text: str) -> None:
        """Refuse ``name`` (in any case) as a type with ``text``: what it is called here, what to use instead."""
        self._hints[name.lower()] = text

    def hinted(self, name: object) -> bool:
        """Whether ``name`` is not a type but has a hint (``unknown`` says it)."""
        return isinstance(name, str) and name not in self._items and name.lower() in self._hints

    def unknown(self, name: object) -> ConfigError:
        """The one line refusing ``name`` as the config key ``<kind>.type``, with its hint if it has one."""
        hint = self._hints.get(name.lower()) if isinstance(name, str) else None
        why = f"is not a {self.kind} type: {hint}" if hint else "is not allowed"
        return ConfigError(f"config key '{self.kind}.type': {name!r} {why} (allowed: one of {', '.join(self._items)})")

    def register(self, name: str, build: Callable[[dict[str, Any], BuildContext], Any],
                 fields: dict[str, Field] | None = None, needs: str = "model", doc: str = "",
                 replace: bool = False) -> Component:
        """Add a type; registering a taken name again is an error unless ``replace``."""
        if not name or not name.replace("_", "").isalnum():
            raise ValueError(f"{self.kind} type names are letters, digits and _, got {name!r}")
        if name in self._items and not replace:
            raise ValueError(f"{self.kind} type '{name}' is already registered")
        if needs not in NEEDS:
            raise ValueError(f"needs must be one of {', '.join(NEEDS)}, got {needs!r}")
        item = Component(name, build, dict(fields or {}), needs, doc)
        self._items[name] = item
        return item

    def unregister(self, name: str) -> None:
        self._items.pop(name, None)

    def names(self) -> tuple[str, ...]:
        return tuple(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __getitem__(self, name: str) -> Component:
        if name not in self._items:
            raise self.unknown(name)
        return self._items[name]


LEARNERS = Registry("learner")
PLANNERS = Registry("planner")
# dynamics models of model-based runs (``model.type``): build(own, ctx) -> a ``models.base.DynamicsModel``
# of ``ctx.obs_dim`` / ``ctx.act_dim``; ``ctx.section`` holds the common keys (hidden, activation, sigma, ...).
# A type whose checkpoints should load also registers its ``from_spec`` in ``models.registry``.
MODELS = Registry("model")
# few-shot supervised task families (``system: supervised``, ``task.type``): build(cfg, device) -> Problem
TASKS = Registry("task")


def build(registry: Registry, section: dict[str, Any], ctx: BuildContext) -> Any:
    """The object of ``section['type']`` from its own resolved sub-section."""
    item = registry[section["type"]]
    ctx.section = section
    return item.build(section.get(item.name, {}), ctx)


# -- the built-in types --------------------------------------------------------------------------

def _needs_model(ctx: BuildContext, kind: str) -> tuple[Any, Params]:
    if ctx.model is None or ctx.params is None:
        raise MetadaptError(f"learner '{kind}' needs the model it adapts")
    return ctx.model, ctx.params


def _needs_prior(ctx: BuildContext, kind: str) -> Any:
    if ctx.prior is None:
        raise MetadaptError(f"learner '{kind}' needs a meta-trained prior (model.checkpoint or meta.enabled=true)")
    return ctx.prior


CONTINUAL_LR = 0.01  # seed 000 Table 2


def continual_lr(configured: float | None, inner_lr: float | Params) -> float | Params:
    """The step size of learners that step every time step (GS, MOLe's M step).

    ``learner.lr`` when set; else the prior's inner rate when it is one number;
    else (a Meta-SGD prior) seed 000's 0.01. Learned per-parameter rates are
    meta-trained for one step from theta* (some are negative, the largest near
    2): stepped every time step they diverge, as GS did within 70 steps of the
    first demo.
    """
    if configured is not None:
        return configured
    return inner_lr if not isinstance(inner_lr, dict) else CONTINUAL_LR


def _mb(own: dict[str, Any], ctx: BuildContext) -> Any:
    from metadapt.adapt.static import StaticLearner

    return StaticLearner(_needs_model(ctx, "mb")[1])


def _de(own: dict[str, Any], ctx: BuildContext) -> Any:
    from metadapt.adapt.continual import ContinualLearner

    model, params = _needs_model(ctx, "de")
    lr = ctx.section.get("lr")
    return ContinualLearner(model, params, lr if lr is not None else CONTINUAL_LR)


def _ts(own: dict[str, Any], ctx: BuildContext) -> Any:
    from metadapt.adapt.ts import KShotLearner

    prior = _needs_prior(ctx, "ts")
    return KShotLearner(prior.model, prior.params, prior.inner_lr, prior.inner_steps, backtrack=own["backtrack"])


def _gs(own: dict[str, Any], ctx: BuildContext) -> Any:
    from metadapt.adapt.continual import ContinualLearner

    prior = _needs_prior(ctx, "gs")
    return ContinualLearner(prior.model, prior.params, continual_lr(ctx.section.get("lr"), prior.inner_lr))


def _mole(own: dict[str, Any], ctx: BuildContext) -> Any:
    from metadapt.adapt.mole import MOLeLearner

    prior = _needs_prior(ctx, "mole")
    return MOLeLearner(
        prior.model, prior.params, continual_lr(ctx.section.get("lr"), prior.inner_lr), alpha=own["alpha"],
        choose=own["choose"], creation_test=own["creation_test"], max_components=own["max_components"],
        creation_margin=own["creation_margin"], merge_kl=own["merge_kl"], new_lr=prior.inner_lr,
    )


def _rebal(own: dict[str, Any], ctx: BuildContext) -> Any:
    from metadapt.adapt.rebal import RecurrentLearner

    if ctx.recurrent is None:
        raise MetadaptError("learner 'rebal' needs a ReBAL model")
    return RecurrentLearner(*ctx.recurrent)


LEARNERS.register("mb", _mb, needs="model", doc="the MB model, never adapted")
LEARNERS.register("de", _de, needs="model", doc="the MB model, one gradient step per time step (learner.lr)")
LEARNERS.register("ts", _ts, needs="prior", doc="GrBAL at run time: the prior adapted on the last M steps", fields={
    "backtrack": Field("int", 0, low=0, doc="halvings of the inner rate tried when a step raises its own window's "
                                            "loss, then the prior is kept (0: the literal step, as the GrBAL code)"),
})
LEARNERS.register("gs", _gs, needs="prior", doc="the prior, one gradient step per time step (learner.lr)")
LEARNERS.register("mole", _mole, needs="prior", doc="MOLe: an online mixture of adapted priors (seed 000)", fields={
    "alpha": Field("float", 1.0, low=0, doc="CRP concentration"),
    "choose": Field("str", "likelihood", choices=("likelihood", "posterior"), doc="the component planned with"),
    "creation_test": Field("str", "weighted", choices=("weighted", "likelihood"), doc="the new-component test"),
    "creation_margin": Field("float", 0.0, low=0, doc="nats theta_new must win by (0: Algorithm 1)"),
    "merge_kl": Field("float", None, low=0, low_open=True, nullable=True,
                   doc="fold components within this many nats of the chosen one (null: off)"),
    "max_components": Field("int", None, low=1, nullable=True, doc="cap (null: none, as in the paper)"),
})
LEARNERS.register("rebal", _rebal, needs="recurrent", doc="ReBAL: a recurrent context over the last steps")
LEARNERS.hint("grbal", "GrBAL at run time is learner.type=ts, k-shot adaptation of the meta-learned prior "
                       "(model.checkpoint, or meta.enabled=true) on the last steps")


def _bounds(ctx: BuildContext) -> tuple[torch.Tensor, torch.Tensor]:
    assert ctx.action_low is not None and ctx.action_high is not None
    return ctx.action_low, ctx.action_high


def _common(ctx: BuildContext) -> dict[str, Any]:
    return dict(horizon=ctx.horizon, num_samples=ctx.num_samples, seed=ctx.seed, device=ctx.device)


def _rs(own: dict[str, Any], ctx: BuildContext) -> Any:
    from metadapt.planning import RandomShooting

    return RandomShooting(*_bounds(ctx), **_common(ctx))


def _cem(own: dict[str, Any], ctx: BuildContext) -> Any:
    from metadapt.planning import CEM

    return CEM(*_bounds(ctx), iterations=own["iterations"], num_elites=own["num_elites"], momentum=own["momentum"],
               init_std_fraction=own["init_std"], **_common(ctx))


def _mppi(own: dict[str, Any], ctx: BuildContext) -> Any:
    from metadapt.planning import MPPI

    return MPPI(*_bounds(ctx), temperature=own["temperature"], noise_std=own["noise_std"],
                noise_beta=own["noise_beta"], iterations=own["iterations"], **_common(ctx))


PLANNERS.register("rs", _rs, doc="random shooting")
PLANNERS.register("cem", _cem, doc="cross-entropy method, warm-started", fields={
    "iterations": Field("int", 5, low=1, doc="refits per step"),
    "num_elites": Field("int", 50, low=1, doc="elites (at most planner.num_samples)"),
    "momentum": Field("float", 0.1, low=0, high=1, high_open=True, doc="mean/variance momentum"),
    "init_std": Field("float", 0.25, low=0, high=1, low_open=True, doc="initial std / action range"),
})
PLANNERS.register("mppi", _mppi, doc="MPPI with time-correlated noise, warm-started", fields={
    "iterations": Field("int", 5, low=1, doc="rounds per step"),
    "temperature": Field("float", 0.1, low=0, low_open=True),
    "noise_std": Field("float", 0.5, low=0, low_open=True, doc="noise std / half action range"),
    "noise_beta": Field("float", 0.5, low=0, high=1, high_open=True, doc="time correlation"),
})


def _mlp(own: dict[str, Any], ctx: BuildContext) -> Any:
    from metadapt.models.mlp import MLPDynamics

    m = ctx.section
    return MLPDynamics(ctx.obs_dim, ctx.act_dim, m["hidden"], m["activation"], m["sigma"],
                       action_gain=m["action_gain"])


MODELS.register("mlp", _mlp, doc="deterministic MLP of the normalized state change, Gaussian likelihood")


def _lazy(entry: str) -> Callable[..., Any]:
    """A builder imported on first use (the image data and models load only when a run uses them)."""

    def build_lazily(*args: Any) -> Any:
        import importlib

        module, _, name = entry.partition(":")
        return getattr(importlib.import_module(module), name)(*args)

    return build_lazily


TASKS.register("sinusoid", _lazy("metadapt.experiments.jobs.supervised:sinusoid_problem"),
               doc="sinusoid regression (MAML paper, Sec. 5.1)")
TASKS.register("omniglot", _lazy("metadapt.experiments.jobs.fewshot:omniglot_problem"),
               doc="N-way K-shot classification of an Omniglot-layout folder (or the generated glyph set)")
