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

export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"  # one build per run: no incremental cache
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"
export PROPTEST_CASES="${PROPTEST_CASES:-48}"
SERVICES_DIR="$(pwd)/.services"

PIDS=()

# A Kafka-protocol broker on loopback: librdkafka's mock cluster in a
# process of its own (SERVICES.md: the only broker rdkafka can talk to on
# these machines). It is built with the workspace.
start_kafka() {
    local address_file="$SERVICES_DIR/kafka.address"
    local control_file="$SERVICES_DIR/kafka.control"
    rm -f "$address_file" "$control_file"
    "${CARGO_TARGET_DIR:-target}/debug/projector-mock-kafka" --address-file "$address_file" \
        --control-file "$control_file" > "$SERVICES_DIR/kafka.log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 1 100); do
        [ -s "$address_file" ] && break
        sleep 0.1
    done
    [ -s "$address_file" ] || { echo "the Kafka mock broker did not start:"; cat "$SERVICES_DIR/kafka.log"; exit 1; }
    KAFKA_BROKERS="$(cat "$address_file")"
    KAFKA_MOCK_CONTROL="$(cat "$control_file")"
    export KAFKA_BROKERS KAFKA_MOCK_CONTROL
    echo "Kafka mock broker at $KAFKA_BROKERS"
}

stop_services() {
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
}

# Redis, ClickHouse and Chromium: Debian's packages. Each test starts its own server
# process on free loopback ports (it must stop, restart or wipe it), so
# here they are only installed.
install_packages() {
    local missing=()
    command -v redis-server > /dev/null || missing+=(redis-server)
    command -v clickhouse-server > /dev/null || missing+=(clickhouse-server clickhouse-client)
    # Headless Chromium for the dashboard test.
    command -v chromium > /dev/null || missing+=(chromium)
    [ ${#missing[@]} -eq 0 ] && return
    echo "== installing ${missing[*]}"
    local sudo=""
    [ "$(id -u)" = 0 ] || sudo=sudo
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get install -y --no-install-recommends "${missing[@]}" \
        || { $sudo apt-get update && $sudo apt-get install -y --no-install-recommends "${missing[@]}"; }
}

trap stop_services EXIT
mkdir -p "$SERVICES_DIR"

echo "== format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== build (once)"
cargo build --workspace --all-targets --locked

echo "== services"
install_packages
start_kafka

echo "== tests"
# Tests append what they measured (the crash test's kills and rows) here.
export PROJECTOR_TEST_REPORT="$SERVICES_DIR/test-report.txt"
rm -f "$PROJECTOR_TEST_REPORT"
cargo test --workspace --all-targets --locked
cargo test --workspace --doc --locked
[ -f "$PROJECTOR_TEST_REPORT" ] && { echo "== reported by the tests"; cat "$PROJECTOR_TEST_REPORT"; }

echo "== all tests passed"
