"""scripts/lab itself: up is idempotent and fast, reset empties everything, down leaves
no process and no mount behind.

These tests run their own, second lab (LAB_DIR=.lab/test-lab-*, its own port, default VPC
127.200.0.0/16, sharing the venv), so resetting and stopping it never disturbs the main lab
that other tests (or a developer) are using."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import json
import shutil
import socket
import urllib.request

import boto3
import pytest

from conftest import LAB_CMD, ROOT, port_open, ssh

LAB_DIR = ROOT / ".lab" / f"test-lab-{os.getpid()}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


PORT = free_port()
LAB_ENV = {
    "LAB_DIR": str(LAB_DIR),
    "LAB_PORT": str(PORT),
    "LAB_VPC_CIDR": "127.200.0.0/16",
    "LAB_VENV": str(ROOT / ".lab" / "venv"),
}


def lab(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **LAB_ENV}
    return subprocess.run([str(LAB_CMD), *args], capture_output=True, text=True, timeout=900, env=env)


def lab_up() -> None:
    r = lab("up")
    assert r.returncode == 0, r.stderr


def lab_api(path: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/lab-api/{path}", timeout=30) as r:
        return json.load(r)


@pytest.fixture(scope="module", autouse=True)
def second_lab(lab_env):  # lab_env: the main lab is up, so its venv exists
    lab_up()
    yield
    lab("down")
    shutil.rmtree(LAB_DIR, ignore_errors=True)


@pytest.fixture(autouse=True)
def up():
    lab_up()


def client():
    return boto3.client("ec2", region_name="us-east-1", endpoint_url=f"http://127.0.0.1:{PORT}")


def launch(tmp_path: Path) -> tuple[dict, Path]:
    ec2 = client()
    key = tmp_path / "k"
    if not key.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    name = f"lifecycle-{os.urandom(4).hex()}"
    ec2.import_key_pair(KeyName=name, PublicKeyMaterial=key.with_suffix(".pub").read_bytes())
    ami = ec2.describe_images(Owners=["136693071363"])["Images"][0]["ImageId"]
    inst = ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1, KeyName=name)["Instances"][0]
    assert inst["PrivateIpAddress"].startswith("127.200.")
    assert "PublicIpAddress" not in inst
    return inst, key


def start_time(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def lab_mounts() -> list[str]:
    return [l for l in Path("/proc/mounts").read_text().splitlines() if str(LAB_DIR) in l]


def test_up_is_idempotent_and_fast():
    t = time.monotonic()
    r = lab("up")
    assert r.returncode == 0, r.stderr
    assert time.monotonic() - t < 2.0
    assert "already up" in r.stderr
    assert lab("status").returncode == 0
    env = lab("env").stdout
    for k in (f"AWS_ENDPOINT_URL=http://127.0.0.1:{PORT}", "AWS_REGION=us-east-1", "AWS_DEFAULT_REGION=us-east-1",
              "AWS_ACCESS_KEY_ID=", "AWS_SECRET_ACCESS_KEY=", "AWS_EC2_METADATA_DISABLED=true",
              f"BAKE_LAB_DIR={LAB_DIR}"):
        assert f"export {k}" in env, k


def test_reset_empties_everything(tmp_path):
    inst, key = launch(tmp_path)
    ip = inst["PrivateIpAddress"]
    ssh(ip, key, "true")
    ec2 = client()
    ec2.stop_instances(InstanceIds=[inst["InstanceId"]])
    ec2.create_image(InstanceId=inst["InstanceId"], Name="reset-me")
    assert lab_api("status")["layers"]
    r = lab("reset")
    assert r.returncode == 0, r.stderr
    st = lab_api("status")
    assert st["instances"] == [] and st["images"] == {} and st["layers"] == []
    assert not list((LAB_DIR / "instances").iterdir())
    ec2 = client()
    assert ec2.describe_instances()["Reservations"] == []
    assert [i["Name"] for i in ec2.describe_images(Owners=["self"])["Images"]] == []
    assert ec2.describe_images(Owners=["136693071363"])["Images"]  # base images come back
    # and the lab keeps working
    inst, key = launch(tmp_path)
    ssh(inst["PrivateIpAddress"], key, "true")
    client().terminate_instances(InstanceIds=[inst["InstanceId"]])


def test_down_leaves_nothing_behind(tmp_path):
    inst, key = launch(tmp_path)
    ip = inst["PrivateIpAddress"]
    ssh(ip, key, "sleep 300 >/dev/null 2>&1 &")  # a stray process inside the sandbox
    server_pid = int((LAB_DIR / "server.pid").read_text())
    sandbox_pids = [int(p.read_text()) for p in (LAB_DIR / "instances").glob("*/pid")]
    assert sandbox_pids
    inside = []
    for sp in sandbox_pids:
        stack = [sp]
        while stack:
            p = stack.pop()
            inside.append(p)
            try:
                stack += [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
            except OSError:
                pass
    before = {p: start_time(p) for p in [server_pid, *inside]}
    assert len(inside) >= 3  # unshare, sshd (pid 1 inside), the stray sleep
    try:
        r = lab("down")
        assert r.returncode == 0, r.stderr
        for p, st in before.items():
            # same pid *and* same start time: the very process (pids get reused)
            assert st is None or start_time(p) != st, f"pid {p} survived `scripts/lab down`"
        assert lab_mounts() == []
        assert not port_open(ip)
        assert lab("status").returncode != 0
        # no process at all refers to the lab dir any more
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                try:
                    cmd = (d / "cmdline").read_bytes()
                except OSError:
                    continue
                assert b"labserver.py" not in cmd or str(LAB_DIR).encode() not in cmd, cmd
                if b"unshare" in cmd:
                    try:
                        environ = (d / "environ").read_bytes()
                    except OSError:
                        continue
                    assert str(LAB_DIR).encode() not in environ, f"sandbox {d.name} survived"
    finally:
        lab_up()
    assert lab("status").returncode == 0
