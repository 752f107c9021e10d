#!/usr/bin/env bash
# tactful beside its Kafka Streams peer (benches/kstreams), on the same data
# in the same broker (issue 11, item 5). `tactful gen` loads the seeded
# synthetic population ONCE into fresh topics; then tactful (`tactful run`,
# its own app id and group) and the peer (its own application.id) drain it
# one after the other, each to its own output topics, both exactly once.
#
# For each: records/s from process start to the last input record processed
# (tactful's /metrics, the peer's own /metrics), CPU seconds (user + sys of
# the process, all its threads, from /proc/<pid>/stat at that moment) per
# million records, and peak resident memory (VmHWM); then the ratios, and
# each input's fate in both (applied, dropped by reason, rejected).
#
# The broker is the project's (scripts/kafka.sh ensure: one already running
# from this checkout is reused), stopped at the end. Logs and profile dumps
# are in target/bench-streams/.
#
# --smoke: a small load (2,000 users, 20,000 events) and a check that the
# peer really computes memberships: both outputs are read to the end
# (read_committed) and the users with a profile, and their segments, are
# compared. Exits non-zero if the peer published nothing or the two disagree
# on more than 2% of the users.
#
# Usage: [COMMIT_INTERVAL_MS=1000] [PEER_MAX_TASK_IDLE_MS=0] [PEER_HEAP=1g] [PEER_LOG_LEVEL=info] \
#        scripts/bench-streams.sh [--smoke] [users] [events] [partitions]
# Defaults: 100000 users, 1000000 events, 4 partitions.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/bench.sh

smoke=false
if [ "${1:-}" = "--smoke" ]; then
    smoke=true
    shift
fi
if $smoke; then
    users="${1:-2000}"
    events="${2:-20000}"
else
    users="${1:-100000}"
    events="${2:-1000000}"
fi
partitions="${3:-4}"
commit_interval_ms="${COMMIT_INTERVAL_MS:-1000}"
# The peer's max.task.idle.ms: 0 (Kafka Streams' default) is its best
# throughput; under a heavy load it needs 5000 to keep every event behind
# its user's consent (benches/kstreams/README.md, difference 6).
max_task_idle_ms="${PEER_MAX_TASK_IDLE_MS:-0}"
cache_dir="${TACTFUL_CACHE_DIR:-$HOME/.cache/tactful}"
run_dir="target/bench-streams"
peer_jar="benches/kstreams/target/tactful-kstreams.jar"

log() { echo "bench-streams: $*" >&2; }
die() { log "error: $*"; exit 1; }

peak_rss_mb() {
    awk '/VmHWM/ {printf "%.0f", $2 / 1024}' "/proc/$1/status"
}

# Waits until the counter read by $2 (a command printing one number) reaches
# $3 while process $1 lives; dies if it stops moving for 120 s.
wait_for_processed() {
    local pid="$1" read_count="$2" total="$3" processed=0 last=-1 still=0
    while [ "$processed" -lt "$total" ]; do
        sleep 0.5
        kill -0 "$pid" 2>/dev/null || return 1
        processed=$($read_count || echo 0)
        processed=${processed:-0}
        if [ "$processed" = "$last" ]; then
            still=$((still + 1))
            [ "$still" -lt 240 ] || { log "no progress for 120 s at $processed of $total records"; return 1; }
        else
            still=0
            last=$processed
        fi
    done
}

log "building tactful (cargo build --release) and the peer (mvn package)"
cargo build --release --quiet
mvn -B -q -f benches/kstreams/pom.xml package -Dmaven.repo.local="$cache_dir/m2" >/dev/null \
    || die "the peer did not build (mvn -f benches/kstreams/pom.xml package)"

bootstrap="$(scripts/kafka.sh ensure)"
cleanup() {
    local pid
    # Only the processes this script started (never `kill 0`, which is the whole process group).
    for pid in "${tactful_pid:-}" "${peer_pid:-}"; do
        [ -n "$pid" ] && kill "$pid" 2>/dev/null
    done
    scripts/kafka.sh stop >/dev/null 2>&1 || true
}
trap cleanup EXIT

