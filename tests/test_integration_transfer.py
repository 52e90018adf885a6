"""``hostops put / get / script`` and ``exec --stdin`` end to end against the real test sshd.

All lab hosts are one sshd on one file system, so "20 hosts" write the same remote path:
the assertions are that every host reports ok, the final file is byte-identical, no
temporary name is left behind, and get writes DEST/<host>/... for every host.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import pwd
import re
import secrets
import signal
import stat
import subprocess
import sys
import threading
import time
from typing import Dict, List, Optional

import pytest

from conftest import ROOT
from sshlab import free_port

MiB = 1024 * 1024
TEMP_MARK = ".hostops-"


# ------------------------------------------------------------------ helpers
def hosts(n: int) -> List[str]:
    return [f"h{i:03d}" for i in range(1, n + 1)]


def by_host(run) -> Dict[str, dict]:
    return {r["host"]: r for r in run.json_lines()}


def all_statuses(run, n: int, status: str) -> Dict[str, dict]:
    """Every one of h001..hNNN reported, each with ``status``."""
    results = by_host(run)
    assert sorted(results) == hosts(n), run
    wrong = {h: (r["status"], r["error"]) for h, r in results.items() if r["status"] != status}
    assert not wrong, (wrong, run)
    return results


def temp_leftovers(root) -> List[str]:
    """Names hostops uses while writing (``.name.hostops-XXXX`` remotely, ``...part`` locally)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(str(root)):
        found += [os.path.join(dirpath, n) for n in dirnames + filenames if TEMP_MARK in n or n.endswith(".part")]
    return found


def regular_files(root) -> List[str]:
    return sorted(os.path.join(d, n) for d, _dirs, names in os.walk(str(root)) for n in names)


