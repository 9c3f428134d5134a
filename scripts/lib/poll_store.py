#!/usr/bin/env python3
"""Reads a cartflow SQLite store every INTERVAL seconds, as the API does (one read transaction),
until the file STOP exists, and checks SPEC §7's continuity for its readers: once the store has shown
a frontier, no read sees an empty realtime_window or product table, or a frontier earlier than one
read before. Prints what it saw; exits 1 on any violation.
Usage: poll_store.py DB STOP [INTERVAL]"""
import os
import sqlite3
import sys
import time

db, stop = sys.argv[1], sys.argv[2]
interval = float(sys.argv[3]) if len(sys.argv) > 3 else 0.2
reads = rebuilding = failed_reads = 0
last = None
violations = []
while not os.path.exists(stop):
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, isolation_level=None, timeout=5)
        try:
            con.execute("BEGIN")
            state = dict(con.execute("SELECT key, value FROM pipeline_state").fetchall())
            windows = con.execute("SELECT COUNT(*) FROM realtime_window").fetchone()[0]
            products = con.execute("SELECT COUNT(*) FROM product").fetchone()[0]
            con.execute("COMMIT")
        finally:
            con.close()
    except sqlite3.Error:
        # No store yet (the first run has not created it), or busy: not a read a reader saw.
        failed_reads += 1
        time.sleep(interval)
        continue
    reads += 1
    frontier = state.get("frontier") or None
    if state.get("rebuild_frontier"):
        rebuilding += 1
    if last is not None:
        if frontier is None or windows == 0 or products == 0:
            violations.append(f"read {reads}: frontier {frontier}, {windows} windows, {products} products")
        elif frontier < last:
            violations.append(f"read {reads}: the frontier went back from {last} to {frontier}")
    if frontier is not None and (last is None or frontier > last):
        last = frontier
    time.sleep(interval)
print(f"reader: {reads} reads every {interval} s ({rebuilding} during a rebuild, {failed_reads} failed to open), "
      f"last frontier {last}, {len(violations)} violation(s)")
for v in violations[:20]:
    print("  " + v)
sys.exit(1 if violations or last is None else 0)
