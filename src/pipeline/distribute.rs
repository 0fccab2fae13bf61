//! The "distribute" stage: the available image goes to every region of `[image] regions`
//! (copies made in parallel, tagged at creation, undone if they fail), then each region's
//! image gets its launch and snapshot permissions, deprecation and deregistration protection,
//! and once every region is ready the SSM parameter is set to each region's id.
//!
//! The cache is per region: a region that already holds an available, complete image of the
//! fingerprint gets no copy, so a rerun after a failed or deleted copy makes only what is
//! missing, and never rebuilds. `--force` rebuilt the image on purpose: every region gets a
//! copy of the new one.

use std::collections::BTreeMap;
use std::time::Duration;

use aws_sdk_ec2::types::{
    CreateVolumePermission, CreateVolumePermissionModifications, LaunchPermission,
    LaunchPermissionModifications, PermissionGroup, ResourceType,
};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::cleanup::{Made, Undo};
use super::image::{STATE_TAG, find_by_fingerprint, mark_complete};
use super::{Bake, BuildError, FoundImage};
use crate::aws::ec2::{self, tag_map, tag_spec};
use crate::aws::{AwsError, Clients, Ctx};
use crate::plan::Fingerprint;
use crate::recipe::model::Recipe;

/// On a copy: `region:ami` of the image it was copied from (where the recipe is built).
pub const COPIED_FROM_TAG: &str = "bake:copied-from";

/// One region's image of the build.
#[derive(Debug, Clone, Serialize)]
pub struct RegionImage {
    pub region: String,
    pub ami_id: String,
    pub snapshots: Vec<String>,
    /// Copied by this run (false: built here, or found already there).
    pub copied: bool,
}

/// Refuses a recipe that lists the build region among its copy regions, as
/// `line:col` of the entry and a message; checked before any AWS call.
pub fn build_region_listed(recipe: &Recipe, build_region: &str) -> Option<(String, String)> {
    recipe
        .image
        .distribution
        .regions
        .iter()
        .find(|(r, _)| r == build_region)
        .map(|(r, at)| {
            (
                at.clone(),
                format!(
                    "region \"{r}\" in [image] regions is the build region: the image is made there"
                ),
            )
        })
}

/// The CopyImage client token of a copy: the same fingerprint, region and run give the same
/// token, so the SDK's retries of a call whose answer was lost never make a second copy. The
/// run is part of it because EC2 keeps answering a used token with its first image, even one
/// a failed run has since removed.
fn client_token(fp: &Fingerprint, region: &str, build_id: &str) -> String {
    let mut h = Sha256::new();
    h.update(fp.hash.as_bytes());
    h.update(b"\0");
    h.update(region.as_bytes());
    h.update(b"\0");
    h.update(build_id.as_bytes());
    hex::encode(h.finalize())[..64].to_string()
}

