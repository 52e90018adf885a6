"""One host name → one local file name, and back: ``get``'s ``DEST/<host>/`` and ``-o``'s
``DIR/<host>.out``.

The old mapping replaced every unusual character with ``_``, so ``a/b``, ``a_b``, ``a b`` and
``a%b`` all wrote into ``a_b``: one host's files silently replaced another's. Here the
mapping is a percent-encoding, hence reversible and one-to-one:

* bytes of ``A-Z a-z 0-9 . _ - : @ [ ]`` stay as they are (readable names for the usual
  host names and IPv6 literals), except a leading ``.`` (no hidden files, never ``.`` or ``..``);
* every other byte of the UTF-8 name, ``%`` itself included, becomes ``%XX`` (upper-case hex);
* the empty name becomes ``%`` (no other name encodes to a lone ``%``).

A local name never contains ``/`` and is never ``.``, ``..`` or empty, so it always names an
entry directly inside its directory.
"""
from __future__ import annotations

_KEEP = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-:@[]")


def local_name(host: str) -> str:
    """The local file/directory name for ``host`` (see the module's docstring)."""
    if host == "":
        return "%"
    raw = host.encode("utf-8", "surrogateescape")
    out = []
    for i, byte in enumerate(raw):
        if byte in _KEEP and not (i == 0 and byte == 0x2E):
            out.append(chr(byte))
        else:
            out.append(f"%{byte:02X}")
    return "".join(out)


def host_from_local_name(name: str) -> str:
    """The host name :func:`local_name` turned into ``name`` (ValueError if it did not)."""
    if name == "%":
        return ""
    raw = bytearray()
    i = 0
    while i < len(name):
        ch = name[i]
        if ch == "%":
            digits = name[i + 1:i + 3]
            if len(digits) != 2 or any(c not in "0123456789ABCDEF" for c in digits):
                raise ValueError(f"{name!r} is not an encoded host name")
            raw.append(int(digits, 16))
            i += 3
        else:
            raw.append(ord(ch))
            i += 1
    host = raw.decode("utf-8", "surrogateescape")
    if local_name(host) != name:
        raise ValueError(f"{name!r} is not an encoded host name")
    return host
