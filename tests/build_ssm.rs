//! `bake build` over SSM against the lab, driving the real binary: the SSM twin of
//! `recipes/web.toml` makes an image with the same files as the SSH build; step semantics (sudo,
//! env, workdir, retries, reboots), real exit codes and output of failing steps, output cut by
//! the API; and afterwards no staged S3 object, instance or security group is left.
//!
//! IAM is not one of bake's SDK crates, so the instance profiles are made with the lab's
//! Python (boto3), like the lab's own tests do.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_ec2::types::Filter;
use common::*;

/// The lab's Python (with boto3): `LAB_VENV`, else the repository's `.lab/venv`.
fn lab_python() -> PathBuf {
    let venv = std::env::var("LAB_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo().join(".lab/venv"));
    venv.join("bin/python")
}

const IAM_PY: &str = r#"
import json, os, sys
import boto3
iam = boto3.client("iam", region_name=os.environ["AWS_REGION"], endpoint_url=os.environ["AWS_ENDPOINT_URL"])
action, name, allow = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
if action == "create":
    iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]}))
    if allow:
        iam.put_role_policy(RoleName=name, PolicyName="ssm-core", PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": ["ssm:UpdateInstanceInformation", "ssmmessages:*", "ec2messages:*"], "Resource": "*"}]}))
    iam.create_instance_profile(InstanceProfileName=name)
    iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=name)
else:
    iam.remove_role_from_instance_profile(InstanceProfileName=name, RoleName=name)
    iam.delete_instance_profile(InstanceProfileName=name)
    for p in iam.list_role_policies(RoleName=name)["PolicyNames"]:
        iam.delete_role_policy(RoleName=name, PolicyName=p)
    iam.delete_role(RoleName=name)
"#;

/// An instance profile (and its role) in the lab, an S3 staging bucket, and an S3 client; all
/// removed on drop.
struct SsmFixture {
    profile: String,
    bucket: String,
    s3: aws_sdk_s3::Client,
    env: std::collections::BTreeMap<String, String>,
}

impl SsmFixture {
    fn new(lab: &Lab, tag: &str, allow_ssm: bool) -> SsmFixture {
        let profile = format!("bake-test-{tag}");
        iam(&lab.env, "create", &profile, allow_ssm);
        let conf = lab.rt.block_on(
            aws_config::defaults(aws_config::BehaviorVersion::latest())
                .endpoint_url(&lab.env["AWS_ENDPOINT_URL"])
                .region(aws_config::Region::new(lab.env["AWS_REGION"].clone()))
                .credentials_provider(aws_sdk_s3::config::Credentials::new(
                    &lab.env["AWS_ACCESS_KEY_ID"],
                    &lab.env["AWS_SECRET_ACCESS_KEY"],
                    None,
                    None,
                    "lab",
                ))
                .load(),
        );
        let s3 = aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&conf)
                .force_path_style(true)
                .build(),
        );
        let bucket = format!("bake-test-{tag}");
        lab.rt
            .block_on(s3.create_bucket().bucket(&bucket).send())
            .unwrap();
        SsmFixture {
            profile,
            bucket,
            s3,
            env: lab.env.clone(),
        }
    }

    /// Every key in the staging bucket.
    fn objects(&self, lab: &Lab) -> Vec<String> {
        lab.rt.block_on(async {
            let out = self
                .s3
                .list_objects_v2()
                .bucket(&self.bucket)
                .send()
                .await
                .unwrap();
            out.contents()
                .iter()
                .filter_map(|o| o.key().map(str::to_string))
                .collect()
        })
    }

    fn remove(&self, lab: &Lab) {
        for k in self.objects(lab) {
            let _ = lab
                .rt
                .block_on(self.s3.delete_object().bucket(&self.bucket).key(&k).send());
        }
        let _ = lab
            .rt
            .block_on(self.s3.delete_bucket().bucket(&self.bucket).send());
        iam(&self.env, "delete", &self.profile, false);
    }
}

fn iam(env: &std::collections::BTreeMap<String, String>, action: &str, name: &str, allow: bool) {
    let out = Command::new(lab_python())
        .arg("-c")
        .arg(IAM_PY)
        .args([action, name, if allow { "1" } else { "0" }])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env)
        .output()
        .expect("the lab's python (LAB_VENV or .lab/venv)");
    assert!(
        out.status.success(),
        "iam {action} {name}: {}",
        stderr(&out)
    );
}

