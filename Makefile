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
UI_PORT ?=
# make ui / make server: PORT (UI_PORT is its old name); HOST only from the command line (a shell's own $HOST
# must never expose a server), default loopback
PORT    ?= $(or $(UI_PORT),5000)
UI_HOST := $(if $(filter command line,$(origin HOST)),$(HOST),127.0.0.1)
SERVER_DB ?=
CKPT    ?=
RUN_ID  ?=
EVAL_WORKERS ?=
WIENER  ?= 0
IN      ?=
OUT     ?= separated
SNRS    ?= -10 -5 -2.5 0 2.5 5 10
N_TRIALS ?= 20
STUDY   ?=
PRUNER  ?=
DASHBOARD_PORT ?= 8080
# training scale (conf/trainer/): empty = the trainer file's value
DEVICES ?=
NODES   ?=
STRATEGY ?=
ACCELERATOR ?=
PRECISION ?=
ACCUMULATE ?=
COMPILE ?=
RESUME  ?=
NODE_RANK ?= 0
MASTER_ADDR ?= 127.0.0.1
MASTER_PORT ?= 29500
TRAINER_ARGS = $(if $(DEVICES),--trainer.devices $(DEVICES)) $(if $(NODES),--trainer.num_nodes $(NODES)) \
  $(if $(STRATEGY),--trainer.strategy $(STRATEGY)) $(if $(ACCELERATOR),--trainer.accelerator $(ACCELERATOR)) \
  $(if $(PRECISION),--trainer.precision $(PRECISION)) $(if $(ACCUMULATE),--trainer.accumulate_grad_batches $(ACCUMULATE)) \
  $(if $(filter 1 true yes,$(COMPILE)),--compile true) $(if $(RESUME),--resume '$(RESUME)')
# TRAINER=multinode: torchrun starts DEVICES processes on this node, NODE_RANK of NODES (run it on every node)
FIT = $(if $(filter multinode,$(TRAINER)),$(BIN)/torchrun --nnodes $(or $(NODES),2) --nproc-per-node $(or $(DEVICES),1) \
  --node-rank $(NODE_RANK) --master-addr $(MASTER_ADDR) --master-port $(MASTER_PORT) -m lightning_sep.cli,$(BIN)/lightning-sep)
REFERENCES := mixture oracle_ibm oracle_irm1 oracle_irm2
# with CKPT or RUN_ID, MODEL (when given) only checks that the checkpoint is of that family
MODEL_FLAG = $(if $(filter command line environment,$(origin MODEL)),--model $(MODEL),$(if $(CKPT)$(RUN_ID),,--model $(MODEL)))
WHICH_MODEL = $(if $(CKPT),--ckpt '$(CKPT)') $(if $(RUN_ID),--run-id $(RUN_ID))
MODEL_ARGS = $(WHICH_MODEL) --wiener $(WIENER)
# make confidence: MODEL defaults to vae (the family whose separation records a posterior variance)
CONFIDENCE_MODEL_FLAG = $(if $(filter command line environment,$(origin MODEL)),--model $(MODEL),$(if $(CKPT)$(RUN_ID),,--model vae))

.PHONY: help setup ffmpeg browser train tune tune-dashboard eval reproduce eval-references separate confidence analyze compare bench test test-fast ui server configs clean-data

