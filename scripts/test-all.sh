#!/usr/bin/env bash
# The whole test suite, on a fresh machine or a used one.
#
# It installs and starts on loopback every service the tests need, builds
# the workspace once, runs every test (unit, property, integration, CLI, and
# the benchmarks in their quick test mode), then stops the services.
# With CI=true a test whose service is missing fails instead of skipping.
#
#   scripts/test-all.sh
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"
export PROPTEST_CASES="${PROPTEST_CASES:-48}"
SERVICES_DIR="$(pwd)/.services"

# Services the tests talk to. None are needed by the spine (files in, files
# out); the Kafka, ClickHouse and Redis tests add their start and stop here.
start_services() {
    mkdir -p "$SERVICES_DIR"
}

stop_services() {
    :
}

trap stop_services EXIT
start_services

echo "== build (once)"
cargo build --workspace --all-targets --locked

echo "== tests"
cargo test --workspace --all-targets --locked
cargo test --workspace --doc --locked

echo "== all tests passed"
