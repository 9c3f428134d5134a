#!/usr/bin/env python3
"""Reads the original Lambda system's four HBase tables, as `--hbase-layout seed` writes them, the way
the original notebook did (happybase prefix scans), and checks every value against cartflow's SQLite
store of the same input.

The formats are those of shared/reference/seed-hbase-layout.md, with cartflow's choices of
connectors/src/store/hbase/seed.rs. Every expected value is computed here, independently, from the
SQLite rows (python sqlite3, read-only):

  * realtime_stats: one prefix scan per window key `{ts}_` (ts = window start as YYYYMMDD_HHMM, UTC)
    of every realtime_window row; under it exactly the rows `{ts}_active_users`, `{ts}_purchases`
    (iff purchases > 0), `{ts}_event_{type}` (iff that count > 0), `{ts}_top_view_{rank:02}_{product}`
    per realtime_top_product row (brand and category from the product table, `unknown` when none),
    `{ts}_brand_{rank:02}_{brand}_{type}` per realtime_top_brand row and event type it has
    (`total_value` on the purchase row only); and no row key of the table outside those windows
    (a key-only full scan: stale rows must have been deleted);
  * funnel_analytics (run_ts = D+1 at 03:17:00), personalized_recommendations (04:17:00),
    brand_performance (05:17:00), one run per daily snapshot D: the run prefixes listed from the row
    keys (a key-only scan) are exactly the expected ones; the newest is scanned with row_prefix, then
    each older one, and holds exactly the expected row keys;
  * every row has exactly the expected cells, with the expected values, and a `created_at` cell of
    the form %Y-%m-%dT%H:%M:%S;
  * the four tables exist with the reference's column families and max versions.

Usage: happybase-seed-check.py HOST:PORT SQLITE_DB [--namespace NS]
Exits 0 with one summary line when everything agrees; prints the first differences and exits 1
otherwise (also when fewer than 500 rows were checked), and on any error.
"""
import argparse
import datetime
import sqlite3
import sys
import traceback

import happybase

FAMILIES = {
    "realtime_stats": {"metrics": 10, "metadata": 3},
    "funnel_analytics": {"stats": 10, "segments": 5},
    "personalized_recommendations": {"products": 5, "profile": 3},
    "brand_performance": {"metrics": 10, "trends": 5},
}
DAILY = {  # table -> (run time of the original's job, created_at column)
    "funnel_analytics": ("031700", "segments:created_at"),
    "personalized_recommendations": ("041700", "profile:created_at"),
    "brand_performance": ("051700", "trends:created_at"),
}
EVENT_TYPES = ["view", "cart", "remove_from_cart", "purchase"]
CREATED_AT = object()  # expected value of a created_at cell: any time of the form below
CREATED_AT_FORM = "%Y-%m-%dT%H:%M:%S"
MIN_ROWS = 500
SHOWN = 20
BATCH = 1000


class Differences:
    def __init__(self):
        self.count = 0
        self.first = []

    def add(self, message):
        self.count += 1
        if len(self.first) < SHOWN:
            self.first.append(message)


# --- SQLite: the expected rows ------------------------------------------------------------------

def as_int(value):
    """An INTEGER column's value (an id of 2^63 or more is stored as TEXT or a BLOB of digits)."""
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    if isinstance(value, str):
        if not value.isdigit():
            raise ValueError(f"{value!r} is not an integer")
        return int(value)
    if isinstance(value, float):
        if value != int(value):
            raise ValueError(f"{value!r} is not an integer")
        return int(value)
    if not isinstance(value, int):
        raise ValueError(f"{value!r} is not an integer")
    return value


def as_text(value):
    return value.decode("utf-8") if isinstance(value, bytes) else value


def records(con, sql):
    cursor = con.execute(sql)
    names = [d[0] for d in cursor.description]
    for record in cursor:
        yield dict(zip(names, record))


def utc(text):
    """An RFC 3339 time of the store as a naive UTC datetime."""
    t = datetime.datetime.fromisoformat(as_text(text).replace("Z", "+00:00"))
    if t.tzinfo is not None:
        t = t.astimezone(datetime.timezone.utc).replace(tzinfo=None)
    return t


def iso(t):
    return t.strftime("%Y-%m-%dT%H:%M:%S")


def money(cents):
    """`%.2f` of cents / 100, computed exactly from the integer."""
    sign = "-" if cents < 0 else ""
    return f"{sign}{abs(cents) // 100}.{abs(cents) % 100:02d}"


