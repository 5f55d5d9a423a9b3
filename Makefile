# Two setup commands: `make demo` (the main job, offline) and `make test`.
# Both create or reuse .venv, install torch==2.13.0 first (a normal release on PyPI; a local
# CPU wheel where one is provided), then the project with its extras.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)
export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: venv demo test lint typecheck pytest bench clean

venv: $(STAMP)

$(STAMP):
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev,postgres,browser]'
	rm -f $(VENV)/.installed-* && touch $@

# Real anime faces for the demo when the assets folder sits beside the repository; drawn faces otherwise.
ASSETS_DIR := $(wildcard ../shared/assets)
demo: venv
	$(if $(ASSETS_DIR),ANIMEXPR_ASSETS=$${ANIMEXPR_ASSETS:-$(abspath $(ASSETS_DIR))}) $(BIN)/animexpr demo

lint: venv
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: venv
	$(BIN)/mypy

# Plain `pytest` skips the slow tests; `make test` (and CI) runs them too.
PYTEST_ARGS ?= -m "not network and not gpu"
pytest: venv
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test: lint typecheck pytest

clean:
	rm -rf $(VENV) animexpr-home .pytest_cache .mypy_cache .ruff_cache
