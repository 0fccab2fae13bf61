"""The strict EC2 rules (lab/strict.py; README "Strict rules"): calls EC2 refuses are refused,
with EC2's code and message. Some rules moto already had; they are tested here too."""

from __future__ import annotations

import botocore.exceptions
import pytest

from conftest import lab_api, wait_state


def error_of(call, *args, **kwargs) -> dict:
    with pytest.raises(botocore.exceptions.ClientError) as e:
        call(*args, **kwargs)
    return e.value.response["Error"]


def force_state(iid: str, state: str) -> None:
    """The lab's test hook: puts an instance in a state moto's instant transitions skip."""
    assert lab_api("instance-state", {"instance_id": iid, "state": state})["state"] == state


def default_vpc(ec2) -> str:
    return ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"][0]["VpcId"]


@pytest.fixture
def group(ec2, res):
    """A fresh security group in the default VPC, deleted at teardown if still there."""
    name = res.name("strict-sg")
    gid = ec2.create_security_group(GroupName=name, Description="strict test", VpcId=default_vpc(ec2))["GroupId"]

    def drop():
        try:
            ec2.delete_security_group(GroupId=gid)
        except botocore.exceptions.ClientError:
            pass

    yield name, gid
    # teardown runs before res's: the instances using the group must be gone first
    for iid in res.instances:
        try:
            ec2.terminate_instances(InstanceIds=[iid])
            wait_state(ec2, iid, "terminated", timeout=120)
        except (botocore.exceptions.ClientError, AssertionError):
            pass
    drop()


def test_ami_names_are_unique_per_region_until_deregistered(ec2, res, debian_ami):
    a = res.run(debian_ami)
    name = res.name("strict-ami")
    first = ec2.create_image(InstanceId=a["InstanceId"], Name=name)["ImageId"]
    res.images.append(first)
    want = {"Code": "InvalidAMIName.Duplicate", "Message": f"AMI name {name} is already in use by AMI {first}"}
    assert error_of(ec2.create_image, InstanceId=a["InstanceId"], Name=name) == want
    assert error_of(ec2.copy_image, SourceImageId=first, SourceRegion="us-east-1", Name=name) == want
    snap = ec2.describe_images(ImageIds=[first])["Images"][0]["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
    assert error_of(ec2.register_image, Name=name, RootDeviceName="/dev/xvda",
                    BlockDeviceMappings=[{"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": snap}}]) == want
    names = [i["Name"] for i in ec2.describe_images(Owners=["self"], Filters=[{"Name": "name", "Values": [name]}])["Images"]]
    assert names == [name], "a refused call left an image behind"
    # a deregistered image frees its name
    ec2.deregister_image(ImageId=first)
    res.images.remove(first)
    again = ec2.create_image(InstanceId=a["InstanceId"], Name=name)["ImageId"]
    res.images.append(again)
    assert again != first


def test_security_group_in_use_until_the_instance_is_terminated(ec2, res, debian_ami, group):
    name, gid = group
    inst = res.run(debian_ami, SecurityGroupIds=[gid])
    iid = inst["InstanceId"]
    in_use = {"Code": "DependencyViolation", "Message": f"resource {gid} has a dependent object"}
    assert error_of(ec2.delete_security_group, GroupId=gid) == in_use
    assert error_of(ec2.delete_security_group, GroupName=name) == in_use
    ec2.stop_instances(InstanceIds=[iid])
    wait_state(ec2, iid, "stopped")
    assert error_of(ec2.delete_security_group, GroupId=gid) == in_use, "a stopped instance keeps its groups"
    for state in ("pending", "stopping", "shutting-down"):
        force_state(iid, state)
        assert error_of(ec2.delete_security_group, GroupId=gid) == in_use, state
    force_state(iid, "stopped")
    ec2.terminate_instances(InstanceIds=[iid])
    wait_state(ec2, iid, "terminated")
    ec2.delete_security_group(GroupId=gid)
    assert error_of(ec2.delete_security_group, GroupId=gid)["Code"] == "InvalidGroup.NotFound"


