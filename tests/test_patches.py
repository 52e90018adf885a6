"""Every paramiko internal hostops touches (hostops._patches) is still there with the shape
the patch was written against; and each guard falls back or refuses when it is not.

These fail when a paramiko upgrade changes one of them: read the patch's docstring in
hostops/_patches.py before adapting it."""
from __future__ import annotations

import collections
import inspect
import types

import paramiko
import pytest
from paramiko.sftp_client import SFTPClient
from paramiko.sftp_file import SFTPFile

from hostops import _patches


def _params(func) -> list:
    return list(inspect.signature(func).parameters)


# ------------------------------------------------------------------ the internals themselves
def test_every_internal_is_still_there():
    missing = [what for what, there in _patches.paramiko_internals() if not there]
    assert not missing, f"paramiko {paramiko.__version__} lacks {missing}"


def test_handshake_timer_is_started_through_the_packetizer_instance():
    assert _params(paramiko.Packetizer.start_handshake) == ["self", "timeout"]
    # called on the instance, so replacing the instance's attribute takes effect
    assert "self.packetizer.start_handshake(" in inspect.getsource(paramiko.Transport)


def test_debug_messages_are_parsed_through_the_instance():
    assert _params(paramiko.Transport._parse_debug) == ["self", "m"]
    assert "self._parse_debug(m)" in inspect.getsource(paramiko.Transport.run)


def test_send_user_message_takes_one_message():
    assert _params(paramiko.Transport._send_user_message) == ["self", "data"]


def test_rekey_thresholds_are_class_ints_read_through_self():
    for name in ("REKEY_BYTES", "REKEY_PACKETS"):
        assert isinstance(getattr(paramiko.Packetizer, name), int)
        assert f"self.{name}" in inspect.getsource(paramiko.Packetizer)
    info = paramiko.Transport._cipher_info
    assert isinstance(info, dict) and "aes128-gcm@openssh.com" in info
    assert info["aes128-gcm@openssh.com"]["block-size"] == 16


def test_sftp_write_replies_are_a_deque_read_by_read_response():
    assert "self._reqs = deque()" in inspect.getsource(SFTPFile.__init__)
    assert _params(SFTPClient._read_response) == ["self", "waitfor"]


def test_prefetch_thread_is_called_through_self():
    assert _params(SFTPFile._prefetch_thread) == ["self", "chunks", "max_concurrent_requests"]
    assert "target=self._prefetch_thread" in inspect.getsource(SFTPFile)


def test_transport_reads_the_sockets_private_closed_flag():
    """hostops.handshake.GuardedSocket offers ``_closed`` because paramiko reads it."""
    assert "self.sock._closed" in inspect.getsource(paramiko.Transport)


# ------------------------------------------------------------------ the guards
def test_the_patches_apply_to_a_real_transport():
    import socket

    a, b = socket.socketpair()
    try:
        t = paramiko.Transport(a)
        _patches.skip_handshake_timer(t)
        _patches.skip_debug_messages(t)
        assert t.packetizer.start_handshake is _patches._no_handshake_timer
        assert t._parse_debug is _patches._skip_debug_message
        t.local_cipher = t.remote_cipher = "aes128-gcm@openssh.com"
        _patches.leave_rekeying_to_the_server(t)
        assert t.packetizer.REKEY_BYTES == _patches.REKEY_BYTES
        assert paramiko.Packetizer.REKEY_BYTES != _patches.REKEY_BYTES  # the instance's, not the class's
    finally:
        a.close()
        b.close()


def test_optimisations_fall_back_when_the_internals_are_gone():
    bare = types.SimpleNamespace(local_cipher="aes128-gcm@openssh.com", remote_cipher="aes128-gcm@openssh.com")
    _patches.skip_handshake_timer(bare)
    _patches.skip_debug_messages(bare)
    _patches.leave_rekeying_to_the_server(bare)
    assert vars(bare) == {"local_cipher": "aes128-gcm@openssh.com", "remote_cipher": "aes128-gcm@openssh.com"}
    fh = types.SimpleNamespace()
    _patches.quiet_prefetch(fh, lambda: True)
    assert vars(fh) == {}


def test_what_correctness_needs_is_refused_loudly_when_gone():
    with pytest.raises(_patches.PrivateAPIChanged, match="_send_user_message"):
        _patches.send_keepalive(types.SimpleNamespace())
    with pytest.raises(_patches.PrivateAPIChanged, match="_read_response"):
        _patches.collect_write_replies(types.SimpleNamespace(sftp=None))


def test_write_replies_are_each_read():
    seen = []
    fh = types.SimpleNamespace(_reqs=collections.deque([1, 2]), sftp=types.SimpleNamespace(_read_response=seen.append))
    _patches.collect_write_replies(fh)
    assert seen == [1, 2] and not fh._reqs


def test_prefetch_failures_are_quiet_only_once_closed():
    def boom(*_a):
        raise OSError("gone")

    closed = [False]
    fh = types.SimpleNamespace(_prefetch_thread=boom)
    _patches.quiet_prefetch(fh, lambda: closed[0])
    with pytest.raises(OSError):
        fh._prefetch_thread([], 1)
    closed[0] = True
    fh._prefetch_thread([], 1)
