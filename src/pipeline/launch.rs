//! Launching the builder: a temporary key pair (generated in memory, only the public half
//! leaves the process), a temporary security group open only to the narrowest sensible source,
//! a host key handed over in cloud-init user data so the connection can be pinned, and the
//! instance itself.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_ec2::primitives::Blob;
use aws_sdk_ec2::types::{
    BlockDeviceMapping, EbsBlockDevice, HttpTokensState, IamInstanceProfileSpecification,
    InstanceMetadataEndpointState, InstanceMetadataOptionsRequest, InstanceStateName, InstanceType,
    IpPermission, IpRange, ResourceType, ShutdownBehavior, VolumeType,
};
use russh::keys::{Algorithm, PrivateKey, PublicKey};

use super::cleanup::Undo;
use super::source::SourceImage;
use super::{Bake, BuildError};
use crate::aws::ec2::{self, filter, tag_spec};
use crate::aws::{AwsError, Clients, Ctx};
use crate::recipe::model::{CommunicatorKind, Imds, Recipe, SshInterface};
use crate::remote::any::Communicator;

/// A launched instance (the builder, or a tester of the new image) and how to reach it.
pub struct Launched {
    pub instance_id: String,
    /// Address for the recipe's SSH interface.
    pub addr: String,
    pub client_key: Arc<PrivateKey>,
    pub host_key: PublicKey,
    /// When RunInstances was sent: the dead-man switch counts from about then.
    pub launched: std::time::Instant,
}

/// Tags every temporary resource of a build carries, so a leak is always attributable.
/// The lease tag says the build is alive until renewed past it (see `super::lease`).
pub fn build_tags(recipe: &Recipe, build_id: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("bake:build-id".to_string(), build_id.to_string()),
        ("bake:recipe".to_string(), recipe.name.clone()),
        ("bake:temporary".to_string(), "true".to_string()),
        super::lease::initial_tag(),
    ])
}

/// What an instance is launched for: the builder, or the instance of the new image the
/// `[[test]]`s run on. The tester has its own names, client token and stages, no staging and
/// none of the builder's user data or root volume settings (it boots the image as it is).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Builder,
    Tester,
}

impl Role {
    fn suffix(self) -> &'static str {
        match self {
            Role::Builder => "",
            Role::Tester => "-test",
        }
    }

    fn stage(self, name: &str) -> String {
        match self {
            Role::Builder => name.to_string(),
            Role::Tester => format!("test {name}"),
        }
    }
}

