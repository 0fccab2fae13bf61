#!/usr/bin/env python3
"""The bake lab server: moto (pinned) + the lab's EC2 fixes + the instance agent, one process.

    labserver.py --lab-dir .lab --port 4566

Binds 127.0.0.1 only. Besides moto's own endpoints it serves:
    GET  /lab-api/status              sandboxes, images, layers (JSON)
    POST /lab-api/exec                {"instance_id", "command", "env"?, "timeout"?, "user"?}
                                      -> {"code", "stdout", "stderr"}   (internal)
    GET  /lab-api/wait/<instance-id>  waits until the instance's sshd is up (or failed)
    POST /lab-api/unhealthy-image     {"image_id", "unhealthy"?: true} instances from it fail
                                      instance-refresh health checks (lab/refresh.py)
    /lab-api/faults, /lab-api/faults/profile, /lab-api/calls, /lab-api/instance-state
                                      injected faults and call counts (lab/faults.py)
    GET|POST /lab-api/profile         {"profile": "instant"|"realistic", "time_scale"?: 0.1}
                                      (lab/timing.py; env LAB_PROFILE, LAB_TIME_SCALE)
    GET  /lab-api/leftovers           what is left in the lab's AWS (lab/leftovers.py)
    GET  /lab-api/regions             every region's default VPC and subnets (lab/regions.py)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def _write_catalogue(lab_dir: Path) -> tuple[dict[str, str], list[dict]]:
    """Base AMIs: moto's catalogue format, plus the lab-only `lab_default_user` key."""
    src = json.loads((HERE / "base-images.json").read_text())
    users: dict[str, str] = {}
    out = []
    for img in src:
        img = dict(img)
        users[img["ami_id"]] = img.pop("lab_default_user", "admin")
        out.append(img)
    path = lab_dir / "amis.json"
    path.write_text(json.dumps(out, indent=1))
    os.environ["MOTO_AMIS_PATH"] = str(path)
    os.environ["MOTO_EC2_LOAD_DEFAULT_AMIS"] = "false"
    return users, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lab-dir", required=True)
    ap.add_argument("--port", type=int, default=int(os.environ.get("LAB_PORT", "4566")))
    args = ap.parse_args()

    lab_dir = Path(args.lab_dir).resolve()
    lab_dir.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("werkzeug").setLevel(logging.WARNING)

    # must be set before moto is imported
    base_users, base_images = _write_catalogue(lab_dir)
    os.environ.setdefault("MOTO_ENABLE_AMI_VALIDATION", "true")
    os.environ.setdefault("MOTO_ENABLE_KEYPAIR_VALIDATION", "true")
    os.environ["MOTO_PORT"] = str(args.port)

    from werkzeug.serving import make_server

    from lab.agent import Lab
    from lab import patches
    from lab.wsgi import LabApp

    lab = Lab(lab_dir)
    lab.prepare()
    from lab import timing

    timing.install_early(lab)  # realistic profile: stopping / shutting-down (under the patches)
    from lab import shutdown

    shutdown.install()  # an OS power-off's state reason, set atomically (lab/shutdown.py)
    patches.install(lab, base_users, base_images)
    from lab import ssm as lab_ssm

    lab_ssm.install(lab)  # SSM Run Command executes in the sandboxes (lab/ssm.py)
    from lab import refresh

    refresh.install(lab)  # Auto Scaling instance refresh, DeleteLaunchTemplateVersions
    timing.install(lab)  # realistic profile: pending, SYN drop, image and profile delays
    from lab import faults, strict

    # after timing: strict's checks (EC2's own error wording) run first
    strict.install()  # EC2's rules moto lacks, always on (lab/strict.py)
    faults.install()  # resource birth times for the visibility lag (lab/faults.py)
    from lab import distribution, regions

    distribution.install()  # CopyImage across regions, sharing, deprecation, protection (lab/distribution.py)

    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

    moto_app = DomainDispatcherApplication(create_backend_app)
    app = faults.FaultApp(regions.RegionGate(LabApp(moto_app, lab)))  # unknown regions: lab/regions.py  # LAB_FAULTS, /lab-api/faults, /lab-api/calls
    server = make_server("127.0.0.1", args.port, app, threaded=True)

    stopping = threading.Event()

    def on_signal(signum, frame):  # noqa: ARG001
        if stopping.is_set():
            return
        stopping.set()
        logging.info("signal %s: stopping sandboxes", signum)
        try:
            lab.shutdown()
        finally:
            os._exit(0)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    logging.info("bake lab listening on http://127.0.0.1:%s (lab dir %s)", args.port, lab_dir)
    try:
        server.serve_forever()
    finally:
        lab.shutdown()


if __name__ == "__main__":
    main()
