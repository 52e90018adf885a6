"""Every touch of another library's private API, in one place, each one guarded.

hostops relies on a few internals of paramiko (and, in the section at the end of this file,
of multiprocessing). Each use is a small function here that checks the internal is still
what it was written against: where the patch only saves work, a changed library makes it
fall back to the library's own behaviour; where correctness depends on it, it refuses
loudly (:class:`PrivateAPIChanged`) rather than guess. tests/test_patches.py asserts, for
each, that the internal still exists with the expected shape, so an upgrade that changes
one fails a unit test before it fails a run.

Must not import any other hostops module (everything may import this), nor paramiko at
import time (the CLI starts without it).
"""
from __future__ import annotations

from typing import Any, Callable, Tuple

# ============================================================================ paramiko
#: The paramiko versions these patches were checked against (the tests say whether the
#: installed one still fits; the guards below look at the attributes, not the number).
PARAMIKO_CHECKED = ("3.4", "3.5", "4.0", "5.1")


class PrivateAPIChanged(RuntimeError):
    """A library internal hostops needs is gone or changed: upgrade hostops, or pin the
    library to a version it was checked against."""


def _paramiko_version() -> str:
    import paramiko

    return getattr(paramiko, "__version__", "?")


def _refuse(what: str) -> PrivateAPIChanged:
    return PrivateAPIChanged(f"paramiko {_paramiko_version()} changed {what}, which hostops relies on "
                             f"(checked with paramiko {', '.join(PARAMIKO_CHECKED)}); please report it")


def _no_handshake_timer(timeout: float) -> None:
    """Stands in for paramiko's Packetizer.start_handshake (see skip_handshake_timer)."""


def _skip_debug_message(m: Any) -> None:
    """Stands in for paramiko's Transport._parse_debug (see skip_debug_messages)."""


def skip_handshake_timer(transport: Any) -> None:
    """paramiko starts a threading.Timer per handshake to enforce handshake_timeout; our
    guarded socket already ends the connection at our deadline, and one more thread per host
    costs a clone and several context switches. Fallback: paramiko's timer."""
    packetizer = getattr(transport, "packetizer", None)
    if callable(getattr(packetizer, "start_handshake", None)):
        packetizer.start_handshake = _no_handshake_timer  # type: ignore[union-attr]


def skip_debug_messages(transport: Any) -> None:
    """OpenSSH sends a debug message with every accepted key ("key options: ..."), which
    paramiko escapes byte by byte for a DEBUG log line nobody sees. Fallback: paramiko's."""
    if callable(getattr(transport, "_parse_debug", None)):
        transport._parse_debug = _skip_debug_message


#: When the client itself asks for a new key exchange (paramiko: every 2^29 bytes or packets),
#: a channel close that the server sent just before seeing the request makes paramiko's
#: transport thread wait for the exchange it alone can finish: the host fails 30 s later
#: with "Key-exchange timed out" (seen with ~1 in 10 one-GiB outputs on a busy machine).
#: A server-initiated exchange has no such window, and OpenSSH starts one long before these
#: bounds (2^32 blocks of a 128-bit block cipher, RFC 4344's limit; 2^31 packets likewise).
REKEY_BYTES = 2 ** 36
REKEY_PACKETS = 2 ** 31


def leave_rekeying_to_the_server(transport: Any) -> None:
    """Raise paramiko's own re-key thresholds to the cipher's safe bound (128-bit block
    ciphers only; anything else, or a paramiko without these internals, keeps paramiko's)."""
    info = getattr(transport, "_cipher_info", {})
    packetizer = getattr(transport, "packetizer", None)
    if not isinstance(info, dict) or not all(isinstance(getattr(packetizer, n, None), int)
                                             for n in ("REKEY_BYTES", "REKEY_PACKETS")):
        return
    sizes = [info.get(name, {}).get("block-size", 0) for name in (transport.local_cipher, transport.remote_cipher)]
    if min(sizes, default=0) >= 16:
        packetizer.REKEY_BYTES = REKEY_BYTES  # type: ignore[union-attr]
        packetizer.REKEY_PACKETS = REKEY_PACKETS  # type: ignore[union-attr]


