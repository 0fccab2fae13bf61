//! Leases: how a running build tells everyone, on any machine, that it is still alive.
//!
//! Every temporary resource of a build (builder instance and volumes, key pair, security
//! group, lock key pair, the image while it is pending) carries `bake:lease-until=<RFC 3339>`
//! from the moment it is created. While the build runs — through cleanup — a background task
//! pushes that time forward on everything tagged with the build's id every quarter lease. A
//! build whose lease lapsed has stopped renewing: its bake died (or lost AWS for a whole
//! lease). `bake gc` and the build lock read it; the local journal ([`super::journal`]) answers
//! sooner for builds of this machine.

use std::time::Duration;

use jiff::Timestamp;

use super::journal::{Entry, Local};
use crate::aws::ec2::{self, filter};
use crate::aws::{AwsError, Clients, Ctx};

pub const LEASE_TAG: &str = "bake:lease-until";

/// Renewed every quarter of this; override with `BAKE_LEASE` (e.g. "30s").
pub const DEFAULT_LEASE: Duration = Duration::from_secs(10 * 60);
const MIN_LEASE: Duration = Duration::from_secs(4);

/// Resources without a lease tag (made by a bake before leases) count as dead this long after
/// they were created: the old lock's staleness rule.
pub const LEGACY_STALE: Duration = Duration::from_secs(4 * 3600);

pub fn duration() -> Duration {
    std::env::var("BAKE_LEASE")
        .ok()
        .and_then(|v| humantime::parse_duration(v.trim()).ok())
        .unwrap_or(DEFAULT_LEASE)
        .max(MIN_LEASE)
}

fn until(d: Duration) -> String {
    let now = Timestamp::now();
    let t = now.checked_add(d).unwrap_or(now);
    Timestamp::from_second(t.as_second())
        .unwrap_or(t)
        .to_string()
}

/// The tag every temporary resource is created with.
pub fn initial_tag() -> (String, String) {
    (LEASE_TAG.to_string(), until(duration()))
}

pub fn parse(v: &str) -> Option<Timestamp> {
    v.trim().parse().ok()
}

/// Is a build alive?
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "state", content = "reason", rename_all = "lowercase")]
pub enum Verdict {
    Alive(String),
    Dead(String),
}

impl Verdict {
    pub fn is_dead(&self) -> bool {
        matches!(self, Verdict::Dead(_))
    }
    pub fn reason(&self) -> &str {
        match self {
            Verdict::Alive(r) | Verdict::Dead(r) => r,
        }
    }
}

/// Judges a build from what is known of it: its journal entry on this machine (decisive when
/// it was started here), else the latest lease on any of its resources, else (no lease at all)
/// the age of its oldest resource.
pub fn verdict(
    journal: Option<&Entry>,
    lease: Option<Timestamp>,
    created: Option<Timestamp>,
    now: Timestamp,
) -> Verdict {
    let elsewhere = match journal.map(Entry::judge) {
        Some(Local::Alive(m)) => return Verdict::Alive(m),
        Some(Local::Dead(m)) => return Verdict::Dead(m),
        Some(Local::Elsewhere(m)) => Some(m),
        None => None,
    };
    let prefix = elsewhere.map(|m| format!("{m}; ")).unwrap_or_default();
    match (lease, created) {
        (Some(t), _) if t > now => Verdict::Alive(format!("{prefix}its lease runs until {t}")),
        (Some(t), _) => Verdict::Dead(format!(
            "{prefix}its lease lapsed at {t} ({} ago)",
            ago(now, t)
        )),
        (None, Some(c)) if secs_between(c, now) > LEGACY_STALE.as_secs() as i64 => {
            Verdict::Dead(format!(
                "{prefix}no lease, created {} ago (over {}h)",
                ago(now, c),
                LEGACY_STALE.as_secs() / 3600
            ))
        }
        (None, Some(c)) => Verdict::Alive(format!(
            "{prefix}no lease and created only {} ago",
            ago(now, c)
        )),
        (None, None) => Verdict::Alive(format!("{prefix}no lease and no creation time")),
    }
}

fn secs_between(a: Timestamp, b: Timestamp) -> i64 {
    b.as_second() - a.as_second()
}

fn ago(now: Timestamp, t: Timestamp) -> String {
    let s = secs_between(t, now).max(0) as u64;
    humantime::format_duration(Duration::from_secs(s)).to_string()
}

