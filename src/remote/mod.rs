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

use std::time::Duration;

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
    #[error("{0}")]
    Protocol(String),
}
