# shellcheck shell=bash
# Shared by the benchmark scripts (bench-e2e.sh, bench-latency.sh,
# bench-streams.sh). Sourced, not run.

# Prints a port P such that nothing listens on P to P+2 (a broker's PLAINTEXT,
# controller and SASL_SSL ports, or an admin port), from 20000-29999 like
# scripts/lib/services.sh.
free_port() {
    local port
    for _ in $(seq 100); do
        port=$((20000 + RANDOM % 10000))
        if ! timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port" 2>/dev/null \
            && ! timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$((port + 1))" 2>/dev/null \
            && ! timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$((port + 2))" 2>/dev/null; then
            echo "$port"
            return 0
        fi
    done
    echo "no free port found in 20000-29999" >&2
    exit 1
}

# User + system CPU seconds so far of a process (a pid) or of one thread (a
# /proc/<pid>/task/<tid> directory). The command name (field 2 of the stat
# file) may hold spaces: the fields are read after its closing parenthesis.
cpu_seconds() {
    local stat="/proc/$1/stat"
    [ -d "$1" ] && stat="$1/stat"
    sed -E 's/^.*\) //' "$stat" | awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($12 + $13) / hz}'
}

# Writes a benchmark's tactful configuration to $1: app id $2 (instance id
# $INSTANCE_ID if set), the topics named after $3 (profiles: $PROFILES_TOPIC,
# by default $3.profiles.updates), bootstrap servers $4, the admin endpoint on
# 127.0.0.1:$5, and each further argument as a line of [pipeline] (e.g.
# "commit_interval_ms = 100").
write_config() {
    local file="$1" app_id="$2" prefix="$3" bootstrap="$4" admin_port="$5"
    shift 5
    {
        printf '[kafka]\nbootstrap_servers = "%s"\napp_id = "%s"\n' "$bootstrap" "$app_id"
        [ -n "${INSTANCE_ID:-}" ] && printf 'instance_id = "%s"\n' "$INSTANCE_ID"
        printf '\n'
        printf '[topics]\n'
        for topic in browse purchase location; do printf '%s = "%s.events.%s"\n' "$topic" "$prefix" "$topic"; done
        printf 'consent = "%s.consent.changes"\nprofiles = "%s"\n\n' "$prefix" "${PROFILES_TOPIC:-$prefix.profiles.updates}"
        printf '[pipeline]\n'
        printf '%s\n' "$@"
        printf '\n[admin]\nlisten = "127.0.0.1:%s"\n' "$admin_port"
    } > "$file"
}

# Sets $tactful to the binary to measure: $TACTFUL_BIN (another build, e.g.
# the base of an A/B comparison), or this tree's release build, built now.
# shellcheck disable=SC2034 # $tactful is for the sourcing script
tactful_binary() {
    if [ -n "${TACTFUL_BIN:-}" ]; then
        tactful="$TACTFUL_BIN"
    else
        cargo build --release --quiet
        tactful=target/release/tactful
    fi
}

# Waits until the tactful process $1 answers ready on 127.0.0.1:$2/readyz;
# if it dies first, shows the end of its log $3 and fails.
wait_until_ready() {
    local pid="$1" admin_port="$2" log_file="$3"
    until curl -sf "127.0.0.1:$admin_port/readyz" >/dev/null; do
        kill -0 "$pid" 2>/dev/null || { echo "the pipeline died:"; tail -20 "$log_file"; exit 1; }
        sleep 0.05
    done
}
