"""Patches to moto's EC2 (and friends) that make it behave like EC2 for bake and Packer,
and hook the instance agent into the instance / image lifecycle.

Every behavioural difference fixed here is listed in scripts/lab-server/README.md.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
import ipaddress
import logging
import os
import random
import re
from typing import Any

from moto.ec2.exceptions import EC2ClientError
from moto.ec2.models import amis as m_amis
from moto.ec2.models import elastic_ip_addresses as m_eip
from moto.ec2.models import elastic_network_interfaces as m_eni
from moto.ec2.models import instances as m_inst
from moto.ec2.models import subnets as m_subnets
from moto.ec2.models import vpcs as m_vpcs
from moto.moto_api._internal import models as m_api

from . import regions
from .agent import LOOPBACK, RESERVED, Lab, is_lab_ip
from .hook import wrap as _wrap

log = logging.getLogger("lab.patches")

# LAB_VPC_CIDR: only for a second lab running beside the first (its tests); default 127.0.0.0/16
DEFAULT_VPC_CIDR = os.environ.get("LAB_VPC_CIDR", "127.0.0.0/16")
_net = ipaddress.ip_network(DEFAULT_VPC_CIDR)
if not (_net.prefixlen == 16 and _net.subnet_of(ipaddress.ip_network("127.0.0.0/8"))):
    raise SystemExit(f"LAB_VPC_CIDR must be a /16 inside 127.0.0.0/8, got {DEFAULT_VPC_CIDR}")



def _cidr_error(code: str, cidr: str, what: str) -> EC2ClientError:
    return EC2ClientError(
        code,
        f"The CIDR '{cidr}' is invalid in the bake lab: {what} must lie inside 127.0.0.0/8 "
        f"(loopback; lab instances may never get other addresses)"
        + (" and must not overlap 127.0.0.0/24" if what == "a subnet" else "")
        + ".",
    )


def _debian_ssm_parameters(base_images: list[dict[str, Any]]) -> dict[str, str]:
    """Debian's public SSM parameters for its AMIs, e.g.
    /aws/service/debian/release/bookworm/latest/amd64 -> newest debian-12-amd64 image."""
    params: dict[str, str] = {}
    newest: dict[str, tuple[str, str]] = {}
    for img in base_images:
        m = re.match(r"debian-(\d+)-(amd64|arm64)-(\d{8}-\d+)$", img.get("name") or "")
        if not m or img.get("owner_id") != "136693071363":
            continue
        major, arch, version = m.groups()
        for rel in (major, {"12": "bookworm", "13": "trixie", "11": "bullseye"}.get(major, major)):
            params[f"/aws/service/debian/release/{rel}/{version}/{arch}"] = img["ami_id"]
            key = f"/aws/service/debian/release/{rel}/latest/{arch}"
            if key not in newest or version > newest[key][0]:
                newest[key] = (version, img["ami_id"])
    params.update({k: v[1] for k, v in newest.items()})
    return params


def _port22_taken(ip: str) -> bool:
    import socket

    try:
        with socket.create_connection((ip, 22), timeout=0.2):
            return True
    except OSError:
        return False


def install(lab: Lab, base_users: dict[str, str], base_images: list[dict[str, Any]] | None = None) -> None:
    # every region has the base images, under its own ids (lab/regions.py)
    lab.base_users.update(regions.all_base_ids(base_users))

    # ------------------------------------------------------------ networking
    def create_default_vpc(self: Any) -> Any:
        # moto: 172.31.0.0/16. Lab: the lab's loopback /16 in every region (as on AWS every
        # region's default VPC has the same CIDR); default subnets per region (lab/regions.py)
        if self.describe_vpcs(filters={"is-default": ["true"]}):
            raise m_vpcs.DefaultVpcAlreadyExists
        vpc = self.create_vpc(cidr_block=DEFAULT_VPC_CIDR, is_default=True)
        for zone in self.describe_availability_zones():
            self.create_default_subnet(zone.name)
        return vpc

    m_vpcs.VPCBackend.create_default_vpc = create_default_vpc

    def create_default_subnet(self: Any, availability_zone: str) -> Any:
        from moto.ec2.exceptions import (
            DefaultSubnetAlreadyExistsInAvailabilityZoneError,
            DefaultVpcDoesNotExistError,
        )

        default_subnets = self.get_default_subnets()
        if availability_zone in default_subnets:
            raise DefaultSubnetAlreadyExistsInAvailabilityZoneError(
                default_subnets[availability_zone].id, availability_zone
            )
        default_vpc = self.get_default_vpc()
        if default_vpc is None:
            raise DefaultVpcDoesNotExistError()
        # each region its own slice of the lab's /16, so instance IPs never collide across
        # regions (us-east-1: 127.X.16.0/20 ...; others: a /23 each, see lab/regions.py)
        zones = sorted(z.name for z in self.describe_availability_zones())
        cidr = regions.default_subnet_cidr(self.region_name, zones.index(availability_zone), len(zones),
                                           ipaddress.ip_network(default_vpc.cidr_block))
        subnet = self.create_subnet(
            vpc_id=default_vpc.id, cidr_block=cidr, availability_zone=availability_zone
        )
        subnet.default_for_az = True
        return subnet

    m_subnets.SubnetBackend.create_default_subnet = create_default_subnet

    @_wrap(m_vpcs.VPCBackend, "create_vpc")
    def create_vpc(orig, self, cidr_block, *args, **kwargs):
        try:
            net = ipaddress.ip_network(str(cidr_block), strict=False)
        except ValueError:
            net = None
        if net is None or net.version != 4 or not net.subnet_of(LOOPBACK):
            raise _cidr_error("InvalidVpc.Range", str(cidr_block), "a VPC")
        return orig(self, cidr_block, *args, **kwargs)

    @_wrap(m_vpcs.VPCBackend, "associate_vpc_cidr_block")
    def associate_vpc_cidr_block(orig, self, vpc_id, cidr_block, *args, **kwargs):
        if cidr_block:
            try:
                net = ipaddress.ip_network(str(cidr_block), strict=False)
            except ValueError:
                net = None
            if net is None or not net.subnet_of(LOOPBACK):
                raise _cidr_error("InvalidVpc.Range", str(cidr_block), "a VPC")
        return orig(self, vpc_id, cidr_block, *args, **kwargs)

    @_wrap(m_subnets.SubnetBackend, "create_subnet")
    def create_subnet(orig, self, vpc_id, cidr_block, *args, **kwargs):
        try:
            net = ipaddress.ip_network(str(cidr_block), strict=False)
        except ValueError:
            net = None
        if net is not None and (not net.subnet_of(LOOPBACK) or net.overlaps(RESERVED)):
            raise _cidr_error("InvalidSubnet.Range", str(cidr_block), "a subnet")
        subnet = orig(self, vpc_id, cidr_block, *args, **kwargs)
        # EC2: only default subnets map public IPs; the lab never hands out public IPs.
        subnet.map_public_ip_on_launch = False
        return subnet

    # unique lab IPs across all VPCs / accounts / regions
    @_wrap(m_subnets.Subnet, "get_available_subnet_ip")
    def get_available_subnet_ip(orig, self, instance):
        for _ in range(100000):
            ip = orig(self, instance)
            # skip addresses where something already listens on :22 (another lab on this machine)
            if is_lab_ip(ip) and not _port22_taken(ip) and lab.reserve_ip(ip):
                return ip
        raise EC2ClientError(
            "InsufficientFreeAddressesInSubnet", f"No free loopback addresses in subnet {self.id}"
        )

    @_wrap(m_subnets.Subnet, "request_ip")
    def request_ip(orig, self, ip, instance):
        if isinstance(instance, m_inst.Instance) or instance is None:
            if not is_lab_ip(ip):
                raise EC2ClientError(
                    "InvalidParameterValue",
                    f"Address {ip} is not allowed in the bake lab (loopback only, not 127.0.0.0/24).",
                )
            if _port22_taken(ip) or not lab.reserve_ip(ip):
                raise EC2ClientError("InvalidIPAddress.InUse", f"Address {ip} is in use.")
        return orig(self, ip, instance)

    # never a public IP (moto would invent 54.214.x.y); Elastic IPs come from 127.255.0.0/16
    m_eni.NetworkInterface.check_auto_public_ip = lambda self: None
    m_eip.random_ip = lambda: f"127.255.{random.randint(0, 255)}.{random.randint(1, 254)}"

    # --------------------------------------------------- instance lifecycle
    # moto is not thread-safe and the lab serves requests concurrently: a DescribeInstances
    # (or our ClientToken lookup) iterating the reservations while a RunInstances adds one
    # dies with "OrderedDict mutated during iteration" (HTTP 500). Iterating a snapshot is
    # atomic under the GIL, so every iteration of this dict goes through one.
    class _Reservations(OrderedDict):
        def values(self):
            return list(super().values())

        def items(self):
            return list(super().items())

        def keys(self):
            return list(super().keys())

        def __iter__(self):
            return iter(list(super().keys()))

    @_wrap(m_inst.InstanceBackend, "__init__")
    def inst_backend_init(orig, self, *args, **kwargs):
        orig(self, *args, **kwargs)
        self.reservations = _Reservations(self.reservations)

    @_wrap(m_inst.InstanceBackend, "run_instances")
    def run_instances(orig, self, image_id, count, *args, **kwargs):
        # EC2 accepts ImageId "resolve:ssm:<parameter>"; moto takes it literally
        if image_id and str(image_id).startswith("resolve:ssm:"):
            from moto.ssm.models import ssm_backends

            pname = str(image_id)[len("resolve:ssm:"):]
            param = ssm_backends[self.account_id][self.region_name].get_parameter(pname)
            if param is None:
                raise EC2ClientError("InvalidParameterValue", f"Parameter {pname} not found.")
            image_id = param.value
        # moto ignores ClientToken; EC2 returns the original reservation for a repeated token
        # (a retried RunInstances must not launch a second builder).
        token = kwargs.get("client_token")
        if token and token != "ABCDE":  # "ABCDE": moto's stand-in for "no token"
            for resv in self.reservations.values():
                if resv.instances and getattr(resv.instances[0], "client_token", None) == token:
                    return resv
        # moto: a BlockDeviceMapping for the root device without VolumeSize/SnapshotId fails
        # with MissingParameter; EC2 creates it from the image's root snapshot.
        ami = self.amis.get(image_id) if image_id else None
        for bdm in kwargs.get("block_device_mappings") or []:
            ebs = bdm.get("Ebs")
            if (ami is not None and isinstance(ebs, dict) and bdm.get("DeviceName") == ami.root_device_name
                    and not ebs.get("SnapshotId")):
                ebs["SnapshotId"] = ami.ebs_snapshot.id
            if isinstance(ebs, dict) and not ebs.get("VolumeSize") and not ebs.get("SnapshotId") \
                    and bdm.get("NoDevice") != "":
                from moto.ec2.exceptions import MissingParameterError

                raise MissingParameterError("size or snapshotId")
        # moto: without a subnet an instance gets a random 10.x "EC2-Classic" address (and a
        # public one). EC2: it lands in the default subnet of its AZ. So does the lab.
        nics = kwargs.get("nics") or []
        if not kwargs.get("subnet_id") and not any(
            n.get("SubnetId") or n.get("NetworkInterfaceId") for n in nics
        ):
            defaults = self.get_default_subnets()
            zone = kwargs.get("placement") or f"{self.region_name}a"
            subnet = defaults.get(zone) or next(iter(sorted(defaults.values(), key=lambda s: s.availability_zone)), None)
            if subnet is None:
                raise EC2ClientError(
                    "MissingInput", "No default subnet (lab: loopback default VPC missing); specify a subnet."
                )
            if nics:
                for n in nics:
                    if int(n.get("DeviceIndex", 0)) == 0:
                        n["SubnetId"] = subnet.id
            else:
                kwargs["subnet_id"] = subnet.id
                if not kwargs.get("placement"):
                    kwargs["placement"] = subnet.availability_zone
        reservation = orig(self, image_id, count, *args, **kwargs)
        futures = []
        for inst in reservation.instances:
            if not is_lab_ip(inst.private_ip_address):
                log.error("instance %s got non-lab address %s", inst.id, inst.private_ip_address)
            for nic in inst.nics.values():
                nic.public_ip = None
            futures.append(lab.launch(inst, self))
        lab.settle(futures)
        return reservation

    from moto.ec2.responses import instances as r_inst

    _orig_validate_bdm = r_inst.InstanceResponse._validate_block_device_mapping

    def _validate_block_device_mapping(device_mapping):
        ebs = device_mapping.get("Ebs")
        if isinstance(ebs, dict) and not ebs.get("VolumeSize") and not ebs.get("SnapshotId"):
            return  # run_instances fills in the image's snapshot for the root device
        return _orig_validate_bdm(device_mapping)

    r_inst.InstanceResponse._validate_block_device_mapping = staticmethod(_validate_block_device_mapping)

    def setup_defaults(self):
        # moto: an 8 GiB root volume at /dev/sda1 whatever the image says; EC2: at the image's
        # root device, created from the image's snapshot.
        ami = self.ec2_backend.amis.get(self.image_id)
        volume = self.ec2_backend.create_volume(
            size=8, zone_name=self._placement.zone,
            snapshot_id=ami.ebs_snapshot.id if ami is not None else None,
        )
        self.ec2_backend.attach_volume(volume.id, self.id, self.root_device_name or "/dev/xvda", True)

    m_inst.Instance.setup_defaults = setup_defaults

    @_wrap(m_inst.Instance, "start")
    def inst_start(orig, self):
        prev = orig(self)
        lab.settle([lab.start(self.id)])
        return prev

    @_wrap(m_inst.Instance, "stop")
    def inst_stop(orig, self):
        prev = orig(self)
        lab.stop(self.id)
        return prev

    @_wrap(m_inst.Instance, "reboot")
    def inst_reboot(orig, self):
        orig(self)
        lab.settle([lab.reboot(self.id)])

    @_wrap(m_inst.Instance, "terminate")
    def inst_terminate(orig, self):
        prev = orig(self)
        lab.terminate(self.id)
        return prev

    # ----------------------------------------------------------------- images
    # moto's CreateImage reads no NoReboot; the backend call below needs it (EC2 reboots a
    # running instance for the image unless NoReboot=true). One request per thread.
    from moto.ec2.responses import amis as r_amis
    import threading as _threading
    create_request = _threading.local()

    @_wrap(r_amis.AmisResponse, "create_image")
    def create_image_response(orig, self):
        create_request.no_reboot = str(self._get_param("NoReboot", False)).lower() == "true"
        try:
            return orig(self)
        finally:
            create_request.no_reboot = False

    @_wrap(m_amis.AmiBackend, "create_image")
    def create_image(orig, self, instance_id, name, description, tag_specifications):
        # moto: NotImplementedError (HTTP 500) for ResourceType=snapshot. EC2 tags the snapshots.
        snap_tags: list[dict[str, str]] = []
        keep = []
        for spec in tag_specifications or []:
            if spec.get("ResourceType") == "snapshot":
                snap_tags += spec.get("Tags", [])
            else:
                keep.append(spec)
        instance = self.get_instance(instance_id)
        if instance.state == "terminated":
            raise EC2ClientError("IncorrectInstanceState", f"The instance '{instance_id}' is not in a state from which it can be imaged.")
        ami = orig(self, instance_id, name, description, keep)
        for tag in snap_tags:
            ami.ebs_snapshot.add_tag(tag["Key"], tag["Value"])
        # moto: root device /dev/sda1 & type "standard" regardless of the instance; EC2 keeps
        # the source's root device name and is EBS-backed.
        src = self.amis.get(instance.image_id)
        ami.root_device_name = instance.root_device_name
        ami.root_device_type = "ebs"
        if src is not None:
            ami.boot_mode = src.boot_mode
            ami.hypervisor = src.hypervisor
            ami.sriov = src.sriov
        ami.image_location = f"{ami.owner_id}/{name}"
        lab.freeze(instance_id, ami.id, instance.image_id,
                   no_reboot=getattr(create_request, "no_reboot", False))
        return ami

    @_wrap(m_amis.AmiBackend, "copy_image")
    def copy_image(orig, self, source_image_id, source_region, name=None, description=None):
        from moto.ec2.models import ec2_backends

        ami = orig(self, source_image_id, source_region, name, description)
        src = ec2_backends[self.account_id][source_region].amis.get(source_image_id)
        if src is not None:
            ami.root_device_name = src.root_device_name
            ami.root_device_type = src.root_device_type
            ami.boot_mode = src.boot_mode
            ami.hypervisor = src.hypervisor
            ami.sriov = src.sriov
        ami.image_location = f"{ami.owner_id}/{ami.name}"
        lab.copy_image(source_image_id, ami.id)
        return ami

    @_wrap(m_amis.AmiBackend, "register_image")
    def register_image(orig, self, *args, **kwargs):
        ami = orig(self, *args, **kwargs)
        lab.register_image(ami.id)
        return ami

    # moto: RegisterImage ignores BlockDeviceMappings and RootDeviceName and invents a fresh
    # snapshot. EC2 registers the image on the given snapshot (so two images can share one,
    # which snapshot-aware deregistration must respect) and the disk is that snapshot's.
    from moto.ec2.responses import amis as r_amis

    @_wrap(r_amis.AmisResponse, "register_image")
    def register_image_response(orig, self):
        result = orig(self)
        mappings = self._get_param("BlockDeviceMappings", []) or []
        root_name = self._get_param("RootDeviceName")
        root = next((m for m in mappings if m.get("DeviceName") == root_name), mappings[0] if mappings else None)
        snap_id = ((root or {}).get("Ebs") or {}).get("SnapshotId")
        ami = self.ec2_backend.amis.get(result.result["ImageId"]) if hasattr(result, "result") else None
        if ami is not None and snap_id:
            snap = self.ec2_backend.get_snapshot(snap_id)  # InvalidSnapshot.NotFound like EC2
            invented = ami.ebs_snapshot
            ami.ebs_snapshot = snap
            self.ec2_backend.snapshots.pop(invented.id, None)  # never existed on EC2
            if root_name:
                ami.root_device_name = root_name
            ami.root_device_type = "ebs"
            if snap.from_ami and snap.from_ami in self.ec2_backend.amis:
                lab.copy_image(snap.from_ami, ami.id)
        return result

    @_wrap(m_amis.AmiBackend, "deregister_image")
    def deregister_image(orig, self, ami_id):
        ret = orig(self, ami_id)
        lab.deregister(ami_id)
        return ret

    pristine_catalogue = copy.deepcopy(m_amis.AMIS)

    @_wrap(m_amis.AmiBackend, "_load_amis")
    def _load_amis(orig, self):
        # moto parses creation_date *in place* in its module-level catalogue, so the second
        # backend (another region, or any backend after /moto-api/reset) crashes on a datetime.
        # each region its own ids for the same base images (lab/regions.py)
        m_amis.AMIS = regions.catalogue_for(self.region_name, copy.deepcopy(pristine_catalogue))
        orig(self)
        # moto forces owner_alias "amazon" on every catalogue image; Debian's have none
        for ami_id in base_users:
            ami = self.amis.get(regions.localize(ami_id, self.region_name))
            if ami is not None and ami.owner_id != "137112412989":
                ami.owner_alias = None

    # moto ignores ModifyImageAttribute Description (Packer sets ami_description this way)
    from moto.ec2.responses import amis as r_amis

    @_wrap(r_amis.AmisResponse, "modify_image_attribute")
    def modify_image_attribute(orig, self):
        desc = self._get_param("Description.Value")
        if desc is None and (self._get_param("Attribute") or "").lower() == "description":
            desc = self._get_param("Value")
        if desc is not None:
            ami_id = self._get_param("ImageId")
            self.ec2_backend.describe_images(ami_ids=[ami_id])[0].description = desc
        return orig(self)

    # GetConsoleOutput: moto returns a fixed 2006 Xen boot log; EC2 shows the instance's
    # console, where cloud-init prints the host keys (a way to learn/pin them).
    from moto.core.types import Base64EncodedString
    from moto.ec2.responses import general as r_general

    @_wrap(r_general.General, "get_console_output")
    def get_console_output(orig, self):
        iid = self._get_param("InstanceId")
        text = lab.console_output(iid)
        if text is None:
            return orig(self)
        from moto.core.responses import ActionResult
        from moto.core.utils import utcnow

        self.ec2_backend.get_instance(iid)
        return ActionResult(
            {"InstanceId": iid, "Timestamp": utcnow(), "Output": Base64EncodedString.from_raw_string(text)}
        )

    # Debian's public SSM parameters (moto only knows Amazon Linux / ECS ones)
    from moto.core.utils import utcnow as _utcnow
    from moto.ssm import models as m_ssm

    debian_params = _debian_ssm_parameters(base_images or [])

    @_wrap(m_ssm.ParameterDict, "_check_loading_status")
    def _check_loading_status(orig, self, key):
        orig(self, key)
        if str(key or "").startswith("/aws/service/debian") and not getattr(self, "lab_debian_loaded", False):
            self.lab_debian_loaded = True
            for name, value in debian_params.items():
                value = regions.localize(value, self.region_name)  # the region's own image id
                defaultdict_get = super(m_ssm.ParameterDict, self).__getitem__
                defaultdict_get(name).append(
                    m_ssm.Parameter(
                        account_id=self.account_id, name=name, value=value, parameter_type="String",
                        description=None, allowed_pattern=None, keyid=None,
                        last_modified_date=_utcnow(), version=1, data_type="aws:ec2:image",
                    )
                )

    # ------------------------------------------------------------------ reset
    @_wrap(m_api.MotoAPIBackend, "reset")
    def reset(orig, self):
        lab.reset()
        return orig(self)