/// A small SSM recipe named `name` with the given extra TOML appended.
fn small_recipe(dir: &Path, name: &str, fx: &SsmFixture, ssm_extra: &str, extra: &str) -> PathBuf {
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(
        &p,
        format!(
            r#"name = "{name}"
communicator = "ssm"
[source.filter]
owners = ["136693071363"]
name = "debian-12-amd64-*"
[builder]
instance_type = "t3.micro"
iam_instance_profile = "{profile}"
[ssm]
bucket = "{bucket}"
timeout = "60s"
{ssm_extra}
[ssh]
username = "admin"
[image]
name = "{{recipe}}-{{short_hash}}-{{timestamp}}"
{extra}
"#,
            profile = fx.profile,
            bucket = fx.bucket,
        ),
    )
    .unwrap();
    p
}

/// Files, modes, owners and hashes of what web.toml puts on an image (build-info: its date
/// differs per build, so only its metadata).
const MANIFEST: &str = "sudo sh -c 'cd / && find opt/web etc/web etc/systemd/system/web.service \
     etc/systemd/system/multi-user.target.wants/web.service -printf \"%p %y %m %u %g %l\\n\" | sort; \
     find opt/web etc/web/web.conf etc/systemd/system/web.service -type f | sort | xargs sha256sum; \
     getent passwd web | cut -d: -f1,6,7; getent group web | cut -d: -f1; \
     echo agent-scripts=$(ls -d /var/lib/amazon/ssm/*/document/orchestration/* 2>/dev/null | wc -l)'";

