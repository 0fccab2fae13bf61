//! `bake deploy` against the lab (whose instance refresh really replaces instances):
//! success (every instance on the new AMI, the baked file there over SSH), failure of an
//! unhealthy image with and without rollback, Ctrl-C / status / cancel / rollback / a second
//! refresh refused, and launch template version retention.
//!
//! Run with a lab: `BAKE_LAB_DIR=/path/to/lab cargo test --test deploy`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_autoscaling::types::LaunchTemplateSpecification;
use aws_sdk_ec2::types::{
    LaunchTemplateTagSpecificationRequest, RequestLaunchTemplateData, ResourceType, Tag,
};
use common::*;

struct Fx {
    lab: Lab,
    asc: aws_sdk_autoscaling::Client,
    tmp: tempfile::TempDir,
    cache: PathBuf,
    key: PathBuf,
    key_name: String,
    base_ami: String,
}

impl Fx {
    fn new() -> Fx {
        let lab = Lab::new();
        let asc = lab.autoscaling();
        let tmp = tempfile::tempdir().unwrap();
        let cache = tmp.path().join("cache");
        let key = tmp.path().join("deploy_key");
        let public = ssh_keygen(&key);
        let key_name = unique("deploy-key-");
        let base_ami = lab.rt.block_on(async {
            lab.import_key(&key_name, public).await;
            let imgs = lab
                .ec2
                .describe_images()
                .owners("136693071363")
                .send()
                .await
                .unwrap();
            imgs.images()
                .iter()
                .max_by_key(|i| i.creation_date().unwrap_or_default().to_string())
                .unwrap()
                .image_id()
                .unwrap()
                .to_string()
        });
        Fx {
            lab,
            asc,
            tmp,
            cache,
            key,
            key_name,
            base_ami,
        }
    }

    fn dir(&self) -> &Path {
        self.tmp.path()
    }

    fn bake(&self) -> Command {
        let mut c = self.lab.bake(&self.cache);
        c.arg("--plain");
        c
    }

    /// A recipe that bakes `/etc/deploy-marker` containing `marker`; returns its path.
    fn recipe(&self, name: &str, marker: &str, deploy: &str) -> PathBuf {
        let d = self.dir().join(name);
        std::fs::create_dir_all(d.join("files")).unwrap();
        std::fs::write(d.join("files/marker"), format!("{marker}\n")).unwrap();
        let tail = format!(
            "[[upload]]\nsource = \"files/marker\"\ndestination = \"/etc/deploy-marker\"\n\
             [[step]]\nname = \"show\"\nrun = \"cat /etc/deploy-marker\"\n{deploy}"
        );
        let parts = Recipe {
            tail: &tail,
            ..Recipe::default()
        };
        write_recipe(&d, name, parts)
    }

    fn build(&self, recipe: &Path) -> String {
        let v = build_json(&self.lab, &self.cache, recipe, &[]);
        v["ami_id"].as_str().unwrap().to_string()
    }

    /// A launch template (version 1 on the base image, with the test key, user data and
    /// instance tags) and a group of `desired` instances on `version`.
    fn group(&self, desired: i32, version: &str) -> (String, String) {
        let asg = unique("deploy-asg-");
        let lt = unique("deploy-lt-");
        self.lab.rt.block_on(async {
            let data = RequestLaunchTemplateData::builder()
                .image_id(&self.base_ami)
                .instance_type(aws_sdk_ec2::types::InstanceType::T3Micro)
                .key_name(&self.key_name)
                .user_data(b64("#!/bin/sh\necho booted > /var/tmp/booted\n"))
                .tag_specifications(
                    LaunchTemplateTagSpecificationRequest::builder()
                        .resource_type(ResourceType::Instance)
                        .tags(Tag::builder().key("team").value("web").build())
                        .build(),
                )
                .build();
            let lt_id = self
                .lab
                .ec2
                .create_launch_template()
                .launch_template_name(&lt)
                .launch_template_data(data)
                .send()
                .await
                .unwrap()
                .launch_template()
                .unwrap()
                .launch_template_id()
                .unwrap()
                .to_string();
            let subnets = self
                .lab
                .ec2
                .describe_subnets()
                .filters(
                    aws_sdk_ec2::types::Filter::builder()
                        .name("default-for-az")
                        .values("true")
                        .build(),
                )
                .send()
                .await
                .unwrap();
            let ids: Vec<&str> = subnets
                .subnets()
                .iter()
                .filter_map(|s| s.subnet_id())
                .take(2)
                .collect();
            self.asc
                .create_auto_scaling_group()
                .auto_scaling_group_name(&asg)
                .launch_template(
                    LaunchTemplateSpecification::builder()
                        .launch_template_id(&lt_id)
                        .version(version)
                        .build(),
                )
                .min_size(desired)
                .max_size(desired.max(1) * 2)
                .desired_capacity(desired)
                .vpc_zone_identifier(ids.join(","))
                .send()
                .await
                .unwrap();
            (asg, lt_id)
        })
    }

