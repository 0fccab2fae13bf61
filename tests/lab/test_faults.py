"""Injected faults (lab/faults.py; README "Faults"): rules through /lab-api/faults, the hostile
profile (token buckets, random throttling / 5xx / lost responses, visibility lag), call counts,
and each service's own error format as boto3 parses it. botocore's retries are off throughout,
so every fault reaches the test."""

from __future__ import annotations

import json
import time
import urllib.request

import boto3
import botocore.exceptions
import pytest
from botocore.config import Config

from conftest import load_env

NO_RETRY = Config(retries={"mode": "standard", "total_max_attempts": 1})
CALM = {"faults": "hostile", "buckets": False, "throttle": 0, "5xx": 0, "lost": 0, "lag": 0, "lag_min": 0}


def api(path: str, body=None, method: str | None = None) -> dict:
    env = load_env()
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"{env['BAKE_LAB_API']}/{path}", data=data,
                                 method=method or ("POST" if data is not None else "GET"))
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.load(r)


@pytest.fixture
def faults(lab_env, res):
    """Clean fault state before and after: no rules, profile off, counters zero (torn down
    before `res`, so cleaning up the test's resources is never faulted)."""
    def clear():
        api("faults", method="DELETE")
        api("faults/profile", {"faults": "off"})
        api("calls", method="DELETE")

    clear()
    yield api
    clear()


def client(lab_env, service: str):
    return boto3.client(service, region_name="us-east-1", endpoint_url=lab_env["AWS_ENDPOINT_URL"], config=NO_RETRY)


@pytest.fixture
def ec2r(lab_env):
    return client(lab_env, "ec2")


def err(call, *args, **kwargs) -> tuple[int, str, str]:
    with pytest.raises(botocore.exceptions.ClientError) as e:
        call(*args, **kwargs)
    r = e.value.response
    return r["ResponseMetadata"]["HTTPStatusCode"], r["Error"]["Code"], r["Error"].get("Message", "")


def test_each_service_answers_in_its_own_format(faults, lab_env):
    ec2, asg, ssm, s3 = (client(lab_env, s) for s in ("ec2", "autoscaling", "ssm", "s3"))
    bucket = f"faults-{time.time_ns()}"
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="k", Body=b"x")
    faults("faults", {"rules": [
        {"service": "ec2", "action": "DescribeVpcs", "kind": "throttle"},
        {"service": "autoscaling", "action": "DescribeAutoScalingGroups", "kind": "throttle"},
        {"service": "ssm", "action": "GetParameter", "kind": "throttle"},
        {"service": "s3", "action": "GetObject", "kind": "throttle"},
        {"service": "ec2", "action": "DescribeVpcs", "kind": "5xx"},
        {"service": "autoscaling", "action": "DescribeAutoScalingGroups", "kind": "5xx"},
        {"service": "ssm", "action": "GetParameter", "kind": "5xx"},
        {"service": "s3", "action": "ListObjectsV2", "kind": "5xx"},
        {"service": "ec2", "action": "DescribeRegions", "status": 400, "code": "UnauthorizedOperation",
         "message": "You are not authorized to perform this operation."},
    ]})
    assert err(ec2.describe_vpcs) == (503, "RequestLimitExceeded", "Request limit exceeded.")
    assert err(asg.describe_auto_scaling_groups) == (400, "Throttling", "Rate exceeded")
    assert err(ssm.get_parameter, Name="/lab/none") == (400, "ThrottlingException", "Rate exceeded")
    assert err(s3.get_object, Bucket=bucket, Key="k") == (503, "SlowDown", "Please reduce your request rate.")
    assert err(ec2.describe_vpcs)[:2] == (500, "InternalError")
    assert err(asg.describe_auto_scaling_groups)[:2] == (500, "InternalFailure")
    assert err(ssm.get_parameter, Name="/lab/none")[:2] == (500, "InternalServerError")
    assert err(s3.list_objects_v2, Bucket=bucket)[:2] == (500, "InternalError")
    assert err(ec2.describe_regions) == (400, "UnauthorizedOperation", "You are not authorized to perform this operation.")
    # every rule fired once and expired: the same calls now pass
    ec2.describe_vpcs()
    asg.describe_auto_scaling_groups()
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"x"
    info = faults("faults")
    assert [r["fired"] for r in info["rules"]] == [1] * 9 and all(r["remaining"] == 0 for r in info["rules"])
    s3.delete_object(Bucket=bucket, Key="k")
    s3.delete_bucket(Bucket=bucket)


