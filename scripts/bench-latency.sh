#!/usr/bin/env bash
# End-to-end latency through a real Kafka broker (issue 11, item 4): an event
# produced → the profile update it causes visible to a read_committed
# consumer, under a steady load at half of the measured capacity, for each
# processing guarantee. Figures go to BENCHMARKS.md ("Latency").
#
# For each guarantee, on one broker: fresh topics (PARTITIONS partitions),
# consent for USERS users (personalization + web, level FULL), `tactful run`
# until /readyz, then scripts/latency.py produces browse events at RATE/s for
# DURATION s (each event's ts = the wall clock when produced) while a
# read_committed consumer decodes every ProfileUpdate (fastavro) and takes
# receive wall clock − ts for the updates caused by the run's events after
# WARMUP s. Producer and consumer run on this machine: one clock, no skew.
# A first round of BROKER_WARMUP s (exactly once, its own topics) warms the
# broker's JIT and is not reported. GUARANTEE=floor measures the broker
# alone: no tactful, the consumer reads the events themselves (one hop, the
# same producer and consumer settings); `all` runs it before both guarantees.
# The broker's JVM collects with ZGC (BROKER_GC=g1: G1, scripts/kafka.sh's
# default): G1's young collections stop the broker about every 0.8 s at
# this load on 2 shared cores (10-15 ms at the median, up to 55), and those
# pauses, not tactful, set the at-least-once tail (BENCHMARKS.md, "Latency").
#
# Usage: [GUARANTEE=exactly_once|at_least_once|both|floor|all] [CAPACITY=40000] [RATE=CAPACITY/2] \
#        [DURATION=30] [WARMUP=5] [USERS=10000] [PARTITIONS=4] \
#        [COMMIT_INTERVAL_MS=100] [MAX_BATCH=50000] [MAX_IDLE_WAIT_MS=500] \
#        [BROKER_WARMUP=20] [CONSUMER_FETCH_WAIT_MS=10] [PRODUCER_LINGER_MS=5] [CLIENT_PROPERTIES=key=value,...] \
#        [BROKER_GC=zgc|g1] [TACTFUL_BIN=path] \
#        scripts/bench-latency.sh
# CAPACITY is records/s as scripts/bench-e2e.sh measures it (exactly once,
# default batches) on this machine; the load is RATE = CAPACITY / 2.
# The broker is scripts/kafka.sh's, on a free port pair unless KAFKA_PORT is set.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/bench.sh

guarantee="${GUARANTEE:-both}"
capacity="${CAPACITY:-40000}"
rate="${RATE:-$((capacity / 2))}"
duration="${DURATION:-30}"
warmup="${WARMUP:-5}"
users="${USERS:-10000}"
partitions="${PARTITIONS:-4}"
commit_interval_ms="${COMMIT_INTERVAL_MS:-100}"
max_batch="${MAX_BATCH:-50000}"
max_idle_wait_ms="${MAX_IDLE_WAIT_MS:-500}"
consumer_fetch_wait_ms="${CONSUMER_FETCH_WAIT_MS:-10}"
# The event producer's linger.ms: 5, the default of librdkafka and of Java's
# producer since Kafka 4.0, is what a data platform's producer does; 0
# shows what of the latency is that producer's batching.
producer_linger_ms="${PRODUCER_LINGER_MS:-5}"
broker_warmup="${BROKER_WARMUP:-20}"
broker_gc="${BROKER_GC:-zgc}"
case "$broker_gc" in
    zgc) export KAFKA_GC_OPTS="-XX:+UseZGC" ;;
    g1) unset KAFKA_GC_OPTS ;;
    *) echo "BROKER_GC must be zgc or g1" >&2; exit 2 ;;
esac
case "$guarantee" in
    both) guarantees=(exactly_once at_least_once) ;;
    all) guarantees=(floor exactly_once at_least_once) ;;
    exactly_once | at_least_once | floor) guarantees=("$guarantee") ;;
    *) echo "GUARANTEE must be exactly_once, at_least_once, both, floor or all" >&2; exit 2 ;;
esac

# TACTFUL_BIN: another build to measure (e.g. a candidate change), instead of this tree's.
tactful_binary
python="$(scripts/python-env.sh)"
if [ -z "${KAFKA_PORT:-}" ]; then
    KAFKA_PORT="$(free_port)"
    export KAFKA_PORT KAFKA_CONTROLLER_PORT=$((KAFKA_PORT + 1))
fi
admin_port="$(free_port)"

