#!/usr/bin/env python3
"""Client-API benchmark, Lattice against Synapse on the same machine, same run.

Starts Lattice and Synapse on the same PostgreSQL server (a fresh database
each, the same connection pool size, rate limits out of the way on both,
registration open with cheap password hashing on both), runs `lattice-load`
against the two (every workload against one, then the other), then measures
the PostgreSQL server's own ceiling for one-row INSERT transactions with
pgbench (one connection, and as many as the load generator's clients) and
prints it beside the send throughputs.

Then an application-service phase, on a second pair of servers (so that the
first phase's figures are those of servers without appservices): both get the
same appservice registration, whose URL is lattice-load itself, acknowledging
each transaction at once; its `appservice` workload prints, for each server,
the events/s sent into a room with a user of the appservice's namespace and
the events/s delivered to the appservice (`--no-appservice` skips the phase).

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

from servers import Lattice, Synapse, free_port, startup_order_report, stop_all


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


# Must match AS_TOKEN and HS_TOKEN in src/bin/lattice-load.rs.
APPSERVICE = """id: lattice-load
url: "http://{addr}"
as_token: lattice-load-appservice-as-token
hs_token: lattice-load-appservice-hs-token
sender_localpart: loadasbot
rate_limited: false
namespaces:
  users: [{{regex: "@loadas_.*", exclusive: true}}]
  aliases: []
  rooms: []
"""


def workloads_arg(load_args):
    """The value of `--workloads` among lattice-load's arguments, and the
    arguments without it."""
    value, rest, skip = None, [], False
    for i, a in enumerate(load_args):
        if skip:
            skip = False
        elif a == "--workloads" and i + 1 < len(load_args):
            value, skip = load_args[i + 1], True
        elif a.startswith("--workloads="):
            value = a.split("=", 1)[1]
        else:
            rest.append(a)
    return value, rest


def run_pair(args, work, dbs, load_args, appservices=None):
    """Starts Lattice and Synapse (each with its appservice registration when
    `appservices` maps their names to listening addresses), runs lattice-load
    against both, and returns its rows."""
    registrations = {}
    for name, addr in (appservices or {}).items():
        path = os.path.join(work, f"{name}-appservice.yaml")
        with open(path, "w") as f:
            f.write(APPSERVICE.format(addr=addr))
        registrations[name] = [path]
    servers = []
    try:
        lattice = Lattice(args.lattice, work, database_url(args.admin_url, dbs["lattice"]),
                          appservices=registrations.get("lattice", ()))
        servers.append(lattice)
        synapse = Synapse(args.synapse_python, work, "synapse",
                          postgres=database_url(args.admin_url, dbs["synapse"]),
                          appservices=registrations.get("synapse", ()))
        servers.append(synapse)
        report = os.path.join(work, "load.json")
        extra = []
        for name, addr in (appservices or {}).items():
            extra += ["--appservice", f"{name}={addr}"]
        subprocess.run(
            [args.load,
             "--target", f"lattice={lattice.base}@{lattice.proc.pid}",
             "--target", f"synapse={synapse.base}@{synapse.proc.pid}",
             "--clients", str(args.clients), "--json", report, *extra, *load_args],
            check=True)
        with open(report) as f:
            return json.load(f)["rows"]
    finally:
        stop_all(servers)


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
    ap.add_argument("--no-appservice", action="store_true",
                    help="skip the application-service phase")
    ap.add_argument("load_args", nargs="*", help="passed on to lattice-load")
    args = ap.parse_args()
    print(startup_order_report(args.lattice), flush=True)

    work = tempfile.mkdtemp(prefix="lattice-sbs-")
    suffix = os.getpid()
    names = ("lattice", "synapse", "pgbench", "lattice_as", "synapse_as")
    dbs = {name: f"{name}_sbs_{suffix}" for name in names}
    for db in dbs.values():
        psql(args.admin_url, f"create database {db} encoding 'UTF8' lc_collate 'C' "
                             "lc_ctype 'C' template template0")
    workloads, other_args = workloads_arg(args.load_args)
    chosen = (workloads or "all").split(",")
    rows = []
    try:
        if chosen != ["appservice"]:
            rows += run_pair(args, work, dbs, args.load_args)
        if not args.no_appservice and ("all" in chosen or "appservice" in chosen):
            phase = os.path.join(work, "appservice")
            os.makedirs(phase)
            addrs = {name: f"127.0.0.1:{free_port()}" for name in ("lattice", "synapse")}
            rows += run_pair(args, phase,
                             {"lattice": dbs["lattice_as"], "synapse": dbs["synapse_as"]},
                             ["--workloads", "appservice", *other_args], addrs)

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