def test_rules_match_parameters_expire_and_calls_are_counted(faults, ec2r, debian_ami):
    faults("faults", [{"service": "ec2", "action": "DescribeImages", "params": {"ImageId": debian_ami},
                       "kind": "throttle", "times": 2},
                      {"action": "CreateSecurityGroup", "params": {"GroupName": {"regex": "^never-"}}}])
    ec2r.describe_images(Owners=["136693071363"])  # no ImageId: the rule does not match
    assert err(ec2r.describe_images, ImageIds=[debian_ami])[1] == "RequestLimitExceeded"
    assert err(ec2r.describe_images, ImageIds=[debian_ami])[1] == "RequestLimitExceeded"
    assert ec2r.describe_images(ImageIds=[debian_ami])["Images"][0]["ImageId"] == debian_ami
    counts = faults("calls")
    assert counts["calls"]["ec2:DescribeImages"] == 4
    assert counts["executed"]["ec2:DescribeImages"] == 2
    assert counts["faulted"]["ec2:DescribeImages"] == 2
    rules = faults("faults")["rules"]
    assert (rules[0]["matched"], rules[0]["fired"], rules[0]["remaining"]) == (2, 2, 0)  # counted while live
    assert rules[1]["fired"] == 0
    # skip lets matching calls through first; times null never expires
    faults("faults", method="DELETE")
    faults("faults", {"action": "DescribeVpcs", "kind": "throttle", "skip": 1, "times": None})
    ec2r.describe_vpcs()
    for _ in range(3):
        assert err(ec2r.describe_vpcs)[1] == "RequestLimitExceeded"
    assert faults("faults")["rules"][0]["remaining"] is None
    with pytest.raises(urllib.error.HTTPError) as e:
        faults("faults", {"action": "X", "when": "sometimes"})
    assert e.value.code == 400


def test_a_lost_response_was_carried_out(faults, ec2r, res, debian_ami):
    name = res.name("lost-sg")
    vpc = ec2r.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
    faults("faults", {"service": "ec2", "action": "CreateSecurityGroup", "params": {"GroupName": name},
                      "when": "after"})
    assert err(ec2r.create_security_group, GroupName=name, Description="d", VpcId=vpc)[:2] == (500, "InternalError")
    groups = ec2r.describe_security_groups(Filters=[{"Name": "group-name", "Values": [name]}])["SecurityGroups"]
    assert len(groups) == 1, "the call was not carried out"
    assert err(ec2r.create_security_group, GroupName=name, Description="d", VpcId=vpc)[1] == "InvalidGroup.Duplicate"
    ec2r.delete_security_group(GroupId=groups[0]["GroupId"])
    # RunInstances: a lost response, then the client's retry with the same token launches nothing new
    token = res.name("lost-token")
    tags = [{"ResourceType": "instance", "Tags": [{"Key": "lab:token", "Value": token}]}]
    faults("faults", {"action": "RunInstances", "params": {"ClientToken": token}, "kind": "lost"})
    assert err(ec2r.run_instances, ImageId=debian_ami, MinCount=1, MaxCount=1, ClientToken=token,
               TagSpecifications=tags)[1] == "InternalError"
    again = res.run(debian_ami, ClientToken=token, TagSpecifications=tags)
    live = ec2r.describe_instances(Filters=[{"Name": "tag:lab:token", "Values": [token]}])["Reservations"]
    ids = {i["InstanceId"] for r in live for i in r["Instances"]}
    assert ids == {again["InstanceId"]}, ids
    counts = faults("calls")
    assert counts["calls"]["ec2:RunInstances"] == 2 and counts["executed"]["ec2:RunInstances"] == 2


def test_run_instances_token_bucket_throttles_a_burst_and_refills(faults, ec2r, debian_ami):
    faults("faults/profile", dict(CALM, buckets=True))
    # DryRun calls count against the bucket like any other and launch nothing
    outcomes = [err(ec2r.run_instances, ImageId=debian_ami, MinCount=1, MaxCount=1, DryRun=True)[1]
                for _ in range(8)]
    assert outcomes[:5] == ["DryRunOperation"] * 5, outcomes
    assert outcomes[5:] == ["RequestLimitExceeded"] * 3, outcomes
    ec2r.describe_images(ImageIds=[debian_ami])  # each action has its own bucket
    t0 = time.monotonic()
    while err(ec2r.run_instances, ImageId=debian_ami, MinCount=1, MaxCount=1, DryRun=True)[1] == "RequestLimitExceeded":
        assert time.monotonic() - t0 < 2, "RunInstances' bucket did not refill at 2 tokens/s"
        time.sleep(0.05)
    waited = time.monotonic() - t0
    assert waited < 1.0, waited  # one token comes back within 0.5 s
    faults("faults/profile", {"faults": "off"})
    for _ in range(8):
        assert err(ec2r.run_instances, ImageId=debian_ami, MinCount=1, MaxCount=1, DryRun=True)[1] == "DryRunOperation"


