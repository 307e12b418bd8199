"""``system: supervised``'s ``model.pt`` from outside: a model whose parameters, baseline or inner rates hold a
NaN or an infinity is refused in one line naming the file (exit 2), by ``check`` and by ``train``, instead of
being evaluated into ``null`` means."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from metadapt.cli import main
from metadapt.errors import MESSAGE_LIMIT
from metadapt.experiments.jobs.supervised import MODEL_FORMAT
from metadapt.models.regressor import MLPRegressor

ROOT = Path(__file__).resolve().parents[1]
SINUSOID = str(ROOT / "configs" / "maml_sinusoid.yaml")
SMALL = ["eval.tasks=10", "eval.batch=10"]


def _params(seed: int, bad: float | None = None) -> dict[str, torch.Tensor]:
    """The sinusoid config's 1-40-40-1 network's parameters, one entry set to ``bad`` when given."""
    params = MLPRegressor(1, 1, [40, 40], "relu").init_params(torch.Generator().manual_seed(seed))
    if bad is not None:
        params["layers.1.weight"][3, 5] = bad
    return params


CASES = {
    "nan parameters": lambda: {"params": _params(0, math.nan), "rates": 0.01, "baseline": None},
    "infinite baseline": lambda: {"params": _params(0), "rates": 0.01, "baseline": _params(1, -math.inf)},
    "nan rate": lambda: {"params": _params(0), "rates": math.nan, "baseline": None},
    "infinite learned rates": lambda: {"params": _params(0), "baseline": None,
                                       "rates": {k: torch.full_like(v, math.inf) for k, v in _params(0).items()}},
}


@pytest.mark.parametrize("case", CASES)
def test_a_non_finite_supervised_model_is_refused_at_check_and_train(tmp_path, capsys, case):
    path = tmp_path / "model.pt"
    torch.save({"format": MODEL_FORMAT, "task": {}, "model": {}, **CASES[case]()}, path)
    out = tmp_path / "run"
    for argv in (["check", SINUSOID, *SMALL, f"model.checkpoint={path}"],
                 ["train", SINUSOID, *SMALL, f"model.checkpoint={path}", "--out", str(out), "--quiet"]):
        got = main(argv)
        err = capsys.readouterr().err.strip()
        assert got == 2 and len(err.splitlines()) == 1 and len(err) <= MESSAGE_LIMIT + len("metadapt: "), err
        assert str(path) in err and ("non-finite" in err or "not a finite number" in err), err
    assert not (out / "summary.json").exists()


def test_a_finite_supervised_model_still_loads(tmp_path, capsys):
    path = tmp_path / "model.pt"
    learned = {k: torch.full_like(v, 0.01) for k, v in _params(0).items()}
    torch.save({"format": MODEL_FORMAT, "task": {}, "model": {}, "params": _params(0), "rates": learned,
                "baseline": _params(1)}, path)
    assert main(["check", SINUSOID, *SMALL, f"model.checkpoint={path}"]) == 0, capsys.readouterr().err
