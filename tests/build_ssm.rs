//! `bake build` over SSM against the lab, driving the real binary: the SSM twin of
//! `recipes/web.toml` makes an image with the same files as the SSH build; step semantics (sudo,
//! env, workdir, retries, reboots), real exit codes and output of failing steps, output cut by
//! the API; and afterwards no staged S3 object, instance or security group is left.
//!
//! IAM is not one of bake's SDK crates, so the instance profiles are made with the lab's
//! Python (boto3), like the lab's own tests do.

#![cfg(feature = "lab")]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Runs `code` in the lab's Python (with boto3: `LAB_VENV`, else the repository's
/// `.lab/venv`) with the lab's environment.
fn lab_python(
    env: &std::collections::BTreeMap<String, String>,
    code: &str,
    args: &[&str],
) -> Output {
    let venv = std::env::var("LAB_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo().join(".lab/venv"));
    Command::new(venv.join("bin/python"))
        .arg("-c")
        .arg(code)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env)
        .output()
        .expect("the lab's python (LAB_VENV or .lab/venv)")
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
        let s3 = lab.s3();
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
    let out = lab_python(env, IAM_PY, &[action, name, if allow { "1" } else { "0" }]);
    assert!(
        out.status.success(),
        "iam {action} {name}: {}",
        stderr(&out)
    );
}

/// One SSM test: the lab, a fixture made for it, a scratch directory and the recipe name
/// `<prefix><tag>`.
struct Case {
    lab: Lab,
    tag: String,
    fx: SsmFixture,
    tmp: tempfile::TempDir,
    name: String,
}

impl Case {
    fn new(prefix: &str, allow_ssm: bool) -> Case {
        let lab = Lab::new();
        let tag = unique("");
        let fx = SsmFixture::new(&lab, &tag, allow_ssm);
        Case {
            name: format!("{prefix}{tag}"),
            tmp: tempfile::tempdir().unwrap(),
            lab,
            tag,
            fx,
        }
    }

    fn dir(&self) -> &Path {
        self.tmp.path()
    }

    /// A small SSM recipe for this case: `head` before `[source]`, `ssm_extra` in `[ssm]`,
    /// `extra` appended.
    fn recipe(&self, head: &str, ssm_extra: &str, extra: &str) -> PathBuf {
        let parts = Recipe {
            head: &format!("communicator = \"ssm\"\n{head}"),
            builder: &format!("iam_instance_profile = \"{}\"", self.fx.profile),
            ssh: "",
            tail: &format!(
                "[ssm]\nbucket = \"{}\"\ntimeout = \"60s\"\n{ssm_extra}\n{extra}",
                self.fx.bucket
            ),
        };
        write_recipe(self.dir(), &self.name, parts)
    }

    /// `bake build --plain <args> <recipe>`.
    fn build(&self, args: &[&str], recipe: &Path) -> Output {
        let mut all = vec!["--plain"];
        all.extend_from_slice(args);
        self.lab.build(self.dir(), &all, recipe)
    }

    /// Nothing of the build is left in EC2 or in the staging bucket.
    fn assert_clean(&self, context: &str) {
        self.lab.assert_no_leftovers(&self.name, context);
        assert_eq!(
            self.fx.objects(&self.lab),
            Vec::<String>::new(),
            "{context}"
        );
    }

    fn remove(self) {
        self.fx.remove(&self.lab);
    }
}

/// Files, modes, owners and hashes of what web.toml puts on an image (build-info: its date
/// differs per build, so only its metadata). Agent scripts: those of steps; the agent keeps the
/// directory of the last command (bake's own tidy, which removes the others) once it ends.
const MANIFEST: &str = "sudo sh -c 'cd / && find opt/web etc/web etc/systemd/system/web.service \
     etc/systemd/system/multi-user.target.wants/web.service -printf \"%p %y %m %u %g %l\\n\" | sort; \
     find opt/web etc/web/web.conf etc/systemd/system/web.service -type f | sort | xargs sha256sum; \
     getent passwd web | cut -d: -f1,6,7; getent group web | cut -d: -f1; \
     echo agent-scripts=$(grep -L document/orchestration /var/lib/amazon/ssm/*/document/orchestration/*/*/*/_script.sh 2>/dev/null | wc -l)'";

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