impl Bake<'_> {
    /// The "prepare" and "launch" stages: temporary key pair and security group, then the
    /// builder, each undo registered before the call that creates it.
    pub(super) async fn launch(&self, source: &SourceImage) -> Result<Launched, BuildError> {
        self.launch_as(Role::Builder, source).await
    }

    /// [`Self::launch`] for either role; `source` is the image the instance boots.
    pub(super) async fn launch_as(
        &self,
        role: Role,
        source: &SourceImage,
    ) -> Result<Launched, BuildError> {
        let Bake {
            clients,
            recipe,
            ui,
            cleanup,
            build_id,
            ..
        } = *self;
        // What the communicator will stage outside the builder goes *after* the builder on
        // cleanup: an agent finishing an interrupted command cannot write behind our back.
        let staged = match role {
            Role::Builder => Communicator::staged_objects(recipe, build_id),
            // The builder's undo already covers the same prefix.
            Role::Tester => Vec::new(),
        };
        for s in &staged {
            cleanup.push(Undo::DeleteStagedObjects {
                bucket: s.bucket.clone(),
                prefix: s.prefix.clone(),
            });
        }
        let ec2 = &clients.ec2;
        let tags = build_tags(recipe, build_id);
        let name = format!("bake-{}-{build_id}{}", recipe.name, role.suffix());
        let client_token = format!("{build_id}{}", role.suffix());
        let ssh = recipe.communicator == CommunicatorKind::Ssh;

        let client_key =
            PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).map_err(|source| {
                BuildError::Key {
                    what: "generating the client key",
                    source,
                }
            })?;
        let host_key =
            PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).map_err(|source| {
                BuildError::Key {
                    what: "generating the host key",
                    source,
                }
            })?;

        let st = ui.stage(
            &role.stage("prepare"),
            "creating temporary key pair and security group",
        );
        let key_fut = async {
            if !ssh {
                return Ok::<_, BuildError>(None);
            }
            let undo = cleanup.push(Undo::key_pair(&name, build_id));
            let public =
                client_key
                    .public_key()
                    .to_openssh()
                    .map_err(|source| BuildError::Key {
                        what: "encoding the client key",
                        source,
                    })?;
            let res = ec2
                .import_key_pair()
                .key_name(&name)
                .public_key_material(Blob::new(public.into_bytes()))
                .tag_specifications(tag_spec(ResourceType::KeyPair, &tags))
                .send()
                .await
                .ctx("ImportKeyPair", Some(&name));
            let id = match res {
                Ok(out) => out.key_pair_id().map(str::to_string),
                // A retry after a lost answer finds the key pair its first attempt made.
                Err(e) if e.code_is(&["InvalidKeyPair.Duplicate"]) => Some(
                    adopt_key_pair(clients, &name, build_id, e)
                        .await
                        .inspect_err(|_| cleanup.refused(undo))?,
                ),
                Err(e) => {
                    if e.is_refusal() {
                        cleanup.refused(undo);
                    }
                    return Err(e.into());
                }
            };
            if let Some(id) = id {
                cleanup.resolve(undo, &id);
            }
            Ok(Some(name.clone()))
        };
        let sg_fut = async {
            if !recipe.builder.security_group_ids.is_empty() {
                return Ok::<_, BuildError>(recipe.builder.security_group_ids.clone());
            }
            let (vpc_id, vpc_cidr) = vpc_of(clients, recipe.builder.subnet_id.as_deref()).await?;
            let cidrs = if !recipe.builder.ssh_ingress_cidrs.is_empty() {
                recipe.builder.ssh_ingress_cidrs.clone()
            } else if matches!(
                recipe.ssh.interface,
                SshInterface::PublicIp | SshInterface::PublicDns
            ) && ssh
            {
                return Err(BuildError::NoIngress);
            } else {
                vec![vpc_cidr]
            };
            let undo = cleanup.push(Undo::security_group(&name, build_id));
            let res = ec2
                .create_security_group()
                .group_name(&name)
                .description(format!(
                    "bake temporary builder group for {} ({build_id})",
                    recipe.name
                ))
                .vpc_id(&vpc_id)
                .tag_specifications(tag_spec(ResourceType::SecurityGroup, &tags))
                .send()
                .await
                .ctx("CreateSecurityGroup", Some(&name));
            let sg_id = match res {
                Ok(sg) => sg.group_id().unwrap_or_default().to_string(),
                Err(e) if e.code_is(&["InvalidGroup.Duplicate"]) => {
                    adopt_security_group(clients, &name, &vpc_id, build_id, e)
                        .await
                        .inspect_err(|_| cleanup.refused(undo))?
                }
                Err(e) => {
                    if e.is_refusal() {
                        cleanup.refused(undo);
                    }
                    return Err(e.into());
                }
            };
            cleanup.resolve(undo, &sg_id);
            if ssh {
                let ranges = cidrs
                    .iter()
                    .map(|c| {
                        IpRange::builder()
                            .cidr_ip(c)
                            .description(format!("bake builder SSH ({build_id})"))
                            .build()
                    })
                    .collect();
                let perm = IpPermission::builder()
                    .ip_protocol("tcp")
                    .from_port(recipe.ssh.port as i32)
                    .to_port(recipe.ssh.port as i32)
                    .set_ip_ranges(Some(ranges))
                    .build();
                // The group is new: "not found" is "not yet"; a duplicate rule is our own earlier
                // attempt whose answer was lost.
                let res = ec2::settle(
                    "AuthorizeSecurityGroupIngress",
                    &sg_id,
                    ec2::VISIBILITY,
                    ec2::not_yet_visible,
                    || {
                        let req = ec2
                            .authorize_security_group_ingress()
                            .group_id(&sg_id)
                            .ip_permissions(perm.clone());
                        let sg = &sg_id;
                        async move {
                            req.send()
                                .await
                                .map(|_| ())
                                .ctx("AuthorizeSecurityGroupIngress", Some(sg))
                        }
                    },
                )
                .await;
                match res {
                    Err(e) if e.code_is(&["InvalidPermission.Duplicate"]) => {}
                    r => r?,
                }
            }
            Ok(vec![sg_id])
        };
        let (key_name, sg_ids) = tokio::try_join!(key_fut, sg_fut)?;
        st.finish(&format!(
            "key pair {}, security group {}",
            key_name.as_deref().unwrap_or("none (ssm)"),
            sg_ids.join(",")
        ));

        let st = ui.stage(
            &role.stage("launch"),
            &format!(
                "launching {} from {}",
                recipe.builder.instance_type, source.id
            ),
        );
        let dead_man = super::deadman::arm_script(recipe.builder.max_lifetime.as_secs());
        let own = match role {
            Role::Builder => recipe.builder.user_data.as_deref(),
            Role::Tester => None,
        };
        let user_data = user_data(own, &host_key, &dead_man)?;
        let mut run_tags = recipe.builder.run_tags.clone();
        run_tags.entry("Name".into()).or_insert_with(|| match role {
            Role::Builder => format!("bake builder {}", recipe.name),
            Role::Tester => format!("bake test {}", recipe.name),
        });
        run_tags.extend(tags.clone());
        if !staged.is_empty() {
            // Where this build's staged objects are, for `bake gc` on any machine.
            let where_: Vec<String> = staged.iter().map(|s| s.location()).collect();
            run_tags.insert("bake:staging".into(), where_.join(" "));
        }
        let mut req = ec2
            .run_instances()
            .image_id(&source.id)
            .instance_type(InstanceType::from(recipe.builder.instance_type.as_str()))
            .min_count(1)
            .max_count(1)
            .set_key_name(key_name)
            .set_subnet_id(recipe.builder.subnet_id.clone())
            .set_security_group_ids(Some(sg_ids))
            .user_data(aws_smithy_types::base64::encode(user_data))
            // The dead-man switch's power-off ends the instance, not just stops it.
            .instance_initiated_shutdown_behavior(ShutdownBehavior::Terminate)
            .metadata_options(
                InstanceMetadataOptionsRequest::builder()
                    .http_endpoint(InstanceMetadataEndpointState::Enabled)
                    .http_tokens(match recipe.builder.imds {
                        Imds::V2 => HttpTokensState::Required,
                        Imds::V1Allowed => HttpTokensState::Optional,
                    })
                    .build(),
            )
            .tag_specifications(tag_spec(ResourceType::Instance, &run_tags))
            .tag_specifications(tag_spec(ResourceType::Volume, &run_tags));
        if let Some(profile) = &recipe.builder.iam_instance_profile {
            let spec = if profile.starts_with("arn:") {
                IamInstanceProfileSpecification::builder()
                    .arn(profile)
                    .build()
            } else {
                IamInstanceProfileSpecification::builder()
                    .name(profile)
                    .build()
            };
            req = req.iam_instance_profile(spec);
        }
        if let Some(bdm) = root_volume(recipe, source).filter(|_| role == Role::Builder) {
            req = req.block_device_mappings(bdm);
        }
        // The client token makes RunInstances idempotent: a retry after a lost answer (the SDK's
        // or ours) returns the instance the first attempt launched instead of a second one.
        let req = req.client_token(&client_token);
        let undo = cleanup.push(Undo::instance(build_id, &client_token));
        let launched = std::time::Instant::now();
        let res = ec2::settle(
            "RunInstances",
            &source.id,
            Duration::from_secs(300),
            run_instances_transient,
            || {
                let req = req.clone();
                async move { req.send().await.ctx("RunInstances", Some(&source.id)) }
            },
        )
        .await;
        let out = match res {
            Ok(out) => out,
            Err(e) => {
                if e.is_refusal() {
                    cleanup.refused(undo);
                }
                return Err(e.into());
            }
        };
        let id = out
            .instances()
            .first()
            .and_then(|i| i.instance_id())
            .unwrap_or_default()
            .to_string();
        if !id.is_empty() {
            cleanup.resolve(undo, &id);
        }
        st.update(&format!("{id} pending"));
        let inst = ec2::wait_instance_state(
            ec2,
            &id,
            InstanceStateName::Running,
            Duration::from_secs(900),
        )
        .await?;
        let addr = match recipe.ssh.interface {
            SshInterface::PrivateIp => inst.private_ip_address(),
            SshInterface::PublicIp => inst.public_ip_address(),
            SshInterface::PrivateDns => inst.private_dns_name(),
            SshInterface::PublicDns => inst.public_dns_name(),
        }
        .filter(|a| !a.is_empty())
        .map(str::to_string);
        let addr = match (addr, ssh) {
            (Some(a), _) => a,
            (None, false) => String::new(),
            (None, true) => {
                return Err(BuildError::NoAddress {
                    instance: id.to_string(),
                    interface: format!("{:?}", recipe.ssh.interface),
                });
            }
        };
        st.finish(&format!(
            "{id} running{}",
            if addr.is_empty() {
                String::new()
            } else {
                format!(" at {addr}")
            }
        ));
        Ok(Launched {
            instance_id: id,
            addr,
            client_key: Arc::new(client_key),
            host_key: host_key.public_key().clone(),
            launched,
        })
    }
}

