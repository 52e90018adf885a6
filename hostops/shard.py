"""What runs inside a Dask worker: one shard of hosts through hostops's own engine.

A shard is one Dask task. It starts an ordinary :class:`hostops.pool.Pool` (its own worker
processes, so the remote commands stop when this Dask worker dies: the hostops workers get
SIGTERM or end-of-file on their inbox) and reports every event back to the client as a
Dask event on the run's topic, the moment it happens.

At most once rests on one rule: **a host is claimed before it is handed to a hostops
worker**, and a claim is a synchronous write to the scheduler (``set_metadata``). When
this Dask worker is lost, the client reads the claims: a claimed host without a result
"may have run" and is never retried; an unclaimed one never started and may run elsewhere.

Client liveness and Ctrl-C: a watcher thread reads the run's control record on the
scheduler every :data:`POLL` seconds; ``abort`` set, or a heartbeat that has not moved
for :data:`CLIENT_LOST_AFTER` seconds (the client died), stops the shard as a first
Ctrl-C stops a local run (running commands are stopped on their hosts).

Owns: :func:`run_shard`, the claiming pool. Imports distributed only inside functions that
run on a Dask worker. Must not import: api, cli, cluster (the client side).
"""
from __future__ import annotations

import dataclasses
import multiprocessing
import os
import pickle
import shutil
import tempfile
import threading
import time
from typing import Any, Deque, Dict, List, Optional

from hostops.clusterkeys import learn_into, scratch_file, wants_learning
from hostops.pool import Pool
from hostops.results import HostResult
from hostops.settings import Options
from hostops.wire import Done, Job, Output, Started

#: Seconds between two looks at the run's control record (abort, heartbeat).
POLL = 0.5
#: A client whose heartbeat has not moved for this long is gone: the shard stops.
CLIENT_LOST_AFTER = 30.0
#: A host's output travels in its "done" event only up to this size (stdout + stderr); a
#: larger result comes with the task's return value. The scheduler keeps a run's events
#: (up to distributed.admin.low-level-log-length of them), so they stay small.
EVENT_CAP = 64 * 1024


def topic(run_id: str) -> str:
    return f"hostops-{run_id}"


def claims_key(run_id: str, shard_id: int) -> List[str]:
    return ["hostops", run_id, "claims", str(shard_id)]


def control_key(run_id: str) -> List[str]:
    return ["hostops", run_id, "control"]


class _ClaimingPool(Pool):
    """A Pool that claims hosts (on the scheduler, synchronously) before handing them out.

    Hooks :meth:`Pool._dispatch`: the jobs about to be sent (as many as there are free
    slots) are claimed in one write first. A claimed job that then fails to go out is only
    reported "may have run" if this worker is lost: conservative, never a second run."""

    def __init__(self, options: Options, host_count: int, claim: Any):
        super().__init__(options, host_count)
        self._claim = claim
        self.claimed: set = set()

    def _dispatch(self, pending: Deque[Job]) -> None:
        free = sum(max(0, w.free) for w in self.workers.values())
        wanted = [j.id for j in list(pending)[:free] if j.id not in self.claimed]
        if not any(j.keep for j in pending) and wanted:
            self._claim(wanted)
            self.claimed.update(wanted)
        elif any(j.keep for j in pending):  # kept connections may wait for their worker: claim all that may go
            rest = [j.id for j in pending if j.id not in self.claimed]
            if rest:
                self._claim(rest)
                self.claimed.update(rest)
        super()._dispatch(pending)


assert hasattr(Pool, "_dispatch"), "hostops.shard hooks Pool._dispatch: update _ClaimingPool"


def _shrunk(result: HostResult) -> Optional[HostResult]:
    """The result as it travels in an event, or None when its output is too big for one."""
    return result if len(result.stdout) + len(result.stderr) <= EVENT_CAP else None


def _ensure_start_method(options: Options) -> Options:
    """A Dask worker has threads (its event loop): forking it is unsafe. Unless the run chose
    a start method, a shard's hostops workers come from a fork server (started once per Dask
    worker, single-threaded, with hostops and paramiko preloaded)."""
    if options.start_method or os.environ.get("HOSTOPS_START_METHOD"):
        return options
    multiprocessing.set_forkserver_preload(["hostops.worker", "hostops.workerctx", "paramiko"])
    return dataclasses.replace(options, start_method="forkserver")


