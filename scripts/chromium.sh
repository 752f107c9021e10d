#!/usr/bin/env bash
# Make sure headless Chromium and its WebDriver server are available,
# installing Debian's `chromium` and `chromium-driver` packages (the same
# Chromium release for both, as chromedriver requires) when either is
# missing, and print the path of chromedriver.
#
# Usage:
#   scripts/chromium.sh     # prints exactly one line on stdout: the path of chromedriver
#
# Environment:
#   CHROMEDRIVER   a chromedriver binary to use instead of the one on PATH
#
# Installing needs apt-get and root (or sudo without a password); binaries
# that are already there need neither. Tests start chromedriver on a free port
# themselves (tests/common/browser.rs); it finds `chromium` on PATH.
set -euo pipefail

log() { echo "chromium.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }
# shellcheck source=scripts/lib/apt.sh
. "$(dirname "$0")/lib/apt.sh"

# Prints the path of a working chromedriver, with a working chromium beside
# it on PATH, or fails.
find_chromedriver() {
    local chromedriver
    chromedriver="$(command -v "${CHROMEDRIVER:-chromedriver}" 2>/dev/null)" || return 1
    # Both print their version and exit 0; chromium's check also proves the
    # browser's shared libraries are all there.
    "$chromedriver" --version >/dev/null 2>&1 || return 1
    command -v chromium >/dev/null 2>&1 || return 1
    chromium --version >/dev/null 2>&1 || return 1
    echo "$chromedriver"
}

if path="$(find_chromedriver)"; then
    echo "$path"
    exit 0
fi
if [ -n "${CHROMEDRIVER:-}" ] && command -v chromium >/dev/null 2>&1; then
    die "CHROMEDRIVER=$CHROMEDRIVER is not a working chromedriver binary"
fi

apt_install chromium/chromedriver chromium chromium-driver
path="$(find_chromedriver)" || die "chromedriver/chromium still not usable after 'apt-get install chromium chromium-driver'"
echo "$path"
