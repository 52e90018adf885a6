"""put benchmark: ``hostops put`` against parallel ``scp`` on N hosts served by one real sshd.

    python bench/put.py [--size-mib 100] [--hosts 10] [--rounds 3]

Starts an OpenSSH sshd lab on 127.0.0.1-8 (tests/sshlab.py), writes a file of --size-mib
random MiB, then alternates, round after round (the order flips each round):

  hostops  ``hostops put FILE DESTDIR/ -i INV --known-hosts KH -f HOSTS --json``
           (every lab host shares one file system, so all hosts write the same path, each
           through its own temporary file renamed into place)
  scp      one ``scp`` per host, all in parallel from a shell loop, each to its own path:
           ``for h in ...; do scp -q -P PORT -i KEY -o UserKnownHostsFile=KH
           -o StrictHostKeyChecking=yes -o BatchMode=yes FILE USER@ADDR:DEST_h & done; wait``

For each run it measures the wall time and samples the client's whole process tree in /proc
(every ~20 ms) for its peak summed RSS and its largest process. Every run's result is
checked (exit 0, every destination byte-identical) before it counts. Prints the medians,
MiB/s per host and in total, the ratio hostops/scp, and hostops's peak RSS with a 1 MiB file
next to the big one, to show memory does not grow with the file.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Dict, List, Optional, Tuple

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
sys.path.insert(0, os.path.join(ROOT, "tests"))
from sshlab import SSHD  # noqa: E402  (reused: the lab sshd, inventory and known_hosts writers)
from fleet import descendants, rss_bytes  # noqa: E402  (the fleet benchmark's /proc readers)

MiB = 1024 * 1024
ADDRESSES = [f"127.0.0.{i}" for i in range(1, 9)]


# ------------------------------------------------------------------ /proc sampling
class TreeSampler(threading.Thread):
    """Peak summed RSS of a process tree, and its largest single process, sampled from /proc."""

    def __init__(self, pid: int, interval: float = 0.02):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak_sum_kib = self.peak_one_kib = self.peak_procs = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            sizes = [(rss_bytes(p) or 0) // 1024 for p in descendants(self.pid)]
            self.peak_sum_kib = max(self.peak_sum_kib, sum(sizes))
            self.peak_one_kib = max(self.peak_one_kib, max(sizes, default=0))
            self.peak_procs = max(self.peak_procs, sum(1 for s in sizes if s))
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join(5)


def measure(argv: List[str], env: Dict[str, str]) -> Tuple[float, subprocess.CompletedProcess, TreeSampler]:
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            stdin=subprocess.DEVNULL)
    sampler = TreeSampler(proc.pid)
    sampler.start()
    out, err = proc.communicate()
    wall = time.monotonic() - t0
    sampler.stop()
    return wall, subprocess.CompletedProcess(argv, proc.returncode, out, err), sampler


# ------------------------------------------------------------------ helpers
def make_file(path: str, mib: int) -> str:
    h = hashlib.sha256()
    with open(path, "wb") as fh:
        for _ in range(mib):
            block = os.urandom(MiB)
            h.update(block)
            fh.write(block)
    return h.hexdigest()


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(4 * MiB), b""):
            h.update(block)
    return h.hexdigest()


def clear_dir(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)


def fail(tool: str, proc: subprocess.CompletedProcess, why: str) -> None:
    sys.stderr.write(f"bench/put.py: {tool} run is wrong ({why}); exit {proc.returncode}\n"
                     f"stdout: {proc.stdout.decode(errors='replace')[-2000:]}\n"
                     f"stderr: {proc.stderr.decode(errors='replace')[-2000:]}\n")
    sys.exit(1)


def version(argv: List[str]) -> str:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        return (p.stdout + p.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "?"


def fmt_mib(kib: int) -> str:
    return f"{kib / 1024:.0f} MiB"


# ------------------------------------------------------------------ main
def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=100, help="size of the file sent (default 100)")
    ap.add_argument("--hosts", type=int, default=10, help="lab hosts to send it to (default 10)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds, each running both tools (default 3, min 3)")
    ap.add_argument("--json", metavar="FILE", help="also write every run's figures to FILE")
    args = ap.parse_args(argv)
    if args.size_mib < 1 or args.hosts < 1 or args.rounds < 3:
        ap.error("--size-mib and --hosts must be >= 1, --rounds >= 3")
    if not shutil.which("scp"):
        ap.error("scp not found (apt-get install openssh-client)")

    work = tempfile.mkdtemp(prefix="hostops-bench-put-")
    lab = SSHD(os.path.join(work, "sshd"), addresses=ADDRESSES)
    try:
        lab.start()
        inv = lab.write_inventory(os.path.join(work, "inv.yml"), args.hosts)
        kh = lab.write_known_hosts(os.path.join(work, "known_hosts"))
        entries = lab.host_entries(args.hosts)
        src = os.path.join(work, "payload.bin")
        digest = make_file(src, args.size_mib)
        small = os.path.join(work, "small.bin")
        small_digest = make_file(small, 1)
        env = dict(os.environ)
        env.pop("SSH_AUTH_SOCK", None)
        env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
        env["HOME"] = os.path.join(work, "home")
        os.makedirs(env["HOME"], exist_ok=True)

        hostops_dest = os.path.join(work, "dest-hostops")
        scp_dest = os.path.join(work, "dest-scp")

        def hostops_argv(path: str) -> List[str]:
            return [sys.executable, "-m", "hostops", "put", path, hostops_dest + "/", "-i", inv, "--known-hosts", kh,
                    "-f", str(args.hosts), "--json", "--no-progress"]

        ssh_opts = (f"-q -P {lab.port} -i {shlex.quote(lab.user_key)} -o UserKnownHostsFile={shlex.quote(kh)} "
                    "-o StrictHostKeyChecking=yes -o BatchMode=yes")
        loop = "pids=; "
        for e in entries:
            target = f"{lab.user}@{e['ansible_host']}:{shlex.quote(os.path.join(scp_dest, e['name'] + '.bin'))}"
            loop += f"scp {ssh_opts} {shlex.quote(src)} {target} & pids=\"$pids $!\"; "
        loop += "rc=0; for p in $pids; do wait $p || rc=1; done; exit $rc"
        scp_argv = ["bash", "-c", loop]

        def run_hostops(path: str = src, want: str = digest) -> Tuple[float, TreeSampler]:
            clear_dir(hostops_dest)
            wall, proc, sampler = measure(hostops_argv(path), env)
            lines = [json.loads(x) for x in proc.stdout.decode().splitlines() if x.strip()]
            if proc.returncode != 0 or len(lines) != args.hosts or any(r["status"] != "ok" for r in lines):
                fail("hostops", proc, "not every host ok")
            got = os.path.join(hostops_dest, os.path.basename(path))
            if sha256(got) != want or os.listdir(hostops_dest) != [os.path.basename(path)]:
                fail("hostops", proc, "destination differs or temporary files left")
            return wall, sampler

        def run_scp() -> Tuple[float, TreeSampler]:
            clear_dir(scp_dest)
            wall, proc, sampler = measure(scp_argv, env)
            if proc.returncode != 0:
                fail("scp", proc, "an scp failed")
            files = sorted(os.listdir(scp_dest))
            if len(files) != args.hosts or any(os.path.getsize(os.path.join(scp_dest, f)) != args.size_mib * MiB
                                               for f in files) or sha256(os.path.join(scp_dest, files[0])) != digest:
                fail("scp", proc, "destinations differ")
            return wall, sampler

        print(f"bench/put.py: {args.size_mib} MiB to {args.hosts} hosts (one sshd on {len(ADDRESSES)} loopback "
              f"addresses), {args.rounds} rounds, order alternating")
        print(f"  {platform.python_implementation()} {platform.python_version()}, paramiko "
              f"{version([sys.executable, '-c', 'import paramiko; print(paramiko.__version__)'])}, "
              f"{version(['ssh', '-V'])}; {os.cpu_count()} CPUs, load average at start "
              f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        runs: Dict[str, List[Tuple[float, int, int]]] = {"hostops": [], "scp": []}
        for rnd in range(args.rounds):
            order = ["hostops", "scp"] if rnd % 2 == 0 else ["scp", "hostops"]
            for tool in order:
                wall, s = run_hostops() if tool == "hostops" else run_scp()
                runs[tool].append((wall, s.peak_sum_kib, s.peak_one_kib))
                print(f"  round {rnd + 1} {tool:<8} {wall:7.2f} s   peak RSS {fmt_mib(s.peak_sum_kib)} "
                      f"(largest process {fmt_mib(s.peak_one_kib)}, {s.peak_procs} processes)", flush=True)
            clear_dir(hostops_dest)
            clear_dir(scp_dest)
        small_wall, small_s = run_hostops(small, small_digest)
        clear_dir(hostops_dest)

        total = args.size_mib * args.hosts
        med = {t: statistics.median(w for w, _, _ in r) for t, r in runs.items()}
        print()
        print(f"  {'tool':<8} {'median wall':>12} {'MiB/s per host':>15} {'MiB/s total':>12} {'peak RSS (tree)':>16} "
              f"{'largest proc':>13}")
        for tool, r in runs.items():
            print(f"  {tool:<8} {med[tool]:>10.2f} s {args.size_mib / med[tool]:>15.1f} {total / med[tool]:>12.1f} "
                  f"{fmt_mib(max(x[1] for x in r)):>16} {fmt_mib(max(x[2] for x in r)):>13}")
        print(f"  ratio hostops/scp (wall time): {med['hostops'] / med['scp']:.2f}  "
              f"(< 1: hostops faster; throughput ratio {med['scp'] / med['hostops']:.2f})")
        print(f"  hostops peak RSS (tree): {fmt_mib(small_s.peak_sum_kib)} with a 1 MiB file, "
              f"{fmt_mib(max(x[1] for x in runs['hostops']))} with {args.size_mib} MiB "
              f"(largest process {fmt_mib(small_s.peak_one_kib)} vs {fmt_mib(max(x[2] for x in runs['hostops']))})")
        print(f"  load average at end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        if args.json:
            with open(args.json, "w") as fh:
                json.dump({"size_mib": args.size_mib, "hosts": args.hosts, "rounds": args.rounds,
                           "runs": {t: [{"wall": w, "peak_rss_kib": a, "largest_kib": b} for w, a, b in r]
                                    for t, r in runs.items()},
                           "hostops_1mib": {"wall": small_wall, "peak_rss_kib": small_s.peak_sum_kib,
                                            "largest_kib": small_s.peak_one_kib}}, fh, indent=2)
        return 0
    finally:
        lab.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