def run_ts(snapshot, hhmmss):
    day = datetime.date.fromisoformat(snapshot)
    return (day + datetime.timedelta(days=1)).strftime("%Y%m%d") + "_" + hhmmss


def load_products(con):
    """product_id -> (brand, category_code), NULLs as None."""
    return {as_int(r["product_id"]): (as_text(r["brand"]), as_text(r["category_code"]))
            for r in records(con, "SELECT product_id, brand, category_code FROM product")}


def put_row(expected, group, key, cells, diffs, what):
    rows = expected.setdefault(group, {})
    key = key.encode("utf-8")
    if key in rows:
        diffs.add(f"{what}: two SQLite rows map to the row key {key!r}")
    rows[key] = {c.encode("utf-8"): (v if v is CREATED_AT else v.encode("utf-8")) for c, v in cells.items()}


def expected_realtime(con, products, diffs):
    """{window key ts: {row key: {column: value}}} for realtime_stats."""
    expected = {}
    starts = {}  # window_start text -> (ts, naive ISO start)
    for r in records(con, "SELECT * FROM realtime_window"):
        start, end = utc(r["window_start"]), utc(r["window_end"])
        ts = start.strftime("%Y%m%d_%H%M")
        if ts in expected:
            diffs.add(f"realtime_stats: two SQLite windows have the key {ts}")
        expected[ts] = {}
        starts[r["window_start"]] = (ts, iso(start))
        meta = {"metadata:window_start": iso(start), "metadata:created_at": CREATED_AT}
        active_users, total_events = as_int(r["active_users"]), as_int(r["total_events"])
        views, carts, removes = as_int(r["views"]), as_int(r["carts"]), as_int(r["removes"])
        purchases, revenue, buyers = as_int(r["purchases"]), as_int(r["revenue_cents"]), as_int(r["buyers"])
        put_row(expected, ts, f"{ts}_active_users", {
            "metrics:active_users": str(active_users),
            "metrics:total_events": str(total_events),
            "metadata:window_end": iso(end),
            **meta,
        }, diffs, "realtime_stats")
        if purchases > 0:
            put_row(expected, ts, f"{ts}_purchases", {
                "metrics:purchase_count": str(purchases),
                "metrics:total_revenue": money(revenue),
                "metrics:avg_basket_value": "%.2f" % (revenue / purchases / 100),
                "metrics:purchasing_users": str(buyers),
                **meta,
            }, diffs, "realtime_stats")
        for event_type, count in zip(EVENT_TYPES, [views, carts, removes, purchases]):
            if count > 0:
                put_row(expected, ts, f"{ts}_event_{event_type}", {
                    "metrics:event_type": event_type,
                    "metrics:event_count": str(count),
                    **meta,
                }, diffs, "realtime_stats")
    for r in records(con, "SELECT * FROM realtime_top_product"):
        if r["window_start"] not in starts:
            diffs.add(f"SQLite: realtime_top_product of {r['window_start']} has no realtime_window row")
            continue
        ts, start = starts[r["window_start"]]
        rank, product = as_int(r["rank"]), as_int(r["product_id"])
        brand, category = products.get(product, (None, None))
        if r["avg_price_cents"] is None:
            diffs.add(f"SQLite: realtime_top_product {r['window_start']} rank {rank} has no avg_price_cents")
            continue
        put_row(expected, ts, f"{ts}_top_view_{rank:02d}_{product}", {
            "metrics:rank": str(rank),
            "metrics:product_id": str(product),
            "metrics:brand": brand if brand is not None else "unknown",
            "metrics:category": category if category is not None else "unknown",
            "metrics:view_count": str(as_int(r["views"])),
            "metrics:avg_price": "%.2f" % (float(r["avg_price_cents"]) / 100),
            "metadata:window_start": start,
            "metadata:created_at": CREATED_AT,
        }, diffs, "realtime_stats")
    for r in records(con, "SELECT * FROM realtime_top_brand"):
        if r["window_start"] not in starts:
            diffs.add(f"SQLite: realtime_top_brand of {r['window_start']} has no realtime_window row")
            continue
        ts, start = starts[r["window_start"]]
        rank, brand = as_int(r["rank"]), as_text(r["brand"])
        events, views, carts = as_int(r["events"]), as_int(r["views"]), as_int(r["carts"])
        purchases, revenue = as_int(r["purchases"]), as_int(r["revenue_cents"])
        counts = [views, carts, events - views - carts - purchases, purchases]
        for event_type, count in zip(EVENT_TYPES, counts):
            if count <= 0:
                continue
            cells = {
                "metrics:rank": str(rank),
                "metrics:brand": brand,
                "metrics:event_type": event_type,
                "metrics:event_count": str(count),
                "metadata:window_start": start,
                "metadata:created_at": CREATED_AT,
            }
            if event_type == "purchase":
                cells["metrics:total_value"] = money(revenue)
            put_row(expected, ts, f"{ts}_brand_{rank:02d}_{brand}_{event_type}", cells, diffs, "realtime_stats")
    return expected


