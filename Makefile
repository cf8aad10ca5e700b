# `make demo` and `make test` do all set-up on a fresh Debian machine: .venv, packages, data.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export NO_ALBUMENTATIONS_UPDATE := 1
FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: demo test data lint bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

# the edge kit (./export, torch-free) first: vitlab builds on it
$(VENV)/.installed: pyproject.toml export/pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e ./export -e '.[test]'
	touch $@

# Fashion-MNIST from Debian's dataset-fashion-mnist when apt is at hand; otherwise vitlab offers the download.
data:
	@if [ ! -d $(FMNIST) ] && command -v apt-get >/dev/null; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  ($$SUDO apt-get install -y -q dataset-fashion-mnist || ($$SUDO apt-get update -q && $$SUDO apt-get install -y -q dataset-fashion-mnist)) >/dev/null \
	  || echo "warning: could not install dataset-fashion-mnist; set VITLAB_DATA or data.download: true"; \
	fi

demo: $(VENV)/.installed data
	$(BIN)/vitlab demo

test: $(VENV)/.installed data
	$(BIN)/python -m pytest -q -ra

lint: $(VENV)/.installed
	$(BIN)/ruff check .

bench: $(VENV)/.installed data
	$(BIN)/python benchmarks/bench_training.py
	$(BIN)/python benchmarks/bench_onnx.py
	$(BIN)/python benchmarks/bench_predict.py

clean:
	rm -rf runs lightning_logs .pytest_cache
