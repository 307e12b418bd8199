"""A plain (non-editable) install works: the wheel holds the shipped configs and priors, and ``metadapt demo`` and
``metadapt run <shipped config>`` run from a folder outside the repository.

The wheel is built offline from a copy of the source (nothing is written into the repository) and installed with
``--no-deps`` into a fresh virtual environment that sees this environment's installed dependencies through a
``.pth`` file, so nothing is downloaded. Only the package itself comes from the wheel (checked).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "metadapt"
MAX_WHEEL_MB = 25
TINY = ["trial.steps=20", "trial.episode_length=20", "planner.num_samples=16", "planner.horizon=2"]


def _run(argv: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 600) -> str:
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, argv))} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _build_wheel(tmp: Path) -> Path:
    tree = tmp / "source"
    tree.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tree / name)
    shutil.copytree(ROOT / "src", tree / "src", ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
    dist = tmp / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "--quiet",
          "-w", str(dist), str(tree)], cwd=tmp)
    [wheel] = dist.glob("metadapt-*.whl")
    return wheel


def _dependency_dirs() -> list[str]:
    """The site-packages folders this interpreter imports torch, mujoco, gymnasium... from."""
    dirs = [*site.getsitepackages(), sysconfig.get_path("purelib"), sysconfig.get_path("platlib")]
    return list(dict.fromkeys(d for d in dirs if Path(d).is_dir()))


def _fresh_venv(tmp: Path, wheel: Path) -> tuple[Path, dict[str, str]]:
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp)
    python = venv / "bin" / "python"
    purelib = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], cwd=tmp).strip())
    # Appended after the venv's own site-packages: the wheel's metadapt comes first. (The .pth files of those
    # folders, such as an editable install's, are not read: they are plain path entries here.)
    (purelib / "zz_metadapt_test_dependencies.pth").write_text("\n".join(_dependency_dirs()) + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "--quiet",
          str(wheel)], cwd=tmp)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["MPLBACKEND"] = "Agg"
    return venv, env


@pytest.mark.slow
def test_a_plain_install_runs_the_demo_and_shipped_configs_from_any_folder(tmp_path):
    wheel = _build_wheel(tmp_path)

    assert wheel.stat().st_size < MAX_WHEEL_MB * 2**20, f"{wheel.name}: {wheel.stat().st_size / 2**20:.1f} MB"
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        metadata = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    shipped = [p.relative_to(PACKAGE.parent).as_posix()
               for p in [*PACKAGE.glob("configs/*.yaml"), *PACKAGE.glob("configs/sweeps/*.yaml"),
                         *PACKAGE.glob("priors/*.pt")]]
    assert "metadapt/configs/sweeps/demo.yaml" in shipped and "metadapt/priors/halfcheetah_malfunction.pt" in shipped
    assert not [n for n in shipped if n not in names], "files missing from the wheel"
    assert "Project-URL: Homepage, https://github.com/metadapt/metadapt" in metadata
    assert "Author: metadapt developers" in metadata and "Classifier: " in metadata and "Keywords: " in metadata

    venv, env = _fresh_venv(tmp_path, wheel)
    work = tmp_path / "elsewhere"  # outside the repository: no configs/ folder here
    work.mkdir()
    assert ROOT not in work.resolve().parents
    where = _run([str(venv / "bin" / "python"), "-c", "import metadapt; print(metadapt.__file__)"], work, env)
    assert Path(where.strip()).is_relative_to(venv), where
    metadapt = str(venv / "bin" / "metadapt")
    assert _run([metadapt, "--version"], work, env).strip() == "metadapt 0.1.0"
    listing = _run([metadapt, "configs"], work, env)
    assert "mole_halfcheetah_malfunction" in listing and "demo " in listing

    out = _run([metadapt, "demo", *TINY, "--workers", "1", "--quiet"], work, env)
    demo = work / "runs" / "demo"
    assert f"report: {Path('runs') / 'demo' / 'report.md'}" in out
    assert (demo / "report.md").is_file() and (demo / "returns.png").is_file()
    with open(demo / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and all(r["status"] == "done" for r in rows), rows
    for run in (demo / "runs").iterdir():
        assert json.loads((run / "status.json").read_text())["status"] == "done"

    _run([metadapt, "run", "mole_halfcheetah_malfunction", *TINY, "--quiet"], work, env)
    run_dir = work / "runs" / "mole_halfcheetah_malfunction"
    assert (run_dir / "report.md").is_file() and (run_dir / "summary.json").is_file()
    assert "builtin:halfcheetah_malfunction" in (run_dir / "config.yaml").read_text()
