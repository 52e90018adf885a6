"""Inventory scripts and the JSON they print: an executable ``-i`` file is run with ``--list``
(and ``--host NAME`` per host when its output has no ``_meta``), as Ansible's script plugin
does; a JSON file holding the same format (what ``ansible-inventory --list`` prints) is read
the same way.

Owns: running a script (no shell, stdin /dev/null, bounded time and output, stderr kept for
the message) and reading the script/--list JSON format. Must not import hostops.inventory.
"""
from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional

from hostops import yamlfile
from hostops.errors import InventoryError
from hostops.variables import Source, check_var
from hostops.yamlfile import type_name

if TYPE_CHECKING:
    from hostops.inventory import Inventory

#: Seconds a script may run for one call (``--list`` or one ``--host``); a hung script is
#: killed (its whole process group) and reported, never waited on forever.
SCRIPT_TIMEOUT = 60.0
#: Bytes of standard output a script may print for one call; past it the script is killed.
#: 64 MiB is far above ``--list`` for 100,000 hosts with a few variables each.
MAX_SCRIPT_OUTPUT = 64 * 1024 * 1024
#: Bytes of standard error kept for the message (the end of it: where the traceback ends).
STDERR_KEPT = 4096

GroupReader = Callable[[str], Dict[str, Any]]


def is_script(path: str) -> bool:
    """An executable file that starts like a program (``#!`` or an ELF header) is a script.

    The executable bit alone is not enough: YAML and INI files copied from Windows shares or
    unpacked from archives are often executable, and running them would be a surprise.
    """
    if not os.path.isfile(path) or not os.access(path, os.X_OK):
        return False
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError:
        return False
    return head.startswith(b"#!") or head == b"\x7fELF"


def _stderr_tail(data: bytes) -> str:
    lines = [ln.strip() for ln in data[-STDERR_KEPT:].decode("utf-8", "replace").splitlines() if ln.strip()]
    if not lines:
        return ""
    shown = " | ".join(lines[-3:])
    return "; its stderr: " + (shown if len(shown) <= 400 else "..." + shown[-397:])


