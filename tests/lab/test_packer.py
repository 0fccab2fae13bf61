"""Packer 1.6.6 (Debian's `packer`) builds an AMI against the lab with the baseline template
in benches/packer/, and the file it provisioned is on an instance launched from that AMI."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT, assert_loopback, load_env, ssh

PACKER_DIR = ROOT / "benches" / "packer"


def packer_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(load_env())
    env["CHECKPOINT_DISABLE"] = "1"  # no update check to the outside world
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    return env


def packer_build(template, tmp_path, *vars: str) -> tuple[str, str]:
    packer = shutil.which("packer")
    if packer is None:
        pytest.fail("packer is not installed (scripts/lab up installs Debian's `packer`)")
    cmd = [packer, "build", "-machine-readable", "-color=false"]
    for v in vars:
        cmd += ["-var", v]
    cmd.append(str(template))
    p = subprocess.run(cmd, capture_output=True, text=True, env=packer_env(), cwd=tmp_path, timeout=600)
    (tmp_path / "packer.out").write_text(p.stdout + p.stderr)
    assert p.returncode == 0, f"packer build failed:\n{p.stdout[-4000:]}\n{p.stderr[-2000:]}"
    m = re.search(r",artifact,0,id,us-east-1:(ami-[0-9a-z]+)", p.stdout)
    assert m, p.stdout[-2000:]
    return m.group(1), p.stdout


def check_cleanup(ec2, out: str) -> None:
    # Packer removed its temporary key pair, security group and instance
    names = set(re.findall(r"packer_[0-9a-f-]{36}", out))
    assert names, "no temporary packer resources seen in the output"
    keys = {k["KeyName"] for k in ec2.describe_key_pairs()["KeyPairs"]}
    sgs = {g["GroupName"] for g in ec2.describe_security_groups()["SecurityGroups"]}
    assert not (names & keys), names & keys
    assert not (names & sgs), names & sgs
    for iid in set(re.findall(r"Instance ID: (i-[0-9a-f]+)", out)):
        inst = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
        assert inst["State"]["Name"] == "terminated"
        assert_loopback(inst)


def test_packer_template_is_valid():
    p = subprocess.run(["packer", "validate", str(PACKER_DIR / "baseline.json")], capture_output=True,
                       text=True, env=packer_env())
    assert p.returncode == 0, p.stdout + p.stderr
    # the checked-in baseline is what the generator writes
    gen = subprocess.run([sys.executable, str(PACKER_DIR / "gen-template.py")], capture_output=True, text=True, check=True)
    assert json.loads(gen.stdout) == json.loads((PACKER_DIR / "baseline.json").read_text())


def test_packer_baseline_build(ec2, res, tmp_path):
    ami, out = packer_build(PACKER_DIR / "baseline.json", tmp_path, f"ami_name={res.name('packer-baseline')}")
    res.images.append(ami)
    img = ec2.describe_images(ImageIds=[ami])["Images"][0]
    tags = {t["Key"]: t["Value"] for t in img.get("Tags", [])}
    assert tags.get("bake-bench") == "packer"
    assert img["Description"] == "bake benchmark baseline (Packer)"
    snap = img["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
    stags = {t["Key"]: t["Value"] for t in ec2.describe_snapshots(SnapshotIds=[snap])["Snapshots"][0].get("Tags", [])}
    assert stags.get("bake-bench") == "packer"
    check_cleanup(ec2, out)

    key_name, key = res.keypair("import")
    inst = res.run(ami, key_name)
    r = ssh(inst["PrivateIpAddress"], key, "cat /etc/packer-baked.txt")
    assert "hello from the packer baseline" in r.stdout
    assert "built by packer from debian-12-amd64-*" in r.stdout
    assert not os.path.exists("/etc/packer-baked.txt")


def test_packer_variant_steps_dir_bigfile(ec2, res, tmp_path):
    up = tmp_path / "updir"
    (up / "sub").mkdir(parents=True)
    (up / "a.txt").write_text("A\n")
    (up / "sub" / "b.txt").write_text("B\n")
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(4 << 20))
    gen = subprocess.run(
        [sys.executable, str(PACKER_DIR / "gen-template.py"), "--shell-steps", "3", "--upload-dir", str(up),
         "--big-file", str(big)], capture_output=True, text=True, check=True)
    tpl = tmp_path / "variant.json"
    # {{template_dir}} must still find files/hello.txt
    tpl.write_text(gen.stdout.replace("{{template_dir}}/files", str(PACKER_DIR / "files")))
    ami, out = packer_build(tpl, tmp_path, f"ami_name={res.name('packer-variant')}")
    res.images.append(ami)
    check_cleanup(ec2, out)
    key_name, key = res.keypair("import")
    inst = res.run(ami, key_name)
    r = ssh(inst["PrivateIpAddress"], key, "cat /opt/upload/a.txt /opt/upload/sub/b.txt; sha256sum < /opt/big")
    import hashlib
    assert r.stdout.split()[:3] == ["A", "B", hashlib.sha256(big.read_bytes()).hexdigest()]
