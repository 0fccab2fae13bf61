//! Issue 12's "done when", proved on the lab's realistic timing (EC2's delays × the lab's time
//! scale: pending instances, SYNs dropped until sshd, slow stops and terminations, pending
//! images) with its hostile faults on (token buckets, random throttling, 5xx, lost responses,
//! visibility lag), driving the real binary: 20 builds succeed and leave nothing; SIGKILL and
//! CI's cancel sequence at each of eight stages, then `bake gc --yes`, leave nothing; gc beside
//! a live build leaves it alone; a taken image name leaves the other image alone; the finished
//! image carries no secret.
//!
//! Selected by the `hostile` feature (`scripts/test` runs it against a second lab it starts in
//! that mode); the lab must already be in that mode — these tests never switch a lab's mode.
//! Tests run side by side, as builds on one account do: each checks what is left by its own
//! build ids, and each `bake gc` has its own journal, so it sees the other tests' live builds as
//! another machine's (their leases run) and must leave them alone. `scripts/test` checks the
//! whole leftovers report once they are done. Each test prints a `hostile:` line with its
//! numbers (run with `--nocapture` to see them).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::run::*;
use common::*;

/// How to start a lab these tests accept (from the repository root).
const START: &str = "LAB_DIR=.lab/hostile LAB_PORT=4567 LAB_VPC_CIDR=127.60.0.0/16 \
    LAB_VENV=$PWD/.lab/venv LAB_PROFILE=realistic LAB_TIME_SCALE=0.1 LAB_FAULTS=hostile \
    scripts/lab up";

/// The lab, checked to be realistic and hostile, with a test-side EC2 client that rides out
/// the faults (the tests' own calls meet them too), and the lab's time scale.
struct Hostile {
    lab: Lab,
    scale: f64,
}

fn hostile() -> Hostile {
    let mut lab = Lab::new();
    let p = lab_api(&lab.env, "GET", "profile", "");
    let f = lab_api(&lab.env, "GET", "faults", "");
    let scale = p["time_scale"].as_f64().unwrap_or(1.0);
    if p["profile"] != "realistic" || f["profile"]["faults"] != "hostile" || scale > 0.1 {
        panic!(
            "the lab at {} is {} (time scale {scale}) with faults {}: start the hostile lab: \
             `{START}`, then run `BAKE_LAB_DIR=$PWD/.lab/hostile cargo test --features hostile \
             --test hostile` (or run `scripts/test`)",
            lab.env["AWS_ENDPOINT_URL"], p["profile"], f["profile"]["faults"]
        );
    }
    let retry = aws_config::retry::RetryConfig::standard()
        .with_max_attempts(10)
        .with_max_backoff(Duration::from_secs(5));
    lab.ec2 = aws_sdk_ec2::Client::from_conf(
        aws_sdk_ec2::config::Builder::from(&lab.conf)
            .retry_config(retry)
            .build(),
    );
    Hostile { lab, scale }
}

/// `bake` with a private hash cache and journal (`dir/state`): as one machine of its own.
fn bake(lab: &Lab, dir: &Path) -> Command {
    let mut c = lab.bake(&dir.join("cache"));
    c.env("XDG_STATE_HOME", dir.join("state"));
    c
}

fn build_cmd(lab: &Lab, dir: &Path, recipes: &[PathBuf], extra: &[&str]) -> Command {
    let mut c = bake(lab, dir);
    c.args(["build", "--plain"]).args(extra).args(recipes);
    c
}

fn gc(lab: &Lab, dir: &Path, args: &[&str]) -> std::process::Output {
    bake(lab, dir).arg("gc").args(args).output().unwrap()
}

/// A recipe whose one step sleeps `nap` seconds after echoing `mark` (so fingerprints differ),
/// with a 64 MiB upload (the raw streaming path) when `upload`.
fn recipe(dir: &Path, name: &str, mark: &str, nap: u32, upload: bool) -> PathBuf {
    let mut tail = String::new();
    if upload {
        let big = dir.join("big.bin");
        std::fs::File::create(&big)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        tail.push_str(&format!(
            "[[upload]]\nsource = \"{}\"\ndestination = \"/opt/big.bin\"\n",
            big.display()
        ));
    }
    tail.push_str(&format!(
        "[[step]]\nname = \"nap\"\nrun = \"echo {mark}; sleep {nap}\"\n"
    ));
    write_recipe(
        dir,
        name,
        Recipe {
            ssh: "timeout = \"120s\"",
            tail: &tail,
            ..Recipe::default()
        },
    )
}

