"""Host-key advice at the end of a run: what accept-new added ("Permanently added …", as
OpenSSH says it) and, for hosts refused because their key is not on record, the ``hostops
keys`` commands that fix it, with the same ``-i``/``-H``/``-l``/``--known-hosts`` the user
ran with, narrowed to those hosts, every argument shell-quoted: they work when pasted.

The run commands wrap their renderer with :func:`with_key_advice`; the hosts to re-select are
taken from the command's parsed parameters (:func:`reselect_from_context`), never from argv.
Owns: :class:`KeyAdvice`. Must not import: hostops.cli.commands, hostops.cli.keys (no cycle).
"""
from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import IO, Any

import click

from hostops.completion import implicit_inventories
from hostops.hostkeys import PROBLEM_RE, AddedKey, Reselect, accept_hint, jump_reselect

#: Up to this many added keys get a line each; more are folded into one line.
MAX_ADDED_LINES = 5

_SHORT_TYPES = {"ssh-ed25519": "ED25519", "ssh-rsa": "RSA", "ssh-dss": "DSA", "sk-ssh-ed25519@openssh.com": "ED25519-SK",
                "sk-ecdsa-sha2-nistp256@openssh.com": "ECDSA-SK"}


def short_type(key_type: str) -> str:
    """OpenSSH's names in its "Permanently added" line: ED25519, RSA, ECDSA."""
    return _SHORT_TYPES.get(key_type, "ECDSA" if key_type.startswith("ecdsa-") else key_type)


def reselect_from_context(ctx: click.Context | None = None) -> Reselect:
    """The current command's inventory and host arguments as a :class:`Reselect`, with a
    ``select`` that loads the same inventory (once) to check a narrowed ``-l``."""
    ctx = ctx if ctx is not None else click.get_current_context()
    params = ctx.params
    inventories = tuple(params.get("inventories") or ())
    adhoc = tuple(params.get("adhoc_hosts") or ())
    loaded: list = []

    def select(pattern: str) -> Sequence[str]:
        if not loaded:
            from hostops.inventory import Inventory

            paths = list(inventories) or ([] if adhoc else implicit_inventories())
            loaded.append(Inventory.load(paths, adhoc))
        return loaded[0].select(pattern)

    return Reselect(inventories, adhoc, params.get("pattern") or "all", params.get("port"),
                    params.get("ssh_config"), tuple(params.get("known_hosts") or ()), select)


def with_key_advice(renderer: Any, kw: dict, targets: Sequence[Any] = ()) -> KeyAdvice:
    """Wrap a run command's renderer (the hook in hostops.cli.commands.roll_out). ``targets``:
    their ssh_config UserKnownHostsFile, when set, is where the hint's accept must write."""
    files = {t.name: tuple(t.known_hosts) for t in targets if getattr(t, "known_hosts", ())}
    return KeyAdvice(renderer, reselect_from_context(), quiet=bool(kw.get("quiet")), known_hosts_of=files)


