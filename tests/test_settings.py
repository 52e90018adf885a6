"""hostops.settings: Options validation and per-host resolution
(inventory vars > CLI flags > ssh_config > defaults)."""
from __future__ import annotations

import getpass
import os
import pickle
import textwrap

import pytest

from hostops.errors import UsageError
from hostops.exitcodes import ExitCode
from hostops.inventory import Inventory
from hostops.settings import DEFAULT_CONNECT_TIMEOUT, DEFAULT_FORKS, Options, Target, complete_target, resolve

SSH_CONFIG = """\
Host web1
    HostName web1.internal.example
    Port 2201
    User cfguser
    IdentityFile /keys/cfg_key

Host 10.9.9.9
    User ipuser
    Port 2299

Host *
    IdentityFile /keys/star_key
"""

INVENTORY = """\
all:
  hosts:
    web1:
    web2:
    inv1:
      ansible_host: 10.9.9.9
      ansible_port: 2300
      ansible_user: invuser
      ansible_ssh_private_key_file: /keys/inv_key
    alias1:
      ansible_host: 10.0.0.99
      ansible_ssh_host: 10.0.0.7
      ansible_port: 2999
      ansible_ssh_port: 2400
      ansible_user: loser
      ansible_ssh_user: aliasuser
      ansible_private_key_file: /keys/alias_key
      port: 8080
      user: app
    here:
      ansible_connection: local
"""


@pytest.fixture
def ssh_config(tmp_path):
    path = tmp_path / "ssh_config"
    path.write_text(SSH_CONFIG)
    return str(path)


@pytest.fixture
def inv(tmp_path):
    path = tmp_path / "inv.yml"
    path.write_text(INVENTORY)
    return Inventory.load([str(path)])


def one(inv, name, **opts) -> Target:
    [target] = resolve(inv, [name], Options(**opts))
    return target


# ------------------------------------------------------------------ defaults
def test_defaults_without_any_config(inv):
    t = one(inv, "web2")
    assert t == Target("web2", "web2", 22, getpass.getuser(), (), "ssh", connect_timeout=DEFAULT_CONNECT_TIMEOUT,
                       keepalive=Options().keepalive, host_key_policy="strict")


def test_default_ssh_config_is_read_from_home(inv, isolated_home):
    ssh_dir = isolated_home / ".ssh"
    ssh_dir.mkdir()
    (ssh_dir / "config").write_text("Host web2\n    User homeuser\n")
    assert one(inv, "web2").user == "homeuser"


# ------------------------------------------------------------------ ssh_config
def test_ssh_config_applies(inv, ssh_config):
    t = one(inv, "web1", ssh_config=ssh_config)
    assert t.hostname == "web1.internal.example"
    assert t.port == 2201
    assert t.user == "cfguser"
    assert t.identity_files == ("/keys/cfg_key", "/keys/star_key")


def test_ssh_config_star_block_only(inv, ssh_config):
    t = one(inv, "web2", ssh_config=ssh_config)
    assert (t.hostname, t.port, t.user) == ("web2", 22, getpass.getuser())
    assert t.identity_files == ("/keys/star_key",)


def test_ssh_config_identity_file_tilde_expanded(inv, tmp_path, isolated_home):
    cfg = tmp_path / "cfg"
    cfg.write_text("Host web2\n    IdentityFile ~/.ssh/special\n")
    t = one(inv, "web2", ssh_config=str(cfg))
    assert t.identity_files == (os.path.join(str(isolated_home), ".ssh", "special"),)


def test_explicit_missing_ssh_config_is_a_usage_error(inv, tmp_path):
    with pytest.raises(UsageError) as info:
        one(inv, "web1", ssh_config=str(tmp_path / "nope"))
    assert "nope" in str(info.value)
    assert info.value.exit_code == ExitCode.USAGE


# ------------------------------------------------------------------ CLI flags
def test_options_beat_ssh_config(inv, ssh_config):
    t = one(inv, "web1", ssh_config=ssh_config, user="cliuser", port=2022, identity_files=("/keys/cli_key",))
    assert t.user == "cliuser"
    assert t.port == 2022
    assert t.hostname == "web1.internal.example", "no CLI flag for the host name: ssh_config still applies"
    assert t.identity_files == ("/keys/cli_key", "/keys/cfg_key", "/keys/star_key")


def test_options_beat_defaults(inv):
    t = one(inv, "web2", user="cliuser", port=2022)
    assert (t.user, t.port) == ("cliuser", 2022)


# ------------------------------------------------------------------ inventory vars
def test_inventory_vars_beat_options_and_ssh_config(inv, ssh_config):
    t = one(inv, "inv1", ssh_config=ssh_config, user="cliuser", port=2022, identity_files=("/keys/cli_key",))
    assert t.hostname == "10.9.9.9"
    assert t.port == 2300
    assert t.user == "invuser"
    # identity files accumulate, inventory's first
    assert t.identity_files == ("/keys/inv_key", "/keys/cli_key", "/keys/star_key")


