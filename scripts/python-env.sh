#!/usr/bin/env bash
# Create (once) the Python venv for the interoperability tests and the
# deployment's checks (kubernetes-validate, hadolint) and print its python.
# The venv lives in the cache dir, keyed by a hash of
# tests/interop/requirements.txt and of the Python version, so a changed
# requirements file gets a new venv and an unchanged one is reused.
#
# Usage:
#   scripts/python-env.sh     # prints exactly one line on stdout: <venv>/bin/python
#
# Environment:
#   TACTFUL_PYTHON      the python3 to create the venv with (default python3 on PATH)
#   TACTFUL_CACHE_DIR   cache dir                            (default $HOME/.cache/tactful)
#
# Needs python3 (3.9+, with the venv module), sha256sum and network access
# to PyPI the first time; packages are installed as wheels only.
set -euo pipefail

REPO_DIR="$(cd "$(dirname "$0")/.." && pwd)"
REQUIREMENTS="$REPO_DIR/tests/interop/requirements.txt"
PYTHON="${TACTFUL_PYTHON:-python3}"
CACHE_ROOT="${TACTFUL_CACHE_DIR:-$HOME/.cache/tactful}"

log() { echo "python-env.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

command -v "$PYTHON" >/dev/null 2>&1 || die "'$PYTHON' not found in PATH (set TACTFUL_PYTHON)"
[ -f "$REQUIREMENTS" ] || die "$REQUIREMENTS not found"
py_version="$("$PYTHON" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')" \
    || die "'$PYTHON' does not run"
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 9) else 1)' \
    || die "'$PYTHON' is Python $py_version; need 3.9+"

# The venv is bound to the interpreter it was made with: its version is part
# of the key, with the requirements.
key="$( { cat "$REQUIREMENTS"; echo "python $py_version"; } | sha256sum | cut -c1-16)"
VENV="$CACHE_ROOT/python-venv-$key"
MARKER="$VENV/.complete"
VENV_PY="$VENV/bin/python"

if [ ! -f "$MARKER" ] || [ ! -x "$VENV_PY" ]; then
    mkdir -p "$CACHE_ROOT"
    # Two runs at once must not build the same venv over each other.
    exec 9>"$CACHE_ROOT/python-venv-$key.lock"
    flock 9
    if [ ! -f "$MARKER" ] || [ ! -x "$VENV_PY" ]; then
        log "creating $VENV with Python $py_version (once)"
        # A venv is not relocatable (its scripts name its path), so it is built
        # in place; the marker is written last, so a half-built one is rebuilt.
        rm -rf "$VENV"
        "$PYTHON" -m venv "$VENV" >&2 || die "python3 -m venv failed (on Debian: apt-get install python3-venv)"
        # pip's output goes to a log file, shown only on failure: our stdout
        # must stay exactly one line.
        if ! "$VENV_PY" -m pip install --disable-pip-version-check --no-input \
            --only-binary=:all: -r "$REQUIREMENTS" >"$VENV/pip.log" 2>&1; then
            cat "$VENV/pip.log" >&2
            die "pip install -r $REQUIREMENTS failed (see above)"
        fi
        "$VENV_PY" -c 'import fastavro, confluent_kafka.schema_registry.avro, kubernetes_validate, yaml' \
            || die "the venv's packages do not import"
        "$VENV/bin/hadolint" --version >/dev/null || die "the venv's hadolint does not run"
        touch "$MARKER"
    fi
fi
echo "$VENV_PY"
