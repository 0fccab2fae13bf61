//! Builds that survive a hostile EC2, driving the real `bake` binary against the lab with its
//! strict rules, injected faults (`/lab-api/faults`) and signals: never touching what the build
//! did not make, adopting creates whose answers were lost, waiting out throttling and
//! visibility lag, and cleaning up through CI's cancel sequence.
//!
//! The tests here change lab-wide settings (fault rules, the fault profile), so they take one
//! lock and run one at a time; each restores the lab when it ends, even when it fails.

#![cfg(feature = "lab")]

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc::Receiver;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::*;

static SERIAL: Mutex<()> = Mutex::new(());

/// The lab's hostile profile with its default figures (scripts/lab-server/lab/faults.py).
const HOSTILE_DEFAULTS: &str = r#"{"faults": "hostile", "seed": 11, "buckets": true, "throttle": 0.02, "5xx": 0.03, "lost": 0.03, "lag": 3, "lag_min": 0}"#;

/// Holds the lab for one test and clears fault rules and profile when dropped.
struct LabFaults<'a> {
    lab: &'a Lab,
    _serial: MutexGuard<'static, ()>,
}

impl<'a> LabFaults<'a> {
    fn take(lab: &'a Lab) -> LabFaults<'a> {
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let f = LabFaults {
            lab,
            _serial: serial,
        };
        f.clear();
        f
    }

    /// No rules, faults off, and the profile's figures back at the lab's defaults (a profile
    /// update only changes the keys it names).
    fn clear(&self) {
        lab_api(&self.lab.env, "DELETE", "faults", "");
        let off = HOSTILE_DEFAULTS.replace("hostile", "off");
        lab_api(&self.lab.env, "POST", "faults/profile", &off);
        lab_api(&self.lab.env, "DELETE", "calls", "");
    }

    /// Adds rules; returns their ids.
    fn rules(&self, rules: serde_json::Value) -> Vec<u64> {
        let body = serde_json::json!({ "rules": rules }).to_string();
        let v = lab_api(&self.lab.env, "POST", "faults", &body);
        v["rules"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_u64().unwrap())
            .collect()
    }

    /// How often each rule fired, by id.
    fn fired(&self) -> std::collections::BTreeMap<u64, u64> {
        let v = lab_api(&self.lab.env, "GET", "faults", "");
        v["rules"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["id"].as_u64().unwrap(), r["fired"].as_u64().unwrap()))
            .collect()
    }

    fn profile(&self, p: serde_json::Value) {
        lab_api(&self.lab.env, "POST", "faults/profile", &p.to_string());
    }

    fn timing(&self, p: serde_json::Value) {
        lab_api(&self.lab.env, "POST", "profile", &p.to_string());
    }
}

impl Drop for LabFaults<'_> {
    fn drop(&mut self) {
        self.clear();
        self.timing(serde_json::json!({"profile": "instant"}));
    }
}

/// A small recipe whose image is named `image_name` (a template) and whose one step runs `run`.
fn recipe(dir: &Path, name: &str, image_name: &str, run: &str) -> PathBuf {
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(
        &p,
        format!(
            r#"name = "{name}"
[source.filter]
owners = ["136693071363"]
name = "debian-12-amd64-*"
[builder]
instance_type = "t3.micro"
[ssh]
username = "admin"
timeout = "60s"
[image]
name = "{image_name}"
[[step]]
name = "work"
run = "{run}"
"#
        ),
    )
    .unwrap();
    p
}

/// Somebody else's image named `name`: (image id, its snapshots). Made from a plain instance
/// of the lab's Debian image, which is terminated again.
fn foreign_image(lab: &Lab, name: &str) -> (String, Vec<String>) {
    let inst = run_plain_instance(lab);
    let img = create_image(lab, &inst, name);
    lab.terminate(&inst);
    img
}

fn run_plain_instance(lab: &Lab) -> String {
    lab.rt.block_on(async {
        let ami = lab
            .ec2
            .describe_images()
            .owners("136693071363")
            .send()
            .await
            .unwrap()
            .images()[0]
            .image_id()
            .unwrap()
            .to_string();
        let out = lab
            .ec2
            .run_instances()
            .image_id(ami)
            .instance_type("t3.micro".into())
            .min_count(1)
            .max_count(1)
            .send()
            .await
            .unwrap();
        out.instances()[0].instance_id().unwrap().to_string()
    })
}

