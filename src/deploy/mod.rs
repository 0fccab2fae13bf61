//! Rolling an image out to an Auto Scaling group: `bake deploy`.
//!
//! What it is for: after `bake build` made an AMI, put it into service without hand-editing
//! launch templates. A roll-out
//!
//! 1. reads the group's launch template version (pinning a group that follows `$Latest` /
//!    `$Default` to the number it resolves to today, so a new version does not leak into the
//!    group before the refresh and rollback stays possible),
//! 2. creates a new version that copies every setting of that version field by field and
//!    changes only the image id ([`template::copy_with_image`], verified after creation),
//! 3. starts an instance refresh whose `DesiredConfiguration` is pinned to that numbered
//!    version, with preferences from flags or the recipe's `[deploy]` table ([`prefs`]),
//! 4. follows it ([`wait`], through [`crate::retry::poll`]) to a terminal state, and
//! 5. keeps the template's versions bounded, never deleting the default version, one any group
//!    references, or the two versions of this roll-out ([`retain`]).
//!
//! AWS clients come in from the caller; nothing here reads the environment or handles signals
//! (the CLI does: Ctrl-C stops waiting and leaves the refresh running).

pub mod prefs;
pub mod template;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use aws_sdk_autoscaling::types::{
    AutoScalingGroup, DesiredConfiguration, InstanceRefresh, LaunchTemplateSpecification,
};
use serde::Serialize;

use crate::aws::{AwsError, Clients, Ctx};
use crate::recipe::model::Recipe;
use crate::retry::{Backoff, Poll, PollError, poll};
use crate::ui::Stage;

pub use prefs::{PrefFlags, Prefs};

/// Statuses of a refresh that is still running (and blocks another one).
pub const ACTIVE: &[&str] = &[
    "Pending",
    "InProgress",
    "Cancelling",
    "RollbackInProgress",
    "Baking",
];

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error(transparent)]
    Aws(#[from] AwsError),
    #[error("Auto Scaling group {0} not found")]
    GroupNotFound(String),
    #[error(
        "Auto Scaling group {0} has no launch template (launch configurations and mixed instances policies are not supported by bake deploy)"
    )]
    NoLaunchTemplate(String),
    #[error(
        "an instance refresh is already running on {asg}: {id} ({status}); follow it with `bake deploy status --asg {asg}`, stop it with `bake deploy cancel --asg {asg}`"
    )]
    RefreshInProgress {
        asg: String,
        id: String,
        status: String,
    },
    #[error("no instance refresh is running on Auto Scaling group {0}")]
    NoActiveRefresh(String),
    #[error("instance refresh {id} of {asg} cannot be rolled back: {message}")]
    Irreversible {
        asg: String,
        id: String,
        message: String,
    },
    #[error(
        "the copy of launch template {template} version {source_version} (new version {version}) differs in {} besides the image id; the new version was deleted",
        fields.join(", ")
    )]
    CopyMismatch {
        template: String,
        source_version: i64,
        version: i64,
        fields: Vec<String>,
    },
    #[error(
        "recipe {recipe} has not been built: no available image in {region} carries its current fingerprint {fingerprint}; run `bake build {path}` first"
    )]
    NotBuilt {
        recipe: String,
        region: String,
        fingerprint: String,
        path: String,
    },
    #[error("image {0} not found or not available")]
    ImageNotAvailable(String),
    #[error(
        "image {0} is a bake checkpoint (the builder part-way through its steps after step {1}), never a deploy candidate: deploy the recipe's image"
    )]
    CheckpointImage(String, String),
    #[error("recipe fingerprint: {0}")]
    Fingerprint(#[from] crate::pipeline::BuildError),
    #[error("waiting for instance refresh {id}: {message}")]
    Wait { id: String, message: String },
}

/// A group as a roll-out sees it.
#[derive(Debug, Clone)]
pub struct Group {
    pub name: String,
    pub template_id: String,
    /// The version as the group names it: `"4"`, `"$Latest"`, `"$Default"`.
    pub version_spec: String,
    /// That version, resolved.
    pub version: template::Version,
    pub instance_ids: Vec<String>,
}

