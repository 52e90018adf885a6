"""``--cluster`` on the run commands, and ``hostops cluster scheduler|worker``.

The run commands take :func:`cluster_options`; :func:`pool_factory` turns them into the
engine :class:`hostops.api.Session` uses (None: the local pool, and distributed is never
imported). ``hostops cluster scheduler`` / ``worker`` exec ``dask scheduler`` /
``dask worker`` with the settings hostops needs (:func:`hostops.clusterconn.safe_config`).

Owns: the --cluster options, building the ClusterSpec (zones from ``hostops_zone``), the
``cluster`` group. Must not import: other command modules, distributed at import time.
"""
from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import click

from hostops.cli.options import CONTEXT
from hostops.errors import UsageError

ZONE_VAR = "hostops_zone"


def cluster_options(func: Callable) -> Callable:
    """--cluster and its companions; also moves --sudo-pass-file/--sudo-pass-env to the
    workers under --cluster (read there, never sent)."""
    opts = [
        click.option("--cluster", default=None, metavar="ADDRESS", envvar="HOSTOPS_CLUSTER", show_envvar=True,
                     help="Run through a Dask cluster: tls://sched:8786 (see hostops cluster), or local[:N] for N "
                          "local workers. Needs pip install 'hostops[dask]'."),
        click.option("--shard-size", type=click.IntRange(min=1), default=None, metavar="N",
                     help="With --cluster: hosts per Dask task (default: a zone's hosts shared among its workers)."),
        click.option("--allow-rerun", is_flag=True,
                     help="With --cluster: accept a scheduler that re-runs lost tasks (commands may run twice)."),
        click.option("--retry-lost", is_flag=True,
                     help="With --cluster: run again, once, the hosts whose worker was lost mid-command "
                          "(only for idempotent commands)."),
        click.option("--send-secrets", is_flag=True,
                     help="With --cluster: send passwords and masked values to the workers (tls:// only)."),
        click.option("--tls-ca-file", default=None, metavar="FILE", help="With --cluster tls://: the cluster's CA."),
        click.option("--tls-cert", default=None, metavar="FILE", help="With --cluster tls://: this client's "
                                                                       "certificate."),
        click.option("--tls-key", default=None, metavar="FILE", help="With --cluster tls://: its key."),
    ]
    for opt in reversed(opts):
        func = opt(func)

    @functools.wraps(func)
    def wrapper(*args: Any, **kw: Any) -> Any:
        if kw.get("cluster") and not kw.get("send_secrets") and (kw.get("sudo_pass_file") or kw.get("sudo_pass_env")):
            given = "--sudo-pass-file" if kw.get("sudo_pass_file") else "--sudo-pass-env"
            if kw.get("ask_sudo_pass") or (kw.get("sudo_pass_file") and kw.get("sudo_pass_env")):
                raise UsageError("give the sudo password one way only")
            if not kw.get("sudo"):
                raise UsageError(f"{given} needs --sudo")
            kw["worker_sudo_pass"] = (kw.pop("sudo_pass_file", None), kw.pop("sudo_pass_env", None))
            kw["sudo_pass_file"] = kw["sudo_pass_env"] = None
        return func(*args, **kw)

    return wrapper


def pool_factory(kw: dict, targets: Sequence[Any], options: Any) -> Callable[..., Any] | None:
    """The engine for this run: None (the local pool) without --cluster."""
    address = kw.get("cluster")
    if not address:
        for flag in ("shard_size", "allow_rerun", "retry_lost", "send_secrets"):
            if kw.get(flag):
                raise UsageError(f"--{flag.replace('_', '-')} needs --cluster")
        return None
    from hostops.cluster import ClusterPool
    from hostops.clusterconn import ClusterSpec, check_paths, check_secrets, import_distributed

    import_distributed()  # the install hint, before anything else
    check_paths(options, targets)
    if getattr(options, "persist", None):
        from hostops.cli.options import warn

        warn("--persist is ignored with --cluster: connections are made on the Dask workers, one shard at a time, "
             "and are not kept between runs")
    sudo_file, sudo_env = kw.get("worker_sudo_pass") or (None, None)
    spec = ClusterSpec(address, shard_size=kw.get("shard_size"), allow_rerun=bool(kw.get("allow_rerun")),
                       retry_lost=bool(kw.get("retry_lost")), send_secrets=bool(kw.get("send_secrets")),
                       zones=zones_of(targets), tls_ca_file=_abs(kw.get("tls_ca_file")),
                       tls_cert=_abs(kw.get("tls_cert")), tls_key=_abs(kw.get("tls_key")),
                       sudo_pass_file=sudo_file, sudo_pass_env=sudo_env)
    if sudo_file and not os.path.isabs(os.path.expanduser(sudo_file)):
        raise UsageError(f"--sudo-pass-file {sudo_file!r} is a relative path; with --cluster it is read on the "
                         "workers: give an absolute path")
    check_secrets(spec, options)
    return ClusterPool.factory(spec)


def _abs(path: str | None) -> str | None:
    return os.path.abspath(os.path.expanduser(path)) if path else None


