"""SSM Run Command for lab instances: what the SSM agent would do on a real instance.

moto records SendCommand and answers GetCommandInvocation with "Success" and empty output,
executing nothing, and has no DescribeInstanceInformation / CancelCommand. The lab:

* **Registration** (DescribeInstanceInformation): an instance is a managed node when it is not
  terminated and has an IAM instance profile whose role may talk to Systems Manager: an
  attached policy named `AmazonSSMManagedInstanceCore` / `AmazonEC2RoleforSSM` /
  `AmazonSSMFullAccess`, or any attached or inline policy document that allows
  `ssm:UpdateInstanceInformation` (wildcards count). It is `Online` once its sandbox has been
  up for `LAB_SSM_REGISTER_DELAY` seconds (default 0.5: the agent needs a moment after boot,
  so a client must wait), `ConnectionLost` while stopped, booting or rebooting.
* **SendCommand** (`AWS-RunShellScript` only): instances that are not managed nodes →
  `InvalidInstanceId`. Each invocation runs in the background: `Pending` until the node is
  Online (up to the command's `TimeoutSeconds`, then `TimedOut`/`DeliveryTimedOut`),
  then `InProgress`; the `commands` lines are written to the agent's orchestration directory
  on the instance (`/var/lib/amazon/ssm/<instance>/document/orchestration/<command>/
  awsrunShellScript/0.awsrunShellScript/_script.sh`, as the real agent does) and run with
  `/bin/sh` as root inside the sandbox, in `workingDirectory`, for at most
  `executionTimeout` seconds (default 3600) → `Success` (exit 0), `Failed` (ResponseCode =
  exit code), `TimedOut` (`ExecutionTimedOut`, process group killed), `Cancelled`
  (CancelCommand). An instance that stops or reboots under a running command → `Failed`,
  ResponseCode -1 (its output is not written to S3: the agent went down with it).
  `StandardOutputContent` holds the first 24,000 characters of stdout,
  `StandardErrorContent` the first 8,000 of stderr (as the API); with `OutputS3BucketName`
  the full streams go to `s3://bucket/<prefix>/<command>/<instance>/awsrunShellScript/
  0.awsrunShellScript/{stdout,stderr}` like the agent (stderr only when non-empty), and the
  invocation's `StandardOutputUrl` / `StandardErrorUrl` point there. (moto also ran a
  command given only `InstanceIds` on every instance of the region: fixed.)
* Presigned S3 URLs: the sandboxes share the host's loopback, so an instance fetches
  `http://127.0.0.1:<port>/<bucket>/<key>?X-Amz-...` from the lab's S3 directly.

Not modelled: the agent's own IAM credentials (S3 output is written whatever the role says),
Session Manager, documents other than AWS-RunShellScript (they fail with
`InvalidDocument`), exit codes 194/3010 (reboot requests).
"""

from __future__ import annotations

import datetime
import fnmatch
import json
import logging
import os
import signal
import subprocess
import threading
import time
from typing import Any

from . import keep
from .agent import Lab

log = logging.getLogger("lab.ssm")

