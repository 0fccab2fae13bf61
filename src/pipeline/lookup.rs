//! Whether a recipe's current fingerprint already has an image: what `bake plan` shows, what a
//! build skips on and what `bake deploy --recipe` rolls out. Below images and deploy so both
//! can ask without importing each other.

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
    let newest = mine
        .iter()
        .filter(|i| !tag_map(i.tags()).contains_key(super::checkpoint::CHECKPOINT_TAG))
        .max_by(|a, b| a.creation_date().cmp(&b.creation_date()));
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
    Ok(PlanRow {
        recipe: recipe.name.clone(),
        fingerprint: fp.hash,
        source_ami: source.id,
        hit,
        newest: newest_id,
        changed,
        tests_fingerprint,
        tests_changed,
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
