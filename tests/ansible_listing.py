"""ansible-core as the reference: run ``ansible-inventory --list`` on a fixture (isolated from
the user's configuration, writing only under a temporary directory) and compare its hosts,
groups and merged variables with hostops's view of the same sources."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Sequence

import pytest

from hostops.inventory import Inventory

ANSIBLE_INVENTORY = Path(sys.executable).parent / "ansible-inventory"


def ansible_env(tmp: Path) -> Dict[str, str]:
    """Environment under which ansible reads no user or system configuration and writes only in ``tmp``."""
    home = tmp / "ansible-home"
    home.mkdir(exist_ok=True)
    cfg = home / "ansible.cfg"
    cfg.write_text("")  # ANSIBLE_CONFIG=/dev/null is refused ("unsupported extension")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(HOME=str(home), ANSIBLE_CONFIG=str(cfg), ANSIBLE_HOME=str(home),
               ANSIBLE_LOCAL_TEMP=str(home / "tmp"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_INVENTORY_UNPARSED_FAILED="1", ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED="1",
               ANSIBLE_DEPRECATION_WARNINGS="0")
    return env


def ansible_list(sources: Sequence[str], tmp: Path) -> Dict[str, Any]:
    """What ``ansible-inventory -i S1 -i S2 --list`` prints, run in ``tmp`` (no group_vars there)."""
    if not ANSIBLE_INVENTORY.exists():
        pytest.skip(f"ansible-core is not installed next to {sys.executable} (pip install -e .[test])")
    cmd = [str(ANSIBLE_INVENTORY)]
    for src in sources:
        cmd += ["-i", str(src)]
    proc = subprocess.run(cmd + ["--list"], cwd=str(tmp), env=ansible_env(tmp), capture_output=True,
                          text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def normal(value: Any) -> Any:
    """Values as JSON sees them (tuples as lists, keys as strings)."""
    return json.loads(json.dumps(value, default=str))


def ansible_view(listing: Dict[str, Any]) -> Dict[str, Any]:
    groups: Dict[str, Dict[str, List[str]]] = {}
    for name, body in listing.items():
        if name != "_meta":
            groups[name] = {"hosts": sorted(body.get("hosts", [])), "children": sorted(body.get("children", []))}
    # --list leaves hosts without variables out of _meta.hostvars: every host of every group counts
    hosts = {h for body in groups.values() for h in body["hosts"]}
    hostvars = listing["_meta"]["hostvars"]
    return {"groups": groups, "hostvars": {h: hostvars.get(h, {}) for h in hosts}}


def hostops_view(inv: Inventory) -> Dict[str, Any]:
    """Groups that ansible-inventory --list would print (those with hosts or children)."""
    groups: Dict[str, Dict[str, List[str]]] = {}
    for name, group in inv.groups.items():
        hosts = [] if name == "all" else group.hosts  # --list never prints all's own hosts
        if hosts or group.children:
            groups[name] = {"hosts": sorted(hosts), "children": sorted(group.children)}
    hostvars = {h: normal(inv.host_vars(h)) for h in inv.hosts}
    return {"groups": groups, "hostvars": hostvars}


def assert_same_as_ansible(sources: Sequence[str], tmp: Path) -> Inventory:
    """hostops and ansible-core agree on hosts, groups (direct hosts, children) and every
    host's merged variables for these -i sources; returns hostops's inventory."""
    expected = ansible_view(ansible_list(sources, tmp))
    inv = Inventory.load([str(s) for s in sources])
    got = hostops_view(inv)
    # (a helper module is not assertion-rewritten: each message says what differs)
    assert sorted(got["hostvars"]) == sorted(expected["hostvars"]), \
        f"hosts: hostops {sorted(got['hostvars'])} != ansible {sorted(expected['hostvars'])}"
    for host, hvars in expected["hostvars"].items():
        assert got["hostvars"][host] == hvars, f"{host}: hostops {got['hostvars'][host]} != ansible {hvars}"
    for name in sorted(set(got["groups"]) | set(expected["groups"])):
        assert got["groups"].get(name) == expected["groups"].get(name), \
            f"group {name}: hostops {got['groups'].get(name)} != ansible {expected['groups'].get(name)}"
    return inv
