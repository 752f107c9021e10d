#!/usr/bin/env bash
# End-to-end benchmark through a real Kafka broker: `tactful gen` produces a
# synthetic load into fresh topics, then `tactful run` processes it; the
# script reports records/s from start-up to the last record processed (read
# from /metrics) and the process's peak memory. Figures go to BENCHMARKS.md.
#
# Then it starts the pipeline again and reports how fast the state is
# restored from the changelog (users restored per second).
#
# Usage: [GUARANTEE=exactly_once|at_least_once] [MAX_BATCH=50000] [COMMIT_INTERVAL_MS=100] [MAX_IDLE_WAIT_MS=500] \
#        scripts/bench-e2e.sh [users] [events] [partitions]
set -euo pipefail
cd "$(dirname "$0")/.."
users="${1:-100000}"
events="${2:-1000000}"
partitions="${3:-4}"
guarantee="${GUARANTEE:-exactly_once}"
port=19464

cargo build --release --quiet
bootstrap="$(scripts/kafka.sh start)"
trap 'kill "${pipeline_pid:-0}" 2>/dev/null || true; scripts/kafka.sh stop >/dev/null 2>&1 || true' EXIT

run_dir="target/bench-e2e"
rm -rf "$run_dir" && mkdir -p "$run_dir"
prefix="bench-$(date +%s)"
cat > "$run_dir/tactful.toml" <<TOML
[kafka]
bootstrap_servers = "$bootstrap"
app_id = "$prefix"

[topics]
browse = "$prefix.events.browse"
purchase = "$prefix.events.purchase"
location = "$prefix.events.location"
consent = "$prefix.consent.changes"
profiles = "$prefix.profiles.updates"

[pipeline]
max_batch_records = ${MAX_BATCH:-50000}
commit_interval_ms = ${COMMIT_INTERVAL_MS:-100}
processing_guarantee = "$guarantee"
max_idle_wait_ms = ${MAX_IDLE_WAIT_MS:-500}

[admin]
listen = "127.0.0.1:$port"
TOML

target/release/tactful gen --config "$run_dir/tactful.toml" --users "$users" --events "$events" --partitions "$partitions" 2> "$run_dir/gen.log"
tail -1 "$run_dir/gen.log"
total=$(grep -o 'done, [0-9]* records' "$run_dir/gen.log" | grep -o '[0-9]*')

started=$(date +%s.%N)
target/release/tactful run --config "$run_dir/tactful.toml" 2> "$run_dir/run.log" &
pipeline_pid=$!
processed=0
while [ "$processed" -lt "$total" ]; do
    sleep 0.5
    kill -0 "$pipeline_pid" 2>/dev/null || { echo "the pipeline died:"; tail -20 "$run_dir/run.log"; exit 1; }
    processed=$(curl -s "127.0.0.1:$port/metrics" | awk '/^tactful_(records_applied|events_dropped|records_rejected)_total/ {sum += $NF} END {printf "%d", sum}')
done
finished=$(date +%s.%N)
metrics=$(curl -s "127.0.0.1:$port/metrics")
peak_rss=$(awk '/VmHWM/ {print $2 " " $3}' "/proc/$pipeline_pid/status")
kill -TERM "$pipeline_pid"
wait "$pipeline_pid" || true
seconds=$(echo "$finished - $started" | bc -l)
echo "records: $total (users $users, partitions $partitions, $guarantee)"
printf 'end-to-end: %.1f s, %.0f records/s (from process start, including consent table load)\n' "$seconds" "$(echo "$total / $seconds" | bc -l)"
echo "$metrics" | grep -E '^tactful_profile_updates_total|^tactful_segment_members'
echo "peak resident memory: $peak_rss"
echo "$metrics" | grep -E '^tactful_events_dropped_total.*late' || echo "late events: 0"

# Restore: a new process reads the changelog before it is ready.
target/release/tactful run --config "$run_dir/tactful.toml" 2> "$run_dir/restore.log" &
pipeline_pid=$!
until curl -sf "127.0.0.1:$port/readyz" >/dev/null; do
    sleep 0.2
    kill -0 "$pipeline_pid" 2>/dev/null || { echo "the pipeline died:"; tail -20 "$run_dir/restore.log"; exit 1; }
done
kill -TERM "$pipeline_pid"
wait "$pipeline_pid" || true
sed 's/\x1b\[[0-9;]*m//g' "$run_dir/restore.log" | grep 'state restored' \
    | sed -E 's/.*records=([0-9]+) users=([0-9]+) elapsed_ms=([0-9]+) users_per_second=([0-9]+).*/restore: \2 users (\1 changelog records) in \3 ms, \4 users\/s/'
