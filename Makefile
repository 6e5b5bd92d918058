# Digit Recognizer pipeline. `make` (or `make help`) lists the targets; variables go on the command line,
# e.g. `make train PRESET=quick FOLDS=3`. Every target that needs Python builds .venv first, by itself.
SHELL := /bin/bash
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DIGITS := $(BIN)/python -m digits

COMPETITION ?= digit-recognizer
# A value as one shell word, whatever it holds (MESSAGE="don't use dropout"): in single quotes, each ' as '\''.
quote = '$(subst ','\'',$(1))'
# A variable's value as one shell word, as typed: $(value ...) keeps make from expanding a $ in it ("50$ off").
arg = $(call quote,$(value $(1)))
# Optional variables, passed to the CLI only when set.
opt = $(if $(value $(1)),--$(2) $(call arg,$(1)))
download_args = --competition $(call arg,COMPETITION) $(call opt,SOURCE,source) $(if $(filter 1 yes true,$(FORCE)),--force)
train_args = $(call opt,PRESET,preset) $(call opt,FOLDS,folds) $(call opt,EPOCHS,epochs) $(call opt,BATCH,batch) \
	$(call opt,MODEL,model) $(call opt,SEED,seed) $(call opt,RUN,run) $(call opt,ONLY,only) \
	$(call opt,HOLDOUT,holdout) $(call opt,HOLDOUT_SEED,holdout-seed) $(call opt,PSEUDO,pseudo) $(call opt,PSEUDO_CONFIDENCE,pseudo-confidence) \
	$(call opt,ELASTIC,elastic) $(call opt,DROPOUT,dropout) $(call opt,PRECISION,precision) \
	$(if $(filter 1 yes true,$(DETERMINISTIC)),--deterministic)

.PHONY: help .venv download sample test test-long test-fast lint format train report submission ensemble compare submit submissions \
	bench predict demo clean

help: ## List the targets (this text)
	@echo "Digit Recognizer pipeline. Usage: make <target> [VARIABLE=value ...]"
	@echo
	@grep -E '^[a-zA-Z_.-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  \033[1m%-12s\033[0m %s\n", $$1, $$2}'
	@echo
	@echo "Variables: COMPETITION SOURCE FORCE (download); PRESET FOLDS EPOCHS BATCH MODEL SEED RUN ONLY"
	@echo "           HOLDOUT HOLDOUT_SEED PSEUDO PSEUDO_CONFIDENCE ELASTIC DROPOUT PRECISION DETERMINISTIC (train); RUN (report, submission, submit); TTA (submission);"
	@echo "           RUNS WEIGHTS (ensemble); RUNS OUT (compare); FILE MESSAGE (submit); IMAGE RUN (predict); EPOCHS (demo). See README.md."

$(VENV)/.installed: requirements.txt pyproject.toml
	@echo ">> building $(VENV) from requirements.txt (first time: a few minutes, ~2.5 GB)"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

.venv: $(VENV)/.installed ## Create the virtual environment (automatic; rebuilt when requirements.txt changes)

download: .venv ## Fetch and verify train.csv/test.csv into data/raw/ (COMPETITION, SOURCE=zip-or-folder, FORCE=1)
	$(DIGITS) download $(download_args)

sample: .venv ## Rebuild data/sample/ from a copy of the competition zip (SOURCE=path/to/digit-recognizer.zip)
	@test -n $(call arg,SOURCE) || { echo "make sample needs SOURCE=path/to/digit-recognizer.zip"; exit 2; }
	$(BIN)/python -m digits.sample --source $(call arg,SOURCE)

train: .venv ## Train the k-fold CNNs (PRESET=quick|default|max FOLDS EPOCHS BATCH MODEL SEED RUN ONLY HOLDOUT HOLDOUT_SEED PSEUDO PSEUDO_CONFIDENCE ELASTIC DROPOUT PRECISION DETERMINISTIC)
	$(DIGITS) train $(train_args)

report: .venv ## Print a run's fold table and the path of its report.html (RUN, default the latest)
	$(DIGITS) report $(call opt,RUN,run)

