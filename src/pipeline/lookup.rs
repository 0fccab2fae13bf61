//! Whether a recipe's current fingerprint already has an image: what `bake plan` shows, what a
//! build skips on and what `bake deploy --recipe` rolls out, in the build region and in each
//! region of `[image] regions`. Below images and deploy so both can ask without importing
//! each other.

use std::collections::BTreeMap;

use serde::Serialize;

use super::BuildError;
use crate::aws::Clients;
use crate::aws::ec2::{self, filter, tag_map};
use crate::plan;
use crate::recipe::model::Recipe;

/// One recipe's plan: its fingerprint, whether a build would be skipped, and otherwise what
/// changed since the newest image of the recipe.
#[derive(Debug, Serialize)]
pub struct PlanRow {
    pub recipe: String,
    pub fingerprint: String,
    pub source_ami: String,
    /// The image a build would reuse.
    pub hit: Option<String>,
    /// The newest earlier image of this recipe, compared against on a miss.
    pub newest: Option<String>,
    pub changed: Vec<String>,
    /// The `[[test]]`s' fingerprint (absent: the recipe has none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tests_fingerprint: Option<String>,
    /// The hit was tested with other tests (or never): a build runs the current ones on it.
    pub tests_changed: bool,
    /// On a miss: the checkpoint image a build would start from (null: from the source).
    pub checkpoint: Option<super::checkpoint::Resume>,
    /// Every region's state, the build region first.
    pub regions: Vec<RegionState>,
}

/// What a build would do in one region.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RegionStatus {
    /// The region has an image of the fingerprint: nothing to do.
    Present,
    /// The build region has one; this region gets a copy (no rebuild).
    CopyNeeded,
    /// No region has one to copy from yet (in the build region: a build).
    BuildNeeded,
}

#[derive(Debug, Clone, Serialize)]
pub struct RegionState {
    pub region: String,
    pub state: RegionStatus,
    /// The region's image (`present`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ami_id: Option<String>,
}

/// Each copy region's state given the build region's hit.
async fn copy_regions(
    clients: &Clients,
    recipe: &Recipe,
    hash: &str,
    home_hit: bool,
) -> Result<Vec<RegionState>, BuildError> {
    let names = recipe.image.distribution.region_names();
    let found = futures::future::try_join_all(names.iter().map(|r| async move {
        let there = clients.in_region(r);
        super::image::find_by_fingerprint(&there.ec2, hash).await
    }))
    .await?;
    Ok(names
        .into_iter()
        .zip(found)
        .map(|(region, hit)| RegionState {
            region,
            state: match (&hit, home_hit) {
                (Some(_), _) => RegionStatus::Present,
                (None, true) => RegionStatus::CopyNeeded,
                (None, false) => RegionStatus::BuildNeeded,
            },
            ami_id: hit.map(|h| h.ami_id),
        })
        .collect())
}

/// The recipe's image in the region of `clients`, which may be one of its copy regions: the
/// fingerprint is computed where the image was built (the source image has another id in
/// every region), which a copy names in its `bake:copied-from` tag. Returns the build
/// region's plan and this region's image (`None`: none has the current fingerprint).
pub async fn image_in_region(
    clients: &Clients,
    recipe: &Recipe,
) -> Result<(PlanRow, Option<String>), BuildError> {
    let mine = ec2::own_images(
        &clients.ec2,
        vec![filter("tag:bake:recipe", [recipe.name.as_str()])],
    )
    .await?;
    let home = super::newest::newest(
        mine.iter()
            .filter(|i| tag_map(i.tags()).contains_key(super::distribute::COPIED_FROM_TAG)),
    )
    .and_then(|i| {
        let t = tag_map(i.tags());
        let from = t.get(super::distribute::COPIED_FROM_TAG)?;
        from.split_once(':').map(|(r, _)| r.to_string())
    })
    .filter(|r| *r != clients.region);
    let Some(home) = home else {
        let row = plan_one(clients, recipe).await?;
        let hit = row.hit.clone();
        return Ok((row, hit));
    };
    let row = plan_one(&clients.in_region(&home), recipe).await?;
    let hit = super::image::newest_complete(&mine, &row.fingerprint)
        .and_then(|i| i.image_id().map(str::to_string));
    Ok((row, hit))
}

pub async fn plan_one(clients: &Clients, recipe: &Recipe) -> Result<PlanRow, BuildError> {
    let super::Inputs { fp, source, .. } = super::inputs(clients, recipe).await?;
    let mine = ec2::own_images(
        &clients.ec2,
        vec![filter("tag:bake:recipe", [recipe.name.as_str()])],
    )
    .await?;
    // The image `bake build` would take as its cache hit.
    let hit = super::image::newest_complete(&mine, &fp.hash)
        .and_then(|i| i.image_id().map(str::to_string));
    let checkpoint = match hit {
        Some(_) => None,
        None => super::checkpoint::find(&clients.ec2, recipe, &fp).await?,
    };
    // Checkpoint images record no inputs and are never what a build is compared with.
    let newest = super::newest::newest(
        mine.iter()
            .filter(|i| !tag_map(i.tags()).contains_key(super::checkpoint::CHECKPOINT_TAG)),
    );
    let tests_fingerprint = if recipe.tests.is_empty() {
        None
    } else {
        let scripts = plan::read_test_scripts(recipe)?;
        Some(plan::tests_fingerprint(recipe, &scripts))
    };
    // Tests are not part of the image's fingerprint: a hit tested with other tests is re-tested.
    let tests_changed = match (&tests_fingerprint, &hit) {
        (Some(tfp), Some(id)) => mine
            .iter()
            .find(|i| i.image_id() == Some(id.as_str()))
            .map(|i| tag_map(i.tags()))
            .is_none_or(|t| t.get(super::verify_image::TESTED_TAG) != Some(tfp)),
        _ => false,
    };
    let (newest_id, changed) = match (&hit, newest) {
        (None, Some(img)) => {
            let tags = tag_map(img.tags());
            let recorded = recorded_inputs(&tags);
            let changed = if recorded.is_empty() {
                vec![
                    "the newest image records no inputs (made by another fingerprint version)"
                        .to_string(),
                ]
            } else {
                plan::diff_inputs(&fp, &recorded)
            };
            (img.image_id().map(str::to_string), changed)
        }
        _ => (None, vec![]),
    };
    let mut regions = vec![RegionState {
        region: clients.region.clone(),
        state: if hit.is_some() {
            RegionStatus::Present
        } else {
            RegionStatus::BuildNeeded
        },
        ami_id: hit.clone(),
    }];
    regions.extend(copy_regions(clients, recipe, &fp.hash, hit.is_some()).await?);
    Ok(PlanRow {
        recipe: recipe.name.clone(),
        fingerprint: fp.hash,
        source_ami: source.id,
        hit,
        newest: newest_id,
        changed,
        tests_fingerprint,
        tests_changed,
        regions,
        checkpoint,
    })
}

/// The `bake:inputs*` tag values of the current fingerprint version, in order.
fn recorded_inputs(tags: &BTreeMap<String, String>) -> Vec<String> {
    let prefix = format!("v{}:", plan::VERSION);
    let mut parts: Vec<(usize, String)> = tags
        .iter()
        .filter_map(|(k, v)| {
            let idx = if k == "bake:inputs" {
                0
            } else {
                k.strip_prefix("bake:inputs.")?.parse().ok()?
            };
            Some((idx, v.strip_prefix(&prefix)?.to_string()))
        })
        .collect();
    parts.sort();
    parts.into_iter().map(|(_, v)| v).collect()
}