fn create_image(lab: &Lab, instance: &str, name: &str) -> (String, Vec<String>) {
    lab.rt.block_on(async {
        let id = lab
            .ec2
            .create_image()
            .instance_id(instance)
            .name(name)
            .send()
            .await
            .unwrap()
            .image_id()
            .unwrap()
            .to_string();
        let img = lab
            .ec2
            .describe_images()
            .image_ids(&id)
            .send()
            .await
            .unwrap();
        let snaps = img.images()[0]
            .block_device_mappings()
            .iter()
            .filter_map(|m| m.ebs()?.snapshot_id().map(str::to_string))
            .collect();
        (id, snaps)
    })
}

/// Asserts the image and its snapshots still exist.
fn assert_intact(lab: &Lab, image: &str, snaps: &[String], context: &str) {
    lab.rt.block_on(async {
        let img = lab.ec2.describe_images().image_ids(image).send().await;
        let img = img.unwrap_or_else(|e| panic!("{image} is gone: {e:?}\n{context}"));
        assert_eq!(img.images().len(), 1, "{image} is gone\n{context}");
        for s in snaps {
            let r = lab.ec2.describe_snapshots().snapshot_ids(s).send().await;
            assert!(r.is_ok(), "snapshot {s} of {image} is gone\n{context}");
        }
    });
}

/// Asserts nothing of `name`'s builds is left, by Describe calls and by the lab's report (build
/// locks included); with `keep_images` the images the builds made are meant to stay.
fn assert_nothing_left(lab: &Lab, name: &str, keep_images: bool, context: &str) {
    lab.assert_no_leftovers(name, context);
    let except: &[&str] = if keep_images { &["image"] } else { &[] };
    assert_eq!(
        lab_leftovers(&lab.env, name, except),
        Vec::<String>::new(),
        "{context}"
    );
    // Build locks carry no recipe: find them by the fingerprints the builds printed.
    for fp in context.split("fingerprint ").skip(1) {
        let short: String = fp.chars().take_while(|c| c.is_ascii_hexdigit()).collect();
        if short.len() >= 12 {
            let lock = format!("bake-lock-{}", &short[..12]);
            assert_eq!(
                lab_leftovers(&lab.env, &lock, &[]),
                Vec::<String>::new(),
                "build lock left\n{context}"
            );
        }
    }
}

#[test]
fn a_taken_image_name_is_refused_before_anything_is_created() {
    let lab = Lab::new();
    let _f = LabFaults::take(&lab);
    let tmp = tempfile::tempdir().unwrap();
    let name = unique("taken-");
    let image_name = format!("{name}-fixed");
    let (other, snaps) = foreign_image(&lab, &image_name);
    let r = recipe(tmp.path(), &name, "{recipe}-fixed", "echo never");
    for args in [&["--plain"][..], &["--plain", "--force"][..]] {
        let out = lab.build(tmp.path(), args, &r);
        let err = assert_exit(&out, 1, &["already taken", &other, "not made by bake"]);
        assert!(!err.contains("launch:"), "launched anyway:\n{err}");
        assert_intact(&lab, &other, &snaps, &err);
        assert!(lab.instances_launched(&name).is_empty(), "{err}");
        assert_nothing_left(&lab, &name, true, &err);
    }
}

#[test]
fn an_image_name_taken_during_the_build_is_not_ours_to_remove() {
    let lab = Lab::new();
    let _f = LabFaults::take(&lab);
    let tmp = tempfile::tempdir().unwrap();
    let name = unique("race-");
    let image_name = format!("{name}-fixed");
    let other_instance = run_plain_instance(&lab);
    let r = recipe(
        tmp.path(),
        &name,
        "{recipe}-fixed",
        "echo started-work; sleep 2",
    );
    let (mut child, lines) = spawn_build(&lab, tmp.path(), &r, &[]);
    wait_for(&lines, "started-work");
    // Somebody takes the name while the builder is being provisioned.
    let (other, snaps) = create_image(&lab, &other_instance, &image_name);
    lab.terminate(&other_instance);
    let status = child.wait().unwrap();
    let err = collect(&lines);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("already taken") && err.contains(&other),
        "{err}"
    );
    assert_intact(&lab, &other, &snaps, &err);
    assert!(lab.images_of(&name).is_empty(), "{err}");
    assert_nothing_left(&lab, &name, true, &err);
}

