//! Uploads over SSM: stage in S3, fetch on the builder through presigned URLs, verify.
//!
//! Small files (below 16 MiB), directories and symlinks of all uploads travel as one tar
//! object (one object and one URL whatever the file count); large files are staged as objects
//! of their own, streamed from disk. Every object is put with its `ChecksumSHA256`, so S3
//! refuses bytes that changed on the way in, except a file above `plan::digest::SEGMENT`,
//! whose digest is segmented (S3 checks only plain sha256): that one is checked on the
//! builder alone, by the same verify-and-move as over SSH. Then one `AWS-RunShellScript` command, as root,
//! fetches each URL (curl, else wget, else python3), checks the object's sha256, unpacks or
//! moves it into place with the recipe's mode and owner, and finally checks every uploaded
//! file's sha256 where it landed (`sha256sum -c`). The objects are removed by the build's undo
//! stack (`Undo::DeleteStagedObjects`), success or not.

use std::path::Path;
use std::time::Duration;

use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use sha2::{Digest, Sha256};

use super::{Done, SsmCommunicator};
use crate::plan::{EntryKind, UploadPlan, digest};
use crate::remote::CommError;
use crate::remote::transfer::fetch::FETCH;
use crate::remote::transfer::items::{
    Item, SourceFile, file_bytes, file_hashes, items, owners_and_roots, tar_extract, tar_header,
    tar_mtime, upload_err,
};
use crate::remote::transfer::script::shell_quote;
use crate::remote::transfer::tar;
use crate::remote::transfer::verify::{finish_outcome, hasher, verify_and_move};
use crate::retry::{self, Backoff, Poll, PollError};

/// Files at least this large are staged as objects of their own (streamed from disk); smaller
/// ones go into the tar object, built in memory.
const OWN_OBJECT: u64 = 16 * 1024 * 1024;

/// The tar object for `items` (no root directories) and its sha256.
fn build_tar(items: &[Item]) -> Result<(Vec<u8>, [u8; 32]), CommError> {
    let mtime = tar_mtime();
    let mut buf = Vec::new();
    for item in items {
        tar_header(&mut buf, item, mtime);
        if item.kind == EntryKind::File {
            let mut src = SourceFile::open(item)?;
            while src.left() > 0 {
                src.append(&mut buf, u64::MAX)?;
            }
            buf.extend(std::iter::repeat_n(0u8, tar::padding(item.size)));
        }
    }
    tar::finish(&mut buf);
    let hash: [u8; 32] = Sha256::digest(&buf).into();
    Ok((buf, hash))
}

pub async fn upload(c: &SsmCommunicator, plans: &[UploadPlan]) -> Result<(), CommError> {
    let all = items(plans);
    if all.is_empty() {
        return Ok(());
    }
    let total = file_bytes(&all);
    c.sink.upload_progress(0, total);
    let (large, small): (Vec<Item>, Vec<Item>) = all
        .into_iter()
        .partition(|i| i.kind == EntryKind::File && i.size >= OWN_OBJECT);
    let bucket = c.settings.bucket.clone();
    let stage = format!("{}upload/", c.prefix);
    // Presigned URLs must outlive the download of everything before them.
    let expiry = Duration::from_secs(900 + total / (10 << 20));
    let mut done = 0u64;

    let mut script = String::from("set -e\numask 022\n");
    script.push_str(FETCH);
    // Unknown owners fail up front (tar would quietly fall back to root).
    script.push_str(&owners_and_roots(small.iter().chain(&large), &small));
    script.push_str(
        "T=$(mktemp -d /tmp/bake-upload.XXXXXXXX)\n\
         trap 'rc=$?; rm -rf \"$T\"; [ -z \"${t:-}\" ] || rm -f -- \"$t\".h*; \
         [ $rc != 3 ] || echo \"bake-file:$d\" >&2' EXIT\n",
    );

    // Plain sha256s, checked with `sha256sum -c` at the end; a segmented file is checked by
    // its own verify-and-move where it lands instead.
    let files = file_hashes(
        small
            .iter()
            .chain(&large)
            .filter(|i| !digest::is_segmented(i.size)),
    );

    let tar_items: Vec<Item> = small.into_iter().filter(|i| !i.root).collect();
    if !tar_items.is_empty() {
        let small_bytes = file_bytes(&tar_items);
        let (tar, hash) = tokio::task::spawn_blocking(move || build_tar(&tar_items))
            .await
            .map_err(|source| CommError::Task {
                what: "building the upload bundle",
                source,
            })??;
        let key = format!("{stage}bundle.tar");
        let url = put(
            c,
            &bucket,
            &key,
            Body::Bytes(&tar),
            Some(&hash),
            expiry,
            "upload bundle",
        )
        .await?;
        done += small_bytes;
        c.sink.upload_progress(done, total);
        script.push_str(&format!(
            "fetch {} \"$T/bundle.tar\"\ncheck {} \"$T/bundle.tar\" 'upload bundle'\n{}\
             rm -f \"$T/bundle.tar\"\n",
            shell_quote(&url),
            hex::encode(hash),
            tar_extract("\"$T/bundle.tar\"", false),
        ));
    }
    for (n, item) in large.iter().enumerate() {
        // S3 checks a plain sha256; a segmented digest is checked on the builder only.
        let hash = item.sha256.filter(|_| !digest::is_segmented(item.size));
        let name = item
            .dest
            .rsplit('/')
            .next()
            .filter(|s| !s.is_empty())
            .unwrap_or("file");
        let key = format!("{stage}{n:04}-{name}");
        let body = Body::File(&item.local);
        let url = put(c, &bucket, &key, body, hash.as_ref(), expiry, &item.dest).await?;
        done += item.size;
        c.sink.upload_progress(done, total);
        // The same verify-and-move as over SSH; on a mismatch (exit 3) the exit trap names
        // the file, `$d`.
        let d = shell_quote(&item.dest);
        script.push_str(&format!(
            "d={d}\nmkdir -p -- \"$(dirname -- \"$d\")\"\nt=\"$d.bake-part\"\nfetch {} \"$t\"\n{}",
            shell_quote(&url),
            verify_and_move(item, hasher(false)),
        ));
    }
    // Every file, checked where it landed.
    if !files.is_empty() {
        script.push_str("sha256sum -c --quiet - <<'BAKE_SUMS_EOF'\n");
        for (path, h) in &files {
            script.push_str(&format!("{}  {path}\n", hex::encode(h)));
        }
        script.push_str("BAKE_SUMS_EOF\n");
    }

    let timeout = Duration::from_secs(600 + total / (1 << 20));
    let inv = c.execute("upload", &script, timeout, "upload").await?;
    let what = match files.len() {
        0 => "uploads".to_string(),
        1 => files[0].0.clone(),
        n => format!("{} and {} more", files[0].0, n - 1),
    };
    match inv.status {
        Done::Exit(0) => Ok(()),
        Done::Exit(3) if inv.stderr.contains("bake-file:") => {
            let path = inv
                .stderr
                .lines()
                .find_map(|l| l.strip_prefix("bake-file:"))
                .unwrap_or_default()
                .to_string();
            let local = files
                .iter()
                .find(|(p, _)| *p == path)
                .map(|(_, h)| hex::encode(h))
                .unwrap_or_default();
            finish_outcome(Some(3), &inv.stderr, path, local, "verifying")
        }
        Done::Exit(code) => {
            // `sha256sum -c` names each file that differs: "path: FAILED".
            if let Some(path) = inv
                .stdout
                .lines()
                .find_map(|l| l.strip_suffix(": FAILED"))
                .map(str::to_string)
            {
                let local = files
                    .iter()
                    .find(|(p, _)| *p == path)
                    .map(|(_, h)| hex::encode(h))
                    .unwrap_or_default();
                return Err(CommError::Checksum {
                    path,
                    local,
                    remote: "a different sha256 (sha256sum -c)".into(),
                });
            }
            let out = format!("{}{}", inv.stdout, inv.stderr);
            let tail: Vec<&str> = out.lines().rev().take(10).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            Err(upload_err(
                &what,
                format!("the fetch command exited {code}: {}", tail.join(" / ")),
            ))
        }
        Done::Lost => Err(upload_err(&what, "the builder went down during the upload")),
        Done::TimedOut => Err(upload_err(
            &what,
            format!("the fetch command timed out after {timeout:?}"),
        )),
    }
}

