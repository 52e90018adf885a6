"""issue 11, put side: files on the target never follow what someone else planted.

The lab sshd is on this machine, so the target's file system is the local one: the
"local user on the target" is a thread of this test (tests/attackers.py) that swaps
hostops's temporary names for links to a victim file, or a link planted beforehand.
Every test checks the victim (content, mode, owner) is untouched and the destination
is never left a link.
"""
from __future__ import annotations

import os
import pwd
import stat
import subprocess
import time
from typing import Dict, List, Tuple

import pytest

from attackers import TEMP, TempSwapper, swap_for_link
from faultproxy import FaultProxy

MiB = 1024 * 1024
NOBODY = pwd.getpwnam("nobody")


# ------------------------------------------------------------------ helpers
def write(path, data: bytes, mode: int = 0o644) -> str:
    with open(path, "wb") as fh:
        fh.write(data)
    os.chmod(path, mode)
    return str(path)


def fingerprint(path) -> Tuple[bytes, int, int, int]:
    """Content, mode, owner, group: what an attacker would like hostops to change."""
    st = os.lstat(path)
    with open(path, "rb") as fh:
        return fh.read(), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid


def tree_fingerprint(root) -> Dict[str, Tuple]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(str(root)):
        for name in dirnames:
            st = os.lstat(os.path.join(dirpath, name))
            out[os.path.relpath(os.path.join(dirpath, name), str(root))] = (stat.S_IMODE(st.st_mode), st.st_uid)
        for name in filenames:
            out[os.path.relpath(os.path.join(dirpath, name), str(root))] = fingerprint(os.path.join(dirpath, name))
    return out


@pytest.fixture
def victim(tmp_path):
    """A root-only directory holding a root-only secret, outside every destination."""
    vdir = tmp_path / "root-secret"
    vdir.mkdir(mode=0o700)
    os.chmod(vdir, 0o700)
    vfile = write(vdir / "shadow", b"root:secret-hash:19000::::::\n", 0o600)
    return str(vdir), vfile