    fn add_version(&self, lt_id: &str, image: &str) -> i64 {
        self.lab.rt.block_on(async {
            self.lab
                .ec2
                .create_launch_template_version()
                .launch_template_id(lt_id)
                .launch_template_data(
                    RequestLaunchTemplateData::builder()
                        .image_id(image)
                        .instance_type(aws_sdk_ec2::types::InstanceType::T3Micro)
                        .key_name(&self.key_name)
                        .build(),
                )
                .send()
                .await
                .unwrap()
                .launch_template_version()
                .unwrap()
                .version_number()
                .unwrap()
        })
    }

    /// (group's launch template version, [(instance id, image, ip)]).
    fn state(&self, asg: &str) -> (String, Vec<(String, String, String)>) {
        self.lab.rt.block_on(async {
            let g = self
                .asc
                .describe_auto_scaling_groups()
                .auto_scaling_group_names(asg)
                .send()
                .await
                .unwrap();
            let g = &g.auto_scaling_groups()[0];
            let version = g
                .launch_template()
                .and_then(|l| l.version())
                .unwrap_or_default()
                .to_string();
            let ids: Vec<String> = g
                .instances()
                .iter()
                .filter_map(|i| i.instance_id().map(str::to_string))
                .collect();
            let mut out = Vec::new();
            if !ids.is_empty() {
                let r = self
                    .lab
                    .ec2
                    .describe_instances()
                    .set_instance_ids(Some(ids))
                    .send()
                    .await
                    .unwrap();
                for i in r.reservations().iter().flat_map(|r| r.instances()) {
                    let ip = i.private_ip_address().unwrap_or_default().to_string();
                    assert!(ip.starts_with("127."), "network rule: instance got {ip}");
                    out.push((
                        i.instance_id().unwrap().to_string(),
                        i.image_id().unwrap().to_string(),
                        ip,
                    ));
                }
            }
            out.sort();
            (version, out)
        })
    }

    /// Asserts the group is on launch template `version` with every instance (`count` of them,
    /// where given) on `image`; returns the instances.
    fn assert_group_on(
        &self,
        asg: &str,
        version: &str,
        image: &str,
        count: Option<usize>,
    ) -> Vec<(String, String, String)> {
        let (v, insts) = self.state(asg);
        assert_eq!(v, version, "launch template version of {asg}");
        if let Some(n) = count {
            assert_eq!(insts.len(), n, "{insts:?}");
        }
        assert!(insts.iter().all(|i| i.1 == image), "{insts:?}");
        insts
    }

    fn versions(&self, lt_id: &str) -> Vec<i64> {
        self.lab.rt.block_on(async {
            let mut v: Vec<i64> = self
                .lab
                .ec2
                .describe_launch_template_versions()
                .launch_template_id(lt_id)
                .send()
                .await
                .unwrap()
                .launch_template_versions()
                .iter()
                .filter_map(|v| v.version_number())
                .collect();
            v.sort();
            v
        })
    }

