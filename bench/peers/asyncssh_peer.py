"""Peer: asyncssh, one event loop, asyncio.gather over every host with a semaphore of FORKS.

    python bench/peers/asyncssh_peer.py FLEET.json --forks 500

known_hosts is checked (read once and shared); the client key is read once.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _fleet  # noqa: E402

import asyncssh  # noqa: E402


async def run(fleet: dict, forks: int, timeout: float) -> None:
    sem = asyncio.Semaphore(forks)
    known_hosts = asyncssh.read_known_hosts(fleet["known_hosts"])
    key = asyncssh.read_private_key(fleet["key"])

    async def one(h: dict) -> None:
        async with sem:
            try:
                async with asyncssh.connect(h["host"], h["port"], username=fleet["user"], client_keys=[key],
                                            known_hosts=known_hosts, agent_path=None, config=None,
                                            connect_timeout=timeout) as conn:
                    r = await asyncio.wait_for(conn.run(fleet["command"], check=False), timeout)
                ok, why = _fleet.judge(r.exit_status, r.stdout or "")
            except (OSError, asyncssh.Error, asyncio.TimeoutError) as exc:
                ok, why = False, f"{type(exc).__name__}: {exc}"
            _fleet.report(h["name"], ok, why)

    await asyncio.gather(*(one(h) for h in fleet["hosts"]))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("fleet")
    ap.add_argument("--forks", type=int, default=50)
    ap.add_argument("--timeout", type=float, default=60.0)
    args = ap.parse_args()
    asyncio.run(run(_fleet.load(args.fleet), args.forks, args.timeout))
    return 0


if __name__ == "__main__":
    sys.exit(main())
