//! Uploads: a tar stream for directories and small files, a raw stream per large file, and
//! a sha256 check of every file before it counts as landed.
//!
//! Why not SFTP: SFTP pays a request/response per open, write batch, setstat and close, which is
//! what makes Packer slow on many small files; a tar stream is one channel and zero round trips
//! per file; the builder hashes the small files after the tar. Large files skip tar: they
//! stream raw into a temp file next to the destination, followed by the digest of the bytes
//! bake sent, computed as it read them; the builder renames the file into place only if the
//! planned size arrived and that digest is the planned one (`transfer::verify::receive_script`
//! says why the builder need not hash it again). Earlier designs hashed on the builder:
//! `tee | openssl` while receiving measured twice as slow as re-reading from the page cache
//! (tee's 8 KiB pipe hops), and re-reading each landed 32 MiB segment in the background cost
//! the lab's two shared cores ~1.8 s of CPU per GiB (benches/README.md). Splitting the tar into
//! batches, each extracted while the previous one is hashed, also measured slower: on the
//! builder both compete for the same filesystem. What does pay is unpacking many files as two
//! streams side by side ([`TAR_STREAMS`]): file creation is kernel CPU, and a single `tar`
//! leaves the builder's second core idle.
//!
//! Large files: raw stream or pipelined SFTP. Both land in the same root-owned temp file and
//! share the check / chown / chmod / `mv -T` step (SFTP hashes the landed file on the
//! builder); [`sftp::LARGE_FILES`] picks one, and it is the raw stream. Measured 2026-11-23
//! (when the raw stream still hashed on the builder), release build, 1 GiB of random data to
//! a throwaway OpenSSH sshd on 127.0.0.1 (2 cores, shared with other builds, so wall times
//! are noisy), variants alternated within each round, bake's times include the remote sha256
//! check, OpenSSH `sftp put` (its default cipher, no check) as the reference. Medians of
//! three runs; "cpu" = CPU seconds of the client plus the whole sshd side, the steadier number
//! on a machine this busy:
//!
//! | wall s / cpu s                   | run 1, 7 rounds | run 2, 5 rounds | run 3, 7 rounds |
//! |----------------------------------|-----------------|-----------------|-----------------|
//! | raw stream, root login           | 5.00 / 5.33     | 4.81 / 4.96     | 4.47 / 4.85     |
//! | SFTP, root login (`sftp` subsys) | 7.35 / 6.14     | 5.16 / 5.80     | 4.84 / 5.49     |
//! | raw stream, `sudo -n`            | 5.31 / 5.52     | 5.40 / 4.77     | 4.29 / 4.51     |
//! | SFTP, `sudo -n …/sftp-server`    | 6.08 / 5.99     | 6.29 / 5.75     | 5.82 / 5.63     |
//! | OpenSSH `sftp put`               | 8.23 / 7.40     | 7.61 / 8.22     | 6.97 / 7.36     |
//!
//! SFTP with 256 KiB writes, 64 in flight and 4 MiB buffered reads beats OpenSSH's own
//! `sftp put` (0.68–0.89 ×), but is 7–47 % slower than the raw stream in wall time (15–36 %
//! through `sudo`, the usual case on a builder; one shorter run of just those two had it at
//! +2 %: 4.25 s vs 4.18 s) and needs 8–25 % more CPU in every run, presumably the
//! per-request framing and replies and one more copy on each side. Write size matters most:
//! russh-sftp's defaults (32 KiB writes, 16 in flight) took 7.97 s, cpu 8.06 where 256 KiB × 64
//! took 7.02 s, cpu 6.62 in the same run; 256 in flight was no better than 64 (4.10 s vs
//! 4.25 s, cpu 6.07 vs 5.96) and would queue 64 MiB per file. The rule was "SFTP only if
//! within 10 % of the raw stream (and at most 1.2 × `sftp put`)", so the raw stream stays the
//! default and SFTP stays available, and tested, behind the one switch.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::{StreamExt, TryStreamExt};
use russh::client::Handle;
use tokio::sync::mpsc;

use super::Remote;
use super::connect::Client;
use super::exec::{Chunk, capture, pipe};
use super::sftp;
use crate::plan::{EntryKind, UploadPlan, digest};
use crate::remote::CommError;
use crate::remote::transfer::items::{
    Item, SourceFile, file_bytes, file_hashes, items, owners_and_roots, split_streams, tar_extract,
    tar_header, tar_mtime, upload_err,
};
use crate::remote::transfer::script::as_root;
use crate::remote::transfer::tar;
use crate::remote::transfer::verify;
use crate::ui::SharedSink;

/// Files at least this large get their own raw stream with the hash overlapped; below it the
/// per-file cost of a channel outweighs the extra read for verification.
const STREAM_THRESHOLD: u64 = 16 * 1024 * 1024;

/// Tar streams unpacked side by side when there are many entries: creating files is CPU work
/// in the builder's kernel and one `tar` keeps one core busy. Measured on a lab builder, 2000 ×
/// 2 KiB over one connection: 0.33 s as one stream, 0.22 s as two (2 cores). More streams
/// than the builder has cores only add contention, and builders have at least two.
const TAR_STREAMS: usize = 2;

