//! Checkpoints: images of the running builder after a `checkpoint = true` step, and builds
//! that start from the newest one whose prefix (see [`crate::plan::prefix`]) is unchanged.
//!
//! A checkpoint is made without stopping the builder: `sync`, a freeze of `/` where the OS has
//! `fsfreeze` (thawed by a process of its own after a few seconds, whatever becomes of bake),
//! then `CreateImage` with `NoReboot`. An EBS snapshot is point-in-time from that call, so the
//! next steps go on at once; the build waits for its checkpoints only beside the final image.
//! The undo of each is registered before the create, so a checkpoint never completed is
//! removed like any half-made image (and `bake gc` finds it by its `bake:state=pending`).
//!
//! A checkpoint image carries no `bake:fingerprint`: it is never a cache hit, a deploy
//! candidate or the "newest image" `bake plan` compares with. It holds the builder as it was
//! mid-build, including what bake removes only at the end (its temporary key, cloud-init's
//! copy of the user data); a build resumed from it removes those first, naming them by the
//! tags below.

use std::collections::BTreeMap;
use std::time::Duration;

use aws_sdk_ec2::types::{Image, ImageState, ResourceType};
use serde::Serialize;

use super::cleanup::{Token, Undo};
use super::image::{STATE_TAG, is_complete, mark_complete};
use super::launch::Launched;
use super::source::SourceImage;
use super::{Bake, BuildError, Inputs};
use crate::aws::AwsError;
use crate::aws::ec2::{self, filter, tag_spec};
use crate::plan::prefix::{self, Prefix};
use crate::recipe::model::{CommunicatorKind, Recipe};
use crate::remote::any::Communicator;

/// The step a checkpoint image was made after (its value is the step's name).
pub const CHECKPOINT_TAG: &str = "bake:checkpoint";
/// The prefix fingerprint of a checkpoint image.
pub const PREFIX_TAG: &str = "bake:checkpoint-fingerprint";
/// On an image built from a checkpoint: the checkpoint image it started from.
pub const FROM_TAG: &str = "bake:from-checkpoint";
/// The builder a checkpoint was made of, and its temporary key: what a resumed build removes.
const BUILDER_TAG: &str = "bake:checkpoint-builder";
const KEY_TAG: &str = "bake:checkpoint-key";

/// How long `/` stays frozen at most: enough for the CreateImage call to be answered.
const FREEZE_SECONDS: u32 = 5;

/// A checkpoint image a build starts from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Resume {
    pub ami_id: String,
    pub name: String,
    /// The checkpoint step: the build runs the steps after it.
    pub step: String,
    #[serde(skip)]
    pub index: usize,
    pub fingerprint: String,
    #[serde(skip)]
    builder: Option<String>,
    #[serde(skip)]
    key: Option<String>,
    #[serde(skip)]
    root_device: Option<String>,
    #[serde(skip)]
    architecture: Option<String>,
}

impl Resume {
    /// The checkpoint as the image the builder boots.
    pub fn as_source(&self) -> SourceImage {
        SourceImage {
            id: self.ami_id.clone(),
            name: Some(self.name.clone()),
            root_device: self.root_device.clone(),
            architecture: self.architecture.clone(),
        }
    }
}

/// A checkpoint image this build made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Checkpoint {
    pub step: String,
    pub ami_id: String,
    pub fingerprint: String,
}

/// A checkpoint image this build asked for and has not waited for yet.
pub struct Pending {
    checkpoint: Checkpoint,
    token: Token,
    snap_tags: BTreeMap<String, String>,
}

/// The images of checkpoints still pending (the builder must outlive their snapshots' start).
pub fn ami_ids(pending: &[Pending]) -> Vec<String> {
    pending
        .iter()
        .map(|p| p.checkpoint.ami_id.clone())
        .collect()
}

/// Of `images`, the newest available, complete checkpoint image of the latest checkpoint in
/// `prefixes` that has one: where a build starts.
pub fn choose<'a>(images: &'a [Image], prefixes: &'a [Prefix]) -> Option<(&'a Prefix, &'a Image)> {
    prefixes.iter().rev().find_map(|p| {
        images
            .iter()
            .filter(|i| i.state() == Some(&ImageState::Available))
            .filter(|i| {
                let t = ec2::tag_map(i.tags());
                t.get(PREFIX_TAG) == Some(&p.hash) && t.contains_key(STATE_TAG) && is_complete(&t)
            })
            .max_by(|a, b| a.creation_date().cmp(&b.creation_date()))
            .map(|i| (p, i))
    })
}

