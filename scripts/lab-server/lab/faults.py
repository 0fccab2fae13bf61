"""Faults: the lab answers like an AWS that throttles, fails, loses responses and lags.

A WSGI layer in front of the lab (`FaultApp`) sees every AWS call, identifies its service and
action, counts it, and may answer with an error in that service's own protocol instead of (or,
for a lost response, after) carrying it out. `/lab-api/` and `/moto-api/` are never faulted.

Random mode (`LAB_FAULTS=hostile`, read at server start, or switched at run time):

    LAB_FAULT_SEED      seed of the random choices (default 11)
    LAB_FAULT_BUCKETS   1 (default): EC2's per-action token buckets (RunInstances 5, +2/s;
                        CreateTags 100, +10/s; Describe*/Get*/List* 100, +20/s; other
                        mutating actions 50, +5/s); a call on an empty bucket is throttled
    LAB_FAULT_THROTTLE  extra throttling probability per call (default 0.02)
    LAB_FAULT_5XX       probability of a 5xx before the call is carried out (default 0.03)
    LAB_FAULT_LOST      probability, per mutating call, that it IS carried out but the client
                        gets a 500 InternalError (a lost response; default 0.03)
    LAB_FAULT_LAG       max visibility lag in seconds (default 3): a resource created less than
                        its lag ago (uniform in [LAB_FAULT_LAG_MIN (0), LAB_FAULT_LAG] per
                        resource, times LAB_TIME_SCALE if set) is absent from Describe* calls:
                        asked for by id -> Invalid…ID.NotFound / Invalid…NotFound; in a listing
                        or filtered query -> left out. Instances, images, snapshots, security
                        groups, key pairs.

Lab API (JSON):

    POST   /lab-api/faults          {"rules": [rule, ...]} (or one rule, or a list) -> {"rules": [...]}
    GET    /lab-api/faults          {"rules": [rule + "id", "fired", "remaining"], "profile": {...},
                                     "random": {"throttle": n, "5xx": n, "lost": n, "hidden": n}}
    DELETE /lab-api/faults          clears all rules
    POST   /lab-api/faults/profile  {"faults": "hostile"|"off", "seed"?, "buckets"?, "throttle"?,
                                     "5xx"?, "lost"?, "lag"?, "lag_min"?} -> the profile
    GET    /lab-api/calls           {"calls": {"ec2:RunInstances": n, ...}, "executed": {...},
                                     "faulted": {...}, "total": n}
    DELETE /lab-api/calls           zeroes the counters
    POST   /lab-api/instance-state  {"instance_id", "state", "region"?} test hook: set moto's state

A rule:

    {"service": "ec2",                  # ec2 | autoscaling | ssm | s3 | ... ("*" = any)
     "action": "CreateImage",           # API action name ("*" = any); S3: PutObject, GetObject, ...
     "params": {"InstanceId": "i-…", "Name": {"regex": "^bake-"}},   # optional, all must match
     "when": "before" | "after",        # after = the call is carried out, the response is lost
     "kind": "throttle" | "5xx" | "lost" | "error",  # fills in status/code/message defaults
     "status": 503, "code": "RequestLimitExceeded", "message": "Request limit exceeded.",
     "times": 1,                        # fires this often, then expires (null = forever)
     "skip": 0}                         # let this many matching calls through first

Parameters match the request's own names: EC2/Auto Scaling query parameters (a list parameter
`InstanceId` matches `InstanceId.1`, `InstanceId.2`, …), SSM's top-level JSON keys, S3's
`Bucket` and `Key`. A value is an exact string or {"regex": "..."} (re.search).
Every call is counted whether or not it is faulted ("calls"); "executed" counts the calls
carried out (including lost responses); "faulted" those answered with an injected error.
"""

from __future__ import annotations

import io
import json
import os
import random
import re
import threading
import time
import urllib.parse
import uuid
from collections import Counter
from typing import Any

# ------------------------------------------------------------ request identification


class Call:
    __slots__ = ("service", "action", "params", "region", "protocol")

    def __init__(self, service: str, action: str, params: dict[str, Any], region: str, protocol: str):
        self.service, self.action, self.params, self.region, self.protocol = service, action, params, region, protocol

    @property
    def key(self) -> str:
        return f"{self.service}:{self.action}"

    @property
    def mutating(self) -> bool:
        if self.protocol == "s3":
            return self.action.startswith(("Put", "Delete", "Create", "Copy", "Complete", "Upload", "Abort"))
        return not self.action.startswith(("Describe", "Get", "List", "Search"))


