# Every target sets up .venv itself when it is missing, so on a fresh machine
# `make demo` and `make test` are the only two commands needed.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.bft-ray-installed
# Keep the test-time Ray clusters small on a 2-core machine.
export RAY_DEDUP_LOGS ?= 0
export RAY_USAGE_STATS_ENABLED ?= 0
# A crash in native code prints the Python stacks of every thread.
export PYTHONFAULTHANDLER ?= 1

.PHONY: setup demo sdc-check test test-full bench bench-overhead bench-compare bench-consensus bench-robust bench-throughput bench-bft bench-trust bench-checker bench-inference bench-robust-trainer profile-verified lint format clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and pinned: the CPU build on this machine's disk. An unpinned
	# torch would pull a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python jobs/demo.py

sdc-check: $(STAMP)
	$(BIN)/python jobs/sdc_check.py --level quick

test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

test-full: $(STAMP)
	BFT_RAY_FULL=1 $(BIN)/python -m pytest -q

bench: bench-overhead bench-compare bench-consensus bench-throughput bench-bft

bench-overhead: $(STAMP)
	$(BIN)/python benchmarks/bench_overhead.py

bench-compare: $(STAMP)
	$(BIN)/python benchmarks/bench_compare.py

bench-consensus: $(STAMP)
	$(BIN)/python benchmarks/bench_consensus.py

bench-throughput: $(STAMP)
	$(BIN)/python benchmarks/bench_throughput.py

bench-bft: $(STAMP)
	$(BIN)/python benchmarks/bench_bft.py

bench-trust: $(STAMP)
	$(BIN)/python benchmarks/bench_trust.py

bench-checker: $(STAMP)
	$(BIN)/python benchmarks/bench_checker.py

bench-inference: $(STAMP)
	$(BIN)/python benchmarks/bench_inference.py

bench-robust-trainer: $(STAMP)
	$(BIN)/python benchmarks/bench_robust_trainer.py

profile-verified: $(STAMP)
	$(BIN)/python benchmarks/profile_verified_path.py

bench-robust: $(STAMP)
	$(BIN)/python benchmarks/bench_robust.py

lint: $(STAMP)
	$(BIN)/ruff check bft_ray tests jobs benchmarks
	$(BIN)/ruff format --check bft_ray tests jobs benchmarks

format: $(STAMP)
	$(BIN)/ruff format bft_ray tests jobs benchmarks
	$(BIN)/ruff check --fix bft_ray tests jobs benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info