    /// Waits until the group's newest refresh says it paused at a checkpoint.
    fn wait_checkpoint(&self, asg: &str) {
        let t0 = Instant::now();
        loop {
            let reason = self.lab.rt.block_on(async {
                let r = self
                    .asc
                    .describe_instance_refreshes()
                    .auto_scaling_group_name(asg)
                    .send()
                    .await
                    .unwrap();
                r.instance_refreshes()
                    .first()
                    .and_then(|r| r.status_reason())
                    .unwrap_or_default()
                    .to_string()
            });
            if reason.contains("Checkpoint") {
                return;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "no checkpoint reached"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn cleanup(&self, asg: &str, lt_id: &str) {
        self.lab.rt.block_on(async {
            let _ = self
                .asc
                .delete_auto_scaling_group()
                .auto_scaling_group_name(asg)
                .force_delete(true)
                .send()
                .await;
            let _ = self
                .lab
                .ec2
                .delete_launch_template()
                .launch_template_id(lt_id)
                .send()
                .await;
        });
    }
}

impl Drop for Fx {
    fn drop(&mut self) {
        let _ = self.lab.rt.block_on(
            self.lab
                .ec2
                .delete_key_pair()
                .key_name(&self.key_name)
                .send(),
        );
    }
}

fn b64(s: &str) -> String {
    aws_smithy_types::base64::encode(s)
}

fn run(c: &mut Command) -> Output {
    c.output().unwrap()
}

const FAST: &[&str] = &["--min-healthy-percentage", "50", "--instance-warmup", "0s"];

#[test]
fn deploy_puts_every_instance_on_the_new_image() {
    let fx = Fx::new();
    let name = unique("deploy-ok-");
    let (asg, lt_id) = fx.group(2, "$Latest");
    let r = fx.recipe(
        &name,
        "v2 baked",
        &format!(
            "[deploy]\nasg = \"{asg}\"\nmin_healthy_percentage = 50\ninstance_warmup = \"1s\"\nkeep_versions = 5\n"
        ),
    );
    // not built yet: a clear error, no refresh
    let out = run(fx.bake().args(["deploy", "--recipe"]).arg(&r));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("has not been built"),
        "{}",
        stderr(&out)
    );

    let ami = fx.build(&r);
    let (_, before) = fx.state(&asg);
    assert_eq!(before.len(), 2);
    assert!(before.iter().all(|i| i.1 == fx.base_ami));

    let t0 = Instant::now();
    let out = run(fx
        .bake()
        .args(["deploy", "--output", "json", "--recipe"])
        .arg(&r));
    let took = t0.elapsed();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v = json(&out);
    eprintln!("deploy took {took:?}\n{}", stderr(&out));
    assert_eq!(v["result"], "deployed");
    assert_eq!(v["ami_id"], ami.as_str());
    assert_eq!(
        v["pinned_from"], "$Latest",
        "the $Latest group was pinned first"
    );
    assert_eq!(v["previous_version"], 1);
    assert_eq!(v["version_number"], 2);
    assert_eq!(v["refresh"]["status"], "Successful");
    assert_eq!(v["preferences"]["min_healthy_percentage"], 50);
    assert!(
        stderr(&out).contains("% complete"),
        "no live progress:\n{}",
        stderr(&out)
    );

    let (version, after) = fx.state(&asg);
    assert_eq!(version, "2");
    assert_eq!(after.len(), 2);
    for (id, img, ip) in &after {
        assert_eq!(img, &ami, "{id} still on {img}");
        assert!(!before.iter().any(|b| &b.0 == id), "{id} was not replaced");
        let o = ssh(
            ip,
            &fx.key,
            "admin",
            "for i in $(seq 100); do [ -f /var/tmp/booted ] && break; sleep 0.1; done; cat /etc/deploy-marker /var/tmp/booted",
        );
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(
            stdout(&o),
            "v2 baked\nbooted\n",
            "baked file / launch template user data"
        );
    }
    for (id, img, _) in &after {
        assert_eq!(v["group"]["instances"][id.as_str()], img.as_str());
    }

    // the copy kept every setting: user data and tags came from version 1
    let data = fx.lab.rt.block_on(async {
        fx.lab
            .ec2
            .describe_launch_template_versions()
            .launch_template_id(&lt_id)
            .versions("2")
            .send()
            .await
            .unwrap()
            .launch_template_versions()[0]
            .launch_template_data()
            .unwrap()
            .clone()
    });
    assert_eq!(data.key_name(), Some(fx.key_name.as_str()));
    assert_eq!(data.image_id(), Some(ami.as_str()));
    assert!(data.user_data().is_some());
    assert_eq!(data.tag_specifications()[0].tags()[0].key(), Some("team"));

    // again: already there, exit 0, no refresh
    let out = run(fx.bake().args(["deploy", "--asg", &asg, "--ami", &ami]));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("already on"), "{}", stdout(&out));
    assert_eq!(fx.versions(&lt_id), vec![1, 2]);

    // bad input: exit 2 before any AWS call
    let out = run(fx.bake().args(["deploy", "--asg", &asg]));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let out = run(fx.bake().args([
        "deploy",
        "--asg",
        &asg,
        "--ami",
        &ami,
        "--min-healthy-percentage",
        "101",
    ]));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    fx.cleanup(&asg, &lt_id);
}

#[test]
fn unhealthy_image_fails_and_group_is_back_on_the_previous_image() {
    let fx = Fx::new();
    let name = unique("deploy-bad-");
    let r = fx.recipe(&name, "broken", "");
    let bad = fx.build(&r);
    // the lab's health switch: instances from this image never answer on port 22
    fx.lab.rt.block_on(async {
        fx.lab
            .ec2
            .create_tags()
            .resources(&bad)
            .tags(Tag::builder().key("lab:health").value("fail").build())
            .send()
            .await
            .unwrap();
    });
    let (asg, lt_id) = fx.group(2, "1");

    // with --auto-rollback: the refresh fails, rolls back, non-zero exit naming the image
    let out = run(fx
        .bake()
        .args(["deploy", "--asg", &asg, "--ami", &bad, "--auto-rollback"])
        .args(FAST));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("rolled back"), "{err}");
    assert!(err.contains(&format!("now runs {}", fx.base_ami)), "{err}");
    assert!(err.contains("health check"), "{err}");
    // the group is back on its previous launch template version
    let insts = fx.assert_group_on(&asg, "1", &fx.base_ami, Some(2));
    for (_, _, ip) in &insts {
        assert!(ssh(ip, &fx.key, "admin", "true").status.success());
    }

