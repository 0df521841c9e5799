# The README's two commands: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch and torchvision first, pinned, so pip takes them from this machine's disk.
TORCH := torch==2.14.1 torchvision==0.29.1
DEMO_DIR ?= demo-out

.PHONY: demo test lint typecheck pytest clean

$(VENV)/.torch:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet $(TORCH)
	touch $@

$(VENV)/.installed: $(VENV)/.torch pyproject.toml
	$(PIP) install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) install --quiet -e '.[test]'
	touch $@

# The longest pipeline that exists so far: data -> train -> eval, on the built-in synthetic set.
demo: $(VENV)/.installed
	rm -rf $(DEMO_DIR)
	$(VENV)/bin/coins data show synthetic-patches
	$(VENV)/bin/coins eval --dataset synthetic-patches --split test --json $(DEMO_DIR)/eval-random.json
	$(VENV)/bin/coins train --method coins --dataset synthetic-patches --epochs 20 \
		--out $(DEMO_DIR)/coins
	$(VENV)/bin/coins eval $(DEMO_DIR)/coins/checkpoint.pt --dataset synthetic-patches --split test \
		--json $(DEMO_DIR)/eval-coins.json

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# mypy needs the package under its installed name; a link gives it that without the editable hook.
typecheck: $(VENV)/.installed-test
	mkdir -p .mypy_src && ln -sfn "$(CURDIR)" .mypy_src/coins
	MYPYPATH=.mypy_src $(VENV)/bin/mypy -p coins

pytest: $(VENV)/.installed-test
	$(VENV)/bin/pytest

test: lint typecheck pytest

clean:
	rm -rf $(VENV) .mypy_src .mypy_cache .ruff_cache .pytest_cache $(DEMO_DIR)
