//! Removing a dead build's leftovers, in the order AWS allows: instances first (and waited
//! for: their security group and volumes are in use until they are gone), then half-made
//! images with their snapshots, orphan snapshots, volumes, security groups, key pairs and
//! locks (by id: a lock taken over meanwhile has a new id and stays), staged S3 objects, and
//! finally the build's journal entry. A failure is recorded on its resource; the rest goes on.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::{Build, Kind, Resource, is_build_id};
use crate::aws::{AwsError, Clients, Ctx};
use crate::aws::{ec2, s3};
use crate::pipeline::journal;
use crate::retry::{self, Backoff, Poll};

/// Removes everything of `build`, recording the outcome on each resource. True if all went.
pub async fn remove(
    c: &Clients,
    build: &mut Build,
    snapshot_users: &BTreeMap<String, BTreeSet<String>>,
) -> bool {
    let order = [
        Kind::Instance,
        Kind::Image,
        Kind::Snapshot,
        Kind::Volume,
        Kind::SecurityGroup,
        Kind::KeyPair,
        Kind::Lock,
        Kind::S3Objects,
    ];
    let build_id = build.build_id.clone();
    let mut ok = true;
    for kind in order {
        let batch: Vec<&mut Resource> = build
            .resources
            .iter_mut()
            .filter(|r| r.kind == kind)
            .collect();
        if batch.is_empty() {
            continue;
        }
        if kind == Kind::Instance {
            let ids: Vec<String> = batch.iter().map(|r| r.id.clone()).collect();
            let res = ec2::terminate_and_wait(&c.ec2, &ids, None).await;
            for r in batch {
                ok &= record(
                    r,
                    res.as_ref()
                        .map(|_| "terminated".to_string())
                        .map_err(|e| e.to_string()),
                );
            }
            continue;
        }
        let results = futures::future::join_all(batch.iter().map(|r| {
            remove_one(
                c,
                &build_id,
                r.kind,
                &r.id,
                r.name.as_deref(),
                snapshot_users,
            )
        }))
        .await;
        for (r, res) in batch.into_iter().zip(results) {
            ok &= record(r, res.map_err(|e| e.to_string()));
        }
    }
    // The journal entry goes with the build region's leftovers; the copy regions are looked
    // at before it (see cli/gc.rs), while the entry still says the build is dead.
    let home = build.journal.as_ref().is_none_or(|e| e.region == c.region);
    if ok && home {
        journal::remove(&build.build_id);
    }
    ok
}

fn record(r: &mut Resource, res: Result<String, String>) -> bool {
    match res {
        Ok(m) => {
            r.result = Some(m);
            true
        }
        Err(e) => {
            r.error = Some(e);
            false
        }
    }
}

async fn remove_one(
    c: &Clients,
    build_id: &str,
    kind: Kind,
    id: &str,
    name: Option<&str>,
    snapshot_users: &BTreeMap<String, BTreeSet<String>>,
) -> Result<String, AwsError> {
    let e = &c.ec2;
    match kind {
        Kind::Instance => unreachable!("instances are terminated together"),
        Kind::Image => remove_image(c, id, snapshot_users).await,
        Kind::Snapshot => remove_snapshot(c, build_id, id, snapshot_users).await,
        Kind::Volume => {
            ec2::delete_volume(e, id).await?;
            Ok("deleted".into())
        }
        Kind::SecurityGroup => {
            ec2::delete_security_group(e, id).await?;
            Ok("deleted".into())
        }
        Kind::KeyPair | Kind::Lock => {
            let Some(name) = name else {
                return Err(AwsError::new(
                    "DeleteKeyPair",
                    Some(id.to_string()),
                    "no name",
                ));
            };
            Ok(if ec2::delete_key_pair_if_id(e, name, id).await? {
                "deleted".into()
            } else {
                "already gone (or replaced by a new holder)".into()
            })
        }
        Kind::S3Objects => {
            let rest = id.trim_start_matches("s3://");
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if !prefix.split('/').any(is_build_id) {
                // Never a whole bucket or someone else's prefix: only a build's own.
                return Err(AwsError::new(
                    "DeleteObject",
                    Some(id.to_string()),
                    "not a build's prefix",
                ));
            }
            let n = s3::delete_prefix(&c.s3, bucket, prefix).await?.unwrap_or(0);
            Ok(format!("deleted {n} object(s)"))
        }
    }
}

