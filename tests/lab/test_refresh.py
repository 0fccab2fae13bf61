"""Instance refresh in the lab (lab/refresh.py): Start/Describe/Cancel/RollbackInstanceRefresh
really replace a group's instances, health failures, checkpoints, DeleteLaunchTemplateVersions.

Like every lab test, against the lab LAB_DIR names (default .lab), e.g.
`LAB_DIR=/work/lab-deploy LAB_PORT=4611 LAB_VPC_CIDR=127.61.0.0/16 scripts/lab test tests/lab/test_refresh.py`.
"""

from __future__ import annotations

import time

import botocore.exceptions
import pytest

from conftest import assert_loopback, lab_api, ssh, wait_state


def baked_image(ec2, res, debian_ami, key_name, key, marker: str) -> str:
    a = res.run(debian_ami, key_name)
    ssh(a["PrivateIpAddress"], key, f"echo {marker} | sudo tee /etc/refresh-marker >/dev/null")
    ec2.stop_instances(InstanceIds=[a["InstanceId"]])
    ami = res.image(a["InstanceId"])
    ec2.terminate_instances(InstanceIds=[a["InstanceId"]])
    return ami


def group_with_template(ec2, autoscaling, res, image_id: str, key_name: str, desired: int = 2):
    """Launch template (version 1 on image_id) + group pinned to version 1."""
    lt = res.name("labtest-lt")
    lt_id = ec2.create_launch_template(
        LaunchTemplateName=lt,
        LaunchTemplateData={"ImageId": image_id, "InstanceType": "t3.micro", "KeyName": key_name},
    )["LaunchTemplate"]["LaunchTemplateId"]
    res.cleanups.append(lambda: ec2.delete_launch_template(LaunchTemplateId=lt_id))
    asg = res.name("labtest-asg")
    subnets = [s["SubnetId"] for s in ec2.describe_subnets(Filters=[{"Name": "default-for-az", "Values": ["true"]}])["Subnets"]]
    autoscaling.create_auto_scaling_group(
        AutoScalingGroupName=asg,
        LaunchTemplate={"LaunchTemplateId": lt_id, "Version": "1"},
        MinSize=desired, MaxSize=desired * 2, DesiredCapacity=desired,
        VPCZoneIdentifier=",".join(subnets[:2]),
    )

    def delete():
        autoscaling.delete_auto_scaling_group(AutoScalingGroupName=asg, ForceDelete=True)

    res.cleanups.append(delete)
    return asg, lt_id


def new_version(ec2, lt_id: str, image_id: str, key_name: str) -> int:
    return ec2.create_launch_template_version(
        LaunchTemplateId=lt_id,
        LaunchTemplateData={"ImageId": image_id, "InstanceType": "t3.micro", "KeyName": key_name},
    )["LaunchTemplateVersion"]["VersionNumber"]


def group_instances(ec2, autoscaling, asg) -> list[dict]:
    g = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[asg])["AutoScalingGroups"][0]
    ids = [i["InstanceId"] for i in g["Instances"]]
    if not ids:
        return []
    out = []
    for r in ec2.describe_instances(InstanceIds=ids)["Reservations"]:
        out += r["Instances"]
    return out


