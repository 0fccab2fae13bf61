#!/usr/bin/env python3
"""Generate Packer (1.6.6, JSON) amazon-ebs templates for the bake benchmarks.

The checked-in baseline.pkr.json is `gen-template.py` with no options. Variants:

    benches/packer/gen-template.py --shell-steps 50 --upload-dir some/dir --big-file big.bin > t.json

  --shell-steps N   N trivial, separate shell provisioner steps (each one `true`)
  --upload-dir D    upload directory D (file provisioner) to /tmp/upload, then sudo-copy it to /opt/upload
  --big-file F      upload file F (file provisioner) to /tmp/big, then sudo-move it to /opt/big

Options for the benchmark suite (benches/bench.py), which needs the same workload as a bake
recipe (no provisioners unless asked; uploads straight to their final place):

  --no-baseline     leave out the baseline's hello.txt file + shell provisioners
  --direct-dest D   uploads go straight to D/upload/ and D/big instead of /tmp + sudo copy:
                    one shell step first makes D (and D/upload) owned by the SSH user
                    (Packer's file provisioner cannot sudo)
  --ami-name N      ami_name (default packer-baseline-{{timestamp}})
  --tag K=V         extra tag on the AMI, builder and snapshots (repeatable)
  --inline CMD      one shell provisioner running CMD (repeatable; after the other steps)

The template is a stock amazon-ebs build; the only lab-specific settings are the endpoint,
the credentials (from the environment: source .lab/env) and ssh_interface = private_ip.
"""
import argparse
import json
import os


def template(shell_steps=0, upload_dir=None, big_file=None, baseline=True, direct_dest=None,
             ami_name="packer-baseline-{{timestamp}}", extra_tags=None, inline=None):
    provisioners = [] if not baseline else [
        {"type": "file", "source": "{{template_dir}}/files/hello.txt", "destination": "/tmp/hello.txt"},
        {
            "type": "shell",
            "inline": [
                "set -e",
                "sudo install -m 0644 -o root -g root /tmp/hello.txt /etc/packer-baked.txt",
                "echo \"built by packer from {{user `source_ami_name`}}\" | sudo tee -a /etc/packer-baked.txt >/dev/null",
            ],
        },
    ]
    for i in range(shell_steps):
        provisioners.append({"type": "shell", "inline": ["true"]})
    if direct_dest and (upload_dir or big_file):
        d = direct_dest.rstrip("/")
        dirs = [d] + ([d + "/upload"] if upload_dir else [])
        provisioners.append({"type": "shell", "inline": ["sudo install -d -o \"$(id -un)\" -m 0755 " + " ".join(dirs)]})
        if upload_dir:
            provisioners.append({"type": "file", "source": os.path.abspath(upload_dir).rstrip("/") + "/",
                                 "destination": d + "/upload"})
        if big_file:
            provisioners.append({"type": "file", "source": os.path.abspath(big_file), "destination": d + "/big"})
    elif upload_dir:
        provisioners += [
            {"type": "shell", "inline": ["mkdir -p /tmp/upload"]},  # scp needs the target dir
            {"type": "file", "source": os.path.abspath(upload_dir).rstrip("/") + "/", "destination": "/tmp/upload"},
            {"type": "shell", "inline": ["sudo mkdir -p /opt/upload", "sudo cp -a /tmp/upload/. /opt/upload/"]},
        ]
    if big_file and not direct_dest:
        provisioners += [
            {"type": "file", "source": os.path.abspath(big_file), "destination": "/tmp/big"},
            {"type": "shell", "inline": ["sudo mv /tmp/big /opt/big"]},
        ]
    for cmd in inline or []:
        provisioners.append({"type": "shell", "inline": [cmd]})
    return {
        "variables": {
            "endpoint": "{{env `AWS_ENDPOINT_URL`}}",
            "access_key": "{{env `AWS_ACCESS_KEY_ID`}}",
            "secret_key": "{{env `AWS_SECRET_ACCESS_KEY`}}",
            "region": "us-east-1",
            "source_ami_name": "debian-12-amd64-*",
            "instance_type": "t3.micro",
            "ami_name": ami_name,
        },
        "builders": [
            {
                "type": "amazon-ebs",
                "region": "{{user `region`}}",
                "access_key": "{{user `access_key`}}",
                "secret_key": "{{user `secret_key`}}",
                "custom_endpoint_ec2": "{{user `endpoint`}}",
                "skip_region_validation": True,
                "skip_metadata_api_check": True,
                "source_ami_filter": {
                    "filters": {
                        "name": "{{user `source_ami_name`}}",
                        "architecture": "x86_64",
                        "root-device-type": "ebs",
                        "virtualization-type": "hvm",
                    },
                    "owners": ["136693071363"],
                    "most_recent": True,
                },
                "instance_type": "{{user `instance_type`}}",
                "ssh_username": "admin",
                "ssh_interface": "private_ip",
                "ssh_timeout": "2m",
                "ami_name": "{{user `ami_name`}}",
                "ami_description": "bake benchmark baseline (Packer)",
                "run_tags": {"Name": "packer-builder", "bake-bench": "packer", **(extra_tags or {})},
                "tags": {"Name": "{{user `ami_name`}}", "bake-bench": "packer", "source-ami": "{{ .SourceAMI }}",
                         **(extra_tags or {})},
                "snapshot_tags": {"bake-bench": "packer", **(extra_tags or {})},
            }
        ],
        "provisioners": provisioners,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shell-steps", type=int, default=0)
    ap.add_argument("--upload-dir")
    ap.add_argument("--big-file")
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--direct-dest")
    ap.add_argument("--ami-name", default="packer-baseline-{{timestamp}}")
    ap.add_argument("--tag", action="append", default=[], metavar="K=V")
    ap.add_argument("--inline", action="append", default=[], metavar="CMD")
    a = ap.parse_args()
    tags = dict(t.split("=", 1) for t in a.tag)
    print(json.dumps(template(a.shell_steps, a.upload_dir, a.big_file, baseline=not a.no_baseline,
                              direct_dest=a.direct_dest, ami_name=a.ami_name, extra_tags=tags,
                              inline=a.inline), indent=2))


if __name__ == "__main__":
    main()
