//! `bake build` over SSH against the lab, driving the real binary: the whole bake, failures,
//! interruption and host key pinning, each ending with nothing of the build left behind.

#![cfg(feature = "lab")]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

/// SSH gives up on a builder after this (the lab's boot from a warm layer takes seconds).
const SSH_TIMEOUT: &str = "timeout = \"60s\"";

/// Writes a small recipe named `name` into `dir` with the given extra TOML appended.
fn small_recipe(dir: &Path, name: &str, extra: &str) -> PathBuf {
    small_recipe_with(dir, name, "", extra)
}

/// Like [`small_recipe`], with `head` (top-level keys and tables) placed before `[source]`.
fn small_recipe_with(dir: &Path, name: &str, head: &str, extra: &str) -> PathBuf {
    let parts = Recipe {
        head,
        ssh: SSH_TIMEOUT,
        tail: extra,
        ..Recipe::default()
    };
    write_recipe(dir, name, parts)
}

#[test]
fn web_recipe_bakes_a_tagged_image_with_its_files_and_leaves_nothing() {
    let lab = Lab::new();
    let tmp = tempfile::tempdir().unwrap();
    let name = unique("web-");
    let recipe = example(tmp.path(), "web.toml", &name);

    let manifest = tmp.path().join("manifest.json");
    let out = lab
        .bake(&tmp.path().join("cache"))
        .args(["build", "--output", "json", "--manifest"])
        .arg(&manifest)
        .arg(&recipe)
        .output()
        .unwrap();
    assert!(out.status.success(), "build failed:\n{}", stderr(&out));
    let v = one_build(&out);
    let ami = v["ami_id"].as_str().unwrap().to_string();
    let fp = v["fingerprint"].as_str().unwrap().to_string();
    assert!(ami.starts_with("ami-"));
    assert_eq!(fp.len(), 64);
    assert_eq!(v["cached"], false);
    assert_eq!(v["region"], lab.env["AWS_REGION"].as_str());

    // The image and every snapshot carry the fingerprint and recipe tags.
    let imgs = lab.images_of(&name);
    assert_eq!(imgs.len(), 1, "exactly one image of the recipe");
    let img = &imgs[0];
    assert_eq!(img.image_id(), Some(ami.as_str()));
    let t = tags(img.tags());
    assert_eq!(t.get("bake:fingerprint"), Some(&fp));
    assert_eq!(t.get("bake:recipe"), Some(&name));
    assert_eq!(t.get("role").map(String::as_str), Some("web"));
    let snaps: Vec<_> = img
        .block_device_mappings()
        .iter()
        .filter_map(|m| m.ebs()?.snapshot_id())
        .collect();
    assert!(!snaps.is_empty(), "image has no snapshots");
    for s in &snaps {
        let st = lab.snapshot_tags(s);
        assert_eq!(
            st.get("bake:fingerprint"),
            Some(&fp),
            "snapshot {s} tags: {st:?}"
        );
        assert_eq!(st.get("bake:recipe"), Some(&name));
    }

    // Packer-style manifest.
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    assert_eq!(
        m["builds"][0]["artifact_id"],
        format!("{}:{ami}", lab.env["AWS_REGION"])
    );
    // Readable by Packer's own types: custom data is a string map, the run has one uuid.
    let entry = &m["builds"][0];
    assert_eq!(entry["custom_data"]["cached"], "false", "{m}");
    assert_eq!(entry["packer_run_uuid"], m["last_run_uuid"], "{m}");

    lab.assert_no_leftovers(&name, "temporary resources left behind");

    // An instance launched from the image has what the recipe put there.
    let (id, ip, key) = lab.launch_for_check(&ami, tmp.path());
    let check = ssh(
        &ip,
        &key,
        "admin",
        "set -e; test -f /opt/web/app/index.html; cat /etc/web/build-info >/dev/null; \
         stat -c '%U %a' /etc/systemd/system/web.service; id -u web >/dev/null && echo user-ok; \
         sha256sum /opt/web/app/index.html",
    );
    lab.terminate(&id);
    let so = stdout(&check);
    assert!(
        check.status.success(),
        "files missing on an instance of the image: {so}{}",
        stderr(&check)
    );
    assert!(so.contains("root 644"), "unit file owner/mode wrong: {so}");
    assert!(so.contains("user-ok"));
    let local = std::process::Command::new("sha256sum")
        .arg(tmp.path().join("web/app/index.html"))
        .output()
        .unwrap();
    let local_hash = stdout(&local)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    assert!(
        so.contains(&local_hash),
        "uploaded file differs from the local one"
    );
}

