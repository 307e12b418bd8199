"""Tasks and task schedules of the non-stationary environments.

A *task* is one setting of an environment's perturbation (a malfunction, a
crippled leg, a terrain...). A *schedule* decides which task is active at each
step of an episode; a switch changes the simulator's parameters between two
steps and never touches its state.

Schedules are written as plain data, so that ``gym.make`` keyword arguments and
YAML configs say the same thing::

    schedule: sign_negative                                   # constant task
    schedule: {type: constant, task: sign_negative}
    schedule: {type: alternating, tasks: [normal, sign_negative], period: 500}
    schedule: {type: random, tasks: [normal, flip_0], min_len: 100, max_len: 400, seed: 3}
    schedule: {type: sequence, entries: [[0, normal], [500, sign_negative]]}
    schedule: {type: sampled}            # a new task from the task sampler at every reset
    task_sampler: train                  # train | test | [task, task, ...]

A task is written as a catalog name (``metadapt envs --show ID`` lists them),
as a mapping of the environment's task parameters, or as the name of a
perturbation: a task declared in data that sets or scales fields of the MuJoCo
model (``env.perturbations`` in a config, ``make_env(id, perturbations=...)``;
see ``metadapt.envs.perturb``), e.g. a payload from step 1000::

    schedule: {type: sequence, entries: [[0, normal], [1000, payload]]}
"""

from __future__ import annotations

import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from metadapt.errors import ConfigError

# Task ids of parametric tasks (not in a catalog) start here, so they never
# collide with the catalog's small integers.
PARAMETRIC_ID_BASE = 1000


@dataclass(frozen=True)
class Task:
    """One perturbation setting. ``params`` are the environment's own parameters."""

    name: str
    task_id: int
    params: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)


def parametric_id(name: str) -> int:
    """A stable id for a task outside the catalog: the same name gives the same id in every run."""
    return PARAMETRIC_ID_BASE + zlib.crc32(name.encode()) % 1_000_000_000


TaskSpec = str | Mapping[str, Any]
Resolve = Callable[[TaskSpec], Task]
Sampler = Callable[[np.random.Generator], Task]


class TaskSchedule(ABC):
    """Which task is active at each step of an episode (step 0 is the first ``env.step``)."""

    @abstractmethod
    def reset(self, rng: np.random.Generator, sample: Sampler) -> None:
        """Start an episode; ``rng`` is the environment's seeded generator, ``sample`` its task sampler."""

    @abstractmethod
    def task_at(self, step: int) -> Task:
        """The task active during step ``step`` (called with non-decreasing steps)."""

    @abstractmethod
    def describe(self) -> str:
        """One readable line."""


class Constant(TaskSchedule):
    def __init__(self, task: Task) -> None:
        self.task = task

    def reset(self, rng: np.random.Generator, sample: Sampler) -> None:
        pass

    def task_at(self, step: int) -> Task:
        return self.task

    def describe(self) -> str:
        return f"constant({self.task.name})"


class Sampled(TaskSchedule):
    """One task drawn from the sampler at every reset, constant through the episode."""

    def __init__(self) -> None:
        self.task: Task | None = None

    def reset(self, rng: np.random.Generator, sample: Sampler) -> None:
        self.task = sample(rng)

    def task_at(self, step: int) -> Task:
        assert self.task is not None, "reset() first"
        return self.task

    def describe(self) -> str:
        return "sampled (a new task from the task sampler at every reset)"


