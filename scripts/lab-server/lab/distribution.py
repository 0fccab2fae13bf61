"""Distribution: what copying images to regions and sharing them with accounts needs, as EC2
does it (moto lacks most of it). Every behaviour and its source: scripts/lab-server/README.md,
"Regions and distribution".

* CopyImage (called in the destination region): the source is looked up in `SourceRegion`
  (`InvalidAMIID.NotFound` / `.Malformed` as EC2), the copy keeps the source's content
  (layers; lab/agent.py), gets `TagSpecifications` (image and snapshot) at creation,
  `CopyImageTags`, `Encrypted`/`KmsKeyId` on its snapshot, `SourceImageId`/`SourceImageRegion`,
  the source's `ImdsSupport`, and honours `ClientToken` (same token, same request -> the same
  image; another request -> `IdempotentParameterMismatch`). Realistic timing: lab/timing.py.
* Launch permissions: ModifyImageAttribute (UserId, Group=all, OrganizationArn,
  OrganizationalUnitArn; only the owner), DescribeImageAttribute (launchPermission,
  imdsSupport, deregistrationProtection, lastLaunchedTime), DescribeImages `ExecutableUsers`.
* Snapshots: ModifySnapshotAttribute `CreateVolumePermission` Add/Remove (moto only knew
  `OperationType` + `UserIds`/`GroupNames`).
* EnableImageDeprecation / DisableImageDeprecation (`DeprecationTime`, `IncludeDeprecated`).
* Enable/DisableImageDeregistrationProtection (`DeregistrationProtection`, 24 h cooldown);
  DeregisterImage of a protected image fails.
* ImdsSupport on RegisterImage and ModifyImageAttribute.
* SSM parameters of data type `aws:ec2:image`: PutParameter answers success, but (as SSM's
  asynchronous validation) the parameter is only created or updated if the value is an AMI
  id available in that region.
"""

from __future__ import annotations

import logging
import re
import time
from datetime import datetime, timedelta, timezone
from typing import Any

from moto.core.responses import ActionResult, EmptyResult
from moto.ec2.exceptions import EC2ClientError

from . import regions
from .hook import wrap as _wrap

log = logging.getLogger("lab.distribution")

COOLDOWN = 24 * 3600.0  # deregistration protection lingers this long after a disable
AMI_ID = re.compile(r"^ami-([0-9a-f]{8}|[0-9a-f]{17})$")
ORG_ARN = re.compile(r"^arn:aws[a-z-]*:organizations::\d{12}:organization/o-[a-z0-9]{10,32}$")
OU_ARN = re.compile(r"^arn:aws[a-z-]*:organizations::\d{12}:ou/o-[a-z0-9]{10,32}/ou-[a-z0-9]{4,32}-[a-z0-9]{8,32}$")