def test_ssh_config_fills_what_inventory_leaves_unset(tmp_path, ssh_config):
    # Like Ansible (which runs "ssh <ansible_host>"), ssh_config is matched on the real address.
    path = tmp_path / "inv.yml"
    path.write_text(textwrap.dedent("""\
        all:
          hosts:
            box:
              ansible_host: 10.9.9.9
        """))
    inv = Inventory.load([str(path)])
    t = one(inv, "box", ssh_config=ssh_config)
    assert (t.hostname, t.user, t.port) == ("10.9.9.9", "ipuser", 2299)


def test_ansible_ssh_names_win_and_short_names_are_ordinary(inv, ssh_config):
    """ansible_ssh_host/port/user beat ansible_host/port/user (Ansible's ssh plugin);
    ansible_private_key_file is the key; plain port/user are an application's variables."""
    t = one(inv, "alias1", ssh_config=ssh_config, user="cliuser", port=2022)
    assert (t.hostname, t.port, t.user) == ("10.0.0.7", 2400, "aliasuser")
    assert t.identity_files[0] == "/keys/alias_key"


def test_group_vars_beat_options(tmp_path):
    path = tmp_path / "inv.yml"
    path.write_text(textwrap.dedent("""\
        web:
          vars:
            ansible_user: groupuser
          hosts:
            w1:
        """))
    inv = Inventory.load([str(path)])
    assert one(inv, "w1", user="cliuser").user == "groupuser"


def test_identity_files_deduplicated(inv, ssh_config):
    t = one(inv, "web1", ssh_config=ssh_config, identity_files=("/keys/cfg_key",))
    assert t.identity_files == ("/keys/cfg_key", "/keys/star_key")


def test_resolve_keeps_order_of_names(inv):
    names = ["web2", "web1", "inv1"]
    assert [t.name for t in resolve(inv, names, Options())] == names


# ------------------------------------------------------------------ local connection
def test_local_connection_target(inv, ssh_config):
    t = one(inv, "here", ssh_config=ssh_config)
    assert t.connection == "local"
    assert t.hostname == "here"
    assert t.identity_files == (), "ssh_config must not apply to local hosts"


def test_only_local_hosts_do_not_need_ssh_config(inv, tmp_path):
    # An explicitly missing ssh config is only an error when some host needs ssh.
    [t] = resolve(inv, ["here"], Options(ssh_config=str(tmp_path / "missing")))
    assert t.connection == "local"


def test_embedded_default_inventory_is_local():
    from hostops.inventory import default_inventory_path

    inv = Inventory.load([default_inventory_path()])
    [t] = resolve(inv, inv.select("all"), Options())
    assert (t.name, t.connection) == ("localhost", "local")


@pytest.mark.parametrize("conn", ["ssh", "paramiko", "smart"])
def test_ssh_like_connections_become_ssh(tmp_path, conn):
    path = tmp_path / "inv.yml"
    path.write_text(f"all:\n  hosts:\n    h1:\n      ansible_connection: {conn}\n")
    assert one(Inventory.load([str(path)]), "h1").connection == "ssh"


# ------------------------------------------------------------------ Target
def test_known_hosts_name_port_22():
    assert Target("web1", "web1.example.com", 22).known_hosts_name == "web1.example.com"


def test_known_hosts_name_other_port():
    assert Target("web1", "web1.example.com", 2222).known_hosts_name == "[web1.example.com]:2222"
    assert Target("ip", "10.0.0.1", 2200).known_hosts_name == "[10.0.0.1]:2200"


def test_known_hosts_name_uses_resolved_hostname(inv):
    t = one(inv, "inv1")
    assert t.known_hosts_name == "[10.9.9.9]:2300"


def test_target_is_frozen_and_picklable():
    t = Target("a", "a.example", 22, "u", ("/k",), "ssh")
    assert pickle.loads(pickle.dumps(t)) == t
    with pytest.raises(Exception):
        t.port = 23  # type: ignore[misc]
    expected = {"name": "a", "hostname": "a.example", "port": 22, "user": "u", "identity_files": ("/k",),
                "connection": "ssh", "jump": [], "host_key_alias": None}
    assert {k: v for k, v in t.to_json().items() if k in expected} == expected


# ------------------------------------------------------------------ Options validation
def test_options_defaults():
    o = Options()
    assert o.forks == DEFAULT_FORKS
    assert o.host_key_policy == "strict"
    assert o.timeout is None
    assert pickle.loads(pickle.dumps(o)) == o


@pytest.mark.parametrize("kwargs, flag", [
    ({"forks": 0}, "--forks"),
    ({"forks": -5}, "--forks"),
    ({"processes": 0}, "--processes"),
    ({"connect_timeout": 0}, "--connect-timeout"),
    ({"connect_timeout": -1.0}, "--connect-timeout"),
    ({"timeout": 0}, "--timeout"),
    ({"timeout": -2.5}, "--timeout"),
    ({"host_key_policy": "yolo"}, "--host-key-policy"),
    ({"host_key_policy": "accept_new"}, "--host-key-policy"),
])
def test_options_validation(kwargs, flag):
    with pytest.raises(UsageError) as info:
        Options(**kwargs)
    assert flag in str(info.value)
    assert info.value.exit_code == ExitCode.USAGE


