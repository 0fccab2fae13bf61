//! `bake gc`: finds what builds that no longer run left behind, and removes it.
//!
//! Everything is found by bake's tags (`bake:build-id` and friends), never by name or guess,
//! and grouped per build. A build is judged by [`lease::verdict`]: its journal entry when it
//! ran on this machine (dead at once when its bake process is gone), else its lease (dead once
//! no bake renewed it for a whole lease), else — resources from a bake before leases — by age.
//! Only a dead build's resources are candidates, and of images only half-made ones (tagged
//! `bake:state=pending`, or stuck pending/failed in EC2): a complete image is never touched,
//! nor are its snapshots, nor anything without bake's tags. Removal is in [`remove`].

mod remove;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use aws_sdk_ec2::types::ImageState;
use jiff::Timestamp;
use serde::Serialize;

pub use remove::remove;

use crate::aws::ec2::{self, filter, tag_map};
use crate::aws::{AwsError, Clients, Ctx};
use crate::pipeline::journal::{self, Entry};
use crate::pipeline::lease::{self, LEASE_TAG, Verdict};
use crate::pipeline::{STATE_TAG, is_complete};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    Instance,
    Image,
    Snapshot,
    Volume,
    SecurityGroup,
    KeyPair,
    Lock,
    S3Objects,
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::Instance => "instance",
            Kind::Image => "image",
            Kind::Snapshot => "snapshot",
            Kind::Volume => "volume",
            Kind::SecurityGroup => "security group",
            Kind::KeyPair => "key pair",
            Kind::Lock => "build lock",
            Kind::S3Objects => "staged objects",
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Resource {
    pub kind: Kind,
    /// The id AWS gave it (`s3://bucket/prefix` for staged objects).
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// After removal: what happened.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl std::fmt::Display for Resource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.kind, self.id)?;
        if let Some(n) = &self.name {
            write!(f, " ({n})")?;
        }
        if let Some(d) = &self.detail {
            write!(f, ": {d}")?;
        }
        Ok(())
    }
}

/// Everything left of one build.
#[derive(Debug, Clone, Serialize)]
pub struct Build {
    pub build_id: String,
    /// The region these resources are in (a build's copies are in regions of their own).
    pub region: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recipe: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started: Option<String>,
    #[serde(flatten)]
    pub verdict: Verdict,
    /// Dead, and old enough for `--older-than`.
    pub remove: bool,
    /// Its builder was kept on purpose by `bake build --on-error=abort` (to debug it).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub kept: bool,
    pub resources: Vec<Resource>,
    #[serde(skip)]
    pub journal: Option<Entry>,
}

#[derive(Debug, Clone, Default)]
pub struct Options {
    pub older_than: Option<Duration>,
    /// Extra S3 locations (`bucket` or `bucket/prefix`) to look for staged objects in.
    pub buckets: Vec<String>,
    /// Only these builds (none: every build).
    pub build_ids: Vec<String>,
}

impl Options {
    pub fn wants(&self, build_id: &str) -> bool {
        self.build_ids.is_empty() || self.build_ids.iter().any(|b| b == build_id)
    }
}

#[derive(Default)]
struct Acc {
    recipe: Option<String>,
    lease: Option<Timestamp>,
    created: Option<Timestamp>,
    resources: Vec<Resource>,
}

impl Acc {
    fn saw(&mut self, tags: &BTreeMap<String, String>, created: Option<Timestamp>) {
        if self.recipe.is_none() {
            self.recipe = tags.get("bake:recipe").cloned();
        }
        if let Some(l) = tags.get(LEASE_TAG).and_then(|v| lease::parse(v)) {
            self.lease = Some(self.lease.map_or(l, |m| m.max(l)));
        }
        if let Some(c) = created {
            self.created = Some(self.created.map_or(c, |m| m.min(c)));
        }
    }
}

fn res(kind: Kind, id: &str, name: Option<&str>, detail: Option<String>) -> Resource {
    Resource {
        kind,
        id: id.to_string(),
        name: name.map(str::to_string),
        detail,
        result: None,
        error: None,
    }
}

fn ts(secs: i64) -> Option<Timestamp> {
    Timestamp::from_second(secs).ok()
}

