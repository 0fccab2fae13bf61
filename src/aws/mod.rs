//! AWS access: clients built once from the standard configuration chain and passed in (never
//! global), plus the one error type every AWS call is mapped to.
//!
//! bake knows nothing of the lab: it honours `AWS_ENDPOINT_URL`, `AWS_REGION`, profiles, SSO and
//! the rest of the standard chain exactly like any SDK client.

pub mod ec2;

use aws_config::BehaviorVersion;
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};

/// The clients a command needs, built from one loaded configuration.
#[derive(Clone, Debug)]
pub struct Clients {
    pub ec2: aws_sdk_ec2::Client,
    pub ssm: aws_sdk_ssm::Client,
    pub autoscaling: aws_sdk_autoscaling::Client,
    pub s3: aws_sdk_s3::Client,
    pub region: String,
}

impl Clients {
    /// Loads the standard AWS configuration (env, profile, SSO, IMDS …), optionally overriding
    /// region and profile from the command line.
    pub async fn load(region: Option<&str>, profile: Option<&str>) -> Result<Self, AwsError> {
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(r) = region {
            loader = loader.region(aws_config::Region::new(r.to_string()));
        }
        if let Some(p) = profile {
            loader = loader.profile_name(p);
        }
        let conf = loader.load().await;
        let region = conf.region().map(|r| r.to_string()).ok_or_else(|| {
            AwsError::config(
                "no AWS region configured: set AWS_REGION, a profile region, or pass --region",
            )
        })?;
        // S3 through a custom endpoint (the lab, MinIO …) needs path-style addressing.
        let s3_conf = aws_sdk_s3::config::Builder::from(&conf)
            .force_path_style(true)
            .build();
        Ok(Clients {
            ec2: aws_sdk_ec2::Client::new(&conf),
            ssm: aws_sdk_ssm::Client::new(&conf),
            autoscaling: aws_sdk_autoscaling::Client::new(&conf),
            s3: aws_sdk_s3::Client::from_conf(s3_conf),
            region,
        })
    }
}

/// A failed AWS call: which operation, on what, and what AWS said.
#[derive(Debug, thiserror::Error)]
#[error("{op}{}: {}{message}", resource.as_ref().map(|r| format!(" ({r})")).unwrap_or_default(), code.as_ref().map(|c| format!("{c}: ")).unwrap_or_default())]
pub struct AwsError {
    pub op: &'static str,
    pub resource: Option<String>,
    pub code: Option<String>,
    pub message: String,
}

impl AwsError {
    pub fn config(msg: &str) -> Self {
        AwsError {
            op: "configuration",
            resource: None,
            code: None,
            message: msg.to_string(),
        }
    }

    pub fn new(op: &'static str, resource: Option<String>, message: impl Into<String>) -> Self {
        AwsError {
            op,
            resource,
            code: None,
            message: message.into(),
        }
    }

    /// Maps any SDK error, keeping the service's error code.
    pub fn from_sdk<E, R>(op: &'static str, resource: Option<&str>, e: SdkError<E, R>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug + Send + Sync + 'static,
    {
        let code = e.code().map(str::to_string);
        let message = match e.message() {
            Some(m) => m.to_string(),
            None => aws_smithy_types::error::display::DisplayErrorContext(&e).to_string(),
        };
        AwsError {
            op,
            resource: resource.map(str::to_string),
            code,
            message,
        }
    }

    pub fn code_is(&self, codes: &[&str]) -> bool {
        self.code.as_deref().is_some_and(|c| codes.contains(&c))
    }

    /// The service asked us to slow down: back off harder, don't fail.
    pub fn is_throttling(&self) -> bool {
        self.code_is(&[
            "Throttling",
            "ThrottlingException",
            "RequestLimitExceeded",
            "TooManyRequestsException",
            "RequestThrottled",
        ])
    }

    /// The thing is already gone: for cleanup, that is success.
    pub fn is_not_found(&self) -> bool {
        self.code.as_deref().is_some_and(|c| {
            c.ends_with(".NotFound") || c.ends_with("NotFound") || c == "InvalidAMIID.Unavailable"
        })
    }
}

/// Shorthand for mapping an SDK result.
pub trait Ctx<T> {
    fn ctx(self, op: &'static str, resource: Option<&str>) -> Result<T, AwsError>;
}

impl<T, E, R> Ctx<T> for Result<T, SdkError<E, R>>
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    fn ctx(self, op: &'static str, resource: Option<&str>) -> Result<T, AwsError> {
        self.map_err(|e| AwsError::from_sdk(op, resource, e))
    }
}