class Alternating(TaskSchedule):
    """``tasks[0]`` for ``period`` steps, then ``tasks[1]``..., cycling."""

    def __init__(self, tasks: Sequence[Task], period: int) -> None:
        if period <= 0:
            raise ConfigError(f"alternating schedule: period must be a positive integer, got {period}")
        if not tasks:
            raise ConfigError("alternating schedule: tasks must name at least one task")
        self.tasks, self.period = list(tasks), period

    def reset(self, rng: np.random.Generator, sample: Sampler) -> None:
        pass

    def task_at(self, step: int) -> Task:
        return self.tasks[(step // self.period) % len(self.tasks)]

    def describe(self) -> str:
        return f"alternating({', '.join(t.name for t in self.tasks)}; period {self.period})"


class Sequence_(TaskSchedule):
    """Explicit ``[(start_step, task), ...]``: strictly increasing starts, the first at step 0."""

    def __init__(self, entries: Sequence[tuple[int, Task]]) -> None:
        if not entries:
            raise ConfigError("sequence schedule: entries must hold at least one (start_step, task)")
        starts = [s for s, _ in entries]
        if starts[0] != 0:
            raise ConfigError(f"sequence schedule: the first entry must start at step 0, got {starts[0]}")
        for a, b in zip(starts, starts[1:], strict=False):
            if b <= a:
                raise ConfigError(
                    f"sequence schedule: start steps must be strictly increasing (overlap or unsorted at {a} -> {b})"
                )
        self.starts = np.asarray(starts)
        self.tasks = [t for _, t in entries]

    def reset(self, rng: np.random.Generator, sample: Sampler) -> None:
        pass

    def task_at(self, step: int) -> Task:
        return self.tasks[int(np.searchsorted(self.starts, step, side="right")) - 1]

    def describe(self) -> str:
        return "sequence(" + ", ".join(f"{s}: {t.name}" for s, t in zip(self.starts, self.tasks, strict=True)) + ")"


class Random(TaskSchedule):
    """Segments of random length in ``[min_len, max_len]``, each a random task different from the last.

    Tasks come from ``tasks`` or, when it is ``None``, from the environment's
    task sampler. With a ``seed`` every episode gets the same segments; without
    one they are drawn from the environment's seeded generator at each reset.
    """

    def __init__(self, tasks: Sequence[Task] | None, min_len: int, max_len: int, seed: int | None) -> None:
        if min_len <= 0 or max_len < min_len:
            raise ConfigError(f"random schedule: need 0 < min_len <= max_len, got min_len={min_len} max_len={max_len}")
        if tasks is not None and len(tasks) < 2:
            raise ConfigError("random schedule: tasks must name at least two tasks")
        self.tasks, self.min_len, self.max_len, self.seed = tasks, min_len, max_len, seed
        self._rng: np.random.Generator | None = None
        self._sample: Sampler | None = None
        self._ends: list[int] = []
        self._segment_tasks: list[Task] = []

    def reset(self, rng: np.random.Generator, sample: Sampler) -> None:
        self._rng = np.random.default_rng(self.seed) if self.seed is not None else rng
        self._sample, self._ends, self._segment_tasks = sample, [], []

    def _draw(self, previous: Task | None) -> Task:
        assert self._rng is not None and self._sample is not None, "reset() first"
        for _ in range(100):
            if self.tasks is None:
                task = self._sample(self._rng)
            else:
                task = self.tasks[int(self._rng.integers(len(self.tasks)))]
            if previous is None or task.task_id != previous.task_id:
                return task
        return task

    def task_at(self, step: int) -> Task:
        while not self._ends or self._ends[-1] <= step:
            start = self._ends[-1] if self._ends else 0
            assert self._rng is not None, "reset() first"
            self._ends.append(start + int(self._rng.integers(self.min_len, self.max_len + 1)))
            self._segment_tasks.append(self._draw(self._segment_tasks[-1] if self._segment_tasks else None))
        return self._segment_tasks[int(np.searchsorted(self._ends, step, side="right"))]

    def describe(self) -> str:
        names = "sampler" if self.tasks is None else ", ".join(t.name for t in self.tasks)
        seed = "" if self.seed is None else f"; seed {self.seed}"
        return f"random({names}; segments {self.min_len}-{self.max_len} steps{seed})"


_KEYS = {
    "constant": {"type", "task"},
    "sampled": {"type"},
    "alternating": {"type", "tasks", "period"},
    "random": {"type", "tasks", "min_len", "max_len", "seed"},
    "sequence": {"type", "entries"},
}


def _int(spec: Mapping[str, Any], key: str, kind: str, default: Any = ...) -> Any:
    value = spec.get(key, default)
    if value is ...:
        raise ConfigError(f"{kind} schedule: missing '{key}'")
    if value is None and default is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ConfigError(f"{kind} schedule: '{key}' must be an integer, got {value!r}")
    return int(value)


def _task_list(spec: Mapping[str, Any], kind: str, resolve: Resolve) -> list[Task]:
    tasks = spec.get("tasks")
    if not isinstance(tasks, list | tuple):
        raise ConfigError(f"{kind} schedule: 'tasks' must be a list of tasks, got {tasks!r}")
    return [resolve(t) for t in tasks]


def parse_schedule(spec: Any, resolve: Resolve, presets: Mapping[str, Any] | None = None) -> TaskSchedule:
    """Build a schedule from a ``TaskSchedule``, a task or preset name, or a mapping with a ``type``.

    ``resolve`` turns a task spec into a ``Task`` and raises ``ConfigError`` for
    unknown tasks; ``presets`` are the environment's named default schedules.
    """
    if isinstance(spec, TaskSchedule):
        return spec
    if isinstance(spec, str):
        if presets and spec in presets:
            return parse_schedule(presets[spec], resolve)
        try:
            return Constant(resolve(spec))
        except ConfigError as exc:
            if not presets:
                raise
            # The presets before the tasks: a long task list is cut at the end of the line. The catalog's own
            # message is "unknown task 'x' (tasks: ...)": its list is kept, its first words would repeat this.
            why, lead = str(exc), f"unknown task '{spec}' ("
            tasks = why[len(lead):-1] if why.startswith(lead) and why.endswith(")") else why
            raise ConfigError(f"unknown task '{spec}', and no preset schedule of that name (metadapt envs --show ID "
                              f"lists them; presets: {', '.join(presets)}; {tasks})") from None
    if not isinstance(spec, Mapping):
        raise ConfigError(f"schedule must be a task name or a mapping with a 'type', got {spec!r}")
    kind = spec.get("type")
    if kind not in _KEYS:
        raise ConfigError(f"schedule type {kind!r} is unknown (allowed: {', '.join(_KEYS)})")
    unknown = set(spec) - _KEYS[kind]
    if unknown:
        raise ConfigError(f"{kind} schedule: unknown key(s) {sorted(unknown)} (allowed: {sorted(_KEYS[kind])})")
    if kind == "constant":
        if "task" not in spec:
            raise ConfigError("constant schedule: missing 'task'")
        return Constant(resolve(spec["task"]))
    if kind == "sampled":
        return Sampled()
    if kind == "alternating":
        return Alternating(_task_list(spec, kind, resolve), _int(spec, "period", kind))
    if kind == "random":
        tasks = _task_list(spec, kind, resolve) if spec.get("tasks") is not None else None
        return Random(tasks, _int(spec, "min_len", kind), _int(spec, "max_len", kind), _int(spec, "seed", kind, None))
    entries = spec.get("entries")
    if not isinstance(entries, list | tuple):
        raise ConfigError(f"sequence schedule: 'entries' must be a list of [start_step, task], got {entries!r}")
    parsed = []
    for entry in entries:
        if not isinstance(entry, list | tuple) or len(entry) != 2:
            raise ConfigError(f"sequence schedule: each entry must be [start_step, task], got {entry!r}")
        parsed.append((_int({"start_step": entry[0]}, "start_step", kind), resolve(entry[1])))
    return Sequence_(parsed)


def parse_sampler(spec: Any, train: Sampler, test: Sampler, resolve: Resolve) -> Sampler:
    """``"train"``, ``"test"`` or a list of tasks (drawn uniformly) -> a sampler."""
    if spec == "train":
        return train
    if spec == "test":
        return test
    if isinstance(spec, list | tuple) and spec:
        tasks = [resolve(t) for t in spec]
        return lambda rng: tasks[int(rng.integers(len(tasks)))]
    raise ConfigError(f"task_sampler must be 'train', 'test' or a non-empty list of tasks, got {spec!r}")
