//! `bake build` over SSH against the lab, driving the real binary: the whole bake, failures,
//! interruption and host key pinning, each ending with nothing of the build left behind.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;

/// Writes a small recipe named `name` into `dir` with the given extra TOML appended.
fn small_recipe(dir: &Path, name: &str, extra: &str) -> std::path::PathBuf {
    small_recipe_with(dir, name, "", extra)
}

/// Like [`small_recipe`], with `head` (top-level keys and tables) placed before `[source]`.
fn small_recipe_with(dir: &Path, name: &str, head: &str, extra: &str) -> std::path::PathBuf {
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(
        &p,
        format!(
            r#"name = "{name}"
{head}
[source.filter]
owners = ["136693071363"]
name = "debian-12-amd64-*"
[builder]
instance_type = "t3.micro"
[ssh]
username = "admin"
timeout = "60s"
[image]
name = "{{recipe}}-{{short_hash}}-{{timestamp}}"
{extra}
"#
        ),
    )
    .unwrap();
    p
}

#[test]
fn web_recipe_bakes_a_tagged_image_with_its_files_and_leaves_nothing() {
    let lab = Lab::new();
    let tmp = tempfile::tempdir().unwrap();
    let name = unique("web-");
    copy_tree(&repo().join("recipes"), tmp.path());
    let recipe = tmp.path().join("web.toml");
    let text = std::fs::read_to_string(&recipe).unwrap().replacen(
        "name = \"web\"",
        &format!("name = \"{name}\""),
        1,
    );
    std::fs::write(&recipe, text).unwrap();

    let manifest = tmp.path().join("manifest.json");
    let out = lab
        .bake(&tmp.path().join("cache"))
        .args(["build", "--output", "json", "--manifest"])
        .arg(&manifest)
        .arg(&recipe)
        .output()
        .unwrap();
    assert!(out.status.success(), "build failed:\n{}", stderr(&out));
    let v = json(&out);
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

    assert_eq!(
        lab.leftovers(&name),
        Vec::<String>::new(),
        "temporary resources left behind"
    );

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
    let out = lab
        .bake(&tmp.path().join("cache"))
        .args(["build", "--plain"])
        .arg(&r)
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("breaks"), "{err}");
    assert!(err.contains("exit status 3"), "{err}");
    assert!(
        err.contains("about-to-fail") && err.contains("oops"),
        "output tail missing: {err}"
    );
    assert_eq!(lab.leftovers(&name), Vec::<String>::new());
    assert!(
        lab.images_of(&name).is_empty(),
        "a failed build left an image"
    );
}

/// Starts a build, waits for `marker` on stderr, sends SIGINT, and returns (exit code, stderr).
fn interrupt_when(lab: &Lab, cache: &Path, recipe: &Path, marker: &str) -> (Option<i32>, String) {
    let mut child = lab
        .bake(cache)
        .args(["build", "--plain"])
        .arg(recipe)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx.send(line.clone());
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("marker never appeared");
        if line.contains(marker) {
            break;
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    unsafe { libc_kill(child.id() as i32, 2) };
    let status = child.wait().unwrap();
    (status.code(), reader.join().unwrap())
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
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
    let (code, err) = interrupt_when(&lab, &tmp.path().join("cache"), &r, "started-long");
    assert_eq!(code, Some(130), "{err}");
    assert!(err.contains("interrupted"), "{err}");
    assert_eq!(lab.leftovers(&name), Vec::<String>::new(), "{err}");
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
    let (code, err) = interrupt_when(&lab, &tmp.path().join("cache"), &r, "upload:");
    assert_eq!(code, Some(130), "{err}");
    assert_eq!(lab.leftovers(&name), Vec::<String>::new(), "{err}");
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
    assert!(
        std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&key)
            .status()
            .unwrap()
            .success()
    );
    let private = std::fs::read_to_string(&key).unwrap();
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let indented: String = private.lines().map(|l| format!("    {l}\n")).collect();
    let ud = format!(
        "#cloud-config\nssh_keys:\n  ed25519_private: |\n{indented}  ed25519_public: {}\n",
        public.trim()
    );
    std::fs::write(tmp.path().join("ud.yaml"), ud).unwrap();
    let r = small_recipe(
        tmp.path(),
        &name,
        "[[step]]\nname = \"never\"\nrun = \"echo should-not-run\"\n",
    );
    let text = std::fs::read_to_string(&r).unwrap().replace(
        "instance_type = \"t3.micro\"",
        "instance_type = \"t3.micro\"\nuser_data_file = \"ud.yaml\"",
    );
    std::fs::write(&r, text).unwrap();
    let start = Instant::now();
    let out = lab
        .bake(&tmp.path().join("cache"))
        .args(["build", "--plain"])
        .arg(&r)
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("host key"), "{err}");
    assert!(!err.contains("should-not-run"));
    // Refused at once, not after retrying for the whole SSH timeout.
    assert!(
        start.elapsed() < Duration::from_secs(45),
        "took {:?}",
        start.elapsed()
    );
    assert_eq!(lab.leftovers(&name), Vec::<String>::new());
}

