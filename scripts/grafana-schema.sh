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

log() { echo "grafana-schema.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }
# shellcheck source=scripts/lib/npm.sh
. "$(dirname "$0")/lib/npm.sh"

DIR="$CACHE_ROOT/grafana-schema-$GRAFANA_SCHEMA_VERSION-ts-$TYPESCRIPT_VERSION"

# Installs both packages into $DIR and checks them.
install_schema() {
    log "installing @grafana/schema $GRAFANA_SCHEMA_VERSION and typescript $TYPESCRIPT_VERSION into $DIR (once)"
    echo '{"private": true}' >"$DIR/package.json"
    npm_logged "$DIR" install --no-audit --no-fund --ignore-scripts --save-exact \
        "@grafana/schema@$GRAFANA_SCHEMA_VERSION" "typescript@$TYPESCRIPT_VERSION"
    [ -f "$DIR/node_modules/@grafana/schema/dist/types/index.d.ts" ] || die "@grafana/schema has no type declarations"
    node "$DIR/node_modules/typescript/bin/tsc" --version >/dev/null || die "tsc does not run"
}

fill_once "$DIR" install_schema
echo "$DIR"
