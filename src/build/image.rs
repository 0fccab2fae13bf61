//! Turning the provisioned builder into the image: stop, CreateImage with the image and its
//! snapshots tagged in the same call, wait until available, and tag again where the service
//! did not (older regions and emulators).

use std::collections::BTreeMap;
use std::time::Duration;

use aws_sdk_ec2::types::{ImageState, InstanceStateName, ResourceType};

use super::BuildError;
use super::cleanup::{Cleanup, Undo};
use super::launch::Builder;
use super::source::SourceImage;
use crate::aws::ec2::{self, filter, tag_list, tag_spec};
use crate::aws::{AwsError, Clients, Ctx};
use crate::fingerprint::{self, Fingerprint};
use crate::recipe::model::Recipe;
use crate::ui::Ui;

pub struct MadeImage {
    pub ami_id: String,
    pub name: String,
    pub snapshots: Vec<String>,
}

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
    for (i, v) in fingerprint::encode_inputs(fp).into_iter().enumerate() {
        let key = if i == 0 {
            "bake:inputs".to_string()
        } else {
            format!("bake:inputs.{i}")
        };
        t.insert(key, format!("v{}:{v}", fingerprint::VERSION));
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

#[allow(clippy::too_many_arguments)]
pub async fn make_image(
    clients: &Clients,
    recipe: &Recipe,
    builder: &Builder,
    fp: &Fingerprint,
    source: &SourceImage,
    ui: &Ui,
    cleanup: &Cleanup,
    build_id: &str,
) -> Result<MadeImage, BuildError> {
    let ec2 = &clients.ec2;
    let id = &builder.instance_id;
    let st = ui.stage("stop", &format!("stopping {id}"));
    ec2.stop_instances()
        .instance_ids(id)
        .send()
        .await
        .ctx("StopInstances", Some(id))?;
    ec2::wait_instance_state(
        ec2,
        id,
        InstanceStateName::Stopped,
        Duration::from_secs(900),
    )
    .await?;
    st.finish(&format!("{id} stopped"));

    let name = image_name(&recipe.image.name, &recipe.name, fp);
    let tags = image_tags(recipe, fp, source, build_id);
    let mut snap_tags = tags.clone();
    snap_tags.extend(recipe.image.snapshot_tags.clone());
    let st = ui.stage("image", &format!("creating {name}"));
    let token = cleanup.push(Undo::DeregisterImage { name: name.clone() });
    let out = ec2
        .create_image()
        .instance_id(id)
        .name(&name)
        .set_description(recipe.image.description.clone())
        .no_reboot(true)
        .tag_specifications(tag_spec(ResourceType::Image, &tags))
        .tag_specifications(tag_spec(ResourceType::Snapshot, &snap_tags))
        .send()
        .await
        .ctx("CreateImage", Some(&name))?;
    let ami = out.image_id().unwrap_or_default().to_string();
    st.update(&format!("{ami} pending"));
    let img = ec2::wait_image_available(ec2, &ami, Duration::from_secs(3600)).await?;
    let snapshots = ec2::image_snapshots(&img);
    // Make sure every snapshot carries the tags even where CreateImage ignored the snapshot
    // TagSpecification; CreateTags is idempotent.
    if !snapshots.is_empty() {
        ec2.create_tags()
            .set_resources(Some(snapshots.clone()))
            .set_tags(Some(tag_list(&snap_tags)))
            .send()
            .await
            .ctx("CreateTags", Some(&snapshots.join(",")))?;
    }
    cleanup.keep(token);
    st.finish(&format!(
        "{ami} available, snapshots {}",
        snapshots.join(", ")
    ));
    Ok(MadeImage {
        ami_id: ami,
        name,
        snapshots,
    })
}

/// An available image of ours with this fingerprint: (id, name, snapshots). Newest wins.
pub async fn find_by_fingerprint(
    ec2: &aws_sdk_ec2::Client,
    hash: &str,
) -> Result<Option<(String, String, Vec<String>)>, AwsError> {
    let imgs = ec2::own_images(ec2, vec![filter("tag:bake:fingerprint", [hash])]).await?;
    Ok(imgs
        .into_iter()
        .filter(|i| i.state() == Some(&ImageState::Available))
        .max_by(|a, b| a.creation_date().cmp(&b.creation_date()))
        .map(|i| {
            let snaps = ec2::image_snapshots(&i);
            (
                i.image_id().unwrap_or_default().to_string(),
                i.name().unwrap_or_default().to_string(),
                snaps,
            )
        }))
}