def sudo_works() -> bool:
    try:
        return subprocess.run(["sudo", "-n", "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


SUDO = [pytest.param(False, id="sftp"),
        pytest.param(True, id="sudo", marks=pytest.mark.skipif(not sudo_works(), reason="no passwordless sudo"))]


def lab_args(inventory_path: str, known_hosts: str) -> List[str]:
    return ["-i", inventory_path, "--known-hosts", known_hosts]


def run_in_process(lab, known_hosts, action):
    """One host, in this process, so a test can patch the exact step where the swap happens."""
    from hostops.settings import Options, Target
    from hostops.workerctx import WorkerContext
    from hostops.worker import Job, execute

    ctx = WorkerContext(Options(known_hosts=(known_hosts,), connect_timeout=20))
    target = Target("h001", "127.0.0.1", lab.port, lab.user, (lab.user_key,))
    return execute(Job(0, target, action), ctx)


def the_temp(directory: str) -> str:
    names = [n for n in os.listdir(directory) if TEMP.fullmatch(n)]
    assert len(names) == 1, names
    return os.path.join(directory, names[0])


# ================================================================== a real racing attacker
@pytest.mark.timeout(600)
@pytest.mark.parametrize("sudo", SUDO)
def test_a_local_user_swapping_the_temporary_name_gets_nothing(hostops, inventory, known_hosts, tmp_path,
                                                               victim, sudo):
    """Another user who can write the destination directory swaps hostops's temporary name
    for a link to a root file as soon as it appears. Whatever the timing: no content, chmod or
    chown reaches the victim and the destination is never a link."""
    vdir, vfile = victim
    before = tree_fingerprint(vdir)
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)  # a directory other users can write (no sticky bit)
    dest = shared / "app.conf"
    write(dest, b"old\n")
    src = write(tmp_path / "app.conf", os.urandom(2 * MiB))
    args = ["put", src, str(dest), "--mode", "0666", "--owner", "nobody", "--json",
            *lab_args(inventory(1), known_hosts)] + (["--sudo"] if sudo else [])
    swapped = 0
    for attempt in range(3):  # bounded: a few races, each one swap at most
        with TempSwapper(str(shared), vfile, vdir) as attacker:
            run = hostops(*args, timeout=240)
        swapped += len(attacker.swaps)
        record = run.json_lines()[0]
        assert record["status"] in ("ok", "failed"), run
        if record["status"] == "failed":
            assert "refused" in record["error"] and "replaced by someone else" in record["error"], run
        assert tree_fingerprint(vdir) == before, (attempt, run)
        assert not os.path.islink(dest), (attempt, run)
    assert swapped >= 1, "the attacker never saw a temporary name: the race did not happen"


# ================================================================== the swap at the worst moment
@pytest.mark.timeout(120)
def test_swap_right_after_the_write_is_refused(lab, known_hosts, tmp_path, victim, mocker):
    """The temporary name is swapped for a link after the data is written and before mode and
    owner are set: they went through the name onto the victim (chmod 0666, chown nobody)."""
    import hostops.put as put

    vdir, vfile = victim
    before = fingerprint(vfile)
    shared = tmp_path / "shared"
    shared.mkdir()
    dest = write(shared / "app.conf", b"old\n", 0o644)
    src = write(tmp_path / "app.conf", b"new\n" * 1000)
    real_copy = put._copy_local_to

    def copy_then_swap(fh, local, deadline):
        real_copy(fh, local, deadline)
        assert swap_for_link(the_temp(str(shared)), vfile)

    mocker.patch.object(put, "_copy_local_to", copy_then_swap)
    action = put.prepare_put(src, dest, False, "0666", "nobody", False, False, None)
    result = run_in_process(lab, known_hosts, action)
    assert fingerprint(vfile) == before
    assert result.status == "failed", result
    assert "refused" in result.error and "replaced by someone else" in result.error, result
    assert fingerprint(dest) == (b"old\n", 0o644, 0, 0)  # the old file stays
    assert os.listdir(shared) == ["app.conf"]  # the planted link (our temporary name) is removed


@pytest.mark.timeout(120)
def test_swap_between_the_check_and_the_rename_never_leaves_a_link(lab, known_hosts, tmp_path, victim, mocker):
    """Swapped after the last check, just before rename(2): what gets renamed into place is the
    link. hostops sees it, removes the link and refuses the host; the victim is untouched."""
    from hostops.sftpfs import SFTPFileSystem

    vdir, vfile = victim
    before = fingerprint(vfile)
    shared = tmp_path / "shared"
    shared.mkdir()
    dest = write(shared / "app.conf", b"old\n", 0o644)
    src = write(tmp_path / "app.conf", b"new\n" * 1000)
    real_replace = SFTPFileSystem.replace

    def swap_then_replace(self, tmp, target):
        assert swap_for_link(the_temp(str(shared)), vfile)
        return real_replace(self, tmp, target)

    mocker.patch.object(SFTPFileSystem, "replace", swap_then_replace)
    from hostops.put import prepare_put

    result = run_in_process(lab, known_hosts, prepare_put(src, dest, False, "0666", "nobody", False, False, None))
    assert fingerprint(vfile) == before
    assert not os.path.islink(dest)
    assert result.status == "failed", result
    assert "refused" in result.error, result


@pytest.mark.timeout(120)
@pytest.mark.skipif(not sudo_works(), reason="no passwordless sudo")
def test_sudo_install_swap_at_the_worst_moment_is_refused(lab, known_hosts, tmp_path, victim, mocker):
    """Under --sudo the install is a root shell script. The other user's swap is injected into
    it right after the temporary name is created (a file in the old script, a directory now):
    root wrote the new content into the victim through the link, and chmod'ed/chown'ed it."""
    import hostops.put as put

    vdir, vfile = victim
    before = tree_fingerprint(vdir)
    shared = tmp_path / "shared"
    shared.mkdir()
    dest = write(shared / "app.conf", b"old\n", 0o644)
    src = write(tmp_path / "app.conf", b"new\n" * 1000)
    attack = (f'if [ -d "$t" ]; then mv "$t" "$t.stolen"; ln -s {vdir} "$t"; '
              f'else rm -f "$t"; ln -s {vfile} "$t"; fi; ')
    real_sudo_ok = put._sudo_ok
    injected = []

    def with_attacker(conn, script, what):
        marker = 'hostops-XXXXXXXX"); '
        if marker in script:
            script = script.replace(marker, marker + attack, 1)
            injected.append(script)
        return real_sudo_ok(conn, script, what)

    mocker.patch.object(put, "_sudo_ok", with_attacker)
    action = put.prepare_put(src, dest, False, "0666", "nobody", True, False, None)
    result = run_in_process(lab, known_hosts, action)
    assert injected, "the install script changed: the attack was not injected"
    assert tree_fingerprint(vdir) == before
    assert result.status == "failed", result
    assert "refused" in result.error and "replaced by someone else" in result.error, result
    assert fingerprint(dest) == (b"old\n", 0o644, 0, 0)
    assert not os.path.islink(dest)


# ================================================================== links planted in a put -r tree
@pytest.mark.timeout(180)
@pytest.mark.parametrize("sudo", SUDO)
def test_put_recursive_replaces_a_planted_directory_link(hostops, inventory, known_hosts, tmp_path, victim, sudo):
    """``conf.d -> /root/secret`` inside the destination tree is replaced by a real directory
    (rsync -r without --keep-dirlinks); nothing is written into the victim directory."""
    vdir, vfile = victim
    before = tree_fingerprint(vdir)
    src = tmp_path / "app"
    (src / "conf.d").mkdir(parents=True)
    write(src / "conf.d" / "app.conf", b"listen 80\n")
    write(src / "top.txt", b"top\n")
    dest = tmp_path / "dest"
    (dest / "app").mkdir(parents=True)
    os.symlink(vdir, dest / "app" / "conf.d")
    run = hostops("put", "-r", str(src), str(dest) + "/", "--json", *lab_args(inventory(1), known_hosts),
                  *(["--sudo"] if sudo else []))
    assert run.code == 0, run
    assert tree_fingerprint(vdir) == before
    conf_d = dest / "app" / "conf.d"
    assert conf_d.is_dir() and not conf_d.is_symlink()
    assert (conf_d / "app.conf").read_bytes() == b"listen 80\n"
    assert (dest / "app" / "top.txt").read_bytes() == b"top\n"


@pytest.mark.timeout(180)
@pytest.mark.parametrize("sudo", SUDO)
def test_put_replaces_a_link_at_the_file_name_never_writes_through_it(hostops, inventory, known_hosts,
                                                                      tmp_path, victim, sudo):
    """A link at the destination file name is replaced by the regular file (rename replaces the
    link itself): a link to a file, and a link to a directory. The mode is the source's, not
    the link target's."""
    vdir, vfile = victim
    before = tree_fingerprint(vdir)
    src = tmp_path / "app"
    (src / "conf.d").mkdir(parents=True)
    write(src / "conf.d" / "app.conf", b"listen 80\n")
    write(src / "top.txt", b"top\n")
    dest = tmp_path / "dest"
    (dest / "app" / "conf.d").mkdir(parents=True)
    os.symlink(vfile, dest / "app" / "top.txt")
    os.symlink(vdir, dest / "app" / "conf.d" / "app.conf")
    args = [*lab_args(inventory(1), known_hosts), "--json", *(["--sudo"] if sudo else [])]
    run = hostops("put", "-r", str(src), str(dest) + "/", *args)
    assert run.code == 0, run
    single = dest / "single.conf"
    os.symlink(vfile, single)
    run2 = hostops("put", str(src / "top.txt"), str(single), *args)
    assert run2.code == 0, run2
    assert tree_fingerprint(vdir) == before
    for path, data in ((dest / "app" / "top.txt", b"top\n"), (dest / "app" / "conf.d" / "app.conf", b"listen 80\n"),
                       (single, b"top\n")):
        assert not path.is_symlink(), path
        assert fingerprint(path) == (data, 0o644, 0, 0), path


# ================================================================== failures mid-transfer
@pytest.fixture
def small_fs(tmp_path):
    """A 256 KiB tmpfs: a full disk. Skipped where mounting is not permitted."""
    mnt = tmp_path / "small-fs"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)],
                             capture_output=True, text=True, timeout=30)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True, timeout=30)
        if os.path.ismount(str(mnt)):
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("sudo", SUDO)
def test_put_on_a_full_disk_leaves_no_temporary_file(hostops, inventory, known_hosts, tmp_path, small_fs, sudo):
    old = write(small_fs / "app.bin", b"old\n")
    src = write(tmp_path / "app.bin", os.urandom(MiB))
    run = hostops("put", src, old, "--json", *lab_args(inventory(2), known_hosts),
                  *(["--sudo"] if sudo else []))
    assert run.code == 5, run
    for r in run.json_lines():
        assert r["status"] == "failed" and ("No space" in r["error"] or "full disk" in r["error"]), run
    assert os.listdir(small_fs) == ["app.bin"], run
    assert open(old, "rb").read() == b"old\n"


