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
    let r = copies_recipe(tmp.path(), &name);
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

#[test]
fn plan_tells_each_region_present_copy_needed_or_build_needed() {
    let lab = Lab::new();
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let name = unique("reg-plan-");
    let r = copies_recipe(tmp.path(), &name);
    let plan = |text: bool| {
        let mut c = lab.bake(&cache);
        c.arg("plan");
        if !text {
            c.args(["--output", "json"]);
        }
        let out = c.arg(&r).output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        out
    };
    let states = |out: &std::process::Output| -> Vec<(String, String)> {
        let v = json(out);
        assert_eq!(v["format_version"], 1, "{v}");
        v["plans"][0]["regions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["region"].as_str().unwrap().to_string(),
                    r["state"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let s = |a: &str, b: &str, c: &str| {
        vec![
            ("us-east-1".to_string(), a.to_string()),
            ("us-west-2".to_string(), b.to_string()),
            ("eu-west-1".to_string(), c.to_string()),
        ]
    };
    assert_eq!(
        states(&plan(false)),
        s("build_needed", "build_needed", "build_needed")
    );

    let b = build_json(&lab, &cache, &r, &[]);
    assert_eq!(states(&plan(false)), s("present", "present", "present"));
    let gone = ami_of(&b, "eu-west-1");
    lab.rt.block_on(async {
        lab.ec2_in("eu-west-1")
            .deregister_image()
            .image_id(&gone)
            .send()
            .await
            .unwrap();
    });
    let out = plan(false);
    assert_eq!(states(&out), s("present", "present", "copy_needed"));
    let west = &json(&out)["plans"][0]["regions"][1];
    assert_eq!(west["ami_id"], ami_of(&b, "us-west-2").as_str(), "{west}");
    let text = stdout(&plan(true));
    let line = |region: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(region))
            .unwrap_or_else(|| panic!("no line for {region}:\n{text}"))
            .to_string()
    };
    assert!(line("eu-west-1").contains("copy needed"), "{text}");
    assert!(line("us-west-2").contains("present"), "{text}");
    assert!(
        line("us-west-2").contains(&ami_of(&b, "us-west-2")),
        "{text}"
    );
}

#[test]
fn an_instance_from_each_copy_holds_the_baked_files_and_each_copy_shows_progress() {
    let lab = Lab::new();
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let name = unique("reg-files-");
    std::fs::create_dir_all(tmp.path().join("files")).unwrap();
    std::fs::write(
        tmp.path().join("files/app.txt"),
        format!("{name} everywhere\n"),
    )
    .unwrap();
    let r = write_recipe(
        tmp.path(),
        &name,
        Recipe {
            tail: "regions = [\"us-west-2\", \"eu-west-1\"]\n\
                   [[upload]]\nsource = \"files/app.txt\"\ndestination = \"/opt/app.txt\"",
            ..Recipe::default()
        },
    );
    let out = lab
        .bake(&cache)
        .args(["build", "--output", "json", "--plain"])
        .arg(&r)
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    let b = one_build(&out);
    for region in ["us-west-2", "eu-west-1"] {
        let ec2 = lab.ec2_in(region);
        let ami = ami_of(&b, region);
        // Each copy has its own progress line.
        let prefix = format!("copy {region}: ");
        assert!(
            err.lines()
                .any(|l| l.contains(&prefix) && l.contains("copying ami-")),
            "{err}"
        );
        assert!(
            err.lines()
                .any(|l| l.contains(&prefix) && l.contains(&format!("{ami} available"))),
            "{err}"
        );
        let (id, ip, key) = lab.launch_for_check_through(&ec2, &ami, tmp.path());
        let o = ssh(&ip, &key, "admin", "cat /opt/app.txt");
        lab.rt.block_on(async {
            ec2.terminate_instances()
                .instance_ids(&id)
                .send()
                .await
                .unwrap();
        });
        assert!(o.status.success(), "{region}: {}", stderr(&o));
        assert_eq!(stdout(&o), format!("{name} everywhere\n"), "{region} {ami}");
    }
}

#[test]
fn deploy_with_region_rolls_out_that_regions_copy() {
    use aws_sdk_autoscaling::types::LaunchTemplateSpecification;
    let lab = Lab::new();
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let name = unique("reg-deploy-");
    let region = "us-west-2";
    let r = write_recipe(
        tmp.path(),
        &name,
        Recipe {
            tail: "regions = [\"us-west-2\"]",
            ..Recipe::default()
        },
    );
    let b = build_json(&lab, &cache, &r, &[]);
    let copy = ami_of(&b, region);
    assert_ne!(copy, ami_of(&b, "us-east-1"));
    let conf = lab
        .conf
        .to_builder()
        .region(aws_config::Region::new(region))
        .build();
    let asc = aws_sdk_autoscaling::Client::new(&conf);
    let ec2 = lab.ec2_in(region);
    let asg = unique("reg-asg-");
    let lt = unique("reg-lt-");
    // A group in us-west-2 on that region's base image.
    let lt_id = lab.rt.block_on(async {
        let base = ec2
            .describe_images()
            .owners("136693071363")
            .send()
            .await
            .unwrap()
            .images()[0]
            .image_id()
            .unwrap()
            .to_string();
        let lt_id = ec2
            .create_launch_template()
            .launch_template_name(&lt)
            .launch_template_data(
                aws_sdk_ec2::types::RequestLaunchTemplateData::builder()
                    .image_id(&base)
                    .instance_type(aws_sdk_ec2::types::InstanceType::T3Micro)
                    .build(),
            )
            .send()
            .await
            .unwrap()
            .launch_template()
            .unwrap()
            .launch_template_id()
            .unwrap()
            .to_string();
        asc.create_auto_scaling_group()
            .auto_scaling_group_name(&asg)
            .launch_template(
                LaunchTemplateSpecification::builder()
                    .launch_template_id(&lt_id)
                    .version("1")
                    .build(),
            )
            .min_size(1)
            .max_size(2)
            .desired_capacity(1)
            .health_check_grace_period(0)
            .availability_zones(format!("{region}a"))
            .send()
            .await
            .unwrap();
        lt_id
    });
    let out = lab
        .bake(&cache)
        .args([
            "deploy", "--plain", "--output", "json", "--region", region, "--asg", &asg,
        ])
        .args([
            "--min-healthy-percentage",
            "0",
            "--instance-warmup",
            "0s",
            "--recipe",
        ])
        .arg(&r)
        .output()
        .unwrap();
    let err = stderr(&out);
    let v = json(&out);
    let runs: Vec<String> = lab.rt.block_on(async {
        let g = asc
            .describe_auto_scaling_groups()
            .auto_scaling_group_names(&asg)
            .send()
            .await
            .unwrap();
        let ids: Vec<String> = g.auto_scaling_groups()[0]
            .instances()
            .iter()
            .filter_map(|i| i.instance_id().map(str::to_string))
            .collect();
        let r = ec2
            .describe_instances()
            .set_instance_ids(Some(ids))
            .send()
            .await
            .unwrap();
        let images = r
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .filter_map(|i| i.image_id().map(str::to_string))
            .collect();
        let _ = asc
            .delete_auto_scaling_group()
            .auto_scaling_group_name(&asg)
            .force_delete(true)
            .send()
            .await;
        let _ = ec2
            .delete_launch_template()
            .launch_template_id(&lt_id)
            .send()
            .await;
        images
    });
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert_eq!(v["result"], "deployed", "{v}");
    assert_eq!(v["ami_id"], copy.as_str(), "not the region's copy: {v}");
    assert_eq!(v["region"], region, "{v}");
    assert!(
        !runs.is_empty() && runs.iter().all(|i| *i == copy),
        "{runs:?}"
    );
}
