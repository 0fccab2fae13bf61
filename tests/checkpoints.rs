//! Checkpoints against the lab, driving the real binary: a `checkpoint = true` step leaves an
//! image of the running builder; a later build whose prefix is unchanged boots from it and runs
//! only what follows (uploads placed `before` a later step included); a changed prefix does not
//! use it; the image from a checkpoint holds what a build from the source holds; an interrupted
//! build leaves no half-made checkpoint, and `bake gc` removes the one a killed build left.

#![cfg(feature = "lab")]

mod common;

use std::path::Path;
use std::time::Duration;

use common::run::*;
use common::*;

/// The prefix appends to a file (so a re-run shows as a second line); the late upload belongs
/// to the last step only.
fn recipe(dir: &Path, name: &str, base: &str) -> std::path::PathBuf {
    let tail = format!(
        r#"
[[upload]]
source = "early.txt"
destination = "/opt/ck/early.txt"

[[upload]]
source = "late.txt"
destination = "/opt/ck/late.txt"
before = "app"

[[step]]
name = "base"
sudo = true
run = "{base}"
checkpoint = true

[[step]]
name = "app"
sudo = true
run = "cp /opt/ck/late.txt /opt/ck/app.txt"
"#
    );
    write_recipe(
        dir,
        name,
        Recipe {
            ssh: "timeout = \"60s\"",
            tail: &tail,
            ..Recipe::default()
        },
    )
}

/// The image the builder of build `build_id` was launched from.
fn builder_image(lab: &Lab, build_id: &str) -> String {
    lab.rt.block_on(async {
        let out = lab
            .ec2
            .describe_instances()
            .filters(
                aws_sdk_ec2::types::Filter::builder()
                    .name("tag:bake:build-id")
                    .values(build_id)
                    .build(),
            )
            .send()
            .await
            .unwrap();
        let imgs: Vec<String> = out
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .filter(|i| i.tags().iter().any(|t| t.key() == Some("bake:temporary")))
            .filter(|i| {
                !i.tags()
                    .iter()
                    .any(|t| t.value().is_some_and(|v| v.contains("bake test")))
            })
            .filter_map(|i| i.image_id().map(str::to_string))
            .collect();
        assert_eq!(imgs.len(), 1, "one builder for {build_id}: {imgs:?}");
        imgs[0].clone()
    })
}

/// What an instance of `ami` holds under /opt/ck (names and digests) and which cloud-init
/// instance directories it carries, as one text.
fn contents(lab: &Lab, ami: &str, dir: &Path) -> (String, String) {
    let dir = dir.join(ami);
    std::fs::create_dir_all(&dir).unwrap();
    let (id, ip, key) = lab.launch_for_check(ami, &dir);
    let out = ssh(
        &ip,
        &key,
        "admin",
        "cd /opt/ck && sha256sum $(ls | sort) && cat base.log; i=$(cat /var/lib/cloud/data/instance-id); \
         echo own=$(ls /var/lib/cloud/instances | grep -cx \"$i\"); echo --; \
         ls /var/lib/cloud/instances | grep -vx \"$i\" || true",
    );
    lab.terminate(&id);
    assert!(out.status.success(), "{}", stderr(&out));
    (stdout(&out), id)
}

fn image_tags(lab: &Lab, ami: &str) -> std::collections::BTreeMap<String, String> {
    lab.rt.block_on(async {
        let out = lab
            .ec2
            .describe_images()
            .image_ids(ami)
            .send()
            .await
            .unwrap();
        tags(out.images()[0].tags())
    })
}