submission: .venv ## Blend a run's folds into submissions/<run>-cv<OOF acc>.csv (RUN, TTA=1)
	$(DIGITS) submission $(call opt,RUN,run) $(if $(filter 1 yes true,$(TTA)),--tta)

ensemble: .venv ## Blend several runs into one submission (RUNS=a,b WEIGHTS=equal|oof)
	@test -n $(call arg,RUNS) || { echo "make ensemble needs RUNS=run1,run2"; exit 2; }
	$(DIGITS) ensemble --runs $(call arg,RUNS) $(call opt,WEIGHTS,weights)

compare: .venv ## Is one run better than another? Paired tests on the rows they share (RUNS=a,b: each later run against a; RUNS=a1+a2,b1+b2 pools two seeds; OUT=folder)
	@test -n $(call arg,RUNS) || { echo "make compare needs RUNS=run1,run2 (each later run is compared with the first)"; exit 2; }
	$(DIGITS) compare --runs $(call arg,RUNS) $(call opt,OUT,out)

submit: .venv ## Upload a submission to Kaggle and print its score (FILE, default the latest run's; MESSAGE)
	$(DIGITS) submit --competition $(call arg,COMPETITION) $(call opt,RUN,run) $(call opt,FILE,file) $(call opt,MESSAGE,message)

submissions: .venv ## List your past submissions to the competition, with their scores
	$(DIGITS) submissions --competition $(call arg,COMPETITION)

bench: .venv ## Speed of training/prediction vs plain model.fit, full data (4-10 min; BFLOAT16=1) -> runs/bench/
	$(BIN)/python -m digits.bench $(if $(filter 1 yes true,$(BFLOAT16)),--bfloat16)

predict: .venv ## Top-3 digits for your own pictures, with a <name>.prepared.png beside each (IMAGE=files-or-folder, RUN)
	@test -n $(call arg,IMAGE) || { echo "make predict needs IMAGE=path/to/digit.png (several: IMAGE=\"a.png b.jpg\" or a,b; or a folder)"; exit 2; }
	$(DIGITS) predict $(call opt,RUN,run) $(call arg,IMAGE)

demo: .venv ## The whole pipeline offline on the bundled sample in a few minutes: data, training, submission, report (EPOCHS, default 12)
	$(DIGITS) demo $(call opt,EPOCHS,epochs)

# One worker more than the cores this process may use (nproc): much of the suite is single-threaded start-up
# (each fold's process imports TensorFlow, about 8 s), which leaves a core idle at times; on 2 cores 3 workers
# took 10m00s, 2 took 11m04s (session 11); on the AVX2-only host again, 3 took 11m35s and 4 took 12m41s
# (session 18). A test file stays on one worker, so its module fixtures (trained runs) are built once, and the
# files go out in the order tests/conftest.py gives them (the longest first), not by their number of tests.
PYTEST_WORKERS ?= $(shell echo $$(( $$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null || echo 1) + 1 )))
PYTEST_PARALLEL = -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder

test: .venv ## Run the test suite (installs everything first; about 10 minutes on 2 idle cores)
	$(BIN)/python -m pytest $(PYTEST_PARALLEL) -m "not long"

test-long: .venv ## Run the opt-in long tests: the demo as users run it, re-drawn digits against a real CNN (about 6 minutes)
	$(BIN)/python -m pytest $(PYTEST_PARALLEL) -m long

test-fast: .venv ## Run the tests that train nothing (1-2 minutes)
	$(BIN)/python -m pytest $(PYTEST_PARALLEL) -m "not slow"

lint: .venv ## Check style and common bugs with ruff
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

format: .venv ## Reformat the code with ruff
	$(BIN)/ruff check --fix src tests
	$(BIN)/ruff format src tests

clean: ## Remove caches (keeps .venv, data and runs)
	rm -rf .pytest_cache .ruff_cache build src/*.egg-info
	find . -name __pycache__ -not -path './.venv/*' -prune -exec rm -rf {} +
