//! SSH communicator: everything bake does on a builder over exactly one SSH connection.
//!
//! The builder's host key is known in advance (bake generated it and gave it to the instance),
//! so it is pinned: any other key is refused at once, never trusted on first use. Uploads and
//! steps are channels on the one connection:
//!
//! - [`connect`]: TCP + handshake + public-key auth, retried with [`crate::retry::poll`] while
//!   the builder boots.
//! - [`upload`]: small files, directories and symlinks travel as one tar stream into
//!   `tar -x` on the builder; large files stream raw into a temp file that is renamed into
//!   place once its hash matches. Every file's sha256 is checked on the builder.
//! - [`exec`]: provisioning steps, with live line-by-line output and a timeout that kills the
//!   remote process group.
//!
//! SFTP is not the default: a raw byte stream over an exec channel has no per-request round
//! trips, which is what makes thousands of small files cheap and a large file as fast as the
//! cipher allows. Pipelined SFTP for large files ([`sftp`], as root via `sudo -n sftp-server`)
//! is implemented and measured slower than the raw stream (numbers in [`upload`]); one
//! constant, `sftp::LARGE_FILES`, switches large files over to it.

mod connect;
mod exec;
mod sftp;
mod upload;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use russh::client::Handle;
use russh::keys::{PrivateKey, PublicKey};

use super::{CommError, StepOutcome};
use crate::plan::UploadPlan;
use crate::recipe::model::Step;
use crate::ui::SharedSink;

/// Where and how to reach one builder.
#[derive(Clone)]
pub struct SshTarget {
    /// IP address or host name.
    pub addr: String,
    pub port: u16,
    pub user: String,
    /// The client key, held in memory only.
    pub key: Arc<PrivateKey>,
    /// The builder's host key, pinned: nothing else is accepted.
    pub host_key: PublicKey,
    /// Total time to keep trying to connect (the builder may still be booting).
    pub timeout: Duration,
}

impl std::fmt::Debug for SshTarget {
    // Hand-written so the private key can never end up in a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshTarget")
            .field("addr", &self.addr)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("host_key", &connect::fingerprint(&self.host_key))
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl SshTarget {
    fn endpoint(&self) -> String {
        if self.addr.contains(':') {
            format!("[{}]:{}", self.addr, self.port)
        } else {
            format!("{}:{}", self.addr, self.port)
        }
    }
}

/// What the builder offers, probed once per connection.
#[derive(Debug, Clone)]
struct Remote {
    /// Prefix that makes a command run as root ("" when we log in as root).
    sudo: &'static str,
    /// `openssl` is far faster than `sha256sum` where the CPU has SHA extensions.
    openssl: bool,
}

/// One SSH connection to one builder.
pub struct SshCommunicator {
    target: SshTarget,
    sink: SharedSink,
    handle: Handle<connect::Client>,
    remote: Remote,
}

impl SshCommunicator {
    /// Connects, retrying until `target.timeout`; a wrong host key fails at once.
    pub async fn connect(target: SshTarget, sink: SharedSink) -> Result<Self, CommError> {
        let handle = connect::connect(&target, &sink).await?;
        let remote = exec::probe(&handle).await?;
        Ok(SshCommunicator {
            target,
            sink,
            handle,
            remote,
        })
    }

    /// Uploads every plan, creating parent directories, applying mode and owner, and
    /// verifying each file's sha256 on the builder.
    pub async fn upload(&self, plans: &[UploadPlan]) -> Result<(), CommError> {
        upload::upload(&self.handle, &self.remote, &self.sink, plans).await
    }

    /// Runs one step to completion, streaming its output to the sink.
    pub async fn run(&self, step: &Step, script: &str) -> Result<StepOutcome, CommError> {
        exec::run(&self.handle, &self.remote, &self.sink, step, script).await
    }

    /// Opens a fresh connection to the same target (after a reboot), with the same pinned key.
    pub async fn reconnect(&mut self) -> Result<(), CommError> {
        let old = std::mem::replace(
            &mut self.handle,
            connect::connect(&self.target, &self.sink).await?,
        );
        // The old connection is usually dead already; this only tidies up if it is not.
        let _ = old
            .disconnect(russh::Disconnect::ByApplication, "", "en")
            .await;
        self.remote = exec::probe(&self.handle).await?;
        Ok(())
    }

    /// Whether the connection has dropped.
    pub fn is_closed(&self) -> bool {
        self.handle.is_closed()
    }

    pub async fn close(self) {
        let _ = self
            .handle
            .disconnect(russh::Disconnect::ByApplication, "", "en")
            .await;
    }
}
