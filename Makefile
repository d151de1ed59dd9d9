# lightning-sep — `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON  ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed-stamp

MODEL   ?= skipfilter
DATA    ?= musdb
TRAINER ?= cpu
ARGS    ?=
PYTEST_ARGS ?=
UI_PORT ?= 5000

.PHONY: help setup ffmpeg train test test-fast ui configs clean-data

help: ## List the targets and variables
	@echo "Usage: make <target> [MODEL=$(MODEL)] [DATA=$(DATA)] [TRAINER=$(TRAINER)] [ARGS='...']"
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo "Variables: MODEL (conf/model/*.yaml), DATA (conf/data/*.yaml), TRAINER (cpu|auto),"
	@echo "           ARGS (extra lightning-sep arguments), MUSDB_ROOT (real MUSDB18; unset = embedded corpus)"

ffmpeg: ## Make sure ffmpeg and ffprobe are on PATH (Debian's package if apt and root are there)
	@if command -v ffmpeg >/dev/null && command -v ffprobe >/dev/null; then exit 0; fi; \
	if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  echo "Installing ffmpeg (Debian package) ..."; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  (apt-get install -y -qq --no-install-recommends ffmpeg >/dev/null 2>&1 || \
	   (apt-get update -qq && apt-get install -y -qq --no-install-recommends ffmpeg)) || exit 1; \
	else \
	  echo "ffmpeg and ffprobe are needed (the musdb package imports them, .stem.mp4 decoding uses them)."; \
	  echo "Install them, then re-run make:  sudo apt-get install ffmpeg   (macOS: brew install ffmpeg)"; \
	  exit 1; \
	fi

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

setup: ffmpeg $(STAMP) ## Create .venv and install the package (re-runs only when pyproject.toml changes)

train: setup ## Train MODEL on DATA with TRAINER; tracked in MLflow (mlruns/)
	$(BIN)/lightning-sep fit --config conf/trainer/$(TRAINER).yaml --config conf/data/$(DATA).yaml \
	  --config conf/model/$(MODEL).yaml $(ARGS)

configs: setup ## Print the resolved config of MODEL/DATA/TRAINER (reproduces the run)
	$(BIN)/lightning-sep fit --config conf/trainer/$(TRAINER).yaml --config conf/data/$(DATA).yaml \
	  --config conf/model/$(MODEL).yaml $(ARGS) --print_config

test: setup ## Run the test suite (all on the embedded corpora; no download, no GPU)
	@$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests: failing"; exit 1; fi; exit $$rc

test-fast: setup ## The tests without the slow (real training) ones
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

ui: setup ## Open the MLflow UI on http://127.0.0.1:5000 (loopback only; UI_PORT=...)
	$(BIN)/mlflow ui --host 127.0.0.1 --port $(UI_PORT) \
	  --backend-store-uri "$${MLFLOW_TRACKING_URI:-sqlite:///$(CURDIR)/mlruns/mlflow.db}"
	

clean-data: ## Delete the generated corpora and decoded-audio caches (data/)
	rm -rf data/
