"""Regions and distribution (lab/regions.py, lab/distribution.py): per-region networks and
base images, CopyImage across regions keeping content, tags, ClientToken and encryption,
launch and snapshot permissions, deprecation, deregistration protection, SSM per region,
and leftovers across regions."""

from __future__ import annotations

import ipaddress
import time
import uuid
from datetime import datetime, timedelta, timezone

import boto3
import botocore.exceptions
import pytest

from conftest import LOOPBACK, Resources, lab_api, wait_state

REGIONS = ("us-east-1", "us-west-2", "eu-west-1")
DEBIAN = "136693071363"
OTHER_ACCOUNT = "111122223333"


def client(lab_env, service: str, region: str):
    return boto3.client(service, region_name=region, endpoint_url=lab_env["AWS_ENDPOINT_URL"])


def error_of(fn, **kw) -> dict:
    with pytest.raises(botocore.exceptions.ClientError) as e:
        fn(**kw)
    return e.value.response["Error"]


def newest_debian(ec2) -> str:
    imgs = ec2.describe_images(Owners=[DEBIAN], Filters=[{"Name": "name", "Values": ["debian-12-amd64-*"]}])["Images"]
    return max(imgs, key=lambda i: i["CreationDate"])["ImageId"]


def wait_available(ec2, ami: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        img = ec2.describe_images(ImageIds=[ami])["Images"][0]
        if img["State"] == "available":
            return img
        assert time.monotonic() < deadline, f"{ami} still {img['State']}"
        time.sleep(0.1)


@pytest.fixture
def regional(lab_env, tmp_path):
    """Resources per region (cleaned up at teardown, snapshots of the images too)."""
    made: dict[str, Resources] = {}

    def get(region: str) -> Resources:
        if region not in made:
            made[region] = Resources(client(lab_env, "ec2", region), tmp_path)
        return made[region]

    yield get
    for r in made.values():
        snaps = []
        for ami in r.images:
            try:
                img = r.ec2.describe_images(ImageIds=[ami])["Images"]
                snaps += [m["Ebs"]["SnapshotId"] for i in img for m in i["BlockDeviceMappings"] if "Ebs" in m]
                r.ec2.disable_image_deregistration_protection(ImageId=ami)
            except Exception:  # noqa: BLE001
                pass
        r.cleanup()
        for s in snaps:
            try:
                r.ec2.delete_snapshot(SnapshotId=s)
            except Exception:  # noqa: BLE001
                pass


def baked_image(r: Resources, content: str) -> tuple[str, str]:
    """An image in r's region whose disk holds /etc/bake-region-test with `content`."""
    inst = r.run(newest_debian(r.ec2))
    iid = inst["InstanceId"]
    lab_api(f"wait/{iid}")
    out = lab_api("exec", {"instance_id": iid, "command": f"echo {content} > /etc/bake-region-test"})
    assert out["code"] == 0, out
    r.ec2.stop_instances(InstanceIds=[iid])
    wait_state(r.ec2, iid, "stopped")
    return r.image(iid), iid


# ------------------------------------------------------------------- networks


def test_each_region_has_its_own_loopback_default_subnets(lab_env):
    subnets: dict[str, list[ipaddress.IPv4Network]] = {}
    for region in REGIONS:
        ec2 = client(lab_env, "ec2", region)
        vpcs = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"]
        assert len(vpcs) == 1
        vpc = ipaddress.ip_network(vpcs[0]["CidrBlock"])
        assert vpc.subnet_of(LOOPBACK) and vpc.prefixlen == 16
        nets = [ipaddress.ip_network(s["CidrBlock"]) for s in ec2.describe_subnets(
            Filters=[{"Name": "default-for-az", "Values": ["true"]}])["Subnets"]]
        zones = {z["ZoneName"] for z in ec2.describe_availability_zones()["AvailabilityZones"]}
        assert len(nets) == len(zones) >= 3, (region, nets)
        for n in nets:
            assert n.subnet_of(vpc) and not n.overlaps(ipaddress.ip_network("127.0.0.0/24")), n
        subnets[region] = nets
    flat = [(r, n) for r, ns in subnets.items() for n in ns]
    for i, (ra, a) in enumerate(flat):
        for rb, b in flat[i + 1:]:
            assert not a.overlaps(b), f"{ra} {a} overlaps {rb} {b}"
    # the lab's own map says the same
    lab_map = {e["region"]: e for e in lab_api("regions")["regions"]}
    for region in REGIONS:
        assert sorted(map(str, subnets[region])) == sorted(lab_map[region]["subnets"].values())


def test_instances_get_addresses_of_their_region(regional):
    ips = {}
    for region in REGIONS:
        r = regional(region)
        inst = r.run(newest_debian(r.ec2))
        ip = ipaddress.ip_address(inst["PrivateIpAddress"])
        subnet = r.ec2.describe_subnets(SubnetIds=[inst["SubnetId"]])["Subnets"][0]
        assert ip in ipaddress.ip_network(subnet["CidrBlock"])
        assert subnet["AvailabilityZone"].startswith(region)
        ips[region] = ip
    assert len(set(ips.values())) == len(REGIONS)


def test_unknown_region_is_refused_as_aws_does(lab_env):
    err = error_of(client(lab_env, "ec2", "xx-nowhere-1").describe_vpcs)
    assert err["Code"] == "SignatureDoesNotMatch"
    assert "Credential should be scoped to a valid region, not 'xx-nowhere-1'" in err["Message"]
    err = error_of(client(lab_env, "ssm", "xx-nowhere-1").get_parameter, Name="/bake/x")
    assert err["Code"] == "InvalidSignatureException"


def test_base_images_and_debian_parameters_per_region(lab_env):
    seen = {}
    for region in REGIONS:
        ec2 = client(lab_env, "ec2", region)
        newest = newest_debian(ec2)
        img = ec2.describe_images(ImageIds=[newest])["Images"][0]
        assert img["OwnerId"] == DEBIAN and img["Public"] and img["Name"].startswith("debian-12-amd64-")
        ssm = client(lab_env, "ssm", region)
        assert ssm.get_parameter(Name="/aws/service/debian/release/12/latest/amd64")["Parameter"]["Value"] == newest
        seen[region] = (newest, img["Name"])
    assert len({v[0] for v in seen.values()}) == len(REGIONS)  # region-specific ids
    assert len({v[1] for v in seen.values()}) == 1  # the same release everywhere
    # another region's id is unknown here, as on EC2
    err = error_of(client(lab_env, "ec2", "us-west-2").describe_images, ImageIds=[seen["us-east-1"][0]])
    assert err["Code"] == "InvalidAMIID.NotFound"


# ------------------------------------------------------------------ CopyImage


def test_copy_to_another_region_keeps_the_content(regional):
    east, west = regional("us-east-1"), regional("us-west-2")
    token = uuid.uuid4().hex
    src, _ = baked_image(east, token)
    copy = west.ec2.copy_image(SourceImageId=src, SourceRegion="us-east-1", Name=west.name("labtest-copy"))["ImageId"]
    west.images.append(copy)
    img = wait_available(west.ec2, copy)
    assert img["SourceImageId"] == src and img["SourceImageRegion"] == "us-east-1"
    assert img["RootDeviceName"] == "/dev/xvda" and img["RootDeviceType"] == "ebs"
    assert img["OwnerId"] == "123456789012" and not img["Public"]
    inst = west.run(copy)
    assert inst["Placement"]["AvailabilityZone"].startswith("us-west-2")
    lab_api(f"wait/{inst['InstanceId']}")
    out = lab_api("exec", {"instance_id": inst["InstanceId"], "command": "cat /etc/bake-region-test"})
    assert (out["code"], out["stdout"].strip()) == (0, token)
    # the copy is an image of us-west-2 only
    assert error_of(east.ec2.describe_images, ImageIds=[copy])["Code"] == "InvalidAMIID.NotFound"


def test_copy_tags_encryption_and_snapshot_description(regional):
    east, west = regional("us-east-1"), regional("eu-west-1")
    src, _ = baked_image(east, "tags")
    east.ec2.create_tags(Resources=[src], Tags=[{"Key": "team", "Value": "bake"}])
    copy = west.ec2.copy_image(
        SourceImageId=src, SourceRegion="us-east-1", Name=west.name("labtest-copy"), Encrypted=True,
        KmsKeyId="arn:aws:kms:eu-west-1:123456789012:key/11111111-2222-3333-4444-555555555555",
        CopyImageTags=True,
        TagSpecifications=[{"ResourceType": "image", "Tags": [{"Key": "bake:build", "Value": "b1"}]},
                           {"ResourceType": "snapshot", "Tags": [{"Key": "bake:snap", "Value": "s1"}]}],
    )["ImageId"]
    west.images.append(copy)
    img = west.ec2.describe_images(ImageIds=[copy])["Images"][0]  # tags are there at creation
    assert {t["Key"]: t["Value"] for t in img["Tags"]} == {"bake:build": "b1", "team": "bake"}
    ebs = img["BlockDeviceMappings"][0]["Ebs"]
    assert ebs["Encrypted"] is True
    snap = west.ec2.describe_snapshots(SnapshotIds=[ebs["SnapshotId"]])["Snapshots"][0]
    assert snap["Encrypted"] is True and snap["KmsKeyId"].endswith("key/11111111-2222-3333-4444-555555555555")
    assert {t["Key"]: t["Value"] for t in snap["Tags"]} == {"bake:snap": "s1"}
    assert snap["Description"].startswith(f"Copied for DestinationAmi {copy} from SourceAmi {src} for SourceSnapshot snap-")
    # KmsKeyId alone is refused, as EC2 does
    err = error_of(west.ec2.copy_image, SourceImageId=src, SourceRegion="us-east-1", Name=west.name("x"),
                   KmsKeyId="alias/aws/ebs")
    assert err["Code"] == "InvalidParameterDependency"


def test_copy_client_token_is_idempotent(regional):
    east, west = regional("us-east-1"), regional("us-west-2")
    src, _ = baked_image(east, "token")
    before = {i["ImageId"] for i in west.ec2.describe_images(Owners=["self"])["Images"]}
    token = uuid.uuid4().hex
    name = west.name("labtest-copy")
    a = west.ec2.copy_image(SourceImageId=src, SourceRegion="us-east-1", Name=name, ClientToken=token)["ImageId"]
    west.images.append(a)
    b = west.ec2.copy_image(SourceImageId=src, SourceRegion="us-east-1", Name=name, ClientToken=token)["ImageId"]
    assert a == b
    after = {i["ImageId"] for i in west.ec2.describe_images(Owners=["self"])["Images"]}
    assert after - before == {a}
    err = error_of(west.ec2.copy_image, SourceImageId=src, SourceRegion="us-east-1", Name=name + "-other",
                   ClientToken=token)
    assert err["Code"] == "IdempotentParameterMismatch"
    # without a token, a second copy with the same name is a duplicate name (strict rule S1)
    err = error_of(west.ec2.copy_image, SourceImageId=src, SourceRegion="us-east-1", Name=name)
    assert err["Code"] == "InvalidAMIName.Duplicate"


def test_copy_of_a_missing_source_fails_as_ec2(regional):
    west = regional("us-west-2")
    err = error_of(west.ec2.copy_image, SourceImageId="ami-0123456789abcdef0", SourceRegion="us-east-1", Name="labtest-missing")
    assert err["Code"] == "InvalidAMIID.NotFound"
    assert err["Message"] == "The image id '[ami-0123456789abcdef0]' does not exist"
    assert error_of(west.ec2.copy_image, SourceImageId="bogus", SourceRegion="us-east-1", Name="labtest-missing")["Code"] \
        == "InvalidAMIID.Malformed"
    # a us-east-1 id asked for in eu-west-1: not there either
    east_base = newest_debian(regional("us-east-1").ec2)
    err = error_of(west.ec2.copy_image, SourceImageId=east_base, SourceRegion="eu-west-1", Name="labtest-missing")
    assert err["Code"] == "InvalidAMIID.NotFound"


def test_copy_is_pending_for_a_while_on_the_realistic_profile(regional):
    east, west = regional("us-east-1"), regional("us-west-2")
    src, _ = baked_image(east, "slow")
    prev = lab_api("profile")
    lab_api("profile", {"profile": "realistic", "time_scale": 0.05})
    try:
        copy = west.ec2.copy_image(SourceImageId=src, SourceRegion="us-east-1",
                                   Name=west.name("labtest-copy"))["ImageId"]
        west.images.append(copy)
        t0 = time.monotonic()
        assert west.ec2.describe_images(ImageIds=[copy])["Images"][0]["State"] == "pending"
        wait_available(west.ec2, copy, timeout=30)
        assert time.monotonic() - t0 >= 0.5  # IMAGE_BASE 20 s x 0.05 = 1 s at least
    finally:
        lab_api("profile", {"profile": prev.get("profile", "instant"), "time_scale": prev.get("time_scale", 1)})


# ----------------------------------------------------------------- permissions


def test_launch_permissions(regional):
    r = regional("us-east-1")
    ami, _ = baked_image(r, "share")
    ec2 = r.ec2
    org = "arn:aws:organizations::123456789012:organization/o-abcdefghij"
    ou = "arn:aws:organizations::123456789012:ou/o-abcdefghij/ou-ab12-abcdefgh"
    ec2.modify_image_attribute(ImageId=ami, LaunchPermission={"Add": [
        {"UserId": OTHER_ACCOUNT}, {"OrganizationArn": org}, {"OrganizationalUnitArn": ou}]})
    perms = ec2.describe_image_attribute(ImageId=ami, Attribute="launchPermission")["LaunchPermissions"]
    assert {"UserId": OTHER_ACCOUNT} in perms and {"OrganizationArn": org} in perms
    assert {"OrganizationalUnitArn": ou} in perms
    shared = [i["ImageId"] for i in ec2.describe_images(ExecutableUsers=[OTHER_ACCOUNT])["Images"]]
    assert shared.count(ami) == 1
    assert ec2.describe_images(ImageIds=[ami])["Images"][0]["Public"] is False
    ec2.modify_image_attribute(ImageId=ami, LaunchPermission={"Add": [{"Group": "all"}]})
    assert ec2.describe_images(ImageIds=[ami])["Images"][0]["Public"] is True
    ec2.modify_image_attribute(ImageId=ami, LaunchPermission={"Remove": [{"Group": "all"}, {"UserId": OTHER_ACCOUNT}]})
    perms = ec2.describe_image_attribute(ImageId=ami, Attribute="launchPermission")["LaunchPermissions"]
    assert {"UserId": OTHER_ACCOUNT} not in perms and {"Group": "all"} not in perms
    assert ami not in [i["ImageId"] for i in ec2.describe_images(ExecutableUsers=[OTHER_ACCOUNT])["Images"]]
    # EC2's answers to bad values, and to someone else's image
    err = error_of(ec2.modify_image_attribute, ImageId=ami, LaunchPermission={"Add": [{"UserId": "12345"}]})
    assert err["Code"] == "InvalidAMIAttributeItemValue"
    err = error_of(ec2.modify_image_attribute, ImageId=ami, LaunchPermission={"Add": [{"OrganizationArn": "o-1"}]})
    assert err["Code"] == "InvalidParameterValue"
    err = error_of(ec2.modify_image_attribute, ImageId=newest_debian(ec2),
                   LaunchPermission={"Remove": [{"Group": "all"}]})
    assert err["Code"] == "AuthFailure"
    assert error_of(ec2.describe_image_attribute, ImageId="ami-0123456789abcdef0",
                    Attribute="launchPermission")["Code"] == "InvalidAMIID.NotFound"


def test_snapshot_create_volume_permissions(regional):
    r = regional("us-east-1")
    ami, _ = baked_image(r, "snap")
    ec2 = r.ec2
    snap = ec2.describe_images(ImageIds=[ami])["Images"][0]["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
    ec2.modify_snapshot_attribute(SnapshotId=snap, Attribute="createVolumePermission",
                                  CreateVolumePermission={"Add": [{"UserId": OTHER_ACCOUNT}]})
    perms = ec2.describe_snapshot_attribute(SnapshotId=snap, Attribute="createVolumePermission")
    assert perms["CreateVolumePermissions"] == [{"UserId": OTHER_ACCOUNT}]
    ec2.modify_snapshot_attribute(SnapshotId=snap, Attribute="createVolumePermission",
                                  OperationType="add", GroupNames=["all"])
    perms = ec2.describe_snapshot_attribute(SnapshotId=snap, Attribute="createVolumePermission")
    assert {"Group": "all"} in perms["CreateVolumePermissions"]
    ec2.modify_snapshot_attribute(SnapshotId=snap, Attribute="createVolumePermission",
                                  CreateVolumePermission={"Remove": [{"UserId": OTHER_ACCOUNT}, {"Group": "all"}]})
    perms = ec2.describe_snapshot_attribute(SnapshotId=snap, Attribute="createVolumePermission")
    assert perms["CreateVolumePermissions"] == []
    err = error_of(ec2.modify_snapshot_attribute, SnapshotId=snap, Attribute="createVolumePermission",
                   CreateVolumePermission={"Add": [{"UserId": "not-an-account"}]})
    assert err["Code"] == "InvalidParameterValue"


# ------------------------------------------------------------------ lifecycle


def test_deprecation(regional):
    r = regional("us-east-1")
    ami, _ = baked_image(r, "deprecate")
    ec2 = r.ec2
    at = datetime.now(timezone.utc) + timedelta(days=30, seconds=50)
    assert ec2.enable_image_deprecation(ImageId=ami, DeprecateAt=at)["Return"] is True
    shown = ec2.describe_images(ImageIds=[ami])["Images"][0]["DeprecationTime"]
    expect = (at + timedelta(seconds=30)).replace(second=0, microsecond=0)
    assert shown == expect.strftime("%Y-%m-%dT%H:%M:%S.000Z")  # rounded to the minute
    err = error_of(ec2.enable_image_deprecation, ImageId=ami,
                   DeprecateAt=datetime.now(timezone.utc) - timedelta(days=1))
    assert err["Code"] == "InvalidParameterValue"
    assert ec2.disable_image_deprecation(ImageId=ami)["Return"] is True
    assert "DeprecationTime" not in ec2.describe_images(ImageIds=[ami])["Images"][0]
    assert error_of(ec2.enable_image_deprecation, ImageId="ami-0123456789abcdef0",
                    DeprecateAt=at)["Code"] == "InvalidAMIID.NotFound"


def test_deregistration_protection(regional):
    r = regional("us-east-1")
    ami, _ = baked_image(r, "protect")
    ec2 = r.ec2
    assert ec2.describe_images(ImageIds=[ami])["Images"][0]["DeregistrationProtection"] == "disabled"
    ec2.enable_image_deregistration_protection(ImageId=ami)
    assert ec2.describe_images(ImageIds=[ami])["Images"][0]["DeregistrationProtection"] == "enabled-without-cooldown"
    err = error_of(ec2.deregister_image, ImageId=ami)
    assert err["Code"] == "OperationNotPermitted"
    assert ec2.describe_images(ImageIds=[ami])["Images"][0]["State"] == "available"
    attr = ec2.describe_image_attribute(ImageId=ami, Attribute="deregistrationProtection")
    assert attr["DeregistrationProtection"]["Value"] == "enabled-without-cooldown"
    ec2.disable_image_deregistration_protection(ImageId=ami)
    assert ec2.describe_images(ImageIds=[ami])["Images"][0]["DeregistrationProtection"] == "disabled"

    # with cooldown: still protected for 24 h after the disable
    ec2.enable_image_deregistration_protection(ImageId=ami, WithCooldown=True)
    assert ec2.describe_images(ImageIds=[ami])["Images"][0]["DeregistrationProtection"] == "enabled-with-cooldown"
    ec2.disable_image_deregistration_protection(ImageId=ami)
    state = ec2.describe_images(ImageIds=[ami])["Images"][0]["DeregistrationProtection"]
    assert state.startswith("disabled-until 20"), state
    until = datetime.strptime(state.split()[1], "%Y-%m-%dT%H:%M:%S.000Z").replace(tzinfo=timezone.utc)
    assert timedelta(hours=23, minutes=59) < until - datetime.now(timezone.utc) <= timedelta(hours=24)
    assert error_of(ec2.deregister_image, ImageId=ami)["Code"] == "OperationNotPermitted"
    # the lab's hook ends the cooldown (so the test leaves nothing behind); then it goes
    assert lab_api("deregistration-cooldown", {"image_id": ami})["deregistration_protection"] == "disabled"
    snap = ec2.describe_images(ImageIds=[ami])["Images"][0]["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
    ec2.deregister_image(ImageId=ami)
    assert not ec2.describe_images(ImageIds=[ami])["Images"]
    ec2.delete_snapshot(SnapshotId=snap)


def test_imds_support(regional, lab_env):
    east, west = regional("us-east-1"), regional("us-west-2")
    ami, _ = baked_image(east, "imds")
    ec2 = east.ec2
    assert "ImdsSupport" not in ec2.describe_images(ImageIds=[ami])["Images"][0]
    ec2.modify_image_attribute(ImageId=ami, ImdsSupport={"Value": "v2.0"})
    assert ec2.describe_images(ImageIds=[ami])["Images"][0]["ImdsSupport"] == "v2.0"
    assert ec2.describe_image_attribute(ImageId=ami, Attribute="imdsSupport")["ImdsSupport"]["Value"] == "v2.0"
    copy = west.ec2.copy_image(SourceImageId=ami, SourceRegion="us-east-1", Name=west.name("labtest-copy"))["ImageId"]
    west.images.append(copy)
    assert west.ec2.describe_images(ImageIds=[copy])["Images"][0]["ImdsSupport"] == "v2.0"
    snap = ec2.describe_images(ImageIds=[ami])["Images"][0]["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
    reg = ec2.register_image(Name=east.name("labtest-reg"), RootDeviceName="/dev/xvda", ImdsSupport="v2.0",
                             BlockDeviceMappings=[{"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": snap}}])["ImageId"]
    east.images.append(reg)
    assert ec2.describe_images(ImageIds=[reg])["Images"][0]["ImdsSupport"] == "v2.0"


# ------------------------------------------------------------------------ SSM


def test_ssm_parameters_per_region(lab_env, regional):
    name = f"/bake/labtest/{uuid.uuid4().hex[:8]}/latest"
    east, west = client(lab_env, "ssm", "us-east-1"), client(lab_env, "ssm", "us-west-2")
    east_ami = newest_debian(regional("us-east-1").ec2)
    west_ami = newest_debian(regional("us-west-2").ec2)
    try:
        east.put_parameter(Name=name, Value=east_ami, Type="String", DataType="aws:ec2:image")
        west.put_parameter(Name=name, Value=west_ami, Type="String", DataType="aws:ec2:image")
        assert east.get_parameter(Name=name)["Parameter"]["Value"] == east_ami
        assert west.get_parameter(Name=name)["Parameter"]["Value"] == west_ami
        assert west.get_parameter(Name=name)["Parameter"]["DataType"] == "aws:ec2:image"
        # an id of another region (or none) is not an AMI there: SSM answers success, but
        # its asynchronous validation leaves the parameter as it was
        west.put_parameter(Name=name, Value=east_ami, Type="String", DataType="aws:ec2:image", Overwrite=True)
        assert west.get_parameter(Name=name)["Parameter"]["Value"] == west_ami
        ghost = name + "-ghost"
        east.put_parameter(Name=ghost, Value="ami-0123456789abcdef0", Type="String", DataType="aws:ec2:image")
        assert error_of(east.get_parameter, Name=ghost)["Code"] == "ParameterNotFound"
        # the leftovers report names the parameter in both regions
        left = [(i["region"], i["id"]) for i in lab_api("leftovers")["leftovers"] if i["kind"] == "ssm-parameter"]
        assert ("us-east-1", name) in left and ("us-west-2", name) in left
        assert not any(i.startswith("/aws/") for _, i in left)
    finally:
        for c in (east, west):
            try:
                c.delete_parameter(Name=name)
            except Exception:  # noqa: BLE001
                pass
    left = [(i["region"], i["id"]) for i in lab_api("leftovers")["leftovers"] if i["kind"] == "ssm-parameter"]
    assert ("us-east-1", name) not in left and ("us-west-2", name) not in left


def test_leftovers_cover_every_region(regional, lab_env):
    west = regional("eu-west-1")
    inst = west.run(newest_debian(west.ec2))
    key, _ = west.keypair()
    sg = west.ec2.create_security_group(GroupName=west.name("labtest-sg"), Description="x")["GroupId"]
    west.cleanups.append(lambda: west.ec2.delete_security_group(GroupId=sg))
    rep = lab_api("leftovers")["leftovers"]
    found = {(i["kind"], i["id"]): i["region"] for i in rep}
    assert found[("instance", inst["InstanceId"])] == "eu-west-1"
    assert found[("key-pair", key)] == "eu-west-1"
    assert found[("security-group", sg)] == "eu-west-1"
    base = {i["ImageId"] for r in REGIONS for i in client(lab_env, "ec2", r).describe_images(Owners=[DEBIAN])["Images"]}
    assert not base & {rid for (kind, rid) in found if kind == "image"}


def test_shared_image_is_visible_and_launchable_in_the_target_account(regional, lab_env):
    east, west = regional("us-east-1"), regional("us-west-2")
    token = uuid.uuid4().hex
    src, _ = baked_image(east, token)
    copy = west.ec2.copy_image(SourceImageId=src, SourceRegion="us-east-1", Name=west.name("labtest-copy"))["ImageId"]
    west.images.append(copy)
    creds = client(lab_env, "sts", "us-east-1").assume_role(
        RoleArn=f"arn:aws:iam::{OTHER_ACCOUNT}:role/labtest-consumer", RoleSessionName="labtest")["Credentials"]
    other = boto3.client("ec2", region_name="us-west-2", endpoint_url=lab_env["AWS_ENDPOINT_URL"],
                         aws_access_key_id=creds["AccessKeyId"], aws_secret_access_key=creds["SecretAccessKey"],
                         aws_session_token=creds["SessionToken"])
    assert error_of(other.describe_images, ImageIds=[copy])["Code"] == "InvalidAMIID.NotFound"  # not yet shared
    west.ec2.modify_image_attribute(ImageId=copy, LaunchPermission={"Add": [{"UserId": OTHER_ACCOUNT}]})
    img = other.describe_images(ImageIds=[copy])["Images"][0]
    assert img["OwnerId"] == "123456789012"
    assert copy in [i["ImageId"] for i in other.describe_images(ExecutableUsers=["self"])["Images"]]
    assert copy not in [i["ImageId"] for i in other.describe_images(Owners=["self"])["Images"]]
    # the target account launches it and sees the baked content
    theirs = Resources(other, west.tmp)
    try:
        inst = theirs.run(copy)
        lab_api(f"wait/{inst['InstanceId']}")
        out = lab_api("exec", {"instance_id": inst["InstanceId"], "command": "cat /etc/bake-region-test"})
        assert (out["code"], out["stdout"].strip()) == (0, token)
        left = {(i["account"], i["kind"], i["id"]) for i in lab_api("leftovers")["leftovers"]}
        assert (OTHER_ACCOUNT, "instance", inst["InstanceId"]) in left
    finally:
        theirs.cleanup()
    # unshared again: gone for the other account (in us-east-1 it never was there)
    west.ec2.modify_image_attribute(ImageId=copy, LaunchPermission={"Remove": [{"UserId": OTHER_ACCOUNT}]})
    assert error_of(other.describe_images, ImageIds=[copy])["Code"] == "InvalidAMIID.NotFound"