/// Errors of RunInstances that pass: what the build created a moment ago (key pair, security
/// group) not visible yet, and an instance profile IAM has not propagated to EC2 yet.
fn run_instances_transient(e: &AwsError) -> bool {
    e.code_is(&[
        "InvalidKeyPair.NotFound",
        "InvalidGroup.NotFound",
        "InvalidSecurityGroupID.NotFound",
    ]) || (e.code_is(&["InvalidParameterValue"])
        && e.message
            .to_ascii_lowercase()
            .contains("iam instance profile"))
}

/// `name` exists (ImportKeyPair said duplicate): ours if it carries this build's tag, i.e. an
/// earlier attempt made it and its answer was lost. Returns its id.
async fn adopt_key_pair(
    clients: &Clients,
    name: &str,
    build_id: &str,
    dup: AwsError,
) -> Result<String, BuildError> {
    let found = ec2::settle(
        "adopt key pair",
        name,
        ec2::VISIBILITY,
        ec2::not_yet_visible,
        || async {
            match ec2::describe_key_pair(&clients.ec2, name).await? {
                Some(k) => Ok(k),
                None => Err(AwsError {
                    code: Some("InvalidKeyPair.NotFound".into()),
                    ..AwsError::new("DescribeKeyPairs", Some(name.into()), "not visible yet")
                }),
            }
        },
    )
    .await?;
    if ec2::tagged_with_build(found.tags(), build_id) {
        Ok(found.key_pair_id().unwrap_or(name).to_string())
    } else {
        Err(BuildError::Aws(dup))
    }
}

