# The README's commands. Thin wrappers: the logic lives in longgen_core.
#   make demo   set up (if needed), then execute every notebook at the default CPU preset into
#               runs/demo/ (executed copies, logs, figures; git-ignored: the checkout stays clean)
#   make refresh  the same, into the committed notebooks and figures/ (maintainers, before a commit)
#   make test   set up (if needed), then lint (ruff), then run the unit tests and the notebook tests
# A virtualenv is created in .venv unless one is already active.

VENV ?= .venv
ifdef VIRTUAL_ENV
PYTHON := python
else
PYTHON := $(VENV)/bin/python
endif
STAMP := $(if $(VIRTUAL_ENV),$(VIRTUAL_ENV),$(VENV))/.longgen-installed
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9]*.ipynb))
PRESET ?= cpu-tiny

.PHONY: setup demo refresh notebooks lint test test-unit test-notebooks test-browser

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@if [ -z "$$VIRTUAL_ENV" ] && [ ! -x $(VENV)/bin/python ]; then python3 -m venv $(VENV); fi
	$(PYTHON) -m pip install -q --upgrade pip "setuptools>=77"
	$(PYTHON) -m pip install -q -r requirements.txt
	$(PYTHON) -m pip install -q --no-deps --no-build-isolation -e .
	$(PYTHON) -m longgen_core.models setup
	touch $(STAMP)

demo: setup
	$(PYTHON) -m longgen_core.runner --out runs/demo

refresh: setup
	$(PYTHON) -m longgen_core.runner --in-place

# Batch run for GPU nodes: make notebooks PRESET=gpu-small OUT=runs/
OUT ?= runs
notebooks: setup
	$(PYTHON) -m longgen_core.runner --preset $(PRESET) --out $(OUT)

# pyflakes and pycodestyle over the package, the tests and the notebooks (rules: pyproject.toml)
lint: setup
	$(PYTHON) -m ruff check longgen_core tests notebooks

test: setup lint
	$(PYTHON) -m pytest tests --nbval-lax $(NOTEBOOKS) --durations=15

# Real-browser notebook test (needs Debian's chromium: apt-get install chromium); part of `make test`
# too, where it is skipped when the browser is missing.
test-browser: setup
	$(PYTHON) -m pytest tests/test_browser.py

test-unit: setup
	$(PYTHON) -m pytest tests

test-notebooks: setup
	$(PYTHON) -m pytest --nbval-lax $(NOTEBOOKS)
