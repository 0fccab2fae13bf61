//! The distribution keys of `[image]` (`regions`, `deprecate_after`,
//! `deregistration_protection`, `imds_support`, `ssm_parameter`) and its `[image.share]` and
//! `[image.kms]` tables, with the pure checks on region names, account ids and ARNs.

use std::collections::BTreeMap;

use super::super::diag::line_col;
use super::super::model::{Distribution, Share};
use super::walker::{Cx, Sp, Tbl};

pub(super) const SHARE_KEYS: &[&str] = &[
    "accounts",
    "organizations",
    "organizational_units",
    "public",
    "snapshots",
    "public_snapshots",
];
pub(super) const IMDS_SUPPORT: &[&str] = &["v2.0"];

/// The commercial AWS regions (partition `aws`). A name outside it is a typo far more often
/// than a region newer than bake.
pub const REGIONS: &[&str] = &[
    "af-south-1",
    "ap-east-1",
    "ap-east-2",
    "ap-northeast-1",
    "ap-northeast-2",
    "ap-northeast-3",
    "ap-south-1",
    "ap-south-2",
    "ap-southeast-1",
    "ap-southeast-2",
    "ap-southeast-3",
    "ap-southeast-4",
    "ap-southeast-5",
    "ap-southeast-7",
    "ca-central-1",
    "ca-west-1",
    "eu-central-1",
    "eu-central-2",
    "eu-north-1",
    "eu-south-1",
    "eu-south-2",
    "eu-west-1",
    "eu-west-2",
    "eu-west-3",
    "il-central-1",
    "me-central-1",
    "me-south-1",
    "mx-central-1",
    "sa-east-1",
    "us-east-1",
    "us-east-2",
    "us-west-1",
    "us-west-2",
];

/// A 12-digit AWS account id.
pub fn is_account_id(s: &str) -> bool {
    s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit())
}

/// `arn:aws:organizations::<account>:organization/o-<10–32 lowercase alnum>`.
pub fn is_organization_arn(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("arn:aws:organizations::") else {
        return false;
    };
    let Some((acct, res)) = rest.split_once(':') else {
        return false;
    };
    is_account_id(acct)
        && res
            .strip_prefix("organization/o-")
            .is_some_and(|id| org_id_part(id, 10, 32))
}

/// `arn:aws:organizations::<account>:ou/o-<id>/ou-<4–32>-<8–32>`.
pub fn is_ou_arn(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("arn:aws:organizations::") else {
        return false;
    };
    let Some((acct, res)) = rest.split_once(':') else {
        return false;
    };
    let Some(res) = res.strip_prefix("ou/o-") else {
        return false;
    };
    let Some((org, ou)) = res.split_once("/ou-") else {
        return false;
    };
    let Some((a, b)) = ou.split_once('-') else {
        return false;
    };
    is_account_id(acct)
        && org_id_part(org, 10, 32)
        && org_id_part(a, 4, 32)
        && org_id_part(b, 8, 32)
}