class KeyAdvice:
    """An events handler around the renderer: collects the keys accept-new added and the hosts
    refused for an unknown (or unverifiable) key as results arrive, and says so at the end."""

    def __init__(self, inner: Any, reselect: Reselect, *, err: IO | None = None, quiet: bool = False,
                 known_hosts_of: dict[str, tuple[str, ...]] | None = None):
        self.inner = inner
        self.reselect = reselect
        self.known_hosts_of = known_hosts_of or {}  # host → its ssh_config UserKnownHostsFile(s)
        self.err = err
        self.quiet = quiet
        self.added: list[tuple[str, AddedKey]] = []                  # (host, key)
        self.unknown: dict[str, list[str]] = {}                      # host → its fingerprints
        self.jump: dict[str, tuple[list[str], list[str]]] = {}      # jump host's name → (hosts, fingerprints)

    def __getattr__(self, name: str) -> Any:  # anything else a renderer offers
        return getattr(self.inner, name)

    def started(self, host: str) -> None:
        self.inner.started(host)

    def output(self, host: str, stream: str, data: bytes) -> None:
        self.inner.output(host, stream, data)

    def section(self, title: str, total: int) -> None:
        self.inner.section(title, total)

    def warning(self, message: str) -> None:
        self.inner.warning(message)

    def result(self, result: Any) -> None:
        self.inner.result(result)
        for key in getattr(result, "keys_added", None) or ():
            self.added.append((result.host, key))
        m = PROBLEM_RE.match(result.error or "") if not result.ok else None
        if m is None:
            return
        if m.group(1):  # a jump host's key: fetched directly, by its own name
            hosts, fps = self.jump.setdefault(m.group(3), ([], []))
            hosts.append(result.host)
            fps.append(m.group(5))
        else:
            self.unknown.setdefault(result.host, []).append(m.group(5))

    def finish(self, report: Any) -> None:
        if self.added and not self.quiet:
            for line in added_lines(self.added):
                self.inner.warning(line)
        self.inner.finish(report)
        lines = self.hint_lines()
        if lines:
            from hostops.output import one_line

            err = self.err if self.err is not None else sys.stderr
            err.write("".join(one_line(line) + "\n" for line in lines))
            err.flush()

    def _by_known_hosts(self) -> list[tuple[Reselect, list[str]]]:
        """The refused hosts, grouped by the known_hosts file their check read: a host whose
        ssh_config names a UserKnownHostsFile (and no --known-hosts was given) gets a hint that
        records its key there, where the next run will look."""
        import dataclasses

        groups: dict[tuple[str, ...], list[str]] = {}
        for host in self.unknown:
            files = () if self.reselect.known_hosts else self.known_hosts_of.get(host, ())
            groups.setdefault(files, []).append(host)
        return [(dataclasses.replace(self.reselect, known_hosts=files) if files else self.reselect, hosts)
                for files, hosts in groups.items()]

    def hint_lines(self) -> list[str]:
        from hostops.hostlist import compact

        lines: list[str] = []
        for reselect, hosts in self._by_known_hosts():
            note, commands = accept_hint(reselect, hosts, [fp for h in hosts for fp in self.unknown[h]])
            lines.append(f"hostops: {len(hosts)} host{'s' if len(hosts) != 1 else ''} refused: host key not in "
                         f"known_hosts: {compact(hosts)}. {note}")
            lines += ["  " + c for c in commands]
            lines.append("  (or trust them on first use: run again with --host-key-policy accept-new)")
        for name, (hosts, fps) in self.jump.items():
            note, commands = accept_hint(jump_reselect(name, self.reselect.known_hosts), [], fps)
            lines.append(f"hostops: jump host {name} refused (for {compact(hosts)}): its host key is not in "
                         f"known_hosts. {note}")
            lines += ["  " + c for c in commands]
        return lines


def added_lines(added: Sequence[tuple[str, AddedKey]]) -> list[str]:
    """OpenSSH's "Permanently added 'NAME' (TYPE) to the list of known hosts", one per key, or
    one folded line per known_hosts file when there are many (the warning prefix is the renderer's)."""
    from hostops.hostlist import compact

    if len(added) <= MAX_ADDED_LINES:
        return [f"Permanently added '{key.name}' ({short_type(key.key_type)} {key.fingerprint}) to the list of "
                f"known hosts ({key.path})" + (f" for {host}" if host != key.name else "") for host, key in added]
    by_path: dict[str, list[tuple[str, AddedKey]]] = {}
    for host, key in added:
        by_path.setdefault(key.path, []).append((host, key))
    lines = []
    for path, items in by_path.items():
        types = ", ".join(dict.fromkeys(short_type(k.key_type) for _h, k in items))
        lines.append(f"Permanently added {len(items)} host keys ({types}) to the list of known hosts ({path}): "
                     f"{compact(dict.fromkeys(h for h, _k in items))}")
    return lines


__all__ = ["KeyAdvice", "added_lines", "reselect_from_context", "with_key_advice"]
