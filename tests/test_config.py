"""Issue 14, "Configuration, so every run does not repeat itself": the config file, the HOSTOPS_*
environment defaults, their precedence (flag > environment > config file > built-in default),
``hostops config``, file:line errors, and the refusal of a ./hostops.yml others could have
written. The CLI runs in a subprocess with cwd = the isolated HOME (the ``hostops`` fixture),
so ./hostops.yml there is "the current directory's"."""
from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
import threading

import click
import pytest

from conftest import ROOT
from hostops import config as cfg

pytestmark = pytest.mark.timeout(180)


def write_config(path, text: str, mode: int = 0o600) -> str:
    path = str(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        fh.write(text)
    os.chmod(path, mode)
    return path


def settings(run) -> dict:
    assert run.code == 0, run
    return json.loads(run.out)


@pytest.fixture
def local_inv(tmp_path):
    path = tmp_path / "local.yml"
    path.write_text("all:\n  hosts:\n    one: {ansible_connection: local}\n    two: {ansible_connection: local}\n")
    return str(path)


# ------------------------------------------------------------------ reading and checking a file
def test_keys_values_and_lines(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write_config(tmp_path / "conf" / "c.yml",
                        "# comment\ninventory: [hosts.yml, /abs/more.yml]\nforks: 20\nuser: deploy\n"
                        "identity: ~/.ssh/deploy\nknown_hosts: kh\nhost_key_policy: accept-new\n"
                        "connect_timeout: 2.5\noutput: json\ncolor: never\n")
    config = cfg.load({"HOSTOPS_CONFIG": path})
    assert config.path == path and config.found_as == "HOSTOPS_CONFIG"
    base = str(tmp_path / "conf")
    assert config.values == {
        "inventory": (os.path.join(base, "hosts.yml"), "/abs/more.yml"), "forks": 20, "user": "deploy",
        "identity": (os.path.expanduser("~/.ssh/deploy"),), "known_hosts": (os.path.join(base, "kh"),),
        "host_key_policy": "accept-new", "connect_timeout": 2.5, "output": "json", "color": "never"}
    assert config.lines["inventory"] == 2 and config.lines["color"] == 10
    assert config.where("forks") == f"{path}:3"
    defaults = config.param_defaults()  # click parameter → default (lists for multiple options)
    assert defaults["known_hosts"] == [os.path.join(base, "kh")] and defaults["forks"] == 20
    assert "inventories" not in defaults  # read when a command needs hosts (keys forget must not)


@pytest.mark.parametrize("text, line, needle", [
    ("forks: 5\nforkz: 3\n", 2, "unknown key 'forkz'; did you mean 'forks'?"),
    ("knownhosts: x\n", 1, "did you mean 'known_hosts'?"),
    ("password: hunter2\n", 1, "unknown key 'password'; known keys: inventory, forks"),
    ("forks: ten\n", 1, "forks: expected a whole number of at least 1; got a string ('ten')"),
    ("forks: 0\n", 1, "got the number 0"),
    ("forks: true\n", 1, "got true"),
    ("connect_timeout: -1\n", 1, "connect_timeout: expected a number of seconds above 0"),
    ("user: 1234\n", 1, "user: expected a string; got the number 1234 (quote it)"),
    ("inventory: []\n", 1, "got an empty list"),
    ("inventory: [a.yml, {x: 1}]\n", 1, "got a mapping"),
    ("host_key_policy: off\n", 1, "YAML reads off/no/on/yes as true/false: quote the word"),
    ("host_key_policy: maybe\n", 1, "expected one of strict, accept-new, off; got a string ('maybe')"),
    ("output: table\n", 1, "expected one of text, json, stream, gather, quiet"),
    ("log:\n", 1, "log: expected a file or directory path; got nothing"),
    ("- forks: 3\n", 1, "a config file is a mapping of settings"),
    ("forks: [1\n", 2, "YAML syntax error"),
])
def test_bad_file_names_file_and_line(tmp_path, text, line, needle):
    path = write_config(tmp_path / "c.yml", text)
    with pytest.raises(cfg.ConfigError) as info:
        cfg.load({"HOSTOPS_CONFIG": path})
    assert str(info.value).startswith(f"{path}:{line}: "), str(info.value)
    assert needle in str(info.value)
    assert "hunter2" not in str(info.value)


def test_empty_file_and_dev_null_set_nothing(tmp_path):
    path = write_config(tmp_path / "c.yml", "# nothing yet\n")
    assert cfg.load({"HOSTOPS_CONFIG": path}).values == {}
    assert cfg.load({"HOSTOPS_CONFIG": os.devnull}).values == {}


def test_named_file_that_does_not_exist_is_an_error(tmp_path):
    with pytest.raises(cfg.ConfigError, match="HOSTOPS_CONFIG=.*: no such config file"):
        cfg.load({"HOSTOPS_CONFIG": str(tmp_path / "nope.yml")})


def test_search_order(tmp_path, monkeypatch):
    """$HOSTOPS_CONFIG, else ./hostops.yml, else $XDG_CONFIG_HOME/hostops/config.yml; the first found only."""
    monkeypatch.chdir(tmp_path)
    xdg = tmp_path / "xdg"
    user = write_config(xdg / "hostops" / "config.yml", "forks: 1\n")
    named = write_config(tmp_path / "named.yml", "forks: 3\n")
    env = {"XDG_CONFIG_HOME": str(xdg)}
    assert (cfg.load(env).path, cfg.load(env).values) == (user, {"forks": 1})
    write_config(tmp_path / "hostops.yml", "forks: 2\n", 0o644)
    assert cfg.load(env).values == {"forks": 2} and cfg.load(env).found_as == "current directory"
    assert cfg.load(dict(env, HOSTOPS_CONFIG=named)).values == {"forks": 3}
    assert cfg.user_config_path({"XDG_CONFIG_HOME": "relative/dir"}) == os.path.expanduser(
        "~/.config/hostops/config.yml")  # the XDG spec: a relative value is ignored


# ------------------------------------------------------------------ ./hostops.yml must be private
@pytest.fixture
def cwd(tmp_path, monkeypatch):
    where = tmp_path / "project"
    where.mkdir(mode=0o755)
    os.chmod(where, 0o755)
    monkeypatch.chdir(where)
    return where


def test_private_file_in_private_directory_is_read(cwd):
    write_config(cwd / "hostops.yml", "forks: 4\n", 0o644)
    config = cfg.load({})
    assert config.values == {"forks": 4} and config.warnings == []


@pytest.mark.parametrize("mode", [0o666, 0o646, 0o664])
def test_file_writable_by_others_is_ignored(cwd, mode):
    write_config(cwd / "hostops.yml", "forks: 4\n", mode)
    config = cfg.load({"XDG_CONFIG_HOME": str(cwd / "none")})
    assert config.values == {} and config.path is None
    (warning,) = config.warnings
    assert warning == "ignoring ./hostops.yml: it is writable by group or others (fix: chmod go-w ./hostops.yml)"


@pytest.mark.parametrize("mode", [0o777, 0o775])
def test_directory_writable_by_others_without_sticky_bit_is_refused(cwd, mode):
    write_config(cwd / "hostops.yml", "forks: 4\n", 0o600)
    os.chmod(cwd, mode)
    config = cfg.load({"XDG_CONFIG_HOME": str(cwd / "none")})
    assert config.values == {}
    assert "writable by group or others without the sticky bit" in config.warnings[0]
    os.chmod(cwd, 0o1777)  # like /tmp: only the owner can replace the file
    assert cfg.load({}).values == {"forks": 4}


def test_symbolic_link_is_not_followed(cwd):
    real = write_config(cwd.parent / "elsewhere.yml", "forks: 4\n")
    os.symlink(real, cwd / "hostops.yml")
    config = cfg.load({"XDG_CONFIG_HOME": str(cwd / "none")})
    assert config.values == {} and "is a symbolic link" in config.warnings[0]


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_file_owned_by_someone_else_is_ignored(cwd):
    path = write_config(cwd / "hostops.yml", "forks: 4\n", 0o644)
    nobody = pwd.getpwnam("nobody")
    os.chown(path, nobody.pw_uid, nobody.pw_gid)
    config = cfg.load({"XDG_CONFIG_HOME": str(cwd / "none")})
    assert config.values == {}
    assert config.warnings == [f"ignoring ./hostops.yml: it is owned by uid {nobody.pw_uid}, not by you (uid 0)"]


def test_ignored_file_falls_through_to_the_user_config(cwd):
    write_config(cwd / "hostops.yml", "forks: 4\n", 0o666)
    user = write_config(cwd.parent / "xdg" / "hostops" / "config.yml", "forks: 6\n")
    config = cfg.load({"XDG_CONFIG_HOME": str(cwd.parent / "xdg")})
    assert config.path == user and config.values == {"forks": 6} and len(config.warnings) == 1


def test_refused_file_through_the_cli_warns_and_does_not_apply(hostops, isolated_home, local_inv):
    write_config(isolated_home / "hostops.yml", f"inventory: {local_inv}\n", 0o666)
    run = hostops("exec", "echo hi")
    assert run.code == 2, run
    assert "hostops: warning: ignoring ./hostops.yml: it is writable by group or others" in run.err
    assert "no inventory given" in run.err


# ------------------------------------------------------------------ the CLI: precedence and sources
def test_precedence_flag_env_file_default(hostops, isolated_home):
    write_config(isolated_home / "hostops.yml", "forks: 7\nuser: from-file\n", 0o644)
    both = settings(hostops("config", "--json"))["settings"]
    assert both["forks"] == {"value": 7, "source": "config", "where": "./hostops.yml:1", "note": None}
    assert both["user"]["value"] == "from-file" and both["user"]["where"] == "./hostops.yml:2"
    assert both["connect_timeout"] == {"value": 10.0, "source": "default", "where": None, "note": None}
    env = settings(hostops("config", "--json", env={"HOSTOPS_FORKS": "9", "HOSTOPS_USER": "from-env"}))["settings"]
    assert env["forks"] == {"value": 9, "source": "env", "where": "$HOSTOPS_FORKS", "note": None}
    assert env["user"]["value"] == "from-env"
    flag = settings(hostops("config", "--json", "-f", "3", "--user", "from-flag",
                            env={"HOSTOPS_FORKS": "9", "HOSTOPS_USER": "from-env"}))["settings"]
    assert flag["forks"] == {"value": 3, "source": "flag", "where": "--forks", "note": None}
    assert flag["user"] == {"value": "from-flag", "source": "flag", "where": "--user", "note": None}


def test_precedence_reaches_the_resolved_hosts(hostops, isolated_home, tmp_path):
    """Not only `hostops config`: what a command resolves follows the same order."""
    ssh_inv = tmp_path / "ssh.yml"
    ssh_inv.write_text("all:\n  hosts:\n    web1: {ansible_host: 127.0.0.1}\n")
    write_config(isolated_home / "hostops.yml", f"inventory: {ssh_inv}\nuser: from-file\n", 0o644)

    def user(*args: str, env=None) -> str:
        run = hostops("inventory", "--json", *args, env=env)
        assert run.code == 0, run
        return json.loads(run.out)["_meta"]["hostvars"]["web1"]["hostops_connection"]["user"]
    assert user() == "from-file"
    assert user(env={"HOSTOPS_USER": "from-env"}) == "from-env"
    assert user("-u", "from-flag", env={"HOSTOPS_USER": "from-env"}) == "from-flag"


def test_config_text_shows_each_source(hostops, isolated_home):
    write_config(isolated_home / "hostops.yml", "forks: 7\ncolor: always\n", 0o644)
    run = hostops("config", "--user", "ops", env={"HOSTOPS_LOG": "/tmp/x.jsonl"})
    assert run.code == 0, run
    lines = run.out.splitlines()
    assert lines[0] == "# config file: ./hostops.yml (current directory)"
    row = {ln.split(":", 1)[0]: ln for ln in lines[1:]}
    assert row["forks"].split() == ["forks:", "7", "#", "./hostops.yml:1"]
    assert row["color"].split() == ["color:", "always", "#", "./hostops.yml:2"]
    assert row["user"].split() == ["user:", "ops", "#", "flag", "--user"]
    assert row["log"].split() == ["log:", "/tmp/x.jsonl", "#", "env", "$HOSTOPS_LOG"]
    assert row["host_key_policy"].split() == ["host_key_policy:", "strict", "#", "default"]
    assert set(row) == {k.name for k in cfg.KEYS}


def test_config_without_any_file_says_where_it_looked(hostops, isolated_home):
    run = hostops("config", env={"XDG_CONFIG_HOME": str(isolated_home / "xdg")})
    assert run.code == 0, run
    assert run.out.splitlines()[0] == ("# config file: none (looked for $HOSTOPS_CONFIG, ./hostops.yml, "
                                       f"{isolated_home}/xdg/hostops/config.yml)")
    data = settings(hostops("config", "--json"))
    assert data["config_file"] is None and data["settings"]["inventory"]["value"] is None


def test_user_config_and_named_config_through_the_cli(hostops, isolated_home, tmp_path):
    write_config(isolated_home / ".config" / "hostops" / "config.yml", "forks: 11\n")
    assert settings(hostops("config", "--json"))["settings"]["forks"]["value"] == 11
    named = write_config(tmp_path / "cron.yml", "forks: 12\n")
    data = settings(hostops("config", "--json", env={"HOSTOPS_CONFIG": named}))
    assert data["config_file"] == named and data["settings"]["forks"]["where"] == f"{named}:1"
    xdg = write_config(tmp_path / "x" / "hostops" / "config.yml", "forks: 13\n")
    data = settings(hostops("config", "--json", env={"XDG_CONFIG_HOME": str(tmp_path / "x")}))
    assert data["config_file"] == xdg and data["settings"]["forks"]["value"] == 13


@pytest.mark.parametrize("command", [["exec", "touch {marker}"], ["config"], ["inventory"]])
def test_bad_config_is_one_line_exit_2_and_nothing_runs(hostops, isolated_home, local_inv, tmp_path, command):
    marker = tmp_path / "marker"
    write_config(isolated_home / "hostops.yml", f"inventory: {local_inv}\nforks: 5\nknown_host: x\n", 0o644)
    run = hostops(*[a.format(marker=marker) for a in command])
    assert run.code == 2, run
    assert run.err.splitlines() == ["hostops: error: ./hostops.yml:3: unknown key 'known_host'; "
                                    "did you mean 'known_hosts'?"]
    assert run.out == "" and not marker.exists()


def test_bad_environment_value_is_exit_2(hostops, local_inv):
    run = hostops("exec", "true", "-i", local_inv, env={"HOSTOPS_FORKS": "many"})
    assert run.code == 2, run
    assert "HOSTOPS_FORKS" in run.err and "'many'" in run.err


def test_inventory_list_in_environment_is_colon_separated(hostops, tmp_path, local_inv):
    other = tmp_path / "other.yml"
    other.write_text("all:\n  hosts:\n    three: {ansible_connection: local}\n")
    run = hostops("exec", "true", "--json", env={"HOSTOPS_INVENTORY": f"{local_inv}{os.pathsep}{other}"})
    assert run.code == 0, run
    assert sorted(r["host"] for r in run.json_lines()) == ["one", "three", "two"]


def test_adhoc_hosts_replace_the_configured_inventory(hostops, isolated_home, local_inv):
    """-H without -i means those hosts only, as before: the config's inventory is not added."""
    write_config(isolated_home / "hostops.yml", f"inventory: {local_inv}\n", 0o644)
    run = hostops("inventory", "-H", "10.9.9.9", "--json")
    assert run.code == 0, run
    assert list(json.loads(run.out)["_meta"]["hostvars"]) == ["10.9.9.9"]
    both = hostops("inventory", "-i", local_inv, "-H", "10.9.9.9", "--json")
    assert sorted(json.loads(both.out)["_meta"]["hostvars"]) == ["10.9.9.9", "one", "two"]


def test_output_mode_from_config_and_a_flag_wins(hostops, isolated_home, local_inv):
    write_config(isolated_home / "hostops.yml", f"inventory: {local_inv}\noutput: json\n", 0o644)
    run = hostops("exec", "echo hi")
    assert run.code == 0, run
    assert sorted(r["host"] for r in run.json_lines()) == ["one", "two"]
    gathered = hostops("exec", "echo hi", "-b")  # a flag beats the file, and is no conflict with it
    assert gathered.code == 0, gathered
    assert not gathered.out.lstrip().startswith("{") and "hi" in gathered.out
    text = hostops("exec", "echo hi", "--output", "text")
    assert text.code == 0 and not text.out.lstrip().startswith("{"), text
    both = hostops("exec", "echo hi", "--output", "stream", "--json")
    assert both.code == 2 and "--json, --output stream cannot be combined" in both.err, both


def test_log_and_state_dir_from_config(hostops, isolated_home, local_inv, tmp_path):
    state = tmp_path / "state-here"
    write_config(isolated_home / "hostops.yml", f"inventory: {local_inv}\nstate_dir: {state}\n", 0o644)
    run = hostops("exec", "test $(hostname) = never-this-name", "-q")
    assert run.code == 5, run
    from hostops.state import state_path

    state_file = state_path(None, [str(local_inv)], (), str(state))  # this inventory's own, in state_dir
    assert os.path.dirname(state_file) == str(state)
    assert json.loads(open(state_file).read())["hosts"] == {"one": "failed", "two": "failed"}
    with open(state_file, "w") as fh:
        fh.write(json.dumps({"time": 0, "what": "x", "hosts": {"two": "failed"}}))
    rerun = hostops("inventory", "-l", "@failed", "--json")  # @failed reads the configured state_dir
    assert rerun.code == 0, rerun
    assert list(json.loads(rerun.out)["_meta"]["hostvars"]) == ["two"]
    log = tmp_path / "run.jsonl"
    logged = hostops("exec", "true", "-q", env={"HOSTOPS_LOG": str(log)})
    assert logged.code == 0, logged
    assert log.exists() and (tmp_path / "run.jsonl.last-run.json").exists()  # beside --log, as before


def test_identity_from_config_is_checked_naming_the_config_line(hostops, isolated_home, local_inv):
    write_config(isolated_home / "hostops.yml", f"inventory: {local_inv}\nidentity: ~/no-such-key\n", 0o644)
    run = hostops("exec", "true")
    assert run.code == 2, run
    assert run.err.splitlines() == [f"hostops: error: identity (./hostops.yml:2) {isolated_home}/no-such-key: "
                                    "no such file"]


# ------------------------------------------------------------------ colour: handed to a --color option
def test_color_reaches_a_color_option_through_default_map():
    """Another change adds --color; a command with a parameter named ``color`` gets the key
    as its default, whatever other parameters it has."""
    seen = {}

    @click.group()
    def group() -> None:
        pass

    @group.command("exec")
    @click.option("--color", type=click.Choice(["auto", "always", "never"]), default="auto")
    @click.option("-f", "--forks", type=int, default=50)
    def exec_cmd(color: str, forks: int) -> None:
        seen.update(color=color, forks=forks)

    @group.command("other")
    def other() -> None:
        pass

    values = {"color": "never", "forks": 8, "user": "x"}
    dmap = cfg.default_map(group, values)
    assert dmap == {"exec": {"color": "never", "forks": 8}, "other": {}}
    group.main(["exec"], standalone_mode=False, default_map=dmap)
    assert seen == {"color": "never", "forks": 8}
    group.main(["exec", "--color", "always"], standalone_mode=False, default_map=dmap)
    assert seen["color"] == "always"


# ------------------------------------------------------------------ announcing ./hostops.yml
def test_local_config_is_announced_on_a_terminal_only(hostops, isolated_home, local_inv):
    write_config(isolated_home / "hostops.yml", f"inventory: {local_inv}\n", 0o644)
    quiet = hostops("exec", "true")  # stderr is a pipe, as under cron
    assert quiet.code == 0, quiet
    assert "using config" not in quiet.err
    code, err = run_with_terminal_stderr(["exec", "true", "--no-progress"], isolated_home)
    assert code == 0, err
    assert "hostops: using config ./hostops.yml" in err


def run_with_terminal_stderr(args, home) -> tuple:
    """The CLI with stderr on a pseudo-terminal (stdlib pty): (exit code, what stderr showed)."""
    master, slave = os.openpty()
    env = dict(os.environ, HOME=str(home), PYTHONPATH=ROOT, TERM="dumb")
    proc = subprocess.Popen([sys.executable, "-m", "hostops", *args], cwd=str(home), env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    chunks = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: _read_pty(master), b"")), daemon=True)
    reader.start()
    code = proc.wait(timeout=120)
    reader.join(timeout=30)
    os.close(master)
    return code, b"".join(chunks).decode("utf-8", "replace")


