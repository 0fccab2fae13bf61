//! Content-addressed images against the lab: cache hits and misses, `bake plan`, concurrent
//! builds of the same inputs, and retention that never deletes what is in use.

#![cfg(feature = "lab")]

mod common;

use std::path::{Path, PathBuf};

use aws_sdk_ec2::types::{LaunchTemplateVersion, RequestLaunchTemplateData};
use common::*;

/// The recipe `name` in `dir`, uploading `files/app.txt` ("version 1").
fn recipe(dir: &Path, name: &str) -> PathBuf {
    std::fs::create_dir_all(dir.join("files")).unwrap();
    std::fs::write(dir.join("files/app.txt"), "version 1\n").unwrap();
    let parts = Recipe {
        head: "# a cache test recipe",
        tail: "tags = { team = \"infra\" }\n\
               [[upload]]\nsource = \"files/app.txt\"\ndestination = \"/opt/app.txt\"\n\
               [[step]]\nname = \"show\"\nrun = \"cat /opt/app.txt\"",
        ..Recipe::default()
    };
    write_recipe(dir, name, parts)
}

#[test]
fn unchanged_inputs_hit_the_cache_and_changes_miss() {
    let lab = Lab::new();
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let name = unique("cache-");
    let r = recipe(tmp.path(), &name);

    let first = build_json(&lab, &cache, &r, &[]);
    assert_eq!(first["cached"], false);
    let n = lab.instances_launched(&name).len();

    // Same inputs: no instance, same AMI.
    let second = build_json(&lab, &cache, &r, &[]);
    assert_eq!(second["cached"], true);
    assert_eq!(second["ami_id"], first["ami_id"]);
    assert_eq!(
        lab.instances_launched(&name).len(),
        n,
        "a cache hit launched an instance"
    );

    // Comments, formatting and key order do not matter.
    let text = std::fs::read_to_string(&r).unwrap();
    let reordered = text
        .replace("# a cache test recipe\n", "# edited comment\n\n")
        .replace(
            "instance_type = \"t3.micro\"",
            "instance_type   =   \"t3.micro\"   # spaced",
        )
        .replace(
            "[image]\nname = \"{recipe}-{short_hash}-{timestamp}\"\ntags = { team = \"infra\" }",
            "[image]\ntags = { team = \"infra\" }\nname = \"{recipe}-{short_hash}-{timestamp}\"",
        );
    assert_ne!(text, reordered);
    std::fs::write(&r, &reordered).unwrap();
    let third = build_json(&lab, &cache, &r, &[]);
    assert_eq!(third["cached"], true, "formatting changed the fingerprint");
    assert_eq!(third["fingerprint"], first["fingerprint"]);

    // bake plan says hit, then names the changed file after one byte changes.
    let plan = lab
        .bake(&cache)
        .args(["plan", "--output", "json"])
        .arg(&r)
        .output()
        .unwrap();
    assert!(plan.status.success(), "{}", stderr(&plan));
    assert_eq!(json(&plan)["plans"][0]["hit"], first["ami_id"]);

    std::fs::write(tmp.path().join("files/app.txt"), "version 2\n").unwrap();
    let plan = lab.bake(&cache).args(["plan"]).arg(&r).output().unwrap();
    let text = stdout(&plan);
    assert!(text.contains("miss"), "{text}");
    assert!(
        text.contains("upload:/opt/app.txt changed"),
        "plan does not name the changed input:\n{text}"
    );

    let fourth = build_json(&lab, &cache, &r, &[]);
    assert_eq!(fourth["cached"], false);
    assert_ne!(fourth["ami_id"], first["ami_id"]);

    // A different source AMI (the older Debian image, by id) is a miss and plan says so.
    let older = lab.rt.block_on(async {
        let out = lab
            .ec2
            .describe_images()
            .owners("136693071363")
            .send()
            .await
            .unwrap();
        let mut imgs = out.images().to_vec();
        imgs.sort_by(|a, b| a.creation_date().cmp(&b.creation_date()));
        imgs[0].image_id().unwrap().to_string()
    });
    let by_id = std::fs::read_to_string(&r).unwrap().replace(
        "[source.filter]\nowners = [\"136693071363\"]\nname = \"debian-12-amd64-*\"",
        &format!("[source]\nami = \"{older}\""),
    );
    std::fs::write(&r, by_id).unwrap();
    let plan = lab.bake(&cache).args(["plan"]).arg(&r).output().unwrap();
    assert!(
        stdout(&plan).contains("source changed"),
        "{}{}",
        stdout(&plan),
        stderr(&plan)
    );
    let fifth = build_json(&lab, &cache, &r, &[]);
    assert_eq!(fifth["cached"], false);
    assert_eq!(fifth["source_ami"], older.as_str());

    // --force rebuilds even on a hit. The image name has {timestamp} (1 s resolution) and a
    // taken name is refused, as EC2 refuses it: start the forced build in the next second.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    std::thread::sleep(std::time::Duration::from_nanos(
        1_000_000_000 - u64::from(now.subsec_nanos()) + 1_000_000,
    ));
    let forced = build_json(&lab, &cache, &r, &["--force"]);
    assert_eq!(forced["cached"], false);
    assert_ne!(forced["ami_id"], fifth["ami_id"]);
    lab.assert_no_leftovers(&name, "");
}

