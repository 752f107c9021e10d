#!/usr/bin/env bash
# Install (once) Grafana's dashboard schema as Grafana publishes it for
# TypeScript (the npm package @grafana/schema: the types generated from the
# dashboard kind's schema) with the TypeScript compiler that checks a
# dashboard against it, and print the folder they are in.
#
# Usage:
#   scripts/grafana-schema.sh     # prints exactly one line on stdout: the folder (with node_modules/)
#
# Environment:
#   TACTFUL_CACHE_DIR   cache dir (default $HOME/.cache/tactful)
#
# Needs node and npm, and the npm registry the first time.
set -euo pipefail

# Pinned: a new Grafana may change its schema; moving on is a reviewed change.
GRAFANA_SCHEMA_VERSION=13.2.3
TYPESCRIPT_VERSION=5.9.3
CACHE_ROOT="${TACTFUL_CACHE_DIR:-$HOME/.cache/tactful}"
DIR="$CACHE_ROOT/grafana-schema-$GRAFANA_SCHEMA_VERSION-ts-$TYPESCRIPT_VERSION"
MARKER="$DIR/.complete"

log() { echo "grafana-schema.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

if [ ! -f "$MARKER" ]; then
    command -v npm >/dev/null 2>&1 || die "npm not found (on Debian: apt-get install nodejs npm)"
    mkdir -p "$CACHE_ROOT"
    # Two runs at once must not install over each other.
    exec 9>"$DIR.lock"
    flock 9
    if [ ! -f "$MARKER" ]; then
        log "installing @grafana/schema $GRAFANA_SCHEMA_VERSION and typescript $TYPESCRIPT_VERSION into $DIR (once)"
        rm -rf "$DIR"
        mkdir -p "$DIR"
        # npm's output goes to a log file, shown only on failure: our stdout
        # must stay exactly one line. The marker is written last.
        if ! (cd "$DIR" && echo '{"private": true}' >package.json \
            && npm install --no-audit --no-fund --ignore-scripts --save-exact \
                "@grafana/schema@$GRAFANA_SCHEMA_VERSION" "typescript@$TYPESCRIPT_VERSION") >"$DIR/npm.log" 2>&1; then
            cat "$DIR/npm.log" >&2
            die "npm install failed (see above)"
        fi
        [ -f "$DIR/node_modules/@grafana/schema/dist/types/index.d.ts" ] || die "@grafana/schema has no type declarations"
        node "$DIR/node_modules/typescript/bin/tsc" --version >/dev/null || die "tsc does not run"
        touch "$MARKER"
    fi
fi
echo "$DIR"
