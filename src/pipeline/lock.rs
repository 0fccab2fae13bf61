//! One build per fingerprint at a time, using EC2 itself as the lock: key pair names are unique
//! per region and ImportKeyPair fails atomically on a duplicate, so a key pair named after the
//! fingerprint is a lock any number of machines agree on without a lock service.
//!
//! A build that finds the lock taken waits for the holder's image (and reports it as cached),
//! or takes over when the holder gave up (lock gone) or died: at once when the local journal
//! says its bake is gone, as soon as its lease lapsed when it ran elsewhere, and after
//! [`STALE_AFTER`] for a lock without a lease (made by a bake before leases).

use std::collections::BTreeMap;
use std::time::Duration;

use aws_sdk_ec2::primitives::Blob;
use aws_sdk_ec2::types::ResourceType;

use super::BuildError;
use super::cleanup::{Cleanup, Undo};
use super::image::find_by_fingerprint;
use super::journal;
use super::lease::{self, LEASE_TAG, Verdict};
use crate::aws::ec2::{delete_key_pair, describe_key_pair, tag_map, tag_spec};
use crate::aws::{AwsError, Clients, Ctx};
use crate::retry::{self, Backoff, Poll};
use crate::ui::Ui;

/// A lock without a lease older than this belongs to a build that died without cleaning up.
pub const STALE_AFTER: Duration = lease::LEGACY_STALE;

pub fn lock_name(fingerprint: &str) -> String {
    format!("bake-lock-{}", &fingerprint[..32])
}

pub enum Acquired {
    /// We hold the lock; build.
    Held,
    /// Another build of the same inputs finished meanwhile.
    Built(super::FoundImage),
}

/// Takes the lock for `fingerprint`, or waits for whoever holds it.
pub async fn acquire(
    clients: &Clients,
    fingerprint: &str,
    public_key: &str,
    build_id: &str,
    ui: &Ui,
    cleanup: &Cleanup,
    timeout: Duration,
) -> Result<Acquired, BuildError> {
    let ec2 = &clients.ec2;
    let name = lock_name(fingerprint);
    let tags = BTreeMap::from([
        ("bake:build-id".to_string(), build_id.to_string()),
        ("bake:lock".to_string(), fingerprint.to_string()),
        lease::initial_tag(),
    ]);
    cleanup.push(Undo::ReleaseLock {
        name: name.clone(),
        build_id: build_id.to_string(),
    });
    let told = std::sync::atomic::AtomicBool::new(false);
    let r = retry::poll(Backoff::AWS.with_timeout(timeout), |_| {
        let (name, tags) = (&name, &tags);
        let told = &told;
        async move {
            // Every attempt may make the lock (gc then waits for EC2 to list it).
            journal::touch(build_id);
            let res = ec2
                .import_key_pair()
                .key_name(name)
                .public_key_material(Blob::new(public_key.as_bytes().to_vec()))
                .tag_specifications(tag_spec(ResourceType::KeyPair, tags))
                .send()
                .await
                .ctx("ImportKeyPair", Some(name));
            match res {
                // Double-check: the holder may have finished between our first look and now.
                Ok(_) => {
                    return match find_by_fingerprint(ec2, fingerprint).await {
                        Ok(Some(hit)) => Poll::Ready(Acquired::Built(hit)),
                        Ok(None) => Poll::Ready(Acquired::Held),
                        Err(e) => Poll::Fail(e),
                    };
                }
                Err(e) if e.code_is(&["InvalidKeyPair.Duplicate"]) => {}
                Err(e) => return Poll::from_err(e),
            }
            match find_by_fingerprint(ec2, fingerprint).await {
                Ok(Some(hit)) => return Poll::Ready(Acquired::Built(hit)),
                Ok(None) => {}
                Err(e) => return Poll::Fail(e),
            }
            match holder(clients, name).await {
                // Our own earlier attempt took it; its answer was lost.
                Ok(Some(h)) if h.build_id == build_id => Poll::Ready(Acquired::Held),
                Ok(Some(h)) if h.verdict.is_dead() => {
                    ui.line(&format!(
                        "lock {name} of build {}: its holder is dead ({}): taking it over",
                        h.build_id,
                        h.verdict.reason()
                    ));
                    // By id: a build that took the lock over meanwhile holds a new key pair
                    // of the same name, which must stay.
                    let _ = crate::aws::ec2::delete_key_pair_if_id(ec2, name, &h.key_pair_id).await;
                    Poll::Pending("took over a dead build's lock".into())
                }
                Ok(Some(h)) => {
                    let holder = h.build_id;
                    if !told.swap(true, std::sync::atomic::Ordering::Relaxed) {
                        ui.line(&format!("build {holder} is baking the same inputs; waiting for its image instead of making a second"));
                    }
                    Poll::Pending(format!("waiting for build {holder}"))
                }
                Ok(None) => Poll::Pending("lock released; retrying".into()),
                Err(e) => Poll::Fail(e),
            }
        }
    })
    .await;
    r.map_err(|e| crate::aws::ec2::poll_failure("acquire build lock", &name, e).into())
}

struct Holder {
    build_id: String,
    key_pair_id: String,
    verdict: Verdict,
}

/// Who holds the lock, and whether that build is still alive.
async fn holder(clients: &Clients, name: &str) -> Result<Option<Holder>, AwsError> {
    Ok(describe_key_pair(&clients.ec2, name).await?.map(|k| {
        let tags = tag_map(k.tags());
        let who = tags
            .get("bake:build-id")
            .cloned()
            .unwrap_or_else(|| "unknown".into());
        let created = k
            .create_time()
            .and_then(|t| jiff::Timestamp::from_second(t.secs()).ok());
        let lease = tags.get(LEASE_TAG).and_then(|v| lease::parse(v));
        let verdict = lease::verdict(
            journal::read(&who).as_ref(),
            lease,
            created,
            jiff::Timestamp::now(),
        );
        Holder {
            build_id: who,
            key_pair_id: k.key_pair_id().unwrap_or_default().to_string(),
            verdict,
        }
    }))
}

/// Releases the lock only if this build holds it.
pub async fn release(clients: &Clients, name: &str, build_id: &str) -> Result<String, AwsError> {
    let Some(k) = describe_key_pair(&clients.ec2, name).await? else {
        return Ok(format!("lock {name} not held"));
    };
    if tag_map(k.tags()).get("bake:build-id").map(String::as_str) != Some(build_id) {
        return Ok(format!("lock {name} held by another build; left alone"));
    }
    Ok(if delete_key_pair(&clients.ec2, name).await? {
        format!("released lock {name}")
    } else {
        format!("lock {name} already gone")
    })
}
