//! Shared harness for tests that drive the real `bake` binary against the lab.
//!
//! The lab must be running (`scripts/lab up`); its settings come from `.lab/env`. Every test
//! works under a unique recipe name so tests can run in parallel against one lab and each can
//! check that nothing of *its* build is left.
#![allow(dead_code)]

pub mod run;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use aws_sdk_ec2::types::Filter;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The lab's environment (`.lab/env`), or a failure saying how to start it.
pub fn lab_env() -> BTreeMap<String, String> {
    let dir = std::env::var("BAKE_LAB_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo().join(".lab"));
    let file = dir.join("env");
    let text = std::fs::read_to_string(&file).unwrap_or_else(|_| {
        panic!("the lab is not running ({} missing): start it with `scripts/lab up` (or run the whole suite with `scripts/test`)", file.display())
    });
    let mut env = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim().trim_start_matches("export ").trim();
        if let Some((k, v)) = line.split_once('=') {
            env.insert(
                k.to_string(),
                v.trim_matches('"').trim_matches('\'').to_string(),
            );
        }
    }
    let ep = env
        .get("AWS_ENDPOINT_URL")
        .expect("AWS_ENDPOINT_URL in .lab/env");
    assert!(
        ep.starts_with("http://127.")
            || ep.starts_with("http://localhost")
            || ep.starts_with("http://[::1]"),
        "network rule: the lab endpoint must be on loopback, got {ep}"
    );
    let probe = ep.trim_start_matches("http://").trim_end_matches('/');
    std::net::TcpStream::connect_timeout(
        &probe.parse().expect("endpoint host:port"),
        Duration::from_secs(2),
    )
    .unwrap_or_else(|e| {
        panic!("the lab at {ep} does not answer ({e}): start it with `scripts/lab up`")
    });
    env
}

pub struct Lab {
    pub env: BTreeMap<String, String>,
    /// The SDK configuration every client of the lab is made from.
    pub conf: aws_config::SdkConfig,
    pub ec2: aws_sdk_ec2::Client,
    pub rt: tokio::runtime::Runtime,
}

impl Lab {
    /// Every instance ever launched for `recipe` (terminated ones included).
    pub fn instances_launched(&self, recipe: &str) -> Vec<String> {
        self.rt.block_on(async {
            let out = self
                .ec2
                .describe_instances()
                .filters(recipe_filter(recipe))
                .send()
                .await
                .unwrap();
            out.reservations()
                .iter()
                .flat_map(|r| r.instances())
                .filter_map(|i| i.instance_id().map(str::to_string))
                .collect()
        })
    }

    pub fn new() -> Lab {
        let env = lab_env();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let conf = rt.block_on(
            aws_config::defaults(aws_config::BehaviorVersion::latest())
                .endpoint_url(&env["AWS_ENDPOINT_URL"])
                .region(aws_config::Region::new(env["AWS_REGION"].clone()))
                .credentials_provider(aws_sdk_ec2::config::Credentials::new(
                    &env["AWS_ACCESS_KEY_ID"],
                    &env["AWS_SECRET_ACCESS_KEY"],
                    None,
                    None,
                    "lab",
                ))
                .load(),
        );
        Lab {
            ec2: aws_sdk_ec2::Client::new(&conf),
            conf,
            env,
            rt,
        }
    }

    pub fn autoscaling(&self) -> aws_sdk_autoscaling::Client {
        aws_sdk_autoscaling::Client::new(&self.conf)
    }

