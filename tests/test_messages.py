"""The command line's messages and conveniences: shipped configs by name (``metadapt configs``), options in any
order, ``--version``, a description for every sub-command, and the one-line errors that say what a thing is and
what to use instead (a shipped prior given to MB, DE or ReBAL; ``learner.type=grbal``; an unknown schedule)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
import yaml

from metadapt.cli import build_parser, main
from metadapt.errors import MESSAGE_LIMIT, ConfigError, MetadaptError
from metadapt.experiments import commands
from metadapt.experiments.configuration.config import load_config

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "src" / "metadapt" / "configs"
MOLE = str(ROOT / "configs" / "mole_halfcheetah_malfunction.yaml")


def _fails(capsys, argv: list[str], *needles: str) -> str:
    """``main(argv)``: exit code 2 and one line on stderr holding every needle (none of them cut away)."""
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert len(err) <= MESSAGE_LIMIT + len("metadapt: "), err
    for needle in needles:
        assert needle in err, err
    return err


# -- shipped configs ----------------------------------------------------------------------------------------------


def test_the_configs_folder_lives_in_the_package_and_the_top_level_one_links_to_it():
    assert SHIPPED.is_dir() and SHIPPED.resolve() == commands.SHIPPED
    assert (ROOT / "configs").resolve() == SHIPPED.resolve()
    assert (SHIPPED / "sweeps" / "demo.yaml").is_file()


def test_metadapt_configs_lists_every_shipped_file_with_its_kind_and_description(capsys):
    assert main(["configs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    files = sorted(SHIPPED.glob("*.yaml")) + sorted((SHIPPED / "sweeps").glob("*.yaml"))
    assert len(lines) == len(files)
    for line, path in zip(lines, files, strict=True):
        name, kind, description = line.split(maxsplit=2)
        first = path.read_text().splitlines()[0]
        assert name == path.stem and kind == ("sweep" if path.parent.name == "sweeps" else "config")
        assert first.startswith("# ") and description == first[2:].strip().rstrip(",;:")


def test_every_shipped_file_starts_with_a_one_line_description():
    """``metadapt configs`` shows the first comment line."""
    for path in sorted(SHIPPED.glob("*.yaml")) + sorted((SHIPPED / "sweeps").glob("*.yaml")):
        first = path.read_text().splitlines()[0]
        assert first.startswith("# ") and len(first) > 20, (path.name, first)


def test_configs_show_prints_a_shipped_file_and_an_unknown_name_is_one_line(capsys):
    assert main(["configs", "--show", "demo"]) == 0
    assert capsys.readouterr().out == (SHIPPED / "sweeps" / "demo.yaml").read_text()
    _fails(capsys, ["configs", "--show", "demoo"], "no shipped config or sweep named 'demoo'", "close: demo",
           "metadapt configs")


@pytest.mark.parametrize("name", ["mb_small", "mb_small.yaml", "configs/mb_small.yaml"])
def test_a_shipped_config_is_taken_by_name_from_any_folder(capsys, tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    assert main(["check", name, "seed=2"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["name"] == "mb_small" and cfg["seed"] == 2


def test_a_path_that_exists_wins_over_a_shipped_name(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mb_small").write_text("name: mine\n")
    assert main(["check", "mb_small"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["name"] == "mine"


def test_an_unknown_config_name_lists_close_matches(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _fails(capsys, ["run", "mole_halfcheetah_malfuncton"], "config file not found: mole_halfcheetah_malfuncton",
           "close shipped configs: mole_halfcheetah_malfunction", "metadapt configs lists the shipped ones")
    _fails(capsys, ["train", "nothing_like_it"], "config file not found", "metadapt configs")
    _fails(capsys, ["sweep", "dmo"], "sweep file not found: dmo", "close shipped sweeps: demo")


def test_a_sweep_name_given_for_a_config_says_which_command_takes_it(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _fails(capsys, ["check", "demo"], "'demo' is a shipped sweep, not a config: use it with metadapt sweep demo")
    _fails(capsys, ["sweep", "mb_small"], "'mb_small' is a shipped config, not a sweep")


def test_sweep_overrides_reach_every_point_and_the_base_is_absolute(tmp_path):
    from metadapt.experiments.jobs.sweep import load_sweep

    copy = commands._sweep_with_overrides(SHIPPED / "sweeps" / "demo.yaml", ["trial.steps=20", "planner.horizon=2"],
                                          tmp_path)
    spec = yaml.safe_load(copy.read_text())
    assert Path(spec["base"]).is_absolute() and Path(spec["base"]).is_file()
    sweep = load_sweep(copy)
    assert sorted(p.labels["method"] for p in sweep.points) == ["gs", "mole", "ts"]
    assert all(p.config["trial"]["steps"] == 20 and p.config["planner"]["horizon"] == 2 for p in sweep.points)


def test_a_sweep_override_of_a_key_the_grid_sets_is_refused(capsys, tmp_path):
    out = str(tmp_path / "demo")
    _fails(capsys, ["sweep", "demo", "learner.type=mb", "--out", out],
           "override 'learner.type=mb': sweep demo sets learner.type point by point (its methods)")
    _fails(capsys, ["demo", "seed=3", "--out", out], "sets seed point by point (its grid)")
    assert not Path(out).exists()


def test_config_comments_name_files_that_exist():
    """Every ``configs/...``, ``docs/...`` or sibling ``*.yaml`` a shipped file's comments name exists."""
    missing = []
    for path in sorted(SHIPPED.glob("*.yaml")) + sorted((SHIPPED / "sweeps").glob("*.yaml")):
        for line in path.read_text().splitlines():
            comment = line.partition("#")[2]
            for ref in re.findall(r"[\w./-]+\.(?:yaml|md)\b", comment):
                if ref.startswith(("configs/", "docs/")):
                    ok = (ROOT / ref).is_file()
                elif "/" not in ref and ref.endswith(".yaml"):  # a sibling, or a shipped config by file name
                    ok = (path.parent / ref).is_file() or (SHIPPED / ref).is_file()
                else:
                    continue  # a run's own files (report.md), the original code's paths
                if not ok:
                    missing.append(f"{path.relative_to(SHIPPED)}: {ref}")
    assert not missing, missing


