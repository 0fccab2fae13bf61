"""The realistic profile: EC2's own delays, scaled, in front of the lab's instant sandboxes.

`LAB_PROFILE=instant` (default) keeps the lab as fast as it can be. `LAB_PROFILE=realistic`
makes what clients see take as long as on EC2, times `LAB_TIME_SCALE` (default 1 = AWS's
figures; tests use 0.05-0.1). Both can be switched at run time (`POST /lab-api/profile`);
a switch applies to transitions that start afterwards, and a switch to `instant` also
finishes every transition in flight.

Under `realistic`:

* RunInstances / StartInstances: `pending` for PENDING seconds, then `running`; SYNs to the
  instance's <ip>:22 are dropped (netfilter, see `SynDrop`) for NET_UP more seconds (the
  kernel is booting: a connect times out), then the port is closed (RST) for SSHD_UP seconds
  (userspace starting), then sshd answers. RebootInstances and the reboot of CreateImage go
  through the last two phases with the state staying `running`.
* StopInstances: `stopping` for STOPPING seconds, then `stopped`; TerminateInstances:
  `shutting-down` for SHUTTING_DOWN seconds, then `terminated`. The sandbox goes at once.
  A stopped instance's address drops SYNs too (no host behind it).
* CreateImage: the image and its snapshot are `pending` for
  IMAGE_BASE + bytes written / IMAGE_RATE seconds (bytes = the frozen layer's size), the
  snapshot's `Progress` rising to 100 % (it completes at 90 % of that time), then
  `completed` / `available`. CopyImage: the same with the bytes of every lab layer of the
  source image. RunInstances from a pending image → `InvalidAMIID.Unavailable`.
  For SNAPSHOT_START seconds after CreateImage EC2 has not started the snapshot: the
  image's block device mapping names no `SnapshotId` yet, and an instance terminated in
  that window takes its volume with it, so the image becomes `failed` (once the snapshot
  has started it is point-in-time and completes without the instance).
* An IAM instance profile is refused by RunInstances for PROFILE_LAG seconds after
  CreateInstanceProfile / AddRoleToInstanceProfile (`InvalidParameterValue`, EC2's wording).

The state objects compute their state when read (no timer threads), so a transition is
exact and atomic for every reader of moto's model. Figures and their sources:
scripts/lab-server/README.md, "Realistic profile".
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from .hook import wrap as _wrap

log = logging.getLogger("lab.timing")

PROFILES = ("instant", "realistic")

# (low, high) seconds at time scale 1; uniform in between. Sources: README "Realistic profile".
PENDING = (5.0, 18.0)
NET_UP = (3.0, 12.0)
SSHD_UP = (1.0, 5.0)
STOPPING = (20.0, 60.0)
SHUTTING_DOWN = (20.0, 60.0)
IMAGE_BASE = 20.0
IMAGE_RATE = 20 * 1024 * 1024  # bytes/s of changed data
SNAPSHOT_START = (1.0, 4.0)  # CreateImage -> the snapshot starts (SnapshotId visible)
SNAPSHOT_SHARE = 0.9  # the snapshot completes at this share of the image's time
PROFILE_LAG = 8.0


def _gmt() -> str:
    # EC2's wording: "User initiated (2026-12-02 05:01:22 GMT)"
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S GMT")


@dataclass
class BootPlan:
    """When a booting sandbox's phases end (time.monotonic())."""

    running_at: float
    net_at: float
    ssh_at: float
    applied: bool = False  # the moto state object has been set from this plan


