#!/usr/bin/env bash
# `archive` to S3 against `archive` to a local disk, in one sitting: tansu holds EVENTS generated
# events (4 partitions); then PAIRS times in turn, `archive --exit-at-end` archives the whole topic
# into a fresh local directory, and into a fresh prefix of a bucket on moto's S3 server (on this
# machine too, so this measures cartflow's S3 path and the protocol, not a network). Each run's
# wall time, events/s, CPU and peak RSS (GNU time), and the S3/local ratio of each pair.
# Usage: [PAIRS=3] scripts/bench-archive.sh [EVENTS]   (default 1000000; CARTFLOW, TANSU as in
# e2e-kafka.sh; needs moto[server] and boto3)
set -euo pipefail
cd "$(dirname "$0")/.."
EVENTS=${1:-1000000}
PAIRS=${PAIRS:-3}
# shellcheck source=lib/broker.sh
source scripts/lib/broker.sh
say() { echo "== bench-archive: $*"; }

start_storage
python3 -c 'import boto3, os
boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT"]).create_bucket(
    Bucket="cartflow-bench", CreateBucketConfiguration={"LocationConstraint": os.environ["AWS_DEFAULT_REGION"]})'
start_broker user-events
"$BIN" --log warn generate --out "$WORK/data" --events "$EVENTS" --days 2 --quiet
"$BIN" --log warn simulate --input "$WORK/data/events.csv" --brokers "$BROKERS" --max --quiet
say "$EVENTS events in tansu (4 partitions); $PAIRS pairs, local disk then S3 (moto at $AWS_ENDPOINT)"

# once NAME ROOT: archives the whole topic into ROOT; prints "NAME wall_s events_per_s cpu_s rss_mib".
once() {
    local name=$1 root=$2
    /usr/bin/time -f '%e %U %S %M' -o "$WORK/time" "$BIN" --log warn archive --brokers "$BROKERS" --root "$root" \
        --exit-at-end --quiet >"$WORK/$name.log" 2>&1 || {
        cat "$WORK/$name.log" >&2
        exit 1
    }
    read -r wall user sys rss <"$WORK/time"
    awk -v n="$name" -v w="$wall" -v u="$user" -v s="$sys" -v r="$rss" -v e="$EVENTS" \
        'BEGIN { printf "%s %.2f %.0f %.2f %.0f\n", n, w, e / w, u + s, r / 1024 }'
}
printf '%-6s %8s %10s %7s %8s\n' run wall_s events/s cpu_s rss_mib
ratios=()
for i in $(seq "$PAIRS"); do
    rm -rf "$WORK/local"
    line=$(once local "$WORK/local") || exit 1
    read -r _ lw lrate lcpu lrss <<<"$line"
    line=$(once s3 "s3://cartflow-bench/run-$i") || exit 1
    read -r _ sw srate scpu srss <<<"$line"
    printf '%-6s %8s %10s %7s %8s\n' "local" "$lw" "$lrate" "$lcpu" "$lrss" "s3" "$sw" "$srate" "$scpu" "$srss"
    ratios+=("$(awk -v a="$sw" -v b="$lw" 'BEGIN { printf "%.2f", a / b }')")
done
say "wall time S3/local, pair by pair: ${ratios[*]}"
# Every offset once on S3 too (the last run's prefix), as on disk.
python3 - "$WORK/local" <<'EOF'
import sys, pathlib
files = list(pathlib.Path(sys.argv[1], "raw/events").rglob("*.parquet"))
print(f"local: {len(files)} files, {sum(f.stat().st_size for f in files) / 1e6:.1f} MB")
EOF
python3 - "$PAIRS" <<'EOF'
import boto3, os, sys
s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT"])
keys = [o for page in s3.get_paginator("list_objects_v2").paginate(Bucket="cartflow-bench", Prefix=f"run-{sys.argv[1]}/raw/events/")
        for o in page.get("Contents", [])]
print(f"s3:    {len(keys)} files, {sum(o['Size'] for o in keys) / 1e6:.1f} MB")
EOF
