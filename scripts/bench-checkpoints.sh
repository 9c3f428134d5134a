#!/usr/bin/env bash
# Checkpoints against a bootstrap, in one sitting, on December-like data from Kafka (tansu,
# in-memory storage, 127.0.0.1):
#   1. `run --exit-at-end -w 2` reads the whole topic from the beginning (a bootstrap): its time;
#   2. the same, live, with `--checkpoint-dir --checkpoint-every EVERY`, stopped with SIGTERM (it
#      takes a checkpoint and exits) once it has read the topic: each checkpoint's size, how long
#      the boundary's step waited (for the store, the workers and the fork) and how long the child
#      took to write it (from its log);
#   3. a restart of 2 from its newest checkpoint to the same end frontier as 1: its time, against
#      1's; its store must equal 1's (scripts/compare-stores.py).
# Usage: scripts/bench-checkpoints.sh [EVENTS] [DAYS]   (defaults 30000000 14: two weeks of
#        December-like days, 2.1 M events each; EVERY=60s; CARTFLOW, TANSU as in e2e-kafka.sh)
#        scripts/bench-checkpoints.sh december-2019       (the full December preset: 67.5 M events,
#        4.6 M users, 31 days)
#        LOADED_BROKERS=host:port DATA=dir scripts/bench-checkpoints.sh   (a broker already holding
#        the topic, produced from DATA/events.csv as here: the sitting skips the generation and
#        the production)
# The events are produced zstd-compressed: tansu keeps the batches as they come, and compressed
# they take a sixth of the memory (1 M events: 57 MB against 332 MB), so December fits.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = december-2019 ]; then
    size=(--preset december-2019)
else
    size=(--events "${1:-30000000}" --days "${2:-14}")
fi
EVERY=${EVERY:-60s}
# shellcheck source=lib/broker.sh
source scripts/lib/broker.sh
say() { echo "== bench-checkpoints: $*"; }
# Runs a command, printing its wall time and peak RSS (GNU time).
timed() { /usr/bin/time -o "$WORK/time" -f "   wall %e s, user %U s, sys %S s, peak RSS %M kB" "$@"; cat "$WORK/time"; }
state() {
    python3 - "$1" <<'PY'
import sqlite3, sys
c = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)
print("   " + ", ".join(f"{k} {v}" for k, v in c.execute("SELECT key, value FROM pipeline_state WHERE key IN ('events_applied', 'frontier')")))
PY
}

if [ -n "${LOADED_BROKERS:-}" ]; then
    # A broker that already holds the topic, produced as below (with DATA, the generated files).
    BROKERS=$LOADED_BROKERS
    DATA=${DATA:?DATA: the directory of the events and users the topic holds}
    say "the topic at $BROKERS holds $DATA/events.csv: $(($(wc -l <"$DATA/events.csv") - 1)) events, $(nproc) cores"
else
    DATA=$WORK/data
    start_broker user-events
    "$BIN" generate --out "$DATA" "${size[@]}" --quiet
    say "generated ${size[*]}: $(($(wc -l <"$DATA/events.csv") - 1)) events, tansu $("$TANSU" --version | awk '{print $2}'), $(nproc) cores"
    "$BIN" --log warn simulate --input "$DATA/events.csv" --brokers "$BROKERS" --max --quiet -X compression.type=zstd
fi
common=(run --brokers "$BROKERS" --exit-at-end -w 2 --profiles "$DATA/users.csv" --quiet)

say "1. a bootstrap: run -w 2 from the beginning of the topic, no checkpoints"
timed "$BIN" --log info "${common[@]}" --db "$WORK/bootstrap.db" --group bootstrap 2>"$WORK/bootstrap.log"
state "$WORK/bootstrap.db"
grep -E "kept at the live edge|applied" "$WORK/bootstrap.log" | sed 's/^[^ ]* *INFO /   /' || true

say "2. the same with --checkpoint-dir --checkpoint-every $EVERY, stopped with SIGTERM once it has read the topic"
# Live (no --exit-at-end): once its frontier has reached the bootstrap's less the lateness and 2
# minutes (live, the frontier trails the latest event by the lateness), systemd's stop: a
# checkpoint at the open step, then exit 0.
target=$(python3 -c "import sqlite3; print(sqlite3.connect('file:$WORK/bootstrap.db?mode=ro', uri=True).execute(\"SELECT value FROM pipeline_state WHERE key = 'frontier'\").fetchone()[0])")
started=$(date +%s.%N)
/usr/bin/time -o "$WORK/time" -f "   wall %e s, user %U s, sys %S s, peak RSS %M kB" \
    "$BIN" --log info run --brokers "$BROKERS" -w 2 --profiles "$DATA/users.csv" --quiet --idle-timeout 5s \
    --db "$WORK/checkpointed.db" --group checkpointed --checkpoint-dir "$WORK/checkpoints" --checkpoint-every "$EVERY" \
    2>"$WORK/checkpointed.log" &
run_pid=$!
pids+=("$run_pid")
python3 - "$WORK/checkpointed.db" "$target" <<'PY'
import datetime, sqlite3, sys, time
target = datetime.datetime.fromisoformat(sys.argv[2].replace("Z", "+00:00")) - datetime.timedelta(minutes=12)
while True:
    try:
        c = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)
        row = c.execute("SELECT value FROM pipeline_state WHERE key = 'frontier'").fetchone()
        c.close()
        if row and row[0] and datetime.datetime.fromisoformat(row[0].replace("Z", "+00:00")) >= target:
            break
    except sqlite3.Error:
        pass
    time.sleep(0.5)
PY
caught_up=$(date +%s.%N)
pkill -TERM -P "$run_pid" cartflow || kill -TERM "$run_pid"
wait "$run_pid"
cat "$WORK/time"
echo "   read the topic in $(echo "$caught_up - $started" | bc) s, stopped $(echo "$(date +%s.%N) - $caught_up" | bc) s after SIGTERM"
state "$WORK/checkpointed.db"
grep -E "checkpoint at .*(waited|written to)|stopped" "$WORK/checkpointed.log" | sed 's/^[^ ]* *INFO /   /' || true
du -sh "$WORK/checkpoints"/* | sed 's/^/   /' || true

say "3. a restart of 2 from its newest checkpoint, on to the same end of the topic"
timed "$BIN" --log info "${common[@]}" --db "$WORK/checkpointed.db" --group restarted \
    --checkpoint-dir "$WORK/checkpoints" --checkpoint-every 1h 2>"$WORK/restarted.log"
grep -E "continuing from|resuming at|not used" "$WORK/restarted.log" | sed 's/^[^ ]* *INFO /   /' | cut -c1-200 || true
state "$WORK/checkpointed.db"
python3 scripts/compare-stores.py "$WORK/bootstrap.db" "$WORK/checkpointed.db" | tail -1