rm -rf "$run_dir" && mkdir -p "$run_dir"
prefix="streams-$(date +%s)"
tactful_port=$(free_port)
peer_port=$(free_port)
# tactful publishes to $prefix.tactful.profiles.updates, the peer to $prefix.kstreams.*.
PROFILES_TOPIC="$prefix.tactful.profiles.updates" write_config "$run_dir/tactful.toml" "$prefix-tactful" "$prefix" \
    "$bootstrap" "$tactful_port" 'processing_guarantee = "exactly_once"'

log "loading $users users, $events events, $partitions partitions (once)"
target/release/tactful gen --config "$run_dir/tactful.toml" --users "$users" --events "$events" \
    --partitions "$partitions" 2> "$run_dir/gen.log"
tail -1 "$run_dir/gen.log" >&2
total=$(grep -o 'done, [0-9]* records' "$run_dir/gen.log" | grep -o '[0-9]*')

# ---- tactful ----
log "draining with tactful run"
started=$(date +%s.%N)
target/release/tactful run --config "$run_dir/tactful.toml" 2> "$run_dir/tactful.log" &
tactful_pid=$!
tactful_processed() {
    curl -s "127.0.0.1:$tactful_port/metrics" \
        | awk '/^tactful_(records_applied|events_dropped|records_rejected)_total/ {sum += $NF} END {printf "%d", sum}'
}
wait_for_processed "$tactful_pid" tactful_processed "$total" \
    || { tail -20 "$run_dir/tactful.log" >&2; die "tactful did not process every record"; }
finished=$(date +%s.%N)
tactful_cpu=$(cpu_seconds "$tactful_pid")
tactful_rss=$(peak_rss_mb "$tactful_pid")
tactful_seconds=$(echo "$finished - $started" | bc -l)
tactful_metrics=$(curl -s "127.0.0.1:$tactful_port/metrics")
tactful_updates=$(echo "$tactful_metrics" | awk '/^tactful_profile_updates_total/ {sum += $NF} END {printf "%d", sum}')
kill -TERM "$tactful_pid"
wait "$tactful_pid" || true
tactful_pid=

# ---- the Kafka Streams peer ----
log "draining with the Kafka Streams peer"
started=$(date +%s.%N)
java -Xmx"${PEER_HEAP:-1g}" -Dorg.slf4j.simpleLogger.defaultLogLevel="${PEER_LOG_LEVEL:-info}" -jar "$peer_jar" run \
    --bootstrap "$bootstrap" --application-id "$prefix-kstreams" --state-dir "$run_dir/kstreams-state" \
    --browse "$prefix.events.browse" --purchase "$prefix.events.purchase" \
    --location "$prefix.events.location" --consent "$prefix.consent.changes" \
    --profiles "$prefix.kstreams.profiles.updates" --dead-letters "$prefix.kstreams.dead-letters" \
    --commit-interval-ms "$commit_interval_ms" --max-task-idle-ms "$max_task_idle_ms" \
    --metrics-port "$peer_port" 2> "$run_dir/kstreams.log" &
peer_pid=$!
peer_processed() {
    curl -s "127.0.0.1:$peer_port/metrics" | awk '/^kstreams_peer_records_processed_total/ {printf "%d", $NF}'
}
wait_for_processed "$peer_pid" peer_processed "$total" \
    || { tail -20 "$run_dir/kstreams.log" >&2; die "the peer did not process every record"; }
finished=$(date +%s.%N)
peer_cpu=$(cpu_seconds "$peer_pid")
peer_rss=$(peak_rss_mb "$peer_pid")
peer_seconds=$(echo "$finished - $started" | bc -l)
peer_metrics=$(curl -s "127.0.0.1:$peer_port/metrics")
peer_updates=$(echo "$peer_metrics" | awk '/^kstreams_peer_profile_updates_total/ {sum += $NF} END {printf "%d", sum}')
echo "$peer_metrics" > "$run_dir/kstreams.metrics"
kill -TERM "$peer_pid"
wait "$peer_pid" || true
peer_pid=

