"""Units of --persist's plumbing: a run's secrets never stay with a held connection, the
identity of a connection, and the keeper worker's run bookkeeping."""
from __future__ import annotations

import dataclasses

from hostops import held as heldmod
from hostops.actions import ExecAction
from hostops.connection import CommandOutcome, Connection
from hostops.held import HeldStore, identity
from hostops.secrets import Secrets
from hostops.settings import Options, Target
from hostops.wire import Job
from hostops.worker import execute
from hostops.workerctx import WorkerContext


class FakeConnection(Connection):
    """Stands in for an SSH connection (no transport: no host key to recheck)."""

    def __init__(self) -> None:
        self.seen_ctx = []
        self.closed = False

    def run(self, command, timeout=None, on_output=None, stdin=None, sudo=False):
        self.seen_ctx.append(self.ctx)
        return CommandOutcome(0, b"ok\n", b"")

    def files(self):
        raise NotImplementedError

    def kill(self, pid, sudo=False):
        return ""

    def alive(self) -> bool:
        return not self.closed

    def close(self) -> None:
        self.closed = True


def _contexts():
    store = HeldStore()
    base = WorkerContext(Options(), held=store)
    store.base_ctx = base
    return store, base


def test_held_connection_keeps_no_run_secrets(mocker):
    store, base = _contexts()
    made = []

    def connect(target, ctx):
        conn = FakeConnection()
        conn.ctx = ctx
        made.append(conn)
        return conn

    mocker.patch("hostops.workerctx.connect", side_effect=connect)
    target = Target("h1", "127.0.0.1", port=2222, user="root")
    job = Job(1, target, ExecAction("true", None, False))
    secret = Options(secrets=Secrets(sudo_password="hunter2", ssh_password="pw"))
    run1 = WorkerContext(secret, held=store)
    run1.persist = 60
    assert execute(job, run1).status == "ok"
    assert len(made) == 1 and made[0].seen_ctx == [run1]
    assert made[0].ctx is base and base.options.secrets.sudo_password is None  # held: no secrets reachable
    run2 = WorkerContext(Options(), held=store)
    run2.persist = 60
    assert execute(dataclasses.replace(job, id=2), run2).status == "ok"
    assert len(made) == 1 and made[0].seen_ctx == [run1, run2]  # reused, with the second run's context
    assert [r["runs"] for r in store.rows()] == [2]
    run1.close()
    run2.close()


def test_identity_covers_what_trust_depends_on(tmp_path):
    key = tmp_path / "key"
    key.write_text("one")
    t = Target("h1", "10.0.0.1", port=22, user="root", identity_files=(str(key),), identities_only=True,
               host_key_policy="strict")
    o = Options()
    same = identity(t, o)
    assert identity(dataclasses.replace(t, name="alias"), o) == same  # the name is not the identity
    for other in (dataclasses.replace(t, port=2222), dataclasses.replace(t, user="app"),
                  dataclasses.replace(t, host_key_policy="accept-new"),
                  dataclasses.replace(t, jump=(Target("j", "10.0.0.9", user="root"),)),
                  dataclasses.replace(t, identities_only=False)):
        assert identity(other, o) != same
    assert identity(t, Options(known_hosts=(str(tmp_path / "kh"),))) != same
    assert identity(t, Options(ssh_config=str(tmp_path / "cfg"))) != same
    key.write_text("two")  # another key at the same path
    assert identity(t, o) != same


def test_prune_closes_idle_and_dead(monkeypatch):
    store, _base = _contexts()
    now = [1000.0]
    monkeypatch.setattr(heldmod.time, "time", lambda: now[0])
    idle, busy, dead = FakeConnection(), FakeConnection(), FakeConnection()
    for name, conn, persist in (("idle", idle, 10), ("busy", busy, 100), ("dead", dead, 100)):
        store.put(heldmod.Held(conn, name, name, "u", "a", 22, 990, 995, 1, persist))
    dead.closed = True
    now[0] = 1006.0
    assert store.prune() == 1
    assert idle.closed and not busy.closed
    assert [r["host"] for r in store.rows()] == ["busy"]
    assert store.close_matching("b*") == 1 and busy.closed