def snapshot(root) -> Dict[str, Optional[bytes]]:
    """{relative path: content} for files, {relative path: None} for directories."""
    root = str(root)
    snap: Dict[str, Optional[bytes]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            snap[os.path.relpath(os.path.join(dirpath, d), root)] = None
        for f in filenames:
            with open(os.path.join(dirpath, f), "rb") as fh:
                snap[os.path.relpath(os.path.join(dirpath, f), root)] = fh.read()
    return snap


def make_tree(root) -> Dict[str, Optional[bytes]]:
    """Nested directories, several files (text, binary, empty, one executable), an empty dir."""
    root = str(root)
    files = {
        "top.txt": b"top level\n",
        "bin.dat": os.urandom(300 * 1024),
        "empty-file": b"",
        "a/one.txt": b"one\n",
        "a/b/two.bin": os.urandom(70 * 1024),
        "a/b/c/three.txt": b"three\n" * 1000,
        "tools/run.sh": b"#!/bin/sh\necho run\n",
    }
    for rel, data in files.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as fh:
            fh.write(data)
    os.chmod(os.path.join(root, "tools/run.sh"), 0o755)
    os.makedirs(os.path.join(root, "empty-dir"))
    os.makedirs(os.path.join(root, "a/b/empty-too"))
    return snapshot(root)


def write(path, data: bytes, mode: Optional[int] = None) -> str:
    with open(path, "wb") as fh:
        fh.write(data)
    if mode is not None:
        os.chmod(path, mode)
    return str(path)


def mode_of(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def assert_usage_error(run, *needles: str) -> None:
    """Exit 2, nothing on stdout, exactly one line on stderr naming the problem, nothing ran."""
    assert run.code == 2, run
    assert run.out == "", run
    lines = run.err.strip().splitlines()
    assert len(lines) == 1, run
    assert lines[0].startswith("hostops: "), run
    for needle in needles:
        assert needle in lines[0], (needle, run)
    assert "hosts:" not in run.err and "host:" not in run.err, run  # no run summary: nothing ran


def hostops_tmpdirs() -> set:
    return set(glob.glob("/tmp/hostops.*"))


def sudo_works() -> bool:
    try:
        return subprocess.run(["sudo", "-n", "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def start_hostops(home, *args: str) -> subprocess.Popen:
    """The CLI in its own process group, as a terminal would run it, so a test can press Ctrl-C."""
    env = dict(os.environ, HOME=str(home), PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("SSH_AUTH_SOCK", None)
    return subprocess.Popen([sys.executable, "-m", "hostops", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=str(home), start_new_session=True)


def ctrl_c_when(proc: subprocess.Popen, ready, timeout: float = 90):
    """SIGINT to the process group once ``ready()``; then (code, stdout, stderr, seconds it took to exit)."""
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            assert proc.poll() is None, ("hostops ended before it was interrupted", proc.communicate())
            assert time.monotonic() < deadline, "never became ready to interrupt"
            time.sleep(0.02)
        time.sleep(0.3)
        sent = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=90)
        return proc.returncode, out, err, time.monotonic() - sent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@pytest.fixture
def lab_args(known_hosts):
    """``-i INV --known-hosts KH`` for an inventory of n lab hosts."""
    def make(inv: str) -> List[str]:
        return ["-i", inv, "--known-hosts", known_hosts]
    return make


# ================================================================== put
@pytest.mark.timeout(240)
def test_put_file_to_twenty_hosts_byte_identical(hostops, inventory, lab_args, tmp_path):
    payload = os.urandom(4 * MiB + 12345)
    src = write(tmp_path / "payload.bin", payload)
    remote = tmp_path / "remote"
    remote.mkdir()
    dest = remote / "deployed.bin"
    run = hostops("put", src, str(dest), *lab_args(inventory(20)), "-f", "20", "--json", timeout=200)
    assert run.code == 0, run
    results = all_statuses(run, 20, "ok")
    assert all(r["exit_code"] == 0 and r["error"] is None for r in results.values())
    assert all(f"-> {dest}" in r["stdout"] for r in results.values()), run
    assert dest.read_bytes() == payload
    assert os.listdir(remote) == ["deployed.bin"]
    assert "20 hosts: 20 ok, 0 failed, 0 unreachable, 0 timeout" in run.err


@pytest.mark.timeout(120)
def test_put_into_directory_keeps_file_name(hostops, inventory, lab_args, tmp_path):
    payload = os.urandom(200 * 1024)
    src = write(tmp_path / "app.conf", payload)
    with_slash = tmp_path / "with-slash"
    with_slash.mkdir()
    existing = tmp_path / "existing-dir"
    existing.mkdir()
    inv = inventory(5)
    for dest in (str(with_slash) + "/", str(existing)):   # 'DIR/' and an existing 'DIR'
        run = hostops("put", src, dest, *lab_args(inv), "--json")
        assert run.code == 0, run
        results = all_statuses(run, 5, "ok")
        target = os.path.join(dest.rstrip("/"), "app.conf")
        assert all(f"-> {target} " in r["stdout"] for r in results.values()), run
        assert os.listdir(dest) == ["app.conf"]
        with open(target, "rb") as fh:
            assert fh.read() == payload


@pytest.mark.timeout(120)
def test_put_mode_option_applied(hostops, inventory, lab_args, tmp_path):
    src = write(tmp_path / "secret.conf", b"key=value\n", 0o644)
    dest = tmp_path / "out" / "secret.conf"
    dest.parent.mkdir()
    inv = inventory(5)
    run = hostops("put", src, str(dest), "--mode", "0640", *lab_args(inv), "--json")
    assert run.code == 0, run
    all_statuses(run, 5, "ok")
    assert mode_of(dest) == 0o640
    assert dest.read_bytes() == b"key=value\n"
    os.chmod(dest, 0o666)  # an existing file's mode gives way to --mode too
    run = hostops("put", src, str(dest), "--mode", "600", *lab_args(inv), "--json")
    assert run.code == 0, run
    assert mode_of(dest) == 0o600
    assert temp_leftovers(dest.parent) == []


@pytest.mark.timeout(120)
def test_put_default_mode_keeps_existing_files_mode(hostops, inventory, lab_args, tmp_path):
    src = write(tmp_path / "new.conf", b"new content\n", 0o644)
    remote = tmp_path / "remote"
    remote.mkdir()
    dest = write(remote / "app.conf", b"old content\n", 0o604)
    inv = inventory(5)
    run = hostops("put", src, dest, *lab_args(inv), "--json")
    assert run.code == 0, run
    all_statuses(run, 5, "ok")
    assert open(dest, "rb").read() == b"new content\n"
    assert mode_of(dest) == 0o604, oct(mode_of(dest))
    # a new file takes the local file's mode minus group/other write
    script = write(tmp_path / "tool.sh", b"#!/bin/sh\n", 0o777)
    run = hostops("put", script, str(remote) + "/", *lab_args(inv), "--json")
    assert run.code == 0, run
    assert mode_of(remote / "tool.sh") == 0o755
    assert temp_leftovers(remote) == []


@pytest.mark.timeout(180)
def test_put_recursive_tree_byte_identical(hostops, inventory, lab_args, tmp_path):
    src = tmp_path / "site"
    expected = make_tree(src)
    dest = tmp_path / "srv"
    dest.mkdir()
    run = hostops("put", "-r", str(src), str(dest) + "/", *lab_args(inventory(10)), "-f", "10", "--json")
    assert run.code == 0, run
    results = all_statuses(run, 10, "ok")
    assert all("sent 7 file(s)" in r["stdout"] for r in results.values()), run
    assert snapshot(dest / "site") == expected
    assert os.listdir(dest) == ["site"]
    assert mode_of(dest / "site" / "tools" / "run.sh") == 0o755
    assert temp_leftovers(dest) == []


@pytest.mark.timeout(120)
def test_put_recursive_of_a_single_file_copies_the_file(hostops, inventory, lab_args, tmp_path):
    """-r on a file behaves like cp -r: the file is copied (it used to make an empty
    directory of the file's name and then fail with 'is a directory')."""
    src = write(tmp_path / "single.txt", b"just one\n")
    dest = tmp_path / "single-dest.txt"
    run = hostops("put", "-r", src, str(dest), *lab_args(inventory(1)), "--json")
    assert run.code == 0, run
    all_statuses(run, 1, "ok")
    assert dest.is_file() and dest.read_bytes() == b"just one\n"


@pytest.mark.timeout(300)
def test_put_atomic_replace_reader_sees_only_old_or_new(hostops, inventory, lab_args, tmp_path):
    old = os.urandom(40 * MiB)
    new = os.urandom(40 * MiB)
    remote = tmp_path / "remote"
    remote.mkdir()
    dest = write(remote / "big.bin", old, 0o644)
    src = write(tmp_path / "big-new.bin", new)
    seen = {"old": 0, "new": 0, "during_transfer": 0}
    torn: List[tuple] = []
    stop = threading.Event()

    def reader() -> None:
        deadline = time.monotonic() + 240
        for _ in range(20000):
            if stop.is_set() or time.monotonic() > deadline:
                return
            writing = any(TEMP_MARK in n for n in os.listdir(remote))
            with open(dest, "rb") as fh:
                data = fh.read()
            if data == old:
                seen["old"] += 1
            elif data == new:
                seen["new"] += 1
            else:
                torn.append((len(data), hashlib.sha256(data).hexdigest()[:12]))
            if writing and any(TEMP_MARK in n for n in os.listdir(remote)):
                seen["during_transfer"] += 1  # this read happened while a host was writing

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    try:
        run = hostops("put", src, dest, *lab_args(inventory(5)), "--json", timeout=240)
    finally:
        stop.set()
        t.join(60)
    assert not t.is_alive()
    assert run.code == 0, run
    all_statuses(run, 5, "ok")
    assert torn == [], f"a reader saw a file that was neither the old nor the new one: {torn[:5]}"
    assert seen["old"] >= 1 and seen["during_transfer"] >= 1, seen
    with open(dest, "rb") as fh:
        assert fh.read() == new
    assert mode_of(dest) == 0o644
    assert os.listdir(remote) == ["big.bin"]


@pytest.mark.timeout(240)
def test_put_checksum_unchanged_then_ok_after_change(hostops, inventory, lab_args, tmp_path):
    src = tmp_path / "conf.bin"
    write(src, os.urandom(512 * 1024))
    dest = tmp_path / "remote.bin"
    args = lab_args(inventory(20))
    first = hostops("put", str(src), str(dest), *args, "-f", "20", "--json")
    assert first.code == 0, first
    all_statuses(first, 20, "ok")
    again = hostops("put", str(src), str(dest), "--checksum", *args, "-f", "20", "--json")
    assert again.code == 0, again
    results = all_statuses(again, 20, "unchanged")
    assert all(r["exit_code"] == 0 and "already has the same content" in r["stdout"] for r in results.values())
    assert "20 hosts: 0 ok, 20 unchanged, 0 failed, 0 unreachable, 0 timeout" in again.err, again
    changed = os.urandom(512 * 1024)
    write(src, changed)
    third = hostops("put", str(src), str(dest), "--checksum", *args, "-f", "20", "--json")
    assert third.code == 0, third
    # one file system for all lab hosts: a host that checks after another host's rename
    # rightly finds the new content already there
    statuses = [r["status"] for r in by_host(third).values()]
    assert len(statuses) == 20 and set(statuses) <= {"ok", "unchanged"} and "ok" in statuses, third
    unchanged = statuses.count("unchanged")  # the summary names "unchanged" only when there is one
    shown = f"{unchanged} unchanged, " if unchanged else ""
    assert f"20 hosts: {statuses.count('ok')} ok, {shown}0 failed" in third.err, third
    assert dest.read_bytes() == changed
    again_changed = os.urandom(1000)
    write(src, again_changed)
    one = hostops("put", str(src), str(dest), "--checksum", *lab_args(inventory(1, name="one.yml")), "--json")
    assert one.code == 0, one
    all_statuses(one, 1, "ok")
    assert dest.read_bytes() == again_changed
    assert temp_leftovers(tmp_path) == []


@pytest.mark.timeout(120)
def test_put_checksum_recursive_tree_unchanged(hostops, inventory, lab_args, tmp_path):
    src = tmp_path / "tree"
    expected = make_tree(src)
    dest = tmp_path / "dest"
    dest.mkdir()
    args = ["put", "-r", "--checksum", str(src), str(dest) + "/", *lab_args(inventory(3)), "--json"]
    assert hostops(*args).code == 0
    run = hostops(*args)
    assert run.code == 0, run
    results = all_statuses(run, 3, "unchanged")
    assert all("7 unchanged" in r["stdout"] for r in results.values()), run
    assert snapshot(dest / "tree") == expected


@pytest.mark.timeout(120)
def test_put_checksum_with_tilde_path(hostops, lab, inventory, lab_args, tmp_path):
    """A quoted ``~/name`` is the login directory's name for SFTP; the remote sha256sum
    must look at the same file (it used to look for a literal './~/name', so --checksum
    never reported unchanged)."""
    name = f"hostops-test-{secrets.token_hex(4)}"
    landed = os.path.join(pwd.getpwnam(lab.user).pw_dir, name)
    src = write(tmp_path / "t.conf", b"tilde\n")
    args = ["put", src, f"~/{name}", "--checksum", "--json"]
    try:
        first = hostops(*args, *lab_args(inventory(1, name="one.yml")))
        assert first.code == 0, first
        all_statuses(first, 1, "ok")
        assert open(landed, "rb").read() == b"tilde\n"
        again = hostops(*args, *lab_args(inventory(2)))
        assert again.code == 0, again
        all_statuses(again, 2, "unchanged")
    finally:
        if os.path.exists(landed):
            os.remove(landed)


@pytest.mark.timeout(180)
def test_put_timeout_keeps_old_file_and_leaves_no_temporary(hostops, inventory, lab_args, tmp_path):
    src = tmp_path / "disk.img"
    with open(src, "wb") as fh:
        fh.truncate(2048 * MiB)  # sparse: cheap here, still 2 GiB to send per host
    remote = tmp_path / "remote"
    remote.mkdir()
    dest = write(remote / "disk.img", b"old image\n", 0o640)
    run = hostops("put", str(src), dest, *lab_args(inventory(3)), "-t", "1", "--json", timeout=150)
    assert run.code == 3, run
    for r in all_statuses(run, 3, "timeout").values():
        assert "timed out after 1s" in r["error"], run
    assert open(dest, "rb").read() == b"old image\n" and mode_of(dest) == 0o640
    assert os.listdir(remote) == ["disk.img"]


# ------------------------------------------------------------------ put --sudo
needs_sudo = pytest.mark.skipif(not sudo_works(), reason="'sudo -n true' fails here: no passwordless sudo")


@needs_sudo
@pytest.mark.timeout(180)
def test_put_sudo_owner_and_mode(hostops, inventory, lab_args, tmp_path):
    payload = os.urandom(1 * MiB)
    src = write(tmp_path / "root-only.bin", payload, 0o644)
    remote = tmp_path / "etc"
    remote.mkdir()
    dest = remote / "root-only.bin"
    before = hostops_tmpdirs()
    run = hostops("put", src, str(dest), "--sudo", "--owner", "root:root", "--mode", "0600",
                  *lab_args(inventory(3)), "--json")
    assert run.code == 0, run
    all_statuses(run, 3, "ok")
    st = os.stat(dest)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 0, 0o600)
    assert dest.read_bytes() == payload
    assert os.listdir(remote) == ["root-only.bin"]
    # the staging directories (mktemp -d /tmp/hostops.XXXXXXXX) are gone
    ours = [d for d in hostops_tmpdirs() - before if os.path.exists(os.path.join(d, "file"))
            and open(os.path.join(d, "file"), "rb").read() == payload]
    assert ours == []
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        return
    # an owner other than the login user shows chown really ran; the mode is kept without --mode
    run = hostops("put", src, str(dest), "--sudo", "--owner", "nobody", *lab_args(inventory(3)), "--json")
    assert run.code == 0, run
    st = os.stat(dest)
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (nobody.pw_uid, 0o600)
    assert temp_leftovers(remote) == []


@needs_sudo
@pytest.mark.timeout(120)
def test_put_sudo_onto_a_directory_fails_cleanly(hostops, inventory, lab_args, tmp_path):
    """With --sudo, 'mv -f tmp DEST' moved the temporary file *into* a directory DEST and
    reported ok; it must fail like the non-sudo path and leave nothing behind."""
    src = write(tmp_path / "app", b"binary\n")
    remote = tmp_path / "opt"
    (remote / "app" / "lib").mkdir(parents=True)
    write(remote / "app" / "lib" / "keep.txt", b"keep\n")
    before = snapshot(remote)
    run = hostops("put", src, str(remote) + "/", "--sudo", *lab_args(inventory(3)), "--json")
    assert run.code == 5, run
    for r in all_statuses(run, 3, "failed").values():
        assert "is a directory" in r["error"], run
    assert snapshot(remote) == before
    assert temp_leftovers(remote) == []


# ------------------------------------------------------------------ put: remote failures
@pytest.mark.timeout(120)
def test_put_missing_parent_directory_fails_naming_it(hostops, inventory, lab_args, tmp_path):
    src = write(tmp_path / "f.txt", b"x\n")
    missing = tmp_path / "no" / "such" / "dir"
    for dest in (str(missing / "f.txt"), str(missing) + "/"):
        run = hostops("put", src, dest, *lab_args(inventory(4)), "--json")
        assert run.code == 5, run
        for r in all_statuses(run, 4, "failed").values():
            assert str(missing) in r["error"] and "does not exist" in r["error"], run
            assert r["stdout"] == ""
        assert not (tmp_path / "no").exists()
        assert "4 hosts: 0 ok, 4 failed" in run.err


@pytest.mark.timeout(120)
def test_put_onto_existing_directory_fails_and_keeps_it(hostops, inventory, lab_args, tmp_path):
    src = write(tmp_path / "data", b"file content\n")
    remote = tmp_path / "remote"
    (remote / "data" / "sub").mkdir(parents=True)
    write(remote / "data" / "sub" / "keep", b"keep me\n")
    before = snapshot(remote)
    run = hostops("put", src, str(remote), *lab_args(inventory(4)), "--json")  # -> remote/data, a directory
    assert run.code == 5, run
    for r in all_statuses(run, 4, "failed").values():
        assert f"{remote}/data: is a directory" in r["error"], run
    assert snapshot(remote) == before
    assert temp_leftovers(remote) == []


@pytest.mark.timeout(180)
def test_put_full_remote_disk_fails_and_keeps_old_file(hostops, inventory, lab_args, tmp_path):
    """paramiko's pipelined writes dropped the server's error replies: a full disk used to be
    reported ok and a truncated file renamed over the old one."""
    mnt = tmp_path / "small-fs"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs in this sandbox: {mounted.stderr.strip()}")
    try:
        old = os.urandom(100 * 1024)
        dest = write(mnt / "app.bin", old, 0o644)
        src = write(tmp_path / "too-big.bin", os.urandom(3 * MiB))
        run = hostops("put", src, dest, *lab_args(inventory(3)), "--json")
        assert run.code == 5, run
        for r in all_statuses(run, 3, "failed").values():
            assert "full disk" in r["error"] or "No space" in r["error"], run
            assert r["stdout"] == ""
        assert open(dest, "rb").read() == old
        assert os.listdir(mnt) == ["app.bin"]
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)
        if os.path.ismount(str(mnt)):
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


# ================================================================== get
@pytest.mark.timeout(240)
def test_get_file_from_twenty_hosts(hostops, inventory, lab_args, tmp_path):
    payload = os.urandom(3 * MiB + 7)
    src = write(tmp_path / "app.log", payload)
    dest = tmp_path / "collected"
    run = hostops("get", src, str(dest), *lab_args(inventory(20)), "-f", "20", "--json", timeout=200)
    assert run.code == 0, run
    results = all_statuses(run, 20, "ok")
    assert sorted(os.listdir(dest)) == hosts(20)
    for h in hosts(20):
        got = dest / h / "app.log"
        assert os.listdir(dest / h) == ["app.log"]
        assert got.read_bytes() == payload, h
        assert mode_of(got) == 0o600
        assert f"-> {got} " in results[h]["stdout"]
    assert temp_leftovers(dest) == []


@pytest.mark.timeout(180)
def test_get_recursive_tree(hostops, inventory, lab_args, tmp_path):
    src = tmp_path / "etc-app"
    expected = make_tree(src)
    dest = tmp_path / "backup"
    run = hostops("get", "-r", str(src), str(dest), *lab_args(inventory(5)), "--json")
    assert run.code == 0, run
    results = all_statuses(run, 5, "ok")
    assert all("received 7 file(s)" in r["stdout"] for r in results.values()), run
    for h in hosts(5):
        assert os.listdir(dest / h) == ["etc-app"]
        assert snapshot(dest / h / "etc-app") == expected, h
        for f in regular_files(dest / h):
            assert mode_of(f) == 0o600, f
    assert temp_leftovers(dest) == []


@pytest.mark.timeout(120)
def test_get_recursive_does_not_follow_links_to_directories(hostops, inventory, lab_args, tmp_path):
    """A link back up the tree used to be followed until the path was too long (41 copies of
    one file, reported ok). Links are recorded as links (rsync -l), never followed, and said so
    (tests/test_hardening_get.py covers links out of the tree and --follow-links)."""
    src = tmp_path / "tree"
    (src / "sub").mkdir(parents=True)
    write(src / "sub" / "a.txt", b"a\n")
    os.symlink("..", src / "sub" / "up")
    os.symlink("sub/a.txt", src / "link.txt")
    dest = tmp_path / "out"
    run = hostops("get", "-r", str(src), str(dest), *lab_args(inventory(2)), "--json")
    assert run.code == 0, run
    for r in all_statuses(run, 2, "ok").values():
        assert "received 1 file(s)" in r["stdout"] and "2 symbolic link(s) recorded as links" in r["stdout"]
    for h in hosts(2):
        assert os.readlink(dest / h / "tree" / "sub" / "up") == ".."
        assert os.readlink(dest / h / "tree" / "link.txt") == "sub/a.txt"
        assert (dest / h / "tree" / "sub" / "a.txt").read_bytes() == b"a\n"


@pytest.mark.timeout(120)
def test_get_directory_without_recursive_fails(hostops, inventory, lab_args, tmp_path):
    src = tmp_path / "adir"
    make_tree(src)
    dest = tmp_path / "out"
    run = hostops("get", str(src), str(dest), *lab_args(inventory(3)), "--json")
    assert run.code == 5, run
    for h, r in all_statuses(run, 3, "failed").items():
        assert f"{src} is a directory on {h}; use -r" == r["error"], run
    assert os.listdir(dest) == []


@pytest.mark.timeout(120)
def test_get_missing_remote_file_fails_every_host(hostops, inventory, lab_args, tmp_path):
    dest = tmp_path / "out"
    missing = tmp_path / "not-there.log"
    run = hostops("get", str(missing), str(dest), *lab_args(inventory(5)), "--json")
    assert run.code == 5, run
    for r in all_statuses(run, 5, "failed").values():
        assert "no such file" in r["error"] and str(missing) in r["error"], run
    assert regular_files(dest) == []
    assert temp_leftovers(dest) == []


@pytest.mark.timeout(120)
def test_get_with_an_unreachable_host(hostops, inventory, lab_args, tmp_path):
    payload = b"from every reachable host\n"
    src = write(tmp_path / "motd", payload)
    closed = {"name": "closed", "ansible_host": "127.0.0.1", "ansible_port": free_port()}
    dest = tmp_path / "out"
    run = hostops("get", src, str(dest), *lab_args(inventory(3, extra_hosts=[closed])), "--json",
                  "--connect-timeout", "5")
    assert run.code == 4, run
    results = by_host(run)
    assert results["closed"]["status"] == "unreachable"
    assert all(results[h]["status"] == "ok" for h in hosts(3)), run
    assert sorted(os.listdir(dest)) == hosts(3)
    assert all((dest / h / "motd").read_bytes() == payload for h in hosts(3))


@pytest.mark.timeout(180)
def test_get_cut_by_timeout_leaves_no_partial_file(hostops, inventory, lab_args, tmp_path):
    big = tmp_path / "huge.img"
    with open(big, "wb") as fh:
        fh.truncate(1024 * MiB)  # sparse: cheap to make, still 1 GiB to send per host
    dest = tmp_path / "out"
    t0 = time.monotonic()
    run = hostops("get", str(big), str(dest), *lab_args(inventory(3)), "-t", "1", "--json", timeout=150)
    elapsed = time.monotonic() - t0
    assert run.code == 3, run
    for r in all_statuses(run, 3, "timeout").values():
        assert "timed out after 1s" in r["error"], run
    assert regular_files(dest) == [], "a partial download was left behind"
    print(f"3 x 1 GiB cut by -t 1 after {elapsed:.1f}s")  # bounded by the 150 s subprocess timeout
    assert "Traceback" not in run.err, run  # paramiko's read-ahead thread used to die loudly


@pytest.mark.timeout(180)
def test_get_of_a_file_truncated_mid_transfer_keeps_nothing(hostops, inventory, lab_args, tmp_path):
    """A remote file cut short while it is read must not be reported ok as a torn copy."""
    big = write(tmp_path / "rotating.log", os.urandom(200 * MiB))
    dest = tmp_path / "out"
    dest.mkdir()
    cut = threading.Event()

    def truncate_once_reading() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if temp_leftovers(dest):  # a .part file: some host is downloading
                time.sleep(0.2)
                os.truncate(big, 1000)
                cut.set()
                return
            time.sleep(0.01)

    t = threading.Thread(target=truncate_once_reading, daemon=True)
    t.start()
    run = hostops("get", big, str(dest), *lab_args(inventory(3)), "--json", timeout=150)
    t.join(130)
    assert cut.is_set(), run
    results = by_host(run)
    assert sorted(results) == hosts(3), run
    for h, r in results.items():
        got = dest / h / "rotating.log"
        if r["status"] == "ok":  # a host that started after the cut has the new, short file
            assert got.read_bytes() == open(big, "rb").read(), (h, run)
        else:
            assert r["status"] == "failed" and "shrank during the transfer" in r["error"], run
            assert not got.exists()
    assert any(r["status"] == "failed" for r in results.values()), run
    assert temp_leftovers(dest) == []
    assert "Traceback" not in run.err, run


# ================================================================== script
SCRIPT_ARGS = """#!/bin/sh
echo "argc=$#"
for a in "$@"; do echo "arg=[$a]"; done
exit "${EXIT_WITH:-0}"
"""


@pytest.mark.timeout(120)
def test_script_arguments_after_double_dash(hostops, inventory, lab_args, tmp_path):
    script = write(tmp_path / "show-args.sh", SCRIPT_ARGS.encode())
    run = hostops("script", script, *lab_args(inventory(4)), "--json", "--", "-v", "two words", "it's",
                  "$HOME", "")
    assert run.code == 0, run
    expected = "argc=5\narg=[-v]\narg=[two words]\narg=[it's]\narg=[$HOME]\narg=[]\n"
    for r in all_statuses(run, 4, "ok").values():
        assert r["stdout"] == expected and r["exit_code"] == 0, run


@pytest.mark.timeout(120)
def test_script_exit_code_is_failed_exit_5(hostops, inventory, lab_args, tmp_path):
    script = write(tmp_path / "fail3.sh", b"#!/bin/sh\necho \"before exit $1\"\necho oops >&2\nexit 3\n")
    run = hostops("script", script, *lab_args(inventory(4)), "--json", "--", "now")
    assert run.code == 5, run
    for r in all_statuses(run, 4, "failed").values():
        assert (r["exit_code"], r["stdout"], r["stderr"]) == (3, "before exit now\n", "oops\n"), run
    assert "4 hosts: 0 ok, 4 failed" in run.err


@pytest.mark.timeout(120)
def test_script_and_exec_stdin_file(hostops, inventory, lab_args, tmp_path):
    data = os.urandom(2 * MiB) + b"\nlast line without newline"
    stdin = write(tmp_path / "input.bin", data)
    digest = hashlib.sha256(data).hexdigest()
    script = write(tmp_path / "digest.sh", b"#!/bin/sh\necho \"got: $(sha256sum | cut -d' ' -f1) $1\"\n")
    run = hostops("script", script, "--stdin", stdin, *lab_args(inventory(5)), "--json", "--", "tag")
    assert run.code == 0, run
    for r in all_statuses(run, 5, "ok").values():
        assert r["stdout"] == f"got: {digest} tag\n", run
    run = hostops("exec", "sha256sum", "--stdin", stdin, *lab_args(inventory(20)), "-f", "20", "--json")
    assert run.code == 0, run
    for r in all_statuses(run, 20, "ok").values():
        assert r["stdout"] == f"{digest}  -\n", run
    # a command that never reads its stdin must not hang the host
    run = hostops("exec", "echo ignored", "--stdin", write(tmp_path / "big.bin", os.urandom(16 * MiB)),
                  *lab_args(inventory(3)), "--json", "-t", "60")
    assert run.code == 0, run
    assert all(r["stdout"] == "ignored\n" for r in all_statuses(run, 3, "ok").values())


TMPDIR_SCRIPT = """#!/bin/sh
d=$(dirname "$0")
echo "dir=$d mode=$(stat -c %a "$d")"
case "$1" in
  fail) exit 7 ;;
  sleep) sleep 30 ;;
esac
"""


@pytest.mark.timeout(180)
@pytest.mark.parametrize("how, status, code", [("ok", "ok", 0), ("fail", "failed", 5), ("sleep", "timeout", 3)])
def test_script_temporary_directory_always_removed(hostops, inventory, lab_args, tmp_path, how, status, code):
    name = f"probe-{secrets.token_hex(4)}.sh"
    script = write(tmp_path / name, TMPDIR_SCRIPT.encode())
    before = hostops_tmpdirs()
    extra = ["-t", "1"] if how == "sleep" else []
    run = hostops("script", script, *lab_args(inventory(4)), "--json", *extra, "--", how, timeout=120)
    assert run.code == code, run
    dirs = set()
    for r in all_statuses(run, 4, status).values():
        m = re.fullmatch(r"dir=(/tmp/hostops\.[A-Za-z0-9]{8}) mode=700\n", r["stdout"])
        assert m, run
        dirs.add(m.group(1))
    assert len(dirs) == 4  # one private directory per host
    leftovers = [d for d in dirs if os.path.exists(d)]
    assert leftovers == [], run
    created = hostops_tmpdirs() - before
    assert [d for d in created if os.path.exists(os.path.join(d, name))] == []


# ================================================================== Ctrl-C
def sparse(path, size: int) -> str:
    with open(path, "wb") as fh:
        fh.truncate(size)  # cheap to make, still every byte to send
    return str(path)


@pytest.mark.timeout(240)
def test_put_interrupted_stops_and_keeps_old_file(isolated_home, inventory, lab_args, tmp_path):
    """The first Ctrl-C stops transfers too (they used to run to the end), removes their
    temporary files and leaves the old file in place."""
    src = sparse(tmp_path / "disk.img", 2048 * MiB)
    remote = tmp_path / "remote"
    remote.mkdir()
    dest = write(remote / "disk.img", b"old image\n")
    proc = start_hostops(isolated_home, "put", src, dest, *lab_args(inventory(3)), "--json")
    code, out, err, took = ctrl_c_when(proc, lambda: any(TEMP_MARK in n for n in os.listdir(remote)))
    assert code == 130, (out, err)
    results = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert sorted(r["host"] for r in results) == hosts(3), (out, err)
    for r in results:
        assert r["status"] == "interrupted" and "interrupted during the transfer" in r["error"], (out, err)
    assert open(dest, "rb").read() == b"old image\n"  # stopped, not run to the end (ctrl_c_when bounds the wait)
    assert os.listdir(remote) == ["disk.img"]


@pytest.mark.timeout(240)
def test_get_interrupted_leaves_no_partial_file(isolated_home, inventory, lab_args, tmp_path):
    src = sparse(tmp_path / "disk.img", 2048 * MiB)
    dest = tmp_path / "out"
    proc = start_hostops(isolated_home, "get", src, str(dest), *lab_args(inventory(3)), "--json")
    # wait until all three downloads are under way (under load a host can still be logging in)
    code, out, err, took = ctrl_c_when(proc, lambda: len(temp_leftovers(dest)) >= 3 if dest.exists() else False)
    assert code == 130, (out, err)
    statuses = [json.loads(line)["status"] for line in out.splitlines() if line.strip()]
    assert statuses == ["interrupted"] * 3, (out, err)
    assert regular_files(dest) == [], "a partial download was left behind"


@pytest.mark.timeout(240)
def test_script_interrupted_removes_its_directory(isolated_home, inventory, lab_args, tmp_path):
    name = f"probe-{secrets.token_hex(4)}.sh"
    marks = tmp_path / "marks"
    marks.mkdir()
    script = write(tmp_path / name, f"""#!/bin/sh
echo "dir=$(dirname "$0")"
touch {marks}/started-$$
sleep 60
""".encode())
    proc = start_hostops(isolated_home, "script", script, *lab_args(inventory(3)), "--json")
    code, out, err, took = ctrl_c_when(proc, lambda: len(os.listdir(marks)) == 3)
    assert code == 130, (out, err)
    results = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert [r["status"] for r in results] == ["interrupted"] * 3, (out, err)
    dirs = {re.fullmatch(r"dir=(/tmp/hostops\.[A-Za-z0-9]{8})\n", r["stdout"]).group(1) for r in results}
    assert len(dirs) == 3
    assert [d for d in dirs if os.path.exists(d)] == [], (out, err)


# ================================================================== bad input: exit 2, nothing sent
@pytest.mark.timeout(60)
def test_put_missing_local_source(hostops, inventory, lab_args, tmp_path):
    dest = tmp_path / "dest.txt"
    run = hostops("put", str(tmp_path / "nope.txt"), str(dest), *lab_args(inventory(2)))
    assert_usage_error(run, "nope.txt", "no such file")
    assert not dest.exists()


@pytest.mark.timeout(60)
def test_put_directory_without_recursive(hostops, inventory, lab_args, tmp_path):
    src = tmp_path / "tree"
    make_tree(src)
    dest = tmp_path / "dest"
    run = hostops("put", str(src), str(dest), *lab_args(inventory(2)))
    assert_usage_error(run, "is a directory", "-r")
    assert not dest.exists()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["0999", "u+x", "rw-r--r--", "12", "0o644", ""])
def test_put_bad_mode(hostops, inventory, lab_args, tmp_path, mode):
    src = write(tmp_path / "f", b"x")
    dest = tmp_path / "dest"
    run = hostops("put", src, str(dest), "--mode", mode, *lab_args(inventory(2)))
    assert_usage_error(run, "--mode")
    assert not dest.exists()


@pytest.mark.timeout(60)
def test_put_bad_owner(hostops, inventory, lab_args, tmp_path):
    src = write(tmp_path / "f", b"x")
    dest = tmp_path / "dest"
    run = hostops("put", src, str(dest), "--owner", "root; touch /tmp/pwned", *lab_args(inventory(2)))
    assert_usage_error(run, "--owner")
    assert not dest.exists()


@pytest.mark.timeout(60)
def test_get_unwritable_local_destination(hostops, inventory, lab_args, tmp_path):
    src = write(tmp_path / "remote.txt", b"x")
    blocker = write(tmp_path / "a-file", b"not a directory")
    run = hostops("get", src, os.path.join(blocker, "sub"), *lab_args(inventory(2)))
    assert_usage_error(run, "local destination", "a-file")
    assert open(blocker, "rb").read() == b"not a directory"
    run = hostops("get", src, blocker, *lab_args(inventory(2)))  # an existing file is no directory either
    assert_usage_error(run, "a-file")


@pytest.mark.timeout(60)
def test_get_with_sudo_refused(hostops, inventory, lab_args, tmp_path):
    src = write(tmp_path / "remote.txt", b"x")
    dest = tmp_path / "out"
    run = hostops("get", src, str(dest), "--sudo", *lab_args(inventory(2)))
    assert_usage_error(run, "--sudo")
    assert not dest.exists()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("command", ["exec", "script"])
def test_missing_stdin_file(hostops, inventory, lab_args, tmp_path, command):
    marker = tmp_path / "marker"
    script = write(tmp_path / "touch.sh", f"#!/bin/sh\ntouch {marker}\n".encode())
    first = f"touch {marker}" if command == "exec" else script
    run = hostops(command, first, "--stdin", str(tmp_path / "no-input"), *lab_args(inventory(2)))
    assert_usage_error(run, "--stdin", "no-input")
    assert not marker.exists()


@pytest.mark.timeout(60)
def test_missing_script_file(hostops, inventory, lab_args, tmp_path):
    run = hostops("script", str(tmp_path / "nope.sh"), *lab_args(inventory(2)), "--", "arg")
    assert_usage_error(run, "nope.sh", "no such script")


@pytest.mark.timeout(120)
def test_checksum_unchanged_content_still_gets_mode(hostops, inventory, known_hosts, tmp_path):
    """--checksum skips the bytes, not the --mode: same content with another mode is fixed and
    reported ok; a second identical run is unchanged."""
    src = tmp_path / "same.conf"
    src.write_bytes(b"identical\n")
    dest_dir = tmp_path / "dest"
    dest_dir.mkdir()
    dest = dest_dir / "same.conf"
    dest.write_bytes(b"identical\n")
    os.chmod(dest, 0o644)
    args = ("put", str(src), str(dest), "-i", inventory(1), "--known-hosts", known_hosts, "--checksum", "--json")
    first = hostops(*args, "--mode", "0600")
    assert first.code == 0, first
    assert [r["status"] for r in first.json_lines()] == ["ok"]
    assert stat.S_IMODE(os.stat(dest).st_mode) == 0o600
    again = hostops(*args, "--mode", "0600")
    assert [r["status"] for r in again.json_lines()] == ["unchanged"]
