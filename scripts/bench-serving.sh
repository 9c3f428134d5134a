#!/usr/bin/env bash
# Serving benchmark, one sitting on this machine:
#  - the store writer: `run -w 2 --step 1m` (live-sized boundaries) over the same events into SQLite
#    and into HBase through the Thrift1 client, against `cartflow hbase-stand-in` in a separate
#    process (the stand-in is in memory: this measures cartflow's side of the wire, not HBase);
#    wall time, peak RSS, boundaries, and the writer's time from the run's log;
#  - the HTTP API over the SQLite store: latency of typical dashboard requests (p50, p99 of 200
#    sequential requests each) and of a whole dashboard refresh.
# Usage: scripts/bench-serving.sh [EVENTS]   (default 1000000; CARTFLOW=path/to/cartflow)
set -euo pipefail
cd "$(dirname "$0")/.."
EVENTS=${1:-1000000}
BIN=${CARTFLOW:-${CARGO_TARGET_DIR:-target}/release/cartflow}
WORK=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT
say() { echo "== bench-serving: $*"; }
timed() { /usr/bin/time -f "   wall %e s, user %U s, sys %S s, peak RSS %M kB" "$@"; }
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

"$BIN" --log warn generate --out "$WORK/data" --events "$EVENTS" --days 3 --quiet
say "$EVENTS generated events over 3 days, $(nproc) cores"

say "run -w 2 --step 1m into SQLite"
timed "$BIN" --log info run --input "$WORK/data/events.csv" --profiles "$WORK/data/users.csv" -w 2 --step 1m \
    --db "$WORK/sqlite.db" --quiet 2>&1 | grep -E "applied|writer|wall" | sed 's/^.*INFO[^ ]* /   /'

hbase_port=$(free_port)
"$BIN" --log warn hbase-stand-in --listen "127.0.0.1:$hbase_port" --init --namespace bench >/dev/null &
pids+=($!)
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$hbase_port") 2>/dev/null && break; sleep 0.1; done
sleep 0.5
say "run -w 2 --step 1m into HBase (Thrift1, buffered binary) at the stand-in"
timed "$BIN" --log info run --input "$WORK/data/events.csv" --profiles "$WORK/data/users.csv" -w 2 --step 1m \
    --store "hbase://127.0.0.1:$hbase_port?namespace=bench" --quiet 2>&1 | grep -E "applied|writer|wall" | sed 's/^.*INFO[^ ]* /   /'

http_port=$(free_port)
"$BIN" --log warn serve --db "$WORK/sqlite.db" --listen "127.0.0.1:$http_port" >/dev/null &
pids+=($!)
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$http_port") 2>/dev/null && break; sleep 0.1; done
say "HTTP API over the SQLite store (200 sequential requests each)"
python3 - "http://127.0.0.1:$http_port" <<'PY'
import json, sys, time, urllib.request
base = sys.argv[1]
def get(path):
    with urllib.request.urlopen(base + path) as r:
        return r.read()
def measure(label, paths):
    times = []
    for _ in range(200):
        started = time.perf_counter()
        size = sum(len(get(p)) for p in paths)
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    print(f"   {label:<58} p50 {times[100]:6.1f} ms  p99 {times[198]:6.1f} ms  ({size / 1024:.0f} KiB)")
measure("/health", ["/health"])
measure("/metrics", ["/metrics"])
measure("realtime_window, the last 120 closed windows", ["/api/tables/realtime_window?final=1&order=desc&limit=120"])
measure("funnel by brand, current (every brand)", ["/api/tables/funnel?snapshot=current&dimension=brand&limit=100000"])
measure("brand_performance, latest day, all ages", ["/api/tables/brand_performance?snapshot=latest&segment=*&limit=100000"])
dashboard = [
    "/api/state", "/api/snapshots", "/api/tables/realtime_window?final=1&order=desc&limit=120",
    "/api/tables/funnel?snapshot=current&dimension=category&sort=users_viewed&order=desc&limit=15",
    "/api/tables/recommendation?snapshot=current&rank=1&limit=100000",
    "/api/tables/recommendation?snapshot=current&segment=*/*",
    "/api/tables/brand_performance?snapshot=current&brand_rank=1&limit=1000",
    "/api/tables/brand_performance?snapshot=current&segment=*&sort=brand_rank&limit=15",
]
last = json.loads(get("/api/tables/realtime_window?final=1&order=desc&limit=1"))["rows"][0]["window_start"]
dashboard += [f"/api/tables/realtime_top_product?window_start={last}", f"/api/tables/realtime_top_brand?window_start={last}"]
measure("a whole dashboard refresh (its 10 requests, one after another)", dashboard)
PY
