"""Perturbations without code: tasks that set or scale named fields of a MuJoCo model.

A *perturbation* is a named task made of edits of the compiled model, each one
``model.<element>(<name>).<field>`` as MuJoCo's Python bindings expose it (a
body's ``mass``, a geom's ``friction``, a joint's ``damping``, an actuator's
``gear`` or ``gainprm``...). Written as plain data, the same in ``gym.make``
keyword arguments (``metadapt.envs.make_env(id, perturbations=...)``) and in a
config (``env.perturbations``)::

    perturbations:
      payload:                              # a list of edits: the env's default task plus these
        - {element: body, name: torso, field: mass, scale: 2.0}
      heavy_feet:
        - {element: body, name: bfoot, field: mass, add: 0.5}
        - {element: body, name: ffoot, field: mass, add: 0.5}
      stiff_back:
        - {element: joint, name: bthigh, field: damping, add: 5.0}
      reversed_payload:                     # composed with one of the env's built-in tasks
        task: sign_negative                 # a catalog name or a parameter mapping
        edits:
          - {element: body, name: torso, field: mass, scale: 2.0}

One edit is ``element``, ``name`` (or an integer id), ``field``, exactly one of
``set`` (the new value), ``scale`` (a factor) or ``add`` (an offset), and
optionally ``index`` (an entry or a list of entries of the field: ``gainprm``
has 10, ``friction`` 3). A value is a number or a list with one number per
(selected) entry; ``scale`` and ``add`` also take one number for all entries.
Floating-point fields can be edited, except those MuJoCo derives from the
others (``invweight0``, ``subtreemass``, ``acc0``, ``length0``, ``M0``,
``poscom0``: they are recomputed with ``mj_setConst`` after every switch); of
the integer fields (most index MuJoCo's own arrays) only a geom's
``priority``, ``contype`` and ``conaffinity`` can be ``set``.

MuJoCo gives a contact the larger friction of its two geoms unless one has the
higher ``priority``: lowering the floor's friction alone leaves a robot whose
feet have more just as it was. A slippery floor is::

    slippery:
      - {element: geom, name: floor, field: friction, set: [0.1, 0.005, 0.0001]}
      - {element: geom, name: floor, field: priority, set: 1}

The perturbations' names are tasks like the environment's own: any schedule
(``schedule: payload``, ``{type: sequence, entries: [[0, normal], [1000,
payload]]}``, ``{type: alternating, tasks: [normal, slippery], period: 500}``,
random ones) and ``task_sampler: [normal, payload, slippery]`` use them, and
``info["task_id"]`` / ``info["task"]`` report them (ids follow the environment's
catalog: ``len(CATALOG) + i`` for the ``i``-th perturbation). The observation
never shows them.

A switch happens between two steps and never touches the simulator state:
the fields edited by the previous task get back their unperturbed values, the
new task's built-in part is applied (``apply_task``: the environment's own
malfunction, crippled leg...), then its edits; so tasks never accumulate, and
``scale`` / ``add`` act on the value the built-in task leaves (a reversed
actuator with ``gear`` scaled by 0.5 pushes backwards at half force). A
perturbation without ``task`` runs with the environment's first catalog task
(``normal`` for metadapt's own).

Every name, field, index and value shape is checked against the model when
the environment is built (one ``ConfigError`` line naming the perturbation,
the edit and what is wrong), before any step. metadapt's own environments
(``TaskEnv``) take the tasks into their catalog; any other Gymnasium MuJoCo
environment (``env.unwrapped.model``) is wrapped in ``PerturbedEnv``, which
gives it the same schedules, with ``normal`` (the model as built) as task 0.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from numbers import Real
from typing import Any, SupportsFloat

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium.utils import seeding

from metadapt.envs.base import TaskEnv
from metadapt.envs.tasks import Task, TaskSpec
from metadapt.errors import ConfigError

OPS = ("set", "scale", "add")
EDIT_KEYS = ("element", "name", "field", "index", *OPS)
# Fields MuJoCo computes from the others (mj_setConst): an edit would be overwritten at the next switch.
DERIVED = frozenset({"invweight0", "subtreemass", "acc0", "length0", "M0", "poscom0"})
# Fields whose entries must stay >= 0 (a negative mass or friction makes the simulation diverge).
NONNEGATIVE = frozenset({"mass", "inertia", "damping", "armature", "frictionloss", "friction", "contype",
                         "conaffinity"})
# The integer fields that may be edited (with ``set``): they choose between values rather than index arrays.
# A contact's friction is the larger of its two geoms' unless one has the higher ``priority``: a slippery
# floor is the floor's low friction with a priority above the robot's geoms (0 by default).
INTEGER_FIELDS = frozenset({"priority", "contype", "conaffinity"})
# Callables of MjModel that are not element accessors.
_NOT_ELEMENTS = frozenset({"bind", "bind_scalar", "from_binary_path", "from_xml_path", "from_xml_string"})
# A perturbation task's parameters: its built-in task's, and its name under this key ({"perturbation": "payload"}
# is also how a perturbation is written as a mapping, e.g. for next_task).
KEY = "perturbation"


@dataclass(frozen=True)
class Edit:
    """One edit as written: ``model.<element>(<name>).<field>[index] (set | scale | add) value``."""

    element: str
    name: str | int
    field: str
    op: str
    value: np.ndarray  # 1-D, one number or one per selected entry
    index: tuple[int, ...] | None = None

    def describe(self) -> str:
        entries = "" if self.index is None else f"[{', '.join(map(str, self.index))}]"
        return f"{self.element} {self.name!r} {self.field}{entries}"


@dataclass(frozen=True)
class Perturbation:
    """A named perturbation task: its built-in task (``None``: the environment's default) and its edits."""

    name: str
    task: TaskSpec | None
    edits: tuple[Edit, ...]


# ---- parsing (no model needed) ----------------------------------------------------------------------------------
def parse_perturbations(spec: Any) -> dict[str, Perturbation]:
    """``{name: [edit, ...] | {task: ..., edits: [edit, ...]}}`` -> perturbations (one ``ConfigError`` line)."""
    if spec is None:
        return {}
    if not isinstance(spec, Mapping):
        raise ConfigError(f"perturbations must be a mapping of task name to a list of edits, got {spec!r}")
    out: dict[str, Perturbation] = {}
    for name, body in spec.items():
        if isinstance(body, Perturbation):
            out[name] = body
            continue
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"perturbations: a task name must be a non-empty string, got {name!r}")
        where = f"perturbation '{name}'"
        task = None
        edits = body
        if isinstance(body, Mapping):
            unknown = sorted(set(body) - {"task", "edits"}, key=str)
            if unknown:
                raise ConfigError(f"{where}: unknown key(s) {unknown} (allowed: task, edits)")
            task, edits = body.get("task"), body.get("edits")
            if task is not None and not isinstance(task, str | Mapping):
                raise ConfigError(f"{where}: 'task' must be a task name or a mapping of parameters, got {task!r}")
        if not isinstance(edits, list | tuple) or not edits:
            raise ConfigError(f"{where}: needs a non-empty list of edits "
                              f"({{element, name, field, set|scale|add}}), got {edits!r}")
        out[name] = Perturbation(name, task, tuple(_parse_edit(e, f"{where} edits[{i}]") for i, e in enumerate(edits)))
    return out


