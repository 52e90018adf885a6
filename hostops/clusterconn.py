"""Reaching a Dask cluster safely: the spec, the connection, and the checks made before any
host is touched (each refusal is a UsageError, exit 2, nothing run).

- ``distributed`` missing: the install hint (``pip install 'hostops[dask]'``).
- A scheduler that would re-run a lost task (``allowed-failures`` above 0): refused unless
  ``--allow-rerun`` (a re-run task re-runs commands that may already have run).
- A daemonic Dask worker (it cannot start hostops's worker processes): refused.
- A selected host whose zone (``hostops_zone``) has no worker: refused (Dask would wait forever).
- Passwords only travel with ``--send-secrets``, and never over a non-loopback ``tcp://``
  (``tls://``, loopback or ``local`` only); values that are only masked never travel.
- Relative key, known_hosts or ssh_config paths: refused (paths are resolved on the worker).

``local[:N]`` starts a LocalCluster with the settings hostops needs (:func:`safe_config`).

Owns: :class:`ClusterSpec`, :func:`connect`, :func:`safe_config`, the checks. Imports
distributed only inside functions. Must not import: api, cli.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

from hostops.errors import UsageError

INSTALL_HINT = ("--cluster needs Dask distributed, which is not installed: pip install 'hostops[dask]' "
                "(Python 3.10 or later)")
#: The resource a zone's workers offer (``hostops cluster worker --zone NAME``); a shard of
#: that zone's hosts asks for one unit of it. Large, so it never limits concurrency.
ZONE_UNITS = 1_000_000


def zone_resource(zone: str) -> str:
    return f"hostops-zone-{zone}"


@dataclasses.dataclass
class ClusterSpec:
    """Where and how a run goes to Dask. ``zones``: host name → zone (``hostops_zone``)."""

    address: str
    shard_size: Optional[int] = None
    allow_rerun: bool = False
    retry_lost: bool = False
    send_secrets: bool = False
    zones: Dict[str, str] = dataclasses.field(default_factory=dict)
    tls_ca_file: Optional[str] = None
    tls_cert: Optional[str] = None
    tls_key: Optional[str] = None
    sudo_pass_file: Optional[str] = None  # read on the worker
    sudo_pass_env: Optional[str] = None   # read on the worker

    @property
    def local_workers(self) -> Optional[int]:
        """N for ``local[:N]`` (default 2), None for a scheduler address."""
        if self.address == "local":
            return 2
        if self.address.startswith("local:"):
            try:
                n = int(self.address[6:])
            except ValueError:
                n = 0
            if n < 1:
                raise UsageError(f"--cluster {self.address}: use local or local:N with N a whole number >= 1")
            return n
        return None


def safe_config() -> Dict[str, Any]:
    """The Dask settings hostops needs (for ``local``, and what ``hostops cluster`` sets):
    no task retries, non-daemonic workers, no profiler (it deadlocked workers running many
    SSH threads: CPython gh-106883), no dashboard, a worker heartbeat timeout of a minute."""
    return {
        "distributed.scheduler.allowed-failures": 0,
        "distributed.worker.daemon": False,
        "distributed.worker.profile.enabled": False,
        "distributed.scheduler.worker-ttl": "60s",
        "distributed.admin.tick.limit": "60s",
        "distributed.scheduler.http.routes": [],  # no dashboard or HTTP API (what remains binds to loopback)
        "distributed.worker.http.routes": [],
    }


def import_distributed() -> Any:
    try:
        import distributed
    except ImportError:
        raise UsageError(INSTALL_HINT) from None
    return distributed


def start_local(workers: int, threads: int = 1) -> Any:
    """A LocalCluster (processes) with :func:`safe_config`; the caller closes it.

    The settings are made for the whole process, not for the call only: a nanny reads
    ``distributed.worker.daemon`` each time it (re)starts its worker, after a worker died too."""
    import dask

    distributed = import_distributed()
    dask.config.set(safe_config())
    return distributed.LocalCluster(n_workers=workers, threads_per_worker=threads, processes=True,
                                    dashboard_address="127.0.0.1:0", host="127.0.0.1", silence_logs=40)


def _security(spec: ClusterSpec) -> Any:
    if not spec.address.startswith("tls://"):
        return None
    from distributed.security import Security

    if not (spec.tls_ca_file and spec.tls_cert and spec.tls_key):
        raise UsageError(f"--cluster {spec.address} needs --tls-ca-file, --tls-cert and --tls-key (the client's "
                         "certificate, signed by the cluster's CA)")
    return Security(tls_ca_file=spec.tls_ca_file, tls_client_cert=spec.tls_cert, tls_client_key=spec.tls_key,
                    require_encryption=True)


def connect(spec: ClusterSpec) -> Tuple[Any, Any]:
    """(client, the LocalCluster started for ``local`` or None)."""
    distributed = import_distributed()
    import dask

    cluster = None
    n = spec.local_workers
    with dask.config.set({"distributed.client.heartbeat": "5s"}):
        if n is not None:
            cluster = start_local(n)
            client = distributed.Client(cluster, set_as_default=False)
        else:
            if "://" not in spec.address:
                raise UsageError(f"--cluster {spec.address}: give a scheduler address such as tls://sched:8786, "
                                 "or local[:N]")
            try:
                client = distributed.Client(spec.address, security=_security(spec), timeout="20s",
                                            set_as_default=False)
            except (OSError, TimeoutError) as exc:
                raise UsageError(f"--cluster {spec.address}: cannot reach the scheduler ({exc}); is `hostops "
                                 "cluster scheduler` running there?") from None
    return client, cluster


def check_cluster(client: Any, spec: ClusterSpec, hosts: Sequence[str]) -> Dict[str, List[str]]:
    """Refuse what would break at most once or never finish; the workers of each zone."""
    from hostops.shard import worker_facts

    allowed = client.run_on_scheduler(_allowed_failures)
    if allowed and not spec.allow_rerun:
        raise UsageError(f"the scheduler at {spec.address} re-runs a task whose worker is lost (allowed-failures "
                         f"= {allowed}): commands could run twice. Start it with `hostops cluster scheduler` (or "
                         "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES=0), or accept re-runs with --allow-rerun")
    info = client.scheduler_info(n_workers=-1) if _takes_n_workers(client) else client.scheduler_info()
    workers = info.get("workers", {})
    if not workers:
        raise UsageError(f"the scheduler at {spec.address} has no workers; start some with "
                         "`hostops cluster worker --zone NAME`")
    facts = client.run(worker_facts)
    daemonic = sorted(addr for addr, f in facts.items() if f.get("daemon"))
    if daemonic:
        raise UsageError(f"Dask worker(s) {', '.join(daemonic)} are daemonic and cannot start hostops's worker "
                         "processes; start them with `hostops cluster worker` (or distributed.worker.daemon: "
                         "False)")
    by_zone: Dict[str, List[str]] = {}
    for addr, w in workers.items():
        for res in (w.get("resources") or {}):
            if res.startswith("hostops-zone-"):
                by_zone.setdefault(res[len("hostops-zone-"):], []).append(addr)
    missing: Dict[str, List[str]] = {}
    for host in hosts:
        zone = spec.zones.get(host)
        if zone is not None and zone not in by_zone:
            missing.setdefault(zone, []).append(host)
    if missing:
        from hostops.hostlist import compact

        parts = [f"zone {z!r} ({compact(h)})" for z, h in sorted(missing.items())]
        raise UsageError(f"no Dask worker serves {', '.join(parts)}: start one there with `hostops cluster worker "
                         f"--zone NAME {spec.address}`, or leave those hosts out (-l)")
    by_zone[""] = list(workers)
    return by_zone


def _takes_n_workers(client: Any) -> bool:
    import inspect

    return "n_workers" in inspect.signature(client.scheduler_info).parameters


def _allowed_failures(dask_scheduler: Any = None) -> int:
    return int(getattr(dask_scheduler, "allowed_failures", 0))


def check_secrets(spec: ClusterSpec, options: Any) -> None:
    """Passwords travel only with --send-secrets, and never in clear off this machine. Values
    that are only masked (--secret-env, hostops_secret_vars) never travel: the client masks."""
    secrets = options.secrets
    if spec.send_secrets and not _private_link(spec.address):
        raise UsageError(f"--send-secrets over {spec.address} would send passwords in clear: use a tls:// scheduler "
                         "(hostops cluster scheduler --tls-ca-file … --tls-cert … --tls-key …)")
    if (secrets.sudo_password or secrets.ssh_password) and not spec.send_secrets:
        raise UsageError("this run has a password (--ask-pass/--ask-sudo-pass) that --cluster would have to send to "
                         "the workers: give --send-secrets (over tls://), or let the workers read the sudo password "
                         "themselves (--sudo-pass-file FILE / --sudo-pass-env VAR, read on each worker)")


def _private_link(address: str) -> bool:
    """tls://, a LocalCluster, inproc, or tcp:// to a loopback address."""
    if address.startswith(("tls://", "local", "inproc://")):
        return True
    if not address.startswith("tcp://"):
        return False
    host = address[6:].rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_paths(options: Any, targets: Sequence[Any]) -> None:
    """Key, known_hosts and ssh_config paths are opened on the worker: a relative one would
    name another file there. Refused here, with the path named."""
    named: List[Tuple[str, str]] = [("-k/--identity", p) for p in options.identity_files]
    named += [("--known-hosts", p) for p in options.known_hosts]
    if options.ssh_config:
        named.append(("--ssh-config", options.ssh_config))
    for t in targets:
        named += [(f"{t.name}'s identity file", p) for p in t.identity_files]
        named += [(f"{t.name}'s known_hosts", p) for p in t.known_hosts]
    for what, path in named:
        if path and not os.path.isabs(os.path.expanduser(path)):
            raise UsageError(f"{what} {path!r} is a relative path; with --cluster paths are opened on the workers: "
                             "give an absolute path")
