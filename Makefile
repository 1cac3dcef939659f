# The two set-up commands of the README: `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# On the project's own CPU machines the only torch/torchvision pair that lets open_clip import
# is torch 2.14.1 + torchvision 0.29.1 (on local disk). Elsewhere the user's torch is kept.
TORCH_PIN ?= torch==2.14.1 torchvision==0.29.1

.PHONY: venv install install-test demo test bench clean

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
	@touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

demo: install
	HF_HUB_OFFLINE=1 $(BIN)/python scripts/demo.py --out out/demo

test: install-test
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

bench: install
	HF_HUB_OFFLINE=1 $(BIN)/python scripts/bench_uce.py

clean:
	rm -rf out .pytest_cache
