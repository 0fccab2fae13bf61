//! Launch template versions for a roll-out: copy the version a group uses with only the image
//! id changed (field by field, never through `SourceVersion`, which not every EC2 implementation
//! honours), verify the copy, and keep the number of versions bounded.

use std::collections::BTreeSet;

use aws_sdk_ec2::types::{
    CapacityReservationTarget, ConnectionTrackingSpecificationRequest, CreditSpecificationRequest,
    EnaSrdSpecificationRequest, EnaSrdUdpSpecificationRequest, InstanceIpv6AddressRequest,
    Ipv4PrefixSpecificationRequest, Ipv6PrefixSpecificationRequest,
    LaunchTemplateBlockDeviceMappingRequest, LaunchTemplateCapacityReservationSpecificationRequest,
    LaunchTemplateCpuOptionsRequest, LaunchTemplateEbsBlockDeviceRequest,
    LaunchTemplateEnclaveOptionsRequest, LaunchTemplateHibernationOptionsRequest,
    LaunchTemplateIamInstanceProfileSpecificationRequest,
    LaunchTemplateInstanceMaintenanceOptionsRequest, LaunchTemplateInstanceMarketOptionsRequest,
    LaunchTemplateInstanceMetadataOptionsRequest,
    LaunchTemplateInstanceNetworkInterfaceSpecificationRequest,
    LaunchTemplateLicenseConfigurationRequest, LaunchTemplateNetworkPerformanceOptionsRequest,
    LaunchTemplatePlacementRequest, LaunchTemplatePrivateDnsNameOptionsRequest,
    LaunchTemplateSpotMarketOptionsRequest, LaunchTemplateTagSpecificationRequest,
    LaunchTemplateVersion, LaunchTemplatesMonitoringRequest, OperatorRequest,
    RequestLaunchTemplateData, ResponseLaunchTemplateData,
};

use super::DeployError;
use crate::aws::{AwsError, Ctx};

/// One launch template version as bake needs it.
#[derive(Debug, Clone)]
pub struct Version {
    pub template_id: String,
    pub template_name: String,
    pub number: i64,
    pub default: bool,
    pub data: ResponseLaunchTemplateData,
}

impl Version {
    pub fn image_id(&self) -> Option<&str> {
        self.data.image_id()
    }

    fn from_sdk(v: &LaunchTemplateVersion) -> Option<Version> {
        Some(Version {
            template_id: v.launch_template_id()?.to_string(),
            template_name: v.launch_template_name().unwrap_or_default().to_string(),
            number: v.version_number()?,
            default: v.default_version().unwrap_or(false),
            data: v.launch_template_data()?.clone(),
        })
    }
}

/// Describes one version (`"3"`, `"$Latest"`, `"$Default"`) of a template.
pub async fn describe_version(
    ec2: &aws_sdk_ec2::Client,
    template_id: &str,
    version: &str,
) -> Result<Version, DeployError> {
    let out = ec2
        .describe_launch_template_versions()
        .launch_template_id(template_id)
        .versions(version)
        .send()
        .await
        .ctx("DescribeLaunchTemplateVersions", Some(template_id))?;
    out.launch_template_versions()
        .first()
        .and_then(Version::from_sdk)
        .ok_or_else(|| {
            AwsError::new(
                "DescribeLaunchTemplateVersions",
                Some(format!("{template_id} version {version}")),
                "no such launch template version",
            )
            .into()
        })
}

/// Every version number of a template, with the default one.
pub async fn all_versions(
    ec2: &aws_sdk_ec2::Client,
    template_id: &str,
) -> Result<(Vec<i64>, Option<i64>), DeployError> {
    let mut numbers = Vec::new();
    let mut default = None;
    let mut token: Option<String> = None;
    loop {
        let out = ec2
            .describe_launch_template_versions()
            .launch_template_id(template_id)
            .set_next_token(token.clone())
            .max_results(200)
            .send()
            .await
            .ctx("DescribeLaunchTemplateVersions", Some(template_id))?;
        for v in out.launch_template_versions() {
            if let Some(n) = v.version_number() {
                numbers.push(n);
                if v.default_version() == Some(true) {
                    default = Some(n);
                }
            }
        }
        token = out
            .next_token()
            .filter(|t| !t.is_empty())
            .map(str::to_string);
        if token.is_none() {
            break;
        }
    }
    numbers.sort_unstable();
    numbers.dedup();
    Ok((numbers, default))
}