/// Below this many files and links, one stream: another channel and shell cost more than the
/// second core saves.
pub(super) const SPLIT_MIN_ENTRIES: usize = 256;

/// Read size and unit of work handed to the SSH session. Small enough that the builder's
/// `tar` starts on the first files early and progress moves smoothly; large enough that
/// per-chunk overhead vanishes next to per-packet work.
const CHUNK: usize = 256 * 1024;

/// Chunks read ahead of the network, so disk reads overlap encryption. 1 MiB is enough to
/// keep the session busy (page cache or disk); more only raises peak memory (measured: 16
/// chunks cost ~3 MiB of RSS for no throughput).
const READ_AHEAD: usize = 4;

/// Shared progress over all uploads of one call.
struct Progress {
    sink: SharedSink,
    done: AtomicU64,
    total: u64,
}

impl Progress {
    fn add(&self, n: u64) {
        let done = self.done.fetch_add(n, Ordering::Relaxed) + n;
        self.sink.upload_progress(done, self.total);
    }
}

/// Appends exactly `size` bytes of `local` to `buf`, handing full chunks to `tx` as it goes.
fn read_file(
    item: &Item,
    buf: &mut Vec<u8>,
    accounted: &mut u64,
    tx: &mpsc::Sender<Chunk>,
) -> Result<(), CommError> {
    let mut src = SourceFile::open(item)?;
    while src.left() > 0 {
        if buf.len() >= CHUNK {
            let full = std::mem::replace(buf, Vec::with_capacity(CHUNK + tar::BLOCK * 4));
            if tx
                .blocking_send(Ok((full, std::mem::take(accounted))))
                .is_err()
            {
                return Err(upload_err(&item.dest, "transfer aborted"));
            }
        }
        let want = (CHUNK.saturating_sub(buf.len())).max(tar::BLOCK) as u64;
        *accounted += src.append(buf, want)? as u64;
    }
    Ok(())
}

/// Produces the tar stream for `items` on a blocking thread.
fn produce_tar(items: Vec<Item>, tx: mpsc::Sender<Chunk>) {
    let mtime = tar_mtime();
    let mut buf = Vec::with_capacity(CHUNK + tar::BLOCK * 4);
    let mut accounted = 0u64;
    for item in &items {
        tar_header(&mut buf, item, mtime);
        if item.kind == EntryKind::File {
            if let Err(e) = read_file(item, &mut buf, &mut accounted, &tx) {
                let _ = tx.blocking_send(Err(e));
                return;
            }
            buf.extend(std::iter::repeat_n(0u8, tar::padding(item.size)));
        }
        if buf.len() >= CHUNK {
            let full = std::mem::replace(&mut buf, Vec::with_capacity(CHUNK + tar::BLOCK * 4));
            if tx
                .blocking_send(Ok((full, std::mem::take(&mut accounted))))
                .is_err()
            {
                return;
            }
        }
    }
    tar::finish(&mut buf);
    let _ = tx.blocking_send(Ok((buf, accounted)));
}

/// Produces one file's raw bytes on a blocking thread, then the [`verify::trailer`] with the
/// digest of what it read and sent.
fn produce_raw(item: Item, tx: mpsc::Sender<Chunk>) {
    let last = send_raw(&item, &tx).map(|sent| (verify::trailer(sent), 0));
    let _ = tx.blocking_send(last);
}

/// Sends `item`'s bytes in [`CHUNK`]s and returns their digest. Reads [`digest::READ`] at a
/// time and hashes each piece at once, while it is still in the CPU cache.
fn send_raw(item: &Item, tx: &mpsc::Sender<Chunk>) -> Result<[u8; 32], CommError> {
    let mut src = SourceFile::open(item)?;
    let mut sent = digest::Streaming::new(item.size);
    while src.left() > 0 {
        let mut buf = Vec::with_capacity(CHUNK);
        while buf.len() < CHUNK && src.left() > 0 {
            let from = buf.len();
            src.append(&mut buf, digest::READ.min(CHUNK - from) as u64)?;
            sent.update(&buf[from..]);
        }
        let n = buf.len() as u64;
        if tx.blocking_send(Ok((buf, n))).is_err() {
            return Err(upload_err(&item.dest, "transfer aborted"));
        }
    }
    Ok(sent.finish())
}

