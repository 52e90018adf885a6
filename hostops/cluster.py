"""The client side of ``--cluster``: a pool with :class:`hostops.pool.Pool`'s interface
(start, run → Started/Output/Done events, not_started, aborting, in_flight, release, close,
terminate) whose hosts run in shards on Dask workers (:mod:`hostops.shard`).

:class:`hostops.api.Session` takes it in place of the local pool, so output, logs, summaries,
state, exit codes and runbooks are unchanged. What differs is only where hosts run, and
what happens when a Dask worker is lost:

- a host claimed by the lost shard (it may have started) with no result is ``failed``:
  "worker lost; the command may have run; not retried" (``--retry-lost`` re-runs it once);
- a host the lost shard never claimed runs once elsewhere (a new shard).

Host records go to ``--log`` from here (the shards run without a log: the log is a client
file). Secrets are masked here again (the shards get none unless ``--send-secrets``).

Owns: :class:`ClusterPool`. Imports distributed only through :mod:`hostops.clusterconn`
at start. Must not import: api, cli.
"""
from __future__ import annotations

import dataclasses
import pickle
import queue
import threading
import time
import uuid
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Set, Tuple

from hostops.clusterconn import ClusterSpec, check_cluster, check_paths, check_secrets, connect, zone_resource
from hostops.clusterkeys import record_on_client
from hostops.log import maybe_open
from hostops.results import FAILED, INTERRUPTED, HostResult
from hostops.secrets import Secrets, StreamMasker, redact_result
from hostops.settings import Options
from hostops.shard import POLL, claims_key, control_key, run_shard, topic
from hostops.wire import Done, Job, Output, Started

#: Seconds between two heartbeats of the client (the shards stop after 30 s without one).
BEAT = 5.0
#: A host whose shard was lost this many times before it started is given up (failed, never run).
MAX_MOVES = 10
LOST = "worker lost; the command may have run; not retried (check the host before running it again)"
SCHEDULER_LOST = ("the Dask scheduler was lost; the command may have run; not retried (check the host before running "
                  "it again)")


@dataclasses.dataclass
class _Shard:
    id: int
    jobs: List[Job]
    zone: str
    future: Any = None
    retry_of_claimed: bool = False


