"""The scale workload of benches/bench.py (issue 17, part 4): 20 recipes with `bake build -j 20`.

On a lab of its own with `LAB_PROFILE=realistic LAB_FAULTS=hostile` (EC2's latencies at
LAB_TIME_SCALE, token buckets, throttling, 5xx, lost responses, visibility lag): first each of
the recipes built alone, one after another (all of them, or a sample with `--scale-singles N`),
then all of them in one `bake build -j N` process. Goals: every build of the parallel run
succeeds, its wall time is at most 2 x the slowest single build, and the one bake process
peaks at <= 200 MiB RSS (`/usr/bin/time -f %M`). After the runs the lab's leftovers report
(`scripts/lab leftovers --json`) must hold nothing but the finished images (tag
`bake:state=complete`), which the harness then removes.

The recipes are alike but not identical: each has its own name (so its own fingerprint: no
cache hits) and a step that prints its index; the parallel run uses new names for the same
recipes, so it builds as much as the singles did.
"""
import json
import os
import subprocess
import time
from pathlib import Path

RECIPES = 20
GOAL_RATIO = 2.0
GOAL_RSS_MIB = 200


def log(msg):
    import sys
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Scale:
    def __init__(self, bench):
        self.b = bench
        self.singles = []        # one dict per single build
        self.parallel = []       # one dict per -j run
        self.leftovers = []

    def recipe(self, name, i, files_dir):
        from bench import bake_recipe
        w = dict(steps=0, upload_dir=True, big=False)
        step = ["[[step]]", 'name = "work"', f'run = "echo recipe {i}; ls /opt/bench/upload | wc -l"', ""]
        path = self.b.work / "recipes" / f"{name}.toml"
        path.write_text(bake_recipe(name, w, files_dir, None, extra_steps=step, ssh_timeout="10m"))
        return path

    def leftover_report(self):
        from bench import ROOT
        r = subprocess.run([str(ROOT / "scripts" / "lab"), "leftovers", "--json"],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"scripts/lab leftovers failed: {r.stderr.strip()}")
        return json.loads(r.stdout)

    def check_leftovers(self, what, amis):
        """Nothing but finished images may be left; those (and their snapshots) are removed."""
        rep = self.leftover_report()
        done = [x for x in rep["leftovers"] if x["kind"] == "image"
                and x.get("tags", {}).get("bake:state") == "complete"]
        other = [x for x in rep["leftovers"] if x not in done]
        missing = sorted(set(amis) - {x["id"] for x in done})
        ec2 = self.b.boto()
        for x in done:
            # A lost response (a hostile fault) makes the retry answer "not found": done.
            for call, kw in ((ec2.deregister_image, dict(ImageId=x["id"])),
                             (ec2.delete_snapshot, dict(SnapshotId=x.get("snapshot")))):
                if None in kw.values():
                    continue
                try:
                    call(**kw)
                except ec2.exceptions.ClientError as e:
                    code = e.response.get("Error", {}).get("Code", "")
                    if "NotFound" not in code and "Unavailable" not in code:
                        raise
        after = self.leftover_report()
        entry = dict(after=what, finished_images=len(done), unexpected=other, missing_images=missing,
                     after_removing_images=after, clean=not other and not after["leftovers"])
        self.leftovers.append(entry)
        if other or after["leftovers"]:
            self.b.failures.append(f"scale {what}: leftovers: " + ", ".join(
                f"{x['kind']} {x['id']}" for x in other + after["leftovers"]))
        log(f"  leftovers after {what}: {len(done)} finished images removed; "
            + ("nothing else" if entry["clean"] else json.dumps(rep["counts"])))

    def build(self, recipes, jobs, label):
        from bench import run_tool, rand_suffix
        cache = self.b.work / "cache" / f"scale-{label}-{rand_suffix()}"
        env = dict(os.environ, BAKE_CACHE_DIR=str(cache), XDG_STATE_HOME=str(cache / "state"))
        cmd = [self.b.bake, "build", "--output", "json", "--plain", "-j", str(jobs), *recipes]
        r = run_tool(cmd, self.b.logs / f"scale-{label}.log", env=env)
        try:
            builds = json.loads(r.stdout).get("builds", [])
        except ValueError:
            builds = []
        ok = [x for x in builds if str(x.get("ami_id") or "").startswith("ami-") and not x.get("cached")]
        return dict(label=label, jobs=jobs, recipes=len(recipes), rc=r.rc, wall=r.wall,
                    rss_mib=(r.rss_kib or 0) / 1024, ok=len(ok), amis=[x["ami_id"] for x in ok],
                    seconds=[x.get("seconds") for x in builds], log=str(r.log_path))

    def run(self, rounds, singles):
        from bench import make_inputs, rand_suffix
        # 200 files of 2 KiB per recipe: every build also runs the tar upload path.
        files_dir, _ = make_inputs(self.b.work / "scale-inputs", 0, n_files=200, file_size=2048)
        # The harness's own calls meet the faults too: give them the retries bake's tests use.
        import boto3
        from botocore.config import Config
        self.b.ec2 = boto3.client("ec2", endpoint_url=os.environ["AWS_ENDPOINT_URL"],
                                  region_name=os.environ.get("AWS_REGION", "us-east-1"),
                                  config=Config(retries={"max_attempts": 10, "mode": "standard"}))
        self.b.lab_reset()
        profile = json.load(__import__("urllib.request").request.urlopen(
            f"{os.environ['BAKE_LAB_API']}/profile", timeout=10))
        faults = json.load(__import__("urllib.request").request.urlopen(
            f"{os.environ['BAKE_LAB_API']}/faults", timeout=10))
        self.profile = dict(profile=profile, faults=faults.get("profile"))
        log(f"scale: lab {profile.get('profile')} x{profile.get('time_scale')}, faults "
            f"{(faults.get('profile') or {}).get('faults')}")
        tok = rand_suffix()
        picks = list(range(RECIPES))[: singles or RECIPES]
        for i in picks:
            name = f"scale-{tok}-single-{i:02d}"
            r = self.build([self.recipe(name, i, files_dir)], 1, f"single-{i:02d}-{tok}")
            log(f"scale: single {i:02d}: {r['wall']:.1f} s, rc {r['rc']}, {r['rss_mib']:.1f} MiB")
            if r["ok"] != 1:
                self.b.failures.append(f"scale single {i}: failed (rc {r['rc']}, log {r['log']})")
            self.singles.append(r)
        self.check_leftovers("the single builds", [a for r in self.singles for a in r["amis"]])
        for rnd in range(rounds):
            names = [f"scale-{tok}-j{rnd}-{i:02d}" for i in range(RECIPES)]
            recipes = [self.recipe(n, i, files_dir) for i, n in enumerate(names)]
            r = self.build(recipes, RECIPES, f"j{RECIPES}-r{rnd}-{tok}")
            log(f"scale: -j {RECIPES} round {rnd}: {r['ok']}/{RECIPES} ok in {r['wall']:.1f} s, "
                f"rc {r['rc']}, peak RSS {r['rss_mib']:.1f} MiB")
            if r["ok"] != RECIPES:
                self.b.failures.append(f"scale -j {RECIPES} round {rnd}: {r['ok']}/{RECIPES} ok (log {r['log']})")
            self.parallel.append(r)
            self.check_leftovers(f"-j {RECIPES} round {rnd}", r["amis"])
        return self.report()

    def report(self):
        from bench import median
        single_walls = [r["wall"] for r in self.singles if r["ok"] == 1]
        slowest = max(single_walls) if single_walls else None
        rows = []
        for r in self.parallel:
            ratio = r["wall"] / slowest if slowest else None
            rows.append([f"-j {r['jobs']} ({r['label']})", f"{r['ok']}/{r['recipes']}", f"{r['wall']:.1f} s",
                         f"{ratio:.2f}" if ratio else "-", f"{r['rss_mib']:.1f} MiB",
                         "PASS" if r["ok"] == r["recipes"] and ratio and ratio <= GOAL_RATIO
                         and r["rss_mib"] <= GOAL_RSS_MIB else "FAIL"])
        head = ["run", "ok", "wall", "wall / slowest single", "peak RSS", "goal (all ok, <= 2x, <= 200 MiB)"]
        w = [max(len(x[i]) for x in [head] + rows) for i in range(len(head))]
        line = lambda cells: "| " + " | ".join(c.ljust(w[i]) for i, c in enumerate(cells)) + " |"
        sep = "|" + "|".join("-" * (x + 2) for x in w) + "|"
        text = "\n".join([line(head), sep] + [line(x) for x in rows])
        if single_walls:
            text += (f"\n\nsingle builds ({len(self.singles)} of {RECIPES}, one after another): "
                     f"{len(single_walls)} ok, wall median {median(single_walls):.1f} s, "
                     f"min {min(single_walls):.1f} s, max (slowest) {slowest:.1f} s; peak RSS max "
                     f"{max(r['rss_mib'] for r in self.singles):.1f} MiB")
        clean = all(x["clean"] for x in self.leftovers)
        text += f"\nleftovers (besides finished images): {'none' if clean else 'SEE results JSON'}"
        return text

    def results(self):
        return dict(lab=self.profile, singles=self.singles, parallel=self.parallel, leftovers=self.leftovers)


def run_set(b):
    s = Scale(b)
    text = s.run(b.a.rounds, b.a.scale_singles)
    print(text)
    if b.failures:
        print("\nFAILURES:\n  " + "\n  ".join(b.failures))
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    result = dict(when=stamp, kind="scale", rounds=b.a.rounds, bake=str(b.bake), failures=b.failures,
                  table=text, uptime=subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
                  **s.results())
    out = b.out / f"results-scale-{stamp}.json"
    out.write_text(json.dumps(result, indent=1))
    (b.out / "latest-scale.json").write_text(json.dumps(result, indent=1))
    print(f"\nresults: {out}")
    return 1 if b.failures else 0
