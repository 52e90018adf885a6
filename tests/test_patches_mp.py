"""hostops._patches, multiprocessing section: fails if multiprocessing changes under it."""
from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import signal

import pytest

from hostops import _patches
from hostops.wire import JobDone, ResultsChannel

pytestmark = pytest.mark.timeout(60)


def test_a_queue_still_has_its_two_pipe_ends():
    q = multiprocessing.get_context("fork").Queue()
    reader, writer = _patches.queue_ends(q)
    assert isinstance(reader, multiprocessing.connection.Connection) and reader.readable and not reader.writable
    assert isinstance(writer, multiprocessing.connection.Connection) and writer.writable and not writer.readable
    q.close()


def test_a_changed_queue_is_named_not_misused():
    class NotAQueue:
        _reader = None

    with pytest.raises(_patches.MultiprocessingChanged, match="ResultsChannel needs updating"):
        _patches.queue_ends(NotAQueue())


def _write_then_die(channel: ResultsChannel) -> None:
    channel.put(JobDone(7, None))  # type: ignore[arg-type]
    channel.close()
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_what_the_channel_relies_on_a_dead_writer_reads_as_end_of_file(method):
    """The parent closes its copy of the writing end: after the worker's messages, its death
    shows on the reading end (wait() wakes, then EOFError), never a wait forever."""
    ctx = multiprocessing.get_context(method)
    channel = ResultsChannel(ctx)
    proc = ctx.Process(target=_write_then_die, args=(channel,))
    proc.start()
    channel.started()
    got = []
    for _ in range(100):
        if not multiprocessing.connection.wait([channel.reader], 5):
            continue
        try:
            msg = channel.take()
        except EOFError:
            break
        if msg is not None:
            got.append(msg)
    else:
        pytest.fail("the reading end never reported end-of-file")
    proc.join(10)
    assert got == [JobDone(7, None)]  # type: ignore[arg-type]
    channel.close_reader()
