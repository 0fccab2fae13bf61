//! Ctrl-C while copies to other regions are still pending (issue 13): the unfinished copies and
//! their snapshots are removed in every region, the finished image of the build region stays
//! (it is complete and was tested), and the next run copies without building.
//!
//! Copies take time only on the lab's realistic profile, which is lab-wide: this file is its
//! own test binary with this one test, so no other test runs beside it.

#![cfg(feature = "lab")]

mod common;

use std::time::Duration;

use common::*;

const EXTRA: [&str; 2] = ["us-west-2", "eu-west-1"];

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
    let conf = lab
        .conf
        .to_builder()
        .region(aws_config::Region::new(region.to_string()))
        .build();
    lab.images_through(&aws_sdk_ec2::Client::new(&conf), recipe)
}

#[test]
fn sigint_during_copies_removes_the_unfinished_copies_and_the_rerun_only_copies() {
    let lab = Lab::new();
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let name = unique("dist-int-");
    let r = write_recipe(
        tmp.path(),
        &name,
        Recipe {
            tail: "regions = [\"us-west-2\", \"eu-west-1\"]",
            ..Recipe::default()
        },
    );
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
