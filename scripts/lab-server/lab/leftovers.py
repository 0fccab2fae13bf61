"""One truthful report of what is left in the lab's AWS: what a build or a test forgot to
clean up, and what would keep costing money (or keep a lock) on a real account.

"Left" means: still exists and is not part of the lab's own furniture. Every account and
region that has been used counts (backends moto never created hold nothing). Kinds:

* `instance`       every instance not `terminated` (`shutting-down` included: it is still
                   there), with its state; volumes it keeps after termination
                   (DeleteOnTermination false) are named in its `detail`.
* `volume`         every volume not attached to a live instance (a live instance's attached
                   volumes go with it, or are named on the instance).
* `key-pair`       every key pair; bake's build locks (`bake-lock-<fingerprint>`,
                   src/pipeline/lock.rs) are marked as such.
* `security-group` every security group except each VPC's `default`.
* `image`          every image in any state, except the base catalogue (owner 136693071363).
* `snapshot`       every snapshot no image uses.
* `launch-template` every launch template, with its version numbers.
* `s3-object`      every object in every bucket (bake stages SSM uploads and output under
                   `<prefix><build-id>/`, src/remote/ssm.rs).
* `ssm-command`    every SSM command invocation still Pending / InProgress / Delayed.
* `ssm-parameter`  every SSM parameter (e.g. bake's `/bake/...`) except the public `/aws/...`
                   ones, in every region.

Not counted: VPCs, subnets, the default security groups, buckets themselves (a staging
bucket is the user's), IAM roles and instance profiles, Auto Scaling groups.
"""

from __future__ import annotations

from typing import Any

BASE_OWNER = "136693071363"
LOCK_PREFIX = "bake-lock-"
SSM_BUSY = ("Pending", "InProgress", "Delayed")


def _backends(bd: Any) -> list[tuple[str, str, Any]]:
    """(account, region, backend) of every backend moto has created (never creates one)."""
    out = []
    for account, per_region in dict.items(bd):
        for region, backend in dict.items(per_region):
            out.append((account, region, backend))
    return out


def _tags(obj: Any) -> dict[str, str]:
    try:
        return {t["key"]: t["value"] for t in obj.get_tags()}
    except Exception:  # noqa: BLE001
        return {}


def report(lab: Any) -> dict[str, Any]:
    from moto.ec2.models import ec2_backends
    from moto.s3.models import s3_backends

    items: list[dict[str, Any]] = []

    def add(kind: str, account: str, region: str, rid: str, **detail: Any) -> None:
        items.append({"kind": kind, "id": rid, "account": account, "region": region,
                      **{k: v for k, v in detail.items() if v not in (None, "", [], {})}})

    for account, region, ec2 in _backends(ec2_backends):
        live: set[str] = set()
        for resv in list(ec2.reservations.values()):
            for inst in resv.instances:
                if inst.state == "terminated":
                    continue
                live.add(inst.id)
                kept = [dev.volume_id for _, dev in inst.get_block_device_mapping
                        if getattr(dev, "volume_id", None) and not getattr(dev, "delete_on_termination", True)]
                add("instance", account, region, inst.id, state=inst.state,
                    ip=inst.private_ip_address, image=inst.image_id, key_name=inst.key_name,
                    keeps_volumes=kept, tags=_tags(inst))
        for vol in list(ec2.volumes.values()):
            att = getattr(vol, "attachment", None)
            if att is not None and getattr(att.instance, "id", None) in live:
                continue
            add("volume", account, region, vol.id, state=vol.status, size_gib=vol.size,
                snapshot=vol.snapshot_id, tags=_tags(vol))
        for name, kp in list(ec2.key_pairs.items()):
            add("key-pair", account, region, name,
                note="bake build lock" if name.startswith(LOCK_PREFIX) else None, tags=_tags(kp))
        for vpc_id, groups in list(ec2.groups.items()):
            for sg in list(groups.values()):
                if sg.name == "default":
                    continue
                add("security-group", account, region, sg.id, name=sg.name, vpc=vpc_id, tags=_tags(sg))
        used_snaps: set[str] = set()
        base_ids = set(getattr(lab, "base_users", {}))
        for ami in list(ec2.amis.values()):
            snap = getattr(ami, "ebs_snapshot", None)
            if snap is not None:
                used_snaps.add(snap.id)
            if ami.owner_id == BASE_OWNER or ami.id in base_ids:
                continue
            add("image", account, region, ami.id, name=ami.name, state=ami.state,
                snapshot=snap.id if snap is not None else None, tags=_tags(ami))
        for snap in list(ec2.snapshots.values()):
            if snap.id in used_snaps or snap.owner_id == BASE_OWNER:
                continue
            add("snapshot", account, region, snap.id, state=snap.status,
                description=snap.description, tags=_tags(snap))
        for lt in list(getattr(ec2, "launch_templates", {}).values()):
            add("launch-template", account, region, lt.id, name=lt.name,
                versions=[v.number for v in lt.versions], tags=_tags(lt))

    from moto.ssm.models import ssm_backends

    for account, region, ssm_be in _backends(ssm_backends):
        params = getattr(ssm_be, "_parameters", None) or {}
        for name in list(dict.keys(params)):
            versions = dict.get(params, name) or []
            if not versions or str(name).startswith("/aws/"):
                continue
            last = versions[-1]
            add("ssm-parameter", account, region, name, version=last.version, type=last.parameter_type,
                data_type=last.data_type if last.data_type != "text" else None,
                value=last.value if last.parameter_type != "SecureString" else None)

    for account, _partition, s3 in _backends(s3_backends):
        for bname, bucket in list(s3.buckets.items()):
            for key in list(bucket.keys.keys()):
                obj = bucket.keys.get(key)
                add("s3-object", account, getattr(bucket, "region_name", ""), f"s3://{bname}/{key}",
                    size=getattr(obj, "size", None))

    ssm = getattr(lab, "ssm", None)
    if ssm is not None:
        with ssm.lock:
            invs = list(ssm.invocations.items())
        for (command_id, iid), inv in invs:
            status = inv.data.get("Status")
            if status in SSM_BUSY:
                add("ssm-command", inv.cmd.account_id, inv.cmd.backend_region, command_id,
                    instance=iid, status=status)

    counts: dict[str, int] = {}
    for it in items:
        counts[it["kind"]] = counts.get(it["kind"], 0) + 1
    return {"clean": not items, "counts": counts, "leftovers": items}


def text(rep: dict[str, Any]) -> str:
    """The report for people (`scripts/lab leftovers`)."""
    if rep["clean"]:
        return "lab: no leftovers\n"
    lines = [f"lab: {len(rep['leftovers'])} leftover(s): "
             + ", ".join(f"{n} {k}" for k, n in sorted(rep["counts"].items()))]
    for it in rep["leftovers"]:
        extra = {k: v for k, v in it.items() if k not in ("kind", "id", "account", "region")}
        desc = " ".join(f"{k}={v}" for k, v in extra.items() if k != "tags")
        if extra.get("tags"):
            desc += " tags=" + ",".join(f"{k}={v}" for k, v in sorted(extra["tags"].items()))
        lines.append(f"  {it['kind']:<16} {it['id']}  [{it['region']}] {desc}".rstrip())
    return "\n".join(lines) + "\n"