def snapshots(con, table):
    return sorted(as_text(s) for (s,) in con.execute(f"SELECT DISTINCT snapshot FROM {table} WHERE snapshot != 'current'"))


def expected_funnel(con, diffs):
    expected = {run_ts(d, "031700"): {} for d in snapshots(con, "funnel")}
    sql = "SELECT * FROM funnel WHERE snapshot != 'current' AND dimension IN ('category', 'brand')"
    for r in records(con, sql):
        run = run_ts(as_text(r["snapshot"]), "031700")
        dimension, segment = as_text(r["dimension"]), as_text(r["segment"])
        cells = {
            "stats:users_viewed": str(as_int(r["users_viewed"])),
            "stats:users_added_to_cart": str(as_int(r["users_carted"])),
            "stats:users_purchased": str(as_int(r["users_purchased"])),
            "segments:type": dimension,
            "segments:name": segment,
            "segments:created_at": CREATED_AT,
        }
        for name in ["view_to_cart_rate", "cart_to_purchase_rate", "view_to_purchase_rate",
                     "view_to_cart_dropoff", "cart_to_purchase_dropoff"]:
            if r[name] is None:
                diffs.add(f"SQLite: funnel {run} {dimension} {segment!r}: {name} is NULL")
                continue
            cells[f"stats:{name}"] = str(round(float(r[name]), 4))
        for name, column in [("avg_view_to_cart_seconds", "avg_view_to_cart_s"),
                             ("avg_cart_to_purchase_seconds", "avg_cart_to_purchase_s"),
                             ("avg_view_to_purchase_seconds", "avg_view_to_purchase_s")]:
            if r[column] is not None:
                cells[f"stats:{name}"] = str(int(float(r[column])))
        put_row(expected, run, f"{run}_{dimension}_{segment}", cells, diffs, "funnel_analytics")
    return expected


def expected_recommendations(con, products, diffs):
    expected = {run_ts(d, "041700"): {} for d in snapshots(con, "recommendation")}
    rows = {}
    sql = "SELECT * FROM recommendation WHERE snapshot != 'current' AND region = '*' AND age_group != '*'"
    for r in records(con, sql):
        run = run_ts(as_text(r["snapshot"]), "041700")
        age_group = as_text(r["age_group"])
        key = f"{run}_segment_{age_group}"
        cells = rows.setdefault((run, key), {
            "profile:age_group": age_group,
            "profile:segment_type": "demographic",
            "profile:created_at": CREATED_AT,
        })
        rank, product = as_int(r["rank"]), as_int(r["product_id"])
        brand, category = products.get(product, (None, None))
        name = " ".join(part for part in (brand, category) if part is not None) or "Unknown"
        if f"products:rank_{rank}_product_id" in cells:
            diffs.add(f"SQLite: recommendation {run} {age_group}: rank {rank} twice")
        cells[f"products:rank_{rank}_product_id"] = str(product)
        cells[f"products:rank_{rank}_product_name"] = name
        cells[f"products:rank_{rank}_score"] = str(as_int(r["score"]))
        cells[f"products:rank_{rank}_views"] = str(as_int(r["viewers"]))
    for (run, key), cells in rows.items():
        put_row(expected, run, key, cells, diffs, "personalized_recommendations")
    return expected