#[test]
fn failing_step_names_step_status_and_output_and_cleans_up() {
    let lab = Lab::new();
    let tmp = tempfile::tempdir().unwrap();
    let name = unique("fail-");
    let r = small_recipe(
        tmp.path(),
        &name,
        "[[step]]\nname = \"ok\"\nrun = \"echo fine\"\n[[step]]\nname = \"breaks\"\nrun = \"echo about-to-fail; echo oops >&2; exit 3\"\n",
    );
    let out = lab.build(tmp.path(), &["--plain"], &r);
    assert_exit(
        &out,
        1,
        &["breaks", "exit status 3", "about-to-fail", "oops"],
    );
    lab.assert_no_leftovers(&name, "");
    assert!(
        lab.images_of(&name).is_empty(),
        "a failed build left an image"
    );
}

#[test]
fn sigint_during_a_step_cleans_up() {
    let lab = Lab::new();
    let tmp = tempfile::tempdir().unwrap();
    let name = unique("int-");
    let r = small_recipe(
        tmp.path(),
        &name,
        "[[step]]\nname = \"long\"\nrun = \"echo started-long; sleep 60\"\n",
    );
    let settle = Duration::from_millis(300);
    let (code, err) = interrupt_when(&lab, &tmp.path().join("cache"), &r, "started-long", settle);
    assert_eq!(code, Some(130), "{err}");
    assert!(err.contains("interrupted"), "{err}");
    lab.assert_no_leftovers(&name, &err);
    assert!(lab.images_of(&name).is_empty());
}

#[test]
fn sigint_during_an_upload_cleans_up() {
    let lab = Lab::new();
    let tmp = tempfile::tempdir().unwrap();
    let name = unique("intup-");
    // Big enough that the upload is still running when the signal lands.
    let big = tmp.path().join("big.bin");
    let f = std::fs::File::create(&big).unwrap();
    f.set_len(2 << 30).unwrap();
    let r = small_recipe(
        tmp.path(),
        &name,
        "[[upload]]\nsource = \"big.bin\"\ndestination = \"/opt/big.bin\"\n",
    );
    let settle = Duration::from_millis(300);
    let (code, err) = interrupt_when(&lab, &tmp.path().join("cache"), &r, "upload:", settle);
    assert_eq!(code, Some(130), "{err}");
    lab.assert_no_leftovers(&name, &err);
    assert!(lab.images_of(&name).is_empty());
}

#[test]
fn host_key_mismatch_refuses_to_connect_and_cleans_up() {
    let lab = Lab::new();
    let tmp = tempfile::tempdir().unwrap();
    let name = unique("hostkey-");
    // The recipe's own cloud-config replaces the host key bake handed over (cloud-init applies
    // later parts over earlier ones), so the builder presents a key bake did not pin.
    let key = tmp.path().join("other_host_key");
    let public = ssh_keygen(&key);
    let private = std::fs::read_to_string(&key).unwrap();
    let indented: String = private.lines().map(|l| format!("    {l}\n")).collect();
    let ud = format!(
        "#cloud-config\nssh_keys:\n  ed25519_private: |\n{indented}  ed25519_public: {}\n",
        public.trim()
    );
    std::fs::write(tmp.path().join("ud.yaml"), ud).unwrap();
    let parts = Recipe {
        builder: "user_data_file = \"ud.yaml\"",
        ssh: SSH_TIMEOUT,
        tail: "[[step]]\nname = \"never\"\nrun = \"echo should-not-run\"\n",
        ..Recipe::default()
    };
    let r = write_recipe(tmp.path(), &name, parts);
    let start = Instant::now();
    let out = lab.build(tmp.path(), &["--plain"], &r);
    let err = assert_exit(&out, 1, &["host key"]);
    assert!(!err.contains("should-not-run"));
    // Refused at once, not after retrying for the whole SSH timeout.
    assert!(
        start.elapsed() < Duration::from_secs(45),
        "took {:?}",
        start.elapsed()
    );
    lab.assert_no_leftovers(&name, "");
}

#[test]
fn several_recipes_build_at_once_with_j() {
    let lab = Lab::new();
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (unique("ja-"), unique("jb-"));
    let ra = small_recipe(
        tmp.path(),
        &a,
        "[[step]]\nname = \"a\"\nrun = \"echo built-a\"\n",
    );
    let rb = small_recipe(
        tmp.path(),
        &b,
        "[[step]]\nname = \"b\"\nrun = \"echo built-b\"\n",
    );
    let out = lab
        .bake(&tmp.path().join("cache"))
        .args(["build", "-j", "2", "--plain", "--output", "json"])
        .arg(&ra)
        .arg(&rb)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let v = json(&out);
    let builds = v["builds"].as_array().unwrap();
    assert_eq!(builds.len(), 2);
    assert_eq!(builds[0]["recipe"], a.as_str());
    assert_eq!(builds[1]["recipe"], b.as_str());
    assert_ne!(builds[0]["ami_id"], builds[1]["ami_id"]);
    // Lines of concurrent builds are told apart by recipe name.
    let err = stderr(&out);
    assert!(
        err.contains(&format!("{a} |")) && err.contains(&format!("{b} |")),
        "{err}"
    );
    lab.assert_no_leftovers(&a, "");
    lab.assert_no_leftovers(&b, "");
}

