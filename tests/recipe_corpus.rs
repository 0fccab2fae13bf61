//! The bad-recipe corpus and the good examples, through the library's recipe loader.
//!
//! Each `tests/bad-recipes/*.toml` starts with comment lines:
//!
//! ```text
//! # expect: <substring of the rendered report>      (one or more)
//! # expect-at: LINE:COL                             (optional: where the error that
//!                                                    mentions the first expect sits)
//! # expect-count: N                                 (optional: number of problems)
//! ```
//!
//! `BAKE_CORPUS_PRINT=1 cargo test --test recipe_corpus -- --nocapture` prints every report.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bake::recipe::{self, model::*};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn corpus() -> Vec<PathBuf> {
    let dir = repo().join("tests/bad-recipes");
    let mut v: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    v.sort();
    v
}

#[derive(Default, Debug)]
struct Expect {
    substrings: Vec<String>,
    at: Option<(usize, usize)>,
    count: Option<usize>,
}

fn expectations(src: &str) -> Expect {
    let mut e = Expect::default();
    for line in src.lines().take_while(|l| l.starts_with('#')) {
        if let Some(s) = line.strip_prefix("# expect:") {
            e.substrings.push(s.trim().to_string());
        } else if let Some(s) = line.strip_prefix("# expect-at:") {
            if s.trim() == "?" {
                continue;
            }
            let (l, c) = s.trim().split_once(':').expect("expect-at: LINE:COL");
            e.at = Some((l.parse().unwrap(), c.parse().unwrap()));
        } else if let Some(s) = line.strip_prefix("# expect-count:") {
            e.count = Some(s.trim().parse().unwrap());
        }
    }
    e
}

#[test]
fn corpus_is_big_enough() {
    let n = corpus().len();
    assert!(n >= 35, "only {n} bad recipes");
}

