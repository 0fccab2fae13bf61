"""Strict EC2 rules: where moto 5.2.1 accepts a call that EC2 refuses (or answers differently),
refuse it as EC2 does, with EC2's error code and message. Always on.

Each rule is a row of the "Strict rules" table in scripts/lab-server/README.md, with the public
source of its wording. The rules work on the instance's *actual* state (moto's `_state`), so
they bite whenever an instance really is pending / stopping / shutting-down (the realistic
timing profile), not only in the states moto's instant transitions leave behind.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

from moto.ec2.exceptions import EC2ClientError
from moto.ec2.models import amis as m_amis
from moto.ec2.models import elastic_block_store as m_ebs
from moto.ec2.models import instances as m_inst
from moto.ec2.models import key_pairs as m_keys
from moto.ec2.models import security_groups as m_sg
from .hook import wrap as _wrap

log = logging.getLogger("lab.strict")

# states in which an instance still holds its network interface (and so its security groups)
LIVE_STATES = ("pending", "running", "stopping", "stopped", "shutting-down")
STATE_CODES = {"pending": 0, "running": 16, "shutting-down": 32, "terminated": 48, "stopping": 64, "stopped": 80}



def _state(inst: Any) -> str:
    return inst._state.name


def _incorrect_state(msg: str) -> EC2ClientError:
    return EC2ClientError("IncorrectInstanceState", msg)


def _ids_in_request_order(backend: Any, ids: list[str]) -> list[Any]:
    return backend.get_multi_instances_by_id(ids)  # InvalidInstanceID.NotFound like EC2


def _taken_name(backend: Any, name: str | None) -> None:
    """AMI names are unique per account and region (EC2 API reference, CreateImage `Name`)."""
    if not name:
        return
    for ami in list(backend.amis.values()):
        if ami.name == name and ami.state != "deregistered":
            raise EC2ClientError("InvalidAMIName.Duplicate", f"AMI name {name} is already in use by AMI {ami.id}")


def _group_users(backend: Any, group_id: str) -> list[str]:
    """What still depends on a security group: non-terminated instances, stand-alone network
    interfaces, and rules of other groups that reference it."""
    users = []
    for inst in backend.all_instances():
        if _state(inst) not in LIVE_STATES:
            continue
        ids = {getattr(g, "id", g) for g in (inst.security_groups or [])}
        for nic in inst.nics.values():
            ids |= {getattr(g, "id", g) for g in nic.group_set}
        if group_id in ids:
            users.append(inst.id)
    for eni in list(getattr(backend, "enis", {}).values()):
        if eni.instance is None and group_id in {getattr(g, "id", g) for g in eni._group_set}:
            users.append(eni.id)
    for groups in list(backend.groups.values()):
        for g in list(groups.values()):
            if g.id == group_id:
                continue
            for rule in list(g.ingress_rules) + list(g.egress_rules):
                if (getattr(rule, "source_group", None) or {}).get("GroupId") == group_id:
                    users.append(g.id)
    return users


def _fix_current_state(result: Any, key: str, idempotent: dict[str, str]) -> Any:
    """moto's Start/Stop/TerminateInstances answer a fixed CurrentState (pending / stopping /
    shutting-down). For a call that changed nothing, EC2 answers the state it is in."""
    body = getattr(result, "result", None)
    if not isinstance(body, dict):
        return result
    for entry in body.get(key) or []:
        prev = entry.get("PreviousState")
        name = prev.get("Name") if isinstance(prev, dict) else getattr(prev, "name", None)
        if name in idempotent:
            now = idempotent[name]
            entry["CurrentState"] = {"Code": STATE_CODES[now], "Name": now}
    return result


def install() -> None:
    # ----------------------------------------------------------------- images
    @_wrap(m_amis.AmiBackend, "create_image")
    def create_image(orig, self, instance_id, name, *args, **kwargs):
        instance = self.get_instance(instance_id)
        if _state(instance) not in ("running", "stopping", "stopped"):
            raise EC2ClientError(
                "InvalidParameterValue",
                f"Invalid value '{instance_id}' for instanceId. Instance is not in state 'running' or 'stopping' or 'stopped'",
            )
        _taken_name(self, name)
        return orig(self, instance_id, name, *args, **kwargs)

    @_wrap(m_amis.AmiBackend, "copy_image")
    def copy_image(orig, self, source_image_id, source_region, name=None, description=None):
        _taken_name(self, name)
        return orig(self, source_image_id, source_region, name, description)

    @_wrap(m_amis.AmiBackend, "register_image")
    def register_image(orig, self, name=None, description=None, *args, **kwargs):
        _taken_name(self, name)
        return orig(self, name, description, *args, **kwargs)

    # --------------------------------------------------------------- snapshots
    @_wrap(m_ebs.EBSBackend, "delete_snapshot")
    def delete_snapshot(orig, self, snapshot_id):
        if snapshot_id not in self.snapshots:
            raise EC2ClientError("InvalidSnapshot.NotFound", f"The snapshot '{snapshot_id}' does not exist.")
        # moto only checks the image the snapshot was made for; a RegisterImage'd image on the
        # same snapshot holds it too
        for ami in list(self.amis.values()):
            snap = getattr(ami, "ebs_snapshot", None)
            if snap is not None and snap.id == snapshot_id:
                raise EC2ClientError("InvalidSnapshot.InUse", f"The snapshot {snapshot_id} is currently in use by {ami.id}")
        return orig(self, snapshot_id)

    @_wrap(m_ebs.EBSBackend, "get_snapshot")
    def get_snapshot(orig, self, snapshot_id):
        if snapshot_id not in self.snapshots:
            raise EC2ClientError("InvalidSnapshot.NotFound", f"The snapshot '{snapshot_id}' does not exist.")
        return orig(self, snapshot_id)

    # --------------------------------------------------------- security groups
    @_wrap(m_sg.SecurityGroupBackend, "delete_security_group")
    def delete_security_group(orig, self, name=None, group_id=None):
        group = None
        if group_id:
            group = self.get_security_group_from_id(group_id)
        elif name:
            group = self.get_security_group_by_name_or_id(name)
        if group is not None and _group_users(self, group.id):
            raise EC2ClientError("DependencyViolation", f"resource {group.id} has a dependent object")
        return orig(self, name=name, group_id=group_id)

    @_wrap(m_sg.SecurityGroupBackend, "create_security_group")
    def create_security_group(orig, self, name, description, vpc_id=None, *args, **kwargs):
        try:
            return orig(self, name, description, vpc_id, *args, **kwargs)
        except EC2ClientError as e:
            if e.code != "InvalidGroup.Duplicate":
                raise
            vpc = vpc_id or self.default_vpc.id
            raise EC2ClientError("InvalidGroup.Duplicate", f"The security group '{name}' already exists for VPC '{vpc}'") from None

    @_wrap(m_sg.SecurityGroupBackend, "describe_security_groups")
    def describe_security_groups(orig, self, group_ids=None, groupnames=None, filters=None):
        try:
            return orig(self, group_ids=group_ids, groupnames=groupnames, filters=filters)
        except EC2ClientError as e:
            if e.code != "InvalidGroup.NotFound":
                raise
            # moto: "The security group '{'sg-1'}' does not exist" (a Python set)
            known = {g.id for gs in self.groups.values() for g in gs.values()}
            known |= {g.name for gs in self.groups.values() for g in gs.values()}
            missing = [x for x in (group_ids or []) + (groupnames or []) if x not in known]
            raise EC2ClientError(
                "InvalidGroup.NotFound", f"The security group '{', '.join(missing) or e.message}' does not exist"
            ) from None

    # -------------------------------------------------------------- key pairs
    @_wrap(m_keys.KeyPairBackend, "describe_key_pairs")
    def describe_key_pairs(orig, self, key_names, filters=None):
        try:
            return orig(self, key_names, filters)
        except EC2ClientError as e:
            if e.code != "InvalidKeyPair.NotFound":
                raise
            missing = [k for k in key_names if k not in self.key_pairs]
            raise EC2ClientError("InvalidKeyPair.NotFound", f"The key pair '{', '.join(missing)}' does not exist") from None

    # -------------------------------------------------------------- instances
    @_wrap(m_inst.InstanceBackend, "stop_instances")
    def stop_instances(orig, self, instance_ids):
        todo, same = [], []
        for inst in _ids_in_request_order(self, instance_ids):
            st = _state(inst)
            if st == "pending":
                raise _incorrect_state(f"Instance '{inst.id}' cannot be stopped as it has never reached the 'running' state.")
            if st in ("shutting-down", "terminated"):
                raise _incorrect_state(f"This instance '{inst.id}' is not in a state from which it can be stopped.")
            (same if st in ("stopping", "stopped") else todo).append(inst)
        done = orig(self, [i.id for i in todo]) if todo else []
        return done + [(i, copy.copy(i._state)) for i in same]

    @_wrap(m_inst.InstanceBackend, "start_instances")
    def start_instances(orig, self, instance_ids):
        todo, same = [], []
        for inst in _ids_in_request_order(self, instance_ids):
            st = _state(inst)
            if st in ("stopping", "shutting-down", "terminated"):
                raise _incorrect_state(f"The instance '{inst.id}' is not in a state from which it can be started.")
            (same if st in ("pending", "running") else todo).append(inst)
        done = orig(self, [i.id for i in todo]) if todo else []
        return done + [(i, copy.copy(i._state)) for i in same]

    @_wrap(m_inst.InstanceBackend, "terminate_instances")
    def terminate_instances(orig, self, instance_ids):
        if not instance_ids:
            return orig(self, instance_ids)
        todo, same = [], []
        for inst in _ids_in_request_order(self, instance_ids):
            (same if _state(inst) in ("shutting-down", "terminated") else todo).append(inst)
        # moto terminates a terminated instance again (teardown twice, state reset)
        done = orig(self, [i.id for i in todo]) if todo else []
        return done + [(i, copy.copy(i._state)) for i in same]

    @_wrap(m_inst.InstanceBackend, "reboot_instances")
    def reboot_instances(orig, self, instance_ids):
        for inst in _ids_in_request_order(self, instance_ids):
            if _state(inst) not in ("running", "pending"):
                # moto "reboots" a stopped or terminated instance into running
                raise _incorrect_state(f"The instance '{inst.id}' is not in a state from which it can be rebooted.")
        return orig(self, instance_ids)

    from moto.ec2.responses import instances as r_inst

    @_wrap(r_inst.InstanceResponse, "terminate_instances")
    def terminate_response(orig, self):
        return _fix_current_state(orig(self), "TerminatingInstances",
                                  {"terminated": "terminated", "shutting-down": "shutting-down"})

    @_wrap(r_inst.InstanceResponse, "stop_instances")
    def stop_response(orig, self):
        return _fix_current_state(orig(self), "StoppingInstances", {"stopped": "stopped", "stopping": "stopping"})

    @_wrap(r_inst.InstanceResponse, "start_instances")
    def start_response(orig, self):
        return _fix_current_state(orig(self), "StartingInstances", {"running": "running", "pending": "pending"})


def force_state(instance: Any, state: str) -> None:
    """Test hook (POST /lab-api/instance-state): put an instance in a state without any
    transition, e.g. `pending`, to exercise a rule that moto's instant transitions hide."""
    if state not in STATE_CODES:
        raise ValueError(f"unknown instance state {state!r}; one of {sorted(STATE_CODES)}")
    instance._state.name = state
    instance._state.code = STATE_CODES[state]
