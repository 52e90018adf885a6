"""Peer: the naive baseline. paramiko SSHClient in a multiprocessing.Pool of 64 processes,
one host per task; every task makes a fresh client, loads known_hosts and the key itself.

    python bench/peers/naive_pool_peer.py FLEET.json [--processes 64]
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _fleet  # noqa: E402

import paramiko  # noqa: E402

FLEET: dict = {}
TIMEOUT = 60.0


def task(h: dict):
    client = paramiko.SSHClient()
    try:
        client.load_host_keys(FLEET["known_hosts"])
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        client.connect(h["host"], h["port"], username=FLEET["user"], key_filename=FLEET["key"],
                       look_for_keys=False, allow_agent=False, timeout=TIMEOUT, banner_timeout=TIMEOUT,
                       auth_timeout=TIMEOUT)
        _stdin, stdout, _stderr = client.exec_command(FLEET["command"], timeout=TIMEOUT)
        out = stdout.read().decode(errors="replace")
        ok, why = _fleet.judge(stdout.channel.recv_exit_status(), out)
    except Exception as exc:  # noqa: BLE001 - any failure is that host's
        ok, why = False, f"{type(exc).__name__}: {exc}"
    finally:
        client.close()
    return h["name"], ok, why


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("fleet")
    ap.add_argument("--processes", type=int, default=64)
    ap.add_argument("--timeout", type=float, default=60.0)
    args = ap.parse_args()
    global TIMEOUT
    FLEET.update(_fleet.load(args.fleet))
    TIMEOUT = args.timeout
    with multiprocessing.Pool(args.processes) as pool:
        for name, ok, why in pool.imap_unordered(task, FLEET["hosts"]):
            _fleet.report(name, ok, why)
        pool.close()
        pool.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