def run_shard(run_id: str, shard_id: int, jobs: List[Job], options: Options, sudo_pass_file: Optional[str] = None,
              sudo_pass_env: Optional[str] = None) -> Dict[str, Any]:
    """The Dask task: run ``jobs`` here, send events as they happen, return every result.

    Returns ``{"done": {job id: HostResult}, "unstarted": [job id], "claimed": [job id]}``.
    The client dedupes events against this (it is the complete record if the task ends)."""
    from distributed import get_client

    client = get_client()
    options = _ensure_start_method(_with_local_secrets(options, sudo_pass_file, sudo_pass_env))
    control = client.get_metadata(control_key(run_id), None)
    if not isinstance(control, dict) or control.get("abort"):  # stopped (or gone) before this shard's turn
        return {"done": {}, "unstarted": [j.id for j in jobs], "claimed": [], "stopped": "before it began"}
    # each runbook step is its own shard: a connection kept for the next step would never be
    # used, and a kept job may wait for one worker, which makes claims wider than needed
    jobs = [dataclasses.replace(j, keep=False) if j.keep else j for j in jobs]
    scratch_dir = None
    try:
        if wants_learning(options, jobs):  # accept-new: keys are learned into a file of the shard's own
            scratch_dir = tempfile.mkdtemp(prefix="hostops-shard-")
            options, jobs = learn_into(scratch_file(scratch_dir), options, jobs)
        return _run_pool(client, run_id, shard_id, jobs, options)
    finally:
        if scratch_dir is not None:
            shutil.rmtree(scratch_dir, ignore_errors=True)


def _run_pool(client: Any, run_id: str, shard_id: int, jobs: List[Job], options: Options) -> Dict[str, Any]:
    """The shard's own engine, with its watcher; every event sent as a Dask event."""
    from distributed import get_worker

    worker = get_worker()
    name = topic(run_id)

    def send(event: tuple) -> None:
        worker.log_event(name, pickle.dumps(event, protocol=pickle.HIGHEST_PROTOCOL))

    def claim(ids: List[int]) -> None:
        # one key per claim batch (a dict under the shard's key): a plain set_metadata
        # round trip, so the claim is on the scheduler before the host can start
        client.set_metadata(claims_key(run_id, shard_id) + [str(ids[0])], ids)

    done: Dict[int, HostResult] = {}
    pool = _ClaimingPool(options, len(jobs), claim)
    wake_r, wake_w = os.pipe()
    stop = threading.Event()
    why: List[str] = []
    watcher = threading.Thread(target=_watch, args=(client, run_id, stop, why, wake_w), daemon=True,
                               name=f"hostops-shard-{shard_id}-watch")
    watcher.start()
    error: Optional[BaseException] = None
    try:
        pool.start()
        for event in pool.run(jobs, wake_r, lambda: bool(why)):
            if isinstance(event, Started):
                send(("s", shard_id, event.job.id))
            elif isinstance(event, Output):
                send(("o", shard_id, event.job.id, event.stream, event.data))
            elif isinstance(event, Done):
                done[event.job.id] = event.result
                send(("d", shard_id, event.job.id, _shrunk(event.result)))
    except BaseException as exc:  # noqa: BLE001  (re-raised below, after the pool is stopped)
        error = exc
        raise
    finally:
        stop.set()
        if error is None:
            pool.close()
        else:
            pool.terminate()
        watcher.join(POLL * 4)
        for fd in (wake_r, wake_w):
            os.close(fd)
    return {"done": done, "unstarted": [j.id for j in pool.not_started], "claimed": sorted(pool.claimed),
            "stopped": why[0] if why else None}


def _watch(client: Any, run_id: str, stop: threading.Event, why: List[str], wake_fd: int) -> None:
    """Until ``stop``: read the run's control record; abort, or a heartbeat that stopped
    moving (the client is gone), wakes the pool to stop the shard."""
    last_beat: Any = None
    moved = time.monotonic()
    while not stop.wait(POLL):
        try:
            control = client.get_metadata(control_key(run_id), None)
        except Exception:  # noqa: BLE001  (the scheduler is unreachable: count it as silence)
            control = None
        now = time.monotonic()
        if isinstance(control, dict):
            if control.get("abort"):
                why.append("the client asked to stop (Ctrl-C)")
            elif control.get("beat") != last_beat:
                last_beat, moved = control.get("beat"), now
        if not why and now - moved > CLIENT_LOST_AFTER:
            why.append(f"no heartbeat from the client for {CLIENT_LOST_AFTER:.0f}s (the client is gone)")
        if why:
            try:
                os.write(wake_fd, b"!")
            except OSError:
                pass
            return


def _with_local_secrets(options: Options, sudo_pass_file: Optional[str], sudo_pass_env: Optional[str]) -> Options:
    """--sudo-pass-file/--sudo-pass-env with --cluster: the password is read here, on the
    worker, and never crosses the network."""
    from hostops.secrets import from_env, read_password_file

    if sudo_pass_file:
        password = read_password_file(sudo_pass_file)
    elif sudo_pass_env:
        password = from_env(sudo_pass_env, "--sudo-pass-env")
    else:
        return options
    return dataclasses.replace(options, secrets=dataclasses.replace(options.secrets, sudo_password=password))


def worker_facts() -> Dict[str, Any]:
    """What the client checks on each Dask worker before a run (through ``Client.run``)."""
    return {"daemon": bool(multiprocessing.current_process().daemon), "pid": os.getpid()}
