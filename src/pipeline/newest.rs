//! The one rule for "newest" among bake's images: the cache hit, retention's "keep the newest
//! N" and deploy's image all order by it.
//!
//! EC2's `CreationDate` has one-second resolution, so two builds in one second tie and the
//! winner would be whatever order DescribeImages answered in. bake therefore records its own
//! build time (`bake:built-at`, RFC 3339 with nanoseconds) on the image at creation; copies
//! take the source's tags and so carry the same time. Images without the tag (made before it
//! existed, or by hand-tagging) fall back to `CreationDate`; a tie is broken by the image id,
//! so the choice never depends on the order of an answer.

use std::cmp::Ordering;

use aws_sdk_ec2::types::Image;

use crate::aws::ec2::tag_map;

/// When bake made the image (RFC 3339, nanoseconds, UTC).
pub const BUILT_AT_TAG: &str = "bake:built-at";

/// The value of [`BUILT_AT_TAG`] for an image made now.
pub fn stamp() -> String {
    jiff::Timestamp::now().to_string()
}

/// What "newer" compares: the build time, then the image id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Newness {
    at: jiff::Timestamp,
    id: String,
}

impl Newness {
    /// From an image's [`BUILT_AT_TAG`] value, its `CreationDate` and its id.
    pub fn new(built_at: Option<&str>, creation_date: Option<&str>, id: &str) -> Self {
        let parse = |s: &str| s.parse::<jiff::Timestamp>().ok();
        let at = built_at
            .and_then(parse)
            .or_else(|| creation_date.and_then(parse))
            .unwrap_or(jiff::Timestamp::MIN);
        Newness {
            at,
            id: id.to_string(),
        }
    }

    /// When the image was built, as precisely as it is known.
    pub fn at(&self) -> jiff::Timestamp {
        self.at
    }

    pub fn of(img: &Image) -> Self {
        let tags = tag_map(img.tags());
        Newness::new(
            tags.get(BUILT_AT_TAG).map(String::as_str),
            img.creation_date(),
            img.image_id().unwrap_or_default(),
        )
    }
}

/// Newer first: for `sort_by(newest_first)`.
pub fn newest_first(a: &Newness, b: &Newness) -> Ordering {
    b.cmp(a)
}

/// The newest of `images` by [`Newness`].
pub fn newest<'a>(images: impl IntoIterator<Item = &'a Image>) -> Option<&'a Image> {
    images.into_iter().max_by_key(|i| Newness::of(i))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(built: Option<&str>, created: &str, id: &str) -> Newness {
        Newness::new(built, Some(created), id)
    }

    #[test]
    fn the_build_time_orders_images_created_in_the_same_second() {
        let sec = "2026-12-02T10:00:07.000Z";
        // ids in the opposite order, so the id tie-break alone would choose wrong
        let earlier = n(Some("2026-12-02T10:00:07.100000001Z"), sec, "ami-b");
        let later = n(Some("2026-12-02T10:00:07.100000002Z"), sec, "ami-a");
        assert!(later > earlier);
        let mut v = vec![earlier.clone(), later.clone()];
        v.sort_by(newest_first);
        assert_eq!(v, [later, earlier]);
    }

    #[test]
    fn without_the_tag_the_creation_date_counts_and_ties_go_to_the_id() {
        let old = n(None, "2026-12-02T10:00:06.000Z", "ami-z");
        let tagged = n(
            Some("2026-12-02T10:00:06.5Z"),
            "2026-12-02T10:00:06.000Z",
            "ami-a",
        );
        assert!(tagged > old, "a half second later than an untagged image");
        let a = n(None, "2026-12-02T10:00:07.000Z", "ami-a");
        let b = n(None, "2026-12-02T10:00:07.000Z", "ami-b");
        assert!(b > a, "same second, no tag: the id decides");
        // A tag that is not a time is ignored, not a crash.
        let junk = n(Some("yesterday"), "2026-12-02T10:00:08.000Z", "ami-0");
        assert!(junk > b);
    }

    #[test]
    fn a_stamp_parses_back_with_sub_second_precision() {
        let a: jiff::Timestamp = stamp().parse().unwrap();
        let b: jiff::Timestamp = stamp().parse().unwrap();
        assert!(b >= a);
        assert!(stamp().ends_with('Z'));
    }
}
