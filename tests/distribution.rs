//! Distribution against the lab (issue 13): one build, copies to two more regions tagged at
//! creation, shared, deprecated and named by an SSM parameter in every region; the cache is
//! per region, so a rebuild is a hit everywhere and a deregistered copy is copied again
//! without building.

#![cfg(feature = "lab")]

mod common;

use common::*;

const EXTRA: [&str; 2] = ["us-west-2", "eu-west-1"];

fn ssm_in(lab: &Lab, region: &str) -> aws_sdk_ssm::Client {
    let conf = lab
        .conf
        .to_builder()
        .region(aws_config::Region::new(region.to_string()))
        .build();
    aws_sdk_ssm::Client::new(&conf)
}

#[test]
fn one_build_copies_to_every_region_and_the_cache_is_per_region() {
    let lab = Lab::new();
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let name = unique("dist-");
    std::fs::create_dir_all(tmp.path().join("files")).unwrap();
    std::fs::write(tmp.path().join("files/app.txt"), "distributed\n").unwrap();
    let r = write_recipe(
        tmp.path(),
        &name,
        Recipe {
            tail: "tags = { team = \"infra\" }\n\
                   regions = [\"us-west-2\", \"eu-west-1\"]\n\
                   deprecate_after = \"30d\"\n\
                   ssm_parameter = \"/bake/{recipe}/latest\"\n\
                   [image.share]\naccounts = [\"111122223333\"]\nsnapshots = true\n\
                   [[upload]]\nsource = \"files/app.txt\"\ndestination = \"/opt/app.txt\"",
            ..Recipe::default()
        },
    );

    let first = build_json(&lab, &cache, &r, &[]);
    assert_eq!(first["cached"], false);
    assert_eq!(first["regions"].as_array().unwrap().len(), 3, "{first}");
    let home = first["ami_id"].as_str().unwrap().to_string();
    assert_eq!(ami_of(&first, "us-east-1"), home);
    let fp = first["fingerprint"].as_str().unwrap().to_string();

    lab.rt.block_on(async {
        for region in EXTRA {
            let ec2 = lab.ec2_in(region);
            let ami = ami_of(&first, region);
            assert_ne!(ami, home, "{region} got no copy of its own");
            let img = ec2
                .describe_images()
                .image_ids(&ami)
                .send()
                .await
                .unwrap()
                .images()[0]
                .clone();
            let t = tags(img.tags());
            assert_eq!(t.get("bake:fingerprint"), Some(&fp), "{region}: {t:?}");
            assert_eq!(t.get("team").map(String::as_str), Some("infra"));
            assert_eq!(t.get("bake:state").map(String::as_str), Some("complete"));
            assert!(img.deprecation_time().is_some(), "{region}: not deprecated");
            let perms = ec2
                .describe_image_attribute()
                .image_id(&ami)
                .attribute(aws_sdk_ec2::types::ImageAttributeName::LaunchPermission)
                .send()
                .await
                .unwrap();
            let users: Vec<_> = perms
                .launch_permissions()
                .iter()
                .filter_map(|p| p.user_id())
                .collect();
            assert_eq!(users, ["111122223333"], "{region}");
            let snap = img.block_device_mappings()[0]
                .ebs()
                .unwrap()
                .snapshot_id()
                .unwrap()
                .to_string();
            let sp = ec2
                .describe_snapshot_attribute()
                .snapshot_id(&snap)
                .attribute(aws_sdk_ec2::types::SnapshotAttributeName::CreateVolumePermission)
                .send()
                .await
                .unwrap();
            assert!(
                sp.create_volume_permissions()
                    .iter()
                    .any(|p| p.user_id() == Some("111122223333")),
                "{region}: snapshot {snap} not shared"
            );
            let st = tags(
                ec2.describe_snapshots()
                    .snapshot_ids(&snap)
                    .send()
                    .await
                    .unwrap()
                    .snapshots()[0]
                    .tags(),
            );
            assert_eq!(st.get("bake:fingerprint"), Some(&fp), "{region} snapshot");
            let p = ssm_in(&lab, region)
                .get_parameter()
                .name(format!("/bake/{name}/latest"))
                .send()
                .await
                .unwrap();
            assert_eq!(p.parameter().unwrap().value(), Some(ami.as_str()));
        }
    });

    // The rebuild is a hit in all three regions: same images, nothing copied.
    let second = build_json(&lab, &cache, &r, &[]);
    assert_eq!(second["cached"], true);
    for region in ["us-east-1", "us-west-2", "eu-west-1"] {
        assert_eq!(ami_of(&second, region), ami_of(&first, region), "{region}");
    }
    assert!(
        second["regions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["copied"] == false)
    );

    // One copy gone: the next build copies again, without building.
    let gone = ami_of(&first, "eu-west-1");
    lab.rt.block_on(async {
        lab.ec2_in("eu-west-1")
            .deregister_image()
            .image_id(&gone)
            .send()
            .await
            .unwrap();
    });
    let third = build_json(&lab, &cache, &r, &[]);
    assert_eq!(third["cached"], true, "a missing copy rebuilt the image");
    let again = ami_of(&third, "eu-west-1");
    assert_ne!(again, gone);
    assert_eq!(ami_of(&third, "us-west-2"), ami_of(&first, "us-west-2"));

    // --force rebuilds on purpose: every region gets a copy of the new image, not the old one.
    let forced = build_json(&lab, &cache, &r, &["--force"]);
    assert_eq!(forced["cached"], false);
    for region in EXTRA {
        let r = forced["regions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["region"] == region)
            .unwrap();
        assert_eq!(r["copied"], true, "{region}: {forced}");
        assert_ne!(ami_of(&forced, region), ami_of(&third, region), "{region}");
    }
}

#[test]
fn the_build_region_among_the_copy_regions_is_refused_before_any_aws_call() {
    let lab = Lab::new();
    let tmp = tempfile::tempdir().unwrap();
    let name = unique("dist-home-");
    let r = write_recipe(
        tmp.path(),
        &name,
        Recipe {
            tail: "regions = [\"us-west-2\", \"us-east-1\"]",
            ..Recipe::default()
        },
    );
    let out = lab.build(tmp.path(), &[], &r);
    assert_exit(&out, 2, &["is the build region", ".toml:14:25:"]);
}

/// The images of `recipe` in `region` (any state but deregistered).
fn images_in(lab: &Lab, region: &str, recipe: &str) -> Vec<String> {
    lab.images_through(&lab.ec2_in(region), recipe)
        .iter()
        .filter_map(|i| i.image_id().map(str::to_string))
        .collect()
}

#[test]
fn a_failed_copy_keeps_the_good_ones_and_the_rerun_copies_only_what_is_missing() {
    let lab = Lab::new();
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let name = unique("dist-fail-");
    let r = copies_recipe(tmp.path(), &name);
    // EC2 refuses the first copy of this recipe's image (whichever region asks first).
    let rule = serde_json::json!({
        "service": "ec2", "action": "CopyImage", "params": {"Name": {"regex": name}},
        "kind": "error", "status": 400, "code": "InvalidParameterValue",
        "message": "lab: this copy is refused", "times": 1,
    });
    lab_api(&lab.env, "POST", "faults", &rule.to_string());
    let out = lab.build(tmp.path(), &[], &r);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let failed = EXTRA
        .into_iter()
        .find(|region| err.contains(region) && images_in(&lab, region, &name).is_empty())
        .unwrap_or_else(|| panic!("no region named without a copy:\n{err}"));
    assert!(err.contains("this copy is refused"), "{err}");
    let good = EXTRA.into_iter().find(|r| *r != failed).unwrap();
    let kept = images_in(&lab, good, &name);
    assert_eq!(kept.len(), 1, "the good copy in {good} is kept\n{err}");
    // Every region (the lab's own report): nothing but the images checked above.
    assert_eq!(
        lab_leftovers(&lab.env, &name, &["image", "snapshot"]),
        Vec::<String>::new(),
        "{err}"
    );

    // The rerun builds nothing and copies only to the region that failed.
    let b = build_json(&lab, &cache, &r, &[]);
    assert_eq!(b["cached"], true, "{b}");
    assert_eq!(ami_of(&b, good), kept[0], "{b}");
    assert_eq!(images_in(&lab, failed, &name), [ami_of(&b, failed)], "{b}");
    assert_eq!(
        lab_leftovers(&lab.env, &name, &["image", "snapshot"]),
        Vec::<String>::new()
    );
}

#[test]
fn a_lost_copy_answer_is_retried_without_a_second_copy() {
    let lab = Lab::new();
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let name = unique("dist-lost-");
    let r = write_recipe(
        tmp.path(),
        &name,
        Recipe {
            tail: "regions = [\"us-west-2\"]",
            ..Recipe::default()
        },
    );
    // The copy is made, its answer lost (a 500): the retry must get the same copy back.
    let rule = serde_json::json!({
        "service": "ec2", "action": "CopyImage", "params": {"Name": {"regex": name}},
        "when": "after", "kind": "lost", "times": 1,
    });
    lab_api(&lab.env, "POST", "faults", &rule.to_string());
    let b = build_json(&lab, &cache, &r, &[]);
    let copies = images_in(&lab, "us-west-2", &name);
    assert_eq!(copies, [ami_of(&b, "us-west-2")], "one copy, not two: {b}");
    assert_eq!(
        lab_leftovers(&lab.env, &name, &["image", "snapshot"]),
        Vec::<String>::new()
    );
}

/// Who may create volumes from `ami`'s snapshot in `region`: user ids and groups.
fn snapshot_perms(lab: &Lab, region: &str, ami: &str) -> Vec<String> {
    lab.rt.block_on(async {
        let ec2 = lab.ec2_in(region);
        let img = ec2
            .describe_images()
            .image_ids(ami)
            .send()
            .await
            .unwrap()
            .images()[0]
            .clone();
        let snap = img.block_device_mappings()[0]
            .ebs()
            .unwrap()
            .snapshot_id()
            .unwrap()
            .to_string();
        let sp = ec2
            .describe_snapshot_attribute()
            .snapshot_id(&snap)
            .attribute(aws_sdk_ec2::types::SnapshotAttributeName::CreateVolumePermission)
            .send()
            .await
            .unwrap();
        let mut out: Vec<String> = sp
            .create_volume_permissions()
            .iter()
            .map(|p| match (p.user_id(), p.group()) {
                (Some(u), _) => u.to_string(),
                (_, Some(g)) => format!("group {}", g.as_str()),
                _ => "?".to_string(),
            })
            .collect();
        out.sort();
        out
    })
}

#[test]
fn snapshots_are_public_only_when_the_recipe_says_public_snapshots() {
    let lab = Lab::new();
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let public_only = unique("dist-pub-");
    let r = write_recipe(
        tmp.path(),
        &public_only,
        Recipe {
            tail: "regions = [\"us-west-2\"]\n[image.share]\npublic = true",
            ..Recipe::default()
        },
    );
    let b = build_json(&lab, &cache, &r, &[]);
    for region in ["us-east-1", "us-west-2"] {
        assert_eq!(
            snapshot_perms(&lab, region, &ami_of(&b, region)),
            Vec::<String>::new(),
            "{region}: a public image's snapshots stay private"
        );
    }

    let disks = unique("dist-pubsnap-");
    let r = write_recipe(
        tmp.path(),
        &disks,
        Recipe {
            tail: "regions = [\"us-west-2\"]\n[image.share]\naccounts = [\"111122223333\"]\n\
                   public = true\nsnapshots = true\npublic_snapshots = true",
            ..Recipe::default()
        },
    );
    let b = build_json(&lab, &cache, &r, &[]);
    for region in ["us-east-1", "us-west-2"] {
        let ami = ami_of(&b, region);
        assert_eq!(
            snapshot_perms(&lab, region, &ami),
            ["111122223333", "group all"],
            "{region}"
        );
        let public = lab.rt.block_on(async {
            lab.ec2_in(region)
                .describe_images()
                .image_ids(&ami)
                .send()
                .await
                .unwrap()
                .images()[0]
                .public()
        });
        assert_eq!(public, Some(true), "{region}: the image is public");
    }
}