def expected_brands(con, diffs):
    expected = {run_ts(d, "051700"): {} for d in snapshots(con, "brand_performance")}
    sql = "SELECT * FROM brand_performance WHERE snapshot != 'current' AND age_group != '*'"
    for r in records(con, sql):
        run = run_ts(as_text(r["snapshot"]), "051700")
        brand, age_group = as_text(r["brand"]), as_text(r["age_group"])
        if r["conversion_rate"] is None:
            diffs.add(f"SQLite: brand_performance {run} {brand!r} {age_group}: conversion_rate is NULL")
            continue
        put_row(expected, run, f"{run}_{brand}_{age_group}", {
            "metrics:unique_users": str(as_int(r["unique_users"])),
            "metrics:total_views": str(as_int(r["views"])),
            "metrics:total_purchases": str(as_int(r["purchases"])),
            "metrics:total_revenue": money(as_int(r["revenue_cents"])),
            "metrics:conversion_rate": "%.4f" % float(r["conversion_rate"]),
            "trends:brand": brand,
            "trends:age_group": age_group,
            "trends:created_at": CREATED_AT,
        }, diffs, "brand_performance")
    return expected


# --- HBase: reading as the notebook did -----------------------------------------------------------

def show(value, limit=120):
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def compare_rows(what, got_rows, expected_rows, diffs):
    """got_rows: list of (key, cells) from a scan; expected_rows: {key: {column: value}}."""
    got_keys = [key for key, _ in got_rows]
    if got_keys != sorted(got_keys):
        diffs.add(f"{what}: the scan did not return its rows in key order")
    got = dict(got_rows)
    for key in sorted(set(got) - set(expected_rows)):
        diffs.add(f"{what}: row {key.decode('utf-8', 'replace')!r} should not exist "
                  f"(cells {show({c.decode(): v.decode('utf-8', 'replace') for c, v in got[key].items()})})")
    for key in sorted(set(expected_rows) - set(got)):
        diffs.add(f"{what}: row {key.decode()!r} is missing")
    for key in sorted(set(got) & set(expected_rows)):
        cells, want = got[key], expected_rows[key]
        name = key.decode("utf-8")
        for column in sorted(set(cells) - set(want)):
            diffs.add(f"{what} {name!r}: unexpected cell {column.decode()} = {cells[column].decode('utf-8', 'replace')!r}")
        for column in sorted(set(want) - set(cells)):
            diffs.add(f"{what} {name!r}: cell {column.decode()} is missing"
                      + ("" if want[column] is CREATED_AT else f" (expected {want[column].decode()!r})"))
        for column in sorted(set(want) & set(cells)):
            value, expected = cells[column], want[column]
            if expected is CREATED_AT:
                try:
                    datetime.datetime.strptime(value.decode("utf-8"), CREATED_AT_FORM)
                except (UnicodeDecodeError, ValueError):
                    diffs.add(f"{what} {name!r}: {column.decode()} = {value!r} is no time of the form {CREATED_AT_FORM}")
            elif value != expected:
                diffs.add(f"{what} {name!r}: {column.decode()} = {value.decode('utf-8', 'replace')!r}, "
                          f"SQLite says {expected.decode()!r}")
    return len(got)


def key_scan(table):
    return [key for key, _ in table.scan(filter=b"KeyOnlyFilter()", batch_size=BATCH)]


def check_families(connection, names, diffs):
    """Returns the tables that exist."""
    listed = set(connection.tables())
    present = []
    for table, name in names.items():
        if name.encode() not in listed:
            diffs.add(f"connection.tables() lacks {name!r}")
            continue
        present.append(table)
        families = {(f.decode() if isinstance(f, bytes) else f).rstrip(":"): d
                    for f, d in connection.table(name).families().items()}
        want = FAMILIES[table]
        if set(families) != set(want):
            diffs.add(f"{name}: column families {sorted(families)}, expected {sorted(want)}")
        for family, versions in want.items():
            if family in families and families[family].get("max_versions") != versions:
                diffs.add(f"{name}: family {family} keeps {families[family].get('max_versions')} versions, "
                          f"expected {versions}")
    return present


def check_realtime(table, name, expected, diffs):
    """One prefix scan per window, then the table's keys outside every window. Returns rows checked."""
    rows = 0
    for ts in sorted(expected):
        scanned = list(table.scan(row_prefix=f"{ts}_".encode(), batch_size=BATCH))
        rows += compare_rows(f"{name} window {ts}", scanned, expected[ts], diffs)
    prefixes = {f"{ts}_".encode() for ts in expected}
    stale = [key for key in key_scan(table) if key[:14] not in prefixes]
    for key in stale[:SHOWN]:
        diffs.add(f"{name}: row {key.decode('utf-8', 'replace')!r} belongs to no window SQLite has")
    if len(stale) > SHOWN:
        diffs.add(f"{name}: {len(stale)} rows in all belong to no window SQLite has")
    return rows