_CRED = re.compile(r"Credential=[^/]+/\d{8}/([^/]+)/([^/]+)/aws4_request")
_S3_SUBRESOURCES = {
    "tagging": "Tagging", "acl": "Acl", "policy": "Policy", "versioning": "Versioning",
    "lifecycle": "LifecycleConfiguration", "location": "Location", "cors": "Cors",
}


def _s3_action(method: str, path: str, query: dict[str, list[str]]) -> tuple[str, dict[str, str]]:
    parts = urllib.parse.unquote(path).lstrip("/").split("/", 1)
    bucket = parts[0] if parts and parts[0] else ""
    key = parts[1] if len(parts) > 1 and parts[1] else ""
    params = {k: v for k, v in (("Bucket", bucket), ("Key", key)) if v}
    sub = next((_S3_SUBRESOURCES[q] for q in query if q in _S3_SUBRESOURCES), "")
    verb = {"GET": "Get", "PUT": "Put", "DELETE": "Delete", "HEAD": "Head", "POST": "Post"}.get(method, method)
    if not bucket:
        return "ListBuckets", params
    if not key:
        if sub:
            return f"{verb}Bucket{sub}", params
        if method == "GET":
            return ("ListObjectsV2" if query.get("list-type") == ["2"] else
                    "ListMultipartUploads" if "uploads" in query else "ListObjects"), params
        if method == "POST" and "delete" in query:
            return "DeleteObjects", params
        return {"PUT": "CreateBucket", "DELETE": "DeleteBucket", "HEAD": "HeadBucket"}.get(method, f"{verb}Bucket"), params
    if sub:
        return f"{verb}Object{sub}", params
    if method == "POST":
        return ("CreateMultipartUpload" if "uploads" in query else
                "CompleteMultipartUpload" if "uploadId" in query else "PostObject"), params
    if method == "PUT":
        if "partNumber" in query:
            return "UploadPart", params
        return "PutObject", params
    if method == "DELETE" and "uploadId" in query:
        return "AbortMultipartUpload", params
    return {"GET": "GetObject", "DELETE": "DeleteObject", "HEAD": "HeadObject"}.get(method, f"{verb}Object"), params


def identify(environ: dict[str, Any]) -> Call | None:
    """The AWS call a request makes, or None (not an AWS API request). Reads a form body and
    puts it back, so the app behind sees the request unchanged."""
    method = environ.get("REQUEST_METHOD", "GET")
    qs = environ.get("QUERY_STRING", "")
    query = urllib.parse.parse_qs(qs, keep_blank_values=True)
    m = _CRED.search(environ.get("HTTP_AUTHORIZATION", ""))
    scope = m.groups() if m else None
    if scope is None and query.get("X-Amz-Credential"):  # presigned URL
        parts = query["X-Amz-Credential"][0].split("/")
        scope = (parts[2], parts[3]) if len(parts) >= 5 else None
    region, service = scope if scope else ("us-east-1", "")
    target = environ.get("HTTP_X_AMZ_TARGET", "")
    if target:
        body = _peek_body(environ)
        try:
            params = json.loads(body or b"{}")
        except ValueError:
            params = {}
        prefix = target.split(".", 1)[0]
        service = service or {"AmazonSSM": "ssm"}.get(prefix, prefix.lower())
        return Call(service, target.rsplit(".", 1)[-1], params if isinstance(params, dict) else {}, region, "json")
    if "Action" in query:
        params = {k: v[0] for k, v in query.items()}
    elif method == "POST" and "x-www-form-urlencoded" in environ.get("CONTENT_TYPE", ""):
        params = {k: v[0] for k, v in urllib.parse.parse_qs(_peek_body(environ).decode("utf-8", "replace"),
                                                            keep_blank_values=True).items()}
    else:
        params = {}
    if "Action" in params:
        service = service or "ec2"
        return Call(service, params["Action"], params, region, "ec2" if service == "ec2" else "query")
    if service == "s3":
        action, sparams = _s3_action(method, environ.get("PATH_INFO", "/"), query)
        return Call("s3", action, sparams, region, "s3")
    return None