/// The checkpoint a build of `recipe` with fingerprint `fp` would start from, if any.
pub async fn find(
    ec2: &aws_sdk_ec2::Client,
    recipe: &Recipe,
    fp: &crate::plan::Fingerprint,
) -> Result<Option<Resume>, AwsError> {
    let prefixes = prefix::checkpoints(recipe, fp);
    if prefixes.is_empty() {
        return Ok(None);
    }
    let hashes: Vec<String> = prefixes.iter().map(|p| p.hash.clone()).collect();
    let imgs = ec2::own_images(ec2, vec![filter(&format!("tag:{PREFIX_TAG}"), hashes)]).await?;
    Ok(choose(&imgs, &prefixes).map(|(p, i)| {
        let t = ec2::tag_map(i.tags());
        Resume {
            ami_id: i.image_id().unwrap_or_default().to_string(),
            name: i.name().unwrap_or_default().to_string(),
            step: p.name.clone(),
            index: p.step,
            fingerprint: p.hash.clone(),
            builder: t.get(BUILDER_TAG).cloned(),
            key: t.get(KEY_TAG).cloned(),
            root_device: i.root_device_name().map(str::to_string),
            architecture: i.architecture().map(|a| a.as_str().to_string()),
        }
    }))
}

/// A checkpoint image's name: unique per build, within EC2's 128 characters and alphabet.
fn image_name(recipe: &str, step: &str, p: &Prefix, build_id: &str) -> String {
    let clean: String = format!("{recipe}-checkpoint-{step}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "()[]./-_".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    let tail = format!("-{}-{build_id}", p.short());
    let keep = 128 - tail.len();
    format!("{}{tail}", &clean[..clean.len().min(keep)])
}

/// Tags of a checkpoint image: bake's usual ones but for the fingerprint and its inputs
/// (never a cache hit), and the checkpoint's own.
fn tags(
    recipe: &Recipe,
    p: &Prefix,
    source: &SourceImage,
    build_id: &str,
    builder: &Launched,
    key: Option<&str>,
) -> BTreeMap<String, String> {
    let mut t = recipe.image.tags.clone();
    t.insert("bake:recipe".into(), recipe.name.clone());
    t.insert("bake:source-ami".into(), source.id.clone());
    t.insert("bake:build-id".into(), build_id.to_string());
    t.insert(STATE_TAG.into(), "pending".into());
    let (k, v) = super::lease::initial_tag();
    t.insert(k, v);
    t.insert(CHECKPOINT_TAG.into(), p.name.clone());
    t.insert(PREFIX_TAG.into(), p.hash.clone());
    t.insert(BUILDER_TAG.into(), builder.instance_id.clone());
    if let Some(k) = key {
        t.insert(KEY_TAG.into(), k.to_string());
    }
    t
}

/// The builder-side script before the snapshot: flush, and freeze `/` where `fsfreeze`
/// exists. The thaw is a process of its own, started first, so `/` is thawed whatever happens
/// to this session or to bake: it waits for the marker on `/run` (a tmpfs, writable while `/`
/// is frozen) that says the freeze call returned, then at most `FREEZE_SECONDS`.
pub fn freeze_script() -> String {
    format!(
        "# bake: checkpoint: flush, and freeze / for the moment of the snapshot\n\
         sync\n\
         command -v fsfreeze >/dev/null 2>&1 || exit 0\n\
         m=/run/bake-checkpoint.$$\n\
         setsid sh -c 'i=0; while [ ! -e \"$1\" ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done; \
         sleep {FREEZE_SECONDS}; fsfreeze --unfreeze / 2>/dev/null; rm -f \"$1\"' sh \"$m\" \
         </dev/null >/dev/null 2>&1 &\n\
         if fsfreeze --freeze / 2>/dev/null; then echo \"/ frozen for at most {FREEZE_SECONDS}s\"; fi\n\
         : > \"$m\"\n"
    )
}

impl Bake<'_> {
    /// Where this build starts: the newest checkpoint image of the latest unchanged prefix,
    /// unless `--no-checkpoints`.
    pub(super) async fn resume_point(&self, inputs: &Inputs) -> Result<Option<Resume>, BuildError> {
        if self.opts.no_checkpoints || !self.recipe.steps.iter().any(|s| s.checkpoint) {
            return Ok(None);
        }
        let found = find(&self.clients.ec2, self.recipe, &inputs.fp).await?;
        if let Some(r) = &found {
            self.ui.line(&format!(
                "starting from checkpoint {} ({}) after step {}: prefix {} unchanged",
                r.ami_id,
                r.name,
                r.step,
                &r.fingerprint[..12]
            ));
        }
        Ok(found)
    }

    /// On a builder booted from checkpoint `r`: removes what the checkpoint's own builder left
    /// that bake removes at the end of every build (its temporary key, cloud-init's copy of
    /// its user data), so later checkpoints and the image carry none of it.
    pub(super) async fn tidy_checkpoint(
        &self,
        comm: &mut Communicator,
        r: &Resume,
    ) -> Result<(), BuildError> {
        let Some(old) = &r.builder else {
            return Ok(());
        };
        let user = if self.recipe.ssh.username.is_empty() {
            crate::remote::ssm::DEFAULT_USER
        } else {
            self.recipe.ssh.username.as_str()
        };
        let script = super::deadman::tidy_script(user, r.key.as_deref(), old);
        super::provision::run_internal(comm, "tidy checkpoint", &script).await
    }

    /// The "checkpoint <step>" stage: the running builder becomes a checkpoint image whose
    /// snapshot completes while the next steps run.
    pub(super) async fn checkpoint(
        &self,
        comm: &mut Communicator,
        builder: &Launched,
        inputs: &Inputs,
        p: &Prefix,
    ) -> Result<Pending, BuildError> {
        let Bake {
            clients,
            recipe,
            ui,
            cleanup,
            build_id,
            ..
        } = *self;
        let ec2 = &clients.ec2;
        let name = image_name(&recipe.name, &p.name, p, build_id);
        let st = ui.stage(
            &format!("checkpoint {}", p.name),
            &format!("imaging {} without stopping it", builder.instance_id),
        );
        if let Err(e) = super::provision::run_internal(comm, "freeze", &freeze_script()).await {
            st.fail(&e.to_string());
            return Err(e);
        }
        let key = match recipe.communicator {
            CommunicatorKind::Ssh => builder
                .client_key
                .public_key()
                .to_openssh()
                .ok()
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_string)),
            CommunicatorKind::Ssm => None,
        };
        let tags = tags(recipe, p, &inputs.source, build_id, builder, key.as_deref());
        let mut snap_tags = tags.clone();
        snap_tags.extend(recipe.image.snapshot_tags.clone());
        let undo = cleanup.push(Undo::image(&name, build_id));
        let req = ec2
            .create_image()
            .instance_id(&builder.instance_id)
            .name(&name)
            .description(format!(
                "bake checkpoint of {} after step {}",
                recipe.name, p.name
            ))
            .no_reboot(true)
            .tag_specifications(tag_spec(ResourceType::Image, &tags))
            .tag_specifications(tag_spec(ResourceType::Snapshot, &snap_tags));
        let ami = match super::image::create_image(ec2, cleanup, undo, build_id, &name, req).await {
            Ok(ami) => ami,
            Err(e) => {
                st.fail(&e.to_string());
                return Err(e);
            }
        };
        st.finish(&format!(
            "{ami} pending (prefix {}); the next steps go on",
            p.short()
        ));
        Ok(Pending {
            checkpoint: Checkpoint {
                step: p.name.clone(),
                ami_id: ami,
                fingerprint: p.hash.clone(),
            },
            token: undo,
            snap_tags,
        })
    }

    /// The "checkpoints" stage: waits for this build's checkpoint images, tags their snapshots
    /// and marks each complete, from when on it is kept whatever becomes of the build.
    pub(super) async fn finish_checkpoints(
        &self,
        pending: Vec<Pending>,
    ) -> Result<Vec<Checkpoint>, BuildError> {
        if pending.is_empty() {
            return Ok(Vec::new());
        }
        let Bake {
            clients,
            ui,
            cleanup,
            ..
        } = *self;
        let ec2 = &clients.ec2;
        let st = ui.stage(
            "checkpoints",
            &format!("waiting for {} checkpoint image(s)", pending.len()),
        );
        let mut done = Vec::new();
        for p in pending {
            let ami = &p.checkpoint.ami_id;
            let img = match ec2::wait_image_available(ec2, ami, Duration::from_secs(3600)).await {
                Ok(img) => img,
                Err(e) => {
                    st.fail(&e.to_string());
                    return Err(e.into());
                }
            };
            let snapshots = ec2::image_snapshots(&img);
            super::image::tag_snapshots_finished(ec2, &snapshots, p.snap_tags).await?;
            mark_complete(ec2, ami, &snapshots).await?;
            cleanup.keep(p.token);
            done.push(p.checkpoint);
        }
        st.finish(&format!(
            "{} available",
            done.iter()
                .map(|m| format!("{} ({})", m.ami_id, m.step))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_ec2::types::Tag;

    fn img(id: &str, created: &str, prefix: &str, state: &str) -> Image {
        Image::builder()
            .image_id(id)
            .creation_date(created)
            .state(ImageState::Available)
            .tags(Tag::builder().key(PREFIX_TAG).value(prefix).build())
            .tags(Tag::builder().key(STATE_TAG).value(state).build())
            .build()
    }

    fn prefix(step: usize, hash: &str) -> Prefix {
        Prefix {
            step,
            name: format!("s{step}"),
            hash: hash.into(),
        }
    }

    #[test]
    fn the_latest_checkpoint_with_a_complete_image_wins_newest_first() {
        let ps = [prefix(0, "aaa"), prefix(2, "ccc")];
        let imgs = [
            img("ami-a1", "2026-12-01T00:00:00Z", "aaa", "complete"),
            img("ami-a2", "2026-12-02T00:00:00Z", "aaa", "complete"),
            img("ami-c1", "2026-12-03T00:00:00Z", "ccc", "pending"),
            img("ami-x", "2026-12-04T00:00:00Z", "zzz", "complete"),
        ];
        let (p, i) = choose(&imgs, &ps).unwrap();
        assert_eq!((p.step, i.image_id()), (0, Some("ami-a2")));
        let imgs2 = [
            imgs[0].clone(),
            img("ami-c2", "2026-11-01T00:00:00Z", "ccc", "complete"),
        ];
        let (p, i) = choose(&imgs2, &ps).unwrap();
        assert_eq!((p.step, i.image_id()), (2, Some("ami-c2")));
        assert!(choose(&imgs[2..], &ps).is_none(), "pending or foreign only");
    }

    #[test]
    fn names_fit_ec2() {
        let p = prefix(0, &"f".repeat(64));
        let n = image_name("web", "apt upgrade & co", &p, "b-0123456789");
        assert_eq!(
            n,
            "web-checkpoint-apt-upgrade---co-ffffffffffff-b-0123456789"
        );
        let long = image_name(&"r".repeat(100), &"s".repeat(100), &p, "b-0123456789");
        assert_eq!(long.len(), 128);
        assert!(long.ends_with("-ffffffffffff-b-0123456789"));
    }

    #[test]
    fn the_freeze_script_is_valid_sh_and_thaws_on_its_own() {
        let st = std::process::Command::new("sh")
            .arg("-n")
            .arg("-c")
            .arg(freeze_script())
            .status()
            .unwrap();
        assert!(st.success());
        let s = freeze_script();
        // The thaw is started before the freeze.
        assert!(s.find("--unfreeze").unwrap() < s.find("--freeze /").unwrap());
    }

    #[test]
    fn under_sh_the_freeze_is_followed_by_a_thaw_after_the_script_returned() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        // A fake fsfreeze that logs its calls; /run and the hold moved and shortened.
        let fake = dir.path().join("fsfreeze");
        std::fs::write(&fake, format!("#!/bin/sh\necho \"$1\" >> {d}/log\n")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let script = freeze_script()
            .replace("/run/", &format!("{d}/"))
            .replace(&format!("sleep {FREEZE_SECONDS};"), "sleep 0.3;");
        let path = format!("{d}:{}", std::env::var("PATH").unwrap_or_default());
        let out = std::process::Command::new("sh")
            .arg("-ec")
            .arg(&script)
            .env("PATH", &path)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("frozen"));
        let log = || std::fs::read_to_string(dir.path().join("log")).unwrap_or_default();
        assert_eq!(log(), "--freeze\n", "not thawed before the snapshot call");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while log() != "--freeze\n--unfreeze\n" && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(log(), "--freeze\n--unfreeze\n");
    }
}
