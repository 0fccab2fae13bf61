//! Turning the provisioned builder into the image: stop, CreateImage with the image and its
//! snapshots tagged in the same call, wait until available, and tag again where the service
//! did not (older regions and emulators).

use std::collections::BTreeMap;
use std::time::Duration;

use aws_sdk_ec2::types::{Image, ImageState, InstanceStateName, ResourceType};

use super::cleanup::{Token, Undo};
use super::launch::Launched;
use super::source::SourceImage;
use super::{Bake, BuildError, FoundImage, Inputs};
use crate::aws::AwsError;
use crate::aws::Ctx;
use crate::aws::ec2::{self, filter, tag_list, tag_spec};
use crate::plan::{self, Fingerprint};
use crate::recipe::model::Recipe;

/// `pending` from CreateImage until the image is available and tagged, then `complete`. Images
/// from bakes before this tag have none and count as complete once available.
pub const STATE_TAG: &str = "bake:state";

/// Tags that record how an image was made; `bake plan` and `bake images` read them back.
pub fn image_tags(
    recipe: &Recipe,
    fp: &Fingerprint,
    source: &SourceImage,
    build_id: &str,
) -> BTreeMap<String, String> {
    let mut t = recipe.image.tags.clone();
    t.insert("bake:recipe".into(), recipe.name.clone());
    t.insert("bake:fingerprint".into(), fp.hash.clone());
    t.insert("bake:source-ami".into(), source.id.clone());
    t.insert("bake:build-id".into(), build_id.to_string());
    // "Newest" must not depend on CreationDate's one-second resolution (see `super::newest`).
    t.insert(super::newest::BUILT_AT_TAG.into(), super::newest::stamp());
    // Until the build marks it complete, a half-made image that `bake gc` may remove.
    t.insert(STATE_TAG.into(), "pending".into());
    if !recipe.tests.is_empty() {
        // Not published until the tests pass on a fresh instance (see `super::verify_image`).
        t.insert(super::verify_image::TESTED_TAG.into(), "pending".into());
    }
    let (k, v) = super::lease::initial_tag();
    t.insert(k, v);
    for (i, v) in plan::encode_inputs(fp).into_iter().enumerate() {
        let key = if i == 0 {
            "bake:inputs".to_string()
        } else {
            format!("bake:inputs.{i}")
        };
        t.insert(key, format!("v{}:{v}", plan::VERSION));
    }
    t
}

/// Fills the image name template.
pub fn image_name(template: &str, recipe: &str, fp: &Fingerprint) -> String {
    let now = jiff::Timestamp::now();
    template
        .replace("{recipe}", recipe)
        .replace("{hash}", &fp.hash)
        .replace("{short_hash}", fp.short())
        .replace("{timestamp}", &now.strftime("%Y%m%dT%H%M%SZ").to_string())
        .replace("{date}", &now.strftime("%Y-%m-%d").to_string())
}

impl Bake<'_> {
    /// The "stop" and "image" stages: the provisioned builder becomes the image `name`,
    /// tagged with how it was made, and marked complete unless tests must pass first. Its undo is still registered (the
    /// token): the caller keeps the image once it passed its tests.
    pub(super) async fn make_image(
        &self,
        builder: &Launched,
        inputs: &Inputs,
        name: &str,
        from: Option<&super::checkpoint::Resume>,
        checkpoints: &[String],
    ) -> Result<(FoundImage, Token), BuildError> {
        let Bake {
            clients,
            recipe,
            ui,
            cleanup,
            build_id,
            ..
        } = *self;
        let Inputs { fp, source, .. } = inputs;
        let ec2 = &clients.ec2;
        let id = &builder.instance_id;
        let st = ui.stage("stop", &format!("stopping {id}"));
        ec2::settle(
            "StopInstances",
            id,
            Duration::from_secs(300),
            |e| e.is_not_found() || e.code_is(&["IncorrectInstanceState"]),
            || async {
                ec2.stop_instances()
                    .instance_ids(id)
                    .send()
                    .await
                    .ctx("StopInstances", Some(id))
            },
        )
        .await?;
        ec2::wait_instance_state(
            ec2,
            id,
            InstanceStateName::Stopped,
            Duration::from_secs(900),
        )
        .await?;
        st.finish(&format!("{id} stopped"));

        let mut tags = image_tags(recipe, fp, source, build_id);
        if let Some(r) = from {
            // The fingerprint is a full build's; this says which checkpoint it came from.
            tags.insert(super::checkpoint::FROM_TAG.into(), r.ami_id.clone());
        }
        let mut snap_tags = tags.clone();
        snap_tags.extend(recipe.image.snapshot_tags.clone());
        let st = ui.stage("image", &format!("creating {name}"));
        let undo = cleanup.push(Undo::image(name, build_id));
        let req = ec2
            .create_image()
            .instance_id(id)
            .name(name)
            .set_description(recipe.image.description.clone())
            .no_reboot(true)
            .tag_specifications(tag_spec(ResourceType::Image, &tags))
            .tag_specifications(tag_spec(ResourceType::Snapshot, &snap_tags));
        let ami = create_image(ec2, cleanup, undo, build_id, name, req).await?;
        st.update(&format!("{ami} pending"));
        self.release_builder(id, &ami, checkpoints).await?;
        let img = ec2::wait_image_available(ec2, &ami, Duration::from_secs(3600)).await?;
        let snapshots = ec2::image_snapshots(&img);
        tag_snapshots_finished(ec2, &snapshots, snap_tags).await?;
        // An image with tests is finished only once they pass (`verify_image` marks it): a
        // bake killed during its tests leaves a half-made image `bake gc` removes.
        if recipe.tests.is_empty() {
            mark_complete(ec2, &ami, &snapshots).await?;
        }
        st.finish(&format!(
            "{ami} available, snapshots {}",
            snapshots.join(", ")
        ));
        // The undo stays registered: the test stage keeps the image once its tests pass.
        Ok((
            FoundImage {
                ami_id: ami,
                name: name.to_string(),
                snapshots,
            },
            undo,
        ))
    }

    /// Terminates the builder as soon as every image made from it (`ami` and the pending
    /// `checkpoints`) has started its snapshots, which are point-in-time from their start: the
    /// shutdown (tens of seconds on EC2) then overlaps the snapshots' copy instead of following
    /// it. The builder's undo stays registered and waits for `terminated` at cleanup. A
    /// TerminateInstances that fails here is only reported: cleanup terminates it anyway.
    async fn release_builder(
        &self,
        id: &str,
        ami: &str,
        checkpoints: &[String],
    ) -> Result<(), BuildError> {
        let ec2 = &self.clients.ec2;
        for image in std::iter::once(ami).chain(checkpoints.iter().map(String::as_str)) {
            ec2::wait_image(
                ec2,
                image,
                ec2::ImageReady::SnapshotsStarted,
                Duration::from_secs(3600),
            )
            .await?;
        }
        let sent = ec2::terminate(ec2, &[id.to_string()], Some(ec2::VISIBILITY)).await;
        match sent {
            Ok(_) => self.ui.line(&format!(
                "{ami}: snapshots started, terminating builder {id}"
            )),
            Err(e) => self.ui.line(&format!(
                "could not terminate builder {id} yet ({e}); cleanup will"
            )),
        }
        Ok(())
    }
}