def _peek_body(environ: dict[str, Any]) -> bytes:
    try:
        n = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        n = 0
    body = environ["wsgi.input"].read(n) if n > 0 else b""
    environ["wsgi.input"] = io.BytesIO(body)
    environ["CONTENT_LENGTH"] = str(len(body))
    return body


# ---------------------------------------------------------------- error answers

# kind -> protocol -> (status, code, message)
DEFAULTS: dict[str, dict[str, tuple[int, str, str]]] = {
    "throttle": {
        "ec2": (503, "RequestLimitExceeded", "Request limit exceeded."),
        "query": (400, "Throttling", "Rate exceeded"),
        "json": (400, "ThrottlingException", "Rate exceeded"),
        "s3": (503, "SlowDown", "Please reduce your request rate."),
    },
    "5xx": {
        "ec2": (500, "InternalError", "An internal error has occurred"),
        "query": (500, "InternalFailure", "An internal error occurred."),
        "json": (500, "InternalServerError", "An internal error occurred."),
        "s3": (500, "InternalError", "We encountered an internal error. Please try again."),
    },
}
DEFAULTS["lost"] = DEFAULTS["5xx"]
DEFAULTS["error"] = DEFAULTS["5xx"]

_QUERY_NS = {"autoscaling": "http://autoscaling.amazonaws.com/doc/2011-01-01/",
             "iam": "https://iam.amazonaws.com/doc/2010-05-08/", "sts": "https://sts.amazonaws.com/doc/2011-06-15/"}


def _xml_escape(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def error_response(call: Call, status: int, code: str, message: str) -> tuple[str, list[tuple[str, str]], bytes]:
    """An error as the service itself sends it (what the SDKs parse)."""
    rid = str(uuid.uuid4())
    reason = {400: "Bad Request", 403: "Forbidden", 404: "Not Found", 500: "Internal Server Error",
              503: "Service Unavailable"}.get(status, "Error")
    msg = _xml_escape(message)
    if call.protocol == "json":
        body = json.dumps({"__type": code, "message": message}).encode()
        headers = [("Content-Type", "application/x-amz-json-1.1"), ("x-amzn-ErrorType", code),
                   ("x-amzn-RequestId", rid)]
    elif call.protocol == "ec2":
        body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>{code}</Code>'
                f"<Message>{msg}</Message></Error></Errors><RequestID>{rid}</RequestID></Response>").encode()
        headers = [("Content-Type", "text/xml;charset=UTF-8")]
    elif call.protocol == "s3":
        body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{msg}</Message>'
                f"<RequestId>{rid[:16].upper()}</RequestId><HostId>lab</HostId></Error>").encode()
        headers = [("Content-Type", "application/xml"), ("x-amz-request-id", rid[:16].upper())]
        if call.action.startswith("Head"):
            body = b""
    else:
        kind = "Receiver" if status >= 500 else "Sender"
        ns = _QUERY_NS.get(call.service, f"https://{call.service}.amazonaws.com/")
        body = (f'<ErrorResponse xmlns="{ns}"><Error><Type>{kind}</Type><Code>{code}</Code>'
                f"<Message>{msg}</Message></Error><RequestId>{rid}</RequestId></ErrorResponse>").encode()
        headers = [("Content-Type", "text/xml"), ("x-amzn-RequestId", rid)]
    headers.append(("Content-Length", str(len(body))))
    return f"{status} {reason}", headers, body


# ------------------------------------------------------------------------ rules


