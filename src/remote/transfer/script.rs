//! The builder-side shell of a step: its script rendered with env and workdir, the stub that
//! runs it from a private file, and quoting. One owner for both transports, tested under `sh`.

use crate::recipe::model::Step;

/// Renders a step as the shell script that runs on the builder (env, workdir, body). Shared by
/// every communicator so steps behave the same over SSH and SSM. It never travels on a command
/// line (sudo logs those, and `/proc/<pid>/cmdline` shows them to every local user): it is
/// written to a private file, and [`run_file`] runs that file.
pub fn step_script(step: &Step, script: &str) -> String {
    let mut cmd = String::new();
    for (k, v) in &step.env {
        cmd.push_str(&format!("export {k}={}\n", shell_quote(v)));
    }
    if let Some(dir) = &step.workdir {
        cmd.push_str(&format!("cd {} || exit 1\n", shell_quote(dir)));
    }
    cmd.push_str(&script_body(script));
    if !cmd.ends_with('\n') {
        cmd.push('\n');
    }
    cmd
}

/// The command that runs the step script in file `path` (a shell word, e.g. `"$f"`) under
/// `sh -e`, as root through `sudo` when `sudo`: the file is opened, then removed at once, so
/// it is gone whatever the script does, and only this stub shows in process lists and logs.
pub fn run_file(sudo: bool, path: &str) -> String {
    let inner = format!(
        "sh -ec {} {path}",
        shell_quote("exec 9<\"$0\" && rm -f \"$0\" && . /dev/fd/9")
    );
    if sudo {
        format!("sudo -n -E -H {inner}")
    } else {
        inner
    }
}

/// The shell text that runs a step's script. A script with its own interpreter line
/// (`#!/usr/bin/env python3`) runs as an executable file, as it would under Packer's shell
/// provisioner; anything else runs in the step's `sh -e`. The heredoc delimiter embeds the
/// script's own hash, so no line of the script can end it early.
pub fn script_body(script: &str) -> String {
    use sha2::Digest;
    let Some(interp) = script
        .strip_prefix("#!")
        .and_then(|r| r.lines().next())
        .map(str::trim)
    else {
        return script.to_string();
    };
    let delim = format!(
        "BAKE_SCRIPT_{}",
        &hex::encode(sha2::Sha256::digest(script.as_bytes()))[..20]
    );
    let nl = if script.ends_with('\n') { "" } else { "\n" };
    // Run through the named interpreter rather than executing the file, so a noexec /tmp on a
    // hardened image does not matter.
    format!(
        "__bake_f=$(mktemp)\ncat > \"$__bake_f\" <<'{delim}'\n{script}{nl}{delim}\n\
         __bake_rc=0\n{interp} \"$__bake_f\" || __bake_rc=$?\nrm -f \"$__bake_f\"\nexit $__bake_rc\n"
    )
}

/// The command that runs `script` under `sh` as root: `sudo` is the login's prefix (`sudo -n `,
/// or empty when logged in as root). The script is one quoted word, so no part of it is
/// parsed by the login shell.
pub fn as_root(sudo: &str, script: &str) -> String {
    format!("{sudo}sh -c {}", shell_quote(script))
}

/// Best effort: kills a timed-out step's whole session (process group `pid`, then anything in
/// its session) as root when sudo works (sudo steps run as root), else as the login user.
pub fn kill_session(sudo: &str, pid: u32) -> String {
    let inner = format!("kill -KILL -- -{pid} 2>/dev/null; pkill -KILL -s {pid} 2>/dev/null; true");
    if sudo.is_empty() {
        inner
    } else {
        format!("{} 2>/dev/null || {{ {inner}; }}", as_root(sudo, &inner))
    }
}

/// Runs the program at `path` (no arguments) as root: the SFTP server on its own channel.
pub fn program_as_root(sudo: &str, path: &str) -> String {
    format!("{sudo}{}", shell_quote(path))
}

/// Removes a file as root (an upload's temp file after a failed transfer).
pub fn remove_file(sudo: &str, path: &str) -> String {
    format!("{sudo}rm -f -- {}", shell_quote(path))
}

/// Single-quotes `s` for POSIX sh.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn as_root_hands_the_script_to_sh_as_one_word() {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(as_root("", r#"x="it's"; printf '%s|' "$x" "$0""#))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "it's|sh|");
    }

    #[test]
    fn kill_session_kills_the_whole_process_group() {
        let mut child = std::process::Command::new("setsid")
            .args(["sh", "-c", "sleep 30 & sleep 30; wait"])
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let st = std::process::Command::new("sh")
            .arg("-c")
            .arg(kill_session("", child.id()))
            .status()
            .unwrap();
        assert!(st.success());
        let t0 = std::time::Instant::now();
        child.wait().unwrap();
        assert!(t0.elapsed() < Duration::from_secs(5), "the group survived");
    }

    #[test]
    fn a_step_runs_from_a_file_that_is_gone_once_it_starts() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("s");
        let step = Step {
            name: "s".into(),
            body: crate::recipe::model::StepBody::Run(String::new()),
            sudo: false,
            env: [("SECRET".to_string(), "x y".to_string())].into(),
            workdir: Some("/".into()),
            timeout: Duration::from_secs(5),
            retries: 0,
            reboot: false,
            checkpoint: false,
        };
        let text = step_script(
            &step,
            "echo \"$SECRET $(pwd)\"; test ! -e \"$0\" && echo gone; exit 3",
        );
        std::fs::write(&f, text).unwrap();
        let cmd = run_file(false, &shell_quote(&f.display().to_string()));
        assert!(!cmd.contains("SECRET"), "{cmd}");
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(&cmd)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(3),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), "x y /\ngone\n");
        assert!(!f.exists());
    }

    #[test]
    fn plain_scripts_pass_through_and_shebang_scripts_run_their_interpreter() {
        assert_eq!(script_body("echo hi\n"), "echo hi\n");
        let body = script_body("#!/usr/bin/env python3\nprint('hi')\n");
        assert!(
            body.contains("/usr/bin/env python3 \"$__bake_f\""),
            "{body}"
        );
        assert!(body.contains("print('hi')\nBAKE_SCRIPT_"), "{body}");
        let out = std::process::Command::new("sh")
            .arg("-ec")
            .arg(&body)
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n");
        let failing = script_body("#!/bin/sh\nexit 5");
        let st = std::process::Command::new("sh")
            .arg("-ec")
            .arg(&failing)
            .status()
            .unwrap();
        assert_eq!(st.code(), Some(5));
    }
}