class SynDrop:
    """Drops SYNs to <ip>:22 for chosen addresses, with one nftables table per lab (named
    after its port, so labs side by side never touch each other's rules). Only loopback
    addresses are ever added. `scripts/lab down` deletes the table as well."""

    def __init__(self, port: int):
        self.table = f"bake_lab_{port}"
        self.lock = threading.Lock()
        self.ready = False
        self.error: str | None = None
        self.ips: set[str] = set()

    def _nft(self, script: str) -> bool:
        nft = shutil.which("nft")
        if nft is None:
            self.error = "nft not found (scripts/lab up installs nftables)"
            return False
        r = subprocess.run([nft, "-f", "-"], input=script, capture_output=True, text=True)
        if r.returncode != 0:
            self.error = f"nft: {r.stderr.strip()}"
            log.error("%s", self.error)
            return False
        return True

    def _ensure(self) -> bool:
        if self.ready:
            return True
        # priority -10: before any other input filter; SYN only, so established flows
        # (and the server side of other ports) are never affected
        self.ready = self._nft(
            f"table inet {self.table} {{\n"
            "  set booting { type ipv4_addr; }\n"
            "  chain input {\n"
            "    type filter hook input priority -10; policy accept;\n"
            "    ip daddr @booting tcp dport 22 tcp flags & (syn | ack) == syn drop\n"
            "  }\n"
            "}\n"
        )
        return self.ready

    def drop(self, ip: str) -> None:
        from .agent import is_lab_ip

        if not is_lab_ip(ip):
            return
        with self.lock:
            if ip in self.ips or not self._ensure():
                return
            if self._nft(f"add element inet {self.table} booting {{ {ip} }}\n"):
                self.ips.add(ip)

    def allow(self, ip: str | None) -> None:
        with self.lock:
            if not ip or ip not in self.ips:
                return
            self.ips.discard(ip)
            self._nft(f"delete element inet {self.table} booting {{ {ip} }}\n")

    def flush(self) -> None:
        with self.lock:
            if self.ips and self.ready:
                self._nft(f"flush set inet {self.table} booting\n")
            self.ips.clear()

    def remove(self) -> None:
        """Delete the table (server exit, reset, profile switch to instant)."""
        with self.lock:
            self.ips.clear()
            if self.ready or shutil.which("nft"):
                nft = shutil.which("nft")
                if nft:
                    subprocess.run([nft, "delete", "table", "inet", self.table], capture_output=True)
            self.ready = False


