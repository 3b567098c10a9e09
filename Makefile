# Kiln. Two commands on a fresh machine: `make up` (run Kiln) and `make test` (the whole suite).
# Everything the tests need is installed by the targets below; run as root (CI does).

SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV      := .venv
PYTHON    := $(VENV)/bin/python
JS_DIR    := tests/sdk/js
ENVD      := target/release/envd
STATIC_ENVD := target/static/x86_64-unknown-linux-gnu/release/envd
CARGO_ENV := CARGO_TERM_COLOR=never

.PHONY: help up test lint unit sdk-python sdk-js build envd-static deps bench fuzz clean

help:
	@echo "make up     start Kiln (arrives with the single-node issue)"
	@echo "make test   build, lint, unit tests and the official E2B SDK suites"
	@echo "make bench  benchmarks (see README)"

up:
	@echo "make up: the Kiln server (API, proxy, orchestrator) arrives with the single-node issue;" >&2
	@echo "this tree builds envd, the in-sandbox agent: see README.md." >&2
	@exit 1

test: lint unit sdk-python sdk-js

build:
	$(CARGO_ENV) cargo build --release --locked -p envd

# A static envd for copying into sandbox root filesystems (static-pie glibc).
envd-static:
	RUSTFLAGS="-C target-feature=+crt-static" $(CARGO_ENV) cargo build --release --locked -p envd \
		--target x86_64-unknown-linux-gnu --target-dir target/static
	@file $(STATIC_ENVD) | grep -q 'static' || (echo "envd is not static" >&2; exit 1)

lint:
	cargo fmt --all --check
	$(CARGO_ENV) cargo clippy --locked --workspace --all-targets -- -D warnings

unit:
	$(CARGO_ENV) cargo test --locked --workspace

deps: $(VENV)/.installed $(JS_DIR)/node_modules/.installed

$(VENV)/.installed: tests/sdk/python/requirements.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r tests/sdk/python/requirements.txt
	touch $@

$(JS_DIR)/node_modules/.installed: $(JS_DIR)/package.json $(JS_DIR)/package-lock.json
	cd $(JS_DIR) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

sdk-python: build deps
	$(PYTHON) -m pytest -p no:cacheprovider -q tests/sdk/python

sdk-js: build deps
	cd $(JS_DIR) && node --test --test-concurrency=1 --test-reporter=spec

bench: build deps
	$(PYTHON) bench/envd_commands.py

# Coverage-guided fuzzing of the Connect decoding (libFuzzer via cargo-fuzz; the sanitizer flags
# need RUSTC_BOOTSTRAP on a stable toolchain). FUZZ_SECONDS bounds the run.
FUZZ_SECONDS ?= 60
fuzz:
	command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
	cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run connect_decode -- -max_total_time=$(FUZZ_SECONDS)

clean:
	cargo clean
	rm -rf $(VENV) $(JS_DIR)/node_modules
