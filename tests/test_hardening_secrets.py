"""Issue 11, secrets half: secrets masked before output is split or cut, the @failed state file
without secrets, private directories whatever the umask, runbook values quoted for the shell,
host names that cannot forge a line.

The lab hosts are this machine, so a command prints a secret by reading a file the test wrote:
the secret is never in the command line, only in what the host prints.
"""
from __future__ import annotations

import json
import os
import random
import re
import stat
import subprocess
import sys
import uuid
from typing import Iterable, List

import pytest

from conftest import ROOT

pytestmark = pytest.mark.timeout(300)

SECRET = "Zq7#Vx9!Kp2@Wy"            # no 'a', no 'b', nothing of hostops' own words
MULTILINE = "Zq7#Vx\n9!Kp2@Wy"       # a secret with a newline: --stream splits lines
THRESHOLD = 3                         # hostops.secrets.MIN_SECRET: shorter values are not masked


def fragments(secret: str, size: int) -> List[str]:
    """Every piece of ``secret`` that is ``size`` characters long."""
    return [secret[i:i + size] for i in range(len(secret) - size + 1)]


def assert_no_fragment(text: str, secret: str, where: str) -> None:
    """No piece of the secret as long as the masking threshold (or longer) is in ``text``."""
    found = [f for f in fragments(secret, THRESHOLD) if f in text]
    assert not found, f"{where} shows {found!r} of the secret:\n{text[-2000:]}"


# ------------------------------------------------------------------ units: the stream masker
def _secrets(*values: str):
    from hostops.secrets import Secrets

    return Secrets(values=values)


@pytest.mark.parametrize("values, text", [
    ((SECRET,), b"x" * 10 + SECRET.encode() + b"y" * 10 + SECRET.encode()),
    ((MULTILINE,), b"before\n" + MULTILINE.encode() + b"\nafter\n"),
    (("abc", "abcdef"), b"abcdefabcdabcxabcdef"),              # a shorter secret starts a longer one
    (("longsecretX", "Xtail"), b"..longsecretXtail..Xtail"),   # a secret ends where another starts
])
def test_masker_masks_however_the_stream_is_split(values, text):
    """Fed in every possible two pieces, and in random small pieces, the masked stream is the
    whole text masked at once: no split point lets a secret through."""
    from hostops.secrets import MASK, StreamMasker

    pattern = re.compile(b"|".join(re.escape(v.encode()) for v in sorted(values, key=len, reverse=True)))
    whole = pattern.sub(MASK.encode(), text)
    for cut in range(len(text) + 1):
        m = StreamMasker(_secrets(*values))
        assert m.feed(text[:cut]) + m.feed(text[cut:]) + m.flush() == whole, cut
    rnd = random.Random(11)
    for _ in range(200):
        m, out, i = StreamMasker(_secrets(*values)), b"", 0
        while i < len(text):
            n = rnd.randint(0, 4)
            out += m.feed(text[i:i + n])
            i += n
        assert out + m.flush() == whole


def test_masker_holds_back_only_what_could_still_be_a_secret():
    """Live output is not delayed: only a possible start of a secret waits for the next piece."""
    from hostops.secrets import MIN_SECRET, StreamMasker

    assert MIN_SECRET == THRESHOLD
    m = StreamMasker(_secrets(SECRET))
    assert m.feed(b"line one\n") == b"line one\n"
    assert m.feed(b"tail Zq7") == b"tail "
    assert m.feed(b"#Vx9!Kp2@Wy done\n") == b"******** done\n"
    assert m.feed(b"Zq") == b""
    assert m.flush() == b"Zq"          # never completed: it was not the secret


def test_output_buffer_masks_before_the_max_output_cut():
    """A secret straddling the head/tail cut, or the front of the kept tail, leaves no piece."""
    from hostops.capture import OutputBuffer

    buf = OutputBuffer(4096, _secrets(SECRET))
    head = buf.head_cap
    data = b"a" * (head - 6) + SECRET.encode() + b"b" * 5000 + SECRET.encode() + b"c" * (buf.tail_cap - 4)
    for i in range(0, len(data), 1000):
        buf.add(data[i:i + 1000])
    text = buf.getvalue().decode()
    assert "dropped here" in text
    assert_no_fragment(text, SECRET, "the kept head and tail")
    one = OutputBuffer(4096, _secrets(SECRET))
    one.add(data)                       # one huge piece: the tail's front is trimmed
    assert_no_fragment(one.getvalue().decode(), SECRET, "one piece, cut")