class ClusterPool:
    """``Pool(options, host_count)``'s interface, over Dask. Build one per run with
    :meth:`factory` (what Session takes)."""

    #: Host records go to --log from here (the client side), not from Session (see hostops.api)
    logs_results = True

    def __init__(self, spec: ClusterSpec, options: Options, host_count: int):
        self.spec = spec
        self.options = options
        self.host_count = host_count
        self.aborting = False
        self.not_started: List[Job] = []
        self.client: Any = None
        self.cluster: Any = None
        self.run_id = uuid.uuid4().hex
        self._events: "queue.Queue[tuple]" = queue.Queue()
        self._control: Dict[str, Any] = {"abort": False, "beat": 0}
        self._control_lock = threading.Lock()
        self._stop_beat = threading.Event()
        self._beat: Optional[threading.Thread] = None
        self._next_shard = 0
        self._running: Set[int] = set()  # job ids started, not done
        self._jobs: Dict[int, Job] = {}
        self._log: Any = None
        self._secrets: Secrets = options.secrets
        self._masking = bool(options.secrets.all())  # values to mask in --stream pieces (decided once per run)
        self._maskers: Dict[Tuple[int, str], StreamMasker] = {}  # (job id, stream) → its --stream masker
        self.by_zone: Dict[str, List[str]] = {}

    @classmethod
    def factory(cls, spec: ClusterSpec) -> Callable[[Options, int], "ClusterPool"]:
        return lambda options, host_count: cls(spec, options, host_count)

    # ------------------------------------------------------------ lifecycle
    def start(self) -> None:
        check_secrets(self.spec, self.options)
        self.client, self.cluster = connect(self.spec)
        try:
            self.by_zone = check_cluster(self.client, self.spec, list(self.spec.zones) or [])
            self._write_control()
            self.client.subscribe_topic(topic(self.run_id), self._on_event)
            self._log = maybe_open(self.options.log, self.options.secrets)
        except BaseException:
            self._disconnect()
            raise
        self._beat = threading.Thread(target=self._heartbeat, daemon=True, name="hostops-cluster-beat")
        self._beat.start()

    def _write_control(self) -> None:
        with self._control_lock:
            self.client.set_metadata(control_key(self.run_id), dict(self._control))

    def _heartbeat(self) -> None:
        while not self._stop_beat.wait(BEAT):
            with self._control_lock:
                self._control["beat"] += 1
            try:
                self._write_control()
            except Exception:  # noqa: BLE001  (the scheduler is gone: the run notices through its futures)
                return

    def _on_event(self, event: Any) -> None:
        """Called on the client's event loop: hand the event to the run's thread."""
        try:
            self._events.put(pickle.loads(event[1]))
        except Exception:  # noqa: BLE001  (not ours, or cut short: the task's result is the full record)
            pass

    def release(self, hosts: Iterable[str]) -> None:  # noqa: ARG002  (kept connections live inside a shard)
        return None

    def in_flight(self) -> List[str]:
        return [self._jobs[j].target.name for j in sorted(self._running) if j in self._jobs]

    def close(self, timeout: float = 5.0) -> None:  # noqa: ARG002  (the pool's signature)
        self._disconnect()

    def terminate(self, now: bool = False) -> None:  # noqa: ARG002  (the pool's signature)
        if self.client is not None:
            try:
                with self._control_lock:
                    self._control["abort"] = True
                self._write_control()
            except Exception:  # noqa: BLE001  (best effort: the shards also stop when our heartbeat stops)
                pass
        self._disconnect()

    def _disconnect(self) -> None:
        self._stop_beat.set()
        if self._beat is not None:
            self._beat.join(2.0)
        if self._log is not None:
            self._log.close()
            self._log = None
        client, cluster, self.client, self.cluster = self.client, self.cluster, None, None
        if client is not None:
            try:
                client.set_metadata(["hostops", self.run_id], None)  # the run's claims and control, dropped
                # its events (up to 1000 kept) and subscription; no unsubscribe_topic: it travels on
                # another stream, may arrive after this and would make the topic anew
                client.run_on_scheduler(_forget_run, self.run_id)
            except Exception:  # noqa: BLE001  (the scheduler is gone, or refuses run_on_scheduler: nothing to drop)
                pass
            client.close(timeout=10)
        if cluster is not None:
            cluster.close(timeout=20)

    # ------------------------------------------------------------ run
    def _shard_options(self) -> Options:
        """What a shard gets: no log (it is the client's file), no secrets unless --send-secrets,
        no keeper (--persist is this machine's)."""
        secrets = self.options.secrets if self.spec.send_secrets else Secrets()
        return dataclasses.replace(self.options, log=None, secrets=secrets, persist=0.0)

    def _submit(self, jobs: List[Job], zone: str, shards: Dict[int, _Shard]) -> None:
        size = self.spec.shard_size or max(1, -(-len(jobs) // max(1, len(self.by_zone.get(zone, [])) or 1)))
        opts = self._shard_options()
        for i in range(0, len(jobs), size):
            sid = self._next_shard
            self._next_shard += 1
            shard = _Shard(sid, jobs[i:i + size], zone)
            resources = {zone_resource(zone): 1} if zone else None
            shard.future = self.client.submit(run_shard, self.run_id, sid, shard.jobs, opts,
                                              self.spec.sudo_pass_file, self.spec.sudo_pass_env,
                                              key=f"hostops-{self.run_id}-{sid}", resources=resources, pure=False)
            shard.future.add_done_callback(lambda _f, s=sid: self._events.put(("f", s)))
            shards[sid] = shard

    def run(self, jobs: Iterable[Job], wake_fd: Optional[int] = None,  # noqa: ARG002  (polled, see below)
            should_abort: Callable[[], bool] = lambda: False) -> Iterator[Any]:
        """Submit the jobs in shards and yield events as they come (see the module's doc)."""
        from hostops.pool import _completed

        job_list = list(_completed(jobs, self.options))
        check_paths(self.options, [j.target for j in job_list])
        self._jobs = {j.id: j for j in job_list}
        done: Set[int] = set()
        moves: Dict[int, int] = {}
        retried: Set[int] = set()
        shards: Dict[int, _Shard] = {}
        by_zone: Dict[str, List[Job]] = {}
        for job in job_list:
            by_zone.setdefault(self.spec.zones.get(job.target.name, ""), []).append(job)
        for zone, zjobs in by_zone.items():
            self._submit(zjobs, zone, shards)
        give_up_at: Optional[float] = None
        while len(done) + len(self.not_started) < len(job_list):
            if should_abort() and not self.aborting:
                self.aborting = True
                with self._control_lock:
                    self._control["abort"] = True
                self._write_control()
                give_up_at = time.monotonic() + self.options.kill_grace + 15 + 4 * POLL
            if give_up_at is not None and time.monotonic() > give_up_at:
                yield from self._give_up(job_list, done)
                return
            try:
                event = self._events.get(timeout=0.2)
            except queue.Empty:
                continue
            yield from self._handle(event, shards, done, moves, retried)

    def _handle(self, event: tuple, shards: Dict[int, _Shard], done: Set[int], moves: Dict[int, int],
                retried: Set[int]) -> Iterator[Any]:
        kind = event[0]
        if kind == "s":
            jid = event[2]
            if jid in self._jobs and jid not in done and jid not in self._running:
                self._running.add(jid)
                yield Started(self._jobs[jid])
        elif kind == "o":
            jid = event[2]
            if jid in self._jobs and jid not in done:
                yield from self._masked_output(jid, event[3], event[4])
        elif kind == "d":
            jid, result = event[2], event[3]
            if result is not None and jid in self._jobs and jid not in done:
                yield from self._finish(jid, result, done)
        elif kind == "f":
            shard = shards.pop(event[1], None)
            if shard is not None:
                yield from self._shard_ended(shard, shards, done, moves, retried)

    def _masked_output(self, jid: int, stream: str, data: bytes) -> Iterator[Output]:
        """A --stream piece, masked here (the shards never see the values to mask): a value
        that straddles two pieces is caught too, as the local engine's worker does
        (:class:`hostops.secrets.StreamMasker` holds back what could be a value's start)."""
        if not self._masking:
            yield Output(self._jobs[jid], stream, data)
            return
        masker = self._maskers.get((jid, stream))
        if masker is None:
            masker = self._maskers[(jid, stream)] = StreamMasker(self._secrets)
        shown = masker.feed(data)
        if shown:
            yield Output(self._jobs[jid], stream, shown)

    def _finish(self, jid: int, result: HostResult, done: Set[int]) -> Iterator[Any]:
        """The host's last streamed bytes held back by its maskers, then its result."""
        for stream in ("stdout", "stderr"):
            masker = self._maskers.pop((jid, stream), None)
            rest = masker.flush() if masker is not None else b""
            if rest:
                yield Output(self._jobs[jid], stream, rest)
        yield self._done(jid, result, done)

    def _done(self, jid: int, result: HostResult, done: Set[int]) -> Done:
        done.add(jid)
        self._running.discard(jid)
        if result.keys_added:  # accept-new on the worker: recorded here, once (hostops/clusterkeys.py)
            result = record_on_client(result, self._jobs[jid].target, self.options)
        redact_result(result, self._secrets)
        if self._log is not None:
            try:
                self._log.write({"event": "host", **result.to_json()})
            except OSError as exc:
                result.error = (result.error + "; " if result.error else "") + f"could not write log: " \
                                                                               f"{exc.strerror or exc}"
        return Done(self._jobs[jid], result, by_parent=False)

    def _shard_ended(self, shard: _Shard, shards: Dict[int, _Shard], done: Set[int], moves: Dict[int, int],
                     retried: Set[int]) -> Iterator[Any]:
        """A shard's task ended: take its results; if it was lost, sort its hosts."""
        # events sent before the end are queued already (one stream from the scheduler): take them first
        yield from self._drain_events(shards, done, moves, retried)
        future = shard.future
        if future.status == "finished":
            yield from self._shard_finished(future.result(), done)
            future.release()
            return
        try:
            error = future.exception(timeout=10)
        except Exception as exc:  # noqa: BLE001  (cancelled or the client lost: the same as a lost worker)
            error = exc
        future.release()
        claimed = self._claimed(shard.id)
        if claimed is None:  # the scheduler cannot say who started: every host may have, none is retried
            for job in shard.jobs:
                if job.id not in done:
                    yield from self._finish(job.id, HostResult(job.target.name, FAILED, error=SCHEDULER_LOST,
                                                          step=job.step), done)
            return
        lost = _is_lost(error)
        again: List[Job] = []
        for job in shard.jobs:
            if job.id in done:
                continue
            if job.id in claimed and not (lost and self.spec.retry_lost and job.id not in retried):
                why = LOST if lost else f"its shard failed ({_short(error)}); the command may have run; not retried"
                yield from self._finish(job.id, HostResult(job.target.name, FAILED, error=why, step=job.step), done)
            elif self.aborting:
                self.not_started.append(job)
            elif not lost or moves.get(job.id, 0) >= MAX_MOVES:  # an error of its own would only repeat
                why = f"its shard was lost {MAX_MOVES} times" if lost else "its shard failed"
                yield from self._finish(job.id, HostResult(job.target.name, FAILED, step=job.step, error=(
                    f"not run: {why} before it started ({_short(error)})")), done)
            else:
                if job.id in claimed:
                    retried.add(job.id)
                moves[job.id] = moves.get(job.id, 0) + 1
                self._running.discard(job.id)
                again.append(job)
        if again:
            self._submit(again, shard.zone, shards)

    def _shard_finished(self, out: Dict[str, Any], done: Set[int]) -> Iterator[Any]:
        """A shard's task returned: its complete record (events may have brought some already)."""
        for jid, result in sorted(out["done"].items()):
            if jid not in done:
                yield from self._finish(jid, result, done)
        for jid in out["unstarted"]:
            if jid not in done:
                self.not_started.append(self._jobs[jid])

    def _drain_events(self, shards: Dict[int, _Shard], done: Set[int], moves: Dict[int, int],
                      retried: Set[int]) -> Iterator[Any]:
        later = []
        while True:
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                break
            if event[0] == "f":
                later.append(event)
                continue
            yield from self._handle(event, shards, done, moves, retried)
        for event in later:
            self._events.put(event)

    def _claimed(self, shard_id: int) -> Optional[Set[int]]:
        """The hosts the shard claimed, as the scheduler recorded them; None if the scheduler
        cannot say (it is gone): then every host may have started, and nothing is run twice on
        a guess."""
        try:
            batches = self.client.get_metadata(claims_key(self.run_id, shard_id), {})
        except Exception:  # noqa: BLE001  (unknown: assume every host may have started)
            return None
        return {jid for ids in (batches or {}).values() for jid in ids}

    def _give_up(self, job_list: List[Job], done: Set[int]) -> Iterator[Any]:
        """Stopping took too long: running hosts are interrupted (their commands may still run)."""
        left = {j.id for j in self.not_started}
        for job in job_list:
            if job.id in done or job.id in left:
                continue
            if job.id in self._running:
                yield from self._finish(job.id, HostResult(job.target.name, INTERRUPTED, step=job.step, error=(
                    "interrupted; no word from its Dask worker on cleanup, the remote command may still be "
                    "running")), done)
            else:
                self.not_started.append(job)


def _forget_run(run_id: str, dask_scheduler: Any = None) -> None:
    """On the scheduler: forget a finished run, its metadata key and its events (the
    scheduler keeps each topic's last ~1000 events otherwise, for ever). The event broker is
    private to distributed, hence guarded."""
    runs = getattr(dask_scheduler, "task_metadata", {}).get("hostops")
    if isinstance(runs, dict):
        runs.pop(run_id, None)
    topics = getattr(getattr(dask_scheduler, "_broker", None), "_topics", None)
    if isinstance(topics, dict):
        topics.pop(topic(run_id), None)


def _is_lost(error: Any) -> bool:
    return type(error).__name__ in ("KilledWorker", "CancelledError", "FutureCancelledError") or error is None


def _short(error: Any) -> str:
    text = f"{type(error).__name__}: {error}" if error is not None else "no reason given"
    return text if len(text) < 200 else text[:197] + "..."
