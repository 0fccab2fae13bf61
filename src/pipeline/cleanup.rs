//! The undo stack. Every build step pushes the undo of what it is about to create *before* it
//! makes the call, naming the resource by something bake chose itself (a tag with the build id,
//! a name), so even a call interrupted mid-flight is cleaned up. Undos run newest first on
//! success, failure and interruption alike; an undo is dropped from the stack only once done,
//! so whatever is still on it is exactly what is left.

use std::sync::Mutex;
use std::time::Duration;

use aws_sdk_ec2::types::InstanceStateName;

use crate::aws::ec2::{self, filter};
use crate::aws::{AwsError, Clients, Ctx};
use crate::retry::{self, Backoff, Poll};
use crate::ui::Ui;

/// Something to remove.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Undo {
    /// Terminate every instance tagged `bake:build-id=<id>` and wait until terminated (a
    /// security group cannot be deleted while an instance still uses it).
    TerminateBuildInstances {
        build_id: String,
    },
    DeleteKeyPair {
        name: String,
    },
    /// The temporary security group, found by name and build tag.
    DeleteSecurityGroup {
        name: String,
        build_id: String,
    },
    /// A half-made image (found by name, owned by us) and its snapshots.
    DeregisterImage {
        name: String,
    },
    /// The per-fingerprint build lock, if this build holds it.
    ReleaseLock {
        name: String,
        build_id: String,
    },
    /// Every S3 object under `prefix` (the SSM communicator's staged uploads and command
    /// output; the prefix ends in the build id).
    DeleteStagedObjects {
        bucket: String,
        prefix: String,
    },
}

impl std::fmt::Display for Undo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Undo::TerminateBuildInstances { build_id } => {
                write!(f, "instances tagged bake:build-id={build_id}")
            }
            Undo::DeleteKeyPair { name } => write!(f, "key pair {name}"),
            Undo::DeleteSecurityGroup { name, .. } => write!(f, "security group {name}"),
            Undo::DeregisterImage { name } => write!(f, "image named {name} and its snapshots"),
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
}

impl Cleanup {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers an undo; call before creating the resource.
    pub fn push(&self, undo: Undo) -> Token {
        let mut n = self.next.lock().unwrap();
        *n += 1;
        self.stack.lock().unwrap().push((*n, undo));
        Token(*n)
    }

