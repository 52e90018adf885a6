"""Units of the known_hosts reader and matcher (hostops/knownhosts.py), the writer
(hostops/knownhosts_write.py) and the host-key checker built on them (hostops/hostkeys.py).
Real keys from ssh-keygen; OpenSSH's own ssh-keygen checks that what we hash and write is what it reads."""
from __future__ import annotations

import base64
import multiprocessing
import os
import shutil
import stat
import struct
import subprocess

import paramiko
import pytest

from hostops import knownhosts as kh
from hostops import knownhosts_write as khw
from hostops.errors import HostKeyError
from hostops.hostkeys import HostKeyChecker, fingerprint

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """Four ed25519 keys and one ecdsa key, as paramiko keys: a, b, c, d, ecdsa."""
    d = tmp_path_factory.mktemp("keys")
    out = {}
    for name, kind in (("a", "ed25519"), ("b", "ed25519"), ("c", "ed25519"), ("d", "ed25519"), ("ecdsa", "ecdsa")):
        path = d / name
        subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-f", str(path)], check=True,
                       stdin=subprocess.DEVNULL)
        out[name] = paramiko.PKey.from_path(str(path))
    return out


def line(names: str, key, marker: str = "") -> str:
    return f"{marker + ' ' if marker else ''}{names} {key.get_name()} {key.get_base64()}"


def blob_for(type_name: str, payload: bytes = b"\x00" * 32) -> str:
    raw = struct.pack(">I", len(type_name)) + type_name.encode() + struct.pack(">I", len(payload)) + payload
    return base64.b64encode(raw).decode()


def verdict(known: kh.KnownHosts, name: str, key) -> kh.Verdict:
    return known.verdict(name, key.get_name(), key.asbytes())


# ------------------------------------------------------------------ matching
@pytest.mark.parametrize("patterns, name, expected", [
    (["web1.example.com"], "web1.example.com", True),
    (["WEB1.Example.COM"], "web1.example.com", True),          # case-insensitive, as OpenSSH
    (["*.example.com"], "web1.example.com", True),
    (["*.example.com"], "example.com", False),
    (["web?.example.com"], "web7.example.com", True),
    (["web?.example.com"], "web10.example.com", False),
    (["*.example.com", "!bad.example.com"], "bad.example.com", False),
    (["*.example.com", "!bad.example.com"], "good.example.com", True),
    (["!bad.example.com"], "other.example.com", False),        # a negation alone matches nothing
    (["[10.0.0.1]:2222"], "[10.0.0.1]:2222", True),
    (["[10.0.0.1]:2222"], "10.0.0.1", False),
    (["10.0.0.1"], "[10.0.0.1]:2222", False),
    (["[10.0.0.*]:2222"], "[10.0.0.9]:2222", True),
    (["[10.0.0.*]:2222"], "[10.0.0.9]:22", False),
    (["a.b"], "aXb", False),                                   # '.' is literal
])
def test_match_names(patterns, name, expected):
    assert kh.match_names(patterns, name) is expected


def test_hash_name_matches_and_ssh_keygen_agrees(tmp_path, keys):
    hashed = khw.hash_name("[127.0.0.1]:2222")
    entry = kh.parse_line(f"{hashed} {keys['a'].get_name()} {keys['a'].get_base64()}")
    assert entry is not None and entry.hashed is not None and entry.names == ()
    assert entry.matches("[127.0.0.1]:2222")
    assert not entry.matches("[127.0.0.1]:2223") and not entry.matches("127.0.0.1")
    path = tmp_path / "known_hosts"
    path.write_text(f"{hashed} {keys['a'].get_name()} {keys['a'].get_base64()}\n")
    if shutil.which("ssh-keygen"):
        found = subprocess.run(["ssh-keygen", "-F", "[127.0.0.1]:2222", "-f", str(path)], capture_output=True,
                               text=True)
        assert found.returncode == 0 and keys["a"].get_base64() in found.stdout


