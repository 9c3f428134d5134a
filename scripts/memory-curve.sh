#!/usr/bin/env bash
# Memory over a month: replays `generate --preset december-2019` (67.5 M events, 31 days) through
# `run -w 2` (4 h steps) and samples the process's RSS every 2 s together with the frontier (from
# the run's own /metrics), then prints the peak per event day: the curve must flatten once the
# 7-day window is full. Writes the samples to $DIR/curve.csv.
# Usage: DIR=/path/with/space scripts/memory-curve.sh   (DIR keeps data/ for another sitting;
#        default a temporary directory; ~10 GB of CSV; CARTFLOW=path/to/cartflow)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${CARTFLOW:-${CARGO_TARGET_DIR:-target}/release/cartflow}
DIR=${DIR:-$(mktemp -d)}
mkdir -p "$DIR"
say() { echo "== memory-curve: $*"; }
if [ ! -f "$DIR/data/events.csv" ]; then
    say "generating the december-2019 preset into $DIR/data"
    "$BIN" --log warn generate --preset december-2019 --out "$DIR/data" --quiet
fi
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
rm -f "$DIR/dec.db"*
say "run -w 2 over $(du -h "$DIR/data/events.csv" | cut -f1) of events, sampling RSS and the frontier every 2 s"
"$BIN" --log warn run --input "$DIR/data/events.csv" --profiles "$DIR/data/users.csv" -w 2 --db "$DIR/dec.db" \
    --serve "127.0.0.1:$port" --quiet &
pid=$!
trap 'kill "$pid" 2>/dev/null || true' EXIT
echo "elapsed_s,frontier_unix_s,rss_kb,events_in" >"$DIR/curve.csv"
started=$(date +%s)
while kill -0 "$pid" 2>/dev/null; do
    rss=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo "")
    metrics=$(curl -sf "http://127.0.0.1:$port/metrics" 2>/dev/null || true)
    frontier=$(echo "$metrics" | awk '/^cartflow_frontier_timestamp_seconds / {print $2}')
    events=$(echo "$metrics" | awk '/^cartflow_events_in_total / {print $2}')
    [ -n "$rss" ] && echo "$(($(date +%s) - started)),${frontier:-},$rss,${events:-0}" >>"$DIR/curve.csv"
    sleep 2
done
wait "$pid"
say "done in $(($(date +%s) - started)) s"
python3 - "$DIR/curve.csv" <<'PY'
import csv, sys
from datetime import datetime, timezone
rows = [r for r in csv.DictReader(open(sys.argv[1])) if r["frontier_unix_s"]]
peak_by_day = {}
for r in rows:
    day = datetime.fromtimestamp(int(r["frontier_unix_s"]), timezone.utc).strftime("%Y-%m-%d")
    peak_by_day[day] = max(peak_by_day.get(day, 0), int(r["rss_kb"]))
allpeak = max(int(r["rss_kb"]) for r in csv.DictReader(open(sys.argv[1])))
print(f"   peak RSS {allpeak / 1e6:.2f} GB over {len(rows)} samples; peak RSS by the frontier's day (GB):")
days = sorted(peak_by_day)
for i in range(0, len(days), 8):
    print("   " + "  ".join(f"{d[5:]} {peak_by_day[d] / 1e6:.2f}" for d in days[i:i + 8]))
if len(days) > 13:
    last = days[-13:-1]  # the last day is the end frontier's, just after the final event
    print(f"   over the last 12 days of events: {peak_by_day[last[0]] / 1e6:.2f} -> {peak_by_day[last[-1]] / 1e6:.2f} GB "
          f"({(peak_by_day[last[-1]] - peak_by_day[last[0]]) / 1e6:+.2f} GB)")
PY
