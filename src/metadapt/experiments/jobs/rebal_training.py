"""ReBAL's iterative training loop: seed 000 Table 1's collect-and-fit loop with the recurrent model.

Collection plans with the context carried online (``RecurrentLearner``); every
fit is ``metadapt.meta.rebal.fit_recurrent`` on trajectory windows; ``rebal.pt``
holds the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from metadapt.adapt.base import OnlineLearner
from metadapt.adapt.rebal import RecurrentLearner
from metadapt.errors import CheckpointError
from metadapt.experiments.jobs.iterate import IterativeTrainer, iteration_seed
from metadapt.meta.checkpoint import check_finite, save_atomic
from metadapt.meta.rebal import RECURRENT_FORMAT, fit_recurrent, recurrent_state
from metadapt.models.base import DynamicsModel
from metadapt.models.normalizer import Normalizer
from metadapt.models.recurrent import RecurrentDynamics


@dataclass(frozen=True)
class RecurrentSettings:
    """The windows and batches of every ``fit_recurrent`` in the loop (M past, K future steps)."""

    past: int = 16
    future: int = 16
    batch: int = 32
    batches_per_epoch: int = 100
    val_batches: int = 8


class RecurrentTrainer(IterativeTrainer):
    """The iterative loop with ReBAL's recurrent model: collection plans with the context carried online.

    Validation holds out whole trajectories (windows must not mix splits).
    """

    model: RecurrentDynamics  # type: ignore[assignment]

    def __init__(self, *args: Any, recurrent: RecurrentSettings, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.recurrent = recurrent
        self.per_episode_validation = True

    def planning_model(self) -> DynamicsModel:
        return self.model.planning_model()

    def collection_learner(self) -> OnlineLearner:
        return RecurrentLearner(self.model, self.params)

    def model_state(self) -> dict[str, Any]:
        return recurrent_state(self.model, self.params, self.env_id, self.obs_version)

    def restore_model(self, state: dict[str, Any], path: Path) -> None:
        if state.get("format") != RECURRENT_FORMAT:
            raise CheckpointError(f"{path} is not a ReBAL training checkpoint")
        m = self.model
        want = {"hidden": list(m.hidden), "context": m.context_dim, "activation": m.activation, "sigma": m.sigma}
        if diff := [f"{k} {state.get(k)!r} (config: {v!r})" for k, v in want.items() if state.get(k) != v]:
            raise CheckpointError(f"{path} holds a model with {', '.join(diff)}: resume with the config it was "
                                  "trained with")
        normalizer = Normalizer.from_state_dict(state["normalizer"])
        params = {k: v.float() for k, v in state["params"].items()}
        check_finite(params, "parameters", str(path))
        check_finite(normalizer.state_dict(), "normalizer statistics", str(path))
        self.model.normalizer = normalizer.to(self.device)
        self.params = {k: v.to(self.device) for k, v in params.items()}

    def save_artifacts(self) -> None:
        save_atomic(self.model_state(), self.run_dir / "rebal.pt")

    def fit(self, iteration: int) -> dict[str, float]:
        s, r = self.settings, self.recurrent
        every = self.buffer.transitions()
        self.model.normalizer = Normalizer.from_data(every.obs, every.act, every.next_obs).to(self.device)
        gen = torch.Generator().manual_seed(iteration_seed(self.seed, iteration, 4))
        params, res = fit_recurrent(
            self.model, self.params, self.buffer, past=r.past, future=r.future, batch=r.batch,
            batches_per_epoch=r.batches_per_epoch, val_batches=r.val_batches, epochs=s.epochs, lr=s.lr,
            patience=s.patience, generator=gen,
        )
        self.check_divergence(iteration, res.diverged, res.best_epoch)
        self.params = params
        return {"train_loss": res.train_loss, "val_loss": res.val_loss, "epochs": res.epochs,
                "best_epoch": res.best_epoch, "diverged": res.diverged}