def test_reads_lines_hashed_by_ssh_keygen(tmp_path, keys):
    path = tmp_path / "known_hosts"
    path.write_text(line("web1.example.com,[10.0.0.5]:2222", keys["a"]) + "\n")
    subprocess.run(["ssh-keygen", "-H", "-f", str(path)], check=True, capture_output=True)
    assert "web1" not in path.read_text()
    known = kh.KnownHosts([str(path)])
    assert not known.warnings
    assert verdict(known, "web1.example.com", keys["a"]).state == kh.KNOWN
    assert verdict(known, "[10.0.0.5]:2222", keys["a"]).state == kh.KNOWN
    assert verdict(known, "[10.0.0.5]:2222", keys["b"]).state == kh.CHANGED


# ------------------------------------------------------------------ a file with every kind of line
def messy_file(tmp_path, keys) -> str:
    a, b, c, d, e = keys["a"], keys["b"], keys["c"], keys["d"], keys["ecdsa"]
    lines = [
        "# known_hosts as real machines have them",                                     # 1
        "",                                                                               # 2
        line("plain.example.com", a),                                                     # 3
        line(khw.hash_name("hashed.example.com"), a),                                      # 4
        line("[port.example.com]:2222", a),                                               # 5
        line("one.example.com,two.example.com,[three.example.com]:2200,10.1.1.1", b),     # 6
        line("*.wild.example.com,!bad.wild.example.com", c),                              # 7
        line("web?.q.example.com", c),                                                    # 8
        line("*.ca.example.com", d, "@cert-authority"),                                   # 9
        line("*", d, "@revoked"),                                                         # 10
        f"foo.example.com ssh-foo {blob_for('ssh-foo')} an unknown type",                 # 11
        "this-line-is-malformed",                                                         # 12
        "broken.example.com ssh-ed25519 !!!not-base64!!!",                                # 13
        f"mismatch.example.com ssh-rsa {a.get_base64()}",                                 # 14
        line("@nonsense", a, "@weird"),                                                   # 15
        "   # an indented comment",                                                       # 16
        line("plain.example.com", e) + " a comment with spaces",                          # 17
        f"dss.example.com ssh-dss {blob_for('ssh-dss')}",                                 # 18
        "old.example.com 1024 35 123456789",                                              # 19
        "|1|bm90LWEtaGFzaA==|short ssh-ed25519 " + a.get_base64(),                       # 20
        line("plain.example.com", a).replace("\n", "") + "\r",                            # 21 (CRLF)
    ]
    path = tmp_path / "known_hosts"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_every_kind_of_line_loads_with_the_right_warnings(tmp_path, keys):
    path = messy_file(tmp_path, keys)
    known = kh.KnownHosts([path])
    warned = {int(w.split(":")[1]): w for w in known.warnings}
    assert sorted(warned) == [11, 12, 13, 14, 15, 18, 19, 20], known.warnings
    assert "key type ssh-foo is not supported" in warned[11] and "entry skipped" in warned[11]
    assert "malformed line skipped" in warned[12]
    assert "base64" in warned[13]
    assert "not ssh-rsa" in warned[14]
    assert "unknown marker '@weird'" in warned[15]
    assert "ssh-dss" in warned[18]
    assert "SSH-1" in warned[19]
    assert "HMAC-SHA1" in warned[20] or "base64" in warned[20]
    assert all(w.startswith(f"{path}:") for w in known.warnings)
    # every usable line is there; the unsupported ones are kept (they make hosts unverifiable)
    assert [e.line for e in known.entries] == [3, 4, 5, 6, 7, 8, 9, 10, 11, 17, 18, 19, 21]

    a, b, c, d, e = keys["a"], keys["b"], keys["c"], keys["d"], keys["ecdsa"]
    assert verdict(known, "plain.example.com", a).state == kh.KNOWN
    assert verdict(known, "PLAIN.example.com", e).state == kh.KNOWN            # second key, other type
    assert verdict(known, "plain.example.com", b).state == kh.CHANGED
    assert verdict(known, "hashed.example.com", a).state == kh.KNOWN
    assert verdict(known, "hashed.example.com", b).state == kh.CHANGED
    assert verdict(known, "[port.example.com]:2222", a).state == kh.KNOWN
    assert verdict(known, "port.example.com", a).state == kh.NEW               # port 22 is another name
    for name in ("one.example.com", "two.example.com", "[three.example.com]:2200", "10.1.1.1"):
        assert verdict(known, name, b).state == kh.KNOWN, name
    assert verdict(known, "x.wild.example.com", c).state == kh.KNOWN
    assert verdict(known, "bad.wild.example.com", c).state == kh.NEW            # negated
    assert verdict(known, "web1.q.example.com", c).state == kh.KNOWN
    assert verdict(known, "web12.q.example.com", c).state == kh.NEW
    # @revoked * d: refused everywhere, whatever else is on record
    assert verdict(known, "plain.example.com", d).state == kh.REVOKED_KEY
    assert verdict(known, "x.ca.example.com", d).state == kh.REVOKED_KEY
    # only an unsupported key type on record: unverifiable, not new
    v = verdict(known, "foo.example.com", a)
    assert v.state == kh.UNVERIFIABLE and "ssh-foo" in kh.unverifiable_reason(v) and f"{path}:11" in \
        kh.unverifiable_reason(v)
    assert verdict(known, "dss.example.com", a).state == kh.UNVERIFIABLE
    # only a CA for it: unverifiable, and the CA key is never taken for the host's own key
    v = verdict(known, "h.ca.example.com", a)
    assert v.state == kh.UNVERIFIABLE and "cannot validate SSH host certificates" in kh.unverifiable_reason(v)
    assert kh.KnownHosts([path]).known_types("h.ca.example.com") == []
    assert verdict(known, "nowhere.example.com", a).state == kh.NEW
    v = verdict(known, "plain.example.com", keys["c"])  # ed25519 on record: changed, lists the old one
    assert v.state == kh.CHANGED and [x.line for x in v.old] == [3, 21]
    assert known.known_types("plain.example.com") == ["ssh-ed25519", "ecdsa-sha2-nistp256"]