/// Like [`adopt_key_pair`] for the temporary security group: returns its id.
async fn adopt_security_group(
    clients: &Clients,
    name: &str,
    vpc_id: &str,
    build_id: &str,
    dup: AwsError,
) -> Result<String, BuildError> {
    let found = ec2::settle(
        "adopt security group",
        name,
        ec2::VISIBILITY,
        ec2::not_yet_visible,
        || async {
            let out = clients
                .ec2
                .describe_security_groups()
                .filters(filter("group-name", [name]))
                .filters(filter("vpc-id", [vpc_id]))
                .send()
                .await
                .ctx("DescribeSecurityGroups", Some(name))?;
            out.security_groups()
                .first()
                .cloned()
                .ok_or_else(|| AwsError {
                    code: Some("InvalidGroup.NotFound".into()),
                    ..AwsError::new(
                        "DescribeSecurityGroups",
                        Some(name.into()),
                        "not visible yet",
                    )
                })
        },
    )
    .await?;
    match found.group_id() {
        Some(id) if ec2::tagged_with_build(found.tags(), build_id) => Ok(id.to_string()),
        _ => Err(BuildError::Aws(dup)),
    }
}

/// The VPC the builder lands in (the subnet's, or the default VPC) and its CIDR block.
async fn vpc_of(clients: &Clients, subnet: Option<&str>) -> Result<(String, String), BuildError> {
    let ec2 = &clients.ec2;
    let vpc_id = match subnet {
        Some(s) => {
            let out = ec2
                .describe_subnets()
                .subnet_ids(s)
                .send()
                .await
                .ctx("DescribeSubnets", Some(s))?;
            out.subnets()
                .first()
                .and_then(|x| x.vpc_id())
                .map(str::to_string)
        }
        None => None,
    };
    let req = match &vpc_id {
        Some(v) => ec2.describe_vpcs().vpc_ids(v),
        None => ec2.describe_vpcs().filters(filter("is-default", ["true"])),
    };
    let out = req.send().await.ctx("DescribeVpcs", vpc_id.as_deref())?;
    let vpc = out.vpcs().first().ok_or_else(|| BuildError::NoDefaultVpc {
        region: clients.region.clone(),
    })?;
    Ok((
        vpc.vpc_id().unwrap_or_default().to_string(),
        vpc.cidr_block().unwrap_or_default().to_string(),
    ))
}