fn org_id_part(s: &str, min: usize, max: usize) -> bool {
    (min..=max).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// Reads the distribution keys of `[image]` (table `t`).
pub(super) fn distribution(cx: &mut Cx<'_>, t: &Tbl<'_, '_>) -> Distribution {
    let mut regions: Vec<(String, String)> = Vec::new();
    let mut seen: BTreeMap<String, Sp<String>> = BTreeMap::new();
    for r in cx
        .string_list(t, "regions")
        .map(|l| l.v)
        .unwrap_or_default()
    {
        if !REGIONS.contains(&r.v.as_str()) {
            let help = match super::super::checks::suggest(&r.v, REGIONS) {
                Some(s) => format!("did you mean \"{s}\"?"),
                None => "use an AWS region name such as \"us-west-2\" or \"eu-west-1\"".into(),
            };
            cx.err(
                Some(r.span.clone()),
                format!("unknown region \"{}\" in `regions`", r.v),
                help,
            );
            continue;
        }
        if let Some(first) = seen.get(&r.v) {
            let (l, c) = line_col(cx.src, first.span.start);
            cx.err(
                Some(r.span.clone()),
                format!("region \"{}\" is listed twice in `regions`", r.v),
                format!("remove this one (it is already listed at line {l}, column {c})"),
            );
            continue;
        }
        let (l, c) = line_col(cx.src, r.span.start);
        regions.push((r.v.clone(), format!("{l}:{c}")));
        seen.insert(r.v.clone(), r);
    }
    let deprecate_after = cx.duration(t, "deprecate_after").map(|d| d.v);
    let deregistration_protection = cx.boolean(t, "deregistration_protection").unwrap_or(false);
    let imds_support = cx.string(t, "imds_support");
    if let Some(i) = &imds_support
        && !IMDS_SUPPORT.contains(&i.v.as_str())
    {
        cx.err(
            Some(i.span.clone()),
            format!("`imds_support` is \"{}\"; EC2 knows only \"v2.0\"", i.v),
            "write imds_support = \"v2.0\", or remove it",
        );
    }
    let ssm_parameter = cx.string(t, "ssm_parameter");
    if let Some(p) = &ssm_parameter
        && (!p.v.starts_with('/') || p.v.contains(char::is_whitespace) || p.v.starts_with("/aws"))
    {
        cx.err(
            Some(p.span.clone()),
            format!("`ssm_parameter` \"{}\" is not a parameter name bake may set", p.v),
            "write a path such as \"/bake/{recipe}/latest\" (starting with /, no spaces, not under /aws)",
        );
    }
    let share = share(cx, t);
    let mut kms = BTreeMap::new();
    if let Some(m) = cx.string_map(t, "kms") {
        for (region, key) in m.v {
            if !seen.contains_key(&region.v) {
                cx.err(
                    Some(region.span.clone()),
                    format!(
                        "[image.kms] names region \"{}\", which is not in `regions`",
                        region.v
                    ),
                    "add the region to [image] regions, or remove its key",
                );
                continue;
            }
            if let Err(p) = super::super::checks::check_kms_key(&key.v) {
                cx.problem(&key.span, &key.v, p);
                continue;
            }
            kms.insert(region.v, key.v);
        }
    }
    Distribution {
        regions,
        deprecate_after,
        deregistration_protection,
        imds_support: imds_support.map(|i| i.v),
        ssm_parameter: ssm_parameter.map(|p| p.v),
        share,
        kms,
    }
}

fn share(cx: &mut Cx<'_>, image: &Tbl<'_, '_>) -> Share {
    let Some(t) = cx.table(image, "share", "[image.share]".to_string()) else {
        return Share::default();
    };
    cx.keys(&t, SHARE_KEYS);
    let list = |cx: &mut Cx<'_>, key: &str, ok: fn(&str) -> bool, what: &str, ex: &str| {
        let mut out = Vec::new();
        for s in cx.string_list(&t, key).map(|l| l.v).unwrap_or_default() {
            if ok(&s.v) {
                out.push(s.v);
            } else {
                cx.err(
                    Some(s.span.clone()),
                    format!("\"{}\" in `{key}` is not {what}", s.v),
                    format!("write it as {ex}"),
                );
            }
        }
        out
    };
    let accounts = list(
        cx,
        "accounts",
        is_account_id,
        "a 12-digit account id",
        "\"111122223333\"",
    );
    let organizations = list(
        cx,
        "organizations",
        is_organization_arn,
        "an organization ARN",
        "\"arn:aws:organizations::111122223333:organization/o-abc123defg\"",
    );
    let organizational_units = list(
        cx,
        "organizational_units",
        is_ou_arn,
        "an organizational unit ARN",
        "\"arn:aws:organizations::111122223333:ou/o-abc123defg/ou-ab12-cdef3456\"",
    );
    let public = cx.boolean(&t, "public").unwrap_or(false);
    let snapshots = cx.boolean(&t, "snapshots").unwrap_or(false);
    let public_snapshots = cx.boolean(&t, "public_snapshots").unwrap_or(false);
    // Public snapshots expose the disk itself (deleted files, keys left on it), not just a
    // launchable image: only when the recipe says so in a key of its own.
    if public && snapshots && !public_snapshots {
        let span = cx.get(&t, "snapshots").map(|(k, _)| k);
        cx.err(
            span,
            "`public = true` with `snapshots = true` would make the image's snapshots public",
            "remove snapshots = true (a public image launches without it), or add public_snapshots = true if anyone may copy the disks",
        );
    }
    if public_snapshots && !(public && snapshots) {
        let span = cx.get(&t, "public_snapshots").map(|(k, _)| k);
        cx.err(
            span,
            "`public_snapshots = true` confirms public snapshots, but the image is not shared publicly with its snapshots",
            "write public = true and snapshots = true with it, or remove public_snapshots",
        );
    }
    Share {
        accounts,
        organizations,
        organizational_units,
        public,
        snapshots,
        public_snapshots,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_ids_and_arns() {
        assert!(is_account_id("111122223333"));
        assert!(!is_account_id("11112222333"));
        assert!(!is_account_id("11112222333x"));
        assert!(is_organization_arn(
            "arn:aws:organizations::111122223333:organization/o-abc123defg"
        ));
        assert!(!is_organization_arn(
            "arn:aws:organizations::111122223333:organization/abc"
        ));
        assert!(is_ou_arn(
            "arn:aws:organizations::111122223333:ou/o-abc123defg/ou-ab12-cdef3456"
        ));
        assert!(!is_ou_arn(
            "arn:aws:organizations::111122223333:ou/o-abc123defg"
        ));
    }
}
