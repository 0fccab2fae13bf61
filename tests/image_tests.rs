//! `[[test]]` against the lab: tests run on a fresh instance launched from the new image (not
//! the builder), which is gone afterwards; a failing test removes the image and its snapshots
//! (or, with `--keep-failed`, keeps exactly the image, tagged failed); changing only a test
//! re-runs the tests on the same image without building.

#![cfg(feature = "lab")]

mod common;

use std::path::{Path, PathBuf};

use common::*;

/// The recipe `name` in `dir`: one upload, one step, and `tests` as its `[[test]]` tables.
fn recipe(dir: &Path, name: &str, tests: &str) -> PathBuf {
    std::fs::create_dir_all(dir.join("files")).unwrap();
    std::fs::write(dir.join("files/app.txt"), "version 1\n").unwrap();
    let tail = format!(
        "[[upload]]\nsource = \"files/app.txt\"\ndestination = \"/opt/app.txt\"\n\
         [[step]]\nname = \"user\"\nsudo = true\nrun = \"useradd --system app\"\n{tests}"
    );
    let tail: &'static str = Box::leak(tail.into_boxed_str());
    write_recipe(
        dir,
        name,
        Recipe {
            head: "# an image tests recipe",
            tail,
            ..Recipe::default()
        },
    )
}

const PASSING: &str = "[[test]]\nname = \"app file\"\nrun = \"cat /opt/app.txt\"\n\
                       expect_output = \"^version 1$\"\n\
                       [[test]]\nname = \"app user\"\nrun = \"id -u app\"\n";

/// (image id, state) of an instance.
fn instance(lab: &Lab, id: &str) -> (String, String) {
    lab.rt.block_on(async {
        let out = lab
            .ec2
            .describe_instances()
            .instance_ids(id)
            .send()
            .await
            .unwrap();
        let i = &out.reservations()[0].instances()[0];
        (
            i.image_id().unwrap_or_default().to_string(),
            i.state()
                .and_then(|s| s.name())
                .map(|s| s.as_str().to_string())
                .unwrap_or_default(),
        )
    })
}

/// What the lab still holds of `recipe` besides its images and their snapshots.
fn temporaries_left(lab: &Lab, recipe: &str) -> Vec<String> {
    let mut left = lab.leftovers(recipe);
    left.extend(lab_leftovers(&lab.env, recipe, &["image", "snapshot"]));
    left
}

fn image_tags(
    lab: &Lab,
    recipe: &str,
) -> Vec<(String, std::collections::BTreeMap<String, String>)> {
    lab.images_of(recipe)
        .iter()
        .map(|i| (i.image_id().unwrap().to_string(), tags(i.tags())))
        .collect()
}