    /// An S3 client (path-style, as the lab serves buckets).
    pub fn s3(&self) -> aws_sdk_s3::Client {
        aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&self.conf)
                .force_path_style(true)
                .build(),
        )
    }

    /// `bake` with the lab's environment and a private hash cache.
    pub fn bake(&self, cache: &Path) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_bake"));
        c.env_clear();
        c.env("PATH", std::env::var("PATH").unwrap_or_default());
        c.env("HOME", std::env::var("HOME").unwrap_or_default());
        c.envs(&self.env);
        c.env("BAKE_CACHE_DIR", cache);
        c
    }

    /// `bake build <args> <recipe>` with the hash cache in `dir/cache`, run to completion.
    pub fn build(&self, dir: &Path, args: &[&str], recipe: &Path) -> Output {
        self.bake(&dir.join("cache"))
            .arg("build")
            .args(args)
            .arg(recipe)
            .output()
            .unwrap()
    }

    /// Asserts nothing of `recipe`'s builds is left (see [`Lab::leftovers`]).
    pub fn assert_no_leftovers(&self, recipe: &str, context: &str) {
        assert_eq!(self.leftovers(recipe), Vec::<String>::new(), "{context}");
    }

    pub fn images_of(&self, recipe: &str) -> Vec<aws_sdk_ec2::types::Image> {
        self.images_through(&self.ec2, recipe)
    }

    /// The recipe's images as `ec2` (a client of any region) lists them.
    pub fn images_through(
        &self,
        ec2: &aws_sdk_ec2::Client,
        recipe: &str,
    ) -> Vec<aws_sdk_ec2::types::Image> {
        self.rt.block_on(async {
            ec2.describe_images()
                .owners("self")
                .filters(recipe_filter(recipe))
                .send()
                .await
                .unwrap()
                .images()
                .to_vec()
        })
    }

    pub fn snapshot_tags(&self, id: &str) -> BTreeMap<String, String> {
        self.rt.block_on(async {
            let out = self
                .ec2
                .describe_snapshots()
                .snapshot_ids(id)
                .send()
                .await
                .unwrap();
            tags(out.snapshots()[0].tags())
        })
    }

    /// Everything of a recipe's builds that should be gone after a build: live instances,
    /// key pairs and security groups.
    pub fn leftovers(&self, recipe: &str) -> Vec<String> {
        self.rt.block_on(async {
            let mut left = Vec::new();
            let f = |n: &str, v: &str| Filter::builder().name(n).values(v).build();
            let insts = self
                .ec2
                .describe_instances()
                .filters(f("tag:bake:recipe", recipe))
                .filters(f("tag:bake:temporary", "true"))
                .send()
                .await
                .unwrap();
            for i in insts.reservations().iter().flat_map(|r| r.instances()) {
                let state = i
                    .state()
                    .and_then(|s| s.name())
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_default();
                if state != "terminated" {
                    left.push(format!(
                        "instance {} ({state})",
                        i.instance_id().unwrap_or_default()
                    ));
                }
            }
            let keys = self.ec2.describe_key_pairs().send().await.unwrap();
            for k in keys.key_pairs() {
                let name = k.key_name().unwrap_or_default();
                if name.starts_with(&format!("bake-{recipe}-")) {
                    left.push(format!("key pair {name}"));
                }
            }
            let sgs = self
                .ec2
                .describe_security_groups()
                .filters(f("tag:bake:recipe", recipe))
                .send()
                .await
                .unwrap();
            for g in sgs.security_groups() {
                left.push(format!(
                    "security group {}",
                    g.group_id().unwrap_or_default()
                ));
            }
            left
        })
    }

    /// The lab's EC2 in `region`.
    pub fn ec2_in(&self, region: &str) -> aws_sdk_ec2::Client {
        let conf = self
            .conf
            .to_builder()
            .region(aws_config::Region::new(region.to_string()))
            .build();
        aws_sdk_ec2::Client::new(&conf)
    }

    /// Launches an instance from `ami` with a fresh key and returns (instance id, ip, key file).
    pub fn launch_for_check(&self, ami: &str, dir: &Path) -> (String, String, PathBuf) {
        self.launch_for_check_through(&self.ec2, ami, dir)
    }

    /// [`Lab::launch_for_check`] through `ec2`, a client of any region.
    pub fn launch_for_check_through(
        &self,
        ec2: &aws_sdk_ec2::Client,
        ami: &str,
        dir: &Path,
    ) -> (String, String, PathBuf) {
        let n = unique("k");
        let key = dir.join(format!("check_key_{n}"));
        let public = ssh_keygen(&key);
        let name = format!("check-{n}");
        self.rt.block_on(async {
            ec2.import_key_pair()
                .key_name(&name)
                .public_key_material(aws_sdk_ec2::primitives::Blob::new(public.into_bytes()))
                .send()
                .await
                .unwrap();
            let out = ec2
                .run_instances()
                .image_id(ami)
                .instance_type("t3.micro".into())
                .min_count(1)
                .max_count(1)
                .key_name(&name)
                .send()
                .await
                .unwrap();
            let inst = &out.instances()[0];
            let id = inst.instance_id().unwrap().to_string();
            let ip = inst.private_ip_address().unwrap().to_string();
            assert!(
                ip.starts_with("127."),
                "network rule: lab instance got non-loopback address {ip}"
            );
            ec2.delete_key_pair().key_name(&name).send().await.unwrap();
            (id, ip, key)
        })
    }

    /// Imports `public` (an OpenSSH public key line) as the EC2 key pair `name`.
    pub async fn import_key(&self, name: &str, public: String) {
        self.ec2
            .import_key_pair()
            .key_name(name)
            .public_key_material(aws_sdk_ec2::primitives::Blob::new(public.into_bytes()))
            .send()
            .await
            .unwrap();
    }

    pub fn terminate(&self, id: &str) {
        self.rt.block_on(async {
            self.ec2
                .terminate_instances()
                .instance_ids(id)
                .send()
                .await
                .unwrap();
        });
    }
}