/// Creates a new version of `source`'s template holding exactly `source`'s settings with the
/// image id replaced, then checks that EC2 stored what was sent: any setting that differs from
/// the source (other than the image id) deletes the new version and fails naming the setting.
pub async fn copy_with_image(
    ec2: &aws_sdk_ec2::Client,
    source: &Version,
    image_id: &str,
    description: &str,
) -> Result<Version, DeployError> {
    let data = to_request(&source.data, image_id);
    let out = ec2
        .create_launch_template_version()
        .launch_template_id(&source.template_id)
        .version_description(description)
        .launch_template_data(data)
        .send()
        .await
        .ctx("CreateLaunchTemplateVersion", Some(&source.template_id))?;
    let number = out
        .launch_template_version()
        .and_then(|v| v.version_number())
        .ok_or_else(|| {
            AwsError::new(
                "CreateLaunchTemplateVersion",
                Some(source.template_id.clone()),
                "no version number in the answer",
            )
        })?;
    let created = describe_version(ec2, &source.template_id, &number.to_string()).await?;
    let mut differ = differing_fields(&source.data, &created.data);
    if created.image_id() != Some(image_id) {
        differ.push("image_id");
    }
    if !differ.is_empty() {
        let _ = delete_versions(ec2, &source.template_id, &[number]).await;
        return Err(DeployError::CopyMismatch {
            template: source.template_id.clone(),
            source_version: source.number,
            version: number,
            fields: differ.iter().map(|s| s.to_string()).collect(),
        });
    }
    Ok(created)
}

/// Deletes versions; returns those EC2 reports deleted, and the refusals as messages.
pub async fn delete_versions(
    ec2: &aws_sdk_ec2::Client,
    template_id: &str,
    versions: &[i64],
) -> Result<(Vec<i64>, Vec<String>), DeployError> {
    let mut deleted = Vec::new();
    let mut refused = Vec::new();
    // EC2 takes at most 200 versions per call.
    for chunk in versions.chunks(200) {
        let out = ec2
            .delete_launch_template_versions()
            .launch_template_id(template_id)
            .set_versions(Some(chunk.iter().map(|v| v.to_string()).collect()))
            .send()
            .await
            .ctx("DeleteLaunchTemplateVersions", Some(template_id))?;
        deleted.extend(
            out.successfully_deleted_launch_template_versions()
                .iter()
                .filter_map(|v| v.version_number()),
        );
        for v in out.unsuccessfully_deleted_launch_template_versions() {
            refused.push(format!(
                "version {}: {}",
                v.version_number().unwrap_or_default(),
                v.response_error()
                    .and_then(|e| e.message())
                    .unwrap_or("refused")
            ));
        }
    }
    deleted.sort_unstable();
    Ok((deleted, refused))
}

/// Which versions retention deletes: all but the newest `keep` and the `protected` ones
/// (the default version, versions groups reference, the versions of the roll-out).
pub fn versions_to_delete(all: &[i64], keep: usize, protected: &BTreeSet<i64>) -> Vec<i64> {
    let mut sorted: Vec<i64> = all.to_vec();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    sorted.dedup();
    let mut out: Vec<i64> = sorted
        .into_iter()
        .skip(keep)
        .filter(|v| !protected.contains(v))
        .collect();
    out.sort_unstable();
    out
}

macro_rules! compare_fields {
    ($a:expr, $b:expr, $out:expr, [$($f:ident),* $(,)?]) => {
        $(
            if format!("{:?}", $a.$f()) != format!("{:?}", $b.$f()) {
                $out.push(stringify!($f));
            }
        )*
    };
}

