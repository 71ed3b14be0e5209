# Two entry points for a fresh machine (see README): `make demo` and `make test`.
# Everything installs into a project-local .venv, pinned by constraints.txt, with no network but PyPI.
PYTHON ?= python3
VENV   := .venv
STAMP  := $(VENV)/.installed-stamp
LINKS  := $(VENV)/.links-stamp
BIN    := $(VENV)/bin
# Where modules live: a new or removed module changes a folder's time, which rebuilds the link tree.
SOURCE_DIRS := $(shell find src/radcap flows tasks models data_contracts -type d -not -name __pycache__ 2>/dev/null)

.PHONY: demo test check lint types docs setup clean

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) .ci/check-python
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test]' --config-settings editable_mode=strict
	touch $(STAMP) $(LINKS)

# Strict editable install: build/__editable__.* holds links to every module under its one name
# (radcap.flows.caption -> flows/caption.py); re-linked when a module is added or removed.
$(LINKS): $(STAMP) $(SOURCE_DIRS)
	$(BIN)/python -m pip install -q --no-deps -e . --config-settings editable_mode=strict
	touch $(LINKS)

setup: $(LINKS)

demo: $(LINKS)
	$(BIN)/radcap demo

lint: $(LINKS)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

types: $(LINKS)
	$(BIN)/mypy

# The generated pages must be current, and a broken link or anchor fails the build (--strict; not --quiet,
# which hides the warnings that --strict counts).
docs: $(LINKS)
	$(BIN)/python docs/generate.py --check
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir build/site

# The inner loop: lint, types and the fast tests (under 3 minutes).
check: lint types
	$(BIN)/python -m pytest -m "not slow" -n 2 -q

# What CI runs (.ci/run): everything.
test: lint types docs
	$(BIN)/python -m pytest -n 2 --durations=20

clean:
	rm -rf out .radcap build
