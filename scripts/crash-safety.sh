#!/usr/bin/env bash
# Crash safety against a real broker process (tansu, in-memory storage) on 127.0.0.1:
#   a stream of EVENTS generated events goes into the topic at a steady rate; meanwhile
#   - `archive` is SIGKILLed at KILLS random moments and restarted each time;
#   - `run --bootstrap <archive>` (live, -w 2, one-minute steps) is SIGKILLed at KILLS random
#     moments and restarted each time, bootstrapping from an archive that is itself being written
#     and killed;
#   at the end the archive is completed and a last `run --bootstrap --exit-at-end` reads to the end
#   of the topic. Its store must equal `batch` on the same events, table by table, and the archive
#   must hold every offset exactly once (DuckDB). A reader polls the store every 200 ms through the
#   whole sitting and never sees an empty table or a frontier that went back (SPEC §7).
# Usage: scripts/crash-safety.sh [EVENTS] [KILLS] [RATE]   (defaults 1000000 10 20000; SEED=n
#        repeats a sitting's random moments; CARTFLOW, TANSU as in e2e-kafka.sh). CI runs a short
#        sitting: 150000 events, 3 kills each.
#        CHECKPOINTS=1: every `run` also takes checkpoints (`--checkpoint-dir`, one at every boundary on
#        boundary, so kills land while one is written too) and continues from them; the
#        last restart of the loop is stopped with SIGTERM (it must checkpoint and exit 0), and at
#        least one restart must have continued from a checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
EVENTS=${1:-1000000}
KILLS=${2:-10}
RATE=${3:-20000}
SEED=${SEED:-$$}
RANDOM=$SEED
# shellcheck source=lib/broker.sh
source scripts/lib/broker.sh
say() { echo "== crash-safety: $*"; }
# A random whole number of tenths of a second from $1 to $2 seconds.
pause() { awk -v a="$1" -v b="$2" -v r="$RANDOM" 'BEGIN { printf "%.1f", a + (b - a) * r / 32767 }'; }
frontier() {
    python3 -c "
import sqlite3; c = sqlite3.connect('file:$1?mode=ro', uri=True)
print(c.execute(\"SELECT value FROM pipeline_state WHERE key = 'frontier'\").fetchone()[0])" 2>/dev/null || echo none
}

say "tansu on $BROKERS, $EVENTS events at $RATE/s, $KILLS kills of archive and of run, seed $SEED"
start_broker user-events
# ARCHIVE_STORE=s3: the archive on S3 (moto's server, the bucket cartflow-archive), read back by
# DuckDB's httpfs (DUCKDB_HTTPFS_PYTHON: a Python whose duckdb loads it, see .ci/run).
ROOT=$WORK/archive
CHECK_PYTHON=python3
if [ "${ARCHIVE_STORE:-local}" = s3 ]; then
    [ -n "${AWS_ENDPOINT:-}" ] || start_storage
    python3 -c 'import boto3, os
boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT"]).create_bucket(
    Bucket="cartflow-archive", CreateBucketConfiguration={"LocationConstraint": os.environ["AWS_DEFAULT_REGION"]})'
    ROOT=s3://cartflow-archive/shop/history
    CHECK_PYTHON=${DUCKDB_HTTPFS_PYTHON:?"set DUCKDB_HTTPFS_PYTHON to a Python with duckdb and duckdb-extension-httpfs of one version"}
fi
say "the archive at $ROOT"
"$BIN" --log warn generate --out "$WORK/data" --events "$EVENTS" --days 3 --quiet
EVENTS_CSV=$WORK/data/events.csv
PROFILES=$WORK/data/users.csv
stream_seconds=$((EVENTS / RATE))

"$BIN" --log warn simulate --input "$EVENTS_CSV" --brokers "$BROKERS" --rate "$RATE" --quiet &
simulate_pid=$!
pids+=("$simulate_pid")

# The archive: killed KILLS times at random moments over the stream, restarted each time.
(
    for i in $(seq "$KILLS"); do
        "$BIN" --log warn archive --brokers "$BROKERS" --root "$ROOT" --batch-events 20000 \
            --flush-interval 2s --quiet &
        pid=$!
        sleep "$(pause 1 $((2 * stream_seconds / KILLS)))"
        kill -9 "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        echo "   archive killed ($i/$KILLS)"
    done
) &
archive_loop=$!
pids+=("$archive_loop")

# A reader of the store through every kill and restart (scripts/lib/poll_store.py).
python3 scripts/lib/poll_store.py "$WORK/live.db" "$WORK/stop-reader" 0.2 > "$WORK/reader.log" 2>&1 &
reader_pid=$!
pids+=("$reader_pid")

# The engine: killed KILLS times, each time after a random while, restarted from the archive
# (or from its newest checkpoint).
checkpointing=()
if [ "${CHECKPOINTS:-0}" = 1 ]; then
    checkpointing=(--checkpoint-dir "$WORK/checkpoints" --checkpoint-every 0)
fi
for i in $(seq "$KILLS"); do
    "$BIN" --log info run --brokers "$BROKERS" --bootstrap "$ROOT" -w 2 --profiles "$PROFILES" \
        --db "$WORK/live.db" --idle-timeout 5s --quiet "${checkpointing[@]}" >> "$WORK/run.log" 2>&1 &
    pid=$!
    pids+=("$pid")
    sleep "$(pause 2 $((2 * stream_seconds / KILLS + 2)))"
    if [ "${CHECKPOINTS:-0}" = 1 ] && [ "$i" = "$KILLS" ]; then
        # systemd's stop: a checkpoint at once, then exit 0.
        kill -TERM "$pid" 2>/dev/null || true
        stopped=0
        wait "$pid" || stopped=$?
        if [ "$stopped" -ne 0 ] || ! grep -q "stopped (SIGTERM) after the checkpoint" "$WORK/run.log"; then
            say "FAILED: run did not checkpoint and exit 0 on SIGTERM (exit $stopped)"
            tail -20 "$WORK/run.log"
            exit 1
        fi
        echo "   run stopped by SIGTERM ($i/$KILLS) at frontier $(frontier "$WORK/live.db")"
        continue
    fi
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    echo "   run killed ($i/$KILLS) at frontier $(frontier "$WORK/live.db")"
done
wait "$archive_loop"
wait "$simulate_pid"
say "the stream is in; the archive completes, then run --bootstrap reads to the end of the topic"
"$BIN" --log warn archive --brokers "$BROKERS" --root "$ROOT" --exit-at-end --quiet
"$BIN" --log warn run --brokers "$BROKERS" --bootstrap "$ROOT" -w 2 --profiles "$PROFILES" \
    --db "$WORK/live.db" --exit-at-end --quiet "${checkpointing[@]}" --log info >> "$WORK/run.log" 2>&1
if [ "${CHECKPOINTS:-0}" = 1 ]; then
    resumed=$(grep -c "continuing from the checkpoint" "$WORK/run.log" || true)
    taken=$(grep -c "written to .*checkpoint-" "$WORK/run.log" || true)
    echo "   $taken checkpoint(s) written, $resumed restart(s) continued from one"
    grep -h "is not used:" "$WORK/run.log" | sed 's/^/   /' | tail -5 || true
    if [ "$resumed" -lt 1 ]; then
        say "FAILED: no restart continued from a checkpoint"
        exit 1
    fi
fi
touch "$WORK/stop-reader"
reader_ok=0
wait "$reader_pid" || reader_ok=$?
sed 's/^/   /' "$WORK/reader.log"
if [ "$reader_ok" -ne 0 ]; then
    say "FAILED: a reader saw the store empty or rewound"
    exit 1
fi
"$BIN" --log warn batch --input "$EVENTS_CSV" --profiles "$PROFILES" --db "$WORK/batch.db" --quiet
python3 scripts/compare-stores.py "$WORK/batch.db" "$WORK/live.db"
"$CHECK_PYTHON" scripts/check-archive.py "$ROOT" "$WORK/batch.db"
say "passed (seed $SEED)"