STDOUT_LIMIT = 24000
STDERR_LIMIT = 8000
PLUGIN = "aws:runShellScript"
PLUGIN_DIR = "awsrunShellScript/0.awsrunShellScript"
SSM_POLICY_NAMES = {"AmazonSSMManagedInstanceCore", "AmazonEC2RoleforSSM", "AmazonSSMFullAccess"}
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _iso(t: datetime.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _allows_ssm(doc: Any) -> bool:
    """Whether an IAM policy document allows ssm:UpdateInstanceInformation."""
    if isinstance(doc, str):
        try:
            doc = json.loads(doc)
        except ValueError:
            return False
    if not isinstance(doc, dict):
        return False
    stmts = doc.get("Statement", [])
    if isinstance(stmts, dict):
        stmts = [stmts]
    for s in stmts:
        if not isinstance(s, dict) or s.get("Effect") != "Allow":
            continue
        actions = s.get("Action", [])
        if isinstance(actions, str):
            actions = [actions]
        if any(fnmatch.fnmatch("ssm:updateinstanceinformation", str(a).lower()) for a in actions):
            return True
    return False


def _role_allows_ssm(role: Any) -> bool:
    for arn, pol in getattr(role, "managed_policies", {}).items():
        if arn.rsplit("/", 1)[-1] in SSM_POLICY_NAMES:
            return True
        for v in getattr(pol, "versions", []):
            if getattr(v, "is_default", False) and _allows_ssm(getattr(v, "document", None)):
                return True
    return any(_allows_ssm(doc) for doc in getattr(role, "policies", {}).values())


class Invocation:
    def __init__(self, cmd: Any, iid: str, data: dict[str, Any]):
        self.cmd = cmd
        self.iid = iid
        self.data = data  # the dict moto returns from GetCommandInvocation, updated in place
        self.proc: subprocess.Popen | None = None
        self.cancelled = False
        self.lock = threading.Lock()


class Ssm:
    def __init__(self, lab: Lab):
        self.lab = lab
        self.register_delay = float(os.environ.get("LAB_SSM_REGISTER_DELAY", "0.5"))
        self.invocations: dict[tuple[str, str], Invocation] = {}
        self.lock = threading.Lock()

    # ------------------------------------------------------------ registration
    def managed(self, ec2_backend: Any, iid: str) -> Any | None:
        """The moto instance if `iid` is a managed node (profile whose role allows SSM)."""
        try:
            inst = ec2_backend.get_instance(iid)
        except Exception:  # noqa: BLE001
            return None
        if inst.state == "terminated":
            return None
        assoc = ec2_backend.iam_instance_profile_associations.get(iid)
        profile = getattr(assoc, "iam_instance_profile", None)
        if profile is None:
            return None
        if not any(_role_allows_ssm(r) for r in getattr(profile, "roles", [])):
            return None
        return inst

    def online(self, iid: str) -> bool:
        sb = self.lab.sandboxes.get(iid)
        return bool(
            sb is not None and sb.state == "running" and sb.pid1 and sb.ready_at
            and time.monotonic() - sb.ready_at >= self.register_delay
        )

    def information(self, ec2_backend: Any, ids: list[str] | None) -> list[dict[str, Any]]:
        out = []
        for resv in ec2_backend.reservations.values():
            for inst in resv.instances:
                if ids and inst.id not in ids:
                    continue
                if self.managed(ec2_backend, inst.id) is None:
                    continue
                assoc = ec2_backend.iam_instance_profile_associations.get(inst.id)
                roles = getattr(assoc.iam_instance_profile, "roles", [])
                sb = self.lab.sandboxes.get(inst.id)
                ping = _now() if sb is not None and sb.state == "running" else inst.launch_time
                out.append({
                    "InstanceId": inst.id,
                    "PingStatus": "Online" if self.online(inst.id) else "ConnectionLost",
                    "LastPingDateTime": ping if isinstance(ping, datetime.datetime) else _now(),
                    "AgentVersion": "3.3.1957.0",
                    "IsLatestVersion": True,
                    "PlatformType": "Linux",
                    "PlatformName": "Debian GNU/Linux",
                    "PlatformVersion": "12",
                    "IamRole": roles[0].name if roles else "",
                    "ResourceType": "EC2Instance",
                    "IPAddress": inst.private_ip_address,
                    "ComputerName": f"ip-{inst.private_ip_address.replace('.', '-')}.ec2.internal",
                    "SourceId": inst.id,
                    "SourceType": "AWS::EC2::Instance",
                })
        return out

    # ---------------------------------------------------------------- commands
    def start(self, backend: Any, cmd: Any) -> None:
        """Called right after moto created the Command: run every invocation for real."""
        cmd.status = "Pending"
        cmd.status_details = "Pending"
        cmd.completed_count = 0
        for data in cmd.invocations:
            data.update({
                "Status": "Pending", "StatusDetails": "Pending", "ResponseCode": -1,
                "ExecutionStartDateTime": "", "ExecutionElapsedTime": "", "ExecutionEndDateTime": "",
                "StandardOutputContent": "", "StandardErrorContent": "",
                "StandardOutputUrl": "", "StandardErrorUrl": "",
                "PluginName": PLUGIN,
            })
            inv = Invocation(cmd, data["InstanceId"], data)
            with self.lock:
                self.invocations[(cmd.command_id, inv.iid)] = inv
            threading.Thread(target=self._run, args=(backend, inv), daemon=True,
                             name=f"ssm-{cmd.command_id[:8]}-{inv.iid}").start()

    def cancel(self, command_id: str, ids: list[str] | None) -> None:
        with self.lock:
            invs = [v for (c, i), v in self.invocations.items() if c == command_id and (not ids or i in ids)]
        for inv in invs:
            with inv.lock:
                if inv.data["Status"] not in ("Pending", "InProgress", "Delayed"):
                    continue
                inv.cancelled = True
                if inv.proc is not None:
                    _killpg(inv.proc)
                else:
                    self._finish(inv, "Cancelled", "Cancelled", -1, b"", b"")

    def _run(self, backend: Any, inv: Invocation) -> None:
        try:
            self._execute(backend, inv)
        except Exception as e:  # noqa: BLE001
            log.exception("ssm %s on %s", inv.cmd.command_id, inv.iid)
            with inv.lock:
                if inv.data["Status"] in ("Pending", "InProgress"):
                    self._finish(inv, "Failed", "Failed", -1, b"", f"lab: {type(e).__name__}: {e}\n".encode())

    def _execute(self, backend: Any, inv: Invocation) -> None:
        cmd, iid = inv.cmd, inv.iid
        params = cmd.parameters or {}
        if (cmd.document_name or "") != "AWS-RunShellScript":
            with inv.lock:
                self._finish(inv, "Failed", "Failed", -1, b"",
                             f"lab: document {cmd.document_name!r} is not supported (only AWS-RunShellScript)\n".encode())
            return
        script = "\n".join(params.get("commands") or []) + "\n"
        workdir = (params.get("workingDirectory") or [""])[0] or None
        try:
            exec_timeout = float((params.get("executionTimeout") or ["3600"])[0])
        except ValueError:
            exec_timeout = 3600.0
        # delivery: wait until the node is online (commands survive reboots: session-less)
        deadline = time.monotonic() + float(cmd.timeout_seconds or 3600)
        while not self.online(iid):
            sb = self.lab.sandboxes.get(iid)
            if inv.cancelled:
                return
            if sb is None or sb.state == "terminated" or time.monotonic() > deadline:
                with inv.lock:
                    self._finish(inv, "TimedOut", "DeliveryTimedOut", -1, b"", b"")
                return
            time.sleep(0.05)
        sb = self.lab.sandboxes[iid]
        boots, pid1 = sb.boots, sb.pid1
        start = _now()
        orch = f"/var/lib/amazon/ssm/{iid}/document/orchestration/{cmd.command_id}/{PLUGIN_DIR}"
        env = [f"PATH={PATH}", "HOME=/root", "LANG=C.UTF-8", f"AWS_SSM_INSTANCE_ID={iid}",
               f"AWS_SSM_REGION_NAME={cmd.backend_region}"]
        base = ["nsenter", "-t", str(pid1), "-m", "-p", "-r", "-w", "--", "/usr/bin/env", "-i", *env]
        # the agent writes the commands to _script.sh on the instance, then runs it with sh
        w = subprocess.run(
            base + ["/bin/sh", "-c", 'mkdir -p "$1" && cat > "$1/_script.sh" && chmod 0700 "$1/_script.sh"', "sh", orch],
            input=script.encode(), capture_output=True, timeout=60,
        )
        if w.returncode != 0:
            with inv.lock:
                self._finish(inv, "Failed", "Failed", -1, b"", b"lab: could not write the script: " + w.stderr)
            return
        run = 'cd "$1" || { echo "Invalid working directory: $1" >&2; exit 1; }; exec /bin/sh "$2/_script.sh"'
        argv = base + ["/bin/sh", "-c", run, "sh", workdir or "/", orch]
        with inv.lock:
            if inv.cancelled:
                self._finish(inv, "Cancelled", "Cancelled", -1, b"", b"")
                return
            inv.data.update({"Status": "InProgress", "StatusDetails": "InProgress",
                             "ExecutionStartDateTime": _iso(start)})
            inv.cmd.status, inv.cmd.status_details = "InProgress", "InProgress"
            inv.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, start_new_session=True)
        timed_out = False
        try:
            out, err = inv.proc.communicate(timeout=exec_timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            _killpg(inv.proc)
            out, err = inv.proc.communicate()
        code = inv.proc.returncode
        sb_now = self.lab.sandboxes.get(iid)
        went_down = sb_now is None or sb_now.boots != boots or sb_now.state != "running"
        if not went_down:  # the agent's own files on the instance's disk (lab/keep.py)
            keep.ssm_files(pid1, orch, iid, cmd, {"Status": "Cancelled" if inv.cancelled else (
                "TimedOut" if timed_out else ("Success" if code == 0 else "Failed")), "ResponseCode": code},
                out, err)
        with inv.lock:
            if inv.cancelled:
                self._finish(inv, "Cancelled", "Cancelled", -1, out, err, backend)
            elif timed_out:
                self._finish(inv, "TimedOut", "ExecutionTimedOut", 124, out, err, backend)
            elif went_down:
                # the agent went down with it: no output upload to S3
                self._finish(inv, "Failed", "Failed", -1, out,
                             err + b"\nlab: the instance stopped or rebooted during the command\n", upload=False)
            elif code == 0:
                self._finish(inv, "Success", "Success", 0, out, err, backend)
            else:
                self._finish(inv, "Failed", "Failed", code if code > 0 else 128 - code, out, err, backend)

    def _finish(self, inv: Invocation, status: str, details: str, code: int, out: bytes, err: bytes,
                backend: Any = None, upload: bool = True) -> None:
        """Final state (caller holds inv.lock)."""
        end = _now()
        start_s = inv.data.get("ExecutionStartDateTime") or ""
        stdout, stderr = out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
        inv.data.update({
            "Status": status, "StatusDetails": details, "ResponseCode": code,
            "ExecutionEndDateTime": _iso(end) if start_s else "",
            "StandardOutputContent": stdout[:STDOUT_LIMIT],
            "StandardErrorContent": stderr[:STDERR_LIMIT],
        })
        if start_s:
            started = datetime.datetime.strptime(start_s, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.timezone.utc)
            inv.data["ExecutionElapsedTime"] = f"PT{(end - started).total_seconds():.3f}S"
        inv.proc = None
        if inv.cmd.output_s3_bucket_name and start_s and upload:
            self._write_s3(inv, out, err)
        # the command's overall status: the worst of its invocations once all are done
        statuses = [d["Status"] for d in inv.cmd.invocations]
        done = [s for s in statuses if s not in ("Pending", "InProgress", "Delayed")]
        inv.cmd.completed_count = len(done)
        inv.cmd.error_count = sum(1 for s in done if s in ("Failed", "TimedOut"))
        if len(done) == len(statuses):
            for s in ("Failed", "TimedOut", "Cancelled", "Success"):
                if s in statuses:
                    inv.cmd.status = inv.cmd.status_details = s
                    break

    def _write_s3(self, inv: Invocation, out: bytes, err: bytes) -> None:
        from moto.s3.models import s3_backends

        cmd = inv.cmd
        bucket = cmd.output_s3_bucket_name
        prefix = (cmd.output_s3_key_prefix or "").strip("/")
        base = f"{prefix + '/' if prefix else ''}{cmd.command_id}/{inv.iid}/{PLUGIN_DIR}"
        s3 = s3_backends[cmd.account_id]["aws"]
        region = cmd.output_s3_region or cmd.backend_region
        try:
            s3.put_object(bucket, f"{base}/stdout", out)
            inv.data["StandardOutputUrl"] = f"https://s3.{region}.amazonaws.com/{bucket}/{base}/stdout"
            if err:
                s3.put_object(bucket, f"{base}/stderr", err)
                inv.data["StandardErrorUrl"] = f"https://s3.{region}.amazonaws.com/{bucket}/{base}/stderr"
        except Exception as e:  # noqa: BLE001  (the agent only logs a failed upload)
            log.warning("ssm output to s3://%s/%s failed: %s", bucket, base, e)


def _killpg(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def install(lab: Lab) -> Ssm:
    """Patch moto's SSM backend and responses (called from labserver.py)."""
    from moto.ec2.models import ec2_backends
    from moto.ssm import models as m_ssm
    from moto.ssm import responses as r_ssm
    from moto.core.responses import ActionResult
    from moto.ssm.exceptions import SSMException

    ssm = Ssm(lab)
    lab.ssm = ssm  # type: ignore[attr-defined]

    orig_send = m_ssm.SimpleSystemManagerBackend.send_command

    def send_command(self: Any, **kwargs: Any) -> Any:
        ec2 = ec2_backends[self.account_id][self.region_name]
        bad = [i for i in kwargs.get("instance_ids") or [] if ssm.managed(ec2, i) is None]
        if bad:
            raise SSMException(
                "InvalidInstanceId",
                f"Instances [{', '.join(bad)}] not in a valid state for account {self.account_id}: "
                "not a managed node (lab: needs a running instance whose instance profile's role "
                "allows ssm:UpdateInstanceInformation)",
            )
        cmd = orig_send(self, **kwargs)
        ssm.start(self, cmd)
        return cmd

    m_ssm.SimpleSystemManagerBackend.send_command = send_command

    orig_targets = m_ssm.Command._get_instance_ids_from_targets

    def _get_instance_ids_from_targets(self: Any) -> list[str]:
        # moto: no Targets matches *every* instance (so InstanceIds=[a] also ran on b, c, ...);
        # SSM: Targets select managed nodes only.
        if not self.targets:
            return []
        ec2 = ec2_backends[self.account_id][self.backend_region]
        return [i for i in orig_targets(self) if ssm.managed(ec2, i) is not None]

    m_ssm.Command._get_instance_ids_from_targets = _get_instance_ids_from_targets

    def describe_instance_information(self: Any) -> Any:
        ids: list[str] = []
        for f in self._get_param("InstanceInformationFilterList") or []:
            if f.get("key") == "InstanceIds":
                ids += f.get("valueSet") or []
        for f in self._get_param("Filters") or []:
            if f.get("Key") == "InstanceIds":
                ids += f.get("Values") or []
        ec2 = ec2_backends[self.current_account][self.region]
        return ActionResult({"InstanceInformationList": ssm.information(ec2, ids or None)})

    def cancel_command(self: Any) -> Any:
        command_id = self._get_param("CommandId")
        self.ssm_backend.get_command_by_id(command_id)  # InvalidCommandId when unknown
        ssm.cancel(command_id, self._get_param("InstanceIds") or None)
        return ActionResult({})

    r_ssm.SimpleSystemManagerResponse.describe_instance_information = describe_instance_information
    r_ssm.SimpleSystemManagerResponse.cancel_command = cancel_command
    return ssm