fn manifest_of(lab: &Lab, ami: &str, dir: &Path) -> String {
    let (id, ip, key) = lab.launch_for_check(ami, dir);
    let out = ssh(&ip, &key, "admin", MANIFEST);
    lab.terminate(&id);
    assert!(
        out.status.success(),
        "manifest on an instance of {ami}: {}{}",
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

/// Copies recipes/ to `dir` and renames the recipe in `file` to `name`.
fn example(dir: &Path, file: &str, name: &str, fx: Option<&SsmFixture>) -> PathBuf {
    copy_tree(&repo().join("recipes"), dir);
    let p = dir.join(file);
    let mut text = std::fs::read_to_string(&p).unwrap().replacen(
        "name = \"web\"",
        &format!("name = \"{name}\""),
        1,
    );
    if let Some(fx) = fx {
        text = text
            .replace("\"bake-builder\"", &format!("\"{}\"", fx.profile))
            .replace("\"bake-staging\"", &format!("\"{}\"", fx.bucket));
    }
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn web_ssm_twin_bakes_the_same_files_as_ssh_and_leaves_nothing() {
    let lab = Lab::new();
    let tag = unique("");
    let fx = SsmFixture::new(&lab, &tag, true);
    let tmp = tempfile::tempdir().unwrap();
    let (ssm_dir, ssh_dir) = (tmp.path().join("ssm"), tmp.path().join("ssh"));
    let ssm_name = format!("webssm-{tag}");
    let ssh_name = format!("webssh-{tag}");
    let ssm_recipe = example(&ssm_dir, "web-ssm.toml", &ssm_name, Some(&fx));
    let ssh_recipe = example(&ssh_dir, "web.toml", &ssh_name, None);

    let out = lab
        .bake(&tmp.path().join("cache"))
        .args(["build", "--plain", "--output", "json"])
        .arg(&ssm_recipe)
        .output()
        .unwrap();
    assert!(out.status.success(), "SSM build failed:\n{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("online with Systems Manager"), "{err}");
    assert!(
        !err.contains("key pair bake-"),
        "SSM made a key pair: {err}"
    );
    let v = json(&out);
    let ssm_ami = v["ami_id"].as_str().unwrap().to_string();
    let imgs = lab.images_of(&ssm_name);
    assert_eq!(imgs.len(), 1);
    let t = tags(imgs[0].tags());
    assert_eq!(
        t.get("bake:fingerprint").map(String::as_str),
        v["fingerprint"].as_str()
    );
    assert_eq!(t.get("role").map(String::as_str), Some("web"));

    assert_eq!(lab.leftovers(&ssm_name), Vec::<String>::new());
    assert_eq!(
        fx.objects(&lab),
        Vec::<String>::new(),
        "staged objects left"
    );

    let out = lab
        .bake(&tmp.path().join("cache"))
        .args(["build", "--plain", "--output", "json"])
        .arg(&ssh_recipe)
        .output()
        .unwrap();
    assert!(out.status.success(), "SSH build failed:\n{}", stderr(&out));
    let ssh_ami = json(&out)["ami_id"].as_str().unwrap().to_string();

    // The communicator is not part of the fingerprint: web.toml under the SSM build's name
    // finds the SSM image and launches nothing.
    let same = example(&tmp.path().join("same"), "web.toml", &ssm_name, None);
    let out = lab
        .bake(&tmp.path().join("cache"))
        .args(["build", "--plain", "--output", "json"])
        .arg(&same)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let hit = json(&out);
    assert_eq!(hit["cached"], true, "{}", stderr(&out));
    assert_eq!(hit["ami_id"].as_str(), Some(ssm_ami.as_str()));

    let via_ssm = manifest_of(&lab, &ssm_ami, &ssm_dir);
    let via_ssh = manifest_of(&lab, &ssh_ami, &ssh_dir);
    assert!(
        via_ssm.contains("opt/web/app/index.html f 644 root root"),
        "{via_ssm}"
    );
    assert!(
        via_ssm.contains("etc/web/web.conf f 640 root web"),
        "{via_ssm}"
    );
    assert!(
        via_ssm.contains("web:/var/lib/web:/usr/sbin/nologin"),
        "{via_ssm}"
    );
    assert!(
        via_ssm.contains("agent-scripts=0"),
        "step scripts left on the image: {via_ssm}"
    );
    assert_eq!(via_ssm, via_ssh, "the SSM and SSH images differ");
    fx.remove(&lab);
}

#[test]
fn failing_step_reports_real_exit_code_and_full_output_and_cleans_up() {
    let lab = Lab::new();
    let tag = unique("");
    let fx = SsmFixture::new(&lab, &tag, true);
    let tmp = tempfile::tempdir().unwrap();
    let name = format!("ssmfail-{tag}");
    // 30,000 characters before the last lines: beyond what the API returns, so they can only
    // come from the output bucket.
    let r = small_recipe(
        tmp.path(),
        &name,
        &fx,
        &format!("output_bucket = \"{}\"", fx.bucket),
        "[[upload]]\nsource = \"f.txt\"\ndestination = \"/opt/f.txt\"\n\
         [[step]]\nname = \"ok\"\nrun = \"echo fine\"\n\
         [[step]]\nname = \"breaks\"\nrun = \"head -c 30000 /dev/zero | tr '\\\\0' x; echo; echo about-to-fail; echo oops >&2; exit 3\"\n",
    );
    std::fs::write(tmp.path().join("f.txt"), "staged\n").unwrap();
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
    assert!(!err.contains("cut by the SSM API"), "{err}");
    assert_eq!(lab.leftovers(&name), Vec::<String>::new());
    assert_eq!(
        fx.objects(&lab),
        Vec::<String>::new(),
        "staged objects left"
    );
    assert!(
        lab.images_of(&name).is_empty(),
        "a failed build left an image"
    );
    fx.remove(&lab);
}

#[test]
fn output_cut_by_the_api_is_reported_without_an_output_bucket() {
    let lab = Lab::new();
    let tag = unique("");
    let fx = SsmFixture::new(&lab, &tag, true);
    let tmp = tempfile::tempdir().unwrap();
    let name = format!("ssmcut-{tag}");
    let r = small_recipe(
        tmp.path(),
        &name,
        &fx,
        "",
        "[[step]]\nname = \"loud\"\nrun = \"head -c 30000 /dev/zero | tr '\\\\0' y; echo; echo never-seen; exit 5\"\n",
    );
    let out = lab
        .bake(&tmp.path().join("cache"))
        .args(["build", "--plain"])
        .arg(&r)
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("exit status 5"), "{err}");
    assert!(err.contains("cut by the SSM API"), "{err}");
    assert!(err.contains("ssm.output_bucket"), "{err}");
    assert!(!err.contains("never-seen"), "{err}");
    assert_eq!(lab.leftovers(&name), Vec::<String>::new());
    fx.remove(&lab);
}

#[test]
fn steps_keep_their_semantics_over_ssm_and_the_group_has_no_inbound_rule() {
    let lab = Lab::new();
    let tag = unique("");
    let fx = SsmFixture::new(&lab, &tag, true);
    let tmp = tempfile::tempdir().unwrap();
    let name = format!("ssmsem-{tag}");
    let r = small_recipe(
        tmp.path(),
        &name,
        &fx,
        "",
        r#"[[upload]]
source = "tree"
destination = "/opt/tree"
mode = "0640"
owner = "admin"
[[step]]
name = "as-user"
env = { GREETING = "it's me" }
workdir = "/opt"
run = '''
test "$(id -un)" = admin
test "$HOME" = /home/admin
test "$PWD" = /opt
test "$GREETING" = "it's me"
test "$(readlink /opt/tree/link)" = a/b.txt
test "$(stat -c '%U %a' /opt/tree/a/b.txt)" = "admin 640"
echo user-ok
'''
[[step]]
name = "as-root"
sudo = true
run = '''
test "$(id -u)" = 0
echo before > /var/tmp/ssm-disk
echo before > /run/ssm-boot
sleep 2
'''
reboot = true
[[step]]
name = "after-reboot"
sudo = true
run = '''
test "$(cat /var/tmp/ssm-disk)" = before
test ! -e /run/ssm-boot
echo rebooted-ok
'''
[[step]]
name = "flaky"
sudo = true
retries = 1
run = '''
if [ -e /var/tmp/flaky ]; then echo second-try; exit 0; fi
touch /var/tmp/flaky
exit 1
'''
"#,
    );
    std::fs::create_dir_all(tmp.path().join("tree/a")).unwrap();
    std::fs::write(tmp.path().join("tree/a/b.txt"), "b\n").unwrap();
    std::os::unix::fs::symlink("a/b.txt", tmp.path().join("tree/link")).unwrap();

    let child = lab
        .bake(&tmp.path().join("cache"))
        .args(["build", "--plain"])
        .arg(&r)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // While the build runs: its temporary security group opens nothing.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = false;
    while Instant::now() < deadline && !seen {
        let groups = lab.rt.block_on(async {
            lab.ec2
                .describe_security_groups()
                .filters(
                    Filter::builder()
                        .name("tag:bake:recipe")
                        .values(&name)
                        .build(),
                )
                .send()
                .await
                .unwrap()
                .security_groups()
                .to_vec()
        });
        for g in &groups {
            assert!(
                g.ip_permissions().is_empty(),
                "SSM builder group has inbound rules: {:?}",
                g.ip_permissions()
            );
            seen = true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert!(seen, "never saw the build's security group: {err}");
    assert!(out.status.success(), "{err}");
    for want in [
        "user-ok",
        "rebooted-ok",
        "second-try",
        "reconnected after reboot",
    ] {
        assert!(err.contains(want), "{want} missing: {err}");
    }
    assert_eq!(lab.leftovers(&name), Vec::<String>::new());
    assert_eq!(fx.objects(&lab), Vec::<String>::new());
    fx.remove(&lab);
}

#[test]
fn a_profile_without_ssm_times_out_waiting_and_cleans_up() {
    let lab = Lab::new();
    let tag = unique("");
    let fx = SsmFixture::new(&lab, &tag, false);
    let tmp = tempfile::tempdir().unwrap();
    let name = format!("ssmnone-{tag}");
    let r = small_recipe(
        tmp.path(),
        &name,
        &fx,
        "",
        "[[step]]\nname = \"never\"\nrun = \"echo should-not-run\"\n",
    );
    let text = std::fs::read_to_string(&r)
        .unwrap()
        .replace("timeout = \"60s\"", "timeout = \"3s\"");
    std::fs::write(&r, text).unwrap();
    let out = lab
        .bake(&tmp.path().join("cache"))
        .args(["build", "--plain"])
        .arg(&r)
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("not registered with Systems Manager"), "{err}");
    assert!(!err.contains("should-not-run"));
    assert_eq!(lab.leftovers(&name), Vec::<String>::new());
    fx.remove(&lab);
}

#[test]
fn validate_refuses_ssm_without_an_instance_profile() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("r.toml");
    std::fs::write(
        &p,
        r#"name = "noprofile"
communicator = "ssm"
[source]
ami = "ami-12345678"
[builder]
instance_type = "t3.micro"
[ssm]
bucket = "bake-staging"
[image]
name = "{recipe}-{short_hash}"
"#,
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_bake"))
        .arg("validate")
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("iam_instance_profile"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn step_timeout_is_enforced_on_the_builder() {
    let lab = Lab::new();
    let tag = unique("");
    let fx = SsmFixture::new(&lab, &tag, true);
    let tmp = tempfile::tempdir().unwrap();
    let name = format!("ssmslow-{tag}");
    let r = small_recipe(
        tmp.path(),
        &name,
        &fx,
        "",
        "[[step]]\nname = \"slow\"\ntimeout = \"2s\"\nrun = \"sleep 60\"\n",
    );
    let start = Instant::now();
    let out = lab
        .bake(&tmp.path().join("cache"))
        .args(["build", "--plain"])
        .arg(&r)
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("slow") && err.contains("timed out"), "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(40),
        "took {:?}",
        start.elapsed()
    );
    assert_eq!(lab.leftovers(&name), Vec::<String>::new());
    assert_eq!(fx.objects(&lab), Vec::<String>::new());
    fx.remove(&lab);
}

#[test]
fn sigint_during_an_ssm_step_cleans_up_ec2_and_s3() {
    use std::io::{BufRead, BufReader};
    let lab = Lab::new();
    let tag = unique("");
    let fx = SsmFixture::new(&lab, &tag, true);
    let tmp = tempfile::tempdir().unwrap();
    let name = format!("ssmint-{tag}");
    let r = small_recipe(
        tmp.path(),
        &name,
        &fx,
        &format!("output_bucket = \"{}\"", fx.bucket),
        "[[upload]]\nsource = \"f.txt\"\ndestination = \"/opt/f.txt\"\n\
         [[step]]\nname = \"long\"\nrun = \"sleep 60\"\n",
    );
    std::fs::write(tmp.path().join("f.txt"), "staged\n").unwrap();
    let mut child = lab
        .bake(&tmp.path().join("cache"))
        .args(["build", "--plain"])
        .arg(&r)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut all = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        all.push_str(&line);
        all.push('\n');
        if line.contains("running long") {
            break;
        }
    }
    // The upload is staged by now: the interrupt must remove it too.
    std::thread::sleep(Duration::from_millis(500));
    unsafe { libc_kill(child.id() as i32, 2) };
    for line in lines {
        all.push_str(&line.unwrap());
        all.push('\n');
    }
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{all}");
    assert_eq!(lab.leftovers(&name), Vec::<String>::new(), "{all}");
    assert_eq!(fx.objects(&lab), Vec::<String>::new(), "{all}");
    assert!(lab.images_of(&name).is_empty());
    fx.remove(&lab);
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

#[test]
fn large_files_are_staged_as_their_own_objects_and_verified() {
    let lab = Lab::new();
    let tag = unique("");
    let fx = SsmFixture::new(&lab, &tag, true);
    let tmp = tempfile::tempdir().unwrap();
    let name = format!("ssmbig-{tag}");
    // 20 MiB of non-repeating bytes: above the 16 MiB own-object threshold.
    let mut data = Vec::with_capacity(20 << 20);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while data.len() < 20 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    std::fs::write(tmp.path().join("big.bin"), &data).unwrap();
    let local = std::process::Command::new("sha256sum")
        .arg(tmp.path().join("big.bin"))
        .output()
        .unwrap();
    let hash = stdout(&local)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let r = small_recipe(
        tmp.path(),
        &name,
        &fx,
        "",
        &format!(
            "[[upload]]\nsource = \"big.bin\"\ndestination = \"/opt/data/big.bin\"\nmode = \"0600\"\nowner = \"admin:admin\"\n\
             [[step]]\nname = \"check\"\nsudo = true\n\
             run = \"test \\\"$(stat -c '%s %a %U' /opt/data/big.bin)\\\" = '20971520 600 admin' && sha256sum /opt/data/big.bin | grep -q {hash} && echo big-ok\"\n"
        ),
    );
    let out = lab
        .bake(&tmp.path().join("cache"))
        .args(["build", "--plain"])
        .arg(&r)
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("big-ok"), "{err}");
    assert_eq!(lab.leftovers(&name), Vec::<String>::new());
    assert_eq!(fx.objects(&lab), Vec::<String>::new());
    fx.remove(&lab);
}

#[test]
fn large_scripts_and_many_files_go_through_s3_too() {
    let lab = Lab::new();
    let tag = unique("");
    let fx = SsmFixture::new(&lab, &tag, true);
    let tmp = tempfile::tempdir().unwrap();
    let name = format!("ssmmany-{tag}");
    // 400 files: their checksum list alone is beyond what is sent inline.
    let tree = tmp.path().join("many");
    for i in 0..400 {
        let d = tree.join(format!("d{}", i % 7));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(format!("file-{i:04}.txt")), format!("{i}\n")).unwrap();
    }
    // A 40 KB step script.
    let mut script = String::from("#!/bin/sh\nset -e\n");
    for i in 0..1000 {
        script.push_str(&format!("# padding line {i:04} to make the script large\n"));
    }
    script.push_str("test \"$(find /opt/many -type f | wc -l)\" = 400\n");
    script.push_str("test \"$(cat /opt/many/d3/file-0003.txt)\" = 3\necho big-script-ok\n");
    std::fs::write(tmp.path().join("big.sh"), &script).unwrap();
    let r = small_recipe(
        tmp.path(),
        &name,
        &fx,
        "",
        "[[upload]]\nsource = \"many\"\ndestination = \"/opt/many\"\n\
         [[step]]\nname = \"big\"\nsudo = true\nscript = \"big.sh\"\n",
    );
    let out = lab
        .bake(&tmp.path().join("cache"))
        .args(["build", "--plain"])
        .arg(&r)
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("big-script-ok"), "{err}");
    assert_eq!(lab.leftovers(&name), Vec::<String>::new());
    assert_eq!(fx.objects(&lab), Vec::<String>::new());
    fx.remove(&lab);
}

#[test]
fn sensitive_values_never_reach_the_ssm_command_history() {
    let lab = Lab::new();
    let tag = unique("");
    let fx = SsmFixture::new(&lab, &tag, true);
    let tmp = tempfile::tempdir().unwrap();
    let name = format!("ssmsecret-{tag}");
    let r = small_recipe(
        tmp.path(),
        &name,
        &fx,
        "",
        "[[step]]\nname = \"uses-secret\"\nenv = { TOKEN = \"{var.token}\" }\nrun = \"echo token is $TOKEN\"\n",
    );
    let text = std::fs::read_to_string(&r).unwrap();
    std::fs::write(
        &r,
        format!("sensitive = [\"token\"]\n{text}\n[variables]\ntoken = \"placeholder\"\n"),
    )
    .unwrap();
    let secret = format!("s3cr3t-{tag}");
    let out = lab
        .bake(&tmp.path().join("cache"))
        .args(["build", "--plain", "--var"])
        .arg(format!("token={secret}"))
        .arg(&r)
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("token is [redacted]"), "{err}");
    assert!(!err.contains(&secret), "{err}");
    // Every command SSM recorded, with its parameters.
    let history = Command::new(lab_python())
        .arg("-c")
        .arg(
            "import json, os, boto3\n\
             c = boto3.client('ssm', region_name=os.environ['AWS_REGION'], endpoint_url=os.environ['AWS_ENDPOINT_URL'])\n\
             print(json.dumps([x['Parameters'] for x in c.list_commands()['Commands']]))",
        )
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(&lab.env)
        .output()
        .unwrap();
    assert!(history.status.success(), "{}", stderr(&history));
    let h = stdout(&history);
    // The step went by a staged script (a presigned URL, expired and deleted by now).
    let ours = format!("/{}/bake/", fx.bucket);
    assert!(
        h.split(ours.as_str()).skip(1).any(|rest| rest
            .split('?')
            .next()
            .unwrap_or("")
            .contains("/scripts/")),
        "this build's step was not staged: {h}"
    );
    assert!(!h.contains(&secret), "secret in the SSM command history");
    assert_eq!(fx.objects(&lab), Vec::<String>::new());
    assert_eq!(lab.leftovers(&name), Vec::<String>::new());
    fx.remove(&lab);
}
