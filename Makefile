# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PRODUCT := $(VENV)/.product
STAMP  := $(VENV)/.installed

.PHONY: demo demo-clean test stress bench lint clean

# The product's packages only (what `make demo` needs): the first time about 30 s and 200 MB here,
# then nothing. The test packages (moto, hypothesis, ...) come with the first `make test`.
$(PRODUCT): pyproject.toml
	@echo "== .venv: a virtualenv with jit's packages (first run only: about half a minute)"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --progress-bar on -e .
	touch $(PRODUCT)

$(STAMP): $(PRODUCT)
	@echo "== .venv: the test packages (first test run only: about a minute more)"
	$(PY) -m pip install --progress-bar on -e '.[test]'
	touch $(STAMP)

demo: $(PRODUCT)
	$(VENV)/bin/jit demo

demo-clean: $(PRODUCT)
	$(VENV)/bin/jit demo --stop

test: $(STAMP)
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q

# The concurrency proofs under load: two busy loops hold both cores for the whole run, three
# rounds in a row (about 15 minutes; the PostgreSQL part needs 127.0.0.1:5432).
stress: $(STAMP)
	for round in 1 2 3; do \
	  echo "== round $$round of 3, with 2 CPU-bound processes"; \
	  $(PY) -m pytest -q --cpu-load 2 tests/reliability tests/unit/test_concurrency.py || exit 1; \
	done

# The figures of the README's "Performance" and "Reliability" (about 22 minutes; PostgreSQL at
# 127.0.0.1:5432 if up; engines_split needs it).
bench: $(STAMP)
	$(PY) tests/benchmarks/policy_decisions.py
	$(PY) tests/benchmarks/snow_sync.py
	$(PY) tests/benchmarks/restart_catchup.py
	$(PY) tests/benchmarks/activation_burst.py
	$(PY) tests/benchmarks/revocation_lag.py
	$(PY) tests/benchmarks/console_bench.py
	$(PY) tests/benchmarks/cli_startup.py
	$(PY) tests/benchmarks/api_latency.py
	$(PY) tests/benchmarks/engines_split.py
	$(PY) tests/benchmarks/agent_fanout.py
	$(PY) tests/benchmarks/fuzz_inputs.py --inputs 10000 --seed 1

clean:
	rm -rf $(VENV) .pytest_cache *.egg-info