# ------------------------------------------------------------------ lab: --stream and --max-output
def _secret_run(hostops, inventory, known_hosts, tmp_path, content: str, secret: str, *args: str):
    """Run ``cat FILE`` (FILE holds ``content``) on one lab host with ``secret`` given by
    --secret-env; returns the Run."""
    path = tmp_path / f"printed-{uuid.uuid4().hex}.txt"
    path.write_text(content)
    return hostops("exec", f"cat {path}", "-i", inventory(1), "--known-hosts", known_hosts,
                   "--secret-env", "HOSTOPS_TEST_SECRET", *args, env={"HOSTOPS_TEST_SECRET": secret})


@pytest.mark.parametrize("case", ["multiline", "across-64k-piece"])
def test_stream_never_shows_a_piece_of_a_secret(case, hostops, lab, inventory, known_hosts, tmp_path):
    """--stream splits output into lines and 64 KiB pieces: a secret with a newline, or one
    printed across the 64 KiB boundary of a long line, is masked all the same."""
    if case == "multiline":
        secret, content = MULTILINE, f"before\n{MULTILINE}\nafter\n"
    else:
        # the line goes on past the secret: --stream sends it in 64 KiB pieces, the first
        # ending 6 bytes into the secret
        secret, content = SECRET, "a" * 65530 + SECRET + "b" * 100000 + "\n"
    log = tmp_path / "run.jsonl"
    run = _secret_run(hostops, inventory, known_hosts, tmp_path, content, secret, "--stream", "--log", str(log))
    assert run.code == 0, run
    assert "****" in run.out, run       # the mask (which a 64 KiB piece may cut in two)
    assert_no_fragment(run.out + run.err, secret, "--stream output")
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert_no_fragment(log.read_text() + "".join(r.get("stdout", "") for r in records), secret, "--log")


def test_max_output_cut_never_shows_a_piece_of_a_secret(hostops, lab, inventory, known_hosts, tmp_path):
    """--max-output 64K keeps the first 48 KiB and the last 16 KiB: a secret printed across the
    48 KiB mark is masked, not cut into two unmasked halves (text, --json and --log)."""
    content = "a" * (48 * 1024 - 6) + SECRET + "b" * 40000 + "\n"
    for mode in ([], ["--json"], ["--stream"]):
        log = tmp_path / f"run{len(mode)}{mode[0] if mode else ''}.jsonl"
        run = _secret_run(hostops, inventory, known_hosts, tmp_path, content, SECRET, "--max-output", "64K",
                          "--log", str(log), *mode)
        assert run.code == 0, run
        assert_no_fragment(run.out + run.err, SECRET, f"output {mode}")
        stdout = [json.loads(line).get("stdout", "") for line in log.read_text().splitlines()]
        assert any("dropped here" in s for s in stdout), log.read_text()[-500:]
        assert_no_fragment(log.read_text() + "".join(stdout), SECRET, f"--log {mode}")
        if mode == ["--json"]:
            assert "dropped here" in run.json_lines()[0]["stdout"]
            assert_no_fragment(run.json_lines()[0]["stdout"], SECRET, "--json stdout")


# ------------------------------------------------------------------ the @failed state file
def test_state_file_never_stores_a_secret(hostops, lab, inventory, known_hosts, tmp_path):
    """The state file records what the run was (the command line): a secret in it is masked,
    and -l @failed still finds the hosts."""
    state_home = tmp_path / "state"
    env = {"XDG_STATE_HOME": str(state_home), "HOSTOPS_TEST_SECRET": SECRET}
    inv = inventory(2)
    run = hostops("exec", f"echo {SECRET}; exit 3", "-i", inv, "--known-hosts", known_hosts,
                  "--secret-env", "HOSTOPS_TEST_SECRET", env=env)
    assert run.code != 0 and "h001" in run.out, run
    (state,) = (state_home / "hostops").glob("last-run.inv.*.json")  # this inventory's own state file
    text = state.read_text()
    assert SECRET not in text and "********" in text, text
    again = hostops("exec", "true", "-i", inv, "--known-hosts", known_hosts, "-l", "@failed", "--json", env=env)
    assert again.code == 0 and sorted(r["host"] for r in again.json_lines()) == ["h001", "h002"], again


