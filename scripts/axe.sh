#!/usr/bin/env bash
# Fetch (once) axe-core, the accessibility rules engine that the browser
# tests inject into a page (tests/common/browser.rs), check the tarball
# against the pinned integrity, and print the path of its browser build.
#
# Usage:
#   scripts/axe.sh     # prints exactly one line on stdout: the path of axe.min.js
#
# Environment:
#   TACTFUL_CACHE_DIR   cache dir (default $HOME/.cache/tactful)
#
# Needs npm (`npm pack` fetches the tarball alone: no dependencies, no
# install scripts), base64, od and sha512sum, and the npm registry the first time.
set -euo pipefail

# Pinned: a new axe-core may add or change rules, so moving on (and with it
# what the accessibility checks accept) is a reviewed change. The integrity
# is the tarball's as the registry publishes it, to compare with
# `npm view axe-core@$AXE_CORE_VERSION dist.integrity` when moving on.
AXE_CORE_VERSION=4.14.1
AXE_CORE_INTEGRITY=sha512-FHfa+lmNjQZfJz1q8wKqIDwC6DExcHt/pkjNQb09a3NPjCKg2rhu5qb2S4r76ASyFNNtuFooJpZe37OgudVGtQ==

log() { echo "axe.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }
# shellcheck source=scripts/lib/npm.sh
. "$(dirname "$0")/lib/npm.sh"

DIR="$CACHE_ROOT/axe-core-$AXE_CORE_VERSION"

# Fetches the tarball into $DIR, checks it and unpacks it there.
fetch_axe() {
    log "fetching axe-core $AXE_CORE_VERSION into $DIR (once)"
    local tarball="$DIR/axe-core-$AXE_CORE_VERSION.tgz"
    npm_logged "$DIR" pack --ignore-scripts --pack-destination "$DIR" "axe-core@$AXE_CORE_VERSION"
    [ -f "$tarball" ] || die "npm pack wrote no $tarball"
    # An integrity is "sha512-" and the base64 digest: compared as hex with
    # sha512sum's, which needs nothing beyond coreutils.
    local expected actual
    expected="$(printf '%s' "${AXE_CORE_INTEGRITY#sha512-}" | base64 -d | od -An -v -tx1 | tr -d ' \n')"
    actual="$(sha512sum "$tarball" | cut -d' ' -f1)"
    [ "$actual" = "$expected" ] || die "$tarball does not match the pinned integrity $AXE_CORE_INTEGRITY (sha512 $actual)"
    tar -xzf "$tarball" -C "$DIR" --strip-components=1 || die "cannot unpack $tarball"
    rm -f "$tarball"
    [ -s "$DIR/axe.min.js" ] || die "axe-core $AXE_CORE_VERSION has no axe.min.js"
    grep -q "\"version\": \"$AXE_CORE_VERSION\"" "$DIR/package.json" \
        || die "$DIR/package.json is not axe-core $AXE_CORE_VERSION's"
}

fill_once "$DIR" fetch_axe
echo "$DIR/axe.min.js"
