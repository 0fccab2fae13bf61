//! CI-native results of a good build against the lab, driving the real binary as a GitHub
//! Actions step would run it: one `::group::` per step, the outputs file, the job summary and
//! (GitLab) the dotenv report; a second run is a cache hit and says so in every one of them.

#![cfg(feature = "lab")]

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::*;

/// `name=value` lines (the last value of a name wins, as the runner reads them).
fn pairs(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn github_build(lab: &Lab, dir: &Path, recipe: &Path) -> std::process::Output {
    lab.bake(&dir.join("cache"))
        .env("GITHUB_ACTIONS", "true")
        .env("CI", "true")
        .env("GITHUB_OUTPUT", dir.join("out"))
        .env("GITHUB_STEP_SUMMARY", dir.join("summary.md"))
        .args(["build", "--dotenv"])
        .arg(dir.join("build.env"))
        .arg(recipe)
        .output()
        .unwrap()
}

#[test]
fn a_github_actions_build_groups_steps_and_writes_outputs_summary_and_dotenv() {
    let lab = Lab::new();
    let dir = tempfile::tempdir().unwrap();
    let name = unique("ci-");
    let recipe = write_recipe(
        dir.path(),
        &name,
        Recipe {
            ssh: "timeout = \"60s\"",
            tail: "[[step]]\nname = \"hello\"\nrun = \"echo hello from the builder\"\n",
            ..Recipe::default()
        },
    );
    let out = github_build(&lab, dir.path(), &recipe);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    // The step's output inside its group; the group closed before the step's result line.
    let lines: Vec<&str> = err.lines().collect();
    let open = lines
        .iter()
        .position(|l| *l == "::group::step hello")
        .unwrap_or_else(|| panic!("no group for the step:\n{err}"));
    let close = open
        + lines[open..]
            .iter()
            .position(|l| *l == "::endgroup::")
            .expect("group closed");
    assert!(
        lines[open..close]
            .iter()
            .any(|l| l.contains("hello from the builder")),
        "{err}"
    );
    assert!(lines[close + 1].contains("step hello: exit 0"), "{err}");

    let o = pairs(&std::fs::read_to_string(dir.path().join("out")).unwrap());
    let ami = o["ami_id"].clone();
    assert!(ami.starts_with("ami-"), "{o:?}");
    assert_eq!(o["cached"], "false");
    assert_eq!(o["fingerprint"].len(), 64, "{o:?}");
    let prefix = name.replace('-', "_");
    assert_eq!(o[&format!("{prefix}_ami_id")], ami, "{o:?}");
    let builds: serde_json::Value = serde_json::from_str(&o["builds"]).unwrap();
    assert_eq!(builds[0]["ami_id"], ami.as_str());
    let summary = std::fs::read_to_string(dir.path().join("summary.md")).unwrap();
    assert!(summary.contains("| recipe | region | image |"), "{summary}");
    assert!(
        summary.contains(&format!("`{ami}`")) && summary.contains("| built |"),
        "{summary}"
    );
    let env = pairs(&std::fs::read_to_string(dir.path().join("build.env")).unwrap());
    assert_eq!(env["BAKE_AMI_ID"], ami);
    assert_eq!(env["BAKE_CACHED"], "false");
    assert_eq!(env[&format!("BAKE_{}_AMI_ID", prefix.to_uppercase())], ami);

    // Again: a cache hit, appended to the outputs and summary, the dotenv report replaced.
    let again = github_build(&lab, dir.path(), &recipe);
    assert!(again.status.success(), "{}", stderr(&again));
    let o = pairs(&std::fs::read_to_string(dir.path().join("out")).unwrap());
    assert_eq!(
        (o["ami_id"].as_str(), o["cached"].as_str()),
        (ami.as_str(), "true")
    );
    let summary = std::fs::read_to_string(dir.path().join("summary.md")).unwrap();
    assert!(summary.contains("| cache hit |"), "{summary}");
    let env = std::fs::read_to_string(dir.path().join("build.env")).unwrap();
    assert_eq!(env.matches("BAKE_AMI_ID=").count(), 1, "{env}");
    assert!(env.contains("BAKE_CACHED=true"), "{env}");
    lab.assert_no_leftovers(&name, "a good build leaves only its image");
}

#[test]
fn several_recipes_are_told_apart_by_prefixed_outputs_with_a_region_per_copy() {
    let lab = Lab::new();
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (unique("ci-a-"), unique("ci-b-"));
    let step = "[[step]]\nname = \"hi\"\nrun = \"true\"\n";
    let ra = write_recipe(
        dir.path(),
        &a,
        Recipe {
            ssh: "timeout = \"60s\"",
            tail: &format!("regions = [\"us-west-2\"]\n{step}"),
            ..Recipe::default()
        },
    );
    let rb = write_recipe(
        dir.path(),
        &b,
        Recipe {
            ssh: "timeout = \"60s\"",
            tail: step,
            ..Recipe::default()
        },
    );
    let out = lab
        .bake(&dir.path().join("cache"))
        .env("GITHUB_ACTIONS", "true")
        .env("GITHUB_OUTPUT", dir.path().join("out"))
        .args(["build", "-j", "2", "--dotenv"])
        .arg(dir.path().join("build.env"))
        .args([&ra, &rb])
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        !err.contains("::group::"),
        "no groups while builds run at once:\n{err}"
    );
    let o = pairs(&std::fs::read_to_string(dir.path().join("out")).unwrap());
    assert!(
        !o.contains_key("ami_id"),
        "unprefixed names with two recipes: {o:?}"
    );
    let (pa, pb) = (a.replace('-', "_"), b.replace('-', "_"));
    let home = &o[&format!("{pa}_ami_id")];
    assert_eq!(&o[&format!("{pa}_ami_id_us_east_1")], home, "{o:?}");
    let copy = &o[&format!("{pa}_ami_id_us_west_2")];
    assert!(copy.starts_with("ami-") && copy != home, "{o:?}");
    assert!(o[&format!("{pb}_ami_id")].starts_with("ami-"), "{o:?}");
    assert!(
        !o.contains_key(&format!("{pb}_ami_id_us_east_1")),
        "region names only with copies: {o:?}"
    );
    let builds: serde_json::Value = serde_json::from_str(&o["builds"]).unwrap();
    assert_eq!(builds.as_array().unwrap().len(), 2, "{builds}");
    assert_eq!(builds[0]["regions"]["us-west-2"], copy.as_str(), "{builds}");
    let env = pairs(&std::fs::read_to_string(dir.path().join("build.env")).unwrap());
    assert_eq!(
        &env[&format!("BAKE_{}_AMI_ID_US_WEST_2", pa.to_uppercase())],
        copy
    );
    for r in [&a, &b] {
        lab.assert_no_leftovers(r, "two good builds leave only their images");
    }
}
