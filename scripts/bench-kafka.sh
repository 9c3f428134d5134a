#!/usr/bin/env bash
# Kafka benchmark against a real broker process (tansu, in-memory storage) on 127.0.0.1. Prints:
#  - `simulate --max` throughput (events/s into the topic);
#  - `archive` write rate (events/s and MB/s of Parquet);
#  - `run` fed from Kafka (-w 2) against `run` over the same events from the CSV, in one sitting;
#  - freshness: from a message being produced to the store committing the first boundary after
#    its event, p50 and p99, at a steady 10 k and 100 k events/s (`simulate --rate --stamp-now`,
#    `run --lateness 0m`, 1 min steps).
# Usage: [PART=all|throughput|freshness] scripts/bench-kafka.sh [EVENTS]   (default 7000000, enough for 70 s at 100 k/s; CARTFLOW, TANSU as in e2e-kafka.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
EVENTS=${1:-7000000}
# shellcheck source=lib/broker.sh
source scripts/lib/broker.sh
say() { echo "== bench-kafka: $*"; }
# Runs a command, printing its wall time, CPU time and peak RSS (GNU time).
timed() { /usr/bin/time -f "   wall %e s, user %U s, sys %S s, peak RSS %M kB" "$@"; }

start_broker user-events fresh-10000 fresh-100000
"$BIN" generate --out "$WORK/data" --events "$EVENTS" --quiet
say "$EVENTS generated events, tansu $("$TANSU" --version | awk '{print $2}'), $(nproc) cores"

if [ "${PART:-all}" != freshness ]; then
say "simulate --max"
timed "$BIN" --log warn simulate --input "$WORK/data/events.csv" --brokers "$BROKERS" --max --quiet

say "archive (Kafka → Parquet)"
timed "$BIN" --log warn archive --brokers "$BROKERS" --root "$WORK/archive" --exit-at-end --quiet
du -sh "$WORK/archive/raw/events" | awk '{print "   archive size " $1}'

say "run -w 2 from Kafka (the backlog in 4 h catch-up steps, its tail in 1 min steps)"
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
fi

# Freshness on the wall clock: events are stamped with the moment they are sent (a live tracker)
# at a steady rate (10 k/s for 190 s, 100 k/s for 70 s) while run reads them live with 1 min steps
# and no lateness. An event
# is visible once the boundary after its minute is committed, so ~30 s (half a step) of the
# figure is the step itself; "after its minute" is the engine's own part.
[ "${PART:-all}" = throughput ] && exit 0
for rate in 10000 100000; do
    seconds=$([ "$rate" = 10000 ] && echo 190 || echo 70)
    say "freshness at $rate events/s (simulate --rate $rate --stamp-now, $seconds s)"
    "$BIN" --log warn run --brokers "$BROKERS" --topic "fresh-$rate" -w 2 --lateness 0m --idle-timeout 5s \
        --step 1m --catch-up-step 1m --db "$WORK/fresh-$rate.db" --commit-log "$WORK/commits-$rate.csv" --quiet &
    run_pid=$!
    pids+=("$run_pid")
    sleep 2
    head -n $((rate * seconds + 1)) "$WORK/data/events.csv" >"$WORK/fresh-input.csv"
    "$BIN" --log warn simulate --input "$WORK/fresh-input.csv" --brokers "$BROKERS" --topic "fresh-$rate" \
        --rate "$rate" --stamp-now --sent-log "$WORK/sent-$rate.csv" --quiet
    sleep 15
    kill -9 "$run_pid"; wait "$run_pid" 2>/dev/null || true
    python3 - "$WORK/sent-$rate.csv" "$WORK/commits-$rate.csv" <<'PY'
import bisect, sys
sent = [tuple(map(int, l.split(","))) for l in open(sys.argv[1])]
commits = [tuple(map(int, l.split(","))) for l in open(sys.argv[2])]
frontiers = [f for f, _ in commits]
lags, engine = [], []
for t, sent_ms in sent:
    i = bisect.bisect_right(frontiers, t)  # the first boundary after the event
    if i < len(commits):
        lags.append(commits[i][1] - sent_ms)
        engine.append(commits[i][1] - commits[i][0] * 1000)
if not lags:
    sys.exit("no event became visible")
def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]
rate = len(sent) * 100 / max(1, (sent[-1][1] - sent[0][1]) / 1000)
print(f"   sent {len(sent) * 100} events at {rate:.0f}/s; {len(lags)} of {len(sent)} sampled events visible")
print(f"   produced → visible in the store: p50 {pct(lags, 0.5)} ms, p99 {pct(lags, 0.99)} ms")
print(f"   end of the event's minute → committed: p50 {pct(engine, 0.5)} ms, p99 {pct(engine, 0.99)} ms")
ends = [c - f * 1000 for f, c in commits if f * 1000 > sent[0][1]]
print(f"   each boundary committed after its minute ended (ms): {ends}")
PY
done
