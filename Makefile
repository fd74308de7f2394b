# reccomp: `make demo` and `make test` set everything up themselves (a .venv here).
#   make setup          create or update .venv (CPU build of torch + FBGEMM)
#   make setup GPU=1    same with the CUDA builds (torch from PyPI + fbgemm-gpu)
#   make demo           train MF on the embedded synthetic data, print test metrics + run dir
#   make test           the test suite
#   make test-gpu       the tests marked gpu (CUDA devices + fbgemm-gpu; make setup GPU=1)
#   make lint           ruff check + format check
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
GPU    ?= 0
TORCHREC := torchrec==1.8.0
REQ_BUILD := requirements/$(if $(filter 1,$(GPU)),gpu,cpu).txt
STAMP  := $(VENV)/.setup-$(if $(filter 1,$(GPU)),gpu,cpu)

.PHONY: setup demo test test-gpu lint format bench clean

setup: $(STAMP)

$(STAMP): $(REQ_BUILD) requirements/base.txt requirements/dev.txt pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) (or: make PYTHON=python3)"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch + FBGEMM first, so nothing below can pull another torch build
	$(BIN)/python -m pip install -q -r $(REQ_BUILD)
	# torchrec names the CUDA fbgemm-gpu as a dependency: install it alone, then its real needs
	$(BIN)/python -m pip install -q --no-deps $(TORCHREC)
	$(BIN)/python -m pip install -q -r requirements/base.txt -r requirements/dev.txt
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	rm -f $(VENV)/.setup-*
	touch $@

demo: setup
	$(BIN)/reccomp fit --config configs/synthetic-movielens-mf.yaml

test: setup
	$(BIN)/python -m pytest -q

test-gpu: setup
	$(BIN)/python -m pytest -q -m gpu

lint: setup
	$(BIN)/ruff check reccomp tests benchmarks
	$(BIN)/ruff format --check reccomp tests benchmarks

format: setup
	$(BIN)/ruff check --fix reccomp tests benchmarks
	$(BIN)/ruff format reccomp tests benchmarks

bench: setup
	$(BIN)/python benchmarks/throughput.py

clean:
	rm -rf runs .pytest_cache
