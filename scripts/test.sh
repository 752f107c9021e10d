#!/usr/bin/env bash
# The whole test suite: starts a real Apache Kafka broker (scripts/kafka.sh)
# and a Confluent-compatible schema registry (scripts/registry.sh), makes
# sure the interoperability tools are there (the Python venv of
# scripts/python-env.sh, kcat from scripts/kcat.sh) and the observability
# ones (Prometheus from scripts/prometheus.sh, Grafana's dashboard schema
# from scripts/grafana-schema.sh) and the browser ones (headless Chromium
# and chromedriver from scripts/chromium.sh, the axe-core accessibility
# checker from scripts/axe.sh), runs every test against them, and stops the
# broker and the registry, also on failure.
# Anything that cannot start or install fails the run loudly; no test is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

# OpenSSL: headers for the build (librdkafka links the system's), the
# command for the broker's SASL_SSL test certificates.
scripts/openssl.sh || { echo "test.sh: OpenSSL is missing and could not be installed" >&2; exit 1; }

bootstrap="$(scripts/kafka.sh start)" || { echo "test.sh: the Kafka test broker did not start" >&2; exit 1; }
trap 'scripts/registry.sh stop >/dev/null 2>&1 || true; scripts/kafka.sh stop >/dev/null 2>&1 || true' EXIT
export TACTFUL_TEST_BOOTSTRAP="$bootstrap"
# Its SASL_SSL listener's address, CA, user and password (tests/secured.rs).
TACTFUL_TEST_SASL_SSL="$(realpath -m "${KAFKA_RUN_DIR:-target/kafka}")/sasl-ssl.env"
export TACTFUL_TEST_SASL_SSL
echo "test.sh: Kafka broker at $TACTFUL_TEST_BOOTSTRAP (SASL_SSL: $TACTFUL_TEST_SASL_SSL)" >&2

registry="$(scripts/registry.sh start)" || { echo "test.sh: the schema registry did not start" >&2; exit 1; }
export TACTFUL_TEST_REGISTRY="$registry"
echo "test.sh: schema registry at $TACTFUL_TEST_REGISTRY" >&2

python="$(scripts/python-env.sh)" || { echo "test.sh: the Python venv for the interoperability tests could not be set up" >&2; exit 1; }
export TACTFUL_TEST_PYTHON="$python"
kcat="$(scripts/kcat.sh)" || { echo "test.sh: kcat is missing and could not be installed" >&2; exit 1; }
export TACTFUL_TEST_KCAT="$kcat"
echo "test.sh: interop tools: $TACTFUL_TEST_PYTHON, $TACTFUL_TEST_KCAT" >&2
prometheus="$(scripts/prometheus.sh)" || { echo "test.sh: Prometheus is missing and could not be installed" >&2; exit 1; }
export TACTFUL_TEST_PROMETHEUS="$prometheus"
grafana_schema="$(scripts/grafana-schema.sh)" || { echo "test.sh: Grafana's dashboard schema could not be installed" >&2; exit 1; }
export TACTFUL_TEST_GRAFANA_SCHEMA="$grafana_schema"
echo "test.sh: observability tools: $TACTFUL_TEST_PROMETHEUS, $TACTFUL_TEST_GRAFANA_SCHEMA" >&2
chromedriver="$(scripts/chromium.sh)" || { echo "test.sh: Chromium and chromedriver are missing and could not be installed" >&2; exit 1; }
export TACTFUL_TEST_CHROMEDRIVER="$chromedriver"
axe="$(scripts/axe.sh)" || { echo "test.sh: axe-core could not be fetched" >&2; exit 1; }
export TACTFUL_TEST_AXE="$axe"
echo "test.sh: browser tools: $TACTFUL_TEST_CHROMEDRIVER, $TACTFUL_TEST_AXE" >&2

# Unit, property and integration tests (benchmarks are built by clippy in CI
# and run with `cargo bench`).
cargo test --lib --bins --tests "$@"