/// A refresh as bake shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RefreshView {
    pub id: String,
    pub status: String,
    pub status_reason: Option<String>,
    pub percentage_complete: Option<i32>,
    pub instances_to_update: Option<i32>,
    pub desired_version: Option<String>,
    pub rollback_reason: Option<String>,
    pub rollback_percentage_complete: Option<i32>,
    pub start_time: Option<String>,
    pub end_time: Option<String>,
}

impl RefreshView {
    fn from_sdk(r: &InstanceRefresh) -> RefreshView {
        let rb = r.rollback_details();
        RefreshView {
            id: r.instance_refresh_id().unwrap_or_default().to_string(),
            status: r
                .status()
                .map(|s| s.as_str().to_string())
                .unwrap_or_default(),
            status_reason: r.status_reason().map(str::to_string),
            percentage_complete: r.percentage_complete(),
            instances_to_update: r.instances_to_update(),
            desired_version: r
                .desired_configuration()
                .and_then(|d| d.launch_template())
                .and_then(|l| l.version())
                .map(str::to_string),
            rollback_reason: rb.and_then(|d| d.rollback_reason()).map(str::to_string),
            rollback_percentage_complete: rb.and_then(|d| d.percentage_complete_on_rollback()),
            start_time: r.start_time().map(|t| t.to_string()),
            end_time: r.end_time().map(|t| t.to_string()),
        }
    }

    pub fn is_active(&self) -> bool {
        ACTIVE.contains(&self.status.as_str())
    }

    /// One line of progress: status, percentage, instances left, reason.
    pub fn progress(&self) -> String {
        let mut s = self.status.clone();
        if self.status == "RollbackInProgress" {
            if let Some(p) = self.rollback_percentage_complete {
                s.push_str(&format!(" (rollback {p}% complete)"));
            }
        } else {
            if let Some(p) = self.percentage_complete {
                s.push_str(&format!(" {p}% complete"));
            }
            if let Some(n) = self.instances_to_update {
                s.push_str(&format!(", {n} instance(s) to update"));
            }
        }
        if let Some(r) = &self.status_reason {
            s.push_str(&format!(" — {r}"));
        }
        s
    }
}

/// What the group runs now: its launch template version and image, and every instance's image.
#[derive(Debug, Clone, Serialize)]
pub struct GroupNow {
    pub asg: String,
    pub launch_template_id: String,
    pub version: String,
    pub version_number: i64,
    pub image_id: String,
    pub instances: BTreeMap<String, String>,
}

impl GroupNow {
    /// "ami-1 (launch template lt-… version 3; instances: 2 × ami-1)".
    pub fn describe(&self) -> String {
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for img in self.instances.values() {
            *counts.entry(img.as_str()).or_default() += 1;
        }
        let inst: Vec<String> = counts.iter().map(|(i, n)| format!("{n} × {i}")).collect();
        format!(
            "{} (launch template {} version {}; instances: {})",
            self.image_id,
            self.launch_template_id,
            self.version_number,
            if inst.is_empty() {
                "none".to_string()
            } else {
                inst.join(", ")
            }
        )
    }
}

/// A roll-out to start.
#[derive(Debug, Clone)]
pub struct DeployRequest {
    pub asg: String,
    pub ami: String,
    pub prefs: Prefs,
}

/// What starting a roll-out did.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Started {
    /// The group and all its instances already run the image: nothing to do.
    AlreadyOnImage {
        image_id: String,
        version_number: i64,
    },
    Started(Refresh),
}

/// The instance refresh a roll-out started: what it replaces with what.
#[derive(Debug, Clone, Serialize)]
pub struct Refresh {
    pub refresh_id: String,
    pub launch_template_id: String,
    pub version_number: i64,
    pub previous_version: i64,
    pub previous_image: String,
    /// Set when the group followed `$Latest`/`$Default` and was pinned first.
    pub pinned_from: Option<String>,
}

async fn group_raw(clients: &Clients, asg: &str) -> Result<AutoScalingGroup, DeployError> {
    let out = clients
        .autoscaling
        .describe_auto_scaling_groups()
        .auto_scaling_group_names(asg)
        .send()
        .await
        .ctx("DescribeAutoScalingGroups", Some(asg))?;
    out.auto_scaling_groups()
        .first()
        .cloned()
        .ok_or_else(|| DeployError::GroupNotFound(asg.to_string()))
}

