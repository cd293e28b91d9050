# Two commands: `make demo` and `make test`. Both set up what is missing first, and are quick the second time.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.napari-autofocus-installed
# The CPU build of torch (a CUDA build is several GB); skipped when the venv already has a working torch.
TORCH_PIN ?= torch==2.13.0

.PHONY: demo test setup system-deps lint clean

demo: setup
	$(PY) -m napari_autofocus demo $(if $(DISPLAY),,--screenshot demo-screenshot.png)

test: setup
	$(PY) -m pytest

lint: setup
	$(PY) -m ruff check . && $(PY) -m ruff format --check .

setup: system-deps $(STAMP)

system-deps:
	@if [ -z "$(SKIP_SYSTEM_DEPS)" ]; then bash tools/ensure_system_deps.sh; fi

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || { echo "could not create $(VENV): install python3-venv (apt-get install python3-venv)" >&2; exit 1; }
	@if $(PY) -c "import torch" >/dev/null 2>&1; then \
		echo "torch already usable in $(VENV): keeping it"; \
		$(PY) -m pip install -q -e ".[dev]"; \
	else \
		$(PY) -m pip install -q "$(TORCH_PIN)" -e ".[dev]"; \
	fi
	@touch $(STAMP)

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache
