//! The communicator the build talks to, whichever transport the recipe chose. An enum rather
//! than a trait object: there are exactly two transports and async methods stay plain.

use super::ssh::SshCommunicator;
use super::{CommError, StepOutcome, UploadPlan};
use crate::recipe::model::Step;

pub enum Communicator {
    Ssh(SshCommunicator),
}

impl Communicator {
    pub async fn upload(&self, plans: &[UploadPlan]) -> Result<(), CommError> {
        match self {
            Communicator::Ssh(c) => c.upload(plans).await,
        }
    }

    pub async fn run(&self, step: &Step, script: &str) -> Result<StepOutcome, CommError> {
        match self {
            Communicator::Ssh(c) => c.run(step, script).await,
        }
    }

    /// Re-establishes the session after the builder rebooted.
    pub async fn reconnect(&mut self) -> Result<(), CommError> {
        match self {
            Communicator::Ssh(c) => c.reconnect().await,
        }
    }

    pub async fn close(self) {
        match self {
            Communicator::Ssh(c) => c.close().await,
        }
    }
}
