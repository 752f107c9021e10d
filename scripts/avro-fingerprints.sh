#!/usr/bin/env bash
# Golden Avro fingerprints from Java Avro (the reference implementation):
# runs tests/interop/Fingerprints.java on Avro schema files.
#
# Usage:
#   scripts/avro-fingerprints.sh [FILE.avsc...]
#     default: every schemas/*.avsc and tests/fixtures/*.avsc
#   prints one line per file on stdout:
#     <path relative to the repo> 0x<16 hex digits><TAB><Parsing Canonical Form>
#   where the number is SchemaNormalization.parsingFingerprint64 (unsigned).
#
# Environment:
#   TACTFUL_CACHE_DIR   jar cache                        (default $HOME/.cache/tactful)
#   AVRO_VERSION        Java Avro version                (default 1.12.1)
#   JAVA                java binary (11+, source launch)  (default java on PATH)
#
# Needs java 11+, mvn (to fetch Avro once), bash and coreutils.
set -euo pipefail

AVRO_VERSION="${AVRO_VERSION:-1.12.1}"
# Avro 1.12.1 depends on slf4j-api 2.0.17; the silent provider must match it.
SLF4J_VERSION=2.0.17
JAVA="${JAVA:-java}"

REPO_DIR="$(cd "$(dirname "$0")/.." && pwd)"
PROGRAM="$REPO_DIR/tests/interop/Fingerprints.java"
CACHE_DIR="${TACTFUL_CACHE_DIR:-$HOME/.cache/tactful}/avro-$AVRO_VERSION"
LIBS_DIR="$CACHE_DIR/libs"
MARKER="$CACHE_DIR/.complete"

log() { echo "avro-fingerprints.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

# shellcheck source=scripts/lib/services.sh
. "$REPO_DIR/scripts/lib/services.sh"

# Java Avro, with SLF4J's silent provider: Avro logs through SLF4J 2 and
# brings no provider, so without one SLF4J warns on stderr at every run.
fetch_avro() {
    fetch_jars "Java Avro $AVRO_VERSION" "    <dependency>
      <groupId>org.apache.avro</groupId><artifactId>avro</artifactId><version>$AVRO_VERSION</version>
    </dependency>
    <dependency>
      <groupId>org.slf4j</groupId><artifactId>slf4j-nop</artifactId><version>$SLF4J_VERSION</version>
    </dependency>" "avro-$AVRO_VERSION.jar"
}

command -v "$JAVA" >/dev/null 2>&1 || die "'$JAVA' not found in PATH (need Java 11+)"
[ -f "$PROGRAM" ] || die "$PROGRAM not found"

# Paths are printed relative to the repo, so arguments are resolved first.
files=()
if [ "$#" -eq 0 ]; then
    shopt -s nullglob
    for f in "$REPO_DIR"/schemas/*.avsc "$REPO_DIR"/tests/fixtures/*.avsc; do
        files+=("$(realpath --relative-to="$REPO_DIR" "$f")")
    done
    shopt -u nullglob
    [ "${#files[@]}" -gt 0 ] || die "no .avsc files under schemas/ or tests/fixtures/"
else
    for f in "$@"; do
        [ -f "$f" ] || die "$f: no such file"
        files+=("$(realpath --relative-to="$REPO_DIR" "$f")")
    done
fi

fetch_avro
cd "$REPO_DIR"
exec "$JAVA" -XX:TieredStopAtLevel=1 -XX:+UseSerialGC -cp "$LIBS_DIR/*" "$PROGRAM" "${files[@]}"