/// What gc found: every build that left something, dead or alive, and the snapshots every
/// image of the account uses (a candidate image's snapshot shared with another stays).
pub struct Survey {
    pub builds: Vec<Build>,
    pub snapshot_users: BTreeMap<String, BTreeSet<String>>,
    /// Journal entries of dead builds with nothing left (removed with `--yes`).
    pub stale_journal: Vec<String>,
}

/// The other regions this machine's builds in `home` copy to (from their journal entries):
/// where a killed build may have left half-made copies.
pub fn copy_regions(home: &str, opts: &Options) -> Vec<String> {
    let mut out = BTreeSet::new();
    for e in journal::all() {
        if e.region == home && opts.wants(&e.build_id) {
            out.extend(e.copy_regions.into_iter().filter(|r| r != home));
        }
    }
    out.into_iter().collect()
}

pub async fn survey(c: &Clients, opts: &Options) -> Result<Survey, AwsError> {
    let mut acc: BTreeMap<String, Acc> = BTreeMap::new();
    let has_build = || filter("tag-key", ["bake:build-id"]);
    let mut staging: BTreeSet<(String, String)> = BTreeSet::new();

    for i in ec2::live_instances(&c.ec2, vec![has_build()]).await? {
        let t = tag_map(i.tags());
        let Some(b) = t.get("bake:build-id") else {
            continue;
        };
        let a = acc.entry(b.clone()).or_default();
        a.saw(&t, i.launch_time().and_then(|d| ts(d.secs())));
        if let Some(s) = t.get("bake:staging") {
            for loc in s.split_whitespace() {
                staging.insert((b.clone(), loc.to_string()));
            }
        }
        a.resources.push(res(
            Kind::Instance,
            i.instance_id().unwrap_or_default(),
            None,
            i.state()
                .and_then(|s| s.name())
                .map(|s| s.as_str().to_string()),
        ));
    }

    let mut pages = c
        .ec2
        .describe_volumes()
        .filters(has_build())
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        for v in page.ctx("DescribeVolumes", None)?.volumes() {
            let t = tag_map(v.tags());
            let Some(b) = t.get("bake:build-id") else {
                continue;
            };
            let a = acc.entry(b.clone()).or_default();
            a.saw(&t, v.create_time().and_then(|d| ts(d.secs())));
            a.resources.push(res(
                Kind::Volume,
                v.volume_id().unwrap_or_default(),
                None,
                v.state().map(|s| s.as_str().to_string()),
            ));
        }
    }

    let keys = c
        .ec2
        .describe_key_pairs()
        .filters(has_build())
        .send()
        .await
        .ctx("DescribeKeyPairs", None)?;
    for k in keys.key_pairs() {
        let t = tag_map(k.tags());
        let Some(b) = t.get("bake:build-id") else {
            continue;
        };
        let a = acc.entry(b.clone()).or_default();
        a.saw(&t, k.create_time().and_then(|d| ts(d.secs())));
        let kind = if t.contains_key("bake:lock") {
            Kind::Lock
        } else {
            Kind::KeyPair
        };
        a.resources.push(res(
            kind,
            k.key_pair_id().unwrap_or_default(),
            k.key_name(),
            None,
        ));
    }

    let sgs = c
        .ec2
        .describe_security_groups()
        .filters(has_build())
        .send()
        .await
        .ctx("DescribeSecurityGroups", None)?;
    for g in sgs.security_groups() {
        let t = tag_map(g.tags());
        let Some(b) = t.get("bake:build-id") else {
            continue;
        };
        let a = acc.entry(b.clone()).or_default();
        a.saw(&t, None);
        a.resources.push(res(
            Kind::SecurityGroup,
            g.group_id().unwrap_or_default(),
            g.group_name(),
            None,
        ));
    }

    // Every image of the account, for which snapshots are in use; bake's half-made ones.
    let mut snapshot_users: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for img in ec2::own_images(&c.ec2, vec![]).await? {
        let id = img.image_id().unwrap_or_default().to_string();
        for s in ec2::image_snapshots(&img) {
            snapshot_users.entry(s).or_default().insert(id.clone());
        }
        let t = tag_map(img.tags());
        let Some(b) = t.get("bake:build-id") else {
            continue;
        };
        let Some(why) = half_made(&t, img.state()) else {
            continue;
        };
        let a = acc.entry(b.clone()).or_default();
        let created = img
            .creation_date()
            .and_then(|d| d.parse::<Timestamp>().ok());
        a.saw(&t, created);
        a.resources
            .push(res(Kind::Image, &id, img.name(), Some(why)));
    }

    let mut pages = c
        .ec2
        .describe_snapshots()
        .owner_ids("self")
        .filters(has_build())
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        for s in page.ctx("DescribeSnapshots", None)?.snapshots() {
            let id = s.snapshot_id().unwrap_or_default();
            let t = tag_map(s.tags());
            let Some(b) = t.get("bake:build-id") else {
                continue;
            };
            // Only orphans of unfinished images: a snapshot in use goes (or stays) with its
            // image; one of a finished image is the retention commands' business.
            if snapshot_users.contains_key(id)
                || t.get(STATE_TAG).map(String::as_str) != Some("pending")
            {
                continue;
            }
            let a = acc.entry(b.clone()).or_default();
            a.saw(&t, s.start_time().and_then(|d| ts(d.secs())));
            a.resources.push(res(
                Kind::Snapshot,
                id,
                None,
                Some("no image uses it; its image was never finished".into()),
            ));
        }
    }

    let journal: BTreeMap<String, Entry> = journal::all()
        .into_iter()
        .filter(|e| e.touches(&c.region))
        .map(|e| (e.build_id.clone(), e))
        .collect();
    for e in journal.values() {
        for loc in &e.staging {
            staging.insert((e.build_id.clone(), loc.clone()));
        }
    }
    for (b, loc) in staging {
        if let Some((bucket, prefix)) = split_s3(&loc)
            && let Some(n) = remove::count_objects(c, &bucket, &prefix).await?
        {
            acc.entry(b).or_default().resources.push(res(
                Kind::S3Objects,
                &format!("s3://{bucket}/{prefix}"),
                None,
                Some(format!("{n} object(s)")),
            ));
        }
    }
    for loc in &opts.buckets {
        let (bucket, prefix) = loc
            .trim_start_matches("s3://")
            .split_once('/')
            .map(|(b, p)| (b.to_string(), p.to_string()))
            .unwrap_or_else(|| (loc.trim_start_matches("s3://").to_string(), String::new()));
        for (b, prefix, n) in remove::staged_by_build(c, &bucket, &prefix).await? {
            let id = format!("s3://{bucket}/{prefix}");
            let a = acc.entry(b).or_default();
            if !a.resources.iter().any(|r| r.id == id) {
                a.resources.push(res(
                    Kind::S3Objects,
                    &id,
                    None,
                    Some(format!("{n} object(s)")),
                ));
            }
        }
    }

    let now = Timestamp::now();
    let mut builds = Vec::new();
    for (id, a) in acc.into_iter().filter(|(id, _)| opts.wants(id)) {
        let entry = journal.get(&id).cloned();
        let verdict = lease::verdict(entry.as_ref(), a.lease, a.created, now);
        let started = entry
            .as_ref()
            .and_then(|e| e.started.parse::<Timestamp>().ok())
            .or(a.created);
        let old_enough = match (opts.older_than, started) {
            (None, _) => true,
            (Some(d), Some(s)) => now.as_second() - s.as_second() >= d.as_secs() as i64,
            (Some(_), None) => false,
        };
        let mut resources = a.resources;
        resources.sort_by(|x, y| (x.kind, &x.id).cmp(&(y.kind, &y.id)));
        builds.push(Build {
            region: c.region.clone(),
            remove: verdict.is_dead() && old_enough,
            kept: entry.as_ref().is_some_and(|e| e.kept),
            recipe: a
                .recipe
                .or_else(|| entry.as_ref().map(|e| e.recipe.clone())),
            started: started.map(|s| s.to_string()),
            build_id: id,
            verdict,
            resources,
            journal: entry,
        });
    }
    // Only the build region's pass forgets an entry: the copy regions need it first.
    let stale_journal = journal
        .values()
        .filter(|e| e.region == c.region)
        .filter(|e| opts.wants(&e.build_id))
        .filter(|e| !builds.iter().any(|b| b.build_id == e.build_id))
        .filter(|e| matches!(e.judge(), journal::Local::Dead(_)))
        .map(|e| e.build_id.clone())
        .collect();
    Ok(Survey {
        builds,
        snapshot_users,
        stale_journal,
    })
}