def wait_refresh(autoscaling, asg, rid, until: tuple[str, ...], timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    seen = []
    while True:
        r = autoscaling.describe_instance_refreshes(AutoScalingGroupName=asg, InstanceRefreshIds=[rid])["InstanceRefreshes"][0]
        if not seen or seen[-1] != r["Status"]:
            seen.append(r["Status"])
        if r["Status"] in until:
            r["seen"] = seen
            return r
        assert time.monotonic() < deadline, f"refresh still {r['Status']} ({seen})"
        time.sleep(0.2)


def test_refresh_replaces_instances_with_the_new_image(ec2, autoscaling, res, debian_ami):
    key_name, key = res.keypair("import")
    new_ami = baked_image(ec2, res, debian_ami, key_name, key, "v2")
    asg, lt_id = group_with_template(ec2, autoscaling, res, debian_ami, key_name)
    before = {i["InstanceId"] for i in group_instances(ec2, autoscaling, asg)}
    res.instances.extend(before)
    assert len(before) == 2
    v = new_version(ec2, lt_id, new_ami, key_name)

    rid = autoscaling.start_instance_refresh(
        AutoScalingGroupName=asg,
        DesiredConfiguration={"LaunchTemplate": {"LaunchTemplateId": lt_id, "Version": str(v)}},
        Preferences={"MinHealthyPercentage": 50, "InstanceWarmup": 0, "SkipMatching": False},
    )["InstanceRefreshId"]
    r = wait_refresh(autoscaling, asg, rid, ("Successful", "Failed"))
    assert r["Status"] == "Successful", r
    assert r["PercentageComplete"] == 100 and r["InstancesToUpdate"] == 0
    assert r["Preferences"]["MinHealthyPercentage"] == 50
    assert r["DesiredConfiguration"]["LaunchTemplate"]["Version"] == str(v)

    insts = group_instances(ec2, autoscaling, asg)
    res.instances.extend(i["InstanceId"] for i in insts)
    assert len(insts) == 2
    assert not before & {i["InstanceId"] for i in insts}, "old instances still in the group"
    for i in insts:
        assert_loopback(i)
        assert i["ImageId"] == new_ami
        assert ssh(i["PrivateIpAddress"], key, "cat /etc/refresh-marker").stdout.strip() == "v2"
    for iid in before:
        assert wait_state(ec2, iid, "terminated", timeout=10)
    g = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[asg])["AutoScalingGroups"][0]
    assert g["LaunchTemplate"]["Version"] == str(v), "a successful refresh updates the group"

    # already matching + SkipMatching: nothing to do
    rid2 = autoscaling.start_instance_refresh(
        AutoScalingGroupName=asg,
        DesiredConfiguration={"LaunchTemplate": {"LaunchTemplateId": lt_id, "Version": str(v)}},
        Preferences={"SkipMatching": True, "InstanceWarmup": 0},
    )["InstanceRefreshId"]
    r2 = wait_refresh(autoscaling, asg, rid2, ("Successful", "Failed"))
    assert r2["Status"] == "Successful"
    assert {i["InstanceId"] for i in group_instances(ec2, autoscaling, asg)} == {i["InstanceId"] for i in insts}
    listed = autoscaling.describe_instance_refreshes(AutoScalingGroupName=asg)["InstanceRefreshes"]
    assert [x["InstanceRefreshId"] for x in listed] == [rid2, rid], "newest first"


def test_unhealthy_image_fails_and_auto_rollback_restores(ec2, autoscaling, res, debian_ami):
    key_name, key = res.keypair("import")
    bad_ami = baked_image(ec2, res, debian_ami, key_name, key, "bad")
    ec2.create_tags(Resources=[bad_ami], Tags=[{"Key": "lab:health", "Value": "fail"}])  # way 1: a tag
    asg, lt_id = group_with_template(ec2, autoscaling, res, debian_ami, key_name)
    res.instances.extend(i["InstanceId"] for i in group_instances(ec2, autoscaling, asg))
    v = new_version(ec2, lt_id, bad_ami, key_name)
    desired = {"LaunchTemplate": {"LaunchTemplateId": lt_id, "Version": str(v)}}

    # without AutoRollback: Failed with a reason, capacity restored from the group's config
    rid = autoscaling.start_instance_refresh(
        AutoScalingGroupName=asg, DesiredConfiguration=desired,
        Preferences={"MinHealthyPercentage": 50, "InstanceWarmup": 0},
    )["InstanceRefreshId"]
    r = wait_refresh(autoscaling, asg, rid, ("Successful", "Failed"))
    assert r["Status"] == "Failed", r
    assert bad_ami in r["StatusReason"] and "health check" in r["StatusReason"]
    insts = group_instances(ec2, autoscaling, asg)
    res.instances.extend(i["InstanceId"] for i in insts)
    assert len(insts) == 2 and {i["ImageId"] for i in insts} == {debian_ami}

    # way 2: the lab API
    ec2.delete_tags(Resources=[bad_ami], Tags=[{"Key": "lab:health"}])
    lab_api("unhealthy-image", {"image_id": bad_ami})
    res.cleanups.append(lambda: lab_api("unhealthy-image", {"image_id": bad_ami, "unhealthy": False}))
    # with AutoRollback: RollbackInProgress -> RollbackSuccessful, group on the previous image
    rid = autoscaling.start_instance_refresh(
        AutoScalingGroupName=asg, DesiredConfiguration=desired,
        Preferences={"MinHealthyPercentage": 50, "InstanceWarmup": 0, "AutoRollback": True},
    )["InstanceRefreshId"]
    r = wait_refresh(autoscaling, asg, rid, ("Successful", "Failed", "RollbackSuccessful", "RollbackFailed"))
    assert r["Status"] == "RollbackSuccessful", r
    assert r["RollbackDetails"]["RollbackReason"]
    insts = group_instances(ec2, autoscaling, asg)
    res.instances.extend(i["InstanceId"] for i in insts)
    assert len(insts) == 2 and {i["ImageId"] for i in insts} == {debian_ami}
    g = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[asg])["AutoScalingGroups"][0]
    assert g["LaunchTemplate"]["Version"] == "1"
    for i in insts:
        ssh(i["PrivateIpAddress"], key, "true")