impl Bake<'_> {
    /// The "distribute" stage, called once `image` is available in the build region. Returns
    /// every region's image, the build region first.
    pub async fn distribute(
        &self,
        fp: &Fingerprint,
        image: &FoundImage,
    ) -> Result<Vec<RegionImage>, BuildError> {
        let dist = &self.recipe.image.distribution;
        let home = RegionImage {
            region: self.clients.region.clone(),
            ami_id: image.ami_id.clone(),
            snapshots: image.snapshots.clone(),
            copied: false,
        };
        if dist.is_empty() {
            return Ok(vec![home]);
        }
        let st = self.ui.stage(
            "distribute",
            &format!(
                "distributing {} to {} region(s)",
                image.ami_id,
                dist.regions.len()
            ),
        );
        let source = ec2::describe_image(&self.clients.ec2, &image.ami_id)
            .await?
            .ok_or_else(|| {
                AwsError::new(
                    "DescribeImages",
                    Some(image.ami_id.clone()),
                    "image not found",
                )
            })?;
        let source_tags = tag_map(source.tags());
        let copies = futures::future::join_all(dist.regions.iter().map(|(region, _)| {
            let source_tags = &source_tags;
            async move {
                let there = self.clients.in_region(region);
                let r = self.copy_to(&there, fp, image, source_tags).await;
                (region.clone(), there, r)
            }
        }))
        .await;
        let mut all = vec![(self.clients.clone(), home)];
        let mut failed = Vec::new();
        for (region, there, r) in copies {
            match r {
                Ok(img) => all.push((there, img)),
                Err(e) => failed.push((region, e)),
            }
        }
        if let Some((region, source)) = failed.into_iter().next() {
            st.fail(&format!("copy to {region} failed"));
            return Err(BuildError::Copy {
                region,
                source: Box::new(source),
            });
        }
        futures::future::try_join_all(all.iter().map(|(c, img)| self.settle_region(c, img)))
            .await?;
        if let Some(template) = &dist.ssm_parameter {
            let name = template.replace("{recipe}", &self.recipe.name);
            futures::future::try_join_all(
                all.iter()
                    .map(|(c, img)| put_parameter(c, &name, &img.ami_id)),
            )
            .await?;
        }
        let images: Vec<RegionImage> = all.into_iter().map(|(_, i)| i).collect();
        st.finish(
            &images
                .iter()
                .map(|i| format!("{}:{}", i.region, i.ami_id))
                .collect::<Vec<_>>()
                .join(", "),
        );
        Ok(images)
    }

    /// The image of `fp` in the region of `there`: found, or copied now (tagged at creation,
    /// its undo registered before the copy is asked for and dropped once it is available).
    async fn copy_to(
        &self,
        there: &Clients,
        fp: &Fingerprint,
        image: &FoundImage,
        source_tags: &BTreeMap<String, String>,
    ) -> Result<RegionImage, AwsError> {
        let region = there.region.clone();
        // `--force` rebuilt the image: its copies are of it, not of an earlier build.
        let hit = if self.opts.force {
            None
        } else {
            find_by_fingerprint(&there.ec2, &fp.hash).await?
        };
        if let Some(hit) = hit {
            self.ui.line(&format!(
                "copy {region}: {} present (same fingerprint), no copy",
                hit.ami_id
            ));
            return Ok(RegionImage {
                region,
                ami_id: hit.ami_id,
                snapshots: hit.snapshots,
                copied: false,
            });
        }
        // One progress line (a spinner on a terminal) per copy, as the copies run at once.
        let st = self.ui.stage(
            &format!("copy {region}"),
            &format!("copying {} from {}", image.ami_id, self.clients.region),
        );
        match self.copy_new(there, fp, image, source_tags, &st).await {
            Ok(img) => {
                st.finish(&format!(
                    "{} available, snapshots {}",
                    img.ami_id,
                    img.snapshots.join(", ")
                ));
                Ok(img)
            }
            Err(e) => {
                st.fail(&e.to_string());
                Err(e)
            }
        }
    }

    /// A new copy in the region of `there` (see [`Bake::copy_to`]).
    async fn copy_new(
        &self,
        there: &Clients,
        fp: &Fingerprint,
        image: &FoundImage,
        source_tags: &BTreeMap<String, String>,
        st: &crate::ui::Stage,
    ) -> Result<RegionImage, AwsError> {
        let region = there.region.clone();
        let mut tags = source_tags.clone();
        tags.insert("bake:build-id".into(), self.build_id.to_string());
        tags.insert(STATE_TAG.into(), "pending".into());
        tags.insert(
            COPIED_FROM_TAG.into(),
            format!("{}:{}", self.clients.region, image.ami_id),
        );
        let (k, v) = super::lease::initial_tag();
        tags.insert(k, v);
        let mut snap_tags = tags.clone();
        snap_tags.extend(self.recipe.image.snapshot_tags.clone());
        let undo = self.cleanup.push(Undo::DeregisterCopy {
            region: region.clone(),
            name: image.name.clone(),
            build_id: self.build_id.to_string(),
            made: Made::Unknown,
        });
        let kms = self.recipe.image.distribution.kms.get(&region);
        let out = there
            .ec2
            .copy_image()
            .source_region(&self.clients.region)
            .source_image_id(&image.ami_id)
            .name(&image.name)
            .set_description(self.recipe.image.description.clone())
            .client_token(client_token(fp, &region, self.build_id))
            .set_encrypted(kms.map(|_| true))
            .set_kms_key_id(kms.cloned())
            .tag_specifications(tag_spec(ResourceType::Image, &tags))
            .tag_specifications(tag_spec(ResourceType::Snapshot, &snap_tags))
            .send()
            .await
            .ctx("CopyImage", Some(&format!("{} to {region}", image.ami_id)));
        let ami = match out {
            Ok(o) => o.image_id().unwrap_or_default().to_string(),
            Err(e) => {
                if e.is_refusal() {
                    self.cleanup.refused(undo);
                }
                return Err(e);
            }
        };
        self.cleanup.resolve(undo, &ami);
        st.update(&format!("{ami} pending"));
        let img =
            ec2::wait_image_available(&there.ec2, &ami, Duration::from_secs(4 * 3600)).await?;
        let snapshots = ec2::image_snapshots(&img);
        mark_complete(&there.ec2, &ami, &snapshots).await?;
        self.cleanup.keep(undo);
        Ok(RegionImage {
            region,
            ami_id: ami,
            snapshots,
            copied: true,
        })
    }

    /// Sharing, deprecation, IMDS support and deregistration protection of one region's
    /// image; each call is idempotent, so a rerun sets them again on images found.
    async fn settle_region(&self, c: &Clients, img: &RegionImage) -> Result<(), AwsError> {
        let dist = &self.recipe.image.distribution;
        let share = &dist.share;
        let ami = img.ami_id.as_str();
        let mut adds: Vec<LaunchPermission> = Vec::new();
        for a in &share.accounts {
            adds.push(LaunchPermission::builder().user_id(a).build());
        }
        for o in &share.organizations {
            adds.push(LaunchPermission::builder().organization_arn(o).build());
        }
        for u in &share.organizational_units {
            adds.push(
                LaunchPermission::builder()
                    .organizational_unit_arn(u)
                    .build(),
            );
        }
        if share.public {
            adds.push(
                LaunchPermission::builder()
                    .group(PermissionGroup::All)
                    .build(),
            );
        }
        if !adds.is_empty() {
            c.ec2
                .modify_image_attribute()
                .image_id(ami)
                .launch_permission(
                    LaunchPermissionModifications::builder()
                        .set_add(Some(adds))
                        .build(),
                )
                .send()
                .await
                .ctx("ModifyImageAttribute", Some(ami))?;
        }
        let mut perms: Vec<CreateVolumePermission> = Vec::new();
        if share.snapshots {
            for a in &share.accounts {
                perms.push(CreateVolumePermission::builder().user_id(a).build());
            }
            // Validation allows this only with `public_snapshots = true` (and `public`).
            if share.public_snapshots {
                perms.push(
                    CreateVolumePermission::builder()
                        .group(PermissionGroup::All)
                        .build(),
                );
            }
        }
        if !perms.is_empty() {
            for snap in &img.snapshots {
                c.ec2
                    .modify_snapshot_attribute()
                    .snapshot_id(snap)
                    .create_volume_permission(
                        CreateVolumePermissionModifications::builder()
                            .set_add(Some(perms.clone()))
                            .build(),
                    )
                    .send()
                    .await
                    .ctx("ModifySnapshotAttribute", Some(snap))?;
            }
        }
        if let Some(i) = &dist.imds_support {
            c.ec2
                .modify_image_attribute()
                .image_id(ami)
                .imds_support(
                    aws_sdk_ec2::types::AttributeValue::builder()
                        .value(i)
                        .build(),
                )
                .send()
                .await
                .ctx("ModifyImageAttribute", Some(ami))?;
        }
        if let Some(after) = dist.deprecate_after {
            // EC2 keeps minutes; counted from now, so every region deprecates together.
            let at = jiff::Timestamp::now()
                .checked_add(jiff::SignedDuration::try_from(after).unwrap_or_default())
                .unwrap_or_else(|_| jiff::Timestamp::now());
            let at = aws_smithy_types::DateTime::from_secs(at.as_second() / 60 * 60 + 60);
            c.ec2
                .enable_image_deprecation()
                .image_id(ami)
                .deprecate_at(at)
                .send()
                .await
                .ctx("EnableImageDeprecation", Some(ami))?;
        }
        if dist.deregistration_protection {
            c.ec2
                .enable_image_deregistration_protection()
                .image_id(ami)
                .send()
                .await
                .ctx("EnableImageDeregistrationProtection", Some(ami))?;
        }
        Ok(())
    }
}

/// Sets the parameter to the region's AMI id, as an `aws:ec2:image` parameter (SSM checks the
/// id exists in that region).
async fn put_parameter(c: &Clients, name: &str, ami: &str) -> Result<(), AwsError> {
    c.ssm
        .put_parameter()
        .name(name)
        .value(ami)
        .r#type(aws_sdk_ssm::types::ParameterType::String)
        .data_type("aws:ec2:image")
        .overwrite(true)
        .send()
        .await
        .ctx("PutParameter", Some(name))?;
    Ok(())
}
