"""Instance-initiated shutdown: `poweroff`, `halt`, `shutdown [-h] [now|+M|hh:mm]` (and
`shutdown -c`) or `systemctl poweroff|halt` inside an instance stop it -- or terminate it, when
its InstanceInitiatedShutdownBehavior is `terminate` -- as EC2 does when the OS powers off.

A sandbox has no init to power off, so the lab puts a small shim over `/usr/bin/systemctl`
(which `poweroff`, `halt` and `shutdown` are symlinks to on Debian) for the sandbox's lifetime
only (a bind mount from its /run: nothing lands on the disk or in an image). The shim asks the
lab over its API (`POST /lab-api/instance-shutdown/<id>`) and hands every other systemctl use
to the real binary. The state reason is EC2's `Client.InstanceInitiatedShutdown`.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger("lab.shutdown")

SHIM = "lab-systemctl"

_TEMPLATE = r"""#!/bin/bash
# lab: instance-initiated shutdown (scripts/lab-server/lab/shutdown.py)
API=http://127.0.0.1:@PORT@/lab-api/instance-shutdown/@IID@
PIDF=/run/lab-shutdown.pid
REAL=/run/lab-systemctl.real
off() {
  sync
  curl -fsS -m 10 -X POST "$API" >/dev/null 2>&1 ||
    python3 -c 'import sys, urllib.request as u; u.urlopen(u.Request(sys.argv[1], method="POST"), timeout=10)' "$API" >/dev/null 2>&1
  # like a real poweroff: does not return; the instance goes away under it
  sleep 120
  exit 1
}
case "${0##*/}" in
  poweroff|halt) off ;;
  shutdown)
    delay=0
    for a in "$@"; do
      case "$a" in
        -c) [ -f "$PIDF" ] && kill "$(cat "$PIDF")" 2>/dev/null; rm -f "$PIDF"; exit 0 ;;
        -r|--reboot) exec -a "$0" "$REAL" "$@" ;;
        now) delay=0 ;;
        +[0-9]*) delay=$(( ${a#+} * 60 )) ;;
        [0-9]*:[0-9]*) delay=$(( ( $(date -d "$a" +%s) - $(date +%s) + 86400 ) % 86400 )) ;;
        -*) ;;
        *) break ;;
      esac
    done
    if [ "$delay" -gt 0 ]; then
      [ -f "$PIDF" ] && kill "$(cat "$PIDF")" 2>/dev/null
      ( sleep "$delay"; off ) </dev/null >/dev/null 2>&1 &
      echo $! > "$PIDF"
      echo "Shutdown scheduled in ${delay}s, use 'shutdown -c' to cancel."
      exit 0
    fi
    off ;;
  systemctl)
    case "$1" in poweroff|halt) off ;; esac ;;
esac
exec -a "$0" "$REAL" "$@"
"""


_USER = "Client.UserInitiatedShutdown"
_OS = ("Client.InstanceInitiatedShutdown: Instance initiated shutdown", "Client.InstanceInitiatedShutdown")


def install() -> None:
    """Instance.state_reason becomes a property: for an instance whose OS powered off, the
    reason moto's stop/terminate write is EC2's `Client.InstanceInitiatedShutdown` in the same
    assignment (no Describe can see moto's in between); a start (moto writes an empty reason)
    ends that. Installed before any instance exists."""
    from moto.ec2.models.instances import Instance, StateReason

    def get(self: Any) -> Any:
        return self.__dict__.get("_lab_state_reason")

    def set_(self: Any, v: Any) -> None:
        code = getattr(v, "code", "")
        if not code:
            self.__dict__.pop("_lab_os_shutdown", None)
        elif code == _USER and self.__dict__.get("_lab_os_shutdown"):
            v = StateReason(*_OS)
        self.__dict__["_lab_state_reason"] = v

    Instance.state_reason = property(get, set_)


def provision(run_dir: Path, instance_id: str) -> None:
    """Writes the shim into the instance's run/ (sandbox-boot.sh mounts it)."""
    port = os.environ.get("MOTO_PORT", "4566")
    path = run_dir / SHIM
    path.write_text(_TEMPLATE.replace("@PORT@", port).replace("@IID@", instance_id))
    path.chmod(0o755)


def _find(instance_id: str) -> tuple[Any, Any] | None:
    from moto.ec2.models import ec2_backends

    for _account, regions in list(ec2_backends.items()):
        for _region, backend in list(regions.items()):
            inst = backend.get_instance_by_id(instance_id)
            if inst is not None:
                return backend, inst
    return None


def handle(instance_id: str) -> tuple[int, dict[str, Any]]:
    """POST /lab-api/instance-shutdown/<id>: the OS of that instance powered off."""
    found = _find(instance_id)
    if found is None:
        return 404, {"error": f"no instance {instance_id}"}
    backend, inst = found
    if inst.state != "running":
        return 409, {"error": f"{instance_id} is {inst.state}"}
    behaviour = inst.instance_initiated_shutdown_behavior or "stop"

    def act() -> None:
        # In a thread: stopping the instance kills the sandbox the request came from.
        try:
            # Marked before the call: moto's stop()/terminate() write their own reason, and a
            # Describe between that and a later fix-up would see "UserInitiatedShutdown".
            inst.__dict__["_lab_os_shutdown"] = True
            if behaviour == "terminate":
                backend.terminate_instances([instance_id])
            else:
                backend.stop_instances([instance_id])
            log.info("%s: instance-initiated shutdown -> %s", instance_id, behaviour)
        except Exception:  # noqa: BLE001
            log.exception("%s: instance-initiated shutdown failed", instance_id)

    threading.Thread(target=act, name=f"shutdown-{instance_id}", daemon=True).start()
    return 202, {"instance_id": instance_id, "behaviour": behaviour}
