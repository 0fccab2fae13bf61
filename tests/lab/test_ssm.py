"""SSM Run Command in the lab (lab/ssm.py): registration through the instance profile, real
execution inside the instance's sandbox, output truncation and S3 output, timeouts,
cancellation, reboots, and presigned S3 URLs fetched from inside an instance."""

from __future__ import annotations

import json
import time
import uuid

import boto3
import pytest

from conftest import describe

TRUST = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}],
}
SSM_POLICY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": ["ssm:UpdateInstanceInformation", "ssmmessages:*", "ec2messages:*"],
                   "Resource": "*"}],
}
DONE = ("Success", "Failed", "TimedOut", "Cancelled")


def client(name, lab_env):
    return boto3.client(name, region_name="us-east-1", endpoint_url=lab_env["AWS_ENDPOINT_URL"])


@pytest.fixture(scope="module")
def ssm(lab_env):
    return client("ssm", lab_env)


@pytest.fixture(scope="module")
def s3(lab_env):
    return client("s3", lab_env)


@pytest.fixture(scope="module")
def profiles(lab_env):
    """(profile allowed to use SSM, profile whose role may not)."""
    iam = client("iam", lab_env)
    tag = uuid.uuid4().hex[:8]
    out = []
    for kind, policy in (("ssm", SSM_POLICY), ("nossm", None)):
        name = f"labtest-{kind}-{tag}"
        iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(TRUST))
        if policy:
            iam.put_role_policy(RoleName=name, PolicyName="ssm", PolicyDocument=json.dumps(policy))
        iam.create_instance_profile(InstanceProfileName=name)
        iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=name)
        out.append(name)
    yield tuple(out)
    for name in out:
        iam.remove_role_from_instance_profile(InstanceProfileName=name, RoleName=name)
        iam.delete_instance_profile(InstanceProfileName=name)
        for p in iam.list_role_policies(RoleName=name)["PolicyNames"]:
            iam.delete_role_policy(RoleName=name, PolicyName=p)
        iam.delete_role(RoleName=name)


def online(ssm, iid: str, timeout: float = 20) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        info = ssm.describe_instance_information(Filters=[{"Key": "InstanceIds", "Values": [iid]}])
        lst = info["InstanceInformationList"]
        if lst and lst[0]["PingStatus"] == "Online":
            return lst[0]
        assert time.monotonic() < deadline, f"{iid} never came online with SSM: {lst}"
        time.sleep(0.1)


def run(ssm, iid: str, commands: list[str], timeout: float = 30, **kw) -> dict:
    params = {"commands": commands}
    for k in ("workingDirectory", "executionTimeout"):
        if k in kw:
            params[k] = [str(kw.pop(k))]
    cid = ssm.send_command(InstanceIds=[iid], DocumentName="AWS-RunShellScript", Parameters=params, **kw)[
        "Command"]["CommandId"]
    return wait(ssm, cid, iid, timeout)


