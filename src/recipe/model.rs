//! The validated, typed recipe every other module consumes.
//!
//! Parsing (with spans) and validation live beside this file and produce a [`Recipe`]; nothing
//! downstream ever sees raw TOML. Paths here are already resolved against the recipe's directory,
//! durations parsed, variables substituted.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// How bake talks to the builder instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CommunicatorKind {
    Ssh,
    Ssm,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Recipe {
    /// The recipe file, as given on the command line.
    pub path: PathBuf,
    /// Directory relative paths in the recipe are resolved against.
    pub dir: PathBuf,
    pub name: String,
    pub description: Option<String>,
    pub communicator: CommunicatorKind,
    pub source: Source,
    pub builder: Builder,
    pub ssh: Ssh,
    pub ssm: Option<Ssm>,
    pub uploads: Vec<Upload>,
    pub steps: Vec<Step>,
    /// Run on a fresh instance of the new image before it is published.
    pub tests: Vec<Test>,
    pub image: Image,
    pub deploy: Option<Deploy>,
    /// Values (from variables marked sensitive) that must never appear in output.
    pub secrets: Vec<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub enum Source {
    Ami(String),
    Filter(SourceFilter),
}

/// Newest image matching every given criterion wins.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SourceFilter {
    pub owners: Vec<String>,
    pub name: Option<String>,
    pub architecture: Option<String>,
    /// Extra EC2 DescribeImages filters (name -> values).
    pub filters: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Builder {
    pub instance_type: String,
    pub subnet_id: Option<String>,
    /// Existing security groups; when empty bake creates a temporary one.
    pub security_group_ids: Vec<String>,
    /// Sources allowed to reach the SSH port of a temporary security group. Empty means "the
    /// narrowest sensible": the VPC's own CIDR block.
    pub ssh_ingress_cidrs: Vec<String>,
    pub iam_instance_profile: Option<String>,
    /// User data (already read from `user_data_file` if that was used).
    pub user_data: Option<String>,
    pub associate_public_ip: Option<bool>,
    pub run_tags: BTreeMap<String, String>,
    pub root_volume: RootVolume,
    /// The builder powers itself off (and is terminated) this long after boot unless bake
    /// disarms it first: a builder whose bake died stops costing money. Default 2h.
    pub max_lifetime: Duration,
    pub imds: Imds,
}

/// Instance metadata service on the builder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Imds {
    /// IMDSv2 only (`HttpTokens=required`).
    #[default]
    V2,
    /// IMDSv1 allowed too (`HttpTokens=optional`), for old tools in provisioning steps.
    V1Allowed,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RootVolume {
    pub size_gb: Option<u32>,
    pub volume_type: Option<String>,
    pub encrypted: Option<bool>,
    pub kms_key_id: Option<String>,
    pub iops: Option<u32>,
    pub throughput: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SshInterface {
    PrivateIp,
    PublicIp,
    PrivateDns,
    PublicDns,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Ssh {
    pub username: String,
    pub port: u16,
    pub interface: SshInterface,
    /// How long to keep trying to connect once the instance runs.
    pub timeout: Duration,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Ssm {
    /// S3 bucket uploads are staged in.
    pub bucket: String,
    pub prefix: String,
    /// Optional S3 location for full command output (the API truncates at 24,000 chars).
    pub output_bucket: Option<String>,
    /// How long to wait for the instance to come online with SSM.
    pub timeout: Duration,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Upload {
    /// Absolute local path (file or directory).
    pub source: PathBuf,
    pub is_dir: bool,
    /// Absolute path on the builder. For a directory: the directory the contents land in.
    pub destination: String,
    /// File mode for uploaded files (directories get it with x bits added where r is set);
    /// None keeps the local mode.
    pub mode: Option<u32>,
    /// `user[:group]` to chown to after upload; None leaves root:root.
    pub owner: Option<String>,
    /// The step this upload is made just before (`before = "<step name>"`); None: before the
    /// first step. Only the steps from that one on need it, so a change to it leaves the
    /// checkpoints of earlier steps valid.
    pub before: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub enum StepBody {
    /// Inline shell.
    Run(String),
    /// A local script file (absolute path); its bytes are part of the fingerprint.
    Script(PathBuf),
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Step {
    pub name: String,
    pub body: StepBody,
    pub sudo: bool,
    pub env: BTreeMap<String, String>,
    pub workdir: Option<String>,
    pub timeout: Duration,
    /// Extra attempts after a failure.
    pub retries: u32,
    /// The step reboots the builder: a dropped connection is expected, and bake reconnects
    /// before the next step.
    pub reboot: bool,
    /// After this step bake images the running builder (no reboot) as a checkpoint; a later
    /// build whose inputs up to here are unchanged starts from that image.
    pub checkpoint: bool,
}

/// A `[[test]]`: run like a step (never `reboot`) on an instance launched from the new image;
/// it passes when it exits 0 and its output matches `expect_output`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Test {
    pub step: Step,
    /// A regex (regex-lite syntax) the last lines of output must match.
    pub expect_output: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Image {
    /// Template with `{recipe}`, `{hash}`, `{short_hash}`, `{timestamp}`, `{date}`.
    pub name: String,
    pub description: Option<String>,
    pub tags: BTreeMap<String, String>,
    pub snapshot_tags: BTreeMap<String, String>,
    pub distribution: Distribution,
}

/// Where the image goes after it is made: copies to other regions, who may launch it, when it
/// is deprecated, and the SSM parameter naming it. The default distributes nowhere.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Distribution {
    /// Regions to copy to, besides the build region, each with the recipe position
    /// (`line:col`) it was written at: the build region is known only once AWS
    /// configuration is loaded, and listing it is refused there, pointing here.
    pub regions: Vec<(String, String)>,
    pub deprecate_after: Option<Duration>,
    pub deregistration_protection: bool,
    /// `v2.0`: instances launched from the image require IMDSv2.
    pub imds_support: Option<String>,
    /// Template with `{recipe}`; set to the AMI id in every region once all are available.
    pub ssm_parameter: Option<String>,
    pub share: Share,
    /// KMS key per copy region: the copy is encrypted with it.
    pub kms: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Share {
    pub accounts: Vec<String>,
    pub organizations: Vec<String>,
    pub organizational_units: Vec<String>,
    pub public: bool,
    /// Snapshots get createVolumePermission for the same accounts.
    pub snapshots: bool,
    /// With `public` and `snapshots`: the snapshots get createVolumePermission `all` too (the
    /// only way bake makes a snapshot public).
    pub public_snapshots: bool,
}

impl Distribution {
    pub fn region_names(&self) -> Vec<String> {
        self.regions.iter().map(|(r, _)| r.clone()).collect()
    }

    /// Anything to do after the image exists in the build region.
    pub fn is_empty(&self) -> bool {
        self.regions.is_empty()
            && self.deprecate_after.is_none()
            && !self.deregistration_protection
            && self.imds_support.is_none()
            && self.ssm_parameter.is_none()
            && self.share.accounts.is_empty()
            && self.share.organizations.is_empty()
            && self.share.organizational_units.is_empty()
            && !self.share.public
    }
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Deploy {
    pub asg: Option<String>,
    pub min_healthy_percentage: Option<i32>,
    pub max_healthy_percentage: Option<i32>,
    pub instance_warmup: Option<Duration>,
    pub skip_matching: Option<bool>,
    pub checkpoint_percentages: Vec<i32>,
    pub checkpoint_delay: Option<Duration>,
    pub auto_rollback: Option<bool>,
    pub keep_versions: Option<u32>,
}
