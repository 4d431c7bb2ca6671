#!/usr/bin/env python3
"""Federation benchmark, Lattice against Synapse on the same machine, same run.

A resident server hosts a room with MEMBERS joined users and STATE state events
in all: a Synapse by default, or with `--resident lattice` a second Lattice (a
Synapse needs about 0.13 s per event to build the room, so rooms of 10,000
members are built on a Lattice; both joiners then join the same room from the
same resident, which is what the comparison needs). Then, side by side:

* join: a Lattice user and a user of a second Synapse ("baseline") join the room
  over federation. Reported: the time until `POST /join` returns; until a
  message the resident sends right after the join is readable on the joining
  server (`/messages`); and until the joining server answers `/joined_members`
  with every member (Synapse joins with partial state and fills it in
  afterwards; Lattice with full state, or with partial state under
  `--faster-joins`, its `federation.faster_joins`). Then each joining
  server's peak RSS (VmHWM) so far.
* inbound PDUs: the resident's users send MESSAGES messages; reported: how long
  after the first send each joining server holds all of them, and the rate.

Run through scripts/bench-federation (it builds Lattice in release mode and uses
the Synapse venv of the test suite). Needs `lattice` (the binary), a PostgreSQL
for Lattice (DATABASE_URL of a maintenance database; a fresh database is
created), and nothing else. Figures go to stdout.
"""

import argparse
import concurrent.futures
import json
import os
import shutil
import subprocess
import tempfile
import time

from servers import Lattice, Synapse, call, peak_rss_mib, q, register, stop_all


def joined_count(server, token, room):
    status, body = call(server.base, "GET",
                        f"/_matrix/client/v3/rooms/{q(room)}/joined_members", token)
    return len(body.get("joined", {})) if status == 200 else 0


def readable(server, token, room, body):
    """Whether `server` shows the message `body` among the room's newest events."""
    path = f"/_matrix/client/v3/rooms/{q(room)}/messages?dir=b&limit=20"
    status, page = call(server.base, "GET", path, token)
    return status == 200 and any(
        e.get("content", {}).get("body") == body for e in page.get("chunk", []))


def timed_join(server, token, alias, room, expected_members, resident, resident_token, tag):
    """(join returned, first message readable, all members visible), seconds."""
    start = time.monotonic()
    status, body = call(server.base, "POST", f"/_matrix/client/v3/join/{q(alias)}", token,
                        body={})
    joined = time.monotonic() - start
    assert status == 200, body
    text = f"first message after {tag}'s join"
    status, body = call(resident.base, "PUT",
                        f"/_matrix/client/v3/rooms/{q(room)}/send/m.room.message/first-{tag}",
                        resident_token, {"msgtype": "m.text", "body": text})
    assert status == 200, body

    # Each condition polled on its own thread, its time taken when the call
    # that saw it returns (either call may wait: `/messages` on a backfill,
    # `/joined_members` on the full state).
    def until(check):
        while not check():
            time.sleep(0.05)
        return time.monotonic() - start

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        first = pool.submit(until, lambda: readable(server, token, room, text))
        full = pool.submit(
            until, lambda: joined_count(server, token, room) >= expected_members)
        return joined, first.result(), full.result()


def print_joins(lattice, synapse):
    """The four figures of each joiner, (join, first message, full, peak RSS),
    and their ratios."""
    print("             /join returned   first message readable   all members visible"
          "   peak RSS (MiB)")
    for name, (j, f, a, r) in (("lattice", lattice), ("synapse", synapse)):
        print(f"  {name}:  {j:14.2f}   {f:22.2f}   {a:19.2f}   {r:14.1f}")
    l, b = lattice, synapse
    print(f"  ratio lattice/synapse:   /join {l[0] / b[0]:5.2f}   "
          f"first message {l[1] / b[1]:5.2f}   full {l[2] / b[2]:5.2f}   "
          f"peak RSS {l[3] / b[3]:5.2f}", flush=True)


