# Two commands for a fresh machine:  `make run` (set up .venv, run the main job), `make test`.
PYTHON ?= python3
VENV   := .venv
STAMP  := $(VENV)/.installed-stamp

.PHONY: setup run test test-all wheel bench report clean

$(STAMP): pyproject.toml setup.py tools/pyproject.toml constraints.txt src/tica/entropy/_rans.c src/tica/nn/_intops.c
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	# constraints.txt pins torch: an unpinned resolve would pull a CUDA build of several GB.
	$(VENV)/bin/pip install --quiet -c constraints.txt -e '.[test]'
	# the repository's tools (plans, the report, baselines): a package of their own
	$(VENV)/bin/pip install --quiet -c constraints.txt -e tools
	touch $(STAMP)

setup: $(STAMP)

run: setup
	bash scripts/main_job.sh

test: setup
	$(VENV)/bin/python -m pytest -q

test-all: setup
	$(VENV)/bin/python -m pytest -q -m ''

# the wheel a user installs, checked: its size, the weights the manifest lists, the demo page,
# and nothing from tests/, benchmarks/ or the venv
wheel: setup
	rm -rf build
	$(VENV)/bin/pip wheel --quiet --no-deps . -w build/wheel
	$(VENV)/bin/python scripts/check_wheel.py build/wheel/tica-*.whl

bench: setup
	$(VENV)/bin/python benchmarks/codec_speed.py
	$(VENV)/bin/python benchmarks/throughput.py

# docs/RESULTS.md, its tables and plots (reuses cached rate points; add ARGS=--fresh)
report: setup
	$(VENV)/bin/python benchmarks/run_all.py $(ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache build