class Timing:
    def __init__(self, port: int | None = None):
        self.profile = os.environ.get("LAB_PROFILE", "instant") or "instant"
        if self.profile not in PROFILES:
            raise SystemExit(f"LAB_PROFILE must be one of {', '.join(PROFILES)}, got {self.profile!r}")
        self.scale = float(os.environ.get("LAB_TIME_SCALE", "1") or "1")
        if self.scale < 0:
            raise SystemExit(f"LAB_TIME_SCALE must be >= 0, got {self.scale}")
        self.rng = random.Random()
        self.syn = SynDrop(port or int(os.environ.get("MOTO_PORT", "4566")))
        self.generation = 0  # bumped on every switch: transitions in flight re-check

    # ---------------------------------------------------------------- profile
    @property
    def realistic(self) -> bool:
        return self.profile == "realistic"

    def set(self, profile: str | None = None, scale: float | None = None) -> dict[str, Any]:
        if profile is not None:
            if profile not in PROFILES:
                raise ValueError(f"profile must be one of {', '.join(PROFILES)}")
            self.profile = profile
        if scale is not None:
            if float(scale) < 0:
                raise ValueError("time_scale must be >= 0")
            self.scale = float(scale)
        self.generation += 1
        if not self.realistic:
            self.syn.remove()
        return self.info()

    def info(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "time_scale": self.scale,
            "syn_drop": (f"nftables table inet {self.syn.table}" if self.syn.error is None
                         else f"unavailable: {self.syn.error}"),
            "figures": {
                "pending_s": PENDING, "net_up_s": NET_UP, "sshd_up_s": SSHD_UP,
                "stopping_s": STOPPING, "shutting_down_s": SHUTTING_DOWN,
                "image_base_s": IMAGE_BASE, "image_rate_mib_s": IMAGE_RATE / (1024 * 1024),
                "profile_lag_s": PROFILE_LAG,
            },
        }

    def dur(self, span: tuple[float, float] | float) -> float:
        if isinstance(span, tuple):
            return self.rng.uniform(*span) * self.scale
        return span * self.scale

    # ------------------------------------------------------------ sandbox side
    def plan(self, sb: Any, pending: bool = True) -> None:
        """A boot is requested (launch, start, reboot): plan its phases, re-arm the sandbox."""
        ev = sb.meta.setdefault("abort", threading.Event())
        ev.clear()
        if not self.realistic:
            sb.meta.pop("plan", None)
            return
        now = time.monotonic()
        running = now + (self.dur(PENDING) if pending else 0.0)
        net = running + self.dur(NET_UP)
        sb.meta["plan"] = BootPlan(running, net, net + self.dur(SSHD_UP))
        self.syn.drop(sb.ip)

    def abort(self, sb: Any) -> None:
        """A stop / terminate is requested: a boot waiting for its time gives up."""
        sb.meta.setdefault("abort", threading.Event()).set()

    def wait_boot(self, sb: Any) -> bool:
        """Called at the start of the agent's boot: wait out the planned phases (SYNs
        dropped, then port closed). False: a stop/terminate came first; do not boot."""
        plan: BootPlan | None = sb.meta.get("plan")
        ev: threading.Event = sb.meta.setdefault("abort", threading.Event())
        if plan is None:  # instant: the boot is quick, nothing to wait for
            return True
        sb.state = "booting"
        for until, then_allow in ((plan.net_at, True), (plan.ssh_at, False)):
            while True:
                if ev.is_set():
                    return False
                left = until - time.monotonic()
                if left <= 0 or not self.realistic:
                    break
                ev.wait(min(left, 0.2))
            if then_allow:
                self.syn.allow(sb.ip)
        self.syn.allow(sb.ip)
        return True

    def stopped(self, sb: Any) -> None:
        """The sandbox is down but the instance remains (stop): nothing answers its address."""
        if self.realistic:
            self.syn.drop(sb.ip)

    def gone(self, ip: str | None) -> None:
        self.syn.allow(ip)

    def extra_boot_seconds(self) -> float:
        """The longest a realistic boot may take (health-check grace of instance refresh)."""
        if not self.realistic:
            return 0.0
        return (PENDING[1] + NET_UP[1] + SSHD_UP[1]) * self.scale

    # ------------------------------------------------------------- image side
    def image_seconds(self, nbytes: int) -> float:
        return self.dur(IMAGE_BASE) + (nbytes / IMAGE_RATE) * self.scale

    def shutdown(self) -> None:
        self.syn.remove()


def tree_bytes(path: Path) -> int:
    """Bytes of the regular files under `path` (an overlay upper dir / image layer)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                st = os.lstat(os.path.join(root, f))
            except OSError:
                continue
            total += st.st_size if (st.st_mode & 0o170000) == 0o100000 else 0
    return total


# ------------------------------------------------------------------ moto side
class TimedState:
    """An EC2 instance state that moves on by itself: (name, code) now, then the scheduled
    (at, name, code) steps. Reads are consistent: name and code come from one tuple. moto
    assigns .name then .code when it changes a state; the lab's hooks replace the object
    right after, so a half-assigned state is never seen for long."""

    def __init__(self, timing: Timing, name: str, code: int, steps: list[tuple[float, str, int]]):
        self._t = timing
        self._gen = timing.generation
        self._cur = (name, code)
        self._steps = list(steps)

    def _now(self) -> tuple[str, int]:
        if self._steps and (self._t.generation != self._gen and not self._t.realistic):
            self._cur = self._steps[-1][1:]
            self._steps = []
        while self._steps and time.monotonic() >= self._steps[0][0]:
            self._cur = self._steps.pop(0)[1:]
        return self._cur

    @property
    def name(self) -> str:
        return self._now()[0]

    @name.setter
    def name(self, v: str) -> None:
        self._steps = []
        self._cur = (v, self._cur[1])

    @property
    def code(self) -> int:
        return self._now()[1]

    @code.setter
    def code(self, v: int) -> None:
        self._steps = []
        self._cur = (self._cur[0], v)

    def __copy__(self) -> Any:
        from moto.ec2.models.instances import InstanceState

        n, c = self._now()
        return InstanceState(n, c)

    def __deepcopy__(self, memo: Any) -> Any:
        return self.__copy__()


class PendingReason:
    """StateReason of a launching instance: "pending" while its TimedState says so, then
    empty (as EC2 reports it)."""

    def __init__(self, state: TimedState):
        self._st = state

    @property
    def code(self) -> str:
        return "pending" if self._st.name == "pending" else ""

    @property
    def message(self) -> str:
        return self.code


def _due(obj: Any) -> bool:
    """Whether an image/snapshot's pending time is over (or the profile went instant)."""
    at = obj.__dict__.get("_lab_ready_at")
    if at is None:
        return True
    t: Timing = obj.__dict__["_lab_timing"]
    if time.monotonic() >= at or (t.generation != obj.__dict__["_lab_gen"] and not t.realistic):
        obj.__dict__["_lab_ready_at"] = None
        return True
    return False