#[test]
fn lost_answers_to_every_create_are_adopted_and_one_builder_is_launched() {
    let lab = Lab::new();
    let f = LabFaults::take(&lab);
    let tmp = tempfile::tempdir().unwrap();
    let name = unique("lost-");
    let re = |p: &str| serde_json::json!({ "regex": format!("^{p}") });
    let lost = |action: &str, params: serde_json::Value| serde_json::json!({"service": "ec2", "action": action, "kind": "lost", "times": 1, "params": params});
    let ids = f.rules(serde_json::json!([
        lost(
            "ImportKeyPair",
            serde_json::json!({"KeyName": re("bake-lock-")})
        ),
        lost(
            "ImportKeyPair",
            serde_json::json!({"KeyName": re(&format!("bake-{name}-"))})
        ),
        lost(
            "CreateSecurityGroup",
            serde_json::json!({"GroupName": re(&format!("bake-{name}-"))})
        ),
        lost(
            "RunInstances",
            serde_json::json!({"TagSpecification.1.Tag.1.Value": format!("bake builder {name}")})
        ),
        lost("CreateImage", serde_json::json!({"Name": re(&name)})),
    ]));
    let r = recipe(tmp.path(), &name, "{recipe}-{short_hash}", "echo built");
    let out = lab.build(tmp.path(), &["--plain"], &r);
    let err = assert_exit(&out, 0, &["built"]);
    let fired = f.fired();
    for id in &ids {
        assert_eq!(
            fired.get(id),
            Some(&1),
            "rule {id} did not fire: {fired:?}\n{err}"
        );
    }
    assert_eq!(lab.instances_launched(&name).len(), 1, "{err}");
    assert_eq!(lab.images_of(&name).len(), 1, "{err}");
    assert_nothing_left(&lab, &name, true, &err);
}

#[test]
fn throttled_run_instances_and_lagging_visibility_are_waited_out() {
    let lab = Lab::new();
    let f = LabFaults::take(&lab);
    let tmp = tempfile::tempdir().unwrap();
    let name = unique("slow-");
    // More throttling than the SDK's default three attempts would ride out.
    let ids = f.rules(serde_json::json!([{
        "service": "ec2", "action": "RunInstances", "kind": "throttle", "times": 5,
        "params": {"TagSpecification.1.Tag.1.Value": format!("bake builder {name}")}
    }]));
    // Every new resource is invisible to Describe calls for 1-2 s.
    f.profile(serde_json::json!({
        "faults": "hostile", "throttle": 0, "5xx": 0, "lost": 0, "buckets": false,
        "lag": 2, "lag_min": 1
    }));
    let r = recipe(tmp.path(), &name, "{recipe}-{short_hash}", "echo built");
    let out = lab.build(tmp.path(), &["--plain"], &r);
    let err = assert_exit(&out, 0, &["built"]);
    assert_eq!(f.fired()[&ids[0]], 5, "{err}");
    assert_eq!(lab.instances_launched(&name).len(), 1, "{err}");
    assert_nothing_left(&lab, &name, true, &err);
}

