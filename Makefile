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

KILN      := target/release/kiln
# Debian packages Kiln needs on the host (runsc: gVisor; debootstrap: the base template;
# iproute2 and nftables: the network of template build steps).
HOST_PACKAGES := runsc debootstrap util-linux procps python3-venv iproute2 nftables
# What the tests need besides: a registry and static busybox/bash to make test images offline.
TEST_PACKAGES := docker-registry busybox-static bash-static
KILN_HOME ?= /var/lib/kiln

.PHONY: help up test lint unit sdk-python sdk-js e2e-python e2e-js build envd-static host-packages test-packages install-packages deps bench bench-envd bench-kiln bench-templates bench-pause bench-storage fuzz clean

help:
	@echo "make up     install host packages, build, prepare the base template, start Kiln"
	@echo "make test   lint, unit tests, envd and Kiln suites with the official E2B SDKs"
	@echo "make bench  benchmarks (see README)"

up: host-packages build
	KILN_HOME=$(KILN_HOME) KILN_ENVD=$(STATIC_ENVD) $(KILN) up

test: lint unit sdk-python sdk-js e2e-python e2e-js

# kiln (the server and CLI), envd for host tests, and the static envd installed into templates.
build: envd-static
	$(CARGO_ENV) cargo build --release --locked -p envd -p kiln

host-packages:
	@$(MAKE) --no-print-directory install-packages PACKAGES="$(HOST_PACKAGES)"

test-packages:
	@$(MAKE) --no-print-directory install-packages PACKAGES="$(TEST_PACKAGES)"

install-packages:
	@missing=""; for p in $(PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

# A static envd for copying into sandbox root filesystems (static-pie glibc).
envd-static:
	RUSTFLAGS="-C target-feature=+crt-static" $(CARGO_ENV) cargo build --release --locked -p envd \
		--target x86_64-unknown-linux-gnu --target-dir target/static
	@ldd $(STATIC_ENVD) 2>&1 | grep -qE 'statically linked|not a dynamic' || (echo "envd is not static" >&2; exit 1)

lint:
	cargo fmt --all --check
	$(CARGO_ENV) cargo clippy --locked --workspace --all-targets -- -D warnings

unit: test-packages
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
	cd $(JS_DIR) && node --test --test-concurrency=1 --test-reporter=spec envd.test.mjs

# Kiln end to end: the suites start `kiln up` themselves (state in KILN_TEST_HOME, default
# /var/lib/kiln-test, kept between runs so the base template is built once per machine).
e2e-python: host-packages test-packages build deps
	KILN_ENVD=$(STATIC_ENVD) $(PYTHON) -m pytest -p no:cacheprovider -q tests/e2e/python
	KILN_ENVD=$(STATIC_ENVD) $(PYTHON) -m pytest -p no:cacheprovider -q tests/e2e/recovery
	KILN_ENVD=$(STATIC_ENVD) $(PYTHON) -m pytest -p no:cacheprovider -q tests/e2e/persistence

e2e-js: host-packages build deps
	cd $(JS_DIR) && KILN_ENVD=../../../$(STATIC_ENVD) node --test --test-concurrency=1 --test-reporter=spec kiln.test.mjs

bench: bench-envd bench-kiln bench-templates bench-pause bench-storage

bench-envd: build deps
	$(PYTHON) bench/envd_commands.py

bench-templates: host-packages test-packages build deps
	KILN_ENVD=$(STATIC_ENVD) $(PYTHON) bench/templates.py

bench-kiln: host-packages build deps
	KILN_ENVD=$(STATIC_ENVD) $(PYTHON) bench/kiln_sandboxes.py

bench-pause: host-packages build deps
	KILN_ENVD=$(STATIC_ENVD) $(PYTHON) bench/pause_resume.py

# Chunk-cache ranged reads vs a plain read of the same object (Local and an S3 server on loopback).
bench-storage:
	$(CARGO_ENV) cargo run --release --locked -p storage --example chunk_cache_bench

# Coverage-guided fuzzing of the Connect decoding (libFuzzer via cargo-fuzz; the sanitizer flags
# need RUSTC_BOOTSTRAP on a stable toolchain). FUZZ_SECONDS bounds the run.
FUZZ_SECONDS ?= 60
fuzz:
	command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
	cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run connect_decode -- -max_total_time=$(FUZZ_SECONDS)

clean:
	cargo clean
	rm -rf $(VENV) $(JS_DIR)/node_modules
