"""The realistic workloads of benches/bench.py: bake vs Packer 1.6.6 with EC2's own delays.

On a lab with `LAB_PROFILE=realistic` (scripts/lab-server/lab/timing.py) a build's wall time is
mostly AWS: pending, the boot until sshd answers, stopping, the snapshot, shutting-down. What a
tool still wins or loses there is how soon it notices each change and what it does meanwhile.
So each run is split into the same phases for both tools, from the tools' own progress lines
(bake's `--plain` log, stamped to the millisecond; Packer's `-machine-readable` stdout, stamped
here as each line arrives: its own stamps have 1 s resolution), and a watcher polls the lab
(DescribeInstances, DescribeInstanceStatus, DescribeImages every WATCH_S) to know when each
change really happened: a phase then reads "AWS took X, the tool noticed it Y later".

After every run the lab's leftovers report (`scripts/lab leftovers --json`) must hold nothing
but the image the run made; the harness then removes that image and its snapshot and asserts
the report is empty. Both reports go into the results.
"""
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import datetime
from pathlib import Path

WATCH_S = 0.3          # the watcher's poll interval: its observations are late by <= this
PREFIX_S = 120         # the slow step standing for `apt-get upgrade`, at time scale 1

WORKLOADS = {
    "realistic-empty": dict(prefix=False, title="R1. empty recipe (realistic AWS latencies)"),
    "realistic-prefix": dict(prefix=True, title="R2. slow prefix step + changed final step"),
}

# Phases in build order. Each tool's phase starts at the first progress line matching its
# marker and lasts until the next phase's start (the first from process start, the last to exit).
PHASES = ["prepare", "launch", "wait for SSH", "provision", "stop", "image", "tags", "cleanup"]
BAKE_START = {
    "launch": r"launch: ",
    "wait for SSH": r"connect: ",
    "provision": r"(upload|step |tidy|reboot)",
    "stop": r"stop: ",
    "image": r"image: ",
    "cleanup": r"cleanup: ",
}
PACKER_START = {
    "launch": r"Launching a source AWS instance",
    "wait for SSH": r"Using ssh communicator to connect",
    "provision": r"Connected to SSH!",
    "stop": r"Stopping the source instance",
    "image": r"Creating AMI ",
    "tags": r"(Modifying attributes on AMI|Adding tags to AMI)",
    "cleanup": r"Terminating the source AWS instance",
}
# The line by which a tool shows it has noticed an AWS change, and the line of its request.
BAKE_SEEN = {
    "running": r"launch: \S+ running", "sshd": r"connect: connected",
    "stopped": r"stop: \S+ stopped", "available": r"image: \S+ available",
    "terminated": r"cleanup: terminated",
}
PACKER_SEEN = {
    "running": PACKER_START["wait for SSH"], "sshd": PACKER_START["provision"],
    "stopped": PACKER_START["image"], "available": PACKER_START["tags"],
    "terminated": r"Cleaning up any extra volumes",
}
BAKE_ASK = {"run": r"launch: \S+ pending", "stop": BAKE_START["stop"], "image": r"image: \S+ pending",
            "terminate": BAKE_START["cleanup"]}
PACKER_ASK = {"run": r"Waiting for instance \(", "stop": PACKER_START["stop"],
              "image": r"Waiting for AMI to become ready", "terminate": PACKER_START["cleanup"]}