def install_early(lab: Any) -> None:
    """Stop/terminate states, hooked *under* lab/patches.py's wrappers: the new state is in
    place before the agent spends time killing the sandbox, so no client ever sees
    `stopped` before `stopping`."""
    from moto.ec2.models import instances as m_inst

    timing: Timing = lab.timing

    def set_timed(inst: Any, name: str, code: int, steps: list[tuple[float, str, int]]) -> None:
        inst._state = TimedState(timing, name, code, steps)

    def again(inst: Any, orig: Any, busy: str, start: tuple[str, int], final: tuple[str, int],
              span: tuple[float, float]) -> Any:
        old = inst._state
        saved = (old._cur, list(old._steps)) if isinstance(old, TimedState) else None
        prev = orig(inst)
        if prev.name == busy and saved is not None:  # asked again while busy: the clock runs on
            inst._state = TimedState(timing, *saved[0], saved[1])
        elif timing.realistic and prev.name not in (final[0], "terminated"):
            set_timed(inst, *start, [(time.monotonic() + timing.dur(span), *final)])
        if prev.name not in (final[0], busy, "terminated"):
            inst._reason = f"User initiated ({_gmt()})"
        return prev

    @_wrap(m_inst.Instance, "stop")
    def inst_stop(orig, self):
        return again(self, orig, "stopping", ("stopping", 64), ("stopped", 80), STOPPING)

    @_wrap(m_inst.Instance, "terminate")
    def inst_terminate(orig, self):
        return again(self, orig, "shutting-down", ("shutting-down", 32), ("terminated", 48), SHUTTING_DOWN)


