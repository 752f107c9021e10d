#!/usr/bin/env bash
# Make sure OpenSSL is there for the build and the tests, installing Debian's
# packages for what is missing:
#   - libssl-dev and pkg-config: rdkafka's `ssl` feature links librdkafka
#     against the system's OpenSSL (openssl-sys finds it with pkg-config);
#   - the openssl command: scripts/kafka.sh makes the SASL_SSL listener's
#     test CA and certificate with it.
#
# Usage:
#   scripts/openssl.sh     # exit 0 once all three are there; prints nothing on stdout
#
# Installing needs apt-get and root (or sudo without a password); what is
# already there needs neither.
set -euo pipefail

log() { echo "openssl.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }
# shellcheck source=scripts/lib/apt.sh
. "$(dirname "$0")/lib/apt.sh"

# The Debian packages of what is missing, one per line.
missing_packages() {
    command -v pkg-config >/dev/null 2>&1 || echo pkg-config
    if ! command -v pkg-config >/dev/null 2>&1 || ! pkg-config --exists openssl; then
        echo libssl-dev
    fi
    command -v openssl >/dev/null 2>&1 || echo openssl
}

mapfile -t packages < <(missing_packages)
[ "${#packages[@]}" -eq 0 ] && exit 0

apt_install "OpenSSL (${packages[*]})" "${packages[@]}"
mapfile -t packages < <(missing_packages)
[ "${#packages[@]}" -eq 0 ] || die "still missing after apt-get: ${packages[*]}"
