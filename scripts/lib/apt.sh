# shellcheck shell=bash
# Shared by the scripts that install a tool from Debian's packages when it is
# missing (kcat.sh, prometheus.sh, openssl.sh). Sourced, not run; the sourcing
# script defines log() and die() first.

# Installs Debian packages $2... ($1 names what for the messages) with
# apt-get, as root or through passwordless sudo. apt's output goes to a temp
# file, shown only on failure: the scripts' stdout carries only their result.
apt_install() {
    local what="$1"
    shift
    command -v apt-get >/dev/null 2>&1 || die "$what not found and apt-get is not available: install $* by hand"
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || die "$what not found; installing it needs root: run 'apt-get install -y $*' as root"
        sudo=(sudo -n)
    fi
    log "$what not found; installing Debian's $* (once)"
    local apt_log
    apt_log="$(mktemp)"
    # --no-install-recommends: only what the tool needs to run.
    if ! { "${sudo[@]}" apt-get update \
        && DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y --no-install-recommends "$@"; } >"$apt_log" 2>&1; then
        cat "$apt_log" >&2
        rm -f "$apt_log"
        die "apt-get could not install $* (see above)"
    fi
    rm -f "$apt_log"
}
