"""WSGI front: the lab's own /lab-api/ endpoints, everything else goes to moto."""

from __future__ import annotations

import base64
import json
from typing import Any

from .agent import Lab, LabError


class LabApp:
    def __init__(self, moto_app: Any, lab: Lab):
        self.moto_app = moto_app
        self.lab = lab

    def __call__(self, environ: dict[str, Any], start_response: Any):
        path = environ.get("PATH_INFO", "")
        if path.startswith("/lab-api/"):
            try:
                code, body = self.handle(environ, path[len("/lab-api/"):])
            except LabError as e:
                code, body = 409, {"error": str(e)}
            except Exception as e:  # noqa: BLE001
                code, body = 500, {"error": f"{type(e).__name__}: {e}"}
            data = json.dumps(body, indent=1).encode()
            start_response(
                f"{code} {'OK' if code == 200 else 'Error'}",
                [("Content-Type", "application/json"), ("Content-Length", str(len(data)))],
            )
            return [data]
        return self.moto_app(environ, start_response)

    def handle(self, environ: dict[str, Any], route: str) -> tuple[int, Any]:
        method = environ.get("REQUEST_METHOD", "GET")
        if route == "status":
            return 200, self.lab.status()
        if route == "ping":
            return 200, {"ok": True}
        if route.startswith("wait/"):
            sb = self.lab.wait_ready(route[len("wait/"):], timeout=30)
            return 200, sb.info()
        if route == "exec" and method == "POST":
            n = int(environ.get("CONTENT_LENGTH") or 0)
            req = json.loads(environ["wsgi.input"].read(n) or b"{}")
            stdin = base64.b64decode(req["stdin_b64"]) if req.get("stdin_b64") else None
            code, out, err = self.lab.exec_in_instance(
                req["instance_id"],
                req["command"],
                env=req.get("env"),
                timeout=req.get("timeout"),
                user=req.get("user"),
                stdin=stdin,
                cwd=req.get("cwd"),
            )
            return 200, {
                "code": code,
                "stdout": out.decode("utf-8", "replace"),
                "stderr": err.decode("utf-8", "replace"),
            }
        if route == "unhealthy-image" and method == "POST":
            # instances launched from this image fail instance-refresh health checks
            n = int(environ.get("CONTENT_LENGTH") or 0)
            req = json.loads(environ["wsgi.input"].read(n) or b"{}")
            return 200, self.lab.refreshes.set_unhealthy(req["image_id"], bool(req.get("unhealthy", True)))
        if route == "profile":  # realistic timing (lab/timing.py)
            if method == "POST":
                n = int(environ.get("CONTENT_LENGTH") or 0)
                req = json.loads(environ["wsgi.input"].read(n) or b"{}")
                try:
                    return 200, self.lab.timing.set(req.get("profile"), req.get("time_scale"))
                except ValueError as e:
                    return 400, {"error": str(e)}
            return 200, self.lab.timing.info()
        if route == "leftovers":
            from .leftovers import report

            return 200, report(self.lab)
        return 404, {"error": f"no such lab endpoint: {method} /lab-api/{route}"}
