"""The realistic profile (lab/timing.py) at time scale 0.1: pending → running, SYNs dropped
while an instance boots (a connect times out, it is not refused), stopping / shutting-down,
images pending with snapshot progress, the instance-profile lag, and switching profiles at
run time. Every test restores the instant profile."""

from __future__ import annotations

import errno
import json
import socket
import subprocess
import time
import uuid

import boto3
import botocore.exceptions
import pytest

from conftest import describe, lab_api, load_env

SCALE = 0.1


@pytest.fixture
def realistic(lab_env):
    before = lab_api("profile")
    r = lab_api("profile", {"profile": "realistic", "time_scale": SCALE})
    assert r["profile"] == "realistic" and r["time_scale"] == SCALE
    yield r
    lab_api("profile", {"profile": before["profile"], "time_scale": before["time_scale"]})


def connect(ip: str, timeout: float = 0.5) -> str:
    """'open' | 'refused' | 'timeout' for <ip>:22."""
    s = socket.socket()
    s.settimeout(timeout)
    try:
        s.connect((ip, 22))
        return "open"
    except socket.timeout:
        return "timeout"
    except OSError as e:
        if e.errno == errno.ECONNREFUSED:
            return "refused"
        raise
    finally:
        s.close()


def dropped_ips() -> set[str]:
    table = f"bake_lab_{load_env()['BAKE_LAB_PORT']}"
    r = subprocess.run(["nft", "-j", "list", "set", "inet", table, "booting"], capture_output=True, text=True)
    if r.returncode != 0:
        return set()
    out: set[str] = set()
    for item in json.loads(r.stdout)["nftables"]:
        for e in (item.get("set") or {}).get("elem", []):
            out.add(e if isinstance(e, str) else json.dumps(e))
    return out


