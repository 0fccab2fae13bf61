//! `[ssm]`: the Systems Manager communicator's staging bucket, prefix, output bucket and
//! registration timeout.

use std::time::Duration;

use super::super::checks;
use super::super::model::{CommunicatorKind, Ssm};
use super::walker::{Cx, Span, Tbl};

pub(super) const SSM_KEYS: &[&str] = &["bucket", "prefix", "output_bucket", "timeout"];

pub(super) fn ssm(
    cx: &mut Cx<'_>,
    root: &Tbl<'_, '_>,
    comm: Option<CommunicatorKind>,
    comm_span: Option<Span>,
) -> Option<Option<Ssm>> {
    let needed = comm == Some(CommunicatorKind::Ssm);
    let Some(t) = cx.table(root, "ssm", "[ssm]".to_string()) else {
        if needed && cx.get(root, "ssm").is_none() {
            cx.err(
                comm_span.filter(|s| !s.is_empty()),
                "communicator \"ssm\" needs an [ssm] section",
                "add [ssm] with bucket = \"my-bake-staging\" (an S3 bucket uploads are staged in)",
            );
            return None;
        }
        return if needed { None } else { Some(None) };
    };
    cx.keys(&t, SSM_KEYS);
    let n0 = cx.errors.len();
    let bucket = if needed {
        cx.req_string(&t, "bucket", "\"my-bake-staging\"")
    } else {
        cx.string(&t, "bucket")
    };
    if let Some(b) = &bucket
        && let Err(p) = checks::check_bucket(&b.v)
    {
        cx.problem(&b.span, &b.v, p);
    }
    let prefix = cx.string(&t, "prefix");
    if let Some(p) = &prefix
        && p.v.starts_with('/')
    {
        cx.err(
            Some(p.span.clone()),
            "`prefix` must not start with /",
            format!("write prefix = \"{}\"", p.v.trim_start_matches('/')),
        );
    }
    let output_bucket = cx.string(&t, "output_bucket");
    if let Some(b) = &output_bucket
        && let Err(p) = checks::check_bucket(&b.v)
    {
        cx.problem(&b.span, &b.v, p);
    }
    let timeout = cx
        .duration(&t, "timeout")
        .map(|d| d.v)
        .unwrap_or(Duration::from_secs(600));
    if cx.errors.len() > n0 {
        return None;
    }
    if !needed && bucket.is_none() {
        return Some(None);
    }
    Some(Some(Ssm {
        bucket: bucket?.v,
        prefix: prefix.map(|p| p.v).unwrap_or_else(|| "bake/".to_string()),
        output_bucket: output_bucket.map(|b| b.v),
        timeout,
    }))
}
