"""The lab's headline scenario: key pair -> SSH with a pinned host key -> sudo writes a file
-> stop -> CreateImage -> new instance from the image has the file -> the host does not."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from conftest import (
    LAB_DIR,
    cloud_config_host_key,
    describe,
    known_hosts,
    lab_api,
    port_open,
    ssh,
    wait_state,
)


def test_full_scenario(ec2, res, debian_ami, tmp_path):
    key_name, key = res.keypair("import")
    priv, pub = res.host_key()
    marker = f"/etc/lab-scenario-{uuid.uuid4().hex[:8]}.txt"
    content = f"baked at {time.time()}"

    t0 = time.monotonic()
    inst = res.run(debian_ami, key_name, cloud_config_host_key(priv, pub, extra_part="#!/bin/sh\necho hi\n"))
    iid, ip = inst["InstanceId"], inst["PrivateIpAddress"]
    inst = wait_state(ec2, iid, "running")
    # sshd listens within about a second of "running"
    while not port_open(ip) and time.monotonic() - t0 < 5:
        time.sleep(0.02)
    assert port_open(ip), f"sshd not listening on {ip}:22"
    assert time.monotonic() - t0 < 3

    kh = known_hosts(tmp_path, ip, pub)  # the host key from user data, pinned
    r = ssh(ip, key, "id -un; sudo -n true && echo sudo-ok", known=kh)
    assert r.stdout.split() == ["admin", "sudo-ok"]
    ssh(ip, key, f"echo '{content}' | sudo tee {marker} >/dev/null", known=kh)
    assert not Path(marker).exists(), "a write inside the instance reached the host"

    ec2.stop_instances(InstanceIds=[iid])
    wait_state(ec2, iid, "stopped")
    assert not port_open(ip), "sshd still up after stop"

    ami = res.image(iid)
    img = ec2.describe_images(ImageIds=[ami])["Images"][0]
    assert img["State"] == "available"
    assert img["RootDeviceName"] == "/dev/xvda" and img["RootDeviceType"] == "ebs"

    # a second instance from the image, with a CreateKeyPair (RSA) key and a generated host key
    key2_name, key2 = res.keypair("create")
    inst2 = res.run(ami, key2_name)
    ip2 = inst2["PrivateIpAddress"]
    assert ip2 != ip
    wait_state(ec2, inst2["InstanceId"], "running")
    r = ssh(ip2, key2, f"cat {marker}")
    assert r.stdout.strip() == content
    assert not Path(marker).exists(), "the baked file leaked onto the host"

    ec2.terminate_instances(InstanceIds=[iid, inst2["InstanceId"]])
    wait_state(ec2, iid, "terminated")
    wait_state(ec2, inst2["InstanceId"], "terminated")
    assert not port_open(ip2)
    deadline = time.monotonic() + 5
    while (LAB_DIR / "instances" / iid).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not (LAB_DIR / "instances" / iid).exists(), "terminated instance's disk still there"


def test_stop_start_keeps_disk_terminate_deletes_it(ec2, res, debian_ami, tmp_path):
    key_name, key = res.keypair("import")
    priv, pub = res.host_key()
    inst = res.run(debian_ami, key_name, cloud_config_host_key(priv, pub, mime=False))
    iid, ip = inst["InstanceId"], inst["PrivateIpAddress"]
    wait_state(ec2, iid, "running")
    kh = known_hosts(tmp_path, ip, pub)
    ssh(ip, key, "echo kept > ~/kept.txt; sudo mkdir -p /opt/x && sudo touch /opt/x/y", known=kh)
    ec2.stop_instances(InstanceIds=[iid])
    wait_state(ec2, iid, "stopped")
    assert not port_open(ip)
    ec2.start_instances(InstanceIds=[iid])
    wait_state(ec2, iid, "running")
    r = ssh(ip, key, "cat ~/kept.txt; ls /opt/x", known=kh)  # same host key after start, too
    assert r.stdout.split() == ["kept", "y"]
    # reboot keeps it as well
    ec2.reboot_instances(InstanceIds=[iid])
    r = ssh(ip, key, "cat ~/kept.txt", known=kh)
    assert r.stdout.strip() == "kept"
    ec2.terminate_instances(InstanceIds=[iid])
    wait_state(ec2, iid, "terminated")
    assert not port_open(ip)
    st = lab_api("status")
    assert iid not in [i["instance_id"] for i in st["instances"]]


def test_image_lineage_copy_and_deregister(ec2, res, debian_ami):
    """Layers stack along the lineage; CopyImage keeps them; deregistering an image does not
    break instances launched from it; CreateImage of a running instance works too."""
    key_name, key = res.keypair("import")
    a = res.run(debian_ami, key_name)
    ssh(a["PrivateIpAddress"], key, "echo one | sudo tee /etc/layer1 >/dev/null")
    ec2.stop_instances(InstanceIds=[a["InstanceId"]])
    ami1 = res.image(a["InstanceId"])

    b = res.run(ami1, key_name)
    ssh(b["PrivateIpAddress"], key, "echo two | sudo tee /etc/layer2 >/dev/null; sudo rm /etc/layer1")
    ami2 = res.image(b["InstanceId"])  # b is running: CreateImage "reboots" it
    wait_state(ec2, b["InstanceId"], "running")
    r = ssh(b["PrivateIpAddress"], key, "cat /etc/layer2; test ! -e /etc/layer1 && echo gone")
    assert r.stdout.split() == ["two", "gone"]

    copy = ec2.copy_image(SourceImageId=ami2, SourceRegion="us-east-1", Name=res.name("copy"))["ImageId"]
    res.images.append(copy)
    c = res.run(copy, key_name)
    r = ssh(c["PrivateIpAddress"], key, "cat /etc/layer2; test ! -e /etc/layer1 && echo gone")
    assert r.stdout.split() == ["two", "gone"]

    d = res.run(ami1, key_name)
    ec2.deregister_image(ImageId=ami1)
    ec2.deregister_image(ImageId=ami2)
    res.images.remove(ami1)
    res.images.remove(ami2)
    # d still sees its layer; c (from the copy) still sees both
    assert ssh(d["PrivateIpAddress"], key, "cat /etc/layer1").stdout.strip() == "one"
    ec2.stop_instances(InstanceIds=[d["InstanceId"]])
    ec2.start_instances(InstanceIds=[d["InstanceId"]])
    assert ssh(d["PrivateIpAddress"], key, "cat /etc/layer1").stdout.strip() == "one"
    assert ssh(c["PrivateIpAddress"], key, "cat /etc/layer2").stdout.strip() == "two"


def test_create_image_with_snapshot_tags(ec2, res, debian_ami):
    """moto answers HTTP 500 for snapshot TagSpecifications; the lab tags the snapshot."""
    key_name, _ = res.keypair("import")
    a = res.run(debian_ami, key_name)
    ec2.stop_instances(InstanceIds=[a["InstanceId"]])
    ami = res.image(
        a["InstanceId"],
        TagSpecifications=[
            {"ResourceType": "image", "Tags": [{"Key": "bake:recipe", "Value": "r1"}]},
            {"ResourceType": "snapshot", "Tags": [{"Key": "bake:recipe", "Value": "r1-snap"}]},
        ],
    )
    img = ec2.describe_images(ImageIds=[ami])["Images"][0]
    assert {"Key": "bake:recipe", "Value": "r1"} in img["Tags"]
    snap_id = img["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
    snap = ec2.describe_snapshots(SnapshotIds=[snap_id])["Snapshots"][0]
    assert {"Key": "bake:recipe", "Value": "r1-snap"} in snap.get("Tags", [])
    assert snap["Description"] == f"Created by CreateImage({a['InstanceId']}) for {ami}"


def test_instance_survives_key_pair_deletion(ec2, res, debian_ami):
    key_name, key = res.keypair("import")
    a = res.run(debian_ami, key_name)
    ec2.delete_key_pair(KeyName=key_name)
    res.keys.remove(key_name)
    assert ssh(a["PrivateIpAddress"], key, "echo ok").stdout.strip() == "ok"
    ec2.stop_instances(InstanceIds=[a["InstanceId"]])
    ec2.start_instances(InstanceIds=[a["InstanceId"]])
    assert ssh(a["PrivateIpAddress"], key, "echo ok").stdout.strip() == "ok"
    describe(ec2, a["InstanceId"])


def test_parallel_builds(ec2, res, debian_ami):
    """Several build-like flows at once (bake's tests run in parallel against one lab)."""
    from concurrent.futures import ThreadPoolExecutor

    import boto3

    key_name, key = res.keypair("import")

    def flow(n: int) -> str:
        c = boto3.client("ec2", region_name="us-east-1")
        i = c.run_instances(ImageId=debian_ami, MinCount=1, MaxCount=1, KeyName=key_name)["Instances"][0]
        res.instances.append(i["InstanceId"])
        ssh(i["PrivateIpAddress"], key, f"echo {n} | sudo tee /etc/flow >/dev/null")
        c.stop_instances(InstanceIds=[i["InstanceId"]])
        ami = c.create_image(InstanceId=i["InstanceId"], Name=f"flow-{n}-{uuid.uuid4().hex[:6]}")["ImageId"]
        res.images.append(ami)
        j = c.run_instances(ImageId=ami, MinCount=2, MaxCount=2, KeyName=key_name)["Instances"]
        res.instances.extend(x["InstanceId"] for x in j)
        outs = {ssh(x["PrivateIpAddress"], key, "cat /etc/flow").stdout.strip() for x in j}
        c.terminate_instances(InstanceIds=[i["InstanceId"]] + [x["InstanceId"] for x in j])
        return ",".join(sorted(outs))

    with ThreadPoolExecutor(6) as ex:
        results = list(ex.map(flow, range(6)))
    assert results == [str(n) for n in range(6)]