/// Makes an ed25519 key pair at `key` (and `key.pub`) and returns the public key line.
pub fn ssh_keygen(key: &Path) -> String {
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(key)
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::read_to_string(key.with_extension("pub")).unwrap()
}

/// Runs a command on a lab instance over SSH (host key not pinned: this is a test probe of an
/// instance the test itself launched on loopback), retrying while sshd comes up.
pub fn ssh(ip: &str, key: &Path, user: &str, cmd: &str) -> Output {
    assert!(
        ip.starts_with("127."),
        "network rule: refusing to SSH to {ip}"
    );
    let mut last = None;
    for _ in 0..50 {
        let out = Command::new("ssh")
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "LogLevel=ERROR",
                "-o",
                "ConnectTimeout=3",
                "-o",
                "BatchMode=yes",
                "-i",
            ])
            .arg(key)
            .arg(format!("{user}@{ip}"))
            .arg(cmd)
            .output()
            .unwrap();
        if out.status.code() != Some(255) {
            return out;
        }
        last = Some(out);
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = last.unwrap();
    panic!(
        "ssh to {ip} kept failing: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The EC2 filter for everything tagged with `recipe` (`bake:recipe`).
pub fn recipe_filter(recipe: &str) -> Filter {
    Filter::builder()
        .name("tag:bake:recipe")
        .values(recipe)
        .build()
}

/// The parts of a test recipe that differ; everything else is the lab's Debian 12 image on a
/// t3.micro, logged into as `admin`.
#[derive(Default, Clone, Copy)]
pub struct Recipe<'a> {
    /// Top-level keys (and comments, and tables such as `[variables]`) before `[source]`.
    pub head: &'a str,
    /// More keys of `[builder]`.
    pub builder: &'a str,
    /// More keys of `[ssh]`.
    pub ssh: &'a str,
    /// More keys of `[image]`, then further tables (`[[upload]]`, `[[step]]`, `[ssm]`, ...).
    pub tail: &'a str,
}

/// Writes the recipe `name` to `dir/<name>.toml` and returns the path.
pub fn write_recipe(dir: &Path, name: &str, r: Recipe<'_>) -> PathBuf {
    let Recipe {
        head,
        builder,
        ssh,
        tail,
    } = r;
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
{builder}
[ssh]
username = "admin"
{ssh}
[image]
name = "{{recipe}}-{{short_hash}}-{{timestamp}}"
{tail}
"#
        ),
    )
    .unwrap();
    p
}

/// [`write_recipe`] with copies to us-west-2 and eu-west-1 (the build region is us-east-1).
pub fn copies_recipe(dir: &Path, name: &str) -> PathBuf {
    write_recipe(
        dir,
        name,
        Recipe {
            tail: "regions = [\"us-west-2\", \"eu-west-1\"]",
            ..Recipe::default()
        },
    )
}

/// The AMI id a build's JSON result names for `region`.
pub fn ami_of(build: &serde_json::Value, region: &str) -> String {
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

/// `bake build --output json <extra> <recipe>` with the hash cache `cache`: must succeed;
/// returns the JSON result.
pub fn build_json(lab: &Lab, cache: &Path, recipe: &Path, extra: &[&str]) -> serde_json::Value {
    let out = lab
        .bake(cache)
        .args(["build", "--output", "json", "--plain"])
        .args(extra)
        .arg(recipe)
        .output()
        .unwrap();
    assert!(out.status.success(), "build failed:\n{}", stderr(&out));
    one_build(&out)
}

/// The one build of `bake build --output json` with a single recipe (`builds[0]`).
pub fn one_build(out: &Output) -> serde_json::Value {
    let v = json(out);
    assert_eq!(v["format_version"], 1, "{v}");
    let builds = v["builds"]
        .as_array()
        .unwrap_or_else(|| panic!("no builds: {v}"));
    assert_eq!(builds.len(), 1, "{v}");
    builds[0].clone()
}

/// Asserts `out` exited with `code` and its stderr says each of `want`; returns the stderr.
pub fn assert_exit(out: &Output, code: i32, want: &[&str]) -> String {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(code), "{err}");
    for w in want {
        assert!(err.contains(w), "{w:?} missing: {err}");
    }
    err
}

