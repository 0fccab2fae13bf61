//! `[image]`: the resulting AMI's name template, description, tags and snapshot tags; its
//! distribution keys are read in `distribution.rs`.

use super::super::checks;
use super::super::model::Image;
use super::sensitive::Exposed;
use super::walker::{Cx, Tbl};

pub(super) const IMAGE_KEYS: &[&str] = &[
    "name",
    "description",
    "tags",
    "snapshot_tags",
    "regions",
    "deprecate_after",
    "deregistration_protection",
    "imds_support",
    "ssm_parameter",
    "share",
    "kms",
];

pub(super) fn image(cx: &mut Cx<'_>, root: &Tbl<'_, '_>, recipe: Option<&str>) -> Option<Image> {
    let Some(t) = cx.table(root, "image", "[image]".to_string()) else {
        if cx.get(root, "image").is_none() {
            cx.err(
                Some(cx.top_span()),
                "the recipe has no [image] section",
                "add [image] with name = \"{recipe}-{timestamp}-{short_hash}\"",
            );
        }
        return None;
    };
    cx.keys(&t, IMAGE_KEYS);
    let n0 = cx.errors.len();
    let name = cx.req_string(&t, "name", "\"{recipe}-{timestamp}-{short_hash}\"");
    if let Some(n) = &name {
        cx.no_sensitive(&n.span, "`name` in [image]", Exposed::ImageText);
        for p in checks::check_image_name(&n.v, recipe.unwrap_or("recipe")) {
            cx.problem(&n.span, &n.v, p);
        }
    }
    let description = cx.string(&t, "description");
    if let Some(d) = &description {
        cx.no_sensitive(&d.span, "`description` in [image]", Exposed::ImageText);
    }
    if let Some(d) = &description
        && d.v.chars().count() > 255
    {
        cx.err(
            Some(d.span.clone()),
            format!(
                "image description is {} characters; EC2 allows 255",
                d.v.chars().count()
            ),
            "shorten the description",
        );
    }
    let tags = cx.tags(&t, "tags");
    let snapshot_tags = cx.tags(&t, "snapshot_tags");
    let distribution = super::distribution::distribution(cx, &t);
    if cx.errors.len() > n0 {
        return None;
    }
    Some(Image {
        name: name?.v,
        description: description.map(|d| d.v),
        tags,
        snapshot_tags,
        distribution,
    })
}