/// Checks one finished build (a `--output json` object): an image, one builder, nothing left.
/// Returns what is wrong, if anything.
fn check_build(h: &Hostile, b: &serde_json::Value, log: &str) -> Option<String> {
    let (Some(id), Some(recipe)) = (b["build_id"].as_str(), b["recipe"].as_str()) else {
        return Some(format!("no build id or recipe in {b}"));
    };
    if !b["ami_id"].as_str().is_some_and(|a| a.starts_with("ami-")) {
        return Some(format!("{recipe}: no image in {b}\n{log}"));
    }
    let launched = h.lab.instances_launched(recipe);
    if launched.len() != 1 {
        return Some(format!("{recipe}: builders launched {launched:?}\n{log}"));
    }
    let left = leftovers_of_build(&h.lab.env, id);
    if !left.is_empty() {
        return Some(format!("{recipe} ({id}) left {left:#?}\n{log}"));
    }
    None
}

#[test]
fn ten_builds_one_after_another_all_succeed_and_leave_nothing() {
    let h = hostile();
    let tmp = tempfile::tempdir().unwrap();
    let base = unique("hseq-");
    let (mut ok, mut fingerprints, mut failures) = (0, Vec::new(), Vec::new());
    for i in 0..10 {
        let r = recipe(
            tmp.path(),
            &format!("{base}-{i}"),
            &format!("job{i}"),
            0,
            false,
        );
        let out = build_cmd(&h.lab, tmp.path(), &[r], &["--output", "json"])
            .output()
            .unwrap();
        if !out.status.success() {
            failures.push(format!("build {i} failed:\n{}", stderr(&out)));
            continue;
        }
        let doc = json(&out);
        let v = doc["builds"][0].clone();
        fingerprints.push(v["fingerprint"].as_str().unwrap_or_default().to_string());
        match check_build(&h, &v, &stderr(&out)) {
            None => ok += 1,
            Some(e) => failures.push(e),
        }
    }
    eprintln!("hostile: 10 builds one after another: {ok}/10 succeeded and left nothing");
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    fingerprints.sort();
    fingerprints.dedup();
    assert_eq!(fingerprints.len(), 10, "fingerprints not distinct");
}

#[test]
fn ten_builds_with_j5_all_succeed_and_leave_nothing() {
    let h = hostile();
    let tmp = tempfile::tempdir().unwrap();
    let base = unique("hpar-");
    let recipes: Vec<PathBuf> = (0..10)
        .map(|i| {
            recipe(
                tmp.path(),
                &format!("{base}-{i}"),
                &format!("job{i}"),
                0,
                false,
            )
        })
        .collect();
    let out = build_cmd(
        &h.lab,
        tmp.path(),
        &recipes,
        &["-j", "5", "--output", "json"],
    )
    .output()
    .unwrap();
    let err = stderr(&out);
    let v = json(&out);
    let builds = v["builds"].as_array().cloned().unwrap_or_default();
    let mut failures = Vec::new();
    let mut fingerprints = Vec::new();
    for b in &builds {
        fingerprints.push(b["fingerprint"].as_str().unwrap_or_default().to_string());
        if let Some(e) = check_build(&h, b, "") {
            failures.push(e);
        }
    }
    let ok = builds.len() - failures.len();
    eprintln!("hostile: 10 builds with -j 5: {ok}/10 succeeded and left nothing");
    assert!(out.status.success(), "{err}");
    assert_eq!(builds.len(), 10, "{v}");
    assert!(failures.is_empty(), "{}\n{err}", failures.join("\n\n"));
    fingerprints.sort();
    fingerprints.dedup();
    assert_eq!(fingerprints.len(), 10, "fingerprints not distinct");
}

/// A point in a build to interrupt it at: the stderr line that says it has begun.
struct Stage {
    name: &'static str,
    hit: fn(&str) -> bool,
    /// How long the step sleeps (long for stages before it, 0 for those after).
    nap: u32,
    upload: bool,
}

