//! What uses an image, so retention never removes one still needed: live instances, every
//! launch template version (including `resolve:ssm:` parameters), and Auto Scaling groups
//! through their launch template, mixed-instances overrides or launch configuration.

use std::collections::{BTreeMap, BTreeSet};

use crate::aws::{AwsError, Clients, Ctx};

/// Image id → human descriptions of its users.
#[derive(Debug, Default, Clone)]
pub struct Usage {
    pub by_image: BTreeMap<String, BTreeSet<String>>,
}

impl Usage {
    pub fn users(&self, ami: &str) -> Vec<String> {
        self.by_image
            .get(ami)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    fn add(&mut self, ami: &str, user: String) {
        self.by_image
            .entry(ami.to_string())
            .or_default()
            .insert(user);
    }
}

/// A launch template version's image, after resolving `resolve:ssm:` references.
struct LtVersion {
    lt_id: String,
    lt_name: String,
    version: i64,
    ami: Option<String>,
}

pub async fn collect(c: &Clients) -> Result<Usage, AwsError> {
    let mut usage = Usage::default();

    for i in crate::aws::ec2::live_instances(&c.ec2, vec![]).await? {
        if let Some(ami) = i.image_id() {
            let state = i
                .state()
                .and_then(|s| s.name())
                .map(|s| s.as_str())
                .unwrap_or("?");
            usage.add(
                ami,
                format!("instance {} ({state})", i.instance_id().unwrap_or_default()),
            );
        }
    }

    // Every version of every launch template: a non-default version can still be launched
    // (and an ASG may pin it).
    let mut versions: Vec<LtVersion> = Vec::new();
    let mut defaults: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    let mut names: BTreeMap<String, String> = BTreeMap::new();
    let mut lts = c.ec2.describe_launch_templates().into_paginator().send();
    while let Some(page) = lts.next().await {
        let page = page.ctx("DescribeLaunchTemplates", None)?;
        for lt in page.launch_templates() {
            let id = lt.launch_template_id().unwrap_or_default().to_string();
            let name = lt.launch_template_name().unwrap_or_default().to_string();
            defaults.insert(
                id.clone(),
                (
                    lt.default_version_number().unwrap_or(1),
                    lt.latest_version_number().unwrap_or(1),
                ),
            );
            names.insert(name.clone(), id.clone());
            let mut vp = c
                .ec2
                .describe_launch_template_versions()
                .launch_template_id(&id)
                .into_paginator()
                .send();
            while let Some(vpage) = vp.next().await {
                let vpage = vpage.ctx("DescribeLaunchTemplateVersions", Some(&id))?;
                for v in vpage.launch_template_versions() {
                    let raw = v
                        .launch_template_data()
                        .and_then(|d| d.image_id())
                        .map(str::to_string);
                    let ami = match raw {
                        Some(r) if r.starts_with("resolve:ssm:") => resolve_ssm(c, &r).await?,
                        other => other,
                    };
                    versions.push(LtVersion {
                        lt_id: id.clone(),
                        lt_name: name.clone(),
                        version: v.version_number().unwrap_or(0),
                        ami,
                    });
                }
            }
        }
    }
    for v in &versions {
        if let Some(ami) = &v.ami {
            usage.add(
                ami,
                format!(
                    "launch template {} ({}) version {}",
                    v.lt_name, v.lt_id, v.version
                ),
            );
        }
    }

    // Which image a (template, version) reference means.
    let lt_ami = |id: Option<&str>, name: Option<&str>, version: Option<&str>| -> Option<String> {
        let id = match (id, name) {
            (Some(i), _) => i.to_string(),
            (None, Some(n)) => names.get(n)?.clone(),
            _ => return None,
        };
        let (default, latest) = *defaults.get(&id)?;
        let num = match version.unwrap_or("$Default") {
            "$Default" => default,
            "$Latest" => latest,
            n => n.parse().ok()?,
        };
        versions
            .iter()
            .find(|v| v.lt_id == id && v.version == num)
            .and_then(|v| v.ami.clone())
    };

    let mut lc_names: Vec<(String, String)> = Vec::new();
    let mut groups = c
        .autoscaling
        .describe_auto_scaling_groups()
        .into_paginator()
        .send();
    while let Some(page) = groups.next().await {
        let page = page.ctx("DescribeAutoScalingGroups", None)?;
        for g in page.auto_scaling_groups() {
            let gname = g.auto_scaling_group_name().unwrap_or_default().to_string();
            let mut specs = Vec::new();
            if let Some(lt) = g.launch_template() {
                specs.push(lt.clone());
            }
            if let Some(lt) = g.mixed_instances_policy().and_then(|m| m.launch_template()) {
                specs.extend(lt.launch_template_specification().cloned());
                for o in lt.overrides() {
                    specs.extend(o.launch_template_specification().cloned());
                    if let Some(ami) = o.image_id() {
                        usage.add(
                            ami,
                            format!("auto scaling group {gname} (mixed-instances override)"),
                        );
                    }
                }
            }
            for s in specs {
                if let Some(ami) = lt_ami(
                    s.launch_template_id(),
                    s.launch_template_name(),
                    s.version(),
                ) {
                    usage.add(&ami, format!("auto scaling group {gname}"));
                }
            }
            if let Some(lc) = g.launch_configuration_name() {
                lc_names.push((lc.to_string(), gname.clone()));
            }
        }
    }
    if !lc_names.is_empty() {
        let names: Vec<String> = lc_names.iter().map(|(l, _)| l.clone()).collect();
        let out = c
            .autoscaling
            .describe_launch_configurations()
            .set_launch_configuration_names(Some(names))
            .send()
            .await
            .ctx("DescribeLaunchConfigurations", None)?;
        for lc in out.launch_configurations() {
            let lname = lc.launch_configuration_name().unwrap_or_default();
            if let Some(ami) = lc.image_id() {
                for (_, g) in lc_names.iter().filter(|(l, _)| l == lname) {
                    usage.add(
                        ami,
                        format!("auto scaling group {g} (launch configuration {lname})"),
                    );
                }
            }
        }
    }
    Ok(usage)
}

/// `resolve:ssm:/name[:version]` → the parameter's current value.
async fn resolve_ssm(c: &Clients, raw: &str) -> Result<Option<String>, AwsError> {
    let name = raw.trim_start_matches("resolve:ssm:");
    match c
        .ssm
        .get_parameter()
        .name(name)
        .send()
        .await
        .ctx("GetParameter", Some(name))
    {
        Ok(out) => Ok(out.parameter().and_then(|p| p.value()).map(str::to_string)),
        Err(e) if e.code_is(&["ParameterNotFound", "ParameterVersionNotFound"]) => Ok(None),
        Err(e) => Err(e),
    }
}