    /// The resource is a result, not a leftover (the finished image).
    pub fn keep(&self, t: Token) {
        self.stack.lock().unwrap().retain(|(n, _)| *n != t.0);
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

    /// Runs every undo. Undos that only need the builder gone (a security group still in
    /// use, staged objects a dying agent could still write to) wait for the rest; within each
    /// of the two waves everything runs at once, since on AWS each removal is a wait of its own.
    /// Failures do not stop the rest; they are returned with their errors.
    pub async fn run(&self, clients: &Clients, ui: &Ui) -> Vec<(Undo, AwsError)> {
        let mut failed = Vec::new();
        for second_wave in [false, true] {
            let wave: Vec<(u64, Undo)> = {
                let stack = self.stack.lock().unwrap();
                stack
                    .iter()
                    .rev()
                    .filter(|(_, u)| u.after_builder_gone() == second_wave)
                    .cloned()
                    .collect()
            };
            let results = futures::future::join_all(wave.into_iter().map(|(n, undo)| async move {
                let stage = ui.stage("cleanup", &format!("removing {undo}"));
                let res = undo_one(clients, &undo).await;
                match &res {
                    Ok(msg) => {
                        stage.finish(msg);
                    }
                    Err(e) => stage.fail(&format!("could not remove {undo}: {e}")),
                }
                // Failed undos leave the stack too but are reported as left.
                self.stack.lock().unwrap().retain(|(m, _)| *m != n);
                res.err().map(|e| (undo, e))
            }))
            .await;
            failed.extend(results.into_iter().flatten());
        }
        failed
    }
}

impl Undo {
    fn after_builder_gone(&self) -> bool {
        matches!(
            self,
            Undo::DeleteSecurityGroup { .. } | Undo::DeleteStagedObjects { .. }
        )
    }
}

async fn undo_one(c: &Clients, undo: &Undo) -> Result<String, AwsError> {
    match undo {
        Undo::TerminateBuildInstances { build_id } => {
            let insts = ec2::instances_tagged(&c.ec2, "bake:build-id", build_id).await?;
            let ids: Vec<String> = insts
                .iter()
                .filter_map(|i| i.instance_id().map(str::to_string))
                .collect();
            if ids.is_empty() {
                return Ok("no instance to terminate".into());
            }
            c.ec2
                .terminate_instances()
                .set_instance_ids(Some(ids.clone()))
                .send()
                .await
                .ctx("TerminateInstances", Some(&ids.join(",")))?;
            for id in &ids {
                ec2::wait_instance_state(
                    &c.ec2,
                    id,
                    InstanceStateName::Terminated,
                    Duration::from_secs(600),
                )
                .await?;
            }
            Ok(format!("terminated {}", ids.join(", ")))
        }
        Undo::DeleteKeyPair { name } => Ok(if ec2::delete_key_pair(&c.ec2, name).await? {
            format!("deleted key pair {name}")
        } else {
            format!("key pair {name} already gone")
        }),
        Undo::DeleteSecurityGroup { name, build_id } => {
            let groups = c
                .ec2
                .describe_security_groups()
                .filters(filter("group-name", [name.as_str()]))
                .filters(filter("tag:bake:build-id", [build_id.as_str()]))
                .send()
                .await
                .ctx("DescribeSecurityGroups", Some(name))?;
            let Some(id) = groups
                .security_groups()
                .first()
                .and_then(|g| g.group_id())
                .map(str::to_string)
            else {
                return Ok(format!("security group {name} not found (never created)"));
            };
            // Right after its instance terminates EC2 may still report the group in use.
            let r = retry::poll(
                Backoff::AWS.with_timeout(Duration::from_secs(180)),
                |_| async {
                    match c
                        .ec2
                        .delete_security_group()
                        .group_id(&id)
                        .send()
                        .await
                        .ctx("DeleteSecurityGroup", Some(&id))
                    {
                        Ok(_) => Poll::Ready(()),
                        Err(e) if e.is_not_found() => Poll::Ready(()),
                        Err(e) if e.code_is(&["DependencyViolation"]) => {
                            Poll::Pending(format!("{id} still in use"))
                        }
                        Err(e) if e.is_throttling() => Poll::Throttled,
                        Err(e) => Poll::Fail(e),
                    }
                },
            )
            .await;
            r.map_err(|e| ec2::poll_failure("DeleteSecurityGroup", &id, e))?;
            Ok(format!("deleted security group {id}"))
        }
        Undo::ReleaseLock { name, build_id } => super::lock::release(c, name, build_id).await,
        Undo::DeleteStagedObjects { bucket, prefix } => delete_staged(c, bucket, prefix).await,
        Undo::DeregisterImage { name } => {
            let imgs = ec2::own_images(&c.ec2, vec![filter("name", [name.as_str()])]).await?;
            let mut done = Vec::new();
            for img in imgs {
                let Some(id) = img.image_id() else { continue };
                let snaps = ec2::image_snapshots(&img);
                ec2::deregister_with_snapshots(&c.ec2, id, &snaps, &[]).await?;
                done.push(format!("{id} (+{} snapshot(s))", snaps.len()));
            }
            if done.is_empty() {
                // CreateImage may have been interrupted before the image was visible.
                Ok(format!("no image named {name}"))
            } else {
                Ok(format!("deregistered {}", done.join(", ")))
            }
        }
    }
}

/// Deletes every object under `prefix` (page by page; a missing bucket means nothing to do).
async fn delete_staged(c: &Clients, bucket: &str, prefix: &str) -> Result<String, AwsError> {
    let what = format!("s3://{bucket}/{prefix}");
    let mut deleted = 0usize;
    loop {
        let page = match c
            .s3
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .send()
            .await
            .ctx("ListObjectsV2", Some(&what))
        {
            Ok(p) => p,
            Err(e) if e.code_is(&["NoSuchBucket"]) => {
                return Ok(format!("bucket {bucket} does not exist: nothing staged"));
            }
            Err(e) => return Err(e),
        };
        let keys: Vec<String> = page
            .contents()
            .iter()
            .filter_map(|o| o.key().map(str::to_string))
            .collect();
        if keys.is_empty() {
            break;
        }
        for key in &keys {
            c.s3.delete_object()
                .bucket(bucket)
                .key(key)
                .send()
                .await
                .ctx("DeleteObject", Some(key))?;
        }
        deleted += keys.len();
    }
    Ok(if deleted == 0 {
        format!("nothing staged under {what}")
    } else {
        format!("deleted {deleted} object(s) under {what}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_is_newest_first_and_keep_removes() {
        let c = Cleanup::new();
        c.push(Undo::DeleteKeyPair { name: "k".into() });
        c.push(Undo::TerminateBuildInstances {
            build_id: "b".into(),
        });
        let img = c.push(Undo::DeregisterImage { name: "i".into() });
        assert_eq!(c.pending()[0], Undo::DeregisterImage { name: "i".into() });
        c.keep(img);
        assert_eq!(
            c.pending(),
            vec![
                Undo::TerminateBuildInstances {
                    build_id: "b".into()
                },
                Undo::DeleteKeyPair { name: "k".into() }
            ]
        );
    }
}