def send_keepalive(transport: Any) -> None:
    """A global request that wants a reply (OpenSSH answers 'failure'): any answer proves the
    peer is alive. paramiko's own keepalive wants no reply, so it cannot detect a dead peer;
    its global_request(wait=True) would block the command loop. Without the internal, refuse:
    a dead peer would go unnoticed for the length of TCP's retransmissions."""
    import paramiko

    send = getattr(transport, "_send_user_message", None)
    if not callable(send):
        raise _refuse("Transport._send_user_message (keepalives)")
    try:
        m = paramiko.Message()
        m.add_byte(bytes([paramiko.common.MSG_GLOBAL_REQUEST]))
        m.add_string("keepalive@openssh.com")
        m.add_boolean(True)
        send(m)
    except Exception:  # noqa: BLE001 - a dead transport: the silence check drops it
        pass


def collect_write_replies(fh: Any) -> None:
    """Read and check the reply to every pipelined SFTP write still unanswered (paramiko's
    own queue ``_reqs``; ``_read_response`` raises on an error status): paramiko's close
    reads them without checking, so a full disk went unnoticed. No fallback: refuse."""
    reqs = getattr(fh, "_reqs", None)
    read = getattr(getattr(fh, "sftp", None), "_read_response", None)
    if reqs is None or not hasattr(reqs, "popleft") or not callable(read):
        raise _refuse("SFTPFile._reqs / SFTPClient._read_response (checking SFTP write replies)")
    while reqs:
        read(reqs.popleft())


def quiet_prefetch(fh: Any, closed: Callable[[], bool]) -> None:
    """paramiko's prefetch thread asks for the whole file, whatever the reader does; once
    ``closed()`` says the file (or its connection) is closed, its failures are expected and
    are not printed. Fallback: paramiko's tracebacks."""
    issue = getattr(fh, "_prefetch_thread", None)
    if not callable(issue):
        return

    def run(*args: Any, **kw: Any) -> None:
        try:
            issue(*args, **kw)
        except Exception:
            if not closed():
                raise

    fh._prefetch_thread = run


def paramiko_internals() -> Tuple[Tuple[str, bool], ...]:
    """(what, still there) for each paramiko internal above: for tests and bug reports."""
    import paramiko
    from paramiko.sftp_client import SFTPClient
    from paramiko.sftp_file import SFTPFile

    return (
        ("Packetizer.start_handshake", callable(getattr(paramiko.Packetizer, "start_handshake", None))),
        ("Transport._parse_debug", callable(getattr(paramiko.Transport, "_parse_debug", None))),
        ("Transport._send_user_message", callable(getattr(paramiko.Transport, "_send_user_message", None))),
        ("Packetizer.REKEY_BYTES", isinstance(getattr(paramiko.Packetizer, "REKEY_BYTES", None), int)),
        ("Packetizer.REKEY_PACKETS", isinstance(getattr(paramiko.Packetizer, "REKEY_PACKETS", None), int)),
        ("SFTPClient._read_response", callable(getattr(SFTPClient, "_read_response", None))),
        ("SFTPFile._prefetch_thread", callable(getattr(SFTPFile, "_prefetch_thread", None))),
    )


# --- multiprocessing
# (its own import and error class are here, with the section)
import sys  # noqa: E402


class MultiprocessingChanged(RuntimeError):
    """multiprocessing no longer has the private part hostops relies on: hostops needs updating."""


# The results channel (hostops.wire.ResultsChannel) needs the two ends of the pipe under a
# multiprocessing.Queue: the parent closes its copy of the writing end once the worker has
# started (a dead worker's queue then reads end-of-file, and a half-written message cannot
# block the parent), and waits on the reading end with multiprocessing.connection.wait
# together with the other workers' queues and sentinels. Queue offers neither publicly.
# Checked on CPython 3.9 to 3.13: Queue.__init__ sets ``_reader, _writer = Pipe(duplex=False)``.
MP_QUEUE_ENDS_CHECKED = ((3, 9), (3, 13))


def queue_ends(queue: Any) -> Tuple[Any, Any]:
    """(reading end, writing end) of a ``multiprocessing.Queue``: its private ``_reader`` and
    ``_writer`` Connections."""
    from multiprocessing.connection import Connection

    reader = getattr(queue, "_reader", None)
    writer = getattr(queue, "_writer", None)
    if not (isinstance(reader, Connection) and isinstance(writer, Connection)):
        raise MultiprocessingChanged(
            f"multiprocessing.Queue on Python {sys.version.split()[0]} has no _reader/_writer Connection pair "
            f"(checked on {MP_QUEUE_ENDS_CHECKED[0]} to {MP_QUEUE_ENDS_CHECKED[1]}): hostops.wire.ResultsChannel "
            "needs updating")
    return reader, writer