/// Renews the build's leases until dropped.
pub struct Renewal(tokio::task::JoinHandle<()>);

impl Drop for Renewal {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub fn renew(clients: Clients, build_id: String) -> Renewal {
    let d = duration();
    Renewal(tokio::spawn(async move {
        loop {
            tokio::time::sleep(d / 4).await;
            // A failed renewal is retried at the next tick; three in a row still leave a
            // quarter of the lease.
            let _ = renew_once(&clients, &build_id, &until(d)).await;
        }
    }))
}

/// Pushes the lease forward on every live resource tagged with the build's id.
pub async fn renew_once(c: &Clients, build_id: &str, until: &str) -> Result<usize, AwsError> {
    let by_build = || filter("tag:bake:build-id", [build_id]);
    let mut ids: Vec<String> = ec2::instances_tagged(&c.ec2, "bake:build-id", build_id)
        .await?
        .iter()
        .filter_map(|i| i.instance_id().map(str::to_string))
        .collect();
    let keys = c
        .ec2
        .describe_key_pairs()
        .filters(by_build())
        .send()
        .await
        .ctx("DescribeKeyPairs", Some(build_id))?;
    ids.extend(
        keys.key_pairs()
            .iter()
            .filter_map(|k| k.key_pair_id().map(str::to_string)),
    );
    let sgs = c
        .ec2
        .describe_security_groups()
        .filters(by_build())
        .send()
        .await
        .ctx("DescribeSecurityGroups", Some(build_id))?;
    ids.extend(
        sgs.security_groups()
            .iter()
            .filter_map(|g| g.group_id().map(str::to_string)),
    );
    let pending = ec2::own_images(
        &c.ec2,
        vec![by_build(), filter("tag:bake:state", ["pending"])],
    )
    .await?;
    ids.extend(
        pending
            .iter()
            .filter_map(|i| i.image_id().map(str::to_string)),
    );
    if ids.is_empty() {
        return Ok(0);
    }
    c.ec2
        .create_tags()
        .set_resources(Some(ids.clone()))
        .tags(
            aws_sdk_ec2::types::Tag::builder()
                .key(LEASE_TAG)
                .value(until)
                .build(),
        )
        .send()
        .await
        .ctx("CreateTags", Some(&ids.join(",")))?;
    Ok(ids.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn lease_decides_without_a_local_journal() {
        let now = ts("2026-12-01T12:00:00Z");
        let v = verdict(None, Some(ts("2026-12-01T12:05:00Z")), None, now);
        assert!(
            matches!(v, Verdict::Alive(ref m) if m.contains("runs until")),
            "{v:?}"
        );
        let v = verdict(None, Some(ts("2026-12-01T11:50:00Z")), None, now);
        assert!(
            matches!(v, Verdict::Dead(ref m) if m.contains("lapsed") && m.contains("10m")),
            "{v:?}"
        );
    }

    #[test]
    fn without_a_lease_only_old_resources_are_dead() {
        let now = ts("2026-12-01T12:00:00Z");
        assert!(verdict(None, None, Some(ts("2026-12-01T07:00:00Z")), now).is_dead());
        assert!(!verdict(None, None, Some(ts("2026-12-01T11:00:00Z")), now).is_dead());
        assert!(!verdict(None, None, None, now).is_dead());
    }

    #[test]
    fn the_local_journal_overrides_the_lease() {
        let now = Timestamp::now();
        let later = now.checked_add(Duration::from_secs(600)).unwrap();
        let me = Entry::for_this_process("b-00000000aa", "r", "us-east-1");
        let dead = Entry {
            pid: 4_194_304 + 99,
            ..me.clone()
        };
        // Killed here a moment ago: dead at once, though its lease still runs.
        assert!(verdict(Some(&dead), Some(later), None, now).is_dead());
        // Running here: alive, though its lease lapsed (e.g. AWS was unreachable).
        assert!(!verdict(Some(&me), Some(ts("2000-01-01T00:00:00Z")), None, now).is_dead());
        // Recorded by another host: the lease decides.
        let other = Entry {
            host: "elsewhere.example".into(),
            ..dead
        };
        assert!(!verdict(Some(&other), Some(later), None, now).is_dead());
    }
}
