//! The one error a build fails with: each variant names what failed and on what, and keeps
//! the error underneath as its source (AWS, the communicator, the upload plan, a key library)
//! so the edge can print the whole chain.

use crate::aws::AwsError;
use crate::plan::PlanError;
use crate::remote::CommError;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Aws(#[from] AwsError),
    #[error(transparent)]
    Comm(#[from] CommError),
    #[error("cannot read upload: {0}")]
    Plan(#[from] PlanError),
    #[error("source AMI: {0}")]
    Source(String),
    #[error("step {step:?} failed with {status} after {attempts} attempt(s){}", tail_text(.tail))]
    StepFailed {
        step: String,
        status: String,
        attempts: u32,
        tail: Vec<String>,
    },
    /// Boxed: the error of every stage would otherwise carry its size.
    #[error("{0}")]
    TestFailed(Box<TestFailure>),
    #[error(
        "recipe {recipe} has no image with fingerprint {fingerprint} to test: run `bake build` first"
    )]
    NoImageToTest { recipe: String, fingerprint: String },
    #[error(
        "image name {name:?} is already taken in this account by {image_id} ({who}, created {created}); \
         bake never replaces or removes an image it did not make, not even with --force: \
         change [image] name (e.g. add {{timestamp}}) or deregister {image_id} yourself"
    )]
    NameTaken {
        name: String,
        image_id: String,
        who: String,
        created: String,
    },
    #[error(
        "no default VPC in {region}: set builder.subnet_id (and security_group_ids if you like)"
    )]
    NoDefaultVpc { region: String },
    #[error(
        "the builder is reached on its public address but builder.ssh_ingress_cidrs is empty: set it to \
         your egress address (e.g. [\"203.0.113.7/32\"]); bake never opens SSH to the world by default"
    )]
    NoIngress,
    #[error(
        "{instance} has no {interface} address; choose another ssh.interface or a subnet that provides one"
    )]
    NoAddress { instance: String, interface: String },
    #[error("communicator \"ssm\" needs an [ssm] section")]
    NoSsmSection,
    #[error("{what}: {source}")]
    Key {
        what: &'static str,
        #[source]
        source: russh::keys::ssh_key::Error,
    },
    #[error("copy to {region} failed: {source}")]
    Copy {
        region: String,
        #[source]
        source: Box<AwsError>,
    },
    #[error("hashing task failed: {source}")]
    Hashing {
        #[source]
        source: tokio::task::JoinError,
    },
}

fn tail_text(tail: &[String]) -> String {
    if tail.is_empty() {
        String::new()
    } else {
        format!("; last output:\n    {}", tail.join("\n    "))
    }
}

/// A `[[test]]` that failed on the instance launched from the new image.
#[derive(Debug, thiserror::Error)]
#[error("test {test:?} failed with {status} after {attempts} attempt(s) on {instance} (launched from {image}); {image_fate}{}", tail_text(.tail))]
pub struct TestFailure {
    pub test: String,
    pub status: String,
    pub attempts: u32,
    pub instance: String,
    pub image: String,
    /// What became of the image: removed, kept for inspection, or (a cache hit) left.
    pub image_fate: String,
    pub tail: Vec<String>,
}
