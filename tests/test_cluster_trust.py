"""What travels with --cluster and what does not: passwords only with --send-secrets and never
in clear off this machine; --sudo-pass-env read on the worker; paths resolved on the worker
(relative ones refused); host keys learned with accept-new written once, by the client; TLS."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

pytest.importorskip("distributed")
from clusterlab import CliCluster, LabCluster, hostops_env, make_tls  # noqa: E402  (after importorskip)

pytestmark = pytest.mark.timeout(600)


def run(args, home, env=None, timeout=300):
    proc = subprocess.run([sys.executable, "-m", "hostops", *args], capture_output=True, text=True, timeout=timeout,
                          env=hostops_env(home, **(env or {})), cwd=str(home))
    return proc.returncode, [json.loads(x) for x in proc.stdout.splitlines() if x.strip()], proc.stderr


@pytest.mark.parametrize("extra", [["--send-secrets"], ["--send-secrets", "--sudo", "--sudo-pass-env", "LABPW"]])
def test_secrets_never_cross_plain_tcp_off_this_machine(inventory, known_hosts, isolated_home, extra):
    # 192.0.2.1 is TEST-NET-1: the refusal comes before any connection is tried
    code, lines, err = run(["exec", "id", "-i", inventory(2), "--known-hosts", known_hosts, "--cluster",
                            "tcp://192.0.2.1:8786", *extra], isolated_home, env={"LABPW": "hunter2"})
    assert code == 2, err
    assert "would send passwords in clear" in err and "tls://" in err
    assert lines == [] and "hunter2" not in err


def test_a_relative_key_path_is_refused_at_the_client(lab, inventory, known_hosts, isolated_home):
    shutil.copy(lab.user_key, isolated_home / "relkey")
    os.chmod(isolated_home / "relkey", 0o600)
    code, lines, err = run(["exec", "id", "-i", inventory(2), "--known-hosts", known_hosts, "-k", "relkey",
                            "--cluster", "local:1"], isolated_home)
    assert code == 2, err
    assert "'relkey' is a relative path" in err and "absolute" in err


def test_sudo_password_is_read_on_the_worker_and_accept_new_keys_are_written_once_by_the_client(
        lab, inventory, isolated_home, tmp_path, monkeypatch):
    from conftest import LAB_ADDRESSES

    monkeypatch.setenv("LABPW", "pw-only-the-workers-have")  # the workers inherit it; the client below does not
    cluster = LabCluster(2)
    try:
        known = tmp_path / "client_known_hosts"
        inv = inventory(40, addresses=LAB_ADDRESSES[:4])
        env = hostops_env(isolated_home)
        env.pop("LABPW")
        proc = subprocess.run([sys.executable, "-m", "hostops", "exec", "whoami", "-i", inv, "--known-hosts",
                               str(known), "--host-key-policy", "accept-new", "--sudo", "--sudo-pass-env", "LABPW",
                               "--json", "--cluster", cluster.address, "--shard-size", "5"],
                              capture_output=True, text=True, env=env, cwd=str(isolated_home), timeout=400)
    finally:
        cluster.close()
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(x) for x in proc.stdout.splitlines() if x.strip()]
    assert len(lines) == 40 and {r["stdout"] for r in lines} == {"root\n"}
    # 8 shards on 2 workers learned the 4 names' keys; the client wrote each one once
    entries = known.read_text().splitlines()
    names = sorted(line.split()[0] for line in entries)
    assert names == sorted(f"[{a}]:{lab.port}" for a in LAB_ADDRESSES[:4])
    added = [line for line in proc.stderr.splitlines() if "Permanently added" in line]
    assert len(added) == 4 and all(str(known) in line for line in added), proc.stderr
    assert oct(os.stat(known).st_mode & 0o777) == "0o600"


def test_tls_cluster_from_the_wrappers(lab, inventory, known_hosts, isolated_home, tmp_path):
    tls = make_tls(str(tmp_path))
    cluster = CliCluster(str(tmp_path), ["a"], tls=tls)
    try:
        inv = inventory(10)
        code, lines, err = run(["exec", "echo ok", "-i", inv, "--known-hosts", known_hosts, "--json", "--cluster",
                                cluster.address], isolated_home)
        assert code == 2, err  # a tls:// scheduler needs the client's certificate
        assert "--tls-ca-file, --tls-cert and --tls-key" in err
        args = ["--tls-ca-file", tls["ca"], "--tls-cert", tls["cert"], "--tls-key", tls["key"]]
        code, lines, err = run(["exec", "echo opensesame", "-i", inv, "--known-hosts", known_hosts, "--json",
                                "--cluster", cluster.address, *args, "--send-secrets", "--secret-env", "LABSECRET"],
                               isolated_home, env={"LABSECRET": "opensesame"})
        assert code == 0, err + cluster.log_text()
        assert [r["stdout"] for r in lines] == ["********\n"] * 10  # masked, as without --cluster
        plain = cluster.address.replace("tls://", "tcp://")
        code, lines, err = run(["exec", "echo ok", "-i", inv, "--known-hosts", known_hosts, "--cluster", plain],
                               isolated_home, timeout=120)
        assert code == 2, err  # the scheduler takes no plain connection
    finally:
        cluster.close()


def test_values_to_mask_stay_on_the_client_which_masks(inventory, known_hosts, isolated_home):
    code, lines, err = run(["exec", "echo opensesame; echo opensesame >&2", "-i", inventory(3), "--known-hosts",
                            known_hosts, "--json", "--cluster", "local:1", "--secret-env", "LABSECRET"],
                           isolated_home, env={"LABSECRET": "opensesame"})
    assert code == 0, err
    assert {(r["stdout"], r["stderr"]) for r in lines} == {("********\n", "********\n")}


def test_two_workers_learning_different_keys_for_one_name_is_host_key_changed(lab, isolated_home, tmp_path):
    """Two sshds with different host keys share one known_hosts name (HostKeyAlias): each shard
    learns its own key on its worker; the client records the first and refuses the second."""
    from sshlab import SSHD

    class SamePort(SSHD):
        def start(self, timeout: float = 15.0):
            import sshlab

            real, sshlab.free_port = sshlab.free_port, lambda address="": lab.port
            try:
                return super().start(timeout)
            finally:
                sshlab.free_port = real

    other = SamePort(str(tmp_path / "other"), addresses=["127.0.0.9"], user_key=lab.user_key)
    other.start()
    cluster = None
    try:
        inv = tmp_path / "inv.yml"
        inv.write_text(f"all:\n  vars: {{ansible_user: {lab.user}, ansible_ssh_private_key_file: {lab.user_key}}}\n"
                       f"  hosts:\n    first: {{ansible_host: 127.0.0.1, ansible_port: {lab.port}}}\n"
                       f"    second: {{ansible_host: 127.0.0.9, ansible_port: {lab.port}}}\n")
        cfg = tmp_path / "ssh_config"
        cfg.write_text("Host *\n  HostKeyAlias shared-name\n")
        known = tmp_path / "known_hosts"
        cluster = LabCluster(2)
        code, lines, err = run(["exec", "echo ran", "-i", str(inv), "--known-hosts", str(known), "--ssh-config",
                                str(cfg), "--host-key-policy", "accept-new", "--json", "--cluster", cluster.address,
                                "--shard-size", "1"], isolated_home)
    finally:
        if cluster is not None:
            cluster.close()
        other.stop()
    assert code == 5, err
    by_status = sorted((r["status"], r["stdout"]) for r in lines)
    assert by_status == [("failed", "ran\n"), ("ok", "ran\n")], lines
    (bad,) = [r for r in lines if r["status"] == "failed"]
    assert bad["error"].startswith("HOST KEY CHANGED for [shared-name]:") and "the command ran" in bad["error"]
    assert [line.split()[0] for line in known.read_text().splitlines()] == [f"[shared-name]:{lab.port}"]


def test_a_masked_value_split_across_two_stream_pieces_is_masked_on_the_client(inventory, known_hosts, isolated_home):
    """--stream cuts a line longer than 64 KiB into pieces on the worker, which has no values to
    mask: 65530 bytes and "opensesa" go first (65538 bytes, cut at 65536), "me" a second later,
    so the value straddles the cut, and must still never be shown."""
    command = "head -c 65530 /dev/zero | tr '\\0' a; printf opensesa; sleep 1; echo me; echo done"
    proc = subprocess.run([sys.executable, "-m", "hostops", "exec", command, "-i", inventory(2), "--known-hosts",
                           known_hosts, "--stream", "--cluster", "local:1", "--secret-env", "LABSECRET"],
                          capture_output=True, text=True, timeout=300, cwd=str(isolated_home),
                          env=hostops_env(isolated_home, LABSECRET="opensesame"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "opense" not in proc.stdout and "same" not in proc.stdout
    assert proc.stdout.count("********") == 2 and proc.stdout.count(": done") == 2, proc.stdout[-400:]
