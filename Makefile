# One source of truth for building, linting and testing otaflash; the README
# and CI (.ci/run) call these targets and nothing else.
#
#   make demo   build, then update a simulated device from the embedded server
#   make test   everything CI checks, on a fresh machine included
#   make bench  benchmarks against the peer tools (release build, separate venv)

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
VPY := $(CURDIR)/$(VENV)/bin/python
BENCH_VENV := .venv-bench
BENCH_PY := $(CURDIR)/$(BENCH_VENV)/bin/python
# Every pyo3 build (cargo, clippy, maturin) sees the same interpreter, so
# switching between them does not rebuild pyo3 (PyO3/pyo3#1708).
export PYO3_PYTHON := $(VPY)

.PHONY: help demo test setup system-deps build-dev lint-rust test-rust lint-python test-python bench bench-delta clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/'

# Extra options for the demo, e.g. DEMO_ARGS="--full" or DEMO_ARGS="--keep demo".
DEMO_ARGS ?=

demo: build-dev  ## build, then run the main job: server + simulated device, v1 -> v2 over a delta
	$(VENV)/bin/otaflash demo $(DEMO_ARGS)

test: setup lint-rust test-rust lint-python test-python  ## everything CI runs

setup: system-deps build-dev  ## system packages, venv and an editable dev build

system-deps:  ## Debian packages the tests talk to, installed when missing
	bash scripts/system-deps.sh

$(VENV)/.created:
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --quiet --upgrade pip
	touch $@

build-dev: $(VENV)/.created  ## editable install (dev profile) with the test extras
	rm -f python/otaflash/_core*.so  # a stale extension would shadow the new build
	$(VPY) -m pip install --quiet -e '.[test]'

lint-rust:  ## rustfmt and clippy, warnings are errors
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --locked -- -D warnings

test-rust:  ## the core's unit, vector, property and power-cut tests (no Python needed)
	cargo test --workspace --locked -- --show-output

lint-python:  ## ruff, mypy --strict, and the extension's stubs against the build
	$(VENV)/bin/ruff check python tests benches
	$(VENV)/bin/ruff format --check python tests benches
	$(VENV)/bin/mypy
	$(VPY) -m mypy.stubtest otaflash._core

test-python:  ## pytest (exit code 5, "no tests collected", fails the build)
	$(VPY) -m pytest

bench:  ## benchmarks: release build in its own venv, peers side by side
	[ -x $(BENCH_PY) ] || $(PYTHON) -m venv $(BENCH_VENV)
	PYO3_PYTHON=$(BENCH_PY) MATURIN_PEP517_ARGS="--profile bench-wheel" \
		$(BENCH_PY) -m pip install --quiet --force-reinstall --no-deps .
	$(BENCH_PY) -m pip install --quiet '.[test]'
	cd benches && $(BENCH_PY) -m pytest -p no:cacheprovider --benchmark-enable \
		--benchmark-json=../target/bench.json --benchmark-columns=min,median,max -q .
	$(BENCH_PY) benches/report.py target/bench.json
	[ ! -x ../shared/corpus/fetch.sh ] || PAIRS_ONLY="greatfet-fw nrf52-connectivity ruff" \
		PATH="$(CURDIR)/$(BENCH_VENV)/bin:$$PATH" \
		bash ../shared/corpus/fetch.sh target/corpus
	cargo bench -p otaflash-core --bench flash

# The shared corpus/peer scripts sit beside the repository (../shared).
SHARED ?= $(firstword $(wildcard ../shared /work/shared))
DELTA_CORPUS := target/corpus
DELTA_PEERS := target/hdiffz

bench-delta:  ## delta engine vs bsdiff, xdelta3, zstd, detools, HDiffPatch on the corpus (slow, ~30 min)
	bash scripts/system-deps.sh
	[ -n "$$(ls /var/lib/apt/lists/*bookworm-security* 2>/dev/null)" ] || apt-get update -qq
	bash $(SHARED)/corpus/fetch.sh $(DELTA_CORPUS)
	bash $(SHARED)/bench/build_hdiffz.sh $(DELTA_PEERS)
	cargo build --profile bench -p otaflash-delta-cli
	[ -x $(BENCH_PY) ] || $(PYTHON) -m venv $(BENCH_VENV)
	PYO3_PYTHON=$(BENCH_PY) MATURIN_PEP517_ARGS="--profile bench-wheel" \
		$(BENCH_PY) -m pip install --quiet --force-reinstall --no-deps .
	$(BENCH_PY) -m pip install --quiet tqdm detools hdiffpatch
	$(BENCH_PY) benches/delta_bench.py $(DELTA_CORPUS) target/bench-delta --ours target/release/otaflash-delta \
		--python $(BENCH_PY) --peer-python $(BENCH_PY) --hdiffz-dir $(DELTA_PEERS) \
		--json target/bench-delta.json --markdown target/bench-delta.md

clean:  ## remove build outputs and venvs
	rm -rf target $(VENV) $(BENCH_VENV) demo python/otaflash/_core*.so