fn root_volume(recipe: &Recipe, source: &SourceImage) -> Option<BlockDeviceMapping> {
    let rv = &recipe.builder.root_volume;
    if rv.size_gb.is_none()
        && rv.volume_type.is_none()
        && rv.encrypted.is_none()
        && rv.kms_key_id.is_none()
        && rv.iops.is_none()
        && rv.throughput.is_none()
    {
        return None;
    }
    let ebs = EbsBlockDevice::builder()
        .delete_on_termination(true)
        .set_volume_size(rv.size_gb.map(|s| s as i32))
        .set_volume_type(rv.volume_type.as_deref().map(VolumeType::from))
        .set_encrypted(rv.encrypted)
        .set_kms_key_id(rv.kms_key_id.clone())
        .set_iops(rv.iops.map(|v| v as i32))
        .set_throughput(rv.throughput.map(|v| v as i32))
        .build();
    Some(
        BlockDeviceMapping::builder()
            .device_name(
                source
                    .root_device
                    .clone()
                    .unwrap_or_else(|| "/dev/xvda".into()),
            )
            .ebs(ebs)
            .build(),
    )
}

/// cloud-init user data: bake's host key (cloud-config), the dead-man switch (a shell script)
/// and the recipe's own user data when there is one, as one MIME multipart document
/// (cloud-init processes every part).
pub fn user_data(
    own: Option<&str>,
    host_key: &PrivateKey,
    dead_man: &str,
) -> Result<String, BuildError> {
    let private = host_key
        .to_openssh(russh::keys::ssh_key::LineEnding::LF)
        .map_err(|source| BuildError::Key {
            what: "encoding the host key",
            source,
        })?;
    let public = host_key
        .public_key()
        .to_openssh()
        .map_err(|source| BuildError::Key {
            what: "encoding the host key",
            source,
        })?;
    let indented: String = private.lines().map(|l| format!("    {l}\n")).collect();
    let cloud = format!(
        "#cloud-config\nssh_keys:\n  ed25519_private: |\n{indented}  ed25519_public: {public}\n"
    );
    let mut parts = vec![
        ("text/cloud-config", cloud),
        ("text/x-shellscript", dead_man.to_string()),
    ];
    if let Some(own) = own {
        let kind = if own.starts_with("#cloud-config") {
            "text/cloud-config"
        } else if own.starts_with("#!") {
            "text/x-shellscript"
        } else if own.starts_with("#include") {
            "text/x-include-url"
        } else if own.starts_with("#cloud-boothook") {
            "text/cloud-boothook"
        } else {
            "text/plain"
        };
        parts.push((kind, own.to_string()));
    }
    let boundary = "==BAKE-BOUNDARY-7f3a==";
    let mut doc =
        format!("Content-Type: multipart/mixed; boundary=\"{boundary}\"\nMIME-Version: 1.0\n\n");
    for (kind, body) in parts {
        doc.push_str(&format!(
            "--{boundary}\nContent-Type: {kind}; charset=\"utf-8\"\nMIME-Version: 1.0\n\n{body}\n"
        ));
    }
    doc.push_str(&format!("--{boundary}--\n"));
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(code: &str, message: &str) -> AwsError {
        AwsError {
            code: Some(code.into()),
            ..AwsError::new("RunInstances", None, message)
        }
    }

    #[test]
    fn run_instances_waits_out_what_is_new_and_fails_on_the_rest() {
        let profile = err(
            "InvalidParameterValue",
            "Value (bake-builder) for parameter iamInstanceProfile.name is invalid. Invalid IAM Instance Profile name",
        );
        assert!(run_instances_transient(&profile));
        assert!(run_instances_transient(&err(
            "InvalidGroup.NotFound",
            "sg-1"
        )));
        assert!(run_instances_transient(&err(
            "InvalidKeyPair.NotFound",
            "k"
        )));
        assert!(!run_instances_transient(&err(
            "InvalidAMIID.NotFound",
            "ami-1"
        )));
        assert!(!run_instances_transient(&err(
            "InvalidParameterValue",
            "Invalid value 't9.huge' for InstanceType"
        )));
        // A refusal made nothing; a 5xx or no answer at all may have.
        assert!(profile.is_refusal());
        assert!(!err("InternalError", "").is_refusal());
        assert!(!err("RequestLimitExceeded", "").is_refusal());
        assert!(!AwsError::new("RunInstances", None, "connection reset").is_refusal());
    }

    #[test]
    fn user_data_carries_host_key_dead_man_and_own() {
        let k = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap();
        let plain = user_data(None, &k, "#!/bin/sh\n# dead man\n").unwrap();
        assert!(plain.starts_with("Content-Type: multipart/mixed"));
        assert!(plain.contains("#cloud-config\nssh_keys:\n  ed25519_private: |\n    -----BEGIN OPENSSH PRIVATE KEY-----"));
        assert!(plain.contains(&k.public_key().to_openssh().unwrap()));
        assert!(plain.contains("Content-Type: text/x-shellscript; charset=\"utf-8\"\nMIME-Version: 1.0\n\n#!/bin/sh\n# dead man"));
        let merged = user_data(Some("#!/bin/sh\necho hi"), &k, "#!/bin/sh\n").unwrap();
        assert_eq!(
            merged.matches("Content-Type: text/x-shellscript").count(),
            2
        );
        assert!(merged.contains("#!/bin/sh\necho hi"));
        assert!(merged.contains("Content-Type: text/cloud-config"));
        assert!(merged.ends_with("==BAKE-BOUNDARY-7f3a==--\n"));
    }
}
