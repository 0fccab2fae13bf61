"""Fixtures for the lab's own tests (pytest + boto3 + the system ssh client).

The lab is started with `scripts/lab up` if it is not running (idempotent, ~2 s when set up).
Every test cleans up what it creates through the `res` fixture, and every instance the
tests see is checked for a loopback private IP and no public IP.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import subprocess
import time
import urllib.request
import uuid
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from pathlib import Path

import boto3
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
LAB_DIR = Path(os.environ.get("LAB_DIR") or ROOT / ".lab")  # LAB_DIR: a second lab (as scripts/lab)
LAB_CMD = ROOT / "scripts" / "lab"
LOOPBACK = ipaddress.ip_network("127.0.0.0/8")


def load_env() -> dict[str, str]:
    env = {}
    for line in (LAB_DIR / "env").read_text().splitlines():
        if line.startswith("export "):
            k, _, v = line[len("export "):].partition("=")
            env[k] = v
    return env


def lab_up() -> dict[str, str]:
    r = subprocess.run([str(LAB_CMD), "up"], capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        pytest.exit(f"the lab is not running and `scripts/lab up` failed:\n{r.stderr}", returncode=3)
    env = load_env()
    os.environ.update(env)
    for k in ("AWS_SESSION_TOKEN", "AWS_PROFILE"):
        os.environ.pop(k, None)
    return env


@pytest.fixture(scope="session")
def lab_env() -> dict[str, str]:
    return lab_up()


@pytest.fixture(scope="session")
def ec2(lab_env):
    return boto3.client("ec2", region_name="us-east-1", endpoint_url=lab_env["AWS_ENDPOINT_URL"])


@pytest.fixture(scope="session")
def autoscaling(lab_env):
    return boto3.client("autoscaling", region_name="us-east-1", endpoint_url=lab_env["AWS_ENDPOINT_URL"])


def lab_api(path: str, body: dict | None = None, timeout: float = 60) -> dict:
    env = load_env()
    url = f"{env['BAKE_LAB_API']}/{path}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method="POST" if body is not None else "GET")
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.load(r)


def assert_loopback(inst: dict) -> None:
    ip = inst.get("PrivateIpAddress")
    assert ip, f"{inst['InstanceId']} has no private IP"
    assert ipaddress.ip_address(ip) in LOOPBACK, f"{inst['InstanceId']} private IP {ip} outside 127.0.0.0/8"
    assert not ipaddress.ip_address(ip) in ipaddress.ip_network("127.0.0.0/24"), ip
    assert not inst.get("PublicIpAddress"), f"{inst['InstanceId']} has a public IP {inst.get('PublicIpAddress')}"
    for nic in inst.get("NetworkInterfaces", []):
        assert "Association" not in nic or not nic["Association"].get("PublicIp"), nic


def describe(ec2, iid: str) -> dict:
    inst = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
    assert_loopback(inst)
    return inst


class Resources:
    """Creates lab resources and removes them again at teardown."""

    def __init__(self, ec2, tmp: Path):
        self.ec2 = ec2
        self.tmp = tmp
        self.instances: list[str] = []
        self.images: list[str] = []
        self.keys: list[str] = []
        self.cleanups: list = []

    def name(self, prefix: str) -> str:
        return f"{prefix}-{uuid.uuid4().hex[:8]}"

    def keypair(self, kind: str = "import") -> tuple[str, Path]:
        """A key pair in the lab and its private key file. kind: import (ed25519) | create (RSA)."""
        name = self.name("labtest")
        path = self.tmp / name
        if kind == "import":
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
            self.ec2.import_key_pair(KeyName=name, PublicKeyMaterial=path.with_suffix(".pub").read_bytes())
        else:
            material = self.ec2.create_key_pair(KeyName=name)["KeyMaterial"]
            path.write_text(material)
            path.chmod(0o600)
        self.keys.append(name)
        return name, path

    def host_key(self) -> tuple[str, str]:
        path = self.tmp / self.name("hostkey")
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
        return path.read_text(), path.with_suffix(".pub").read_text().strip()

    def run(self, image_id: str, key_name: str | None = None, user_data: str | None = None, **kw) -> dict:
        args = dict(ImageId=image_id, MinCount=1, MaxCount=1, InstanceType="t3.micro", **kw)
        if key_name:
            args["KeyName"] = key_name
        if user_data is not None:
            args["UserData"] = user_data
        r = self.ec2.run_instances(**args)
        for i in r["Instances"]:
            self.instances.append(i["InstanceId"])
            assert_loopback(i)
        return r["Instances"][0]

    def image(self, instance_id: str, **kw) -> str:
        ami = self.ec2.create_image(InstanceId=instance_id, Name=self.name("labtest-image"), **kw)["ImageId"]
        self.images.append(ami)
        return ami

    def cleanup(self) -> None:
        for f in reversed(self.cleanups):
            try:
                f()
            except Exception:  # noqa: BLE001
                pass
        live = []
        for iid in self.instances:
            try:
                st = self.ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
                if st["State"]["Name"] != "terminated":
                    live.append(iid)
            except Exception:  # noqa: BLE001
                pass
        if live:
            self.ec2.terminate_instances(InstanceIds=live)
        for ami in self.images:
            try:
                # as on EC2, deregistering leaves the image's snapshots (scripts/lab leftovers)
                img = self.ec2.describe_images(ImageIds=[ami])["Images"]
                snaps = [m["Ebs"]["SnapshotId"] for i in img for m in i.get("BlockDeviceMappings", [])
                         if m.get("Ebs", {}).get("SnapshotId")]
                self.ec2.deregister_image(ImageId=ami)
                for snap in snaps:
                    try:
                        self.ec2.delete_snapshot(SnapshotId=snap)
                    except Exception:  # noqa: BLE001  (still used by another image)
                        pass
            except Exception:  # noqa: BLE001
                pass
        for k in self.keys:
            try:
                self.ec2.delete_key_pair(KeyName=k)
            except Exception:  # noqa: BLE001
                pass


@pytest.fixture
def res(ec2, tmp_path):
    r = Resources(ec2, tmp_path)
    yield r
    r.cleanup()


@pytest.fixture(scope="session")
def debian_ami(ec2) -> str:
    imgs = ec2.describe_images(
        Owners=["136693071363"], Filters=[{"Name": "name", "Values": ["debian-12-amd64-*"]}]
    )["Images"]
    return max(imgs, key=lambda i: i["CreationDate"])["ImageId"]


def cloud_config_host_key(priv: str, pub: str, extra_part: str | None = None, mime: bool = True) -> str:
    """User data like bake sends it: multipart/mixed with a text/cloud-config part carrying
    ssh_keys, plus (optionally) the user's own part."""
    cc = "#cloud-config\n" + yaml.safe_dump({"ssh_keys": {"ed25519_private": priv, "ed25519_public": pub}})
    if not mime:
        return cc
    msg = MIMEMultipart()
    msg.attach(MIMEText(cc, "cloud-config"))
    if extra_part:
        sub = "x-shellscript" if extra_part.startswith("#!") else "cloud-config"
        msg.attach(MIMEText(extra_part, sub))
    return msg.as_string()