# -- the command line ---------------------------------------------------------------------------------------------


def test_version_prints_the_installed_version(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"metadapt {version('metadapt')}"


@pytest.mark.parametrize("argv", [
    ["run", "cfg.yaml", "seed=1", "--out", "x", "planner.horizon=5", "--quiet"],
    ["run", "--out", "x", "cfg.yaml", "seed=1", "--quiet", "planner.horizon=5"],
    ["run", "cfg.yaml", "--quiet", "seed=1", "planner.horizon=5", "--out", "x"],
])
def test_options_and_overrides_come_in_any_order(argv):
    args = build_parser().parse_args(argv)
    assert (args.config, args.overrides, args.out, args.quiet) == ("cfg.yaml", ["seed=1", "planner.horizon=5"], "x",
                                                                   True)


def test_options_after_overrides_reach_the_command(capsys):
    assert main(["check", MOLE, "seed=3", "--debug", "planner.horizon=5"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["seed"] == 3 and cfg["planner"]["horizon"] == 5
    args = build_parser().parse_args(["train", "c.yaml", "train.iterations=2", "--out", "o", "train.epochs=1"])
    assert args.overrides == ["train.iterations=2", "train.epochs=1"] and args.out == "o"
    args = build_parser().parse_args(["demo", "trial.steps=20", "--workers", "1", "planner.horizon=2"])
    assert args.overrides == ["trial.steps=20", "planner.horizon=2"] and args.workers == 1


def test_a_missing_config_names_only_the_config(capsys):
    with pytest.raises(SystemExit) as info:
        main(["run", "--out", "x"])
    assert info.value.code == 2
    assert capsys.readouterr().err.strip().endswith("the following arguments are required: config")


def _commands() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_command_has_a_description(capsys):
    subs = _commands()
    assert {"train", "run", "check", "demo", "sweep", "report", "configs", "envs", "bench"} <= set(subs)
    for name, parser in subs.items():
        assert parser.description and len(parser.description) > 40, name
        with pytest.raises(SystemExit):
            main([name, "--help"])
        assert parser.description.split()[0] in capsys.readouterr().out, name


def test_train_and_report_descriptions_say_what_they_do():
    subs = _commands()
    train = " ".join(subs["train"].description.split())
    assert all(word in train for word in ("MB dynamics model", "GrBAL", "ReBAL", "MAML", "--resume"))
    assert "report.md" in subs["report"].description and "sweep" in subs["report"].description
    assert "key=value" in subs["demo"].format_help()


# -- what a thing is and what to use instead -----------------------------------------------------------------------


@pytest.mark.parametrize(("learner", "wanted", "instead"), [
    ("mb", "not an MB dynamics model (learner.type=mb)", "metadapt train CONFIG meta.enabled=false"),
    ("de", "not an MB dynamics model (learner.type=de)", "metadapt train CONFIG meta.enabled=false"),
    ("rebal", "not a ReBAL model (learner.type=rebal)", "meta.method=rebal"),
])
def test_a_shipped_prior_for_mb_de_or_rebal_says_it_is_a_prior(capsys, learner, wanted, instead):
    err = _fails(capsys, ["check", MOLE, f"learner.type={learner}"],
                 "model.checkpoint=builtin:halfcheetah_malfunction is a shipped meta-learned prior", wanted,
                 "use it with learner.type=ts|gs|mole", instead)
    assert "not found" not in err


def test_grbal_as_a_learner_type_says_it_is_ts(capsys):
    for value in ("grbal", "GrBAL"):
        with pytest.raises(ConfigError) as info:
            load_config(None, [f"learner.type={value}"])
        text = str(info.value)
        assert f"'{value}' is not a learner type: GrBAL at run time is learner.type=ts" in text
        assert "k-shot adaptation of the meta-learned prior" in text and "allowed: one of mb, de, ts" in text
    _fails(capsys, ["check", MOLE, "learner.type=grbal"], "GrBAL at run time is learner.type=ts")
    with pytest.raises(ConfigError, match="'nope' is not allowed"):  # other names: as before
        load_config(None, ["learner.type=nope"])


def test_an_unknown_schedule_lists_the_presets_before_the_tasks(capsys):
    from metadapt.envs import make_env

    with pytest.raises(MetadaptError) as info:
        make_env("metadapt/HalfCheetahMalfunction-v0", schedule="alternating_50")
    text = str(info.value)
    assert "unknown task 'alternating_50', and no preset schedule of that name (metadapt envs --show ID" in text
    assert ("presets: train_distribution, test_sign_negative, alternating_500, alternating_100, random_test; "
            "tasks: normal, sign_negative") in text
    # on the command line the presets survive the cut to one line
    _fails(capsys, ["check", MOLE, "env.kwargs.schedule=bogus"], "unknown task 'bogus', and no preset schedule",
           "alternating_100, random_test; tasks: normal")


def test_an_unknown_task_of_an_environment_without_presets_is_as_before():
    from metadapt.envs import make_env

    with pytest.raises(MetadaptError, match=r"unknown task 'bogus' \(tasks: normal\)"):
        make_env("metadapt/HalfCheetah-v0", schedule="bogus")


def test_a_folder_of_a_shipped_name_does_not_hide_it_and_a_missing_path_says_names_have_no_folder(
        capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mb_small").mkdir()  # a folder is no config file: the shipped config is meant
    assert main(["check", "mb_small"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["name"] == "mb_small"
    _fails(capsys, ["run", "elsewhere/mb_smal.yaml"], "config file not found: elsewhere/mb_smal.yaml",
           "shipped configs are named without a folder: metadapt configs lists them")


def test_a_sweep_file_without_a_name_keeps_its_own_name_with_overrides(tmp_path):
    """Regression: with overrides, a sweep without ``name`` was named after the temporary copy (``sweep``)."""
    from metadapt.experiments.jobs.sweep import load_sweep

    mine = tmp_path / "my_grid.yaml"
    mine.write_text(f"base: {SHIPPED / 'mb_small.yaml'}\ncommand: run\ngrid:\n  seed: [0, 1]\n")
    (tmp_path / "copy").mkdir()
    copy = commands._sweep_with_overrides(mine, ["trial.steps=20"], tmp_path / "copy")
    assert load_sweep(copy).name == "my_grid"
