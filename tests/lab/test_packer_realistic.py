"""Packer 1.6.6, unmodified, on the realistic profile (lab/timing.py) at time scale 0.05: its
waiters see pending → running, SYNs dropped while the builder boots, stopping → stopped and
a pending image, and the build still succeeds and cleans up."""

from __future__ import annotations

import re
import time

import pytest

from conftest import lab_api, ssh
from test_packer import PACKER_DIR, check_cleanup, packer_build

SCALE = 0.05


@pytest.fixture
def realistic(lab_env):
    before = lab_api("profile")
    lab_api("profile", {"profile": "realistic", "time_scale": SCALE})
    yield
    lab_api("profile", {"profile": before["profile"], "time_scale": before["time_scale"]})


def test_packer_baseline_build_realistic(ec2, res, tmp_path, realistic):
    t0 = time.monotonic()
    ami, out = packer_build(PACKER_DIR / "baseline.json", tmp_path, f"ami_name={res.name('packer-realistic')}")
    took = time.monotonic() - t0
    res.images.append(ami)
    (tmp_path / "took").write_text(f"{took:.1f}\n")
    assert ec2.describe_images(ImageIds=[ami])["Images"][0]["State"] == "available"
    assert re.search(r"Waiting for AMI to become ready", out)
    check_cleanup(ec2, out)
    # the lab's own minimum for this flow: pending + boot + stopping + image, scaled
    assert took >= (5 + 3 + 1 + 20 + 20) * SCALE * 0.9
    key_name, key = res.keypair("import")
    inst = res.run(ami, key_name)
    deadline = time.monotonic() + 60
    while True:  # realistic: the new instance drops SYNs while it boots
        r = ssh(inst["PrivateIpAddress"], key, "cat /etc/packer-baked.txt", check=False)
        if r.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert "hello from the packer baseline" in r.stdout, r.stderr