def zones_of(targets: Sequence[Any]) -> dict:
    """host → zone, from the ``hostops_zone`` variable of the inventory this run loaded
    (host vars, or group vars for a whole group)."""
    ctx = click.get_current_context(silent=True)
    selection = ctx.meta.get("hostops.selection") if ctx is not None else None
    if selection is None:
        return {}
    inv = selection[0]
    zones = {}
    for t in targets:
        value = inv.host_vars(t.name).get(ZONE_VAR) if t.name in inv.hosts else None
        if value not in (None, ""):
            zones[t.name] = str(value)
    return zones


# ------------------------------------------------------------------ hostops cluster
@click.group("cluster", context_settings=CONTEXT)
def cluster_group() -> None:
    """Start the Dask scheduler and zone workers --cluster runs through, with safe settings:
    no task retries (at most once), non-daemonic workers, no profiler, no dashboard, TLS.

    \b
    Examples:
      hostops cluster scheduler --host 10.0.0.5 --tls-ca-file ca.pem --tls-cert s.pem --tls-key s.key
      hostops cluster worker tls://10.0.0.5:8786 --zone dc1 --tls-ca-file ca.pem --tls-cert w.pem --tls-key w.key
      hostops exec uptime -i hosts.yml --cluster tls://10.0.0.5:8786 --tls-ca-file ca.pem --tls-cert me.pem --tls-key me.key
    """


def _tls_args(ca: str | None, cert: str | None, key: str | None, insecure: bool) -> list[str]:
    if not (ca and cert and key):
        if insecure:
            return []
        raise UsageError("give --tls-ca-file, --tls-cert and --tls-key (or --insecure, for a test on one machine)")
    return ["--tls-ca-file", _abs(ca) or ca, "--tls-cert", _abs(cert) or cert, "--tls-key", _abs(key) or key]


def _env() -> dict:
    from hostops.clusterconn import safe_config

    env = dict(os.environ)
    for key, value in safe_config().items():
        env["DASK_" + key.upper().replace(".", "__").replace("-", "_")] = str(value)
    return env


def _exec(args: list[str], env: dict) -> None:
    from hostops.clusterconn import import_distributed

    import_distributed()
    os.execvpe(sys.executable, [sys.executable, *args], env)


def tls_options(func: Callable) -> Callable:
    for opt in reversed([
        click.option("--tls-ca-file", default=None, metavar="FILE", help="The cluster's CA certificate."),
        click.option("--tls-cert", default=None, metavar="FILE", help="This process's certificate."),
        click.option("--tls-key", default=None, metavar="FILE", help="Its private key."),
        click.option("--insecure", is_flag=True, help="No TLS (tcp://): only for a test on one machine."),
    ]):
        func = opt(func)
    return func


@cluster_group.command("scheduler", context_settings=CONTEXT)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=int, default=8786, show_default=True)
@tls_options
def scheduler_cmd(host: str, port: int, tls_ca_file, tls_cert, tls_key, insecure: bool) -> None:
    """Start a Dask scheduler for --cluster (dask scheduler, hostops's settings).

    \b
    Examples:
      hostops cluster scheduler --host 10.0.0.5 --tls-ca-file ca.pem --tls-cert s.pem --tls-key s.key
      hostops cluster scheduler --insecure            # tcp://127.0.0.1:8786, a test on one machine
    """
    tls = _tls_args(tls_ca_file, tls_cert, tls_key, insecure)
    env = _env()
    if tls:
        env["DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION"] = "True"
    protocol = ["--protocol", "tls"] if tls else ["--protocol", "tcp"]
    _exec(["-m", "distributed.cli.dask_scheduler", "--host", host, "--port", str(port), *protocol, *tls,
           "--no-dashboard", "--dashboard-address", "127.0.0.1:0", "--no-show"], env)


@cluster_group.command("worker", context_settings=CONTEXT)
@click.argument("scheduler")
@click.option("--zone", default=None, metavar="NAME", help="Serve the hosts whose hostops_zone is NAME.")
@click.option("--nthreads", type=click.IntRange(min=1), default=4, show_default=True,
              help="Shards this worker runs at once.")
@click.option("--host", default=None, help="Address to listen on (default: the one reaching the scheduler).")
@tls_options
def worker_cmd(scheduler: str, zone: str | None, nthreads: int, host: str | None, tls_ca_file, tls_cert, tls_key,
               insecure: bool) -> None:
    """Start a Dask worker for --cluster, serving one network zone (dask worker, hostops's settings):
    it runs the hosts whose inventory sets hostops_zone to NAME.

    \b
    Examples:
      hostops cluster worker tls://10.0.0.5:8786 --zone dc1 --tls-ca-file ca.pem --tls-cert w.pem --tls-key w.key
      hostops cluster worker tcp://127.0.0.1:8786 --insecure     # a test on one machine
    """
    from hostops.clusterconn import ZONE_UNITS, zone_resource

    tls = _tls_args(tls_ca_file, tls_cert, tls_key, insecure)
    env = _env()
    if tls:
        env["DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION"] = "True"
    args = ["-m", "distributed.cli.dask_worker", scheduler, "--nthreads", str(nthreads), "--nworkers", "1",
            "--no-dashboard", "--dashboard-address", "127.0.0.1:0", *tls]
    if host:
        args += ["--host", host]
    if zone:
        args += ["--resources", f"{zone_resource(zone)}={ZONE_UNITS}"]
    _exec(args, env)


__all__ = ["cluster_group", "cluster_options", "pool_factory", "zones_of"]