#[test]
fn a_checkpoint_is_made_then_used_and_gives_the_image_a_full_build_gives() {
    let lab = Lab::new();
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let name = unique("ckpt-");
    std::fs::write(d.join("early.txt"), "early\n").unwrap();
    std::fs::write(d.join("late.txt"), "v1\n").unwrap();
    let base = "mkdir -p /opt/ck && echo ran >> /opt/ck/base.log";
    let r = recipe(d, &name, base);
    let cache = d.join("cache");

    // 1. From the source: the checkpoint image is made and completed, never a cache hit.
    let b1 = build_json(&lab, &cache, &r, &[]);
    assert!(b1["from_checkpoint"].is_null(), "{b1}");
    let made = b1["checkpoints"].as_array().unwrap();
    assert_eq!(made.len(), 1, "{b1}");
    assert_eq!(made[0]["step"], "base");
    let ckpt = made[0]["ami_id"].as_str().unwrap().to_string();
    let source = b1["source_ami"].as_str().unwrap().to_string();
    assert_eq!(
        builder_image(&lab, b1["build_id"].as_str().unwrap()),
        source
    );
    let t = image_tags(&lab, &ckpt);
    assert_eq!(t.get("bake:checkpoint").map(String::as_str), Some("base"));
    assert_eq!(t.get("bake:state").map(String::as_str), Some("complete"));
    assert_eq!(t.get("bake:recipe"), Some(&name));
    assert!(!t.contains_key("bake:fingerprint"), "{t:?}");
    assert_eq!(
        t.get("bake:checkpoint-fingerprint"),
        made[0]["fingerprint"].as_str().map(str::to_string).as_ref()
    );
    let snap = lab.rt.block_on(async {
        let out = lab
            .ec2
            .describe_images()
            .image_ids(&ckpt)
            .send()
            .await
            .unwrap();
        out.images()[0].block_device_mappings()[0]
            .ebs()
            .unwrap()
            .snapshot_id()
            .unwrap()
            .to_string()
    });
    let st = lab.snapshot_tags(&snap);
    assert_eq!(st.get("bake:checkpoint").map(String::as_str), Some("base"));
    assert_eq!(st.get("bake:state").map(String::as_str), Some("complete"));

    // Never a deploy candidate, even named explicitly (refused before the group is looked at).
    let dep = lab
        .bake(&cache)
        .args(["deploy", "--asg", "no-such-group", "--ami", &ckpt])
        .output()
        .unwrap();
    assert_exit(
        &dep,
        1,
        &["is a bake checkpoint", "never a deploy candidate"],
    );

    // 2. A late upload changed: plan names the checkpoint, the build boots from it and runs
    //    only the last step with its upload.
    std::fs::write(d.join("late.txt"), "v2\n").unwrap();
    let plan = lab
        .bake(&cache)
        .args(["plan", "--output", "json"])
        .arg(&r)
        .output()
        .unwrap();
    let pj = json(&plan);
    assert_eq!(
        pj["plans"][0]["checkpoint"]["ami_id"],
        ckpt.as_str(),
        "{pj}"
    );
    assert_eq!(pj["plans"][0]["checkpoint"]["step"], "base");
    let plan_text = lab.bake(&cache).arg("plan").arg(&r).output().unwrap();
    assert!(
        stdout(&plan_text).contains(&format!("from checkpoint {ckpt} (after step base")),
        "{}",
        stdout(&plan_text)
    );
    let b2 = build_json(&lab, &cache, &r, &[]);
    assert_eq!(b2["from_checkpoint"]["ami_id"], ckpt.as_str(), "{b2}");
    assert_eq!(b2["from_checkpoint"]["step"], "base");
    assert_eq!(b2["checkpoints"].as_array().unwrap().len(), 0, "{b2}");
    assert_eq!(builder_image(&lab, b2["build_id"].as_str().unwrap()), ckpt);
    let stages: Vec<&str> = b2["stages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert!(
        !stages.contains(&"step base") && stages.contains(&"step app"),
        "{stages:?}"
    );
    assert!(stages.contains(&"upload before app"), "{stages:?}");
    let ami2 = b2["ami_id"].as_str().unwrap().to_string();
    assert_eq!(
        image_tags(&lab, &ami2).get("bake:from-checkpoint"),
        Some(&ckpt)
    );
    let (files2, _) = contents(&lab, &ami2, d);
    assert!(
        files2.contains("\nran\nown=1\n--\n"),
        "the prefix ran once: {files2}"
    );
    assert_eq!(files2.matches("ran").count(), 1, "{files2}");

    // 3. The same inputs from the source: the same fingerprint, the same files, and nothing
    //    of the checkpoint's builder (cloud-init's copy of its user data) in either image.
    let b3 = build_json(&lab, &cache, &r, &["--no-checkpoints", "--force"]);
    assert!(b3["from_checkpoint"].is_null(), "{b3}");
    assert_eq!(b3["checkpoints"].as_array().unwrap().len(), 0, "{b3}");
    assert_eq!(b3["fingerprint"], b2["fingerprint"]);
    assert_eq!(
        builder_image(&lab, b3["build_id"].as_str().unwrap()),
        source
    );
    let (files3, _) = contents(&lab, b3["ami_id"].as_str().unwrap(), d);
    assert_eq!(files2, files3);
    assert!(
        files3.ends_with("--\n"),
        "stale cloud-init instances: {files3}"
    );

    // 4. A changed prefix step: from the source again, and a new checkpoint.
    let r4 = recipe(
        d,
        &name,
        &format!("{base} && echo changed > /opt/ck/changed"),
    );
    let b4 = build_json(&lab, &cache, &r4, &[]);
    assert!(b4["from_checkpoint"].is_null(), "{b4}");
    assert_eq!(
        builder_image(&lab, b4["build_id"].as_str().unwrap()),
        source
    );
    let made4 = b4["checkpoints"].as_array().unwrap();
    assert_eq!(made4.len(), 1, "{b4}");
    assert_ne!(made4[0]["ami_id"], ckpt.as_str());
    assert_ne!(made4[0]["fingerprint"], made[0]["fingerprint"]);

    // 5. Pruned with the recipe: the newest checkpoint of the step stays, the older goes.
    let pr = lab
        .bake(&cache)
        .args(["images", "prune", "--recipe", &name, "--keep", "1", "--yes"])
        .output()
        .unwrap();
    assert!(pr.status.success(), "{}{}", stdout(&pr), stderr(&pr));
    let left: Vec<String> = lab
        .images_of(&name)
        .iter()
        .filter_map(|i| i.image_id().map(str::to_string))
        .collect();
    let new_ckpt = made4[0]["ami_id"].as_str().unwrap().to_string();
    assert!(left.contains(&new_ckpt), "{left:?}\n{}", stdout(&pr));
    assert!(!left.contains(&ckpt), "{left:?}\n{}", stdout(&pr));
    assert_eq!(left.len(), 2, "one image, one checkpoint: {left:?}");

    lab.assert_no_leftovers(&name, "after four builds");
}

