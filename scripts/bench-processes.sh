#!/usr/bin/env bash
# One run from Kafka as one process or as two, against a real broker process (tansu, in-memory
# storage) on 127.0.0.1, in one sitting: the same EVENTS generated events in a topic of 4
# partitions, read to the end (`--exit-at-end`, the backlog in 4 h catch-up steps) by
#   -n 1 -w 1, -n 1 -w 2, and -n 2 -w 1 (two processes of one worker, timely's cluster over TCP);
# prints wall time, events/s and each process's peak RSS, and checks every store equals `batch`.
# On one machine two processes cost what their exchange over TCP and the gossip cost against two
# threads of one process; across machines they add cores and memory.
# Usage: scripts/bench-processes.sh [EVENTS]   (default 2000000; CARTFLOW, TANSU as in e2e-kafka.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
EVENTS=${1:-2000000}
# shellcheck source=lib/broker.sh
source scripts/lib/broker.sh
say() { echo "== bench-processes: $*"; }

start_broker user-events
"$BIN" --log warn generate --out "$WORK/data" --events "$EVENTS" --quiet
"$BIN" --log warn simulate --input "$WORK/data/events.csv" --brokers "$BROKERS" --max --quiet
"$BIN" --log warn batch --input "$WORK/data/events.csv" --profiles "$WORK/data/users.csv" --db "$WORK/batch.db" \
    --quiet
say "$EVENTS events in 4 partitions, tansu $("$TANSU" --version | awk '{print $2}'), $(nproc) cores"
host_file "$WORK/hosts" 2

# run_config NAME PROCESSES WORKERS: runs every process (process 0 in the foreground), timing each.
run_config() {
    local name=$1 processes=$2 workers=$3 start end p followers=()
    local common=(run --brokers "$BROKERS" --exit-at-end -w "$workers" --profiles "$WORK/data/users.csv"
        --db "$WORK/$name.db" --group "$name" --quiet -n "$processes" --hostfile "$WORK/hosts")
    start=$(date +%s.%N)
    for ((p = processes - 1; p >= 1; p--)); do
        /usr/bin/time -f "%M" -o "$WORK/$name.rss.$p" "$BIN" --log warn "${common[@]}" -p "$p" 2>"$WORK/$name.$p.log" &
        followers+=($!)
        pids+=($!)
    done
    /usr/bin/time -f "%M" -o "$WORK/$name.rss.0" "$BIN" --log warn "${common[@]}" -p 0 2>"$WORK/$name.0.log"
    for p in "${followers[@]}"; do wait "$p"; done
    end=$(date +%s.%N)
    python3 - "$name" "$EVENTS" "$start" "$end" "$WORK" "$processes" <<'PY'
import sys
name, events, start, end, work, processes = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), sys.argv[5], int(sys.argv[6])
rss = [int(open(f"{work}/{name}.rss.{p}").read().split()[-1]) / 1e6 for p in range(processes)]
wall = end - start
print(f"   {name}: {wall:.1f} s, {events / wall / 1e3:.0f} k events/s, peak RSS " + " + ".join(f"{r:.2f}" for r in rss) + " GB")
PY
    python3 scripts/compare-stores.py "$WORK/batch.db" "$WORK/$name.db" | tail -n 1 | sed 's/^/   /'
}

run_config n1-w1 1 1
run_config n1-w2 1 2
run_config n2-w1 2 1
say "done"