const STAGES: [Stage; 8] = [
    Stage {
        name: "prepare",
        hit: |l| l.contains("prepare: creating"),
        nap: 30,
        upload: false,
    },
    Stage {
        name: "launch",
        hit: |l| l.contains("launch: launching"),
        nap: 30,
        upload: false,
    },
    Stage {
        name: "connect",
        hit: |l| l.contains("connect: waiting for SSH"),
        nap: 30,
        upload: false,
    },
    Stage {
        name: "upload",
        hit: |l| l.contains("upload: 1 file(s)"),
        nap: 30,
        upload: true,
    },
    Stage {
        name: "step",
        hit: |l| l.contains("running nap"),
        nap: 30,
        upload: false,
    },
    Stage {
        name: "stop",
        hit: |l| l.contains("stop: stopping"),
        nap: 0,
        upload: false,
    },
    Stage {
        name: "image pending",
        hit: |l| l.contains("image: ami-") && l.ends_with(" pending"),
        nap: 0,
        upload: false,
    },
    Stage {
        name: "cleanup",
        hit: |l| l.contains("cleanup: removing"),
        nap: 0,
        upload: false,
    },
];

/// Starts a build and waits for `stage`; returns it, its recipe name and the temp dir.
fn start_at(h: &Hostile, stage: &Stage, tag: &str) -> (Running, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    let name = unique(&format!("{tag}-{}-", stage.name.replace(' ', "")));
    let r = recipe(tmp.path(), &name, "nap", stage.nap, stage.upload);
    let mut b = Running::start(build_cmd(&h.lab, tmp.path(), &[r], &[]));
    b.wait_line(stage.name, Duration::from_secs(180), stage.hit);
    (b, tmp)
}

/// What one `bake gc --yes` after an interrupted build saw and did.
struct GcRun {
    /// Leftovers of the build (lab report) before and after gc.
    before: usize,
    after: usize,
    /// gc looked again for what EC2 did not list yet (the build died just after a create).
    again: bool,
    /// Other tests' live builds gc found and left alone.
    left_alone: usize,
}

impl std::fmt::Display for GcRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "leftovers before gc {}, after gc {} (gc looked again: {}; live builds beside it left alone: {})",
            self.before, self.after, self.again, self.left_alone
        )
    }
}

/// `bake gc --yes` with the build's own journal; then nothing of `id` may be left.
fn gc_then_nothing_left(h: &Hostile, dir: &Path, id: &str, context: &str) -> GcRun {
    let before = leftovers_of_build(&h.lab.env, id);
    let out = gc(&h.lab, dir, &["--yes"]);
    let after = leftovers_of_build(&h.lab.env, id);
    let said = format!("{}{}", stdout(&out), stderr(&out));
    assert!(out.status.success(), "gc --yes failed {context}:\n{said}");
    assert!(
        after.is_empty(),
        "{context}: left after gc {after:#?}\nbefore gc {before:#?}\ngc said:\n{said}"
    );
    // gc cleaned up after itself too: the journal entry is gone.
    assert!(
        !dir.join(format!("state/bake/builds/{id}.json")).exists(),
        "{context}: journal entry kept\n{said}"
    );
    GcRun {
        before: before.len(),
        after: after.len(),
        again: said.contains("looking again"),
        left_alone: stdout(&out)
            .lines()
            .filter(|l| l.contains("running: ") && l.contains("left alone"))
            .count(),
    }
}

fn sigkill_then_gc(stage: &Stage) {
    let h = hostile();
    let (mut b, tmp) = start_at(&h, stage, "hkill");
    let id = b.build_id();
    b.kill9();
    let log = b.drain();
    let context = format!("SIGKILL at {} ({id})\n{log}", stage.name);
    let run = gc_then_nothing_left(&h, tmp.path(), &id, &context);
    eprintln!("hostile: SIGKILL at {}: {run}", stage.name);
}

