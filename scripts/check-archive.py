#!/usr/bin/env python3
"""Reads a cartflow archive with DuckDB as a Hive-partitioned Parquet table and checks it against a
store `batch` wrote from the same events: the same number of events, every (partition, offset) once,
the same purchase revenue, every row in the directory of its event hour, typed columns."""
import sqlite3
import sys

import duckdb


def connect(root):
    """DuckDB, able to read `root`: a local directory, or s3://bucket/prefix through its httpfs
    extension (from PyPI's duckdb-extension-httpfs: DuckDB cannot download it offline), pointed at
    the AWS_* variables' endpoint and keys."""
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    if root.startswith("s3://"):
        import glob
        import os
        from urllib.parse import urlparse

        import duckdb_extension_httpfs
        found = glob.glob(os.path.join(os.path.dirname(duckdb_extension_httpfs.__file__), "extensions",
                                       "v" + duckdb.__version__, "httpfs.duckdb_extension"))
        if not found:
            sys.exit(f"no httpfs extension for DuckDB {duckdb.__version__} in duckdb-extension-httpfs")
        con.execute(f"LOAD '{found[0]}'")
        endpoint = urlparse(os.environ["AWS_ENDPOINT"])
        con.execute(f"""CREATE SECRET (TYPE s3, KEY_ID '{os.environ["AWS_ACCESS_KEY_ID"]}',
            SECRET '{os.environ["AWS_SECRET_ACCESS_KEY"]}', REGION '{os.environ.get("AWS_DEFAULT_REGION", "us-east-1")}',
            ENDPOINT '{endpoint.netloc}', USE_SSL {str(endpoint.scheme == "https").lower()}, URL_STYLE 'path')""")
    return con


def main(root, store):
    con = connect(root)
    table = f"read_parquet('{root}/raw/events/*/*/*/*/*.parquet', hive_partitioning = true)"
    rows, distinct, revenue, misplaced = con.execute(f"""
        SELECT count(*),
               count(DISTINCT (kafka_partition, kafka_offset)),
               sum(price) FILTER (WHERE event_type = 'purchase'),
               count(*) FILTER (WHERE year != year(event_time) OR month != month(event_time)
                                  OR day != day(event_time) OR hour != hour(event_time))
        FROM {table}""").fetchone()
    types = dict(con.execute(f"SELECT column_name, column_type FROM (DESCRIBE SELECT * FROM {table})").fetchall())
    store_con = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    applied = int(store_con.execute("SELECT value FROM pipeline_state WHERE key = 'events_applied'").fetchone()[0])
    revenue_cents = store_con.execute("SELECT sum(revenue_cents) FROM product").fetchone()[0]
    print(f"duckdb: {rows} rows, {distinct} distinct (partition, offset), purchase revenue {revenue}, "
          f"{misplaced} rows outside their hour directory")
    print(f"batch:  {applied} events applied, purchase revenue {revenue_cents / 100:.2f}")
    print(f"types:  event_time {types['event_time']}, price {types['price']}, product_id {types['product_id']}")
    failures = []
    if rows != applied:
        failures.append(f"{rows} archived rows, {applied} events in batch")
    if distinct != rows:
        failures.append(f"{rows - distinct} duplicated offsets")
    if int(round(revenue * 100)) != revenue_cents:
        failures.append(f"revenue {revenue} against {revenue_cents / 100:.2f}")
    if misplaced:
        failures.append(f"{misplaced} rows outside their hour directory")
    if types["price"] != "DECIMAL(12,2)" or not types["event_time"].startswith("TIMESTAMP"):
        failures.append(f"column types {types}")
    if failures:
        print("archive check FAILED: " + "; ".join(failures))
        return 1
    print("archive check passed")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: check-archive.py ARCHIVE_ROOT BATCH_STORE.db")
    sys.exit(main(sys.argv[1], sys.argv[2]))