/// How long EC2 may leave a resource made a moment ago out of its listings (eventual
/// consistency); the same grace bake's own cleanup gives a known id that answers "not found".
pub const SETTLE: Duration = crate::pipeline::cleanup::KNOWN_ID_GRACE;

/// Dead builds of this machine's journal (with or without anything found) that created
/// something less than [`SETTLE`] ago: (build id, when EC2 lists all they made). Call before
/// removing, while their journal entries exist.
pub fn fresh(survey: &Survey) -> Vec<(String, std::time::SystemTime)> {
    let dead_here = survey
        .builds
        .iter()
        .filter(|b| b.remove && b.journal.is_some())
        .map(|b| b.build_id.clone())
        .chain(survey.stale_journal.iter().cloned());
    let now = std::time::SystemTime::now();
    dead_here
        .filter_map(|id| {
            let at = journal::touched(&id)? + SETTLE;
            (at > now).then_some((id, at))
        })
        .collect()
}

/// Looks again at the `fresh` builds once EC2 lists all they made, and removes what the first
/// look could not see yet. They were judged dead by the journal moments ago (their bake process
/// is gone, it cannot come back), so they are removed whatever their leases say now. Returns
/// those builds with what was found this time.
pub async fn settle(
    c: &Clients,
    opts: &Options,
    fresh: &[(String, std::time::SystemTime)],
) -> Result<Vec<Build>, AwsError> {
    let Some(at) = fresh.iter().map(|(_, t)| *t).max() else {
        return Ok(Vec::new());
    };
    if let Ok(wait) = at.duration_since(std::time::SystemTime::now()) {
        tokio::time::sleep(wait).await;
    }
    let again = survey(c, opts).await?;
    let mut found = Vec::new();
    for mut b in again.builds {
        if fresh.iter().any(|(id, _)| *id == b.build_id) {
            b.remove = true;
            remove(c, &mut b, &again.snapshot_users).await;
            found.push(b);
        }
    }
    Ok(found)
}

