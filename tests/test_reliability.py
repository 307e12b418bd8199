"""Reliability of the command line (issue 26): one error path, bounded input, runs that never clobber each other,
strict JSON, and ``metadapt check``. Every failure is one line on stderr: exit code 2 for the user's mistakes, 1
for an internal error whose traceback is written to a file the line names."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from metadapt.cli import main
from metadapt.errors import MESSAGE_LIMIT, ConfigError, one_line
from metadapt.experiments.configuration.config import load_config

ROOT = Path(__file__).resolve().parents[1]
MB = str(ROOT / "configs" / "mb_small.yaml")
TINY = [
    "train.iterations=1", "train.steps_per_iteration=60", "train.rollout_length=60", "train.epochs=1",
    "model.hidden=[8]", "planner.num_samples=10", "planner.horizon=2", "trial.steps=10", "trial.episode_length=10",
]
# Six nested levels of ten aliases each: 10**6 values once expanded, from a few lines of YAML.
BOMB = "\n".join(
    ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 6)]
)


def _fails(capsys, argv: list[str], code: int = 2, needle: str | None = None) -> str:
    """Run the command line in-process: exit ``code`` and exactly one short line on stderr."""
    got = main(argv)
    err = capsys.readouterr().err.strip()
    assert got == code, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert len(err) <= MESSAGE_LIMIT + len("metadapt: "), err
    if needle is not None:
        assert needle in err, err
    return err


def _strict_json(path: Path) -> object:
    """Parse ``path`` as strict JSON: NaN and Infinity, which Python writes by default, are refused."""
    def refuse(name: str) -> None:
        raise ValueError(f"{path} holds {name}")

    return json.loads(path.read_text(), parse_constant=refuse)


# -- one error path -----------------------------------------------------------------------------------------------


def test_an_internal_error_is_one_line_naming_the_run_directorys_log(tmp_path, capsys, monkeypatch):
    from metadapt.experiments.jobs import runner

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug deep inside")

    monkeypatch.setattr(runner, "run_trial", broken)  # after training, in the run directory
    out = tmp_path / "run"
    err = _fails(capsys, ["run", MB, *TINY, "--out", str(out), "--quiet"], code=1)
    log = out / "error.log"
    assert str(log) in err and "internal error" in err and "ZeroDivisionError" in err
    text = log.read_text()
    assert "Traceback" in text and "a bug deep inside" in text and "broken" in text


def test_an_internal_error_without_a_run_directory_goes_to_the_temporary_folder(tmp_path, capsys, monkeypatch):
    import tempfile

    import metadapt.envs

    def broken():
        raise KeyError("registry")

    monkeypatch.setattr(metadapt.envs, "registered", broken)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    err = _fails(capsys, ["envs"], code=1)
    logs = list(tmp_path.glob("metadapt-error-*.log"))
    assert len(logs) == 1 and str(logs[0]) in err
    assert "Traceback" in logs[0].read_text()


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_prints_the_traceback(capsys, monkeypatch, where):
    import metadapt.envs

    def broken():
        raise KeyError("registry")

    monkeypatch.setattr(metadapt.envs, "registered", broken)
    argv = ["--debug", "envs"] if where == "before" else ["envs", "--debug"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "KeyError" in err
    # a user's mistake under --debug: the traceback, then the one line, and still exit code 2
    assert main(["run", "--debug", str(ROOT / "nope.yaml")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("metadapt: error: config file not found")


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_a_full_disk_is_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").symlink_to("/dev/full")  # every write to it fails with ENOSPC
    _fails(capsys, ["run", MB, *TINY, "--out", str(out), "--force", "--quiet"], needle="No space left on device")


def test_a_disk_that_fills_while_a_checkpoint_is_written_is_one_line(tmp_path, capsys):
    # torch.save given a path reports a failed write as a RuntimeError ("unexpected pos ..."), not as an OSError;
    # checkpoints are written through a Python file, whose write raises ENOSPC like every other file.
    out = tmp_path / "run"
    out.mkdir()
    (out / "model.pt.tmp").symlink_to("/dev/full")  # the model is written (atomically) through this name
    _fails(capsys, ["train", MB, *TINY, "--out", str(out), "--force", "--quiet"], needle="No space left on device")
    assert not (out / "model.pt").exists()


def test_an_out_that_is_a_file_or_cannot_be_made_is_one_line(tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    _fails(capsys, ["run", MB, *TINY, "--out", str(a_file), "--quiet"], needle="is a file")
    _fails(capsys, ["train", MB, *TINY, "--out", str(a_file / "below"), "--quiet"], needle="cannot create")
    _fails(capsys, ["sweep", str(ROOT / "configs/sweeps/demo.yaml"), "--out", str(a_file)], needle="is a file")


@pytest.mark.skipif(getattr(os, "geteuid", lambda: 1)() == 0, reason="root writes anywhere")
def test_an_out_that_is_not_writable_is_one_line(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        _fails(capsys, ["run", MB, *TINY, "--out", str(locked / "run"), "--quiet"])
    finally:
        locked.chmod(0o700)


def test_binary_config_and_sweep_files_are_one_line(tmp_path, capsys):
    garbage = tmp_path / "garbage.yaml"
    garbage.write_bytes(bytes(range(256)) * 4)
    _fails(capsys, ["run", str(garbage)], needle="not a text file")
    _fails(capsys, ["check", str(garbage)], needle="not a text file")
    _fails(capsys, ["sweep", str(garbage), "--out", str(tmp_path / "s")], needle="not a text file")


def test_seeds_must_fit_in_64_bits():
    with pytest.raises(ConfigError, match=r"'seed'.*64 bits"):
        load_config(None, [f"seed={2**64}"])
    with pytest.raises(ConfigError, match="'seed'"):
        load_config(ROOT / "configs" / "maml_sinusoid.yaml", [f"seed={2**64}"])
    assert load_config(None, [f"seed={2**63 - 1}"])["seed"] == 2**63 - 1
    with pytest.raises(ConfigError, match=r"planner\.horizon"):
        load_config(None, [f"planner.horizon={10**30}"])
    with pytest.raises(ConfigError, match=r"train\.lr.*out of range"):
        load_config(None, [f"train.lr={10**400}"])


@pytest.mark.parametrize("override", [f"planner.horizon={10**11}", f"model.hidden=[{10**11}]",
                                      f"train.buffer_capacity={10**13}", f"planner.num_samples={10**12}"])
def test_resources_that_cannot_exist_are_refused_before_work_starts(tmp_path, capsys, override):
    out = tmp_path / "run"
    _fails(capsys, ["run", MB, *TINY, override, "--out", str(out), "--quiet"], needle="memory")
    assert not out.exists()  # nothing started, nothing written
    _fails(capsys, ["check", MB, *TINY, override], needle="memory")


def test_supervised_resources_that_cannot_exist_are_refused(capsys):
    sinusoid, omniglot = str(ROOT / "configs/maml_sinusoid.yaml"), str(ROOT / "configs/maml_omniglot.yaml")
    _fails(capsys, ["check", sinusoid, f"model.hidden=[{10**10}]"], needle="memory")
    _fails(capsys, ["check", omniglot, f"model.filters={10**9}"], needle="memory")


def test_a_buffer_or_collection_of_one_transition_is_refused():
    for key in ("train.buffer_capacity", "train.steps_per_iteration"):
        with pytest.raises(ConfigError, match=rf"{key}.*>= 2"):
            load_config(None, [f"{key}=1"])


def test_report_on_an_empty_or_garbage_folder_is_one_line_exit_2(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    _fails(capsys, ["report", str(empty)], needle="no run to report")
    binary = tmp_path / "binary"
    binary.mkdir()
    (binary / "config.yaml").write_bytes(b"\x00\xff" * 100)
    _fails(capsys, ["report", str(binary)], needle="not a text file")
    csv_dir = tmp_path / "csv"
    (csv_dir / "train").mkdir(parents=True)
    (csv_dir / "train" / "metrics.csv").write_text("iteration,env_steps\nx,y\n")
    _fails(capsys, ["report", str(csv_dir)], needle="metrics.csv")
    trial = tmp_path / "trial"
    (trial / "trial_0").mkdir(parents=True)
    (trial / "trial_0" / "metrics.csv").write_text("step,return,task_id\n0,1,0\n")
    (trial / "trial_0" / "summary.json").write_text("{not json")
    _fails(capsys, ["report", str(trial)], needle="summary.json")
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "results.csv").write_text("a,b\n1,2\n")
    _fails(capsys, ["report", str(sweep)], needle="results.csv")


def _write_sweep(path: Path, spec: dict) -> Path:
    """A sweep file over ``mb_small`` with tiny budgets (``spec`` adds to it or replaces its keys)."""
    tiny = {k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in TINY)}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"base": MB, "set": tiny, **spec}))
    return path


@pytest.mark.parametrize(("spec", "needle"), [
    ({"resources": 3}, "'resources'"),
    ({"resources": {"cpus": "many"}}, "'resources'"),
    ({"base": 3}, "'base'"),
    ({"base": ["a"]}, "'base'"),
    ({"name": "../outside"}, "'name'"),
    ({"set": [1, 2]}, "'set'"),
    ({"grid": {"seed": [0]}, "methods": {"a": 3}}, "methods"),
])
def test_a_sweep_with_wrongly_typed_keys_is_one_line(tmp_path, capsys, spec, needle):
    path = _write_sweep(tmp_path / "s.yaml", spec)
    _fails(capsys, ["sweep", str(path), "--out", str(tmp_path / "out")], needle=needle)


def test_a_sweep_whose_every_point_failed_exits_2_and_its_json_is_strict(tmp_path, capsys):
    path = _write_sweep(tmp_path / "s.yaml", {"base": MB, "grid": {"planner.horizon": [0, -1]}})
    out = tmp_path / "out"
    _fails(capsys, ["sweep", str(path), "--out", str(out), "--quiet"], needle="every one of its 2 runs failed")
    assert (out / "report.md").is_file() and (out / "results.csv").is_file()
    for status in (out / "runs").glob("*/status.json"):
        assert _strict_json(status)["mean_return"] is None


def test_a_sweep_file_inside_its_own_output_folder(tmp_path, capsys):
    out = tmp_path / "out"
    path = _write_sweep(out / "sweep.yaml", {"base": MB, "grid": {"planner.horizon": [0]}})
    before = path.read_text()
    _fails(capsys, ["sweep", str(path), "--out", str(out), "--quiet"], needle="every one of its 1 runs failed")
    assert path.read_text() == before


def _bad_checkpoints(tmp_path: Path) -> dict[str, Path]:
    from metadapt.meta.checkpoint import model_state
    from metadapt.models import MLPDynamics

    model = MLPDynamics(18, 6, (8,))
    state = model_state(model, model.init_params(torch.Generator().manual_seed(0)))
    listed = tmp_path / "listed.pt"
    torch.save({**state, "params": [1, 2, 3]}, listed)
    spec_list = tmp_path / "spec.pt"
    torch.save({**state, "spec": [1]}, spec_list)
    tensors = tmp_path / "tensors.pt"
    torch.save({**state, "params": {k: [0.0] for k in state["params"]}}, tensors)
    return {"listed": listed, "spec": spec_list, "tensors": tensors}


@pytest.mark.parametrize("case", ["listed", "spec", "tensors"])
def test_a_checkpoint_with_malformed_contents_is_one_line(tmp_path, capsys, case):
    path = _bad_checkpoints(tmp_path)[case]
    _fails(capsys, ["run", MB, *TINY, f"model.checkpoint={path}", "--out", str(tmp_path / "r"), "--quiet"],
           needle=str(path))
    _fails(capsys, ["check", MB, f"model.checkpoint={path}"], needle=str(path))


def test_a_supervised_checkpoint_whose_params_are_a_list_is_one_line(tmp_path, capsys):
    from metadapt.experiments.jobs.supervised import MODEL_FORMAT

    path = tmp_path / "model.pt"
    torch.save({"format": MODEL_FORMAT, "params": [1.0], "rates": 0.01, "baseline": None}, path)
    _fails(capsys, ["check", str(ROOT / "configs/maml_sinusoid.yaml"), f"model.checkpoint={path}"],
           needle="not a mapping")


# -- bounded YAML and error lines -------------------------------------------------------------------------------


def test_nested_aliases_in_a_config_file_are_refused(tmp_path, capsys):
    path = tmp_path / "bomb.yaml"
    path.write_text("env:\n  kwargs:\n" + "\n".join("    " + line for line in BOMB.splitlines()) + "\n")
    with pytest.raises(ConfigError, match="expands to more than"):
        load_config(path)
    _fails(capsys, ["run", str(path), *TINY, "--out", str(tmp_path / "r"), "--quiet"], needle="expands")


def test_nested_aliases_in_an_override_or_a_sweep_file_are_refused(tmp_path, capsys):
    flow = "{" + BOMB.replace("\n", ", ") + "}"
    with pytest.raises(ConfigError, match="expands to more than"):
        load_config(None, [f"env.kwargs.schedule={flow}"])
    path = tmp_path / "s.yaml"
    path.write_text(f"base: {MB}\nset:\n  env.kwargs: {flow}\n")
    _fails(capsys, ["sweep", str(path), "--out", str(tmp_path / "out")], needle="expands")


def test_self_referencing_deep_and_large_yaml_is_refused(tmp_path):
    (tmp_path / "self.yaml").write_text("env:\n  kwargs: &k\n    x: *k\n")
    (tmp_path / "deep.yaml").write_text("env:\n  kwargs:\n    x: " + "[" * 200 + "]" * 200 + "\n")
    (tmp_path / "large.yaml").write_text("# " + "x" * (5 * 2**20) + "\n")
    for name, needle in (("self", "refers to itself"), ("deep", "deep"), ("large", "larger than")):
        with pytest.raises(ConfigError, match=needle):
            load_config(tmp_path / f"{name}.yaml")


def test_aliases_of_a_long_string_are_refused_before_they_expand(tmp_path, capsys):
    # Few nodes, much text: 90,000 aliases of a 10,000-character string (a 370 kB file) stand for 900 MB, which
    # the node count alone let through (2 GB resident building the error line). Refused while composing.
    path = tmp_path / "long_aliases.yaml"
    path.write_text("model:\n  hidden: [&s " + "x" * 10_000 + ", " + ", ".join(["*s"] * 90_000) + "]\n")
    with pytest.raises(ConfigError, match="MB of text"):
        load_config(path)
    _fails(capsys, ["check", str(path)], needle="MB of text")


def test_plain_yaml_still_reads_and_only_plain_data_is_built(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("planner: {horizon: &h 4, num_samples: 20}\ntrial: {steps: *h}\n")  # a small alias reads
    assert load_config(path)["trial"]["steps"] == 4
    assert load_config(None, ["env.kwargs.day=2020-01-01"])["env"]["kwargs"]["day"] == "2020-01-01"
    with pytest.raises(ConfigError, match="not plain data"):
        load_config(None, ["env.kwargs.blob=!!binary aGVsbG8="])


def test_every_error_line_is_cut_to_a_readable_length(tmp_path, capsys):
    long_value = "x" * 100_000
    err = _fails(capsys, ["run", MB, *TINY, f"env.kwargs.schedule={long_value}", "--out", str(tmp_path / "r"),
                          "--quiet"])
    assert err.endswith("...")
    # a schedule repeated by aliases (10**4 values, within the bound): its error line stays short
    tasks = "{a: &a [n, n, n, n, n, n, n, n, n, n], b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a], " \
            "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b], d: [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]}"
    err = _fails(capsys, ["check", str(ROOT / "configs/mole_halfcheetah_malfunction.yaml"),
                          f"env.kwargs.schedule={{type: alternating, period: 5, tasks: {tasks}}}"])
    assert err.endswith("...")
    assert one_line("a\nb" + "c" * 1000).startswith("a b") and len(one_line("c" * 1000)) == MESSAGE_LIMIT
    with pytest.raises(SystemExit):
        main(["bench", "planner", "--horizon", "y" * 10_000])
    assert len(capsys.readouterr().err.strip()) <= MESSAGE_LIMIT + 40


# -- runs never clobber each other -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["/abs/run", "../outside", "a/b", "..", ".hidden", ""])
def test_run_names_stay_inside_the_runs_folder(name):
    with pytest.raises(ConfigError, match="'name'"):
        load_config(None, [f"name={name}"])
    with pytest.raises(ConfigError, match="'name'"):
        load_config(ROOT / "configs" / "maml_sinusoid.yaml", [f"name={name}"])


def test_run_onto_an_existing_run_is_refused_unless_forced(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", MB, *TINY, "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    first = (out / "trial_0" / "metrics.csv").read_text()
    _fails(capsys, ["run", MB, *TINY, "seed=1", "--out", str(out), "--quiet"], needle="--force")
    assert (out / "trial_0" / "metrics.csv").read_text() == first
    assert main(["run", MB, *TINY, "seed=1", "--out", str(out), "--force", "--quiet"]) == 0
    assert (out / "trial_0" / "metrics.csv").read_text() != first
    assert yaml.safe_load((out / "config.yaml").read_text())["seed"] == 1
    for path in out.rglob("*.json"):  # every JSON the run wrote is strict
        _strict_json(path)


def test_a_second_sweep_on_the_same_folder_is_refused(tmp_path, capsys):
    out = tmp_path / "out"
    path = _write_sweep(tmp_path / "s.yaml", {"base": MB, "grid": {"planner.horizon": [0]}})
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom metadapt.experiments.jobs.sweep import sweep_lock\n"
         "with sweep_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(120)\n", str(out)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        err = _fails(capsys, ["sweep", str(path), "--out", str(out), "--quiet"], needle="in use by process")
        assert str(holder.pid) in err
        assert not (out / "runs").exists()
    finally:
        holder.kill()
        holder.wait()
    # the lock dies with its process (SIGKILL included): the next sweep goes on
    _fails(capsys, ["sweep", str(path), "--out", str(out), "--quiet"], needle="every one of its 1 runs failed")


def test_identical_grid_points_are_one_run(tmp_path):
    from metadapt.experiments.jobs.sweep import load_sweep

    path = _write_sweep(tmp_path / "s.yaml", {"base": MB, "grid": {"seed": [0, 0, 1], "planner.horizon": [3]},
                                              "methods": {"mb": {"learner.type": "mb"},
                                                          "same": {"learner.type": "mb"}}})
    sweep = load_sweep(path)
    assert [(p.labels["method"], p.labels["seed"]) for p in sweep.points] == [("mb", 0), ("mb", 1)]
    assert len(sweep.duplicates) == 4 and len({p.run_id for p in sweep.points}) == 2


def _train(out: Path, *extra: str) -> int:
    return main(["train", MB, *TINY, "train.iterations=1", *extra, "--out", str(out), "--quiet"])


def test_resume_refuses_an_edit_that_changes_results_and_names_the_keys(tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(out) == 0
    capsys.readouterr()
    config = out / "config.yaml"
    original = config.read_text()
    config.write_text(original.replace("lr: 0.001", "lr: 0.01").replace("activation: relu", "activation: tanh"))
    _fails(capsys, ["train", "--resume", str(out), "--quiet"], needle="model.activation, train.lr")
    config.write_text(original.replace("batch_size: 512", "batch_size: 64"))
    _fails(capsys, ["train", "--resume", str(out), "--quiet"], needle="train.batch_size")
    # keys that leave the completed iterations as they are may change: more iterations, the device, the trials
    config.write_text(original.replace("iterations: 1", "iterations: 2").replace("steps: 10", "steps: 12"))
    assert main(["train", "--resume", str(out), "--quiet"]) == 0
    assert len((out / "metrics.csv").read_text().splitlines()) == 3
    # fewer iterations than the run completed went through silently (a config of 1 iteration over a 2-iteration run)
    config.write_text(original)
    _fails(capsys, ["train", "--resume", str(out), "--quiet"], needle="train.iterations = 1")


def test_a_run_killed_after_its_last_checkpoint_but_before_its_model_resumes_to_the_model(tmp_path, capsys):
    """A sweep killed at a random point left a run whose last checkpoint was written but not its model.pt;
    the resume found no iteration left to run and the trials failed on a missing model.pt."""
    out = tmp_path / "run"
    assert _train(out) == 0
    whole = (out / "model.pt").read_bytes()
    (out / "model.pt").unlink()
    (out / "metrics.csv").unlink()
    assert main(["train", "--resume", str(out), "--quiet"]) == 0
    assert (out / "model.pt").read_bytes() == whole and (out / "metrics.csv").is_file()


def test_a_run_killed_before_its_first_checkpoint_resumes_by_starting_over(tmp_path, capsys):
    from metadapt.meta.checkpoint import load_model

    full = tmp_path / "full"
    assert _train(full) == 0
    killed = tmp_path / "killed"
    killed.mkdir()
    (killed / "config.yaml").write_text((full / "config.yaml").read_text())  # what a run writes before anything
    assert main(["train", "--resume", str(killed), "--quiet"]) == 0
    _, a = load_model(full / "model.pt")
    _, b = load_model(killed / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the supervised job too: no checkpoint yet, the run starts over
    sup = tmp_path / "sup"
    args = ["meta.iterations=20", "baseline.iterations=20", "eval.tasks=20", "train.checkpoint_every=10",
            "train.log_every=10"]
    config = load_config(ROOT / "configs/maml_sinusoid.yaml", args)
    sup.mkdir()
    (sup / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    assert main(["train", "--resume", str(sup), "--quiet"]) == 0
    assert (sup / "model.pt").is_file()


# -- smaller ------------------------------------------------------------------------------------------------------


def test_exponent_floats_without_a_dot_are_numbers(tmp_path):
    assert load_config(None, ["train.lr=1e-3"])["train"]["lr"] == 0.001
    assert load_config(None, ["env.kwargs.ctrl_cost_weight=5E-2"])["env"]["kwargs"]["ctrl_cost_weight"] == 0.05
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 3e-4\nmeta:\n  inner_lr: -1e-2\n")
    with pytest.raises(ConfigError, match=r"meta\.inner_lr.*-0\.01"):
        load_config(path)
    path.write_text("train:\n  lr: 3e-4\n")
    assert load_config(path)["train"]["lr"] == 3e-4
    sweep = tmp_path / "s.yaml"
    sweep.write_text(f"base: {MB}\ngrid:\n  train.lr: [1e-3, 1e-4]\n")
    from metadapt.experiments.jobs.sweep import load_sweep

    assert [p.config["train"]["lr"] for p in load_sweep(sweep).points] == [1e-3, 1e-4]


def test_a_schedule_switch_after_the_trial_is_refused(tmp_path, capsys):
    crawler = str(ROOT / "configs" / "mole_crawler.yaml")
    small = ["planner.num_samples=10", "planner.horizon=2"]
    err = _fails(capsys, ["run", crawler, *small, "trial.steps=20", "--out", str(tmp_path / "r"), "--quiet"],
                 needle="step 500")
    assert "trial.steps=20" in err
    _fails(capsys, ["check", crawler, "trial.steps=3000", "trial.episode_length=400"], needle="step 500")
    assert main(["check", crawler, "trial.steps=1600"]) == 0  # every switch (500, 1000, 1500) is reached
    seq = "env.kwargs.schedule={type: sequence, entries: [[0, normal], [5, turn_left]]}"
    assert main(["check", crawler, seq, "trial.steps=6"]) == 0
    _fails(capsys, ["check", crawler, seq, "trial.steps=5"], needle="step 5")


def test_a_zero_validation_fraction_is_refused():
    with pytest.raises(ConfigError, match=r"train\.val_fraction.*out of range"):
        load_config(None, ["train.val_fraction=0"])


def test_every_json_is_strict():
    from metadapt.experiments.configuration.files import plain_json, to_json

    value = {"a": math.nan, "b": [math.inf, -math.inf, 1.5], "c": torch.tensor(float("nan")), "d": torch.tensor(2.0)}
    assert json.loads(to_json(value)) == {"a": None, "b": [None, None, 1.5], "c": None, "d": 2.0}
    assert plain_json({"x": (1, math.nan)}) == {"x": [1, None]}


def test_summary_json_of_a_run_with_non_finite_returns_is_strict(tmp_path, monkeypatch):
    from metadapt.experiments.jobs import runner

    real = runner.run_trial

    def nan_trial(*args, **kwargs):
        from dataclasses import replace

        return replace(real(*args, **kwargs), total_return=math.nan)

    monkeypatch.setattr(runner, "run_trial", nan_trial)
    out = tmp_path / "run"
    assert main(["run", MB, *TINY, "--out", str(out), "--quiet"]) == 0
    summary = _strict_json(out / "summary.json")
    assert summary["mean_return"] is None and summary["returns"] == [None]
    assert "n/a" in (out / "report.md").read_text()


# -- metadapt check ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.stem)
def test_check_prints_the_resolved_config_of_every_shipped_config(path, capsys):
    assert main(["check", str(path)]) == 0
    out = capsys.readouterr().out
    assert yaml.safe_load(out) == load_config(path)


def test_check_refuses_in_one_line_what_run_would_refuse(tmp_path, capsys):
    _fails(capsys, ["check", MB, "env.id=metadapt/Nope-v0"], needle="unknown environment id")
    _fails(capsys, ["check", MB, "env.kwargs.not_an_option=1"], needle="rejected its keyword arguments")
    _fails(capsys, ["check", MB, f"model.checkpoint={tmp_path / 'none.pt'}"], needle="checkpoint not found")
    _fails(capsys, ["check", MB, "learner.type=ts"], needle="meta-trained prior")
    _fails(capsys, ["check", MB, "learner.type=mole", "model.checkpoint=builtin:nope"], needle="no shipped prior")
    _fails(capsys, ["check", MB, "meta.enabled=true", "meta.past=600"], needle="meta.past")
    _fails(capsys, ["check", str(ROOT / "configs/mole_halfcheetah_malfunction.yaml"),
                    "env.id=metadapt/Crawler-v0", "env.kwargs={}", "planner.objective=reward"], needle="prior for")
    _fails(capsys, ["check", str(ROOT / "configs/maml_sinusoid.yaml"), "task.data=/x"], needle="task.data")
    assert not any(tmp_path.iterdir())  # nothing written


def test_check_from_the_console_script():
    ok = subprocess.run([sys.executable, "-m", "metadapt.cli", "check", MB, "planner.horizon=5"],
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert yaml.safe_load(ok.stdout)["planner"]["horizon"] == 5
    bad = subprocess.run([sys.executable, "-m", "metadapt.cli", "check", MB, "planner.horizon=0"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stdout == ""
    assert len(bad.stderr.strip().splitlines()) == 1 and "planner.horizon" in bad.stderr


def test_a_run_folder_whose_config_is_not_valid_names_the_file(tmp_path, capsys):
    # `report` and `--resume` read a run directory's config.yaml: a message that only said "unknown config key
    # 'x'" left the user to guess which file.
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("system: rl\nmodel: {hidden: [8]}\n")
    err = _fails(capsys, ["report", str(run)])
    assert str(run / "config.yaml") in err
    err = _fails(capsys, ["train", "--resume", str(run)])
    assert str(run / "config.yaml") in err