def _number_list(value: Any, what: str) -> np.ndarray:
    items = value if isinstance(value, list | tuple) else [value]
    if not items or any(isinstance(v, bool) or not isinstance(v, Real) for v in items):
        raise ConfigError(f"{what} must be a number or a non-empty list of numbers, got {value!r}")
    try:
        out = np.asarray([float(v) for v in items], dtype=np.float64)
    except OverflowError:  # an integer beyond every float
        raise ConfigError(f"{what} is out of range, got {value!r}") from None
    if not np.isfinite(out).all():
        raise ConfigError(f"{what} must be finite, got {value!r}")
    return out


def _parse_edit(edit: Any, where: str) -> Edit:
    if not isinstance(edit, Mapping):
        raise ConfigError(f"{where}: an edit is a mapping {{element, name, field, set|scale|add}}, got {edit!r}")
    unknown = sorted(set(edit) - set(EDIT_KEYS), key=str)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown} (allowed: {', '.join(EDIT_KEYS)})")
    for key in ("element", "name", "field"):
        if key not in edit:
            raise ConfigError(f"{where}: missing '{key}'")
    element, name, field = edit["element"], edit["name"], edit["field"]
    if not isinstance(element, str) or not isinstance(field, str):
        raise ConfigError(f"{where}: 'element' and 'field' must be strings, got {element!r} and {field!r}")
    if isinstance(name, bool) or not isinstance(name, str | int):
        raise ConfigError(f"{where}: 'name' must be a name or an integer id, got {name!r}")
    ops = [k for k in OPS if k in edit]
    if len(ops) != 1:
        raise ConfigError(f"{where}: give exactly one of set, scale, add (got {', '.join(ops) or 'none'})")
    op = ops[0]
    index = edit.get("index")
    if index is not None:
        entries = index if isinstance(index, list | tuple) else [index]
        if (not entries or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in entries)
                or len(set(entries)) != len(entries)):
            raise ConfigError(f"{where}: 'index' must be an entry or a list of distinct entries (integers >= 0), "
                              f"got {index!r}")
        index = tuple(int(i) for i in entries)
    return Edit(element, name, field, op, _number_list(edit[op], f"{where}: '{op}'"), index)


