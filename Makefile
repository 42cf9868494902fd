# Two set-up commands for a fresh machine: `make demo` and `make test`. Both create .venv/ first.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
# The pinned CPU wheel first: an unpinned torch pulls a multi-GB CUDA build.
TORCH := torch==2.13.0

.PHONY: install demo test check protos clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/.installed

demo: install
	$(BIN)/fair4free demo

test: install
	$(BIN)/python -m pytest

# Static checks CI runs before the tests.
check: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	PATH=$(BIN):$$PATH .ci/typecheck
	$(BIN)/lint-imports
	$(BIN)/python .ci/module_sizes.py
	PATH=$(BIN):$$PATH .ci/check-protos

protos: install
	PATH=$(BIN):$$PATH .ci/protoc

clean:
	rm -rf $(VENV) .typecheck .mypy_cache .ruff_cache .pytest_cache
