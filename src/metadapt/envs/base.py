"""What every non-stationary metadapt environment shares: tasks, schedules, switching, task info.

A subclass (a Gymnasium ``MujocoEnv``) declares its task catalog and how a task
changes the compiled model (``apply_task``); this mixin parses the
``schedule`` / ``task_sampler`` keyword arguments, switches tasks between
steps without touching the simulator state, and reports the true task in
``info["task_id"]`` / ``info["task"]`` only.

Any environment's tasks can be extended without code by *perturbations*
(``metadapt.envs.perturb``: named tasks that set or scale fields of the MuJoCo
model, composed with a built-in task); ``make_env(id, perturbations=...)``
installs them, and schedules then name them like the catalog's tasks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import mujoco
import numpy as np

from metadapt.envs.tasks import Resolve, Task, TaskSchedule, TaskSpec, parametric_id, parse_sampler, parse_schedule
from metadapt.errors import ConfigError

if TYPE_CHECKING:
    from metadapt.envs.perturb import Perturbations


@dataclass(frozen=True)
class EnvInfo:
    """What the README's environment table says about one environment."""

    robot: str
    obs: str
    action: str
    reward: str
    train: str
    test: str


class TaskEnv:
    """Mixin: catalog, sampler, schedule and switching. Subclasses set the class attributes below.

    ``CATALOG`` maps task names to parameter mappings; a task's id is its index
    in the catalog (parametric tasks outside it get a stable hashed id).
    ``TRAIN`` / ``TEST`` name the catalog tasks of the training and held-out
    test distributions (a subclass may override ``sample_train_task`` with a
    continuous distribution). ``PRESETS`` are named default schedules.
    ``OBS_VERSION`` goes up whenever the observation's meaning changes at the
    same size, so that models trained on the old one are refused.
    """

    OBS_VERSION: ClassVar[int] = 1
    CATALOG: ClassVar[dict[str, dict[str, Any]]] = {"normal": {}}
    TRAIN: ClassVar[tuple[str, ...]] = ("normal",)
    TEST: ClassVar[tuple[str, ...]] = ("normal",)
    PRESETS: ClassVar[dict[str, Any]] = {}
    # Planning objectives besides the reward (``planner.objective``): name -> the name of a method
    # ``(obs, act, next_obs) -> N`` that scores transitions for the planner (higher is better). Evaluation,
    # metrics and reports always use the reward of ``step``.
    OBJECTIVES: ClassVar[dict[str, str]] = {}
    DEFAULT_SCHEDULE: ClassVar[Any] = {"type": "sampled"}
    INFO: ClassVar[EnvInfo]
    # Perturbation tasks beside the catalog (``metadapt.envs.perturb.install``); ``None``: none.
    _perturbations: Perturbations | None = None

    def _init_tasks(self, schedule: Any, task_sampler: Any) -> None:
        self._catalog_keys = {self.canonical(p)[0]: i for i, p in enumerate(self.CATALOG.values())}
        self.schedule: TaskSchedule = parse_schedule(
            self.DEFAULT_SCHEDULE if schedule is None else schedule, self._resolve, self.PRESETS
        )
        self._sample = parse_sampler(
            "train" if task_sampler is None else task_sampler, self.sample_train_task, self.sample_test_task,
            self._resolve,
        )
        self._task: Task | None = None
        self._step_in_episode = 0
        self._next_task: Task | None = None
        self._episode_task: Task | None = None  # the next_task this episode began with, if any

    # ---- tasks -----------------------------------------------------------------------------------------------
    @classmethod
    def canonical(cls, params: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        """Validate task parameters; return (canonical key, normalized params). Raises ``ConfigError``."""
        if params:
            raise ConfigError(f"this environment's tasks take no parameters, got {dict(params)}")
        return "normal", {}

    def _resolve(self, spec: TaskSpec) -> Task:
        """``resolve_task``, with the perturbation tasks first (a subclass's own ``resolve_task`` may not know them)."""
        if self._perturbations is not None and (task := self._perturbations.lookup(spec)) is not None:
            return task
        return self.resolve_task(spec)

    def resolve_task(self, spec: TaskSpec) -> Task:
        """A catalog name, a perturbation's name or a parameter mapping -> ``Task`` (one error line otherwise)."""
        if self._perturbations is not None and (task := self._perturbations.lookup(spec)) is not None:
            return task
        if isinstance(spec, str):
            if spec not in self.CATALOG:
                extra = list(self._perturbations.tasks) if self._perturbations is not None else []
                raise ConfigError(f"unknown task '{spec}' (tasks: {', '.join([*self.CATALOG, *extra])})")
            key, params = self.canonical(self.CATALOG[spec])
            return Task(spec, list(self.CATALOG).index(spec), params)
        if isinstance(spec, Mapping):
            key, params = self.canonical(spec)
            if key in self._catalog_keys:
                index = self._catalog_keys[key]
                return Task(list(self.CATALOG)[index], index, params)
            return Task(key, parametric_id(key), params)
        raise ConfigError(f"a task is a name or a mapping of parameters, got {spec!r}")

    # ---- one task for every episode, set from outside (a meta-RL sampler, a vector env's set_attr) ------------
    @property
    def next_task(self) -> Task | None:
        """The task every episode from the next reset on runs with; ``None``: the schedule decides.

        Set it with a task spec (a catalog name or a parameter mapping, or a
        ``Task``): it is validated at once (one ``ConfigError`` line) and takes
        effect at the next ``reset`` and every later one until set again. The
        episode then runs with that one task from its first step to its last
        (the schedule is not consulted and draws nothing from the generator, so
        the episode is the one ``schedule=<that task>`` gives). Setting ``None``
        hands the following episodes back to the schedule. From a Gymnasium
        vector env: ``envs.set_attr("next_task", [spec_0, ..., spec_n-1])``.
        """
        # getattr, not the attribute: hasattr() through Gymnasium's set_wrapper_attr must see the property even
        # before _init_tasks, or the outermost wrapper would silently take the value instead of this env.
        return getattr(self, "_next_task", None)

    @next_task.setter
    def next_task(self, spec: TaskSpec | Task | None) -> None:
        if spec is None:
            self._next_task = None
            return
        try:
            self._next_task = self._resolve(spec.params if isinstance(spec, Task) else spec)
        except ConfigError as exc:
            raise ConfigError(f"next_task: {exc}") from None

    def _uniform(self, names: tuple[str, ...], rng: np.random.Generator) -> Task:
        return self.resolve_task(names[int(rng.integers(len(names)))])

    def sample_train_task(self, rng: np.random.Generator) -> Task:
        """One task of the training distribution."""
        return self._uniform(self.TRAIN, rng)

    def sample_test_task(self, rng: np.random.Generator) -> Task:
        """One held-out test task."""
        return self._uniform(self.TEST, rng)

    def apply_task(self, task: Task) -> None:
        """Change the compiled model to ``task`` (from the unperturbed robot, not the previous task)."""

    # ---- switching ----------------------------------------------------------------------------------------------
    @property
    def task(self) -> Task:
        assert self._task is not None, "reset() first"
        return self._task

    def _set_task(self, task: Task) -> None:
        if self._task is None or task.task_id != self._task.task_id:
            if self._perturbations is None:
                self.apply_task(task)
            else:  # unperturbed fields, then the built-in task, then the perturbation's edits
                self._perturbations.switch(self, task)
            self._task = task

    def _begin_episode(self, rng: np.random.Generator) -> None:
        """Call at the start of ``reset_model``, before the robot's pose is set."""
        self._episode_task = self.next_task
        if self._episode_task is None:
            self.schedule.reset(rng, self._sample)
        self._step_in_episode = 0
        self._task = None
        self._set_task(self._task_at(0))

    def _task_at(self, step: int) -> Task:
        return self._episode_task if self._episode_task is not None else self.schedule.task_at(step)

    def _begin_step(self) -> None:
        """Call at the start of ``step``: switch to this step's task; the simulator state is untouched."""
        self._set_task(self._task_at(self._step_in_episode))
        self._step_in_episode += 1

    def upcoming_task(self) -> Task:
        """The task the next ``step`` runs with: what an oracle baseline is told (no learner reads it)."""
        return self._task_at(self._step_in_episode)

    def task_info(self) -> dict[str, Any]:
        return {"task_id": self.task.task_id, "task": self.task.name}

    @classmethod
    def describe_tasks(cls) -> list[tuple[int, str, str, dict[str, Any]]]:
        """(id, name, split, params) of every catalog task."""
        out = []
        for i, (name, params) in enumerate(cls.CATALOG.items()):
            split = "/".join(s for s, names in (("train", cls.TRAIN), ("test", cls.TEST)) if name in names) or "-"
            out.append((i, name, split, cls.canonical(params)[1]))
        return out


def optional_index(params: Mapping[str, Any], key: str, count: int, what: str) -> int | None:
    """The one parameter ``key`` of a task that names an index in ``0..count-1`` or ``None`` (one-line errors)."""
    if set(params) != {key}:
        raise ConfigError(f"a {what} task takes exactly '{key}' (0-{count - 1} or null), got keys {sorted(params)}")
    value = params[key]
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or not 0 <= value < count:
        raise ConfigError(f"{what} '{key}' must be an integer in 0-{count - 1} or null, got {value!r}")
    return int(value)


class LimbEdits:
    """Crippling edits of a compiled model: actuators without force, feet drawn and colliding shorter.

    Remembers the unperturbed gains and foot geometry so that every task is
    applied to the intact robot. A foot capsule starts at its body's origin
    (the joint it hangs from), so it is shrunk towards that end.
    """

    def __init__(self, model: mujoco.MjModel, feet: list[int], shorten: float) -> None:
        self.model, self.feet, self.shorten = model, feet, shorten
        self.gain = model.actuator_gainprm[:, 0].copy()
        self.foot_pos = model.geom_pos[feet].copy()
        self.foot_size = model.geom_size[feet].copy()

    def apply(self, dead_actuators: list[int], short_feet: list[int]) -> None:
        m = self.model
        m.actuator_gainprm[:, 0] = self.gain
        m.actuator_gainprm[dead_actuators, 0] = 0.0
        m.geom_pos[self.feet] = self.foot_pos
        m.geom_size[self.feet] = self.foot_size
        for leg in short_feet:
            m.geom_pos[self.feet[leg]] = self.foot_pos[leg] * self.shorten
            m.geom_size[self.feet[leg], 1] = self.foot_size[leg, 1] * self.shorten


def split_task_kwargs(kwargs: dict[str, Any]) -> tuple[Any, Any]:
    """Pop ``schedule`` and ``task_sampler`` from constructor keyword arguments."""
    return kwargs.pop("schedule", None), kwargs.pop("task_sampler", None)


__all__ = ["EnvInfo", "LimbEdits", "Resolve", "TaskEnv", "optional_index", "split_task_kwargs"]