def run_prefix(key):
    """`YYYYMMDD_HHMMSS` of a daily row key, or None when the key does not start with one."""
    prefix = key[:15].decode("utf-8", "replace")
    if len(key) < 16 or key[15:16] != b"_":
        return None
    try:
        datetime.datetime.strptime(prefix, "%Y%m%d_%H%M%S")
    except ValueError:
        return None
    return prefix


def check_daily(table, name, expected, diffs):
    """Lists the run prefixes from the row keys, scans the newest, then each older one."""
    runs = set()
    for key in key_scan(table):
        prefix = run_prefix(key)
        if prefix is None:
            diffs.add(f"{name}: row key {key!r} does not start with a run time YYYYMMDD_HHMMSS_")
        else:
            runs.add(prefix)
    if runs != set(expected):
        diffs.add(f"{name}: run prefixes {sorted(runs)}, expected {sorted(expected)}")
    if expected and runs and max(runs) != max(expected):
        diffs.add(f"{name}: the newest run is {max(runs)}, expected {max(expected)} (what readers take)")
    rows = 0
    for run in sorted(runs | set(expected), reverse=True):  # the newest first, as the notebook read it
        scanned = list(table.scan(row_prefix=f"{run}_".encode(), batch_size=BATCH))
        rows += compare_rows(f"{name} run {run}", scanned, expected.get(run, {}), diffs)
    return rows


def run(host, port, db, namespace):
    diffs = Differences()
    names = {t: f"{namespace}:{t}" if namespace else t for t in FAMILIES}
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        con.execute("SELECT 1 FROM pipeline_state LIMIT 1")  # fails now if it is not a cartflow store
    except sqlite3.Error as error:
        raise RuntimeError(f"cannot read the SQLite store {db}: {error}") from error
    try:
        products = load_products(con)
        realtime = expected_realtime(con, products, diffs)
        daily = {
            "funnel_analytics": expected_funnel(con, diffs),
            "personalized_recommendations": expected_recommendations(con, products, diffs),
            "brand_performance": expected_brands(con, diffs),
        }
        days = set(snapshots(con, "funnel")) | set(snapshots(con, "recommendation")) \
            | set(snapshots(con, "brand_performance"))
    finally:
        con.close()
    try:
        connection = happybase.Connection(host, port=port, timeout=120_000, transport="buffered",
                                          protocol="binary", autoconnect=True)
    except Exception as error:
        raise RuntimeError(f"cannot connect to HBase Thrift at {host}:{port}: {type(error).__name__}: {error}") from error
    step = "connection.tables(), families()"
    rows = runs = 0
    try:
        present = check_families(connection, names, diffs)
        if "realtime_stats" in present:
            step = f"table {names['realtime_stats']}"
            rows += check_realtime(connection.table(names["realtime_stats"]), names["realtime_stats"], realtime, diffs)
        for table, expected in daily.items():
            if table not in present:
                continue
            step = f"table {names[table]}"
            rows += check_daily(connection.table(names[table]), names[table], expected, diffs)
            runs += len(expected)
    except Exception as error:
        raise RuntimeError(f"while checking {step}: {type(error).__name__}: {error!r}") from error
    finally:
        connection.close()
    if rows < MIN_ROWS:
        diffs.add(f"only {rows} rows checked (at least {MIN_ROWS} expected): is the store empty?")
    if diffs.count:
        print(f"happybase seed layout: {diffs.count} differences from SQLite; the first {len(diffs.first)}:")
        for message in diffs.first:
            print(f"  {message}")
        return 1
    print(f"happybase seed layout: 4 tables, {rows} rows, {len(realtime)} windows, {runs} runs "
          f"({len(days)} days): every value equals SQLite")
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("address", metavar="HOST:PORT", help="HBase Thrift1 server")
    parser.add_argument("db", metavar="SQLITE_DB", help="cartflow SQLite store of the same input")
    parser.add_argument("--namespace", metavar="NS", help="HBase namespace of the seed tables")
    args = parser.parse_args()
    host, _, port = args.address.rpartition(":")
    if not host or not port.isdigit():
        parser.error(f"{args.address!r} is not HOST:PORT")
    try:
        return run(host.strip("[]"), int(port), args.db, args.namespace)
    except Exception as error:  # happybase, thriftpy2, socket or SQLite: fail, saying where
        traceback.print_exc()
        print(f"happybase seed layout: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
