"""The leftovers report (lab/leftovers.py, `scripts/lab leftovers`, GET /lab-api/leftovers):
each kind of resource appears when made and disappears when removed, and the lab's own
furniture (base images, default security groups) never counts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid

import boto3

from conftest import LAB_CMD, lab_api, wait_state
from test_ssm import SSM_POLICY, TRUST


def ids(kind: str) -> set[str]:
    return {i["id"] for i in lab_api("leftovers")["leftovers"] if i["kind"] == kind}


def item(kind: str, rid: str) -> dict:
    return next(i for i in lab_api("leftovers")["leftovers"] if i["kind"] == kind and i["id"] == rid)


def test_base_catalogue_and_defaults_are_not_leftovers(ec2):
    rep = lab_api("leftovers")
    base = {i["ImageId"] for i in ec2.describe_images(Owners=["136693071363"])["Images"]}
    assert base and not base & ids("image")
    default_sgs = {g["GroupId"] for g in ec2.describe_security_groups()["SecurityGroups"] if g["GroupName"] == "default"}
    assert default_sgs and not default_sgs & ids("security-group")
    assert isinstance(rep["clean"], bool) and rep["clean"] == (not rep["leftovers"])


def test_instances_volumes_images_snapshots(ec2, res, debian_ami):
    inst = res.run(debian_ami)
    iid = inst["InstanceId"]
    assert iid in ids("instance")
    assert item("instance", iid)["state"] in ("pending", "running")
    root_vol = ec2.describe_volumes(Filters=[{"Name": "attachment.instance-id", "Values": [iid]}])["Volumes"][0]["VolumeId"]
    assert root_vol not in ids("volume")  # belongs to a live instance
    vol = ec2.create_volume(AvailabilityZone="us-east-1a", Size=1)["VolumeId"]
    assert vol in ids("volume")
    ec2.delete_volume(VolumeId=vol)
    assert vol not in ids("volume")

    ec2.stop_instances(InstanceIds=[iid])
    wait_state(ec2, iid, "stopped")
    ami = res.image(iid)
    snap = ec2.describe_images(ImageIds=[ami])["Images"][0]["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
    assert ami in ids("image")
    assert snap not in ids("snapshot")  # the image uses it
    ec2.terminate_instances(InstanceIds=[iid])
    wait_state(ec2, iid, "terminated")
    assert iid not in ids("instance")
    assert root_vol not in ids("volume")  # deleted on termination
    ec2.deregister_image(ImageId=ami)
    assert ami not in ids("image")
    assert snap in ids("snapshot")  # no image uses it any more: left over
    ec2.delete_snapshot(SnapshotId=snap)
    assert snap not in ids("snapshot")


def test_key_pairs_and_bake_locks(ec2, res):
    name, _ = res.keypair("create")
    assert name in ids("key-pair")
    lock = "bake-lock-" + uuid.uuid4().hex
    pub = subprocess.run(["ssh-keygen", "-y", "-f", str(res.tmp / name)], capture_output=True, text=True, check=True).stdout
    ec2.import_key_pair(KeyName=lock, PublicKeyMaterial=pub.encode())
    assert item("key-pair", lock).get("note") == "bake build lock"
    ec2.delete_key_pair(KeyName=lock)
    ec2.delete_key_pair(KeyName=name)
    assert not {name, lock} & ids("key-pair")


def test_security_groups_and_launch_templates(ec2, res, debian_ami):
    vpc = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
    sg = ec2.create_security_group(GroupName=res.name("labtest-sg"), Description="t", VpcId=vpc)["GroupId"]
    assert sg in ids("security-group")
    ec2.delete_security_group(GroupId=sg)
    assert sg not in ids("security-group")
    lt = ec2.create_launch_template(LaunchTemplateName=res.name("labtest-lt"),
                                    LaunchTemplateData={"ImageId": debian_ami})["LaunchTemplate"]["LaunchTemplateId"]
    ec2.create_launch_template_version(LaunchTemplateId=lt, LaunchTemplateData={"ImageId": debian_ami})
    assert item("launch-template", lt)["versions"] == [1, 2]
    ec2.delete_launch_template(LaunchTemplateId=lt)
    assert lt not in ids("launch-template")


def test_s3_objects(lab_env):
    s3 = boto3.client("s3", region_name="us-east-1", endpoint_url=lab_env["AWS_ENDPOINT_URL"])
    bucket = f"labtest-left-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    try:
        assert not {i for i in ids("s3-object") if i.startswith(f"s3://{bucket}/")}  # empty bucket: nothing
        key = "bake-staging/b-123/upload/blob"
        s3.put_object(Bucket=bucket, Key=key, Body=b"x" * 10)
        assert item("s3-object", f"s3://{bucket}/{key}")["size"] == 10
        s3.delete_object(Bucket=bucket, Key=key)
        assert f"s3://{bucket}/{key}" not in ids("s3-object")
    finally:
        for o in s3.list_objects_v2(Bucket=bucket).get("Contents", []):
            s3.delete_object(Bucket=bucket, Key=o["Key"])
        s3.delete_bucket(Bucket=bucket)


def test_ssm_commands_in_progress(ec2, res, debian_ami, lab_env):
    iam = boto3.client("iam", region_name="us-east-1", endpoint_url=lab_env["AWS_ENDPOINT_URL"])
    ssm = boto3.client("ssm", region_name="us-east-1", endpoint_url=lab_env["AWS_ENDPOINT_URL"])
    name = f"labtest-left-{uuid.uuid4().hex[:8]}"
    iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(TRUST))
    iam.put_role_policy(RoleName=name, PolicyName="ssm", PolicyDocument=json.dumps(SSM_POLICY))
    iam.create_instance_profile(InstanceProfileName=name)
    iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=name)

    def drop_iam():
        iam.remove_role_from_instance_profile(InstanceProfileName=name, RoleName=name)
        iam.delete_instance_profile(InstanceProfileName=name)
        iam.delete_role_policy(RoleName=name, PolicyName="ssm")
        iam.delete_role(RoleName=name)

    res.cleanups.append(drop_iam)
    inst = res.run(debian_ami, IamInstanceProfile={"Name": name})
    cid = ssm.send_command(InstanceIds=[inst["InstanceId"]], DocumentName="AWS-RunShellScript",
                           Parameters={"commands": ["sleep 30"]})["Command"]["CommandId"]
    assert item("ssm-command", cid)["status"] in ("Pending", "InProgress")
    ssm.cancel_command(CommandId=cid)
    deadline = time.monotonic() + 20
    while cid in ids("ssm-command"):
        assert time.monotonic() < deadline, "a cancelled command is still reported"
        time.sleep(0.1)


def test_cli_text_and_json(res, debian_ami):
    env = dict(os.environ)
    r = subprocess.run([str(LAB_CMD), "leftovers", "--json"], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    before = json.loads(r.stdout)
    inst = res.run(debian_ami)
    r = subprocess.run([str(LAB_CMD), "leftovers"], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    assert inst["InstanceId"] in r.stdout and "instance" in r.stdout
    assert "leftover(s)" in r.stdout.splitlines()[0]
    assert before["clean"] == (not before["leftovers"])


def test_clean_lab_reports_nothing():
    """A fresh lab of its own (nothing else runs there): an empty report, exit 0."""
    from test_lifecycle import LAB_DIR, lab  # the lifecycle tests' private second lab

    r = lab("up")
    assert r.returncode == 0, r.stderr
    try:
        lab("reset")
        r = lab("leftovers")
        assert r.returncode == 0 and r.stdout == "lab: no leftovers\n", r.stdout + r.stderr
        r = lab("leftovers", "--json")
        assert json.loads(r.stdout) == {"clean": True, "counts": {}, "leftovers": []}
    finally:
        lab("down")
        shutil.rmtree(LAB_DIR, ignore_errors=True)
