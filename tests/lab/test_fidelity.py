"""Smaller places where the lab makes moto answer like EC2 (see the README's table)."""

from __future__ import annotations

import botocore.exceptions
import pytest

from conftest import assert_loopback, ssh


def test_client_token_is_idempotent(ec2, res, debian_ami):
    token = res.name("token")
    a = res.run(debian_ami, ClientToken=token)
    b = res.run(debian_ami, ClientToken=token)
    assert a["InstanceId"] == b["InstanceId"]
    c = res.run(debian_ami, ClientToken=token + "-other")
    assert c["InstanceId"] != a["InstanceId"]


def test_root_volume_follows_the_image(ec2, res, debian_ami):
    img = ec2.describe_images(ImageIds=[debian_ami])["Images"][0]
    root = img["RootDeviceName"]
    a = res.run(debian_ami)
    assert a["RootDeviceName"] == root
    assert [m["DeviceName"] for m in a["BlockDeviceMappings"]] == [root]
    # a root mapping without size or snapshot (bake: root_volume.volume_type only) is fine
    b = res.run(debian_ami, BlockDeviceMappings=[{"DeviceName": root, "Ebs": {"VolumeType": "gp3", "DeleteOnTermination": True}}])
    vol = b["BlockDeviceMappings"][0]["Ebs"]["VolumeId"]
    v = ec2.describe_volumes(VolumeIds=[vol])["Volumes"][0]
    assert v["SnapshotId"] == img["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
    assert v["VolumeType"] == "gp3"
    # a non-root one without size is an error, and launches nothing
    before = len(ec2.describe_instances()["Reservations"])
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2.run_instances(ImageId=debian_ami, MinCount=1, MaxCount=1,
                          BlockDeviceMappings=[{"DeviceName": "/dev/sdf", "Ebs": {"VolumeType": "gp3"}}])
    assert e.value.response["Error"]["Code"] == "MissingParameter"
    assert len(ec2.describe_instances()["Reservations"]) == before


def test_unknown_ami_and_key_are_rejected(ec2, res, debian_ami):
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2.run_instances(ImageId="ami-0123456789abcdef0", MinCount=1, MaxCount=1)
    assert e.value.response["Error"]["Code"].startswith("InvalidAMIID")
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2.run_instances(ImageId=debian_ami, MinCount=1, MaxCount=1, KeyName="no-such-key-here")
    assert e.value.response["Error"]["Code"] == "InvalidKeyPair.NotFound"


def test_image_attributes_and_tags_like_ec2(ec2, res, debian_ami):
    key_name, key = res.keypair("import")
    a = res.run(debian_ami, key_name, TagSpecifications=[
        {"ResourceType": "instance", "Tags": [{"Key": "bake:build-id", "Value": "b1"}]},
        {"ResourceType": "volume", "Tags": [{"Key": "bake:build-id", "Value": "b1"}]},
    ])
    found = ec2.describe_instances(Filters=[{"Name": "tag:bake:build-id", "Values": ["b1"]},
                                            {"Name": "instance-state-name", "Values": ["pending", "running"]}])
    assert a["InstanceId"] in [i["InstanceId"] for r in found["Reservations"] for i in r["Instances"]]
    ec2.stop_instances(InstanceIds=[a["InstanceId"]])
    ami = res.image(a["InstanceId"])
    ec2.modify_image_attribute(ImageId=ami, Description={"Value": "described later"})
    img = ec2.describe_images(ImageIds=[ami])["Images"][0]
    assert img["Description"] == "described later"
    assert img["RootDeviceType"] == "ebs" and img["RootDeviceName"] == "/dev/xvda"
    assert img["OwnerId"] == "123456789012"
    # a terminated instance cannot be imaged (EC2's answer; lab/strict.py)
    ec2.terminate_instances(InstanceIds=[a["InstanceId"]])
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2.create_image(InstanceId=a["InstanceId"], Name=res.name("dead"))
    assert e.value.response["Error"]["Code"] == "InvalidParameterValue"
    # deregister, then the snapshot can go (and not before)
    snap = img["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
    with pytest.raises(botocore.exceptions.ClientError):
        ec2.delete_snapshot(SnapshotId=snap)
    ec2.deregister_image(ImageId=ami)
    res.images.remove(ami)
    ec2.delete_snapshot(SnapshotId=snap)


def test_register_image_uses_the_given_snapshot(ec2, res, debian_ami):
    img = ec2.describe_images(ImageIds=[debian_ami])["Images"][0]
    snap = img["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
    before = {s["SnapshotId"] for s in ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]}
    reg = ec2.register_image(
        Name=res.name("registered"),
        RootDeviceName="/dev/xvda",
        BlockDeviceMappings=[{"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": snap}}],
    )["ImageId"]
    try:
        got = ec2.describe_images(ImageIds=[reg])["Images"][0]
        assert got["RootDeviceName"] == "/dev/xvda"
        assert got["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"] == snap
        after = {s["SnapshotId"] for s in ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]}
        assert after == before, "RegisterImage invented a snapshot"
    finally:
        ec2.deregister_image(ImageId=reg)
