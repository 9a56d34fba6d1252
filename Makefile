# fsanet: the two commands a user needs are `make tables` and `make test`.
# Both create or refresh .venv from the pinned requirements; when nothing changed they take seconds.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.fsanet-installed
REQS := requirements/requirements.in requirements/constraints.txt pyproject.toml
CORES ?= all

export DVC_NO_ANALYTICS := 1
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := true
export MPLBACKEND := Agg
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: venv test test-slow test-all test-cuda gpu-check tables tables-transformers tables-bands tables-coco bench dvc-repro plots lint clean-results

venv: $(STAMP)

# torch is held at 2.13.0 by the constraints file, so no resolver can swap in a CUDA build.
# --no-compile, then compileall on all cores: pip byte-compiles the 2 GB of site-packages on one core
# (~1 min here). The .pyc files must exist: with PYTHONDONTWRITEBYTECODE set (as on this machine)
# every process would otherwise recompile torch, mlflow, ... from source on import.
$(STAMP): $(REQS)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-compile \
		-r requirements/requirements.in -c requirements/constraints.txt 2>&1 | { grep -v "is ignored: it is neither" || true; }
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-compile --no-deps --no-build-isolation -e . \
		2>&1 | { grep -v "is ignored: it is neither" || true; }
	$(BIN)/python -m compileall -q -j 0 $(VENV)/lib > /dev/null || true
	@touch $@

## make test: the test suite (fast; slow end-to-end checks are behind `-m slow`)
test: $(STAMP)
	$(BIN)/python -m pytest -q

## make test-slow: only the slow end-to-end checks
test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

## make test-all: the suite including the slow end-to-end checks (not the GPU checks)
test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m "not cuda"

## make test-cuda: the checks of the CUDA paths (needs a GPU and a CUDA build of torch)
test-cuda: $(STAMP)
	$(BIN)/python -m pytest -q -m cuda

## make gpu-check: CUDA tests, T1 on the GPU, an R101 AMP step, DDP (2 GPUs), 3 study models; exits 0 without CUDA
gpu-check: $(STAMP)
	PYTHON=$(abspath $(BIN)/python) tools/gpu_check.sh results/gpu_check

## make tables: the whole study on the default profile
tables: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) all_tables

## make tables-transformers: Segformer-B0 and AFFormer-tiny, each ± FSA, beside the FCN (its own profile; writes studies/transformers/)
tables-transformers: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) all_tables --configfile params/profiles/transformers.yaml

## make tables-bands: the band ablation on context at a known frequency (knee 2×2; its own profile; writes studies/bands/)
tables-bands: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) all_tables --configfile params/profiles/bands.yaml

## make tables-coco: Mask R-CNN ± FSA in res4 on the synthetic instances, COCO AP (its own profile; writes studies/coco/)
tables-coco: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) all_tables --configfile params/profiles/coco.yaml

## make bench: the full efficiency sweep (32² … 256², ~17 min on 2 cores), apart from the study
bench: $(STAMP)
	$(BIN)/fsanet bench attention --out results/bench/attention_full.json
	$(BIN)/fsanet tables efficiency --bench results/bench/attention_full.json \
		--out-dir results/tables/full --plot results/plots/efficiency_scaling_full.png

## make dvc-repro: the same study through DVC
dvc-repro: $(STAMP)
	$(BIN)/dvc repro

## make plots: `dvc plots show` rendered offline (Vega inlined from verified npm tarballs, fetched once)
plots: $(STAMP)
	$(BIN)/fsanet plots dvc-template --out .dvc/tmp/plots_template.html --cache-dir .dvc/tmp/npm
	$(BIN)/dvc plots show --html-template .dvc/tmp/plots_template.html

lint: $(STAMP)
	$(BIN)/ruff check fsanet tests
	$(BIN)/snakemake --lint
	$(BIN)/snakefmt --check Snakefile workflow

clean-results:
	rm -rf results studies .snakemake/metadata