/// The settings (other than the image id) in which two versions' data differ.
pub fn differing_fields(
    a: &ResponseLaunchTemplateData,
    b: &ResponseLaunchTemplateData,
) -> Vec<&'static str> {
    let mut out = Vec::new();
    compare_fields!(
        a,
        b,
        out,
        [
            kernel_id,
            ebs_optimized,
            iam_instance_profile,
            block_device_mappings,
            network_interfaces,
            instance_type,
            key_name,
            monitoring,
            placement,
            ram_disk_id,
            disable_api_termination,
            instance_initiated_shutdown_behavior,
            user_data,
            tag_specifications,
            elastic_gpu_specifications,
            elastic_inference_accelerators,
            security_group_ids,
            security_groups,
            instance_market_options,
            credit_specification,
            cpu_options,
            capacity_reservation_specification,
            license_specifications,
            hibernation_options,
            metadata_options,
            enclave_options,
            instance_requirements,
            private_dns_name_options,
            maintenance_options,
            disable_api_stop,
            operator,
            network_performance_options,
            secondary_interfaces,
        ]
    );
    out
}

fn v<T: Clone>(s: &[T]) -> Option<Vec<T>> {
    if s.is_empty() { None } else { Some(s.to_vec()) }
}

fn vmap<S, T>(s: &[S], f: impl Fn(&S) -> T) -> Option<Vec<T>> {
    if s.is_empty() {
        None
    } else {
        Some(s.iter().map(f).collect())
    }
}

