"""Auto Scaling instance refresh for the lab (moto 5.2.1 has none: HTTP 500), plus the launch
template pieces a roll-out needs (DeleteLaunchTemplateVersions, version numbers that survive
deletions, CreateLaunchTemplateVersion user data) and a per-image health switch.

Follows the AWS API reference of StartInstanceRefresh / DescribeInstanceRefreshes /
CancelInstanceRefresh / RollbackInstanceRefresh:

* one active refresh per group (Pending, InProgress, Cancelling, RollbackInProgress); another
  StartInstanceRefresh → `InstanceRefreshInProgress`;
* a background thread per refresh replaces the group's instances in batches: with
  MaxHealthyPercentage 100 it terminates a batch, then launches its replacements; above 100 it
  launches first. Batch size = max(1, floor(capacity × (Max − Min) / 100)), capped so a
  checkpoint is reached and never overshot. New instances come from the desired launch
  template version through moto's EC2 model, so the lab agent boots them (a real sshd from the
  image's layers);
* health: a new instance is healthy when its sshd accepts a TCP connection within
  max(InstanceWarmup, LAB_REFRESH_HEALTH_GRACE = 15 s; an image marked unhealthy fails at once, so the
  generous grace only absorbs a loaded machine's slow sandbox boots); the refresh then waits out the rest of
  the warm-up. An image marked unhealthy (`POST /lab-api/unhealthy-image`, or the image tag
  `lab:health=fail`) boots no sshd: its instances fail, are terminated, the group gets back
  its capacity from its own (previous) configuration, and the refresh is Failed with a
  StatusReason — or, with AutoRollback, RollbackInProgress → RollbackSuccessful;
* CheckpointPercentages / CheckpointDelay: pause (InProgress, StatusReason says so) once the
  percentage of replaced instances reaches a checkpoint; a last checkpoint below 100 ends the
  refresh there (Successful, partial);
* Cancel: Cancelling (the batch in flight finishes) → Cancelled; replaced instances stay;
* Rollback (also AutoRollback): RollbackInProgress → replace every instance not on the
  group's previous launch template version → RollbackSuccessful (RollbackFailed if that fails);
* on Successful the group's launch template spec becomes the desired configuration (as AWS
  does); it is never changed otherwise, so a rollback "restores" it by construction.
"""

from __future__ import annotations

import logging
import math
import os
import random
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from moto.core.exceptions import ServiceException

from .agent import Lab, is_lab_ip

log = logging.getLogger("lab.refresh")

ACTIVE = ("Pending", "InProgress", "Cancelling", "RollbackInProgress")
HEALTH_GRACE = float(os.environ.get("LAB_REFRESH_HEALTH_GRACE", "15"))
ASG_NAME_TAG = "aws:autoscaling:groupName"


class RefreshError(ServiceException):
    def __init__(self, code: str, message: str):
        super().__init__(code, message)


def _now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class Refresh:
    id: str
    group: str
    account: str
    region: str
    preferences: dict[str, Any]
    desired: dict[str, Any] | None  # {"LaunchTemplateId", "LaunchTemplateName", "Version"} as given
    target: tuple[str, int]  # (template id, version number) instances are replaced with
    previous: tuple[str, int]  # the group's (template id, version number) at start
    previous_spec: dict[str, Any]  # the group's launch template spec at start, as it was
    status: str = "Pending"
    status_reason: str | None = None
    start_time: datetime = field(default_factory=_now)
    end_time: datetime | None = None
    percentage: int = 0
    to_update: int = 0
    total: int = 0
    cancel: bool = False
    rollback: bool = False
    rollback_reason: str | None = None
    rollback_start: datetime | None = None
    rb_percentage: int = 0
    rb_to_update: int = 0
    wake: threading.Event = field(default_factory=threading.Event)

    def to_api(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "InstanceRefreshId": self.id,
            "AutoScalingGroupName": self.group,
            "Status": self.status,
            "StartTime": self.start_time,
            "PercentageComplete": self.percentage,
            "InstancesToUpdate": self.to_update,
            "ProgressDetails": {
                "LivePoolProgress": {"PercentageComplete": self.percentage, "InstancesToUpdate": self.to_update}
            },
            "Preferences": self.preferences,
        }
        if self.status_reason:
            d["StatusReason"] = self.status_reason
        if self.end_time:
            d["EndTime"] = self.end_time
        if self.desired is not None:
            d["DesiredConfiguration"] = {"LaunchTemplate": self.desired}
        if self.rollback_start is not None:
            d["RollbackDetails"] = {
                "RollbackReason": self.rollback_reason or "",
                "RollbackStartTime": self.rollback_start,
                "PercentageCompleteOnRollback": self.rb_percentage,
                "InstancesToUpdateOnRollback": self.rb_to_update,
                "ProgressDetailsOnRollback": {
                    "LivePoolProgress": {
                        "PercentageComplete": self.rb_percentage,
                        "InstancesToUpdate": self.rb_to_update,
                    }
                },
            }
        return d


