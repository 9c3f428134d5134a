#!/usr/bin/env bash
# Kafka benchmark against a real broker process (tansu, in-memory storage) on 127.0.0.1. Prints:
#  - `simulate --max` throughput (events/s into the topic);
#  - `archive` write rate (events/s and MB/s of Parquet);
#  - `run` fed from Kafka (-w 2) against `run` over the same events from the CSV, in one sitting;
#  - freshness: from a message being produced to its realtime window in the store reflecting it
#    (the live edge passing it), and to the exact tables (the frontier), p50 and p99, at a steady
#    10 k and 100 k events/s for FRESH_SECONDS (default 180) each (`simulate --rate --stamp-now`,
#    `run` with the default lateness and steps), with the run's RSS every 10 s.
# Usage: [PART=all|throughput|freshness] [FRESH_SECONDS=180] [FRESH_RATES="10000 100000"] [RUN_ARGS="--lateness 1m ..."] scripts/bench-kafka.sh [EVENTS]   (default 7000000, enough for 70 s at 100 k/s; CARTFLOW, TANSU as in e2e-kafka.sh)
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
# at a steady rate (10 k/s and 100 k/s, FRESH_SECONDS each, default 180) while run reads them live
# with the defaults (10 min lateness, 1 min steps). An event is visible in `realtime_window` once
# the realtime windows are committed at a live edge past it (written about once a second); the
# exact tables follow at the frontier, the lateness plus up to a step behind.
[ "${PART:-all}" = throughput ] && exit 0
seconds=${FRESH_SECONDS:-180}
for rate in ${FRESH_RATES:-10000 100000}; do
    say "freshness at $rate events/s (simulate --rate $rate --stamp-now, $seconds s; run with the default lateness and steps)"
    "$BIN" --log warn run --brokers "$BROKERS" --topic "fresh-$rate" -w 2 --idle-timeout 5s \
        --db "$WORK/fresh-$rate.db" --commit-log "$WORK/commits-$rate.csv" --quiet ${RUN_ARGS:-} &
    run_pid=$!
    pids+=("$run_pid")
    sleep 2
    # The generated rows, repeated as needed (their times are replaced by the clock's).
    needed=$((rate * seconds))
    { head -n 1 "$WORK/data/events.csv"
      for _ in $(seq $((needed / EVENTS + 1))); do tail -n +2 "$WORK/data/events.csv"; done | head -n "$needed" || true
    } >"$WORK/fresh-input.csv"
    # The run's resident memory, every 10 s.
    ( while kill -0 "$run_pid" 2>/dev/null; do
        awk '/VmRSS/ {printf "%d ", $2 / 1024}' "/proc/$run_pid/status" 2>/dev/null; sleep 10
      done ) >"$WORK/rss-$rate.txt" &
    "$BIN" --log warn simulate --input "$WORK/fresh-input.csv" --brokers "$BROKERS" --topic "fresh-$rate" \
        --rate "$rate" --stamp-now --sent-log "$WORK/sent-$rate.csv" --quiet
    sleep 5
    kill -9 "$run_pid"; wait "$run_pid" 2>/dev/null || true
    echo "   run RSS every 10 s (MiB): $(cat "$WORK/rss-$rate.txt")"
    python3 - "$WORK/sent-$rate.csv" "$WORK/commits-$rate.csv" <<'PY'
import bisect, sys
sent = [tuple(map(int, l.split(","))) for l in open(sys.argv[1])]
commits = {"live_edge": [], "frontier": []}
for line in open(sys.argv[2]):
    key, time, ms = line.strip().split(",")
    commits[key].append((int(time), int(ms)))
def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]
rate = len(sent) * 100 / max(1, (sent[-1][1] - sent[0][1]) / 1000)
print(f"   sent {len(sent) * 100} events at {rate:.0f}/s")
for key, what in [("live_edge", "realtime windows (live edge)"), ("frontier", "exact tables (frontier)")]:
    log = commits[key]
    times = [t for t, _ in log]
    lags = []
    for t, sent_ms in sent:
        i = bisect.bisect_right(times, t)  # the first commit past the event
        if i < len(log):
            lags.append(log[i][1] - sent_ms)
    if not lags:
        print(f"   {what}: no sampled event became visible in the sitting")
        continue
    print(f"   produced → visible in the {what}: p50 {pct(lags, 0.5)} ms, p99 {pct(lags, 0.99)} ms "
          f"({len(lags)} of {len(sent)} sampled events; {len(log)} commits)")
live = commits["live_edge"]
gaps = [b[1] - a[1] for a, b in zip(live, live[1:])]
if gaps:
    print(f"   live writes every p50 {pct(gaps, 0.5)} ms, p99 {pct(gaps, 0.99)} ms, max {max(gaps)} ms")
# Whether the run kept up: the live edge's lag behind the clock through the sitting.
if live:
    t0 = live[0][1]
    marks, last = [], None
    for time, ms in live:
        second = (ms - t0) // 30000
        if second != last:
            marks.append(f"{(ms - t0) // 1000}s: {ms / 1000 - time:.1f}")
            last = second
    print("   live edge behind the clock (s), every 30 s: " + ", ".join(marks))
PY
done
