"""Secrets: passwords and other values that must never be seen.

They reach worker processes inside the pickled run options (a pipe, never argv) and are
replaced by ``********`` wherever hostops writes: output, JSON, logs, summaries, error
messages, including when a remote command echoes one back.
"""
from __future__ import annotations

import dataclasses
import os
import re
import stat
from typing import Iterable, List, Optional, Tuple, TypeVar

from hostops.errors import UsageError

MASK = "********"
#: Values shorter than this are not masked (masking "a" would garble every output); so no
#: piece of a secret this long or longer is ever shown, whatever splits or cuts the output.
MIN_SECRET = 3
T = TypeVar("T", str, bytes)


@dataclasses.dataclass(frozen=True)
class Secrets:
    sudo_password: Optional[str] = None
    ssh_password: Optional[str] = None
    values: Tuple[str, ...] = ()           # more values to hide (--secret-env, inventory)

    def __repr__(self) -> str:  # never print a secret by accident
        return f"Secrets(sudo_password={'set' if self.sudo_password else None}, " \
               f"ssh_password={'set' if self.ssh_password else None}, values={len(self.values)})"

    def all(self) -> Tuple[str, ...]:
        found = [v for v in (self.sudo_password, self.ssh_password, *self.values) if v and len(v) >= MIN_SECRET]
        return tuple(sorted(set(found), key=len, reverse=True))  # longest first

    def redact(self, data: T) -> T:
        """``data`` with every secret value replaced by the mask."""
        if not data:
            return data
        for value in self.all():
            if isinstance(data, bytes):
                data = data.replace(value.encode(), MASK.encode())  # type: ignore[assignment]
            else:
                data = data.replace(value, MASK)  # type: ignore[assignment]
        return data

    def with_values(self, more: Iterable[str]) -> "Secrets":
        return dataclasses.replace(self, values=tuple(dict.fromkeys((*self.values, *[m for m in more if m]))))


class StreamMasker:
    """Masks secrets in a byte stream that arrives in pieces, before anything splits or cuts it.

    A secret may straddle two reads (or be cut by a 64 KiB piece, a line split, the
    ``--max-output`` cut), so the end of each piece that could still be the start of a secret
    (at most the longest secret less one byte) is held back until the next piece, or
    :meth:`flush`. Matching is leftmost, longest secret first, as :meth:`Secrets.redact`.
    """

    def __init__(self, secrets: Optional[Secrets]):
        values = [v.encode() for v in (secrets.all() if secrets is not None else ())]
        self._values: List[bytes] = values
        self._pattern = re.compile(b"|".join(re.escape(v) for v in values)) if values else None
        self._starts = frozenset(v[0] for v in values)
        self._longest = max((len(v) for v in values), default=0)
        self._held = b""

    @property
    def active(self) -> bool:
        return self._pattern is not None

    def feed(self, data: bytes) -> bytes:
        """What of ``held + data`` may be shown now, masked."""
        if self._pattern is None:
            return data
        buf = self._held + data
        out: List[bytes] = []
        pos = 0
        hold = self._hold_start(buf, 0)
        while True:
            m = self._pattern.search(buf, pos)
            if m is None or m.start() >= hold:  # what is left could still grow into a secret
                out.append(buf[pos:hold])
                self._held = buf[hold:]
                return b"".join(out)
            out.append(buf[pos:m.start()])
            out.append(MASK.encode())
            pos = m.end()
            if pos > hold:  # a whole secret ran into the held-back window
                hold = self._hold_start(buf, pos)

    def flush(self) -> bytes:
        """End of stream: the held bytes can no longer become a secret; mask what they hold."""
        held, self._held = self._held, b""
        return self._pattern.sub(MASK.encode(), held) if self._pattern is not None and held else held

    def _hold_start(self, buf: bytes, pos: int) -> int:
        """The first index >= ``pos`` from which ``buf``'s rest is a proper prefix of a secret
        (``len(buf)`` if none): only the last ``longest - 1`` bytes are candidates."""
        end = len(buf)
        for i in range(max(pos, end - self._longest + 1), end):
            if buf[i] in self._starts:
                rest = buf[i:]
                if any(len(v) > len(rest) and v.startswith(rest) for v in self._values):
                    return i
        return end


