//! The dead-man switch, and what bake removes from the builder before imaging.
//!
//! A builder is launched with `InstanceInitiatedShutdownBehavior=terminate` and a user-data
//! script that powers it off `builder.max_lifetime` after boot (a transient systemd timer where
//! systemd runs, a background `sleep` elsewhere; both live in `/run` only, so neither can be
//! baked into the image). Bake disarms it just before it stops the builder for imaging; if bake
//! died instead, the builder powers itself off and EC2 terminates it, so it stops costing money
//! by itself. (Bake's own StopInstances is not instance-initiated, so the terminate behaviour
//! never bites it; the behaviour is an attribute of the instance, not of the image.) Transient
//! timers do not survive a reboot, so bake re-arms the switch with the time left after every
//! reboot step.

const UNIT: &str = "bake-dead-man";
const PID_FILE: &str = "/run/bake-dead-man.pid";
const DISARMED: &str = "/run/bake-dead-man.disarmed";

/// A root shell script that arms the switch to power off after `secs`.
pub fn arm_script(secs: u64) -> String {
    let secs = secs.max(1);
    format!(
        "#!/bin/sh\n\
         # bake dead-man switch: power this builder off after {secs}s unless bake disarms it first\n\
         [ -e {DISARMED} ] && exit 0\n\
         T={secs}\n\
         if [ -d /run/systemd/system ] && command -v systemd-run >/dev/null 2>&1 &&\n   \
           systemd-run --quiet --unit={UNIT} --on-active=\"${{T}}s\" --timer-property=AccuracySec=1s \
         /bin/sh -c 'systemctl poweroff || poweroff' 2>/dev/null; then\n  exit 0\n\
         fi\n\
         nohup /bin/sh -c \"sleep $T; [ -e {DISARMED} ] || poweroff || shutdown -h now || halt -p\" \
         >/dev/null 2>&1 &\n\
         echo $! > {PID_FILE}\n"
    )
}

/// A root shell script that disarms the switch (and keeps a late user-data run from arming it).
fn disarm() -> String {
    format!(
        ": > {DISARMED} 2>/dev/null || true\n\
         systemctl stop {UNIT}.timer {UNIT}.service >/dev/null 2>&1 || true\n\
         if [ -f {PID_FILE} ]; then kill \"$(cat {PID_FILE})\" 2>/dev/null || true; rm -f {PID_FILE}; fi\n"
    )
}

/// What runs as root on the builder after the last step, before it is stopped for imaging:
/// disarm the dead-man switch, remove the temporary authorized key (`key_blob`: the base64
/// field of the public key; SSH only) from the login user's `authorized_keys`, and remove
/// cloud-init's copies of this builder's user data (they carry bake's host key and the
/// recipe's user data).
///
/// No `sync`: the final image is made from a stopped builder, and the OS flushes its disks as
/// it shuts down (a checkpoint, made from a running builder, flushes in its own freeze
/// script). An explicit flush here only moved that write-back in front of StopInstances: 1.9 s
/// per GiB uploaded, measured on the lab (benches/README.md, the 1 GiB build).
pub fn tidy_script(user: &str, key_blob: Option<&str>, instance_id: &str) -> String {
    use crate::remote::transfer::script::shell_quote;
    let mut s = String::from("# bake: what bake put on the builder stays out of the image\n");
    s.push_str(&disarm());
    if let Some(blob) = key_blob.filter(|b| !b.is_empty()) {
        s.push_str(&format!(
            "U={u}\nK={k}\nH=$(getent passwd \"$U\" | cut -d: -f6)\nf=\"$H/.ssh/authorized_keys\"\n\
             if [ -n \"$H\" ] && [ -f \"$f\" ] && grep -qF \"$K\" \"$f\"; then\n  \
               grep -vF \"$K\" \"$f\" > \"$f.bake-tmp\" || true\n  \
               cat \"$f.bake-tmp\" > \"$f\"\n  rm -f \"$f.bake-tmp\"\nfi\n",
            u = shell_quote(user),
            k = shell_quote(blob),
        ));
    }
    s.push_str(&format!(
        "d=/var/lib/cloud/instances/{iid}\n\
         if [ -d \"$d\" ]; then\n  \
           [ \"$(readlink /var/lib/cloud/instance 2>/dev/null)\" = \"$d\" ] && rm -f /var/lib/cloud/instance\n  \
           rm -rf -- \"$d\"\nfi\n",
        iid = shell_quote(instance_id),
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn arming_then_disarming_under_sh_leaves_nothing_running() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        // Same scripts, paths moved into a temp dir and `poweroff` replaced by a marker.
        let fix = |s: String| {
            s.replace("/run/", &format!("{d}/"))
                .replace("poweroff ||", &format!("touch {d}/off ||"))
                .replace("[ -d /run/systemd/system ]", "false")
                .replace("[ -d {d}/systemd/system ]", "false")
        };
        let arm = fix(arm_script(1));
        let st = std::process::Command::new("sh")
            .arg("-c")
            .arg(&arm)
            .status()
            .unwrap();
        assert!(st.success());
        assert!(std::path::Path::new(&format!("{d}/bake-dead-man.pid")).exists());
        let st = std::process::Command::new("sh")
            .arg("-c")
            .arg(fix(disarm()))
            .status()
            .unwrap();
        assert!(st.success());
        std::thread::sleep(Duration::from_millis(1500));
        assert!(
            !std::path::Path::new(&format!("{d}/off")).exists(),
            "powered off after disarm"
        );
        // Arming after a disarm (a late user-data run) does nothing.
        let st = std::process::Command::new("sh")
            .arg("-c")
            .arg(&arm)
            .status()
            .unwrap();
        assert!(st.success());
        assert!(!std::path::Path::new(&format!("{d}/bake-dead-man.pid")).exists());
    }

    #[test]
    fn an_armed_switch_fires() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        let arm = arm_script(1)
            .replace("/run/", &format!("{d}/"))
            .replace("[ -d /run/systemd/system ]", "false")
            .replace("poweroff ||", &format!("touch {d}/off ||"));
        let arm = arm.replace(&format!("[ -d {d}/systemd/system ]"), "false");
        assert!(
            std::process::Command::new("sh")
                .arg("-c")
                .arg(&arm)
                .status()
                .unwrap()
                .success()
        );
        let off = std::path::Path::new(&d).join("off");
        let r = crate::retry::poll(
            crate::retry::Backoff::AWS.with_timeout(Duration::from_secs(10)),
            |_| async {
                if off.exists() {
                    crate::retry::Poll::Ready(())
                } else {
                    crate::retry::Poll::<(), ()>::Pending("not yet".into())
                }
            },
        );
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(r)
            .expect("the switch never fired");
    }
}
