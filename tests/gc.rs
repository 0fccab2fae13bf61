//! `bake gc`, the journal, leases, the dead-man switch and what a finished image must not
//! carry — driving the real binary against the lab. Every test has its own state directory
//! (journal) and recipe name, and checks what is left with the lab's leftovers report.

#![cfg(feature = "lab")]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::run::*;
use common::*;

const SSH: &str = "timeout = \"60s\"";

/// `bake` with the lab's env, a private hash cache and a private journal (`dir/state`).
fn bake(lab: &Lab, dir: &Path) -> Command {
    let mut c = lab.bake(&dir.join("cache"));
    c.env("XDG_STATE_HOME", dir.join("state"));
    c
}

fn build_cmd(lab: &Lab, dir: &Path, recipe: &Path) -> Command {
    let mut c = bake(lab, dir);
    c.args(["build", "--plain"]).arg(recipe);
    c
}

/// Everything the lab still has that names `build_id`, except finished images (results).
fn leftovers_of(build_id: &str) -> Vec<String> {
    leftovers_of_build(&lab_env(), build_id)
}

fn gc(lab: &Lab, dir: &Path, args: &[&str]) -> std::process::Output {
    bake(lab, dir).arg("gc").args(args).output().unwrap()
}

fn sleepy_recipe(
    dir: &Path,
    name: &str,
    builder: &str,
    secs: u32,
    upload: bool,
) -> std::path::PathBuf {
    let mut tail = String::new();
    if upload {
        let big = dir.join("big.bin");
        let f = std::fs::File::create(&big).unwrap();
        f.set_len(256 << 20).unwrap();
        tail.push_str(&format!(
            "[[upload]]\nsource = \"{}\"\ndestination = \"/opt/big.bin\"\n",
            big.display()
        ));
    }
    tail.push_str(&format!(
        "[[step]]\nname = \"nap\"\nrun = \"sleep {secs}\"\n"
    ));
    write_recipe(
        dir,
        name,
        Recipe {
            builder,
            ssh: SSH,
            tail: &tail,
            ..Recipe::default()
        },
    )
}

/// SIGKILL at `marker`, then `bake gc --yes` (same machine: the journal says dead at once)
/// leaves nothing of the build.
fn kill_at_then_gc(marker: &str, upload: bool) {
    let lab = Lab::new();
    let tmp = tempfile::tempdir().unwrap();
    let name = unique("gck-");
    let recipe = sleepy_recipe(tmp.path(), &name, "", 30, upload);
    let mut b = Running::start(build_cmd(&lab, tmp.path(), &recipe));
    b.wait_for(marker);
    let id = b.build_id();
    b.kill9();

    let listed = gc(&lab, tmp.path(), &["--output", "json"]);
    assert!(listed.status.success(), "{}", stderr(&listed));
    let v = json(&listed);
    let me = v["builds"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["build_id"] == id.as_str());
    if let Some(me) = me {
        assert_eq!(me["state"], "dead", "{me}");
        assert!(me["reason"].as_str().unwrap().contains("is gone"), "{me}");
        assert_eq!(me["remove"], true);
    }
    let out = gc(&lab, tmp.path(), &["--yes"]);
    assert!(
        out.status.success(),
        "gc --yes failed after a kill at {marker:?}:\n{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert_eq!(
        leftovers_of(&id),
        Vec::<String>::new(),
        "after a kill at {marker:?}:\n{}",
        stdout(&out)
    );
    let again = gc(&lab, tmp.path(), &[]);
    assert!(!stdout(&again).contains(&id), "{}", stdout(&again));
    // gc cleaned up after it: the journal entry is gone too.
    assert!(
        !tmp.path()
            .join(format!("state/bake/builds/{id}.json"))
            .exists()
    );
}

#[test]
fn sigkill_at_launch_then_gc_leaves_nothing() {
    kill_at_then_gc("launch: launching", false);
}

#[test]
fn sigkill_at_connect_then_gc_leaves_nothing() {
    kill_at_then_gc("connect: waiting for SSH", false);
}

#[test]
fn sigkill_during_upload_then_gc_leaves_nothing() {
    kill_at_then_gc("upload: 1 file(s)", true);
}

#[test]
fn sigkill_during_a_step_then_gc_leaves_nothing() {
    kill_at_then_gc("running nap", false);
}