def trust(known_hosts: str, lab, port: int) -> str:
    keytype, b64 = lab.host_pub.split()[:2]
    with open(known_hosts, "a") as fh:
        fh.write(f"[127.0.0.1]:{port} {keytype} {b64}\n")
    return known_hosts


@pytest.mark.timeout(300)
def test_put_cut_by_a_dropped_connection_leftover_is_removed_by_a_later_put(hostops, lab, inventory, known_hosts,
                                                                            tmp_path):
    """When the connection drops mid-transfer nobody is left on the host to remove the temporary
    file (the SFTP server died with the connection): it stays, hidden, named
    ``.NAME.hostops-XXXXXXXX``. The next put into that directory removes such files once they have
    not been written to for an hour; a fresher one (a transfer maybe still running) is kept."""
    remote = tmp_path / "remote"
    remote.mkdir()
    dest = write(remote / "disk.img", b"old image\n")
    src = str(tmp_path / "disk.img")
    with open(src, "wb") as fh:
        fh.truncate(512 * MiB)  # long enough to be cut in the middle
    with FaultProxy("cut", upstream=("127.0.0.1", lab.port)) as proxy:
        trust(known_hosts, lab, proxy.port)
        inv = inventory(0, extra_hosts=[{"name": "cut1", "ansible_host": "127.0.0.1", "ansible_port": proxy.port}])
        import threading

        def cut_when_writing():
            for _ in range(2000):  # bounded: 2000 x 0.05 s
                if any(TEMP.fullmatch(n) and os.path.getsize(remote / n) > MiB
                       for n in os.listdir(remote) if os.path.isfile(remote / n)):
                    proxy.cut()
                    return
                time.sleep(0.05)

        cutter = threading.Thread(target=cut_when_writing, daemon=True)
        cutter.start()
        run = hostops("put", src, dest, "--json", *lab_args(inv, known_hosts), timeout=240)
        cutter.join(30)
    record = run.json_lines()[0]
    assert record["status"] in ("failed", "unreachable"), run
    assert open(dest, "rb").read() == b"old image\n"
    leftovers = [n for n in os.listdir(remote) if TEMP.fullmatch(n)]
    assert len(leftovers) == 1, (leftovers, run)  # the truth: it cannot be removed from here
    stale = remote / leftovers[0]
    hour_ago = time.time() - 2 * 3600
    os.utime(stale, (hour_ago, hour_ago))
    fresh = write(remote / ".other.conf.hostops-0123abcd", b"in progress\n")
    small = write(tmp_path / "disk.img.small", b"new image\n")
    again = hostops("put", small, dest, "--json", *lab_args(inventory(1), known_hosts))
    assert again.code == 0, again
    assert open(dest, "rb").read() == b"new image\n"
    assert sorted(os.listdir(remote)) == sorted(["disk.img", os.path.basename(fresh)]), again


