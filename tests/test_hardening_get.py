"""``hostops get`` against trees and servers that try to make it read, write or wait where it
should not (issue 11, "Files fetched: stay inside the tree, never hang on a special file").

Against the real lab sshd: links to files outside the tree, FIFOs, sockets, a link to
/dev/zero, a tree deeper than 64 levels, a pre-planted symbolic link at ``DEST/<host>`` or
inside it, a worker SIGKILLed and a connection cut mid-download. Against a hostile fake SFTP
server (tests/hostile_sftp.py): directory entries named ``../../evil``, ``a/b``, ``.``, ``..``,
and the empty name. Every run is bounded by a subprocess timeout: a hang fails the test.
"""
from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from typing import Dict, List

import pytest

from conftest import ROOT
from faultproxy import FaultProxy
from hostile_sftp import EVIL, FINE, HostileSFTP

MiB = 1024 * 1024
SECRET = b"TOP SECRET: the victim's file\n"


# ------------------------------------------------------------------ helpers
def lab_args(inv: str, known_hosts: str) -> List[str]:
    return ["-i", inv, "--known-hosts", known_hosts]


def by_host(run) -> Dict[str, dict]:
    return {r["host"]: r for r in run.json_lines()}


def write(path, data: bytes) -> str:
    with open(path, "wb") as fh:
        fh.write(data)
    return str(path)


def walk_lstat(root) -> Dict[str, str]:
    """{relative path: 'dir' | 'file:<content>' | 'link:<text>' | 'other'} without following any link."""
    out: Dict[str, str] = {}
    root = str(root)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = "link:" + os.readlink(full)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = "dir"
            elif stat.S_ISREG(st.st_mode):
                with open(full, "rb") as fh:
                    out[rel] = "file:" + fh.read().decode("utf-8", "replace")
            else:
                out[rel] = "other"
    return out


def contents_anywhere(root) -> bytes:
    """Every regular file's bytes under ``root`` (links not followed)."""
    data = b""
    for dirpath, _dirs, files in os.walk(str(root)):
        for name in files:
            full = os.path.join(dirpath, name)
            if stat.S_ISREG(os.lstat(full).st_mode):
                with open(full, "rb") as fh:
                    data += fh.read()
    return data


def partials(root) -> List[str]:
    """What hostops writes while downloading: ``*.part`` files and ``.hostops-*`` names."""
    found = []
    for dirpath, dirnames, filenames in os.walk(str(root)):
        found += [os.path.join(dirpath, n) for n in dirnames + filenames if ".hostops-" in n or n.endswith(".part")]
    return found


def part_files(root) -> List[str]:
    return [p for p in partials(root) if p.endswith(".part") and os.path.isfile(p)]