#[test]
fn several_recipes_build_at_once_with_j() {
    let lab = Lab::new();
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (unique("ja-"), unique("jb-"));
    let ra = small_recipe(tmp.path(), &a, "[[step]]\nname = \"a\"\nrun = \"echo built-a\"\n");
    let rb = small_recipe(tmp.path(), &b, "[[step]]\nname = \"b\"\nrun = \"echo built-b\"\n");
    let out = lab.bake(&tmp.path().join("cache")).args(["build", "-j", "2", "--plain", "--output", "json"]).arg(&ra).arg(&rb).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let v = json(&out);
    let builds = v["builds"].as_array().unwrap();
    assert_eq!(builds.len(), 2);
    assert_eq!(builds[0]["recipe"], a.as_str());
    assert_eq!(builds[1]["recipe"], b.as_str());
    assert_ne!(builds[0]["ami_id"], builds[1]["ami_id"]);
    // Lines of concurrent builds are told apart by recipe name.
    let err = stderr(&out);
    assert!(err.contains(&format!("{a} |")) && err.contains(&format!("{b} |")), "{err}");
    assert_eq!(lab.leftovers(&a), Vec::<String>::new());
    assert_eq!(lab.leftovers(&b), Vec::<String>::new());
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
    let out = lab.bake(&tmp.path().join("cache")).args(["build", "--plain"]).arg(&r).output().unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("rebooted-ok"), "{err}");
    assert!(err.contains("reconnected after reboot"), "{err}");
    assert_eq!(lab.leftovers(&name), Vec::<String>::new());
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
    let out = lab.bake(&tmp.path().join("cache")).args(["build", "--plain"]).arg(&r).output().unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("attempt 2/2") && err.contains("second-try-ok"), "{err}");

    let name = unique("hang-");
    let r = small_recipe(tmp.path(), &name, "[[step]]\nname = \"hangs\"\ntimeout = \"2s\"\nrun = \"sleep 60\"\n");
    let start = std::time::Instant::now();
    let out = lab.bake(&tmp.path().join("cache")).args(["build", "--plain"]).arg(&r).output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("hangs") && err.contains("timed out"), "{err}");
    assert!(start.elapsed() < Duration::from_secs(30), "timeout not enforced: {:?}", start.elapsed());
    assert_eq!(lab.leftovers(&name), Vec::<String>::new());
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
    let out = lab.bake(&tmp.path().join("cache")).args(["build", "--plain", "--output", "json", "--var"]).arg(format!("token={secret}")).arg(&r).output().unwrap();
    let (so, se) = (stdout(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(1), "{se}");
    assert!(se.contains("token is [redacted]"), "{se}");
    assert!(!so.contains(secret) && !se.contains(secret), "secret leaked:\n{so}\n{se}");
    assert_eq!(lab.leftovers(&name), Vec::<String>::new());
}

#[test]
fn script_steps_with_an_interpreter_line_run_through_it() {
    let lab = Lab::new();
    let tmp = tempfile::tempdir().unwrap();
    let name = unique("shebang-");
    std::fs::write(tmp.path().join("hello.py"), "#!/usr/bin/env python3\nimport sys\nprint('python says', sys.version_info[0])\n").unwrap();
    let r = small_recipe(tmp.path(), &name, "[[step]]\nname = \"py\"\nscript = \"hello.py\"\nsudo = true\n");
    let out = lab.bake(&tmp.path().join("cache")).args(["build", "--plain"]).arg(&r).output().unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("python says 3"), "{err}");
}
