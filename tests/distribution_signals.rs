//! Ctrl-C while copies to other regions are still pending (issue 13): the unfinished copies and
//! their snapshots are removed in every region, the finished image of the build region stays
//! (it is complete and was tested), and the next run copies without building.
//!
//! A build killed (SIGKILL) while copies are pending leaves half-made copies in the copy
//! regions; `bake gc` in the build region finds and removes them (the journal names the
//! regions the build copies to).
//!
//! Copies take time only on the lab's realistic profile, which is lab-wide: this file is its
//! own test binary, and its tests take turns (SERIAL).

#![cfg(feature = "lab")]

mod common;

use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use common::run::{Running, leftovers_of_build};
use common::*;

const EXTRA: [&str; 2] = ["us-west-2", "eu-west-1"];

/// The realistic profile is lab-wide: one test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// The lab's realistic profile (EC2's delays at `scale`) until dropped.
struct Realistic<'a>(&'a Lab);

impl<'a> Realistic<'a> {
    fn new(lab: &'a Lab, scale: f64) -> Self {
        let p = serde_json::json!({"profile": "realistic", "time_scale": scale});
        lab_api(&lab.env, "POST", "profile", &p.to_string());
        Realistic(lab)
    }
}

impl Drop for Realistic<'_> {
    fn drop(&mut self) {
        lab_api(&self.0.env, "POST", "profile", r#"{"profile": "instant"}"#);
    }
}

fn images_in(lab: &Lab, region: &str, recipe: &str) -> Vec<aws_sdk_ec2::types::Image> {
    lab.images_through(&lab.ec2_in(region), recipe)
}

#[test]
fn sigint_during_copies_removes_the_unfinished_copies_and_the_rerun_only_copies() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let lab = Lab::new();
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let name = unique("dist-int-");
    let r = copies_recipe(tmp.path(), &name);
    let (code, err) = {
        // A copy is pending for 20 s × 0.25 plus its bytes: SIGINT lands while both are.
        let _slow = Realistic::new(&lab, 0.25);
        interrupt_when(&lab, &cache, &r, "distribute:", Duration::from_millis(1500))
    };
    assert_eq!(code, Some(130), "{err}");
    for region in EXTRA {
        // The copy was made (its undo names the id CopyImage returned) and then removed.
        assert!(
            err.lines()
                .any(|l| l.contains("cleanup") && l.contains("copy ami-") && l.contains(region)),
            "the copy to {region} was under way and is removed:\n{err}"
        );
    }
    for region in EXTRA {
        assert!(
            images_in(&lab, region, &name).is_empty(),
            "no copy left in {region}:\n{err}"
        );
    }
    let home = images_in(&lab, "us-east-1", &name);
    assert_eq!(home.len(), 1, "the build region's image stays:\n{err}");
    let home_tags = tags(home[0].tags());
    assert_eq!(home_tags["bake:state"], "complete", "{home_tags:?}");
    // Every region, in the lab's own report: nothing else of this recipe.
    assert_eq!(
        lab_leftovers(&lab.env, &name, &["image", "snapshot"]),
        Vec::<String>::new(),
        "{err}"
    );
    let left: Vec<String> = lab_leftovers(&lab.env, &name, &[])
        .into_iter()
        .filter(|l| l.starts_with("image "))
        .collect();
    assert_eq!(left.len(), 1, "only the finished image: {left:?}");

    // The rerun is a cache hit that only copies.
    let b = build_json(&lab, &cache, &r, &[]);
    assert_eq!(b["cached"], true, "{b}");
    for region in EXTRA {
        assert_eq!(images_in(&lab, region, &name).len(), 1, "{region}: {b}");
    }
    assert_eq!(
        lab_leftovers(&lab.env, &name, &["image", "snapshot"]),
        Vec::<String>::new()
    );
}

#[test]
fn sigkill_during_copies_then_gc_in_the_build_region_removes_the_copies_everywhere() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let lab = Lab::new();
    let tmp = tempfile::tempdir().unwrap();
    let name = unique("dist-kill-");
    let r = copies_recipe(tmp.path(), &name);
    let bake = |args: &[&str]| {
        let mut c = lab.bake(&tmp.path().join("cache"));
        // A journal of this test's own.
        c.env("XDG_STATE_HOME", tmp.path().join("state"));
        c.args(args);
        c
    };
    let id = {
        let _slow = Realistic::new(&lab, 0.25);
        let mut cmd: Command = bake(&["build", "--plain"]);
        cmd.arg(&r);
        let mut b = Running::start(cmd);
        b.wait_for("distribute:");
        std::thread::sleep(Duration::from_millis(1500));
        let id = b.build_id();
        b.kill9();
        id
    };
    let pending: Vec<String> = EXTRA
        .into_iter()
        .flat_map(|region| images_in(&lab, region, &name))
        .filter_map(|i| i.image_id().map(str::to_string))
        .collect();
    assert_eq!(
        pending.len(),
        2,
        "a half-made copy in each region: {pending:?}"
    );

    // No --region: the build region's gc looks in the regions the build copies to.
    let out = bake(&["gc", "--yes", "--output", "json"]).output().unwrap();
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let v = json(&out);
    assert_eq!(v["regions"][0], "us-east-1", "{v}");
    for region in EXTRA {
        assert!(
            v["regions"].as_array().unwrap().iter().any(|r| r == region),
            "{v}"
        );
        let here = v["builds"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["build_id"] == id.as_str() && b["region"] == region)
            .unwrap_or_else(|| panic!("{id} in {region}: {v}"));
        assert!(
            here["resources"]
                .as_array()
                .unwrap()
                .iter()
                .any(|x| x["kind"] == "image" && x["result"].is_string()),
            "{here}"
        );
        assert!(
            images_in(&lab, region, &name).is_empty(),
            "no copy left in {region}"
        );
    }
    assert_eq!(
        leftovers_of_build(&lab.env, &id),
        Vec::<String>::new(),
        "{v}"
    );
    // The build region's finished image is a result: gc never touches it.
    assert_eq!(images_in(&lab, "us-east-1", &name).len(), 1);
    assert!(
        !tmp.path()
            .join(format!("state/bake/builds/{id}.json"))
            .exists(),
        "the journal entry goes once everything is gone"
    );
}