def test_hostile_random_faults_are_seeded_and_switch_off(faults, ec2r):
    def run(n: int) -> list[str]:
        out = []
        for _ in range(n):
            try:
                ec2r.describe_vpcs()
                out.append("ok")
            except botocore.exceptions.ClientError as e:
                out.append(e.response["Error"]["Code"])
        return out

    faults("faults/profile", dict(CALM, throttle=0.25, **{"5xx": 0.25}, seed=7))
    first = run(40)
    assert {"ok", "RequestLimitExceeded", "InternalError"} <= set(first), first
    faults("faults/profile", {"seed": 7})
    assert run(40) == first, "the same seed gives the same faults"
    random_counts = faults("faults")["random"]
    assert random_counts["throttle"] + random_counts["5xx"] == 2 * (40 - first.count("ok"))
    faults("faults/profile", {"faults": "off"})
    assert run(20) == ["ok"] * 20


def test_hostile_lost_responses_only_hit_mutating_calls(faults, ec2r, res, debian_ami):
    iid = res.run(debian_ami)["InstanceId"]
    faults("faults/profile", dict(CALM, lost=1.0))
    assert err(ec2r.create_tags, Resources=[iid], Tags=[{"Key": "lost", "Value": "yes"}])[:2] == (500, "InternalError")
    faults("faults/profile", {"faults": "off"})
    tags = ec2r.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]["Tags"]
    assert {"Key": "lost", "Value": "yes"} in tags, "a lost CreateTags was not carried out"
    faults("faults/profile", dict(CALM, lost=1.0))
    for _ in range(5):
        ec2r.describe_instances(InstanceIds=[iid])  # never lost: not mutating


def test_visibility_lag_hides_new_resources_then_shows_them(faults, ec2r, res, debian_ami):
    # Long enough that the checks below all run inside it even when RunInstances itself is
    # slow on a loaded machine (with 1.5 s, one CI run's filtered listing came after the lag).
    lag = 4.0
    faults("faults/profile", dict(CALM, lag=lag, lag_min=lag))
    tag = res.name("lag")
    t0 = time.monotonic()
    iid = res.run(debian_ami, TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "lab:lag", "Value": tag}]}])["InstanceId"]
    by_tag = [{"Name": "tag:lab:lag", "Values": [tag]}]
    assert err(ec2r.describe_instances, InstanceIds=[iid]) == (
        400, "InvalidInstanceID.NotFound", f"The instance ID '{iid}' does not exist")
    assert ec2r.describe_instances(Filters=by_tag)["Reservations"] == []
    assert iid not in {i["InstanceId"] for r in ec2r.describe_instances()["Reservations"] for i in r["Instances"]}
    key_name = res.name("lag-key")
    ec2r.create_key_pair(KeyName=key_name)
    res.keys.append(key_name)
    assert err(ec2r.describe_key_pairs, KeyNames=[key_name])[1] == "InvalidKeyPair.NotFound"
    while True:
        try:
            ec2r.describe_instances(InstanceIds=[iid])
            break
        except botocore.exceptions.ClientError as e:
            assert e.response["Error"]["Code"] == "InvalidInstanceID.NotFound"
            assert time.monotonic() - t0 < lag + 5, "the instance never became visible"
            time.sleep(0.1)
    assert time.monotonic() - t0 >= lag - 0.2
    assert [i["InstanceId"] for r in ec2r.describe_instances(Filters=by_tag)["Reservations"] for i in r["Instances"]] == [iid]
    # images too, both by id and in a filtered listing
    ami = res.image(iid)
    assert err(ec2r.describe_images, ImageIds=[ami])[1] == "InvalidAMIID.NotFound"
    assert ec2r.describe_images(Owners=["self"], Filters=[{"Name": "image-id", "Values": [ami]}])["Images"] == []
    faults("faults/profile", {"faults": "off"})
    assert ec2r.describe_images(ImageIds=[ami])["Images"][0]["ImageId"] == ami
    ec2r.describe_key_pairs(KeyNames=[key_name])
    assert faults("faults")["random"]["hidden"] >= 6


def test_lab_endpoints_are_never_faulted(faults, ec2r, lab_env):
    faults("faults", {"service": "*", "action": "*", "kind": "throttle", "times": None})
    faults("faults/profile", dict(CALM, throttle=1.0))
    assert faults("calls")["total"] == 0
    with urllib.request.urlopen(f"{lab_env['AWS_ENDPOINT_URL']}/moto-api/config", timeout=10) as r:
        assert r.status < 300
    assert "instances" in faults("status")
    assert err(ec2r.describe_vpcs)[1] == "RequestLimitExceeded"
