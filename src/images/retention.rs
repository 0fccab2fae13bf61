//! Inventory and retention of bake's images. Only images carrying bake's tags are ever
//! candidates; an image in use is kept; deregistration deletes each snapshot unless another
//! image still references it. Everything is per region: an image's copies are separate images
//! with their own snapshots and users, so each region's copy is judged by that region's usage
//! and "keep the newest N" counts within each region. Checkpoint images (see
//! `crate::pipeline::checkpoint`) are pruned with their recipe, apart from its images: the
//! newest of each checkpoint stays.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use aws_sdk_ec2::types::Image;
use serde::Serialize;

use super::usage::{self, Usage};
use crate::aws::ec2::{self, filter, tag_map};
use crate::aws::{AwsError, Clients, Ctx};
use crate::pipeline::checkpoint::{CHECKPOINT_TAG, PREFIX_TAG};
use crate::pipeline::newest::{BUILT_AT_TAG, Newness, newest_first};

#[derive(Debug, Clone, Serialize)]
pub struct ImageInfo {
    pub region: String,
    pub ami_id: String,
    pub name: String,
    pub recipe: String,
    pub fingerprint: String,
    pub created: String,
    /// bake's precise build time (`bake:built-at`); absent on images made before it existed.
    pub built_at: Option<String>,
    pub state: String,
    pub snapshots: Vec<SnapshotInfo>,
    pub used_by: Vec<String>,
    /// A checkpoint image: the step it was made after (`fingerprint` is then its prefix's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<String>,
}

