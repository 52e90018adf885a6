"""Peer: Fabric's ThreadingGroup (one thread per host, all at once: Fabric has no pool size).

    python bench/peers/fabric_peer.py FLEET.json

Fabric's Connection sets paramiko's AutoAddPolicy and loads no known_hosts; to check host
keys like the others, each connection loads the fleet's known_hosts and uses RejectPolicy.
Every host here is 127.0.0.1:PORT and Fabric's Connection compares equal on (user, host,
port), which would fold all results into one GroupResult entry; a subclass keeps identity
equality, nothing else changes.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _fleet  # noqa: E402

import paramiko  # noqa: E402
from fabric import Connection, ThreadingGroup  # noqa: E402
from fabric.exceptions import GroupException  # noqa: E402


class HostConnection(Connection):
    __hash__ = object.__hash__

    def __eq__(self, other):
        return self is other


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("fleet")
    ap.add_argument("--timeout", type=int, default=60)
    args = ap.parse_args()
    fleet = _fleet.load(args.fleet)
    names = {}
    conns = []
    for h in fleet["hosts"]:
        c = HostConnection(h["host"], user=fleet["user"], port=h["port"], connect_timeout=args.timeout,
                           connect_kwargs={"key_filename": [fleet["key"]], "look_for_keys": False,
                                           "allow_agent": False})
        c.client.load_host_keys(fleet["known_hosts"])
        c.client.set_missing_host_key_policy(paramiko.RejectPolicy())
        names[id(c)] = h["name"]
        conns.append(c)
    group = ThreadingGroup.from_connections(conns)
    try:
        results = group.run(fleet["command"], hide=True, warn=True, in_stream=False)
    except GroupException as exc:
        results = exc.result
    for c, r in results.items():
        if isinstance(r, BaseException):
            _fleet.report(names[id(c)], False, f"{type(r).__name__}: {r}")
        else:
            ok, why = _fleet.judge(r.exited, r.stdout)
            _fleet.report(names[id(c)], ok, why)
    group.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