def wait(ssm, cid: str, iid: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        r = ssm.get_command_invocation(CommandId=cid, InstanceId=iid)
        if r["Status"] in DONE:
            return r
        assert time.monotonic() < deadline, f"command {cid} still {r['Status']}"
        time.sleep(0.1)


@pytest.fixture
def node(res, debian_ami, profiles, ssm):
    inst = res.run(debian_ami, IamInstanceProfile={"Name": profiles[0]})
    online(ssm, inst["InstanceId"])
    return inst["InstanceId"]


def test_registration_needs_a_profile_whose_role_allows_ssm(res, debian_ami, profiles, ssm):
    ok = res.run(debian_ami, IamInstanceProfile={"Name": profiles[0]})["InstanceId"]
    denied = res.run(debian_ami, IamInstanceProfile={"Name": profiles[1]})["InstanceId"]
    bare = res.run(debian_ami)["InstanceId"]
    info = online(ssm, ok)
    assert info["PlatformType"] == "Linux" and info["ResourceType"] == "EC2Instance"
    assert info["IPAddress"] == describe(res.ec2, ok)["PrivateIpAddress"]
    listed = {i["InstanceId"] for i in ssm.describe_instance_information()["InstanceInformationList"]}
    assert ok in listed and denied not in listed and bare not in listed
    for iid in (denied, bare):
        with pytest.raises(ssm.exceptions.ClientError, match="InvalidInstanceId"):
            ssm.send_command(InstanceIds=[iid], DocumentName="AWS-RunShellScript",
                             Parameters={"commands": ["true"]})
    res.ec2.stop_instances(InstanceIds=[ok])
    lst = ssm.describe_instance_information(Filters=[{"Key": "InstanceIds", "Values": [ok]}])
    assert lst["InstanceInformationList"][0]["PingStatus"] == "ConnectionLost"
    res.ec2.start_instances(InstanceIds=[ok])
    online(ssm, ok)
    res.ec2.terminate_instances(InstanceIds=[ok])
    lst = ssm.describe_instance_information(Filters=[{"Key": "InstanceIds", "Values": [ok]}])
    assert lst["InstanceInformationList"] == []


def test_commands_run_as_root_in_the_instance_with_real_status(node, ssm, res, debian_ami, profiles):
    other = res.run(debian_ami, IamInstanceProfile={"Name": profiles[0]})["InstanceId"]
    r = run(ssm, node, ["set -e", "id -un", "pwd", "echo to-err >&2", "touch /var/tmp/ssm-was-here"],
            workingDirectory="/etc")
    assert r["Status"] == "Success" and r["ResponseCode"] == 0, r
    assert r["StandardOutputContent"] == "root\n/etc\n"
    assert r["StandardErrorContent"] == "to-err\n"
    r = run(ssm, node, ["echo before", "echo oops >&2", "exit 7"])
    assert (r["Status"], r["StatusDetails"], r["ResponseCode"]) == ("Failed", "Failed", 7), r
    assert r["StandardOutputContent"] == "before\n" and r["StandardErrorContent"] == "oops\n"
    # only the instance named ran it (moto would have run it everywhere)
    r = run(ssm, other, ["test -e /var/tmp/ssm-was-here && echo yes || echo no"])
    assert r["StandardOutputContent"] == "no\n"
    r = run(ssm, node, ["true"], workingDirectory="/does/not/exist")
    assert r["Status"] == "Failed" and "Invalid working directory" in r["StandardErrorContent"]


def test_output_truncated_like_the_api_and_full_in_s3(node, ssm, s3):
    bucket = f"labtest-out-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    r = run(ssm, node, ["head -c 30000 /dev/zero | tr '\\0' a", "head -c 9000 /dev/zero | tr '\\0' b >&2"],
            OutputS3BucketName=bucket, OutputS3KeyPrefix="runs")
    assert r["Status"] == "Success"
    assert r["StandardOutputContent"] == "a" * 24000
    assert r["StandardErrorContent"] == "b" * 8000
    base = f"runs/{r['CommandId']}/{node}/awsrunShellScript/0.awsrunShellScript"
    assert s3.get_object(Bucket=bucket, Key=f"{base}/stdout")["Body"].read() == b"a" * 30000
    assert s3.get_object(Bucket=bucket, Key=f"{base}/stderr")["Body"].read() == b"b" * 9000
    assert r["StandardOutputUrl"].endswith(f"/{bucket}/{base}/stdout")
    for o in s3.list_objects_v2(Bucket=bucket).get("Contents", []):
        s3.delete_object(Bucket=bucket, Key=o["Key"])
    s3.delete_bucket(Bucket=bucket)


def test_execution_timeout_and_cancel_kill_the_command(node, ssm):
    t0 = time.monotonic()
    r = run(ssm, node, ["echo started", "sleep 30", "echo never"], executionTimeout=1)
    assert (r["Status"], r["StatusDetails"]) == ("TimedOut", "ExecutionTimedOut"), r
    assert time.monotonic() - t0 < 10
    assert "never" not in r["StandardOutputContent"]
    cid = ssm.send_command(InstanceIds=[node], DocumentName="AWS-RunShellScript",
                           Parameters={"commands": ["sleep 30; touch /var/tmp/not-cancelled"]})["Command"]["CommandId"]
    deadline = time.monotonic() + 10
    while ssm.get_command_invocation(CommandId=cid, InstanceId=node)["Status"] != "InProgress":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    ssm.cancel_command(CommandId=cid)
    assert wait(ssm, cid, node)["Status"] == "Cancelled"
    # the process group is gone: nothing left sleeping in the sandbox
    r = run(ssm, node, ["pgrep -f 'sleep 30' || echo none"])
    assert r["StandardOutputContent"].strip() == "none", r


def test_commands_survive_a_reboot_and_the_disk_is_kept(node, ssm, res):
    assert run(ssm, node, ["echo kept > /var/tmp/ssm-disk", "echo gone > /run/ssm-tmpfs"])["Status"] == "Success"
    res.ec2.reboot_instances(InstanceIds=[node])
    # session-less: a command sent right after the reboot is delivered once the node is back
    r = run(ssm, node, ["cat /var/tmp/ssm-disk", "test ! -e /run/ssm-tmpfs && echo rebooted"])
    assert r["Status"] == "Success" and r["StandardOutputContent"] == "kept\nrebooted\n", r


def test_instance_fetches_a_presigned_url_from_the_lab_s3(node, ssm, s3):
    bucket = f"labtest-stage-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="a/file.txt", Body=b"staged bytes\n")
    url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "a/file.txt"}, ExpiresIn=60)
    assert url.startswith("http://127.")  # network rule: the lab's S3 on loopback
    r = run(ssm, node, [f"curl -fsS '{url}' -o /var/tmp/f && cat /var/tmp/f",
                        f"python3 -c \"import urllib.request,sys; sys.stdout.write(urllib.request.urlopen('{url}').read().decode())\""])
    assert r["Status"] == "Success", r
    assert r["StandardOutputContent"] == "staged bytes\nstaged bytes\n"
    s3.delete_object(Bucket=bucket, Key="a/file.txt")
    s3.delete_bucket(Bucket=bucket)