@pytest.mark.parametrize("policy", ["strict", "accept-new", "off"])
def test_valid_host_key_policies(policy):
    assert Options(host_key_policy=policy).host_key_policy == policy


def test_valid_edge_values():
    o = Options(forks=1, processes=1, connect_timeout=0.5, timeout=0.1)
    assert (o.forks, o.processes, o.connect_timeout, o.timeout) == (1, 1, 0.5, 0.1)


def test_known_hosts_files(isolated_home):
    assert Options().known_hosts_files() == (os.path.join(str(isolated_home), ".ssh", "known_hosts"),)
    assert Options(known_hosts=("/a", "~/b")).known_hosts_files() == (
        "/a", os.path.join(str(isolated_home), "b"))


# ------------------------------------------------------------------ resolved once, in the parent
def test_every_target_field_is_the_effective_value(inv, tmp_path):
    """No field is left None for a worker to complete from the run's options: ssh_config's
    value where it has one, else the flag's (or its default); a flag given beats ssh_config."""
    cfg = tmp_path / "cfg"
    cfg.write_text("Host web1\n    ConnectTimeout 42\n    ServerAliveInterval 7\n    StrictHostKeyChecking no\n"
                   "Host web2\n    ConnectTimeout 0\n")
    web1 = one(inv, "web1", ssh_config=str(cfg), connect_timeout=3.0, keepalive=4.0, host_key_policy="accept-new")
    assert (web1.connect_timeout, web1.keepalive, web1.host_key_policy) == (42.0, 7.0, "off")
    web2 = one(inv, "web2", ssh_config=str(cfg), connect_timeout=3.0, keepalive=0.0)
    assert (web2.connect_timeout, web2.keepalive, web2.host_key_policy) == (3.0, 0.0, "strict")  # 0: none
    given = one(inv, "web1", ssh_config=str(cfg), connect_timeout=3.0, keepalive=4.0, host_key_policy="strict",
                explicit=("connect_timeout", "keepalive", "host_key_policy"))
    assert (given.connect_timeout, given.keepalive, given.host_key_policy) == (3.0, 4.0, "strict")
    assert one(inv, "web2", known_hosts=("/kh",)).known_hosts == ("/kh",)
    for t in (web1, web2, given):
        assert all(getattr(t, f) is not None for f in ("connect_timeout", "keepalive", "host_key_policy"))


def test_jump_hosts_and_local_hosts_are_resolved_too(inv, tmp_path):
    [t] = resolve(inv, ["web2"], Options(jump="bastion", connect_timeout=5.0))
    assert t.jump and t.jump[0].connect_timeout == 5.0 and t.jump[0].host_key_policy == "strict"
    local = Target("l", "localhost", connection="local")
    assert complete_target(local, Options(connect_timeout=2.0)).connect_timeout == 2.0


def test_complete_target_keeps_a_resolved_target_as_it_is():
    t = Target("h", "h", connect_timeout=1.0, keepalive=0.0, host_key_policy="off")
    assert complete_target(t, Options(connect_timeout=9.0, host_key_policy="strict")) is t
    bare = complete_target(Target("h", "h"), Options(connect_timeout=9.0, keepalive=3.0, known_hosts=("/k",)))
    assert (bare.connect_timeout, bare.keepalive, bare.host_key_policy, bare.known_hosts) == (9.0, 3.0, "strict",
                                                                                            ("/k",))


def test_run_options_and_host_defaults_are_separate_views(monkeypatch):
    monkeypatch.setenv("HOSTOPS_START_METHOD", "spawn")
    o = Options(forks=3, user="u", connect_timeout=2.0, timeout=9.0, sudo=True)
    run = o.run_options()
    assert (run.forks, run.start_method) == (3, "spawn")   # the environment is read once, here
    hosts = o.host_defaults()
    assert (hosts.user, hosts.connect_timeout) == ("u", 2.0)
    for view in (run, hosts):  # an action's own timeout and sudo belong to neither
        assert not hasattr(view, "timeout") and not hasattr(view, "sudo")


def test_a_bad_start_method_is_a_usage_error_wherever_it_comes_from(monkeypatch):
    """HOSTOPS_START_METHOD=bogus used to be 'internal error … please report it' (exit 1)
    from the pool: it is the operator's mistake, exit 2, for library callers too."""
    from hostops.pool import Pool

    monkeypatch.setenv("HOSTOPS_START_METHOD", "bogus")
    with pytest.raises(UsageError) as info:
        Pool(Options(), host_count=1)
    assert info.value.exit_code == ExitCode.USAGE and "HOSTOPS_START_METHOD='bogus'" in str(info.value)
    monkeypatch.delenv("HOSTOPS_START_METHOD")
    with pytest.raises(UsageError):
        Options(start_method="bogus")