    // without: Failed, JSON says so, the group still on the previous image
    let out = run(fx
        .bake()
        .args(["deploy", "--output", "json", "--asg", &asg, "--ami", &bad])
        .args(FAST));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let v = json(&out);
    assert_eq!(v["result"], "failed");
    assert_eq!(v["refresh"]["status"], "Failed");
    assert!(
        v["refresh"]["status_reason"]
            .as_str()
            .unwrap()
            .contains(&bad),
        "{v}"
    );
    assert_eq!(v["group"]["image_id"], fx.base_ami.as_str());
    fx.assert_group_on(&asg, "1", &fx.base_ami, None);
    fx.cleanup(&asg, &lt_id);
}

#[test]
fn interrupt_status_cancel_rollback_and_one_refresh_at_a_time() {
    let fx = Fx::new();
    let name = unique("deploy-cx-");
    let ami = fx.build(&fx.recipe(&name, "canary", ""));
    let (asg, lt_id) = fx.group(2, "1");
    let canary = ["--canary", "50", "--checkpoint-delay", "10m"];

    // Ctrl-C while waiting: exit 130, the refresh keeps running, the hints are printed
    let mut child = fx
        .bake()
        .args(["deploy", "--asg", &asg, "--ami", &ami])
        .args(FAST)
        .args(canary)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    fx.wait_checkpoint(&asg);
    let st = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "bake did not stop on SIGINT"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(130), "{err}");
    for h in [
        "bake deploy status --asg",
        "bake deploy cancel --asg",
        "bake deploy rollback --asg",
    ] {
        assert!(err.contains(&format!("{h} {asg}")), "missing {h}: {err}");
    }

    // status: still running, paused at 50 %
    let out = run(fx
        .bake()
        .args(["deploy", "status", "--output", "json", "--asg", &asg]));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v = json(&out);
    assert_eq!(v["active"], true, "{v}");
    assert_eq!(v["refresh"]["status"], "InProgress");
    assert_eq!(v["refresh"]["percentage_complete"], 50);
    assert_eq!(v["refresh"]["instances_to_update"], 1);
    let out = run(fx.bake().args(["deploy", "status", "--asg", &asg]));
    assert!(
        stdout(&out).contains("InProgress 50% complete"),
        "{}",
        stdout(&out)
    );

    // a second roll-out is refused while one runs
    let versions_before = fx.versions(&lt_id);
    let out = run(fx.bake().args(["deploy", "--asg", &asg, "--ami", &ami]));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("already running"), "{}", stderr(&out));
    assert_eq!(
        fx.versions(&lt_id),
        versions_before,
        "a refused deploy left a version"
    );

    // cancel: Cancelled; the replaced instance stays replaced
    let out = run(fx.bake().args(["deploy", "cancel", "--asg", &asg]));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("Cancelled"), "{}", stdout(&out));
    let out = run(fx
        .bake()
        .args(["deploy", "status", "--output", "json", "--asg", &asg]));
    let v = json(&out);
    assert_eq!(v["refresh"]["status"], "Cancelled");
    assert_eq!(v["active"], false);
    let (_, insts) = fx.state(&asg);
    let mut imgs: Vec<&str> = insts.iter().map(|i| i.1.as_str()).collect();
    imgs.sort();
    let mut want = vec![ami.as_str(), fx.base_ami.as_str()];
    want.sort();
    assert_eq!(imgs, want);
    let out = run(fx.bake().args(["deploy", "cancel", "--asg", &asg]));
    assert_eq!(out.status.code(), Some(1), "nothing to cancel");
    assert!(
        stderr(&out).contains("no instance refresh is running"),
        "{}",
        stderr(&out)
    );

    // --no-wait, then roll back from the checkpoint: back on the previous image
    let out = run(fx
        .bake()
        .args(["deploy", "--asg", &asg, "--ami", &ami, "--no-wait"])
        .args(FAST)
        .args(canary));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    fx.wait_checkpoint(&asg);
    let out = run(fx.bake().args(["deploy", "rollback", "--asg", &asg]));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("RollbackSuccessful"),
        "{}",
        stdout(&out)
    );
    fx.assert_group_on(&asg, "1", &fx.base_ami, Some(2));
    fx.cleanup(&asg, &lt_id);
}