def test_security_group_referenced_by_another_groups_rule(ec2, res, group):
    _, gid = group
    other = ec2.create_security_group(GroupName=res.name("strict-ref"), Description="refers",
                                      VpcId=default_vpc(ec2))["GroupId"]
    try:
        ec2.authorize_security_group_ingress(GroupId=other, IpPermissions=[
            {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "UserIdGroupPairs": [{"GroupId": gid}]}])
        assert error_of(ec2.delete_security_group, GroupId=gid)["Code"] == "DependencyViolation"
    finally:
        ec2.delete_security_group(GroupId=other)
    ec2.delete_security_group(GroupId=gid)


def test_security_group_names_unique_per_vpc(ec2, res, group):
    name, _ = group
    vpc = default_vpc(ec2)
    assert error_of(ec2.create_security_group, GroupName=name, Description="again", VpcId=vpc) == {
        "Code": "InvalidGroup.Duplicate", "Message": f"The security group '{name}' already exists for VPC '{vpc}'"}
    other_vpc = ec2.create_vpc(CidrBlock="127.201.0.0/16")["Vpc"]["VpcId"]
    try:
        gid = ec2.create_security_group(GroupName=name, Description="other vpc", VpcId=other_vpc)["GroupId"]
        ec2.delete_security_group(GroupId=gid)
    finally:
        ec2.delete_vpc(VpcId=other_vpc)
    assert error_of(ec2.describe_security_groups, GroupIds=["sg-0123456789abcdef0"]) == {
        "Code": "InvalidGroup.NotFound", "Message": "The security group 'sg-0123456789abcdef0' does not exist"}


def test_create_image_needs_running_stopping_or_stopped(ec2, res, debian_ami):
    iid = res.run(debian_ami)["InstanceId"]
    bad = {"Code": "InvalidParameterValue",
           "Message": f"Invalid value '{iid}' for instanceId. Instance is not in state 'running' or 'stopping' or 'stopped'"}
    for state in ("pending", "shutting-down"):
        force_state(iid, state)
        assert error_of(ec2.create_image, InstanceId=iid, Name=res.name("strict-state")) == bad, state
    force_state(iid, "stopping")
    res.images.append(ec2.create_image(InstanceId=iid, Name=res.name("strict-stopping"))["ImageId"])
    force_state(iid, "running")
    ec2.terminate_instances(InstanceIds=[iid])
    assert error_of(ec2.create_image, InstanceId=iid, Name=res.name("strict-dead")) == bad


def test_stop_start_reboot_follow_the_instance_state(ec2, res, debian_ami):
    iid = res.run(debian_ami)["InstanceId"]
    force_state(iid, "pending")
    assert error_of(ec2.stop_instances, InstanceIds=[iid]) == {
        "Code": "IncorrectInstanceState",
        "Message": f"Instance '{iid}' cannot be stopped as it has never reached the 'running' state."}
    assert ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]["State"]["Name"] == "pending"
    # starting a pending/running instance is a no-op answered with its state
    st = ec2.start_instances(InstanceIds=[iid])["StartingInstances"][0]
    assert st["PreviousState"]["Name"] == st["CurrentState"]["Name"] == "pending"
    force_state(iid, "running")
    ec2.stop_instances(InstanceIds=[iid])
    wait_state(ec2, iid, "stopped")
    st = ec2.stop_instances(InstanceIds=[iid])["StoppingInstances"][0]
    assert st["PreviousState"]["Name"] == st["CurrentState"]["Name"] == "stopped"
    assert error_of(ec2.reboot_instances, InstanceIds=[iid]) == {
        "Code": "IncorrectInstanceState",
        "Message": f"The instance '{iid}' is not in a state from which it can be rebooted."}
    assert wait_state(ec2, iid, "stopped")
    force_state(iid, "stopping")
    assert error_of(ec2.start_instances, InstanceIds=[iid])["Code"] == "IncorrectInstanceState"
    force_state(iid, "stopped")
    ec2.terminate_instances(InstanceIds=[iid])
    wait_state(ec2, iid, "terminated")
    assert error_of(ec2.start_instances, InstanceIds=[iid]) == {
        "Code": "IncorrectInstanceState",
        "Message": f"The instance '{iid}' is not in a state from which it can be started."}
    assert error_of(ec2.stop_instances, InstanceIds=[iid])["Code"] == "IncorrectInstanceState"
    assert wait_state(ec2, iid, "terminated")


