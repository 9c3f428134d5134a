#!/usr/bin/env python3
"""Reads cartflow's HBase tables with happybase, the way an application would, and checks every
value against the SQLite store of the same input.

cartflow writes HBase through its own Rust Thrift client; this script reads it back through a
client cartflow did not write (happybase 1.3 over thriftpy2, buffered transport, binary protocol),
so it checks the SPEC §4 layout as a consumer sees it, and the Thrift server's read calls as such a
consumer makes them:

  * a full scan of every table equals the SQLite table: same row keys (key columns joined with `|`,
    INTEGER parts zero-padded to 20 digits, `%` and `|` in TEXT parts percent-encoded), one cell
    `d:<column>` per non-NULL value, integers in canonical decimal, REALs in their shortest
    round-trip form without exponent (Rust's f64 Display), TEXT as is; the scan comes in key order;
  * point gets (`row` with and without columns, `rows` in batches) return what the scan returned,
    and a missing row reads as empty;
  * prefix, range and limited scans return exactly the rows SQLite says they should;
  * server-side filters (PrefixFilter, KeyOnlyFilter, FirstKeyOnlyFilter, SingleColumnValueFilter,
    ColumnPrefixFilter, AND) behave as HBase's do;
  * the tables are listed, have the family `d`, and report regions;
  * and, unless --no-scratch, the calls an application makes on a table of its own, on a scratch
    table the check creates and deletes (`cartflow_check_scratch`, in the namespace if one is
    given; one left by an earlier run is deleted first): create_table with max_versions, cell
    versions and explicit timestamps (cells, row and rows bounded by a timestamp, which HBase's
    Thrift server makes exclusive), rows of several keys, family selection, batches with and
    without a timestamp, column and row deletes and the delete markers that mask older puts,
    counters, forward/reversed/prefix/sorted/column/limited/timestamped and filtered scans,
    regions, the errors of a refused filter, a missing family and an existing table, and disable
    + delete.

`pipeline_state` is compared only by its `frontier` and `kafka_offset/...` entries (the counters
may differ between two runs that produced the same results).

Usage: happybase-check.py HOST:PORT SQLITE_DB [--namespace NS] [--no-scratch]
Exits 0 with one summary line when everything agrees; prints the first differences and exits 1
otherwise, and also on any error from happybase or Thrift.
"""
import argparse
import decimal
import math
import sqlite3
import struct
import sys
import time
import traceback
from collections import OrderedDict
from dataclasses import dataclass

import happybase

TABLES = ["realtime_window", "realtime_top_product", "realtime_top_brand", "funnel", "recommendation",
          "brand_performance", "product", "category", "demographics", "daily_sales", "pipeline_state"]
SNAPSHOT_TABLES = ["funnel", "recommendation", "brand_performance"]
FAMILY = b"d"
MIN_ROWS = 1000          # fewer rows compared than this means an empty or missing store
ALL_GETS_UP_TO = 2000    # point-get every row of a table this small, else a sample
GET_SAMPLE = 500
ROWS_BATCH = 100
WINDOW_SAMPLE = 20
SHOWN = 20               # differences printed
ABSENT_KEY = b"\xff~cartflow-check: no such row~"
SCRATCH_TABLE = "cartflow_check_scratch"


@dataclass
class Schema:
    name: str
    columns: list   # column names in table order
    kinds: dict     # column -> declared type: INTEGER, REAL or TEXT
    key: list       # primary-key columns in key order

    def qualifier(self, column):
        return FAMILY + b":" + column.encode()


class Differences:
    def __init__(self):
        self.count = 0
        self.first = []

    def add(self, message):
        self.count += 1
        if len(self.first) < SHOWN:
            self.first.append(message)


@dataclass
class Stats:
    tables: int = 0
    rows: int = 0
    gets: int = 0
    scans: int = 0
    filtered: int = 0


# --- the SQLite side ---------------------------------------------------------------------------

def load_schema(con, table):
    columns = [d[0] for d in con.execute(f'SELECT * FROM "{table}" LIMIT 0').description]
    info = con.execute(f'PRAGMA table_info("{table}")').fetchall()  # cid, name, type, notnull, dflt, pk
    kinds = {name: kind.upper() for _, name, kind, _, _, _ in info}
    key = [name for _, name, _, _, _, pk in sorted(info, key=lambda c: c[5]) if pk > 0]
    for column in columns:
        if kinds[column] not in ("INTEGER", "REAL", "TEXT"):
            raise ValueError(f"{table}.{column}: unexpected declared type {kinds[column]!r}")
    return Schema(table, columns, kinds, key)


