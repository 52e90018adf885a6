"""hostops checked against ansible-core itself (issue 13): the acceptance tests of
"reads the Ansible inventories you already have".

For every inventory in tests/fixtures/ansible/ (and a few combinations of several -i), the
real ``ansible-inventory -i SRC… --list`` and the real ``hostops inventory -i SRC… --json``
(both subprocesses, with no user configuration) must agree on the hosts, each group's direct
hosts and children, and each host's merged variables (hostops adds only ``hostops_connection``,
its resolved connection, which is checked against Ansible's ssh rules instead). Host patterns:
``hostops inventory -l PATTERN`` must list the hosts Ansible's pattern code selects, in
Ansible's order. Where hostops differs on purpose (refusing a password, refusing to select
nothing), a test asserts both Ansible's behaviour and hostops's refusal.

ansible-core comes from the ``test`` extra (``pip install -e .[test]``): its commands sit next
to ``sys.executable``.
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import pytest

from conftest import ROOT

pytestmark = pytest.mark.timeout(300)

FIXTURES = Path(ROOT) / "tests" / "fixtures" / "ansible"
BIN = Path(sys.executable).parent

#: case id -> the -i sources (relative to FIXTURES), given in this order to both tools.
CASES: Dict[str, List[str]] = {
    "yaml_groups": ["yaml_groups/hosts.yml"],
    "yaml_order": ["yaml_order/hosts.yml"],
    "yaml_forms": ["yaml_forms/hosts.yml"],
    "yaml_hostport": ["yaml_hostport/hosts.yml"],
    "yaml_types": ["yaml_types/hosts.yml"],
    "yaml_connection": ["yaml_connection/hosts.yml"],
    "ini_full": ["ini_full/hosts"],
    "dir_layout": ["dir_layout/inventory"],
    "file_vars": ["file_vars/hosts.ini"],
    "script_meta": ["script_meta/inventory.py"],
    "script_nometa": ["script_nometa/inventory.py"],
    "json_list": ["json_list/inventory.json"],
    "patterns": ["patterns/hosts.yml"],
    "combined": ["combined/first.yml", "combined/second.ini"],
    "dir+file_vars": ["dir_layout/inventory", "file_vars/hosts.ini"],
    "script+yaml": ["script_meta/inventory.py", "yaml_groups/hosts.yml"],
    "ini+yaml_forms": ["ini_full/hosts", "yaml_forms/hosts.yml"],
}
#: Where Ansible must read the same inventory through another source (it has no reader for
#: the --list JSON as a file; the fixture's script prints that file).
ANSIBLE_SOURCES: Dict[str, List[str]] = {"json_list": ["json_list/as_script.py"]}


def test_every_fixture_is_compared_and_listed():
    """A case added to tests/fixtures/ansible/ is run by this file and described in its README."""
    used = {p.split("/")[0] for paths in list(CASES.values()) + [r[0] for r in REFUSED.values()] for p in paths}
    present = {p.name for p in FIXTURES.iterdir() if p.is_dir()}
    assert present == used
    index = (FIXTURES / "README.md").read_text()
    assert [name for name in sorted(present) if f"`{name}/`" not in index] == []


# ---------------------------------------------------------------- running the two tools
@pytest.fixture(scope="module")
def sandbox(tmp_path_factory) -> Path:
    """A directory both tools run in, holding their HOME: no user configuration, no writes elsewhere."""
    return tmp_path_factory.mktemp("ansible-compare")


def clean_env(sandbox: Path) -> Dict[str, str]:
    home = sandbox / "home"
    (home / "tmp").mkdir(parents=True, exist_ok=True)
    cfg = sandbox / "ansible.cfg"
    cfg.write_text("")  # an empty file: ANSIBLE_CONFIG=/dev/null is refused ("unsupported extension")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ANSIBLE_", "HOSTOPS_")) and k not in ("SSH_AUTH_SOCK", "PYTHONPATH")}
    env.update(HOME=str(home), ANSIBLE_CONFIG=str(cfg), ANSIBLE_HOME=str(home / ".ansible"),
               ANSIBLE_LOCAL_TEMP=str(home / "tmp"), ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0",
               ANSIBLE_INVENTORY_UNPARSED_FAILED="1", ANSIBLE_DEPRECATION_WARNINGS="0",
               ANSIBLE_PYTHON_INTERPRETER=sys.executable, PYTHONPATH=ROOT, NO_COLOR="1")
    return env


def ansible_command(name: str) -> str:
    path = BIN / name
    assert path.exists(), (f"{name} is not next to {sys.executable}: install the test extra "
                           f"(pip install -e '.[test]'), which brings ansible-core")
    return str(path)


def sources(paths: Sequence[str]) -> List[str]:
    return [str(FIXTURES / p) for p in paths]


def run(cmd: List[str], sandbox: Path) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=str(sandbox), env=clean_env(sandbox), capture_output=True, text=True,
                          timeout=240, stdin=subprocess.DEVNULL)


def with_i(paths: Sequence[str]) -> List[str]:
    return [arg for p in sources(paths) for arg in ("-i", p)]


def hostops(args: List[str], sandbox: Path) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "hostops", *args], sandbox)


_LISTINGS: Dict[Tuple[str, str], subprocess.CompletedProcess] = {}


def ansible_listing(case: str, sandbox: Path) -> Dict[str, Any]:
    """``ansible-inventory -i … --list`` for a case (run once per module)."""
    key = ("ansible", case)
    if key not in _LISTINGS:
        _LISTINGS[key] = run([ansible_command("ansible-inventory"),
                              *with_i(ANSIBLE_SOURCES.get(case, CASES[case])), "--list"], sandbox)
    proc = _LISTINGS[key]
    assert proc.returncode == 0, f"ansible-inventory failed on {case}:\n{proc.stderr}"
    return json.loads(proc.stdout)


def hostops_listing(case: str, sandbox: Path) -> Dict[str, Any]:
    """``hostops inventory -i … --json`` for a case (run once per module)."""
    key = ("hostops", case)
    if key not in _LISTINGS:  # a failure is kept too: each test reports it without running it again
        _LISTINGS[key] = hostops(["inventory", *with_i(CASES[case]), "--json"], sandbox)
    proc = _LISTINGS[key]
    assert proc.returncode == 0, f"hostops inventory --json failed on {case} (exit {proc.returncode}):\n{proc.stderr}"
    return json.loads(proc.stdout)


# ---------------------------------------------------------------- comparing --list outputs
def membership(listing: Dict[str, Any]) -> Dict[str, Dict[str, List[str]]]:
    """Every group named in a --list output (as a key or a child) -> its direct hosts and children."""
    names = {n for n in listing if n != "_meta"}
    for body in listing.values():
        if isinstance(body, dict):
            names.update(body.get("children", []))
    return {n: {"hosts": sorted(listing.get(n, {}).get("hosts", [])),
                "children": sorted(listing.get(n, {}).get("children", []))} for n in sorted(names)}


def all_hosts(listing: Dict[str, Any]) -> List[str]:
    hosts = {h for n, body in listing.items() if n != "_meta" for h in body.get("hosts", [])}
    return sorted(hosts | set(listing.get("_meta", {}).get("hostvars", {})))


def variables(listing: Dict[str, Any], host: str) -> Dict[str, Any]:
    hv = dict(listing.get("_meta", {}).get("hostvars", {}).get(host, {}))
    hv.pop("hostops_connection", None)
    return json.loads(json.dumps(hv))


@pytest.mark.parametrize("case", list(CASES))
def test_same_hosts(case, sandbox):
    assert all_hosts(hostops_listing(case, sandbox)) == all_hosts(ansible_listing(case, sandbox))


@pytest.mark.parametrize("case", list(CASES))
def test_same_group_membership(case, sandbox):
    ours, theirs = membership(hostops_listing(case, sandbox)), membership(ansible_listing(case, sandbox))
    differ = {g: {"hostops": ours.get(g), "ansible": theirs.get(g)}
              for g in sorted(set(ours) | set(theirs)) if ours.get(g) != theirs.get(g)}
    assert differ == {}, f"groups that differ in {case}"


@pytest.mark.parametrize("case", list(CASES))
def test_same_merged_variables(case, sandbox):
    ours, theirs = hostops_listing(case, sandbox), ansible_listing(case, sandbox)
    differ = {}
    for host in all_hosts(theirs):
        a, h = variables(theirs, host), variables(ours, host)
        for key in sorted(set(a) | set(h)):
            if a.get(key, "<unset>") != h.get(key, "<unset>") or (key in a) != (key in h):
                differ[f"{host}.{key}"] = {"ansible": a.get(key, "<unset>"), "hostops": h.get(key, "<unset>")}
    assert differ == {}, f"merged variables that differ in {case}"


def ansible_connection(hv: Dict[str, Any], name: str) -> Dict[str, Any]:
    """What Ansible's ssh connection uses, from a host's merged variables: of each pair of
    spellings the later one in the plugin's list (the ansible_ssh_* one) wins."""
    out: Dict[str, Any] = {"hostname": hv.get("ansible_ssh_host", hv.get("ansible_host", name))}
    for key, names in (("port", ("ansible_ssh_port", "ansible_port")), ("user", ("ansible_ssh_user", "ansible_user")),
                       ("key", ("ansible_ssh_private_key_file", "ansible_private_key_file"))):
        for var in names:
            if var in hv:
                out[key] = int(hv[var]) if key == "port" else hv[var]
                break
    return out