def _iso(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _parse_time(v: Any) -> datetime:
    if isinstance(v, datetime):
        return v if v.tzinfo else v.replace(tzinfo=timezone.utc)
    s = str(v).strip()
    try:
        return datetime.fromtimestamp(float(s), timezone.utc)
    except ValueError:
        pass
    dt = datetime.fromisoformat(s.replace("Z", "+00:00"))
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def _image(backend: Any, ami_id: str | None, owner_only: bool = False, account: str | None = None) -> Any:
    """An image of this backend, with EC2's errors for a malformed / unknown / gone id."""
    from moto.ec2.exceptions import InvalidAMIIdError, MalformedAMIIdError

    if not ami_id or not str(ami_id).startswith("ami-"):
        raise MalformedAMIIdError([str(ami_id)])
    ami = backend.amis.get(ami_id)
    if ami is None:
        if ami_id in backend.deleted_amis:
            raise EC2ClientError("InvalidAMIID.Unavailable", f"The image id '[{ami_id}]' is no longer available")
        raise InvalidAMIIdError(ami_id)
    if owner_only and ami.owner_id != (account or backend.account_id):
        raise EC2ClientError("AuthFailure", f"Not authorized for image:{ami_id}")
    return ami


# ------------------------------------------------------------------ the model


def _install_model() -> None:
    from moto.ec2.models import amis as m_amis

    # new Image fields (the serializer picks attributes by the model's snake_case names)
    m_amis.Ami.deprecation_time = None
    m_amis.Ami.imds_support = None
    m_amis.Ami.source_image_id = None
    m_amis.Ami.source_image_region = None
    m_amis.Ami.last_launched_time = None

    def _dp_get(self: Any) -> str:
        d = self.__dict__
        until = d.get("_lab_dp_until")
        if until is not None and time.time() >= until:
            d["_lab_dp"], d["_lab_dp_until"] = "disabled", None
        if d.get("_lab_dp_until") is not None:
            return f"disabled-until {_iso(datetime.fromtimestamp(d['_lab_dp_until'], timezone.utc))}"
        return d.get("_lab_dp", "disabled")

    m_amis.Ami.deregistration_protection = property(_dp_get)

    def protected(ami: Any) -> bool:
        return ami.deregistration_protection != "disabled"

    @_wrap(m_amis.AmiBackend, "deregister_image")
    def deregister_image(orig, self, ami_id):
        ami = self.amis.get(ami_id)
        if ami is not None and protected(ami):
            raise EC2ClientError(
                "OperationNotPermitted",
                f"Image {ami_id} has deregistration protection enabled ({ami.deregistration_protection}); "
                "disable it with DisableImageDeregistrationProtection first.")
        return orig(self, ami_id)

    # the last launch time EC2 reports (there it lags by up to 24 h; here it is immediate)
    from moto.ec2.models import instances as m_inst

    @_wrap(m_inst.InstanceBackend, "run_instances")
    def run_instances(orig, self, image_id, *a, **kw):
        resv = orig(self, image_id, *a, **kw)
        ami = self.amis.get(resv.instances[0].image_id) if resv.instances else None
        if ami is not None:
            ami.last_launched_time = _iso(_now())
        return resv


# ------------------------------------------------------------------ CopyImage


def _install_copy() -> None:
    from moto.ec2.exceptions import InvalidAMIIdError, MalformedAMIIdError
    from moto.ec2.models import ec2_backends
    from moto.ec2.responses import amis as r_amis

    def copy_image(self: Any) -> ActionResult:
        p = self._get_param
        src_id, src_region = p("SourceImageId"), p("SourceRegion")
        name, description, token = p("Name"), p("Description"), p("ClientToken")
        encrypted = bool(p("Encrypted", False))
        kms = p("KmsKeyId")
        copy_tags = bool(p("CopyImageTags", False))
        specs = p("TagSpecifications", []) or []
        self.error_on_dryrun()
        if not src_region:
            raise EC2ClientError("MissingParameter", "The request must contain the parameter SourceRegion")
        if not regions.is_known(src_region):
            raise EC2ClientError("InvalidParameterValue", f"Invalid value '{src_region}' for SourceRegion: no such region")
        if kms and not encrypted:
            raise EC2ClientError("InvalidParameterDependency",
                                 "The parameter KmsKeyId requires the parameter Encrypted to be set.")
        image_tags: list[dict[str, str]] = []
        snap_tags: list[dict[str, str]] = []
        for spec in specs:
            rtype = spec.get("ResourceType")
            if rtype == "image":
                image_tags += spec.get("Tags", [])
            elif rtype == "snapshot":
                snap_tags += spec.get("Tags", [])
            else:
                raise EC2ClientError("InvalidParameterValue",
                                     f"'{rtype}' is not a valid taggable resource type for this operation.")
        backend = self.ec2_backend
        tokens: dict[str, tuple[str, tuple]] = backend.__dict__.setdefault("_lab_copy_tokens", {})
        request = (src_id, src_region, name, description, encrypted, kms)
        if token and token in tokens:
            ami_id, seen = tokens[token]
            if seen != request:
                raise EC2ClientError("IdempotentParameterMismatch",
                                     f"Client token {token} was already used for a different request.")
            return ActionResult({"ImageId": ami_id})
        if not str(src_id or "").startswith("ami-"):
            raise MalformedAMIIdError([str(src_id)])
        src_backend = ec2_backends[self.current_account][src_region]
        src = src_backend.amis.get(src_id)
        if src is None:
            raise InvalidAMIIdError(src_id)
        ami = backend.copy_image(src_id, src_region, name, description)
        if token:
            tokens[token] = (ami.id, request)
        for t in image_tags:
            ami.add_tag(t["Key"], t["Value"])
        if copy_tags:
            for t in src.get_tags():
                if not t["key"].startswith("aws:") and t["key"] not in {x["Key"] for x in image_tags}:
                    ami.add_tag(t["key"], t["value"])
        snap = ami.ebs_snapshot
        for t in snap_tags:
            snap.add_tag(t["Key"], t["Value"])
        src_snap = getattr(src, "ebs_snapshot", None)
        if encrypted or (src_snap is not None and src_snap.encrypted):
            snap.encrypted = True
            snap.kms_key_id = kms or (src_snap.kms_key_id if src_snap is not None and src_snap.encrypted else None) \
                or backend._create_default_encryption_key()
        ami.source_image_id, ami.source_image_region = src_id, src_region
        ami.imds_support = src.imds_support
        snap.description = (f"Copied for DestinationAmi {ami.id} from SourceAmi {src_id} for SourceSnapshot "
                            f"{src_snap.id if src_snap is not None else 'snap-unknown'}. "
                            f"Task created on {int(time.time() * 1000)}.")
        return ActionResult({"ImageId": ami.id})

    r_amis.AmisResponse.copy_image = copy_image

    # encrypted copies say so in their block device mappings (moto: never)
    from moto.ec2.models import amis as m_amis

    orig_bdm = m_amis.Ami.block_device_mappings

    def block_device_mappings(self: Any) -> list[dict[str, Any]]:
        out = orig_bdm.fget(self)
        snap = getattr(self, "ebs_snapshot", None)
        for m in out:
            if snap is not None and "Ebs" in m:
                m["Ebs"]["Encrypted"] = bool(snap.encrypted)
                if snap.encrypted and snap.kms_key_id:
                    m["Ebs"]["KmsKeyId"] = snap.kms_key_id
        return out

    m_amis.Ami.block_device_mappings = property(block_device_mappings)


# ------------------------------------------------------- attributes, lifecycle


def _install_attributes() -> None:
    from moto.ec2.responses import amis as r_amis
    from moto.ec2.responses import elastic_block_store as r_ebs

    @_wrap(r_amis.AmisResponse, "modify_image_attribute")
    def modify_image_attribute(orig, self):
        ami = _image(self.ec2_backend, self._get_param("ImageId"), owner_only=True)
        raw = self._get_param("ImdsSupport")
        imds = raw.get("Value") if isinstance(raw, dict) else raw
        if imds is None and (self._get_param("Attribute") or "") == "imdsSupport":
            imds = self._get_param("Value")
        if imds is not None:
            if imds != "v2.0":
                raise EC2ClientError("InvalidParameterValue", f"Invalid value '{imds}' for imdsSupport. Valid value: v2.0")
            ami.imds_support = "v2.0"
        lp = self._get_param("LaunchPermission", {}) or {}
        entries = list(lp.get("Add", []) or []) + list(lp.get("Remove", []) or [])
        entries += [{"OrganizationArn": a} for a in self._get_param("OrganizationArns", []) or []]
        entries += [{"OrganizationalUnitArn": a} for a in self._get_param("OrganizationalUnitArns", []) or []]
        for e in entries:
            if "OrganizationArn" in e and not ORG_ARN.match(e["OrganizationArn"] or ""):
                raise EC2ClientError("InvalidParameterValue", f"Invalid value '{e['OrganizationArn']}' for organizationArn.")
            if "OrganizationalUnitArn" in e and not OU_ARN.match(e["OrganizationalUnitArn"] or ""):
                raise EC2ClientError("InvalidParameterValue",
                                     f"Invalid value '{e['OrganizationalUnitArn']}' for organizationalUnitArn.")
        return orig(self)

    @_wrap(r_amis.AmisResponse, "describe_image_attribute")
    def describe_image_attribute(orig, self):
        attr = self._get_param("Attribute")
        ami_id = self._get_param("ImageId")
        ami = _image(self.ec2_backend, ami_id)
        own = {"imdsSupport": ("ImdsSupport", ami.imds_support),
               "deregistrationProtection": ("DeregistrationProtection", ami.deregistration_protection),
               "lastLaunchedTime": ("LastLaunchedTime", ami.last_launched_time)}
        if attr in own:
            key, value = own[attr]
            return ActionResult({"ImageId": ami_id, key: {"Value": value} if value is not None else {}})
        if attr == "launchPermission" and ami.owner_id != self.current_account:
            raise EC2ClientError("AuthFailure", f"Not authorized for image:{ami_id}")
        return orig(self)

    @_wrap(r_amis.AmisResponse, "register_image")
    def register_image(orig, self):
        imds = self._get_param("ImdsSupport")
        if imds is not None and imds != "v2.0":
            raise EC2ClientError("InvalidParameterValue", f"Invalid value '{imds}' for imdsSupport. Valid value: v2.0")
        result = orig(self)
        ami = self.ec2_backend.amis.get(result.result["ImageId"])
        if ami is not None:
            ami.imds_support = imds
            for spec in self._get_param("TagSpecifications", []) or []:
                target = ami if spec.get("ResourceType") == "image" else \
                    ami.ebs_snapshot if spec.get("ResourceType") == "snapshot" else None
                for t in spec.get("Tags", []) if target is not None else []:
                    target.add_tag(t["Key"], t["Value"])
        return result

    @_wrap(r_amis.AmisResponse, "describe_images")
    def describe_images(orig, self):
        result = orig(self)
        images = result.result.get("Images") or []
        seen: set[str] = set()
        out = []
        include_deprecated = bool(self._get_param("IncludeDeprecated", False)) or bool(self._get_param("ImageIds"))
        now = _iso(_now())
        for ami in images:
            if ami.id in seen:  # moto lists an image once per matching launch permission
                continue
            seen.add(ami.id)
            # EC2: deprecated images of other owners are hidden unless asked for
            if (not include_deprecated and ami.deprecation_time and ami.deprecation_time <= now
                    and ami.owner_id != self.current_account):
                continue
            out.append(ami)
        result.result["Images"] = out
        return result

    def lifecycle(fn):
        def action(self: Any) -> ActionResult:
            ami = _image(self.ec2_backend, self._get_param("ImageId"), owner_only=True)
            self.error_on_dryrun()
            fn(self, ami)
            return ActionResult({"Return": True})

        action.__name__ = fn.__name__
        setattr(r_amis.AmisResponse, fn.__name__, action)
        return fn

    @lifecycle
    def enable_image_deprecation(self, ami):
        at = _parse_time(self._get_param("DeprecateAt"))
        at = (at + timedelta(seconds=30)).replace(second=0, microsecond=0)  # EC2 rounds to the minute
        now = _now()
        if at < now.replace(second=0, microsecond=0):
            raise EC2ClientError("InvalidParameterValue", "The deprecation time can't be in the past.")
        if at > now + timedelta(days=3653):
            raise EC2ClientError("InvalidParameterValue", "The deprecation time can't be more than 10 years from now.")
        ami.deprecation_time = _iso(at)

    @lifecycle
    def disable_image_deprecation(self, ami):
        ami.deprecation_time = None

    @lifecycle
    def enable_image_deregistration_protection(self, ami):
        cooldown = bool(self._get_param("WithCooldown", False))
        ami.__dict__["_lab_dp"] = "enabled-with-cooldown" if cooldown else "enabled-without-cooldown"
        ami.__dict__["_lab_dp_until"] = None

    @lifecycle
    def disable_image_deregistration_protection(self, ami):
        state = ami.deregistration_protection
        if state == "enabled-with-cooldown":
            ami.__dict__["_lab_dp_until"] = time.time() + COOLDOWN
        elif not state.startswith("disabled-until"):
            ami.__dict__["_lab_dp"], ami.__dict__["_lab_dp_until"] = "disabled", None

    # ModifySnapshotAttribute CreateVolumePermission.Add/Remove (moto: OperationType only)
    @_wrap(r_ebs.ElasticBlockStore, "modify_snapshot_attribute")
    def modify_snapshot_attribute(orig, self):
        cvp = self._get_param("CreateVolumePermission", {}) or {}
        snap = self.ec2_backend.get_snapshot(self._get_param("SnapshotId"))
        op_type = self._get_param("OperationType")
        adds = list(cvp.get("Add", []) or [])
        removes = list(cvp.get("Remove", []) or [])
        if op_type in ("add", "remove"):
            entries = [{"UserId": u} for u in self._get_param("UserIds", []) or []] + \
                [{"Group": g} for g in self._get_param("GroupNames", []) or []]
            (adds if op_type == "add" else removes).extend(entries)
        for e in adds + removes:
            uid, group = e.get("UserId"), e.get("Group")
            if uid is not None and not (len(uid) == 12 and uid.isdigit()):
                raise EC2ClientError("InvalidParameterValue", f"Invalid value '{uid}' for userId.")
            if group is not None and group != "all":
                raise EC2ClientError("InvalidParameterValue", f"Invalid value '{group}' for group.")
        if snap.encrypted and any(e.get("Group") == "all" for e in adds):
            raise EC2ClientError("InvalidParameter", "Encrypted snapshots cannot be shared publicly.")
        self.error_on_dryrun()
        self.ec2_backend.add_create_volume_permission(
            snap.id, user_ids=[e["UserId"] for e in adds if "UserId" in e], groups=[e["Group"] for e in adds if "Group" in e])
        self.ec2_backend.remove_create_volume_permission(
            snap.id, user_ids=[e["UserId"] for e in removes if "UserId" in e],
            groups=[e["Group"] for e in removes if "Group" in e])
        return EmptyResult()


# ------------------------------------------------------------------------ SSM


def _install_ssm() -> None:
    from moto.ec2.models import ec2_backends
    from moto.ssm import models as m_ssm

    def available(account: str, region: str, ami_id: str) -> bool:
        if not AMI_ID.match(ami_id or "") or not regions.is_known(region):
            return False
        ami = ec2_backends[account][region].amis.get(ami_id)
        return ami is not None and ami.state != "deregistered"

    @_wrap(m_ssm.SimpleSystemManagerBackend, "put_parameter")
    def put_parameter(orig, self, name, description, value, parameter_type, allowed_pattern, keyid,
                      overwrite, tags, data_type, *a, **kw):
        if data_type == "aws:ec2:image" and not available(self.account_id, self.region_name, value):
            # SSM validates aws:ec2:image asynchronously: the call succeeds, but the parameter is
            # neither created nor updated (the lab settles it at once).
            log.info("ssm %s: %r is no AMI available in %s: parameter %s not written",
                     self.region_name, value, self.region_name, name)
            versions = self._parameters.get(name) or []
            if versions and not overwrite:
                raise m_ssm.ParameterAlreadyExists
            return m_ssm.Parameter(
                account_id=self.account_id, name=name, value=value, parameter_type=parameter_type or "String",
                description=description, allowed_pattern=allowed_pattern, keyid=keyid,
                last_modified_date=m_ssm.utcnow(), version=(versions[-1].version + 1) if versions else 1,
                data_type=data_type, tier=kw.get("tier") or "Standard", policies=kw.get("policies"))
        return orig(self, name, description, value, parameter_type, allowed_pattern, keyid, overwrite, tags,
                    data_type, *a, **kw)


def _install_sharing() -> None:
    """Images shared with another account (launch permission UserId, or public) are visible to
    that account in the same region (DescribeImages, RunInstances: moto's other accounts are
    reached with STS AssumeRole credentials). Organization / OU permissions are recorded only."""
    from moto.ec2.models import amis as m_amis
    from moto.ec2.models import ec2_backends
    from moto.ec2.utils import generic_filter

    def shared_with(backend: Any) -> dict[str, Any]:
        me, region = backend.account_id, backend.region_name
        out: dict[str, Any] = {}
        for account, per_region in list(dict.items(ec2_backends)):
            if account == me or region not in dict.keys(per_region):
                continue
            for ami in list(dict.__getitem__(per_region, region).amis.values()):
                lps = ami.launch_permissions
                if {"UserId": me} in lps or ({"Group": "all"} in lps and ami.owner_id != "136693071363"):
                    out[ami.id] = ami
        return out

    @_wrap(m_amis.AmiBackend, "describe_images")
    def describe_images(orig, self, ami_ids=None, filters=None, exec_users=None, owners=None):
        shared = shared_with(self)
        if not shared:
            return orig(self, ami_ids=ami_ids, filters=filters, exec_users=exec_users, owners=owners)
        if ami_ids:
            mine = [i for i in ami_ids if i not in shared]
            found = orig(self, ami_ids=mine, filters=filters, exec_users=exec_users, owners=owners) if mine else []
            extra = [shared[i] for i in ami_ids if i in shared]
            return found + (generic_filter(filters, extra) if filters else extra)
        found = orig(self, ami_ids=ami_ids, filters=filters, exec_users=exec_users, owners=owners)
        me = self.account_id
        extra = list(shared.values())
        if owners:
            wanted = {me if o == "self" else o for o in owners}
            extra = [a for a in extra if a.owner_id in wanted]
        if exec_users:
            users = {me if u == "self" else u for u in exec_users}
            extra = [a for a in extra if a.is_public or any({"UserId": u} in a.launch_permissions for u in users)]
        return found + (generic_filter(filters, extra) if filters else extra)


def end_cooldown(ami_id: str, region: str, account: str = "123456789012") -> dict[str, Any]:
    """Test hook (POST /lab-api/deregistration-cooldown): a cooldown after
    DisableImageDeregistrationProtection ends now instead of in 24 h."""
    from moto.ec2.models import ec2_backends

    ami = ec2_backends[account][region].amis[ami_id]
    if ami.__dict__.get("_lab_dp_until") is not None:
        ami.__dict__["_lab_dp_until"] = time.time()
    return {"image_id": ami_id, "deregistration_protection": ami.deregistration_protection}


def install() -> None:
    """Called after lab/patches.py, lab/timing.py and lab/strict.py."""
    _install_model()
    _install_copy()
    _install_attributes()
    _install_ssm()
    _install_sharing()
