//! Bad input never reaches AWS: every recipe of the bad corpus makes `bake validate` and
//! `bake build` exit 2 with file:line:col, and no connection reaches the (fake) AWS endpoint.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

fn corpus() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/bad-recipes");
    let mut v: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    v.sort();
    v
}

/// A loopback listener standing in for AWS that counts every connection it gets.
fn tripwire() -> (String, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            if s.is_ok() {
                h.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    (format!("http://{addr}"), hits)
}

fn bake(endpoint: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_bake"));
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "x")
        .env("AWS_SECRET_ACCESS_KEY", "x")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env(
            "BAKE_CACHE_DIR",
            std::env::temp_dir().join("bake-test-cache"),
        );
    c
}

#[test]
fn every_bad_recipe_exits_2_with_position_and_no_aws_call() {
    let files = corpus();
    assert!(
        files.len() >= 30,
        "the bad-recipe corpus should hold at least 30 recipes, has {}",
        files.len()
    );
    let (endpoint, hits) = tripwire();
    for f in &files {
        for cmd in ["validate", "build", "plan"] {
            let out = bake(&endpoint).arg(cmd).arg(f).output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(
                out.status.code(),
                Some(2),
                "{cmd} {}: expected exit 2, got {:?}\n{err}",
                f.display(),
                out.status
            );
            let name = f.file_name().unwrap().to_string_lossy();
            let positioned = err.lines().any(|l| {
                l.find(&*name).is_some_and(|i| {
                    let rest = &l[i + name.len()..];
                    let mut parts = rest.splitn(3, ':');
                    parts.next() == Some("")
                        && parts.next().is_some_and(|x| x.parse::<u32>().is_ok())
                        && parts
                            .next()
                            .is_some_and(|x| x.split(':').next().unwrap().parse::<u32>().is_ok())
                })
            });
            assert!(
                positioned,
                "{cmd} {}: no file:line:col in\n{err}",
                f.display()
            );
            assert!(
                err.contains("help:"),
                "{cmd} {}: no help line in\n{err}",
                f.display()
            );
        }
    }
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "a bad recipe made an AWS call"
    );
}

#[test]
fn many_bad_recipes_are_all_reported_at_once() {
    let (endpoint, hits) = tripwire();
    let files = corpus();
    let out = bake(&endpoint)
        .arg("validate")
        .args(&files[..3])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    for f in &files[..3] {
        assert!(
            err.contains(&*f.file_name().unwrap().to_string_lossy()),
            "{} not reported:\n{err}",
            f.display()
        );
    }
    assert_eq!(hits.load(Ordering::SeqCst), 0);
}

#[test]
fn good_example_validates_quickly_and_as_json() {
    let (endpoint, hits) = tripwire();
    let web = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("recipes/web.toml");
    let start = std::time::Instant::now();
    let out = bake(&endpoint)
        .args(["validate", "--output", "json"])
        .arg(&web)
        .output()
        .unwrap();
    let took = start.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["valid"], true);
    assert_eq!(v["recipes"][0]["name"], "web");
    assert_eq!(hits.load(Ordering::SeqCst), 0);
    // Generous bound for a debug build on a loaded CI box; the benchmark checks the 20 ms target
    // on a release build.
    assert!(took < Duration::from_secs(2), "validate took {took:?}");
}

/// `--var-file`, `BAKE_VAR_<name>` and `--var` reach the recipe in that order of precedence,
/// and a bad var file is exit 2 with its own file:line:col, still without any AWS call.
#[test]
fn var_files_and_env_overrides_reach_the_recipe() {
    let (ep, hits) = tripwire();
    let dir = tempfile::tempdir().unwrap();
    let recipe = dir.path().join("r.toml");
    std::fs::write(
        &recipe,
        r#"name = "vars-{var.who}"
[variables]
who = "recipe"
[source]
ami = "ami-0123456789abcdef0"
[builder]
instance_type = "t3.micro"
[ssh]
username = "admin"
[image]
name = "{recipe}-x"
"#,
    )
    .unwrap();
    let file = dir.path().join("vars.toml");
    std::fs::write(&file, "who = \"file\"\n").unwrap();
    let name = |args: &[&str], env: Option<&str>| {
        let mut c = bake(&ep);
        c.args(["--output", "json", "validate"])
            .args(args)
            .arg(&recipe);
        if let Some(v) = env {
            c.env("BAKE_VAR_who", v);
        }
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["recipes"][0]["name"].as_str().unwrap().to_string()
    };
    let f = file.to_str().unwrap();
    assert_eq!(name(&[], None), "vars-recipe");
    assert_eq!(name(&["--var-file", f], None), "vars-file");
    assert_eq!(name(&["--var-file", f], Some("env")), "vars-env");
    assert_eq!(
        name(&["--var-file", f, "--var", "who=flag"], Some("env")),
        "vars-flag"
    );

    std::fs::write(&file, "who = 3\n").unwrap();
    let out = bake(&ep)
        .args(["validate", "--var-file", f])
        .arg(&recipe)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("vars.toml:1:"), "no position in: {err}");
    assert_eq!(hits.load(Ordering::SeqCst), 0, "validate must not call AWS");
}

#[test]
fn on_github_actions_a_bad_recipe_is_an_error_annotation_at_its_line_and_column() {
    let (endpoint, hits) = tripwire();
    let f = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/bad-recipes/array-item-not-string.toml");
    for cmd in ["validate", "build"] {
        let out = bake(&endpoint)
            .env("GITHUB_ACTIONS", "true")
            .arg(cmd)
            .arg(&f)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        let want = format!("::error file={},line=10,col=23::", f.display());
        let line = err
            .lines()
            .find(|l| l.starts_with(&want))
            .unwrap_or_else(|| panic!("no {want} annotation in\n{err}"));
        assert!(line.contains("must list strings"), "{line}");
        assert!(
            line.contains("%0Ahelp: "),
            "help on the annotation's second line: {line}"
        );
    }
    // Without GITHUB_ACTIONS: no workflow commands.
    let out = bake(&endpoint).arg("validate").arg(&f).output().unwrap();
    assert!(!String::from_utf8_lossy(&out.stderr).contains("::error"));
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "a bad recipe made an AWS call"
    );
}

#[test]
fn on_error_ask_without_a_terminal_and_a_bad_gc_build_id_exit_2_without_aws() {
    let (endpoint, hits) = tripwire();
    let web = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("recipes/web.toml");
    let out = bake(&endpoint)
        .args(["build", "--on-error=ask"])
        .arg(&web)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--on-error=ask needs a terminal"), "{err}");
    assert!(err.contains("--on-error=abort"), "{err}");
    let out = bake(&endpoint)
        .args(["gc", "--build-id", "i-123"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("is not a build id"), "{err}");
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(hits.load(Ordering::SeqCst), 0, "an AWS call was made");
}
