"""The documentation site: it builds with --strict, its nav and paths exist, and its reproduce page is complete.

``mkdocs build --strict`` fails on a broken link or anchor, a page missing from the nav, or an API name
(``::: metadapt.xxx``) that no longer exists; the other tests check what the build cannot: that the
reproduce page covers every paper it must, names shipped configs only, and gives commands that resolve.
"""

from __future__ import annotations

import ast
import glob
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
REPRODUCE = DOCS / "reproduce.md"
# The papers the reproduce page must cover (the project's seed numbers): MOLe, Meta-GCG, the survey (MAML),
# GrBAL/ReBAL. Seed 002 is the MOLe paper's poster, covered by seed 000's section.
SEEDS = ("000", "001", "003", "004")
CONFIG_PATH = re.compile(r"configs/[A-Za-z0-9_./*-]+")
COMMANDS = {"train", "run", "check", "demo", "sweep", "report", "envs", "bench"}


def _nav_pages(node: object) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, list):
        return [p for item in node for p in _nav_pages(item)]
    if isinstance(node, dict):
        return [p for value in node.values() for p in _nav_pages(value)]
    return []


def _mkdocs() -> list[str]:
    """The mkdocs of this environment: the script beside the interpreter, else the module."""
    script = Path(sys.executable).parent / "mkdocs"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "mkdocs"]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run([*_mkdocs(), "build", "--strict", "--site-dir", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    return out


def test_the_site_builds_strictly(site: Path):
    assert (site / "index.html").is_file()
    assert (site / "reproduce" / "index.html").is_file()
    assert (site / "api" / "index.html").is_file()


def test_every_public_name_is_in_the_api_reference(site: Path):
    tree = ast.parse((ROOT / "src" / "metadapt" / "__init__.py").read_text())
    exported = next(node.value for node in tree.body
                    if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "__all__")
    names = {ast.literal_eval(e) for e in exported.elts}
    html = (site / "api" / "index.html").read_text()
    documented = set(re.findall(r'id="metadapt\.([A-Za-z_][A-Za-z0-9_]*)"', html))
    assert names <= documented, sorted(names - documented)


def test_every_nav_page_exists():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    pages = _nav_pages(config["nav"])
    assert "architecture.md" in pages and "results.md" in pages and "reproduce.md" in pages
    missing = [p for p in pages if not (DOCS / p).is_file()]
    assert not missing, missing
    assert len(pages) == len(set(pages)), "a page is in the nav twice"


def _sections(text: str) -> dict[str, str]:
    """The reproduce page's '## ...' sections by the seed number their heading names."""
    out = {}
    for block in re.split(r"^## ", text, flags=re.M)[1:]:
        heading = block.splitlines()[0]
        if (m := re.search(r"\(seed (\d{3})\)", heading)) is not None:
            out[m.group(1)] = block
    return out


def _rows(block: str) -> list[list[str]]:
    """Table body rows of a section, as cells (header and separator rows left out)."""
    lines = [line for line in block.splitlines() if line.startswith("|")]
    rows = []
    for line in lines[2:] if lines else []:
        rows.append([c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]])
    return rows


def test_the_reproduce_page_has_rows_for_each_paper():
    sections = _sections(REPRODUCE.read_text())
    for seed in SEEDS:
        assert seed in sections, f"no section for seed {seed}"
        rows = _rows(sections[seed])
        assert rows, f"seed {seed}: no rows"
        for row in rows:
            assert len(row) == 5 and all(row), f"seed {seed}: a row needs its 5 cells filled: {row}"
            paper, _claim, command, _ours, verdict = row
            # a row without a command says that the project does not cover it
            if not command.startswith("`metadapt"):
                assert "not covered" in verdict, f"seed {seed}: {paper}: no command, and not marked 'not covered'"
    # Meta-GCG's Fig. 3 (the maze) is measured: its rows name the sweeps that measure it
    assert any("gcg_maze" in row[2] for row in _rows(sections["001"]))


def test_every_configs_path_in_the_docs_exists():
    for page in sorted(DOCS.rglob("*.md")):
        for path in set(CONFIG_PATH.findall(page.read_text())):
            path = path.rstrip(".")
            if "*" in path:
                assert glob.glob(str(ROOT / path)), f"{page.name}: {path} matches no file"
            else:
                assert (ROOT / path).exists(), f"{page.name}: {path} does not exist"


def _commands(text: str) -> list[str]:
    """The ``metadapt ...`` commands of a page: inline code spans and lines of code blocks."""
    spans = re.findall(r"`(metadapt [^`]+)`", text)
    joined = re.sub(r"\\\n\s*", " ", text)
    lines = [line.split("#")[0].strip() for line in joined.splitlines() if line.strip().startswith("metadapt ")]
    return spans + lines


def test_the_reproduce_commands_are_real():
    from metadapt.experiments.configuration.config import load_config
    from metadapt.experiments.jobs.sweep import load_sweep

    commands = _commands(REPRODUCE.read_text())
    assert len(commands) >= 20
    for command in commands:
        words = shlex.split(command)
        assert words[1] in COMMANDS, command
        if words[1] == "sweep":
            sweep = load_sweep(ROOT / words[2])
            assert sweep.points and all(p.error is None for p in sweep.points), command
        elif words[1] in ("train", "run", "check"):
            config = next(w for w in words[2:] if w.endswith(".yaml"))
            overrides = [w for w in words[2:] if "=" in w and not w.startswith("-")]
            load_config(ROOT / config, overrides)  # raises on an unknown key or a bad value


def test_the_sweep_page_documents_every_key():
    from metadapt.experiments.jobs import sweep

    text = (DOCS / "sweeps.md").read_text()
    for key in sweep._KEYS:
        assert f"### `{key}`" in text, f"sweeps.md does not document the sweep key '{key}'"


def test_the_readme_points_to_the_site():
    readme = (ROOT / "README.md").read_text()
    assert "mkdocs serve" in readme and "make docs" in readme
    assert "\ndocs:" in (ROOT / "Makefile").read_text()