@pytest.mark.parametrize("case", [c for c in CASES if c not in ("patterns",)])
def test_connection_is_the_one_ansible_would_use(case, sandbox):
    """hostops_connection (hostops's resolved target) follows Ansible's ssh variables: address,
    port, user and key file; plain ``port``/``user``/``host`` variables change nothing."""
    ours, theirs = hostops_listing(case, sandbox), ansible_listing(case, sandbox)
    differ = {}
    for host in all_hosts(theirs):
        want = ansible_connection(theirs["_meta"]["hostvars"].get(host, {}), host)
        conn = ours.get("_meta", {}).get("hostvars", {}).get(host, {}).get("hostops_connection")
        if conn is None:
            differ[host] = "no hostops_connection"
            continue
        got = {"hostname": conn.get("hostname"), "port": conn.get("port", 22), "user": conn.get("user")}
        want.setdefault("port", 22)
        key = want.pop("key", None)
        if key is not None and not any(str(f).endswith(os.path.basename(key)) for f in conn.get("identity_files", [])):
            differ[f"{host}.key"] = {"ansible": key, "hostops": conn.get("identity_files")}
        for k, v in want.items():
            if got[k] != v:
                differ[f"{host}.{k}"] = {"ansible": v, "hostops": got[k]}
    assert differ == {}, f"connections that differ from Ansible's in {case}"


