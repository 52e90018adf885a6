"""--cluster benchmark: the local engine against a pre-started Dask cluster, same hosts.

    python bench/cluster.py --hosts 500 [--rounds 3] [--workers 2] [--forks 500]

Starts the test suite's lab sshd (tests/sshlab.py) on 127.0.0.1, then a Dask cluster the
way an operator would: ``hostops cluster scheduler --insecure`` and ``--workers`` processes of
``hostops cluster worker --insecure`` (loopback only), and waits for them. Each round runs
``hostops exec 'echo ok'`` on every host with the local engine and with ``--cluster``, then a
1-host ``--cluster`` run (the client's fixed cost: starting Python, importing distributed,
connecting). For every run: wall time, the client's CPU (its process tree, from wait4's
rusage), the scheduler's CPU delta (/proc), and how many hosts answered ok. Prints medians:

- client CPU per host = (CPU of the N-host cluster run - CPU of the 1-host one) / (N - 1),
- scheduler CPU per host = its CPU delta during the N-host run / N,
- wall ratio = median cluster wall / median local wall.

Raw figures go to bench/results/cluster-<timestamp>.json. See bench/README.md.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
sys.path.insert(0, os.path.join(ROOT, "tests"))
from sshlab import SSHD, free_port  # noqa: E402  (the lab sshd, inventory and known_hosts writers)

TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:13]) / TICK


def hostops(args: List[str], env: Dict[str, str], timeout: float = 900) -> Dict[str, float]:
    """One run: wall, the client's CPU (process tree), ok count."""
    t0 = time.monotonic()
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen([sys.executable, "-m", "hostops", *args], stdout=out, stderr=subprocess.DEVNULL,
                                env=env)
        _pid, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.monotonic() - t0
        out.seek(0)
        ok = sum(1 for line in out if b'"status": "ok"' in line)
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "ok": ok, "code": proc.returncode}


def start_cluster(workdir: str, workers: int, env: Dict[str, str]) -> tuple:
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    logs = open(os.path.join(workdir, "cluster.log"), "wb")
    procs = [subprocess.Popen([sys.executable, "-m", "hostops", "cluster", "scheduler", "--insecure", "--port",
                               str(port)], stdout=logs, stderr=subprocess.STDOUT, env=env)]
    for _ in range(workers):
        procs.append(subprocess.Popen([sys.executable, "-m", "hostops", "cluster", "worker", address, "--insecure",
                                       "--nthreads", "1", "--host", "127.0.0.1"], stdout=logs,
                                      stderr=subprocess.STDOUT, env=env))
    import distributed

    with distributed.Client(address, timeout="60s") as client:
        client.wait_for_workers(workers, timeout=120)
    return address, procs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hosts", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--forks", type=int, default=500)
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="hostops-bench-cluster-")
    env = dict(os.environ, HOME=work, PYTHONPATH=ROOT)
    env.pop("SSH_AUTH_SOCK", None)
    lab = SSHD(os.path.join(work, "sshd"), addresses=["127.0.0.1"])
    lab.start()
    procs: List[subprocess.Popen] = []
    try:
        inv = lab.write_inventory(os.path.join(work, "inv.yml"), a.hosts)
        one = lab.write_inventory(os.path.join(work, "one.yml"), 1)
        kh = lab.write_known_hosts(os.path.join(work, "known_hosts"))
        address, procs = start_cluster(work, a.workers, env)
        common = ["exec", "echo ok", "--known-hosts", kh, "--json", "-f", str(a.forks), "--connect-timeout", "60"]
        runs: Dict[str, List[Dict[str, float]]] = {"local": [], "cluster": [], "cluster-1": []}
        for r in range(a.rounds):
            runs["local"].append(hostops([*common, "-i", inv], env))
            before = proc_cpu(procs[0].pid)
            res = hostops([*common, "-i", inv, "--cluster", address], env)
            res["scheduler_cpu"] = proc_cpu(procs[0].pid) - before
            runs["cluster"].append(res)
            runs["cluster-1"].append(hostops([*common, "-i", one, "--cluster", address], env))
            print(f"round {r + 1}: local {runs['local'][-1]}, cluster {res}, cluster 1 host "
                  f"{runs['cluster-1'][-1]}", file=sys.stderr)

        def med(kind: str, field: str) -> float:
            return statistics.median(x[field] for x in runs[kind])

        n = a.hosts
        summary = {
            "hosts": n, "workers": a.workers, "rounds": a.rounds, "cores": os.cpu_count(),
            "local_wall_s": med("local", "wall"), "cluster_wall_s": med("cluster", "wall"),
            "wall_ratio": med("cluster", "wall") / med("local", "wall"),
            "local_client_cpu_s": med("local", "cpu"), "cluster_client_cpu_s": med("cluster", "cpu"),
            "cluster_client_fixed_cpu_s": med("cluster-1", "cpu"),
            "client_cpu_ms_per_host": 1000 * (med("cluster", "cpu") - med("cluster-1", "cpu")) / (n - 1),
            "scheduler_cpu_ms_per_host": 1000 * med("cluster", "scheduler_cpu") / n,
            "ok": {k: [x["ok"] for x in v] for k, v in runs.items()},
        }
        for key, value in summary.items():
            print(f"{key:28} {value:.3f}" if isinstance(value, float) else f"{key:28} {value}")
        os.makedirs(os.path.join(BENCH, "results"), exist_ok=True)
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        with open(os.path.join(BENCH, "results", f"cluster-{stamp}.json"), "w") as fh:
            json.dump({"summary": summary, "runs": runs}, fh, indent=1)
        return 0
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in reversed(procs):
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
        lab.stop()


if __name__ == "__main__":
    sys.exit(main())