# ------------------------------------------------------------------ private directories
def _run_with_umask(mask: int, args: Iterable[str], home, env: dict) -> subprocess.CompletedProcess:
    full = dict(os.environ, HOME=str(home), PYTHONPATH=ROOT, **env)
    full.pop("SSH_AUTH_SOCK", None)
    return subprocess.run([sys.executable, "-m", "hostops", *args], capture_output=True, text=True, timeout=120,
                          env=full, cwd=str(home), preexec_fn=lambda: os.umask(mask))


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask", [0o000, 0o022])
def test_directories_hostops_makes_are_private_whatever_the_umask(mask, lab, inventory, known_hosts, tmp_path,
                                                                  isolated_home):
    """$XDG_STATE_HOME/hostops, -o DIR and get's DEST, and every missing parent of them that
    hostops creates, are 0700; a directory that already existed keeps its mode."""
    existing = tmp_path / "existing"
    existing.mkdir()
    os.chmod(existing, 0o755)
    state_home = existing / "new-state"
    outdir = existing / "out" / "nested"
    inv = inventory(1)
    run = _run_with_umask(mask, ["exec", "echo hi", "-i", inv, "--known-hosts", known_hosts, "-o", str(outdir)],
                          isolated_home, {"XDG_STATE_HOME": str(state_home)})
    assert run.returncode == 0, run.stderr
    src = tmp_path / "fetch-me.txt"
    src.write_text("data\n")
    dest = existing / "got" / "nested"
    run = _run_with_umask(mask, ["get", str(src), str(dest), "-i", inv, "--known-hosts", known_hosts],
                          isolated_home, {"XDG_STATE_HOME": str(state_home)})
    assert run.returncode == 0, run.stderr
    made = [state_home, state_home / "hostops", existing / "out", outdir, existing / "got", dest, dest / "h001"]
    assert {str(d): oct(_mode(d)) for d in made} == {str(d): oct(0o700) for d in made}
    assert _mode(existing) == 0o755
    assert (dest / "h001" / "fetch-me.txt").read_text() == "data\n"


def test_private_makedirs_unit(tmp_path):
    from hostops.secrets import private_makedirs

    old = os.umask(0o277)               # even a umask that takes the owner's write bit away
    try:
        private_makedirs(str(tmp_path / "a" / "b"))
        private_makedirs(str(tmp_path / "a" / "b"))  # exists: nothing to do
    finally:
        os.umask(old)
    assert _mode(tmp_path / "a") == _mode(tmp_path / "a" / "b") == 0o700
    (tmp_path / "file").write_text("")
    with pytest.raises(FileExistsError):
        private_makedirs(str(tmp_path / "file"))


# ------------------------------------------------------------------ runbook values and the shell
def test_runbook_quote_filter_keeps_a_hostile_value_literal(hostops, lab, inventory, known_hosts, tmp_path):
    marker = tmp_path / f"pwned-{uuid.uuid4().hex}"
    value = f"it's $(touch {marker}) `touch {marker}` \"q\" ; touch {marker}"
    book = tmp_path / "book.yml"
    book.write_text("name: quoting\nsteps:\n  - name: show\n    exec: printf '%s\\n' {{ v | quote }} {{v|quote}}\n")
    run = hostops("run", str(book), "-i", inventory(1), "--known-hosts", known_hosts, "-e", f"v={value}", "--json")
    assert run.code == 0, run
    assert run.json_lines()[0]["stdout"] == f"{value}\n{value}\n"
    assert not marker.exists()