async fn template_id_of(
    clients: &Clients,
    spec: &LaunchTemplateSpecification,
) -> Result<String, DeployError> {
    if let Some(id) = spec.launch_template_id() {
        return Ok(id.to_string());
    }
    let name = spec.launch_template_name().unwrap_or_default();
    let out = clients
        .ec2
        .describe_launch_templates()
        .launch_template_names(name)
        .send()
        .await
        .ctx("DescribeLaunchTemplates", Some(name))?;
    out.launch_templates()
        .first()
        .and_then(|t| t.launch_template_id())
        .map(str::to_string)
        .ok_or_else(|| {
            AwsError::new(
                "DescribeLaunchTemplates",
                Some(name.to_string()),
                "not found",
            )
            .into()
        })
}

/// The group, its launch template and the version it uses.
pub async fn describe_group(clients: &Clients, asg: &str) -> Result<Group, DeployError> {
    let g = group_raw(clients, asg).await?;
    let Some(spec) = g.launch_template() else {
        return Err(DeployError::NoLaunchTemplate(asg.to_string()));
    };
    let template_id = template_id_of(clients, spec).await?;
    let version_spec = spec.version().unwrap_or("$Default").to_string();
    let version = template::describe_version(&clients.ec2, &template_id, &version_spec).await?;
    Ok(Group {
        name: asg.to_string(),
        template_id,
        version_spec,
        version,
        instance_ids: g
            .instances()
            .iter()
            .filter_map(|i| i.instance_id().map(str::to_string))
            .collect(),
    })
}

/// Image of each instance.
pub async fn instance_images(
    ec2: &aws_sdk_ec2::Client,
    ids: &[String],
) -> Result<BTreeMap<String, String>, DeployError> {
    let mut out = BTreeMap::new();
    if ids.is_empty() {
        return Ok(out);
    }
    let resp = ec2
        .describe_instances()
        .set_instance_ids(Some(ids.to_vec()))
        .send()
        .await
        .ctx("DescribeInstances", None)?;
    for i in resp.reservations().iter().flat_map(|r| r.instances()) {
        if let (Some(id), Some(img)) = (i.instance_id(), i.image_id()) {
            out.insert(id.to_string(), img.to_string());
        }
    }
    Ok(out)
}

/// What the group runs now.
pub async fn group_now(clients: &Clients, asg: &str) -> Result<GroupNow, DeployError> {
    let g = describe_group(clients, asg).await?;
    let instances = instance_images(&clients.ec2, &g.instance_ids).await?;
    Ok(GroupNow {
        asg: asg.to_string(),
        launch_template_id: g.template_id.clone(),
        version: g.version_spec.clone(),
        version_number: g.version.number,
        image_id: g.version.image_id().unwrap_or_default().to_string(),
        instances,
    })
}

/// The group's refreshes, newest first.
pub async fn refreshes(
    clients: &Clients,
    asg: &str,
    ids: &[String],
) -> Result<Vec<RefreshView>, AwsError> {
    let out = clients
        .autoscaling
        .describe_instance_refreshes()
        .auto_scaling_group_name(asg)
        .set_instance_refresh_ids((!ids.is_empty()).then(|| ids.to_vec()))
        .send()
        .await
        .ctx("DescribeInstanceRefreshes", Some(asg))?;
    Ok(out
        .instance_refreshes()
        .iter()
        .map(RefreshView::from_sdk)
        .collect())
}

/// The running refresh of a group, if any.
pub async fn active_refresh(
    clients: &Clients,
    asg: &str,
) -> Result<Option<RefreshView>, DeployError> {
    Ok(refreshes(clients, asg, &[])
        .await?
        .into_iter()
        .find(|r| r.is_active()))
}

/// Checks that `ami` exists, is available and is no checkpoint image.
pub async fn check_image(ec2: &aws_sdk_ec2::Client, ami: &str) -> Result<(), DeployError> {
    let out = ec2.describe_images().image_ids(ami).send().await;
    let checkpoint = out.as_ref().ok().and_then(|o| {
        o.images().iter().find_map(|i| {
            crate::aws::ec2::tag_map(i.tags()).remove(crate::pipeline::checkpoint::CHECKPOINT_TAG)
        })
    });
    if let Some(step) = checkpoint {
        return Err(DeployError::CheckpointImage(ami.to_string(), step));
    }
    match out {
        Ok(o)
            if o.images()
                .iter()
                .any(|i| i.state().map(|s| s.as_str()) == Some("available")) =>
        {
            Ok(())
        }
        Ok(_) => Err(DeployError::ImageNotAvailable(ami.to_string())),
        Err(e) => {
            let e = AwsError::from_sdk("DescribeImages", Some(ami), e);
            if e.is_not_found() || e.code_is(&["InvalidAMIID.Malformed"]) {
                Err(DeployError::ImageNotAvailable(ami.to_string()))
            } else {
                Err(e.into())
            }
        }
    }
}