@pytest.mark.timeout(120)
def test_local_connection_put_checks_the_inode_too(tmp_path, victim, mocker):
    """``connection: local`` writes with fchmod/fchown on the descriptor and compares inodes:
    the same swap right after the write is refused, the victim untouched; unswapped, it works."""
    import hostops.put as put
    from hostops.settings import Options, Target
    from hostops.workerctx import WorkerContext
    from hostops.worker import Job, execute

    vdir, vfile = victim
    before = fingerprint(vfile)
    shared = tmp_path / "shared"
    shared.mkdir()
    dest = write(shared / "app.conf", b"old\n", 0o644)
    src = write(tmp_path / "app.conf", b"new\n")
    ctx = WorkerContext(Options())
    target = Target("local1", "localhost", connection="local")
    action = put.prepare_put(src, dest, False, "0640", "nobody", False, False, None)
    ok = execute(Job(0, target, action), ctx)
    assert ok.status == "ok", ok
    assert fingerprint(dest) == (b"new\n", 0o640, NOBODY.pw_uid, 0)
    real_copy = put._copy_local_to

    def copy_then_swap(fh, local, deadline):
        real_copy(fh, local, deadline)
        assert swap_for_link(the_temp(str(shared)), vfile)

    mocker.patch.object(put, "_copy_local_to", copy_then_swap)
    refused = execute(Job(0, target, put.prepare_put(src, dest, False, "0666", None, False, False, None)), ctx)
    assert refused.status == "failed" and "refused" in refused.error, refused
    assert fingerprint(vfile) == before
    assert os.listdir(shared) == ["app.conf"]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("sudo", SUDO)
