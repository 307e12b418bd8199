# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench clean install docs

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# torch is pinned first: 2.13.0 has a CPU wheel on the test machines, while an
# open range would pull the newest release with several GB of CUDA packages.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/metadapt demo

# The import layers (pyproject.toml's [tool.importlinter]) first: a broken contract stops here, before pytest.
# The documentation site next (mkdocs.yml, --strict: a broken link or a stale API name stops here), into build/.
test: $(STAMP)
	$(VENV)/bin/lint-imports --no-cache
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet --site-dir build/docs-site
	$(PY) -m pytest tests

# The documentation site in site/ (open site/index.html); `$(VENV)/bin/mkdocs serve` previews it live.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests examples benchmarks
	$(VENV)/bin/lint-imports --no-cache

bench: $(STAMP)
	$(VENV)/bin/metadapt bench planner

clean:
	rm -rf $(VENV) runs build site *.egg-info src/*.egg-info
