"""Loopback networking only: the default VPC, subnets, instance addresses, the server."""

from __future__ import annotations

import ipaddress
import subprocess

import botocore.exceptions
import pytest

from conftest import LAB_DIR, LOOPBACK, assert_loopback, lab_api, ssh


def test_default_vpc_and_subnets_are_loopback(ec2):
    vpcs = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"]
    assert [v["CidrBlock"] for v in vpcs] == ["127.0.0.0/16"]
    subnets = ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpcs[0]["VpcId"]]}])["Subnets"]
    assert len(subnets) >= 3
    azs = set()
    for s in subnets:
        net = ipaddress.ip_network(s["CidrBlock"])
        assert net.subnet_of(LOOPBACK)
        assert not net.overlaps(ipaddress.ip_network("127.0.0.0/24")), s["CidrBlock"]
        assert s["DefaultForAz"] is True
        assert s["MapPublicIpOnLaunch"] is False
        azs.add(s["AvailabilityZone"])
    assert len(azs) == len(subnets)  # one per AZ


def test_non_loopback_vpc_and_subnet_rejected(ec2, res):
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2.create_vpc(CidrBlock="10.0.0.0/16")
    assert e.value.response["Error"]["Code"] == "InvalidVpc.Range"
    vpc = ec2.create_vpc(CidrBlock="127.42.0.0/16")["Vpc"]["VpcId"]
    res.cleanups.append(lambda: ec2.delete_vpc(VpcId=vpc))
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")
    assert e.value.response["Error"]["Code"] in ("InvalidSubnet.Range", "InvalidSubnet.Range")
    # a subnet holding 127.0.0.1 is refused even inside a loopback VPC
    vpc0 = ec2.create_vpc(CidrBlock="127.0.0.0/16")["Vpc"]["VpcId"]
    res.cleanups.append(lambda: ec2.delete_vpc(VpcId=vpc0))
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ec2.create_subnet(VpcId=vpc0, CidrBlock="127.0.0.0/24")
    assert e.value.response["Error"]["Code"] == "InvalidSubnet.Range"


def test_instances_get_loopback_ips_with_or_without_subnet(ec2, res, debian_ami):
    key_name, key = res.keypair("import")
    # no subnet named -> default subnet of the AZ
    a = res.run(debian_ami, key_name)
    # AssociatePublicIpAddress is ignored: no public IPs in the lab
    b = res.run(
        debian_ami, key_name,
        NetworkInterfaces=[{"DeviceIndex": 0, "AssociatePublicIpAddress": True}],
    )
    # two custom VPCs with the same CIDR: addresses must still be unique
    ips = [a["PrivateIpAddress"], b["PrivateIpAddress"]]
    for _ in range(2):
        vpc = ec2.create_vpc(CidrBlock="127.77.0.0/16")["Vpc"]["VpcId"]
        sub = ec2.create_subnet(VpcId=vpc, CidrBlock="127.77.1.0/24", AvailabilityZone="us-east-1b")["Subnet"]["SubnetId"]
        c = res.run(debian_ami, key_name, SubnetId=sub)
        assert c["SubnetId"] == sub
        assert ipaddress.ip_address(c["PrivateIpAddress"]) in ipaddress.ip_network("127.77.1.0/24")
        ips.append(c["PrivateIpAddress"])
        ssh(c["PrivateIpAddress"], key, "true")
    assert len(set(ips)) == len(ips), ips
    # placement in another AZ lands in that AZ's default subnet
    d = res.run(debian_ami, key_name, Placement={"AvailabilityZone": "us-east-1c"})
    assert d["Placement"]["AvailabilityZone"] == "us-east-1c"
    # everything in DescribeInstances is loopback, no public IP anywhere
    for r in ec2.describe_instances()["Reservations"]:
        for i in r["Instances"]:
            if i["State"]["Name"] != "terminated":
                assert_loopback(i)
    # an Elastic IP, if anyone asks for one, is loopback too
    eip = ec2.allocate_address(Domain="vpc")
    res.cleanups.append(lambda: ec2.release_address(AllocationId=eip["AllocationId"]))
    assert ipaddress.ip_address(eip["PublicIp"]) in LOOPBACK


def test_explicit_private_ip_outside_loopback_rejected(ec2, res, debian_ami):
    vpc = ec2.create_vpc(CidrBlock="127.88.0.0/16")["Vpc"]["VpcId"]
    sub = ec2.create_subnet(VpcId=vpc, CidrBlock="127.88.1.0/24")["Subnet"]["SubnetId"]
    c = res.run(debian_ami, SubnetId=sub, PrivateIpAddress="127.88.1.50")
    assert c["PrivateIpAddress"] == "127.88.1.50"
    with pytest.raises(botocore.exceptions.ClientError):
        res.run(debian_ami, SubnetId=sub, PrivateIpAddress="127.88.1.50")  # in use


def _lab_pids() -> set[int]:
    pids = set()
    pid = int((LAB_DIR / "server.pid").read_text())
    pids.add(pid)
    for f in (LAB_DIR / "instances").glob("*/pid"):
        root = int(f.read_text())
        stack = [root]
        while stack:
            p = stack.pop()
            pids.add(p)
            try:
                for t in (open(f"/proc/{p}/task/{p}/children").read().split()):
                    stack.append(int(t))
            except OSError:
                pass
    return pids


def test_lab_listens_on_loopback_only(ec2, res, debian_ami):
    """The network rule: the server and every sshd bind loopback addresses only, and no
    lab process has a connection to anything outside 127.0.0.0/8."""
    key_name, key = res.keypair("import")
    a = res.run(debian_ami, key_name)
    ssh(a["PrivateIpAddress"], key, "true")
    pids = _lab_pids()
    out = subprocess.run(["ss", "-Htanp"], capture_output=True, text=True).stdout
    seen = 0
    for line in out.splitlines():
        if not any(f"pid={p}," in line for p in pids):
            continue
        cols = line.split()
        state, local, peer = cols[0], cols[3], cols[4]
        for addr in ((local,) if state == "LISTEN" else (local, peer)):
            host = addr.rsplit(":", 1)[0].strip("[]")
            if host in ("*", "0.0.0.0", "::"):
                raise AssertionError(f"lab socket bound to a wildcard address: {line}")
            if host.startswith("::ffff:"):
                host = host[len("::ffff:"):]
            ip = ipaddress.ip_address(host)
            assert ip in LOOPBACK or ip == ipaddress.ip_address("::1"), line
        seen += 1
    assert seen >= 2  # the API server and at least one sshd
    st = lab_api("status")
    for i in st["instances"]:
        assert ipaddress.ip_address(i["ip"]) in LOOPBACK
