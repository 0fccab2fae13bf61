//! `bake build --on-error=abort` against the lab, driving the real binary: a failed step keeps
//! the builder (and only what it needs), the printed `ssh` command logs in with the pinned host
//! key, and `bake gc --yes --build-id` then removes all of it; a failure before the builder is
//! reachable cleans up as always. (`--on-error=ask` without a terminal: tests/cli_bad_input.rs.)

#![cfg(feature = "lab")]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::run::leftovers_of_build;
use common::*;

/// `bake` with the lab's env, a private hash cache and a private state directory.
fn bake(lab: &Lab, dir: &Path) -> Command {
    let mut c = lab.bake(&dir.join("cache"));
    c.env("BAKE_STATE_DIR", dir.join("state"));
    c
}

/// Runs `cmd` under `sh -c` (the printed command is a shell line), with its stdin closed.
fn sh(cmd: &str) -> std::process::Output {
    Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn abort_keeps_the_builder_reachable_with_the_pinned_key_then_gc_removes_it() {
    let lab = Lab::new();
    let dir = tempfile::tempdir().unwrap();
    let name = unique("onerr-");
    let recipe = write_recipe(
        dir.path(),
        &name,
        Recipe {
            ssh: "timeout = \"60s\"",
            tail: "[[step]]\nname = \"mark\"\nrun = \"echo kept > /tmp/bake-mark\"\n\
                   [[step]]\nname = \"boom\"\nrun = \"echo about to fail; exit 3\"\n",
            ..Recipe::default()
        },
    );
    let out = bake(&lab, dir.path())
        .args(["build", "--plain", "--output", "json", "--on-error=abort"])
        .arg(&recipe)
        .output()
        .unwrap();
    let err = assert_exit(
        &out,
        1,
        &["FAILED", "kept the builder", "log in:", "clean up:"],
    );
    let b = one_build(&out);
    let kept = &b["kept"];
    assert!(kept.is_object(), "no kept builder in {b}\n{err}");
    let build_id = b["build_id"].as_str().unwrap().to_string();
    let instance = kept["instance_id"].as_str().unwrap();
    let ssh = kept["ssh_command"].as_str().unwrap();
    let key = kept["key_file"].as_str().unwrap();
    let known = kept["known_hosts_file"].as_str().unwrap();
    assert!(err.contains(ssh), "stderr should print {ssh}:\n{err}");
    assert!(
        kept["address"].as_str().unwrap().starts_with("127."),
        "network rule: {kept}"
    );
    assert!(
        Path::new(key).starts_with(dir.path().join("state")),
        "{key} not under the state directory"
    );
    let mode = std::fs::metadata(key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "key file mode {mode:o}");
    assert!(
        ssh.contains("StrictHostKeyChecking=yes") && ssh.contains(known),
        "{ssh}"
    );

    // Kept: the instance, its key pair and security group; still running.
    let left = lab.leftovers(&name);
    assert!(
        left.iter()
            .any(|l| l.starts_with(&format!("instance {instance} (running"))),
        "{left:?}"
    );
    assert!(left.iter().any(|l| l.starts_with("key pair ")), "{left:?}");
    assert!(
        left.iter().any(|l| l.starts_with("security group ")),
        "{left:?}"
    );

    // The printed command, run as printed (the real ssh, loopback, pinned host key only).
    let probe = sh(&format!(
        "{ssh} -o BatchMode=yes -o ConnectTimeout=10 cat /tmp/bake-mark"
    ));
    assert!(probe.status.success(), "ssh failed: {}", stderr(&probe));
    assert_eq!(
        stdout(&probe).trim(),
        "kept",
        "the first step's work is there"
    );
    // The pin is real: another host key is refused.
    let wrong = dir.path().join("wrong_known_hosts");
    let other = ssh_keygen(&dir.path().join("other"));
    let addr = kept["address"].as_str().unwrap();
    std::fs::write(&wrong, format!("{addr} {other}")).unwrap();
    let refused = sh(&format!(
        "{} -o BatchMode=yes -o ConnectTimeout=10 true",
        ssh.replace(known, wrong.to_str().unwrap())
    ));
    assert_eq!(refused.status.code(), Some(255), "{}", stderr(&refused));

    // A plain gc lists it; gc --yes for this build removes everything, key files too.
    let list = bake(&lab, dir.path()).arg("gc").output().unwrap();
    assert!(stdout(&list).contains(&build_id), "{}", stdout(&list));
    assert!(stdout(&list).contains("kept to debug"), "{}", stdout(&list));
    let listed = bake(&lab, dir.path())
        .args(["gc", "--output", "json", "--build-id", &build_id])
        .output()
        .unwrap();
    let listed = json(&listed);
    assert_eq!(listed["builds"].as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed["builds"][0]["kept"], true, "{listed}");
    assert_eq!(listed["builds"][0]["state"], "dead", "{listed}");
    let cleanup = kept["cleanup_command"].as_str().unwrap();
    assert!(
        cleanup.contains(&format!("--build-id {build_id}")),
        "{cleanup}"
    );
    let gc = bake(&lab, dir.path())
        .args(["gc", "--yes", "--build-id", &build_id])
        .output()
        .unwrap();
    assert!(gc.status.success(), "{}\n{}", stdout(&gc), stderr(&gc));
    assert_eq!(
        leftovers_of_build(&lab.env, &build_id),
        Vec::<String>::new()
    );
    lab.assert_no_leftovers(&name, "after bake gc --yes");
    assert!(!Path::new(key).exists(), "gc leaves the key file");
}

#[test]
fn a_failure_before_the_builder_is_reachable_cleans_up_even_with_abort() {
    let lab = Lab::new();
    let dir = tempfile::tempdir().unwrap();
    let name = unique("onerr-");
    // Nothing listens on port 2: the build fails at connect, before the builder is reachable.
    let recipe = write_recipe(
        dir.path(),
        &name,
        Recipe {
            ssh: "timeout = \"5s\"\nport = 2",
            tail: "[[step]]\nname = \"never\"\nrun = \"true\"\n",
            ..Recipe::default()
        },
    );
    let out = bake(&lab, dir.path())
        .args(["build", "--plain", "--output", "json", "--on-error=abort"])
        .arg(&recipe)
        .output()
        .unwrap();
    let err = assert_exit(&out, 1, &["FAILED"]);
    let b = one_build(&out);
    assert!(b.get("kept").is_none(), "{b}\n{err}");
    lab.assert_no_leftovers(&name, "nothing kept before the builder is reachable");
}

#[test]
fn ask_on_a_terminal_retries_the_failed_step_and_the_build_goes_on() {
    let lab = Lab::new();
    let dir = tempfile::tempdir().unwrap();
    let name = unique("onerr-");
    let recipe = write_recipe(
        dir.path(),
        &name,
        Recipe {
            ssh: "timeout = \"60s\"",
            tail: "[[step]]\nname = \"flaky\"\n\
                   run = \"test -e /tmp/once || { touch /tmp/once; echo first try fails; exit 1; }\"\n",
            ..Recipe::default()
        },
    );
    // script(1) gives bake a terminal; the answers wait in it until bake reads them ("x" is
    // not an answer: asked again).
    let bake_cmd = format!(
        "{} build --plain --on-error=ask {}",
        env!("CARGO_BIN_EXE_bake"),
        recipe.display()
    );
    let base = bake(&lab, dir.path());
    let mut script = Command::new("script");
    script.env_clear();
    for (k, v) in base.get_envs() {
        if let Some(v) = v {
            script.env(k, v);
        }
    }
    script
        .args(["-qec", &bake_cmd, "/dev/null"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut p = script.spawn().unwrap();
    {
        use std::io::Write;
        p.stdin.take().unwrap().write_all(b"x\nr\n").unwrap();
    }
    let out = p.wait_with_output().unwrap();
    let all = format!("{}{}", stdout(&out), stderr(&out));
    assert!(out.status.success(), "{all}");
    assert_eq!(all.matches("[r]etry the step?").count(), 2, "{all}");
    assert!(all.contains("retrying step flaky"), "{all}");
    assert!(all.contains("step flaky: exit 0"), "{all}");
    assert_eq!(lab.images_of(&name).len(), 1, "{all}");
    lab.assert_no_leftovers(&name, "the retried build cleans up as always");
}
