"""Iterative model-based training: collect rollouts, refit the model, repeat.

Iteration 0 acts uniformly at random; later iterations act with MPC on the
current model. All data is aggregated in one buffer of raw transitions and the
normalizer is recomputed from all of it before every fit. Every iteration
draws its randomness from ``(seed, iteration)`` alone, so a run resumed from
the checkpoint of iteration ``i`` repeats iterations ``i+1...`` exactly.

Non-finite numbers: the buffer drops transitions holding one (``metrics.csv``'s
``dropped_nonfinite``, cumulative); a fit whose training loss goes non-finite
stops and the iteration goes on with the best parameters it had (``diverged``,
the epoch; one line in the log), or, when there are none yet (the first fit,
before any epoch improved), the run stops with one line (``FitDiverged``).
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from metadapt.adapt.base import OnlineLearner
from metadapt.adapt.static import StaticLearner
from metadapt.adapt.ts import KShotLearner
from metadapt.agent import MPCAgent
from metadapt.data.buffer import FIELDS as BUFFER_FIELDS
from metadapt.data.buffer import ReplayBuffer
from metadapt.envs import env_obs_version
from metadapt.errors import CheckpointError
from metadapt.experiments.jobs import derive_seed
from metadapt.experiments.jobs.rollout import Callback, EpisodeEnd, RandomPolicy, Step, rollout
from metadapt.experiments.reporting.progress import Reporter
from metadapt.meta.checkpoint import (
    check_finite,
    load_checkpoint,
    model_from_state,
    model_state,
    save_atomic,
    save_model,
)
from metadapt.meta.fit import FitDiverged, fit_dynamics
from metadapt.meta.maml import MetaSettings, expand_inner_lrs, fit_meta, initial_inner_lrs
from metadapt.meta.prior import Prior, save_prior
from metadapt.models.base import DynamicsModel
from metadapt.models.normalizer import Normalizer
from metadapt.planning.base import Planner
from metadapt.types import Params, RewardFn, Window

CHECKPOINT = "checkpoints/latest.pt"
METRIC_FIELDS = (
    "iteration", "env_steps", "rollouts", "rollout_return_mean", "rollout_return_per_1000",
    "train_loss", "val_loss", "val_loss_prior", "epochs", "best_epoch", "collect_seconds", "fit_seconds",
    "diverged", "dropped_nonfinite",
)


@dataclass(frozen=True)
class IterationSettings:
    """Seed 000 Table 1 defaults (MB/DE row): 12 iterations, 50 epochs, 3000 steps, lr 1e-3."""

    iterations: int = 12
    steps_per_iteration: int = 3000
    rollout_length: int = 1000
    epochs: int = 50
    batch_size: int = 512
    lr: float = 1e-3
    val_fraction: float = 0.1
    patience: int = 5
    window: int = 16
    buffer_capacity: int = 1_000_000


@dataclass(frozen=True)
class ReplayedData:
    """Another training run's collected data, handed out in that run's iterations.

    Replaying it instead of collecting fits a model on exactly the data another
    method saw, iteration by iteration (MB and MB+DE against GrBAL on the same
    transitions, validation split included), at the cost of the fits alone.

    Attributes:
        buffer: the source run's transitions (validation marks kept).
        episodes_per_iteration: rollouts the source collected in each iteration.
        source: where it came from, for messages.
    """

    buffer: ReplayBuffer
    episodes_per_iteration: tuple[int, ...]
    source: str
    obs_version: int = 1  # of the environment's observation layout when the data was collected

    @staticmethod
    def load(run_dir: str | Path) -> ReplayedData:
        """Read ``run_dir``'s training checkpoint; a missing or foreign file is a ``CheckpointError``."""
        path = Path(run_dir) / CHECKPOINT
        state = load_checkpoint(path, ("kind", "buffer", "history"))
        if state["kind"] != "iterative_trainer":
            raise CheckpointError(f"{path} is not a training checkpoint")
        try:
            buffer = ReplayBuffer.from_state_dict(state["buffer"])
            counts = tuple(int(row["rollouts"]) for row in state["history"])
        except (KeyError, TypeError, ValueError, AssertionError) as exc:
            raise CheckpointError(f"{path} is incomplete: {exc}") from exc
        if buffer.total_added != len(buffer):
            raise CheckpointError(f"{path}: its buffer dropped old data, so its iterations cannot be replayed")
        return ReplayedData(buffer, counts, str(run_dir), int(state.get("obs_version", 1)))

    def check(
        self, obs_dim: int, act_dim: int, iterations: int, capacity: int, per_episode: bool, obs_version: int
    ) -> None:
        """Refuse data the trainer could not fit exactly as the source collected it.

        That is: other dimensions or observation layout (``obs_version``), fewer iterations than asked for, more
        transitions than ``capacity`` holds, or (``per_episode``: the trainer
        validates on whole held-out trajectories, as meta-training does)
        validation marks drawn per step, as an MB run draws them.
        """
        if (self.buffer.obs_dim, self.buffer.act_dim) != (obs_dim, act_dim):
            raise CheckpointError(
                f"train.data {self.source} holds {self.buffer.obs_dim}-D observations and {self.buffer.act_dim}-D "
                f"actions; the environment has {obs_dim} and {act_dim}")
        if self.obs_version != obs_version:
            raise CheckpointError(f"train.data {self.source} was collected under observation version "
                                  f"{self.obs_version}; the environment's is now {obs_version}")
        if iterations > len(self.episodes_per_iteration):
            raise CheckpointError(f"train.data {self.source} holds {len(self.episodes_per_iteration)} completed "
                                  f"iterations; train.iterations asks for {iterations}")
        if len(self.buffer) > capacity:
            raise CheckpointError(f"train.data {self.source} holds {len(self.buffer)} transitions, more than "
                                  f"train.buffer_capacity ({capacity})")
        if per_episode:
            episode, val = self.buffer.column("episode"), self.buffer.column("val").long()
            _, inverse = torch.unique(episode, return_inverse=True)
            held = torch.zeros(int(inverse.max()) + 1 if inverse.numel() else 0, dtype=torch.long)
            held.index_add_(0, inverse, val)
            size = torch.bincount(inverse, minlength=held.numel())
            if bool(((held > 0) & (held < size)).any()):
                raise CheckpointError(
                    f"train.data {self.source} holds out single steps for validation (a plain-model run); "
                    "meta-training validates on whole held-out trajectories: replay a meta-training run")

    def iteration(self, iteration: int) -> dict[str, torch.Tensor]:
        """The columns of the episodes collected in ``iteration`` (``N x ...`` each)."""
        first = sum(self.episodes_per_iteration[:iteration])
        last = first + self.episodes_per_iteration[iteration]
        episode = self.buffer.column("episode")
        keep = (episode >= first) & (episode < last)
        return {k: self.buffer.column(k)[keep] for k in BUFFER_FIELDS}