def test_unreadable_and_missing_files(tmp_path):
    known = kh.KnownHosts([str(tmp_path / "missing"), str(tmp_path)])
    assert len(known.warnings) == 1 and "cannot read" in known.warnings[0]


def test_file_lists(isolated_home, monkeypatch):
    home = str(isolated_home)
    monkeypatch.setattr(kh, "GLOBAL_FILES", ("/etc/ssh/ssh_known_hosts",))
    assert kh.read_files() == [f"{home}/.ssh/known_hosts", f"{home}/.ssh/known_hosts2", "/etc/ssh/ssh_known_hosts"]
    assert kh.read_files(["~/a", "/b"]) == [f"{home}/a", "/b", "/etc/ssh/ssh_known_hosts"]
    assert khw.write_file() == f"{home}/.ssh/known_hosts"
    assert khw.write_file(["/b", "/c"]) == "/b"


# ------------------------------------------------------------------ writing
def test_record_creates_0600_and_never_duplicates(tmp_path, keys):
    path = str(tmp_path / "ssh" / "known_hosts")
    a = keys["a"]
    out = khw.record_keys(path, [("[h]:2222", a.get_name(), a.asbytes()), ("[h]:2222", a.get_name(), a.asbytes())])
    assert [r.outcome for r in out] == ["added", "present"]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
    out = khw.record_keys(path, [("[h]:2222", a.get_name(), a.asbytes())])
    assert out[0].outcome == "present" and out[0].line == 1
    assert open(path).read() == line("[h]:2222", a) + "\n"


def test_record_keeps_mode_adds_missing_newline_and_refuses_changed(tmp_path, keys):
    path = tmp_path / "known_hosts"
    path.write_text("# no newline at the end\n" + line("old", keys["a"]))
    os.chmod(path, 0o644)
    out = khw.record_keys(str(path), [("old", keys["b"].get_name(), keys["b"].asbytes()),
                                     ("new", keys["b"].get_name(), keys["b"].asbytes())])
    assert [r.outcome for r in out] == ["changed", "added"]
    assert out[1].line == 3
    assert path.read_text().splitlines() == ["# no newline at the end", line("old", keys["a"]), line("new", keys["b"])]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644