/// The image is finished: from now on `bake gc` never touches it and it is a cache hit.
/// The snapshots of an available image get the image's tags, finished: `bake:state=complete`
/// and no lease (even where CreateImage ignored the snapshot TagSpecification; CreateTags is
/// idempotent). The snapshots are new: "not found" is "not yet".
pub(super) async fn tag_snapshots_finished(
    ec2: &aws_sdk_ec2::Client,
    snapshots: &[String],
    mut tags: BTreeMap<String, String>,
) -> Result<(), AwsError> {
    if snapshots.is_empty() {
        return Ok(());
    }
    tags.insert(STATE_TAG.into(), "complete".into());
    tags.remove(super::lease::LEASE_TAG);
    let what = snapshots.join(",");
    ec2::settle(
        "CreateTags",
        &what,
        ec2::VISIBILITY,
        ec2::not_yet_visible,
        || async {
            ec2.create_tags()
                .set_resources(Some(snapshots.to_vec()))
                .set_tags(Some(tag_list(&tags)))
                .send()
                .await
                .ctx("CreateTags", Some(&what))
        },
    )
    .await?;
    Ok(())
}

/// Sends `req` (a CreateImage of this build named `name`, whose undo is `undo`) and returns
/// the new image's id, with the undo resolved to it. CreateImage takes no client token: a
/// retry after a lost answer is refused as a duplicate name, and the image of that name
/// carrying this build's tag is the one the first attempt made; any other image of that name
/// is somebody else's (the undo is dropped, never run against it).
pub(super) async fn create_image(
    ec2: &aws_sdk_ec2::Client,
    cleanup: &super::Cleanup,
    undo: Token,
    build_id: &str,
    name: &str,
    req: aws_sdk_ec2::operation::create_image::builders::CreateImageFluentBuilder,
) -> Result<String, BuildError> {
    let res = ec2::settle(
        "CreateImage",
        name,
        // Bounded: "not in state" also answers an instance that terminated and never will be.
        Duration::from_secs(120),
        create_image_transient,
        || {
            let req = req.clone();
            async move { req.send().await.ctx("CreateImage", Some(name)) }
        },
    )
    .await;
    let ami = match res {
        Ok(out) => out.image_id().unwrap_or_default().to_string(),
        Err(e) if e.code_is(&["InvalidAMIName.Duplicate"]) => {
            match adopt_image(ec2, name, build_id).await? {
                Ok(ami) => ami,
                Err(other) => {
                    cleanup.refused(undo);
                    return Err(name_taken(name, &other));
                }
            }
        }
        Err(e) => {
            if e.is_refusal() {
                cleanup.refused(undo);
            }
            return Err(e.into());
        }
    };
    if ami.is_empty() {
        return Err(AwsError::new(
            "CreateImage",
            Some(name.into()),
            "no image id in the answer",
        )
        .into());
    }
    cleanup.resolve(undo, &ami);
    Ok(ami)
}

pub(super) async fn mark_complete(
    ec2: &aws_sdk_ec2::Client,
    ami: &str,
    snapshots: &[String],
) -> Result<(), AwsError> {
    let mut all = vec![ami.to_string()];
    all.extend(snapshots.iter().cloned());
    ec2.create_tags()
        .resources(ami)
        .tags(
            aws_sdk_ec2::types::Tag::builder()
                .key(STATE_TAG)
                .value("complete")
                .build(),
        )
        .send()
        .await
        .ctx("CreateTags", Some(ami))?;
    // The lease only guarded the image while it was made; a stale one would only confuse.
    let _ = ec2
        .delete_tags()
        .set_resources(Some(all))
        .tags(
            aws_sdk_ec2::types::Tag::builder()
                .key(super::lease::LEASE_TAG)
                .build(),
        )
        .send()
        .await;
    Ok(())
}

/// Whether an image's tags say a build finished it (no state tag: made before the tag existed).
pub fn is_complete(tags: &BTreeMap<String, String>) -> bool {
    tags.get(STATE_TAG).is_none_or(|s| s == "complete")
}

/// CreateImage refusals that pass: the instance is new ("not found" is "not yet") or still
/// settling into `stopped` ("not in state", `IncorrectInstanceState`).
pub(super) fn create_image_transient(e: &AwsError) -> bool {
    e.code_is(&["InvalidInstanceID.NotFound", "IncorrectInstanceState"])
        || (e.code_is(&["InvalidParameterValue"]) && e.message.contains("not in state"))
}

