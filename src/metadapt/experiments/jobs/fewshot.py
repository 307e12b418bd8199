"""N-way K-shot image classification as a task family of the supervised job (``task.type: omniglot``).

The data is an Omniglot-layout folder (``task.data``: the real Omniglot for
those who have it) or, by default, the glyph set generated from the fonts
matplotlib ships (``data/glyphs.py``), written once under
``$METADAPT_DATA`` (default ``~/.cache/metadapt``)/glyphs-<seed>. Meta-training
draws episodes from the background alphabets, evaluation from the evaluation
alphabets, whose characters it never saw.

Baselines, as the issue and the MAML paper ask:
- *pretrained*: one network trained to classify every training class at once
  (rotations included), whose head is then replaced by a zero ``N``-way head
  and the whole network fine-tuned on each test episode with the same steps as
  MAML's evaluation;
- *nearest neighbour* in pixel space (no training).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from metadapt.data.episodes import NWayKShot, nearest_neighbour_accuracy
from metadapt.data.glyphs import generate_glyphs
from metadapt.data.omniglot import ImageClasses, load_omniglot
from metadapt.errors import MetadaptError
from metadapt.experiments.jobs.supervised import Pretrain, Problem, summarize
from metadapt.models.classifier import ConvClassifier
from metadapt.types import Params

GLYPH_SEED = 0


def data_root(cfg: dict[str, Any]) -> Path:
    """``task.data``, or the generated glyph set (made on first use)."""
    if cfg["task"]["data"]:
        return Path(cfg["task"]["data"]).expanduser()
    base = Path(os.environ.get("METADAPT_DATA", Path.home() / ".cache" / "metadapt")).expanduser()
    return generate_glyphs(base / f"glyphs-{GLYPH_SEED}", seed=GLYPH_SEED)


class AllClasses:
    """Batches of single images labelled with their class among every class of a split (rotations as classes)."""

    def __init__(self, classes: ImageClasses, rotations: bool, device: torch.device) -> None:
        images = classes.images.float().div_(255.0)
        if rotations:
            images = torch.cat([torch.rot90(images, r, dims=(2, 3)) for r in range(4)], dim=0)
        self.images = images.to(device)  # C' x D x H x W
        self.num_classes, self.drawings = int(images.shape[0]), int(images.shape[1])

    def sample(self, size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``size`` random images (``size x 1 x H x W``) and their classes (``size``)."""
        c = torch.randint(self.num_classes, (size,), generator=generator)
        d = torch.randint(self.drawings, (size,), generator=generator)
        c, d = c.to(self.images.device), d.to(self.images.device)
        return self.images[c, d].unsqueeze(1), c


def _fresh_head(n_way: int) -> Any:
    def transfer(params: Params) -> Params:
        out = {k: v for k, v in params.items() if not k.startswith("out.")}
        w = params["out.weight"]
        out["out.weight"] = w.new_zeros(n_way, w.shape[-1])
        out["out.bias"] = w.new_zeros(n_way)
        return out

    return transfer


def omniglot_problem(cfg: dict[str, Any], device: torch.device) -> Problem:
    """The MAML paper's Omniglot setting on ``data_root(cfg)`` (``task.type: omniglot``)."""
    t, m = cfg["task"], cfg["model"]
    if t["shots"] + max(t["query"], t["eval_query"]) > 20:
        raise MetadaptError(f"task.shots + task.query (and eval_query) must leave them distinct drawings: "
                            f"{t['shots']} + {max(t['query'], t['eval_query'])} > 20 drawings per character")
    root = data_root(cfg)
    background, evaluation = load_omniglot(root, "background"), load_omniglot(root, "evaluation")
    try:
        train = NWayKShot(background, t["ways"], t["shots"], t["query"], t["rotations"], device)
        test = NWayKShot(evaluation, t["ways"], t["shots"], t["eval_query"], t["rotations"], device)
    except ValueError as exc:
        raise MetadaptError(f"task: {exc}") from None
    side = int(background.images.shape[-1])
    model = ConvClassifier(t["ways"], 1, side, m["filters"], norm_scale=m["norm_scale"], pool=m["pool"])
    pool = AllClasses(background, t["rotations"], device)
    wide = ConvClassifier(pool.num_classes, 1, side, m["filters"], norm_scale=m["norm_scale"], pool=m["pool"])

    def nearest(generator: torch.Generator, tasks: int, batch: int) -> dict[str, Any]:
        scores, left = [], tasks
        while left > 0:
            episodes = test.sample(min(batch, left), generator, "test")
            scores.append(nearest_neighbour_accuracy(episodes).cpu())
            left -= episodes.num_tasks
        return {"nearest_neighbour": {"0": summarize(torch.cat(scores))}}

    return Problem(model, train, test, "accuracy", model.accuracy, extra=nearest,
                   pretrain=Pretrain(wide, pool.sample, _fresh_head(t["ways"])), architecture=("pool", "norm_scale"))
