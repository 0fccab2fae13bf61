//! The undo stack. Every build step pushes the undo of what it is about to create *before* it
//! makes the call, so even a call interrupted mid-flight is cleaned up, and updates it in place
//! ([`Cleanup::resolve`]) with the id AWS returned. Undos run on success, failure and
//! interruption alike; an undo is dropped from the stack only once done, so whatever is still on
//! it is exactly what is left.
//!
//! An undo never touches what this build did not make: it names its resource by the id AWS
//! returned, or, until that id is known, finds it by this build's `bake:build-id` tag (and the
//! client token where the resource has one), never by name alone. Such a lookup keeps looking
//! for a while, since a resource created a moment ago may not be visible yet.

use std::sync::Mutex;
use std::time::Duration;

use aws_sdk_ec2::types::{Instance, InstanceStateName};

use super::on_error::{Access, Choice};
use crate::aws::ec2::{self, filter, tagged_with_build};
use crate::aws::{AwsError, Clients, Ctx};
use crate::retry::{self, Backoff, Poll, PollError};
use crate::ui::Ui;

/// What the build knows of a resource it is creating.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Made {
    /// The create call was sent and gave no answer yet (in flight, interrupted, or the answer
    /// was lost): it may exist without our knowing its id.
    Unknown,
    /// AWS refused the create: this call made nothing (looked for once all the same, in case
    /// an earlier attempt whose answer was lost did).
    Refused,
    /// AWS returned this id.
    Id(String),
}

impl Made {
    fn id(&self) -> Option<&str> {
        match self {
            Made::Id(id) => Some(id),
            _ => None,
        }
    }

    /// How long to keep looking when the resource does not show up: a known id or an
    /// unanswered create may just not be visible yet; a refused create made nothing.
    fn window(&self) -> Duration {
        match self {
            Made::Id(_) => KNOWN_ID_GRACE,
            Made::Unknown => LOOKUP_WINDOW,
            Made::Refused => Duration::ZERO,
        }
    }
}

/// An unanswered create is looked for this long before it is taken as never made.
pub const LOOKUP_WINDOW: Duration = Duration::from_secs(30);
/// A known id that answers "not found" is taken as gone after this long.
pub const KNOWN_ID_GRACE: Duration = Duration::from_secs(20);

/// Something to remove.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Undo {
    /// The builder: the instance RunInstances returned, else every live instance tagged
    /// `bake:build-id=<build_id>` launched with `client_token`. Waits until terminated (a
    /// security group cannot be deleted while an instance still uses it).
    TerminateInstance {
        build_id: String,
        client_token: String,
        made: Made,
    },
    /// The temporary key pair `name`, only if it carries this build's tag (or the id returned).
    DeleteKeyPair {
        name: String,
        build_id: String,
        made: Made,
    },
    /// The temporary security group: by id, else by name and build tag.
    DeleteSecurityGroup {
        name: String,
        build_id: String,
        made: Made,
    },
    /// A half-made image and its snapshots: the id CreateImage returned, else an image of that
    /// name tagged with this build's id. Never an image of the name alone: after
    /// `InvalidAMIName.Duplicate` that is somebody else's.
    DeregisterImage {
        name: String,
        build_id: String,
        made: Made,
    },
    /// A copy of the image in another region: as `DeregisterImage`, in `region`.
    DeregisterCopy {
        region: String,
        name: String,
        build_id: String,
        made: Made,
    },
    /// The per-fingerprint build lock, if this build holds it.
    ReleaseLock { name: String, build_id: String },
    /// Every S3 object under `prefix` (the SSM communicator's staged uploads and command
    /// output; the prefix ends in the build id).
    DeleteStagedObjects { bucket: String, prefix: String },
}

impl Undo {
    pub fn instance(build_id: &str, client_token: &str) -> Undo {
        Undo::TerminateInstance {
            build_id: build_id.into(),
            client_token: client_token.into(),
            made: Made::Unknown,
        }
    }

    pub fn key_pair(name: &str, build_id: &str) -> Undo {
        Undo::DeleteKeyPair {
            name: name.into(),
            build_id: build_id.into(),
            made: Made::Unknown,
        }
    }