class Refreshes:
    """All refreshes of the lab, newest last per group."""

    def __init__(self, lab: Lab):
        self.lab = lab
        self.lock = threading.RLock()
        self.by_group: dict[tuple[str, str, str], list[Refresh]] = {}

    # -------------------------------------------------------------- health switch
    def set_unhealthy(self, image_id: str, unhealthy: bool = True) -> dict[str, Any]:
        with self.lab.lock:
            bad = self.lab.__dict__.setdefault("unhealthy_images", set())
            if unhealthy:
                bad.add(image_id)
            else:
                bad.discard(image_id)
            return {"unhealthy_images": sorted(bad)}

    def image_unhealthy(self, ec2: Any, image_id: str) -> bool:
        if image_id in getattr(self.lab, "unhealthy_images", set()):
            return True
        ami = ec2.amis.get(image_id)
        if ami is not None:
            tags = {t["key"]: t["value"] for t in ami.get_tags()}
            if str(tags.get("lab:health", "")).lower() == "fail":
                return True
        return False

    def reset(self) -> None:
        with self.lock:
            for lst in self.by_group.values():
                for r in lst:
                    r.cancel = True
                    r.wake.set()
            self.by_group.clear()
        with self.lab.lock:
            self.lab.__dict__["unhealthy_images"] = set()

    # ------------------------------------------------------------------ API
    def active(self, key: tuple[str, str, str]) -> Refresh | None:
        for r in self.by_group.get(key, []):
            if r.status in ACTIVE:
                return r
        return None

    def start(self, backend: Any, group_name: str, desired: dict[str, Any] | None,
              prefs: dict[str, Any]) -> str:
        group = _group(backend, group_name)
        key = (backend.account_id, backend.region_name, group_name)
        if group.ec2_launch_template is None:
            raise RefreshError("ValidationError", "The lab's instance refresh needs a group with a launch template.")
        prefs = _normalise_prefs(prefs, group)
        prev_spec = dict(group.launch_template or {})
        prev_ver = group.ec2_launch_template.get_version(group.launch_template_version)
        previous = (group.ec2_launch_template.id, prev_ver.number)
        if desired and desired.get("LaunchTemplate"):
            lt = desired["LaunchTemplate"]
            ec2 = backend.ec2_backend
            if lt.get("LaunchTemplateId"):
                tmpl = ec2.get_launch_template(lt["LaunchTemplateId"])
            elif lt.get("LaunchTemplateName"):
                tmpl = ec2.get_launch_template_by_name(lt["LaunchTemplateName"])
            else:
                raise RefreshError("ValidationError", "DesiredConfiguration.LaunchTemplate needs LaunchTemplateId or LaunchTemplateName.")
            ver = tmpl.get_version(lt.get("Version") or "$Default")
            target = (tmpl.id, ver.number)
            desired_spec = {k: v for k, v in lt.items() if v is not None}
        else:
            desired_spec = None
            target = previous
        if prefs.get("AutoRollback"):
            if desired_spec is None:
                raise RefreshError("ValidationError", "AutoRollback requires a DesiredConfiguration.")
            if str(prev_spec.get("Version") or "$Default").startswith("$"):
                raise RefreshError(
                    "ValidationError",
                    "AutoRollback is not supported: the Auto Scaling group uses the launch template's "
                    f"{prev_spec.get('Version') or '$Default'} version.",
                )
        with self.lock:
            if self.active(key) is not None:
                raise RefreshError(
                    "InstanceRefreshInProgress",
                    "An Instance Refresh is already in progress and blocks the execution of this Instance Refresh.",
                )
            r = Refresh(
                id=str(uuid.uuid4()), group=group_name, account=backend.account_id,
                region=backend.region_name, preferences=prefs, desired=desired_spec,
                target=target, previous=previous, previous_spec=prev_spec,
            )
            self.by_group.setdefault(key, []).append(r)
        threading.Thread(target=self._run, args=(backend, r), daemon=True, name=f"refresh-{group_name}").start()
        return r.id

    def describe(self, backend: Any, group_name: str, ids: list[str] | None) -> list[dict[str, Any]]:
        _group(backend, group_name)
        key = (backend.account_id, backend.region_name, group_name)
        with self.lock:
            out = [r.to_api() for r in reversed(self.by_group.get(key, []))]
        if ids:
            out = [r for r in out if r["InstanceRefreshId"] in ids]
        return out

    def cancel(self, backend: Any, group_name: str) -> str:
        _group(backend, group_name)
        key = (backend.account_id, backend.region_name, group_name)
        with self.lock:
            r = self.active(key)
            if r is None or r.status not in ("Pending", "InProgress"):
                raise RefreshError(
                    "ActiveInstanceRefreshNotFound",
                    f"No in progress or pending Instance Refresh found for Auto Scaling group {group_name}",
                )
            r.cancel = True
            r.status = "Cancelling"
            r.status_reason = "Cancellation requested: the batch in flight finishes, no new replacements start."
            r.wake.set()
            return r.id

    def rollback(self, backend: Any, group_name: str) -> str:
        _group(backend, group_name)
        key = (backend.account_id, backend.region_name, group_name)
        with self.lock:
            r = self.active(key)
            if r is None or r.status not in ("Pending", "InProgress", "Cancelling"):
                raise RefreshError(
                    "ActiveInstanceRefreshNotFound",
                    f"No in progress or pending Instance Refresh found for Auto Scaling group {group_name}",
                )
            if r.desired is None or str(r.previous_spec.get("Version") or "$Default").startswith("$"):
                raise RefreshError(
                    "IrreversibleInstanceRefresh",
                    "The instance refresh cannot be rolled back: it has no desired configuration or the group "
                    "uses the launch template's $Latest or $Default version.",
                )
            self._begin_rollback(r, "Rollback requested by RollbackInstanceRefresh.")
            return r.id

    def _begin_rollback(self, r: Refresh, reason: str) -> None:
        with self.lock:
            r.rollback = True
            r.status = "RollbackInProgress"
            r.status_reason = reason
            r.rollback_reason = reason
            r.rollback_start = _now()
            r.wake.set()

    # --------------------------------------------------------------- worker
    def _run(self, backend: Any, r: Refresh) -> None:
        try:
            self._forward(backend, r)
        except Exception as e:  # noqa: BLE001
            log.exception("refresh %s of %s crashed", r.id, r.group)
            self._finish(r, "Failed", f"lab: internal error: {type(e).__name__}: {e}")
        if r.status == "RollbackInProgress":
            try:
                self._roll_back(backend, r)
            except Exception as e:  # noqa: BLE001
                log.exception("rollback %s of %s crashed", r.id, r.group)
                self._finish(r, "RollbackFailed", f"lab: rollback failed: {type(e).__name__}: {e}")

    def _finish(self, r: Refresh, status: str, reason: str | None) -> None:
        with self.lock:
            r.status = status
            r.status_reason = reason
            r.end_time = _now()
        log.info("refresh %s of %s: %s (%s)", r.id, r.group, status, reason)

    def _forward(self, backend: Any, r: Refresh) -> None:
        group = _group(backend, r.group)
        prefs = r.preferences
        skip = bool(prefs.get("SkipMatching"))
        todo = [s for s in list(group.instance_states) if not (skip and _matches(s.instance, r.target))]
        with self.lock:
            if r.status != "Pending":  # cancelled or rolled back before it began
                if r.status == "Cancelling":
                    r.status, r.end_time = "Cancelled", _now()
                return
            r.total = len(todo)
            r.to_update = len(todo)
            r.status = "InProgress"
            r.status_reason = None
        if not todo:
            self._succeed(backend, r)
            return
        checkpoints = sorted(set(int(c) for c in prefs.get("CheckpointPercentages") or []))
        delay = float(prefs.get("CheckpointDelay", 3600)) if checkpoints else 0.0
        done = 0
        while todo:
            if r.rollback or r.cancel:
                break
            cap = max(group.desired_capacity or len(group.instance_states), 1)
            batch = _batch_size(cap, prefs["MinHealthyPercentage"], prefs["MaxHealthyPercentage"])
            if checkpoints:
                need = math.ceil(checkpoints[0] * r.total / 100) - done
                if need > 0:
                    batch = min(batch, need)
            chunk, todo = todo[:batch], todo[batch:]
            ok, reason = self._replace(backend, group, chunk, r.target, prefs, launch_first=prefs["MaxHealthyPercentage"] > 100)
            if not ok:
                if prefs.get("AutoRollback"):
                    self._begin_rollback(r, f"{reason} Rolling back (AutoRollback).")
                else:
                    with self.lock:
                        r.to_update = len(todo) + len(chunk)
                    self._finish(r, "Failed", reason)
                return
            done += len(chunk)
            with self.lock:
                r.percentage = int(100 * done / r.total)
                r.to_update = len(todo)
            reached = [c for c in checkpoints if r.percentage >= c]
            if reached and todo or (reached and reached[-1] < 100 and checkpoints[-1] == reached[-1]):
                checkpoints = [c for c in checkpoints if c > r.percentage]
                if not checkpoints and reached[-1] < 100:
                    # the last checkpoint is below 100: a partial refresh ends here
                    self._finish(r, "Successful", f"Reached the last checkpoint ({reached[-1]}%).")
                    return
                with self.lock:
                    if r.status == "InProgress":
                        r.status_reason = (
                            f"Checkpoint {reached[-1]}% reached: waiting {int(delay)}s (CheckpointDelay) "
                            "before continuing."
                        )
                r.wake.wait(delay)
                r.wake.clear()
                with self.lock:
                    if r.status == "InProgress":
                        r.status_reason = None
        if r.rollback:
            return
        if r.cancel:
            self._finish(r, "Cancelled", "Cancelled by CancelInstanceRefresh; replaced instances were kept.")
            return
        self._succeed(backend, r)

    def _succeed(self, backend: Any, r: Refresh) -> None:
        group = _group(backend, r.group)
        if r.desired is not None:
            # AWS: a successful refresh with a desired configuration updates the group
            spec = {"LaunchTemplateId": r.target[0], "Version": r.desired.get("Version") or str(r.target[1])}
            group._set_launch_configuration(None, spec, None)
        with self.lock:
            r.percentage, r.to_update = 100, 0
        self._finish(r, "Successful", None)

    def _roll_back(self, backend: Any, r: Refresh) -> None:
        group = _group(backend, r.group)
        prefs = r.preferences
        todo = [s for s in list(group.instance_states) if not _matches(s.instance, r.previous)]
        total = len(todo)
        with self.lock:
            r.rb_to_update = total
        done = 0
        while todo:
            cap = max(group.desired_capacity or len(group.instance_states), 1)
            batch = _batch_size(cap, prefs["MinHealthyPercentage"], prefs["MaxHealthyPercentage"])
            chunk, todo = todo[:batch], todo[batch:]
            ok, reason = self._replace(backend, group, chunk, r.previous, prefs, launch_first=prefs["MaxHealthyPercentage"] > 100)
            if not ok:
                self._finish(r, "RollbackFailed", f"Rollback failed: {reason}")
                return
            done += len(chunk)
            with self.lock:
                r.rb_percentage = int(100 * done / total)
                r.rb_to_update = len(todo)
        # the group's launch template spec was never changed: it is the previous one already
        spec = {"LaunchTemplateId": r.previous[0], "Version": r.previous_spec.get("Version")}
        group._set_launch_configuration(None, spec, None)
        with self.lock:
            r.rb_percentage, r.rb_to_update = 100, 0
        self._finish(r, "RollbackSuccessful", f"{r.rollback_reason} Rollback complete: the group is back on "
                     f"launch template {r.previous[0]} version {r.previous[1]}.")

    # ---------------------------------------------------------- replacement
    def _replace(self, backend: Any, group: Any, chunk: list[Any], target: tuple[str, int],
                 prefs: dict[str, Any], launch_first: bool) -> tuple[bool, str]:
        """Replaces the instances in `chunk` with new ones from launch template `target`."""
        ec2 = backend.ec2_backend
        old_ids = [s.instance.id for s in chunk]
        if not launch_first:
            self._terminate(backend, group, old_ids)
        new = _launch(backend, group, target, len(chunk))
        bad = []
        for inst in new:
            if self.image_unhealthy(ec2, inst.image_id):
                # the image "does not boot": no sshd, as a broken AMI would
                self.lab._op(inst.id, lambda sb: (self.lab._kill(sb), setattr(sb, "state", "failed")))
        warmup = float(prefs.get("InstanceWarmup") or 0)
        t0 = time.monotonic()
        for inst in new:
            # (+ the realistic profile's longest boot: the grace only absorbs a slow machine)
            grace = HEALTH_GRACE + self.lab.timing.extra_boot_seconds()
            if not _healthy(self.lab, inst.id, inst.private_ip_address, t0 + max(warmup, grace)):
                bad.append(inst)
        if bad:
            for s in group.instance_states:
                if s.instance in bad:
                    s.health_status = "Unhealthy"
            self._terminate(backend, group, [i.id for i in bad])
            if not launch_first:
                # the group's health checks restore its capacity from its own configuration
                cur = group.ec2_launch_template.get_version(group.launch_template_version)
                _launch(backend, group, (group.ec2_launch_template.id, cur.number), len(bad))
            else:
                pass  # the old instances were never terminated
            i = bad[0]
            return False, (
                f"Instance {i.id} from image {i.image_id} failed its health check: sshd on "
                f"{i.private_ip_address}:22 did not accept a connection within "
                f"{max(warmup, HEALTH_GRACE):g}s. {len(bad)} new instance(s) were terminated."
            )
        rest = t0 + warmup - time.monotonic()
        if rest > 0:
            time.sleep(rest)
        if launch_first:
            self._terminate(backend, group, old_ids)
        return True, ""

    def _terminate(self, backend: Any, group: Any, ids: list[str]) -> None:
        if not ids:
            return
        group.instance_states = [s for s in group.instance_states if s.instance.id not in ids]
        backend.ec2_backend.terminate_instances(ids)