class Rule:
    def __init__(self, spec: dict[str, Any], rid: int):
        unknown = set(spec) - {"service", "action", "params", "when", "kind", "status", "code", "message",
                               "times", "skip", "id"}
        if unknown:
            raise ValueError(f"unknown rule keys: {sorted(unknown)}")
        self.id = rid
        self.service = spec.get("service", "*")
        self.action = spec.get("action", "*")
        self.params = spec.get("params") or {}
        self.kind = spec.get("kind") or ("lost" if spec.get("when") == "after" else "error")
        if self.kind not in DEFAULTS:
            raise ValueError(f"kind must be one of {sorted(DEFAULTS)}")
        self.when = spec.get("when") or ("after" if self.kind == "lost" else "before")
        if self.when not in ("before", "after"):
            raise ValueError('when must be "before" or "after"')
        self.status, self.code, self.message = spec.get("status"), spec.get("code"), spec.get("message")
        self.times = spec.get("times", 1)
        self.skip = int(spec.get("skip") or 0)
        self.matched = 0
        self.fired = 0
        for v in self.params.values():
            if isinstance(v, dict):
                re.compile(v["regex"])

    def expired(self) -> bool:
        return self.times is not None and self.fired >= int(self.times)

    def matches(self, call: Call) -> bool:
        if self.service not in ("*", call.service) or self.action not in ("*", call.action):
            return False
        for name, want in self.params.items():
            values = [v for k, v in call.params.items() if k == name or re.fullmatch(re.escape(name) + r"\.\d+", k)]
            values = [json.dumps(v) if isinstance(v, (dict, list)) and not isinstance(v, str) else str(v)
                      for v in values for v in (v if isinstance(v, list) else [v])]
            if isinstance(want, dict):
                if not any(re.search(want["regex"], v) for v in values):
                    return False
            elif str(want) not in values:
                return False
        return True

    def answer(self, call: Call) -> tuple[int, str, str]:
        status, code, message = DEFAULTS[self.kind].get(call.protocol, DEFAULTS[self.kind]["query"])
        return int(self.status or status), self.code or code, self.message or message

    def info(self) -> dict[str, Any]:
        return {"id": self.id, "service": self.service, "action": self.action, "params": self.params,
                "when": self.when, "kind": self.kind, "status": self.status, "code": self.code,
                "message": self.message, "times": self.times, "skip": self.skip, "matched": self.matched,
                "fired": self.fired,
                "remaining": None if self.times is None else max(0, int(self.times) - self.fired)}


# ------------------------------------------------------------------- the profile


def _env_float(name: str, default: float) -> float:
    v = os.environ.get(name)
    return float(v) if v not in (None, "") else default


class Bucket:
    def __init__(self, size: float, refill: float):
        self.size, self.refill, self.tokens, self.at = size, refill, size, time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.size, self.tokens + (now - self.at) * self.refill)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


def ec2_bucket_of(action: str) -> tuple[float, float]:
    """EC2's request token bucket (size, refill per second) for an action (EC2 API reference,
    "Request throttling"; the figures of /work/shared/field-notes.md)."""
    if action == "RunInstances":
        return 5, 2
    if action == "CreateTags":
        return 100, 10
    if action.startswith(("Describe", "Get", "List", "Search")):
        return 100, 20
    return 50, 5


