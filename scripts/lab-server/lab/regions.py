"""Regions: each with its own default VPC, default subnets, base images and state.

moto keeps one backend per account and region, so state (instances, images, key pairs,
security groups, SSM parameters, ...) is already per region. All regions share one host
loopback, though, so the lab gives every region its own slice of the lab's /16
(`LAB_VPC_CIDR`, default 127.0.0.0/16) for its default subnets: a private IP never collides
with another region's and says which region it belongs to.

    us-east-1         127.X.16.0/20, 127.X.32.0/20, ... 127.X.96.0/20 (a..f; as before)
    slot i >= 1       a /23 at 127.X.112.0 + (i-1) * 512, one /25 per AZ (a, b, c, d)
                      slot 1 = us-west-2, slot 2 = eu-west-1, then the other regions in
                      alphabetical order (37 regions: up to 127.X.185.255)

The default VPC itself is the whole /16 in every region, as on AWS, where every region's
default VPC is 172.31.0.0/16. Regions are those moto knows availability zones for (38);
any other region name is answered as AWS answers a credential scoped to a region that does
not exist (`RegionGate`).

Base images exist in every region with region-specific ids (on AWS each region has its own
AMI id for the same Debian release): us-east-1 keeps the catalogue's ids, slot i replaces
three hex digits of the id by i (`ami-0deb12a6420261101` -> `ami-0deb1200120261101` in
us-west-2). Debian's public SSM parameters point at the region's own id.
"""

from __future__ import annotations

import hashlib
import ipaddress
from typing import Any

US_EAST_1 = "us-east-1"
FIRST = ("us-west-2", "eu-west-1")  # the regions bake distributes to first get fixed slots
SLOT_BASE = 112  # third octet where the per-region /23 slots start (after us-east-1's /20s)


def known_regions() -> list[str]:
    """Regions the lab serves, in slot order (us-east-1 first)."""
    from moto.ec2.models.availability_zones_and_regions import RegionsAndZonesBackend

    names = {r.name for r in RegionsAndZonesBackend.regions} & set(RegionsAndZonesBackend.zones)
    rest = sorted(names - {US_EAST_1, *FIRST})
    return [US_EAST_1, *[r for r in FIRST if r in names], *rest]


_SLOTS: dict[str, int] | None = None


def slot(region: str) -> int | None:
    global _SLOTS
    if _SLOTS is None:
        _SLOTS = {r: i for i, r in enumerate(known_regions())}
    return _SLOTS.get(region)


def is_known(region: str) -> bool:
    return slot(region) is not None


def region_block(region: str, lab_net: ipaddress.IPv4Network) -> ipaddress.IPv4Network:
    """The /23 slice of the lab's /16 that holds a region's default subnets (not us-east-1,
    whose six /20s predate regions)."""
    i = slot(region)
    if not i:
        raise KeyError(region)
    base = int(lab_net.network_address) + SLOT_BASE * 256 + (i - 1) * 512
    return ipaddress.IPv4Network((base, 23))


def default_subnet_cidr(region: str, zone_index: int, nzones: int, lab_net: ipaddress.IPv4Network) -> str:
    """The default subnet of the region's zone_index-th AZ (AZs sorted by name)."""
    i = slot(region)
    if i is None:
        raise KeyError(region)
    if i == 0:  # us-east-1: the /20s 1..6 of the /16 (block 0 holds 127.0.0.1)
        return str(ipaddress.IPv4Network((int(lab_net.network_address) + (zone_index + 1) * 16 * 256, 20)))
    block = region_block(region, lab_net)
    prefix = 25 if nzones <= 4 else 26
    size = 1 << (32 - prefix)
    return str(ipaddress.IPv4Network((int(block.network_address) + zone_index * size, prefix)))


def mapping(lab_net: ipaddress.IPv4Network) -> list[dict[str, Any]]:
    """Every region's default subnets (for /lab-api/regions and the README)."""
    from moto.ec2.models.availability_zones_and_regions import RegionsAndZonesBackend

    out = []
    for r in known_regions():
        zones = sorted(z.name for z in RegionsAndZonesBackend.zones[r])
        out.append({"region": r, "slot": slot(r), "vpc": str(lab_net),
                    "subnets": {z: default_subnet_cidr(r, j, len(zones), lab_net) for j, z in enumerate(zones)}})
    return out


# ----------------------------------------------------------------- base images


def localize(ami_id: str, region: str) -> str:
    """The id a base image has in `region` (same id in us-east-1)."""
    i = slot(region)
    if not i:
        return ami_id
    if len(ami_id) == 21 and ami_id.startswith("ami-"):
        return f"{ami_id[:10]}{i:03x}{ami_id[13:]}"
    return "ami-" + hashlib.sha256(f"{region}/{ami_id}".encode()).hexdigest()[:17]


def catalogue_for(region: str, catalogue: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The base catalogue (moto's format) with the region's ids."""
    out = []
    for img in catalogue:
        img = dict(img)
        img["ami_id"] = localize(img["ami_id"], region)
        out.append(img)
    return out


def all_base_ids(base_users: dict[str, str]) -> dict[str, str]:
    """base AMI id (every region's) -> default user."""
    out = dict(base_users)
    for r in known_regions():
        for ami_id, user in base_users.items():
            out[localize(ami_id, r)] = user
    return out


# ------------------------------------------------------------- unknown regions


class RegionGate:
    """Answers EC2 / Auto Scaling / SSM calls signed for a region the lab does not serve
    as AWS does (moto raised KeyError: HTTP 500): the credential scope names no region."""

    SERVICES = ("ec2", "autoscaling", "ssm")

    def __init__(self, app: Any):
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Any):
        path = environ.get("PATH_INFO", "")
        if path.rstrip("/") == "/lab-api/regions":
            import json
            import os

            net = ipaddress.ip_network(os.environ.get("LAB_VPC_CIDR", "127.0.0.0/16"))
            data = json.dumps({"regions": mapping(net)}, indent=1).encode()
            start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
            return [data]
        if path.rstrip("/") == "/lab-api/deregistration-cooldown" and environ.get("REQUEST_METHOD") == "POST":
            # test hook: end an image's 24 h deregistration-protection cooldown now
            import json

            from .distribution import end_cooldown

            n = int(environ.get("CONTENT_LENGTH") or 0)
            req = json.loads(environ["wsgi.input"].read(n) or b"{}")
            try:
                body, status = end_cooldown(req["image_id"], req.get("region", US_EAST_1)), "200 OK"
            except KeyError as e:
                body, status = {"error": f"no such image: {e}"}, "404 Not Found"
            data = json.dumps(body).encode()
            start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
            return [data]
        if not path.startswith(("/lab-api/", "/moto-api/")) and "HTTP_AUTHORIZATION" in environ:
            from .faults import error_response, identify

            call = identify(environ)
            if call is not None and call.service in self.SERVICES and not is_known(call.region):
                msg = f"Credential should be scoped to a valid region, not '{call.region}'. "
                if call.protocol == "json":
                    status, code = 400, "InvalidSignatureException"
                else:
                    status, code = 403, "SignatureDoesNotMatch"
                st, headers, body = error_response(call, status, code, msg)
                start_response(st, headers)
                return [body]
        return self.app(environ, start_response)
