#!/usr/bin/env bash
# Make sure kcat (the librdkafka command-line client) is available, installing
# Debian's package when it is missing, and print its path.
#
# Usage:
#   scripts/kcat.sh     # prints exactly one line on stdout: the path of kcat
#
# Environment:
#   KCAT   a kcat binary to use instead of the one on PATH (default: kcat on PATH)
#
# Installing needs apt-get and root (or sudo without a password); a kcat that
# is already there needs neither.
set -euo pipefail

log() { echo "kcat.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }
# shellcheck source=scripts/lib/apt.sh
. "$(dirname "$0")/lib/apt.sh"

# Prints the path of a working kcat, or fails.
find_kcat() {
    local k
    if [ -n "${KCAT:-}" ]; then
        k="$(command -v "$KCAT" 2>/dev/null)" || return 1
    else
        k="$(command -v kcat 2>/dev/null)" || return 1
    fi
    # `kcat -V` prints its version and librdkafka's, and exits 0.
    "$k" -V >/dev/null 2>&1 || return 1
    echo "$k"
}

if path="$(find_kcat)"; then
    echo "$path"
    exit 0
fi
[ -z "${KCAT:-}" ] || die "KCAT=$KCAT is not a working kcat binary"

apt_install kcat kcat
path="$(find_kcat)" || die "kcat still not usable after 'apt-get install kcat'"
echo "$path"