def release_fifo(path) -> None:
    """Open the FIFO's writing end (never blocking) so a server stuck opening it gets EOF."""
    try:
        fd = os.open(str(path), os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
    except OSError:
        pass


class Live:
    """The CLI in its own session, stdout read on a thread; always killed at the end."""

    def __init__(self, home, *args: str):
        env = dict(os.environ, HOME=str(home), PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        env.pop("SSH_AUTH_SOCK", None)
        env.pop("HOSTOPS_START_METHOD", None)
        self.proc = subprocess.Popen([sys.executable, "-m", "hostops", *args], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=str(home),
                                     start_new_session=True)
        self.out = bytearray()
        self.err = bytearray()
        self.threads = [threading.Thread(target=self._read, args=(s, b), daemon=True)
                        for s, b in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for t in self.threads:
            t.start()

    @staticmethod
    def _read(stream, buf: bytearray) -> None:
        while True:
            chunk = stream.read1(1 << 16)
            if not chunk:
                return
            buf += chunk

    def workers(self) -> List[int]:
        pids = []
        for p in os.listdir("/proc"):
            if not p.isdigit():
                continue
            try:
                with open(f"/proc/{p}/stat") as fh:
                    data = fh.read()
                with open(f"/proc/{p}/cmdline", "rb") as fh:
                    cmd = fh.read()
            except OSError:
                continue
            ppid = int(data[data.rfind(")") + 2:].split()[1])
            if ppid == self.proc.pid and b"resource_tracker" not in cmd and b"forkserver" not in cmd:
                pids.append(int(p))
        return pids

    def finish(self, timeout: float) -> int:
        try:
            code = self.proc.wait(timeout)
        finally:
            self.kill()
        for t in self.threads:
            t.join(10)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)  # the session this test started
            except OSError:
                pass
            self.proc.wait(10)

    def results(self) -> Dict[str, dict]:
        return {r["host"]: r for r in (json.loads(line) for line in self.out.splitlines() if line.strip())}

    def __repr__(self) -> str:
        return f"<hostops stdout={bytes(self.out[-2000:])!r} stderr={bytes(self.err[-2000:])!r}>"


def wait_until(predicate, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


# ================================================================== links
@pytest.mark.timeout(150)
def test_get_recursive_records_links_and_never_copies_what_they_point_to(hostops, inventory, known_hosts, tmp_path):
    victim = write(tmp_path / "shadow", SECRET)
    src = tmp_path / "tree"
    (src / "sub").mkdir(parents=True)
    write(src / "sub" / "a.txt", b"a\n")
    os.symlink(victim, src / "shadow-link")        # absolute, outside the tree
    os.symlink("../../shadow", src / "sub" / "rel")  # relative, outside the tree
    os.symlink("sub/a.txt", src / "inside")         # inside the tree: still recorded as a link
    os.symlink("..", src / "sub" / "up")            # a directory link back up
    dest = tmp_path / "out"
    run = hostops("get", "-r", str(src), str(dest), *lab_args(inventory(2), known_hosts), "--json", timeout=120)
    assert run.code == 0, run
    for h, r in by_host(run).items():
        assert r["status"] == "ok", run
        assert "received 1 file(s)" in r["stdout"] and "4 symbolic link(s) recorded as links" in r["stdout"], r
    for h in ("h001", "h002"):
        assert walk_lstat(dest / h) == {
            "tree": "dir", "tree/sub": "dir", "tree/sub/a.txt": "file:a\n",
            "tree/shadow-link": f"link:{victim}", "tree/sub/rel": "link:../../shadow",
            "tree/inside": "link:sub/a.txt", "tree/sub/up": "link:..",
        }
    assert SECRET not in contents_anywhere(dest)
    assert partials(dest) == []


@pytest.mark.timeout(150)
def test_a_second_get_replaces_recorded_links_and_never_writes_through_them(hostops, inventory, known_hosts,
                                                                           tmp_path):
    """A link recorded by one run sits where the next run finds a directory or a file."""
    victim_dir = tmp_path / "victim-dir"
    victim_dir.mkdir()
    victim = write(tmp_path / "victim-file", SECRET)
    src = tmp_path / "tree"
    src.mkdir()
    os.symlink(str(victim_dir), src / "conf.d")
    os.symlink(victim, src / "app.conf")
    dest = tmp_path / "out"
    args = lab_args(inventory(1), known_hosts)
    first = hostops("get", "-r", str(src), str(dest), *args, "--json", timeout=120)
    assert first.code == 0, first
    assert os.path.islink(dest / "h001" / "tree" / "conf.d")
    # the host's tree changes: the links become a real directory and a real file
    os.unlink(src / "conf.d")
    os.unlink(src / "app.conf")
    (src / "conf.d").mkdir()
    write(src / "conf.d" / "x.conf", b"x\n")
    write(src / "app.conf", b"new\n")
    second = hostops("get", "-r", str(src), str(dest), *args, "--json", timeout=120)
    assert second.code == 0, second
    assert os.listdir(victim_dir) == [], "written through a link recorded by the first run"
    assert open(victim, "rb").read() == SECRET
    assert walk_lstat(dest / "h001" / "tree") == {"conf.d": "dir", "conf.d/x.conf": "file:x\n",
                                                  "app.conf": "file:new\n"}


@pytest.mark.timeout(150)
def test_follow_links_follows_only_links_that_stay_inside_the_tree(hostops, inventory, known_hosts, tmp_path):
    victim = write(tmp_path / "shadow", SECRET)
    outside_dir = tmp_path / "elsewhere"
    outside_dir.mkdir()
    write(outside_dir / "private.txt", SECRET)
    src = tmp_path / "tree"
    (src / "sub").mkdir(parents=True)
    write(src / "sub" / "a.txt", b"a\n")
    os.symlink("sub/a.txt", src / "file-link")       # inside: copied as the file
    os.symlink("sub", src / "dir-link")              # inside: copied as the directory
    os.symlink(victim, src / "out-file")             # outside: refused with a note
    os.symlink(str(outside_dir), src / "out-dir")    # outside: refused with a note
    os.symlink("..", src / "sub" / "loop")           # inside, but a loop: refused with a note
    os.symlink("nowhere", src / "dangling")
    dest = tmp_path / "out"
    run = hostops("get", "-r", "--follow-links", str(src), str(dest), *lab_args(inventory(1), known_hosts),
                  "--json", timeout=120)
    assert run.code == 0, run
    r = by_host(run)["h001"]
    assert r["status"] == "ok", r
    assert f"skipped {src}/out-file: a symbolic link to {victim}, outside the tree; not followed" in r["stdout"]
    assert f"skipped {src}/out-dir: a symbolic link to {outside_dir}, outside the tree" in r["stdout"]
    assert f"skipped {src}/sub/loop: a symbolic link to {src}, a directory it is inside (a loop)" in r["stdout"]
    assert f"skipped {src}/dangling: a symbolic link that does not resolve" in r["stdout"]
    assert walk_lstat(dest / "h001" / "tree") == {
        "sub": "dir", "sub/a.txt": "file:a\n", "file-link": "file:a\n",
        "dir-link": "dir", "dir-link/a.txt": "file:a\n",
    }
    assert SECRET not in contents_anywhere(dest)


# ================================================================== special files
@pytest.mark.timeout(150)
@pytest.mark.parametrize("follow", [False, True], ids=["default", "follow-links"])
def test_fifos_sockets_and_devices_in_a_tree_are_skipped_not_opened(hostops, inventory, known_hosts, tmp_path,
                                                                    follow):
    src = tmp_path / "tree"
    src.mkdir()
    write(src / "real.txt", b"real\n")
    os.mkfifo(src / "fifo")
    os.mknod(src / "sock", stat.S_IFSOCK | 0o600)
    os.symlink("/dev/zero", src / "zero")
    os.symlink("fifo", src / "fifo-link")
    dest = tmp_path / "out"
    extra = ["--follow-links"] if follow else []
    try:
        run = hostops("get", "-r", *extra, str(src), str(dest), *lab_args(inventory(1), known_hosts), "--json",
                      timeout=90)
    finally:
        release_fifo(src / "fifo")
    assert run.code == 0, run
    r = by_host(run)["h001"]
    assert r["status"] == "ok", r
    assert f"skipped {src}/fifo: not a regular file (a FIFO)" in r["stdout"], r
    assert f"skipped {src}/sock: not a regular file (a socket)" in r["stdout"], r
    got = walk_lstat(dest / "h001" / "tree")
    if follow:
        assert f"skipped {src}/zero: a symbolic link to /dev/zero, outside the tree" in r["stdout"], r
        assert f"skipped {src}/fifo-link: not a regular file (a FIFO)" in r["stdout"], r
        assert got == {"real.txt": "file:real\n"}
    else:
        assert got == {"real.txt": "file:real\n", "zero": "link:/dev/zero", "fifo-link": "link:fifo"}


@pytest.mark.timeout(150)
@pytest.mark.parametrize("what", ["dev-zero", "fifo", "link-to-dev-zero"])
def test_get_of_a_special_file_is_refused_without_hanging(hostops, inventory, known_hosts, tmp_path, what):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    os.symlink("/dev/zero", tmp_path / "zero-link")
    src = {"dev-zero": "/dev/zero", "fifo": str(fifo), "link-to-dev-zero": str(tmp_path / "zero-link")}[what]
    kind = "a FIFO" if what == "fifo" else "a character device"
    dest = tmp_path / "out"
    try:
        run = hostops("get", src, str(dest), *lab_args(inventory(2), known_hosts), "--json", timeout=90)
    finally:
        release_fifo(fifo)
    assert run.code == 5, run
    for h, r in by_host(run).items():
        assert r["status"] == "failed", r
        assert r["error"] == f"{src} on {h} is not a regular file ({kind}); not copied", r
    assert contents_anywhere(dest) == b"" and partials(dest) == []


# ================================================================== depth
@pytest.mark.timeout(150)
def test_recursion_stops_at_64_levels(hostops, inventory, known_hosts, tmp_path):
    src = tmp_path / "deep"
    path = src
    for level in range(70):
        path = path / "d"
        path.mkdir(parents=True)
        write(path / "f", f"{level}\n".encode())
    dest = tmp_path / "out"
    run = hostops("get", "-r", str(src), str(dest), *lab_args(inventory(1), known_hosts), "--json", timeout=120)
    assert run.code == 5, run
    r = by_host(run)["h001"]
    assert r["status"] == "failed" and "deeper than 64 directory levels; not copied" in r["error"], r
    assert "received 63 file(s)" in r["stdout"], r
    depth = max(os.path.relpath(d, dest / "h001" / "deep").count("/") + 1
                for d, _dirs, _files in os.walk(dest / "h001" / "deep"))
    assert depth == 63


# ================================================================== a hostile SFTP server
@pytest.mark.timeout(120)
def test_suspect_names_from_a_hostile_server_are_refused(hostops, lab, tmp_path):
    dest = tmp_path / "out"
    with HostileSFTP(str(tmp_path / "hostile")) as server:
        kh = tmp_path / "known_hosts"
        kh.write_text(server.known_hosts_line() + "\n")
        inv = lab.write_inventory(str(tmp_path / "inv.yml"), 0, extra_hosts=[
            {"name": "evil", "ansible_host": "127.0.0.1", "ansible_port": server.port}])
        run = hostops("get", "-r", "/tree", str(dest), "-i", inv, "--known-hosts", str(kh), "--json", timeout=90)
        opened = list(server.opened)
        assert not server.errors, server.errors
    assert opened == ["/tree/ok.txt"], opened  # never asked for a suspect name
    assert EVIL not in contents_anywhere(tmp_path)
    assert run.code == 5, run
    r = by_host(run)["evil"]
    assert r["status"] == "failed", r
    for name in ("../../evil", "a/b", "/abs-evil", "../updir", ""):
        assert f"suspect path {name!r}" in r["error"] or "more)" in r["error"], r
    assert "the server sent a suspect path '../../evil' in /tree; refused" in r["error"], r
    assert "received 1 file(s)" in r["stdout"], r
    assert opened == ["/tree/ok.txt"], opened  # never asked for a suspect name
    assert walk_lstat(dest) == {"evil": "dir", "evil/tree": "dir", "evil/tree/ok.txt": "file:" + FINE.decode()}
    assert EVIL not in contents_anywhere(tmp_path)


@pytest.mark.timeout(120)
def test_an_open_that_never_answers_ends_at_the_timeout(hostops, lab, tmp_path):
    """sftp-server blocks opening a FIFO swapped in after the listing: get must not wait on it
    past --timeout (it used to wait until the parent gave up on a stuck worker)."""
    dest = tmp_path / "out"
    with HostileSFTP(str(tmp_path / "hostile")) as server:
        kh = tmp_path / "known_hosts"
        kh.write_text(server.known_hosts_line() + "\n")
        inv = lab.write_inventory(str(tmp_path / "inv.yml"), 0, extra_hosts=[
            {"name": "slow", "ansible_host": "127.0.0.1", "ansible_port": server.port}])
        run = hostops("get", "/tree/slow.txt", str(dest), "-i", inv, "--known-hosts", str(kh), "-t", "3", "--json",
                      timeout=90)
    assert run.code == 3, run
    r = by_host(run)["slow"]
    assert r["status"] == "timeout" and r["error"] == "timed out after 3s (--timeout)", r
    assert partials(dest) == [] and contents_anywhere(dest) == b""


# ================================================================== local names
def test_local_names_are_one_to_one_and_reversible():
    from hostops.localnames import host_from_local_name, local_name

    names = ["a/b", "a_b", "a b", "a%b", "a%2Fb", ".ab", "_.ab", "%2Eab", ".", "..", "", "%", "a:b", "[::1]",
             "user@h", "h\x00", "h\n", "héte", "web01", "a\udcff"]
    encoded = [local_name(n) for n in names]
    assert len(set(encoded)) == len(names), dict(zip(names, encoded))
    for name, enc in zip(names, encoded):
        assert "/" not in enc and enc not in ("", ".", "..") and not enc.startswith("."), (name, enc)
        assert host_from_local_name(enc) == name
    assert local_name("web01") == "web01" and local_name("[::1]:22") == "[::1]:22"
    assert local_name("a%b") == "a%25b" and local_name(".ab") == "%2Eab" and local_name("a/b") == "a%2Fb"


HOST_NAMES = ["a_b", "a%b", ".ab", "_.ab"]  # pairs that used to share one directory / -o file


@pytest.mark.timeout(150)
def test_hosts_whose_names_differ_in_one_character_get_their_own_directories(hostops, lab, known_hosts, tmp_path):
    hosts = [{"name": n, "ansible_host": "127.0.0.1", "ansible_port": lab.port} for n in HOST_NAMES]
    inv = lab.write_inventory(str(tmp_path / "inv.yml"), 0, extra_hosts=hosts)
    src = write(tmp_path / "motd", b"hello\n")
    dest = tmp_path / "got"
    run = hostops("get", src, str(dest), "-i", inv, "--known-hosts", known_hosts, "--json", timeout=120)
    assert run.code == 0, run
    assert len(os.listdir(dest)) == len(HOST_NAMES), os.listdir(dest)  # one directory per host
    from hostops.localnames import host_from_local_name, local_name

    assert sorted(os.listdir(dest)) == sorted(local_name(n) for n in HOST_NAMES)
    assert sorted(host_from_local_name(n) for n in os.listdir(dest)) == sorted(HOST_NAMES)
    for n in HOST_NAMES:
        assert (dest / local_name(n) / "motd").read_bytes() == b"hello\n"
    outdir = tmp_path / "outdir"
    run = hostops("exec", "echo hi", "-i", inv, "--known-hosts", known_hosts, "-o", str(outdir), "-q", timeout=120)
    assert run.code == 0, run
    assert len(os.listdir(outdir)) == 2 * len(HOST_NAMES), os.listdir(outdir)
    assert sorted(os.listdir(outdir)) == sorted(local_name(n) + s for n in HOST_NAMES for s in (".out", ".err"))


# ================================================================== DEST/<host> as a link
@pytest.mark.timeout(150)
def test_a_symlink_at_dest_host_is_refused_not_followed(hostops, inventory, known_hosts, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    dest = tmp_path / "out"
    dest.mkdir()
    os.symlink(str(elsewhere), dest / "h001")
    src = write(tmp_path / "app.log", b"log\n")
    run = hostops("get", src, str(dest), *lab_args(inventory(2), known_hosts), "--json", timeout=120)
    assert run.code == 5, run
    results = by_host(run)
    assert results["h001"]["status"] == "failed", run
    assert results["h001"]["error"] == (f"local {dest}/h001 is a symbolic link; not followed (remove it or "
                                        "choose another destination)"), run
    assert results["h002"]["status"] == "ok", run
    assert os.listdir(elsewhere) == []
    assert (dest / "h002" / "app.log").read_bytes() == b"log\n"


@pytest.mark.timeout(150)
def test_a_symlink_planted_inside_dest_host_is_not_followed(hostops, inventory, known_hosts, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    src = tmp_path / "tree"
    (src / "sub").mkdir(parents=True)
    write(src / "sub" / "conf", b"conf\n")
    dest = tmp_path / "out"
    (dest / "h001" / "tree").mkdir(parents=True)
    os.symlink(str(elsewhere), dest / "h001" / "tree" / "sub")
    run = hostops("get", "-r", str(src), str(dest), *lab_args(inventory(1), known_hosts), "--json", timeout=120)
    assert run.code == 0, run
    assert os.listdir(elsewhere) == [], "written through a planted link"
    assert walk_lstat(dest / "h001" / "tree") == {"sub": "dir", "sub/conf": "file:conf\n"}


# ================================================================== cut short
@pytest.mark.timeout(240)
def test_a_worker_killed_mid_get_leaves_no_partial_file(isolated_home, inventory, known_hosts, tmp_path):
    big = tmp_path / "disk.img"
    with open(big, "wb") as fh:
        fh.truncate(8192 * MiB)  # sparse: cheap to make, long to send
    dest = tmp_path / "out"
    run = Live(isolated_home, "get", str(big), str(dest), *lab_args(inventory(2), known_hosts), "--json",
               "--processes", "2")
    try:
        assert wait_until(lambda: len(part_files(dest)) >= 2, 120), run
        workers = run.workers()
        assert len(workers) == 2, workers
        os.kill(workers[0], signal.SIGKILL)
        assert wait_until(lambda: b"worker crashed" in run.out, 60), run
        os.killpg(run.proc.pid, signal.SIGINT)  # stop the other download too
        run.finish(90)
    finally:
        run.kill()
    assert partials(dest) == [], "a partial download was left behind"
    statuses = sorted(r["status"] for r in run.results().values())
    assert statuses == ["failed", "interrupted"], run
    assert contents_anywhere(dest) == b""


@pytest.mark.timeout(240)
def test_a_connection_dropped_mid_get_leaves_no_partial_file(isolated_home, lab, known_hosts, tmp_path):
    big = tmp_path / "disk.img"
    with open(big, "wb") as fh:
        fh.truncate(8192 * MiB)
    dest = tmp_path / "out"
    with FaultProxy("cut", upstream=("127.0.0.5", lab.port)) as proxy:
        keytype, b64 = lab.host_pub.split()[:2]
        with open(known_hosts, "a") as fh:
            fh.write(f"[127.0.0.1]:{proxy.port} {keytype} {b64}\n")
        inv = lab.write_inventory(str(tmp_path / "inv.yml"), 0, extra_hosts=[
            {"name": "cut", "ansible_host": "127.0.0.1", "ansible_port": proxy.port}])
        run = Live(isolated_home, "get", str(big), str(dest), "-i", inv, "--known-hosts", known_hosts, "--json")
        try:
            assert wait_until(lambda: len(part_files(dest)) >= 1, 120), run
            proxy.cut()
            code = run.finish(90)
        finally:
            run.kill()
    assert code == 4, run
    r = run.results()["cut"]
    assert r["status"] == "unreachable", r
    assert f"the connection dropped while copying {big}" in r["error"], r
    assert b"Traceback" not in run.err, run  # paramiko's read-ahead thread used to die loudly
    assert partials(dest) == [], "a partial download was left behind"