/// The image carrying `recipe`'s current fingerprint (computed as `bake plan` does, in the
/// build region) in the region of `clients`: the build region or one of its copy regions.
pub async fn image_of_recipe(clients: &Clients, recipe: &Recipe) -> Result<String, DeployError> {
    let (plan, hit) = crate::pipeline::lookup::image_in_region(clients, recipe).await?;
    hit.ok_or_else(|| DeployError::NotBuilt {
        recipe: recipe.name.clone(),
        region: clients.region.clone(),
        fingerprint: plan.fingerprint.clone(),
        path: recipe.path.display().to_string(),
    })
}

/// Starts a roll-out (see the module docs); does not wait.
pub async fn start(
    clients: &Clients,
    ui: &crate::ui::Ui,
    req: &DeployRequest,
) -> Result<Started, DeployError> {
    check_image(&clients.ec2, &req.ami).await?;
    let group = describe_group(clients, &req.asg).await?;
    if let Some(r) = active_refresh(clients, &req.asg).await? {
        return Err(DeployError::RefreshInProgress {
            asg: req.asg.clone(),
            id: r.id,
            status: r.status,
        });
    }
    let previous_image = group.version.image_id().unwrap_or_default().to_string();
    let images = instance_images(&clients.ec2, &group.instance_ids).await?;
    if previous_image == req.ami && images.values().all(|i| *i == req.ami) {
        return Ok(Started::AlreadyOnImage {
            image_id: req.ami.clone(),
            version_number: group.version.number,
        });
    }

    // A group following $Latest would pick up the new version before the refresh (and AWS
    // refuses to roll such a group back): pin it to what it runs today first.
    let mut pinned_from = None;
    if group.version_spec.starts_with('$') {
        ui.line(&format!(
            "group {} uses launch template {} {}; pinning it to version {} (what that resolves to now) so the roll-out can be rolled back",
            req.asg, group.template_id, group.version_spec, group.version.number
        ));
        clients
            .autoscaling
            .update_auto_scaling_group()
            .auto_scaling_group_name(&req.asg)
            .launch_template(
                LaunchTemplateSpecification::builder()
                    .launch_template_id(&group.template_id)
                    .version(group.version.number.to_string())
                    .build(),
            )
            .send()
            .await
            .ctx("UpdateAutoScalingGroup", Some(&req.asg))?;
        pinned_from = Some(group.version_spec.clone());
    }

    let new = template::copy_with_image(
        &clients.ec2,
        &group.version,
        &req.ami,
        &format!(
            "bake deploy: {} (copy of version {})",
            req.ami, group.version.number
        ),
    )
    .await?;
    ui.line(&format!(
        "launch template {} version {} = version {} with image {} (was {previous_image})",
        group.template_id, new.number, group.version.number, req.ami
    ));

    let started = clients
        .autoscaling
        .start_instance_refresh()
        .auto_scaling_group_name(&req.asg)
        .desired_configuration(
            DesiredConfiguration::builder()
                .launch_template(
                    LaunchTemplateSpecification::builder()
                        .launch_template_id(&group.template_id)
                        .version(new.number.to_string())
                        .build(),
                )
                .build(),
        )
        .preferences(req.prefs.to_sdk())
        .send()
        .await
        .ctx("StartInstanceRefresh", Some(&req.asg));
    let refresh_id = match started {
        Ok(o) => o.instance_refresh_id().unwrap_or_default().to_string(),
        Err(e) => {
            // nothing will use the version we just made
            let _ =
                template::delete_versions(&clients.ec2, &group.template_id, &[new.number]).await;
            if e.code_is(&["InstanceRefreshInProgress"]) {
                let active = active_refresh(clients, &req.asg).await.ok().flatten();
                return Err(DeployError::RefreshInProgress {
                    asg: req.asg.clone(),
                    id: active
                        .as_ref()
                        .map(|r| r.id.clone())
                        .unwrap_or_else(|| "?".into()),
                    status: active.map(|r| r.status).unwrap_or_else(|| "running".into()),
                });
            }
            return Err(e.into());
        }
    };
    Ok(Started::Started(Refresh {
        refresh_id,
        launch_template_id: group.template_id,
        version_number: new.number,
        previous_version: group.version.number,
        previous_image,
        pinned_from,
    }))
}

