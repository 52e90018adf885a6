"""Capturing a command's output in bounded memory.

Each stream keeps at most ``cap`` bytes: the first three quarters of the cap and the
last quarter, with a visible marker where the middle was dropped. A host printing 5 GB
costs ``cap`` bytes of memory and no disk. Secrets are masked on the byte stream before it
is kept or cut (see :class:`hostops.secrets.StreamMasker`), so no cut splits a secret into
pieces that would escape the mask.
"""
from __future__ import annotations

import collections
import re
from typing import Deque, Optional, Tuple

from hostops.secrets import Secrets, StreamMasker

DEFAULT_MAX_OUTPUT = 4 * 1024 * 1024

# The wrapper around every remote command reports the command's process-group id as the
# first line on stderr; hostops strips it before anyone sees the output (see hostops.remotecmd.with_pid_report).
PID_MARKER = b"\x1eHOSTOPS-PID "
_PID_LINE = re.compile(rb"\x1eHOSTOPS-PID (\d+)\n")


class OutputBuffer:
    """One stream's output: head and tail kept, the middle dropped past ``cap``."""

    def __init__(self, cap: int = DEFAULT_MAX_OUTPUT, secrets: Optional[Secrets] = None):
        self.cap = max(cap, 1024)
        self.head_cap = self.cap * 3 // 4
        self.tail_cap = self.cap - self.head_cap
        self.head = bytearray()
        self.tail: Deque[bytes] = collections.deque()
        self.tail_size = 0
        self.dropped = 0
        self.total = 0
        masker = StreamMasker(secrets)
        self._masker: Optional[StreamMasker] = masker if masker.active else None

    def add(self, data: bytes) -> None:
        """Keep ``data`` (secrets masked first: the head/tail cut never splits a secret)."""
        if self._masker is not None:
            data = self._masker.feed(data)
        self._keep(data)

    def _keep(self, data: bytes) -> None:
        self.total += len(data)
        room = self.head_cap - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if not data:
            return
        self.tail.append(data)
        self.tail_size += len(data)
        while self.tail and self.tail_size - len(self.tail[0]) >= self.tail_cap:
            self.tail_size -= len(self.tail[0])
            self.dropped += len(self.tail.popleft())
        if self.tail_size > self.tail_cap and len(self.tail) == 1:  # one huge chunk: trim its front
            cut = self.tail_size - self.tail_cap
            self.tail[0] = self.tail[0][cut:]
            self.tail_size -= cut
            self.dropped += cut

    def getvalue(self) -> bytes:
        if self._masker is not None:  # the end: the bytes held back in case a secret went on
            self._keep(self._masker.flush())
        if not self.dropped:
            return bytes(self.head) + b"".join(self.tail)
        marker = (f"\n[hostops: {self.dropped} bytes of output dropped here; only the first "
                  f"{_size(self.head_cap)} and the last {_size(self.tail_cap)} are kept (--max-output)]\n")
        return bytes(self.head) + marker.encode() + b"".join(self.tail)


class StderrWithPid(OutputBuffer):
    """stderr whose first line may be the wrapper's PID marker, which is taken out."""

    def __init__(self, cap: int = DEFAULT_MAX_OUTPUT, secrets: Optional[Secrets] = None):
        super().__init__(cap, secrets)
        self.pid: Optional[int] = None
        self._pending: Optional[bytearray] = bytearray()

    def feed(self, data: bytes) -> bytes:
        """Add ``data``; return what the user may see of it (the marker removed)."""
        shown = self.strip(data)
        self.add(shown)
        return shown

    def strip(self, data: bytes) -> bytes:
        """``data`` without the marker line (held back while the marker may still arrive)."""
        if self._pending is None:
            return data
        self._pending += data
        buf = bytes(self._pending)
        if len(buf) < len(PID_MARKER) and PID_MARKER.startswith(buf):
            return b""
        m = _PID_LINE.match(buf)
        if m:
            self.pid = int(m.group(1))
            buf = buf[m.end():]
        elif buf.startswith(PID_MARKER) and b"\n" not in buf and len(buf) < 64:
            return b""  # the marker line is still arriving
        self._pending = None
        return buf

    @property
    def pending(self) -> bool:
        """True while the marker line may still arrive."""
        return self._pending is not None

    def finish(self) -> bytes:
        """End of stream: anything still held back is output after all."""
        if self._pending:
            buf = bytes(self._pending)
            self._pending = None
            self.add(buf)
            return buf
        self._pending = None
        return b""


def _size(n: int) -> str:
    return f"{n / 1048576:.1f} MiB" if n >= 1048576 else f"{n // 1024} KiB"


class PromptWatch:
    """Finds sudo's (random, per-run) password prompt in stderr and takes it out.

    A prompt may arrive split across reads, so up to ``len(prompt) - 1`` trailing bytes are
    held back until the next read or :meth:`flush`.
    """

    def __init__(self, prompt: bytes):
        self.prompt = prompt
        self.count = 0
        self._held = b""

    def feed(self, data: bytes) -> Tuple[bytes, int]:
        """(what may be shown, prompts seen in this piece)."""
        data = self._held + data
        found = data.count(self.prompt)
        if found:
            data = data.replace(self.prompt, b"")
            self.count += found
        keep = 0
        for n in range(min(len(self.prompt) - 1, len(data)), 0, -1):
            if self.prompt.startswith(data[-n:]):
                keep = n
                break
        self._held = data[len(data) - keep:] if keep else b""
        return (data[: len(data) - keep] if keep else data), found

    def flush(self) -> bytes:
        held, self._held = self._held, b""
        return held