def known_hosts(tmp: Path, ip: str, pub: str) -> Path:
    path = tmp / f"known_hosts-{ip}"
    path.write_text(f"{ip} {' '.join(pub.split()[:2])}\n")
    return path


def ssh(ip: str, key: Path, cmd: str, user: str = "admin", known: Path | None = None,
        check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    opts = ["-o", "BatchMode=yes", "-o", "ConnectTimeout=5", "-o", "LogLevel=ERROR", "-i", str(key)]
    if known is not None:
        opts += ["-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known}"]
    else:
        opts += ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
    assert ipaddress.ip_address(ip) in LOOPBACK
    # Like on EC2, "running" comes before sshd listens: retry while the port is closed.
    deadline = time.monotonic() + 15
    while True:
        r = subprocess.run(["ssh", *opts, f"{user}@{ip}", cmd], capture_output=True, text=True, timeout=timeout)
        if r.returncode != 255 or "Connection refused" not in r.stderr or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    if check and r.returncode != 0:
        raise AssertionError(f"ssh {user}@{ip} {cmd!r} -> {r.returncode}\n{r.stdout}\n{r.stderr}")
    return r


def wait_state(ec2, iid: str, state: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        inst = describe(ec2, iid)
        if inst["State"]["Name"] == state:
            return inst
        assert time.monotonic() < deadline, f"{iid} still {inst['State']['Name']}, wanted {state}"
        time.sleep(0.1)


def port_open(ip: str, port: int = 22) -> bool:
    import socket

    try:
        with socket.create_connection((ip, port), timeout=0.5):
            return True
    except OSError:
        return False