impl ImageInfo {
    pub fn newness(&self) -> Newness {
        Newness::new(self.built_at.as_deref(), Some(&self.created), &self.ami_id)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SnapshotInfo {
    pub id: String,
    pub size_gib: Option<i32>,
}

/// bake's images in the region of `c` (optionally of one recipe), newest first, with
/// snapshots and users.
pub async fn list(c: &Clients, recipe: Option<&str>) -> Result<Vec<ImageInfo>, AwsError> {
    let f = match recipe {
        Some(r) => filter("tag:bake:recipe", [r]),
        None => filter("tag-key", ["bake:fingerprint"]),
    };
    let imgs = ec2::own_images(&c.ec2, vec![f]).await?;
    let usage = usage::collect(c).await?;
    let snap_ids: Vec<String> = imgs.iter().flat_map(ec2::image_snapshots).collect();
    let sizes = snapshot_sizes(c, &snap_ids).await?;
    let mut out: Vec<ImageInfo> = imgs
        .iter()
        .filter(|i| is_bakes(i))
        .map(|i| info(&c.region, i, &usage, &sizes))
        .collect();
    out.sort_by(|a, b| newest_first(&a.newness(), &b.newness()));
    Ok(out)
}

fn is_bakes(i: &Image) -> bool {
    let t = tag_map(i.tags());
    t.contains_key("bake:recipe")
        && (t.contains_key("bake:fingerprint") || t.contains_key(PREFIX_TAG))
}

fn info(
    region: &str,
    i: &Image,
    usage: &Usage,
    sizes: &BTreeMap<String, Option<i32>>,
) -> ImageInfo {
    let t = tag_map(i.tags());
    let id = i.image_id().unwrap_or_default().to_string();
    ImageInfo {
        region: region.to_string(),
        built_at: t.get(BUILT_AT_TAG).cloned(),
        used_by: usage.users(&id),
        ami_id: id,
        name: i.name().unwrap_or_default().to_string(),
        recipe: t.get("bake:recipe").cloned().unwrap_or_default(),
        fingerprint: t
            .get("bake:fingerprint")
            .or_else(|| t.get(PREFIX_TAG))
            .cloned()
            .unwrap_or_default(),
        checkpoint: t.get(CHECKPOINT_TAG).cloned(),
        created: i.creation_date().unwrap_or_default().to_string(),
        state: i
            .state()
            .map(|s| s.as_str().to_string())
            .unwrap_or_default(),
        snapshots: ec2::image_snapshots(i)
            .into_iter()
            .map(|s| SnapshotInfo {
                size_gib: sizes.get(&s).copied().flatten(),
                id: s,
            })
            .collect(),
    }
}

async fn snapshot_sizes(
    c: &Clients,
    ids: &[String],
) -> Result<BTreeMap<String, Option<i32>>, AwsError> {
    let mut out = BTreeMap::new();
    for chunk in ids.chunks(200) {
        let resp = c
            .ec2
            .describe_snapshots()
            .set_snapshot_ids(Some(chunk.to_vec()))
            .send()
            .await;
        match resp.ctx("DescribeSnapshots", None) {
            Ok(r) => {
                for s in r.snapshots() {
                    out.insert(
                        s.snapshot_id().unwrap_or_default().to_string(),
                        s.volume_size(),
                    );
                }
            }
            // A snapshot deleted meanwhile only loses its size.
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    KeepNewest,
    KeepInUse,
    KeepTooYoung,
    Delete,
}

#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    pub image: ImageInfo,
    pub verdict: Verdict,
    pub reason: String,
}

/// Decides each region on its own (regions in the order they first appear), newest first:
/// the newest `keep` stay; of the rest, those younger than `older_than` stay; anything in use
/// (in its own region) stays whatever its age. Checkpoint images are decided apart, per
/// checkpoint step: the newest of each stays (a build starts from no other).
pub fn decide(
    images: Vec<ImageInfo>,
    keep: usize,
    older_than: Option<Duration>,
    now: jiff::Timestamp,
) -> Vec<Decision> {
    let mut regions: Vec<String> = Vec::new();
    for i in &images {
        if !regions.contains(&i.region) {
            regions.push(i.region.clone());
        }
    }
    let mut out = Vec::new();
    for region in regions {
        let mut here: Vec<ImageInfo> = images
            .iter()
            .filter(|i| i.region == region)
            .cloned()
            .collect();
        here.sort_by(|a, b| newest_first(&a.newness(), &b.newness()));
        out.extend(decide_region(here, keep, older_than, now));
    }
    out
}

fn decide_region(
    imgs: Vec<ImageInfo>,
    keep: usize,
    older_than: Option<Duration>,
    now: jiff::Timestamp,
) -> impl Iterator<Item = Decision> {
    // Images rank among the recipe's images, checkpoints among their step's checkpoints.
    let mut seen: BTreeMap<Option<String>, usize> = BTreeMap::new();
    imgs.into_iter().map(move |image| {
        let rank = seen.entry(image.checkpoint.clone()).or_insert(0);
        let idx = *rank;
        *rank += 1;
        let (verdict, reason) = if image.checkpoint.is_some() && idx == 0 {
            (
                Verdict::KeepNewest,
                "the newest of its checkpoint".to_string(),
            )
        } else if image.checkpoint.is_none() && idx < keep {
            (Verdict::KeepNewest, format!("among the newest {keep}"))
        } else if !image.used_by.is_empty() {
            (
                Verdict::KeepInUse,
                format!("in use by {}", image.used_by.join(", ")),
            )
        } else if let Some(age) = older_than.and_then(|min| {
            let age = now.duration_since(image.newness().at());
            (age < jiff::SignedDuration::try_from(min).ok()?).then_some(age)
        }) {
            (
                Verdict::KeepTooYoung,
                format!("only {}s old", age.as_secs()),
            )
        } else {
            (Verdict::Delete, "old and unused".to_string())
        };
        Decision {
            image,
            verdict,
            reason,
        }
    })
}

/// Removes one image and the snapshots no other image references.
pub async fn remove(c: &Clients, ami: &str) -> Result<Vec<String>, AwsError> {
    let img = ec2::describe_image(&c.ec2, ami)
        .await?
        .ok_or_else(|| AwsError::new("DescribeImages", Some(ami.into()), "no such image"))?;
    let snaps = ec2::image_snapshots(&img);
    // Snapshots shared with any other image of ours stay.
    let others = ec2::own_images(&c.ec2, vec![]).await?;
    let shared: BTreeSet<String> = others
        .iter()
        .filter(|o| o.image_id() != Some(ami))
        .flat_map(ec2::image_snapshots)
        .filter(|s| snaps.contains(s))
        .collect();
    let keep: Vec<String> = shared.into_iter().collect();
    ec2::deregister_with_snapshots(&c.ec2, ami, &snaps, &keep).await
}

/// Looks up images by id for `bake images rm`, checking bake made them.
pub async fn lookup(c: &Clients, ids: &[String]) -> Result<Vec<ImageInfo>, AwsError> {
    let out = c
        .ec2
        .describe_images()
        .set_image_ids(Some(ids.to_vec()))
        .send()
        .await
        .ctx("DescribeImages", Some(&ids.join(",")))?;
    let usage = usage::collect(c).await?;
    let mut res = Vec::new();
    for id in ids {
        let img = out
            .images()
            .iter()
            .find(|i| i.image_id() == Some(id.as_str()))
            .ok_or_else(|| AwsError::new("DescribeImages", Some(id.clone()), "no such image"))?;
        if !is_bakes(img) {
            return Err(AwsError::new(
                "images rm",
                Some(id.clone()),
                "not made by bake (no bake:recipe/bake:fingerprint tags); refusing to touch it",
            ));
        }
        res.push(info(&c.region, img, &usage, &BTreeMap::new()));
    }
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(id: &str, created: &str, used: &[&str]) -> ImageInfo {
        ImageInfo {
            region: "us-east-1".into(),
            built_at: None,
            ami_id: id.into(),
            name: id.into(),
            recipe: "r".into(),
            fingerprint: "f".into(),
            created: created.into(),
            state: "available".into(),
            snapshots: vec![],
            used_by: used.iter().map(|s| s.to_string()).collect(),
            checkpoint: None,
        }
    }

    #[test]
    fn checkpoints_keep_their_newest_per_step_apart_from_the_images() {
        let now: jiff::Timestamp = "2026-11-23T12:00:00Z".parse().unwrap();
        let ck = |id: &str, created: &str, step: &str| ImageInfo {
            checkpoint: Some(step.into()),
            ..img(id, created, &[])
        };
        let imgs = vec![
            img("i1", "2026-11-20T00:00:00Z", &[]),
            ck("c1", "2026-11-21T00:00:00Z", "base"),
            ck("c2", "2026-11-22T00:00:00Z", "base"),
            ck("d1", "2026-11-19T00:00:00Z", "deps"),
            img("i2", "2026-11-18T00:00:00Z", &[]),
        ];
        let d = decide(imgs, 1, None, now);
        let v: Vec<(&str, Verdict)> = d
            .iter()
            .map(|x| (x.image.ami_id.as_str(), x.verdict.clone()))
            .collect();
        assert_eq!(
            v,
            vec![
                ("c2", Verdict::KeepNewest),
                ("c1", Verdict::Delete),
                ("i1", Verdict::KeepNewest),
                ("d1", Verdict::KeepNewest),
                ("i2", Verdict::Delete),
            ]
        );
    }

    #[test]
    fn keeps_newest_and_in_use_and_young() {
        let now: jiff::Timestamp = "2026-11-23T12:00:00Z".parse().unwrap();
        let imgs = vec![
            img("a", "2026-11-20T00:00:00Z", &[]),
            img("b", "2026-11-23T11:00:00Z", &[]),
            img("c", "2026-11-22T00:00:00Z", &["instance i-1 (running)"]),
            img("d", "2026-11-23T11:30:00Z", &[]),
            img("e", "2026-11-23T10:00:00Z", &[]),
        ];
        let d = decide(imgs, 2, Some(Duration::from_secs(6 * 3600)), now);
        let v: Vec<(&str, Verdict)> = d
            .iter()
            .map(|x| (x.image.ami_id.as_str(), x.verdict.clone()))
            .collect();
        assert_eq!(
            v,
            vec![
                ("d", Verdict::KeepNewest),
                ("b", Verdict::KeepNewest),
                ("e", Verdict::KeepTooYoung),
                ("c", Verdict::KeepInUse),
                ("a", Verdict::Delete),
            ]
        );
    }

    #[test]
    fn each_region_is_decided_by_its_own_usage_and_newest() {
        let now: jiff::Timestamp = "2026-11-23T12:00:00Z".parse().unwrap();
        let at = |region: &str, id: &str, built: &str, used: &[&str]| ImageInfo {
            region: region.into(),
            built_at: Some(built.into()),
            ..img(id, "2026-11-23T11:00:00.000Z", used)
        };
        // Two builds in one second, copied to us-west-2 where the older copy is in use.
        let d = decide(
            vec![
                at("us-east-1", "ami-e2", "2026-11-23T11:00:00.2Z", &[]),
                at("us-east-1", "ami-e1", "2026-11-23T11:00:00.1Z", &[]),
                at("us-west-2", "ami-w1", "2026-11-23T11:00:00.1Z", &["lt"]),
                at("us-west-2", "ami-w2", "2026-11-23T11:00:00.2Z", &[]),
            ],
            1,
            None,
            now,
        );
        let v: Vec<(&str, &str, Verdict)> = d
            .iter()
            .map(|x| {
                (
                    x.image.region.as_str(),
                    x.image.ami_id.as_str(),
                    x.verdict.clone(),
                )
            })
            .collect();
        assert_eq!(
            v,
            vec![
                ("us-east-1", "ami-e2", Verdict::KeepNewest),
                ("us-east-1", "ami-e1", Verdict::Delete),
                ("us-west-2", "ami-w2", Verdict::KeepNewest),
                ("us-west-2", "ami-w1", Verdict::KeepInUse),
            ]
        );
    }

    #[test]
    fn keep_zero_deletes_all_unused() {
        let now: jiff::Timestamp = "2026-11-23T12:00:00Z".parse().unwrap();
        let d = decide(
            vec![
                img("a", "2026-11-20T00:00:00Z", &[]),
                img("b", "2026-11-21T00:00:00Z", &["x"]),
            ],
            0,
            None,
            now,
        );
        assert_eq!(d[0].verdict, Verdict::KeepInUse);
        assert_eq!(d[1].verdict, Verdict::Delete);
    }
}