# ---- binding edits to a model -----------------------------------------------------------------------------------
def elements(model: mujoco.MjModel) -> list[str]:
    """The element kinds of ``model.<element>(name)`` (MuJoCo's accessors, aliases included)."""
    return sorted(a for a in dir(model)
                  if not a.startswith("_") and a not in _NOT_ELEMENTS and callable(getattr(model, a)))


def editable_fields(view: Any) -> list[str]:
    """The editable fields of one element view (``model.body("torso")``): the floating-point ones MuJoCo does not
    derive from others, and the integers of ``INTEGER_FIELDS``."""
    out = []
    for attr in dir(view):
        if attr.startswith("_") or attr in ("id", "name") or attr in DERIVED:
            continue
        value = getattr(view, attr, None)
        if isinstance(value, np.ndarray) and value.size and (
                value.dtype.kind == "f" or (value.dtype.kind in "iu" and attr in INTEGER_FIELDS)):
            out.append(attr)
    return out


def _names(accessor: Callable[[Any], Any]) -> list[str]:
    names = []
    while True:
        try:
            names.append(accessor(len(names)).name)
        except (IndexError, KeyError, ValueError):
            return names


def _view(model: mujoco.MjModel, edit: Edit, where: str) -> Any:
    kinds = elements(model)
    if edit.element not in kinds:
        raise ConfigError(f"{where}: unknown element '{edit.element}' (elements: {', '.join(kinds)})")
    accessor = getattr(model, edit.element)
    try:
        view = accessor(edit.name)
    except (IndexError, KeyError, ValueError, TypeError):
        names = _names(accessor)
        listed = ", ".join(n or f"#{i}" for i, n in enumerate(names[:40])) + (" ..." if len(names) > 40 else "")
        what = f"id {edit.name}" if isinstance(edit.name, int) else f"named '{edit.name}'"
        raise ConfigError(f"{where}: the model has no {edit.element} {what} "
                          f"({edit.element}s: {listed or 'none'})") from None
    if not type(view).__name__.endswith("Views"):
        raise ConfigError(f"{where}: '{edit.element}' is not an element of the model (elements: {', '.join(kinds)})")
    return view


@dataclass
class _Bound:
    """One edit bound to the model's memory: ``flat[sel]`` is what it changes."""

    key: tuple[str, int, str]
    flat: np.ndarray  # a 1-D view of the model's array
    sel: np.ndarray
    op: str
    value: np.ndarray

    def result(self, current: np.ndarray) -> np.ndarray:
        if self.op == "set":
            return np.broadcast_to(self.value, current.shape).copy()
        return current * self.value if self.op == "scale" else current + self.value

    def apply(self) -> None:
        self.flat[self.sel] = self.result(self.flat[self.sel])


def _bind(model: mujoco.MjModel, edit: Edit, where: str) -> _Bound:
    view = _view(model, edit, where)
    where = f"{where} ({edit.describe()})"
    fields = editable_fields(view)
    if edit.field not in fields:
        if edit.field in DERIVED:
            why = "is derived by MuJoCo from the other fields (mj_setConst) and cannot be edited"
        elif hasattr(view, edit.field):
            why = ("is not a floating-point field and cannot be edited (integers index MuJoCo's arrays; only "
                   f"{', '.join(sorted(INTEGER_FIELDS))} can be set)")
        else:
            why = "does not exist"
        raise ConfigError(f"{where}: field '{edit.field}' of a {edit.element} {why} "
                          f"(editable fields: {', '.join(fields)})")
    array = getattr(view, edit.field)
    flat = array.reshape(-1)
    if not np.shares_memory(flat, array):  # a copy would edit nothing
        raise ConfigError(f"{where}: field '{edit.field}' cannot be edited in place")
    if edit.index is not None and max(edit.index) >= flat.size:
        raise ConfigError(f"{where}: index {max(edit.index)} is out of range ('{edit.field}' has {flat.size} "
                          f"entries: 0-{flat.size - 1})")
    sel = np.arange(flat.size) if edit.index is None else np.asarray(edit.index)
    n = sel.size
    if edit.value.size != n and not (edit.value.size == 1 and (edit.op != "set" or n == 1)):
        entries = f"{n} selected entries" if edit.index is not None else f"{n} entries"
        need = "one number" if n == 1 else f"{n} numbers" if edit.op == "set" else f"{n} numbers or one for all"
        raise ConfigError(f"{where}: '{edit.field}' has {entries}, so '{edit.op}' needs {need}, "
                          f"got {edit.value.size} ({edit.value.tolist()})")
    bound = _Bound((edit.element, int(view.id), edit.field), flat, sel, edit.op, edit.value)
    after = bound.result(flat[sel].astype(np.float64))
    if flat.dtype.kind in "iu" and (edit.op != "set" or not np.array_equal(after, np.round(after))):
        raise ConfigError(f"{where}: '{edit.field}' is an integer field: give it whole numbers with 'set'")
    if not np.isfinite(after).all():
        raise ConfigError(f"{where}: the edited value {after.tolist()} is not finite")
    if edit.field in NONNEGATIVE and (after < 0).any():
        raise ConfigError(f"{where}: '{edit.field}' must stay >= 0, the edit makes it {after.tolist()}")
    return bound


