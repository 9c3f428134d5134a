#!/usr/bin/env python3
"""Writes the events a cartflow archive holds as a REES46 CSV file (what `batch` reads), in the
order of their topic (partition, offset), reading the archive with DuckDB. Fails when an offset is
archived twice. Prints the number of events per partition. Used to check `run` against exactly what
a broker kept when the broker itself lost records.
Usage: archive-csv.py ROOT OUT.csv"""
import sys

import duckdb


def main(root, out):
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    table = f"read_parquet('{root}/raw/events/*/*/*/*/*.parquet', hive_partitioning = true)"
    rows, distinct = con.execute(
        f"SELECT count(*), count(DISTINCT (kafka_partition, kafka_offset)) FROM {table}").fetchone()
    if rows != distinct:
        sys.exit(f"{root}: {rows} rows but {distinct} distinct (partition, offset)")
    per_partition = con.execute(
        f"SELECT kafka_partition, count(*) FROM {table} GROUP BY 1 ORDER BY 1").fetchall()
    con.execute(f"""
        COPY (SELECT strftime(event_time, '%Y-%m-%d %H:%M:%S UTC') AS event_time, event_type, product_id,
                     category_id, category_code, brand, price, user_id, user_session
              FROM {table} ORDER BY kafka_partition, kafka_offset)
        TO '{out}' (HEADER, DELIMITER ',')""")
    print(f"archive-csv: {rows} events (" + ", ".join(f"partition {p}: {n}" for p, n in per_partition) + f") to {out}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