# -------------------------------------------------------------------- helpers
def _group(backend: Any, name: str) -> Any:
    group = backend.autoscaling_groups.get(name)
    if group is None:
        raise RefreshError("ValidationError", f"AutoScalingGroup name not found - {name}")
    return group


def _normalise_prefs(p: dict[str, Any] | None, group: Any) -> dict[str, Any]:
    p = dict(p or {})
    out: dict[str, Any] = {}
    out["MinHealthyPercentage"] = int(p.get("MinHealthyPercentage", 90))
    out["MaxHealthyPercentage"] = int(p.get("MaxHealthyPercentage", 100))
    if not 0 <= out["MinHealthyPercentage"] <= 100:
        raise RefreshError("ValidationError", "MinHealthyPercentage must be between 0 and 100.")
    if not 100 <= out["MaxHealthyPercentage"] <= 200:
        raise RefreshError("ValidationError", "MaxHealthyPercentage must be between 100 and 200.")
    if out["MaxHealthyPercentage"] - out["MinHealthyPercentage"] > 100:
        raise RefreshError("ValidationError", "The difference between MaxHealthyPercentage and MinHealthyPercentage cannot exceed 100.")
    if p.get("InstanceWarmup") is not None:
        out["InstanceWarmup"] = int(p["InstanceWarmup"])
    elif group.health_check_grace_period is not None:
        out["InstanceWarmup"] = int(group.health_check_grace_period)
    out["SkipMatching"] = _bool(p.get("SkipMatching", False))
    out["AutoRollback"] = _bool(p.get("AutoRollback", False))
    cps = [int(c) for c in (p.get("CheckpointPercentages") or [])]
    if cps:
        if any(not 1 <= c <= 100 for c in cps) or cps != sorted(set(cps)):
            raise RefreshError("ValidationError", "CheckpointPercentages must be ascending values between 1 and 100.")
        out["CheckpointPercentages"] = cps
        out["CheckpointDelay"] = int(p.get("CheckpointDelay", 3600))
    elif p.get("CheckpointDelay") is not None:
        raise RefreshError("ValidationError", "CheckpointDelay requires CheckpointPercentages.")
    out["ScaleInProtectedInstances"] = p.get("ScaleInProtectedInstances") or "Ignore"
    out["StandbyInstances"] = p.get("StandbyInstances") or "Ignore"
    return out


