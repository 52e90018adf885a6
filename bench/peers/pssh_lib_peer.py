"""Peer: parallel-ssh's ParallelSSHClient (libssh2 via ssh2-python, gevent), pool_size=FORKS.

    python bench/peers/pssh_lib_peer.py FLEET.json --forks 500

Note: parallel-ssh has no host-key checking at all (no known_hosts option): it accepts any
server key. That is the library's behaviour, recorded in bench/README.md.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _fleet  # noqa: E402

from pssh.clients import ParallelSSHClient  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("fleet")
    ap.add_argument("--forks", type=int, default=50)
    ap.add_argument("--timeout", type=float, default=60.0)
    args = ap.parse_args()
    fleet = _fleet.load(args.fleet)
    hosts = fleet["hosts"]
    ports = {h["port"] for h in hosts}
    if len(ports) != 1:
        raise SystemExit("pssh_lib_peer: expects one port for every host")
    # every host is 127.0.0.1 here: the output list comes back in host order, so zip with names
    client = ParallelSSHClient([h["host"] for h in hosts], user=fleet["user"], port=ports.pop(),
                               pkey=fleet["key"], pool_size=args.forks, num_retries=1,
                               timeout=args.timeout, allow_agent=False, identity_auth=False)
    output = client.run_command(fleet["command"], stop_on_errors=False)
    client.join(output, timeout=args.timeout)
    for h, out in zip(hosts, output):
        if out.exception is not None:
            _fleet.report(h["name"], False, f"{type(out.exception).__name__}: {out.exception}")
            continue
        try:
            stdout = "\n".join(out.stdout)
        except Exception as exc:  # noqa: BLE001 - a read error is that host's failure
            _fleet.report(h["name"], False, f"{type(exc).__name__}: {exc}")
            continue
        ok, why = _fleet.judge(out.exit_code, stdout)
        _fleet.report(h["name"], ok, why)
    return 0


if __name__ == "__main__":
    sys.exit(main())
