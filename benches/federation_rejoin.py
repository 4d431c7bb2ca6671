#!/usr/bin/env python3
"""The timed joins of benches/federation_join.py again, against a resident that
is already running with its room built (building the 10,000-member room takes
most of an hour): a fresh Lattice and a fresh Synapse (on PostgreSQL) join it,
side by side, and the same four figures are printed.

    python3 benches/federation_rejoin.py --lattice BIN --synapse-python PY \\
        --tls DIR --resident-base http://127.0.0.1:PORT --resident-name localhost:PORT \\
        --alias '#big:localhost:PORT' --members 10000 \\
        --database-url URL --synapse-database-url URL [--faster-joins]

`--tls` is the running bench's certificate directory (its CA is the one the
resident trusts); the resident's room owner is `owner` with the benchmarks'
password. The databases must be fresh and empty (C locale for Synapse's).
"""

import argparse
import tempfile

from federation_join import print_joins, timed_join
from servers import Lattice, Synapse, call, peak_rss_mib, q, register, stop_all


class Resident:
    def __init__(self, base, name):
        self.base, self.name = base, name


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lattice", required=True)
    ap.add_argument("--synapse-python", required=True)
    ap.add_argument("--tls", required=True)
    ap.add_argument("--resident-base", required=True)
    ap.add_argument("--resident-name", required=True)
    ap.add_argument("--alias", required=True)
    ap.add_argument("--members", type=int, required=True)
    ap.add_argument("--database-url", required=True)
    ap.add_argument("--synapse-database-url", required=True)
    ap.add_argument("--faster-joins", action="store_true")
    args = ap.parse_args()

    resident = Resident(args.resident_base, args.resident_name)
    status, body = call(resident.base, "POST", "/_matrix/client/v3/login", body={
        "type": "m.login.password", "identifier": {"type": "m.id.user", "user": "owner"},
        "password": "bench-password"})
    assert status == 200, body
    owner = body["access_token"]
    status, body = call(resident.base, "GET",
                        f"/_matrix/client/v3/directory/room/{q(args.alias)}", owner)
    assert status == 200, body
    room = body["room_id"]

    work = tempfile.mkdtemp(prefix="lattice-fedrejoin-")
    servers = []
    try:
        baseline = Synapse(args.synapse_python, work, "baseline", tls=args.tls,
                           postgres=args.synapse_database_url)
        servers.append(baseline)
        lattice = Lattice(args.lattice, work, args.database_url, tls=args.tls,
                          faster_joins=args.faster_joins)
        servers.append(lattice)
        l_token, _ = register(lattice.base, "joiner")
        b_token, _ = register(baseline.base, "joiner")
        expected = args.members + 1
        l = timed_join(lattice, l_token, args.alias, room, expected, resident, owner, "lattice2")
        b = timed_join(baseline, b_token, args.alias, room, expected + 1, resident, owner,
                       "synapse2")
        print_joins((*l, peak_rss_mib(lattice.proc)), (*b, peak_rss_mib(baseline.proc)))
    finally:
        stop_all(servers)


if __name__ == "__main__":
    main()
