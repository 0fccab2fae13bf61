"""Just enough of cloud-init's user-data handling for the lab.

Accepts what EC2 user data usually is:
  * ``#cloud-config`` YAML
  * ``#!...`` scripts (run once at first boot, as root)
  * MIME multipart (``Content-Type: multipart/mixed``) with ``text/cloud-config``
    and ``text/x-shellscript`` parts (other parts are ignored)
  * any of the above gzip-compressed

Returns a :class:`UserData` with the pieces the lab acts on.
"""

from __future__ import annotations

import email
import email.policy
import gzip
import shlex
from dataclasses import dataclass, field
from typing import Any

import yaml

HOST_KEY_TYPES = ("ed25519", "ecdsa", "rsa")


@dataclass
class UserData:
    # host key type -> (private PEM/OpenSSH text, public line or None)
    host_keys: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    authorized_keys: list[str] = field(default_factory=list)
    scripts: list[bytes] = field(default_factory=list)  # run once, in order
    runcmd: list[str] = field(default_factory=list)  # shell lines, run once after scripts
    errors: list[str] = field(default_factory=list)


def _apply_cloud_config(doc: Any, out: UserData) -> None:
    if not isinstance(doc, dict):
        out.errors.append("cloud-config is not a mapping")
        return
    keys = doc.get("ssh_keys") or {}
    if isinstance(keys, dict):
        for t in HOST_KEY_TYPES:
            priv = keys.get(f"{t}_private")
            if priv:
                out.host_keys[t] = (str(priv), keys.get(f"{t}_public"))
    auth = doc.get("ssh_authorized_keys") or []
    if isinstance(auth, str):
        auth = [auth]
    out.authorized_keys.extend(str(k).strip() for k in auth if str(k).strip())
    for item in doc.get("runcmd") or []:
        if isinstance(item, list):
            out.runcmd.append(shlex.join(str(x) for x in item))
        else:
            out.runcmd.append(str(item))


def _handle_part(payload: bytes, content_type: str | None, out: UserData) -> None:
    if payload[:2] == b"\x1f\x8b":
        payload = gzip.decompress(payload)
    head = payload.lstrip()[:64]
    if content_type in (None, "text/plain", "text/x-not-multipart"):
        if head.startswith(b"#cloud-config"):
            content_type = "text/cloud-config"
        elif head.startswith(b"#!"):
            content_type = "text/x-shellscript"
        elif head.lower().startswith((b"content-type:", b"mime-version:")):
            _parse_mime(payload, out)
            return
    if content_type == "text/cloud-config":
        try:
            _apply_cloud_config(yaml.safe_load(payload.decode("utf-8", "replace")), out)
        except yaml.YAMLError as e:
            out.errors.append(f"cloud-config: {e}")
    elif content_type == "text/x-shellscript":
        out.scripts.append(payload)
    elif content_type == "multipart/mixed":
        _parse_mime(payload, out)


def _parse_mime(payload: bytes, out: UserData) -> None:
    msg = email.message_from_bytes(payload, policy=email.policy.compat32)
    for part in msg.walk():
        if part.is_multipart():
            continue
        data = part.get_payload(decode=True) or b""
        _handle_part(data, part.get_content_type(), out)


def parse(raw: bytes | None) -> UserData:
    out = UserData()
    if raw:
        _handle_part(raw, None, out)
    return out