/// CI's cancel sequence (GitHub Actions: SIGINT, SIGTERM 7.5 s later, SIGKILL 2.5 s after
/// that). `scaled`: the gaps times the lab's time scale, like every EC2 delay, so cleanup is as
/// long relative to them as on EC2 (where terminating the builder alone takes 20-60 s, so
/// SIGKILL comes mid-cleanup); else GitHub's own gaps (the lab's EC2 being 10x faster, bake
/// mostly finishes cleaning up before SIGKILL).
fn ci_cancel_then_gc(stage: &Stage, scaled: bool) {
    let h = hostile();
    let k = if scaled { h.scale } else { 1.0 };
    let (term, kill) = (7.5 * k, 2.5 * k);
    let (mut b, tmp) = start_at(&h, stage, "hcancel");
    let id = b.build_id();
    let end = b.ci_cancel(Duration::from_secs_f64(term), Duration::from_secs_f64(kill));
    let log = b.drain();
    let context = format!("CI cancel at {} ({id}): {end:?}\n{log}", stage.name);
    if let Cancelled::Exited(code) = end {
        assert_eq!(code, Some(130), "{context}");
    }
    let run = gc_then_nothing_left(&h, tmp.path(), &id, &context);
    // What bake was still removing when SIGKILL came (it says so on SIGTERM).
    let busy = log
        .lines()
        .filter_map(|l| l.split("still cleaning up (").nth(1))
        .filter_map(|l| l.split("); press").next())
        .next_back()
        .unwrap_or("?");
    eprintln!(
        "hostile: CI cancel at {} (SIGTERM +{term:.2}s, SIGKILL +{kill:.2}s): {}, {run}",
        stage.name,
        match end {
            Cancelled::Exited(_) => "bake exited by itself".to_string(),
            Cancelled::Killed => format!("SIGKILLed while removing {busy}"),
        }
    );
}

macro_rules! at_every_stage {
    ($($i:literal => $kill:ident, $cancel:ident, $cancel_github:ident;)*) => {$(
        #[test]
        fn $kill() {
            sigkill_then_gc(&STAGES[$i]);
        }
        #[test]
        fn $cancel() {
            ci_cancel_then_gc(&STAGES[$i], true);
        }
        #[test]
        fn $cancel_github() {
            ci_cancel_then_gc(&STAGES[$i], false);
        }
    )*};
}

at_every_stage! {
    0 => sigkill_at_prepare_then_gc_leaves_nothing, ci_cancel_scaled_at_prepare_then_gc_leaves_nothing,
        ci_cancel_github_gaps_at_prepare_then_gc_leaves_nothing;
    1 => sigkill_at_launch_then_gc_leaves_nothing, ci_cancel_scaled_at_launch_then_gc_leaves_nothing,
        ci_cancel_github_gaps_at_launch_then_gc_leaves_nothing;
    2 => sigkill_at_connect_then_gc_leaves_nothing, ci_cancel_scaled_at_connect_then_gc_leaves_nothing,
        ci_cancel_github_gaps_at_connect_then_gc_leaves_nothing;
    3 => sigkill_at_upload_then_gc_leaves_nothing, ci_cancel_scaled_at_upload_then_gc_leaves_nothing,
        ci_cancel_github_gaps_at_upload_then_gc_leaves_nothing;
    4 => sigkill_at_step_then_gc_leaves_nothing, ci_cancel_scaled_at_step_then_gc_leaves_nothing,
        ci_cancel_github_gaps_at_step_then_gc_leaves_nothing;
    5 => sigkill_at_stop_then_gc_leaves_nothing, ci_cancel_scaled_at_stop_then_gc_leaves_nothing,
        ci_cancel_github_gaps_at_stop_then_gc_leaves_nothing;
    6 => sigkill_at_image_pending_then_gc_leaves_nothing, ci_cancel_scaled_at_image_pending_then_gc_leaves_nothing,
        ci_cancel_github_gaps_at_image_pending_then_gc_leaves_nothing;
    7 => sigkill_at_cleanup_then_gc_leaves_nothing, ci_cancel_scaled_at_cleanup_then_gc_leaves_nothing,
        ci_cancel_github_gaps_at_cleanup_then_gc_leaves_nothing;
}

