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

command -v apt-get >/dev/null 2>&1 || die "kcat not found and apt-get is not available: install kcat by hand"
SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || die "kcat not found; installing it needs root: run 'apt-get install -y kcat' as root"
    SUDO=(sudo -n)
fi
log "kcat not found; installing Debian's kcat package (once)"
apt_log="$(mktemp)"
trap 'rm -f "$apt_log"' EXIT
# apt's output goes to a temp file, shown only on failure: our stdout must
# stay exactly one line.
if ! { "${SUDO[@]}" apt-get update && DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y kcat; } >"$apt_log" 2>&1; then
    cat "$apt_log" >&2
    die "apt-get could not install kcat (see above)"
fi
path="$(find_kcat)" || die "kcat still not usable after 'apt-get install kcat'"
echo "$path"