# (phase, AWS latency: from the tool's request to the change the watcher saw, noticed event)
AWS_WAITS = [("launch", "run", "running"), ("wait for SSH", "running", "sshd"),
             ("stop", "stop", "stopped"), ("image", "image", "available"),
             ("cleanup", "terminate", "terminated")]


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def lab_profile(want_scale=None):
    """The lab's profile; switched to realistic (at want_scale) if it is not already."""
    api = os.environ["BAKE_LAB_API"]
    cur = json.load(urllib.request.urlopen(f"{api}/profile", timeout=10))
    if cur["profile"] != "realistic" or (want_scale is not None and cur["time_scale"] != want_scale):
        body = {"profile": "realistic"}
        if want_scale is not None:
            body["time_scale"] = want_scale
        req = urllib.request.Request(f"{api}/profile", data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        cur = json.load(urllib.request.urlopen(req, timeout=10))
        log(f"lab profile switched to {cur['profile']} at time scale {cur['time_scale']}")
    return cur


def checkpoints_supported(bake, work: Path):
    """True once bake's recipes accept `checkpoint = true` on a step (unknown keys are errors)."""
    probe = work / "recipes" / "checkpoint-probe.toml"
    probe.write_text("\n".join([
        'name = "checkpoint-probe"', "[source]", 'ami = "ami-0123456789abcdef0"',
        "[builder]", 'instance_type = "t3.micro"', "[ssh]", 'username = "admin"',
        "[[step]]", 'name = "a"', 'run = "true"', "checkpoint = true",
        "[image]", 'name = "x-{timestamp}"', ""]))
    return subprocess.run([str(bake), "validate", str(probe)], capture_output=True).returncode == 0


class Watch:
    """Polls the lab during one run and keeps when each instance/image state was first seen
    (epoch seconds, the midpoint of the call that saw it)."""

    def __init__(self, tag_value):
        import boto3
        self.ec2 = boto3.client("ec2", endpoint_url=os.environ["AWS_ENDPOINT_URL"],
                                region_name=os.environ.get("AWS_REGION", "us-east-1"))
        self.tag = tag_value
        self.seen = {}
        self.stop = threading.Event()
        self.th = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self):
        self.th.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.th.join()

    def _note(self, key, at):
        self.seen.setdefault(key, at)

    def _loop(self):
        while not self.stop.is_set():
            t = time.time()
            try:
                r = self.ec2.describe_instances(Filters=[{"Name": "tag:bake-bench", "Values": [self.tag]}])
                at = (t + time.time()) / 2
                ids = []
                for res in r["Reservations"]:
                    for i in res["Instances"]:
                        if i["State"]["Name"] != "terminated" or ("instance", i["InstanceId"], "pending") in self.seen:
                            ids.append(i["InstanceId"])
                        self._note(("instance", i["InstanceId"], i["State"]["Name"]), at)
                if ids:
                    t = time.time()
                    s = self.ec2.describe_instance_status(InstanceIds=ids, IncludeAllInstances=True)
                    at = (t + time.time()) / 2
                    for st in s["InstanceStatuses"]:
                        if st.get("InstanceStatus", {}).get("Status") == "ok":
                            self._note(("instance", st["InstanceId"], "sshd"), at)
                t = time.time()
                imgs = self.ec2.describe_images(Owners=["self"])
                at = (t + time.time()) / 2
                for im in imgs["Images"]:
                    if im["State"] == "pending":
                        # the lab makes a new image pending only once moto has created it
                        # (available): a poll in between sees it "available" for a moment
                        self.seen.pop(("image", im["ImageId"], "available"), None)
                    self._note(("image", im["ImageId"], im["State"]), at)
            except Exception as e:  # noqa: BLE001  (a missed poll only blurs the timeline)
                log(f"  watch: {type(e).__name__}: {e}")
            self.stop.wait(WATCH_S)

    def events(self, ami):
        """{event: epoch} for the run's builder (the instance seen pending) and its image."""
        inst = [k[1] for k in self.seen if k[0] == "instance" and k[2] == "pending"]
        out = {}
        if inst:
            i = inst[0]
            for state, ev in (("running", "running"), ("sshd", "sshd"), ("stopping", "stopping"),
                              ("stopped", "stopped"), ("shutting-down", "shutting-down"),
                              ("terminated", "terminated")):
                if ("instance", i, state) in self.seen:
                    out[ev] = self.seen[("instance", i, state)]
        if ami and ("image", ami, "available") in self.seen:
            out["available"] = self.seen[("image", ami, "available")]
        return out


def first(lines, pattern):
    rx = re.compile(pattern)
    return next((t for t, msg in lines if rx.match(msg)), None)


def phases(lines, starts, t0, t_end):
    """({phase: seconds}, {phase: start epoch}): each phase from its marker to the next phase
    found (see PHASES)."""
    marks = [("prepare", t0)] + [(p, first(lines, starts[p])) for p in PHASES[1:] if p in starts]
    marks = [(p, t) for p, t in marks if t is not None] + [(None, t_end)]
    return {p: marks[i + 1][1] - t for i, (p, t) in enumerate(marks[:-1])}, dict(marks[:-1])