def test_runbook_refuses_a_hostile_inventory_hostname_even_with_ansible_host(hostops, lab, known_hosts, tmp_path):
    """{{ inventory_hostname }} puts the inventory's name into a command: a name a shell would
    run is refused like an address (exit 2, the runbook's and the inventory's file:line), even
    though ansible_host gives a safe address."""
    marker = tmp_path / f"pwned-{uuid.uuid4().hex}"
    inv = tmp_path / "inv.yml"
    inv.write_text(f"all:\n  vars:\n    ansible_user: {lab.user}\n    ansible_ssh_private_key_file: {lab.user_key}\n"
                   f"  hosts:\n    good:\n      ansible_host: 127.0.0.1\n      ansible_port: {lab.port}\n"
                   f"    'x$(touch {marker})':\n      ansible_host: 127.0.0.1\n      ansible_port: {lab.port}\n")
    book = tmp_path / "book.yml"
    book.write_text("name: names\nsteps:\n  - name: greet\n    exec: echo {{ inventory_hostname }}\n")
    run = hostops("run", str(book), "-i", str(inv), "--known-hosts", known_hosts)
    assert run.code == 2, run
    assert f"{book}:3:" in run.err and f"{inv}:9" in run.err and "refused" in run.err, run
    assert not marker.exists()
    assert "good" not in run.out        # nothing ran, on no host
    run = hostops("run", str(book), "-i", str(inv), "--known-hosts", known_hosts, "-l", "good")
    assert run.code == 0 and "good" in run.out, run


# ------------------------------------------------------------------ host names that would forge lines
EVIL = ["h1\nx | OK | rc=0", "h2\rx | OK | rc=0\x1bc\x1b7", "h3\u2028x | OK\u00a0\u200b\u202e\x07\t"]
_RAW_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u00a0\u061c\u200b-\u200f\u2028-\u202e\u2066-\u2069\ufeff]")


def _evil_inventory(lab, tmp_path) -> str:
    import yaml

    hosts = {name: {"ansible_host": "127.0.0.1", "ansible_port": lab.port} for name in EVIL}
    data = {"all": {"vars": {"ansible_user": lab.user, "ansible_ssh_private_key_file": lab.user_key},
                    "children": {"evil": {"hosts": hosts}}}}
    path = tmp_path / "evil.yml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _assert_unforged(run, what: str) -> None:
    for stream, text in (("stdout", run.out), ("stderr", run.err)):
        raw = _RAW_CONTROL.findall(text)
        assert not raw, f"{what}: raw control characters {raw!r} on {stream}:\n{text}"
        forged = [line for line in text.split("\n") if line.startswith("x | ") or line.startswith("x |")]
        assert not forged, f"{what}: forged lines {forged!r} on {stream}:\n{text}"


def test_host_names_with_controls_are_escaped_everywhere(hostops, lab, known_hosts, tmp_path):
    inv = _evil_inventory(lab, tmp_path)
    runs = {
        "inventory": hostops("inventory", "-i", inv),
        "graph": hostops("inventory", "-i", inv, "--graph"),
        "exec": hostops("exec", "echo out", "-i", inv, "--known-hosts", known_hosts),
        "stream": hostops("exec", "echo out; exit 1", "-i", inv, "--known-hosts", known_hosts, "--stream"),
        "gather": hostops("exec", "echo out", "-i", inv, "--known-hosts", known_hosts, "-b"),
    }
    book = tmp_path / "book.yml"
    book.write_text("name: fail fast\nbatch: 1\nmax_fail: 0\nsteps:\n  - name: one\n    exec: exit 1\n"
                    "  - name: two\n    exec: 'true'\n")
    runs["runbook"] = hostops("run", str(book), "-i", inv, "--known-hosts", known_hosts)
    runs["dry-run"] = hostops("run", str(book), "-i", inv, "--dry-run")
    for what, run in runs.items():
        assert run.code in (0, 1, 2, 3, 4, 5), (what, run)
        _assert_unforged(run, what)
    assert runs["exec"].code == 0, runs["exec"]
    assert "h1\\x0ax | OK | rc=0" in runs["inventory"].out
    assert "h1\\x0ax | OK | rc=0 | OK | rc=0" in runs["exec"].out
    assert "h3\\u2028x | OK\\xa0\\u200b\\u202e\\x07\\x09" in runs["graph"].out
    assert "stopped:" in runs["runbook"].err and "not touched" in runs["runbook"].err, runs["runbook"]


def test_one_line_escapes_what_could_forge_a_line():
    from hostops.output import one_line

    assert one_line("web01.example.com") == "web01.example.com"
    assert one_line("a\nb\rc\td\x1b[2J\u2028\u00a0\u200b\u202e") == "a\\x0ab\\x0dc\\x09d\\x1b[2J\\u2028\\xa0\\u200b\\u202e"