def message_count(server, token, room, prefix):
    """Messages with `prefix` the server holds (paging back through the room)."""
    seen = 0
    frm = None
    while True:
        path = f"/_matrix/client/v3/rooms/{q(room)}/messages?dir=b&limit=1000"
        path += '&filter=' + q(json.dumps({"types": ["m.room.message"]}))
        if frm:
            path += "&from=" + q(frm)
        status, page = call(server.base, "GET", path, token)
        if status != 200:
            return seen
        for e in page["chunk"]:
            if e.get("content", {}).get("body", "").startswith(prefix):
                seen += 1
        if not page["chunk"] or "end" not in page:
            return seen
        frm = page["end"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lattice", required=True)
    ap.add_argument("--synapse-python", required=True)
    ap.add_argument("--database-url", required=True, help="a fresh, empty database for Lattice")
    ap.add_argument("--members", type=int, default=1000)
    ap.add_argument("--state", type=int, default=5000)
    ap.add_argument("--messages", type=int, default=500)
    ap.add_argument("--faster-joins", action="store_true",
                    help="Lattice joins with partial state (federation.faster_joins)")
    ap.add_argument("--resident", choices=("synapse", "lattice"), default="synapse",
                    help="the server hosting the big room (lattice: a second Lattice on "
                         "the database --resident-database-url)")
    ap.add_argument("--resident-database-url",
                    help="a fresh, empty database for a Lattice resident")
    ap.add_argument("--synapse-database-url",
                    help="a fresh, empty database for the joining Synapse (default: SQLite)")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--pause-file",
                    help="once the room is built, wait while this file exists before the "
                         "timed joins (building a big room takes long: quiet the machine, "
                         "then remove the file)")
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="lattice-fedbench-")
    tls = os.path.join(work, "tls")
    subprocess.run([args.lattice, "generate-tls-cert", "--dir", tls], check=True,
                   capture_output=True)
    servers = []
    try:
        if args.resident == "lattice":
            if not args.resident_database_url:
                ap.error("--resident lattice needs --resident-database-url")
            resident = Lattice(args.lattice, work, args.resident_database_url, tls=tls,
                               name="resident")
        else:
            resident = Synapse(args.synapse_python, work, "resident", tls=tls)
        servers.append(resident)
        # On PostgreSQL, as Synapse is deployed (SQLite's cache would count
        # in its RSS, and Synapse advises against SQLite beyond testing).
        baseline = Synapse(args.synapse_python, work, "baseline", tls=tls,
                           postgres=args.synapse_database_url)
        servers.append(baseline)
        lattice = Lattice(args.lattice, work, args.database_url, tls=tls,
                          faster_joins=args.faster_joins)
        servers.append(lattice)

        t0 = time.monotonic()
        owner, owner_id = register(resident.base, "owner")
        status, body = call(resident.base, "POST", "/_matrix/client/v3/createRoom", owner, {
            "preset": "public_chat", "room_alias_name": "big", "name": "Big room"})
        assert status == 200, body
        room = body["room_id"]
        alias = f"#big:{resident.name}"

        def member(i):
            token, _ = register(resident.base, f"member{i}")
            status, body = call(resident.base, "POST",
                                f"/_matrix/client/v3/rooms/{q(room)}/join", token, {})
            assert status == 200, body
            return token

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            tokens = list(pool.map(member, range(args.members - 1)))
        # Other state: custom state events, up to --state in all (about 7 come
        # with the room).
        extra = max(0, args.state - args.members - 7)

        def state(i):
            status, body = call(resident.base, "PUT",
                                f"/_matrix/client/v3/rooms/{q(room)}/state/org.lattice.bench/{i}",
                                owner, {"n": i, "pad": "x" * 64})
            assert status == 200, body

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(state, range(extra)))
        print(f"room built on the resident {args.resident}: {args.members} members, "
              f"~{args.members + extra + 7} state events, {time.monotonic() - t0:.0f} s",
              flush=True)

        if args.resident == "lattice":
            # Table statistics, as autovacuum would have gathered them on a
            # server that has held the room for a while (a PostgreSQL with
            # autovacuum off, as on the CI machines, has none, and plans the
            # resident's look-ups as sequential scans).
            subprocess.run(["psql", "-qc", "analyze", args.resident_database_url], check=True)
        if args.pause_file and os.path.exists(args.pause_file):
            print(f"waiting while {args.pause_file} exists", flush=True)
            while os.path.exists(args.pause_file):
                time.sleep(1)
        l_token, _ = register(lattice.base, "joiner")
        b_token, _ = register(baseline.base, "joiner")
        expected = args.members + 1
        # Lattice first, then Synapse; the resident warmed up building the room.
        l_join, l_first, l_full = timed_join(lattice, l_token, alias, room, expected + 0,
                                             resident, owner, "lattice")
        b_join, b_first, b_full = timed_join(baseline, b_token, alias, room, expected + 1,
                                             resident, owner, "synapse")
        mode = "partial state" if args.faster_joins else "full state"
        print(f"join of the big room over federation (seconds; Lattice with {mode}):")
        print_joins((l_join, l_first, l_full, peak_rss_mib(lattice.proc)),
                    (b_join, b_first, b_full, peak_rss_mib(baseline.proc)))

        # Inbound PDUs: the resident's members send; both joiners receive.
        prefix = "bench message "
        start = time.monotonic()

        def send(i):
            token = tokens[i % len(tokens)]
            status, body = call(resident.base, "PUT",
                                f"/_matrix/client/v3/rooms/{q(room)}/send/m.room.message/b{i}",
                                token, {"msgtype": "m.text", "body": f"{prefix}{i}"})
            assert status == 200, body

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(send, range(args.messages)))
        sent = time.monotonic() - start
        done = {}
        while len(done) < 2 and time.monotonic() - start < 600:
            for name, server, token in (("lattice", lattice, l_token),
                                        ("synapse", baseline, b_token)):
                if name not in done and message_count(server, token, room, prefix) >= args.messages:
                    done[name] = time.monotonic() - start
            time.sleep(0.2)
        print(f"inbound PDUs: {args.messages} messages sent by the resident in {sent:.2f} s")
        for name in ("lattice", "synapse"):
            if name in done:
                print(f"  {name}: all held after {done[name]:6.2f} s "
                      f"({args.messages / done[name]:7.1f} events/s end to end)")
            else:
                print(f"  {name}: not all arrived within 600 s")
        if len(done) == 2:
            print(f"  ratio lattice/synapse (time to hold all): "
                  f"{done['lattice'] / done['synapse']:5.2f}")
    finally:
        stop_all(servers)
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