def bake_lines(log_path):
    """(epoch, message) of each --plain line: `2026-12-02T05:52:33.317Z launch: ...`."""
    out = []
    for line in Path(log_path).read_text().splitlines():
        ts, _, msg = line.partition(" ")
        try:
            out.append((datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%f%z").timestamp(), msg))
        except ValueError:
            pass
    return out


def packer_lines(stamped):
    """(arrival epoch, message) of Packer's `ui` lines: `1796190773,,ui,say,==> amazon-ebs: ...`."""
    out = []
    for t, line in stamped:
        parts = line.split(",", 4)
        if len(parts) == 5 and parts[2] == "ui":
            out.append((t, parts[4].split("amazon-ebs: ", 1)[-1]))
    return out


def run_stamped(cmd, log_path, env=None, cwd=None):
    """Runs cmd; stdout lines stamped (epoch) as they arrive, stderr to log_path.
    Returns (rc, wall seconds, start epoch, [(epoch, line)])."""
    from bench import settle
    settle()
    stamped = []
    with open(log_path, "w") as errf:
        t0, p0 = time.time(), time.perf_counter()
        p = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=errf, env=env,
                             cwd=cwd, text=True, bufsize=1)
        for line in p.stdout:
            stamped.append((time.time(), line.rstrip("\n")))
        rc = p.wait()
        wall = time.perf_counter() - p0
    return rc, wall, t0, stamped


class Realistic:
    def __init__(self, bench):
        self.b = bench
        self.scale = None
        self.checkpoints = False
        self.runs = []            # one dict per timed run (tool, workload, wall, phases, ...)
        self.leftovers = []       # one dict per run: both reports

    # -- lab ------------------------------------------------------------------------------------
    def leftover_report(self):
        from bench import ROOT
        r = subprocess.run([str(ROOT / "scripts" / "lab"), "leftovers", "--json"],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"scripts/lab leftovers failed: {r.stderr.strip()}")
        return json.loads(r.stdout)

    def check_leftovers(self, tool, wl, ami, keep_checkpoints=False):
        """Only the run's own image may be left; remove it (and its snapshot), then nothing may."""
        rep = self.leftover_report()
        mine = [x for x in rep["leftovers"] if x["kind"] == "image" and x["id"] == ami]
        # bake's checkpoint images carry `bake:checkpoint` (the step's name); the run's own image
        # may carry `bake:from-checkpoint`, which is not one.
        ckpt = [x for x in rep["leftovers"] if x["kind"] == "image" and x["id"] != ami
                and "bake:checkpoint" in x.get("tags", {})]
        other = [x for x in rep["leftovers"] if x not in mine and x not in ckpt]
        ec2 = self.b.boto()
        for x in mine + ([] if keep_checkpoints else ckpt):
            ec2.deregister_image(ImageId=x["id"])
            if x.get("snapshot"):
                ec2.delete_snapshot(SnapshotId=x["snapshot"])
        after = self.leftover_report()
        rest = [x for x in after["leftovers"] if not (keep_checkpoints and x in ckpt)]
        entry = dict(tool=tool, workload=wl, ami=ami, after_build=rep, unexpected=other,
                     checkpoint_images=[x["id"] for x in ckpt], after_removing_image=after,
                     clean=not other and not rest and bool(mine))
        self.leftovers.append(entry)
        if not mine:
            self.b.failures.append(f"{tool} {wl}: its image {ami} is not in the leftovers report")
        if other or rest:
            self.b.failures.append(f"{tool} {wl}: leftovers: " + ", ".join(
                f"{x['kind']} {x['id']}" for x in other + rest))
        log(f"  leftovers after {tool}: " + ("clean (after removing its image)" if entry["clean"]
                                              else json.dumps(rep["counts"])))

    # -- one run of each tool -------------------------------------------------------------------
    def steps(self, rnd, token):
        prefix = max(1, round(PREFIX_S * self.scale))
        return prefix, [("upgrade", f"sleep {prefix}"),
                        ("final", f"echo {token} > /etc/bench-final")]

    def bake_run(self, wl, rnd, name=None, token=None, timed=True):
        from bench import bake_recipe, WORKLOADS as W, rand_suffix
        b = self.b
        name = name or f"bench-{wl}-r{rnd}-{rand_suffix()}"
        token = token or rand_suffix(12)
        extra = []
        if WORKLOADS[wl]["prefix"]:
            _, steps = self.steps(rnd, token)
            (n1, c1), (n2, c2) = steps
            extra = ["[[step]]", f'name = "{n1}"', f"run = {json.dumps(c1)}"]
            if self.checkpoints:
                extra.append("checkpoint = true")
            extra += ["", "[[step]]", f'name = "{n2}"', f"run = {json.dumps(c2)}", "sudo = true", ""]
        recipe = b.work / "recipes" / f"{name}.toml"
        recipe.write_text(bake_recipe(name, W["empty"], None, None, extra_steps=extra, ssh_timeout="10m"))
        env = dict(os.environ, BAKE_CACHE_DIR=str(b.work / "cache" / name))
        logp = b.logs / f"{name}{'' if timed else '-warmup'}-{token[:4]}.log"
        with Watch("bake") as w:
            rc, wall, t0, out = run_stamped([b.bake, "build", "--output", "json", "--plain", recipe], logp, env=env)
        if rc != 0:
            b.failures.append(f"bake {wl} round {rnd}: exit {rc} (log {logp})")
            log(f"FAILED bake {wl}: exit {rc}; see {logp}")
            return None
        res = json.loads("\n".join(l for _, l in out))["builds"][0]
        if res["cached"]:
            b.failures.append(f"bake {wl} round {rnd}: unexpected cache hit")
        lines = bake_lines(logp)
        run = dict(tool="bake", workload=wl, round=rnd, wall=wall, log=str(logp), ami=res["ami_id"],
                   bake_stages=res["stages"], bake_seconds=res["seconds"], timed=timed,
                   **self.timeline(lines, t0, wall, BAKE_START, BAKE_SEEN, BAKE_ASK, w.events(res["ami_id"])))
        self.check_leftovers("bake", wl, res["ami_id"], keep_checkpoints=self.checkpoints and not timed)
        return run

    def packer_run(self, wl, rnd, token=None):
        from bench import GEN, rand_suffix
        b = self.b
        name = f"packer-{wl}-r{rnd}-{rand_suffix()}"
        token = token or rand_suffix(12)
        cmd = [sys.executable, str(GEN), "--no-baseline", "--ami-name", name]
        if WORKLOADS[wl]["prefix"]:
            _, steps = self.steps(rnd, token)
            (_, c1), (_, c2) = steps
            cmd += ["--inline", c1, "--inline", c2.replace(" > /etc/bench-final", " | sudo tee /etc/bench-final >/dev/null")]
        tpl = b.work / "templates" / f"{name}.json"
        tpl.write_text(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        logp = b.logs / f"{name}.log"
        with Watch("packer") as w:
            rc, wall, t0, out = run_stamped(["packer", "build", "-machine-readable", "-color=false", tpl],
                                            logp, cwd=b.work)
        with open(logp, "a") as f:
            f.writelines(f"{t:.3f} {l}\n" for t, l in out)
        if rc != 0:
            b.failures.append(f"packer {wl} round {rnd}: exit {rc} (log {logp})")
            log(f"FAILED packer {wl}: exit {rc}; see {logp}")
            return None
        ami = next((l.rsplit(":", 1)[-1] for _, l in out if ",artifact,0,id," in l), None)
        lines = packer_lines(out)
        run = dict(tool="packer", workload=wl, round=rnd, wall=wall, log=str(logp), ami=ami, timed=True,
                   **self.timeline(lines, t0, wall, PACKER_START, PACKER_SEEN, PACKER_ASK, w.events(ami)))
        self.check_leftovers("packer", wl, ami)
        return run

    @staticmethod
    def timeline(lines, t0, wall, starts, seen_rx, ask_rx, events):
        """Phase seconds, and per AWS wait: how long AWS took (from the tool's request, or for
        sshd from `running`, to the change the watcher saw) and the tool's own delay in noticing
        it: from the change, or from the phase's start if the change came first (Packer often
        finds sshd already up, having noticed `running` late), to the tool's line saying so."""
        ph, began = phases(lines, starts, t0, t0 + wall)
        seen = {k: first(lines, rx) for k, rx in seen_rx.items()}
        ask = {k: first(lines, rx) for k, rx in ask_rx.items()}
        aws, late = {}, {}
        for phase, start, ev in AWS_WAITS:
            t_start = ask.get(start) if start in ask else events.get(start)
            if t_start is not None and ev in events:
                aws[phase] = events[ev] - t_start
            if seen.get(ev) is not None and ev in events:
                late[phase] = seen[ev] - max(events[ev], began.get(phase, events[ev]))
        for phase in [p for p, v in aws.items() if v <= 0]:
            # seen before it was asked for: a misread (see Watch), not a measurement
            aws.pop(phase)
            late.pop(phase, None)
        return dict(phases=ph, aws=aws, noticed_after=late, t0=t0, events={k: v - t0 for k, v in events.items()},
                    notices={k: (v - t0 if v else None) for k, v in seen.items()})

    # -- the suite ------------------------------------------------------------------------------
    def run(self, selected, rounds, scale):
        prof = lab_profile(scale)
        self.scale = prof["time_scale"]
        self.profile = prof
        self.checkpoints = checkpoints_supported(self.b.bake, self.b.work)
        log(f"realistic profile at time scale {self.scale}; bake checkpoints: "
            + ("supported: warm-up build first" if self.checkpoints else "not supported (full rebuilds)"))
        for rnd in range(1, rounds + 1):
            self.b.lab_reset()
            bake_first = rnd % 2 == 1
            for wl in selected:
                order = ["bake", "packer"] if bake_first else ["packer", "bake"]
                for tool in order:
                    if tool == "bake":
                        name = None
                        if self.checkpoints and WORKLOADS[wl]["prefix"]:
                            from bench import rand_suffix
                            name = f"bench-{wl}-r{rnd}-{rand_suffix()}"
                            log(f"  {wl:<16} bake   warm-up (creates the checkpoint)")
                            warm = self.bake_run(wl, rnd, name=name, timed=False)
                            if warm:
                                warm["timed"] = False
                                self.runs.append(warm)
                        r = self.bake_run(wl, rnd, name=name)
                    else:
                        r = self.packer_run(wl, rnd)
                    if r:
                        self.runs.append(r)
                    log(f"  {wl:<16} {tool:<6} " + (f"{r['wall']:8.1f} s" if r else "failed"))
        return self.report(selected)

    # -- report ---------------------------------------------------------------------------------
    def report(self, selected):
        from bench import median
        timed = [r for r in self.runs if r["timed"]]
        get = lambda wl, tool: [r for r in timed if r["workload"] == wl and r["tool"] == tool]
        out = []
        warn = ""
        if self.scale < 1:
            warn = (f"NOTE: time scale {self.scale} < 1: the lab's latencies shrink but Packer's fixed "
                    "poll intervals (15 s waiters, 5 s SSH retries) do not: ratios at this scale are "
                    "NOT valid, only a smoke test.")
            out.append(warn)
        prefix = max(1, round(PREFIX_S * self.scale))
        out.append(f"realistic profile, time scale {self.scale}; slow prefix step `sleep {prefix}`; "
                   f"bake checkpoints: {'yes (timed run after a warm-up)' if self.checkpoints else 'not implemented: full rebuild'}")
        for r in timed:
            for ph in [ph for ph, v in r["aws"].items() if v <= 0]:  # results saved before the fix
                r["aws"].pop(ph)
                r["noticed_after"].pop(ph, None)
        waits = [w[0] for w in AWS_WAITS]

        def aws_sum(r):
            return sum(r["aws"][w] for w in waits) if all(w in r["aws"] for w in waits) else None

        def own(r):
            a = aws_sum(r)
            return None if a is None else r["wall"] - a
        f1 = lambda v, unit=" s": "-" if v is None else f"{v:.1f}{unit}"
        f2 = lambda v: "-" if v is None else f"{v:.2f}"
        head = ["workload", "bake", "Packer", "ratio", "paired", "AWS (bake run)", "AWS (Packer run)",
                "bake own", "Packer own", "ratio at equal AWS", "runs"]
        rows = []
        for wl in selected:
            b, p = get(wl, "bake"), get(wl, "packer")
            mb, mp = median([r["wall"] for r in b]), median([r["wall"] for r in p])
            pr = median([x["wall"] / y["wall"] for x, y in zip(b, p)]) if b and len(b) == len(p) else None
            ab, ap = median([aws_sum(r) for r in b]), median([aws_sum(r) for r in p])
            ob, op = median([own(r) for r in b]), median([own(r) for r in p])
            eq = None
            if None not in (ab, ap, ob, op):
                a = (ab + ap) / 2
                eq = (a + ob) / (a + op)
            rows.append([WORKLOADS[wl]["title"], f1(mb), f1(mp), f2(mb / mp if mb and mp else None), f2(pr),
                         f1(ab), f1(ap), f1(ob), f1(op), f2(eq), f"{len(b)}+{len(p)}"])
        out.append(table(head, rows))
        out.append("AWS = the sum of the waits on AWS in that run (request -> change, as the lab watcher saw "
                   "it; each run draws its own latencies); own = wall - AWS: the tool's work and its delays "
                   "in noticing changes; ratio at equal AWS = (A + bake own) / (A + Packer own), A = the "
                   "mean of the two AWS sums.")
        for wl in selected:
            out.append("")
            out.append(f"where each second goes: {wl} (medians, s; AWS = from the tool's request to the "
                       f"change the lab watcher saw; late = the tool's own delay in noticing it, from the change "
                       f"or from the phase's start if later; watcher resolution {WATCH_S} s)")
            head = ["phase", "bake", "Packer", "AWS (bake run)", "AWS (Packer run)", "bake late", "Packer late"]
            rows = []
            b, p = get(wl, "bake"), get(wl, "packer")
            for ph in PHASES + ["(total)"]:
                def col(runs, key):
                    if ph == "(total)":
                        v = median([r["wall"] for r in runs]) if key == "phases" else None
                    else:
                        v = median([r[key].get(ph) for r in runs if r[key].get(ph) is not None])
                    return "-" if v is None else f"{v:.1f}"
                rows.append([ph, col(b, "phases"), col(p, "phases"), col(b, "aws"), col(p, "aws"),
                             col(b, "noticed_after"), col(p, "noticed_after")])
            out.append(table(head, rows))
        from bench import record_stages
        for wl in selected:
            st = {}
            for r in get(wl, "bake"):
                # concurrent cleanup items count as the wall time of their log lines
                record_stages(st, {"stages": r["bake_stages"], "seconds": r["bake_seconds"]}, r["log"])
                st.setdefault("(bake's own total)", []).append(r["bake_seconds"])
            if st:
                out.append("")
                out.append(f"bake's own stages ({wl}, `--output json`, medians, s): " + ", ".join(
                    f"{n} {median(v):.2f}" for n, v in st.items()))
        clean = [f"{e['tool']} {e['workload']}: " + ("clean" if e["clean"] else
                 "NOT clean: " + ", ".join(f"{x['kind']} {x['id']}" for x in e["unexpected"]))
                 for e in self.leftovers]
        out.append("")
        out.append("leftovers after each run (only the run's image, then nothing once it is removed): "
                   + "; ".join(clean))
        if warn:
            out.append(warn)
        return "\n".join(out)

    def results(self):
        return dict(time_scale=self.scale, lab_profile=self.profile, checkpoints=self.checkpoints,
                    prefix_seconds=max(1, round(PREFIX_S * self.scale)), watch_interval=WATCH_S,
                    runs=self.runs, leftovers=self.leftovers)


def run_set(b):
    """Runs the realistic set for bench.Bench `b`; prints its tables, writes its results file."""
    r = Realistic(b)
    text = r.run(b.a.realistic, b.a.rounds, b.a.time_scale)
    print(text)
    if b.failures:
        print("\nFAILURES:\n  " + "\n  ".join(b.failures))
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    result = dict(
        when=stamp, kind="realistic", rounds=b.a.rounds, workloads=b.a.realistic, bake=str(b.bake),
        packer=subprocess.run(["packer", "version"], capture_output=True, text=True).stdout.strip(),
        failures=b.failures, table=text, **r.results())
    out = b.out / f"results-realistic-{stamp}.json"
    out.write_text(json.dumps(result, indent=1))
    (b.out / "latest-realistic.json").write_text(json.dumps(result, indent=1))
    print(f"\nresults: {out}")
    return 1 if b.failures else 0


def rerender(d):
    """Prints the tables of a saved realistic results JSON again."""
    r = Realistic.__new__(Realistic)
    r.runs, r.leftovers, r.scale, r.checkpoints = d["runs"], d["leftovers"], d["time_scale"], d["checkpoints"]
    print(r.report(d["workloads"]))
    return 1 if d["failures"] else 0


def table(head, rows):
    w = [max(len(x[i]) for x in [head] + rows) for i in range(len(head))]
    line = lambda cells: "| " + " | ".join(c.ljust(w[i]) for i, c in enumerate(cells)) + " |"
    sep = "|" + "|".join("-" * (x + 2) for x in w) + "|"
    return "\n".join([line(head), sep] + [line(r) for r in rows])
