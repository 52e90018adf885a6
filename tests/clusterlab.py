"""Shared helpers for the --cluster tests: a LocalCluster the test owns (2 workers, 1 thread
each, hostops's safe settings), its workers' pids, and comparing runs."""
from __future__ import annotations

import json
import os
import signal
import time
from typing import Any, Dict, List, Optional, Sequence

import pytest

distributed = pytest.importorskip("distributed")

from hostops.clusterconn import start_local  # noqa: E402


class LabCluster:
    """A LocalCluster with its client; always closed (the fixture's finaliser)."""

    def __init__(self, workers: int = 2, **kw: Any):
        self.cluster = start_local(workers, **kw)
        self.client = distributed.Client(self.cluster, set_as_default=False)
        self.address = self.cluster.scheduler_address

    def worker_pids(self) -> Dict[str, int]:
        return self.client.run(os.getpid)

    def wait_workers(self, n: int, timeout: float = 120) -> None:
        self.client.wait_for_workers(n, timeout=timeout)

    def kill_one(self) -> int:
        pids = self.worker_pids()
        pid = sorted(pids.values())[0]
        os.kill(pid, signal.SIGKILL)
        return pid

    def close(self) -> None:
        try:
            self.client.close(timeout=20)
        finally:
            self.cluster.close(timeout=30)


@pytest.fixture
def dask_cluster():
    c = LabCluster(2)
    try:
        yield c
    finally:
        c.close()


def host_records(lines: List[dict]) -> Dict[str, tuple]:
    """host → what must be identical between engines (no times)."""
    return {r["host"]: (r["status"], r.get("exit_code"), r.get("stdout"), r.get("stderr"), r.get("error"))
            for r in lines if r.get("event", "host") == "host"}


def log_hosts(path: str) -> Dict[str, tuple]:
    with open(path) as fh:
        return host_records([json.loads(line) for line in fh if line.strip()])


def wait_for(predicate, timeout: float, what: str, step: float = 0.2) -> None:
    """A hang guard: wait until ``predicate()`` holds, fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(step)


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def finish(proc: Any, timeout: float = 400) -> tuple:
    """(exit code, the --json lines, stderr) of a hostops run; killed if it outlives ``timeout``."""
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, [json.loads(x) for x in out.splitlines() if x.strip()], err


def hostops_env(home: str, **extra: str) -> Dict[str, str]:
    env = dict(os.environ, HOME=str(home), PYTHONPATH=ROOT)
    env.pop("SSH_AUTH_SOCK", None)
    env.update(extra)
    return env


class CliCluster:
    """``hostops cluster scheduler`` and one ``hostops cluster worker --zone Z`` per zone, as
    separate processes (each worker gets LAB_ZONE=Z in its environment, so a host with
    ``ansible_connection: local`` can say which zone's worker ran it)."""

    def __init__(self, workdir: str, zones: List[str], tls: Optional[Dict[str, str]] = None):
        import sys

        from sshlab import free_port

        self.procs: List[Any] = []
        self.logs: List[str] = []
        port = free_port()
        scheme = "tls" if tls else "tcp"
        self.address = f"{scheme}://127.0.0.1:{port}"
        sec = (["--tls-ca-file", tls["ca"], "--tls-cert", tls["cert"], "--tls-key", tls["key"]] if tls
               else ["--insecure"])
        self.security = tls
        self._start([sys.executable, "-m", "hostops", "cluster", "scheduler", "--port", str(port), *sec],
                    os.path.join(workdir, "scheduler.log"), {})
        for zone in zones:
            self._start([sys.executable, "-m", "hostops", "cluster", "worker", self.address, "--zone", zone,
                         "--nthreads", "1", "--host", "127.0.0.1", *sec], os.path.join(workdir, f"worker-{zone}.log"),
                        {"LAB_ZONE": zone})
        self.client = distributed.Client(self.address, security=self._security(), timeout="60s",
                                         set_as_default=False)
        self.client.wait_for_workers(len(zones), timeout=120)

    def _security(self) -> Any:
        if not self.security:
            return None
        from distributed.security import Security

        return Security(tls_ca_file=self.security["ca"], tls_client_cert=self.security["cert"],
                        tls_client_key=self.security["key"], require_encryption=True)

    def _start(self, argv: List[str], log: str, extra: Dict[str, str]) -> None:
        import subprocess

        self.logs.append(log)
        with open(log, "wb") as fh:
            self.procs.append(subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT,
                                               env=hostops_env(os.environ.get("HOME", "/"), **extra)))

    def log_text(self) -> str:
        out = []
        for path in self.logs:
            with open(path, errors="replace") as fh:
                out.append(f"== {path}\n" + fh.read()[-3000:])
        return "\n".join(out)

    def close(self) -> None:
        try:
            self.client.close(timeout=10)
        except Exception:  # noqa: BLE001  (the scheduler may be gone already)
            pass
        for proc in reversed(self.procs):  # workers first, the scheduler last
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except Exception:  # noqa: BLE001  (stuck: kill it)
                proc.kill()
                proc.wait(10)


def make_tls(directory: str, addresses: Sequence[str] = ()) -> Dict[str, str]:
    """A CA and one certificate (for 127.0.0.1, localhost and ``addresses``) signed by it, as PEM files."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn: str) -> Any:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("hostops test CA")).issuer_name(name("hostops test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    alt = x509.SubjectAlternativeName([x509.DNSName("localhost")] + [x509.IPAddress(ipaddress.ip_address(a))
                                                                      for a in ("127.0.0.1", *addresses)])
    cert = (x509.CertificateBuilder().subject_name(name("hostops test")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(alt, critical=False).sign(ca_key, hashes.SHA256()))
    paths = {"ca": os.path.join(directory, "ca.pem"), "cert": os.path.join(directory, "cert.pem"),
             "key": os.path.join(directory, "key.pem")}
    with open(paths["ca"], "wb") as fh:
        fh.write(ca.public_bytes(serialization.Encoding.PEM))
    with open(paths["cert"], "wb") as fh:
        fh.write(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(paths["key"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))
    return paths