#[test]
fn reboot_step_reboots_the_builder_and_reconnects() {
    let lab = Lab::new();
    let tmp = tempfile::tempdir().unwrap();
    let name = unique("reboot-");
    let r = small_recipe(
        tmp.path(),
        &name,
        "[[step]]\nname = \"before\"\nrun = \"echo x > /tmp/volatile; echo y > /var/tmp/kept\"\nreboot = true\n\
         [[step]]\nname = \"after\"\nrun = \"test ! -e /tmp/volatile && test -e /var/tmp/kept && echo rebooted-ok\"\n",
    );
    let out = lab.build(tmp.path(), &["--plain"], &r);
    assert_exit(&out, 0, &["rebooted-ok", "reconnected after reboot"]);
    lab.assert_no_leftovers(&name, "");
}

#[test]
fn retries_rerun_a_failed_step_and_timeouts_stop_a_hung_one() {
    let lab = Lab::new();
    let tmp = tempfile::tempdir().unwrap();
    let name = unique("retry-");
    let r = small_recipe(
        tmp.path(),
        &name,
        "[[step]]\nname = \"flaky\"\nretries = 1\nrun = \"if [ -e /tmp/once ]; then echo second-try-ok; else touch /tmp/once; exit 7; fi\"\n",
    );
    let out = lab.build(tmp.path(), &["--plain"], &r);
    assert_exit(&out, 0, &["attempt 2/2", "second-try-ok"]);

    let name = unique("hang-");
    let r = small_recipe(
        tmp.path(),
        &name,
        "[[step]]\nname = \"hangs\"\ntimeout = \"2s\"\nrun = \"sleep 60\"\n",
    );
    let start = Instant::now();
    let out = lab.build(tmp.path(), &["--plain"], &r);
    assert_exit(&out, 1, &["hangs", "timed out"]);
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "timeout not enforced: {:?}",
        start.elapsed()
    );
    lab.assert_no_leftovers(&name, "");
}

#[test]
fn sensitive_variables_never_reach_the_output() {
    let lab = Lab::new();
    let tmp = tempfile::tempdir().unwrap();
    let name = unique("secret-");
    let r = small_recipe_with(
        tmp.path(),
        &name,
        "sensitive = [\"token\"]\n[variables]\ntoken = \"placeholder\"\n",
        "[[step]]\nname = \"uses-secret\"\nenv = { TOKEN = \"{var.token}\" }\nrun = \"echo token is $TOKEN; echo again {var.token} >&2; exit 4\"\n",
    );
    let secret = "s3cr3t-Value-42";
    let var = format!("token={secret}");
    let out = lab.build(
        tmp.path(),
        &["--plain", "--output", "json", "--var", &var],
        &r,
    );
    let se = assert_exit(&out, 1, &["token is [redacted]"]);
    let so = stdout(&out);
    assert!(
        !so.contains(secret) && !se.contains(secret),
        "secret leaked:\n{so}\n{se}"
    );
    lab.assert_no_leftovers(&name, "");
}

#[test]
fn script_steps_with_an_interpreter_line_run_through_it() {
    let lab = Lab::new();
    let tmp = tempfile::tempdir().unwrap();
    let name = unique("shebang-");
    std::fs::write(
        tmp.path().join("hello.py"),
        "#!/usr/bin/env python3\nimport sys\nprint('python says', sys.version_info[0])\n",
    )
    .unwrap();
    let r = small_recipe(
        tmp.path(),
        &name,
        "[[step]]\nname = \"py\"\nscript = \"hello.py\"\nsudo = true\n",
    );
    let out = lab.build(tmp.path(), &["--plain"], &r);
    assert_exit(&out, 0, &["python says 3"]);
}

#[test]
fn debug_log_shows_sdk_requests_and_bakes_user_agent() {
    let lab = Lab::new();
    let tmp = tempfile::tempdir().unwrap();
    let out = lab
        .bake(&tmp.path().join("cache"))
        .env("BAKE_LOG", "debug")
        .args(["images", "list"])
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.lines()
            .any(|l| l.contains(" DEBUG ") && l.contains("rpc.method=\"DescribeImages\"")),
        "no SDK request lines:\n{err}"
    );
    // -vv is the same through the flag; trace shows the user agent bake sends.
    let out = lab
        .bake(&tmp.path().join("cache"))
        .env_remove("BAKE_LOG")
        .args(["images", "list", "-vvv"])
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    let ua = format!("app/bake-{}", env!("CARGO_PKG_VERSION"));
    assert!(
        err.contains(&ua),
        "no {ua} in the user agent:\n{}",
        &err[..err.len().min(4000)]
    );
    // Without either, no log at all.
    let out = lab
        .bake(&tmp.path().join("cache"))
        .env_remove("BAKE_LOG")
        .args(["images", "list"])
        .output()
        .unwrap();
    assert!(!stderr(&out).contains(" DEBUG "), "{}", stderr(&out));
}