help: ## List the targets and variables
	@echo "Usage: make <target> [MODEL=$(MODEL)] [DATA=$(DATA)] [TRAINER=$(TRAINER)] [ARGS='...']"
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo "Variables: MODEL (conf/model/*.yaml), DATA (conf/data/*.yaml: musdb, timit, timit_ten_speakers),"
	@echo "           TRAINER (conf/trainer/*.yaml: cpu, auto, gpu, ddp, ddp_cpu, ddp_spawn, multinode), DEVICES (per node),"
	@echo "           NODES, STRATEGY, ACCELERATOR, PRECISION (32-true|bf16-mixed|16-mixed), ACCUMULATE (batches),"
	@echo "           COMPILE=1 (torch.compile), RESUME (last | a .ckpt: continue the run), multinode: NODE_RANK, MASTER_ADDR, MASTER_PORT"
	@echo "           ARGS (extra lightning-sep arguments), MUSDB_ROOT / TIMIT_ROOT (real data; unset = embedded corpora)"
	@echo "           eval/separate: CKPT, RUN_ID (default: latest finished run of MODEL), WIENER (EM iterations),"
	@echo "           EVAL_WORKERS (museval processes), IN (files to separate), OUT (default separated/)"
	@echo "           analyze: MODEL (one or more of dae mss_dae skipfilter), CKPT, RUN_ID; ARGS e.g. '--max-segments 0 --iterations 600'"
	@echo "           compare: MODEL (one or more families; default all), DATA (a conf/data name or data.dataset tag; default all);"
	@echo "           ARGS e.g. '--all --params lr hidden_size --limit 0' (lightning-sep compare --help)"
	@echo "           confidence: MODEL (vae|deep_vae, default vae), DATA (timit_ten_speakers|timit),"
	@echo "           SNRS (input SNRs in dB, default \"$(SNRS)\")"
	@echo "           tune: N_TRIALS (the study's total, default $(N_TRIALS)), STUDY (default <MODEL>-<DATA>; same name resumes),"
	@echo "           PRUNER (median|percentile|hyperband|successive_halving|none; default conf/tune/<MODEL>.yaml's),"
	@echo "           OPTUNA_STORAGE (SQLAlchemy URL shared by workers; default sqlite:///mlruns/optuna.db), DASHBOARD_PORT"
	@echo "           ui/server: PORT (default 5000), HOST (default 127.0.0.1), SERVER_DB (server's SQLAlchemy URL);"
	@echo "           MLFLOW_TRACKING_URI (default sqlite:///mlruns/mlflow.db; http://127.0.0.1:PORT = a server)"

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

browser: ## Make sure Debian's chromium is there for the MLflow UI browser test (skipped, with a note, where it cannot be)
	@if command -v chromium >/dev/null || [ -x /usr/bin/chromium ]; then exit 0; fi; \
	if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  echo "Installing chromium (Debian package, for tests/test_mlflow_ui.py) ..."; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  (apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 || \
	   (apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium)) || \
	  echo "make browser: could not install chromium: the MLflow UI browser test will be skipped"; \
	else \
	  echo "chromium not found: the MLflow UI browser test will be skipped (install it: sudo apt-get install chromium, or sudo make browser)"; \
	fi

# torch 2.11's CUDA wheels: ~6 GB installed, ~3 GB more while pip unpacks them (no pip cache is kept: CI and
# fresh machines have no use for a second copy of the wheels)
SETUP_GB := 9

$(STAMP): pyproject.toml
	@for dir in . "$${TMPDIR:-/tmp}"; do \
	  free=$$(df -Pk "$$dir" 2>/dev/null | awk 'NR==2 {print int($$4 / 1048576)}'); \
	  if [ -n "$$free" ] && [ "$$free" -lt $(SETUP_GB) ]; then \
	    echo "make setup: warning: $$free GB free in $$(cd "$$dir" && pwd); installing torch needs about $(SETUP_GB) GB."; \
	    echo "  If pip stops with 'No space left on device', free space there (or point TMPDIR at a larger disk) and re-run make."; \
	  fi; \
	done
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --no-cache-dir --upgrade pip
	$(BIN)/python -m pip install --quiet --no-cache-dir -e '.[dev]'
	@touch $(STAMP)

setup: ffmpeg $(STAMP) ## Create .venv and install the package (re-runs only when pyproject.toml changes)

train: setup ## Train MODEL on DATA with TRAINER (cpu|gpu|ddp|ddp_cpu|ddp_spawn|multinode), DEVICES, RESUME=last; MLflow
	$(FIT) fit --config conf/trainer/$(TRAINER).yaml --config conf/data/$(DATA).yaml \
	  --config conf/model/$(MODEL).yaml $(TRAINER_ARGS) $(ARGS)

tune: setup ## Optuna study of MODEL on DATA (conf/tune/MODEL.yaml): N_TRIALS, STUDY; best config + plots in MLflow
	$(BIN)/lightning-sep tune --model $(MODEL) --data $(DATA) --trainer $(TRAINER) --n-trials $(N_TRIALS) \
	  $(if $(STUDY),--study '$(STUDY)') $(if $(PRUNER),--pruner $(PRUNER)) $(ARGS)

tune-dashboard: setup ## Open optuna-dashboard on the studies' storage at http://127.0.0.1:8080 (DASHBOARD_PORT=...)
	$(BIN)/optuna-dashboard "$${OPTUNA_STORAGE:-sqlite:///$(CURDIR)/mlruns/optuna.db}" --host 127.0.0.1 --port $(DASHBOARD_PORT)