/// [`example`] `web-ssm.toml`, on the fixture's instance profile and staging bucket.
fn ssm_example(dir: &Path, name: &str, fx: &SsmFixture) -> PathBuf {
    let p = example(dir, "web-ssm.toml", name);
    let text = std::fs::read_to_string(&p)
        .unwrap()
        .replace("\"bake-builder\"", &format!("\"{}\"", fx.profile))
        .replace("\"bake-staging\"", &format!("\"{}\"", fx.bucket));
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn web_ssm_twin_bakes_the_same_files_as_ssh_and_leaves_nothing() {
    let c = Case::new("webssm-", true);
    let (lab, fx) = (&c.lab, &c.fx);
    let (ssm_dir, ssh_dir) = (c.dir().join("ssm"), c.dir().join("ssh"));
    let ssm_name = &c.name;
    let ssh_name = format!("webssh-{}", c.tag);
    let ssm_recipe = ssm_example(&ssm_dir, ssm_name, fx);
    let ssh_recipe = example(&ssh_dir, "web.toml", &ssh_name);

    let out = c.build(&["--output", "json"], &ssm_recipe);
    assert!(out.status.success(), "SSM build failed:\n{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("online with Systems Manager"), "{err}");
    assert!(
        !err.contains("key pair bake-"),
        "SSM made a key pair: {err}"
    );
    let v = one_build(&out);
    let ssm_ami = v["ami_id"].as_str().unwrap().to_string();
    let imgs = lab.images_of(ssm_name);
    assert_eq!(imgs.len(), 1);
    let t = tags(imgs[0].tags());
    assert_eq!(
        t.get("bake:fingerprint").map(String::as_str),
        v["fingerprint"].as_str()
    );
    assert_eq!(t.get("role").map(String::as_str), Some("web"));
    c.assert_clean("staged objects left");

    let out = c.build(&["--output", "json"], &ssh_recipe);
    assert!(out.status.success(), "SSH build failed:\n{}", stderr(&out));
    let ssh_ami = one_build(&out)["ami_id"].as_str().unwrap().to_string();

    // The communicator is not part of the fingerprint: web.toml under the SSM build's name
    // finds the SSM image and launches nothing.
    let same = example(&c.dir().join("same"), "web.toml", ssm_name);
    let out = c.build(&["--output", "json"], &same);
    assert!(out.status.success(), "{}", stderr(&out));
    let hit = one_build(&out);
    assert_eq!(hit["cached"], true, "{}", stderr(&out));
    assert_eq!(hit["ami_id"].as_str(), Some(ssm_ami.as_str()));

    let via_ssm = manifest_of(lab, &ssm_ami, &ssm_dir);
    let via_ssh = manifest_of(lab, &ssh_ami, &ssh_dir);
    for want in [
        "opt/web/app/index.html f 644 root root",
        "etc/web/web.conf f 640 root web",
        "web:/var/lib/web:/usr/sbin/nologin",
    ] {
        assert!(via_ssm.contains(want), "{via_ssm}");
    }
    assert!(
        via_ssm.contains("agent-scripts=0"),
        "step scripts left on the image: {via_ssm}"
    );
    assert_eq!(via_ssm, via_ssh, "the SSM and SSH images differ");
    c.remove();
}

#[test]
fn failing_step_reports_real_exit_code_and_full_output_and_cleans_up() {
    let c = Case::new("ssmfail-", true);
    // 30,000 characters before the last lines: beyond what the API returns, so they can only
    // come from the output bucket.
    let r = c.recipe(
        "",
        &format!("output_bucket = \"{}\"", c.fx.bucket),
        "[[upload]]\nsource = \"f.txt\"\ndestination = \"/opt/f.txt\"\n\
         [[step]]\nname = \"ok\"\nrun = \"echo fine\"\n\
         [[step]]\nname = \"breaks\"\nrun = \"head -c 30000 /dev/zero | tr '\\\\0' x; echo; echo about-to-fail; echo oops >&2; exit 3\"\n",
    );
    std::fs::write(c.dir().join("f.txt"), "staged\n").unwrap();
    let out = c.build(&[], &r);
    let err = assert_exit(
        &out,
        1,
        &["breaks", "exit status 3", "about-to-fail", "oops"],
    );
    assert!(!err.contains("cut by the SSM API"), "{err}");
    c.assert_clean("staged objects left");
    assert!(
        c.lab.images_of(&c.name).is_empty(),
        "a failed build left an image"
    );
    c.remove();
}

#[test]
fn output_cut_by_the_api_is_reported_without_an_output_bucket() {
    let c = Case::new("ssmcut-", true);
    let r = c.recipe(
        "",
        "",
        "[[step]]\nname = \"loud\"\nrun = \"head -c 30000 /dev/zero | tr '\\\\0' y; echo; echo never-seen; exit 5\"\n",
    );
    let out = c.build(&[], &r);
    let err = assert_exit(
        &out,
        1,
        &["exit status 5", "cut by the SSM API", "ssm.output_bucket"],
    );
    assert!(!err.contains("never-seen"), "{err}");
    c.lab.assert_no_leftovers(&c.name, "");
    c.remove();
}

#[test]
fn steps_keep_their_semantics_over_ssm_and_the_group_has_no_inbound_rule() {
    let c = Case::new("ssmsem-", true);
    let lab = &c.lab;
    let r = c.recipe(
        "",
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
    std::fs::create_dir_all(c.dir().join("tree/a")).unwrap();
    std::fs::write(c.dir().join("tree/a/b.txt"), "b\n").unwrap();
    std::os::unix::fs::symlink("a/b.txt", c.dir().join("tree/link")).unwrap();

    let child = lab
        .bake(&c.dir().join("cache"))
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
                .filters(recipe_filter(&c.name))
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
    assert_exit(
        &out,
        0,
        &[
            "user-ok",
            "rebooted-ok",
            "second-try",
            "reconnected after reboot",
        ],
    );
    c.assert_clean("");
    c.remove();
}

#[test]
fn a_profile_without_ssm_times_out_waiting_and_cleans_up() {
    let c = Case::new("ssmnone-", false);
    let r = c.recipe(
        "",
        "",
        "[[step]]\nname = \"never\"\nrun = \"echo should-not-run\"\n",
    );
    let text = std::fs::read_to_string(&r)
        .unwrap()
        .replace("timeout = \"60s\"", "timeout = \"3s\"");
    std::fs::write(&r, text).unwrap();
    let out = c.build(&[], &r);
    let err = assert_exit(&out, 1, &["not registered with Systems Manager"]);
    assert!(!err.contains("should-not-run"));
    c.lab.assert_no_leftovers(&c.name, "");
    c.remove();
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
    assert_exit(&out, 2, &["iam_instance_profile"]);
}

#[test]
fn step_timeout_is_enforced_on_the_builder() {
    let c = Case::new("ssmslow-", true);
    let r = c.recipe(
        "",
        "",
        "[[step]]\nname = \"slow\"\ntimeout = \"2s\"\nrun = \"sleep 60\"\n",
    );
    let start = Instant::now();
    let out = c.build(&[], &r);
    assert_exit(&out, 1, &["slow", "timed out"]);
    assert!(
        start.elapsed() < Duration::from_secs(40),
        "took {:?}",
        start.elapsed()
    );
    c.assert_clean("");
    c.remove();
}

#[test]
fn sigint_during_an_ssm_step_cleans_up_ec2_and_s3() {
    let c = Case::new("ssmint-", true);
    let r = c.recipe(
        "",
        &format!("output_bucket = \"{}\"", c.fx.bucket),
        "[[upload]]\nsource = \"f.txt\"\ndestination = \"/opt/f.txt\"\n\
         [[step]]\nname = \"long\"\nrun = \"sleep 60\"\n",
    );
    std::fs::write(c.dir().join("f.txt"), "staged\n").unwrap();
    // The upload is staged once the step runs: the interrupt must remove it too.
    let settle = Duration::from_millis(500);
    let cache = c.dir().join("cache");
    let (code, all) = interrupt_when(&c.lab, &cache, &r, "running long", settle);
    assert_eq!(code, Some(130), "{all}");
    c.assert_clean(&all);
    assert!(c.lab.images_of(&c.name).is_empty());
    c.remove();
}

#[test]
fn large_files_are_staged_as_their_own_objects_and_verified() {
    let c = Case::new("ssmbig-", true);
    // 20 MiB of non-repeating bytes: above the 16 MiB own-object threshold.
    let mut data = Vec::with_capacity(20 << 20);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while data.len() < 20 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    std::fs::write(c.dir().join("big.bin"), &data).unwrap();
    let local = Command::new("sha256sum")
        .arg(c.dir().join("big.bin"))
        .output()
        .unwrap();
    let hash = stdout(&local)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let r = c.recipe(
        "",
        "",
        &format!(
            "[[upload]]\nsource = \"big.bin\"\ndestination = \"/opt/data/big.bin\"\nmode = \"0600\"\nowner = \"admin:admin\"\n\
             [[step]]\nname = \"check\"\nsudo = true\n\
             run = \"test \\\"$(stat -c '%s %a %U' /opt/data/big.bin)\\\" = '20971520 600 admin' && sha256sum /opt/data/big.bin | grep -q {hash} && echo big-ok\"\n"
        ),
    );
    let out = c.build(&[], &r);
    assert_exit(&out, 0, &["big-ok"]);
    c.assert_clean("");
    c.remove();
}

#[test]
fn large_scripts_and_many_files_go_through_s3_too() {
    let c = Case::new("ssmmany-", true);
    // 400 files: their checksum list alone is beyond what is sent inline.
    let tree = c.dir().join("many");
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
    std::fs::write(c.dir().join("big.sh"), &script).unwrap();
    let r = c.recipe(
        "",
        "",
        "[[upload]]\nsource = \"many\"\ndestination = \"/opt/many\"\n\
         [[step]]\nname = \"big\"\nsudo = true\nscript = \"big.sh\"\n",
    );
    let out = c.build(&[], &r);
    assert_exit(&out, 0, &["big-script-ok"]);
    c.assert_clean("");
    c.remove();
}

/// S3 throttling that outlasts the SDK's own retries while staging is waited out: nothing has
/// reached the builder yet, so the same object is put again, and the build succeeds.
#[test]
fn staging_waits_out_s3_throttling_beyond_the_sdk_retries() {
    let c = Case::new("ssmslow-", true);
    std::fs::write(c.dir().join("payload.txt"), "staged through throttling\n").unwrap();
    let r = c.recipe(
        "",
        "",
        "[[upload]]\nsource = \"payload.txt\"\ndestination = \"/opt/payload.txt\"\n\
         [[step]]\nname = \"check\"\nrun = \"grep -q throttling /opt/payload.txt && echo payload-ok\"\n",
    );
    // Six throttled PutObjects on this test's bucket only: twice the SDK's three attempts.
    let rule = serde_json::json!({"rules": [{
        "service": "s3", "action": "PutObject", "params": {"Bucket": c.fx.bucket},
        "kind": "throttle", "times": 6,
    }]});
    let added = lab_api(&c.lab.env, "POST", "faults", &rule.to_string());
    let id = added["rules"][0]["id"].as_u64().unwrap();
    let out = c.build(&[], &r);
    let rules = lab_api(&c.lab.env, "GET", "faults", "");
    let fired = rules["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"].as_u64() == Some(id))
        .map(|r| r["fired"].as_u64().unwrap());
    assert_exit(&out, 0, &["payload-ok"]);
    assert_eq!(fired, Some(6), "every throttled answer was met");
    c.assert_clean("");
    c.remove();
}

#[test]
fn sensitive_values_never_reach_the_ssm_command_history() {
    let c = Case::new("ssmsecret-", true);
    let r = c.recipe(
        "sensitive = [\"token\"]\n[variables]\ntoken = \"placeholder\"",
        "",
        "[[step]]\nname = \"uses-secret\"\nenv = { TOKEN = \"{var.token}\" }\nrun = \"echo token is $TOKEN\"\n",
    );
    let secret = format!("s3cr3t-{}", c.tag);
    let out = c.build(&["--var", &format!("token={secret}")], &r);
    let err = assert_exit(&out, 0, &["token is [redacted]"]);
    assert!(!err.contains(&secret), "{err}");
    // Every command SSM recorded, with its parameters.
    let history = lab_python(
        &c.lab.env,
        "import json, os, boto3\n\
         c = boto3.client('ssm', region_name=os.environ['AWS_REGION'], endpoint_url=os.environ['AWS_ENDPOINT_URL'])\n\
         print(json.dumps([x['Parameters'] for x in c.list_commands()['Commands']]))",
        &[],
    );
    assert!(history.status.success(), "{}", stderr(&history));
    let h = stdout(&history);
    // The step went by a staged script (a presigned URL, expired and deleted by now).
    let ours = format!("/{}/bake/", c.fx.bucket);
    assert!(
        h.split(ours.as_str()).skip(1).any(|rest| rest
            .split('?')
            .next()
            .unwrap_or("")
            .contains("/scripts/")),
        "this build's step was not staged: {h}"
    );
    assert!(!h.contains(&secret), "secret in the SSM command history");
    c.assert_clean("");
    c.remove();
}

#[test]
fn image_tests_over_ssm_run_on_an_instance_of_the_new_image() {
    let c = Case::new("ssmtest-", true);
    let r = c.recipe(
        "",
        "",
        "[[step]]\nname = \"mark\"\nsudo = true\nrun = \"echo baked > /etc/mark\"\n\
         [[test]]\nname = \"mark there\"\nrun = \"cat /etc/mark\"\nexpect_output = \"^baked$\"\n",
    );
    let out = c.build(&["--output", "json"], &r);
    assert!(out.status.success(), "{}", stderr(&out));
    let b = one_build(&out);
    let tests = &b["tests"];
    assert_eq!(tests["passed"], true, "{b}");
    let tester = tests["instance_id"].as_str().unwrap().to_string();
    let image = c.lab.rt.block_on(async {
        let o = c
            .lab
            .ec2
            .describe_instances()
            .instance_ids(&tester)
            .send()
            .await
            .unwrap();
        o.reservations()[0].instances()[0]
            .image_id()
            .unwrap_or_default()
            .to_string()
    });
    assert_eq!(image, b["ami_id"].as_str().unwrap());
    c.assert_clean("after an SSM build with tests");
    c.remove();
}
