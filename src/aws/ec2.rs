//! EC2 operations bake performs, each mapped to [`AwsError`] naming the resource, and the waits
//! on EC2 state built on the single [`crate::retry::poll`] helper.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use aws_sdk_ec2::Client;
use aws_sdk_ec2::types::{
    Filter, Image, ImageState, Instance, InstanceStateName, ResourceType, Tag, TagSpecification,
};

use super::{AwsError, Ctx};
use crate::retry::{self, Backoff, Poll, PollError};

pub fn filter(name: &str, values: impl IntoIterator<Item = impl Into<String>>) -> Filter {
    Filter::builder()
        .name(name)
        .set_values(Some(values.into_iter().map(Into::into).collect()))
        .build()
}

pub fn tag_list(tags: &BTreeMap<String, String>) -> Vec<Tag> {
    tags.iter()
        .map(|(k, v)| Tag::builder().key(k).value(v).build())
        .collect()
}

pub fn tag_spec(rt: ResourceType, tags: &BTreeMap<String, String>) -> TagSpecification {
    TagSpecification::builder()
        .resource_type(rt)
        .set_tags(Some(tag_list(tags)))
        .build()
}

/// Tags of an EC2 resource as a map.
pub fn tag_map(tags: &[Tag]) -> BTreeMap<String, String> {
    tags.iter()
        .filter_map(|t| {
            Some((
                t.key()?.to_string(),
                t.value().unwrap_or_default().to_string(),
            ))
        })
        .collect()
}