/// Converts a described version's data into the request that recreates it, with `image_id`.
/// Settings the SDK cannot map one to one (instance requirements, elastic GPU / inference,
/// secondary interfaces) are left out; [`differing_fields`] then names them.
pub fn to_request(d: &ResponseLaunchTemplateData, image_id: &str) -> RequestLaunchTemplateData {
    RequestLaunchTemplateData::builder()
        .image_id(image_id)
        .set_kernel_id(d.kernel_id().map(str::to_string))
        .set_ebs_optimized(d.ebs_optimized())
        .set_iam_instance_profile(d.iam_instance_profile().map(|p| {
            LaunchTemplateIamInstanceProfileSpecificationRequest::builder()
                .set_arn(p.arn().map(str::to_string))
                .set_name(p.name().map(str::to_string))
                .build()
        }))
        .set_block_device_mappings(vmap(d.block_device_mappings(), |m| {
            LaunchTemplateBlockDeviceMappingRequest::builder()
                .set_device_name(m.device_name().map(str::to_string))
                .set_virtual_name(m.virtual_name().map(str::to_string))
                .set_no_device(m.no_device().map(str::to_string))
                .set_ebs(m.ebs().map(|e| {
                    LaunchTemplateEbsBlockDeviceRequest::builder()
                        .set_encrypted(e.encrypted())
                        .set_delete_on_termination(e.delete_on_termination())
                        .set_iops(e.iops())
                        .set_kms_key_id(e.kms_key_id().map(str::to_string))
                        .set_snapshot_id(e.snapshot_id().map(str::to_string))
                        .set_volume_size(e.volume_size())
                        .set_volume_type(e.volume_type().cloned())
                        .set_throughput(e.throughput())
                        .set_volume_initialization_rate(e.volume_initialization_rate())
                        .set_ebs_card_index(e.ebs_card_index())
                        .build()
                }))
                .build()
        }))
        .set_network_interfaces(vmap(d.network_interfaces(), |n| {
            LaunchTemplateInstanceNetworkInterfaceSpecificationRequest::builder()
                .set_associate_carrier_ip_address(n.associate_carrier_ip_address())
                .set_associate_public_ip_address(n.associate_public_ip_address())
                .set_delete_on_termination(n.delete_on_termination())
                .set_description(n.description().map(str::to_string))
                .set_device_index(n.device_index())
                .set_groups(v(n.groups()))
                .set_interface_type(n.interface_type().map(str::to_string))
                .set_ipv6_address_count(n.ipv6_address_count())
                .set_ipv6_addresses(vmap(n.ipv6_addresses(), |a| {
                    InstanceIpv6AddressRequest::builder()
                        .set_ipv6_address(a.ipv6_address().map(str::to_string))
                        .build()
                }))
                .set_network_interface_id(n.network_interface_id().map(str::to_string))
                .set_private_ip_address(n.private_ip_address().map(str::to_string))
                .set_private_ip_addresses(v(n.private_ip_addresses()))
                .set_secondary_private_ip_address_count(n.secondary_private_ip_address_count())
                .set_subnet_id(n.subnet_id().map(str::to_string))
                .set_network_card_index(n.network_card_index())
                .set_ipv4_prefixes(vmap(n.ipv4_prefixes(), |p| {
                    Ipv4PrefixSpecificationRequest::builder()
                        .set_ipv4_prefix(p.ipv4_prefix().map(str::to_string))
                        .build()
                }))
                .set_ipv4_prefix_count(n.ipv4_prefix_count())
                .set_ipv6_prefixes(vmap(n.ipv6_prefixes(), |p| {
                    Ipv6PrefixSpecificationRequest::builder()
                        .set_ipv6_prefix(p.ipv6_prefix().map(str::to_string))
                        .build()
                }))
                .set_ipv6_prefix_count(n.ipv6_prefix_count())
                .set_primary_ipv6(n.primary_ipv6())
                .set_ena_srd_specification(n.ena_srd_specification().map(|e| {
                    EnaSrdSpecificationRequest::builder()
                        .set_ena_srd_enabled(e.ena_srd_enabled())
                        .set_ena_srd_udp_specification(e.ena_srd_udp_specification().map(|u| {
                            EnaSrdUdpSpecificationRequest::builder()
                                .set_ena_srd_udp_enabled(u.ena_srd_udp_enabled())
                                .build()
                        }))
                        .build()
                }))
                .set_connection_tracking_specification(n.connection_tracking_specification().map(
                    |c| {
                        ConnectionTrackingSpecificationRequest::builder()
                            .set_tcp_established_timeout(c.tcp_established_timeout())
                            .set_udp_stream_timeout(c.udp_stream_timeout())
                            .set_udp_timeout(c.udp_timeout())
                            .build()
                    },
                ))
                .set_ena_queue_count(n.ena_queue_count())
                .build()
        }))
        .set_instance_type(d.instance_type().cloned())
        .set_key_name(d.key_name().map(str::to_string))
        .set_monitoring(d.monitoring().map(|m| {
            LaunchTemplatesMonitoringRequest::builder()
                .set_enabled(m.enabled())
                .build()
        }))
        .set_placement(d.placement().map(|p| {
            LaunchTemplatePlacementRequest::builder()
                .set_availability_zone(p.availability_zone().map(str::to_string))
                .set_availability_zone_id(p.availability_zone_id().map(str::to_string))
                .set_affinity(p.affinity().map(str::to_string))
                .set_group_name(p.group_name().map(str::to_string))
                .set_host_id(p.host_id().map(str::to_string))
                .set_tenancy(p.tenancy().cloned())
                .set_spread_domain(p.spread_domain().map(str::to_string))
                .set_host_resource_group_arn(p.host_resource_group_arn().map(str::to_string))
                .set_partition_number(p.partition_number())
                .set_group_id(p.group_id().map(str::to_string))
                .build()
        }))
        .set_ram_disk_id(d.ram_disk_id().map(str::to_string))
        .set_disable_api_termination(d.disable_api_termination())
        .set_instance_initiated_shutdown_behavior(d.instance_initiated_shutdown_behavior().cloned())
        .set_user_data(d.user_data().map(str::to_string))
        .set_tag_specifications(vmap(d.tag_specifications(), |t| {
            LaunchTemplateTagSpecificationRequest::builder()
                .set_resource_type(t.resource_type().cloned())
                .set_tags(v(t.tags()))
                .build()
        }))
        .set_security_group_ids(v(d.security_group_ids()))
        .set_security_groups(v(d.security_groups()))
        .set_instance_market_options(d.instance_market_options().map(|m| {
            LaunchTemplateInstanceMarketOptionsRequest::builder()
                .set_market_type(m.market_type().cloned())
                .set_spot_options(m.spot_options().map(|s| {
                    LaunchTemplateSpotMarketOptionsRequest::builder()
                        .set_max_price(s.max_price().map(str::to_string))
                        .set_spot_instance_type(s.spot_instance_type().cloned())
                        .set_block_duration_minutes(s.block_duration_minutes())
                        .set_valid_until(s.valid_until().copied())
                        .set_instance_interruption_behavior(
                            s.instance_interruption_behavior().cloned(),
                        )
                        .build()
                }))
                .build()
        }))
        .set_credit_specification(d.credit_specification().map(|c| {
            CreditSpecificationRequest::builder()
                .set_cpu_credits(c.cpu_credits().map(str::to_string))
                .build()
        }))
        .set_cpu_options(d.cpu_options().map(|c| {
            LaunchTemplateCpuOptionsRequest::builder()
                .set_core_count(c.core_count())
                .set_threads_per_core(c.threads_per_core())
                .set_amd_sev_snp(c.amd_sev_snp().cloned())
                .set_nested_virtualization(c.nested_virtualization().cloned())
                .build()
        }))
        .set_capacity_reservation_specification(d.capacity_reservation_specification().map(|c| {
            LaunchTemplateCapacityReservationSpecificationRequest::builder()
                .set_capacity_reservation_preference(c.capacity_reservation_preference().cloned())
                .set_capacity_reservation_target(c.capacity_reservation_target().map(|t| {
                    CapacityReservationTarget::builder()
                        .set_capacity_reservation_id(
                            t.capacity_reservation_id().map(str::to_string),
                        )
                        .set_capacity_reservation_resource_group_arn(
                            t.capacity_reservation_resource_group_arn()
                                .map(str::to_string),
                        )
                        .build()
                }))
                .build()
        }))
        .set_license_specifications(vmap(d.license_specifications(), |l| {
            LaunchTemplateLicenseConfigurationRequest::builder()
                .set_license_configuration_arn(l.license_configuration_arn().map(str::to_string))
                .build()
        }))
        .set_hibernation_options(d.hibernation_options().map(|h| {
            LaunchTemplateHibernationOptionsRequest::builder()
                .set_configured(h.configured())
                .build()
        }))
        .set_metadata_options(d.metadata_options().map(|m| {
            LaunchTemplateInstanceMetadataOptionsRequest::builder()
                .set_http_tokens(m.http_tokens().cloned())
                .set_http_put_response_hop_limit(m.http_put_response_hop_limit())
                .set_http_endpoint(m.http_endpoint().cloned())
                .set_http_protocol_ipv6(m.http_protocol_ipv6().cloned())
                .set_instance_metadata_tags(m.instance_metadata_tags().cloned())
                .build()
        }))
        .set_enclave_options(d.enclave_options().map(|e| {
            LaunchTemplateEnclaveOptionsRequest::builder()
                .set_enabled(e.enabled())
                .build()
        }))
        .set_private_dns_name_options(d.private_dns_name_options().map(|p| {
            LaunchTemplatePrivateDnsNameOptionsRequest::builder()
                .set_hostname_type(p.hostname_type().cloned())
                .set_enable_resource_name_dns_a_record(p.enable_resource_name_dns_a_record())
                .set_enable_resource_name_dns_aaaa_record(p.enable_resource_name_dns_aaaa_record())
                .build()
        }))
        .set_maintenance_options(d.maintenance_options().map(|m| {
            LaunchTemplateInstanceMaintenanceOptionsRequest::builder()
                .set_auto_recovery(m.auto_recovery().cloned())
                .build()
        }))
        .set_disable_api_stop(d.disable_api_stop())
        .set_operator(d.operator().map(|o| {
            OperatorRequest::builder()
                .set_principal(o.principal().map(str::to_string))
                .build()
        }))
        .set_network_performance_options(d.network_performance_options().map(|n| {
            LaunchTemplateNetworkPerformanceOptionsRequest::builder()
                .set_bandwidth_weighting(n.bandwidth_weighting().cloned())
                .build()
        }))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &[i64]) -> BTreeSet<i64> {
        v.iter().copied().collect()
    }

    #[test]
    fn retention_keeps_newest_and_protected() {
        let all = [1, 2, 3, 4, 5, 6, 7];
        assert_eq!(versions_to_delete(&all, 3, &set(&[])), vec![1, 2, 3, 4]);
        // the default (1) and a version a group uses (3) survive
        assert_eq!(versions_to_delete(&all, 3, &set(&[1, 3])), vec![2, 4]);
        assert_eq!(versions_to_delete(&all, 10, &set(&[])), Vec::<i64>::new());
        // gaps from earlier deletions, unsorted input
        assert_eq!(versions_to_delete(&[9, 2, 5, 7], 2, &set(&[2])), vec![5]);
        assert_eq!(versions_to_delete(&[], 1, &set(&[])), Vec::<i64>::new());
    }

    #[test]
    fn retention_keep_zero_deletes_only_unprotected() {
        assert_eq!(versions_to_delete(&[1, 2, 3], 0, &set(&[3])), vec![1, 2]);
    }

    #[test]
    fn copy_keeps_every_mapped_setting() {
        use aws_sdk_ec2::types::*;
        let src = ResponseLaunchTemplateData::builder()
            .image_id("ami-old")
            .instance_type(InstanceType::T3Micro)
            .key_name("k")
            .user_data("IyEvYmluL3NoCg==")
            .security_group_ids("sg-1")
            .ebs_optimized(true)
            .iam_instance_profile(
                LaunchTemplateIamInstanceProfileSpecification::builder()
                    .name("prof")
                    .build(),
            )
            .block_device_mappings(
                LaunchTemplateBlockDeviceMapping::builder()
                    .device_name("/dev/xvda")
                    .ebs(
                        LaunchTemplateEbsBlockDevice::builder()
                            .volume_size(20)
                            .volume_type(VolumeType::Gp3)
                            .encrypted(true)
                            .build(),
                    )
                    .build(),
            )
            .metadata_options(
                LaunchTemplateInstanceMetadataOptions::builder()
                    .http_tokens(LaunchTemplateHttpTokensState::Required)
                    .http_put_response_hop_limit(2)
                    .build(),
            )
            .tag_specifications(
                LaunchTemplateTagSpecification::builder()
                    .resource_type(ResourceType::Instance)
                    .tags(Tag::builder().key("team").value("web").build())
                    .build(),
            )
            .monitoring(LaunchTemplatesMonitoring::builder().enabled(true).build())
            .credit_specification(
                CreditSpecification::builder()
                    .cpu_credits("standard")
                    .build(),
            )
            .build();
        let req = to_request(&src, "ami-new");
        assert_eq!(req.image_id(), Some("ami-new"));
        assert_eq!(req.key_name(), Some("k"));
        assert_eq!(req.user_data(), Some("IyEvYmluL3NoCg=="));
        assert_eq!(req.security_group_ids(), ["sg-1".to_string()]);
        assert_eq!(
            req.block_device_mappings()[0].ebs().unwrap().volume_size(),
            Some(20)
        );
        assert_eq!(
            req.metadata_options().unwrap().http_tokens(),
            Some(&LaunchTemplateHttpTokensState::Required)
        );
        assert_eq!(req.tag_specifications()[0].tags()[0].value(), Some("web"));
        assert_eq!(req.iam_instance_profile().unwrap().name(), Some("prof"));
        assert_eq!(
            req.credit_specification().unwrap().cpu_credits(),
            Some("standard")
        );
        assert!(differing_fields(&src, &src).is_empty());
        let mut other = src.clone();
        other.key_name = Some("other".into());
        other.image_id = Some("ami-x".into());
        assert_eq!(differing_fields(&src, &other), vec!["key_name"]);
    }
}
