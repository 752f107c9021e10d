#!/usr/bin/env bash
# Make sure Prometheus and promtool are available, installing Debian's
# `prometheus` package (2.42 on bookworm; it ships both) when either is
# missing, and print the folder that holds them.
#
# Usage:
#   scripts/prometheus.sh     # prints exactly one line on stdout: the folder of `prometheus` and `promtool`
#
# Environment:
#   PROMETHEUS_BIN_DIR   a folder with `prometheus` and `promtool` to use instead of those on PATH
#
# Installing needs apt-get and root (or sudo without a password); binaries
# that are already there need neither. The package's service is not started
# (tests run their own Prometheus on a free port).
set -euo pipefail

log() { echo "prometheus.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }
# shellcheck source=scripts/lib/apt.sh
. "$(dirname "$0")/lib/apt.sh"

# Prints the folder of a working prometheus and promtool pair, or fails.
find_prometheus() {
    local prometheus promtool
    if [ -n "${PROMETHEUS_BIN_DIR:-}" ]; then
        prometheus="$PROMETHEUS_BIN_DIR/prometheus"
        promtool="$PROMETHEUS_BIN_DIR/promtool"
    else
        prometheus="$(command -v prometheus 2>/dev/null)" || return 1
        promtool="$(command -v promtool 2>/dev/null)" || return 1
    fi
    # Both print their version and exit 0.
    "$prometheus" --version >/dev/null 2>&1 || return 1
    "$promtool" --version >/dev/null 2>&1 || return 1
    [ "$(dirname "$prometheus")" = "$(dirname "$promtool")" ] || return 1
    dirname "$prometheus"
}

if dir="$(find_prometheus)"; then
    echo "$dir"
    exit 0
fi
[ -z "${PROMETHEUS_BIN_DIR:-}" ] || die "PROMETHEUS_BIN_DIR=$PROMETHEUS_BIN_DIR has no working prometheus and promtool"

apt_install prometheus/promtool prometheus
dir="$(find_prometheus)" || die "prometheus/promtool still not usable after 'apt-get install prometheus'"
echo "$dir"
