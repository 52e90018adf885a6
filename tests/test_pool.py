"""The pool's bookkeeping: forks budget, streaming, and a worker killed mid-run."""
from __future__ import annotations


import pytest

from hostops.api import run_command
from hostops import pool as pool_module
from hostops.fdlimit import plan
from hostops.pool import Pool
from hostops.settings import Options, Target

pytestmark = pytest.mark.timeout(120)


def local_targets(n: int):
    return [Target(f"l{i:02d}", "localhost", connection="local") for i in range(n)]


def test_plan_shares_forks_between_processes():
    assert plan(50, 2, 1000) == (2, 25)
    assert plan(50, 8, 3) == (3, 1)      # never more processes than hosts in flight
    assert plan(5, None, 1) == (1, 1)


def test_slots_sum_to_forks():
    pool = Pool(Options(forks=7, processes=3), host_count=100)
    assert pool.processes == 3 and sum(pool._slot_plan) == 7


def test_never_more_than_forks_in_flight(tmp_path):
    """Each host records itself in a directory while it runs; none sees more than -f others."""
    d = tmp_path / "inflight"
    d.mkdir()
    cmd = (f"touch {d}/$$; n=$(ls {d} | wc -l); sleep 0.3; rm {d}/$$; echo $n")
    options = Options(forks=3, processes=2)
    results = list(run_command(local_targets(9), cmd, options))
    assert len(results) == 9 and all(r.ok for r in results)
    peak = max(int(r.stdout) for r in results)
    assert 1 <= peak <= 3


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_worker_killed_mid_run_reports_its_hosts_and_the_rest_finish(tmp_path, method):
    """The first host to run SIGKILLs its own worker (as the OOM killer would): the hosts that
    worker had started are failed with 'worker crashed', every other host still finishes."""
    marker = tmp_path / "crashed-once"
    cmd = f"sleep 0.2; if mkdir {marker} 2>/dev/null; then kill -9 $PPID; sleep 5; fi; echo done"
    options = Options(forks=4, processes=2, start_method=method)
    results = list(run_command(local_targets(12), cmd, options))
    assert sorted(r.host for r in results) == [f"l{i:02d}" for i in range(12)]
    crashed = [r for r in results if not r.ok]
    assert crashed and all("worker crashed" in r.error and "may have run" in r.error for r in crashed)
    assert len(crashed) <= 2  # only what the dead worker had in flight (2 slots)
    assert all(r.stdout == b"done\n" for r in results if r.ok)
    assert marker.is_dir()


def test_results_stream_before_the_run_ends():
    """A fast host's result is yielded while a slow host is still running."""
    import time

    from fakes import SleepAction

    from hostops.api import run

    targets = [Target("slow", "localhost", connection="local"), Target("fast", "localhost", connection="local")]
    received = {}
    results = {}
    for r in run(targets, SleepAction({"slow": 2.0}), Options(forks=2, processes=1)):
        received[r.host] = time.time()
        results[r.host] = r
    assert list(received) == ["fast", "slow"]
    assert received["fast"] < results["slow"].start + results["slow"].duration


# ------------------------------------------------------------------ named messages (hostops.wire)
def test_messages_pickle_small_and_back_equal():
    import pickle

    from hostops.results import HostResult
    from hostops.wire import (ABORT, STOP, Abort, JobDone, JobOutput, JobStarted, JobUnstarted, Release, Stop,
                              WorkerFailed)

    for msg in (JobStarted(3), JobOutput(3, "stdout", b"line\n"), JobDone(3, HostResult("h", "ok")), JobUnstarted(4),
                WorkerFailed("no log"), Release(("a", "b")), ABORT, STOP):
        back = pickle.loads(pickle.dumps(msg))
        assert back == msg and type(back) is type(msg)
        assert not hasattr(msg, "__dict__")  # slotted: cheap to pickle
    assert isinstance(pickle.loads(pickle.dumps(ABORT)), Abort) and isinstance(pickle.loads(pickle.dumps(STOP)), Stop)
    with pytest.raises(Exception):
        JobStarted(3).job_id = 4  # type: ignore[misc]  # frozen


def test_events_name_the_job_and_say_who_made_the_result():
    from fakes import SleepAction

    from hostops.wire import Done, Job, Started

    targets = local_targets(2)
    jobs = [Job(i, t, SleepAction({})) for i, t in enumerate(targets)]
    with Pool(Options(forks=2, processes=1), host_count=2) as pool:
        events = list(pool.run(jobs))
    done = [e for e in events if isinstance(e, Done)]
    assert sorted(e.job.target.name for e in done) == ["l00", "l01"]
    assert all(not e.by_parent and e.result.ok for e in done)
    assert sorted(e.job.id for e in events if isinstance(e, Started)) == [0, 1]


def test_each_job_carries_its_actions_timeout_and_sudo():
    """The watchdog reads the job's timeout: its action's own, whatever the run's -t; the
    run's -t only for an action made without one (a key scan, a library user's action)."""
    from hostops.actions import ExecAction
    from hostops.pool import _completed
    from hostops.wire import Job

    pool = Pool(Options(timeout=1, connect_timeout=2, kill_grace=3), host_count=1)
    target = Target("h", "localhost")
    own = Job(0, target, ExecAction("true", timeout=60, sudo=True))
    assert (own.timeout, own.sudo) == (60, True)
    assert pool.overdue_after(own) == 2 + 60 + 3 + pool_module.PARENT_SLACK
    assert pool.overdue_after(Job(0, target, ExecAction("true"))) is None
    [(given, bare)] = [list(_completed([own, Job(1, target, ExecAction("true"))], pool.options))]
    assert (given.timeout, bare.timeout, bare.sudo) == (60, 1, False)


def test_a_hand_made_target_is_completed_in_the_parent():
    from hostops.actions import ExecAction
    from hostops.pool import _completed
    from hostops.wire import Job

    jobs = [Job(0, Target("h", "localhost", connection="local"), ExecAction("true"))]
    [job] = list(_completed(jobs, Options(connect_timeout=4.0)))
    assert job.target.connect_timeout == 4.0 and job.target.host_key_policy == "strict"
