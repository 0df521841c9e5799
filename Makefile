# The README's two commands: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch and torchvision first, pinned, so pip takes them from this machine's disk.
TORCH := torch==2.14.1 torchvision==0.29.1
DEMO_DIR ?= demo-out

.PHONY: demo demo-query test test-fast test-slow test-all lint typecheck pytest clean

$(VENV)/.torch:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet $(TORCH)
	touch $@

$(VENV)/.installed: $(VENV)/.torch pyproject.toml
	$(PIP) install --quiet -e '.[cpu]'
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) install --quiet -e '.[cpu,test]'
	touch $@

# The whole product on the built-in synthetic set: train a short coins run, export it to ONNX,
# index the test split, serve it on a free loopback port, query it over HTTP (Recall@K by id and
# by image, a few results), and stop the server whatever happens (trap).
demo: $(VENV)/.installed
	rm -rf $(DEMO_DIR)
	$(VENV)/bin/coins data show synthetic-patches
	$(VENV)/bin/coins train --method coins --dataset synthetic-patches --epochs 20 \
		--out $(DEMO_DIR)/coins
	$(VENV)/bin/coins export $(DEMO_DIR)/coins/checkpoint.pt -o $(DEMO_DIR)/model.onnx
	$(VENV)/bin/coins index build $(DEMO_DIR)/model.onnx --dataset synthetic-patches --split test \
		-o $(DEMO_DIR)/index
	$(MAKE) --no-print-directory demo-query

# Serve $(DEMO_DIR)/index (built by `make demo`) and query it over HTTP.
demo-query: $(VENV)/.installed
	@port=$$($(PY) -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'); \
	url=http://127.0.0.1:$$port; \
	$(VENV)/bin/coins serve $(DEMO_DIR)/index --model $(DEMO_DIR)/model.onnx --port $$port \
		--log-level warning & pid=$$!; \
	trap 'status=$$?; kill $$pid 2>/dev/null || true; wait $$pid 2>/dev/null || true; echo "server stopped"; exit $$status' EXIT; \
	echo "serving $(DEMO_DIR)/index on $$url (pid $$pid)"; \
	set -e; \
	$(VENV)/bin/coins query $$url --recall --wait 120; \
	echo "Recall@K through the API with the test images sent as PNG files, gated by coarse class:"; \
	$(VENV)/bin/coins query $$url --recall --dataset synthetic-patches --split test --gate coarse; \
	echo "By image: a test image written to a PNG file, its predicted coarse class and the gate:"; \
	$(PY) -c 'from coins.retrieval.data import build_dataset as b; b("synthetic-patches", "test").image(0).save("$(DEMO_DIR)/query.png")'; \
	$(VENV)/bin/coins query $$url --image $(DEMO_DIR)/query.png -k 5 --gate coarse

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# mypy needs the package under its installed name; a link gives it that without the editable hook.
typecheck: $(VENV)/.installed-test
	mkdir -p .mypy_src && ln -sfn "$(CURDIR)" .mypy_src/coins
	MYPYPATH=.mypy_src $(VENV)/bin/mypy -p coins

# The suite without the tests marked slow (each over ~5 s), spread over every core (pytest-xdist,
# one torch thread per worker): the README's `make test`. CI runs the slow ones too (`test-slow`).
PYTEST_PARALLEL ?= -n auto --dist loadscope
pytest: $(VENV)/.installed-test
	OMP_NUM_THREADS=1 $(VENV)/bin/pytest -m "not slow" $(PYTEST_PARALLEL)

# The tests marked slow, one at a time (servers killed mid-write, DDP ranks, long fuzzing).
test-slow: $(VENV)/.installed-test
	$(VENV)/bin/pytest -m slow

# The development loop: the fast tests in this process, no workers to start.
test-fast: $(VENV)/.installed-test
	$(VENV)/bin/pytest -m "not slow"

test: lint typecheck pytest

# Everything CI runs: `make test`, then the slow tests.
test-all: test test-slow

clean:
	rm -rf $(VENV) .mypy_src .mypy_cache .ruff_cache .pytest_cache $(DEMO_DIR)