def install(lab: Any) -> Timing:
    """Hook the profile into moto's instance, image and IAM model (called after patches)."""
    from moto.ec2.exceptions import EC2ClientError
    from moto.ec2.models import amis as m_amis
    from moto.ec2.models import elastic_block_store as m_ebs
    from moto.ec2.models import instances as m_inst
    from moto.ec2.responses import instances as r_inst
    from moto.iam import models as m_iam

    timing: Timing = lab.timing

    # ------------------------------------------------------------ instances
    def set_timed(inst: Any, name: str, code: int, steps: list[tuple[float, str, int]]) -> None:
        inst._state = TimedState(timing, name, code, steps)

    def from_plan(inst: Any) -> None:
        sb = lab.sandboxes.get(inst.id)
        plan = sb.meta.get("plan") if sb is not None else None
        if plan is None or plan.applied:
            return
        plan.applied = True
        set_timed(inst, "pending", 0, [(plan.running_at, "running", 16)])
        inst._reason = ""
        inst.state_reason = PendingReason(inst._state)

    @_wrap(m_inst.InstanceBackend, "run_instances")
    def run_instances(orig, self, image_id, count, *args, **kwargs):
        if timing.realistic and image_id:
            ami = self.amis.get(image_id)
            if ami is not None and ami.state == "pending":
                raise EC2ClientError("InvalidAMIID.Unavailable", f"AMI '{image_id}' is pending, and cannot be run")
        resv = orig(self, image_id, count, *args, **kwargs)
        if timing.realistic:
            for inst in resv.instances:
                from_plan(inst)
        return resv

    @_wrap(m_inst.Instance, "start")
    def inst_start(orig, self):
        prev = orig(self)
        if timing.realistic:
            from_plan(self)
        return prev

    def _status(self: Any) -> dict[str, Any]:
        if self.state_code != 16:
            return {"Status": "not-applicable"}
        sb = lab.sandboxes.get(self.id)
        if timing.realistic and sb is not None and sb.state != "running":
            return {"Details": [{"Name": "reachability", "Status": "initializing"}], "Status": "initializing"}
        return {"Details": [{"Name": "reachability", "Status": "passed"}], "Status": "ok"}

    # EC2: status checks say "initializing" until the instance answers; moto: "ok" at once
    m_inst.Instance.instance_status = property(_status)
    m_inst.Instance.system_status = property(_status)

    # --------------------------------------------------------------- images
    def make_pending(ami: Any, seconds: float) -> None:
        now = time.monotonic()
        for obj, share in ((ami, 1.0), (getattr(ami, "ebs_snapshot", None), SNAPSHOT_SHARE)):
            if obj is None:
                continue
            obj.__dict__.update(_lab_timing=timing, _lab_gen=timing.generation,
                                _lab_start=now, _lab_ready_at=now + seconds * share)

    def _ami_state_get(self: Any) -> str:
        return self.__dict__.get("_lab_state", "available") if _due(self) else "pending"

    def _ami_state_set(self: Any, v: str) -> None:
        self.__dict__["_lab_state"] = v

    m_amis.Ami.state = property(_ami_state_get, _ami_state_set)

    # An image (and its snapshot) made by CreateImage/CopyImage is pending from the moment moto
    # registers it: another thread's DescribeImages must never see it `available` in the gap
    # before make_pending() gives it its real schedule.
    creating = threading.local()

    def born_pending(cls: Any) -> None:
        orig_init = cls.__init__

        def __init__(self, *a, **kw):
            if getattr(creating, "born", None) is not None:
                creating.born.append(self)
                self.__dict__.update(_lab_timing=timing, _lab_gen=timing.generation,
                                     _lab_start=time.monotonic(), _lab_ready_at=float("inf"))
            orig_init(self, *a, **kw)

        cls.__init__ = __init__

    born_pending(m_amis.Ami)
    born_pending(m_ebs.Snapshot)

    def made_pending(call, seconds):
        """Runs moto's create/copy with new images and snapshots born pending, then gives them
        their schedule: `seconds(ami)` for the image, its share for its snapshot, and the
        image's for anything else born in the call."""
        if not timing.realistic:
            return call()
        creating.born = []
        try:
            ami = call()
        finally:
            born, creating.born = creating.born, None
        make_pending(ami, seconds(ami))
        for obj in born:
            if obj.__dict__.get("_lab_ready_at") == float("inf"):
                obj.__dict__["_lab_ready_at"] = ami.__dict__.get("_lab_ready_at")
        return ami

    def _snap_status_get(self: Any) -> str:
        return self.__dict__.get("_lab_status", "completed") if _due(self) else "pending"

    def _snap_status_set(self: Any, v: str) -> None:
        self.__dict__["_lab_status"] = v

    def _snap_progress(self: Any) -> str:
        if _due(self):
            return "100%"
        d = self.__dict__
        span = max(d["_lab_ready_at"] - d["_lab_start"], 1e-6)
        return f"{min(99, int(100 * (time.monotonic() - d['_lab_start']) / span))}%"

    m_ebs.Snapshot.status = property(_snap_status_get, _snap_status_set)
    m_ebs.Snapshot.progress = property(_snap_progress)

    @_wrap(m_amis.AmiBackend, "create_image")
    def create_image(orig, self, instance_id, *args, **kwargs):
        if timing.realistic and self.get_instance(instance_id).state in ("pending", "shutting-down"):
            raise EC2ClientError(
                "IncorrectInstanceState",
                f"The instance '{instance_id}' is not in a state from which it can be imaged.")
        def seconds(ami: Any) -> float:
            layer = lab.layers_dir / ami.id
            return timing.image_seconds(tree_bytes(layer) if layer.exists() else 0)

        ami = made_pending(lambda: orig(self, instance_id, *args, **kwargs), seconds)
        if timing.realistic:
            ami.__dict__["_lab_snap_start_at"] = time.monotonic() + timing.dur(SNAPSHOT_START)
            starting.setdefault(instance_id, []).append(ami)
        return ami

    # Images whose snapshot has not started yet, by the instance they are made from.
    starting: dict[str, list[Any]] = {}

    def snapshot_started(ami: Any) -> bool:
        at = ami.__dict__.get("_lab_snap_start_at")
        return at is None or time.monotonic() >= at or not timing.realistic

    orig_bdm = m_amis.Ami.block_device_mappings

    def _bdm(self: Any) -> list[dict[str, Any]]:
        out = orig_bdm.fget(self)
        if snapshot_started(self):
            return out
        return [{**m, "Ebs": {k: v for k, v in m["Ebs"].items() if k != "SnapshotId"}} for m in out]

    m_amis.Ami.block_device_mappings = property(_bdm)

    @_wrap(m_inst.Instance, "terminate")
    def inst_terminate_imaging(orig, self):
        for ami in starting.pop(self.id, []):
            if not snapshot_started(ami):
                ami.__dict__.update(_lab_state="failed", _lab_ready_at=None)
                log.info("lab: %s failed: instance %s terminated before its snapshot started",
                         ami.id, self.id)
        return orig(self)

    @_wrap(m_amis.AmiBackend, "deregister_image")
    def deregister_unstarted(orig, self, ami_id):
        # An image deregistered before its snapshot started never gets one.
        ami = self.amis.get(ami_id)
        snap = getattr(ami, "ebs_snapshot", None) if ami is not None and not snapshot_started(ami) else None
        ret = orig(self, ami_id)
        if snap is not None and snap.id in self.snapshots:
            self.snapshots.pop(snap.id)
            log.info("lab: %s deregistered before its snapshot %s started: no snapshot", ami_id, snap.id)
        return ret

    @_wrap(m_amis.AmiBackend, "copy_image")
    def copy_image(orig, self, source_image_id, *args, **kwargs):
        def seconds(ami: Any) -> float:
            info = lab.image_info(source_image_id)
            return timing.image_seconds(sum(tree_bytes(lab.layers_dir / layer) for layer in info.layers))

        return made_pending(lambda: orig(self, source_image_id, *args, **kwargs), seconds)

    # ---------------------------------------------------- instance profiles
    def touched(profile: Any) -> None:
        profile.__dict__["_lab_usable_at"] = time.monotonic() + timing.dur(PROFILE_LAG)

    @_wrap(m_iam.IAMBackend, "create_instance_profile")
    def create_instance_profile(orig, self, *args, **kwargs):
        p = orig(self, *args, **kwargs)
        touched(p)
        return p

    @_wrap(m_iam.IAMBackend, "add_role_to_instance_profile")
    def add_role_to_instance_profile(orig, self, profile_name, role_name):
        ret = orig(self, profile_name, role_name)
        touched(self.get_instance_profile(profile_name))
        return ret

    @_wrap(r_inst.InstanceResponse, "run_instances")
    def run_instances_response(orig, self):
        if timing.realistic:
            from moto.iam.models import iam_backends

            name = self._get_param("IamInstanceProfile.Name")
            arn = self._get_param("IamInstanceProfile.Arn")
            iam = iam_backends[self.current_account][self.partition]
            profile = None
            try:
                profile = iam.get_instance_profile_by_arn(arn) if arn else (
                    iam.get_instance_profile(name) if name else None)
            except Exception:  # noqa: BLE001  (moto's own check reports unknown profiles)
                profile = None
            at = profile.__dict__.get("_lab_usable_at") if profile is not None else None
            if at is not None and time.monotonic() < at:
                which, val = ("arn", arn) if arn else ("name", name)
                raise EC2ClientError(
                    "InvalidParameterValue",
                    f"Value ({val}) for parameter iamInstanceProfile.{which} is invalid. "
                    f"Invalid IAM Instance Profile {'ARN' if arn else 'name'}",
                )
        return orig(self)

    return timing