    pub fn security_group(name: &str, build_id: &str) -> Undo {
        Undo::DeleteSecurityGroup {
            name: name.into(),
            build_id: build_id.into(),
            made: Made::Unknown,
        }
    }

    pub fn image(name: &str, build_id: &str) -> Undo {
        Undo::DeregisterImage {
            name: name.into(),
            build_id: build_id.into(),
            made: Made::Unknown,
        }
    }

    /// The build whose resource this is (staged S3 objects: S3 lists new objects at once).
    fn build_id(&self) -> Option<&str> {
        match self {
            Undo::TerminateInstance { build_id, .. }
            | Undo::DeleteKeyPair { build_id, .. }
            | Undo::DeleteSecurityGroup { build_id, .. }
            | Undo::DeregisterImage { build_id, .. }
            | Undo::DeregisterCopy { build_id, .. }
            | Undo::ReleaseLock { build_id, .. } => Some(build_id),
            Undo::DeleteStagedObjects { .. } => None,
        }
    }

    fn made_mut(&mut self) -> Option<&mut Made> {
        match self {
            Undo::TerminateInstance { made, .. }
            | Undo::DeleteKeyPair { made, .. }
            | Undo::DeleteSecurityGroup { made, .. }
            | Undo::DeregisterImage { made, .. }
            | Undo::DeregisterCopy { made, .. } => Some(made),
            Undo::ReleaseLock { .. } | Undo::DeleteStagedObjects { .. } => None,
        }
    }

    /// Removals that wait until the builder is gone: a security group still in use cannot be
    /// deleted, and a dying agent could still write staged objects.
    fn after_builder_gone(&self) -> bool {
        matches!(
            self,
            Undo::DeleteSecurityGroup { .. } | Undo::DeleteStagedObjects { .. }
        )
    }
}