def _read_pty(fd: int) -> bytes:
    try:
        return os.read(fd, 4096)
    except OSError:  # EIO once the child's side is closed: the end
        return b""


# ------------------------------------------------------------------ a real run, configured only by the file
def test_real_ssh_run_configured_only_by_the_file(hostops, lab, isolated_home, known_hosts, tmp_path):
    """Inventory (hosts with neither user nor key), user, identity, known_hosts, forks and
    output all come from ./hostops.yml; HOME has no keys, no known_hosts and no agent, so the
    run succeeds only if each was applied. forks: 1 shows in the order of the hosts' work."""
    inv = tmp_path / "bare.yml"
    hosts = "".join(f"    {e['name']}: {{ansible_host: {e['ansible_host']}, ansible_port: {e['ansible_port']}}}\n"
                    for e in lab.host_entries(4))
    inv.write_text("all:\n  hosts:\n" + hosts)
    trace = tmp_path / "trace"
    write_config(isolated_home / "hostops.yml",
                 f"inventory: {inv}\nuser: {lab.user}\nidentity: {lab.user_key}\nknown_hosts: {known_hosts}\n"
                 "forks: 1\noutput: json\n", 0o644)
    command = f"echo start >> {trace}; sleep 0.2; echo end >> {trace}; echo configured"
    run = hostops("exec", command)
    assert run.code == 0, run
    lines = run.json_lines()
    assert sorted(r["host"] for r in lines) == ["h001", "h002", "h003", "h004"]
    assert {r["stdout"] for r in lines} == {"configured\n"}
    assert trace.read_text().split() == ["start", "end"] * 4  # one host at a time: forks 1

    wrong = write_config(tmp_path / "wrong.yml", f"inventory: {inv}\nuser: nosuchuser\nidentity: {lab.user_key}\n"
                         f"known_hosts: {known_hosts}\noutput: json\n")
    refused = hostops("exec", "true", env={"HOSTOPS_CONFIG": wrong})
    assert refused.code == 4, refused  # the file's user was used: it does not exist on the lab
    assert {r["status"] for r in refused.json_lines()} == {"unreachable"}
    fixed = hostops("exec", "true", "-u", lab.user, env={"HOSTOPS_CONFIG": wrong})
    assert fixed.code == 0, fixed  # a flag wins over the file
    via_env = hostops("exec", "true", env={"HOSTOPS_CONFIG": wrong, "HOSTOPS_USER": lab.user})
    assert via_env.code == 0, via_env  # and so does the environment