eval: setup ## Test-set scores of MODEL (or mixture / oracle_*): BSS Eval v4 on MUSDB (ARGS="--metrics museval": museval itself), v3 on DATA=timit
	$(BIN)/lightning-sep eval $(MODEL_FLAG) --data $(DATA) $(if $(filter $(MODEL),$(REFERENCES)),,$(MODEL_ARGS)) \
	  $(if $(EVAL_WORKERS),--workers $(EVAL_WORKERS)) $(ARGS)

eval-references: setup ## The reference rows: mixture and the three oracle masks, through the same pipeline
	@for m in $(REFERENCES); do \
	  $(BIN)/lightning-sep eval --model $$m --data $(DATA) $(if $(EVAL_WORKERS),--workers $(EVAL_WORKERS)) $(ARGS) || exit $$?; \
	done

separate: setup ## Separate IN='song.wav ...' with MODEL (or CKPT/RUN_ID) into OUT/<song>/<target>.wav
	@if [ -z "$(IN)" ]; then echo "make separate: say which files, e.g. make separate IN=song.wav"; exit 2; fi
	$(BIN)/lightning-sep separate $(IN) --out '$(OUT)' $(MODEL_FLAG) $(MODEL_ARGS) $(ARGS)

confidence: setup ## The VAE's posterior variance against the input SNR (paper Fig. 5): MODEL=vae DATA=timit_ten_speakers SNRS="..."
	$(BIN)/lightning-sep confidence $(CONFIDENCE_MODEL_FLAG) --data $(DATA) $(MODEL_ARGS) --snrs $(SNRS) $(ARGS)

analyze: setup ## Neural couplings analysis (NCA, TOD-R, paper Tables 1-3, heatmaps) of MODEL="dae mss_dae skipfilter" (or CKPT/RUN_ID)
	$(BIN)/lightning-sep analyze $(MODEL_FLAG) --data $(DATA) $(WHICH_MODEL) $(ARGS)

compare: setup ## MLflow runs side by side (key params, val SDR, test SDR/SIR/SAR): table, CSV, bar chart; MODEL="dae skipfilter" DATA=...
	$(BIN)/lightning-sep compare $(if $(filter command line environment,$(origin MODEL)),--model $(MODEL)) \
	  $(if $(filter command line environment,$(origin DATA)),--data $(DATA)) $(ARGS)

bench: setup ## Benchmarks for BENCHMARKS.md (BSS Eval v4 vs museval time and memory, eval wall time per worker count, separation speed, speech metrics, tune trials/hour, training frames/s per family)
	$(BIN)/python -m lightning_sep.benchmarks.bsseval_speed
	$(BIN)/python -m lightning_sep.benchmarks.eval_speed $(ARGS)
	$(BIN)/python -m lightning_sep.benchmarks.speech_metrics
	$(BIN)/python -m lightning_sep.benchmarks.input_optimisation
	$(BIN)/python -m lightning_sep.benchmarks.tune_throughput
	$(BIN)/python -m lightning_sep.benchmarks.training_speed

reproduce: setup ## Train + evaluate the runs of docs/reproduction.md (hours on a CPU) and print its tables from MLflow
	$(BIN)/python -m lightning_sep.evaluation.reproduce $(ARGS)

configs: setup ## Print the resolved config of MODEL/DATA/TRAINER (reproduces the run)
	$(BIN)/lightning-sep fit --config conf/trainer/$(TRAINER).yaml --config conf/data/$(DATA).yaml \
	  --config conf/model/$(MODEL).yaml $(TRAINER_ARGS) $(ARGS) --print_config

test: setup browser ## Run the test suite (all on the embedded corpora; no download, no GPU)
	@$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests: failing"; exit 1; fi; exit $$rc

test-fast: setup browser ## The tests without the slow (real training) ones
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

ui: setup ## MLflow UI on the project's store at http://127.0.0.1:5000 (PORT=..., HOST=... on the command line)
	$(BIN)/lightning-sep ui --host $(UI_HOST) --port $(PORT) $(ARGS)

server: setup ## Team tracking server (mlflow server: SQLite db + artifact proxy in mlruns/server/, or SERVER_DB=...) on HOST:PORT
	$(BIN)/lightning-sep server --host $(UI_HOST) --port $(PORT) $(if $(SERVER_DB),--backend-store-uri '$(SERVER_DB)') $(ARGS)


clean-data: ## Delete the generated corpora and decoded-audio caches (data/)
	rm -rf data/