pub async fn upload(
    handle: &Handle<Client>,
    remote: &Remote,
    sink: &SharedSink,
    plans: &[UploadPlan],
) -> Result<(), CommError> {
    let all = items(plans);
    if all.is_empty() {
        return Ok(());
    }
    let total = file_bytes(&all);
    let progress = Arc::new(Progress {
        sink: sink.clone(),
        done: AtomicU64::new(0),
        total,
    });
    progress.add(0);
    let (large, small): (Vec<Item>, Vec<Item>) = all
        .into_iter()
        .partition(|i| i.kind == EntryKind::File && i.size >= STREAM_THRESHOLD);
    // The tars go first: they create the directories large files may land in. Then the
    // builder hashes the small files while the large ones stream in; two large files overlap
    // so one's check and rename run during the next one's transfer.
    let small_files = if small.is_empty() {
        Vec::new()
    } else {
        // The root directories and owner checks are the same for every stream.
        let script = tar_script(&small);
        let small: Vec<Item> = small.into_iter().filter(|i| !i.root).collect();
        let streams = split_streams(small, TAR_STREAMS, SPLIT_MIN_ENTRIES);
        let tars = streams
            .into_iter()
            .map(|s| upload_tar(handle, remote, &progress, &script, s));
        futures::future::try_join_all(tars).await?
    };
    let verify_small = futures::future::try_join_all(
        small_files
            .iter()
            .filter(|f| !f.is_empty())
            .map(|f| verify(handle, remote, f)),
    );
    let send_large = futures::stream::iter(large)
        .map(|item| upload_large(handle, remote, &progress, item))
        .buffer_unordered(2)
        .try_collect::<Vec<()>>();
    tokio::try_join!(verify_small, send_large)?;
    Ok(())
}

/// The builder side of one tar stream. Refuses unknown owners up front: tar would silently
/// fall back to root. Idempotent, so streams running side by side can each run it.
fn tar_script(items: &[Item]) -> String {
    format!(
        "set -e\numask 022\n{}{}",
        owners_and_roots(items, items),
        tar_extract("-", true)
    )
}

async fn upload_tar(
    handle: &Handle<Client>,
    remote: &Remote,
    progress: &Progress,
    script: &str,
    items: Vec<Item>,
) -> Result<Vec<(String, [u8; 32])>, CommError> {
    let command = as_root(remote.sudo, script);

    let files = file_hashes(&items);
    let first = items.first().map(|i| i.dest.clone()).unwrap_or_default();
    let (tx, rx) = mpsc::channel(READ_AHEAD);
    let producer = tokio::task::spawn_blocking(move || produce_tar(items, tx));
    let out = pipe(handle, &command, rx, |n| progress.add(n)).await;
    producer.abort();
    let out = out?;
    if out.status != Some(0) {
        let what = if files.len() == 1 {
            files[0].0.clone()
        } else {
            format!("{first} and {} more", files.len().saturating_sub(1))
        };
        return Err(upload_err(
            &what,
            format!("tar on the builder failed: {}", out.stderr_text()),
        ));
    }
    Ok(files)
}

/// Hashes `files` on the builder in one command and compares with the local hashes.
async fn verify(
    handle: &Handle<Client>,
    remote: &Remote,
    files: &[(String, [u8; 32])],
) -> Result<(), CommError> {
    let mut list = Vec::new();
    for (path, _) in files {
        list.extend_from_slice(path.as_bytes());
        list.push(0);
    }
    let command = as_root(remote.sudo, &format!("xargs -0 -r {}", hasher(remote)));
    let out = capture(handle, &command, list).await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let remote_hashes = verify::parse_hashes(&stdout);
    for (path, local) in files {
        let local = hex::encode(local);
        match remote_hashes.get(path.as_str()) {
            Some(h) if *h == local => {}
            Some(h) => {
                return Err(CommError::Checksum {
                    path: path.clone(),
                    local,
                    remote: h.clone(),
                });
            }
            None => {
                let why = out.stderr_text();
                let remote = if why.is_empty() {
                    "not hashed".to_string()
                } else {
                    format!("not hashed: {why}")
                };
                return Err(CommError::Checksum {
                    path: path.clone(),
                    local,
                    remote,
                });
            }
        }
    }
    Ok(())
}

// ---- large-file transport hook (the transport itself: sftp.rs) ----

/// Sends one large file by the transport chosen in [`sftp::LARGE_FILES`].
async fn upload_large(
    handle: &Handle<Client>,
    remote: &Remote,
    progress: &Progress,
    item: Item,
) -> Result<(), CommError> {
    match sftp::LARGE_FILES {
        sftp::LargeFiles::RawStream => upload_raw(handle, remote, progress, item).await,
        sftp::LargeFiles::Sftp => {
            sftp::upload(handle, remote, hasher(remote), item, &|n| progress.add(n)).await
        }
    }
}

// ---- end of the large-file transport hook ----

/// Streams one large file into place with the digest of what was sent after it; it is renamed
/// over the destination only when all of it arrived and that digest is the planned one.
async fn upload_raw(
    handle: &Handle<Client>,
    remote: &Remote,
    progress: &Progress,
    item: Item,
) -> Result<(), CommError> {
    let expected = item.sha256.map(hex::encode).unwrap_or_default();
    let script = verify::receive_script(&item);
    let command = as_root(remote.sudo, &script);

    let path = item.dest.clone();
    let (tx, rx) = mpsc::channel(READ_AHEAD);
    let producer = tokio::task::spawn_blocking(move || produce_raw(item, tx));
    let out = pipe(handle, &command, rx, |n| progress.add(n)).await;
    producer.abort();
    let out = out?;
    verify::finish_outcome(out.status, &out.stderr_text(), path, expected, "writing")
}

/// The hash command the builder has (see [`verify::hasher`]).
fn hasher(remote: &Remote) -> &'static str {
    verify::hasher(remote.openssl)
}
