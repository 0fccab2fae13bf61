//! AWS access: clients built once from the standard configuration chain and passed in (never
//! global), plus the one error type every AWS call is mapped to.
//!
//! bake knows nothing of the lab: it honours `AWS_ENDPOINT_URL`, `AWS_REGION`, profiles, SSO and
//! the rest of the standard chain exactly like any SDK client.
//!
//! ## Retries and throttling
//!
//! The SDK's default (standard mode, 3 attempts, backoff from 1 s) gives up after ~2.2 s when
//! EC2 throttles: real throttling is bursty (an empty bucket refills at a few tokens per
//! second), so three quick attempts often all land inside one burst. The EC2 client therefore
//! uses standard mode with [`EC2_MAX_ATTEMPTS`] attempts and backoff capped at
//! [`EC2_MAX_BACKOFF`] (about a minute of retrying in the worst case), and its own retry
//! partition with a larger retry quota ([`EC2_RETRY_QUOTA`]): the default quota (500 tokens, 5
//! per throttled retry) is shared by every client of a region in the process and would be spent
//! by `-j 20` builds in a few bursts, after which every error fails at once.
//!
//! Adaptive mode was considered and not chosen: its client-side limiter is one rate for the
//! whole client, so throttling of RunInstances would also slow down every Describe, while EC2
//! keeps a bucket per action. bake paces itself per action instead ([`budget`]), shared
//! by every build of the process, so `-j N` does not throttle itself. `AWS_RETRY_MODE` and
//! `AWS_MAX_ATTEMPTS`, when set, win over these choices.
//!
//! Throttling that outlasts the SDK's retries, and EC2's eventual consistency (a new id that
//! is "not found" for a few seconds), are waited out by the callers with [`crate::retry`].

pub mod budget;
pub mod ec2;
pub mod s3;

use std::sync::Arc;
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_sdk_ec2::config::retry::{RetryConfig, RetryPartition, TokenBucket};
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};

use budget::{Budgeted, RateBudget};

/// Attempts per EC2 call (the SDK's default is 3).
pub const EC2_MAX_ATTEMPTS: u32 = 8;
/// Ceiling of the SDK's exponential backoff between attempts.
pub const EC2_MAX_BACKOFF: Duration = Duration::from_secs(20);
/// Retry quota of bake's EC2 retry partition (the SDK's default is 500).
pub const EC2_RETRY_QUOTA: usize = 10_000;

/// The clients a command needs, built from one loaded configuration.
#[derive(Clone, Debug)]
pub struct Clients {
    pub ec2: aws_sdk_ec2::Client,
    pub ssm: aws_sdk_ssm::Client,
    pub autoscaling: aws_sdk_autoscaling::Client,
    pub s3: aws_sdk_s3::Client,
    pub region: String,
    /// The client-side request budget every EC2 call of this process goes through.
    pub budget: Arc<RateBudget>,
    /// The loaded configuration, for the same clients in another region.
    conf: Arc<aws_config::SdkConfig>,
}

impl Clients {
    /// Loads the standard AWS configuration (env, profile, SSO, IMDS …), optionally overriding
    /// region and profile from the command line.
    pub async fn load(region: Option<&str>, profile: Option<&str>) -> Result<Self, AwsError> {
        // Every call names bake and its version in its user agent (`app/bake-0.1.0`), so
        // CloudTrail and support can tell bake's calls apart.
        let app = aws_config::AppName::new(concat!("bake-", env!("CARGO_PKG_VERSION")))
            .expect("a valid app name");
        let mut loader = aws_config::defaults(BehaviorVersion::latest()).app_name(app);
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
        let budget = Arc::new(RateBudget::new());
        Ok(Clients {
            ec2: aws_sdk_ec2::Client::from_conf(ec2_config(&conf, budget.clone())),
            ssm: aws_sdk_ssm::Client::new(&conf),
            autoscaling: aws_sdk_autoscaling::Client::new(&conf),
            s3: aws_sdk_s3::Client::from_conf(s3_conf),
            region,
            budget,
            conf: Arc::new(conf),
        })
    }

    /// The same clients (credentials, endpoints, profile) in `region`, with their own request
    /// budget: EC2 throttles per region.
    pub fn in_region(&self, region: &str) -> Clients {
        let conf = self
            .conf
            .to_builder()
            .region(aws_config::Region::new(region.to_string()))
            .build();
        let s3_conf = aws_sdk_s3::config::Builder::from(&conf)
            .force_path_style(true)
            .build();
        let budget = Arc::new(RateBudget::new());
        Clients {
            ec2: aws_sdk_ec2::Client::from_conf(ec2_config(&conf, budget.clone())),
            ssm: aws_sdk_ssm::Client::new(&conf),
            autoscaling: aws_sdk_autoscaling::Client::new(&conf),
            s3: aws_sdk_s3::Client::from_conf(s3_conf),
            region: region.to_string(),
            budget,
            conf: Arc::new(conf),
        }
    }
}

