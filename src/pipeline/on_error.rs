//! `--on-error`: what a failed build does with its builder. `cleanup` (the default) removes
//! everything as always; `abort` keeps the builder and what it needs to be reached (instance,
//! key pair, security group) and writes the way in to files; `ask` asks on the terminal
//! (clean up, abort, or retry the failed step).
//!
//! The builder counts as reachable from the moment its communicator connected until
//! provisioning is done (the tidy stage then removes the temporary key from the builder, so
//! there is no way in left to offer). A failure outside that window always cleans up.
//! The temporary private key and the pinned host key are written beside the build's journal
//! entry (`<state dir>/builds/<build-id>/`), which `bake gc --yes` removes with the rest.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use russh::keys::{PrivateKey, PublicKey};
use serde::Serialize;

use super::launch::Launched;
use super::{Bake, BuildError, Undo};
use crate::recipe::model::{CommunicatorKind, Recipe, Step};
use crate::remote::any::Communicator;
use crate::remote::transfer::script::shell_quote;
use crate::ui::Ui;

/// `--on-error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Remove everything the build made (the default).
    #[default]
    Cleanup,
    /// Keep the builder and print how to reach it and how to remove it later.
    Abort,
    /// Ask on the terminal: clean up, abort, or retry the failed step.
    Ask,
}

/// What the user (or the policy) chose for a failed build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    Cleanup,
    Abort,
    Retry,
}

/// How to reach the builder while it is reachable.
#[derive(Clone)]
pub struct Access {
    pub instance_id: String,
    pub communicator: CommunicatorKind,
    pub addr: String,
    pub port: u16,
    pub user: String,
    key: Arc<PrivateKey>,
    host_key: PublicKey,
    /// When the dead-man switch powers the builder off (EC2 then terminates it).
    pub powers_off_at: jiff::Timestamp,
}

impl Access {
    pub(super) fn of(builder: &Launched, recipe: &Recipe) -> Access {
        let left = recipe
            .builder
            .max_lifetime
            .saturating_sub(builder.launched.elapsed());
        let now = jiff::Timestamp::now();
        let now = jiff::Timestamp::from_second(now.as_second()).unwrap_or(now);
        Access {
            instance_id: builder.instance_id.clone(),
            communicator: recipe.communicator,
            addr: builder.addr.clone(),
            port: recipe.ssh.port,
            user: recipe.ssh.username.clone(),
            key: builder.client_key.clone(),
            host_key: builder.host_key.clone(),
            powers_off_at: now.checked_add(left).unwrap_or(now),
        }
    }

    /// Writes the way in under `dir` (the key 0600, in a 0700 directory) and says how to use
    /// it and how to remove the builder later.
    pub fn keep(&self, dir: &Path, build_id: &str, region: &str) -> std::io::Result<Kept> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let cleanup_command = format!("bake gc --yes --region {region} --build-id {build_id}");
        let mut kept = Kept {
            build_id: build_id.to_string(),
            instance_id: self.instance_id.clone(),
            address: self.addr.clone(),
            port: self.port,
            user: self.user.clone(),
            key_file: None,
            known_hosts_file: None,
            ssh_command: None,
            ssm_command: None,
            cleanup_command,
            powers_off_at: self.powers_off_at.to_string(),
            resources: Vec::new(),
        };
        if self.communicator == CommunicatorKind::Ssm {
            kept.ssm_command = Some(format!(
                "aws ssm start-session --region {region} --target {}",
                self.instance_id
            ));
            return Ok(kept);
        }
        let key = dir.join("id_ed25519");
        let text = self
            .key
            .to_openssh(russh::keys::ssh_key::LineEnding::LF)
            .map_err(std::io::Error::other)?;
        let _ = std::fs::remove_file(&key);
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&key)?
            .write_all(text.as_bytes())?;
        let known = dir.join("known_hosts");
        std::fs::write(
            &known,
            known_hosts_line(&self.addr, self.port, &self.host_key)?,
        )?;
        kept.ssh_command = Some(ssh_command(&key, &known, self.port, &self.user, &self.addr));
        kept.key_file = Some(key);
        kept.known_hosts_file = Some(known);
        Ok(kept)
    }
}

/// A kept builder: what `--output json` carries and the text tells.
#[derive(Debug, Clone, Serialize)]
pub struct Kept {
    pub build_id: String,
    pub instance_id: String,
    pub address: String,
    pub port: u16,
    pub user: String,
    pub key_file: Option<PathBuf>,
    pub known_hosts_file: Option<PathBuf>,
    pub ssh_command: Option<String>,
    pub ssm_command: Option<String>,
    pub cleanup_command: String,
    /// RFC 3339: the dead-man switch (`builder.max_lifetime`) still powers the builder off.
    pub powers_off_at: String,
    /// What was kept (everything else of the build was removed).
    pub resources: Vec<String>,
}