class ModelEdits:
    """The perturbations of one compiled model, checked against it, with their fields' unperturbed values.

    ``switch(name, apply_builtin)`` puts the fields the active perturbation
    edited back to their unperturbed values, calls ``apply_builtin`` (the
    environment's own task), applies perturbation ``name``'s edits (``None``:
    none) and recomputes MuJoCo's derived constants on a scratch ``MjData``:
    the simulator's ``MjData`` is never touched.
    """

    def __init__(self, model: mujoco.MjModel, perturbations: Mapping[str, Perturbation]) -> None:
        self.model = model
        self.bound: dict[str, list[_Bound]] = {}
        self._pristine: dict[tuple[str, int, str], tuple[np.ndarray, np.ndarray]] = {}
        for name, p in perturbations.items():
            self.bound[name] = [_bind(model, e, f"perturbation '{name}' edits[{i}]") for i, e in enumerate(p.edits)]
            for b in self.bound[name]:
                self._pristine.setdefault(b.key, (b.flat, b.flat.copy()))
        self.active: str | None = None
        self._scratch = mujoco.MjData(model)

    def restore(self) -> None:
        """Every field of the active perturbation back to its unperturbed value."""
        if self.active is not None:
            for b in self.bound[self.active]:
                flat, saved = self._pristine[b.key]
                flat[:] = saved

    def switch(self, name: str | None, apply_builtin: Callable[[], None]) -> None:
        previous = self.active
        self.restore()
        self.active = None
        apply_builtin()
        if name is not None:
            for b in self.bound[name]:
                b.apply()
            self.active = name
        if previous is not None or name is not None:
            mujoco.mj_setConst(self.model, self._scratch)


class Perturbations:
    """The perturbation tasks of one ``TaskEnv`` instance (``TaskEnv._perturbations``)."""

    def __init__(self, edits: ModelEdits, tasks: dict[str, Task], builtin: dict[str, Task]) -> None:
        self.edits, self.tasks, self.builtin = edits, tasks, builtin

    def lookup(self, spec: TaskSpec) -> Task | None:
        """The perturbation task ``spec`` names (a name, or a mapping with ``"perturbation": name``, such as a
        perturbation task's own parameters), else ``None``."""
        if isinstance(spec, str):
            return self.tasks.get(spec)
        if isinstance(spec, Mapping) and KEY in spec:
            name = spec[KEY]
            if name not in self.tasks:
                raise ConfigError(f"unknown perturbation {name!r} (perturbations: {', '.join(self.tasks)})")
            return self.tasks[name]
        return None

    def is_perturbation(self, task: Task) -> bool:
        own = self.tasks.get(task.name)
        return own is not None and own.task_id == task.task_id

    def switch(self, env: TaskEnv, task: Task) -> None:
        """Make ``task`` (a perturbation or a built-in task) the model's, from the unperturbed robot."""
        if self.is_perturbation(task):
            base = self.builtin[task.name]
            self.edits.switch(task.name, lambda: env.apply_task(base))
        else:
            self.edits.switch(None, lambda: env.apply_task(task))


def mujoco_model(env: gym.Env) -> mujoco.MjModel:
    """``env.unwrapped.model``, refused in one line when the environment is not a MuJoCo one."""
    model = getattr(env.unwrapped, "model", None)
    if not isinstance(model, mujoco.MjModel):
        raise ConfigError(f"perturbations edit a MuJoCo model, and {type(env.unwrapped).__name__} has none "
                          "(env.unwrapped.model is not a mujoco.MjModel)")
    return model


