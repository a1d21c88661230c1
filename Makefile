# Two entry points for a fresh machine: `make run` and `make test`.
# Both create .venv when it is missing and install the project into it first.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CORES ?= 2
SNAKEMAKE := $(BIN)/snakemake --cores $(CORES) --rerun-incomplete --printshellcmds

SEEDS ?= 0 1 2

.PHONY: venv run replicate test test-all test-conda test-slurm test-voc bench bench-gpu report lint format clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(SNAKEMAKE)

# The default run once per seed (results/seed_<N>, one after another: logs/ is shared),
# then one table of every run's summary.json: results/replicates.md and .json.
replicate: $(STAMP)
	for s in $(SEEDS); do $(SNAKEMAKE) --config seed=$$s results_dir=results/seed_$$s || exit 1; done
	$(BIN)/python -m pole_core.report.replicates $(foreach s,$(SEEDS),results/seed_$(s)) --out results/replicates.md

report: $(STAMP)
	$(SNAKEMAKE) --report results/report.html

test: $(STAMP)
	$(BIN)/python -m pytest -q

# the fast suite and the slow tests; the VOC rehearsal and SLURM tests have their own targets
test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m 'not slurm and not voc'

# config/voc.yaml end to end on a generated VOCdevkit at real VOC sizes (random-init weights).
test-voc: $(STAMP)
	$(BIN)/python -m pytest -q -s -m voc tests/test_voc_rehearsal.py

# The rules' conda environment (envs/pole.yaml) built by Snakemake; needs conda or mamba on PATH.
test-conda: $(STAMP)
	$(SNAKEMAKE) --use-conda --conda-create-envs-only

test-slurm: $(STAMP)
	bash tests/slurm/run_slurm_test.sh

bench: $(STAMP)
	$(BIN)/python -m benchmarks --out results/bench

# On a machine with a CUDA GPU: the rehearsal's GPU stages and the extraction benchmark.
bench-gpu: $(STAMP)
	bash benchmarks/gpu.sh

lint: $(STAMP)
	$(BIN)/ruff check pole_core benchmarks tests workflow/scripts
	$(BIN)/ruff format --check pole_core benchmarks tests workflow/scripts
	$(BIN)/snakemake --lint --cores 1

format: $(STAMP)
	$(BIN)/ruff format pole_core benchmarks tests workflow/scripts
	$(BIN)/ruff check --fix pole_core benchmarks tests workflow/scripts

clean:
	rm -rf results logs .snakemake
