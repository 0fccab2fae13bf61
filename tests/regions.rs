//! A distributed image's life after the build, region by region (issue 13): `bake images`
//! judges each region's copy by that region's usage, `bake plan` tells each region's state,
//! `bake deploy --region` takes that region's copy, and an instance launched from a copy holds
//! the baked files.

#![cfg(feature = "lab")]

mod common;

use common::*;

fn in_region<'a>(
    images: &'a serde_json::Value,
    region: &str,
) -> impl Iterator<Item = &'a serde_json::Value> {
    images
        .as_array()
        .unwrap()
        .iter()
        .filter(move |i| i["region"] == region)
}

fn ami_of(build: &serde_json::Value, region: &str) -> String {
    build["regions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["region"] == region)
        .unwrap_or_else(|| panic!("no image in {region}: {build}"))["ami_id"]
        .as_str()
        .unwrap()
        .to_string()
}

fn snapshot_of(lab: &Lab, region: &str, ami: &str) -> String {
    lab.rt.block_on(async {
        lab.ec2_in(region)
            .describe_images()
            .image_ids(ami)
            .send()
            .await
            .unwrap()
            .images()[0]
            .block_device_mappings()[0]
            .ebs()
            .unwrap()
            .snapshot_id()
            .unwrap()
            .to_string()
    })
}

#[test]
fn prune_keeps_a_copy_in_use_in_its_region_and_deletes_the_unused_copies_elsewhere() {
    let lab = Lab::new();
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let name = unique("reg-prune-");
    let r = write_recipe(
        tmp.path(),
        &name,
        Recipe {
            tail: "regions = [\"us-west-2\", \"eu-west-1\"]",
            ..Recipe::default()
        },
    );
    let b = build_json(&lab, &cache, &r, &[]);
    let (home, west, eu) = (
        ami_of(&b, "us-east-1"),
        ami_of(&b, "us-west-2"),
        ami_of(&b, "eu-west-1"),
    );
    let west_snap = snapshot_of(&lab, "us-west-2", &west);
    // A launch template in us-west-2 uses that region's copy; nothing uses the others.
    let lt = unique("reg-lt-");
    lab.rt.block_on(async {
        lab.ec2_in("us-west-2")
            .create_launch_template()
            .launch_template_name(&lt)
            .launch_template_data(
                aws_sdk_ec2::types::RequestLaunchTemplateData::builder()
                    .image_id(&west)
                    .build(),
            )
            .send()
            .await
            .unwrap();
    });
    let recipe = r.to_str().unwrap();

    // The listing covers the recipe's three regions, or the one --region names.
    let out = lab
        .bake(&cache)
        .args(["images", "list", "--recipe", recipe, "--output", "json"])
        .output()
        .unwrap();
    let l = json(&out);
    assert_eq!(l["format_version"], 1, "{l}");
    assert_eq!(
        l["regions"],
        serde_json::json!(["us-east-1", "us-west-2", "eu-west-1"])
    );
    let used: Vec<_> = in_region(&l["images"], "us-west-2").collect();
    assert_eq!(used.len(), 1, "{l}");
    assert!(used[0]["used_by"].to_string().contains(&lt), "{l}");
    assert_eq!(
        in_region(&l["images"], "eu-west-1").next().unwrap()["used_by"],
        serde_json::json!([])
    );
    let one = json(
        &lab.bake(&cache)
            .args([
                "images",
                "list",
                "--recipe",
                recipe,
                "--region",
                "eu-west-1",
                "--output",
                "json",
            ])
            .output()
            .unwrap(),
    );
    let ids: Vec<_> = one["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["ami_id"].clone())
        .collect();
    assert_eq!(ids, [serde_json::json!(eu)], "{one}");

    let out = lab
        .bake(&cache)
        .args([
            "images", "prune", "--recipe", recipe, "--keep", "0", "--yes", "--output", "json",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let p = json(&out);
    let verdict = |region: &str| {
        let d = p["decisions"].as_array().unwrap();
        let here: Vec<_> = d
            .iter()
            .filter(|d| d["image"]["region"] == region)
            .collect();
        assert_eq!(here.len(), 1, "{region}: {p}");
        here[0]["verdict"].clone()
    };
    assert_eq!(verdict("us-west-2"), "keep_in_use", "{p}");
    assert_eq!(verdict("us-east-1"), "delete", "{p}");
    assert_eq!(verdict("eu-west-1"), "delete", "{p}");
    let deleted: Vec<(String, String)> = p["deleted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["region"].as_str().unwrap().into(),
                d["ami_id"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        deleted,
        [
            ("us-east-1".to_string(), home),
            ("eu-west-1".to_string(), eu)
        ],
        "{p}"
    );
    // The lab's view of every region: only the copy in use is left (its snapshot goes with
    // the image, so it is no leftover of its own); the deleted images took their snapshots.
    let left = lab_leftovers(&lab.env, &name, &[]);
    assert_eq!(left, [format!("image {west}")], "{p}");
    let snaps = lab.rt.block_on(async {
        lab.ec2_in("us-west-2")
            .describe_snapshots()
            .snapshot_ids(&west_snap)
            .send()
            .await
    });
    assert!(snaps.is_ok(), "the copy in use lost its snapshot");

    // Clean up: the template, then the copy.
    lab.rt.block_on(async {
        let ec2 = lab.ec2_in("us-west-2");
        ec2.delete_launch_template()
            .launch_template_name(&lt)
            .send()
            .await
            .unwrap();
    });
    let out = lab
        .bake(&cache)
        .args(["images", "rm", &west, "--region", "us-west-2"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(lab_leftovers(&lab.env, &name, &[]), Vec::<String>::new());
}