/// How refresh progress is polled: a quick first look, then every two seconds, for as long as
/// checkpoints may make a refresh take (CheckpointDelay is at most 48 h per checkpoint).
pub const REFRESH_POLL: Backoff = Backoff {
    initial: Duration::from_millis(250),
    max: Duration::from_secs(2),
    factor: 1.5,
    timeout: Duration::from_secs(7 * 24 * 3600),
};

/// Follows refresh `id` until it reaches a terminal state, showing progress on `stage`.
pub async fn wait(
    clients: &Clients,
    stage: &Stage,
    asg: &str,
    id: &str,
) -> Result<RefreshView, DeployError> {
    let ids = [id.to_string()];
    let res = poll(REFRESH_POLL, |_| {
        let ids = ids.clone();
        async move {
            match refreshes(clients, asg, &ids).await {
                Ok(list) => match list.into_iter().next() {
                    Some(r) if r.is_active() => {
                        let p = r.progress();
                        stage.update(&p);
                        Poll::Pending(p)
                    }
                    Some(r) => Poll::Ready(r),
                    None => Poll::Fail(DeployError::Wait {
                        id: ids[0].clone(),
                        message: "the refresh is not listed any more".into(),
                    }),
                },
                Err(e) => Poll::from_err(e).map_err(Into::into),
            }
        }
    })
    .await;
    match res {
        Ok(r) => Ok(r),
        Err(PollError::Failed(e)) => Err(e),
        Err(PollError::Timeout { elapsed, last }) => Err(DeployError::Wait {
            id: id.to_string(),
            message: format!("still not finished after {elapsed:?} ({last})"),
        }),
    }
}

/// Cancels the running refresh; returns its id.
pub async fn cancel(clients: &Clients, asg: &str) -> Result<String, DeployError> {
    let out = clients
        .autoscaling
        .cancel_instance_refresh()
        .auto_scaling_group_name(asg)
        .send()
        .await
        .ctx("CancelInstanceRefresh", Some(asg));
    match out {
        Ok(o) => Ok(o.instance_refresh_id().unwrap_or_default().to_string()),
        Err(e) if e.code_is(&["ActiveInstanceRefreshNotFound"]) => {
            Err(DeployError::NoActiveRefresh(asg.to_string()))
        }
        Err(e) => Err(e.into()),
    }
}

/// Rolls the running refresh back; returns its id.
pub async fn rollback(clients: &Clients, asg: &str) -> Result<String, DeployError> {
    let out = clients
        .autoscaling
        .rollback_instance_refresh()
        .auto_scaling_group_name(asg)
        .send()
        .await
        .ctx("RollbackInstanceRefresh", Some(asg));
    match out {
        Ok(o) => Ok(o.instance_refresh_id().unwrap_or_default().to_string()),
        Err(e) if e.code_is(&["ActiveInstanceRefreshNotFound"]) => {
            Err(DeployError::NoActiveRefresh(asg.to_string()))
        }
        Err(e) if e.code_is(&["IrreversibleInstanceRefresh"]) => Err(DeployError::Irreversible {
            asg: asg.to_string(),
            id: String::new(),
            message: e.message,
        }),
        Err(e) => Err(e.into()),
    }
}