def test_terminate_is_idempotent(ec2, res, debian_ami):
    iid = res.run(debian_ami)["InstanceId"]
    first = ec2.terminate_instances(InstanceIds=[iid])["TerminatingInstances"][0]
    assert first["PreviousState"]["Name"] == "running"
    wait_state(ec2, iid, "terminated")
    again = ec2.terminate_instances(InstanceIds=[iid])["TerminatingInstances"][0]
    assert again["PreviousState"]["Name"] == again["CurrentState"]["Name"] == "terminated"
    assert wait_state(ec2, iid, "terminated")
    assert error_of(ec2.terminate_instances, InstanceIds=["i-0123456789abcdef0"])["Code"] == "InvalidInstanceID.NotFound"


def test_key_pairs(ec2, res):
    name, _ = res.keypair("import")
    dup = {"Code": "InvalidKeyPair.Duplicate", "Message": f"The keypair '{name}' already exists."}
    assert error_of(ec2.create_key_pair, KeyName=name) == dup
    pub = ec2.describe_key_pairs(KeyNames=[name], IncludePublicKey=True)["KeyPairs"][0]["PublicKey"]
    assert error_of(ec2.import_key_pair, KeyName=name, PublicKeyMaterial=pub.encode()) == dup
    # EC2: deleting a key pair that does not exist succeeds
    ec2.delete_key_pair(KeyName=name)
    ec2.delete_key_pair(KeyName=name)
    assert error_of(ec2.describe_key_pairs, KeyNames=[name]) == {
        "Code": "InvalidKeyPair.NotFound", "Message": f"The key pair '{name}' does not exist"}


def test_snapshot_in_use_by_any_registered_image(ec2, res, debian_ami):
    iid = res.run(debian_ami)["InstanceId"]
    made = res.image(iid)
    snap = ec2.describe_images(ImageIds=[made])["Images"][0]["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
    assert error_of(ec2.delete_snapshot, SnapshotId=snap) == {
        "Code": "InvalidSnapshot.InUse", "Message": f"The snapshot {snap} is currently in use by {made}"}
    reg = ec2.register_image(Name=res.name("strict-reg"), RootDeviceName="/dev/xvda",
                             BlockDeviceMappings=[{"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": snap}}])["ImageId"]
    res.images.append(reg)
    ec2.deregister_image(ImageId=made)
    res.images.remove(made)
    # moto checked only the image the snapshot was made for
    assert error_of(ec2.delete_snapshot, SnapshotId=snap) == {
        "Code": "InvalidSnapshot.InUse", "Message": f"The snapshot {snap} is currently in use by {reg}"}
    ec2.deregister_image(ImageId=reg)
    res.images.remove(reg)
    ec2.delete_snapshot(SnapshotId=snap)
    assert error_of(ec2.delete_snapshot, SnapshotId=snap) == {
        "Code": "InvalidSnapshot.NotFound", "Message": f"The snapshot '{snap}' does not exist."}


def test_deregister_unknown_or_twice(ec2, res, debian_ami):
    assert error_of(ec2.deregister_image, ImageId="ami-0123456789abcdef0")["Code"] == "InvalidAMIID.NotFound"
    ami = res.image(res.run(debian_ami)["InstanceId"])
    ec2.deregister_image(ImageId=ami)
    res.images.remove(ami)
    assert error_of(ec2.deregister_image, ImageId=ami)["Code"] == "InvalidAMIID.Unavailable"