#[test]
fn gc_beside_a_live_build_leaves_it_intact_and_successful() {
    let h = hostile();
    let tmp = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    let name = unique("hlive-");
    let r = recipe(tmp.path(), &name, "nap", 5, false);
    let mut b = Running::start(build_cmd(&h.lab, tmp.path(), &[r], &[]));
    b.wait_for("running nap");
    let id = b.build_id();
    // Same machine and journal (alive: its process runs), and as if from another machine (no
    // journal: its lease runs).
    for (dir, why) in [
        (tmp.path(), "is running"),
        (other.path(), "lease runs until"),
    ] {
        let out = gc(&h.lab, dir, &["--yes"]);
        let text = stdout(&out);
        assert!(out.status.success(), "{text}{}", stderr(&out));
        let line = text
            .lines()
            .find(|l| l.contains(&id))
            .unwrap_or_else(|| panic!("gc did not list the live build {id}:\n{text}"));
        assert!(line.contains(why) && line.contains("left alone"), "{text}");
        assert!(!line.contains("removed"), "{text}");
    }
    let (st, log) = b.finish();
    assert!(st.success(), "the build beside gc failed:\n{log}");
    let left = leftovers_of_build(&h.lab.env, &id);
    eprintln!(
        "hostile: gc beside a live build: build {}, leftovers after it {}",
        if st.success() { "succeeded" } else { "failed" },
        left.len()
    );
    assert!(left.is_empty(), "{left:#?}\n{log}");
}