def test_record_refuses_revoked(tmp_path, keys):
    path = tmp_path / "known_hosts"
    path.write_text(line("*", keys["a"], "@revoked") + "\n")
    out = khw.record_keys(str(path), [("h", keys["a"].get_name(), keys["a"].asbytes())])
    assert out[0].outcome == kh.REVOKED_KEY
    assert path.read_text().count("\n") == 1


def test_record_writes_hashed_names(tmp_path, keys):
    path = tmp_path / "known_hosts"
    khw.record_keys(str(path), [("[10.0.0.1]:2222", keys["a"].get_name(), keys["a"].asbytes())], lambda n: True)
    text = path.read_text()
    assert text.startswith("|1|") and "10.0.0.1" not in text
    assert verdict(kh.KnownHosts([str(path)]), "[10.0.0.1]:2222", keys["a"]).state == kh.KNOWN


def test_writes_refuse_symlinks(tmp_path, keys):
    real = tmp_path / "real"
    real.write_text(line("h", keys["a"]) + "\n")
    link = tmp_path / "known_hosts"
    link.symlink_to(real)
    with pytest.raises(khw.KnownHostsError, match="symbolic link"):
        khw.record_keys(str(link), [("x", keys["b"].get_name(), keys["b"].asbytes())])
    with pytest.raises(khw.KnownHostsError, match="symbolic link"):
        khw.forget_names(str(link), ["h"])
    assert real.read_text() == line("h", keys["a"]) + "\n" and link.is_symlink()
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    with pytest.raises(khw.KnownHostsError, match="symbolic link"):
        khw.record_keys(str(dangling), [("x", keys["b"].get_name(), keys["b"].asbytes())])
    assert not (tmp_path / "nowhere").exists()


def _record_in_child(path, items, barrier):
    barrier.wait()
    for _ in range(5):
        khw.record_keys(path, items)


