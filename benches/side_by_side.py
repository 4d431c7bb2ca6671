#!/usr/bin/env python3
"""Client-API benchmark, Lattice against Synapse on the same machine, same run.

Starts Lattice and Synapse on the same PostgreSQL server (a fresh database
each, the same connection pool size, rate limits out of the way on both,
registration open with cheap password hashing on both), runs `lattice-load`
against the two (every workload against one, then the other), then measures
the PostgreSQL server's own ceiling for one-row INSERT transactions with
pgbench (one connection, and as many as the load generator's clients) and
prints it beside the send throughputs.

Run through scripts/bench-synapse, which builds the release binaries and the
Synapse venv. Arguments after `--` go to lattice-load (e.g. `-- --members 200`).
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.parse

from servers import Lattice, Synapse, stop_all


def psql(admin, sql):
    subprocess.run(["psql", admin, "-v", "ON_ERROR_STOP=1", "-qc", sql], check=True)


def database_url(admin, name):
    url = urllib.parse.urlparse(admin)
    return urllib.parse.urlunparse(url._replace(path="/" + name))


def pgbench_tps(pgbench, url, clients, seconds, script):
    out = subprocess.run(
        [pgbench, "-n", "-f", script, "-c", str(clients), "-j", str(min(clients, 2)),
         "-T", str(seconds), url],
        check=True, capture_output=True, text=True).stdout
    match = re.search(r"tps = ([0-9.]+)", out)
    if not match:
        sys.exit(f"pgbench printed no tps:\n{out}")
    return float(match.group(1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lattice", required=True, help="the lattice binary")
    ap.add_argument("--load", required=True, help="the lattice-load binary")
    ap.add_argument("--synapse-python", required=True)
    ap.add_argument("--admin-url", required=True,
                    help="PostgreSQL maintenance database URL (databases are created)")
    ap.add_argument("--pgbench", default=shutil.which("pgbench") or "pgbench")
    ap.add_argument("--pgbench-seconds", type=int, default=10)
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("load_args", nargs="*", help="passed on to lattice-load")
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="lattice-sbs-")
    suffix = os.getpid()
    dbs = {name: f"{name}_sbs_{suffix}" for name in ("lattice", "synapse", "pgbench")}
    for db in dbs.values():
        psql(args.admin_url, f"create database {db} encoding 'UTF8' lc_collate 'C' "
                             "lc_ctype 'C' template template0")
    servers = []
    try:
        lattice = Lattice(args.lattice, work, database_url(args.admin_url, dbs["lattice"]))
        servers.append(lattice)
        synapse = Synapse(args.synapse_python, work, "synapse",
                          postgres=database_url(args.admin_url, dbs["synapse"]))
        servers.append(synapse)
        report = os.path.join(work, "load.json")
        subprocess.run(
            [args.load,
             "--target", f"lattice={lattice.base}@{lattice.proc.pid}",
             "--target", f"synapse={synapse.base}@{synapse.proc.pid}",
             "--clients", str(args.clients), "--json", report, *args.load_args],
            check=True)
        with open(report) as f:
            rows = json.load(f)["rows"]
    finally:
        stop_all(servers)

    try:
        # The database's own write ceiling, with the servers stopped.
        pg = database_url(args.admin_url, dbs["pgbench"])
        psql(pg, "create table one_row (id bigserial primary key, body text not null)")
        script = os.path.join(work, "insert.sql")
        with open(script, "w") as f:
            f.write("insert into one_row (body) values ('benchmark message');\n")
        one = pgbench_tps(args.pgbench, pg, 1, args.pgbench_seconds, script)
        many = pgbench_tps(args.pgbench, pg, args.clients, args.pgbench_seconds, script)
        print(f"\nPostgreSQL ceiling (pgbench, one-row INSERT transactions, "
              f"{args.pgbench_seconds} s each): 1 connection {one:.0f} tps, "
              f"{args.clients} connections {many:.0f} tps\n")
        print("| send throughput | lattice | synapse | pgbench | lattice/pgbench | synapse/pgbench |")
        print("|---|---:|---:|---:|---:|---:|")
        for row in rows:
            if row["unit"] != "events/s":
                continue
            ceiling = one if "sequential" in row["workload"] else many
            lat, syn = row["values"]
            cells = [f"{v:.0f}" if v is not None else "failed" for v in (lat, syn)]
            ratios = [f"{v / ceiling:.3f}" if v is not None else "" for v in (lat, syn)]
            print(f"| {row['workload']}: {row['figure']} | {cells[0]} | {cells[1]} | "
                  f"{ceiling:.0f} | {ratios[0]} | {ratios[1]} |")
    finally:
        for db in dbs.values():
            psql(args.admin_url, f"drop database if exists {db} with (force)")
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