/// Somebody else's image named `name` (no bake tags): (image id, its snapshots). Made from a
/// plain instance of the lab's Debian image; lost answers are ridden out by client token
/// (RunInstances) and by name (CreateImage answering its own retry with `…Duplicate`).
fn foreign_image(lab: &Lab, name: &str) -> (String, Vec<String>) {
    use aws_sdk_ec2::types::{Filter, InstanceStateName};
    use bake::retry::{Backoff, Poll, poll};
    let wait = Backoff::AWS.with_timeout(Duration::from_secs(120));
    lab.rt.block_on(async {
        let e = &lab.ec2;
        let base = e
            .describe_images()
            .owners("136693071363")
            .send()
            .await
            .unwrap();
        let out = e
            .run_instances()
            .image_id(base.images()[0].image_id().unwrap())
            .instance_type("t3.micro".into())
            .min_count(1)
            .max_count(1)
            .client_token(unique("foreign-"))
            .send()
            .await
            .unwrap();
        let inst = out.instances()[0].instance_id().unwrap().to_string();
        // CreateImage refuses a pending instance; a new id may be unknown for a while.
        poll(wait, |_| async {
            let r = e.describe_instances().instance_ids(&inst).send().await;
            let st = r.ok().and_then(|o| {
                o.reservations()
                    .first()?
                    .instances()
                    .first()?
                    .state()?
                    .name()
                    .cloned()
            });
            match st {
                Some(InstanceStateName::Running) => Poll::<_, ()>::Ready(()),
                s => Poll::Pending(format!("{inst} {s:?}")),
            }
        })
        .await
        .unwrap();
        let by_name = || Filter::builder().name("name").values(name).build();
        let image = match e.create_image().instance_id(&inst).name(name).send().await {
            Ok(o) => o.image_id().unwrap().to_string(),
            Err(err) => {
                let code = aws_sdk_ec2::error::ProvideErrorMetadata::code(&err);
                assert_eq!(code, Some("InvalidAMIName.Duplicate"), "{err:?}");
                poll(wait, |_| async {
                    let r = e.describe_images().owners("self").filters(by_name()).send();
                    match r.await.ok().and_then(|o| o.images().first().cloned()) {
                        Some(i) => Poll::<_, ()>::Ready(i.image_id().unwrap().to_string()),
                        None => Poll::Pending(format!("image {name}")),
                    }
                })
                .await
                .unwrap()
            }
        };
        // As on EC2, an image names its snapshots only once they have started (a few seconds
        // after CreateImage); terminating the instance before that would fail the image.
        let snaps = poll(wait, |_| async {
            let r = e.describe_images().image_ids(&image).send().await;
            let snaps: Vec<String> = r
                .ok()
                .and_then(|o| o.images().first().cloned())
                .map(|i| {
                    i.block_device_mappings()
                        .iter()
                        .filter_map(|m| m.ebs()?.snapshot_id().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            if snaps.is_empty() {
                Poll::Pending(format!("{image} visible with its snapshots started"))
            } else {
                Poll::<_, ()>::Ready(snaps)
            }
        })
        .await
        .unwrap();
        e.terminate_instances()
            .instance_ids(&inst)
            .send()
            .await
            .unwrap();
        (image, snaps)
    })
}

/// Asserts the image and its snapshots still exist (through the lab's own view: no lag).
fn assert_intact(lab: &Lab, image: &str, snaps: &[String], context: &str) {
    let v = lab_api(&lab.env, "GET", "leftovers", "");
    let ids: Vec<&str> = v["leftovers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["id"].as_str())
        .collect();
    assert!(ids.contains(&image), "{image} is gone\n{context}");
    lab.rt.block_on(async {
        let img = lab.ec2.describe_images().image_ids(image).send().await;
        let img = img.unwrap_or_else(|e| panic!("{image}: {e:?}\n{context}"));
        let now: Vec<String> = img.images()[0]
            .block_device_mappings()
            .iter()
            .filter_map(|m| m.ebs()?.snapshot_id().map(str::to_string))
            .collect();
        assert_eq!(now, snaps, "snapshots of {image}\n{context}");
        for s in snaps {
            let r = lab.ec2.describe_snapshots().snapshot_ids(s).send().await;
            assert!(r.is_ok(), "snapshot {s} of {image} is gone\n{context}");
        }
    });
}

fn deregister(lab: &Lab, image: &str, snaps: &[String]) {
    lab.rt.block_on(async {
        lab.ec2
            .deregister_image()
            .image_id(image)
            .send()
            .await
            .unwrap();
        for s in snaps {
            let r = lab.ec2.delete_snapshot().snapshot_id(s).send().await;
            if let Err(e) = r {
                let code = aws_sdk_ec2::error::ProvideErrorMetadata::code(&e);
                assert_eq!(code, Some("InvalidSnapshot.NotFound"), "{e:?}");
            }
        }
    });
}

#[test]
fn a_taken_image_name_leaves_the_other_image_and_its_snapshots_alone() {
    let h = hostile();
    let tmp = tempfile::tempdir().unwrap();
    let name = unique("htaken-");
    let image_name = format!("{name}-fixed");
    let tail = "[[step]]\nname = \"work\"\nrun = \"echo started-work; sleep 3\"\n";
    let r = write_recipe(
        tmp.path(),
        &name,
        Recipe {
            ssh: "timeout = \"120s\"",
            tail,
            ..Recipe::default()
        },
    );
    let text = std::fs::read_to_string(&r)
        .unwrap()
        .replace("{recipe}-{short_hash}-{timestamp}", "{recipe}-fixed");
    std::fs::write(&r, text).unwrap();

    // Taken while the builder is provisioned: bake's CreateImage meets the other image.
    let mut b = Running::start(build_cmd(&h.lab, tmp.path(), std::slice::from_ref(&r), &[]));
    b.wait_for("started-work");
    let id = b.build_id();
    let (other, snaps) = foreign_image(&h.lab, &image_name);
    let (st, log) = b.finish();
    assert_eq!(st.code(), Some(1), "{log}");
    assert!(
        log.contains("already taken") && log.contains(&other),
        "{log}"
    );
    assert_intact(&h.lab, &other, &snaps, &log);
    assert!(h.lab.images_of(&name).is_empty(), "{log}");
    let left_race = leftovers_of_build(&h.lab.env, &id);
    assert!(left_race.is_empty(), "{left_race:#?}\n{log}");

    // Taken before the build: refused before anything is created.
    let out = build_cmd(&h.lab, tmp.path(), &[r], &["--force"])
        .output()
        .unwrap();
    let err = assert_exit(&out, 1, &["already taken", &other, "not made by bake"]);
    assert!(!err.contains("launch:"), "launched anyway:\n{err}");
    assert_intact(&h.lab, &other, &snaps, &err);
    let again = err
        .lines()
        .find_map(|l| l.split("build ").nth(1)?.split_whitespace().next())
        .unwrap_or_default()
        .to_string();
    let left_before = leftovers_of_build(&h.lab.env, &again);
    assert!(left_before.is_empty(), "{left_before:#?}\n{err}");
    eprintln!(
        "hostile: taken image name: other image {other} and {} snapshot(s) intact; leftovers {}",
        snaps.len(),
        left_race.len() + left_before.len()
    );
    deregister(&h.lab, &other, &snaps);
}

#[test]
fn the_finished_image_holds_no_secret_and_no_temporary_key() {
    let h = hostile();
    let tmp = tempfile::tempdir().unwrap();
    let name = unique("hsecret-");
    let secret = format!("s3cr3t-{}", unique(""));
    let tail = "[[step]]\nname = \"use\"\nsudo = true\nenv = { TOKEN = \"{var.token}\" }\n\
         run = \"test \\\"$TOKEN\\\" = '{var.token}' && sleep 2 && echo done > /etc/used-token\"\n\
         [[step]]\nname = \"as-user\"\nrun = \"sudo true; echo {var.token} | sha256sum > /dev/null\"\n";
    let head = format!("sensitive = [\"token\"]\n[variables]\ntoken = \"{secret}\"\n");
    let r = write_recipe(
        tmp.path(),
        &name,
        Recipe {
            head: &head,
            ssh: "timeout = \"120s\"",
            tail,
            ..Recipe::default()
        },
    );
    let mut b = Running::start(build_cmd(&h.lab, tmp.path(), &[r], &["--output", "json"]));
    b.wait_for("running use");
    let id = b.build_id();
    // The temporary public key, while its key pair exists.
    let key_name = format!("bake-{name}-{id}");
    let temp_key = h.lab.rt.block_on(async {
        use bake::retry::{Backoff, Poll, poll};
        poll(
            Backoff::AWS.with_timeout(Duration::from_secs(30)),
            |_| async {
                let r = h
                    .lab
                    .ec2
                    .describe_key_pairs()
                    .key_names(&key_name)
                    .include_public_key(true)
                    .send()
                    .await;
                match r
                    .ok()
                    .and_then(|o| o.key_pairs().first()?.public_key().map(str::to_string))
                {
                    Some(k) => Poll::<_, ()>::Ready(k),
                    None => Poll::Pending(format!("key pair {key_name}")),
                }
            },
        )
        .await
        .expect("the temporary key pair while the build runs")
    });
    let (st, log) = b.finish();
    assert!(st.success(), "{log}");
    assert!(!log.contains(&secret), "secret in bake's output");
    let images = h.lab.images_of(&name);
    assert_eq!(images.len(), 1, "{log}");
    let ami = images[0].image_id().unwrap().to_string();

    // The image's own layer: what the build wrote on the builder's disk (lab: the frozen
    // overlay upper dir, documented in scripts/lab-server/README.md).
    let layer = PathBuf::from(&h.lab.env["BAKE_LAB_DIR"])
        .join("layers")
        .join(&ami);
    assert!(layer.is_dir(), "no layer {}", layer.display());
    let used = std::fs::read_to_string(layer.join("etc/used-token")).unwrap_or_default();
    assert_eq!(
        used.trim(),
        "done",
        "the step's own file is not in the image"
    );
    let sudo_lines = std::fs::read_to_string(layer.join("var/log/auth.log"))
        .unwrap_or_default()
        .matches("COMMAND=")
        .count();
    assert!(sudo_lines >= 2, "no sudo lines in the image's auth.log");
    let mut pats = vec![secret.clone()];
    pats.extend(temp_key.split_whitespace().nth(1).map(str::to_string));
    let mut hits = Vec::new();
    for p in &pats {
        let g = Command::new("grep")
            .args(["-rlaF", "--", p])
            .arg(&layer)
            .output()
            .unwrap();
        hits.extend(stdout(&g).lines().map(str::to_string));
    }
    eprintln!(
        "hostile: secrets: {} pattern(s) grepped in the image's layer ({} sudo lines there): {} hit(s)",
        pats.len(),
        sudo_lines,
        hits.len()
    );
    assert!(
        hits.is_empty(),
        "the image carries the secret or the key: {hits:?}"
    );
    let left = leftovers_of_build(&h.lab.env, &id);
    assert!(left.is_empty(), "{left:#?}");
}
