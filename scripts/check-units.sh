#!/usr/bin/env bash
# Checks the systemd units in scripts/systemd/: `systemd-analyze verify` accepts them (when it is
# installed), and each ExecStart, with the variables of cartflow.env filled in, is a command line
# cartflow accepts (it is run with `--help` appended, which clap answers only after every flag
# before it is known).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${CARTFLOW:-${CARGO_TARGET_DIR:-target}/release/cartflow}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
set -a
# shellcheck source=systemd/cartflow.env
source scripts/systemd/cartflow.env
CARTFLOW_TOKEN=${CARTFLOW_TOKEN:-}
set +a
for unit in scripts/systemd/*.service; do
    command=$(sed -n 's/^ExecStart=//p' "$unit" | sed "s#^/usr/local/bin/cartflow#$BIN#")
    for variable in $(compgen -v CARTFLOW_); do
        command=${command//\$\{$variable\}/${!variable}}
    done
    # shellcheck disable=SC2086
    if ! $command --help >/dev/null 2>"$work/err"; then
        echo "units: $(basename "$unit"): cartflow rejects its ExecStart: $(cat "$work/err")"
        exit 1
    fi
    sed 's#/usr/local/bin/cartflow#/bin/true#' "$unit" >"$work/$(basename "$unit")"
done
if command -v systemd-analyze >/dev/null; then
    SYSTEMD_LOG_LEVEL=warning systemd-analyze verify "$work"/*.service
fi
echo "units: $(ls scripts/systemd/*.service | wc -l) systemd units verified"