#[test]
fn a_builder_launched_without_an_answer_is_found_by_tag_and_terminated() {
    let lab = Lab::new();
    let f = LabFaults::take(&lab);
    let tmp = tempfile::tempdir().unwrap();
    let name = unique("unans-");
    // Every RunInstances attempt launches (the same instance: one client token) and loses its
    // answer; the new instance is not visible for 1-2 s, so cleanup must keep looking.
    f.rules(serde_json::json!([{
        "service": "ec2", "action": "RunInstances", "kind": "lost", "times": 100,
        "params": {"TagSpecification.1.Tag.1.Value": format!("bake builder {name}")}
    }]));
    f.profile(serde_json::json!({
        "faults": "hostile", "throttle": 0, "5xx": 0, "lost": 0, "buckets": false,
        "lag": 2, "lag_min": 1
    }));
    let r = recipe(tmp.path(), &name, "{recipe}-{short_hash}", "echo never");
    let out = lab
        .bake(&tmp.path().join("cache"))
        .env("AWS_MAX_ATTEMPTS", "2")
        .args(["build", "--plain"])
        .arg(&r)
        .output()
        .unwrap();
    let err = assert_exit(
        &out,
        1,
        &[
            "RunInstances",
            "removing instances tagged bake:build-id=",
            "terminated i-",
        ],
    );
    assert_eq!(lab.instances_launched(&name).len(), 1, "{err}");
    assert_nothing_left(&lab, &name, false, &err);
}

/// Starts `bake build --plain <extra> <recipe>`; stderr lines arrive on the receiver.
fn spawn_build(lab: &Lab, dir: &Path, recipe: &Path, extra: &[&str]) -> (Child, Receiver<String>) {
    let mut child = lab
        .bake(&dir.join("cache"))
        .args(["build", "--plain"])
        .args(extra)
        .arg(recipe)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    (child, rx)
}

/// Reads lines until one contains `marker` (at most two minutes); returns them.
fn wait_for(lines: &Receiver<String>, marker: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seen = String::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("{marker:?} never appeared:\n{seen}"));
        seen.push_str(&line);
        seen.push('\n');
        if line.contains(marker) {
            return seen;
        }
    }
}

/// The rest of the lines (the process has exited or will).
fn collect(lines: &Receiver<String>) -> String {
    let mut all = String::new();
    while let Ok(l) = lines.recv_timeout(Duration::from_secs(30)) {
        all.push_str(&l);
        all.push('\n');
    }
    all
}

const SIGHUP: i32 = 1;
const SIGINT: i32 = 2;
const SIGKILL: i32 = 9;
const SIGTERM: i32 = 15;

/// Makes removing the security group slow: EC2 says "in use" this often first.
fn slow_group_delete(f: &LabFaults<'_>, times: u32) {
    f.rules(serde_json::json!([{
        "service": "ec2", "action": "DeleteSecurityGroup", "kind": "error", "status": 400,
        "code": "DependencyViolation", "message": "resource has a dependent object",
        "times": times
    }]));
}

