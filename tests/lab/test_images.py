"""Base images that look like the public Debian ones; user data; Auto Scaling; exec hook."""

from __future__ import annotations

import base64
import time
import uuid

from conftest import assert_loopback, lab_api, ssh, wait_state


def test_debian_base_images(ec2):
    imgs = ec2.describe_images(
        Owners=["136693071363"],
        Filters=[
            {"Name": "name", "Values": ["debian-12-amd64-*"]},
            {"Name": "architecture", "Values": ["x86_64"]},
            {"Name": "root-device-type", "Values": ["ebs"]},
            {"Name": "virtualization-type", "Values": ["hvm"]},
        ],
    )["Images"]
    names = sorted(i["Name"] for i in imgs)
    assert "debian-12-amd64-20261101-1900" in names
    assert "debian-12-amd64-20261001-1870" in names
    newest = max(imgs, key=lambda i: i["CreationDate"])
    assert newest["Name"] == "debian-12-amd64-20261101-1900"
    assert newest["OwnerId"] == "136693071363"
    assert newest["RootDeviceName"] == "/dev/xvda"
    assert newest["Architecture"] == "x86_64"
    assert newest["Public"] is True
    assert "ImageOwnerAlias" not in newest  # Debian's images have no alias ("amazon" is wrong)
    # moto's own ~1,300 default AMIs are not loaded
    assert not ec2.describe_images(Owners=["amazon"])["Images"]


def test_default_user_and_sudo_on_base_image(ec2, res):
    key_name, key = res.keypair("import")
    old = ec2.describe_images(Filters=[{"Name": "name", "Values": ["debian-12-amd64-20261001-1870"]}])["Images"][0]
    a = res.run(old["ImageId"], key_name)
    r = ssh(a["PrivateIpAddress"], key, "id -un; sudo -n id -u; sudo cat /etc/sudoers.d/90-cloud-init-users; "
            "test -d /run/sshd && echo run-ok; ls -A /tmp | wc -l; mount | grep -c ' /proc '")
    lines = r.stdout.splitlines()
    assert lines[0] == "admin" and lines[1] == "0"
    assert "admin ALL=(ALL) NOPASSWD:ALL" in r.stdout
    assert "run-ok" in lines
    # sftp (bake uploads with SFTP; also via `sudo -n /usr/lib/openssh/sftp-server`)
    import subprocess
    p = subprocess.run(
        ["sftp", "-b", "-", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
         "-o", "LogLevel=ERROR", "-i", str(key), f"admin@{a['PrivateIpAddress']}"],
        input="put /etc/hostname /tmp/sftp-upload\n", capture_output=True, text=True, timeout=30,
    )
    assert p.returncode == 0, p.stderr
    assert ssh(a["PrivateIpAddress"], key, "cat /tmp/sftp-upload").stdout == open("/etc/hostname").read()
    r = ssh(a["PrivateIpAddress"], key, "echo 'version' | sudo -n /usr/lib/openssh/sftp-server -e 2>&1 </dev/null; echo rc=$?", check=False)
    assert "rc=" in r.stdout


def test_user_data_runs_once_like_cloud_init(ec2, res):
    """#cloud-config runcmd and ssh_authorized_keys; a #! script part runs once at first boot."""
    key_name, key = res.keypair("import")
    extra_name, extra_key = res.keypair("import")  # only used for its key file
    extra_pub = (extra_key.parent / (extra_key.name + ".pub")).read_text().strip()
    from email.mime.multipart import MIMEMultipart
    from email.mime.text import MIMEText

    msg = MIMEMultipart()
    msg.attach(MIMEText(
        "#cloud-config\nssh_authorized_keys:\n  - " + extra_pub + "\nruncmd:\n  - echo runcmd >> /root/boots\n",
        "cloud-config"))
    msg.attach(MIMEText("#!/bin/sh\necho script >> /root/boots\n", "x-shellscript"))
    ami = ec2.describe_images(Filters=[{"Name": "name", "Values": ["debian-12-amd64-20261101-1900"]}])["Images"][0]["ImageId"]
    a = res.run(ami, key_name, msg.as_string())
    ip = a["PrivateIpAddress"]
    deadline = time.monotonic() + 10
    while True:
        out = ssh(ip, key, "sudo cat /root/boots 2>/dev/null", check=False).stdout.split()
        if out == ["script", "runcmd"] or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert out == ["script", "runcmd"]
    assert ssh(ip, extra_key, "echo via-extra-key").stdout.strip() == "via-extra-key"
    ec2.stop_instances(InstanceIds=[a["InstanceId"]])
    ec2.start_instances(InstanceIds=[a["InstanceId"]])
    time.sleep(0.5)
    assert ssh(ip, key, "sudo cat /root/boots").stdout.split() == ["script", "runcmd"]  # not again
    # DescribeInstanceAttribute gives the user data back
    ud = ec2.describe_instance_attribute(InstanceId=a["InstanceId"], Attribute="userData")["UserData"]["Value"]
    assert b"runcmd" in base64.b64decode(ud)


