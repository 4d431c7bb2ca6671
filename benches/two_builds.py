#!/usr/bin/env python3
"""Two Lattice builds side by side, in one invocation (for finding regressions).

Starts each binary on a fresh database of the same PostgreSQL server, with the
same settings as the Synapse comparison (benches/servers.py), and runs
`lattice-load` against the two: every figure for each build and the ratio
first/second. Arguments after `--` go to lattice-load (e.g.
`-- --workloads sync,messages`).

    python3 benches/two_builds.py --new target/release/lattice \
        --old /path/to/older/lattice --load target/release/lattice-load
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile

from servers import Lattice, startup_order_report, stop_all
from side_by_side import database_url, psql


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--new", required=True, help="the lattice binary under test")
    ap.add_argument("--old", required=True, help="the baseline lattice binary")
    ap.add_argument("--load", required=True, help="the lattice-load binary")
    ap.add_argument("--admin-url", default=os.environ.get(
        "DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres"))
    ap.add_argument("--runs", type=int, default=1,
                    help="runs, alternating which build goes first; medians are printed")
    ap.add_argument("load_args", nargs="*", help="passed on to lattice-load")
    args = ap.parse_args()
    # The old build was linked with its own order file, if any.
    print(startup_order_report(args.new), flush=True)
    results = [one_run(args, i) for i in range(args.runs)]
    if args.runs > 1:
        summarize(results)


def summarize(results):
    """The median of each figure over the runs, and the median of the ratios."""
    print(f"\nMedians of {len(results)} runs (ratio: median of the per-run ratios new/old)\n")
    print("| workload | figure | new | old | new/old | better |")
    print("|---|---|---:|---:|---:|---|")
    for key in results[0]:
        rows = [r[key] for r in results if key in r]
        new = statistics.median(r["new"] for r in rows)
        old = statistics.median(r["old"] for r in rows)
        ratio = statistics.median(r["new"] / r["old"] for r in rows if r["old"])
        print(f"| {key[0]} | {key[1]} | {new:.3g} | {old:.3g} | {ratio:.2f} | {rows[0]['better']} |")


def one_run(args, index):
    """One lattice-load run against both builds; figures by (workload, figure)."""

    work = tempfile.mkdtemp(prefix="lattice-ab-")
    suffix = f"{os.getpid()}_{index}"
    dbs = {name: f"lattice_ab_{name}_{suffix}" for name in ("new", "old")}
    for db in dbs.values():
        psql(args.admin_url, f"create database {db} encoding 'UTF8' lc_collate 'C' "
                             "lc_ctype 'C' template template0")
    servers = []
    try:
        for name in ("new", "old"):
            os.makedirs(os.path.join(work, name))
            server = Lattice(getattr(args, name), os.path.join(work, name),
                             database_url(args.admin_url, dbs[name]))
            servers.append(server)
        new, old = servers
        targets = [("new", new), ("old", old)]
        if index % 2:
            targets.reverse()
        report = os.path.join(work, "load.json")
        command = [args.load, "--json", report, *args.load_args]
        for name, server in targets:
            command += ["--target", f"{name}={server.base}@{server.proc.pid}"]
        subprocess.run(command, check=True)
        # CPU time each server used over the whole run (user + system).
        tick = os.sysconf("SC_CLK_TCK")
        cpu = {}
        for name, server in (("new", new), ("old", old)):
            with open(f"/proc/{server.proc.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            cpu[name] = (int(fields[11]) + int(fields[12])) / tick
            print(f"{name}: server CPU {cpu[name]:.1f} s")
        with open(report) as f:
            doc = json.load(f)
        figures = {("server", "CPU time over the run (s)"): {**cpu, "better": "lower"}}
        for row in doc["rows"]:
            values = dict(zip(doc["targets"], row["values"]))
            if None in values.values():
                continue
            figures[(row["workload"], row["figure"])] = {
                "new": values["new"], "old": values["old"], "better": row.get("better", "")}
        return figures
    finally:
        stop_all(servers)
        if os.environ.get("LATTICE_AB_HOOK"):
            subprocess.run(os.environ["LATTICE_AB_HOOK"], shell=True, check=False)
        for db in dbs.values():
            psql(args.admin_url, f"drop database if exists {db} with (force)")
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