pipeline_pid=""
broker_started=""
cleanup() {
    if [ -n "$pipeline_pid" ]; then kill -TERM "$pipeline_pid" 2>/dev/null || true; wait "$pipeline_pid" 2>/dev/null || true; fi
    if [ -n "$broker_started" ]; then scripts/kafka.sh stop >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT
bootstrap="$(scripts/kafka.sh start)"
broker_started=1

run_dir="target/bench-latency"
rm -rf "$run_dir" && mkdir -p "$run_dir"
echo "load: $rate browse events/s (capacity $capacity / 2) for ${duration}s, ${warmup}s warm-up not measured;" \
    "$users users, $partitions partitions; commit_interval_ms $commit_interval_ms, max_batch_records $max_batch," \
    "max_idle_wait_ms $max_idle_wait_ms; the broker's collector $broker_gc;" \
    "$(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"

# A fresh broker's JVM compiles its hot paths during the first minute of
# load (it then used about twice the CPU): a first round, exactly once at
# RATE for BROKER_WARMUP seconds on topics of its own, is not reported.
rounds=("${guarantees[@]}")
[ "$broker_warmup" -gt 0 ] && rounds=(warm-up "${rounds[@]}")
for round in "${rounds[@]}"; do
    if [ "$round" = warm-up ]; then g=exactly_once; seconds=$broker_warmup; else g=$round; seconds=$duration; fi
    prefix="lat-$round-$(date +%s)"
    "$python" scripts/latency.py --bootstrap "$bootstrap" topics --prefix "$prefix" --partitions "$partitions"
    broker_pid="$(cat "${KAFKA_RUN_DIR:-target/kafka}/kafka.pid")"
    if [ "$round" = floor ]; then
        # The broker alone: the same load, read back from the events topic.
        reading=(--read events)
        cpu_before="0 $(cpu_seconds "$broker_pid")"
    else
        reading=(--metrics-url "http://127.0.0.1:$admin_port/metrics")
        write_config "$run_dir/$round.toml" "$prefix" "$prefix" "$bootstrap" "$admin_port" \
            "processing_guarantee = \"$g\"" "commit_interval_ms = $commit_interval_ms" \
            "max_batch_records = $max_batch" "max_idle_wait_ms = $max_idle_wait_ms"
        if [ -n "${CLIENT_PROPERTIES:-}" ]; then
            # key=value,key=value: librdkafka settings for tactful's clients.
            printf '\n[kafka.client_properties]\n' >> "$run_dir/$round.toml"
            tr ',' '\n' <<< "$CLIENT_PROPERTIES" | while IFS='=' read -r key value; do
                printf '"%s" = "%s"\n' "$key" "$value" >> "$run_dir/$round.toml"
            done
        fi
        "$python" scripts/latency.py --bootstrap "$bootstrap" consent --topic "$prefix.consent.changes" --users "$users"
        "$tactful" run --config "$run_dir/$round.toml" 2> "$run_dir/$round.run.log" &
        pipeline_pid=$!
        wait_until_ready "$pipeline_pid" "$admin_port" "$run_dir/$round.run.log"
        cpu_before="$(cpu_seconds "$pipeline_pid") $(cpu_seconds "$broker_pid")"
    fi
    "$python" scripts/latency.py --bootstrap "$bootstrap" run \
        --browse-topic "$prefix.events.browse" --profiles-topic "$prefix.profiles.updates" \
        --users "$users" --rate "$rate" --duration "$seconds" --warmup "$warmup" "${reading[@]}" \
        --fetch-wait-ms "$consumer_fetch_wait_ms" --linger-ms "$producer_linger_ms" > "$run_dir/$round.json"
    if [ -n "$pipeline_pid" ]; then
        peak_rss=$(awk '/VmHWM/ {print $2 " " $3}' "/proc/$pipeline_pid/status")
        cpu_after="$(cpu_seconds "$pipeline_pid") $(cpu_seconds "$broker_pid")"
        kill -TERM "$pipeline_pid"
        wait "$pipeline_pid" || true
        pipeline_pid=""
    else
        peak_rss="-"
        cpu_after="0 $(cpu_seconds "$broker_pid")"
    fi
    if [ "$round" = warm-up ]; then
        echo "== broker warm-up round ($g, ${seconds}s, not reported): broker CPU $(echo "$cpu_after" | awk -v b="$cpu_before" '{split(b, x, " "); printf "%.1f", $2 - x[2]}') s"
        continue
    fi

    "$python" - "$run_dir/$round.json" "$g" "$peak_rss" "$cpu_before" "$cpu_after" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); g = sys.argv[2]; lat = r["latency_ms"]; p = r["pipeline"]
(t0, b0), (t1, b1) = (map(float, x.split()) for x in sys.argv[4:6])
floor = g == "floor"
print("== floor: the broker alone, the consumer reads the events (no tactful)" if floor else f"== {g}")
print(f"produced {r['produced']} events in {r['produce_seconds']} s: {r['rate_achieved']} events/s "
      f"(target {r['rate_target']}; producer >10 ms behind schedule {r['producer_late_ticks']} times)")
if not floor:
    print(f"tactful: applied {p.get('applied')}, published {p.get('updates_published')} updates, "
          f"dropped {p.get('dropped')}, rejected {p.get('rejected')}; while producing {p.get('batches')} batches, "
          f"mean batch {p.get('batch_mean_ms')} ms of which delivery {p.get('delivery_mean_ms')} ms; peak memory {sys.argv[3]}")
print(f"CPU seconds during the run (production and drain): tactful {t1 - t0:.1f}, broker {b1 - b0:.1f}, "
      f"producer {r['producer_cpu_seconds']}, consumer {r['consumer_cpu_seconds']}")
read, of_the_run = ("events", "of the run") if floor else ("updates", "caused by the run's events")
print(f"consumer: {r['updates_received']} {read} read, {r['updates_of_the_run']} {of_the_run}, "
      f"{r['measured']} measured (after the warm-up)")
if lat:
    print(f"latency ms: p50 {lat['p50']}  p90 {lat['p90']}  p99 {lat['p99']}  p99.9 {lat['p999']}  max {lat['max']}  "
          f"(min {lat['min']}, mean {lat['mean']})")
    sent_by = "the event's producer" if floor else "tactful"
    for key, what in (("event_to_sent_ms", f"event -> sent by {sent_by}"), ("sent_to_visible_ms", "sent -> visible")):
        part = r[key]
        print(f"  {what}: p50 {part['p50']}  p99 {part['p99']}  max {part['max']}")
else:
    print("latency: no update measured"); sys.exit(1)
PY
done