#[test]
fn passing_tests_run_on_the_new_image_and_changed_tests_rerun_on_the_same_image() {
    let lab = Lab::new();
    let dir = tempfile::tempdir().unwrap();
    let name = unique("itest");
    let path = recipe(dir.path(), &name, PASSING);
    let cache = dir.path().join("cache");

    let b = build_json(&lab, &cache, &path, &[]);
    let ami = b["ami_id"].as_str().unwrap().to_string();
    assert_eq!(b["cached"], false, "{b}");
    let tests = &b["tests"];
    assert_eq!(tests["passed"], true, "{b}");
    let results = tests["results"].as_array().unwrap();
    assert_eq!(results.len(), 2, "{b}");
    for r in results {
        assert_eq!(r["passed"], true, "{r}");
        assert_eq!(r["exit_status"], 0, "{r}");
        assert!(r["seconds"].as_f64().unwrap() > 0.0, "{r}");
    }
    // The tests ran on an instance of the new image, not on the builder, and it is gone.
    let tester = tests["instance_id"].as_str().unwrap();
    let (image_of_tester, state) = instance(&lab, tester);
    assert_eq!(image_of_tester, ami);
    assert_eq!(state, "terminated");
    let fp1 = tests["fingerprint"].as_str().unwrap().to_string();
    let imgs = image_tags(&lab, &name);
    assert_eq!(imgs.len(), 1, "{imgs:?}");
    assert_eq!(imgs[0].1["bake:tested"], fp1, "{imgs:?}");
    assert_eq!(temporaries_left(&lab, &name), Vec::<String>::new());

    // Same inputs, same tests: a plain cache hit, nothing launched.
    let again = build_json(&lab, &cache, &path, &[]);
    assert_eq!(again["cached"], true, "{again}");
    assert!(again.get("tests").is_none(), "{again}");

    // Only a test changes: the same image is tested again (no build) and retagged.
    let path = recipe(
        dir.path(),
        &name,
        &PASSING.replace("id -u app", "getent passwd app"),
    );
    // `bake plan` says so before anything runs: a hit, with tests changed.
    let plan = |path: &Path| {
        let out = lab
            .bake(&cache)
            .args(["plan", "--output", "json"])
            .arg(path)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        json(&out)["plans"][0].clone()
    };
    let p = plan(&path);
    assert_eq!(p["hit"], ami.as_str(), "{p}");
    assert_eq!(p["tests_changed"], true, "{p}");
    let b2 = build_json(&lab, &cache, &path, &[]);
    assert_eq!(b2["cached"], true, "{b2}");
    assert_eq!(plan(&path)["tests_changed"], false, "tested now");
    assert_eq!(b2["ami_id"], ami.as_str(), "{b2}");
    assert_eq!(b2["tests"]["passed"], true, "{b2}");
    let fp2 = b2["tests"]["fingerprint"].as_str().unwrap();
    assert_ne!(fp2, fp1);
    let (image_of_tester, _) = instance(&lab, b2["tests"]["instance_id"].as_str().unwrap());
    assert_eq!(image_of_tester, ami);
    let imgs = image_tags(&lab, &name);
    assert_eq!(imgs.len(), 1, "no new image: {imgs:?}");
    assert_eq!(imgs[0].1["bake:tested"], fp2);

    // `bake test` runs them on demand on the current image.
    let out = lab
        .bake(&cache)
        .args(["test", "--output", "json", "--plain"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let t = one_build(&out);
    assert_eq!(t["ami_id"], ami.as_str(), "{t}");
    assert_eq!(t["tests"]["results"].as_array().unwrap().len(), 2, "{t}");
    assert_eq!(temporaries_left(&lab, &name), Vec::<String>::new());
}

const FAILING: &str = "[[test]]\nname = \"app file\"\nrun = \"cat /opt/app.txt\"\n\
                       [[test]]\nname = \"web answers\"\n\
                       run = \"echo connection refused on 8080; exit 3\"\n";

#[test]
fn a_failing_test_exits_1_with_its_output_and_leaves_nothing() {
    let lab = Lab::new();
    let dir = tempfile::tempdir().unwrap();
    let name = unique("itest-fail");
    let path = recipe(dir.path(), &name, FAILING);
    let out = lab.build(dir.path(), &["--plain"], &path);
    assert_exit(
        &out,
        1,
        &[
            "test \"web answers\" failed with exit status 3",
            "connection refused on 8080",
            "are removed",
        ],
    );
    assert_eq!(image_tags(&lab, &name), vec![]);
    assert_eq!(lab_leftovers(&lab.env, &name, &[]), Vec::<String>::new());
    assert_eq!(lab.leftovers(&name), Vec::<String>::new());
}

#[test]
fn keep_failed_keeps_exactly_the_image_tagged_failed() {
    let lab = Lab::new();
    let dir = tempfile::tempdir().unwrap();
    let name = unique("itest-keep");
    let path = recipe(dir.path(), &name, FAILING);
    let out = lab.build(dir.path(), &["--plain", "--keep-failed"], &path);
    let err = assert_exit(&out, 1, &["test \"web answers\" failed", "--keep-failed"]);
    let imgs = image_tags(&lab, &name);
    assert_eq!(imgs.len(), 1, "{imgs:?}");
    let (ami, t) = &imgs[0];
    assert_eq!(t["bake:tested"], "failed");
    assert!(
        err.contains(&format!("run-instances --image-id {ami}")),
        "{err}"
    );
    let snaps: Vec<String> = lab
        .images_of(&name)
        .iter()
        .flat_map(|i| i.block_device_mappings())
        .filter_map(|m| m.ebs().and_then(|e| e.snapshot_id()).map(str::to_string))
        .collect();
    for s in &snaps {
        assert_eq!(lab.snapshot_tags(s)["bake:tested"], "failed");
    }
    // Besides the image (and the snapshot it is made of), nothing.
    assert_eq!(temporaries_left(&lab, &name), Vec::<String>::new());
}

#[test]
fn sigint_during_a_test_leaves_nothing() {
    let lab = Lab::new();
    let dir = tempfile::tempdir().unwrap();
    let name = unique("itest-int");
    let slow = "[[test]]\nname = \"slow\"\nrun = \"echo started; sleep 30\"\n";
    let path = recipe(dir.path(), &name, slow);
    let (code, err) = interrupt_when(
        &lab,
        &dir.path().join("cache"),
        &path,
        "slow | started",
        std::time::Duration::from_millis(200),
    );
    assert_eq!(code, Some(130), "{err}");
    assert_eq!(image_tags(&lab, &name), vec![], "{err}");
    assert_eq!(
        lab_leftovers(&lab.env, &name, &[]),
        Vec::<String>::new(),
        "{err}"
    );
    assert_eq!(lab.leftovers(&name), Vec::<String>::new(), "{err}");
}

#[test]
fn sigkill_during_a_test_leaves_a_half_made_image_that_gc_removes() {
    let lab = Lab::new();
    let dir = tempfile::tempdir().unwrap();
    let name = unique("itest-kill");
    let slow = "[[test]]\nname = \"slow\"\nrun = \"echo started; sleep 30\"\n";
    let path = recipe(dir.path(), &name, slow);
    let state = dir.path().join("state");
    let mut cmd = lab.bake(&dir.path().join("cache"));
    cmd.env("XDG_STATE_HOME", &state)
        .args(["build", "--plain"])
        .arg(&path);
    let mut b = run::Running::start(cmd);
    b.wait_for("slow | started");
    let id = b.build_id();
    b.kill9();
    let log = b.drain();
    // The image is not finished until its tests pass: no cache hit can pick it up...
    let tags = image_tags(&lab, &name);
    assert_eq!(tags.len(), 1, "one image, made before the tests\n{log}");
    assert_eq!(tags[0].1["bake:state"], "pending", "{log}");
    // ...and gc removes it with the tester and everything else of the build.
    let out = lab
        .bake(&dir.path().join("cache"))
        .env("XDG_STATE_HOME", &state)
        .args(["gc", "--yes"])
        .output()
        .unwrap();
    let said = format!("{}{}", stdout(&out), stderr(&out));
    assert!(out.status.success(), "{said}");
    assert_eq!(image_tags(&lab, &name), vec![], "{said}");
    assert_eq!(
        run::leftovers_of_build(&lab.env, &id),
        Vec::<String>::new(),
        "{said}"
    );
}
