#!/usr/bin/env bash
# End-to-end benchmark through a real Kafka broker: `tactful gen` produces a
# synthetic load into fresh topics, then `tactful run` processes it; the
# script reports records/s from start-up to the last record processed (read
# from /metrics) and the process's peak memory. Figures go to BENCHMARKS.md.
#
# Where the time and the cores go: the batches' time split into applying
# events and event time (the part on the worker threads), delivering
# (transaction commits) and the rest (polling, decoding, the consent
# catch-up); and the CPU time of the pipeline's threads and of the broker,
# which shares the machine.
#
# Then it starts the pipeline again and reports how fast the state is
# restored from the changelog (users restored per second): first from the
# changelog as the run left it, then once the broker's cleaner is done with
# it. With the default max.compaction.lag.ms (1 hour) the run's changelog is
# not compacted at all: both restores read every record. With
# MAX_COMPACTION_LAG_MS=1000 its segments roll every second and are
# compacted while it runs (costing the broker CPU: the throughput of such a
# run is not comparable); only the last segment of each partition stays as
# written.
#
# Usage: [TACTFUL_BIN=path] [GUARANTEE=exactly_once|at_least_once] [MAX_BATCH=50000] [COMMIT_INTERVAL_MS=100] [MAX_IDLE_WAIT_MS=500] \
#        [WORKERS=<threads; default the number of cores>] [ADMIN_PORT=19464] [MAX_COMPACTION_LAG_MS=<ms>] \
#        [RESTORE_AFTER_IDLE=<seconds>] \
#        scripts/bench-e2e.sh [users] [events] [partitions]
# (KAFKA_PORT and KAFKA_CONTROLLER_PORT move the broker, see scripts/kafka.sh.)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/bench.sh
users="${1:-100000}"
events="${2:-1000000}"
partitions="${3:-4}"
guarantee="${GUARANTEE:-exactly_once}"
port="${ADMIN_PORT:-19464}"

tactful_binary
bootstrap="$(scripts/kafka.sh start)"
trap 'kill "${pipeline_pid:-0}" 2>/dev/null || true; scripts/kafka.sh stop >/dev/null 2>&1 || true' EXIT

run_dir="target/bench-e2e"
rm -rf "$run_dir" && mkdir -p "$run_dir"
prefix="bench-$(date +%s)"
settings=("max_batch_records = ${MAX_BATCH:-50000}" "commit_interval_ms = ${COMMIT_INTERVAL_MS:-100}"
    "processing_guarantee = \"$guarantee\"" "max_idle_wait_ms = ${MAX_IDLE_WAIT_MS:-500}")
[ -n "${MAX_COMPACTION_LAG_MS:-}" ] && settings+=("max_compaction_lag_ms = $MAX_COMPACTION_LAG_MS")
[ -n "${WORKERS:-}" ] && settings+=("workers = $WORKERS")
write_config "$run_dir/tactful.toml" "$prefix" "$prefix" "$bootstrap" "$port" "${settings[@]}"

"$tactful" gen --config "$run_dir/tactful.toml" --users "$users" --events "$events" --partitions "$partitions" 2> "$run_dir/gen.log"
tail -1 "$run_dir/gen.log"
total=$(grep -o 'done, [0-9]* records' "$run_dir/gen.log" | grep -o '[0-9]*')

broker_pid=$(cat "${KAFKA_RUN_DIR:-target/kafka}/kafka.pid")
broker_cpu_before=$(cpu_seconds "$broker_pid")

started=$(date +%s.%N)
"$tactful" run --config "$run_dir/tactful.toml" 2> "$run_dir/run.log" &
pipeline_pid=$!
processed=0
while [ "$processed" -lt "$total" ]; do
    sleep 0.1
    kill -0 "$pipeline_pid" 2>/dev/null || { echo "the pipeline died:"; tail -20 "$run_dir/run.log"; exit 1; }
    processed=$(curl -s "127.0.0.1:$port/metrics" | awk '/^tactful_(records_applied|events_dropped|records_rejected)_total/ {sum += $NF} END {printf "%d", sum}')