pub async fn describe_instance(ec2: &Client, id: &str) -> Result<Option<Instance>, AwsError> {
    let out = ec2.describe_instances().instance_ids(id).send().await;
    match out.ctx("DescribeInstances", Some(id)) {
        Ok(o) => Ok(o
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .next()
            .cloned()),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

pub async fn describe_image(ec2: &Client, id: &str) -> Result<Option<Image>, AwsError> {
    let out = ec2.describe_images().image_ids(id).send().await;
    match out.ctx("DescribeImages", Some(id)) {
        Ok(o) => Ok(o.images().first().cloned()),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

/// A key pair by name, or None if there is none.
pub async fn describe_key_pair(
    ec2: &Client,
    name: &str,
) -> Result<Option<aws_sdk_ec2::types::KeyPairInfo>, AwsError> {
    match ec2
        .describe_key_pairs()
        .key_names(name)
        .send()
        .await
        .ctx("DescribeKeyPairs", Some(name))
    {
        Ok(out) => Ok(out.key_pairs().first().cloned()),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

/// Deletes a key pair; false if it was already gone.
pub async fn delete_key_pair(ec2: &Client, name: &str) -> Result<bool, AwsError> {
    match ec2
        .delete_key_pair()
        .key_name(name)
        .send()
        .await
        .ctx("DeleteKeyPair", Some(name))
    {
        Ok(_) => Ok(true),
        Err(e) if e.is_not_found() => Ok(false),
        Err(e) => Err(e),
    }
}

/// Deletes the key pair `name` only if it still is the one with id `id` (a build lock taken
/// over meanwhile is a new key pair of the same name and must stay). By name after the check:
/// not every EC2 implementation honours DeleteKeyPair's KeyPairId. False if it was gone.
pub async fn delete_key_pair_if_id(ec2: &Client, name: &str, id: &str) -> Result<bool, AwsError> {
    match describe_key_pair(ec2, name).await? {
        Some(k) if k.key_pair_id() == Some(id) => delete_key_pair(ec2, name).await,
        _ => Ok(false),
    }
}

/// How long a resource bake just created may still answer "not found" (EC2 is eventually
/// consistent: a new id can be unknown to the next call for seconds).
pub const VISIBILITY: Duration = Duration::from_secs(60);

/// Not found, which right after a create means "not yet".
pub fn not_yet_visible(e: &AwsError) -> bool {
    e.is_not_found()
}

/// Calls `call` until it succeeds, waiting out throttling and every error `transient` says
/// will pass (a new id not visible yet, a profile still propagating, a state still changing),
/// for at most `timeout`; any other error fails at once.
pub async fn settle<T, F, Fut>(
    op: &'static str,
    what: &str,
    timeout: Duration,
    transient: impl Fn(&AwsError) -> bool,
    mut call: F,
) -> Result<T, AwsError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, AwsError>>,
{
    let transient = &transient;
    let r = retry::poll(Backoff::AWS.with_timeout(timeout), |_| {
        let fut = call();
        async move {
            match fut.await {
                Ok(v) => Poll::Ready(v),
                Err(e) => Poll::unless_throttled(e, |e| {
                    if transient(&e) {
                        Poll::Pending(e.to_string())
                    } else {
                        Poll::Fail(e)
                    }
                }),
            }
        }
    })
    .await;
    r.map_err(|e| poll_failure(op, what, e))
}

/// Whether `tags` carry `bake:build-id=<build_id>`.
pub fn tagged_with_build(tags: &[Tag], build_id: &str) -> bool {
    tags.iter()
        .any(|t| t.key() == Some("bake:build-id") && t.value() == Some(build_id))
}

/// A poll that ended without a value, as an error naming the resource.
pub fn poll_failure(op: &'static str, id: &str, e: PollError<AwsError>) -> AwsError {
    match e {
        PollError::Failed(e) => e,
        PollError::Timeout { elapsed, last } => AwsError::new(
            op,
            Some(id.to_string()),
            format!("gave up after {}s: {last}", elapsed.as_secs()),
        ),
    }
}

/// Waits until the instance is in `want`; fails early if it lands in a state it cannot leave
/// towards `want` (e.g. terminated while waiting for running).
pub async fn wait_instance_state(
    ec2: &Client,
    id: &str,
    want: InstanceStateName,
    timeout: Duration,
) -> Result<Instance, AwsError> {
    let r = retry::poll(Backoff::AWS.with_timeout(timeout), |_| async {
        match describe_instance(ec2, id).await {
            Err(e) => Poll::from_err(e),
            Ok(None) if want == InstanceStateName::Terminated => Poll::Ready(None),
            Ok(None) => Poll::Pending(format!("{id} not visible yet")),
            Ok(Some(inst)) => {
                let state = inst.state().and_then(|s| s.name()).cloned();
                match state {
                    Some(s) if s == want => Poll::Ready(Some(inst)),
                    Some(InstanceStateName::Terminated) | Some(InstanceStateName::ShuttingDown)
                        if want != InstanceStateName::Terminated =>
                    {
                        let reason = inst
                            .state_reason()
                            .and_then(|r| r.message())
                            .unwrap_or("no reason given");
                        Poll::Fail(AwsError::new(
                            "wait for instance",
                            Some(id.to_string()),
                            format!("instance is terminating: {reason}"),
                        ))
                    }
                    Some(s) => Poll::Pending(format!("{id} is {}", s.as_str())),
                    None => Poll::Pending(format!("{id} has no state yet")),
                }
            }
        }
    })
    .await;
    match r {
        Ok(Some(inst)) => Ok(inst),
        Ok(None) => Ok(Instance::builder().instance_id(id).build()),
        Err(e) => Err(poll_failure("wait for instance", id, e)),
    }
}

/// How far an image must have come for a wait to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageReady {
    /// `available`: usable.
    Available,
    /// Every EBS block device names its snapshot (or the image is already available): the
    /// snapshots are point-in-time from their start, so the instance is no longer needed.
    SnapshotsStarted,
}

/// Whether `img` has reached `until` (failure is the caller's to judge first).
pub fn image_reached(img: &Image, until: ImageReady) -> bool {
    if img.state() == Some(&ImageState::Available) {
        return true;
    }
    let ebs: Vec<_> = img
        .block_device_mappings()
        .iter()
        .filter_map(|m| m.ebs())
        .collect();
    until == ImageReady::SnapshotsStarted
        && !ebs.is_empty()
        && ebs.iter().all(|e| e.snapshot_id().is_some())
}

/// Waits until the image `id` is available.
pub async fn wait_image_available(
    ec2: &Client,
    id: &str,
    timeout: Duration,
) -> Result<Image, AwsError> {
    wait_image(ec2, id, ImageReady::Available, timeout).await
}

/// Waits until the image `id` has reached `until`; a failed image is an error with EC2's
/// reason.
pub async fn wait_image(
    ec2: &Client,
    id: &str,
    until: ImageReady,
    timeout: Duration,
) -> Result<Image, AwsError> {
    let r = retry::poll(Backoff::AWS.with_timeout(timeout), |_| async {
        match describe_image(ec2, id).await {
            Err(e) => Poll::from_err(e),
            Ok(None) => Poll::Pending(format!("{id} not visible yet")),
            Ok(Some(img)) => match img.state() {
                Some(ImageState::Failed) | Some(ImageState::Error) | Some(ImageState::Invalid) => {
                    let reason = img
                        .state_reason()
                        .and_then(|r| r.message())
                        .unwrap_or("no reason given")
                        .to_string();
                    Poll::Fail(AwsError::new(
                        "wait for image",
                        Some(id.to_string()),
                        format!("image creation failed: {reason}"),
                    ))
                }
                _ if image_reached(&img, until) => Poll::Ready(img),
                other => Poll::Pending(format!(
                    "{id} is {}",
                    other.map(|s| s.as_str()).unwrap_or("unknown")
                )),
            },
        }
    })
    .await;
    r.map_err(|e| poll_failure("wait for image", id, e))
}

/// Snapshot ids of an image's EBS block devices.
pub fn image_snapshots(img: &Image) -> Vec<String> {
    img.block_device_mappings()
        .iter()
        .filter_map(|m| m.ebs().and_then(|e| e.snapshot_id()).map(str::to_string))
        .collect()
}

/// Deletes a snapshot, retrying while EC2 still reports it in use right after the image
/// that used it was deregistered (eventual consistency). Already gone is success.
pub async fn delete_snapshot(ec2: &Client, id: &str, timeout: Duration) -> Result<(), AwsError> {
    let r = retry::poll(Backoff::AWS.with_timeout(timeout), |_| async {
        match ec2
            .delete_snapshot()
            .snapshot_id(id)
            .send()
            .await
            .ctx("DeleteSnapshot", Some(id))
        {
            Ok(_) => Poll::Ready(()),
            Err(e) if e.is_not_found() => Poll::Ready(()),
            Err(e) if e.code_is(&["InvalidSnapshot.InUse"]) => {
                Poll::Pending(format!("{id} still in use: {}", e.message))
            }
            Err(e) => Poll::from_err(e),
        }
    })
    .await;
    r.map_err(|e| poll_failure("DeleteSnapshot", id, e))
}

/// Deregisters an image and deletes its snapshots. Snapshots in `keep` (still referenced by
/// another image) are left alone.
pub async fn deregister_with_snapshots(
    ec2: &Client,
    ami: &str,
    snapshots: &[String],
    keep: &[String],
) -> Result<Vec<String>, AwsError> {
    match ec2
        .deregister_image()
        .image_id(ami)
        .send()
        .await
        .ctx("DeregisterImage", Some(ami))
    {
        Ok(_) => {}
        Err(e) if e.is_not_found() => {}
        Err(e) => return Err(e),
    }
    let mut deleted = Vec::new();
    for s in snapshots.iter().filter(|s| !keep.contains(s)) {
        delete_snapshot(ec2, s, Duration::from_secs(120)).await?;
        deleted.push(s.clone());
    }
    Ok(deleted)
}

/// Instances that are not terminated, matching `filters`, every page.
pub async fn live_instances(ec2: &Client, filters: Vec<Filter>) -> Result<Vec<Instance>, AwsError> {
    let mut out = Vec::new();
    let mut pages = ec2
        .describe_instances()
        .set_filters(Some(filters))
        .filters(filter(
            "instance-state-name",
            ["pending", "running", "stopping", "stopped", "shutting-down"],
        ))
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.ctx("DescribeInstances", None)?;
        out.extend(
            page.reservations()
                .iter()
                .flat_map(|r| r.instances())
                .cloned(),
        );
    }
    Ok(out)
}

/// Instances (not terminated) carrying tag `key=value`.
pub async fn instances_tagged(
    ec2: &Client,
    key: &str,
    value: &str,
) -> Result<Vec<Instance>, AwsError> {
    live_instances(ec2, vec![filter(&format!("tag:{key}"), [value])]).await
}

/// All images owned by this account matching the filters, every page.
pub async fn own_images(ec2: &Client, filters: Vec<Filter>) -> Result<Vec<Image>, AwsError> {
    // DescribeImages is not paginated in every region/implementation; ask for everything once
    // and follow NextToken when it is given.
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let resp = ec2
            .describe_images()
            .owners("self")
            .set_filters(Some(filters.clone()))
            .set_next_token(token.clone())
            .send()
            .await
            .ctx("DescribeImages", Some("owner self"))?;
        out.extend(resp.images().iter().cloned());
        token = resp.next_token().map(str::to_string);
        if token.is_none() {
            break;
        }
    }
    Ok(out)
}

/// Sends TerminateInstances for `ids` without waiting (`not_found_grace` as for
/// [`terminate_and_wait`]).
pub async fn terminate(
    ec2: &Client,
    ids: &[String],
    not_found_grace: Option<Duration>,
) -> Result<(), AwsError> {
    let joined = ids.join(",");
    let call = || async {
        ec2.terminate_instances()
            .set_instance_ids(Some(ids.to_vec()))
            .send()
            .await
            .ctx("TerminateInstances", Some(&joined))
    };
    let sent = match not_found_grace {
        Some(grace) => settle("TerminateInstances", &joined, grace, not_yet_visible, call).await,
        None => {
            settle(
                "TerminateInstances",
                &joined,
                DELETE_TIMEOUT,
                |_| false,
                call,
            )
            .await
        }
    };
    match sent {
        Err(e) if !(not_found_grace.is_none() && e.is_not_found()) => Err(e),
        _ => Ok(()),
    }
}

/// Terminates `ids` and waits until every one is terminated. `not_found_grace`: for ids this
/// process was just given (a builder a moment after RunInstances) "not found" means "not
/// visible yet" for that long; `None` for ids a listing showed, where "not found" means gone.
pub async fn terminate_and_wait(
    ec2: &Client,
    ids: &[String],
    not_found_grace: Option<Duration>,
) -> Result<(), AwsError> {
    terminate(ec2, ids, not_found_grace).await?;
    let waits = ids.iter().map(|id| {
        wait_instance_state(
            ec2,
            id,
            InstanceStateName::Terminated,
            Duration::from_secs(600),
        )
    });
    for r in futures::future::join_all(waits).await {
        r?;
    }
    Ok(())
}

/// How long a deletion waits for what still uses the resource (an instance that has only just
/// terminated keeps its security group and volumes "in use" for a while).
const DELETE_TIMEOUT: Duration = Duration::from_secs(180);

/// Calls a deletion until it is done, waiting while AWS answers with one of the `busy` codes
/// (still in use) and out throttling; "not found" is done (gone already).
pub async fn delete_when_free<F, Fut, E>(
    op: &'static str,
    id: &str,
    busy: &[&str],
    call: F,
) -> Result<(), AwsError>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<(), aws_sdk_ec2::error::SdkError<E>>>,
    E: aws_sdk_ec2::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let r = retry::poll(Backoff::AWS.with_timeout(DELETE_TIMEOUT), |_| async {
        match call().await.ctx(op, Some(id)) {
            Ok(()) => Poll::Ready(()),
            Err(e) if e.is_not_found() => Poll::Ready(()),
            Err(e) if e.code_is(busy) => Poll::Pending(format!("{id} still in use")),
            Err(e) => Poll::from_err(e),
        }
    })
    .await;
    r.map_err(|e| poll_failure(op, id, e))
}

/// Deletes a security group once no instance uses it any more.
pub async fn delete_security_group(ec2: &Client, id: &str) -> Result<(), AwsError> {
    delete_when_free(
        "DeleteSecurityGroup",
        id,
        &["DependencyViolation"],
        || async {
            ec2.delete_security_group()
                .group_id(id)
                .send()
                .await
                .map(|_| ())
        },
    )
    .await
}

/// Deletes a volume once it is detached.
pub async fn delete_volume(ec2: &Client, id: &str) -> Result<(), AwsError> {
    delete_when_free(
        "DeleteVolume",
        id,
        &["VolumeInUse", "IncorrectState"],
        || async { ec2.delete_volume().volume_id(id).send().await.map(|_| ()) },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_ec2::types::{BlockDeviceMapping, EbsBlockDevice};

    fn image(state: ImageState, snapshots: &[Option<&str>]) -> Image {
        let mut b = Image::builder().state(state);
        for s in snapshots {
            let ebs = EbsBlockDevice::builder().set_snapshot_id(s.map(str::to_string));
            b = b.block_device_mappings(BlockDeviceMapping::builder().ebs(ebs.build()).build());
        }
        b.build()
    }

    #[test]
    fn snapshots_started_needs_every_ebs_snapshot_named() {
        let started = ImageReady::SnapshotsStarted;
        assert!(!image_reached(&image(ImageState::Pending, &[]), started));
        assert!(!image_reached(
            &image(ImageState::Pending, &[Some("snap-1"), None]),
            started
        ));
        assert!(image_reached(
            &image(ImageState::Pending, &[Some("snap-1"), Some("snap-2")]),
            started
        ));
        assert!(image_reached(&image(ImageState::Available, &[]), started));
    }

    #[test]
    fn available_is_only_available() {
        let pending = image(ImageState::Pending, &[Some("snap-1")]);
        assert!(!image_reached(&pending, ImageReady::Available));
        assert!(image_reached(
            &image(ImageState::Available, &[Some("snap-1")]),
            ImageReady::Available
        ));
    }
}
