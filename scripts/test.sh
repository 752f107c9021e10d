#!/usr/bin/env bash
# The whole test suite: starts a real Apache Kafka broker (scripts/kafka.sh),
# runs every test against it, and stops the broker, also on failure.
# A broker that cannot start fails the run loudly; no test is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

bootstrap="$(scripts/kafka.sh start)" || { echo "test.sh: the Kafka test broker did not start" >&2; exit 1; }
trap 'scripts/kafka.sh stop >/dev/null 2>&1 || true' EXIT
export TACTFUL_TEST_BOOTSTRAP="$bootstrap"
echo "test.sh: Kafka broker at $TACTFUL_TEST_BOOTSTRAP" >&2

# Unit, property and integration tests (benchmarks are built by clippy in CI
# and run with `cargo bench`).
cargo test --lib --bins --tests "$@"
