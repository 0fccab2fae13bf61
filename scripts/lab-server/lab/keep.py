"""What a lab instance leaves on its disk, as a real Debian 12 instance on EC2 does, so that
images made from it carry the same traces (and secrets) a real AMI would:

* syslog: a tiny syslog daemon (sandbox-syslogd.py) on the sandbox's /dev/log writes
  rsyslog-style `/var/log/auth.log` (auth, authpriv) and `/var/log/syslog` (the rest), so
  `sudo` logs its command lines as on a real machine (Debian 12 keeps the same lines in its
  persistent journal, /var/log/journal);
* SSH host keys in `/etc/ssh/ssh_host_*_key` (cloud-init writes them there; on an instance's
  first boot it deletes the keys the image brought, `ssh_deletekeys`);
* cloud-init's copy of the user data: `/var/lib/cloud/instances/<id>/user-data.txt` (0600),
  `/var/lib/cloud/instance` → that directory, `/var/lib/cloud/data/instance-id`;
* the SSM agent's files: the script, `stdout` and `stderr` of every command under
  `/var/lib/amazon/ssm/<id>/document/orchestration/<command>/awsrunShellScript/
  0.awsrunShellScript/`, the command's document state (with its parameters) in
  `/var/lib/amazon/ssm/<id>/document/state/completed/<command>`, and a line per command in
  `/var/log/amazon/ssm/amazon-ssm-agent.log`.

The agent writes run/keep.sh at provisioning; sandbox-boot.sh runs it (chrooted, as root)
at every boot after setup.sh. Everything lands in the instance's upper dir, so CreateImage
freezes it into the image.
"""

from __future__ import annotations

import json
import logging
import shlex
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

log = logging.getLogger("lab.keep")

SYSLOGD = Path(__file__).resolve().parent.parent / "sandbox-syslogd.py"


def provision(run: Path, instance_id: str, user_data: bytes | None) -> None:
    """Write run/keep.sh, run/user-data.txt and run/syslogd.py for one instance."""
    (run / "user-data.txt").write_bytes(user_data or b"")
    (run / "user-data.txt").chmod(0o600)
    shutil.copyfile(SYSLOGD, run / "syslogd.py")
    (run / "keep.sh").write_text(_keep_script(instance_id))
    (run / "keep.sh").chmod(0o755)


def _keep_script(instance_id: str) -> str:
    i = shlex.quote(instance_id)
    return f"""# what cloud-init leaves on the disk (lab/keep.py); every boot, idempotent
set -e
IID={i}
I=/var/lib/cloud/instances/$IID
mkdir -p "$I" /var/lib/cloud/data
if [ ! -e "$I/user-data.txt" ]; then
  cp /run/lab/user-data.txt "$I/user-data.txt"
  chmod 0600 "$I/user-data.txt"
fi
ln -sfn "$I" /var/lib/cloud/instance
printf '%s\\n' "$IID" > /var/lib/cloud/data/instance-id
# host keys: this instance's own (an image's old keys go, as with ssh_deletekeys)
if [ ! -e "$I/sem-config_ssh" ]; then
  rm -f /etc/ssh/ssh_host_*_key /etc/ssh/ssh_host_*_key.pub
  touch "$I/sem-config_ssh"
fi
mkdir -p /etc/ssh
for k in /run/lab/ssh_host_*_key; do
  [ -e "$k" ] || continue
  b=$(basename "$k")
  cp "$k" "/etc/ssh/$b" && chmod 0600 "/etc/ssh/$b"
  if [ -e "$k.pub" ]; then cp "$k.pub" "/etc/ssh/$b.pub" && chmod 0644 "/etc/ssh/$b.pub"; fi
done
mkdir -p /var/log
touch /var/log/auth.log /var/log/syslog
chmod 0640 /var/log/auth.log /var/log/syslog
chgrp adm /var/log/auth.log /var/log/syslog 2>/dev/null || true
"""


def _ts() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def ssm_files(pid1: int, orch: str, iid: str, cmd: Any, data: dict[str, Any],
              out: bytes, err: bytes) -> None:
    """After an SSM command: stdout/stderr next to its script, the document state and the
    agent's log line, written into the sandbox's root (seen from here as /proc/<pid1>/root)."""
    root = Path(f"/proc/{pid1}/root")
    state = {
        "DocumentInformation": {
            "DocumentID": cmd.command_id, "CommandID": cmd.command_id, "InstanceID": iid,
            "DocumentName": cmd.document_name, "DocumentStatus": data.get("Status"),
        },
        "DocumentType": "SendCommand", "SchemaVersion": "2.2",
        "InstancePluginsInformation": [{
            "Configuration": {
                "Properties": dict(cmd.parameters or {}),
                "OutputS3BucketName": cmd.output_s3_bucket_name or "",
                "OutputS3KeyPrefix": cmd.output_s3_key_prefix or "",
                "OrchestrationDirectory": orch,
                "MessageId": f"aws.ssm.{cmd.command_id}.{iid}",
                "PluginID": "aws:runShellScript",
            },
            "Name": "aws:runShellScript", "Id": "aws:runShellScript",
            "Result": {"Status": data.get("Status"), "Code": data.get("ResponseCode")},
        }],
    }
    logline = (f"{_ts()} INFO [ssm-agent-worker] [MessagingDeliveryService] SendCommand "
               f"{cmd.command_id} ({cmd.document_name}) on {iid}: {data.get('Status')}\n")
    try:
        o = root / orch.lstrip("/")
        o.mkdir(parents=True, exist_ok=True)
        (o / "stdout").write_bytes(out)
        (o / "stderr").write_bytes(err)
        sd = root / f"var/lib/amazon/ssm/{iid}/document/state/completed"
        sd.mkdir(parents=True, exist_ok=True)
        (sd / cmd.command_id).write_text(json.dumps(state, indent=2))
        (sd / cmd.command_id).chmod(0o600)
        ld = root / "var/log/amazon/ssm"
        ld.mkdir(parents=True, exist_ok=True)
        with open(ld / "amazon-ssm-agent.log", "a") as f:
            f.write(logline)
    except OSError as e:  # the instance went down meanwhile: the agent went with it
        log.warning("ssm files for %s on %s: %s", cmd.command_id, iid, e)
