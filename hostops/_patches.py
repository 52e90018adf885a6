"""Every touch of another library's private API, version-guarded, one unit test each.

Owns: the places hostops relies on what paramiko and multiprocessing do not promise.
Each is a small function that checks the private structure it uses and raises
an error naming the library version when it is not there, rather than
failing somewhere far away; tests/test_patches_*.py fail if the library changes under it.

Must not import any other hostops module (everything imports this one).
"""
from __future__ import annotations

# --- multiprocessing
# (self-contained: its imports and its error class are here, so it can sit below any other section)
import sys  # noqa: E402
from typing import Any, Tuple  # noqa: E402


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