def run(path: str, args: List[str]) -> str:
    """Run ``path args`` (no shell, stdin /dev/null) and return its stdout; InventoryError on a
    failure to start, a non-zero exit, a timeout (SCRIPT_TIMEOUT), too much output
    (MAX_SCRIPT_OUTPUT) or output that is not UTF-8."""
    timeout = SCRIPT_TIMEOUT
    shown = " ".join([path] + args)
    try:
        proc = subprocess.Popen([os.path.abspath(path)] + args, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    except OSError as exc:
        raise InventoryError(f"cannot run inventory script '{shown}': {exc.strerror or exc}", path) from None
    out, err, problem = _collect(proc, timeout)
    if problem is not None:
        _kill(proc)
        raise InventoryError(f"inventory script '{shown}' {problem}; it was killed{_stderr_tail(err)}", path)
    if proc.returncode != 0:
        raise InventoryError(f"inventory script '{shown}' failed with exit status {proc.returncode}"
                             f"{_stderr_tail(err)}", path)
    try:
        return out.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InventoryError(f"inventory script '{shown}' printed output that is not UTF-8 ({exc})", path) from None


def _collect(proc: subprocess.Popen, timeout: float) -> "tuple[bytes, bytes, Optional[str]]":
    """Read both pipes until the script exits; (stdout, stderr, what went wrong or None)."""
    assert proc.stdout is not None and proc.stderr is not None
    deadline = time.monotonic() + timeout
    out: List[bytes] = []
    err = bytearray()
    size = 0
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        sel.register(proc.stderr, selectors.EVENT_READ)
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                return b"".join(out), bytes(err), f"did not finish within {timeout:g} seconds"
            for key, _ in sel.select(min(left, 1.0)):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    sel.unregister(key.fileobj)
                elif key.fileobj is proc.stdout:
                    out.append(chunk)
                    size += len(chunk)
                    if size > MAX_SCRIPT_OUTPUT:
                        return b"".join(out), bytes(err), f"printed more than {MAX_SCRIPT_OUTPUT} bytes"
                else:
                    err += chunk
                    del err[:-STDERR_KEPT]
    try:
        proc.wait(max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        return b"".join(out), bytes(err), f"closed its output but did not exit within {timeout:g} seconds"
    finally:
        proc.stdout.close()
        proc.stderr.close()
    return b"".join(out), bytes(err), None


def _kill(proc: subprocess.Popen) -> None:
    """Kill the script and whatever it started (it runs in a session of its own)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(10)  # SIGKILL is not refused; the bound only guards a process stuck in the kernel
    except subprocess.TimeoutExpired:
        pass
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


def parse_json(text: str, where: str) -> Any:
    """JSON text → value; one-line InventoryError (with the line) when it is not JSON, and the
    same bounds as YAML (yamlfile.MAX_NODES values, MAX_DEPTH nesting)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InventoryError(f"not valid JSON: {exc.msg} (column {exc.colno})", where, exc.lineno) from None
    except RecursionError:
        raise InventoryError("JSON nested too deeply", where) from None
    _check_size(data, where)
    return data


def _check_size(data: Any, where: str) -> None:
    nodes = 0
    todo = [(data, 0)]
    while todo:
        value, depth = todo.pop()
        nodes += 1
        if nodes > yamlfile.MAX_NODES:
            raise InventoryError(f"the JSON holds more than {yamlfile.MAX_NODES} values (the limit)", where)
        if depth > yamlfile.MAX_DEPTH:
            raise InventoryError(f"the JSON nests deeper than {yamlfile.MAX_DEPTH} levels (the limit)", where)
        if isinstance(value, dict):
            todo.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            todo.extend((v, depth + 1) for v in value)


def is_listing(data: Any) -> bool:
    """True when a JSON mapping is in the script / ``ansible-inventory --list`` format rather
    than Ansible's YAML format written as JSON: it has ``_meta``, or a group whose hosts or
    children are a list (the YAML format maps host names to their variables)."""
    if not isinstance(data, dict):
        return False
    if "_meta" in data:
        return True
    for body in data.values():
        if isinstance(body, list):
            return True
        if isinstance(body, dict) and (isinstance(body.get("hosts"), list) or isinstance(body.get("children"), list)):
            return True
    return False


def read_script(inv: Inventory, path: str) -> None:
    """Run an inventory script and read its output into ``inv``."""
    text = run(path, ["--list"])
    where = f"{path} --list"
    data = parse_json(text, where)

    def host_vars(host: str) -> Dict[str, Any]:
        hwhere = f"{path} --host {host}"
        out = run(path, ["--host", host])
        if not out.strip():
            return {}
        value = parse_json(out, hwhere)
        if not isinstance(value, dict):
            raise InventoryError(f"must print a JSON object of variables, not {type_name(value)}", hwhere)
        return value

    read_listing(inv, data, Source(where), host_vars)


def read_json_file(inv: Inventory, data: Any, path: str) -> None:
    """A JSON file in the script format (e.g. saved ``ansible-inventory --list`` output)."""
    read_listing(inv, data, Source(path), None)


def read_listing(inv: Inventory, data: Any, src: Source, host_vars: Optional[GroupReader]) -> None:
    """Groups, hosts and variables from the script format; ``host_vars`` fetches one host's
    variables when the data has no ``_meta.hostvars`` (None: such hosts have none)."""
    if not isinstance(data, dict):
        raise src.error(f"an inventory listing must be a JSON object of groups, not {type_name(data)}")
    meta: Optional[Dict[str, Any]] = None
    created: List[str] = []
    hosts: Dict[str, None] = {}
    for group, body in data.items():
        if group == "_meta":
            meta = _meta_hostvars(body, src)
        else:
            _read_group(inv, str(group), body, src, created, hosts)
    for name in created:
        if name != "all" and not inv.groups[name].parents:
            inv.link("all", name, src)
    for host in hosts:
        if meta is not None:
            hvars = meta.get(host) or {}
        elif host_vars is not None:
            hvars = host_vars(host)
        else:
            hvars = {}
        if not isinstance(hvars, dict):
            raise src.error(f"the variables of host {host!r} must be a mapping, not {type_name(hvars)}")
        for key, value in hvars.items():
            check_var(str(key), value, src)
        entry = inv.hosts[host]
        entry.vars.update((str(k), v) for k, v in hvars.items())
        entry.var_sources.update((str(k), src) for k in hvars)
    for host in (meta or {}):
        if host not in hosts:
            inv.warnings.append(f"{src.file}: host {host!r} has variables in _meta.hostvars but is in no "
                                f"group; it is not in the inventory (as in Ansible): list it in a group")
    inv.check_group_tree()


def _meta_hostvars(body: Any, src: Source) -> Dict[str, Any]:
    hostvars = body.get("hostvars") if isinstance(body, dict) else None
    if not isinstance(hostvars, dict):
        raise src.error(f"_meta.hostvars must be a mapping of host names to variables, "
                        f"not {type_name(hostvars)}")
    return hostvars


def _read_group(inv: Inventory, name: str, body: Any, src: Source, created: List[str],
                hosts: Dict[str, None]) -> None:
    if name not in inv.groups:
        created.append(name)
    group = inv.ensure_group(name, src)
    if isinstance(body, list):
        body = {"hosts": body}  # the oldest form: a group is its list of hosts
    elif not isinstance(body, dict):
        raise src.error(f"group {name!r} must be a mapping with hosts/vars/children, not {type_name(body)}")
    elif not any(k in body for k in ("hosts", "vars", "children")):
        inv.warnings.append(f"{src.file}: group {name!r} has none of hosts, vars, children: read as a "
                            f"group holding one host {name!r} with these variables, as Ansible does")
        body = {"hosts": [name], "vars": body}
    members = body.get("hosts", [])
    if not isinstance(members, list):
        raise src.error(f"hosts of group {name!r} must be a list of host names, not {type_name(members)}")
    for host in members:
        if not isinstance(host, str) or not host:
            raise src.error(f"group {name!r} lists {host!r} as a host; host names are non-empty strings")
        if inv.host_entries + 1 > inv.entries_limit():
            raise src.error(inv.entries_message(host))
        inv.host_entries += 1
        hosts[host] = None
        inv.add_host(host, name, {}, {}, src)
    gvars = body.get("vars", {})
    if not isinstance(gvars, dict):
        raise src.error(f"vars of group {name!r} must be a mapping, not {type_name(gvars)}")
    for key, value in gvars.items():
        check_var(str(key), value, src)
        group.vars[str(key)] = value
        group.var_sources[str(key)] = src
    children = body.get("children", [])
    if not isinstance(children, list):
        raise src.error(f"children of group {name!r} must be a list of group names, not {type_name(children)}")
    for child in children:
        if not isinstance(child, str) or not child:
            raise src.error(f"group {name!r} lists {child!r} as a child; group names are non-empty strings")
        if child not in inv.groups:
            created.append(child)
        inv.ensure_group(child, src)
        inv.link(name, child, src)