def until(pred, timeout: float, what: str, step: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(step)


def state(ec2, iid: str) -> tuple[str, int]:
    s = describe(ec2, iid)["State"]
    return s["Name"], s["Code"]


def test_profile_api(realistic):
    got = lab_api("profile")
    assert got["profile"] == "realistic" and got["time_scale"] == SCALE
    assert got["syn_drop"].startswith("nftables")
    with pytest.raises(Exception):
        lab_api("profile", {"profile": "bogus"})
    assert lab_api("profile")["profile"] == "realistic"


def test_launch_pending_syn_drop_then_running(ec2, res, debian_ami, realistic):
    t0 = time.monotonic()
    inst = res.run(debian_ami)
    iid, ip = inst["InstanceId"], inst["PrivateIpAddress"]
    assert inst["State"] == {"Code": 0, "Name": "pending"}
    d = describe(ec2, iid)
    assert (d["State"]["Name"], d["State"]["Code"]) == ("pending", 0)
    assert d["StateReason"] == {"Code": "pending", "Message": "pending"}
    st = ec2.describe_instance_status(InstanceIds=[iid], IncludeAllInstances=True)["InstanceStatuses"][0]
    assert st["InstanceState"]["Name"] == "pending" and st["InstanceStatus"]["Status"] == "not-applicable"
    assert not ec2.describe_instance_status(InstanceIds=[iid])["InstanceStatuses"]  # running only
    # booting: a SYN gets no answer (as on EC2), not a RST
    assert ip in dropped_ips()
    assert connect(ip, timeout=0.4) == "timeout"
    seen = set()

    def up():
        s = state(ec2, iid)
        seen.add(s)
        return connect(ip, 0.2) == "open"

    until(up, 40 * SCALE + 10, "sshd")
    assert ("pending", 0) in seen and ("running", 16) in seen
    assert time.monotonic() - t0 >= (5 + 3 + 1) * SCALE * 0.9  # the figures' minimum, scaled
    assert ip not in dropped_ips()
    d = describe(ec2, iid)
    assert "StateReason" not in d or not d["StateReason"].get("Code")
    # "ok" once the lab has seen sshd's banner too (a moment after the port opens)
    until(lambda: ec2.describe_instance_status(InstanceIds=[iid])["InstanceStatuses"][0]["InstanceStatus"]["Status"]
          == "ok", 5, "status ok")


def test_stop_start_terminate_transitions(ec2, res, debian_ami, realistic):
    inst = res.run(debian_ami)
    iid, ip = inst["InstanceId"], inst["PrivateIpAddress"]
    until(lambda: connect(ip, 0.2) == "open", 40 * SCALE + 10, "sshd")
    r = ec2.stop_instances(InstanceIds=[iid])["StoppingInstances"][0]
    assert r["CurrentState"]["Name"] == "stopping"
    d = describe(ec2, iid)
    assert (d["State"]["Name"], d["State"]["Code"]) == ("stopping", 64)
    assert d["StateTransitionReason"].startswith("User initiated (") and d["StateTransitionReason"].endswith(" GMT)")
    assert connect(ip, 0.3) == "timeout"  # the sandbox is gone at once; nothing answers
    until(lambda: state(ec2, iid) == ("stopped", 80), 60 * SCALE + 10, "stopped", step=0.2)
    assert connect(ip, 0.3) == "timeout"
    ec2.start_instances(InstanceIds=[iid])
    assert state(ec2, iid) == ("pending", 0)
    # terminated while pending: the boot never happens
    r = ec2.terminate_instances(InstanceIds=[iid])["TerminatingInstances"][0]
    assert r["CurrentState"]["Name"] == "shutting-down"
    assert state(ec2, iid) == ("shutting-down", 32)
    assert ip not in dropped_ips()
    until(lambda: state(ec2, iid) == ("terminated", 48), 60 * SCALE + 10, "terminated", step=0.2)
    assert connect(ip, 0.3) in ("refused", "timeout")
    assert not any(i["instance_id"] == iid for i in lab_api("status")["instances"])


def test_reboot_and_create_image_of_running_instance(ec2, res, debian_ami, realistic):
    inst = res.run(debian_ami)
    iid, ip = inst["InstanceId"], inst["PrivateIpAddress"]
    until(lambda: connect(ip, 0.2) == "open", 40 * SCALE + 10, "sshd")
    ec2.reboot_instances(InstanceIds=[iid])
    assert state(ec2, iid) == ("running", 16)
    assert connect(ip, 0.3) == "timeout"
    until(lambda: connect(ip, 0.2) == "open", 20 * SCALE + 10, "sshd after reboot")
    r = lab_api("exec", {"instance_id": iid, "command": "echo kept > /etc/lab-realistic"})
    assert r["code"] == 0, r
    ami = res.image(iid)  # reboots the instance, as EC2 does
    assert ec2.describe_images(ImageIds=[ami])["Images"][0]["State"] == "pending"
    until(lambda: connect(ip, 0.2) == "open", 20 * SCALE + 10, "sshd after CreateImage")
    until(lambda: ec2.describe_images(ImageIds=[ami])["Images"][0]["State"] == "available", 30, "image")
    b = res.run(ami)
    until(lambda: connect(b["PrivateIpAddress"], 0.2) == "open", 40 * SCALE + 10, "sshd of b")
    r = lab_api("exec", {"instance_id": b["InstanceId"], "command": "cat /etc/lab-realistic"})
    assert r["stdout"] == "kept\n"


def test_image_pending_with_snapshot_progress(ec2, res, debian_ami, realistic):
    inst = res.run(debian_ami)
    iid = inst["InstanceId"]
    until(lambda: connect(inst["PrivateIpAddress"], 0.2) == "open", 40 * SCALE + 10, "sshd")
    lab_api("exec", {"instance_id": iid, "command": "head -c 20971520 /dev/urandom > /var/tmp/blob"})
    ec2.stop_instances(InstanceIds=[iid])
    until(lambda: state(ec2, iid) == ("stopped", 80), 60 * SCALE + 10, "stopped", step=0.2)
    ami = res.image(iid)
    img = ec2.describe_images(ImageIds=[ami])["Images"][0]
    assert img["State"] == "pending"
    # The snapshot starts a moment after CreateImage; only then does the image name it.
    img = until(lambda: next(
        (i for i in ec2.describe_images(ImageIds=[ami])["Images"]
         if "SnapshotId" in i["BlockDeviceMappings"][0]["Ebs"]), None), 5, "the snapshot started")
    assert img["State"] == "pending"
    snap_id = img["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1, InstanceType="t3.micro")
    assert e.value.response["Error"]["Code"] == "InvalidAMIID.Unavailable"
    assert "is pending, and cannot be run" in e.value.response["Error"]["Message"]
    progress = []

    def done():
        s = ec2.describe_snapshots(SnapshotIds=[snap_id])["Snapshots"][0]
        progress.append((s["State"], int(s["Progress"].rstrip("%"))))
        return ec2.describe_images(ImageIds=[ami])["Images"][0]["State"] == "available"

    until(done, 30, "image available", step=0.2)
    pend = [p for s, p in progress if s == "pending"]
    assert pend and pend == sorted(pend) and pend[-1] > pend[0], progress
    assert progress[-1] == ("completed", 100)
    # CopyImage: pending as well, then available
    cp = ec2.copy_image(SourceImageId=ami, SourceRegion="us-east-1", Name=res.name("labtest-copy"))["ImageId"]
    res.images.append(cp)
    assert ec2.describe_images(ImageIds=[cp])["Images"][0]["State"] == "pending"
    until(lambda: ec2.describe_images(ImageIds=[cp])["Images"][0]["State"] == "available", 30, "copy", step=0.2)


def test_instance_profile_lag(ec2, res, debian_ami, lab_env, realistic):
    iam = boto3.client("iam", region_name="us-east-1", endpoint_url=lab_env["AWS_ENDPOINT_URL"])
    name = f"labtest-lag-{uuid.uuid4().hex[:8]}"
    iam.create_instance_profile(InstanceProfileName=name)
    res.cleanups.append(lambda: iam.delete_instance_profile(InstanceProfileName=name))
    t0 = time.monotonic()
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2.run_instances(ImageId=debian_ami, MinCount=1, MaxCount=1, InstanceType="t3.micro",
                          IamInstanceProfile={"Name": name})
    err = e.value.response["Error"]
    assert err["Code"] == "InvalidParameterValue"
    assert err["Message"] == (f"Value ({name}) for parameter iamInstanceProfile.name is invalid. "
                              "Invalid IAM Instance Profile name")

    def launched():
        try:
            return res.run(debian_ami, IamInstanceProfile={"Name": name})
        except botocore.exceptions.ClientError as e:
            assert e.response["Error"]["Code"] == "InvalidParameterValue"
            return None

    until(launched, 8 * SCALE + 10, "the profile to propagate", step=0.1)
    assert time.monotonic() - t0 >= 8 * SCALE * 0.9


def test_switch_to_instant_finishes_transitions(ec2, res, debian_ami, realistic):
    inst = res.run(debian_ami)
    iid, ip = inst["InstanceId"], inst["PrivateIpAddress"]
    assert state(ec2, iid) == ("pending", 0)
    lab_api("profile", {"profile": "instant"})
    assert state(ec2, iid) == ("running", 16)
    until(lambda: connect(ip, 0.2) == "open", 5, "sshd once instant")
    assert not dropped_ips()
    ec2.stop_instances(InstanceIds=[iid])
    assert state(ec2, iid) == ("stopped", 80)  # instant again: no stopping phase


def test_new_image_is_never_seen_available_before_pending(ec2, res, debian_ami, realistic):
    """Another client polling DescribeImages while CreateImage runs sees the new image pending
    first: moto registers it before the lab gives it its schedule, and that gap must not show."""
    import threading

    inst = res.run(debian_ami)
    iid = inst["InstanceId"]
    until(lambda: state(ec2, iid)[0] == "running", 40 * SCALE + 10, "running", step=0.2)
    name = res.name("labtest-race")
    seen: list[str] = []
    stop = threading.Event()
    watcher = ec2  # botocore clients are thread-safe

    def watch():
        while not stop.is_set():
            for img in watcher.describe_images(Owners=["self"], Filters=[{"Name": "name", "Values": [name]}])["Images"]:
                seen.append(img["State"])

    t = threading.Thread(target=watch)
    t.start()
    try:
        ami = ec2.create_image(InstanceId=iid, Name=name, NoReboot=True)["ImageId"]
        res.images.append(ami)
        until(lambda: len(seen) >= 3, 10, "watcher saw the image", step=0.05)
    finally:
        stop.set()
        t.join()
    assert seen[0] == "pending", seen[:5]


def test_image_fails_if_its_instance_is_terminated_before_the_snapshot_starts(ec2, res, debian_ami, realistic):
    a, b = res.run(debian_ami), res.run(debian_ami)
    for i in (a, b):
        until(lambda: state(ec2, i["InstanceId"])[0] == "running", 40 * SCALE + 10, "running")
    # At scale 1 the snapshot starts 1-4 s after CreateImage: a window a test can hit.
    lab_api("profile", {"profile": "realistic", "time_scale": 1.0})

    def ebs(ami: str) -> dict:
        return ec2.describe_images(ImageIds=[ami])["Images"][0]["BlockDeviceMappings"][0]["Ebs"]

    early = ec2.create_image(InstanceId=a["InstanceId"], Name=f"early-{uuid.uuid4().hex[:8]}", NoReboot=True)
    res.images.append(early["ImageId"])
    assert "SnapshotId" not in ebs(early["ImageId"])
    ec2.terminate_instances(InstanceIds=[a["InstanceId"]])
    assert ec2.describe_images(ImageIds=[early["ImageId"]])["Images"][0]["State"] == "failed"

    late = ec2.create_image(InstanceId=b["InstanceId"], Name=f"late-{uuid.uuid4().hex[:8]}", NoReboot=True)
    res.images.append(late["ImageId"])
    until(lambda: "SnapshotId" in ebs(late["ImageId"]), 10, "the snapshot started", step=0.1)
    ec2.terminate_instances(InstanceIds=[b["InstanceId"]])
    assert ec2.describe_images(ImageIds=[late["ImageId"]])["Images"][0]["State"] == "pending"
    lab_api("profile", {"profile": "instant"})  # finishes the pending image at once
    assert ec2.describe_images(ImageIds=[late["ImageId"]])["Images"][0]["State"] == "available"
