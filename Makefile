# The two set-up commands of the README: `make demo` and `make test` (and `make app`, the demo
# in the browser).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# On the project's own CPU machines the only torch/torchvision pair that lets open_clip import
# is torch 2.14.1 + torchvision 0.29.1 (on local disk). Elsewhere the user's torch is kept.
TORCH_PIN ?= torch==2.14.1 torchvision==0.29.1

.PHONY: venv install install-test install-app chromium demo test app bench clean

$(BIN)/python:
	$(PY) -m venv --system-site-packages $(VENV)
	$(BIN)/pip install -q --upgrade pip

venv: $(BIN)/python

$(VENV)/.torch: | $(BIN)/python
	@if $(BIN)/python -c "import torch, torchvision" 2>/dev/null; then \
	  echo "keeping installed torch"; \
	elif [ -d /etc/xdg/pip ] || [ -n "$$CONCEPT_EDIT_PIN_TORCH" ]; then \
	  $(BIN)/pip install -q $(TORCH_PIN); \
	else \
	  $(BIN)/pip install -q torch torchvision; \
	fi
	@touch $@

$(VENV)/.installed: pyproject.toml $(VENV)/.torch
	$(BIN)/pip install -q -e .
	@touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed
	$(BIN)/pip install -q -e ".[test]"
	@$(MAKE) --no-print-directory chromium
	@touch $@

$(VENV)/.installed-app: pyproject.toml $(VENV)/.installed
	$(BIN)/pip install -q -e ".[app]"
	@touch $@

# The app's browser test drives Debian's chromium (Playwright's own browser download does not
# work offline). Installed with apt when missing and apt is usable (root, or sudo without a
# password); a failed install is an error there. Elsewhere the browser test is skipped.
chromium:
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then \
	  echo "chromium: $$(command -v chromium || command -v chromium-browser)"; \
	elif ! command -v apt-get >/dev/null 2>&1; then \
	  echo "NOTE: no chromium and no apt-get: the app's browser test will be skipped" \
	       "(install chromium, or set CHROMIUM=/path/to/chrome)"; \
	elif [ "$$(id -u)" = 0 ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get -y -qq install chromium chromium-driver >/dev/null; \
	elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then \
	  sudo -n apt-get update -qq && sudo -n env DEBIAN_FRONTEND=noninteractive apt-get -y -qq install chromium chromium-driver >/dev/null; \
	else \
	  echo "NOTE: no chromium, and apt-get needs root: the app's browser test will be skipped" \
	       "(sudo apt-get install chromium chromium-driver)"; \
	fi

install-app: $(VENV)/.installed-app

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

demo: install
	HF_HUB_OFFLINE=1 $(BIN)/python scripts/demo.py --out out/demo

test: install-test
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

# The browser demo on the embedded toy world: http://127.0.0.1:7860 (APP_ARGS="--help" lists options)
app: install-app
	HF_HUB_OFFLINE=$${HF_HUB_OFFLINE:-1} GRADIO_ANALYTICS_ENABLED=False $(BIN)/python app.py $(APP_ARGS)

bench: install
	HF_HUB_OFFLINE=1 $(BIN)/python scripts/bench_uce.py

clean:
	rm -rf out .pytest_cache
