# `make demo` and `make test` do all set-up on a fresh Debian machine: .venv, packages, data.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export NO_ALBUMENTATIONS_UPDATE := 1
FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: demo test data data-required js browser figures lint bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

# the edge kit (./export, torch-free) first: vitlab builds on it
$(VENV)/.installed: pyproject.toml export/pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e ./export -e '.[test]'
	touch $@

# Fashion-MNIST from Debian's dataset-fashion-mnist when apt is at hand (not needed when VITLAB_DATA is set);
# otherwise vitlab offers the download (data.init_args.download: true writes ./data/fashion-mnist).
data:
	@if [ -z "$$VITLAB_DATA" ] && [ ! -d $(FMNIST) ] && command -v apt-get >/dev/null; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  ($$SUDO apt-get install -y -q dataset-fashion-mnist || ($$SUDO apt-get update -q && $$SUDO apt-get install -y -q dataset-fashion-mnist)) >/dev/null \
	  || echo "warning: could not install dataset-fashion-mnist; set VITLAB_DATA or data.init_args.download: true"; \
	fi

# the tests need the data: missing after `data` tried apt, `make test` stops here, and the tests themselves fail
# (not skip) on missing data under VITLAB_REQUIRE_DATA=1 (tests/conftest.py)
data-required: $(VENV)/.installed data
	@$(BIN)/python -c 'import sys; from vitlab.data.datasets import _find_fmnist; sys.exit(_find_fmnist(None) is None)' \
	  || { echo "error: Fashion-MNIST is missing: apt-get install dataset-fashion-mnist, or set VITLAB_DATA to the folder holding its four IDX files" >&2; exit 1; }

# the JavaScript client (export/js): its npm packages and the web page's vendored copies; Debian's chromium for the
# browser tests (tests/test_js_client.py). Under `make test` a missing node or chromium fails those tests.
js: export/js/node_modules/.installed export/web/vendor/.vendored
export/js/node_modules/.installed: export/js/package.json export/js/package-lock.json
	cd export/js && npm ci --no-audit --no-fund
	touch $@
# the page's copies of the client and of onnxruntime-web: refreshed whenever the client's sources change
export/web/vendor/.vendored: export/js/node_modules/.installed $(wildcard export/js/src/*.js) export/js/scripts/vendor-web.js
	cd export/js && npm run vendor
	touch $@

browser:
	@if ! command -v chromium >/dev/null && command -v apt-get >/dev/null; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  ($$SUDO apt-get install -y -q chromium || ($$SUDO apt-get update -q && $$SUDO apt-get install -y -q chromium)) >/dev/null \
	  || echo "warning: could not install chromium; the browser tests will fail"; \
	fi

# the README's results table: copy fresh runs/... results (with their machine block) into docs/results/, re-render
figures:
	$(PY) benchmarks/report.py --collect --write

demo: $(VENV)/.installed data
	$(BIN)/vitlab demo

test: $(VENV)/.installed data-required js browser
	VITLAB_REQUIRE_DATA=1 $(BIN)/python -m pytest -q -ra

lint: $(VENV)/.installed
	$(BIN)/ruff check .

bench: $(VENV)/.installed data
	$(BIN)/python benchmarks/bench_training.py
	$(BIN)/python benchmarks/bench_onnx.py
	$(BIN)/python benchmarks/bench_predict.py

clean:
	rm -rf runs lightning_logs .pytest_cache