/// Version numbers of `template_id` that some Auto Scaling group references (`$Latest` and
/// `$Default` resolved), across all groups of the account and region.
pub async fn referenced_versions(
    clients: &Clients,
    template_id: &str,
    latest: i64,
    default: Option<i64>,
) -> Result<BTreeSet<i64>, DeployError> {
    let mut out = BTreeSet::new();
    let mut token: Option<String> = None;
    loop {
        let resp = clients
            .autoscaling
            .describe_auto_scaling_groups()
            .set_next_token(token.clone())
            .send()
            .await
            .ctx("DescribeAutoScalingGroups", None)?;
        for g in resp.auto_scaling_groups() {
            let mut specs: Vec<&LaunchTemplateSpecification> = Vec::new();
            specs.extend(g.launch_template());
            if let Some(s) = g
                .mixed_instances_policy()
                .and_then(|m| m.launch_template())
                .and_then(|l| l.launch_template_specification())
            {
                specs.push(s);
            }
            for s in specs {
                let same = if s.launch_template_id().is_some() {
                    s.launch_template_id() == Some(template_id)
                } else if s.launch_template_name().is_some() {
                    template_id_of(clients, s).await.ok().as_deref() == Some(template_id)
                } else {
                    false
                };
                if !same {
                    continue;
                }
                match s.version().unwrap_or("$Default") {
                    "$Latest" => {
                        out.insert(latest);
                    }
                    "$Default" => out.extend(default),
                    n => out.extend(n.parse::<i64>().ok()),
                }
            }
        }
        token = resp
            .next_token()
            .filter(|t| !t.is_empty())
            .map(str::to_string);
        if token.is_none() {
            break;
        }
    }
    Ok(out)
}

/// What retention did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Retention {
    pub kept: Vec<i64>,
    pub deleted: Vec<i64>,
    pub refused: Vec<String>,
}

/// Deletes all but the newest `keep` versions of `template_id`, never the default version,
/// one a group references, or one in `also_keep`.
pub async fn retain(
    clients: &Clients,
    template_id: &str,
    keep: u32,
    also_keep: &[i64],
) -> Result<Retention, DeployError> {
    let (all, default) = template::all_versions(&clients.ec2, template_id).await?;
    let latest = all.iter().copied().max().unwrap_or(0);
    let mut protected = referenced_versions(clients, template_id, latest, default).await?;
    protected.extend(default);
    protected.extend(also_keep.iter().copied());
    let doomed = template::versions_to_delete(&all, keep as usize, &protected);
    let (deleted, refused) = if doomed.is_empty() {
        (Vec::new(), Vec::new())
    } else {
        template::delete_versions(&clients.ec2, template_id, &doomed).await?
    };
    let kept = all.into_iter().filter(|v| !deleted.contains(v)).collect();
    Ok(Retention {
        kept,
        deleted,
        refused,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(status: &str) -> RefreshView {
        RefreshView {
            id: "r-1".into(),
            status: status.into(),
            status_reason: None,
            percentage_complete: Some(50),
            instances_to_update: Some(1),
            desired_version: Some("3".into()),
            rollback_reason: None,
            rollback_percentage_complete: None,
            start_time: None,
            end_time: None,
        }
    }

    #[test]
    fn progress_line_says_status_percentage_and_reason() {
        let mut r = view("InProgress");
        assert_eq!(
            r.progress(),
            "InProgress 50% complete, 1 instance(s) to update"
        );
        r.status_reason = Some("Checkpoint 50% reached".into());
        assert!(r.progress().ends_with(" — Checkpoint 50% reached"));
        assert!(r.is_active());
        let mut r = view("RollbackInProgress");
        r.rollback_percentage_complete = Some(100);
        assert_eq!(r.progress(), "RollbackInProgress (rollback 100% complete)");
        for s in [
            "Successful",
            "Failed",
            "Cancelled",
            "RollbackSuccessful",
            "RollbackFailed",
        ] {
            assert!(!view(s).is_active(), "{s}");
        }
        for s in [
            "Pending",
            "InProgress",
            "Cancelling",
            "RollbackInProgress",
            "Baking",
        ] {
            assert!(view(s).is_active(), "{s}");
        }
    }

    #[test]
    fn group_now_counts_instances_per_image() {
        let g = GroupNow {
            asg: "web".into(),
            launch_template_id: "lt-1".into(),
            version: "4".into(),
            version_number: 4,
            image_id: "ami-a".into(),
            instances: [("i-1", "ami-a"), ("i-2", "ami-b"), ("i-3", "ami-a")]
                .into_iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
        };
        assert_eq!(
            g.describe(),
            "ami-a (launch template lt-1 version 4; instances: 2 × ami-a, 1 × ami-b)"
        );
    }
}