/// The known_hosts line pinning `host_key` for `addr:port` (`[addr]:port` unless port 22, as
/// ssh looks it up).
pub fn known_hosts_line(addr: &str, port: u16, host_key: &PublicKey) -> std::io::Result<String> {
    let host = if port == 22 {
        addr.to_string()
    } else {
        format!("[{addr}]:{port}")
    };
    let key = host_key.to_openssh().map_err(std::io::Error::other)?;
    Ok(format!("{host} {key}\n"))
}

/// The exact command that logs in with the kept key, trusting only the pinned host key.
pub fn ssh_command(key: &Path, known: &Path, port: u16, user: &str, addr: &str) -> String {
    let q = |p: &Path| shell_word(&p.display().to_string());
    format!(
        "ssh -i {} -o IdentitiesOnly=yes -o UserKnownHostsFile={} -o StrictHostKeyChecking=yes -p {port} {}@{addr}",
        q(key),
        q(known),
        shell_word(user),
    )
}

/// `s` as one shell word, quoted only when it needs to be.
fn shell_word(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+=:@,".contains(&b));
    if plain { s.to_string() } else { shell_quote(s) }
}

/// The undos a kept builder needs left in place: its instance and the key pair and security
/// group it was launched with. Everything else (locks, half-made images, staged objects) goes.
pub fn needed_by_builder(u: &Undo) -> bool {
    matches!(
        u,
        Undo::TerminateInstance { .. }
            | Undo::DeleteKeyPair { .. }
            | Undo::DeleteSecurityGroup { .. }
    )
}

/// Asks on the terminal what to do about a failure (`retry` offered for a failed step).
/// Answers `Cleanup` when nothing can be read (stdin closed).
pub async fn ask(ui: &Ui, what: &str, retry: bool) -> Choice {
    let (prompt, allowed): (&str, &'static [char]) = if retry {
        (
            "  [c]lean up, [a]bort (keep the builder to debug it), [r]etry the step? ",
            &['c', 'a', 'r'],
        )
    } else {
        (
            "  [c]lean up, [a]bort (keep the builder to debug it)? ",
            &['c', 'a'],
        )
    };
    let (ui, what) = (ui.clone(), what.to_string());
    let answer = tokio::task::spawn_blocking(move || ui.ask(&what, prompt, allowed))
        .await
        .ok()
        .flatten();
    match answer {
        Some('a') => Choice::Abort,
        Some('r') => Choice::Retry,
        _ => Choice::Cleanup,
    }
}

impl Bake<'_> {
    /// A step, and with `--on-error=ask` the question what to do when it fails for good.
    pub(super) async fn run_step_or_ask(
        &self,
        comm: &mut Communicator,
        step: &Step,
        script: &str,
        builder: &Launched,
    ) -> Result<(), BuildError> {
        loop {
            let err = match self.run_step(comm, step, script, builder).await {
                Ok(()) => return Ok(()),
                Err(e) if self.opts.on_error != OnError::Ask => return Err(e),
                Err(e) => e,
            };
            let what = format!(
                "step {} failed: {}",
                step.name,
                self.ui.redact(&err.to_string())
            );
            match ask(self.ui, &what, true).await {
                Choice::Retry => self.ui.line(&format!("retrying step {}", step.name)),
                c => {
                    self.cleanup.decide(c);
                    return Err(err);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ssh_command_quotes_only_what_needs_it() {
        let c = ssh_command(
            Path::new("/s/builds/b-1/id_ed25519"),
            Path::new("/s p/known_hosts"),
            2222,
            "admin",
            "127.0.1.4",
        );
        assert_eq!(
            c,
            "ssh -i /s/builds/b-1/id_ed25519 -o IdentitiesOnly=yes -o UserKnownHostsFile='/s p/known_hosts' -o StrictHostKeyChecking=yes -p 2222 admin@127.0.1.4"
        );
    }

    #[test]
    fn known_hosts_brackets_a_port_other_than_22() {
        let k = PrivateKey::random(&mut rand::rng(), russh::keys::Algorithm::Ed25519).unwrap();
        let l = known_hosts_line("127.0.1.4", 22, k.public_key()).unwrap();
        assert!(l.starts_with("127.0.1.4 ssh-ed25519 "), "{l}");
        let l = known_hosts_line("127.0.1.4", 2222, k.public_key()).unwrap();
        assert!(l.starts_with("[127.0.1.4]:2222 ssh-ed25519 "), "{l}");
    }

    #[test]
    fn a_kept_builder_keeps_only_what_it_needs() {
        assert!(needed_by_builder(&Undo::instance("b", "b")));
        assert!(needed_by_builder(&Undo::key_pair("k", "b")));
        assert!(needed_by_builder(&Undo::security_group("g", "b")));
        assert!(!needed_by_builder(&Undo::image("i", "b")));
        assert!(!needed_by_builder(&Undo::ReleaseLock {
            name: "l".into(),
            build_id: "b".into()
        }));
    }
}
