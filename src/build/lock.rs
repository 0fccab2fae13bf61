//! One build per fingerprint at a time, using EC2 itself as the lock: key pair names are unique
//! per region and ImportKeyPair fails atomically on a duplicate, so a key pair named after the
//! fingerprint is a lock any number of machines agree on without a lock service.
//!
//! A build that finds the lock taken waits for the holder's image (and reports it as cached),
//! or takes over when the holder gave up (lock gone) or died (lock older than [`STALE_AFTER`]).

use std::collections::BTreeMap;
use std::time::Duration;

use aws_sdk_ec2::primitives::Blob;
use aws_sdk_ec2::types::ResourceType;

use super::BuildError;
use super::cleanup::{Cleanup, Undo};
use super::image::find_by_fingerprint;
use crate::aws::ec2::{delete_key_pair, describe_key_pair, tag_map, tag_spec};
use crate::aws::{AwsError, Clients, Ctx};
use crate::retry::{self, Backoff, Poll};
use crate::ui::Ui;

/// A lock older than this belongs to a build that died without cleaning up.
pub const STALE_AFTER: Duration = Duration::from_secs(4 * 3600);

pub fn lock_name(fingerprint: &str) -> String {
    format!("bake-lock-{}", &fingerprint[..32])
}

pub enum Acquired {
    /// We hold the lock; build.
    Held,
    /// Another build of the same inputs finished meanwhile: (ami, name, snapshots).
    Built((String, String, Vec<String>)),
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
                Err(e) if e.is_throttling() => return Poll::Throttled,
                Err(e) => return Poll::Fail(e),
            }
            match find_by_fingerprint(ec2, fingerprint).await {
                Ok(Some(hit)) => return Poll::Ready(Acquired::Built(hit)),
                Ok(None) => {}
                Err(e) => return Poll::Fail(e),
            }
            match holder(clients, name).await {
                // Our own earlier attempt took it; its answer was lost.
                Ok(Some((holder, _))) if holder == build_id => Poll::Ready(Acquired::Held),
                Ok(Some((holder, age))) if age > STALE_AFTER => {
                    ui.line(&format!("lock {name} of build {holder} is {}s old: taking it over", age.as_secs()));
                    let _ = delete_key_pair(ec2, name).await;
                    Poll::Pending("took over a stale lock".into())
                }
                Ok(Some((holder, _))) => {
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

/// Who holds the lock and for how long.
async fn holder(clients: &Clients, name: &str) -> Result<Option<(String, Duration)>, AwsError> {
    Ok(describe_key_pair(&clients.ec2, name).await?.map(|k| {
        let who = tag_map(k.tags())
            .get("bake:build-id")
            .cloned()
            .unwrap_or_else(|| "unknown".into());
        let age = k
            .create_time()
            .and_then(|t| {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .ok()?
                    .as_secs() as i64;
                Some(Duration::from_secs((now - t.secs()).max(0) as u64))
            })
            .unwrap_or_default();
        (who, age)
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