def test_record_from_many_processes_writes_one_line_per_host(tmp_path, keys):
    path = str(tmp_path / "known_hosts")
    items = [(f"[127.0.0.{i}]:2200", keys["a"].get_name(), keys["a"].asbytes()) for i in range(1, 9)]
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(6)
    procs = [ctx.Process(target=_record_in_child, args=(path, items[i % 3:] + items[:i % 3], barrier))
             for i in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    lines = open(path).read().splitlines()
    assert sorted(lines) == sorted(line(n, keys["a"]) for n, _t, _b in items)


def test_forget_removes_trims_and_keeps(tmp_path, keys):
    a, b = keys["a"], keys["b"]
    path = tmp_path / "known_hosts"
    original = [
        "# header",
        line("[10.0.0.1]:2222", a),
        line("web1,[10.0.0.1]:2222,db1", b),
        line(khw.hash_name("[10.0.0.1]:2222"), a),
        line("[10.0.0.*]:2222", a),
        line("*", b, "@revoked"),
        line("other", a),
        line("[10.0.0.1]:2222,!x", a),
        "garbage line",
        line("[10.0.0.1]:2222", b, "@cert-authority"),
    ]
    path.write_text("\n".join(original) + "\n")
    os.chmod(path, 0o640)
    ino = os.stat(path).st_ino
    report = khw.forget_names(str(path), ["[10.0.0.1]:2222"])
    actions = [(r.line, r.action) for r in report]
    assert actions == [(2, "removed"), (3, "trimmed"), (4, "removed"), (5, "kept"), (8, "removed"), (10, "kept")]
    assert report[0].fingerprint == fingerprint(a)
    assert path.read_text().splitlines() == ["# header", line("web1,db1", b), line("[10.0.0.*]:2222", a),
                                             line("*", b, "@revoked"), line("other", a), "garbage line",
                                             line("[10.0.0.1]:2222", b, "@cert-authority")]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    assert os.stat(path).st_ino != ino  # rewritten through a temporary file, renamed into place
    assert sorted(os.listdir(tmp_path)) == ["home", "known_hosts"]  # no temporary file, no lock file left
    assert khw.forget_names(str(path), ["nothing-here"]) == []
    assert khw.forget_names(str(tmp_path / "missing"), ["x"]) == []


# ------------------------------------------------------------------ HashKnownHosts
def test_hash_wanted_from_ssh_config(isolated_home, monkeypatch):
    khw._HASH_CACHE.clear()
    assert khw.hash_wanted("[127.0.0.1]:2222") is False  # no ~/.ssh/config: no
    ssh = isolated_home / ".ssh"
    ssh.mkdir()
    (ssh / "config").write_text("Host 127.0.0.2\n  HashKnownHosts no\nHost *\n  HashKnownHosts yes\n")
    khw._HASH_CACHE.clear()
    assert khw.hash_wanted("[127.0.0.1]:2222") is True
    assert khw.hash_wanted("127.0.0.2") is False
    khw._HASH_CACHE.clear()
    monkeypatch.setattr(khw.shutil, "which", lambda name: None)  # no ssh client: paramiko parses the file
    assert khw.hash_wanted("[127.0.0.1]:2222") is True
    assert khw.hash_wanted("127.0.0.2") is False
    khw._HASH_CACHE.clear()


# ------------------------------------------------------------------ the checker
def test_checker_revoked_refused_under_every_policy(tmp_path, keys):
    path = tmp_path / "known_hosts"
    path.write_text(line("h", keys["a"]) + "\n" + line("*", keys["a"], "@revoked") + "\n")
    for policy in ("strict", "accept-new", "off"):
        with pytest.raises(HostKeyError) as info:
            HostKeyChecker([str(path)], policy, global_files=()).check("h", keys["a"])
        assert info.value.stage == "hostkey-revoked" and "HOST KEY REVOKED" in str(info.value)


def test_checker_unverifiable_is_refused_and_never_learned(tmp_path, keys):
    path = tmp_path / "known_hosts"
    text = f"h ssh-foo {blob_for('ssh-foo')}\n" + line("*.ca", keys["d"], "@cert-authority") + "\n"
    path.write_text(text)
    for policy in ("strict", "accept-new"):
        checker = HostKeyChecker([str(path)], policy, global_files=())
        assert any("ssh-foo" in w for w in checker.warnings)
        for name, needle in (("h", "ssh-foo"), ("x.ca", "certificate")):
            with pytest.raises(HostKeyError) as info:
                checker.check(name, keys["a"])
            assert info.value.stage == "hostkey-unverifiable" and needle in str(info.value)
            assert "host key unverifiable" in str(info.value)
    assert path.read_text() == text
    HostKeyChecker([str(path)], "off", global_files=()).check("h", keys["a"])


def test_checker_unknown_and_changed_are_distinct(tmp_path, keys):
    path = tmp_path / "known_hosts"
    path.write_text(line("h", keys["a"]) + "\n")
    checker = HostKeyChecker([str(path)], "strict", global_files=())
    checker.check("h", keys["a"])
    with pytest.raises(HostKeyError) as unknown:
        checker.check("other", keys["a"])
    with pytest.raises(HostKeyError) as changed:
        checker.check("h", keys["b"])
    assert unknown.value.stage == "hostkey-unknown" and "host key unknown" in str(unknown.value)
    assert changed.value.stage == "hostkey-changed" and "HOST KEY CHANGED" in str(changed.value)
    assert f"{path}:1" in str(changed.value) and f"hostops keys forget h --known-hosts {path}" in str(changed.value)


def test_checker_accept_new_hashes_when_configured_and_reads_global_file(tmp_path, keys):
    path = tmp_path / "known_hosts"
    glob = tmp_path / "ssh_known_hosts"
    glob.write_text(line("g", keys["c"]) + "\n")
    checker = HostKeyChecker([str(path)], "accept-new", global_files=[str(glob)], hash_known_hosts=True)
    checker.check("g", keys["c"])                   # known from the global file
    checker.check("[10.0.0.1]:2222", keys["a"])     # learned, hashed
    checker.check("[10.0.0.1]:2222", keys["a"])     # once
    text = path.read_text()
    assert text.count("\n") == 1 and text.startswith("|1|")
    HostKeyChecker([str(path)], "strict", global_files=()).check("[10.0.0.1]:2222", keys["a"])
    assert glob.read_text() == line("g", keys["c"]) + "\n"