/// Starts `bake build --plain <recipe>`, waits (at most two minutes) for a stderr line with
/// `marker`, lets `settle` pass, sends SIGINT, and returns (exit code, all of stderr).
pub fn interrupt_when(
    lab: &Lab,
    cache: &Path,
    recipe: &Path,
    marker: &str,
    settle: Duration,
) -> (Option<i32>, String) {
    use std::io::{BufRead, BufReader};
    let mut child = lab
        .bake(cache)
        .args(["build", "--plain"])
        .arg(recipe)
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
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
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
            .expect("marker never appeared");
        if line.contains(marker) {
            break;
        }
    }
    std::thread::sleep(settle);
    signal(&child, 2);
    let status = child.wait().unwrap();
    (status.code(), reader.join().unwrap())
}

/// Sends signal number `sig` to `child` and returns once it is sent. Through `kill(1)`, not
/// libc's `kill`: the crate forbids `unsafe`, and a process spawn costs about a millisecond.
/// A child that has already exited is no error (the test then sees its exit status).
pub fn signal(child: &std::process::Child, sig: i32) {
    Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.id().to_string())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("run kill(1)");
}
pub fn tags(t: &[aws_sdk_ec2::types::Tag]) -> BTreeMap<String, String> {
    t.iter()
        .map(|t| {
            (
                t.key().unwrap_or_default().to_string(),
                t.value().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

pub fn unique(prefix: &str) -> String {
    let n: u32 = rand::random();
    format!("{prefix}{n:08x}")
}

/// Copies a directory tree (test fixtures, the example recipes).
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let ft = e.file_type().unwrap();
        let dst = to.join(e.file_name());
        if ft.is_dir() {
            copy_tree(&e.path(), &dst);
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(e.path()).unwrap(), &dst).unwrap();
        } else {
            std::fs::copy(e.path(), &dst).unwrap();
        }
    }
}

/// Copies `recipes/` to `dir` and renames the example recipe in `file` (named `web`) to `name`.
pub fn example(dir: &Path, file: &str, name: &str) -> PathBuf {
    copy_tree(&repo().join("recipes"), dir);
    let p = dir.join(file);
    let text = std::fs::read_to_string(&p).unwrap().replacen(
        "name = \"web\"",
        &format!("name = \"{name}\""),
        1,
    );
    std::fs::write(&p, text).unwrap();
    p
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Parses `bake … --output json` stdout.
pub fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "bad JSON ({e}) on stdout: {}\nstderr: {}",
            stdout(o),
            stderr(o)
        )
    })
}

/// Calls the lab's own API (`/lab-api/<path>`, JSON in and out) over plain HTTP on loopback.
pub fn lab_api(
    env: &BTreeMap<String, String>,
    method: &str,
    path: &str,
    body: &str,
) -> serde_json::Value {
    use std::io::{Read, Write};
    let ep = env["AWS_ENDPOINT_URL"]
        .trim_start_matches("http://")
        .trim_end_matches('/');
    assert!(
        ep.starts_with("127.") || ep.starts_with("localhost"),
        "network rule: {ep}"
    );
    let mut s = std::net::TcpStream::connect(ep).expect("lab API");
    write!(
        s,
        "{method} /lab-api/{path} HTTP/1.1\r\nHost: {ep}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").expect("HTTP response");
    assert!(
        head.starts_with("HTTP/1.1 2") || head.starts_with("HTTP/1.0 2"),
        "lab API {method} {path}: {resp}"
    );
    serde_json::from_str(body).unwrap_or(serde_json::Value::Null)
}

/// What the lab's leftovers report (`/lab-api/leftovers`) holds of `recipe`'s builds (by the
/// `bake:recipe` tag or a name that carries the recipe), as "kind id" lines, leaving out the
/// kinds in `except` (e.g. the images a successful build is meant to leave).
pub fn lab_leftovers(env: &BTreeMap<String, String>, recipe: &str, except: &[&str]) -> Vec<String> {
    let v = lab_api(env, "GET", "leftovers", "");
    let mut out = Vec::new();
    for it in v["leftovers"].as_array().cloned().unwrap_or_default() {
        let kind = it["kind"].as_str().unwrap_or_default();
        let ours = it["tags"]["bake:recipe"].as_str() == Some(recipe)
            || it["name"].as_str().is_some_and(|n| n.contains(recipe))
            || it["id"].as_str().is_some_and(|n| n.contains(recipe));
        if ours && !except.contains(&kind) {
            out.push(format!("{kind} {}", it["id"].as_str().unwrap_or_default()));
        }
    }
    out
}
