#!/usr/bin/env bash
# Run a real Confluent-compatible schema registry on 127.0.0.1 for tests:
# Apicurio Registry (a Quarkus build from Maven Central), which serves the
# Confluent REST API under /apis/ccompat/v7. Storage is H2 in memory: every
# start is empty.
#
# Usage:
#   scripts/registry.sh start    # prints exactly one line on stdout:
#                                #   http://127.0.0.1:<port>/apis/ccompat/v7
#   scripts/registry.sh ensure   # the same, reusing the registry if one runs (its schemas kept);
#                                # one it starts is on free ports (unless REGISTRY_PORT is set)
#   scripts/registry.sh stop     # exit 0 also when nothing was running
#   scripts/registry.sh status   # exit 0 if running and <base>/subjects answers 200, else 1
#
# start, ensure and stop wait for each other (a lock beside the run dir):
# several callers of ensure at once start one registry.
#
# Environment:
#   REGISTRY_PORT           HTTP port; management uses port+1 (default 18081; ensure: a
#                           free one). status and ensure act on the port of the running
#                           registry (saved in the run dir), whatever this says.
#   REGISTRY_RUN_DIR        run dir, wiped on start         (default <repo>/target/registry)
#   REGISTRY_READY_TIMEOUT  seconds to wait for ready       (default 120)
#   REGISTRY_JAVA           java binary to use (21+)        (default: the newest JDK >= 21
#                           found, preferring /usr/lib/jvm/temurin-25-jdk-amd64)
#   TACTFUL_CACHE_DIR       download cache                  (default $HOME/.cache/tactful)
#   APICURIO_VERSION        Apicurio Registry version       (default 3.3.3)
#
# Needs java 21+, mvn (to fetch the build once), curl, bash and coreutils;
# everything generated lives in the run dir (under target/) or the cache dir.
set -euo pipefail

APICURIO_VERSION="${APICURIO_VERSION:-3.3.3}"
HOST=127.0.0.1
READY_TIMEOUT="${REGISTRY_READY_TIMEOUT:-120}"
STOP_TIMEOUT=30
PREFERRED_JAVA=/usr/lib/jvm/temurin-25-jdk-amd64/bin/java
MIN_JAVA=21

REPO_DIR="$(cd "$(dirname "$0")/.." && pwd)"
RUN_DIR="${REGISTRY_RUN_DIR:-$REPO_DIR/target/registry}"
CACHE_DIR="${TACTFUL_CACHE_DIR:-$HOME/.cache/tactful}/apicurio-registry-$APICURIO_VERSION"
DIST_DIR="$CACHE_DIR/dist"
MARKER="$CACHE_DIR/.complete"
PID_FILE="$RUN_DIR/registry.pid"
PORT_FILE="$RUN_DIR/port"            # the HTTP port of the registry
STDOUT_LOG="$RUN_DIR/registry.log"   # Quarkus logs to the console by default

log() { echo "registry.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

# Sets the HTTP port $1, the management port after it and the base URL.
set_port() {
    PORT="$1"
    MPORT=$((PORT + 1))
    BASE_URL="http://$HOST:$PORT/apis/ccompat/v7"
}
set_port "${REGISTRY_PORT:-18081}"

# Sets the ports to those of the registry in the run dir, which may not be
# the defaults (see cmd_ensure).
load_port() {
    if [ -f "$PORT_FILE" ]; then
        set_port "$(cat "$PORT_FILE")"
    fi
}

PROCESS_PATTERN='quarkus-run\.jar'
# shellcheck source=scripts/lib/services.sh
. "$REPO_DIR/scripts/lib/services.sh"

# HTTP status of GET <base>/subjects ("000" when nothing answers).
subjects_status() {
    curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$BASE_URL/subjects" 2>/dev/null || true
}

# Major version of a java binary (8 for "1.8.0_x", 25 for "25.0.3"), or
# nothing if it does not run.
java_major() {
    local v
    v="$("$1" -version 2>&1 | sed -n 's/^[^"]*version "\([^"]*\)".*/\1/p' | head -n 1)" || return 0
    case "$v" in
        1.*) v="${v#1.}" ;;
    esac
    v="${v%%[!0-9]*}"
    echo "$v"
}

