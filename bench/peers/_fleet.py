"""The fleet description the peers read: written by bench/fleet.py as fleet.json.

{"user": ..., "key": <private key path>, "known_hosts": <path>, "command": "echo ok",
 "hosts": [{"name": "h001", "host": "127.0.0.1", "port": 2222}, ...]}

Every peer prints one line per host: ``OK <name>`` when the command exited 0 and printed
``ok``, else ``FAIL <name> <reason>``. fleet.py counts the OK lines.
"""
from __future__ import annotations

import json
import sys


def load(path: str) -> dict:
    with open(path) as fh:
        return json.load(fh)


def report(name: str, ok: bool, why: str = "") -> None:
    if ok:
        sys.stdout.write(f"OK {name}\n")
    else:
        sys.stdout.write(f"FAIL {name} {' '.join(str(why).split())[:300]}\n")


def judge(exit_code, stdout: str):
    """(ok, why) for one host's result."""
    if exit_code == 0 and stdout.strip() == "ok":
        return True, ""
    return False, f"exit={exit_code} stdout={stdout.strip()[:60]!r}"