def _shapes(params: Params | None) -> dict[str, torch.Size] | None:
    return None if params is None else {k: v.shape for k, v in params.items()}


def _cpu_tree(value: Any) -> Any:
    """Every tensor in nested dicts and lists on the CPU, so checkpoints load on any machine."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _cpu_tree(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_cpu_tree(v) for v in value)
    return value


def iteration_seed(seed: int, iteration: int, stream: int = 0) -> int:
    """An independent 31-bit seed for ``(seed, iteration, stream)``."""
    return derive_seed(seed, iteration, stream)


class _Collector(Callback):
    """Collection's record of every rollout: its steps go to the trainer's buffer as one window per episode,
    with the next episode index and validation marks drawn from ``rng`` when the episode ends."""

    def __init__(self, trainer: IterativeTrainer, rng: np.random.Generator, by_episode: bool) -> None:
        self.trainer, self.rng, self.by_episode = trainer, rng, by_episode
        self.returns: list[float] = []
        self.ret = 0.0  # the running episode's return, for the progress bar
        self.steps: list[Window] = []
        self.task_ids: list[int] = []

    def on_episode_start(self, episode: int, obs: Any, info: dict[str, Any]) -> None:
        self.ret = 0.0

    def on_step(self, step: Step) -> None:
        self.steps.append(step.transition())
        self.task_ids.append(step.info.get("task_id", 0))
        self.ret += step.reward
        self.trainer.reporter.advance("collect", ret=self.ret)

    def on_episode_end(self, end: EpisodeEnd) -> None:
        t, n = self.trainer, end.length
        if n == 0:
            return
        val_fraction = t.settings.val_fraction
        held_out = np.full(n, self.rng.random() < val_fraction) if self.by_episode else \
            self.rng.random(n) < val_fraction
        window = Window.cat(self.steps).replace(episode=torch.full((n,), t._episodes, dtype=torch.long))
        t.buffer.add(window, task_id=np.asarray(self.task_ids), val=held_out)
        t._episodes += 1
        self.steps, self.task_ids = [], []
        self.returns.append(end.total_return)


class IterativeTrainer:
    """Collect -> aggregate -> refit, with a checkpoint after every completed iteration.

    Args:
        env: the environment to collect from (its ``info["task_id"]`` is recorded).
        reward_fn: batched reward for MPC.
        model: dynamics model; its normalizer is replaced as data grows.
        make_planner: ``seed -> Planner`` used for MPC collection.
        settings: iteration, fitting and collection sizes.
        seed: the run's seed.
        run_dir: where checkpoints, ``metrics.csv`` and ``model.pt`` go.
        make_learner: ``params -> OnlineLearner`` acting during collection
            (MB: the static model). Ignored with ``meta``: the prior is then
            adapted on the last K steps at every step (TS / GrBAL).
        meta: meta-train the prior (GrBAL) instead of fitting the plain loss;
            validation then holds out whole trajectories and ``prior.pt`` is
            written after every iteration.
        env_id: recorded in ``prior.pt``.
        replay: fit on another run's data, iteration by iteration, instead of
            collecting (see ``ReplayedData``).
        device: where the parameters live and fitting runs (``cpu`` or
            ``cuda``); the data buffer and every checkpoint stay on the CPU.
    """

    def __init__(
        self,
        env: gym.Env,
        reward_fn: RewardFn,
        model: DynamicsModel,
        make_planner: Callable[[int], Planner],
        settings: IterationSettings,
        seed: int,
        run_dir: str | Path,
        make_learner: Callable[[Params], OnlineLearner] = StaticLearner,
        dtype: torch.dtype = torch.float32,
        reporter: Reporter | None = None,
        meta: MetaSettings | None = None,
        env_id: str | None = None,
        replay: ReplayedData | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        self.device = torch.device(device)
        self.env, self.reward_fn, self.model = env, reward_fn, model
        self.replay = replay
        self.meta, self.env_id = meta, env_id
        self.obs_version = env_obs_version(env)
        self.make_planner, self.make_learner = make_planner, make_learner
        self.settings, self.seed, self.dtype = settings, seed, dtype
        self.run_dir = Path(run_dir)
        self.reporter = reporter or Reporter()
        obs_dim = int(np.prod(env.observation_space.shape))
        act_dim = int(np.prod(env.action_space.shape))
        self.buffer = ReplayBuffer(obs_dim, act_dim, settings.buffer_capacity)
        gen = torch.Generator().manual_seed(iteration_seed(seed, 0, 9))
        self.params: Params = model.init_params(gen, self.device)
        self.inner_lrs: Params | None = initial_inner_lrs(self.params, meta, act_dim) if meta is not None else None
        self.optimizer_state: dict[str, Any] | None = None
        self.history: list[dict[str, float]] = []
        self.completed = -1
        self._episodes = 0
        self.per_episode_validation = False  # windows of held-out trajectories (set by window-based fitters)

    # -- checkpoints ------------------------------------------------------------
    def save(self) -> None:
        state = {
            "kind": "iterative_trainer",
            "completed": self.completed,
            "episodes": self._episodes,
            "settings": asdict(self.settings),
            "seed": self.seed,
            "env_id": self.env_id,
            "obs_version": self.obs_version,
            "model": self.model_state(),
            "optimizer": _cpu_tree(self.optimizer_state),
            "inner_lrs": _cpu_tree(self.inner_lrs),
            "buffer": self.buffer.state_dict(),
            "history": self.history,
        }
        save_atomic(state, self.run_dir / CHECKPOINT)

    def restore(self) -> None:
        """Continue from the last completed iteration in ``run_dir``."""
        path = self.run_dir / CHECKPOINT
        state = load_checkpoint(path, ("kind", "completed", "model", "buffer", "history"))
        if state["kind"] != "iterative_trainer":
            raise CheckpointError(f"{path} is not a training checkpoint")
        if state.get("seed") != self.seed:
            raise CheckpointError(f"{path} was written with seed {state.get('seed')}, not {self.seed}")
        if (found := int(state.get("obs_version", 1))) != (now := self.obs_version):
            raise CheckpointError(f"{path} holds data collected under observation version {found}; the "
                                  f"environment's is now {now}: start a new run")
        try:
            self.buffer = ReplayBuffer.from_state_dict(state["buffer"])
            self.restore_model(state["model"], path)
        except (KeyError, TypeError, ValueError, AssertionError) as exc:
            raise CheckpointError(f"{path} is incomplete: {exc}") from exc
        if {k: tuple(v.shape) for k, v in self.params.items()} != self.model.param_shapes():
            raise CheckpointError(f"{path} does not match the configured model architecture")
        self.optimizer_state = state.get("optimizer")
        self.inner_lrs = state.get("inner_lrs")
        if self.inner_lrs is not None:
            check_finite(self.inner_lrs, "inner learning rates", str(path))
            self.inner_lrs = {k: v.to(self.device) for k, v in self.inner_lrs.items()}
        want = initial_inner_lrs(self.params, self.meta, self.model.act_dim) if self.meta is not None else None
        if _shapes(want) != _shapes(self.inner_lrs):
            raise CheckpointError(f"{path} does not match the configured meta-learning settings "
                                  "(meta.learn_inner_lr, meta.inner_lr_per)")
        self.history = list(state["history"])
        self.completed = int(state["completed"])
        self._episodes = int(state.get("episodes", 0))

    # -- one iteration ------------------------------------------------------------
    def collect(self, iteration: int) -> list[float]:
        """Gather ``steps_per_iteration`` transitions; returns each rollout's return."""
        if self.replay is not None:
            return self.replay_iteration(iteration)
        s = self.settings
        rng = np.random.default_rng(iteration_seed(self.seed, iteration, 1))
        policy: MPCAgent | RandomPolicy
        if iteration > 0:
            planner = self.make_planner(iteration_seed(self.seed, iteration, 2))
            policy = MPCAgent(
                self.planning_model(), self.collection_learner(), planner, self.reward_fn,
                self.meta.past if self.meta else s.window, self.dtype,
            )
        else:
            policy = RandomPolicy(self.env.action_space, iteration_seed(self.seed, iteration, 3))
        self.reporter.start("collect", f"iter {iteration} collect", s.steps_per_iteration)
        # Meta-learning validates on held-out trajectories (whole windows); MB on held-out steps.
        collector = _Collector(self, rng, by_episode=self.meta is not None or self.per_episode_validation)
        # Every rollout starts from its own seeded reset and a freshly reset agent.
        rollout(self.env, policy, s.steps_per_iteration, lambda episode: int(rng.integers(2**31)),
                episode_length=s.rollout_length, callbacks=[collector], reset_each_episode=True)
        return collector.returns

    def replay_iteration(self, iteration: int) -> list[float]:
        """Add the replayed run's ``iteration`` to the buffer; returns its rollouts' returns."""
        assert self.replay is not None
        cols = self.replay.iteration(iteration)
        episode = cols["episode"]
        self.buffer.add(*(cols[k] for k in BUFFER_FIELDS))
        self._episodes = int(episode.max()) + 1 if episode.numel() else self._episodes
        return [float(cols["reward"][episode == e].sum()) for e in episode.unique().tolist()]

    def fit(self, iteration: int) -> dict[str, float]:
        s = self.settings
        every = self.buffer.transitions()
        self.model.normalizer = Normalizer.from_data(every.obs, every.act, every.next_obs).to(self.device)
        gen = torch.Generator().manual_seed(iteration_seed(self.seed, iteration, 4))
        self.reporter.start("fit", f"iter {iteration} fit", s.epochs)

        def on_epoch(epoch: int, train_loss: float, val_loss: float) -> None:
            self.reporter.advance("fit", train=train_loss, val=val_loss)

        if self.meta is not None:
            params, inner_lrs, optimizer_state, meta_res = fit_meta(
                self.model, self.params, self.buffer, self.meta, epochs=s.epochs, lr=s.lr, patience=s.patience,
                generator=gen, inner_lrs=self.inner_lrs, optimizer_state=self.optimizer_state, on_epoch=on_epoch,
            )
            self.check_divergence(iteration, meta_res.diverged, meta_res.best_epoch)
            self.params, self.inner_lrs, self.optimizer_state = params, inner_lrs, optimizer_state
            return {"train_loss": meta_res.train_loss, "val_loss": meta_res.val_loss,
                    "val_loss_prior": meta_res.val_prior, "epochs": meta_res.epochs,
                    "best_epoch": meta_res.best_epoch, "diverged": meta_res.diverged}
        params, optimizer_state, res = fit_dynamics(
            self.model, self.params, self.buffer.transitions("train"), self.buffer.transitions("val"),
            epochs=s.epochs, batch_size=s.batch_size, lr=s.lr, patience=s.patience,
            generator=gen, optimizer_state=self.optimizer_state, on_epoch=on_epoch,
        )
        self.check_divergence(iteration, res.diverged, res.best_epoch)
        self.params, self.optimizer_state = params, optimizer_state
        return {"train_loss": res.train_loss, "val_loss": res.val_loss,
                "epochs": res.epochs, "best_epoch": res.best_epoch, "diverged": res.diverged}

    def check_divergence(self, iteration: int, diverged: int, best_epoch: int) -> None:
        """After a fit: a divergence (``diverged``: its epoch, 0 for none) is one line in the log when the fit
        kept parameters worth going on with (an epoch's, or the previous iteration's), and ``FitDiverged``
        (one line, exit code 2) when there are none: the first fit, before any epoch improved on the
        initial parameters."""
        if not diverged:
            return
        if best_epoch == 0 and self.completed < 0:
            raise FitDiverged(
                f"iteration {iteration}: training diverged (a non-finite loss in epoch {diverged}) before any epoch "
                f"gave usable parameters; nothing was saved: lower train.lr (now {self.settings.lr:g})")
        kept = f"epoch {best_epoch}'s" if best_epoch else "the previous iteration's"
        self.reporter.log(f"iteration {iteration}: training diverged (a non-finite loss in epoch {diverged}); "
                          f"going on with {kept} parameters")

    # -- hooks a trainer of another model kind overrides (ReBAL's RecurrentTrainer) ------------------
    def planning_model(self) -> DynamicsModel:
        """The MLP the agent plans with during collection."""
        return self.model

    def collection_learner(self) -> OnlineLearner:
        """The learner acting during collection: MB's static model, or the prior adapted online."""
        return self.make_learner(self.params) if self.meta is None else self.prior_learner()

    def model_state(self) -> dict[str, Any]:
        return model_state(self.model, self.params, self.env_id, self.obs_version)

    def restore_model(self, state: dict[str, Any], path: Path) -> None:
        """The normalizer and parameters of a training checkpoint's ``model_state``, refused when the
        checkpoint's model is not the configured one (an edited ``model.activation`` would otherwise continue
        weights trained under one activation under another)."""
        model, params = model_from_state(state, str(path))
        found, want = _architecture(model.spec()), _architecture(self.model.spec())
        if found != want:
            diff = ", ".join(f"{k} {found.get(k)!r} (config: {want.get(k)!r})"
                             for k in sorted(set(found) | set(want)) if found.get(k) != want.get(k))
            raise CheckpointError(f"{path} holds a model with {diff}: resume with the config it was trained with")
        self.model.normalizer = model.normalizer.to(self.device)
        self.params = {k: v.to(self.device) for k, v in params.items()}

    def save_artifacts(self) -> None:
        """``model.pt`` (and ``prior.pt`` when meta-training) after every iteration."""
        save_model(self.model, self.params, self.run_dir / "model.pt", self.env_id, self.obs_version)
        if self.meta is not None:
            save_prior(self.prior(), self.run_dir / "prior.pt")

    def prior(self) -> Prior:
        """The current parameters as a meta-trained prior (requires ``meta``)."""
        assert self.meta is not None, "not meta-training"
        m = self.meta
        lr = expand_inner_lrs(self.inner_lrs, self.params) if self.inner_lrs is not None else m.inner_lr
        return Prior(self.model, self.params, lr, m.inner_steps, m.past, m.future, self.env_id, self.obs_version)

    def prior_learner(self) -> KShotLearner:
        p = self.prior()
        # The literal step while collecting, whatever learner.ts.backtrack says: the shipped priors were collected
        # this way and reproduce from their configs.
        return KShotLearner(self.model, p.params, p.inner_lr, p.inner_steps, backtrack=0)

    def run(self, resume: bool = False) -> Params:
        """Run the remaining iterations; ``resume`` continues from ``run_dir``'s checkpoint."""
        if self.replay is not None:
            self.replay.check(self.buffer.obs_dim, self.buffer.act_dim, self.settings.iterations,
                              self.settings.buffer_capacity, self.meta is not None or self.per_episode_validation,
                              self.obs_version)
        if resume:
            self.restore()
            if self.completed + 1 > self.settings.iterations:
                raise CheckpointError(f"{self.run_dir}/config.yaml asks for train.iterations = "
                                      f"{self.settings.iterations}, but the run's checkpoint has completed "
                                      f"{self.completed + 1}: resume continues the same run (start a new run with "
                                      "fewer iterations)")
            self.reporter.log(f"resuming after iteration {self.completed}")
            if self.completed + 1 == self.settings.iterations:
                # A kill between the last checkpoint and the artifacts written after it leaves nothing to run:
                # the artifacts come from the checkpoint's state, as the uninterrupted run wrote them.
                self.write_metrics()
                self.save_artifacts()
        for iteration in range(self.completed + 1, self.settings.iterations):
            t0, added = time.perf_counter(), self.buffer.total_added + self.buffer.dropped_nonfinite
            dropped = self.buffer.dropped_nonfinite
            returns = self.collect(iteration)
            added = self.buffer.total_added + self.buffer.dropped_nonfinite - added  # steps taken, dropped or not
            if (dropped := self.buffer.dropped_nonfinite - dropped) > 0:
                self.reporter.log(f"iteration {iteration}: dropped {dropped} transitions with non-finite numbers "
                                  "from the training data")
            by_episode = self.meta is not None or self.per_episode_validation
            if held := self.buffer.ensure_validation(by_episode):
                self.reporter.log(f"iteration {iteration}: train.val_fraction drew no validation data; holding out "
                                  f"the newest {'episode' if by_episode else 'transition'} ({held} steps) instead")
            t1 = time.perf_counter()
            fit = self.fit(iteration)
            t2 = time.perf_counter()
            row = {
                "iteration": iteration,
                "env_steps": self.buffer.total_added,
                "rollouts": len(returns),
                "rollout_return_mean": float(np.mean(returns)),
                "rollout_return_per_1000": float(np.sum(returns) / max(added, 1) * 1000),
                **fit,
                "collect_seconds": t1 - t0,
                "fit_seconds": t2 - t1,
                "dropped_nonfinite": self.buffer.dropped_nonfinite,
            }
            self.history.append(row)
            self.reporter.scalars("iteration", row, iteration)
            self.completed = iteration
            self.save()
            self.write_metrics()
            self.save_artifacts()
            self.reporter.log(
                f"iteration {iteration}: steps={row['env_steps']} return/1000={row['rollout_return_per_1000']:.1f} "
                f"val_loss={row['val_loss']:.4f}"
            )
        return self.params

    def write_metrics(self) -> None:
        path = self.run_dir / "metrics.csv"
        tmp = path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=METRIC_FIELDS)
            w.writeheader()
            w.writerows(self.history)
        tmp.replace(path)


def _architecture(spec: dict[str, Any]) -> dict[str, Any]:
    """A model spec without its data statistics: what must match for trained weights to mean the same."""
    return {k: v for k, v in spec.items() if k != "normalizer"}
