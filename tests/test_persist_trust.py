"""``--persist`` reuses a connection only for the same identity, and only while its host key
is still trusted; a dropped connection is a fresh login, never a failure (issue 15)."""
from __future__ import annotations

import os
import shutil

import pytest
import yaml

from persistlab import children, keeper_pid, loud_lab, runtime, setup, wait_until  # noqa: F401  (fixtures)
from sshlab import keygen

pytestmark = pytest.mark.timeout(240)


def _warm(hostops, *args):
    run = hostops("exec", "echo ok", *args, "--persist", "5m", "--json")
    return run


def test_other_known_hosts_or_policy_is_another_identity(hostops, loud_lab, runtime, setup, tmp_path):
    inv, kh = setup
    assert _warm(hostops, "-i", inv, "--known-hosts", kh).code == 0
    before = loud_lab.count_logins()
    assert _warm(hostops, "-i", inv, "--known-hosts", kh).code == 0
    assert loud_lab.count_logins() == before
    other = str(tmp_path / "other_known_hosts")
    shutil.copy(kh, other)
    run = _warm(hostops, "-i", inv, "--known-hosts", other)
    assert run.code == 0, run
    assert loud_lab.count_logins() == before + 6  # other known_hosts files: new logins
    run = _warm(hostops, "-i", inv, "--known-hosts", kh, "--host-key-policy", "accept-new")
    assert run.code == 0, run
    assert loud_lab.count_logins() == before + 12  # a looser policy never shares the strict connections
    run = _warm(hostops, "-i", inv, "--known-hosts", kh)
    assert run.code == 0 and loud_lab.count_logins() == before + 12, run  # each identity kept its own


def test_another_key_at_the_same_path_is_another_identity(hostops, loud_lab, runtime, tmp_path):
    key = str(tmp_path / "key")
    shutil.copy(loud_lab.user_key, key)
    os.chmod(key, 0o600)
    inv = str(tmp_path / "inv.yml")
    loud_lab.write_inventory(inv, 3)
    with open(inv) as fh:
        data = yaml.safe_load(fh)
    data["all"]["vars"]["ansible_ssh_private_key_file"] = key
    with open(inv, "w") as fh:
        yaml.safe_dump(data, fh)
    kh = loud_lab.write_known_hosts(str(tmp_path / "kh"))
    assert _warm(hostops, "-i", inv, "--known-hosts", kh).code == 0
    before = loud_lab.count_logins()
    second = str(tmp_path / "second")
    pub = keygen(second)
    with open(os.path.join(loud_lab.workdir, "authorized_keys"), "a") as fh:
        fh.write(pub + "\n")
    shutil.copy(second, key)
    run = _warm(hostops, "-i", inv, "--known-hosts", kh)
    assert run.code == 0, run
    assert loud_lab.count_logins() == before + 3


def test_forgotten_host_key_refuses_reuse(hostops, loud_lab, runtime, setup, tmp_path):
    inv, kh = setup
    assert _warm(hostops, "-i", inv, "--known-hosts", kh).code == 0
    before = loud_lab.count_logins()
    loud_lab.write_known_hosts(kh, addresses=["127.0.0.1", "127.0.0.3"])  # 127.0.0.2 forgotten
    run = _warm(hostops, "-i", inv, "--known-hosts", kh)
    assert run.code == 4, run
    by_host = {r["host"]: r for r in run.json_lines()}
    forgotten = {h for h, r in by_host.items() if r["status"] == "unreachable"}
    assert forgotten == {"h002", "h005"}  # the hosts at 127.0.0.2
    assert all("host key unknown" in by_host[h]["error"] for h in forgotten)
    assert all(r["status"] == "ok" for h, r in by_host.items() if h not in forgotten)
    assert loud_lab.count_logins() == before  # the others were reused; the forgotten ones never logged in


def test_revoked_host_key_refuses_reuse(hostops, loud_lab, runtime, setup):
    inv, kh = setup
    assert _warm(hostops, "-i", inv, "--known-hosts", kh).code == 0
    key_line = loud_lab.known_hosts_line("127.0.0.1")
    key = " ".join(key_line.split()[1:])
    with open(kh, "a") as fh:
        fh.write(f"@revoked * {key}\n")
    run = _warm(hostops, "-i", inv, "--known-hosts", kh)
    assert run.code == 4, run
    assert {r["status"] for r in run.json_lines()} == {"unreachable"}
    assert all("revoked" in r["error"].lower() for r in run.json_lines())


def _sshd_sessions(lab) -> list:
    """The per-connection sshd processes of the loud lab (children of its listener)."""
    return children(lab.proc.pid)


def test_dropped_connections_log_in_again_transparently(hostops, loud_lab, runtime, setup):
    import signal

    inv, kh = setup
    assert _warm(hostops, "-i", inv, "--known-hosts", kh).code == 0
    sessions = _sshd_sessions(loud_lab)
    assert len(sessions) >= 6
    for pid in sessions:  # the host's side of every held connection goes away
        os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: not _sshd_sessions(loud_lab), 30)
    before = loud_lab.count_logins()
    run = _warm(hostops, "-i", inv, "--known-hosts", kh)
    assert run.code == 0, run
    assert {r["status"] for r in run.json_lines()} == {"ok"}
    assert loud_lab.count_logins() == before + 6
    assert keeper_pid(runtime) is not None


def test_silently_dropped_connections_log_in_again(hostops, loud_lab, runtime, setup):
    """A held connection whose peer stopped answering without closing (a dropped route, a
    frozen host): the session channel cannot be opened within --connect-timeout, nothing ran
    on it, so the host is logged in again and its result is as usual."""
    import signal

    inv, kh = setup
    assert _warm(hostops, "-i", inv, "--known-hosts", kh).code == 0
    frozen = _sshd_sessions(loud_lab)
    assert len(frozen) >= 6
    try:
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        before = loud_lab.count_logins()
        run = _warm(hostops, "-i", inv, "--known-hosts", kh, "--connect-timeout", "3")
        assert run.code == 0, run
        assert {r["status"] for r in run.json_lines()} == {"ok"}
        assert loud_lab.count_logins() == before + 6
    finally:
        for pid in frozen:  # the frozen sessions this test made: gone for good
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
