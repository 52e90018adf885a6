"""Runbooks: ordered steps in YAML, rolled out in batches with an abort threshold.

A runbook is loaded and fully resolved before anything runs: every step is checked,
every ``{{ variable }}`` filled in for every host, every local file found. Any problem
is one ``file:line: what is wrong`` error (exit 2). The rollout itself is
:mod:`hostops.rollout`.

    name: rolling restart of the web tier
    hosts: web:&prod
    batch: 10%
    max_fail: 2
    vars: {service: app}
    steps:
      - name: drain
        exec: /usr/local/bin/drain {{ service }}
        timeout: 60
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
import shlex
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from hostops import yamlfile
from hostops.actions import RetryAction  # moved to hostops.actions; still importable from here
from hostops.errors import RunbookError, UsageError
from hostops.rollout import count_of, make_batches
from hostops.yamlfile import LineMap, YamlProblem, type_name

STEP_KINDS = ("exec", "put", "get", "script")
TOP_KEYS = ("name", "hosts", "batch", "max_fail", "vars", "steps")
COMMON_KEYS = ("name", "timeout", "sudo", "retries", "delay", "when_failed")
KIND_KEYS = {"exec": ("stdin",), "put": (), "get": (), "script": ("stdin",)}
SPEC_KEYS = {
    "put": ("src", "dest", "mode", "owner", "recursive", "checksum"),
    "get": ("src", "dest", "recursive"),
    "script": ("src", "args", "stdin"),
}
# {{ name }} or {{ name | filter }}; the only filter is quote (shlex.quote, for a shell)
_TEMPLATE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?:\|\s*([A-Za-z_][A-Za-z0-9_]*)\s*)?\}\}")
_ODD_TEMPLATE = re.compile(r"\{\{(?!\s*[A-Za-z_][A-Za-z0-9_]*\s*(?:\|\s*[A-Za-z_][A-Za-z0-9_]*\s*)?\}\})")
FILTERS = ("quote",)


@dataclasses.dataclass
class Step:
    """One step as written (templates not yet filled in)."""

    index: int
    name: str
    kind: str
    spec: Any                     # exec: a command; script: path or mapping; put/get: mapping
    line: int
    timeout: Optional[float] = None
    sudo: bool = False
    retries: int = 0
    delay: float = 0.0
    when_failed: bool = False
    stdin: Optional[str] = None

    @property
    def title(self) -> str:
        return f"{self.index}. {self.name}"


@dataclasses.dataclass
class Runbook:
    path: str
    name: str
    hosts: str = "all"
    batch: Optional[str] = None
    max_fail: str = "0"
    vars: Dict[str, Any] = dataclasses.field(default_factory=dict)
    steps: List[Step] = dataclasses.field(default_factory=list)
    lines: Dict[str, int] = dataclasses.field(default_factory=dict)
    step_lines: Dict[int, int] = dataclasses.field(default_factory=dict)  # where each step starts

    @property
    def directory(self) -> str:
        return os.path.dirname(os.path.abspath(self.path))

    def error(self, message: str, line: Optional[int] = None) -> RunbookError:
        return RunbookError(message, self.path, line)


def load(path: str) -> Runbook:  # noqa: C901  (one check per top-level key, each with its own message)
    """Read and check a runbook file (its structure; variables are checked by :func:`plan`)."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except FileNotFoundError:
        raise RunbookError("no such runbook file", path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RunbookError(f"cannot read the runbook: {exc}", path) from None
    try:
        data = yamlfile.load(text)
    except YamlProblem as exc:
        raise RunbookError(exc.message, path, exc.line) from None
    if not isinstance(data, dict):
        raise RunbookError(f"a runbook is a mapping with name, hosts, steps…, not {type_name(data)}", path,
                           yamlfile.start_line(text) if data is not None else 1)
    book = Runbook(path, str(data.get("name") or os.path.basename(path)))
    book.lines = dict(data.key_lines) if isinstance(data, LineMap) else {}
    book.step_lines = _sequence_lines(text, "steps")
    for key in data:
        if key not in TOP_KEYS:
            raise book.error(f"unknown key {key!r}; a runbook has {', '.join(TOP_KEYS)}", book.lines.get(key))
    if data.get("hosts") is not None:
        if not isinstance(data["hosts"], str) or not data["hosts"].strip():
            raise book.error("hosts must be a host pattern such as 'web:&prod'", book.lines.get("hosts"))
        book.hosts = data["hosts"]
    if data.get("batch") is not None:
        book.batch = str(data["batch"])
        _check_count(book.batch, "batch", book, allow_zero=False)
    if data.get("max_fail") is not None:
        book.max_fail = str(data["max_fail"])
        _check_count(book.max_fail, "max_fail", book, allow_zero=True)
    rb_vars = data.get("vars")
    if rb_vars is not None:
        if not isinstance(rb_vars, dict):
            raise book.error(f"vars must be a mapping, not {type_name(rb_vars)}", book.lines.get("vars"))
        book.vars = {str(k): v for k, v in rb_vars.items()}
    steps = data.get("steps")
    if not isinstance(steps, list) or not steps:
        raise book.error("steps must be a non-empty list of steps", book.lines.get("steps", 1))
    names = set()
    for i, raw in enumerate(steps, 1):
        step = _load_step(book, i, raw)
        if step.name in names:
            raise book.error(f"two steps are named {step.name!r}; names must be unique (--start-at uses them)",
                             step.line)
        names.add(step.name)
        book.steps.append(step)
    return book


def _sequence_lines(text: str, key: str) -> Dict[int, int]:
    """1-based line of each item of the top-level sequence ``key`` (for items that are not
    mappings, which do not remember their own line)."""
    import yaml

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return {}
    if not isinstance(root, yaml.MappingNode):
        return {}
    for k, v in root.value:
        if getattr(k, "value", None) == key and isinstance(v, yaml.SequenceNode):
            return {i: item.start_mark.line + 1 for i, item in enumerate(v.value, 1)}
    return {}


def _check_count(text: str, what: str, book: Runbook, allow_zero: bool) -> None:
    try:
        count_of(text, 100, what, allow_zero)
    except UsageError as exc:
        raise book.error(str(exc), book.lines.get(what)) from None


def _load_step(book: Runbook, index: int, raw: Any) -> Step:  # noqa: C901
    # One piece on purpose (~80 lines): a flat list of checks, one per step key, each naming the
    # key's line; split up, each part would need the step, its lines and the book again.
    line = raw.line if isinstance(raw, LineMap) else book.step_lines.get(index, book.lines.get("steps"))
    if not isinstance(raw, dict):
        raise book.error(f"step {index} must be a mapping (name:, exec: …), not {type_name(raw)}", line)

    def key_line(key: str) -> Optional[int]:
        return raw.line_of(key) if isinstance(raw, LineMap) else line

    kinds = [k for k in STEP_KINDS if k in raw]
    if len(kinds) != 1:
        unknown = [k for k in raw if k not in COMMON_KEYS and k not in STEP_KINDS and k != "stdin"]
        if unknown and not kinds:
            raise book.error(f"step {index}: unknown step kind {unknown[0]!r}; use one of "
                             f"{', '.join(STEP_KINDS)}", key_line(unknown[0]))
        raise book.error(f"step {index} must have exactly one of {', '.join(STEP_KINDS)}", line)
    kind = kinds[0]
    allowed = set(COMMON_KEYS) | set(KIND_KEYS[kind]) | {kind}
    for key in raw:
        if key not in allowed:
            article = "an" if kind == "exec" else "a"
            raise book.error(f"step {index}: unknown key {key!r} for {article} {kind} step (allowed: "
                             f"{', '.join(sorted(allowed))})", key_line(key))
    name = str(raw.get("name") or f"{kind} {index}")
    step = Step(index, name, kind, raw[kind], line or 0)
    spec = raw[kind]
    if kind == "exec":
        if not isinstance(spec, str) or not spec.strip():
            raise book.error(f"step {name!r}: exec must be a command string", key_line(kind))
    elif kind == "script" and isinstance(spec, str):
        if not spec.strip():
            raise book.error(f"step {name!r}: script must name a local script", key_line(kind))
    else:
        if not isinstance(spec, dict):
            raise book.error(f"step {name!r}: {kind} must be a mapping with "
                             f"{', '.join(SPEC_KEYS[kind])}", key_line(kind))
        for key in spec:
            if key not in SPEC_KEYS[kind]:
                sub = spec.line_of(key) if isinstance(spec, LineMap) else key_line(kind)
                raise book.error(f"step {name!r}: unknown {kind} option {key!r} (allowed: "
                                 f"{', '.join(SPEC_KEYS[kind])})", sub)
        needed = ("src",) if kind == "script" else ("src", "dest")
        for key in needed:
            if not spec.get(key):
                raise book.error(f"step {name!r}: {kind} needs {key}", key_line(kind))
        if kind == "script" and spec.get("args") is not None and not isinstance(spec["args"], list):
            raise book.error(f"step {name!r}: script args must be a list", key_line(kind))

    def number(key: str, whole: bool = False, positive: bool = False) -> float:
        # YAML gives true/false, 2.5 or "soon" as readily as 3: only plain, finite numbers pass
        value = raw[key]
        try:
            if isinstance(value, bool):
                raise ValueError
            n = float(value)
            if not math.isfinite(n) or n < 0 or (positive and n == 0) or (whole and n != int(n)):
                raise ValueError
        except (TypeError, ValueError):
            what = ("a number of seconds above 0" if positive else
                    "a whole number, 0 or more" if whole else "a number of seconds, 0 or more")
            raise book.error(f"step {name!r}: {key} must be {what}", key_line(key)) from None
        return int(n) if whole else n

    if raw.get("timeout") is not None:
        step.timeout = number("timeout", positive=True)
    if raw.get("retries") is not None:
        step.retries = int(number("retries", whole=True))
    if raw.get("delay") is not None:
        step.delay = number("delay")
    for flag in ("sudo", "when_failed"):
        if flag in raw and not isinstance(raw[flag], bool):
            raise book.error(f"step {name!r}: {flag} must be true or false", key_line(flag))
    step.sudo = bool(raw.get("sudo", False))
    if kind == "get" and step.sudo:  # as `hostops get --sudo`: refused rather than silently unprivileged
        raise book.error(f"step {name!r}: get does not support sudo; copy the file somewhere readable first "
                         "(an exec step)", key_line("sudo"))
    step.when_failed = bool(raw.get("when_failed", False))
    if raw.get("stdin") is not None:
        step.stdin = str(raw["stdin"])
    return step


# ------------------------------------------------------------------ variables and plans
def fill(value: Any, variables: Dict[str, Any], where: Callable[[str], RunbookError],
         check: Optional[Callable[[str, str], None]] = None) -> Any:
    """``{{ name }}`` substitution in every string of ``value``; a missing name is an error.

    The value goes in as is (commands reach a shell: the runbook's author quotes it, or
    writes ``{{ name | quote }}`` to have it quoted with shlex.quote). ``check(name, value)``
    may refuse a value before it is used.
    """
    if isinstance(value, str):
        if _ODD_TEMPLATE.search(value):
            raise where(f"only {{{{ name }}}} substitution is supported (and {{{{ name | quote }}}}), not {value!r}")

        def sub(m: "re.Match[str]") -> str:
            name, flt = m.group(1), m.group(2)
            if flt is not None and flt not in FILTERS:
                raise where(f"only {{{{ name }}}} substitution is supported (and {{{{ name | quote }}}}), not "
                            f"{m.group(0)!r}: unknown filter {flt!r}")
            if name not in variables:
                raise where(f"variable {name!r} is not defined")
            text = str(variables[name])
            if check is not None:
                check(name, text)
            return shlex.quote(text) if flt == "quote" else text

        return _TEMPLATE.sub(sub, value)
    if isinstance(value, list):
        return [fill(v, variables, where, check) for v in value]
    if isinstance(value, dict):
        return {k: fill(v, variables, where, check) for k, v in value.items()}
    return value


def parse_extra_vars(pairs: Sequence[str]) -> Dict[str, str]:
    out: Dict[str, str] = {}
    for pair in pairs:
        if "=" not in pair or not pair.split("=", 1)[0].strip():
            raise UsageError(f"-e {pair!r}: give key=value")
        key, value = pair.split("=", 1)
        out[key.strip()] = value
    return out


@dataclasses.dataclass
class StepPlan:
    step: Step
    actions: Dict[str, Any]       # host → the action with its variables filled in

    def for_target(self, target) -> Any:
        return self.actions[target.name]


def plan(book: Runbook, inventory, hosts: Sequence[str], extra_vars: Dict[str, Any],  # noqa: C901
         options) -> List[StepPlan]:
    # One piece on purpose (~70 lines): every step for every host, so that all the errors
    # (missing variables, missing files) are found before anything runs, in step order.
    """Fill in every step for every host and check local files: all errors before any run.

    Variables, lowest first: inventory (group and host vars, ``inventory_hostname``) <
    the runbook's ``vars`` < ``-e key=value``.
    """
    from hostops.actions import ExecAction
    from hostops.settings import check_stdin_with_sudo_password
    from hostops.get import prepare_get
    from hostops.put import prepare_put
    from hostops.script import prepare_script

    base = book.directory

    def local(path: str) -> str:
        return path if os.path.isabs(os.path.expanduser(path)) else os.path.join(base, path)

    plans: List[StepPlan] = []
    cache: Dict[Any, Any] = {}
    host_vars = {h: {**inventory.host_vars(h), "inventory_hostname": h, **book.vars, **extra_vars} for h in hosts}
    for step in book.steps:
        actions: Dict[str, Any] = {}
        for host in hosts:
            def where(message: str, step=step, host=host) -> RunbookError:
                from hostops.output import one_line

                return book.error(f"step {step.name!r} on {one_line(host)}: {message}", step.line)

            def check(name: str, value: str, host=host, where=where) -> None:
                if name == "inventory_hostname":
                    _check_inventory_hostname(value, host, inventory, where)

            spec = fill(step.spec, host_vars[host], where, check)
            stdin = fill(step.stdin, host_vars[host], where, check) if step.stdin else None
            timeout = step.timeout if step.timeout is not None else options.timeout
            sudo = step.sudo or options.sudo
            key = (step.index, repr(spec), stdin)
            try:
                if key in cache:
                    action = cache[key]
                elif step.kind == "exec":
                    if stdin and not os.path.isfile(local(stdin)):
                        raise UsageError(f"stdin file {stdin} not found")
                    check_stdin_with_sudo_password(stdin, sudo, bool(options.secrets.sudo_password), "stdin")
                    action = ExecAction(spec, timeout, sudo, local(stdin) if stdin else None)
                elif step.kind == "put":
                    action = prepare_put(local(str(spec["src"])), str(spec["dest"]), bool(spec.get("recursive")),
                                         str(spec["mode"]) if spec.get("mode") is not None else None,
                                         spec.get("owner"), sudo, bool(spec.get("checksum")), timeout)
                elif step.kind == "get":
                    action = prepare_get(str(spec["src"]), local(str(spec["dest"])), bool(spec.get("recursive")),
                                         timeout, create=False)
                else:
                    if isinstance(spec, str):
                        try:
                            parts = shlex.split(spec)
                        except ValueError as exc:
                            raise UsageError(f"script {spec!r}: {exc}") from None
                        path, args, sstdin = parts[0], parts[1:], stdin
                    else:
                        path, args = str(spec["src"]), [str(a) for a in spec.get("args") or []]
                        sstdin = spec.get("stdin") or stdin
                    check_stdin_with_sudo_password(sstdin, sudo, bool(options.secrets.sudo_password), "stdin")
                    action = prepare_script(local(path), args, sudo, timeout, local(sstdin) if sstdin else None)
            except UsageError as exc:
                raise where(str(exc)) from None
            cache[key] = action
            if step.retries:
                action = RetryAction(action, step.retries, step.delay)
            actions[host] = action
        plans.append(StepPlan(step, actions))
    return plans


def _check_inventory_hostname(value: str, host: str, inventory, where: Callable[[str], RunbookError]) -> None:
    """``{{ inventory_hostname }}`` puts the inventory's name for a host into a command even
    when ``ansible_host`` gives the address: the name must pass the rule an address does
    (letters, digits, . - _ : [ ] %), or the runbook is refused before anything runs."""
    from hostops.settings import _SAFE_HOST  # the rule check_host_name applies to addresses

    if value and not value.startswith("-") and _SAFE_HOST.fullmatch(value):
        return
    src = inventory.hosts[host].source if host in getattr(inventory, "hosts", {}) else None
    defined = f" (defined at {src.file}:{src.line})" if src is not None and src.line else ""
    raise where(f"inventory_hostname {value!r}{defined} is refused in a step: only letters, digits and "
                ". - _ : [ ] % are allowed, and it may not start with '-'")


def describe_action(action: Any) -> str:
    return action.describe()


# ------------------------------------------------------------------ the plan, for people and as JSON (--dry-run)
def plan_json(book: Any, plans: Sequence[Any], names: Sequence[str], spec: Any) -> dict:
    """--dry-run --json: the same plan as data (one JSON document on stdout)."""

    from hostops.results import stamp

    return stamp({"event": "plan", "runbook": book.name, "path": book.path, "hosts": list(names),
            "batches": make_batches(names, spec.batch, spec.canary), "max_fail": spec.max_fail,
            "canary": spec.canary or None,
            "steps": [{"index": p.step.index, "name": p.step.name, "kind": p.step.kind,
                       "when_failed": p.step.when_failed, "sudo": p.step.sudo, "retries": p.step.retries,
                       "delay": p.step.delay, "timeout": p.step.timeout,
                       "hosts": {h: describe_action(p.actions[h]) for h in names}} for p in plans],
            "dry_run": True})


def render_plan(book: Any, plans: Sequence[Any], names: Sequence[str], spec: Any) -> str:
    from hostops.hostlist import compact as compact_raw
    from hostops.output import one_line

    def compact(hosts: Sequence[str]) -> str:  # host names may hold controls: escaped
        return one_line(compact_raw(hosts))

    batches = make_batches(names, spec.batch, spec.canary)
    named = False
    lines = [f"runbook: {book.name} ({book.path})", f"hosts: {len(names)} ({compact(names)})",
             f"batches: {len(batches)}" + (f" (canary {spec.canary} first)" if spec.canary else ""),
             f"max_fail: {spec.max_fail if spec.max_fail is not None else 'no limit'}"]
    for i, batch in enumerate(batches, 1):
        lines.append(f"  batch {i}: {compact(batch)} ({len(batch)})")
    lines.append("steps:")
    for p in plans:
        flags = [f for f, on in (("when_failed", p.step.when_failed), ("sudo", p.step.sudo)) if on]
        if p.step.retries:
            flags.append(f"retries {p.step.retries}, delay {p.step.delay:g}s")
        if p.step.timeout:
            flags.append(f"timeout {p.step.timeout:g}s")
        lines.append(f"  {p.step.index}. {p.step.name} [{p.step.kind}]" + (f" ({'; '.join(flags)})" if flags else ""))
        for hosts, text in fold_plan({h: describe_action(p.actions[h]) for h in names}):
            lines.append(f"       {compact(hosts)}: {one_line(text)}")
            named = named or HOST_MARK in text
    if named:
        lines.append(f"({HOST_MARK} stands for each host's own name)")
    lines.append("dry run: nothing was touched")
    return "\n".join(lines)


#: In a folded dry-run line, where each host's own name goes (``touch /srv/{host}.done``).
HOST_MARK = "{host}"


def fold_plan(texts: Dict[str, str]) -> List[Tuple[List[str], str]]:
    """A step's plan, host → what it will do, folded for --dry-run: hosts doing exactly the
    same thing share a line; hosts whose only difference is their own name (``touch
    /srv/web01``, ``touch /srv/web02``) share one line with :data:`HOST_MARK` in place of the name.
    Lines in the order of their first host."""
    by_text: Dict[str, List[str]] = {}
    for host, text in texts.items():
        by_text.setdefault(text, []).append(host)
    alone = {hosts[0]: text for text, hosts in by_text.items() if len(hosts) == 1}
    by_template: Dict[str, List[str]] = {}
    for host, text in alone.items():
        if HOST_MARK not in text and host and host in text:
            by_template.setdefault(text.replace(host, HOST_MARK), []).append(host)
    folded = {hosts[0]: (hosts, template) for template, hosts in by_template.items() if len(hosts) > 1}
    joined = {h for hosts, _ in folded.values() for h in hosts}
    out: List[Tuple[List[str], str]] = []
    for text, hosts in by_text.items():
        first = hosts[0]
        if first in folded:
            out.append(folded[first])
        elif first not in joined:
            out.append((hosts, text))
    order = {h: i for i, h in enumerate(texts)}
    return sorted(out, key=lambda item: order[item[0][0]])