def private_makedirs(path: str) -> None:
    """``os.makedirs`` for directories that may hold output, state or fetched files: each
    directory created here is 0700 whatever the umask (mkdir, then fchmod through a
    no-follow handle); directories that already exist are left as they are."""
    missing: List[str] = []
    cur = os.path.abspath(path)
    while not os.path.isdir(cur):
        missing.append(cur)
        parent = os.path.dirname(cur)
        if parent == cur:
            break
        cur = parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            if os.path.isdir(directory):
                continue  # made meanwhile by someone else: not ours to chmod
            raise
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            os.fchmod(fd, 0o700)
        finally:
            os.close(fd)


def read_password_file(path: str) -> str:
    """A password from a file that only its owner can read (mode checked, like ssh keys)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise UsageError(f"--sudo-pass-file {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UsageError(f"--sudo-pass-file {path}: not a regular file")
        if st.st_mode & 0o077:
            raise UsageError(f"--sudo-pass-file {path} is readable by others (mode {stat.S_IMODE(st.st_mode):04o}); "
                             f"run: chmod 600 {path}")
        if st.st_uid != os.geteuid():
            raise UsageError(f"--sudo-pass-file {path} belongs to another user; refusing it")
        data = os.read(fd, 4096).decode("utf-8", "replace")
    finally:
        os.close(fd)
    password = data.splitlines()[0] if data else ""
    if not password:
        raise UsageError(f"--sudo-pass-file {path} is empty")
    return password


def from_env(name: str, what: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise UsageError(f"{what} {name}: that environment variable is not set or empty")
    return value


def redact_result(result, secrets: Secrets):
    """The HostResult with every secret masked in its output and error (in place)."""
    if secrets.all():
        result.stdout = secrets.redact(result.stdout)
        result.stderr = secrets.redact(result.stderr)
        if result.error:
            result.error = secrets.redact(result.error)
    return result


def ask(prompt: str, flag: str) -> str:
    """Ask once on the terminal (never echoed); without a terminal, say what to use instead.

    The controlling terminal is opened unbuffered, read and write on one descriptor (Python
    cannot open a tty "r+" buffered: it is not seekable), with echo off while the password is
    typed and the terminal's settings restored whatever happens (Ctrl-C included)."""
    import termios

    instead = "--sudo-pass-file or --sudo-pass-env" if "sudo" in flag else "an SSH key (ssh-agent or -k)"
    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError:
        raise UsageError(f"{flag} needs a terminal to ask on; in cron use {instead}") from None
    try:
        try:
            saved = termios.tcgetattr(fd)
        except termios.error:
            raise UsageError(f"{flag}: /dev/tty is not a terminal; use {instead}") from None
        quiet = list(saved)
        quiet[3] &= ~termios.ECHO  # lflags: no echo; canonical mode stays, so the line is edited as usual
        termios.tcsetattr(fd, termios.TCSAFLUSH, quiet)
        try:
            os.write(fd, prompt.encode())
            value = _read_line(fd)
        except KeyboardInterrupt:
            value = None
        finally:
            termios.tcsetattr(fd, termios.TCSAFLUSH, saved)
            os.write(fd, b"\n")  # the newline the user typed was not echoed
    finally:
        os.close(fd)
    if value is None:
        raise UsageError(f"{flag}: no password given")
    if not value:
        raise UsageError(f"{flag}: empty password")
    return value


def _read_line(fd: int, limit: int = 4096) -> Optional[str]:
    """One line from the terminal (without its newline); None at end of input (Ctrl-D)."""
    data = b""
    while len(data) < limit:
        piece = os.read(fd, limit - len(data))
        if not piece:
            return data.decode("utf-8", "replace") if data else None
        data += piece
        if b"\n" in data:
            return data.split(b"\n", 1)[0].rstrip(b"\r").decode("utf-8", "replace")
    return data.decode("utf-8", "replace")