def install(target: TaskEnv, model: mujoco.MjModel, perturbations: Any, schedule: Any = None,
            task_sampler: Any = None) -> None:
    """Give ``target`` the perturbation tasks, then (re)parse its ``schedule`` and ``task_sampler`` with them.

    Call it before the first reset: the model's current values are the unperturbed ones.
    """
    if getattr(target, "_task", None) is not None:
        raise RuntimeError("install perturbations before the environment's first reset")
    specs = parse_perturbations(perturbations)
    if not specs:
        raise ConfigError("perturbations: name at least one perturbation task")
    catalog = list(target.CATALOG)
    target._perturbations = None
    target._init_tasks(None, None)  # resolve built-in tasks without the perturbations
    tasks, builtin = {}, {}
    for i, (name, p) in enumerate(specs.items()):
        if name in target.CATALOG or name in target.PRESETS:
            kind = "task" if name in target.CATALOG else "schedule preset"
            raise ConfigError(f"perturbation '{name}' has the name of one of the environment's {kind}s: rename it")
        if p.task is None and not catalog:
            raise ConfigError(f"perturbation '{name}': the environment has no default task; name its built-in task "
                              "with {task: ..., edits: [...]}")
        try:
            builtin[name] = target.resolve_task(catalog[0] if p.task is None else p.task)
        except ConfigError as exc:
            raise ConfigError(f"perturbation '{name}' task: {exc}") from None
        # the built-in task's parameters (an environment may read them: a goal velocity) and the perturbation's name
        tasks[name] = Task(name, len(catalog) + i, {**builtin[name].params, KEY: name})
    target._perturbations = Perturbations(ModelEdits(model, specs), tasks, builtin)
    target._init_tasks(schedule, task_sampler)


def perturb(env: gym.Env, perturbations: Any, schedule: Any = None, task_sampler: Any = None) -> gym.Env:
    """``env`` with perturbation tasks (see the module docstring), switched by ``schedule``.

    A metadapt ``TaskEnv`` takes them into its own tasks (``env`` is returned);
    any other MuJoCo environment is wrapped in a ``PerturbedEnv``.
    """
    model = mujoco_model(env)
    if isinstance(env.unwrapped, TaskEnv):
        install(env.unwrapped, model, perturbations, schedule, task_sampler)
        return env
    return PerturbedEnv(env, perturbations, schedule, task_sampler)


class PerturbedEnv(TaskEnv, gym.Wrapper):
    """A Gymnasium MuJoCo environment with perturbation tasks switched by a schedule, as metadapt's own.

    Tasks: ``normal`` (id 0, the model as built) and the perturbations (ids 1,
    2, ... in the order given), all of them in the ``train`` and ``test``
    samplers; ``schedule`` and ``task_sampler`` as in ``metadapt.envs.tasks``
    (default: a task drawn from all of them at every reset). The wrapper
    switches between steps and adds ``task_id`` / ``task`` to every ``info``;
    observations, rewards and spaces are the environment's own.
    """

    def __init__(self, env: gym.Env, perturbations: Any, schedule: Any = None, task_sampler: Any = None) -> None:
        gym.Wrapper.__init__(self, env)
        self._task_rng: np.random.Generator | None = None
        specs = parse_perturbations(perturbations)
        self._names = ("normal", *specs)
        install(self, mujoco_model(env), specs, schedule, task_sampler)

    def sample_train_task(self, rng: np.random.Generator) -> Task:
        """One of all the tasks (``normal`` and every perturbation), uniformly."""
        return self._uniform(self._names, rng)

    def sample_test_task(self, rng: np.random.Generator) -> Task:
        """One of all the tasks, uniformly: the wrapper has no held-out split."""
        return self._uniform(self._names, rng)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        # The episode's task (and so the model) is set before the inner reset draws the pose and runs the first
        # forward pass, as metadapt's own environments do; its draws come from the wrapper's own generator,
        # seeded with the same seed.
        if seed is not None or self._task_rng is None:
            self._task_rng, _ = seeding.np_random(seed)
        self._begin_episode(self._task_rng)
        obs, info = self.env.reset(seed=seed, options=options)
        return obs, {**info, **self.task_info()}

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        self._begin_step()
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs, reward, terminated, truncated, {**info, **self.task_info()}


__all__ = [
    "Edit",
    "ModelEdits",
    "Perturbation",
    "Perturbations",
    "PerturbedEnv",
    "editable_fields",
    "elements",
    "install",
    "parse_perturbations",
    "perturb",
]