def test_put_recursive_directory_swapped_for_a_link_mid_run_is_refused(lab, known_hosts, tmp_path, victim,
                                                                       mocker, sudo):
    """A directory of the tree hostops already made is swapped for a link to a root directory
    while the put runs (right after the first file is written): the files bound for it are
    refused, nothing lands in the victim directory."""
    import hostops.put as put

    vdir, vfile = victim
    before = tree_fingerprint(vdir)
    src = tmp_path / "app"
    (src / "conf.d").mkdir(parents=True)
    write(src / "conf.d" / "app.conf", b"listen 80\n")
    write(src / "top.txt", b"top\n")
    dest = tmp_path / "dest"
    dest.mkdir()
    real_copy = put._copy_local_to
    swapped = []

    def copy_then_swap(fh, local, deadline):
        real_copy(fh, local, deadline)
        if not swapped:
            swapped.append(swap_for_link(str(dest / "app" / "conf.d"), vfile, vdir))

    mocker.patch.object(put, "_copy_local_to", copy_then_swap)
    action = put.prepare_put(str(src), str(dest) + "/", True, None, None, sudo, False, None)
    assert [f.rel for f in action.files] == ["top.txt", "conf.d/app.conf"]  # the order the swap relies on
    result = run_in_process(lab, known_hosts, action)
    assert swapped == [True]
    assert tree_fingerprint(vdir) == before
    assert result.status == "failed", result
    assert "refused" in result.error and "conf.d" in result.error, result


@pytest.mark.timeout(180)
@pytest.mark.parametrize("sudo", SUDO)
def test_put_checksum_never_takes_a_link_for_the_unchanged_file(hostops, inventory, known_hosts, tmp_path,
                                                                victim, sudo):
    """The destination is a link to a root file with the very content being deployed: --checksum
    used to call it unchanged and chmod/chown it by name, i.e. the victim. It is replaced instead."""
    vdir, vfile = victim
    before = tree_fingerprint(vdir)
    src = write(tmp_path / "app.conf", fingerprint(vfile)[0])
    shared = tmp_path / "shared"
    shared.mkdir()
    dest = shared / "app.conf"
    os.symlink(vfile, dest)
    run = hostops("put", src, str(dest), "--checksum", "--mode", "0666", "--owner", "nobody", "--json",
                  *lab_args(inventory(1), known_hosts), *(["--sudo"] if sudo else []))
    assert run.code == 0, run
    assert tree_fingerprint(vdir) == before
    assert not dest.is_symlink()
    assert fingerprint(dest) == (fingerprint(vfile)[0], 0o666, NOBODY.pw_uid, 0)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("sudo", SUDO)
def test_put_owner_with_group_then_setuid_mode_through_the_handle(hostops, inventory, known_hosts, tmp_path, sudo):
    """--owner user:group is resolved on the host and applied before --mode: chown after chmod
    cleared the set-user-ID bit --mode asked for."""
    import grp

    group = grp.getgrgid(NOBODY.pw_gid).gr_name
    src = write(tmp_path / "tool", b"#!/bin/sh\necho hi\n", 0o755)
    shared = tmp_path / "shared"
    shared.mkdir()
    dest = shared / "tool"
    run = hostops("put", src, str(dest), "--owner", f"nobody:{group}", "--mode", "4755", "--json",
                  *lab_args(inventory(2), known_hosts), *(["--sudo"] if sudo else []))
    assert run.code == 0, run
    assert fingerprint(dest) == (b"#!/bin/sh\necho hi\n", 0o4755, NOBODY.pw_uid, NOBODY.pw_gid)
    bad = hostops("put", src, str(dest), "--owner", "no-such-user-h11", "--json",
                  *lab_args(inventory(1), known_hosts), *(["--sudo"] if sudo else []))
    assert bad.code == 5, bad
    assert "no-such-user-h11" in bad.json_lines()[0]["error"], bad
    assert sorted(os.listdir(shared)) == ["tool"]