/// A recipe whose checkpoint is followed by a long step: the checkpoint image stays pending
/// (the build waits for it only at the end) while that step runs.
fn pending_recipe(dir: &Path, name: &str) -> std::path::PathBuf {
    write_recipe(
        dir,
        name,
        Recipe {
            ssh: "timeout = \"60s\"",
            tail: r#"
[[step]]
name = "base"
run = "echo base > /tmp/base"
checkpoint = true

[[step]]
name = "slow"
run = "sleep 30"
"#,
            ..Recipe::default()
        },
    )
}

#[test]
fn sigint_while_a_checkpoint_is_pending_leaves_nothing() {
    let lab = Lab::new();
    let tmp = tempfile::tempdir().unwrap();
    let name = unique("ckpt-int-");
    let r = pending_recipe(tmp.path(), &name);
    // Interrupted while the next step runs: the checkpoint image exists, not yet waited for.
    let (code, err) = interrupt_when(
        &lab,
        &tmp.path().join("cache"),
        &r,
        "pending (prefix",
        Duration::from_millis(500),
    );
    assert_eq!(code, Some(130), "{err}");
    assert!(
        err.contains("image ami-"),
        "the checkpoint was on the stack: {err}"
    );
    assert_eq!(
        lab_leftovers(&lab.env, &name, &[]),
        Vec::<String>::new(),
        "{err}"
    );
    assert!(lab.images_of(&name).is_empty(), "{err}");
    lab.assert_no_leftovers(&name, &err);
}

#[test]
fn gc_removes_the_pending_checkpoint_of_a_killed_build() {
    let lab = Lab::new();
    let tmp = tempfile::tempdir().unwrap();
    let name = unique("ckpt-kill-");
    let r = pending_recipe(tmp.path(), &name);
    let bake = |args: &[&str]| {
        let mut c = lab.bake(&tmp.path().join("cache"));
        c.env("XDG_STATE_HOME", tmp.path().join("state"));
        c.args(args);
        c
    };
    let mut cmd = bake(&["build", "--plain"]);
    cmd.arg(&r);
    let mut b = Running::start(cmd);
    b.wait_for("pending (prefix");
    let id = b.build_id();
    b.kill9();
    let imgs = lab.images_of(&name);
    assert_eq!(imgs.len(), 1, "the killed build left its checkpoint image");
    let t = tags(imgs[0].tags());
    assert_eq!(t.get("bake:state").map(String::as_str), Some("pending"));
    let out = bake(&["gc", "--yes"]).output().unwrap();
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert_eq!(
        leftovers_of_build(&lab.env, &id),
        Vec::<String>::new(),
        "{}",
        stdout(&out)
    );
    assert!(lab.images_of(&name).is_empty(), "{}", stdout(&out));
    assert_eq!(lab_leftovers(&lab.env, &name, &[]), Vec::<String>::new());
}

#[test]
fn a_failing_later_step_keeps_the_checkpoint_for_the_fixed_build() {
    let lab = Lab::new();
    let tmp = tempfile::tempdir().unwrap();
    let name = unique("ckpt-fail-");
    let r = |app: &str| {
        let tail = format!(
            "[[step]]\nname = \"base\"\nrun = \"echo base >> /tmp/base\"\ncheckpoint = true\n\n\
             [[step]]\nname = \"app\"\nrun = \"{app}\"\n"
        );
        write_recipe(
            tmp.path(),
            &name,
            Recipe {
                ssh: "timeout = \"60s\"",
                tail: &tail,
                ..Recipe::default()
            },
        )
    };
    let out = lab.build(tmp.path(), &["--plain"], &r("exit 3"));
    let err = assert_exit(&out, 1, &["keeping them for the next build"]);
    let imgs = lab.images_of(&name);
    assert_eq!(imgs.len(), 1, "{err}");
    let t = tags(imgs[0].tags());
    assert_eq!(t.get("bake:checkpoint").map(String::as_str), Some("base"));
    assert_eq!(t.get("bake:state").map(String::as_str), Some("complete"));
    let ckpt = imgs[0].image_id().unwrap().to_string();
    lab.assert_no_leftovers(&name, &err);

    let b = build_json(&lab, &tmp.path().join("cache"), &r("true"), &[]);
    assert_eq!(b["from_checkpoint"]["ami_id"], ckpt.as_str(), "{b}");
    assert_eq!(builder_image(&lab, b["build_id"].as_str().unwrap()), ckpt);
    lab.assert_no_leftovers(&name, "after the fixed build");
}