GRAPH_CASES = ["yaml_groups", "ini_full", "dir_layout", "file_vars", "script_meta", "combined"]


@pytest.mark.parametrize("case", GRAPH_CASES)
def test_same_graph(case, sandbox):
    """``hostops inventory --graph`` draws the tree ``ansible-inventory --graph`` draws, line for line."""
    theirs = run([ansible_command("ansible-inventory"), *with_i(CASES[case]), "--graph"], sandbox)
    assert theirs.returncode == 0, theirs.stderr
    ours = hostops(["inventory", *with_i(CASES[case]), "--graph"], sandbox)
    assert ours.returncode == 0, ours.stderr
    assert ours.stdout.splitlines() == theirs.stdout.splitlines()


# ---------------------------------------------------------------- deliberate differences
REFUSED = {
    # case: (sources, the variable, where hostops must point, the secret that must not be echoed)
    "password_in_inventory": (["refused_password/hosts.yml"], "ansible_password", "hosts.yml:9", "hunter2"),
    "password_in_group_vars": (["refused_password_group_vars/hosts.ini"], "ansible_ssh_pass",
                               os.path.join("group_vars", "all.yml"), "hunter2"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_password_is_refused_where_ansible_reads_it(case, sandbox):
    paths, var, where, secret = REFUSED[case]
    proc = run([ansible_command("ansible-inventory"), *with_i(paths), "--list"], sandbox)
    assert proc.returncode == 0, proc.stderr
    hostvars = json.loads(proc.stdout)["_meta"]["hostvars"]
    assert any(hv.get(var) == secret for hv in hostvars.values()), "Ansible reads the password (the difference is real)"
    ours = hostops(["inventory", *with_i(paths), "--json"], sandbox)
    assert ours.returncode == 2, ours
    assert var in ours.stderr and where in ours.stderr, ours.stderr
    assert len(ours.stderr.strip().splitlines()) == 1, ours.stderr
    assert secret not in ours.stdout + ours.stderr


# ---------------------------------------------------------------- host patterns
# Ansible's own pattern code (InventoryManager.list_hosts, what `ansible PATTERN --list-hosts`
# calls) run once for the whole battery: one ansible process per pattern would take minutes on a
# loaded machine. test_pattern_helper_agrees_with_the_ansible_cli checks this helper against the
# real `ansible --list-hosts` on a few patterns.
ANSIBLE_PATTERNS = r"""
import json, sys
from ansible import context
from ansible.module_utils.common.collections import ImmutableDict
from ansible.parsing.dataloader import DataLoader
from ansible.inventory.manager import InventoryManager
context.CLIARGS = ImmutableDict({})
request = json.loads(sys.argv[1])
inventory = InventoryManager(loader=DataLoader(), sources=request["sources"])
inventory.subset(None)
out = {}
for pattern in request["patterns"]:
    inventory.clear_pattern_cache()
    try:
        out[pattern] = [getattr(h, "name", h) for h in inventory.list_hosts(pattern)]
    except Exception as exc:
        out[pattern] = {"error": str(exc)}
print(json.dumps(out))
"""

#: id -> pattern, all on patterns/hosts.yml. Hosts there: bastion, 10.0.0.1, badwolf.example.com
#: (a host:port key), 2001:db8::20 under all; web (web03 web01 web02) with child canary (web05
#: web04); db (db02 db01); test1 (t-a t-b), test2 (t-b t-c); prod (db01 web02, children web, db).
PATTERNS = {
    "all": "all",
    "star": "*",
    "group": "web",
    "group-with-children": "prod",
    "ungrouped": "ungrouped",
    "host": "bastion",
    "ipv4-host": "10.0.0.1",
    "ipv6-host": "2001:db8::20",
    "hostport-key-name": "badwolf.example.com",
    "hostport-as-pattern": "badwolf.example.com:5309",
    "glob-groups-and-hosts": "web*",
    "glob-dots": "*.example.com",
    "glob-ip": "10.0.0.*",
    "glob-matches-all-group": "al*",
    "regex": "~web0[12]",
    "union-colon": "web:db",
    "union-order": "db:web",
    "union-spaces": "canary, db02",
    "intersection": "web:&prod",
    "only-intersection": "&db",
    "exclusion": "web:!canary",
    "only-exclusion": "!web",
    "exclusion-before-union": "web:!web01:prod",
    "subscript-child-hosts": "web[3]",
    "subscript-negative": "web[-1]",
    "subscript-open": "web[1:]",
    "subscript-slice": "prod[1:3]",
    "subscript-out-of-range": "web[9]",
    "subscript-not-a-subscript": "web[:1]",
    "subscript-dash": "web[1-2]",
    "glob-subscript": "test*[1]",
    "glob-subscript-duplicate": "test*[2]",
    "star-subscript": "*[0]",
    "name-range-on-group": "web[01:05]",
    "name-range-no-group": "web0[1:3]",
    "subscript-in-union": "db[0]:web[-1]",
    "unknown": "nosuch",
    "unknown-in-union": "nosuch:db",
}
PATTERN_SOURCES = ["patterns/hosts.yml"]


@pytest.fixture(scope="module")
def ansible_selects(sandbox) -> Dict[str, Any]:
    request = {"sources": sources(PATTERN_SOURCES), "patterns": sorted(set(PATTERNS.values()) | {"", "localhost"})}
    proc = run([sys.executable, "-c", ANSIBLE_PATTERNS, json.dumps(request)], sandbox)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def hostops_selects(pattern: str, sandbox: Path) -> subprocess.CompletedProcess:
    return hostops(["inventory", *with_i(PATTERN_SOURCES), "-l", pattern], sandbox)


def listed(proc: subprocess.CompletedProcess) -> List[str]:
    """The host names ``hostops inventory`` prints, one line each: ``NAME  user@address:port``."""
    return [line.split()[0] for line in proc.stdout.splitlines() if line.strip()]


@pytest.mark.parametrize("pattern", list(PATTERNS.values()), ids=list(PATTERNS))
def test_pattern_selects_what_ansible_selects(pattern, ansible_selects, sandbox):
    want = ansible_selects[pattern]
    proc = hostops_selects(pattern, sandbox)
    if isinstance(want, list) and want:
        assert proc.returncode == 0, proc.stderr
        assert listed(proc) == want, f"hostops -l {pattern!r} (left) against Ansible (right), in order"
    else:
        # A deliberate difference: where Ansible selects nothing (a warning, then nothing to do),
        # hostops stops with a usage error (exit 2) saying nothing matched.
        assert proc.returncode == 2 and "no host matched" in proc.stderr, (want, proc.stdout, proc.stderr)


@pytest.mark.parametrize("pattern", ["", "localhost"], ids=["empty", "implicit-localhost"])
def test_pattern_hostops_refuses_on_purpose(pattern, ansible_selects, sandbox):
    """Ansible reads ``''`` as ``all`` (every host, from an unset shell variable) and invents an
    implicit ``localhost``; hostops refuses both (exit 2, one line) rather than run somewhere
    nobody named."""
    assert ansible_selects[pattern], "Ansible selects hosts here (the difference is real)"
    proc = hostops_selects(pattern, sandbox)
    assert proc.returncode == 2, proc
    assert proc.stdout == "" and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def generated_patterns(count: int, seed: int) -> List[str]:
    """Patterns of one to three terms: names, globs, regexes, subscripts, every separator."""
    rng = random.Random(seed)
    atoms = ["web", "db", "prod", "canary", "test1", "test*", "t-?", "all", "*", "ungrouped", "bastion", "lonely",
             "web0?", "web1", "web01", "10.0.0.1", "~web", "~t-", "w*", "*a*", "nosuch", "[wd]*", "*1", "te?t[12]",
             "db0[!1]", "app-*", "node0[15]", "h?", "web1", "web[12]", "extra", "solo", "mon*", "cache"]
    subscripts = ["", "", "", "[0]", "[1]", "[-1]", "[2:]", "[0:1]", "[1:0]", "[3]", "[1-2]", "[01:03]", "[5:9]"]
    separators = [":", ",", ":&", ":!", ",&", ",!", " "]
    patterns: Dict[str, None] = {}
    while len(patterns) < count:
        pattern = rng.choice(["", "", "!", "&"])
        for i in range(rng.randint(1, 3)):
            atom = rng.choice(atoms)
            pattern += (rng.choice(separators) if i else "") + atom + ("" if atom[0] == "~" else rng.choice(subscripts))
        patterns[pattern] = None
    return list(patterns)


@pytest.mark.parametrize("case", ["patterns", "yaml_groups", "yaml_order", "ini_full", "combined", "dir+file_vars"])
def test_generated_patterns_select_what_ansible_selects(case, sandbox):
    """Hundreds of generated patterns through Ansible's pattern code (one process) and hostops's
    Inventory.select: the same hosts in the same order; where Ansible errors or selects nothing,
    hostops selects nothing or raises its own error."""
    from hostops.errors import HostopsError
    from hostops.inventory import Inventory

    patterns = generated_patterns(400, seed=13)
    request = {"sources": sources(CASES[case]), "patterns": patterns}
    proc = run([sys.executable, "-c", ANSIBLE_PATTERNS, json.dumps(request)], sandbox)
    assert proc.returncode == 0, proc.stderr
    want = json.loads(proc.stdout)
    inv = Inventory.load(sources(CASES[case]))
    differ = {}
    for pattern in patterns:
        try:
            got: Any = inv.select(pattern)
        except HostopsError as exc:
            got = {"error": str(exc)}
        theirs = want[pattern]
        if not (got == theirs or (not got or isinstance(got, dict)) and (not theirs or isinstance(theirs, dict))):
            differ[pattern] = {"ansible": theirs, "hostops": got}
    assert differ == {}, f"{len(differ)} of {len(patterns)} patterns select differently in {case}"


@pytest.mark.parametrize("pattern", ["web[1:]", "db:web", "*[0]", "web[9]"])
def test_pattern_helper_agrees_with_the_ansible_cli(pattern, ansible_selects, sandbox):
    proc = run([ansible_command("ansible"), *with_i(PATTERN_SOURCES), pattern, "--list-hosts"], sandbox)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines and lines[0].strip().startswith("hosts ("), proc.stdout
    cli = [line.strip() for line in lines[1:] if line.strip()]
    want = ansible_selects[pattern]
    assert cli == (want if isinstance(want, list) else [])