/// The EC2 client's configuration: the loaded one, with bake's retry settings (unless the
/// environment chose its own) and every request paced by `budget`.
fn ec2_config(conf: &aws_config::SdkConfig, budget: Arc<RateBudget>) -> aws_sdk_ec2::Config {
    let mut b = aws_sdk_ec2::config::Builder::from(conf);
    let env_chose = ["AWS_RETRY_MODE", "AWS_MAX_ATTEMPTS"]
        .iter()
        .any(|v| std::env::var_os(v).is_some());
    if !env_chose {
        b = b.retry_config(
            RetryConfig::standard()
                .with_max_attempts(EC2_MAX_ATTEMPTS)
                .with_max_backoff(EC2_MAX_BACKOFF),
        );
    }
    b = b.retry_partition(
        RetryPartition::custom("bake-ec2")
            .token_bucket(TokenBucket::new(EC2_RETRY_QUOTA))
            .build(),
    );
    // The HTTP client the SDK would use by default (or the configured one), behind the budget.
    let inner = conf.http_client().or_else(|| {
        aws_smithy_runtime::client::defaults::default_http_client_plugin_v2(
            BehaviorVersion::latest(),
        )
        .and_then(|p| {
            use aws_sdk_ec2::config::{RuntimeComponentsBuilder, RuntimePlugin};
            p.runtime_components(&RuntimeComponentsBuilder::new("bake"))
                .http_client()
        })
    });
    if let Some(inner) = inner {
        b = b.http_client(Budgeted::new(inner, budget));
    }
    b.build()
}

/// The error an SDK call failed with, kept whole as the source of an [`AwsError`].
pub type SdkSource = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A failed AWS call: which operation, on what, and what AWS said (code, message, request id),
/// with the SDK's own error kept as the source so the edge can show the whole chain.
#[derive(Debug, thiserror::Error)]
#[error("{op}{}: {}{message}", resource.as_ref().map(|r| format!(" ({r})")).unwrap_or_default(), code.as_ref().map(|c| format!("{c}: ")).unwrap_or_default())]
pub struct AwsError {
    pub op: &'static str,
    pub resource: Option<String>,
    // Boxed strings keep the error small enough to return by value everywhere.
    pub code: Option<Box<str>>,
    pub message: String,
    /// The `x-amzn-requestid` (or S3's `x-amz-request-id`) AWS answered with, if it answered.
    pub request_id: Option<Box<str>>,
    #[source]
    pub source: Option<SdkSource>,
}

impl AwsError {
    pub fn config(msg: &str) -> Self {
        AwsError::new("configuration", None, msg)
    }

    pub fn new(op: &'static str, resource: Option<String>, message: impl Into<String>) -> Self {
        AwsError {
            op,
            resource,
            code: None,
            message: message.into(),
            request_id: None,
            source: None,
        }
    }

    /// An error bake makes up with a service code, so callers treat it like AWS's own (a
    /// resource EC2 said exists but does not show yet is `…NotFound`).
    pub fn with_code(mut self, code: &str) -> Self {
        self.code = Some(code.into());
        self
    }

    /// A request bake could not even build or sign (a bad filter, a presigning config): no
    /// code, no request id, the SDK's error as source.
    pub fn local(
        op: &'static str,
        resource: Option<&str>,
        e: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        AwsError {
            source: Some(Box::new(e)),
            ..AwsError::new(
                op,
                resource.map(str::to_string),
                "the request could not be made",
            )
        }
    }

    /// Maps any SDK error, keeping the service's error code, the request id and the error.
    pub fn from_sdk<E, R>(op: &'static str, resource: Option<&str>, e: SdkError<E, R>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug + Send + Sync + 'static,
    {
        let code = e.code().map(Box::from);
        let request_id = request_id_of(&e);
        let message = match e.message() {
            Some(m) => m.to_string(),
            None => aws_smithy_types::error::display::DisplayErrorContext(&e).to_string(),
        };
        AwsError {
            op,
            resource: resource.map(str::to_string),
            code,
            message,
            request_id,
            source: Some(Box::new(e)),
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
            // S3 says it this way.
            "SlowDown",
        ])
    }

    /// AWS answered and said no: the call did nothing. Not so for throttling, server-side
    /// errors and calls that got no answer at all (timeouts, lost connections), after which
    /// the request may or may not have taken effect.
    pub fn is_refusal(&self) -> bool {
        match self.code.as_deref() {
            None => false,
            Some(_) if self.is_throttling() => false,
            Some(c) => !matches!(
                c,
                "InternalError"
                    | "InternalFailure"
                    | "ServiceUnavailable"
                    | "Unavailable"
                    | "RequestTimeout"
                    | "RequestTimeoutException"
            ),
        }
    }

    /// The thing is already gone: for cleanup, that is success.
    pub fn is_not_found(&self) -> bool {
        self.code.as_deref().is_some_and(|c| {
            c.ends_with(".NotFound") || c.ends_with("NotFound") || c == "InvalidAMIID.Unavailable"
        })
    }
}

/// The request id of a service error: the SDKs keep it (`x-amzn-requestid`, EC2's
/// `<RequestID>`, S3's `x-amz-request-id`) in the error metadata under `aws_request_id`.
fn request_id_of<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>) -> Option<Box<str>> {
    e.meta().extra("aws_request_id").map(Box::from)
}

impl crate::retry::Throttle for AwsError {
    fn is_throttling(&self) -> bool {
        AwsError::is_throttling(self)
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
