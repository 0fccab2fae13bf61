"""What an instance keeps on its disk, as a real one does (lab/keep.py), and that images made
from it carry those traces: sudo's syslog lines, SSH host keys in /etc/ssh, cloud-init's copy
of the user data, the SSM agent's script/output/state files."""

from __future__ import annotations

import json
import time
import uuid

import boto3

from conftest import LAB_DIR, cloud_config_host_key, lab_api, ssh, wait_state
from test_ssm import SSM_POLICY, TRUST


def test_image_keeps_sudo_log_host_keys_user_data(ec2, res):
    key_name, key = res.keypair("import")
    priv, pub = res.host_key()
    secret = f"s3cr3t-{uuid.uuid4().hex[:8]}"
    ud = cloud_config_host_key(priv, pub, extra_part=f"#!/bin/sh\necho {secret} > /dev/null\n")
    debian = ec2.describe_images(Owners=["136693071363"])["Images"][0]["ImageId"]
    a = res.run(debian, key_name, user_data=ud)
    ip = a["PrivateIpAddress"]
    marker = f"marker-{uuid.uuid4().hex[:8]}"
    r = ssh(ip, key, f"sudo -n touch /tmp/{marker}; sudo -n cat /etc/ssh/ssh_host_ed25519_key.pub; "
                     "sudo -n stat -c %a /var/lib/cloud/instance/user-data.txt")
    host_pub, mode = r.stdout.split("\n")[0], r.stdout.split("\n")[1]
    assert host_pub.split()[:2] == pub.split()[:2], "the host key must be on the disk in /etc/ssh"
    assert mode == "600"
    # sudo logged its command line through syslog to /var/log/auth.log
    deadline = time.monotonic() + 10
    while True:
        log = ssh(ip, key, "sudo -n cat /var/log/auth.log").stdout
        if f"COMMAND=/usr/bin/touch /tmp/{marker}" in log:
            break
        assert time.monotonic() < deadline, log[-2000:]
        time.sleep(0.2)
    assert "sudo:" in log and "admin" in log

    ec2.stop_instances(InstanceIds=[a["InstanceId"]])
    wait_state(ec2, a["InstanceId"], "stopped")
    ami = res.image(a["InstanceId"])
    layer = LAB_DIR / "layers" / ami
    # the image's layer has what the instance kept: the host's private key, the user data
    assert (layer / "etc/ssh/ssh_host_ed25519_key").read_text().strip() == priv.strip()
    assert secret in (layer / f"var/lib/cloud/instances/{a['InstanceId']}/user-data.txt").read_text()

    b = res.run(ami, key_name)
    out = ssh(b["PrivateIpAddress"], key,
              # (grep runs without sudo: its own command line is not logged)
              f"sudo -n cat /var/log/auth.log | grep -c 'COMMAND=/usr/bin/touch /tmp/{marker}'; "
              f"sudo -n cat /var/lib/cloud/instances/{a['InstanceId']}/user-data.txt; "
              "readlink /var/lib/cloud/instance; sudo -n cat /etc/ssh/ssh_host_ed25519_key.pub").stdout
    assert out.split("\n")[0] == "1", out  # the builder's sudo line is in the new instance's log
    assert secret in out  # and so is the builder's user data (as on a real AMI)
    assert f"/var/lib/cloud/instances/{b['InstanceId']}" in out  # cloud-init's link: the new instance
    # a new instance gets its own host key (cloud-init's ssh_deletekeys)
    assert pub.split()[1] not in out.split("\n")[-2]


def test_image_keeps_ssm_agent_files(ec2, res, lab_env):
    iam = boto3.client("iam", region_name="us-east-1", endpoint_url=lab_env["AWS_ENDPOINT_URL"])
    ssm = boto3.client("ssm", region_name="us-east-1", endpoint_url=lab_env["AWS_ENDPOINT_URL"])
    name = f"labtest-keep-{uuid.uuid4().hex[:8]}"
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
    debian = ec2.describe_images(Owners=["136693071363"])["Images"][0]["ImageId"]
    a = res.run(debian, IamInstanceProfile={"Name": name})
    iid = a["InstanceId"]
    deadline = time.monotonic() + 30
    while not ssm.describe_instance_information(
            Filters=[{"Key": "InstanceIds", "Values": [iid]}])["InstanceInformationList"] or \
            ssm.describe_instance_information(Filters=[{"Key": "InstanceIds", "Values": [iid]}])[
                "InstanceInformationList"][0]["PingStatus"] != "Online":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    secret = f"token-{uuid.uuid4().hex[:8]}"
    cid = ssm.send_command(InstanceIds=[iid], DocumentName="AWS-RunShellScript",
                           Parameters={"commands": [f"echo {secret}-out", f"echo {secret}-err >&2"]})["Command"]["CommandId"]
    deadline = time.monotonic() + 30
    while True:
        try:
            inv = ssm.get_command_invocation(CommandId=cid, InstanceId=iid)
        except ssm.exceptions.InvocationDoesNotExist:
            inv = {"Status": "Pending"}
        if inv["Status"] not in ("Pending", "InProgress", "Delayed"):
            break
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert inv["Status"] == "Success", inv
    ec2.stop_instances(InstanceIds=[iid])
    wait_state(ec2, iid, "stopped")
    ami = res.image(iid)
    b = res.run(ami)
    orch = f"/var/lib/amazon/ssm/{iid}/document/orchestration/{cid}/awsrunShellScript/0.awsrunShellScript"
    code, out, err = _exec(b["InstanceId"], f"cat {orch}/_script.sh {orch}/stdout {orch}/stderr "
                                            f"/var/lib/amazon/ssm/{iid}/document/state/completed/{cid}; "
                                            "cat /var/log/amazon/ssm/amazon-ssm-agent.log")
    assert code == 0, err
    assert f"echo {secret}-out" in out  # the script
    assert f"{secret}-out\n" in out and f"{secret}-err\n" in out  # its output
    state = out[out.index("{"):out.rindex("}") + 1]
    doc = json.loads(state)
    assert doc["DocumentInformation"]["DocumentStatus"] == "Success"
    assert doc["InstancePluginsInformation"][0]["Configuration"]["Properties"]["commands"][0] == f"echo {secret}-out"
    assert cid in out.split("}")[-1]  # the agent's log line


def _exec(iid: str, script: str) -> tuple[int, str, str]:
    r = lab_api("exec", {"instance_id": iid, "command": script})
    return r["code"], r["stdout"], r["stderr"]