# ---- report ----
row() { # name seconds cpu rss updates
    printf '| %-20s | %8.1f | %10.0f | %8.1f | %12.2f | %14.0f | %8s | %10s |\n' "$1" "$2" \
        "$(echo "$total / $2" | bc -l)" "$3" "$(echo "$3 * 1000000 / $total" | bc -l)" \
        "$(echo "$total / $3" | bc -l)" "$4" "$5"
}
echo
echo "records: $total ($users users, $events events, $partitions partitions; exactly once; peer commit interval ${commit_interval_ms} ms, max.task.idle.ms ${max_task_idle_ms})"
echo "| implementation       | time (s) |  records/s |  CPU (s) | CPU s per 1M | records/CPU-s  | peak MB  | updates    |"
echo "|----------------------|----------|------------|----------|--------------|----------------|----------|------------|"
row "tactful" "$tactful_seconds" "$tactful_cpu" "$tactful_rss" "$tactful_updates"
row "Kafka Streams peer" "$peer_seconds" "$peer_cpu" "$peer_rss" "$peer_updates"
printf 'ratio tactful / peer: %.2fx records/s, %.2fx records per CPU-second (throughput per core), %.2fx peak memory\n' \
    "$(echo "$peer_seconds / $tactful_seconds" | bc -l)" "$(echo "$peer_cpu / $tactful_cpu" | bc -l)" \
    "$(echo "$tactful_rss / $peer_rss" | bc -l)"

# The same input must meet the same fate: events applied, dropped by reason, rejected.
fates() { # metrics text, metric prefix → "applied N, dropped:no_consent N, ..."
    echo "$1" | awk -v prefix="$2" '
        $0 ~ "^" prefix "(records|events)_applied_total" && $0 !~ /kind="consent"/ { fate["applied"] += $NF }
        $0 ~ "^" prefix "events_dropped_total" { match($0, /reason="[a-z_]*"/); fate[substr($0, RSTART + 8, RLENGTH - 9)] += $NF }
        $0 ~ "^" prefix "records_rejected_total" { fate["rejected"] += $NF }
        END { for (name in fate) print name " " fate[name] }' | sort | paste -sd, | sed 's/,/, /g'
}
echo "events by fate, tactful: $(fates "$tactful_metrics" tactful_)"
echo "events by fate, peer:    $(fates "$(cat "$run_dir/kstreams.metrics")" kstreams_peer_)"

if $smoke; then
    [ "$peer_updates" -gt 0 ] || die "the peer published no profile update"
    java -jar "$peer_jar" profiles --bootstrap "$bootstrap" --topic "$prefix.tactful.profiles.updates" \
        2>/dev/null > "$run_dir/tactful.profiles"
    java -jar "$peer_jar" profiles --bootstrap "$bootstrap" --topic "$prefix.kstreams.profiles.updates" \
        2>/dev/null > "$run_dir/kstreams.profiles"
    tactful_users=$(wc -l < "$run_dir/tactful.profiles")
    peer_users=$(wc -l < "$run_dir/kstreams.profiles")
    same=$(comm -12 "$run_dir/tactful.profiles" "$run_dir/kstreams.profiles" | wc -l)
    both=$(join <(cut -d' ' -f1 "$run_dir/tactful.profiles") <(cut -d' ' -f1 "$run_dir/kstreams.profiles") | wc -l)
    either=$(cut -d' ' -f1 "$run_dir/tactful.profiles" "$run_dir/kstreams.profiles" | sort -u | wc -l)
    echo "users with a profile at the end: tactful $tactful_users, peer $peer_users, both $both"
    echo "users with the same segments in both: $same of $either ($(echo "100 * $same / $either" | bc -l | xargs printf '%.1f')%)"
    [ "$peer_users" -gt 0 ] || die "the peer holds no profile at the end"
    [ $((100 * same)) -ge $((98 * either)) ] || die "tactful and the peer disagree on more than 2% of the users (see $run_dir/*.profiles)"
    echo "smoke check passed"
fi
