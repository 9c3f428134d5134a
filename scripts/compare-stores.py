#!/usr/bin/env python3
"""Compares two cartflow SQLite stores table by table (every result table; pipeline_state only by
its frontier). Exits 1 and prints the first differences when they differ."""
import sqlite3
import sys

TABLES = ["realtime_window", "realtime_top_product", "realtime_top_brand", "funnel", "recommendation",
          "brand_performance", "product", "category", "demographics", "daily_sales"]


def rows(db, table):
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        columns = len(con.execute(f"SELECT * FROM {table} LIMIT 0").description)
        order = ", ".join(str(i + 1) for i in range(columns))
        return con.execute(f"SELECT * FROM {table} ORDER BY {order}").fetchall()
    finally:
        con.close()


def frontier(db):
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        row = con.execute("SELECT value FROM pipeline_state WHERE key = 'frontier'").fetchone()
        return row[0] if row else None
    finally:
        con.close()


def main(a, b):
    differ = False
    for table in TABLES:
        x, y = rows(a, table), rows(b, table)
        if x != y:
            differ = True
            first = next((i for i, (p, q) in enumerate(zip(x, y)) if p != q), min(len(x), len(y)))
            print(f"{table}: {len(x)} rows in {a}, {len(y)} in {b}; first difference at row {first}:")
            print(f"  {x[first] if first < len(x) else None}")
            print(f"  {y[first] if first < len(y) else None}")
        else:
            print(f"{table}: {len(x)} rows, equal")
    fa, fb = frontier(a), frontier(b)
    print(f"frontier: {fa} / {fb}")
    if differ or fa != fb:
        print("stores differ")
        return 1
    print("stores equal")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: compare-stores.py A.db B.db")
    sys.exit(main(sys.argv[1], sys.argv[2]))
