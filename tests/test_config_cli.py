"""Config validation and the command line's handling of bad input: one line, exit code 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from metadapt.cli import main
from metadapt.errors import ConfigError
from metadapt.experiments.configuration.config import apply_overrides, defaults, load_config

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "train.iterations=2", "train.steps_per_iteration=120", "train.rollout_length=60", "train.epochs=2",
    "model.hidden=[16,16]", "planner.num_samples=20", "planner.horizon=3", "trial.steps=30",
    "trial.episode_length=30",
]


def test_every_shipped_config_validates():
    configs = sorted((ROOT / "configs").glob("*.yaml"))
    assert configs
    for path in configs:
        cfg = load_config(path)
        if cfg.get("system", "mbrl") == "mbrl":
            assert cfg["env"]["id"].startswith("metadapt/")
        else:  # a config of another system names it
            assert "system:" in path.read_text()


def test_overrides_reach_nested_keys_and_parse_yaml_values():
    cfg = load_config(None, ["planner.horizon=15", "model.hidden=[8, 8]", "planner.dtype=bfloat16",
                             "env.kwargs.ctrl_cost_weight=0.2"])
    assert cfg["planner"]["horizon"] == 15
    assert cfg["model"]["hidden"] == [8, 8]
    assert cfg["planner"]["dtype"] == "bfloat16"
    assert cfg["env"]["kwargs"] == {"ctrl_cost_weight": 0.2}
    assert cfg["train"] == defaults()["train"]


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("planner.horizn=3",
         "unknown config key 'planner.horizn' (allowed keys in planner: cem, compile, dtype, horizon"),
        ("planner.horizon=-1", "'planner.horizon': -1 is out of range (allowed: an integer >= 1)"),
        ("planner.horizon=2.5", "'planner.horizon': 2.5 is not an integer"),
        ("planner.type=ilqr", "'planner.type': 'ilqr' is not allowed (allowed: one of rs, cem, mppi)"),
        ("train.lr=0", "'train.lr': 0.0 is out of range (allowed: a number > 0)"),
        ("model.hidden=[0]", "'model.hidden'"),
        ("seed=abc", "'seed': 'abc' is not an integer"),
        ("bogus=1", "unknown config key 'bogus'"),
        ("planner=3", "config section 'planner' must be a mapping"),
    ],
)
def test_bad_values_name_the_key_and_the_allowed_values(override, needle):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert needle in str(info.value)


def test_cem_elites_cannot_exceed_population():
    with pytest.raises(ConfigError, match="num_elites"):
        load_config(None, ["planner.type=cem", "planner.num_samples=10", "planner.cem.num_elites=20"])


def test_action_gains_are_refused_for_the_recurrent_model():
    assert load_config(None, ["model.action_gain=true", "meta.enabled=true"])["model"]["action_gain"]
    with pytest.raises(ConfigError, match=r"model\.action_gain.*rebal"):
        load_config(None, ["model.action_gain=true", "meta.enabled=true", "meta.method=rebal"])
    with pytest.raises(ConfigError, match=r"model\.action_gain.*rebal"):
        load_config(None, ["model.action_gain=true", "learner.type=rebal"])


def test_override_without_equals_is_an_error():
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["planner.horizon"])


def _one_line_exit_2(capsys, argv: list[str], needle: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    assert needle in err


def test_cli_missing_config_file(capsys, tmp_path):
    _one_line_exit_2(capsys, ["run", str(tmp_path / "nope.yaml")], "config file not found")


def test_cli_unknown_key(capsys):
    _one_line_exit_2(capsys, ["run", str(ROOT / "configs/mb_small.yaml"), "planner.horizn=3"], "planner.horizn")


def test_cli_negative_horizon(capsys):
    _one_line_exit_2(capsys, ["run", str(ROOT / "configs/mb_small.yaml"), "planner.horizon=-4"], "planner.horizon")


def test_cli_unknown_env_id(capsys, tmp_path):
    _one_line_exit_2(capsys, ["run", str(ROOT / "configs/mb_small.yaml"), "env.id=metadapt/Nope-v0",
                              "--out", str(tmp_path / "r")], "unknown environment id 'metadapt/Nope-v0'")


def test_cli_bad_env_kwargs(capsys, tmp_path):
    _one_line_exit_2(capsys, ["run", str(ROOT / "configs/mb_small.yaml"), "env.kwargs.not_an_option=1",
                              "--out", str(tmp_path / "r")], "rejected its keyword arguments")


def test_cli_invalid_yaml(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("planner: [1, 2\n")
    _one_line_exit_2(capsys, ["run", str(bad)], "not valid YAML")


def test_cli_bad_option(capsys):
    with pytest.raises(SystemExit) as info:
        main(["bench", "planner", "--horizon", "-3"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "must be >= 1" in err


def _checkpoint_cases(tmp_path: Path) -> dict[str, Path]:
    from metadapt.meta.checkpoint import save_model
    from metadapt.models import MLPDynamics

    good = tmp_path / "good.pt"
    m = MLPDynamics(18, 6, (16, 16))
    save_model(m, m.init_params(torch.Generator().manual_seed(0)), good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00garbage" * 100)
    evil = tmp_path / "evil.pt"

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"format": Evil()}, evil)
    wrong = tmp_path / "wrong.pt"
    m2 = MLPDynamics(3, 1, (4,))
    save_model(m2, m2.init_params(torch.Generator().manual_seed(0)), wrong)
    return {"truncated": truncated, "corrupt": corrupt, "evil": evil, "missing": tmp_path / "missing.pt",
            "wrong": wrong}


@pytest.mark.parametrize("case", ["truncated", "corrupt", "evil", "missing", "wrong"])
def test_cli_bad_checkpoint(capsys, tmp_path, case):
    path = _checkpoint_cases(tmp_path)[case]
    needle = {"truncated": "corrupt or truncated", "corrupt": "corrupt or truncated", "evil": "corrupt",
              "missing": "checkpoint not found", "wrong": "obs/action sizes"}[case]
    _one_line_exit_2(capsys, ["run", str(ROOT / "configs/mb_small.yaml"), f"model.checkpoint={path}", *TINY,
                              "--out", str(tmp_path / "r"), "--quiet"], needle)


def test_cli_resume_of_a_non_run_directory(capsys, tmp_path):
    _one_line_exit_2(capsys, ["train", "--resume", str(tmp_path)], "not a training run directory")


def test_cli_envs_lists_registered_environments(capsys):
    assert main(["envs"]) == 0
    assert "metadapt/HalfCheetah-v0" in capsys.readouterr().out


def test_console_script_help():
    for sub in ([], ["train"], ["run"], ["demo"], ["envs"], ["bench"]):
        out = subprocess.run([sys.executable, "-m", "metadapt.cli", *sub, "--help"],
                             capture_output=True, text=True, check=True).stdout
        assert "usage: metadapt" in out


def test_run_writes_resolved_config_metrics_and_report(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", str(ROOT / "configs/mb_small.yaml"), *TINY, "planner.type=cem", "planner.cem.num_elites=5",
                 "--out", str(out), "--quiet"]) == 0
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    # defaults resolved; only the chosen planner type's own section is kept
    assert cfg["planner"]["type"] == "cem" and cfg["planner"]["cem"]["momentum"] == 0.1 and "mppi" not in cfg["planner"]
    header = (out / "trial_0" / "metrics.csv").read_text().splitlines()[0].split(",")
    for col in ("step", "reward", "task_id", "plan_ms", "model_error"):
        assert col in header
    assert (out / "train" / "model.pt").is_file()
    assert (out / "train" / "checkpoints" / "latest.pt").is_file()
    report = (out / "report.md").read_text()
    assert "## Trials" in report and (out / "trials.png").is_file()
    # the trained model is reusable through model.checkpoint
    again = tmp_path / "again"
    assert main(["run", str(ROOT / "configs/mb_small.yaml"), *TINY, f"model.checkpoint={out / 'train'}",
                 "--out", str(again), "--quiet"]) == 0
    assert not (again / "train").exists()


def test_planner_dtype_auto_resolves_to_what_the_machine_runs_fast():
    from metadapt.experiments.configuration.config import load_config
    from metadapt.models.mlp import fast_bfloat16

    cfg = load_config(None)
    assert cfg["planner"]["dtype"] == ("bfloat16" if fast_bfloat16("cpu") else "float32")
    assert load_config(None, ["planner.dtype=float32"])["planner"]["dtype"] == "float32"


def test_tensorboard_logging_writes_every_step(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "tb"
    assert main(["run", str(ROOT / "configs/mb_small.yaml"), *TINY, "logging.tensorboard=true", "learner.type=de",
                 "--out", str(out), "--quiet"]) == 0
    events = EventAccumulator(str(out / "trial_0" / "tb"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"reward", "return", "model_error", "plan_ms"} <= set(tags)
    rewards = events.Scalars("reward")
    assert [e.step for e in rewards] == list(range(30))
    logged = [float(x.split(",")[2]) for x in (out / "trial_0" / "metrics.csv").read_text().splitlines()[1:]]
    assert [e.value for e in rewards] == pytest.approx(logged, rel=1e-6)


def test_every_shipped_sweep_expands_into_valid_configs():
    from metadapt.experiments.jobs.sweep import load_sweep

    sweeps = sorted((ROOT / "configs" / "sweeps").glob("*.yaml"))
    assert sweeps
    for path in sweeps:
        sweep = load_sweep(path)
        assert sweep.points, path
        assert all(p.error is None for p in sweep.points), (path, [p.error for p in sweep.points if p.error])
        assert len({p.run_id for p in sweep.points}) == len(sweep.points), path  # no two points share a directory