def test_checkpoints_cancel_rollback_and_concurrency(ec2, autoscaling, res, debian_ami):
    key_name, key = res.keypair("import")
    new_ami = baked_image(ec2, res, debian_ami, key_name, key, "v2")
    asg, lt_id = group_with_template(ec2, autoscaling, res, debian_ami, key_name)
    res.instances.extend(i["InstanceId"] for i in group_instances(ec2, autoscaling, asg))
    v = new_version(ec2, lt_id, new_ami, key_name)
    desired = {"LaunchTemplate": {"LaunchTemplateId": lt_id, "Version": str(v)}}
    prefs = {"MinHealthyPercentage": 50, "InstanceWarmup": 0, "CheckpointPercentages": [50, 100], "CheckpointDelay": 600}

    with pytest.raises(botocore.exceptions.ClientError) as e:
        autoscaling.cancel_instance_refresh(AutoScalingGroupName=asg)
    assert e.value.response["Error"]["Code"] == "ActiveInstanceRefreshNotFound"

    rid = autoscaling.start_instance_refresh(AutoScalingGroupName=asg, DesiredConfiguration=desired, Preferences=prefs)["InstanceRefreshId"]
    deadline = time.monotonic() + 30
    while True:  # paused at the 50% checkpoint
        r = autoscaling.describe_instance_refreshes(AutoScalingGroupName=asg)["InstanceRefreshes"][0]
        if r["PercentageComplete"] == 50 and "Checkpoint" in (r.get("StatusReason") or ""):
            break
        assert time.monotonic() < deadline, r
        time.sleep(0.2)
    assert r["Status"] == "InProgress" and r["InstancesToUpdate"] == 1
    images = sorted(i["ImageId"] for i in group_instances(ec2, autoscaling, asg))
    assert images == sorted([debian_ami, new_ami])

    with pytest.raises(botocore.exceptions.ClientError) as e:
        autoscaling.start_instance_refresh(AutoScalingGroupName=asg, DesiredConfiguration=desired, Preferences=prefs)
    assert e.value.response["Error"]["Code"] == "InstanceRefreshInProgress"

    assert autoscaling.cancel_instance_refresh(AutoScalingGroupName=asg)["InstanceRefreshId"] == rid
    r = wait_refresh(autoscaling, asg, rid, ("Cancelled",))
    assert r["seen"][-1] == "Cancelled"
    assert sorted(i["ImageId"] for i in group_instances(ec2, autoscaling, asg)) == images, "cancel keeps replacements"

    # a paused refresh rolled back by RollbackInstanceRefresh
    rid = autoscaling.start_instance_refresh(AutoScalingGroupName=asg, DesiredConfiguration=desired, Preferences=prefs)["InstanceRefreshId"]
    deadline = time.monotonic() + 30
    while "Checkpoint" not in (autoscaling.describe_instance_refreshes(AutoScalingGroupName=asg)["InstanceRefreshes"][0].get("StatusReason") or ""):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert autoscaling.rollback_instance_refresh(AutoScalingGroupName=asg)["InstanceRefreshId"] == rid
    r = wait_refresh(autoscaling, asg, rid, ("RollbackSuccessful", "RollbackFailed"))
    assert r["Status"] == "RollbackSuccessful", r
    insts = group_instances(ec2, autoscaling, asg)
    res.instances.extend(i["InstanceId"] for i in insts)
    assert [i["ImageId"] for i in insts] == [debian_ami, debian_ami]