#[test]
fn launch_template_versions_are_kept_bounded() {
    let fx = Fx::new();
    let name = unique("deploy-keep-");
    let ami = fx.build(&fx.recipe(&name, "keep", ""));
    // versions 1..5 on the base image (group A on 5); group B pins version 2
    let (asg, lt_id) = fx.group(1, "1");
    for _ in 0..4 {
        fx.add_version(&lt_id, &fx.base_ami);
    }
    fx.lab.rt.block_on(async {
        fx.asc
            .update_auto_scaling_group()
            .auto_scaling_group_name(&asg)
            .launch_template(
                LaunchTemplateSpecification::builder()
                    .launch_template_id(&lt_id)
                    .version("5")
                    .build(),
            )
            .send()
            .await
            .unwrap();
    });
    let asg_b = unique("deploy-asg-b-");
    fx.lab.rt.block_on(async {
        fx.asc
            .create_auto_scaling_group()
            .auto_scaling_group_name(&asg_b)
            .launch_template(
                LaunchTemplateSpecification::builder()
                    .launch_template_id(&lt_id)
                    .version("2")
                    .build(),
            )
            .min_size(0)
            .max_size(1)
            .desired_capacity(0)
            .availability_zones("us-east-1a")
            .send()
            .await
            .unwrap();
    });
    assert_eq!(fx.versions(&lt_id), vec![1, 2, 3, 4, 5]);

    let out = run(fx
        .bake()
        .args([
            "deploy",
            "--output",
            "json",
            "--asg",
            &asg,
            "--ami",
            &ami,
            "--keep-versions",
            "2",
        ])
        .args(FAST));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v = json(&out);
    assert_eq!(v["version_number"], 6);
    assert_eq!(v["retention"]["deleted"], serde_json::json!([3, 4]), "{v}");
    // 1: default, 2: group B, 5 and 6: the newest two (and this roll-out's)
    assert_eq!(fx.versions(&lt_id), vec![1, 2, 5, 6]);
    fx.assert_group_on(&asg, "6", &ami, None);

    // a later roll-out back to the base image deletes 5 (no longer used), keeps 1, 2, 6, 7
    let out = run(fx
        .bake()
        .args([
            "deploy",
            "--output",
            "json",
            "--asg",
            &asg,
            "--ami",
            &fx.base_ami,
            "--keep-versions",
            "1",
        ])
        .args(FAST));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(json(&out)["retention"]["deleted"], serde_json::json!([5]));
    assert_eq!(fx.versions(&lt_id), vec![1, 2, 6, 7]);
    fx.lab.rt.block_on(async {
        let _ = fx
            .asc
            .delete_auto_scaling_group()
            .auto_scaling_group_name(&asg_b)
            .force_delete(true)
            .send()
            .await;
    });
    fx.cleanup(&asg, &lt_id);
}