/// What to stage: bytes in memory or a file, read again for every attempt.
pub(super) enum Body<'a> {
    Bytes(&'a [u8]),
    File(&'a Path),
}

impl Body<'_> {
    async fn stream(&self, what: &str) -> Result<ByteStream, CommError> {
        match self {
            Body::Bytes(b) => Ok(ByteStream::from(b.to_vec())),
            Body::File(p) => ByteStream::from_path(p)
                .await
                .map_err(|e| upload_err(what, format!("{}: {e}", p.display()))),
        }
    }
}

/// How long staging waits out S3 throttling that outlasts the SDK's own retries: nothing has
/// reached the builder yet, so putting again is always safe, and throttling is not a failure.
const THROTTLED_FOR: Duration = Duration::from_secs(300);

/// Stages one object with its sha256 and returns a presigned GET URL for it.
pub(super) async fn put(
    c: &SsmCommunicator,
    bucket: &str,
    key: &str,
    body: Body<'_>,
    sha256: Option<&[u8; 32]>,
    expiry: Duration,
    what: &str,
) -> Result<String, CommError> {
    let s3 = &c.clients.s3;
    let put = retry::poll(Backoff::AWS.with_timeout(THROTTLED_FOR), |_| async {
        let stream = match body.stream(what).await {
            Ok(s) => s,
            Err(e) => return Poll::Fail(e),
        };
        let sent = s3
            .put_object()
            .bucket(bucket)
            .key(key)
            .body(stream)
            .set_checksum_sha256(sha256.map(aws_smithy_types::base64::encode))
            .send()
            .await
            .map_err(|e| CommError::Staging {
                what: what.to_string(),
                source: Box::new(crate::aws::AwsError::from_sdk(
                    "PutObject",
                    Some(&format!("s3://{bucket}/{key}")),
                    e,
                )),
            });
        Poll::from_result(sent)
    })
    .await;
    match put {
        Ok(_) => {}
        Err(PollError::Failed(e)) => return Err(e),
        Err(PollError::Timeout { elapsed, last }) => {
            return Err(upload_err(
                what,
                format!("S3 throttled staging for {elapsed:?}: {last}"),
            ));
        }
    }
    let conf = PresigningConfig::expires_in(expiry)
        .map_err(|e| crate::aws::AwsError::local("presigning GetObject", Some(key), e))?;
    let req = s3
        .get_object()
        .bucket(bucket)
        .key(key)
        .presigned(conf)
        .await
        .map_err(|e| upload_err(what, format!("presigning s3://{bucket}/{key}: {e}")))?;
    Ok(req.uri().to_string())
}