# Sets JAVA to the java binary to run the registry with: REGISTRY_JAVA if
# set, else the preferred Temurin 25, else the newest JDK >= 21 among
# /usr/lib/jvm/*, $JAVA_HOME and the java on PATH.
find_java() {
    local j major best="" best_major=0
    if [ -n "${REGISTRY_JAVA:-}" ]; then
        major="$(java_major "$REGISTRY_JAVA")"
        if [ -z "$major" ] || [ "$major" -lt "$MIN_JAVA" ]; then
            die "REGISTRY_JAVA=$REGISTRY_JAVA is not a Java $MIN_JAVA+ binary (Apicurio Registry $APICURIO_VERSION needs Java $MIN_JAVA+)"
        fi
        JAVA="$REGISTRY_JAVA"
        return 0
    fi
    local candidates=("$PREFERRED_JAVA" /usr/lib/jvm/*/bin/java)
    [ -n "${JAVA_HOME:-}" ] && candidates+=("$JAVA_HOME/bin/java")
    command -v java >/dev/null 2>&1 && candidates+=("$(command -v java)")
    for j in "${candidates[@]}"; do
        [ -x "$j" ] || continue
        major="$(java_major "$j")"
        [ -n "$major" ] || continue
        # Strictly greater: on a tie the earlier (preferred) candidate stays.
        if [ "$major" -gt "$best_major" ]; then
            best="$j"
            best_major="$major"
        fi
    done
    if [ -z "$best" ] || [ "$best_major" -lt "$MIN_JAVA" ]; then
        die "no Java $MIN_JAVA+ found (Apicurio Registry $APICURIO_VERSION needs it; looked at $PREFERRED_JAVA, /usr/lib/jvm/*, \$JAVA_HOME, PATH; newest was ${best_major}). Install a JDK $MIN_JAVA+ or set REGISTRY_JAVA"
    fi
    JAVA="$best"
}

# Directory holding quarkus-run.jar inside the unpacked distribution.
app_dir() {
    local jar
    jar="$(find "$DIST_DIR" -name quarkus-run.jar -type f 2>/dev/null | head -n 1)"
    [ -n "$jar" ] || return 1
    dirname "$jar"
}

# Download and unpack the Quarkus build once. It is unpacked into a temp dir
# that is renamed into place, and a marker is written last, so an
# interrupted download is never mistaken for a complete one.
fetch_registry() {
    if [ -f "$MARKER" ] && [ -d "$DIST_DIR" ]; then
        return 0
    fi
    command -v mvn >/dev/null 2>&1 || die "'mvn' not found in PATH (needed once, to fetch Apicurio Registry)"
    command -v tar >/dev/null 2>&1 || die "'tar' not found in PATH"
    log "downloading Apicurio Registry $APICURIO_VERSION (~160 MB) into $CACHE_DIR (once)"
    mkdir -p "$CACHE_DIR"
    rm -rf "$DIST_DIR" "$MARKER" "$CACHE_DIR"/download.tmp.* "$CACHE_DIR"/dist.tmp.*
    local dl="$CACHE_DIR/download.tmp.$$" tmp="$CACHE_DIR/dist.tmp.$$"
    # mvn's output goes to a log file, shown only on failure: our stdout must
    # stay exactly one line.
    # Run from the cache dir: no project pom must be picked up from the cwd.
    if ! (cd "$CACHE_DIR" && mvn -B -q org.apache.maven.plugins:maven-dependency-plugin:3.6.1:copy \
        -Dartifact="io.apicurio:apicurio-registry-app:$APICURIO_VERSION:tar.gz:all" \
        -DoutputDirectory="$dl" >"$CACHE_DIR/mvn.log" 2>&1); then
        cat "$CACHE_DIR/mvn.log" >&2
        rm -rf "$dl"
        die "maven could not fetch io.apicurio:apicurio-registry-app:$APICURIO_VERSION:tar.gz:all (see above)"
    fi
    local tarball
    tarball="$(find "$dl" -name '*.tar.gz' -type f | head -n 1)"
    [ -n "$tarball" ] || { rm -rf "$dl"; die "no tar.gz after the download (see $CACHE_DIR/mvn.log)"; }
    mkdir -p "$tmp"
    tar -xzf "$tarball" -C "$tmp" || { rm -rf "$dl" "$tmp"; die "could not unpack $tarball"; }
    rm -rf "$dl"
    find "$tmp" -name quarkus-run.jar -type f | grep -q . \
        || { rm -rf "$tmp"; die "quarkus-run.jar missing in the Apicurio Registry $APICURIO_VERSION tarball"; }
    mv "$tmp" "$DIST_DIR"
    touch "$MARKER"
}

fail_start() {
    local pid="$1" why="$2"
    log "error: $why"
    if [ -s "$STDOUT_LOG" ]; then
        log "---- last 50 lines of $STDOUT_LOG ----"
        tail -n 50 "$STDOUT_LOG" >&2 || true
    fi
    [ -n "$pid" ] && stop_process "$pid" registry
    rm -f "$PID_FILE"
    exit 1
}

cmd_start() {
    local pid
    command -v curl >/dev/null 2>&1 || die "'curl' not found in PATH"
    if pid="$(running_pid)"; then
        die "a registry is already running (pid $pid, run dir $RUN_DIR); run '$0 stop' first"
    fi
    local p
    for p in "$PORT" "$MPORT"; do
        port_open "$p" && die "port $HOST:$p is already in use (set REGISTRY_PORT; port+1 is used too)"
    done
    find_java
    fetch_registry
    local dir
    dir="$(app_dir)" || die "quarkus-run.jar not found under $DIST_DIR (delete $CACHE_DIR to download again)"

    fresh_run_dir REGISTRY_RUN_DIR
    echo "$PORT" >"$PORT_FILE"

    # Quarkus resolves lib/ relative to quarkus-run.jar, but the working dir
    # is the run dir so that anything it writes lands there. stdin/stdout/
    # stderr are detached so that `$(scripts/registry.sh start)` returns once
    # we print the URL; nohup: it must outlive the session that started it.
    # C1-only JIT and serial GC: a test registry starts faster with them.
    # 9>&-: the registry must not inherit the run dir's lock (see hold_lock).
    (cd "$RUN_DIR" && exec nohup "$JAVA" -Xmx384m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
        -XX:+ExitOnOutOfMemoryError \
        -Dquarkus.http.host="$HOST" -Dquarkus.http.port="$PORT" \
        -Dquarkus.management.host="$HOST" -Dquarkus.management.port="$MPORT" \
        -jar "$dir/quarkus-run.jar" </dev/null >>"$STDOUT_LOG" 2>&1 9>&-) &
    pid=$!
    echo "$pid" >"$PID_FILE"
    log "starting Apicurio Registry $APICURIO_VERSION with $JAVA (pid $pid), logs in $STDOUT_LOG"

    local deadline=$((SECONDS + READY_TIMEOUT))
    while :; do
        kill -0 "$pid" 2>/dev/null || fail_start "" "registry exited during startup"
        [ "$(subjects_status)" = 200 ] && break
        [ "$SECONDS" -lt "$deadline" ] || fail_start "$pid" "registry not ready after ${READY_TIMEOUT}s (GET $BASE_URL/subjects did not answer 200)"
        sleep 0.2
    done
    log "registry ready"
    echo "$BASE_URL"
}

# Prints the base URL of the registry the pid file names, starting one first
# if none runs: for callers that share one registry, such as the test
# binaries of a plain `cargo test` (tests/common). Unlike start, it keeps a
# running registry's schemas, and it starts one on free ports (unless
# REGISTRY_PORT is set): such a registry is left running, and must not hold
# the ports scripts/test.sh starts its registry on.
cmd_ensure() {
    local pid
    if pid="$(running_pid)"; then
        load_port
        # Under the lock no start is half done: a registry that does not answer is stuck.
        [ "$(subjects_status)" = 200 ] || die "a registry is running (pid $pid, run dir $RUN_DIR) but GET $BASE_URL/subjects does not answer 200 (see $STDOUT_LOG); run '$0 stop' first"
        log "reusing the running registry (pid $pid)"
        echo "$BASE_URL"
        return 0
    fi
    if [ -z "${REGISTRY_PORT:-}" ]; then
        local port
        port="$(free_port_pair)"
        set_port "$port"
    fi
    cmd_start
}

cmd_stop() {
    local pid
    if pid="$(running_pid)"; then
        log "stopping registry (pid $pid)"
        stop_process "$pid" registry
    fi
    rm -f "$PID_FILE"
}

cmd_status() {
    running_pid >/dev/null || return 1
    load_port
    [ "$(subjects_status)" = 200 ]
}

case "${1:-}" in
    start) hold_lock; cmd_start ;;
    ensure) hold_lock; cmd_ensure ;;
    stop) hold_lock; cmd_stop ;;
    status) cmd_status ;;
    *)
        echo "usage: $0 {start|ensure|stop|status}" >&2
        exit 2
        ;;
esac
