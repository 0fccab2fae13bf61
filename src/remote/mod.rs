//! Talking to a builder instance: uploads and provisioning steps.
//!
//! The build pipeline sees one interchangeable [`any::Communicator`]; SSH ([`ssh`]) and SSM
//! ([`ssm`]) are two implementations of the same operations, so cleanup, fingerprints and
//! output stay one pipeline. The two never import each other: what both send (tar streams, the
//! plans flattened into builder paths, the step shell, hash verification) is in `transfer`.
//! This file holds their shared interface: step outcomes and errors.

pub mod any;
pub mod ssh;
pub mod ssm;
pub(crate) mod transfer;

use std::convert::Infallible;
use std::time::Duration;

use crate::aws::AwsError;
use crate::retry::{PollError, Throttle};

/// The result of running one step to completion (successfully or not).
#[derive(Debug, Clone)]
pub struct StepOutcome {
    pub exit_status: Option<u32>,
    /// Last lines of combined output, for error messages.
    pub tail: Vec<String>,
    /// The connection dropped (expected for reboot steps).
    pub disconnected: bool,
    pub duration: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum CommError {
    #[error(
        "host key of {addr} does not match the key bake gave the builder (expected {expected}, got {got}); refusing to connect"
    )]
    HostKeyMismatch {
        addr: String,
        expected: String,
        got: String,
    },
    #[error("could not connect to {addr} within {timeout:?}: {last}")]
    ConnectTimeout {
        addr: String,
        timeout: Duration,
        last: String,
    },
    #[error("authentication as {user} on {addr} was refused")]
    AuthRefused { addr: String, user: String },
    #[error("upload of {path} failed: {reason}")]
    Upload { path: String, reason: String },
    #[error("checksum mismatch for {path} on the builder (local {local}, remote {remote})")]
    Checksum {
        path: String,
        local: String,
        remote: String,
    },
    #[error("step {step} timed out after {timeout:?}")]
    StepTimeout { step: String, timeout: Duration },
    /// An SSH request (channel, exec, data) failed on the connection.
    #[error("{op}: {source}")]
    Ssh {
        op: String,
        #[source]
        source: Box<russh::Error>,
    },
    /// The SFTP session could not be started or a request on it failed.
    #[error("{op}: {source}")]
    Sftp {
        op: String,
        #[source]
        source: Box<russh_sftp::client::error::Error>,
    },
    /// An AWS call of the SSM communicator failed; kept whole so throttling stays visible.
    #[error(transparent)]
    Aws(#[from] AwsError),
    /// Staging an upload in S3 failed.
    #[error("upload of {what} failed: staging in S3: {source}")]
    Staging {
        what: String,
        #[source]
        source: Box<AwsError>,
    },
    /// A helper task of the communicator (building a bundle …) died.
    #[error("{what}: {source}")]
    Task {
        what: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
    #[error("the builder did not run a basic shell command: {stderr}")]
    NoShell { stderr: String },
    #[error("a first command on {instance} did not succeed: {stderr}")]
    FirstCommand { instance: String, stderr: String },
    #[error("waiting for the builder to reboot: {source}")]
    Reboot {
        #[source]
        source: PollError<Infallible>,
    },
    #[error("{what}: Systems Manager refused the command on {instance}: {last}")]
    CommandRefused {
        what: String,
        instance: String,
        last: String,
    },
    /// `status`: SSM's status and its details, e.g. `Failed (Failed)`.
    #[error("{what}: command {command_id} ended {status}{}", stderr_text(.stderr))]
    CommandEnded {
        what: String,
        command_id: String,
        status: String,
        stderr: String,
    },
}

fn stderr_text(stderr: &str) -> String {
    if stderr.is_empty() {
        String::new()
    } else {
        format!(": {}", stderr.trim())
    }
}

impl CommError {
    /// The service behind the communicator is throttling us (SSM or S3): wait, do not fail.
    pub fn is_throttling(&self) -> bool {
        match self {
            CommError::Aws(e) => e.is_throttling(),
            CommError::Staging { source, .. } => source.is_throttling(),
            _ => false,
        }
    }
}

impl Throttle for CommError {
    fn is_throttling(&self) -> bool {
        CommError::is_throttling(self)
    }
}