/// Deregisters a half-made image and deletes its snapshots (but those another image uses).
async fn remove_image(
    c: &Clients,
    id: &str,
    snapshot_users: &BTreeMap<String, BTreeSet<String>>,
) -> Result<String, AwsError> {
    let e = &c.ec2;
    let Some(img) = ec2::describe_image(e, id).await? else {
        return Ok("already gone".into());
    };
    let snaps = ec2::image_snapshots(&img);
    // A snapshot another image also uses stays.
    let keep: Vec<String> = snaps
        .iter()
        .filter(|s| {
            snapshot_users
                .get(*s)
                .is_some_and(|users| users.iter().any(|u| u != id))
        })
        .cloned()
        .collect();
    let deleted = ec2::deregister_with_snapshots(e, id, &snaps, &keep).await?;
    Ok(format!(
        "deregistered{}",
        if deleted.is_empty() {
            String::new()
        } else {
            format!(", deleted {}", deleted.join(", "))
        }
    ))
}

/// A snapshot that looked orphaned may belong to an image EC2 does not list yet (the build
/// died right after CreateImage). DeleteSnapshot then names that image: if it is this build's
/// unfinished one it goes first, and the snapshot with it; any other image keeps it.
async fn remove_snapshot(
    c: &Clients,
    build_id: &str,
    id: &str,
    snapshot_users: &BTreeMap<String, BTreeSet<String>>,
) -> Result<String, AwsError> {
    let e = &c.ec2;
    let err = match e
        .delete_snapshot()
        .snapshot_id(id)
        .send()
        .await
        .ctx("DeleteSnapshot", Some(id))
    {
        Ok(_) => return Ok("deleted".into()),
        Err(err) if err.is_not_found() => return Ok("already gone".into()),
        Err(err) if err.code_is(&["InvalidSnapshot.InUse"]) => err,
        Err(err) => return Err(err),
    };
    let Some(ami) = image_id_in(&err.message) else {
        return Err(err);
    };
    // EC2 just said the image exists: wait for Describe to show it.
    let img = retry::poll(
        Backoff::AWS.with_timeout(Duration::from_secs(60)),
        |_| async {
            match ec2::describe_image(e, &ami).await {
                Ok(Some(img)) => Poll::Ready(img),
                Ok(None) => Poll::Pending(format!("{ami} not listed yet")),
                Err(err) => Poll::from_err(err),
            }
        },
    )
    .await
    .map_err(|err| ec2::poll_failure("DescribeImages", &ami, err))?;
    let tags = ec2::tag_map(img.tags());
    if tags.get("bake:build-id").map(String::as_str) != Some(build_id)
        || super::half_made(&tags, img.state()).is_none()
    {
        return Ok(format!(
            "kept: in use by {ami}, which is not this build's unfinished image"
        ));
    }
    let done = remove_image(c, &ami, snapshot_users).await?;
    ec2::delete_snapshot(e, id, Duration::from_secs(120)).await?;
    Ok(format!(
        "in use by this build's unfinished image {ami}, not listed yet: {done}; deleted"
    ))
}

/// The image id in an `InvalidSnapshot.InUse` message ("… is currently in use by ami-…").
fn image_id_in(message: &str) -> Option<String> {
    message
        .split(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '-'))
        .find(|w| w.starts_with("ami-") && w.len() > 4)
        .map(str::to_string)
}

/// How many objects are under `prefix`; None when there are none (or no bucket).
pub async fn count_objects(
    c: &Clients,
    bucket: &str,
    prefix: &str,
) -> Result<Option<usize>, AwsError> {
    Ok(s3::keys(&c.s3, bucket, prefix)
        .await?
        .map(|k| k.len())
        .filter(|n| *n > 0))
}

/// Staged objects under `prefix`, grouped by the build id in their key (the path segment
/// `b-xxxxxxxxxx/`): (build id, that build's prefix, object count).
pub async fn staged_by_build(
    c: &Clients,
    bucket: &str,
    prefix: &str,
) -> Result<Vec<(String, String, usize)>, AwsError> {
    let mut by: BTreeMap<(String, String), usize> = BTreeMap::new();
    for k in s3::keys(&c.s3, bucket, prefix).await?.unwrap_or_default() {
        let mut at = 0;
        for seg in k.split('/') {
            at += seg.len() + 1;
            if is_build_id(seg) && at <= k.len() {
                *by.entry((seg.to_string(), k[..at].to_string()))
                    .or_default() += 1;
                break;
            }
        }
    }
    Ok(by.into_iter().map(|((b, p), n)| (b, p, n)).collect())
}

#[cfg(test)]
mod tests {
    use super::image_id_in;

    #[test]
    fn the_image_named_by_a_snapshot_in_use_error() {
        assert_eq!(
            image_id_in(
                "The snapshot snap-8e7fc7916c468f6ad is currently in use by ami-179cc79c17b230a37"
            )
            .as_deref(),
            Some("ami-179cc79c17b230a37")
        );
        assert_eq!(image_id_in("The snapshot snap-1 is in use"), None);
    }
}
