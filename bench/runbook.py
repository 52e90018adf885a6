"""Runbook benchmark: one SSH connection per host across a runbook's steps, against one per step.

    python bench/runbook.py [--hosts 50] [--steps 5] [--rounds 3]

Starts an OpenSSH sshd lab on 127.0.0.1 with ``LogLevel INFO`` (tests/sshlab.py, which also
writes the inventory and known_hosts), writes a runbook of --steps cheap exec steps
(``echo sN <host>``), then runs ``hostops run`` on every host with connection reuse (the
default) and with ``--no-reuse`` (a new connection per host and step), alternating which goes
first from round to round. For each run it measures the wall time and counts the logins sshd
accepted (``Accepted publickey`` lines in its log); a run counts only if it exits 0 with every
host ok on every step. Prints the median wall time of each mode, the logins of each, and the
saving. See bench/README.md.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
sys.path.insert(0, os.path.join(ROOT, "tests"))
from sshlab import SSHD  # noqa: E402  (reused: the lab sshd, its login counter, inventory and known_hosts)

MODES = {"reuse": [], "no-reuse": ["--no-reuse"]}


def write_runbook(path: str, steps: int) -> str:
    lines = ["name: bench", "steps:"]
    for i in range(1, steps + 1):
        lines += [f"  - name: s{i}", f"    exec: echo s{i} {{{{ inventory_hostname }}}}"]
    with open(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    return path


def run_once(lab: SSHD, argv: List[str], env: Dict[str, str], hosts: int, steps: int, timeout: float) -> dict:
    before = lab.count_logins()
    t0 = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout)
    wall = time.monotonic() - t0
    time.sleep(0.2)  # let sshd's last log lines land
    logins = lab.count_logins() - before
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    ok = sum(1 for r in results if r.get("status") == "ok")
    if proc.returncode != 0 or ok != hosts * steps:
        raise SystemExit(f"runbook bench: a run failed (exit {proc.returncode}, {ok}/{hosts * steps} ok):\n"
                         f"{' '.join(argv)}\n{proc.stderr[-2000:]}")
    return {"wall": wall, "logins": logins}


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="hostops run: connection reuse against --no-reuse (see bench/README.md)")
    ap.add_argument("--hosts", type=int, default=50, help="lab hosts (default 50)")
    ap.add_argument("--steps", type=int, default=5, help="exec steps in the runbook (default 5)")
    ap.add_argument("--rounds", type=int, default=3, help="runs of each mode, alternating (default 3)")
    ap.add_argument("--forks", type=int, default=None, help="hostops -f (default: --hosts)")
    ap.add_argument("--timeout", type=float, default=600, help="bound on each run, seconds (default 600)")
    ap.add_argument("--keep", action="store_true", help="keep the lab directory (sshd log, runbook, inventory)")
    args = ap.parse_args(argv)
    if args.hosts < 1 or args.steps < 1 or args.rounds < 1:
        ap.error("--hosts, --steps and --rounds must be at least 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    workdir = tempfile.mkdtemp(prefix="hostops-bench-runbook-")
    lab = SSHD(os.path.join(workdir, "sshd"), log_level="INFO")
    try:
        lab.start()
        inv = lab.write_inventory(os.path.join(workdir, "inv.yml"), args.hosts)
        kh = lab.write_known_hosts(os.path.join(workdir, "known_hosts"))
        book = write_runbook(os.path.join(workdir, "bench.yml"), args.steps)
        home = os.path.join(workdir, "home")
        os.makedirs(home)
        env = dict(os.environ, HOME=home, XDG_STATE_HOME=os.path.join(workdir, "state"),
                   PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        env.pop("SSH_AUTH_SOCK", None)
        base = [sys.executable, "-m", "hostops", "run", book, "-i", inv, "--known-hosts", kh,
                "-f", str(args.forks or args.hosts), "--json"]
        print(f"runbook bench: {args.hosts} hosts x {args.steps} exec steps, {args.rounds} round(s), "
              f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}, sshd on 127.0.0.1:{lab.port}")
        runs: Dict[str, List[dict]] = {m: [] for m in MODES}
        order = list(MODES)
        for rnd in range(args.rounds):
            for mode in (order if rnd % 2 == 0 else order[::-1]):
                rec = run_once(lab, base + MODES[mode], env, args.hosts, args.steps, args.timeout)
                runs[mode].append(rec)
                print(f"  round {rnd + 1} {mode:<8}  {rec['wall']:6.2f}s  {rec['logins']:5d} logins")
        med = {m: statistics.median(r["wall"] for r in runs[m]) for m in MODES}
        logins = {m: sorted({r["logins"] for r in runs[m]}) for m in MODES}
        print(f"{'mode':<10} {'median s':>9} {'logins':>8}")
        for m in MODES:
            print(f"{m:<10} {med[m]:9.2f} {'/'.join(map(str, logins[m])):>8}")
        saved = med["no-reuse"] - med["reuse"]
        pct = 100.0 * saved / med["no-reuse"] if med["no-reuse"] else 0.0
        print(f"saving: {saved:.2f}s ({pct:.0f}%) with one connection per host "
              f"({logins['reuse'][0]} logins instead of {logins['no-reuse'][0]})")
        return 0
    finally:
        lab.stop()
        if args.keep:
            print(f"lab kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
