//! `[source]`: a fixed AMI id or a `[source.filter]` search (owners, name pattern,
//! architecture, extra DescribeImages filters).

use std::collections::BTreeMap;

use toml::de::DeValue;

use super::super::checks;
use super::super::model::{Source, SourceFilter};
use super::walker::{Cx, Tbl, type_name};

pub(super) const SOURCE_KEYS: &[&str] = &["ami", "filter"];
pub(super) const FILTER_KEYS: &[&str] = &["owners", "name", "architecture", "filters"];
pub(super) const ARCHITECTURES: &[&str] = &["x86_64", "arm64", "i386", "x86_64_mac", "arm64_mac"];

pub(super) fn source(cx: &mut Cx<'_>, root: &Tbl<'_, '_>) -> Option<Source> {
    let Some(t) = cx.table(root, "source", "[source]".to_string()) else {
        if cx.get(root, "source").is_none() {
            cx.err(
                Some(cx.top_span()),
                "the recipe has no [source] section",
                "add [source] with ami = \"ami-…\", or a [source.filter] table (owners, name)",
            );
        }
        return None;
    };
    cx.keys(&t, SOURCE_KEYS);
    let has_ami = cx.get(&t, "ami").is_some();
    let filter_key = cx
        .get(&t, "filter")
        .map(|(k, v)| if v.span().is_empty() { k } else { v.span() });
    match (has_ami, filter_key) {
        (true, Some(fspan)) => {
            cx.err(
                Some(fspan),
                "[source] has both `ami` and `filter`",
                "keep one: ami = \"ami-…\" for a fixed image, or [source.filter] to take the newest match",
            );
            None
        }
        (false, None) => {
            cx.err(
                Some(t.span.clone()),
                "[source] needs `ami` or `filter`",
                "add ami = \"ami-…\", or a [source.filter] table with owners and name",
            );
            None
        }
        (true, None) => {
            let ami = cx.string(&t, "ami")?;
            if let Err(p) = checks::check_resource_id(&ami.v, "ami", "AMI") {
                cx.problem(&ami.span, &ami.v, p);
                return None;
            }
            Some(Source::Ami(ami.v))
        }
        (false, Some(_)) => {
            let f = cx.table(&t, "filter", "[source.filter]".to_string())?;
            cx.keys(&f, FILTER_KEYS);
            let n0 = cx.errors.len();
            let owners = match cx.string_list(&f, "owners") {
                None => {
                    if cx.get(&f, "owners").is_none() {
                        cx.err(
                            Some(f.span.clone()),
                            "[source.filter] is missing `owners`",
                            "say whose images may match, e.g. owners = [\"136693071363\"] (Debian), [\"099720109477\"] (Canonical), [\"amazon\"] or [\"self\"]",
                        );
                    }
                    Vec::new()
                }
                Some(list) => {
                    if list.v.is_empty() {
                        cx.err(
                            Some(list.span.clone()),
                            "`owners` is empty",
                            "list at least one account id or alias, e.g. [\"136693071363\"]",
                        );
                    }
                    for o in &list.v {
                        let ok = (o.v.len() == 12 && o.v.chars().all(|c| c.is_ascii_digit()))
                            || ["self", "amazon", "aws-marketplace", "aws-backup-vault"]
                                .contains(&o.v.as_str());
                        if !ok {
                            cx.err(
                                Some(o.span.clone()),
                                format!("`{}` is not an image owner", o.v),
                                "owners are 12-digit account ids or one of \"self\", \"amazon\", \"aws-marketplace\"",
                            );
                        }
                    }
                    list.v.into_iter().map(|s| s.v).collect()
                }
            };
            let name = cx.string(&f, "name").map(|s| s.v);
            let architecture = match cx.string(&f, "architecture") {
                Some(a) if !ARCHITECTURES.contains(&a.v.as_str()) => {
                    let alias = match a.v.as_str() {
                        "amd64" | "x86-64" | "x64" => Some("x86_64"),
                        "aarch64" | "arm" => Some("arm64"),
                        _ => None,
                    };
                    let help = match alias.or_else(|| checks::suggest(&a.v, ARCHITECTURES)) {
                        Some(s) => format!("did you mean \"{s}\"?"),
                        None => format!("use one of {}", ARCHITECTURES.join(", ")),
                    };
                    cx.err(
                        Some(a.span),
                        format!("unknown architecture `{}`", a.v),
                        help,
                    );
                    None
                }
                other => other.map(|a| a.v),
            };
            let mut filters = BTreeMap::new();
            if let Some((_, v)) = cx.get(&f, "filters") {
                match v.get_ref() {
                    DeValue::Table(ft) => {
                        for (k, item) in ft.iter() {
                            let key = k.get_ref().to_string();
                            let vals = match item.get_ref() {
                                DeValue::Array(a) => {
                                    let mut vals = Vec::new();
                                    for i in a.iter() {
                                        match i.get_ref() {
                                            DeValue::String(s) => {
                                                vals.push(cx.subst(s, &i.span(), true));
                                            }
                                            other => cx.err(
                                                Some(i.span()),
                                                format!(
                                                    "filter values must be strings, not {}",
                                                    type_name(other)
                                                ),
                                                "quote each value: [\"hvm\"]",
                                            ),
                                        }
                                    }
                                    vals
                                }
                                DeValue::String(s) => vec![cx.subst(s, &item.span(), true)],
                                other => {
                                    cx.err(
                                        Some(item.span()),
                                        format!(
                                            "filter `{key}` must be a list of strings, not {}",
                                            type_name(other)
                                        ),
                                        format!("write \"{key}\" = [\"value\"]"),
                                    );
                                    Vec::new()
                                }
                            };
                            filters.insert(key, vals);
                        }
                    }
                    _ => cx.wrong_type(
                        &f,
                        "filters",
                        v,
                        "a table",
                        "write filters = { \"virtualization-type\" = [\"hvm\"] }".to_string(),
                    ),
                }
            }
            if cx.errors.len() > n0 {
                return None;
            }
            Some(Source::Filter(SourceFilter {
                owners,
                name,
                architecture,
                filters,
            }))
        }
    }
}