class Faults:
    """Rules, the random profile, counters and the visibility-lag clock; one per server."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.rules: list[Rule] = []
        self.next_id = 1
        self.calls: Counter[str] = Counter()
        self.executed: Counter[str] = Counter()
        self.faulted: Counter[str] = Counter()
        self.random_fired: Counter[str] = Counter()
        self.time_scale = _env_float("LAB_TIME_SCALE", 1.0)
        self.set_profile({
            "faults": os.environ.get("LAB_FAULTS", "off") or "off",
            "seed": int(os.environ.get("LAB_FAULT_SEED") or 11),
            "buckets": os.environ.get("LAB_FAULT_BUCKETS", "1") not in ("0", "false", "no"),
            "throttle": _env_float("LAB_FAULT_THROTTLE", 0.02),
            "5xx": _env_float("LAB_FAULT_5XX", 0.03),
            "lost": _env_float("LAB_FAULT_LOST", 0.03),
            "lag": _env_float("LAB_FAULT_LAG", 3.0),
            "lag_min": _env_float("LAB_FAULT_LAG_MIN", 0.0),
        })

    # ---- profile
    def set_profile(self, p: dict[str, Any]) -> dict[str, Any]:
        cur = dict(getattr(self, "profile", {}))
        unknown = set(p) - {"faults", "seed", "buckets", "throttle", "5xx", "lost", "lag", "lag_min"}
        if unknown:
            raise ValueError(f"unknown profile keys: {sorted(unknown)}")
        cur.update(p)
        if cur["faults"] not in ("hostile", "off"):
            raise ValueError('faults must be "hostile" or "off"')
        for k in ("throttle", "5xx", "lost"):
            cur[k] = float(cur[k])
            if not 0 <= cur[k] <= 1:
                raise ValueError(f"{k} is a probability (0..1)")
        cur["lag"], cur["lag_min"] = float(cur["lag"]), float(cur["lag_min"])
        cur["seed"], cur["buckets"] = int(cur["seed"]), bool(cur["buckets"])
        with self.lock:
            self.profile = cur
            self.rng = random.Random(cur["seed"])
            self.buckets: dict[tuple[str, str], Bucket] = {}
        return self.info_profile()

    def info_profile(self) -> dict[str, Any]:
        return dict(self.profile, time_scale=self.time_scale)

    @property
    def hostile(self) -> bool:
        return self.profile["faults"] == "hostile"

    # ---- rules
    def add_rules(self, specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        with self.lock:
            new = []
            for s in specs:
                new.append(Rule(s, self.next_id))
                self.next_id += 1
            self.rules.extend(new)
            return [r.info() for r in new]

    def clear_rules(self) -> None:
        with self.lock:
            self.rules.clear()

    def info(self) -> dict[str, Any]:
        with self.lock:
            return {"rules": [r.info() for r in self.rules], "profile": self.info_profile(),
                    "random": dict(self.random_fired)}

    def counts(self) -> dict[str, Any]:
        with self.lock:
            return {"calls": dict(self.calls), "executed": dict(self.executed), "faulted": dict(self.faulted),
                    "total": sum(self.calls.values())}

    def reset_counts(self) -> None:
        with self.lock:
            self.calls.clear(), self.executed.clear(), self.faulted.clear(), self.random_fired.clear()

    # ---- deciding
    def _rule_for(self, call: Call, when: str) -> Rule | None:
        for r in self.rules:
            if r.when == when and not r.expired() and r.matches(call):
                r.matched += 1
                if r.matched <= r.skip:
                    continue
                r.fired += 1
                return r
        return None

    def before(self, call: Call) -> tuple[int, str, str] | None:
        """An error to answer instead of carrying the call out, or None."""
        with self.lock:
            self.calls[call.key] += 1
            r = self._rule_for(call, "before")
            if r is not None:
                self.faulted[call.key] += 1
                return r.answer(call)
            if not self.hostile:
                return None
            p = self.profile
            throttled = False
            if p["buckets"] and call.service == "ec2":
                b = self.buckets.get((call.region, call.action))
                if b is None:
                    b = self.buckets[(call.region, call.action)] = Bucket(*ec2_bucket_of(call.action))
                throttled = not b.take()
            if throttled or self.rng.random() < p["throttle"]:
                self.random_fired["throttle"] += 1
                self.faulted[call.key] += 1
                return DEFAULTS["throttle"][call.protocol]
            if self.rng.random() < p["5xx"]:
                self.random_fired["5xx"] += 1
                self.faulted[call.key] += 1
                return DEFAULTS["5xx"][call.protocol]
            return None

    def after(self, call: Call) -> tuple[int, str, str] | None:
        """The call was carried out: an error to answer instead of its response (lost), or None."""
        with self.lock:
            self.executed[call.key] += 1
            r = self._rule_for(call, "after")
            if r is not None:
                self.faulted[call.key] += 1
                return r.answer(call)
            if self.hostile and call.mutating and self.rng.random() < self.profile["lost"]:
                self.random_fired["lost"] += 1
                self.faulted[call.key] += 1
                return DEFAULTS["lost"][call.protocol]
            return None

    # ---- visibility lag
    def lag_active(self) -> bool:
        return self.hostile and self.profile["lag"] > 0

    def hidden(self, rid: str, born: float | None) -> bool:
        if born is None:
            return False
        p = self.profile
        lo, hi = min(p["lag_min"], p["lag"]), p["lag"]
        lag = (lo + random.Random(f"{p['seed']}/{rid}").random() * (hi - lo)) * self.time_scale
        if time.monotonic() - born < lag:
            with self.lock:
                self.random_fired["hidden"] += 1
            return True
        return False


FAULTS = Faults()
_ctx = threading.local()  # .lag: this thread is serving a client's Describe* call


def describing() -> bool:
    return bool(getattr(_ctx, "lag", False))


# ------------------------------------------------------------------------- WSGI


class FaultApp:
    def __init__(self, app: Any, faults: Faults = FAULTS):
        self.app = app
        self.faults = faults

    def __call__(self, environ: dict[str, Any], start_response: Any):
        path = environ.get("PATH_INFO", "")
        if path.startswith("/lab-api/"):
            route = path[len("/lab-api/"):].rstrip("/")
            if route in ("faults", "faults/profile", "calls", "instance-state"):
                return self._api(environ, start_response, route)
            return self.app(environ, start_response)
        if path.startswith("/moto-api/"):
            return self.app(environ, start_response)
        call = identify(environ)
        if call is None:
            return self.app(environ, start_response)
        err = self.faults.before(call)
        if err is not None:
            return self._error(call, err, start_response)
        _ctx.lag = call.action.startswith("Describe") and self.faults.lag_active()
        try:
            captured: dict[str, Any] = {}

            def capture(status, headers, exc_info=None):
                captured["status"], captured["headers"] = status, headers
                return lambda data: captured.setdefault("written", []).append(data)

            result = self.app(environ, capture)
            try:
                body = captured.pop("written", []) + list(result)
            finally:
                if hasattr(result, "close"):
                    result.close()
        finally:
            _ctx.lag = False
        if captured.get("status", "").startswith("2"):
            err = self.faults.after(call)
            if err is not None:
                return self._error(call, err, start_response)
        else:
            with self.faults.lock:
                self.faults.executed[call.key] += 1
        start_response(captured["status"], captured["headers"])
        return body

    def _error(self, call: Call, err: tuple[int, str, str], start_response: Any):
        status, headers, body = error_response(call, *err)
        start_response(status, headers)
        return [body]

    def _api(self, environ: dict[str, Any], start_response: Any, route: str):
        method = environ.get("REQUEST_METHOD", "GET")
        try:
            req = None
            if method == "POST":
                n = int(environ.get("CONTENT_LENGTH") or 0)
                req = json.loads(environ["wsgi.input"].read(n) or b"{}")
            code, out = 200, self._route(method, route, req)
        except (ValueError, KeyError, TypeError, re.error) as e:
            code, out = 400, {"error": f"{type(e).__name__}: {e}"}
        if out is None:
            code, out = 404, {"error": f"no such lab endpoint: {method} /lab-api/{route}"}
        data = json.dumps(out, indent=1).encode()
        start_response(f"{code} {'OK' if code == 200 else 'Error'}",
                       [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
        return [data]

    def _route(self, method: str, route: str, req: Any) -> Any:
        f = self.faults
        if route == "faults":
            if method == "GET":
                return f.info()
            if method == "DELETE":
                f.clear_rules()
                return f.info()
            if method == "POST":
                specs = req.get("rules", [req]) if isinstance(req, dict) else req
                return {"rules": f.add_rules(list(specs))}
        if route == "faults/profile":
            if method == "GET":
                return f.info_profile()
            if method == "POST":
                return f.set_profile(req or {})
        if route == "calls":
            if method == "GET":
                return f.counts()
            if method == "DELETE":
                f.reset_counts()
                return f.counts()
        if route == "instance-state" and method == "POST":
            from moto.core import DEFAULT_ACCOUNT_ID
            from moto.ec2.models import ec2_backends

            from .strict import force_state

            inst = ec2_backends[DEFAULT_ACCOUNT_ID][req.get("region", "us-east-1")].get_instance(req["instance_id"])
            force_state(inst, req["state"])
            return {"instance_id": inst.id, "state": inst._state.name}
        return None


# ----------------------------------------------------------- visibility lag (model)


def install() -> None:
    """Stamp resources with their creation time and hide young ones from client Describe*
    calls while lag is on (only inside a request `FaultApp` marked as a Describe)."""
    from moto.ec2.exceptions import EC2ClientError, InvalidAMIIdError, InvalidInstanceIdError
    from moto.ec2.models import amis as m_amis
    from moto.ec2.models import elastic_block_store as m_ebs
    from moto.ec2.models import instances as m_inst
    from moto.ec2.models import key_pairs as m_keys
    from moto.ec2.models import security_groups as m_sg

    from .strict import _wrap

    def stamp(obj: Any) -> Any:
        obj._lab_born = time.monotonic()
        return obj

    def young(obj: Any, rid: str | None = None) -> bool:
        return FAULTS.hidden(rid or obj.id, getattr(obj, "_lab_born", None))

    @_wrap(m_inst.InstanceBackend, "run_instances")
    def run_instances(orig, self, *a, **kw):
        resv = orig(self, *a, **kw)
        for i in resv.instances:
            if not hasattr(i, "_lab_born"):  # a repeated ClientToken returns the old ones
                stamp(i)
        return resv

    for name in ("create_image", "copy_image", "register_image"):
        @_wrap(m_amis.AmiBackend, name)
        def make_image(orig, self, *a, **kw):
            ami = stamp(orig(self, *a, **kw))
            snap = getattr(ami, "ebs_snapshot", None)
            if snap is not None and not hasattr(snap, "_lab_born"):
                stamp(snap)
            return ami

    @_wrap(m_ebs.EBSBackend, "create_snapshot")
    def create_snapshot(orig, self, *a, **kw):
        return stamp(orig(self, *a, **kw))

    @_wrap(m_sg.SecurityGroupBackend, "create_security_group")
    def create_security_group(orig, self, *a, **kw):
        return stamp(orig(self, *a, **kw))

    for name in ("create_key_pair", "import_key_pair"):
        @_wrap(m_keys.KeyPairBackend, name)
        def make_key(orig, self, *a, **kw):
            return stamp(orig(self, *a, **kw))

    def instance_index(backend: Any) -> dict[str, Any]:
        return {i.id: i for r in backend.reservations.values() for i in r.instances}

    @_wrap(m_inst.InstanceBackend, "get_reservations_by_instance_ids")
    def get_reservations_by_instance_ids(orig, self, instance_ids, filters=None):
        if describing():
            idx = instance_index(self)
            hidden = [i for i in instance_ids if i in idx and young(idx[i])]
            if hidden:
                raise InvalidInstanceIdError(hidden if len(hidden) > 1 else hidden[0])
        return orig(self, instance_ids, filters=filters)

    @_wrap(m_inst.InstanceBackend, "describe_instances")
    def describe_instances(orig, self, filters=None):
        out = orig(self, filters=filters)
        if not describing():
            return out
        kept = []
        for r in out:  # copies (moto's all_reservations): safe to trim
            r.instances = [i for i in r.instances if not young(i)]
            if r.instances:
                kept.append(r)
        return kept

    @_wrap(m_amis.AmiBackend, "describe_images")
    def describe_images(orig, self, ami_ids=None, filters=None, exec_users=None, owners=None):
        if describing() and ami_ids:
            hidden = [a for a in ami_ids if a in self.amis and young(self.amis[a])]
            if hidden:
                raise InvalidAMIIdError(hidden if len(hidden) > 1 else hidden[0])
        out = orig(self, ami_ids=ami_ids, filters=filters, exec_users=exec_users, owners=owners)
        return [a for a in out if not young(a)] if describing() else out

    @_wrap(m_ebs.EBSBackend, "describe_snapshots")
    def describe_snapshots(orig, self, snapshot_ids=None, filters=None):
        if describing() and snapshot_ids:
            hidden = [s for s in snapshot_ids if s in self.snapshots and young(self.snapshots[s])]
            if hidden:
                raise EC2ClientError("InvalidSnapshot.NotFound", f"The snapshot '{hidden[0]}' does not exist.")
        out = orig(self, snapshot_ids=snapshot_ids, filters=filters)
        return [s for s in out if not young(s)] if describing() else out

    @_wrap(m_sg.SecurityGroupBackend, "describe_security_groups")
    def describe_security_groups(orig, self, group_ids=None, groupnames=None, filters=None):
        if describing() and (group_ids or groupnames):
            wanted = set(group_ids or []) | set(groupnames or [])
            hidden = [g.id if g.id in wanted else g.name for gs in self.groups.values() for g in gs.values()
                      if (g.id in wanted or g.name in wanted) and young(g)]
            if hidden:
                raise EC2ClientError("InvalidGroup.NotFound", f"The security group '{hidden[0]}' does not exist")
        out = orig(self, group_ids=group_ids, groupnames=groupnames, filters=filters)
        return [g for g in out if not young(g)] if describing() else out

    @_wrap(m_keys.KeyPairBackend, "describe_key_pairs")
    def describe_key_pairs(orig, self, key_names, filters=None):
        if describing() and any(key_names):
            hidden = [k for k in key_names if k in self.key_pairs and young(self.key_pairs[k])]
            if hidden:
                raise EC2ClientError("InvalidKeyPair.NotFound", f"The key pair '{hidden[0]}' does not exist")
        out = orig(self, key_names, filters)
        return [k for k in out if not young(k)] if describing() else out