def test_auto_scaling_group_instances_are_ssh_hosts_with_the_baked_file(ec2, autoscaling, res, debian_ami):
    key_name, key = res.keypair("import")
    a = res.run(debian_ami, key_name)
    ssh(a["PrivateIpAddress"], key, "echo from-image | sudo tee /etc/asg-baked >/dev/null")
    ec2.stop_instances(InstanceIds=[a["InstanceId"]])
    ami = res.image(a["InstanceId"])
    lt_name = res.name("labtest-lt")
    ec2.create_launch_template(
        LaunchTemplateName=lt_name,
        LaunchTemplateData={"ImageId": ami, "InstanceType": "t3.micro", "KeyName": key_name},
    )
    res.cleanups.append(lambda: ec2.delete_launch_template(LaunchTemplateName=lt_name))
    asg = res.name("labtest-asg")
    subnets = [s["SubnetId"] for s in ec2.describe_subnets(Filters=[{"Name": "default-for-az", "Values": ["true"]}])["Subnets"]]
    autoscaling.create_auto_scaling_group(
        AutoScalingGroupName=asg,
        LaunchTemplate={"LaunchTemplateName": lt_name, "Version": "$Latest"},
        MinSize=2, MaxSize=2, DesiredCapacity=2,
        VPCZoneIdentifier=",".join(subnets[:2]),
    )

    def delete_asg():
        autoscaling.delete_auto_scaling_group(AutoScalingGroupName=asg, ForceDelete=True)

    res.cleanups.append(delete_asg)
    group = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[asg])["AutoScalingGroups"][0]
    ids = [i["InstanceId"] for i in group["Instances"]]
    assert len(ids) == 2
    res.instances.extend(ids)
    for iid in ids:
        inst = wait_state(ec2, iid, "running")
        assert_loopback(inst)
        assert ssh(inst["PrivateIpAddress"], key, "cat /etc/asg-baked").stdout.strip() == "from-image"


def test_exec_hook(ec2, res, debian_ami):
    """The internal exec hook (future SSM SendCommand): run inside the sandbox, get code/out/err."""
    key_name, key = res.keypair("import")
    a = res.run(debian_ami, key_name)
    r = lab_api("exec", {"instance_id": a["InstanceId"],
                         "command": "echo out; echo err >&2; id -u; touch /root/exec-was-here; exit 3",
                         "env": {"FOO": "bar"}})
    assert r["code"] == 3
    assert r["stdout"].split() == ["out", "0"]
    assert r["stderr"].strip() == "err"
    assert ssh(a["PrivateIpAddress"], key, "sudo ls /root/exec-was-here").returncode == 0
    r = lab_api("exec", {"instance_id": a["InstanceId"], "command": ["/bin/sh", "-c", "echo $FOO; whoami"],
                         "env": {"FOO": "bar"}, "user": "admin"})
    assert r["stdout"].split() == ["bar", "admin"]
    r = lab_api("exec", {"instance_id": a["InstanceId"], "command": "sleep 5", "timeout": 0.5})
    assert r["code"] == 124


def test_console_output_shows_host_keys(ec2, res, debian_ami):
    key_name, key = res.keypair("import")
    priv, pub = res.host_key()
    from conftest import cloud_config_host_key

    a = res.run(debian_ami, key_name, cloud_config_host_key(priv, pub))
    # as on EC2, the console fills in while the instance boots
    deadline = time.monotonic() + 15
    while True:
        out = ec2.get_console_output(InstanceId=a["InstanceId"]).get("Output", "")
        if "sshd starting on " in out or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert "-----BEGIN SSH HOST KEY KEYS-----" in out
    assert " ".join(pub.split()[:2]) in out
    assert "sshd starting on " + a["PrivateIpAddress"] in out


def test_debian_ssm_parameters(ec2, res, lab_env, debian_ami):
    import boto3

    ssm = boto3.client("ssm", region_name="us-east-1", endpoint_url=lab_env["AWS_ENDPOINT_URL"])
    for name in ("/aws/service/debian/release/bookworm/latest/amd64", "/aws/service/debian/release/12/latest/amd64"):
        assert ssm.get_parameter(Name=name)["Parameter"]["Value"] == debian_ami
    older = ssm.get_parameter(Name="/aws/service/debian/release/12/20261001-1870/amd64")["Parameter"]["Value"]
    assert ec2.describe_images(ImageIds=[older])["Images"][0]["Name"] == "debian-12-amd64-20261001-1870"
    a = res.run("resolve:ssm:/aws/service/debian/release/12/latest/amd64")
    assert a["ImageId"] == debian_ami


def test_create_image_no_reboot_keeps_the_instance_running_and_snapshots_live_content(ec2, res):
    """NoReboot=true on a running instance: the SSH session survives, the image holds the disk
    as it was at the call (deleted files too), and later writes stay out of it."""
    import subprocess
    key_name, key = res.keypair("import")
    debian = ec2.describe_images(Filters=[{"Name": "name", "Values": ["debian-12-amd64-20261101-1900"]}])["Images"][0]["ImageId"]
    a = res.run(debian, key_name)
    ip = a["PrivateIpAddress"]
    ssh(ip, key, "echo one | sudo tee /etc/lab-live >/dev/null; sudo rm -f /etc/debian_version; "
                 "sudo mkdir -p /opt/live && echo x | sudo tee /opt/live/x >/dev/null")
    # A session open across the CreateImage call: a reboot would cut it.
    held = subprocess.Popen(
        ["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
         "-o", "LogLevel=ERROR", "-i", str(key), f"admin@{ip}", "sleep 2; echo alive"],
        stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)
    ami = res.image(a["InstanceId"], NoReboot=True)
    assert held.communicate(timeout=20)[0].strip() == "alive"
    ssh(ip, key, "echo two | sudo tee -a /etc/lab-live >/dev/null")
    assert ssh(ip, key, "cat /etc/lab-live").stdout == "one\ntwo\n"
    b = res.run(ami, key_name)
    r = ssh(b["PrivateIpAddress"], key, "cat /etc/lab-live; cat /opt/live/x; test -e /etc/debian_version || echo gone")
    assert r.stdout == "one\nx\ngone\n", r.stdout