def sqlite_value(value, kind):
    """A SQLite value typed by its column's declared type (an id of 2^63 or more is a BLOB of digits)."""
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    if kind == "INTEGER":
        return int(value)
    if kind == "REAL":
        return float(value)
    return str(value)


def load_rows(con, schema):
    """Row key -> {column: typed value}, NULL columns left out."""
    rows = {}
    for record in con.execute(f'SELECT * FROM "{schema.name}"'):
        row = {c: sqlite_value(v, schema.kinds[c]) for c, v in zip(schema.columns, record) if v is not None}
        rows[row_key(schema, row)] = row
    return rows


# --- the HBase layout (SPEC §4) ----------------------------------------------------------------

def key_part(value, kind):
    if kind == "INTEGER":
        return str(value).rjust(20, "0")
    return str(value).replace("%", "%25").replace("|", "%7C")


def row_key(schema, row):
    return "|".join(key_part(row[c], schema.kinds[c]) for c in schema.key).encode("utf-8")


def rust_f64_text(x):
    """What Rust's `f64` Display prints: the shortest round-trip digits, never an exponent."""
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    text = format(decimal.Decimal(repr(x)), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def cell_value(raw, kind):
    """A cell's bytes typed by its column; ValueError when the text is not in SPEC §4's form."""
    text = raw.decode("utf-8")
    if kind == "INTEGER":
        value = int(text)
        if text != str(value):
            raise ValueError(f"{text!r} is not a decimal integer in canonical form")
        return value
    if kind == "REAL":
        value = float(text)
        if text != rust_f64_text(value):
            raise ValueError(f"{text!r} is not the shortest form of {value!r} ({rust_f64_text(value)!r})")
        return value
    return text


def decode_row(schema, key, cells, diffs):
    """HBase cells {b'd:col': bytes} -> {column: typed value}; reports cells outside the layout."""
    row = {}
    for qualifier, raw in cells.items():
        family, _, column = qualifier.partition(b":")
        column = column.decode("utf-8", "replace")
        if family != FAMILY or column not in schema.kinds:
            diffs.add(f"{schema.name} {key!r}: unexpected cell {qualifier!r}")
            continue
        try:
            row[column] = cell_value(raw, schema.kinds[column])
        except ValueError as error:
            diffs.add(f"{schema.name} {key!r} {column}: {error}")
    if all(c in row for c in schema.key) and row_key(schema, row) != key:
        diffs.add(f"{schema.name} {key!r}: the key cells make the row key {row_key(schema, row)!r}")
    return row


# --- reading HBase -----------------------------------------------------------------------------

def scan(table, stats, **options):
    """A scan as a list of (key, {qualifier: value}); counted as filtered or plain."""
    if "filter" in options:
        stats.filtered += 1
    else:
        stats.scans += 1
    return list(table.scan(**options))


def compare_results(what, got, expected, diffs):
    """Two lists of (key, cells): reports the first place they differ."""
    if got == expected:
        return
    for i, (g, e) in enumerate(zip(got, expected)):
        if g != e:
            diffs.add(f"{what}: result {i} is {abbreviate(g)}, expected {abbreviate(e)}")
            return
    n = min(len(got), len(expected))
    if len(got) > n:
        diffs.add(f"{what}: {len(got)} rows, expected {len(expected)}; first extra row: {abbreviate(got[n])}")
    else:
        diffs.add(f"{what}: {len(got)} rows, expected {len(expected)}; first missing row: {abbreviate(expected[n])}")


def abbreviate(item, limit=300):
    text = repr(item)
    return text if len(text) <= limit else text[:limit] + "..."


def every_kth(items, target):
    step = max(1, math.ceil(len(items) / target))
    return items[::step]


# --- the checks --------------------------------------------------------------------------------

def check_admin(connection, names, diffs):
    listed = set(connection.tables())
    for name in names.values():
        if name.encode() not in listed:
            diffs.add(f"connection.tables() lacks {name!r}")
    for name in names.values():
        table = connection.table(name)
        families = table.families()
        if FAMILY not in families:
            diffs.add(f"{name}: families() is {sorted(families)!r}, without {FAMILY!r}")
        regions = table.regions()
        if not isinstance(regions, list) or not regions or not all(isinstance(r, dict) for r in regions):
            diffs.add(f"{name}: regions() is {abbreviate(regions)}, not a non-empty list of dicts")


def full_scan(table, schema, stats, diffs):
    """The whole table as {key: cells}, checking byte order and unique keys."""
    result = list(table.scan())
    keys = [k for k, _ in result]
    if keys != sorted(set(keys)):
        diffs.add(f"{schema.name}: a full scan is not in strictly ascending row-key order")
    return dict(result)


def compare_with_sqlite(schema, scanned, expected, only, diffs):
    """The scanned rows (decoded) against SQLite's, over the keys `only` accepts; returns how many."""
    decoded = {k: decode_row(schema, k, cells, diffs) for k, cells in scanned.items()}
    keys = sorted(k for k in decoded.keys() | expected.keys() if only(k))
    for key in keys:
        if key not in decoded:
            diffs.add(f"{schema.name} {key!r}: in SQLite, missing from HBase")
        elif key not in expected:
            diffs.add(f"{schema.name} {key!r}: in HBase, not in SQLite")
        else:
            for column in schema.columns:
                got, want = decoded[key].get(column), expected[key].get(column)
                if got != want or type(got) is not type(want):
                    diffs.add(f"{schema.name} {key!r} {column}: HBase {got!r}, SQLite {want!r}")
    return len(keys)


def check_point_gets(table, schema, scanned, stats, diffs):
    keys = sorted(scanned)
    if len(keys) > ALL_GETS_UP_TO:
        keys = every_kth(keys, GET_SAMPLE)
    others = [schema.qualifier(c) for c in schema.columns if c not in schema.key]
    for i, key in enumerate(keys):
        got = table.row(key)
        stats.gets += 1
        if got != scanned[key]:
            diffs.add(f"{schema.name}: row({key!r}) is {abbreviate(got)}, the scan has {abbreviate(scanned[key])}")
        if others:
            column = others[i % len(others)]  # every column in turn, NULL ones (absent cells) included
            got = table.row(key, columns=[column])
            stats.gets += 1
            want = {column: scanned[key][column]} if column in scanned[key] else {}
            if got != want:
                diffs.add(f"{schema.name}: row({key!r}, columns=[{column!r}]) is {abbreviate(got)}, expected {want!r}")
    for start in range(0, len(keys), ROWS_BATCH):
        batch = keys[start:start + ROWS_BATCH]
        got = table.rows(batch)
        stats.gets += 1
        compare_results(f"{schema.name}: rows([{batch[0]!r}, ... {len(batch)} keys])", list(got),
                        [(k, scanned[k]) for k in batch], diffs)
    got = table.row(ABSENT_KEY)
    stats.gets += 1
    if got != {}:
        diffs.add(f"{schema.name}: row({ABSENT_KEY!r}) of a missing row is {abbreviate(got)}, not {{}}")


def expected_rows(scanned, keys):
    """What a read of `keys` (row keys SQLite has) should return: the rows as scanned, in key order."""
    return [(k, scanned.get(k)) for k in sorted(keys)]


def check_range_and_limit(table, schema, scanned, expected, stats, diffs):
    keys = sorted(expected)
    if len(keys) < 3:
        return
    i, j = len(keys) // 4, 3 * len(keys) // 4
    got = scan(table, stats, row_start=keys[i], row_stop=keys[j])
    compare_results(f"{schema.name}: scan(row_start={keys[i]!r}, row_stop={keys[j]!r})", got,
                    expected_rows(scanned, keys[i:j]), diffs)
    got = scan(table, stats, row_start=keys[i], limit=5)
    compare_results(f"{schema.name}: scan(row_start={keys[i]!r}, limit=5)", got,
                    expected_rows(scanned, keys[i:i + 5]), diffs)


def check_prefix_scans(table, schema, scanned, expected, column, values, stats, diffs):
    """A prefix scan per value of the first key column returns exactly SQLite's rows with it."""
    for value in values:
        prefix = key_part(value, schema.kinds[column]).encode("utf-8") + b"|"
        got = scan(table, stats, row_prefix=prefix)
        want = [k for k, row in expected.items() if row[column] == value]
        compare_results(f"{schema.name}: scan(row_prefix={prefix!r})", got, expected_rows(scanned, want), diffs)


def quote(text):
    """A string literal of HBase's filter language."""
    return "'" + text.replace("'", "''") + "'"


def check_funnel_filters(table, scanned, expected, stats, diffs):
    snapshots = sorted({row["snapshot"] for row in expected.values()})
    with_brands = sorted({row["snapshot"] for row in expected.values() if row["dimension"] == "brand"})
    snapshot = "current" if "current" in with_brands else (with_brands or snapshots or ["current"])[0]
    prefix = key_part(snapshot, "TEXT") + "|"
    in_snapshot = [k for k, row in expected.items() if row["snapshot"] == snapshot]

    f = f"PrefixFilter({quote(prefix)})"
    compare_results(f"funnel: scan(filter={f!r})", scan(table, stats, filter=f),
                    expected_rows(scanned, in_snapshot), diffs)

    f = "SingleColumnValueFilter('d', 'dimension', =, 'binary:all')"
    want = [k for k, row in expected.items() if row.get("dimension", "all") == "all"]
    compare_results(f"funnel: scan(filter={f!r})", scan(table, stats, filter=f), expected_rows(scanned, want), diffs)

    f = "ColumnPrefixFilter('users_')"
    want = []
    for key in sorted(expected):
        cells = {q: v for q, v in (scanned.get(key) or {}).items() if q.startswith(b"d:users_")}
        if cells:
            want.append((key, cells))
    compare_results(f"funnel: scan(filter={f!r})", scan(table, stats, filter=f), want, diffs)

    f = f"PrefixFilter({quote(prefix)}) AND SingleColumnValueFilter('d', 'dimension', =, 'binary:brand')"
    want = [k for k, row in expected.items() if row["snapshot"] == snapshot and row.get("dimension") == "brand"]
    compare_results(f"funnel: scan(filter={f!r})", scan(table, stats, filter=f), expected_rows(scanned, want), diffs)


def check_key_only(table, scanned, expected, stats, diffs):
    f = "KeyOnlyFilter()"
    want = [(k, {q: b"" for q in scanned[k]} if k in scanned else None) for k in sorted(expected)]
    compare_results(f"category: scan(filter={f!r})", scan(table, stats, filter=f), want, diffs)


def check_first_key_only(table, scanned, expected, stats, diffs):
    """One cell per row: the row's first cell in qualifier byte order, with its value."""
    f = "FirstKeyOnlyFilter()"
    want = []
    for key in sorted(expected):
        cells = scanned.get(key)
        first = min(cells) if cells else None
        want.append((key, {first: cells[first]} if first is not None else None))
    compare_results(f"product: scan(filter={f!r})", scan(table, stats, filter=f), want, diffs)


def pipeline_state_keys(key):
    return key == b"frontier" or key.startswith(b"kafka_offset/")


def check_table(connection, name, schema, con, stats, diffs):
    table = connection.table(name)
    expected = load_rows(con, schema)
    scanned = full_scan(table, schema, stats, diffs)
    if schema.name == "pipeline_state":
        for store, rows in (("SQLite", expected), ("HBase", scanned)):
            if b"frontier" not in rows:
                diffs.add(f"pipeline_state: {store} has no 'frontier'")
        stats.rows += compare_with_sqlite(schema, scanned, expected, pipeline_state_keys, diffs)
    else:
        stats.rows += compare_with_sqlite(schema, scanned, expected, lambda _: True, diffs)
    if scanned:
        check_point_gets(table, schema, scanned, stats, diffs)
    if schema.name == "pipeline_state":
        return
    check_range_and_limit(table, schema, scanned, expected, stats, diffs)
    if schema.name in SNAPSHOT_TABLES:
        snapshots = sorted({row["snapshot"] for row in expected.values()})
        check_prefix_scans(table, schema, scanned, expected, "snapshot", snapshots, stats, diffs)
    if schema.name == "realtime_top_product":
        windows = every_kth(sorted({row["window_start"] for row in expected.values()}), WINDOW_SAMPLE)
        check_prefix_scans(table, schema, scanned, expected, "window_start", windows, stats, diffs)
    if schema.name == "funnel":
        check_funnel_filters(table, scanned, expected, stats, diffs)
    if schema.name == "category":
        check_key_only(table, scanned, expected, stats, diffs)
    if schema.name == "product":
        check_first_key_only(table, scanned, expected, stats, diffs)


# --- a scratch table: the calls an application makes on a table of its own --------------------

class Scratch:
    """Client calls on the scratch table, counted; what each returns is compared with what HBase
    returns (its Thrift1 server as happybase documents it)."""

    def __init__(self, connection, name, diffs):
        self.connection, self.name, self.diffs = connection, name, diffs
        self.table = connection.table(name)
        self.calls = 0
        self.step = "connecting"

    def call(self, what, function, *args, **kwargs):
        """One happybase call (a scan is read to its end)."""
        self.step = what
        self.calls += 1
        result = function(*args, **kwargs)
        return list(result) if what.startswith("scan(") else result

    def expect(self, what, got, want):
        if got != want or type(got) is not type(want):
            self.diffs.add(f"scratch: {what} is {abbreviate(got)}, expected {abbreviate(want)}")

    def fails(self, what, function, *args, **kwargs):
        """A call that must fail: its error's message (or None if it succeeded, after reporting it)."""
        try:
            got = self.call(what, function, *args, **kwargs)
        except Exception as error:  # the Thrift IOError / AlreadyExists of HBase's server
            return error_message(error)
        self.diffs.add(f"scratch: {what} succeeded with {abbreviate(got)}, expected an error")
        return None


def error_message(error):
    message = getattr(error, "message", None)
    if isinstance(message, bytes):
        message = message.decode("utf-8", "replace")
    return message if message else str(error)


def check_scratch(connection, namespace, diffs):
    """Creates a scratch table, exercises it as an application would and deletes it; returns the
    number of client calls made."""
    name = f"{namespace}:{SCRATCH_TABLE}" if namespace else SCRATCH_TABLE
    s = Scratch(connection, name, diffs)
    try:
        check_scratch_calls(s)
    except Exception as error:
        raise RuntimeError(f"scratch table {name}, {s.step}: {type(error).__name__}: {error!r}") from error
    finally:
        try:  # leave no scratch table behind, whatever happened (it is gone after a passing run)
            if name.encode() in connection.tables():
                connection.delete_table(name, disable=True)
        except Exception:
            pass
    return s.calls


def check_scratch_calls(s):
    c, t, expect, call = s.connection, s.table, s.expect, s.call
    pack = struct.Struct(">q").pack

    # Admin: a table left by an earlier run is replaced; families keep their settings.
    if s.name.encode() in call("connection.tables()", c.tables):
        if call(f"connection.is_table_enabled({s.name!r})", c.is_table_enabled, s.name):
            call(f"connection.disable_table({s.name!r})", c.disable_table, s.name)
        call(f"connection.delete_table({s.name!r})", c.delete_table, s.name)
    call("connection.create_table(cf: max_versions=3, meta: defaults)", c.create_table, s.name,
         {"cf": dict(max_versions=3), "meta": dict()})
    expect("connection.tables() has the scratch table", s.name.encode() in call("connection.tables()", c.tables), True)
    families = call("families()", t.families)
    expect("sorted(families())", sorted(families), [b"cf", b"meta"])
    expect("families()[b'cf']['max_versions']", families.get(b"cf", {}).get("max_versions"), 3)
    expect("connection.is_table_enabled()", call("connection.is_table_enabled()", c.is_table_enabled, s.name), True)

    # Versions and timestamps: a family keeps max_versions versions, newest first; a timestamp
    # bounds a read to the versions written before it (HBase's Thrift server: [0, timestamp)).
    for ts, value in ((100, b"1"), (200, b"2"), (300, b"3"), (400, b"4")):
        call(f"put(b'r1', {{b'cf:a': {value!r}}}, timestamp={ts})", t.put, b"r1", {b"cf:a": value}, timestamp=ts)
    expect("cells(b'r1', b'cf:a')", call("cells(b'r1', b'cf:a')", t.cells, b"r1", b"cf:a"), [b"4", b"3", b"2"])
    expect("cells(b'r1', b'cf:a', versions=2)", call("cells(versions=2)", t.cells, b"r1", b"cf:a", versions=2),
           [b"4", b"3"])
    expect("cells(b'r1', b'cf:a', include_timestamp=True)",
           call("cells(include_timestamp=True)", t.cells, b"r1", b"cf:a", include_timestamp=True),
           [(b"4", 400), (b"3", 300), (b"2", 200)])
    # (The version at 100 is beyond max_versions: gone here; HBase drops it at its next flush.)
    expect("cells(b'r1', b'cf:a', timestamp=300)",
           call("cells(timestamp=300)", t.cells, b"r1", b"cf:a", timestamp=300), [b"2"])
    expect("cells(b'r1', b'cf:a', versions=1, timestamp=401, include_timestamp=True)",
           call("cells(versions=1, timestamp=401)", t.cells, b"r1", b"cf:a", versions=1, timestamp=401,
                include_timestamp=True), [(b"4", 400)])
    expect("row(b'r1', timestamp=300)", call("row(b'r1', timestamp=300)", t.row, b"r1", timestamp=300),
           {b"cf:a": b"2"})
    expect("row(b'r1', include_timestamp=True)",
           call("row(b'r1', include_timestamp=True)", t.row, b"r1", include_timestamp=True), {b"cf:a": (b"4", 400)})

    # Several rows, column and family selection.
    expect("rows([b'r1', b'nope'])", call("rows([b'r1', b'nope'])", t.rows, [b"r1", b"nope"]),
           [(b"r1", {b"cf:a": b"4"})])
    expect("rows([b'r1', b'nope'], timestamp=300)",
           call("rows([b'r1', b'nope'], timestamp=300)", t.rows, [b"r1", b"nope"], timestamp=300),
           [(b"r1", {b"cf:a": b"2"})])
    expect("row(b'r1', columns=[b'cf'])", call("row(b'r1', columns=[b'cf'])", t.row, b"r1", columns=[b"cf"]),
           {b"cf:a": b"4"})
    expect("row(b'r1', columns=[b'meta'])", call("row(b'r1', columns=[b'meta'])", t.row, b"r1", columns=[b"meta"]),
           {})
    expect("row(b'nope')", call("row(b'nope')", t.row, b"nope"), {})

    # Batches: several rows put and one deleted whole in one mutateRows.
    call("put(b'rX', ...)", t.put, b"rX", {b"cf:a": b"0", b"meta:m": b"x"})
    expect("row(b'rX')", call("row(b'rX')", t.row, b"rX"), {b"cf:a": b"0", b"meta:m": b"x"})
    batched = {
        b"r2": {b"cf:a": b"5", b"cf:b": b"x", b"meta:m": b"m2"},
        b"r3": {b"cf:a": b"7", b"meta:m": b"m3"},
        b"r4": {b"cf:a": b"3"},
        b"s1": {b"cf:a": b"9"},
    }
    s.step = "batch(): put 4 rows, delete(b'rX')"
    s.calls += 1
    with t.batch() as b:
        for key, cells in batched.items():
            b.put(key, cells)
        b.delete(b"rX")
    expect("rows(4 batched rows + b'rX')", call("rows(batched + rX)", t.rows, [*batched, b"rX"]), list(batched.items()))
    expect("row(b'rX') after batch delete", call("row(b'rX')", t.row, b"rX"), {})
    # A batch with a timestamp writes every cell at it; a column delete at a timestamp removes the
    # versions at or before it and masks a later put at an older timestamp.
    for ts, value in ((500, b"old"), (600, b"new")):
        s.step = f"batch(timestamp={ts}): put b't1'"
        s.calls += 1
        with t.batch(timestamp=ts) as b:
            b.put(b"t1", {b"cf:a": value})
    expect("cells(b't1', b'cf:a', include_timestamp=True)",
           call("cells(b't1', include_timestamp=True)", t.cells, b"t1", b"cf:a", include_timestamp=True),
           [(b"new", 600), (b"old", 500)])
    s.step = "batch(timestamp=550): delete(b't1', columns=[b'cf:a'])"
    s.calls += 1
    with t.batch(timestamp=550) as b:
        b.delete(b"t1", columns=[b"cf:a"])
    call("put(b't1', timestamp=540) under the delete marker", t.put, b"t1", {b"cf:a": b"masked"}, timestamp=540)
    expect("cells(b't1', b'cf:a', include_timestamp=True) after delete at 550 and put at 540",
           call("cells(b't1', include_timestamp=True)", t.cells, b"t1", b"cf:a", include_timestamp=True),
           [(b"new", 600)])

    # A column delete (now) removes every version; a row left without cells reads as empty.
    call("delete(b'r1', columns=[b'cf:a'])", t.delete, b"r1", columns=[b"cf:a"])
    expect("row(b'r1') after delete(columns=[b'cf:a'])", call("row(b'r1')", t.row, b"r1"), {})
    expect("cells(b'r1', b'cf:a') after delete", call("cells(b'r1', b'cf:a')", t.cells, b"r1", b"cf:a"), [])

    # Counters: 8-byte big-endian longs, a missing one counts as 0.
    expect("counter_inc(b'c', b'cf:n')", call("counter_inc(b'c', b'cf:n')", t.counter_inc, b"c", b"cf:n"), 1)
    expect("counter_inc(value=5)", call("counter_inc(value=5)", t.counter_inc, b"c", b"cf:n", value=5), 6)
    expect("counter_dec(value=2)", call("counter_dec(value=2)", t.counter_dec, b"c", b"cf:n", value=2), 4)
    expect("counter_get()", call("counter_get()", t.counter_get, b"c", b"cf:n"), 4)
    # HBase stamps an increment max(now, previous + 1) and a put now: let the clock pass the
    # increments' timestamps so that the put is the newest version, on HBase as here.
    time.sleep(0.05)
    call("counter_set(b'c', b'cf:n', 42)", t.counter_set, b"c", b"cf:n", 42)
    expect("counter_get() after counter_set(42)", call("counter_get()", t.counter_get, b"c", b"cf:n"), 42)
    expect("row(b'c')", call("row(b'c')", t.row, b"c"), {b"cf:n": pack(42)})

    # Scans over what is now in the table.
    contents = [(b"c", {b"cf:n": pack(42)}), *sorted(batched.items()), (b"t1", {b"cf:a": b"new"})]
    expect("scan()", call("scan()", t.scan), contents)
    expect("scan(reverse=True)", call("scan(reverse=True)", t.scan, reverse=True), contents[::-1])
    expect("scan(row_prefix=b'r')", call("scan(row_prefix=b'r')", t.scan, row_prefix=b"r"),
           [(k, v) for k, v in contents if k.startswith(b"r")])
    expect("scan(row_prefix=b'r', reverse=True)",
           call("scan(row_prefix=b'r', reverse=True)", t.scan, row_prefix=b"r", reverse=True),
           [(k, v) for k, v in contents[::-1] if k.startswith(b"r")])
    expect("scan(row_start=b's1', row_stop=b'r2', reverse=True)",
           call("scan(row_start=b's1', row_stop=b'r2', reverse=True)", t.scan, row_start=b"s1", row_stop=b"r2",
                reverse=True), [(k, v) for k, v in contents[::-1] if b"r2" < k <= b"s1"])
    expect("scan(row_start=b'r3', row_stop=b't')",
           call("scan(row_start=b'r3', row_stop=b't')", t.scan, row_start=b"r3", row_stop=b"t"),
           [(k, v) for k, v in contents if b"r3" <= k < b"t"])
    got = call("scan(sorted_columns=True)", t.scan, sorted_columns=True)
    expect("scan(sorted_columns=True): row types", {type(v) for _, v in got}, {OrderedDict})
    expect("scan(sorted_columns=True)", [(k, list(v.items())) for k, v in got],
           [(k, sorted(v.items())) for k, v in contents])
    expect("scan(columns=[b'meta'])", call("scan(columns=[b'meta'])", t.scan, columns=[b"meta"]),
           [(k, {q: x for q, x in v.items() if q.startswith(b"meta:")}) for k, v in contents if b"meta:m" in v])
    expect("scan(columns=[b'cf:b', b'meta:m'])",
           call("scan(columns=[b'cf:b', b'meta:m'])", t.scan, columns=[b"cf:b", b"meta:m"]),
           [(k, {q: x for q, x in v.items() if q in (b"cf:b", b"meta:m")}) for k, v in contents
            if b"cf:b" in v or b"meta:m" in v])
    expect("scan(limit=1)", call("scan(limit=1)", t.scan, limit=1), contents[:1])
    expect("scan(row_start=b'r', limit=2)", call("scan(row_start=b'r', limit=2)", t.scan, row_start=b"r", limit=2),
           [(k, v) for k, v in contents if k >= b"r"][:2])
    expect("scan(batch_size=2) (several scannerGetList calls)", call("scan(batch_size=2)", t.scan, batch_size=2),
           contents)
    expect("scan(timestamp=601, include_timestamp=True)",
           call("scan(timestamp=601, include_timestamp=True)", t.scan, timestamp=601, include_timestamp=True),
           [(b"t1", {b"cf:a": (b"new", 600)})])
    expect("scan(timestamp=600)", call("scan(timestamp=600)", t.scan, timestamp=600), [])
    f = b"SingleColumnValueFilter('cf', 'a', >=, 'binary:5')"
    # Rows without cf:a pass too (filterIfMissing is false).
    expect(f"scan(filter={f!r})", call(f"scan(filter={f!r})", t.scan, filter=f),
           [(k, v) for k, v in contents if v.get(b"cf:a", b"5") >= b"5"])
    f = b"PrefixFilter('s') OR SingleColumnValueFilter('cf', 'a', =, 'binary:3', true, true)"
    expect(f"scan(filter={f!r})", call(f"scan(filter={f!r})", t.scan, filter=f),
           [(k, v) for k, v in contents if k.startswith(b"s") or v.get(b"cf:a") == b"3"])
    f = b"(PrefixFilter('r') AND SingleColumnValueFilter('meta', 'm', =, 'binary:m3', true, true)) OR PrefixFilter('t')"
    expect(f"scan(filter={f!r})", call(f"scan(filter={f!r})", t.scan, filter=f),
           [(k, v) for k, v in contents if (k.startswith(b"r") and v.get(b"meta:m") == b"m3") or k.startswith(b"t")])

    # Regions: one at least, described as getTableRegions describes them.
    regions = call("regions()", t.regions)
    expect("regions() is a non-empty list of dicts",
           isinstance(regions, list) and bool(regions) and all(isinstance(r, dict) for r in regions), True)
    for region in regions if isinstance(regions, list) else []:
        missing = {"start_key", "end_key", "name", "id", "version"} - set(region)
        if missing:
            s.diffs.add(f"scratch: regions() has a region without {sorted(missing)}: {abbreviate(region)}")
    if isinstance(regions, list) and regions and all(isinstance(r, dict) for r in regions):
        expect("regions(): the first starts at b''", regions[0].get("start_key"), b"")
        expect("regions(): the last ends at b''", regions[-1].get("end_key"), b"")

    # Errors. A filter the server cannot evaluate is refused with an error naming it (the stand-in
    # refuses RowFilter; HBase evaluates it, and then its result must be HBase's).
    f = b"RowFilter(=, 'binary:r2')"
    try:
        got = call(f"scan(filter={f!r})", t.scan, filter=f)
    except Exception as error:
        message = error_message(error)
        expect(f"'RowFilter' in the error of scan(filter={f!r}): {message!r}", "RowFilter" in message, True)
    else:
        expect(f"scan(filter={f!r})", got, [(k, v) for k, v in contents if k == b"r2"])
    message = s.fails("put(b'r9', {b'nofamily:x': ...})", t.put, b"r9", {b"nofamily:x": b"1"})
    if message is not None:
        expect(f"'NoSuchColumnFamily' in the error of a put to a missing family: {message!r}",
               "NoSuchColumnFamily" in message, True)
    expect("row(b'r9') after the refused put", call("row(b'r9')", t.row, b"r9"), {})
    message = s.fails("connection.create_table() of an existing table", c.create_table, s.name, {"cf": dict()})
    if message is not None:
        expect(f"the error of creating an existing table names it: {message!r}", SCRATCH_TABLE in message, True)

    # Disable and delete: gone from the table list.
    call("connection.disable_table()", c.disable_table, s.name)
    expect("connection.is_table_enabled() after disable_table()",
           call("connection.is_table_enabled()", c.is_table_enabled, s.name), False)
    call("connection.delete_table()", c.delete_table, s.name)
    expect("connection.tables() after delete_table() has the scratch table",
           s.name.encode() in call("connection.tables()", c.tables), False)


def run(host, port, db, namespace, scratch=True):
    diffs, stats, scratch_diffs = Differences(), Stats(), Differences()
    scratch_calls = 0
    names = {t: f"{namespace}:{t}" if namespace else t for t in TABLES}
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        con.execute("SELECT 1 FROM pipeline_state LIMIT 1")  # fails now if it is not a cartflow store
    except sqlite3.Error as error:
        raise RuntimeError(f"cannot read the SQLite store {db}: {error}") from error
    try:
        connection = happybase.Connection(host, port=port, timeout=120_000, transport="buffered",
                                          protocol="binary", autoconnect=True)
    except Exception as error:
        con.close()
        raise RuntimeError(f"cannot connect to HBase Thrift at {host}:{port}: {type(error).__name__}: {error}") from error
    step = "connection.tables(), families(), regions()"
    try:
        check_admin(connection, names, diffs)
        for table in TABLES:
            step = f"table {names[table]}"
            check_table(connection, names[table], load_schema(con, table), con, stats, diffs)
            stats.tables += 1
        if scratch:
            step = "the scratch table"
            scratch_calls = check_scratch(connection, namespace, scratch_diffs)
    except Exception as error:
        raise RuntimeError(f"while checking {step}: {type(error).__name__}: {error!r}") from error
    finally:
        connection.close()
        con.close()
    if stats.rows < MIN_ROWS:
        diffs.add(f"only {stats.rows} rows compared (at least {MIN_ROWS} expected): is the store empty?")
    if diffs.count:
        print(f"happybase: {diffs.count} differences from SQLite; the first {len(diffs.first)}:")
        for message in diffs.first:
            print(f"  {message}")
    if scratch_diffs.count:
        print(f"happybase: {scratch_diffs.count} results on the scratch table differ from HBase's "
              f"({scratch_calls} client calls); the first {len(scratch_diffs.first)}:")
        for message in scratch_diffs.first:
            print(f"  {message}")
    if diffs.count or scratch_diffs.count:
        return 1
    scratched = (f"{scratch_calls} client calls on a scratch table answered as HBase answers them" if scratch
                 else "no scratch table (--no-scratch)")
    print(f"happybase: {stats.tables} tables, {stats.rows} rows, {stats.gets} point gets, "
          f"{stats.scans} prefix/range scans, {stats.filtered} filtered scans: every value equals SQLite; "
          f"{scratched}")
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("address", metavar="HOST:PORT", help="HBase Thrift1 server")
    parser.add_argument("db", metavar="SQLITE_DB", help="cartflow SQLite store of the same input")
    parser.add_argument("--namespace", metavar="NS", help="HBase namespace of cartflow's tables")
    parser.add_argument("--no-scratch", action="store_true",
                        help=f"skip the client calls on a scratch table ({SCRATCH_TABLE}, created and deleted)")
    args = parser.parse_args()
    host, _, port = args.address.rpartition(":")
    if not host or not port.isdigit():
        parser.error(f"{args.address!r} is not HOST:PORT")
    try:
        return run(host.strip("[]"), int(port), args.db, args.namespace, scratch=not args.no_scratch)
    except Exception as error:  # happybase, thriftpy2, socket or SQLite: fail, saying where
        traceback.print_exc()
        print(f"happybase: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