#[test]
fn every_bad_recipe_fails_with_position_message_and_help() {
    let print = std::env::var_os("BAKE_CORPUS_PRINT").is_some();
    let mut failures = Vec::new();
    for path in corpus() {
        let src = std::fs::read_to_string(&path).unwrap();
        let fname = path.file_name().unwrap().to_string_lossy().to_string();
        assert!(
            src.starts_with("# expect: "),
            "{fname}: first line must be `# expect: …`"
        );
        let exp = expectations(&src);
        let Err(errs) = recipe::load(&path, &[]) else {
            failures.push(format!("{fname}: loaded without errors"));
            continue;
        };
        let out = errs.render_plain();
        if std::env::var_os("BAKE_CORPUS_BLESS").is_some() && src.contains("\n# expect-at: ?\n") {
            // fills in the position of the error mentioning the first expectation
            let first = &exp.substrings[0];
            if let Some(e) = errs
                .errors
                .iter()
                .find(|e| e.message.contains(first.as_str()) || e.help.contains(first.as_str()))
                && let Some(span) = &e.span
            {
                let (l, c) = recipe::line_col(&errs.source, span.start);
                std::fs::write(
                    &path,
                    src.replacen(
                        "\n# expect-at: ?\n",
                        &format!("\n# expect-at: {l}:{c}\n"),
                        1,
                    ),
                )
                .unwrap();
            }
        }
        if print {
            println!("==== {fname}\n{out}");
        }
        let shown = path.display().to_string();
        let mut fail = |msg: String| failures.push(format!("{fname}: {msg}\n{out}"));
        // every problem in the corpus has a place in the file
        for e in &errs.errors {
            if e.span.is_none() {
                fail(format!("error without a position: {}", e.message));
            }
            if e.help.trim().is_empty() {
                fail(format!("error without help: {}", e.message));
            }
        }
        let positioned = out.lines().any(|l| {
            l.strip_prefix(&format!("{shown}:")).is_some_and(|rest| {
                let mut p = rest.splitn(3, ':');
                p.next().is_some_and(|x| x.parse::<usize>().is_ok())
                    && p.next().is_some_and(|x| x.parse::<usize>().is_ok())
            })
        });
        if !positioned {
            fail("no path:line:col line".into());
        }
        if !out.lines().any(|l| l.trim_start().starts_with("help: ")) {
            fail("no help: line".into());
        }
        for s in &exp.substrings {
            if !out.contains(s.as_str()) {
                fail(format!("expected `{s}` in the report"));
            }
        }
        if let Some((line, col)) = exp.at {
            let want = format!("{shown}:{line}:{col}: error: ");
            let first = &exp.substrings[0];
            let hit = out
                .lines()
                .any(|l| l.starts_with(&want) && l.contains(first.as_str()))
                || errs.errors.iter().any(|e| {
                    e.help.contains(first.as_str())
                        && e.span
                            .as_ref()
                            .is_some_and(|s| recipe::line_col(&errs.source, s.start) == (line, col))
                });
            if !hit {
                fail(format!(
                    "expected the error mentioning `{first}` at {line}:{col}"
                ));
            }
        }
        if let Some(n) = exp.count
            && errs.len() != n
        {
            fail(format!("expected {n} errors, got {}", errs.len()));
        }
    }
    assert!(
        failures.is_empty(),
        "{} corpus failure(s):\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

fn load_example(name: &str) -> Recipe {
    let path = repo().join("recipes").join(name);
    match recipe::load(&path, &[]) {
        Ok(r) => r,
        Err(e) => panic!("{name} should load:\n{}", e.render_plain()),
    }
}

#[test]
fn web_example_loads() {
    let r = load_example("web.toml");
    assert_eq!(r.name, "web");
    assert_eq!(r.communicator, CommunicatorKind::Ssh);
    match &r.source {
        Source::Filter(f) => {
            assert_eq!(f.owners, vec!["136693071363".to_string()]);
            assert_eq!(f.name.as_deref(), Some("debian-12-amd64-*"));
            assert_eq!(f.architecture.as_deref(), Some("x86_64"));
        }
        other => panic!("expected a filter, got {other:?}"),
    }
    assert_eq!(r.builder.instance_type, "t3.micro");
    assert_eq!(r.ssh.username, "admin");
    assert_eq!(r.ssh.port, 22);
    assert_eq!(r.ssh.interface, SshInterface::PrivateIp);
    assert_eq!(r.ssh.timeout, Duration::from_secs(300));
    assert!(r.dir.is_absolute());
    assert_eq!(r.uploads.len(), 3);
    let app = &r.uploads[0];
    assert!(app.is_dir && app.source.is_absolute() && app.source.ends_with("recipes/web/app"));
    assert_eq!(app.destination, "/opt/web/app");
    assert_eq!(app.mode, Some(0o644));
    assert_eq!(r.uploads[1].destination, "/etc/systemd/system/web.service");
    assert_eq!(r.uploads[2].owner.as_deref(), Some("root:root"));
    let names: Vec<_> = r.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["user", "layout", "enable", "build-info"]);
    assert!(
        r.steps
            .iter()
            .all(|s| s.sudo && s.timeout == Duration::from_secs(1800) && s.retries == 0)
    );
    match &r.steps[3].body {
        StepBody::Run(s) => assert!(s.contains("'1.0.0'"), "variable substituted: {s}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(r.image.name, "{recipe}-{timestamp}-{short_hash}");
    assert_eq!(r.image.tags.get("role").map(String::as_str), Some("web"));
    assert_eq!(
        r.image.tags.get("version").map(String::as_str),
        Some("1.0.0")
    );
    assert!(r.deploy.is_none() && r.ssm.is_none() && r.secrets.is_empty());
}

#[test]
fn minimal_example_loads() {
    let r = load_example("minimal.toml");
    assert_eq!(r.name, "minimal");
    assert!(r.uploads.is_empty());
    assert_eq!(r.steps.len(), 1);
    assert!(!r.steps[0].sudo);
}

#[test]
fn var_overrides_and_undeclared_vars() {
    let path = repo().join("recipes/web.toml");
    let r = recipe::load(&path, &[("version".into(), "2.3.4".into())]).unwrap();
    assert_eq!(r.image.tags["version"], "2.3.4");
    let e = recipe::load(&path, &[("verison".into(), "2".into())]).unwrap_err();
    let out = e.render_plain();
    assert_eq!(e.len(), 1, "{out}");
    assert!(
        out.contains("--var `verison`: the recipe declares no variable `verison`"),
        "{out}"
    );
    assert!(out.contains("did you mean `--var version=…`?"), "{out}");
    // points at [variables]
    assert!(out.contains("web.toml:10:1: error:"), "{out}");
    assert_eq!(recipe::parse_var("a=b=c"), Ok(("a".into(), "b=c".into())));
    assert!(recipe::parse_var("=x").is_err());
}

const SMALL: &str = r#"name = "s"
sensitive = ["token"]
[variables]
token = "{env.BAKE_T_TOKEN}"
region = "{env.BAKE_T_REGION:-eu-west-1}"
[source]
ami = "ami-0123456789abcdef0"
[builder]
instance_type = "t3.micro"
[ssh]
username = "admin"
[[step]]
name = "x"
run = "echo {var.region}; curl -H 'T: {var.token}' https://example.com/{a,b} ${HOME}"
env = { TOKEN = "{var.token}" }
[image]
name = "{recipe}-{date}-{var.region}"
"#;

#[test]
fn env_defaults_secrets_and_shell_braces() {
    let env = |k: &str| (k == "BAKE_T_TOKEN").then(|| "s3cr3t-value".to_string());
    let r = recipe::load_str_with_env(SMALL, Path::new("/tmp/x/s.toml"), &[], &env).unwrap();
    assert_eq!(r.secrets, vec!["s3cr3t-value".to_string()]);
    assert_eq!(r.steps[0].env["TOKEN"], "s3cr3t-value");
    match &r.steps[0].body {
        StepBody::Run(s) => assert_eq!(
            s,
            "echo eu-west-1; curl -H 'T: s3cr3t-value' https://example.com/{a,b} ${HOME}"
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(r.image.name, "{recipe}-{date}-eu-west-1");
    assert_eq!(r.dir, PathBuf::from("/tmp/x"));

    // missing env var without fallback: one error, at the token
    let none = |_: &str| None;
    let e = recipe::load_str_with_env(SMALL, Path::new("s.toml"), &[], &none).unwrap_err();
    assert_eq!(e.len(), 1, "{}", e.render_plain());
    assert!(
        e.render_plain()
            .contains("s.toml:4:10: error: environment variable `BAKE_T_TOKEN` is not set"),
        "{}",
        e.render_plain()
    );

    // sensitive values are redacted from messages
    let bad = SMALL.replace("ami-0123456789abcdef0", "{var.token}");
    let e = recipe::load_str_with_env(&bad, Path::new("s.toml"), &[], &env).unwrap_err();
    let out = e.render_plain();
    assert!(!out.contains("s3cr3t-value"), "{out}");
    assert!(out.contains("`[redacted]` is not a valid AMI id"), "{out}");
}

#[test]
fn typical_recipe_validates_fast() {
    let path = repo().join("recipes/web.toml");
    load_example("web.toml");
    let start = Instant::now();
    for _ in 0..10 {
        recipe::load(&path, &[]).unwrap();
    }
    let each = start.elapsed() / 10;
    eprintln!("recipes/web.toml loads in {each:?}");
    // debug build; release is far below this
    assert!(
        each < Duration::from_millis(20),
        "loading web.toml took {each:?}"
    );
}

#[test]
fn miette_report_renders() {
    let e = recipe::load_str("name = 1\n", Path::new("r.toml"), &[]).unwrap_err();
    let mut out = String::new();
    miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor())
        .render_report(&mut out, &e)
        .unwrap();
    assert!(out.contains("must be a string"), "{out}");
    assert!(out.contains("quote the value"), "{out}");
}

#[test]
fn ssm_script_deploy_and_root_volume_load() {
    let src = r#"name = "full"
communicator = "ssm"
[source.filter]
owners = ["amazon", "self"]
name = "al2023-ami-*"
architecture = "arm64"
filters = { "virtualization-type" = ["hvm"], "root-device-type" = "ebs" }
[builder]
instance_type = "m7g.large"
subnet_id = "subnet-0123456789abcdef0"
security_group_ids = ["sg-01234567"]
iam_instance_profile = "bake-builder"
user_data_file = "files/app.txt"
associate_public_ip = false
run_tags = { team = "platform" }
[builder.root_volume]
size_gb = 30
type = "io2"
iops = 4000
encrypted = true
kms_key_id = "alias/bake"
[ssm]
bucket = "my-bake-staging"
output_bucket = "my-bake-logs"
[[upload]]
source = "files"
destination = "/opt/files"
owner = "root:root"
[[step]]
name = "script"
script = "scripts/ok.sh"
env = { MODE = "prod" }
workdir = "/opt/files"
timeout = "1h 30m"
retries = 2
reboot = true
[image]
name = "{recipe} ({date}) {short_hash}"
description = "everything"
snapshot_tags = { team = "platform" }
[deploy]
asg = "web-asg"
min_healthy_percentage = 90
max_healthy_percentage = 120
instance_warmup = "2m"
skip_matching = true
checkpoint_percentages = [20, 50, 100]
checkpoint_delay = "10m"
auto_rollback = true
keep_versions = 5
"#;
    let path = repo().join("tests/bad-recipes/full.toml"); // not written: only its directory is used
    let r = recipe::load_str(src, &path, &[]).unwrap_or_else(|e| panic!("{}", e.render_plain()));
    assert_eq!(r.communicator, CommunicatorKind::Ssm);
    let ssm = r.ssm.as_ref().unwrap();
    assert_eq!(
        (ssm.bucket.as_str(), ssm.prefix.as_str(), ssm.timeout),
        ("my-bake-staging", "bake/", Duration::from_secs(600))
    );
    assert_eq!(ssm.output_bucket.as_deref(), Some("my-bake-logs"));
    match &r.source {
        Source::Filter(f) => {
            assert_eq!(f.filters["virtualization-type"], vec!["hvm".to_string()]);
            assert_eq!(f.filters["root-device-type"], vec!["ebs".to_string()]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(r.builder.user_data.as_deref(), Some("hello\n"));
    assert_eq!(r.builder.root_volume.iops, Some(4000));
    assert_eq!(r.builder.root_volume.volume_type.as_deref(), Some("io2"));
    assert!(r.uploads[0].is_dir && r.uploads[0].mode.is_none());
    let s = &r.steps[0];
    assert!(
        matches!(&s.body, StepBody::Script(p) if p.is_absolute() && p.ends_with("scripts/ok.sh"))
    );
    assert_eq!(
        (s.timeout, s.retries, s.reboot, s.sudo),
        (Duration::from_secs(5400), 2, true, false)
    );
    let d = r.deploy.as_ref().unwrap();
    assert_eq!(d.checkpoint_percentages, vec![20, 50, 100]);
    assert_eq!(d.checkpoint_delay, Some(Duration::from_secs(600)));
    assert_eq!(d.keep_versions, Some(5));
}

/// Every prefix of every corpus file and example (cut at many places) loads or fails without
/// panicking.
#[test]
fn truncated_recipes_never_panic() {
    let mut files = corpus();
    files.push(repo().join("recipes/web.toml"));
    files.push(repo().join("recipes/minimal.toml"));
    for path in files {
        let src = std::fs::read_to_string(&path).unwrap();
        let mut cut = 0;
        while cut < src.len() {
            if src.is_char_boundary(cut) {
                let r = std::panic::catch_unwind(|| {
                    if let Err(e) = recipe::load_str(&src[..cut], &path, &[]) {
                        e.render_plain();
                    }
                });
                assert!(r.is_ok(), "{} cut at byte {cut} panicked", path.display());
            }
            cut += 11;
        }
    }
}