def test_delete_launch_template_versions(ec2, res, debian_ami):
    lt = res.name("labtest-lt")
    lt_id = ec2.create_launch_template(LaunchTemplateName=lt, LaunchTemplateData={"ImageId": debian_ami})["LaunchTemplate"]["LaunchTemplateId"]
    res.cleanups.append(lambda: ec2.delete_launch_template(LaunchTemplateId=lt_id))
    for _ in range(3):
        ec2.create_launch_template_version(LaunchTemplateId=lt_id, LaunchTemplateData={"ImageId": debian_ami, "UserData": "IyEvYmluL3NoCnRydWUK"})
    r = ec2.delete_launch_template_versions(LaunchTemplateId=lt_id, Versions=["1", "2", "9"])
    assert [x["VersionNumber"] for x in r["SuccessfullyDeletedLaunchTemplateVersions"]] == [2]
    codes = {x["VersionNumber"]: x["ResponseError"]["Code"] for x in r["UnsuccessfullyDeletedLaunchTemplateVersions"]}
    assert codes == {1: "unexpectedError", 9: "launchTemplateVersionDoesNotExist"}
    nums = [v["VersionNumber"] for v in ec2.describe_launch_template_versions(LaunchTemplateId=lt_id)["LaunchTemplateVersions"]]
    assert nums == [1, 3, 4]
    v = ec2.create_launch_template_version(LaunchTemplateId=lt_id, LaunchTemplateData={"ImageId": debian_ami})
    assert v["LaunchTemplateVersion"]["VersionNumber"] == 5, "version numbers are never reused"
    d = ec2.describe_launch_template_versions(LaunchTemplateId=lt_id, Versions=["3"])["LaunchTemplateVersions"][0]
    assert d["LaunchTemplateData"]["UserData"] == "IyEvYmluL3NoCnRydWUK"


def test_launch_before_terminate_above_100_percent(ec2, autoscaling, res, debian_ami):
    """MaxHealthyPercentage 200 / Min 100: the whole batch is launched (and healthy) before
    any old instance goes; capacity never drops below desired."""
    key_name, key = res.keypair("import")
    new_ami = baked_image(ec2, res, debian_ami, key_name, key, "v3")
    asg, lt_id = group_with_template(ec2, autoscaling, res, debian_ami, key_name)
    before = {i["InstanceId"] for i in group_instances(ec2, autoscaling, asg)}
    res.instances.extend(before)
    v = new_version(ec2, lt_id, new_ami, key_name)
    rid = autoscaling.start_instance_refresh(
        AutoScalingGroupName=asg,
        DesiredConfiguration={"LaunchTemplate": {"LaunchTemplateId": lt_id, "Version": str(v)}},
        Preferences={"MinHealthyPercentage": 100, "MaxHealthyPercentage": 200, "InstanceWarmup": 1},
    )["InstanceRefreshId"]
    peak = 0
    deadline = time.monotonic() + 60
    while True:
        insts = group_instances(ec2, autoscaling, asg)
        assert len(insts) >= 2, "capacity dropped below desired"
        peak = max(peak, len(insts))
        r = autoscaling.describe_instance_refreshes(AutoScalingGroupName=asg)["InstanceRefreshes"][0]
        if r["Status"] not in ("Pending", "InProgress"):
            break
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert r["Status"] == "Successful", r
    assert peak == 4, f"expected 2 extra instances during the warm-up, saw at most {peak}"
    insts = group_instances(ec2, autoscaling, asg)
    res.instances.extend(i["InstanceId"] for i in insts)
    assert len(insts) == 2 and {i["ImageId"] for i in insts} == {new_ami}


def test_refresh_errors(autoscaling):
    with pytest.raises(botocore.exceptions.ClientError) as e:
        autoscaling.start_instance_refresh(AutoScalingGroupName="no-such-group-for-refresh")
    assert e.value.response["Error"]["Code"] == "ValidationError"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        autoscaling.rollback_instance_refresh(AutoScalingGroupName="no-such-group-for-refresh")
    assert e.value.response["Error"]["Code"] == "ValidationError"
