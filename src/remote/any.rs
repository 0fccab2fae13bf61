//! The communicator the build talks to, whichever transport the recipe chose. An enum rather
//! than a trait object: there are exactly two transports and async methods stay plain.

use super::ssh::SshCommunicator;
use super::ssm::{self, SsmCommunicator, StagedObjects};
use super::{CommError, StepOutcome};
use crate::plan::UploadPlan;
use crate::recipe::model::{CommunicatorKind, Recipe, Step};

pub enum Communicator {
    Ssh(SshCommunicator),
    Ssm(SsmCommunicator),
}

impl Communicator {
    /// What the communicator the recipe chose will leave outside the builder (SSM: its S3
    /// staging prefixes; SSH: nothing), known before it is connected so that the build can
    /// register the removal before anything is staged.
    pub fn staged_objects(recipe: &Recipe, build_id: &str) -> Vec<StagedObjects> {
        match (recipe.communicator, recipe.ssm.as_ref()) {
            (CommunicatorKind::Ssm, Some(settings)) => ssm::staged_objects(settings, build_id),
            _ => Vec::new(),
        }
    }

    pub async fn upload(&self, plans: &[UploadPlan]) -> Result<(), CommError> {
        match self {
            Communicator::Ssh(c) => c.upload(plans).await,
            Communicator::Ssm(c) => c.upload(plans).await,
        }
    }

    pub async fn run(&self, step: &Step, script: &str) -> Result<StepOutcome, CommError> {
        match self {
            Communicator::Ssh(c) => c.run(step, script).await,
            Communicator::Ssm(c) => c.run(step, script).await,
        }
    }

    /// Waits until the current session has dropped (the builder went down), so a reboot
    /// requested through the API is not mistaken for done by talking to the old session.
    pub async fn wait_disconnected(&self, timeout: std::time::Duration) -> Result<(), CommError> {
        match self {
            Communicator::Ssh(c) => {
                let r = crate::retry::poll(
                    crate::retry::Backoff::AWS
                        .with_timeout(timeout)
                        .with_max(std::time::Duration::from_millis(500)),
                    |_| async {
                        if c.is_closed() {
                            crate::retry::Poll::Ready(())
                        } else {
                            crate::retry::Poll::<(), std::convert::Infallible>::Pending(
                                "the builder has not gone down yet".into(),
                            )
                        }
                    },
                )
                .await;
                r.map_err(|source| CommError::Reboot { source })
            }
            Communicator::Ssm(c) => c.wait_rebooted(timeout).await,
        }
    }

    /// Re-establishes the session after the builder rebooted.
    pub async fn reconnect(&mut self) -> Result<(), CommError> {
        match self {
            Communicator::Ssh(c) => c.reconnect().await,
            Communicator::Ssm(c) => c.reconnect().await,
        }
    }

    pub async fn close(self) {
        match self {
            Communicator::Ssh(c) => c.close().await,
            Communicator::Ssm(c) => c.close().await,
        }
    }
}