# ------------------------------------------------------------------ a default inventory is for commands that need hosts
def test_keys_forget_name_does_not_forget_the_default_inventory(hostops, lab, isolated_home, inventory, known_hosts):
    """keys forget takes -i only to add hosts to forget: a configured or $HOSTOPS_INVENTORY
    inventory must not turn 'forget this one name' into 'forget every host'."""
    inv = inventory(8)
    write_config(isolated_home / "hostops.yml", f"inventory: {inv}\nknown_hosts: {known_hosts}\n", 0o644)
    before = [ln for ln in open(known_hosts).read().splitlines() if ln.strip()]
    one = f"[127.0.0.1]:{lab.port}"
    assert sum(ln.startswith(one + " ") for ln in before) >= 1
    run = hostops("keys", "forget", one, env={"HOSTOPS_INVENTORY": inv})
    assert run.code == 0, run
    after = [ln for ln in open(known_hosts).read().splitlines() if ln.strip()]
    assert not any(ln.startswith(one + " ") for ln in after)
    assert len(after) == len(before) - sum(ln.startswith(one + " ") for ln in before)  # the rest is kept


@pytest.mark.parametrize("where", ["env", "file"])
def test_missing_default_inventory_says_who_named_it(hostops, isolated_home, tmp_path, where):
    missing = str(tmp_path / "gone.yml")
    env = {"HOSTOPS_INVENTORY": missing} if where == "env" else None
    if where == "file":
        write_config(isolated_home / "hostops.yml", f"forks: 3\ninventory: {missing}\n", 0o644)
    run = hostops("exec", "true", env=env)
    assert run.code == 2, run
    named_by = "$HOSTOPS_INVENTORY" if where == "env" else "./hostops.yml:2"
    assert run.err.splitlines() == [f"hostops: error: {missing}: no such inventory file (named by {named_by}); "
                                    "fix it there, or give -i"]


@pytest.mark.parametrize("how", ["file", "flag"])
def test_stream_mode_from_config_or_output_flag_streams_lines(hostops, isolated_home, local_inv, how):
    """output: stream (or --output stream) is --stream: each line as it comes, prefixed 'host: '."""
    text = f"inventory: {local_inv}\n" + ("output: stream\n" if how == "file" else "")
    write_config(isolated_home / "hostops.yml", text, 0o644)
    run = hostops("exec", "echo first; echo second", *([] if how == "file" else ["--output", "stream"]))
    assert run.code == 0, run
    assert sorted(run.out.splitlines()) == ["one: first", "one: second", "two: first", "two: second"]