/// After `InvalidAMIName.Duplicate`: the image of that name, if it is this build's (an earlier
/// attempt made it and its answer was lost), as `Ok(id)`; somebody else's as `Err(image)`.
pub(super) async fn adopt_image(
    ec2: &aws_sdk_ec2::Client,
    name: &str,
    build_id: &str,
) -> Result<Result<String, Image>, AwsError> {
    ec2::settle(
        "adopt image",
        name,
        ec2::VISIBILITY,
        ec2::not_yet_visible,
        || async {
            let imgs = ec2::own_images(ec2, vec![filter("name", [name])]).await?;
            if let Some(ours) = imgs
                .iter()
                .find(|i| ec2::tagged_with_build(i.tags(), build_id))
            {
                return Ok(Ok(ours.image_id().unwrap_or_default().to_string()));
            }
            match imgs.into_iter().next() {
                Some(other) => Ok(Err(other)),
                // The name is taken (EC2 said so) but the image is not visible yet.
                None => Err(AwsError {
                    code: Some("InvalidAMIID.NotFound".into()),
                    ..AwsError::new("DescribeImages", Some(name.into()), "not visible yet")
                }),
            }
        },
    )
    .await
}

/// Refuses to build when this account already has an image named `name`: EC2 would refuse the
/// CreateImage at the very end, and bake never removes an image it did not make (not even with
/// `--force`). Runs before anything is created.
pub async fn check_name_free(ec2: &aws_sdk_ec2::Client, name: &str) -> Result<(), BuildError> {
    let imgs = ec2::own_images(ec2, vec![filter("name", [name])]).await?;
    match imgs.into_iter().next() {
        Some(other) => Err(name_taken(name, &other)),
        None => Ok(()),
    }
}

fn name_taken(name: &str, other: &Image) -> BuildError {
    let t = ec2::tag_map(other.tags());
    let who = match (t.get("bake:recipe"), t.get("bake:build-id")) {
        (Some(r), Some(b)) => format!("made by bake build {b} of recipe {r}"),
        _ => "not made by bake".to_string(),
    };
    BuildError::NameTaken {
        name: name.to_string(),
        image_id: other.image_id().unwrap_or("an image").to_string(),
        who,
        created: other
            .creation_date()
            .unwrap_or("at an unknown time")
            .to_string(),
    }
}

/// The one rule for "the image this fingerprint already has": ours, available, marked
/// complete (an available image never marked complete is what a dead build left; `bake gc`
/// removes it), newest by [`super::newest`] wins. `bake build`, `bake plan` and `bake deploy`
/// all choose with it.
pub fn newest_complete<'a>(
    images: impl IntoIterator<Item = &'a Image>,
    hash: &str,
) -> Option<&'a Image> {
    images
        .into_iter()
        .filter(|i| i.state() == Some(&ImageState::Available))
        .filter(|i| {
            let tags = ec2::tag_map(i.tags());
            tags.get("bake:fingerprint").map(String::as_str) == Some(hash) && is_complete(&tags)
        })
        .max_by_key(|i| super::newest::Newness::of(i))
}

/// The image of ours this fingerprint already has, by [`newest_complete`].
pub async fn find_by_fingerprint(
    ec2: &aws_sdk_ec2::Client,
    hash: &str,
) -> Result<Option<FoundImage>, AwsError> {
    let imgs = ec2::own_images(ec2, vec![filter("tag:bake:fingerprint", [hash])]).await?;
    Ok(newest_complete(&imgs, hash).map(|i| FoundImage {
        ami_id: i.image_id().unwrap_or_default().to_string(),
        name: i.name().unwrap_or_default().to_string(),
        snapshots: ec2::image_snapshots(i),
    }))
}
