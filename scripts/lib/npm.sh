# shellcheck shell=bash
# Shared by the scripts that fetch npm packages once into the cache dir
# (grafana-schema.sh, axe.sh). Sourced, not run; the sourcing script defines
# log() and die() first.

# The cache dir: a folder per pinned package set, kept across runs and checkouts.
# shellcheck disable=SC2034 # for the sourcing script
CACHE_ROOT="${TACTFUL_CACHE_DIR:-$HOME/.cache/tactful}"

# Fills the folder $1 by running the rest of the arguments (a command, often
# a function of the sourcing script, that fails through die()), unless an
# earlier run completed it. The folder is emptied first and its marker
# `.complete` is written last, so an interrupted fill is never mistaken for a
# complete one; a lock beside it lets two runs at once fill it only once.
fill_once() {
    local dir="$1"
    shift
    [ -f "$dir/.complete" ] && return 0
    mkdir -p "$(dirname "$dir")"
    exec 9>"$dir.lock"
    flock 9
    if [ ! -f "$dir/.complete" ]; then
        rm -rf "$dir"
        mkdir -p "$dir"
        "$@"
        touch "$dir/.complete"
    fi
    exec 9>&-
}

# Runs `npm $2...` in the folder $1 with its output in $1/npm.log, shown only
# on failure: the scripts' stdout carries only their result.
npm_logged() {
    local dir="$1"
    shift
    command -v npm >/dev/null 2>&1 || die "npm not found (on Debian: apt-get install nodejs npm)"
    if ! (cd "$dir" && npm "$@") >"$dir/npm.log" 2>&1; then
        cat "$dir/npm.log" >&2
        die "npm $1 failed (see above)"
    fi
}