impl std::fmt::Display for Undo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Undo::TerminateInstance {
                made: Made::Id(id), ..
            } => write!(f, "instance {id}"),
            Undo::TerminateInstance { build_id, .. } => {
                write!(f, "instances tagged bake:build-id={build_id}")
            }
            Undo::DeleteKeyPair { name, .. } => write!(f, "key pair {name}"),
            Undo::DeleteSecurityGroup {
                name,
                made: Made::Id(id),
                ..
            } => write!(f, "security group {id} ({name})"),
            Undo::DeleteSecurityGroup { name, .. } => write!(f, "security group {name}"),
            Undo::DeregisterImage {
                name,
                made: Made::Id(id),
                ..
            } => write!(f, "image {id} ({name}) and its snapshots"),
            Undo::DeregisterImage { name, build_id, .. } => write!(
                f,
                "image named {name} tagged bake:build-id={build_id} and its snapshots"
            ),
            Undo::DeregisterCopy {
                region,
                name,
                made: Made::Id(id),
                ..
            } => write!(f, "copy {id} ({name}) in {region} and its snapshots"),
            Undo::DeregisterCopy { region, name, .. } => {
                write!(f, "copy {name} in {region} and its snapshots")
            }
            Undo::ReleaseLock { name, .. } => write!(f, "build lock {name}"),
            Undo::DeleteStagedObjects { bucket, prefix } => {
                write!(f, "staged objects s3://{bucket}/{prefix}")
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token(u64);

#[derive(Default)]
pub struct Cleanup {
    stack: Mutex<Vec<(u64, Undo)>>,
    next: Mutex<u64>,
    /// Build locks this build took (their release may not see them yet).
    held_locks: Mutex<Vec<String>>,
    /// How to reach the builder while it is reachable (for `--on-error`), and what was
    /// chosen when a failed step asked.
    builder: Mutex<Option<Access>>,
    decided: Mutex<Option<Choice>>,
}

impl Cleanup {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers an undo; call before creating the resource.
    pub fn push(&self, undo: Undo) -> Token {
        if let Some(b) = undo.build_id() {
            super::journal::touch(b);
        }
        let mut n = self.next.lock().unwrap();
        *n += 1;
        self.stack.lock().unwrap().push((*n, undo));
        Token(*n)
    }

    /// AWS returned `id` for the resource of `t`: from now on the undo removes exactly that.
    pub fn resolve(&self, t: Token, id: &str) {
        self.set_made(t, Made::Id(id.to_string()));
    }

    /// AWS refused the create of `t` outright: nothing to wait for when cleaning up.
    pub fn refused(&self, t: Token) {
        self.set_made(t, Made::Refused);
    }

    fn set_made(&self, t: Token, m: Made) {
        let mut stack = self.stack.lock().unwrap();
        let Some((_, undo)) = stack.iter_mut().find(|(n, _)| *n == t.0) else {
            return;
        };
        if let Some(b) = undo.build_id() {
            super::journal::touch(b);
        }
        if let Some(made) = undo.made_mut() {
            // A known id is never forgotten (a late "refused" from a retry cannot undo it).
            if made.id().is_none() {
                *made = m;
            }
        }
    }

    /// This build took the build lock `name`: releasing it keeps looking for a while when the
    /// new key pair is not visible yet, instead of taking "not found" for "not held".
    pub fn lock_held(&self, name: &str) {
        self.held_locks.lock().unwrap().push(name.to_string());
    }

    /// The resource is a result, not a leftover (the finished image).
    pub fn keep(&self, t: Token) {
        self.stack.lock().unwrap().retain(|(n, _)| *n != t.0);
    }

    /// The builder is reachable through its communicator (see [`super::on_error`]); `None`:
    /// no longer (provisioning is done, the temporary key is gone).
    pub fn set_reachable(&self, access: Option<Access>) {
        *self.builder.lock().unwrap() = access;
    }

    /// The reachable builder, if the build failed while it was.
    pub fn reachable(&self) -> Option<Access> {
        self.builder.lock().unwrap().clone()
    }

    /// Records what the user chose when a failed step asked (`--on-error=ask`).
    pub fn decide(&self, c: Choice) {
        *self.decided.lock().unwrap() = Some(c);
    }

    pub fn decided(&self) -> Option<Choice> {
        *self.decided.lock().unwrap()
    }

    /// What is still to be removed, newest first.
    pub fn pending(&self) -> Vec<Undo> {
        self.stack
            .lock()
            .unwrap()
            .iter()
            .rev()
            .map(|(_, u)| u.clone())
            .collect()
    }

    /// Runs every undo, each removal as soon as nothing it depends on is left: everything
    /// starts at once except what needs the builder gone (security group, staged objects),
    /// which starts the moment the instance undos are done, not after the slowest removal.
    /// Failures do not stop the rest; they are returned with their errors.
    pub async fn run(&self, clients: &Clients, ui: &Ui) -> Vec<(Undo, AwsError)> {
        self.run_except(clients, ui, |_| false).await
    }

    /// As [`Cleanup::run`], leaving the undos `keep` names on the stack (a builder kept by
    /// `--on-error=abort`): [`Cleanup::pending`] then lists exactly what was kept.
    pub async fn run_except(
        &self,
        clients: &Clients,
        ui: &Ui,
        keep: impl Fn(&Undo) -> bool,
    ) -> Vec<(Undo, AwsError)> {
        let snapshot: Vec<(u64, Undo)> = self
            .stack
            .lock()
            .unwrap()
            .iter()
            .rev()
            .filter(|(_, u)| !keep(u))
            .cloned()
            .collect();
        let (instances, rest): (Vec<_>, Vec<_>) = snapshot
            .into_iter()
            .partition(|(_, u)| matches!(u, Undo::TerminateInstance { .. }));
        let (dependent, independent): (Vec<_>, Vec<_>) =
            rest.into_iter().partition(|(_, u)| u.after_builder_gone());
        let held = self.held_locks.lock().unwrap().clone();
        let held = &held;
        let one = |(n, undo): (u64, Undo)| async move {
            let stage = ui.stage("cleanup", &format!("removing {undo}"));
            let res = match &undo {
                Undo::ReleaseLock { name, build_id } if held.contains(name) => {
                    release_held_lock(clients, name, build_id).await
                }
                _ => undo_one(clients, &undo).await,
            };
            match &res {
                Ok(msg) => {
                    stage.finish(msg);
                }
                Err(e) => stage.fail(&format!("could not remove {undo}: {e}")),
            }
            // Failed undos leave the stack too but are reported as left.
            self.stack.lock().unwrap().retain(|(m, _)| *m != n);
            res.err().map(|e| (undo, e))
        };
        let builder_then_dependents = async {
            let mut r = futures::future::join_all(instances.into_iter().map(one)).await;
            r.extend(futures::future::join_all(dependent.into_iter().map(one)).await);
            r
        };
        let (a, b) = futures::join!(
            builder_then_dependents,
            futures::future::join_all(independent.into_iter().map(one))
        );
        a.into_iter().chain(b).flatten().collect()
    }
}

/// Looks for what an undo should remove until `lookup` finds something or `window` passes
/// (nothing found then: it was never made). "Not found" while looking is "not yet".
async fn find<T, F, Fut>(what: &str, window: Duration, mut lookup: F) -> Result<Vec<T>, AwsError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Vec<T>, AwsError>>,
{
    let r = retry::poll(Backoff::AWS.with_timeout(window), |_| {
        let fut = lookup();
        async move {
            match fut.await {
                Ok(v) if !v.is_empty() => Poll::Ready(v),
                Ok(_) => Poll::Pending(format!("{what} not visible")),
                Err(e) if e.is_not_found() => Poll::Pending(format!("{what} not visible")),
                Err(e) => Poll::from_err(e),
            }
        }
    })
    .await;
    match r {
        Ok(v) => Ok(v),
        Err(PollError::Timeout { .. }) => Ok(Vec::new()),
        Err(PollError::Failed(e)) => Err(e),
    }
}

async fn undo_one(c: &Clients, undo: &Undo) -> Result<String, AwsError> {
    match undo {
        Undo::TerminateInstance {
            build_id,
            client_token,
            made,
        } => terminate(c, build_id, client_token, made).await,
        Undo::DeleteKeyPair {
            name,
            build_id,
            made,
        } => {
            let found = find(&format!("key pair {name}"), made.window(), || async {
                Ok(ec2::describe_key_pair(&c.ec2, name)
                    .await?
                    .filter(|k| {
                        made.id().is_some_and(|id| k.key_pair_id() == Some(id))
                            || tagged_with_build(k.tags(), build_id)
                    })
                    .into_iter()
                    .collect::<Vec<_>>())
            })
            .await?;
            if found.is_empty() {
                return Ok(format!("no key pair {name} of this build"));
            }
            // By name: every EC2 look-alike deletes by name, and the name is ours (checked).
            Ok(if ec2::delete_key_pair(&c.ec2, name).await? {
                format!("deleted key pair {name}")
            } else {
                format!("key pair {name} already gone")
            })
        }
        Undo::DeleteSecurityGroup {
            name,
            build_id,
            made,
        } => {
            let found = find(&format!("security group {name}"), made.window(), || async {
                let req = match made.id() {
                    Some(id) => c.ec2.describe_security_groups().group_ids(id),
                    None => c
                        .ec2
                        .describe_security_groups()
                        .filters(filter("group-name", [name.as_str()]))
                        .filters(filter("tag:bake:build-id", [build_id.as_str()])),
                };
                let out = req.send().await.ctx("DescribeSecurityGroups", Some(name))?;
                Ok(out
                    .security_groups()
                    .iter()
                    .filter(|g| made.id().is_some() || tagged_with_build(g.tags(), build_id))
                    .filter_map(|g| g.group_id().map(str::to_string))
                    .collect::<Vec<_>>())
            })
            .await?;
            let mut done = Vec::new();
            for id in found {
                ec2::delete_security_group(&c.ec2, &id).await?;
                done.push(id);
            }
            Ok(if done.is_empty() {
                format!("no security group {name} of this build")
            } else {
                format!("deleted security group {}", done.join(", "))
            })
        }
        Undo::DeregisterCopy {
            region,
            name,
            build_id,
            made,
        } => {
            let there = c.in_region(region);
            let same = Undo::DeregisterImage {
                name: name.clone(),
                build_id: build_id.clone(),
                made: made.clone(),
            };
            Box::pin(undo_one(&there, &same))
                .await
                .map(|m| format!("{m} in {region}"))
        }
        Undo::ReleaseLock { name, build_id } => super::lock::release(c, name, build_id).await,
        Undo::DeleteStagedObjects { bucket, prefix } => delete_staged(c, bucket, prefix).await,
        Undo::DeregisterImage {
            name,
            build_id,
            made,
        } => {
            let found = find(&format!("image {name}"), made.window(), || async {
                let imgs = match made.id() {
                    Some(id) => ec2::describe_image(&c.ec2, id).await?.into_iter().collect(),
                    None => {
                        let f = vec![
                            filter("name", [name.as_str()]),
                            filter("tag:bake:build-id", [build_id.as_str()]),
                        ];
                        ec2::own_images(&c.ec2, f).await?
                    }
                };
                // The filter is checked again here: an image without this build's tag, or
                // with another id than CreateImage returned, is never ours to remove.
                Ok(imgs
                    .into_iter()
                    .filter(|i| match made.id() {
                        Some(id) => i.image_id() == Some(id),
                        None => tagged_with_build(i.tags(), build_id),
                    })
                    .collect::<Vec<_>>())
            })
            .await?;
            let mut done = Vec::new();
            for img in found {
                let Some(id) = img.image_id().map(str::to_string) else {
                    continue;
                };
                let id = id.as_str();
                // A pending image names its snapshots only once they have started: deregistered
                // before that, the snapshots it then makes would be left with no image.
                let img = if ec2::image_reached(&img, ec2::ImageReady::SnapshotsStarted) {
                    img
                } else {
                    ec2::wait_image(&c.ec2, id, ec2::ImageReady::SnapshotsStarted, LOOKUP_WINDOW)
                        .await
                        .unwrap_or(img)
                };
                let snaps = ec2::image_snapshots(&img);
                ec2::deregister_with_snapshots(&c.ec2, id, &snaps, &[]).await?;
                done.push(format!("{id} (+{} snapshot(s))", snaps.len()));
            }
            Ok(if done.is_empty() {
                format!("no image {name} of this build")
            } else {
                format!("deregistered {}", done.join(", "))
            })
        }
    }
}

/// Terminates the builder (by id, or every live instance of this build and client token) and
/// waits until each is terminated.
async fn terminate(
    c: &Clients,
    build_id: &str,
    client_token: &str,
    made: &Made,
) -> Result<String, AwsError> {
    let ours = |i: &Instance| match made.id() {
        Some(id) => i.instance_id() == Some(id),
        None => {
            tagged_with_build(i.tags(), build_id)
                && i.client_token()
                    .is_none_or(|t| t.is_empty() || t == client_token)
        }
    };
    let found = find("builder instance", made.window(), || async {
        let insts = match made.id() {
            Some(id) => ec2::describe_instance(&c.ec2, id)
                .await?
                .into_iter()
                .collect(),
            None => ec2::instances_tagged(&c.ec2, "bake:build-id", build_id).await?,
        };
        Ok(insts.into_iter().filter(ours).collect::<Vec<_>>())
    })
    .await?;
    let ids: Vec<String> = found
        .iter()
        .filter(|i| i.state().and_then(|s| s.name()) != Some(&InstanceStateName::Terminated))
        .filter_map(|i| i.instance_id().map(str::to_string))
        .collect();
    if ids.is_empty() {
        return Ok(if found.is_empty() {
            "no instance of this build".into()
        } else {
            "already terminated".into()
        });
    }
    ec2::terminate_and_wait(&c.ec2, &ids, Some(KNOWN_ID_GRACE)).await?;
    Ok(format!("terminated {}", ids.join(", ")))
}

/// Releases a lock this build took: its key pair, found by name and this build's tag, looking
/// for a while since a lock taken a moment ago may not be visible yet.
async fn release_held_lock(c: &Clients, name: &str, build_id: &str) -> Result<String, AwsError> {
    let found = find(&format!("build lock {name}"), KNOWN_ID_GRACE, || async {
        Ok(ec2::describe_key_pair(&c.ec2, name)
            .await?
            .filter(|k| tagged_with_build(k.tags(), build_id))
            .into_iter()
            .collect::<Vec<_>>())
    })
    .await?;
    if found.is_empty() {
        return Ok(format!("lock {name} no longer held by this build"));
    }
    Ok(if ec2::delete_key_pair(&c.ec2, name).await? {
        format!("released lock {name}")
    } else {
        format!("lock {name} already gone")
    })
}

/// Deletes every object this build staged under `prefix`.
async fn delete_staged(c: &Clients, bucket: &str, prefix: &str) -> Result<String, AwsError> {
    let what = format!("s3://{bucket}/{prefix}");
    Ok(
        match crate::aws::s3::delete_prefix(&c.s3, bucket, prefix).await? {
            None => format!("bucket {bucket} does not exist: nothing staged"),
            Some(0) => format!("nothing staged under {what}"),
            Some(n) => format!("deleted {n} object(s) under {what}"),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_is_newest_first_and_keep_removes() {
        let c = Cleanup::new();
        c.push(Undo::key_pair("k", "b"));
        c.push(Undo::instance("b", "b"));
        let img = c.push(Undo::image("i", "b"));
        assert_eq!(c.pending()[0], Undo::image("i", "b"));
        c.keep(img);
        assert_eq!(
            c.pending(),
            vec![Undo::instance("b", "b"), Undo::key_pair("k", "b")]
        );
    }

    #[test]
    fn resolve_updates_the_undo_in_place_and_is_never_forgotten() {
        let c = Cleanup::new();
        let sg = c.push(Undo::security_group("g", "b"));
        let inst = c.push(Undo::instance("b", "tok"));
        assert_eq!(
            c.pending()[0].to_string(),
            "instances tagged bake:build-id=b"
        );
        c.resolve(inst, "i-1");
        assert_eq!(
            c.pending()[0],
            Undo::TerminateInstance {
                build_id: "b".into(),
                client_token: "tok".into(),
                made: Made::Id("i-1".into())
            }
        );
        assert_eq!(c.pending()[0].to_string(), "instance i-1");
        // A late refusal (a retry answering after the id came back) keeps the id.
        c.refused(inst);
        assert_eq!(c.pending()[0].to_string(), "instance i-1");
        c.refused(sg);
        assert!(matches!(
            c.pending()[1],
            Undo::DeleteSecurityGroup {
                made: Made::Refused,
                ..
            }
        ));
        // Undos without a resource id ignore resolve.
        let lock = c.push(Undo::ReleaseLock {
            name: "l".into(),
            build_id: "b".into(),
        });
        c.resolve(lock, "x");
        assert_eq!(c.pending()[0].to_string(), "build lock l");
    }

    #[test]
    fn an_image_undo_without_an_id_names_the_build_not_just_the_name() {
        let u = Undo::image("web-1", "b-42");
        assert_eq!(
            u.to_string(),
            "image named web-1 tagged bake:build-id=b-42 and its snapshots"
        );
        assert_eq!(Made::Unknown.window(), LOOKUP_WINDOW);
        assert_eq!(Made::Refused.window(), Duration::ZERO);
        assert_eq!(Made::Id("ami-1".into()).window(), KNOWN_ID_GRACE);
    }

    #[tokio::test]
    async fn find_keeps_looking_until_the_resource_shows_up_or_the_window_ends() {
        let calls = std::sync::atomic::AtomicU32::new(0);
        let got = find("thing", Duration::from_secs(5), || async {
            let n = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if n < 2 {
                Err(AwsError::new("Describe", None, "not yet")
                    .with_code("InvalidInstanceID.NotFound"))
            } else {
                Ok(vec![n])
            }
        })
        .await
        .unwrap();
        assert_eq!(got, vec![2]);
        let none: Vec<u32> = find("thing", Duration::ZERO, || async { Ok(vec![]) })
            .await
            .unwrap();
        assert!(none.is_empty());
    }
}
