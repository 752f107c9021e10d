#!/usr/bin/env bash
# Recovery of a consumer group of two instances (issue 12, item 4): how long
# partitions stop committing when one instance is killed with SIGKILL and
# started again, and during a rolling restart (each instance stopped with
# SIGTERM and started again, one after the other). Figures go to
# BENCHMARKS.md ("Recovery after a restart").
#
# On one broker (scripts/kafka.sh, free ports): fresh topics (PARTITIONS
# partitions), consent for USERS users, instances `a` and `b` (exactly once,
# instance ids a and b), a steady load of RATE browse events/s
# (scripts/latency.py run) and a sampler of the group's committed offsets
# (scripts/latency.py commits). After SETTLE s: `b` is killed and started
# again RESTART_DELAY s later; after SETTLE s more, `a` then `b` are
# restarted. For each episode it prints, per partition, the longest time
# without a commit and the number of stops over 1 s (commits come every
# ~0.1 s under load), and the time from the (last) restart until every
# partition committed again. The latency summary of the load's updates is
# printed at the end (its max shows the longest delay an update saw).
#
# Usage: [USERS=10000] [PARTITIONS=4] [RATE=5000] [SETTLE=20] [RESTART_DELAY=1] \
#        [TACTFUL_BIN=path] scripts/bench-recovery.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/bench.sh

users="${USERS:-10000}"
partitions="${PARTITIONS:-4}"
rate="${RATE:-5000}"
settle="${SETTLE:-20}"
restart_delay="${RESTART_DELAY:-1}"

tactful_binary
python="$(scripts/python-env.sh)"
export KAFKA_PORT="${KAFKA_PORT:-$(free_port)}" KAFKA_RUN_DIR="${KAFKA_RUN_DIR:-target/kafka-recovery}"
export KAFKA_CONTROLLER_PORT=$((KAFKA_PORT + 1))
run_dir="target/bench-recovery"
rm -rf "$run_dir" && mkdir -p "$run_dir"

declare -A pid port
background=()
cleanup() {
    local p
    for p in "${pid[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${background[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    scripts/kafka.sh stop >/dev/null 2>&1 || true
}
trap cleanup EXIT
bootstrap="$(scripts/kafka.sh start)"

prefix="recovery-$(date +%s)"
for instance in a b; do
    port[$instance]="$(free_port)"
    INSTANCE_ID="$instance" write_config "$run_dir/$instance.toml" "$prefix" "$prefix" "$bootstrap" "${port[$instance]}" \
        'processing_guarantee = "exactly_once"'
done
"$python" scripts/latency.py --bootstrap "$bootstrap" topics --prefix "$prefix" --partitions "$partitions"
"$python" scripts/latency.py --bootstrap "$bootstrap" consent --topic "$prefix.consent.changes" --users "$users"

now_ms() { date +%s%3N; }
start_instance() {
    "$tactful" run --config "$run_dir/$1.toml" 2>> "$run_dir/$1.log" &
    pid[$1]=$!
}
wait_ready() { wait_until_ready "${pid[$1]}" "${port[$1]}" "$run_dir/$1.log"; }

start_instance a
start_instance b
wait_ready a
wait_ready b
duration=$((settle * 4 + restart_delay + 60))
"$python" scripts/latency.py --bootstrap "$bootstrap" commits --group "$prefix" \
    --topic "$prefix.events.browse" --partitions "$partitions" --duration "$duration" > "$run_dir/commits.txt" &
background+=($!)
"$python" scripts/latency.py --bootstrap "$bootstrap" run --browse-topic "$prefix.events.browse" \
    --profiles-topic "$prefix.profiles.updates" --users "$users" --rate "$rate" --duration "$duration" \
    --warmup 0 > "$run_dir/load.json" 2> "$run_dir/load.log" &
load_pid=$!
background+=("$load_pid")
sleep "$settle"

episodes=()
episode_start=$(now_ms)
kill -KILL "${pid[b]}"
wait "${pid[b]}" 2>/dev/null || true
sleep "$restart_delay"
restarted=$(now_ms)
start_instance b
wait_ready b
sleep "$settle"
episodes+=("kill -9 of b, restarted ${restart_delay}s later:$episode_start:$restarted:$(now_ms)")

episode_start=$(now_ms)
for instance in a b; do
    kill -TERM "${pid[$instance]}"
    wait "${pid[$instance]}" 2>/dev/null || true
    restarted=$(now_ms)
    start_instance "$instance"
    wait_ready "$instance"
    sleep "$settle"
done
episodes+=("rolling restart of a then b (SIGTERM, start):$episode_start:$restarted:$(now_ms)")

wait "$load_pid" || { echo "the load failed:"; tail -5 "$run_dir/load.log"; exit 1; }
"$python" - "$run_dir/commits.txt" "$partitions" "${episodes[@]}" <<'PY'
import sys
commits = [tuple(map(int, line.split())) for line in open(sys.argv[1]) if line.strip()]
partitions = int(sys.argv[2])
for episode in sys.argv[3:]:
    name, start, restarted, end = episode.rsplit(":", 3)
    start, restarted, end = int(start), int(restarted), int(end)
    print(f"== {name}")
    recovered = []
    for p in range(partitions):
        times = [t for t, partition, _ in commits if partition == p]
        before = [t for t in times if t <= start]
        during = [t for t in times if start < t <= end]
        points = before[-1:] + during
        gaps = [(b - a, a, b) for a, b in zip(points, points[1:])]
        gap, _, resumed = max(gaps, default=(end - (points[-1] if points else start), 0, end))
        # The first commit after the last restart ends this partition's stop,
        # if it stopped across the restart.
        stopped_at_restart = any(a <= restarted < b for _, a, b in gaps)
        after = [b for _, a, b in gaps if a <= restarted < b]
        recovered.append(after[0] - restarted if stopped_at_restart else 0)
        stops = sum(1 for g, _, _ in gaps if g > 1000)
        print(f"partition {p}: longest time without a commit {gap / 1000:.1f} s; "
              f"{stops} stops over 1 s; {len(during)} commits in the episode")
    print(f"every partition committing again {max(recovered) / 1000:.1f} s after the last restart")
PY
tail -1 "$run_dir/load.log"
