//! The S3 calls bake's cleanups share: listing and deleting what a build staged under its
//! own prefix. The callers decide which prefix is theirs to delete; this module only pages.

use aws_sdk_s3::Client;
use futures::StreamExt;

use super::{AwsError, Ctx};

/// Every key under `prefix`, page by page; `None` when the bucket does not exist.
pub async fn keys(
    s3: &Client,
    bucket: &str,
    prefix: &str,
) -> Result<Option<Vec<String>>, AwsError> {
    let what = format!("s3://{bucket}/{prefix}");
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let page = match s3
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .set_continuation_token(token.clone())
            .send()
            .await
            .ctx("ListObjectsV2", Some(&what))
        {
            Ok(p) => p,
            Err(e) if e.code_is(&["NoSuchBucket"]) => return Ok(None),
            Err(e) => return Err(e),
        };
        out.extend(
            page.contents()
                .iter()
                .filter_map(|o| o.key().map(str::to_string)),
        );
        token = page.next_continuation_token().map(str::to_string);
        if token.is_none() {
            return Ok(Some(out));
        }
    }
}

/// Deletes every object under `prefix`, several at a time (cleanup has seconds when CI
/// cancels); how many there were, `None` when the bucket does not exist.
pub async fn delete_prefix(
    s3: &Client,
    bucket: &str,
    prefix: &str,
) -> Result<Option<usize>, AwsError> {
    let Some(list) = keys(s3, bucket, prefix).await? else {
        return Ok(None);
    };
    let mut deletes = futures::stream::iter(list.iter().map(|k| async move {
        s3.delete_object()
            .bucket(bucket)
            .key(k)
            .send()
            .await
            .ctx("DeleteObject", Some(k))
    }))
    .buffer_unordered(16);
    while let Some(r) = deletes.next().await {
        r?;
    }
    Ok(Some(list.len()))
}
