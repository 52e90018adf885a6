"""hostops.exitcodes and the exit codes carried by hostops.errors."""
from __future__ import annotations

import json

import inspect
import pickle

import pytest

from hostops import errors
from hostops.errors import (
    CommandAborted, CommandTimeout, ConnectError, FileError, HostKeyError, HostopsError, InventoryError, LockHeld,
    RunbookError, SelectionError, UsageError,
)
from hostops.exitcodes import ExitCode, for_statuses
from hostops.results import HostResult, RunReport


def test_exit_code_values_follow_pssh():
    assert {c.name: int(c) for c in ExitCode} == {
        "OK": 0, "INTERNAL": 1, "USAGE": 2, "TIMEOUT": 3, "UNREACHABLE": 4, "FAILED": 5, "LOCKED": 6,
        "INTERRUPTED": 130, "OUTPUT_CLOSED": 141,
    }


def test_all_ok_is_zero():
    assert for_statuses(["ok", "ok", "ok"]) == ExitCode.OK == 0


def test_no_hosts_is_zero():
    assert for_statuses([]) == ExitCode.OK


@pytest.mark.parametrize("statuses, expected", [
    (["ok", "failed"], 5),
    (["ok", "unreachable"], 4),
    (["ok", "timeout"], 3),
    (["failed", "unreachable"], 4),
    (["unreachable", "failed"], 4),
    (["failed", "timeout"], 3),
    (["unreachable", "timeout"], 3),
    (["failed", "unreachable", "timeout", "ok"], 3),
    (["ok", "failed", "failed"], 5),
])
def test_priority_timeout_beats_unreachable_beats_failed(statuses, expected):
    assert for_statuses(statuses) == expected


def test_accepts_a_generator():
    assert for_statuses(s for s in ["ok", "unreachable"]) == ExitCode.UNREACHABLE


def test_interrupted_wins_over_everything():
    assert for_statuses(["timeout", "failed"], interrupted=True) == ExitCode.INTERRUPTED == 130
    assert for_statuses([], interrupted=True) == 130


def test_summary_exit_code_uses_the_same_rules():
    s = RunReport([HostResult("a", "ok", 0), HostResult("b", "failed", 1), HostResult("c", "unreachable")])
    assert s.exit_code == ExitCode.UNREACHABLE
    assert s.to_json()["exit_code"] == 4
    s.interrupted = True
    assert s.exit_code == 130


@pytest.mark.parametrize("exc, code", [
    (HostopsError("x"), 1),
    (UsageError("x"), 2),
    (InventoryError("x", "f.yml", 3), 2),
    (SelectionError("x"), 2),
    (ConnectError("x"), 1),
    (CommandTimeout("x"), 1),
])
def test_errors_carry_exit_codes(exc, code):
    assert exc.exit_code == code
    assert isinstance(exc.exit_code, ExitCode)


def test_hierarchy():
    assert issubclass(InventoryError, UsageError)
    assert issubclass(SelectionError, UsageError)
    assert issubclass(HostKeyError, ConnectError)
    for cls in (UsageError, ConnectError, CommandTimeout):
        assert issubclass(cls, HostopsError)


def test_inventory_error_str():
    assert str(InventoryError("bad", "inv.yml", 7)) == "inv.yml:7: bad"
    assert str(InventoryError("bad", "inv.yml")) == "inv.yml: bad"
    assert str(InventoryError("bad")) == "bad"


def test_connect_error_defaults():
    assert ConnectError("no route").stage == "connect"
    assert HostKeyError("changed").stage == "hostkey"
    assert str(HostKeyError("changed", "hostkey")) == "changed"


# ------------------------------------------------------------------ pickling
def _samples():
    return [
        HostopsError("internal"),
        UsageError("usage"),
        InventoryError("broken", "prod.yml", 14),
        FileError("unreadable", "x.yml", 1),
        RunbookError("unknown step kind 'run'", "deploy.yml", 7),
        LockHeld("another run holds /var/lock/hostops.lock"),
        InventoryError("missing", "gone.yml"),
        SelectionError("no match"),
        ConnectError("refused", "tcp"),
        HostKeyError("key changed", "hostkey"),
        CommandTimeout(b"partial out", b"partial err", "timed out after 3s; the remote command was stopped"),
        CommandAborted(b"out", b"", "interrupted; the remote command was stopped (TERM)"),
    ]


def test_samples_cover_every_error_class():
    classes = {obj for _name, obj in inspect.getmembers(errors, inspect.isclass)
               if issubclass(obj, BaseException) and obj.__module__ == errors.__name__}
    assert classes == {type(e) for e in _samples()}


@pytest.mark.parametrize("exc", _samples(), ids=lambda e: type(e).__name__)
def test_errors_round_trip_through_pickle(exc):
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is type(exc)
    assert back.args == exc.args
    assert str(back) == str(exc)
    assert back.exit_code == exc.exit_code
    for attr in ("message", "file", "line", "stage"):
        assert getattr(back, attr, None) == getattr(exc, attr, None)


def test_pickled_inventory_error_keeps_location():
    back = pickle.loads(pickle.dumps(InventoryError("broken", "prod.yml", 14)))
    assert (back.message, back.file, back.line) == ("broken", "prod.yml", 14)
    assert str(back) == "prod.yml:14: broken"


def test_pickled_host_key_error_keeps_stage():
    back = pickle.loads(pickle.dumps(HostKeyError("changed", "custom-stage")))
    assert back.stage == "custom-stage"
    assert back.message == "changed"


# ------------------------------------------------------------------ one Status, one RunReport
def test_status_members_equal_the_strings_everywhere():
    from hostops import results, rollout, state
    from hostops.results import Status

    assert [s.value for s in Status] == ["ok", "unchanged", "failed", "unreachable", "timeout", "interrupted",
                                         "skipped", "untouched", "incomplete"]
    assert Status.OK == "ok" and f"{Status.FAILED}" == "failed" and Status.TIMEOUT.upper() == "TIMEOUT"
    assert json.dumps({"s": Status.UNREACHABLE}) == '{"s": "unreachable"}'
    assert results.OK is Status.OK and rollout.SKIPPED is Status.SKIPPED and rollout.UNTOUCHED is Status.UNTOUCHED
    assert state.STATE_PATTERNS == ("ok", "failed", "unreachable", "untouched")
    assert not hasattr(results, "summarize")


def _runbook_report(**kw):
    report = RunReport(hosts=["a", "b", "c"], steps=["s1", "s2"], main_steps=["s1", "s2"], completed=True,
                       outcome={"a": {"s1": "ok", "s2": "ok"}, "b": {"s1": "failed", "s2": "skipped"},
                                "c": {"s1": "ok", "s2": "untouched"}}, **kw)
    report.untouched = [h for h in report.hosts if report.final_status(h) == "untouched"]
    return report


def test_run_report_of_a_runbook_counts_hosts_not_step_results():
    report = _runbook_report(elapsed=2.0)
    assert report.per_host
    assert report.statuses() == {"a": "ok", "b": "failed", "c": "incomplete"}
    assert report.line() == "3 hosts: 1 ok, 1 failed, 1 incomplete in 2.0s"
    assert report.exit_code == ExitCode.FAILED
    end = report.to_json()
    assert end["hosts"] == 3 and end["steps"] == ["s1", "s2"]
    # counts are counts (one per status, summing to hosts); the flags and the exit code apart
    assert end["counts"] == {"ok": 1, "unchanged": 0, "failed": 1, "unreachable": 0, "timeout": 0,
                             "interrupted": 0, "incomplete": 1, "untouched": 0}
    assert end["interrupted"] is False and end["exit_code"] == 5 and end["stopped"] is None
    assert report.not_ok() == {"failed": ["b"], "incomplete": ["c"]}
    assert report.table().splitlines()[2].split() == ["b", "failed", "skipped"]
    report.not_finished = ["d"]
    assert report.state_hosts() == {"a": "ok", "b": "failed", "c": "incomplete", "d": "untouched"}


def test_run_report_aborted_counts_the_results_it_has():
    report = _runbook_report(results=[HostResult("a", "ok", 0, step="s1")], interrupted=True)
    report.completed = False  # a second Ctrl-C: the rollout never returned
    assert not report.per_host
    assert report.statuses() == {"a": "ok"}
    assert report.exit_code == 130
    end = report.to_json()
    assert end["exit_code"] == 130 and end["interrupted"] is True
    assert end["counts"]["ok"] == 1 and end["counts"]["interrupted"] == 0  # the flag is not a count


def test_run_report_end_record_splits_the_interrupted_count_from_the_flag():
    report = RunReport([HostResult("a", "ok", 0), HostResult("b", "interrupted"), HostResult("c", "interrupted")],
                       interrupted=True, not_finished=["d"])
    end = report.to_json()
    assert end["counts"] == {"ok": 1, "unchanged": 0, "failed": 0, "unreachable": 0, "timeout": 0,
                             "interrupted": 2, "incomplete": 0, "untouched": 1}
    assert sum(end["counts"].values()) == end["hosts"] == 4
    assert end["interrupted"] is True and end["exit_code"] == 130 and end["not_finished"] == ["d"]
    assert report.not_ok() == {"interrupted": ["b", "c"], "not started": ["d"]}


def test_run_report_output_closed_is_141():
    report = RunReport([HostResult("a", "ok", 0)], output_closed=True)
    assert report.exit_code == ExitCode.OUTPUT_CLOSED == 141
    assert report.to_json()["output_closed"] is True
