#!/usr/bin/env bash
# A broker outage against a real broker process (tansu) on 127.0.0.1: while `simulate` streams
# EVENTS events at RATE/s and `run` (live, -w 2, --serve) reads them, the broker goes away for
# OUTAGE seconds. MODE `restart` (the default) kills it (SIGKILL) and starts it again on the same
# storage (an S3 bucket served by moto, see lib/broker.sh), as a crashed Kafka broker restarts on
# its disks; MODE `freeze` stops it (SIGSTOP) and resumes it (SIGCONT), a hung broker. Nothing may
# be lost: the producer's retries deliver every event once (idempotent), the run catches up, and
# after the stream a bounded `run --exit-at-end` equals `batch`; the live run's /metrics and log
# show the outage.
# The stream runs ~5,000 times faster than its event time, so the live run's lateness is scaled
# to two hours: with 10 minutes, the partitions' skew when the broker resumes (a tenth of a second of
# real time) would make events late. Nothing is lost: the bounded replay after the stream must
# equal `batch`, which a lost or duplicated delivery would break.
# Usage: scripts/broker-outage.sh [EVENTS] [RATE] [OUTAGE] [MODE]   (defaults 300000 10000 30 restart)
set -euo pipefail
cd "$(dirname "$0")/.."
EVENTS=${1:-300000}
RATE=${2:-10000}
OUTAGE=${3:-30}
MODE=${4:-restart}
case "$MODE" in
    restart) export BROKER_STORAGE=s3 ;;
    freeze) ;;
    *) echo "MODE is restart or freeze, not $MODE"; exit 2 ;;
esac
# shellcheck source=lib/broker.sh
source scripts/lib/broker.sh
say() { echo "== broker-outage ($MODE): $*"; }
start_broker user-events
"$BIN" --log warn generate --out "$WORK/data" --events "$EVENTS" --days 2 --quiet
say "tansu on $BROKERS; $EVENTS events at $RATE/s; the broker goes away for ${OUTAGE}s"
"$BIN" --log warn simulate --input "$WORK/data/events.csv" --brokers "$BROKERS" --rate "$RATE" --quiet \
    2>"$WORK/simulate.log" &
simulate_pid=$!
pids+=("$simulate_pid")
port=$(free_port)
"$BIN" --log info run --brokers "$BROKERS" -w 2 --profiles "$WORK/data/users.csv" --db "$WORK/live.db" \
    --idle-timeout 5s --lateness 2h --serve "127.0.0.1:$port" --quiet 2>"$WORK/run.log" &
run_pid=$!
pids+=("$run_pid")
metric() { { curl -sf "http://127.0.0.1:$port/metrics" || true; } | awk -v m="$1" '$1 == m {print $2}'; }
sleep 8
before=$(metric cartflow_events_in_total)
[ -n "$before" ] || { echo "the live run does not answer /metrics"; tail -5 "$WORK/run.log"; exit 1; }
if [ "$MODE" = restart ]; then
    kill -KILL "$broker_pid"
    wait "$broker_pid" 2>/dev/null || true
    say "broker killed at $before events in"
else
    kill -STOP "$broker_pid"
    say "broker frozen at $before events in"
fi
sleep "$OUTAGE"
during=$(metric cartflow_events_in_total)
if [ "$MODE" = restart ]; then
    broker_up
    say "broker restarted; events in during the outage: $before -> $during"
else
    kill -CONT "$broker_pid"
    say "broker resumed; events in during the outage: $before -> $during"
fi
wait "$simulate_pid"
grep -E "delivered|failed" "$WORK/simulate.log" | tail -1 || true
# The live run catches up with what the broker held back.
sleep 10
after=$(metric cartflow_events_in_total)
late=$(metric cartflow_late_events_total)
say "events in after the stream: $after, late $late (the last hours wait for the frontier); the log:"
echo "   librdkafka lines in the run log: $(grep -ciE "librdkafka|timed out|disconnect" "$WORK/run.log" || true)"
grep -iE "librdkafka" "$WORK/run.log" | head -3 | sed 's/^/   /' || true
# The run's own account: the broker stopped answering, and answered again.
grep -E "does not answer|answers again" "$WORK/run.log" | head -4 | sed 's/^/   /' || true
kill "$run_pid" 2>/dev/null || true
wait "$run_pid" 2>/dev/null || true
grep -q "the broker does not answer" "$WORK/run.log" || { echo "the run did not log the outage"; exit 1; }
grep -q "the broker answers again" "$WORK/run.log" || { echo "the run did not log the broker's return"; exit 1; }
[ "$after" -gt "$during" ] || { echo "the live run did not resume reading ($during -> $after)"; exit 1; }
[ "$late" = 0 ] || { echo "$late events were late after the outage"; exit 1; }
"$BIN" --log warn run --brokers "$BROKERS" -w 2 --profiles "$WORK/data/users.csv" --db "$WORK/replay.db" \
    --exit-at-end --quiet
"$BIN" --log warn batch --input "$WORK/data/events.csv" --profiles "$WORK/data/users.csv" --db "$WORK/batch.db" --quiet
python3 scripts/compare-stores.py "$WORK/batch.db" "$WORK/replay.db"
say "passed: every event arrived once"