done
finished=$(date +%s.%N)
metrics=$(curl -s "127.0.0.1:$port/metrics")
peak_rss=$(awk '/VmHWM/ {print $2 " " $3}' "/proc/$pipeline_pid/status")
# Per thread, by name: librdkafka's (rdk:*), the admin endpoint's runtime
# (tokio-*), the worker threads, and the pipeline thread with the idle main
# thread (named after the process); threads that ended (clients dropped
# after the start) are the process's total less the threads alive.
threads=$(for task in /proc/"$pipeline_pid"/task/*; do
    case "$(cat "$task/comm")" in
        rdk:*) group=librdkafka ;;
        tokio-*) group=admin-runtime ;;
        tactful-worker) group=worker-threads ;;
        *) group=pipeline-thread ;;
    esac
    echo "$group $(cpu_seconds "$task")"
done)
process_cpu=$(cpu_seconds "$pipeline_pid")
broker_cpu=$(echo "$(cpu_seconds "$broker_pid") - $broker_cpu_before" | bc -l)
kill -TERM "$pipeline_pid"
wait "$pipeline_pid" || true
seconds=$(echo "$finished - $started" | bc -l)
echo "records: $total (users $users, partitions $partitions, $guarantee)"
printf 'end-to-end: %.1f s, %.0f records/s (from process start, including consent table load)\n' "$seconds" "$(echo "$total / $seconds" | bc -l)"
echo "$metrics" | grep -E '^tactful_profile_updates_total|^tactful_segment_members'
echo "peak resident memory: $peak_rss"
echo "$metrics" | grep -E '^tactful_events_dropped_total.*late' || echo "late events: 0"
histogram_sum() { echo "$metrics" | awk -v name="$1_sum" '$1 == name {printf "%.2f", $2}'; }
batches=$(histogram_sum tactful_batch_duration_seconds)
applying=$(histogram_sum tactful_apply_duration_seconds)
delivering=$(histogram_sum tactful_commit_duration_seconds)
printf 'time in batches: %.1f s = applying events and event time %.1f s + delivering %.1f s + polling, decoding and the rest %.1f s\n' \
    "$batches" "$applying" "$delivering" "$(echo "$batches - $applying - $delivering" | bc -l)"
echo "$threads" | awk -v total="$process_cpu" -v broker="$broker_cpu" -v wall="$seconds" '
    { cpu[$1] += $2; alive += $2 }
    END {
        printf "cpu seconds over %.1f s: tactful %.1f (", wall, total
        for (group in cpu) printf "%s %.1f, ", group, cpu[group]
        printf "threads that ended %.1f), broker %.1f\n", total - alive, broker
    }'

# Restore: a new process reads the changelog before it is ready.
restore() {
    "$tactful" run --config "$run_dir/tactful.toml" 2> "$run_dir/restore.log" &
    pipeline_pid=$!
    wait_until_ready "$pipeline_pid" "$port" "$run_dir/restore.log"
    local peak
    peak=$(awk '/VmHWM/ {print $2 " " $3}' "/proc/$pipeline_pid/status")
    kill -TERM "$pipeline_pid"
    wait "$pipeline_pid" || true
    sed 's/\x1b\[[0-9;]*m//g' "$run_dir/restore.log" | grep 'state restored' \
        | sed -E "s/.*records=([0-9]+) users=([0-9]+) elapsed_ms=([0-9]+) users_per_second=([0-9]+) read_ms=([0-9]+) install_ms=([0-9]+).*/restore, $1: \\2 users (\\1 changelog records) in \\3 ms (reading \\5 ms, installing \\6 ms), \\4 users\\/s, peak resident memory $peak/"
}
restore "as the run left the changelog"

# The broker compacts the closed segments in the background (its cleaner
# looks every second, scripts/kafka.sh): wait until the changelog stops
# shrinking, then restore again.
kcat="$(scripts/kcat.sh)"
changelog="tactful.$prefix.changelog"
count() { timeout 120 "$kcat" -b "$bootstrap" -C -t "$changelog" -e -q -f '.' | wc -c; }
previous=$(count)
for _ in $(seq 30); do
    sleep 2
    now=$(count)
    [ "$now" -lt "$previous" ] || break
    previous=$now
done
restore "once the broker compacted it"

# RESTORE_AFTER_IDLE=<seconds>: two more restores, each that long after the
# process before it ended. On a VM that takes freed memory back (free page
# reporting, a balloon), the new process then starts on memory the host
# must back again, as a restart in service does; a restore at once after
# another process reuses what that one freed.
if [ -n "${RESTORE_AFTER_IDLE:-}" ]; then
    for _ in 1 2; do
        sleep "$RESTORE_AFTER_IDLE"
        restore "after $RESTORE_AFTER_IDLE s idle"
    done
fi
