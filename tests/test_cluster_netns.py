"""Two machines' worth of zones on one box: two network namespaces, each with its own sshd and
its own ``hostops cluster worker --zone``, the TLS scheduler (and the client) in the root
namespace. A zone's hosts are reachable only from inside that namespace.

Needs root and ``ip netns`` (skipped otherwise; .ci/run runs it where both are there)."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import uuid

import pytest
import yaml

pytest.importorskip("distributed")
from clusterlab import finish as finish_run  # noqa: E402  (after importorskip)
from clusterlab import hostops_env, make_tls, wait_for  # noqa: E402
from sshlab import SSHD, find_sshd, free_port  # noqa: E402

from hostops.cluster import LOST  # noqa: E402


def _netns_usable() -> bool:
    if os.geteuid() != 0 or shutil.which("ip") is None or find_sshd() is None:
        return False
    name, outside, inside = f"hostops-probe-{os.getpid()}", f"hzp{os.getpid()}o", f"hzp{os.getpid()}i"
    if subprocess.run(["ip", "netns", "add", name], capture_output=True, timeout=30).returncode != 0:
        return False
    try:  # the test needs a veth pair with one end inside (some containers allow namespaces but not veth)
        ok = subprocess.run(["ip", "link", "add", outside, "type", "veth", "peer", "name", inside],
                            capture_output=True, timeout=30).returncode == 0
        ok = ok and subprocess.run(["ip", "link", "set", inside, "netns", name], capture_output=True,
                                   timeout=30).returncode == 0
        subprocess.run(["ip", "link", "del", outside], capture_output=True, timeout=30)
        return ok
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)


pytestmark = [pytest.mark.timeout(900),
              pytest.mark.skipif(not _netns_usable(), reason="needs root, ip netns and veth pairs")]

ZONES = {"a": 1, "b": 2}  # zone → its subnet's third octet: 10.201.N.1 (root side), 10.201.N.2 (inside)


def sh(*args: str) -> None:
    subprocess.run(list(args), check=True, capture_output=True, timeout=30)


class TwoZones:
    def __init__(self, workdir: str):
        import distributed

        self.tag = uuid.uuid4().hex[:6]
        self.procs = []
        self.sshds = {}
        self.namespaces = []
        self.workdir = workdir
        for zone, n in ZONES.items():
            ns = f"hostops-{zone}-{self.tag}"
            outside, inside = f"hz{zone}o{self.tag}", f"hz{zone}i{self.tag}"
            sh("ip", "netns", "add", ns)
            self.namespaces.append(ns)
            sh("ip", "link", "add", outside, "type", "veth", "peer", "name", inside)
            sh("ip", "link", "set", inside, "netns", ns)
            sh("ip", "addr", "add", f"10.201.{n}.1/24", "dev", outside)
            sh("ip", "link", "set", outside, "up")
            sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"10.201.{n}.2/24", "dev", inside)
            sh("ip", "netns", "exec", ns, "ip", "link", "set", inside, "up")
            sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
            # the namespace is new, nothing else listens there: a fixed port; reached through the veth pair
            self.sshds[zone] = SSHD(os.path.join(workdir, f"sshd-{zone}"), addresses=[f"10.201.{n}.2"],
                                    wrap=["ip", "netns", "exec", ns], port=2222).start()
        self.tls = make_tls(workdir, [f"10.201.{n}.{i}" for n in ZONES.values() for i in (1, 2)])
        sec = ["--tls-ca-file", self.tls["ca"], "--tls-cert", self.tls["cert"], "--tls-key", self.tls["key"]]
        self.sec = sec
        port = free_port("0.0.0.0")  # the scheduler listens on every address: the zones reach it through their veth
        self.address = f"tls://127.0.0.1:{port}"
        self._start([sys.executable, "-m", "hostops", "cluster", "scheduler", "--host", "0.0.0.0", "--port",
                     str(port), *sec], "scheduler")
        for zone, n in ZONES.items():
            ns = f"hostops-{zone}-{self.tag}"
            self._start(["ip", "netns", "exec", ns, sys.executable, "-m", "hostops", "cluster", "worker",
                         f"tls://10.201.{n}.1:{port}", "--zone", zone, "--host", f"10.201.{n}.2", "--nthreads", "1",
                         *sec], f"worker-{zone}")
        from distributed.security import Security

        self.client = distributed.Client(self.address, timeout="60s", set_as_default=False, security=Security(
            tls_ca_file=self.tls["ca"], tls_client_cert=self.tls["cert"], tls_client_key=self.tls["key"],
            require_encryption=True))
        self.client.wait_for_workers(2, timeout=120)

    def _start(self, argv, name):
        log = open(os.path.join(self.workdir, f"{name}.log"), "wb")
        self.procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                           env=hostops_env(os.environ.get("HOME", "/"))))
        log.close()

    def zone_worker_pid(self, zone: str) -> int:
        info = self.client.scheduler_info()["workers"]
        pids = self.client.run(os.getpid)
        (addr,) = [a for a, w in info.items() if f"hostops-zone-{zone}" in (w.get("resources") or {})]
        return pids[addr]

    def inventory(self, path: str, count: int = 50, wrong_zone: bool = False) -> str:
        children = {}
        for zone in ZONES:
            sshd = self.sshds[zone]
            pinned = "a" if wrong_zone else zone
            children[f"zone_{zone}"] = {"vars": {"hostops_zone": pinned}, "hosts": {
                f"{zone}{i:03d}": {"ansible_host": sshd.addresses[0], "ansible_port": sshd.port}
                for i in range(1, count + 1)}}
        data = {"all": {"vars": {"ansible_user": self.sshds["a"].user,
                                 "ansible_ssh_private_key_file": self.sshds["a"].user_key}, "children": children}}
        # one user key for both sshds
        shutil.copy(os.path.join(self.sshds["a"].workdir, "authorized_keys"),
                    os.path.join(self.sshds["b"].workdir, "authorized_keys"))
        with open(path, "w") as fh:
            yaml.safe_dump(data, fh)
        return path

    def known_hosts(self, path: str) -> str:
        with open(path, "w") as fh:
            for sshd in self.sshds.values():
                fh.write(sshd.known_hosts_line() + "\n")
        return path

    def close(self):
        try:
            self.client.close(timeout=10)
        except Exception:  # noqa: BLE001  (already gone)
            pass
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(self.procs):
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
        for sshd in self.sshds.values():
            sshd.stop()
        for ns in self.namespaces:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)  # its veth ends go with it


@pytest.fixture
def zones(tmp_path):
    z = TwoZones(str(tmp_path))
    try:
        yield z
    finally:
        z.close()


def run(zones, args, home, timeout=400):
    return subprocess.Popen([sys.executable, "-m", "hostops", *args, "--cluster", zones.address, *zones.sec, "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=hostops_env(home),
                            cwd=str(home))


def finish(proc, timeout=400):
    code, lines, err = finish_run(proc, timeout)
    return code, {r["host"]: r for r in lines}, err


def test_pinned_run_then_wrong_zone_then_one_zones_worker_killed(zones, tmp_path, isolated_home):
    kh = zones.known_hosts(str(tmp_path / "known_hosts"))
    inv = zones.inventory(str(tmp_path / "inv.yml"))
    # 1. pinned: every host is reached from inside its zone
    code, results, err = finish(run(zones, ["exec", "echo ok", "-i", inv, "--known-hosts", kh], isolated_home))
    assert code == 0, err
    assert len(results) == 100 and all(r["status"] == "ok" for r in results.values())
    # 2. zone b's hosts pinned to zone a's worker: not reachable from there
    wrong = zones.inventory(str(tmp_path / "wrong.yml"), wrong_zone=True)
    code, results, err = finish(run(zones, ["exec", "echo ok", "-i", wrong, "--known-hosts", kh,
                                            "--connect-timeout", "5"], isolated_home))
    assert code == 4, err
    assert {r["status"] for h, r in results.items() if h.startswith("b")} == {"unreachable"}
    assert {r["status"] for h, r in results.items() if h.startswith("a")} == {"ok"}
    # 3. zone a's Dask worker SIGKILLed mid-run: only zone a's started hosts fail
    ledger = tmp_path / "ledger"
    ledger.mkdir()
    book = tmp_path / "book.yml"
    book.write_text("name: ledger\nhosts: all\nsteps:\n  - name: mark\n"
                    f"    exec: \"echo run >> {ledger}/{{{{ inventory_hostname }}}}; sleep 1\"\n")
    proc = run(zones, ["run", str(book), "-i", inv, "--known-hosts", kh, "-f", "4"], isolated_home)
    try:
        wait_for(lambda: sum(n.startswith("a") for n in os.listdir(ledger)) >= 6 or proc.poll() is not None, 300,
                 "zone a's hosts to start")
        assert proc.poll() is None
        os.kill(zones.zone_worker_pid("a"), signal.SIGKILL)
    finally:
        code, results, err = finish(proc)
    assert len(results) == 100, err
    failed = {h for h, r in results.items() if r["status"] != "ok"}
    assert failed and all(h.startswith("a") for h in failed), failed
    assert all(results[h]["error"] == LOST for h in failed)
    counts = {h: len((ledger / h).read_text().splitlines()) if (ledger / h).exists() else 0 for h in results}
    assert max(counts.values()) == 1
    assert all(counts[h] == 1 for h in results if h not in failed)