#[test]
fn sigkill_at_stop_image_and_cleanup_then_gc_leaves_nothing() {
    // A 0 s step: the build races through stop, image and cleanup; each marker is hit in turn.
    for marker in ["stop: stopping", "image: creating", "cleanup: removing"] {
        let lab = Lab::new();
        let tmp = tempfile::tempdir().unwrap();
        let name = unique("gcs-");
        let recipe = sleepy_recipe(tmp.path(), &name, "", 0, false);
        let mut b = Running::start(build_cmd(&lab, tmp.path(), &recipe));
        b.wait_for(marker);
        let id = b.build_id();
        b.kill9();
        let out = gc(&lab, tmp.path(), &["--yes"]);
        assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
        assert_eq!(
            leftovers_of(&id),
            Vec::<String>::new(),
            "after a kill at {marker:?}:\n{}",
            stdout(&out)
        );
        // A half-made image never counts as the cache: the next build makes a new one.
        for img in lab.images_of(&name) {
            let t = tags(img.tags());
            assert_eq!(
                t.get("bake:state").map(String::as_str),
                Some("complete"),
                "{t:?}"
            );
        }
    }
}

#[test]
fn gc_beside_a_live_build_leaves_it_intact() {
    let lab = Lab::new();
    let tmp = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    let name = unique("gcl-");
    let recipe = sleepy_recipe(tmp.path(), &name, "", 6, false);
    let mut b = Running::start(build_cmd(&lab, tmp.path(), &recipe));
    b.wait_for("running nap");
    let id = b.build_id();
    // Same machine and journal (alive: its process runs), and as if from another machine
    // (no journal: its lease runs).
    for (dir, why) in [
        (tmp.path(), "is running"),
        (other.path(), "lease runs until"),
    ] {
        let out = gc(&lab, dir, &["--yes"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let text = stdout(&out);
        let line = text
            .lines()
            .find(|l| l.contains(&id))
            .unwrap_or_else(|| panic!("{text}"));
        assert!(
            line.contains("running") && line.contains(why) && line.contains("left alone"),
            "{text}"
        );
        // Other tests run beside this one and leave dead builds on purpose: only this build's
        // block of the report must show no removal.
        let block: String = text
            .lines()
            .skip_while(|l| !l.contains(&id))
            .take_while(|l| l.contains(&id) || l.starts_with(' '))
            .collect::<Vec<_>>()
            .join("\n");
        assert!(!block.contains("removed"), "{text}");
    }
    let (st, log) = b.finish();
    let ok = st.success();
    assert!(ok, "the build beside gc failed:\n{log}");
    assert_eq!(leftovers_of(&id), Vec::<String>::new());
    let out = gc(&lab, tmp.path(), &[]);
    assert!(!stdout(&out).contains(&id), "{}", stdout(&out));
}

#[test]
fn a_killed_builds_lock_is_taken_over_at_once() {
    let lab = Lab::new();
    let tmp = tempfile::tempdir().unwrap();
    let name = unique("gclock-");
    let recipe = sleepy_recipe(tmp.path(), &name, "", 2, false);
    // Hold the lock, then die during the step (the lock key pair stays behind).
    let mut a = Running::start(build_cmd(&lab, tmp.path(), &recipe));
    a.wait_for("running nap");
    let dead = a.build_id();
    a.kill9();
    let t0 = Instant::now();
    let out = bake(&lab, tmp.path())
        .args(["build", "--plain"])
        .arg(&recipe)
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(&format!("of build {dead}: its holder is dead")),
        "{err}"
    );
    assert!(err.contains("is gone"), "{err}");
    assert!(
        t0.elapsed() < Duration::from_secs(60),
        "took {:?}",
        t0.elapsed()
    );
    let g = gc(&lab, tmp.path(), &["--yes"]);
    assert!(g.status.success(), "{}", stdout(&g));
    assert_eq!(leftovers_of(&dead), Vec::<String>::new());
}

#[test]
fn gc_never_touches_complete_images_untagged_resources_or_live_leases() {
    let lab = Lab::new();
    let tmp = tempfile::tempdir().unwrap();
    let name = unique("gcc-");
    let recipe = sleepy_recipe(tmp.path(), &name, "", 0, false);
    let v = build_json(&lab, &tmp.path().join("cache"), &recipe, &[]);
    let ami = v["ami_id"].as_str().unwrap().to_string();

    // By hand: untagged key pair and security group; key pairs tagged like a build's on
    // "another machine", one whose lease lapsed, one whose lease runs.
    let hand = unique("gc-hand-");
    let (lapsed, live) = (unique("b-00"), unique("b-11"));
    let (lapsed, live) = (&lapsed[..12], &live[..12]);
    let key = |n: &str| ssh_keygen(&tmp.path().join(n));
    lab.rt.block_on(async {
        lab.import_key(&hand, key("k1")).await;
        let vpc = lab.ec2.describe_vpcs().send().await.unwrap().vpcs()[0]
            .vpc_id()
            .unwrap()
            .to_string();
        lab.ec2
            .create_security_group()
            .group_name(&hand)
            .description("by hand")
            .vpc_id(vpc)
            .send()
            .await
            .unwrap();
        for (n, id, until) in [
            ("k2", lapsed, "2000-01-01T00:00:00Z"),
            ("k3", live, "2999-01-01T00:00:00Z"),
        ] {
            let spec = aws_sdk_ec2::types::TagSpecification::builder()
                .resource_type(aws_sdk_ec2::types::ResourceType::KeyPair)
                .tags(
                    aws_sdk_ec2::types::Tag::builder()
                        .key("bake:build-id")
                        .value(id)
                        .build(),
                )
                .tags(
                    aws_sdk_ec2::types::Tag::builder()
                        .key("bake:lease-until")
                        .value(until)
                        .build(),
                )
                .build();
            lab.ec2
                .import_key_pair()
                .key_name(format!("{hand}-{n}"))
                .public_key_material(aws_sdk_ec2::primitives::Blob::new(key(n).into_bytes()))
                .tag_specifications(spec)
                .send()
                .await
                .unwrap();
        }
    });

    let out = gc(&lab, tmp.path(), &["--yes"]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!("{lapsed} (recipe ?")) && text.contains("lease lapsed"),
        "{text}"
    );
    assert!(
        text.contains(&format!("{live} (recipe ?): running: its lease runs until")),
        "{text}"
    );
    assert!(!text.contains(&ami), "{text}");

    lab.rt.block_on(async {
        let img = lab
            .ec2
            .describe_images()
            .image_ids(&ami)
            .send()
            .await
            .unwrap();
        assert_eq!(img.images().len(), 1, "gc removed a complete image");
        for snap in img.images()[0]
            .block_device_mappings()
            .iter()
            .filter_map(|m| m.ebs()?.snapshot_id())
        {
            lab.ec2
                .describe_snapshots()
                .snapshot_ids(snap)
                .send()
                .await
                .expect("snapshot of a complete image");
        }
        let keys = lab.ec2.describe_key_pairs().send().await.unwrap();
        let names: Vec<&str> = keys
            .key_pairs()
            .iter()
            .filter_map(|k| k.key_name())
            .collect();
        assert!(names.contains(&hand.as_str()), "untagged key pair removed");
        assert!(
            names.contains(&format!("{hand}-k3").as_str()),
            "key pair with a live lease removed"
        );
        assert!(
            !names.contains(&format!("{hand}-k2").as_str()),
            "key pair with a lapsed lease kept"
        );
        let sgs = lab
            .ec2
            .describe_security_groups()
            .filters(
                aws_sdk_ec2::types::Filter::builder()
                    .name("group-name")
                    .values(&hand)
                    .build(),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(
            sgs.security_groups().len(),
            1,
            "untagged security group removed"
        );
        for k in [hand.clone(), format!("{hand}-k3")] {
            lab.ec2.delete_key_pair().key_name(k).send().await.unwrap();
        }
        lab.ec2
            .delete_security_group()
            .group_name(&hand)
            .send()
            .await
            .unwrap();
    });
}

#[test]
fn a_builder_whose_bake_died_terminates_itself_after_max_lifetime() {
    let lab = Lab::new();
    let tmp = tempfile::tempdir().unwrap();
    let name = unique("gcdm-");
    let recipe = sleepy_recipe(tmp.path(), &name, "max_lifetime = \"20s\"", 600, false);
    let mut b = Running::start(build_cmd(&lab, tmp.path(), &recipe));
    b.wait_for("running nap");
    let id = b.build_id();
    let t0 = Instant::now();
    b.kill9();
    let inst = lab.rt.block_on(async {
        let f = |n: &str, v: &str| {
            aws_sdk_ec2::types::Filter::builder()
                .name(n)
                .values(v)
                .build()
        };
        let r = bake::retry::poll(
            bake::retry::Backoff::AWS.with_timeout(Duration::from_secs(90)),
            |_| async {
                let out = lab
                    .ec2
                    .describe_instances()
                    .filters(f("tag:bake:build-id", &id))
                    .send()
                    .await
                    .unwrap();
                let i = out.reservations()[0].instances()[0].clone();
                match i
                    .state()
                    .and_then(|s| s.name())
                    .map(|s| s.as_str().to_string())
                {
                    Some(s) if s == "terminated" => bake::retry::Poll::Ready(i),
                    s => bake::retry::Poll::<_, ()>::Pending(format!("{s:?}")),
                }
            },
        );
        r.await.expect("the builder did not terminate itself")
    });
    let after = t0.elapsed();
    assert!(
        after >= Duration::from_secs(10),
        "terminated too early ({after:?})"
    );
    assert_eq!(
        inst.state_reason().and_then(|r| r.code()),
        Some("Client.InstanceInitiatedShutdown")
    );
    assert_eq!(
        inst.metadata_options()
            .and_then(|m| m.http_tokens())
            .map(|t| t.as_str()),
        Some("required"),
        "IMDSv2 is the default"
    );
    let out = gc(&lab, tmp.path(), &["--yes"]);
    assert!(out.status.success(), "{}", stdout(&out));
    assert_eq!(leftovers_of(&id), Vec::<String>::new());
}

#[test]
fn the_finished_image_holds_no_secret_and_no_temporary_key() {
    let lab = Lab::new();
    let tmp = tempfile::tempdir().unwrap();
    let name = unique("gcsec-");
    let secret = format!("s3cr3t-{}", unique(""));
    let tail = "[[step]]\nname = \"use\"\nsudo = true\nenv = { TOKEN = \"{var.token}\" }\n\
         run = \"test \\\"$TOKEN\\\" = '{var.token}' && sleep 3 && echo done > /etc/used-token\"\n\
         [[step]]\nname = \"as-user\"\nrun = \"sudo true; echo {var.token} | sha256sum > /dev/null\"\n".to_string();
    let head = format!("sensitive = [\"token\"]\n[variables]\ntoken = \"{secret}\"\n");
    let recipe = write_recipe(
        tmp.path(),
        &name,
        Recipe {
            head: &head,
            ssh: SSH,
            tail: &tail,
            ..Recipe::default()
        },
    );
    let mut b = Running::start(build_cmd(&lab, tmp.path(), &recipe));
    b.wait_for("running use");
    // The temporary public key, while its key pair exists.
    let id = b.build_id();
    let temp_key = lab.rt.block_on(async {
        let out = lab
            .ec2
            .describe_key_pairs()
            .key_names(format!("bake-{name}-{id}"))
            .include_public_key(true)
            .send()
            .await
            .unwrap();
        out.key_pairs()[0].public_key().unwrap().to_string()
    });
    let blob = temp_key.split_whitespace().nth(1).unwrap().to_string();
    let (st, log) = b.finish();
    let ok = st.success();
    assert!(ok, "{log}");
    assert!(!log.contains(&secret), "secret in bake's output");
    let ami = lab.images_of(&name)[0].image_id().unwrap().to_string();
    let builder = log
        .lines()
        .find_map(|l| {
            l.split("launch: ")
                .nth(1)?
                .split_whitespace()
                .next()
                .filter(|w| w.starts_with("i-"))
        })
        .unwrap()
        .to_string();

    let (iid, ip, key) = lab.launch_for_check(&ami, tmp.path());
    let check = ssh(
        &ip,
        &key,
        "admin",
        &format!(
            "set -e; cat /etc/used-token; \
             printf '%s\\n' '{secret}' '{blob}' > /dev/shm/pats; \
             sudo grep -rlF -f /dev/shm/pats /var/log /var/lib/cloud /var/lib/amazon /tmp /home /root /etc --exclude-dir=.cache 2>/dev/null | sed 's/^/HIT /' || true; \
             test ! -e /var/lib/cloud/instances/{builder} && echo no-builder-user-data; \
             ls /tmp | grep -c bake-step || true; \
             grep -c . ~/.ssh/authorized_keys; \
             sudo grep -c 'COMMAND=' /var/log/auth.log"
        ),
    );
    lab.terminate(&iid);
    let so = stdout(&check);
    assert!(check.status.success(), "{so}{}", stderr(&check));
    let lines: Vec<&str> = so.lines().collect();
    assert_eq!(lines[0], "done");
    assert!(
        !so.contains("HIT "),
        "the image carries the secret or the temporary key:\n{so}"
    );
    assert!(so.contains("no-builder-user-data"), "{so}");
    // No step script left in /tmp, one authorized key (the check instance's own), and sudo
    // did log the steps' command lines (so the grep above looked at real sudo lines).
    assert_eq!(
        &lines[lines.len() - 3..lines.len() - 1],
        &["0", "1"],
        "{so}"
    );
    assert!(lines[lines.len() - 1].parse::<u32>().unwrap() >= 2, "{so}");
}