#[test]
fn ci_cancel_sequence_sigterm_does_not_abandon_cleanup() {
    let lab = Lab::new();
    let f = LabFaults::take(&lab);
    let tmp = tempfile::tempdir().unwrap();
    let name = unique("cancel-");
    let r = recipe(
        tmp.path(),
        &name,
        "{recipe}-{short_hash}",
        "echo started-long; sleep 60",
    );
    // Cleanup takes a second or two, so SIGTERM lands in the middle of it.
    slow_group_delete(&f, 6);
    let (mut child, lines) = spawn_build(&lab, tmp.path(), &r, &[]);
    let mut err = wait_for(&lines, "started-long");
    // GitHub Actions: SIGINT, SIGTERM 7.5 s later, SIGKILL 2.5 s after that; the first gap is
    // scaled down to 0.75 s here (cleanup is shorter in the lab too).
    signal(&child, SIGINT);
    std::thread::sleep(Duration::from_millis(750));
    signal(&child, SIGTERM);
    let kill_at = Instant::now() + Duration::from_millis(2500);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() >= kill_at {
            signal(&child, SIGKILL);
            child.wait().unwrap();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    err.push_str(&collect(&lines));
    let status = status.unwrap_or_else(|| panic!("still cleaning up at SIGKILL:\n{err}"));
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(
        err.contains("terminated (SIGTERM): still cleaning up"),
        "{err}"
    );
    assert!(!err.contains("cleanup interrupted"), "{err}");
    assert_nothing_left(&lab, &name, false, &err);
}

#[test]
fn sighup_starts_cleanup() {
    let lab = Lab::new();
    let _f = LabFaults::take(&lab);
    let tmp = tempfile::tempdir().unwrap();
    let name = unique("hup-");
    let r = recipe(
        tmp.path(),
        &name,
        "{recipe}-{short_hash}",
        "echo started-long; sleep 60",
    );
    let (mut child, lines) = spawn_build(&lab, tmp.path(), &r, &[]);
    let mut err = wait_for(&lines, "started-long");
    signal(&child, SIGHUP);
    let status = child.wait().unwrap();
    err.push_str(&collect(&lines));
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(err.contains("hung up (SIGHUP): cleaning up"), "{err}");
    assert_nothing_left(&lab, &name, false, &err);
}

#[test]
fn a_second_sigint_abandons_cleanup_and_says_exactly_what_is_left() {
    let lab = Lab::new();
    let f = LabFaults::take(&lab);
    let tmp = tempfile::tempdir().unwrap();
    let name = unique("abandon-");
    let r = recipe(
        tmp.path(),
        &name,
        "{recipe}-{short_hash}",
        "echo started-long; sleep 60",
    );
    // The group stays "in use" far longer than the test waits.
    slow_group_delete(&f, 1000);
    let (mut child, lines) = spawn_build(&lab, tmp.path(), &r, &[]);
    let mut err = wait_for(&lines, "started-long");
    signal(&child, SIGINT);
    err.push_str(&wait_for(&lines, "removing security group"));
    signal(&child, SIGINT);
    let status = child.wait().unwrap();
    err.push_str(&collect(&lines));
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(err.contains("cleanup interrupted"), "{err}");
    // What is left is exactly what was reported: the security group, and nothing else.
    let left = lab.leftovers(&name);
    assert_eq!(left.len(), 1, "{left:?}\n{err}");
    assert!(left[0].starts_with("security group "), "{left:?}");
    let sg = left[0].trim_start_matches("security group ");
    let listed: Vec<&str> = err.lines().filter(|l| l.contains("  - ")).collect();
    assert_eq!(listed.len(), 1, "{err}");
    assert!(listed[0].contains(&format!("security group {sg}")), "{err}");
    // Clean up by hand what the test made bake leave.
    f.clear();
    lab.rt.block_on(async {
        lab.ec2
            .delete_security_group()
            .group_id(sg)
            .send()
            .await
            .unwrap();
    });
    assert_nothing_left(&lab, &name, false, &err);
}

#[test]
fn five_builds_at_once_on_a_hostile_ec2_all_succeed_and_leave_nothing() {
    let lab = Lab::new();
    let f = LabFaults::take(&lab);
    let tmp = tempfile::tempdir().unwrap();
    let base = unique("hostile-");
    let names: Vec<String> = (0..5).map(|i| format!("{base}-{i}")).collect();
    let recipes: Vec<PathBuf> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            recipe(
                tmp.path(),
                n,
                "{recipe}-{short_hash}",
                &format!("echo job {i}"),
            )
        })
        .collect();
    // EC2's token buckets, throttling, 5xx, lost answers and visibility lag, all at once, at
    // several times the lab's default rates.
    f.profile(serde_json::json!({
        "faults": "hostile", "seed": 7, "buckets": true, "throttle": 0.1, "5xx": 0.1,
        "lost": 0.1, "lag": 3, "lag_min": 0
    }));
    let out = lab
        .bake(&tmp.path().join("cache"))
        .args(["build", "-j", "5", "--plain", "--output", "json"])
        .args(&recipes)
        .output()
        .unwrap();
    let faults = lab_api(&lab.env, "GET", "faults", "")["random"].clone();
    f.clear();
    let err = stderr(&out);
    assert!(out.status.success(), "faults {faults}:\n{err}");
    for kind in ["throttle", "5xx", "lost", "hidden"] {
        assert!(
            faults[kind].as_u64().unwrap_or(0) > 0,
            "no {kind} faults: {faults}"
        );
    }
    let v = json(&out);
    let builds = v["builds"].as_array().unwrap();
    assert_eq!(builds.len(), 5);
    for (b, n) in builds.iter().zip(&names) {
        assert_eq!(b["recipe"], n.as_str());
        assert!(b["ami_id"].as_str().unwrap().starts_with("ami-"), "{b}");
        assert_eq!(lab.instances_launched(n).len(), 1, "{n}: {err}");
        assert_nothing_left(&lab, n, true, &err);
    }
    eprintln!("hostile faults injected: {faults}");
}