/// Why an image of bake's is unfinished, or None when it is complete (never a candidate).
pub fn half_made(tags: &BTreeMap<String, String>, state: Option<&ImageState>) -> Option<String> {
    let st = state.map(|s| s.as_str()).unwrap_or("unknown");
    if tags.get(STATE_TAG).map(String::as_str) == Some("pending") {
        return Some(format!("{st}, never marked complete by its build"));
    }
    if is_complete(tags) && tags.contains_key(STATE_TAG) {
        return None;
    }
    // No state tag (a bake before it): only images EC2 itself says are unfinished.
    match state {
        Some(
            ImageState::Pending | ImageState::Failed | ImageState::Error | ImageState::Invalid,
        ) => Some(format!("{st} in EC2")),
        _ => None,
    }
}

fn split_s3(loc: &str) -> Option<(String, String)> {
    let rest = loc.strip_prefix("s3://")?;
    let (b, p) = rest.split_once('/').unwrap_or((rest, ""));
    Some((b.to_string(), p.to_string()))
}

/// A build id as [`crate::pipeline::new_build_id`] makes them.
pub fn is_build_id(s: &str) -> bool {
    s.len() == 12
        && s.starts_with("b-")
        && s[2..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_complete_image_is_never_half_made() {
        let done = tags(&[
            ("bake:build-id", "b-0123456789"),
            ("bake:state", "complete"),
        ]);
        for st in [
            ImageState::Available,
            ImageState::Pending,
            ImageState::Failed,
        ] {
            assert_eq!(half_made(&done, Some(&st)), None);
        }
        let legacy = tags(&[("bake:build-id", "b-0123456789")]);
        assert_eq!(half_made(&legacy, Some(&ImageState::Available)), None);
        assert!(half_made(&legacy, Some(&ImageState::Failed)).is_some());
        let pending = tags(&[("bake:build-id", "b-0123456789"), ("bake:state", "pending")]);
        assert!(half_made(&pending, Some(&ImageState::Available)).is_some());
    }

    #[test]
    fn build_ids_and_s3_locations() {
        assert!(is_build_id("b-0123456789"));
        assert!(!is_build_id("b-012345678"));
        assert!(!is_build_id("x-0123456789"));
        assert_eq!(
            split_s3("s3://bkt/bake/b-0123456789/"),
            Some(("bkt".into(), "bake/b-0123456789/".into()))
        );
        assert_eq!(split_s3("bkt"), None);
    }
}