def _bool(v: Any) -> bool:
    return v if isinstance(v, bool) else str(v).lower() == "true"


def _batch_size(capacity: int, min_h: int, max_h: int) -> int:
    return max(1, math.floor(capacity * (max_h - min_h) / 100))


def _matches(instance: Any, target: tuple[str, int]) -> bool:
    tags = instance.get_tags() if hasattr(instance, "get_tags") else {}
    if isinstance(tags, list):
        tags = {t["key"]: t["value"] for t in tags}
    return (tags.get("aws:ec2launchtemplate:id"), str(tags.get("aws:ec2launchtemplate:version"))) == (
        target[0], str(target[1])
    )


def _launch(backend: Any, group: Any, target: tuple[str, int], count: int) -> list[Any]:
    """Launches `count` instances into `group` from launch template version `target`, as the
    group itself would (moto's replace_autoscaling_group_instances, with the version)."""
    from moto.autoscaling.models import InstanceState

    ec2 = backend.ec2_backend
    tmpl = ec2.get_launch_template(target[0])
    ver = tmpl.get_version(target[1])
    tags = group.get_propagated_tags()
    tags[ASG_NAME_TAG] = group.name
    tags.update(ver.instance_tags)
    subnet_id = group.vpc_zone_identifier.split(",")[0] if group.vpc_zone_identifier else None
    reservation = ec2.run_instances(
        ver.image_id, count, ver.user_data, ver.security_groups,
        instance_type=ver.instance_type or "t3.micro",
        tags={"instance": tags},
        placement=random.choice(group.availability_zones),
        launch_template={"LaunchTemplateId": tmpl.id, "Version": str(ver.number)},
        is_instance_type_default=False,
        subnet_id=subnet_id,
    )
    for inst in reservation.instances:
        inst.autoscaling_group = group
        group.instance_states.append(
            InstanceState(inst, protected_from_scale_in=group.new_instances_protected_from_scale_in)
        )
    return list(reservation.instances)


