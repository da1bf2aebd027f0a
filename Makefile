# Two commands for a fresh machine:  `make run` (set up .venv, run the main job), `make test`.
PYTHON ?= python3
VENV   := .venv
STAMP  := $(VENV)/.installed-stamp

.PHONY: setup run test test-all bench report clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	# torch first and pinned: an unpinned resolve would pull a CUDA build of several GB.
	$(VENV)/bin/pip install --quiet torch==2.13.0
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

run: setup
	bash scripts/main_job.sh

test: setup
	$(VENV)/bin/python -m pytest -q

test-all: setup
	$(VENV)/bin/python -m pytest -q -m ''

bench: setup
	$(VENV)/bin/python benchmarks/codec_speed.py

# docs/RESULTS.md, its tables and plots (reuses cached rate points; add ARGS=--fresh)
report: setup
	$(VENV)/bin/python benchmarks/run_all.py $(ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache
