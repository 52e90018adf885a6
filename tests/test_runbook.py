"""Runbooks without SSH: loading and validation (file:line errors), variables, plans,
batches, and the rollout loop driven by a fake session."""
from __future__ import annotations

import os
import textwrap
import threading
import time
from types import SimpleNamespace

import pytest

from hostops import runbook as rb
from hostops.errors import CommandAborted, RunbookError, UsageError
from hostops.inventory import Inventory
from hostops.results import HostResult
from hostops.rollout import SKIPPED, UNTOUCHED, RolloutSpec, StepRun, make_batches, rollout
from hostops.settings import Options
from hostops.get import GetAction
from hostops.put import PutAction
from hostops.script import ScriptAction
from hostops.connection import CommandOutcome
from hostops.worker import ExecAction

pytestmark = pytest.mark.timeout(30)


def write(tmp_path, text: str, name: str = "book.yml") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return str(path)


def hosts(n: int):
    return [f"h{i:03d}" for i in range(1, n + 1)]


# ------------------------------------------------------------------ load
def test_load_full_runbook(tmp_path):
    path = write(tmp_path, """
        name: rolling restart
        hosts: web:&prod
        batch: 10%
        max_fail: 2
        vars: {service: app, port: 8080}
        steps:
          - name: drain
            exec: /usr/local/bin/drain {{ service }}
            timeout: 60
          - name: push
            put: {src: app.conf, dest: /etc/app/app.conf, mode: "0644"}
          - exec: systemctl restart {{ service }}
            sudo: true
          - name: health
            exec: curl localhost:{{ port }}
            retries: 5
            delay: 2
          - name: logs
            get: {src: /var/log/app.log, dest: logs/}
            when_failed: true
          - name: check
            script: {src: check.sh, args: [-v, "{{ service }}"]}
        """)
    book = rb.load(path)
    assert (book.name, book.hosts, book.batch, book.max_fail) == ("rolling restart", "web:&prod", "10%", "2")
    assert book.vars == {"service": "app", "port": 8080}
    assert [s.name for s in book.steps] == ["drain", "push", "exec 3", "health", "logs", "check"]
    assert [s.kind for s in book.steps] == ["exec", "put", "exec", "exec", "get", "script"]
    assert [s.index for s in book.steps] == [1, 2, 3, 4, 5, 6]
    assert [s.line for s in book.steps] == [7, 10, 12, 14, 18, 21]
    drain, push, restart, health, logs, check = book.steps
    assert drain.timeout == 60 and drain.spec == "/usr/local/bin/drain {{ service }}"
    assert push.spec == {"src": "app.conf", "dest": "/etc/app/app.conf", "mode": "0644"}
    assert restart.sudo and not drain.sudo
    assert (health.retries, health.delay) == (5, 2.0)
    assert logs.when_failed and not health.when_failed
    assert check.spec["args"] == ["-v", "{{ service }}"]
    assert book.directory == str(tmp_path)


def test_load_defaults(tmp_path):
    book = rb.load(write(tmp_path, "steps:\n  - exec: uptime\n", name="plain.yml"))
    assert (book.name, book.hosts, book.batch, book.max_fail, book.vars) == ("plain.yml", "all", None, "0", {})
    step = book.steps[0]
    assert (step.name, step.timeout, step.sudo, step.retries, step.delay, step.when_failed) == (
        "exec 1", None, False, 0, 0.0, False)


BAD = [
    # (runbook text, line, message fragment)
    ("steps:\n  - name: a\n    exec: ls\n  - name: b\n    shell: ls\n", 5, "unknown step kind 'shell'"),
    ("steps:\n  - name: a\n    exec: ls\n    retry: 3\n", 4, "unknown key 'retry'"),
    ("name: x\nhost: all\nsteps:\n  - exec: ls\n", 2, "unknown key 'host'"),
    ("name: x\nbatch: ten\nsteps:\n  - exec: ls\n", 2, "batch 'ten' must be a number or a percentage"),
    ("name: x\nbatch: 0\nsteps:\n  - exec: ls\n", 2, "batch '0' must be at least 1"),
    ("max_fail: 150%\nsteps:\n  - exec: ls\n", 1, "max_fail '150%' is more than 100%"),
    ("max_fail: -1\nsteps:\n  - exec: ls\n", 1, "max_fail '-1' must be a number or a percentage"),
    ("steps:\n  - name: a\n    exec: ls\n   bad: 1\n", 4, "YAML syntax error"),
    ("steps:\n  - name: a\n    exec: ls\n    script: x.sh\n", 2, "exactly one of exec, put, get, script"),
    ("steps:\n  - name: a\n    exec: ls\n  - name: a\n    exec: ls\n", 4, "two steps are named 'a'"),
    ("steps:\n  - name: a\n    exec: ls\n  - name: b\n    put: {src: x, dest: /y, mod: 1}\n", 5,
     "unknown put option 'mod'"),
    ("steps:\n  - name: a\n    get: {src: /etc/hostname}\n", 3, "get needs dest"),
    ("steps:\n  - name: a\n    exec: ls\n    timeout: 0\n", 4, "timeout must be a number of seconds above 0"),
    ("steps:\n  - name: a\n    exec: ls\n    timeout: true\n", 4, "timeout must be a number of seconds above 0"),
    ("steps:\n  - name: a\n    exec: ls\n    retries: -1\n", 4, "retries must be a whole number, 0 or more"),
    ("steps:\n  - name: a\n    exec: ls\n    retries: 2.5\n", 4, "retries must be a whole number"),
    ("steps:\n  - name: a\n    exec: ls\n    retries: yes\n", 4, "retries must be a whole number"),
    ("steps:\n  - name: a\n    exec: ls\n    retries: 2\n    delay: soon\n", 5,
     "delay must be a number of seconds, 0 or more"),
    ("steps:\n  - name: a\n    exec: ls\n    delay: .inf\n", 4, "delay must be a number of seconds"),
    ("steps:\n  - name: a\n    get: {src: /etc/shadow, dest: out}\n    sudo: true\n", 4,
     "get does not support sudo"),
    ("steps:\n  - name: a\n    exec: ls\n    when_failed: maybe\n", 4, "when_failed must be true or false"),
    ("steps:\n  - name: a\n    exec: [ls]\n", 3, "exec must be a command string"),
    ("steps:\n  - name: a\n    script: {args: [1]}\n", 3, "script needs src"),
    ("steps:\n  - ls\n", 2, "step 1 must be a mapping"),  # the step's own line
    ("name: x\nsteps: []\n", 2, "steps must be a non-empty list"),
    ("name: x\nvars: [a, b]\nsteps:\n  - exec: ls\n", 2, "vars must be a mapping"),
    ("name: x\nhosts: 5\nsteps:\n  - exec: ls\n", 2, "hosts must be a host pattern"),
    ("# a list, not a runbook\n- a\n- b\n", 2, "a runbook is a mapping"),
]


@pytest.mark.parametrize("text,line,fragment", BAD, ids=[b[2][:40] for b in BAD])
def test_load_errors_name_file_and_line(tmp_path, text, line, fragment):
    path = write(tmp_path, text)
    with pytest.raises(RunbookError) as info:
        rb.load(path)
    message = str(info.value)
    assert message.startswith(f"{path}:{line}: "), message
    assert fragment in message
    assert "\n" not in message
    assert info.value.exit_code == 2


def test_load_missing_file(tmp_path):
    with pytest.raises(RunbookError, match="no such runbook file"):
        rb.load(str(tmp_path / "nope.yml"))


# ------------------------------------------------------------------ count_of / make_batches
@pytest.mark.parametrize("text,total,expected", [
    ("5", 20, 5), (" 7 ", 20, 7), ("25%", 20, 5), ("30%", 20, 6), ("10%", 15, 2), ("1%", 20, 1),
    ("100%", 20, 20), ("50", 20, 50), (3, 20, 3)])
def test_count_of(text, total, expected):
    assert rb.count_of(text, total, "batch") == expected


def test_count_of_zero_only_where_allowed():
    assert rb.count_of("0", 20, "max_fail", allow_zero=True) == 0
    assert rb.count_of("0%", 20, "max_fail", allow_zero=True) == 0
    for bad in ("0", "0%"):
        with pytest.raises(UsageError, match="must be at least 1"):
            rb.count_of(bad, 20, "batch")


@pytest.mark.parametrize("bad", ["ten", "10.5", "-1", "10 %", "", "101%", "1e3", "%"])
def test_count_of_rejects(bad):
    with pytest.raises(UsageError):
        rb.count_of(bad, 20, "batch")


def test_make_batches_by_number_and_percentage():
    names = hosts(20)
    assert [len(b) for b in make_batches(names, "7")] == [7, 7, 6]
    assert [len(b) for b in make_batches(names, "30%")] == [6, 6, 6, 2]
    assert [len(b) for b in make_batches(names, "25%")] == [5, 5, 5, 5]
    assert [len(b) for b in make_batches(names, "100")] == [20]
    assert make_batches(names, None) == [names]
    assert sum(make_batches(names, "3"), []) == names  # every host once, in order


def test_make_batches_with_canary():
    names = hosts(20)
    batches = make_batches(names, "50%", canary=2)
    assert batches[0] == ["h001", "h002"]
    assert [len(b) for b in batches] == [2, 9, 9]  # the percentage is of the hosts after the canaries
    assert sum(batches, []) == names
    assert make_batches(names, None, canary=3) == [names[:3], names[3:]]
    assert make_batches(names[:2], "5", canary=5) == [names[:2]]
    assert make_batches([], "5") == []


# ------------------------------------------------------------------ fill / extra vars
def _where(message):
    return RunbookError(message, "book.yml", 7)


def test_fill_substitutes_everywhere():
    variables = {"a": "x", "n": 3, "host": "h001"}
    assert rb.fill("echo {{a}} {{ n }} {{  host  }}", variables, _where) == "echo x 3 h001"
    assert rb.fill({"src": "f/{{ host }}", "args": ["{{a}}", 1]}, variables, _where) == {
        "src": "f/h001", "args": ["x", 1]}
    assert rb.fill(5, variables, _where) == 5
    assert rb.fill("no templates", {}, _where) == "no templates"


def test_fill_missing_variable_is_an_error():
    with pytest.raises(RunbookError, match=r"book.yml:7: variable 'nope' is not defined"):
        rb.fill("echo {{ a }} {{ nope }}", {"a": 1}, _where)


@pytest.mark.parametrize("text", ["{{ a | upper }}", "{{a}", "{{ 1a }}", "{% if a %}{{"])
def test_fill_rejects_other_template_syntax(text):
    with pytest.raises(RunbookError, match="only {{ name }} substitution is supported"):
        rb.fill(text, {"a": 1}, _where)


def test_parse_extra_vars():
    assert rb.parse_extra_vars(["a=1", "b=x=y", " c =", "a=2"]) == {"a": "2", "b": "x=y", "c": ""}
    for bad in ("novalue", "=x"):
        with pytest.raises(UsageError):
            rb.parse_extra_vars([bad])


# ------------------------------------------------------------------ plan
@pytest.fixture
def inv(tmp_path):
    path = tmp_path / "inv.yml"
    path.write_text(textwrap.dedent("""
        all:
          vars: {a: inv-all, b: inv-all, c: inv-all}
          children:
            web:
              vars: {a: inv-web}
              hosts:
                h001: {a: inv-h001}
                h002:
                h003: {only_here: yes-h003}
        """))
    return Inventory.load([str(path)])


def test_plan_precedence_inventory_runbook_extra(tmp_path, inv):
    path = write(tmp_path, """
        vars: {b: book, c: book}
        steps:
          - name: show
            exec: echo a={{ a }} b={{ b }} c={{ c }} on {{ inventory_hostname }}
        """)
    plans = rb.plan(rb.load(path), inv, ["h001", "h002"], {"c": "cli"}, Options())
    actions = plans[0].actions
    assert isinstance(actions["h001"], ExecAction)
    assert actions["h001"].command == "echo a=inv-h001 b=book c=cli on h001"
    assert actions["h002"].command == "echo a=inv-web b=book c=cli on h002"
    assert plans[0].for_target(SimpleNamespace(name="h002")) is actions["h002"]


def test_plan_fills_inventory_hostname(tmp_path, inv):
    path = write(tmp_path, "steps:\n  - exec: echo {{ inventory_hostname }}\n")
    plans = rb.plan(rb.load(path), inv, ["h001"], {}, Options())
    assert plans[0].actions["h001"].command == "echo h001"


def test_plan_variable_missing_on_one_host(tmp_path, inv):
    path = write(tmp_path, """
        steps:
          - name: fine
            exec: echo ok
          - name: uses host var
            exec: echo {{ only_here }}
        """)
    book = rb.load(path)
    assert rb.plan(book, inv, ["h003"], {}, Options())[1].actions["h003"].command == "echo yes-h003"
    with pytest.raises(RunbookError) as info:
        rb.plan(book, inv, ["h003", "h001"], {}, Options())
    assert str(info.value) == f"{path}:4: step 'uses host var' on h001: variable 'only_here' is not defined"


def test_plan_step_options_and_defaults(tmp_path, inv):
    path = write(tmp_path, """
        steps:
          - name: quick
            exec: echo 1
            timeout: 5
          - name: default timeout
            exec: echo 2
          - name: flaky
            exec: echo 3
            retries: 2
            delay: 0.5
            sudo: true
        """)
    plans = rb.plan(rb.load(path), inv, ["h001"], {}, Options(timeout=30))
    quick, default, flaky = (p.actions["h001"] for p in plans)
    assert (quick.timeout, default.timeout) == (5, 30)
    assert isinstance(flaky, rb.RetryAction)
    assert (flaky.retries, flaky.delay, flaky.inner.sudo, flaky.timeout) == (2, 0.5, True, 30)
    assert "retries 2, delay 0.5s" in flaky.describe()


def test_plan_resolves_local_paths_beside_the_runbook(tmp_path, inv, monkeypatch):
    book_dir = tmp_path / "book"
    (book_dir / "files").mkdir(parents=True)
    (book_dir / "files" / "app.conf").write_text("conf\n")
    (book_dir / "check.sh").write_text("#!/bin/sh\necho checked\n")
    (book_dir / "input.txt").write_text("in\n")
    path = write(book_dir, """
        steps:
          - name: push
            put: {src: files/app.conf, dest: "/tmp/x/{{ inventory_hostname }}.conf", mode: "0640"}
          - name: fetch
            get: {src: /etc/hostname, dest: fetched}
          - name: check
            script: {src: check.sh, args: ["{{ inventory_hostname }}", two]}
          - name: feed
            exec: cat
            stdin: input.txt
        """)
    monkeypatch.chdir(tmp_path)  # relative paths follow the runbook, not the current directory
    plans = rb.plan(rb.load(path), inv, ["h001", "h002"], {}, Options())
    put, get, script, feed = (p.actions for p in plans)
    assert isinstance(put["h001"], PutAction) and put["h001"].src == str(book_dir / "files" / "app.conf")
    assert (put["h001"].dest, put["h002"].dest) == ("/tmp/x/h001.conf", "/tmp/x/h002.conf")
    assert isinstance(get["h001"], GetAction) and get["h001"].dest == str(book_dir / "fetched")
    assert not (book_dir / "fetched").exists()  # planning creates nothing
    assert isinstance(script["h002"], ScriptAction)
    assert script["h002"].path == str(book_dir / "check.sh") and list(script["h002"].args) == ["h002", "two"]
    assert feed["h001"].stdin == str(book_dir / "input.txt")
    assert get["h001"] is get["h002"]  # identical per-host actions are built once


@pytest.mark.parametrize("step,fragment", [
    ("put: {src: missing.txt, dest: /tmp/x}", "missing.txt: no such file or directory"),
    ("script: missing.sh", "missing.sh: no such script file"),
    ("exec: cat\n    stdin: missing.in", "stdin file missing.in not found"),
    ("get: {src: /x, dest: not-a-dir/sub}", "not a directory"),
])
def test_plan_missing_local_files(tmp_path, inv, step, fragment):
    (tmp_path / "not-a-dir").write_text("a file")
    path = write(tmp_path, f"steps:\n  - name: first\n    exec: echo first\n  - name: bad\n    {step}\n")
    with pytest.raises(RunbookError) as info:
        rb.plan(rb.load(path), inv, ["h001"], {}, Options())
    message = str(info.value)
    assert message.startswith(f"{path}:4: step 'bad' on h001: ") and fragment in message, message


# ------------------------------------------------------------------ RetryAction
class Flaky:
    """Fails until the ``succeed_on``-th call."""

    timeout = 9

    def __init__(self, succeed_on: int):
        self.calls = []
        self.succeed_on = succeed_on

    def describe(self):
        return "flaky"

    def run(self, conn, target, ctx, on_output):
        self.calls.append(time.monotonic())
        n = len(self.calls)
        return CommandOutcome(0 if n >= self.succeed_on else 1, f"try {n}".encode(), b"")


def test_retry_succeeds_on_third_attempt_after_delays():
    inner = Flaky(3)
    action = rb.RetryAction(inner, retries=4, delay=0.2)
    outcome = action.run(None, None, None, None)
    assert outcome.exit_code == 0 and outcome.stdout == b"try 3" and outcome.error is None
    assert len(inner.calls) == 3
    assert all(b - a >= 0.19 for a, b in zip(inner.calls, inner.calls[1:]))
    assert action.timeout == 9


def test_retry_gives_up_and_says_how_often():
    inner = Flaky(10)
    outcome = rb.RetryAction(inner, retries=2, delay=0).run(None, None, None, None)
    assert outcome.exit_code == 1 and len(inner.calls) == 3
    assert outcome.error == "after 3 attempts"


@pytest.mark.timeout(60)
def test_retry_wait_is_cut_short_by_abort():
    # An hour's delay: only the abort can end the wait before the timeout above (a hang guard,
    # not a wall-clock bound on a loaded machine).
    ctx = SimpleNamespace(abort=threading.Event())
    inner = Flaky(10)
    threading.Timer(0.2, ctx.abort.set).start()
    with pytest.raises(CommandAborted):
        rb.RetryAction(inner, retries=5, delay=3600).run(None, None, ctx, None)
    assert len(inner.calls) == 1


# ------------------------------------------------------------------ rollout (fake session)
class FakeSession:
    """Runs each step in-process: ``fail`` maps (step name, host) → status."""

    def __init__(self, fail=None):
        self.fail = fail or {}
        self.calls = []            # (step name, [hosts]) in order
        self.not_started = []
        self.interrupted = False
        self.paused = []

    def run(self, targets, action, on_start=None, on_output=None, step=None):
        names = [t.name for t in targets]
        self.calls.append((action.name, names))
        self.not_started = []
        for name in names:
            yield HostResult(name, self.fail.get((action.name, name), "ok"), step=step)

    def wait_interrupt(self, seconds):
        self.paused.append(seconds)
        return False


def targets(n):
    return [SimpleNamespace(name=h) for h in hosts(n)]


def steps(*names, when_failed=()):
    return [StepRun(n, lambda t: None, n in when_failed) for n in names]


def test_rollout_batches_and_step_order():
    session = FakeSession()
    report = rollout(session, targets(10), steps("a", "b"), RolloutSpec(batch="4", pause=0.01))
    assert session.calls == [("a", hosts(4)), ("b", hosts(4)), ("a", hosts(10)[4:8]), ("b", hosts(10)[4:8]),
                             ("a", hosts(10)[8:]), ("b", hosts(10)[8:])]
    assert report.batches == [hosts(4), hosts(10)[4:8], hosts(10)[8:]]
    assert report.stopped is None and report.untouched == [] and report.failed == []
    assert len(session.paused) >= 2  # a pause between batches, none before the first


def test_rollout_failure_below_max_fail_goes_on():
    session = FakeSession({("a", "h002"): "failed"})
    report = rollout(session, targets(10), steps("a", "b"), RolloutSpec(batch="5", max_fail="1"))
    assert report.stopped is None
    assert ("b", ["h001", "h003", "h004", "h005"]) in session.calls  # the failed host skips the rest
    assert report.outcome["h002"] == {"a": "failed", "b": SKIPPED}
    assert report.failed == ["h002"] and report.final_status("h002") == "failed"
    assert all(report.final_status(h) == "ok" for h in hosts(10) if h != "h002")


def test_rollout_failure_above_max_fail_stops_before_next_batch():
    fail = {("a", "h002"): "failed", ("a", "h004"): "unreachable"}
    session = FakeSession(fail)
    stops = []
    report = rollout(session, targets(10), steps("a", "b"), RolloutSpec(batch="5", max_fail="1"),
                     on_stop=stops.append)
    assert session.calls == [("a", hosts(5))]  # the current step was the last
    assert report.untouched == hosts(10)[5:]
    assert sorted(report.failed) == ["h002", "h004"]
    assert stops and "more than max_fail 1" in stops[0] and report.stopped == stops[0]
    assert report.final_status("h004") == "unreachable" and report.final_status("h006") == UNTOUCHED


def test_rollout_max_fail_percentage_counts_all_hosts():
    fail = {("a", h): "failed" for h in ("h001", "h002")}
    report = rollout(FakeSession(fail), targets(20), steps("a"), RolloutSpec(batch="5", max_fail="10%"))
    assert report.stopped is None  # 10% of 20 = 2: two failures are allowed
    fail[("a", "h003")] = "failed"
    report = rollout(FakeSession(fail), targets(20), steps("a"), RolloutSpec(batch="5", max_fail="10%"))
    assert report.stopped and report.untouched == hosts(20)[5:]


def test_rollout_when_failed_runs_only_on_failed_hosts():
    session = FakeSession({("a", "h002"): "failed", ("b", "h003"): "timeout"})
    report = rollout(session, targets(4), steps("a", "b", "rescue", when_failed=("rescue",)), RolloutSpec())
    assert ("rescue", ["h002", "h003"]) in session.calls
    assert report.outcome["h001"]["rescue"] == SKIPPED
    assert report.final_status("h002") == "failed" and report.final_status("h003") == "timeout"


def test_rollout_canary():
    session = FakeSession({("a", "h001"): "failed"})
    report = rollout(session, targets(10), steps("a"), RolloutSpec(canary=2))
    assert session.calls == [("a", ["h001", "h002"])]
    assert "canary" in report.stopped and report.untouched == hosts(10)[2:]
    session = FakeSession()
    report = rollout(session, targets(10), steps("a"), RolloutSpec(canary=2, batch="4"))
    assert [c[1] for c in session.calls] == [hosts(2), hosts(10)[2:6], hosts(10)[6:]]
    assert report.stopped is None and report.untouched == []


def test_rollout_spec_active():
    assert not RolloutSpec().active
    assert RolloutSpec(max_fail="0").active and RolloutSpec(batch="2").active and RolloutSpec(canary=1).active


def test_example_runbooks_load_and_plan():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    inv = Inventory.load([os.path.join(root, "inventories", "prod.yml")])
    for name in ("rolling-restart.yml", "local-check.yml"):
        book = rb.load(os.path.join(root, "hostops", "examples", "runbooks", name))
        names = inv.select(book.hosts)
        plans = rb.plan(book, inv, names, {"who": "test"}, Options())
        assert len(plans) == len(book.steps) >= 3


# ------------------------------------------------------------------ state and lock files
def test_state_round_trip(tmp_path):
    from hostops.state import hosts_with, state_path, write_state

    assert state_path(str(tmp_path / "run.jsonl")) == str(tmp_path / "run.jsonl.last-run.json")
    path = str(tmp_path / "deep" / "last-run.json")
    write_state(path, "run x", {"h1": "ok", "h2": "failed", "h3": "unchanged", "h4": "unreachable",
                                "h5": "timeout", "h6": "interrupted"}, untouched=["h7", "h8"])
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    assert hosts_with(path, "ok") == ["h1", "h3"]
    assert hosts_with(path, "failed") == ["h2", "h4", "h5", "h6"]
    assert hosts_with(path, "unreachable") == ["h4"]
    assert hosts_with(path, "untouched") == ["h7", "h8"]
    write_state(path, "again", {"h1": "failed"})  # replaced, not merged
    assert hosts_with(path, "failed") == ["h1"] and hosts_with(path, "ok") == []
    assert [n for n in os.listdir(tmp_path / "deep")] == ["last-run.json"]  # no temporary left


@pytest.mark.parametrize("content", ["", "not json", "null", "[]", '{"time": 1}', '{"hosts": ["h1"]}',
                                     '{"hosts": {"h1": ["failed"]}}'])
def test_state_unreadable_is_a_selection_error(tmp_path, content):
    """A damaged state file is a one-line selection error (exit 2), never an internal error."""
    from hostops.errors import SelectionError
    from hostops.state import hosts_with

    path = tmp_path / "last-run.json"
    path.write_text(content)
    with pytest.raises(SelectionError, match="cannot read the last run's state"):
        hosts_with(str(path), "failed")
    with pytest.raises(SelectionError, match="no previous run recorded"):
        hosts_with(str(tmp_path / "missing.json"), "failed")


def test_run_lock(tmp_path):
    from hostops.errors import LockHeld
    from hostops.runlock import RunLock

    path = str(tmp_path / "run.lock")
    first = RunLock(path).acquire()
    assert open(path).read() == ""  # created empty, never written (flock(1) does the same)
    with pytest.raises(LockHeld) as info:
        RunLock(path).acquire()
    assert str(info.value) == f"another hostops run holds the lock {path} (pid {os.getpid()}); not starting"
    assert info.value.exit_code == 6
    first.release()
    with RunLock(path):  # released: free again
        pass
    os.symlink(path, str(tmp_path / "link.lock"))
    with pytest.raises(UsageError, match="cannot open it"):
        RunLock(str(tmp_path / "link.lock")).acquire()


def test_run_lock_on_a_file_system_without_locks(tmp_path, monkeypatch):
    import errno
    import fcntl

    from hostops.runlock import RunLock

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.raises(UsageError, match="cannot lock it: No locks available"):
        RunLock(str(tmp_path / "nfs.lock")).acquire()


def test_rollout_when_failed_steps_still_run_after_max_fail_stops_it():
    """max_fail 0 (the default) stops the rollout at the first failure, but the batch's
    when_failed steps (collect logs) still run on the hosts that failed."""
    session = FakeSession({("a", "h002"): "failed"})
    report = rollout(session, targets(6), steps("a", "b", "logs", when_failed=("logs",)),
                     RolloutSpec(batch="3", max_fail="0"))
    assert session.calls == [("a", hosts(3)), ("logs", ["h002"])]
    assert report.stopped and report.untouched == ["h004", "h005", "h006"]
    assert report.outcome["h002"]["logs"] == "ok"


def test_rollout_hosts_cut_short_are_incomplete_not_ok():
    """Hosts that passed step a but never got step b (the rollout stopped) are 'incomplete':
    not ok, and selected by @failed for a rerun."""
    session = FakeSession({("a", "h002"): "failed"})
    report = rollout(session, targets(3), steps("a", "b"), RolloutSpec(max_fail="0"))
    assert [report.final_status(h) for h in hosts(3)] == ["incomplete", "failed", "incomplete"]