#[test]
fn concurrent_builds_of_the_same_inputs_make_one_image() {
    let lab = Lab::new();
    let tmp = tempfile::tempdir().unwrap();
    let name = unique("conc-");
    let r = recipe(tmp.path(), &name);
    let spawn = |c: &str| {
        lab.bake(&tmp.path().join(c))
            .args(["build", "--output", "json", "--plain"])
            .arg(&r)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let a = spawn("ca");
    let b = spawn("cb");
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(a.status.success(), "{}", stderr(&a));
    assert!(b.status.success(), "{}", stderr(&b));
    let (ja, jb) = (one_build(&a), one_build(&b));
    assert_eq!(
        ja["ami_id"], jb["ami_id"],
        "two builds of the same inputs made two images"
    );
    assert_eq!(lab.images_of(&name).len(), 1);
    assert!(
        ja["cached"] != jb["cached"],
        "exactly one of them should report the other's image"
    );
    lab.assert_no_leftovers(&name, "");
}

#[test]
fn prune_keeps_newest_and_in_use_and_shared_snapshots() {
    let lab = Lab::new();
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let name = unique("prune-");
    let r = recipe(tmp.path(), &name);
    // Six images, oldest first.
    let mut amis = Vec::new();
    for i in 0..6 {
        std::fs::write(tmp.path().join("files/app.txt"), format!("version {i}\n")).unwrap();
        let v = build_json(&lab, &cache, &r, &[]);
        amis.push(v["ami_id"].as_str().unwrap().to_string());
        std::thread::sleep(std::time::Duration::from_millis(1100)); // distinct creation dates
    }
    let snap_of = |ami: &str| -> String {
        lab.rt.block_on(async {
            let o = lab
                .ec2
                .describe_images()
                .image_ids(ami)
                .send()
                .await
                .unwrap();
            o.images()[0].block_device_mappings()[0]
                .ebs()
                .unwrap()
                .snapshot_id()
                .unwrap()
                .to_string()
        })
    };
    // amis[0]: used by an instance. amis[1]: by a non-default launch template version.
    // amis[2]: by an ASG's mixed-instances policy. amis[3]: unused, but its snapshot is shared
    // with a hand-registered image. amis[4..6]: the newest two, kept by --keep 2.
    let (inst, _, _) = lab.launch_for_check(&amis[0], tmp.path());
    let lt_name = unique("lt-");
    let asg_lt = unique("asglt-");
    let asg = unique("asg-");
    let shared_snap = snap_of(&amis[3]);
    let other_image = lab.rt.block_on(async {
        let lt = lab
            .ec2
            .create_launch_template()
            .launch_template_name(&lt_name)
            .launch_template_data(
                RequestLaunchTemplateData::builder()
                    .image_id(&amis[5])
                    .instance_type("t3.micro".into())
                    .build(),
            )
            .send()
            .await
            .unwrap();
        let lt_id = lt
            .launch_template()
            .unwrap()
            .launch_template_id()
            .unwrap()
            .to_string();
        lab.ec2
            .create_launch_template_version()
            .launch_template_id(&lt_id)
            .launch_template_data(
                RequestLaunchTemplateData::builder()
                    .image_id(&amis[1])
                    .instance_type("t3.micro".into())
                    .build(),
            )
            .send()
            .await
            .unwrap();
        let _: Option<LaunchTemplateVersion> = None;
        lab.ec2
            .create_launch_template()
            .launch_template_name(&asg_lt)
            .launch_template_data(
                RequestLaunchTemplateData::builder()
                    .image_id(&amis[2])
                    .instance_type("t3.micro".into())
                    .build(),
            )
            .send()
            .await
            .unwrap();
        let asc = lab.autoscaling();
        use aws_sdk_autoscaling::types::{
            LaunchTemplate, LaunchTemplateOverrides, LaunchTemplateSpecification,
            MixedInstancesPolicy,
        };
        asc.create_auto_scaling_group()
            .auto_scaling_group_name(&asg)
            .min_size(0)
            .max_size(1)
            .desired_capacity(0)
            .availability_zones(format!("{}a", lab.env["AWS_REGION"]))
            .mixed_instances_policy(
                MixedInstancesPolicy::builder()
                    .launch_template(
                        LaunchTemplate::builder()
                            .launch_template_specification(
                                LaunchTemplateSpecification::builder()
                                    .launch_template_name(&asg_lt)
                                    .version("$Latest")
                                    .build(),
                            )
                            .overrides(
                                LaunchTemplateOverrides::builder()
                                    .instance_type("t3.small")
                                    .build(),
                            )
                            .build(),
                    )
                    .build(),
            )
            .send()
            .await
            .unwrap();
        let reg = lab
            .ec2
            .register_image()
            .name(unique("shared-"))
            .root_device_name("/dev/xvda")
            .block_device_mappings(
                aws_sdk_ec2::types::BlockDeviceMapping::builder()
                    .device_name("/dev/xvda")
                    .ebs(
                        aws_sdk_ec2::types::EbsBlockDevice::builder()
                            .snapshot_id(&shared_snap)
                            .build(),
                    )
                    .build(),
            )
            .send()
            .await
            .unwrap();
        reg.image_id().unwrap().to_string()
    });
    // An image tagged with the recipe by hand but not made by bake is never a candidate.
    lab.rt.block_on(async {
        lab.ec2
            .create_tags()
            .resources(&other_image)
            .tags(
                aws_sdk_ec2::types::Tag::builder()
                    .key("bake:recipe")
                    .value(&name)
                    .build(),
            )
            .send()
            .await
            .unwrap();
    });

    // Dry run changes nothing.
    let dry = lab
        .bake(&cache)
        .args([
            "images", "prune", "--recipe", &name, "--keep", "2", "--output", "json",
        ])
        .output()
        .unwrap();
    assert!(dry.status.success(), "{}", stderr(&dry));
    let d = json(&dry);
    assert_eq!(d["dry_run"], true);
    assert_eq!(lab.images_of(&name).len(), 7);

    let out = lab
        .bake(&cache)
        .args([
            "images", "prune", "--recipe", &name, "--keep", "2", "--yes", "--output", "json",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let left: Vec<String> = lab
        .images_of(&name)
        .iter()
        .map(|i| i.image_id().unwrap().to_string())
        .collect();
    for (i, ami) in amis.iter().enumerate() {
        let kept = left.contains(ami);
        let want = i != 3; // only the unused, old image goes
        assert_eq!(
            kept,
            want,
            "image {i} {ami}: kept={kept}, decisions: {}",
            json(&out)["decisions"]
        );
    }
    assert!(left.contains(&other_image), "a non-bake image was touched");
    // The shared snapshot survived; an unshared one of a pruned image would not.
    let snaps = lab.rt.block_on(async {
        lab.ec2
            .describe_snapshots()
            .snapshot_ids(&shared_snap)
            .send()
            .await
    });
    assert!(
        snaps.is_ok(),
        "snapshot shared with another image was deleted"
    );

    // rm refuses an image in use unless forced.
    let rm = lab
        .bake(&cache)
        .args(["images", "rm", &amis[0]])
        .output()
        .unwrap();
    assert_eq!(rm.status.code(), Some(1), "{}", stderr(&rm));
    assert!(stderr(&rm).contains("in use"), "{}", stderr(&rm));
    lab.terminate(&inst);
    let rm = lab
        .bake(&cache)
        .args(["images", "rm", &amis[0], "--output", "json"])
        .output()
        .unwrap();
    assert!(rm.status.success(), "{}", stderr(&rm));
    assert_eq!(
        json(&rm)["removed"][0]["snapshots_deleted"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert!(
        !lab.images_of(&name)
            .iter()
            .any(|i| i.image_id() == Some(amis[0].as_str()))
    );

    // The listing shows usage.
    let list = lab
        .bake(&cache)
        .args(["images", "list", "--recipe", &name, "--output", "json"])
        .output()
        .unwrap();
    let l = json(&list);
    let by_id = |id: &str| {
        l["images"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["ami_id"] == id)
            .cloned()
            .unwrap()
    };
    assert!(
        by_id(&amis[1])["used_by"]
            .to_string()
            .contains("launch template"),
        "{l}"
    );
    assert!(by_id(&amis[2])["used_by"].to_string().contains(&asg), "{l}");
}

/// Two images of one fingerprint made in the same second tie on `CreationDate`: "newest" is
/// bake's own build time (`bake:built-at`). A second image registered after the build, with
/// the build's tags but a build time 1 ms earlier, loses the cache hit, the plan and the
/// prune although its CreationDate is the same second or later.
#[test]
fn newest_is_the_recorded_build_time_not_the_creation_second() {
    let lab = Lab::new();
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let name = unique("cache-newest-");
    let r = recipe(tmp.path(), &name);
    let first = build_json(&lab, &cache, &r, &[]);
    let ami = first["ami_id"].as_str().unwrap().to_string();
    let img = lab.images_of(&name).remove(0);
    let t = tags(img.tags());
    let built: jiff::Timestamp = t["bake:built-at"].parse().expect("a precise build time");
    let earlier = built - jiff::SignedDuration::from_millis(1);
    let snap = img.block_device_mappings()[0]
        .ebs()
        .unwrap()
        .snapshot_id()
        .unwrap()
        .to_string();
    let other = lab.rt.block_on(async {
        let mut spec = aws_sdk_ec2::types::TagSpecification::builder()
            .resource_type(aws_sdk_ec2::types::ResourceType::Image);
        for (k, v) in &t {
            let v = if k == "bake:built-at" {
                earlier.to_string()
            } else {
                v.clone()
            };
            spec = spec.tags(aws_sdk_ec2::types::Tag::builder().key(k).value(v).build());
        }
        lab.ec2
            .register_image()
            .name(format!("{name}-twin"))
            .root_device_name("/dev/xvda")
            .block_device_mappings(
                aws_sdk_ec2::types::BlockDeviceMapping::builder()
                    .device_name("/dev/xvda")
                    .ebs(
                        aws_sdk_ec2::types::EbsBlockDevice::builder()
                            .snapshot_id(&snap)
                            .build(),
                    )
                    .build(),
            )
            .tag_specifications(spec.build())
            .send()
            .await
            .unwrap()
            .image_id()
            .unwrap()
            .to_string()
    });
    let twin = lab
        .images_of(&name)
        .into_iter()
        .find(|i| i.image_id() == Some(other.as_str()))
        .unwrap();
    assert!(
        twin.creation_date() >= img.creation_date(),
        "the twin is no older by CreationDate"
    );

    let again = build_json(&lab, &cache, &r, &[]);
    assert_eq!(
        (again["cached"].clone(), again["ami_id"].clone()),
        (true.into(), ami.clone().into())
    );
    let plan = lab
        .bake(&cache)
        .args(["plan", "--output", "json"])
        .arg(&r)
        .output()
        .unwrap();
    assert_eq!(json(&plan)["plans"][0]["hit"], ami.as_str());
    let prune = lab
        .bake(&cache)
        .args([
            "images", "prune", "--recipe", &name, "--keep", "1", "--output", "json",
        ])
        .output()
        .unwrap();
    let d = json(&prune)["decisions"].clone();
    assert_eq!(d[0]["image"]["ami_id"], ami.as_str(), "{d}");
    assert_eq!(d[0]["verdict"], "keep_newest", "{d}");
    assert_eq!(d[1]["image"]["ami_id"], other.as_str(), "{d}");

    // The twin shares the build's snapshot: it goes first, then the build's image.
    for id in [&other, &ami] {
        let out = lab
            .bake(&cache)
            .args(["images", "rm", id])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    }
    assert_eq!(lab_leftovers(&lab.env, &name, &[]), Vec::<String>::new());
}