def _healthy(lab: Lab, instance_id: str, ip: str | None, deadline: float) -> bool:
    """The instance's own sandbox is up and its sshd accepts a TCP connection. (A bare TCP
    probe is not enough: labs share loopback, so once our sandbox is gone another lab may hand
    out the same address to an instance of its own.)"""
    if not is_lab_ip(ip):
        return False
    while True:
        sb = lab.sandboxes.get(instance_id)
        if sb is not None and sb.state == "failed":
            return False  # an image marked unhealthy: it will never come up
        alive = sb is not None and sb.state == "running" and sb.proc is not None and sb.proc.poll() is None
        if alive:
            try:
                with socket.create_connection((ip, 22), timeout=0.5):
                    return True
            except OSError:
                pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


# ------------------------------------------------------------------- install
def install(lab: Lab) -> Refreshes:
    """Adds the four actions to moto's Auto Scaling responses and fixes the launch template
    pieces deploys rely on. Returns the registry (the /lab-api/ endpoints use it)."""
    from moto.autoscaling import models as m_asg
    from moto.autoscaling.responses import AutoScalingResponse
    from moto.core.responses import ActionResult
    from moto.ec2.models import launch_templates as m_lt
    from moto.ec2.responses.launch_templates import LaunchTemplates
    from moto.ec2.utils import parse_user_data

    reg = Refreshes(lab)
    lab.refreshes = reg  # type: ignore[attr-defined]
    orig_reset = lab.reset

    def reset() -> None:  # /moto-api/reset: refreshes and health marks go too
        reg.reset()
        orig_reset()

    lab.reset = reset  # type: ignore[method-assign]

    def start_instance_refresh(self):
        rid = reg.start(
            self.autoscaling_backend, self._get_param("AutoScalingGroupName"),
            self._get_param("DesiredConfiguration"), self._get_param("Preferences") or {},
        )
        return ActionResult({"InstanceRefreshId": rid})

    def describe_instance_refreshes(self):
        items = reg.describe(
            self.autoscaling_backend, self._get_param("AutoScalingGroupName"),
            self._get_param("InstanceRefreshIds") or None,
        )
        max_records = int(self._get_param("MaxRecords") or 50)
        token = self._get_param("NextToken")
        start = int(token) if token and str(token).isdigit() else 0
        page = items[start:start + max_records]
        nxt = str(start + max_records) if start + max_records < len(items) else None
        return ActionResult({"InstanceRefreshes": page, "NextToken": nxt})

    def cancel_instance_refresh(self):
        rid = reg.cancel(self.autoscaling_backend, self._get_param("AutoScalingGroupName"))
        return ActionResult({"InstanceRefreshId": rid})

    def rollback_instance_refresh(self):
        rid = reg.rollback(self.autoscaling_backend, self._get_param("AutoScalingGroupName"))
        return ActionResult({"InstanceRefreshId": rid})

    AutoScalingResponse.start_instance_refresh = start_instance_refresh
    AutoScalingResponse.describe_instance_refreshes = describe_instance_refreshes
    AutoScalingResponse.cancel_instance_refresh = cancel_instance_refresh
    AutoScalingResponse.rollback_instance_refresh = rollback_instance_refresh

    # moto launches a group's instances from the template's *default* version whatever version
    # the group names (only the image id follows it); AWS uses the group's version throughout.
    orig_replace = m_asg.FakeAutoScalingGroup.replace_autoscaling_group_instances

    def replace_autoscaling_group_instances(self, count_needed, propagated_tags):
        if self.ec2_launch_template is None:
            return orig_replace(self, count_needed, propagated_tags)
        ver = self.ec2_launch_template.get_version(self.launch_template_version)
        _launch(self.autoscaling_backend, self, (self.ec2_launch_template.id, ver.number), count_needed)

    m_asg.FakeAutoScalingGroup.replace_autoscaling_group_instances = replace_autoscaling_group_instances

    # -------- launch templates: version numbers are never reused; deleting versions works
    def create_version(self, data, description):
        num = max([v.number for v in self.versions] + [getattr(self, "lab_max_version", 0)]) + 1
        self.lab_max_version = num
        version = m_lt.LaunchTemplateVersion(self, num, data, description)
        self.versions.append(version)
        return version

    def get_version(self, num):
        s = str(num).lower()
        if s == "$latest":
            return self.versions[-1]
        if s == "$default":
            return self.default_version()
        for v in self.versions:
            if str(v.number) == str(num):
                return v
        from moto.ec2.exceptions import InvalidLaunchTemplateVersionNotFound

        raise InvalidLaunchTemplateVersionNotFound(template_id=self.id, version=num)

    def default_version(self):
        return self.get_version(self.default_version_number)

    m_lt.LaunchTemplate.create_version = create_version
    m_lt.LaunchTemplate.get_version = get_version
    m_lt.LaunchTemplate.default_version = default_version

    orig_describe_versions = m_lt.LaunchTemplateBackend.describe_launch_template_versions

    def describe_launch_template_versions(self, template_name, template_id, versions, min_version,
                                          max_version, max_results):
        if (min_version or max_version) and not versions:
            tmpl = (self.get_launch_template_by_name(template_name) if template_name
                    else self.get_launch_template(template_id))
            out = [(tmpl, v) for v in tmpl.versions
                   if (not min_version or v.number >= min_version) and (not max_version or v.number <= max_version)]
            return out[:max_results]
        return orig_describe_versions(self, template_name, template_id, versions, min_version, max_version, max_results)

    m_lt.LaunchTemplateBackend.describe_launch_template_versions = describe_launch_template_versions

    # CreateLaunchTemplateVersion keeps UserData as a plain string (CreateLaunchTemplate parses
    # it); an Auto Scaling launch from such a version then fails an assertion (HTTP 500).
    orig_clv = LaunchTemplates.create_launch_template_version

    def create_launch_template_version(self):
        data = self._get_param("LaunchTemplateData", {})
        if data.get("UserData") is not None:
            orig_get = self._get_param

            def _get_param(name, *a, **kw):
                v = orig_get(name, *a, **kw)
                if name == "LaunchTemplateData" and isinstance(v, dict) and v.get("UserData") is not None:
                    v = dict(v)
                    v["UserData"] = parse_user_data(v["UserData"])
                return v

            self._get_param = _get_param
        return orig_clv(self)

    LaunchTemplates.create_launch_template_version = create_launch_template_version

    def delete_launch_template_versions(self):
        name = self._get_param("LaunchTemplateName")
        tid = self._get_param("LaunchTemplateId")
        versions = [str(v) for v in (self._get_param("Versions") or self._get_param("LaunchTemplateVersion") or [])]
        self.error_on_dryrun()
        tmpl = self.ec2_backend.get_launch_template_by_name(name) if name else self.ec2_backend.get_launch_template(tid)
        ok, bad = [], []
        for v in versions:
            found = next((x for x in tmpl.versions if str(x.number) == v), None)
            base = {"LaunchTemplateId": tmpl.id, "LaunchTemplateName": tmpl.name}
            if found is None:
                bad.append({**base, "VersionNumber": int(v) if v.isdigit() else 0, "ResponseError": {
                    "Code": "launchTemplateVersionDoesNotExist",
                    "Message": f"The specified launch template version does not exist: {v}"}})
            elif tmpl.is_default(found):
                bad.append({**base, "VersionNumber": found.number, "ResponseError": {
                    "Code": "unexpectedError",
                    "Message": "Cannot delete the default version of a launch template."}})
            else:
                tmpl.versions.remove(found)
                ok.append({**base, "VersionNumber": found.number})
        return ActionResult({
            "SuccessfullyDeletedLaunchTemplateVersions": ok,
            "UnsuccessfullyDeletedLaunchTemplateVersions": bad,
        })

    LaunchTemplates.delete_launch_template_versions = delete_launch_template_versions
    return reg
