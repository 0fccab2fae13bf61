//! The digest of one file's bytes, as the fingerprint and the upload checks use it.
//!
//! A file of at most [`SEGMENT`] bytes is digested with plain sha256. A larger one is split
//! into [`SEGMENT`]-sized pieces (the last one shorter), each hashed with sha256 on its own,
//! and its digest is the sha256 of a header line and the segments' hex digests, one per line
//! (see [`combine`]). Why: plain sha256 is one serial chain, so hashing a gigabyte uses one
//! core however many there are, locally before the launch and again on the builder after the
//! last byte arrived. Segments are hashed on every core here ([`file_digest`]); the SSH raw
//! stream digests what it sends as it reads it ([`Streaming`]), and SFTP and SSM have the
//! builder hash a landed file's segments side by side (`remote::transfer::verify`). The
//! combination is text so that a builder's shell can compute it with `sha256sum` alone. Small
//! files stay plain sha256: most uploads are small, and plain digests are what `sha256sum -c`
//! and S3's `ChecksumSHA256` check.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

use super::walk::PlanError;

/// Bytes per segment. 32 MiB: a 1 GiB file is 32 segments, enough to keep every core busy
/// to the end, and the builder's last check after the final byte hashes at most 32 MiB.
pub const SEGMENT: u64 = 32 << 20;

/// Read size while hashing: small enough that the buffer stays in the CPU cache between the
/// kernel's copy and the hash (measured, 1 GiB from the page cache: 0.84 s with 64–128 KiB
/// reads, 1.2–1.4 s with 256 KiB–1 MiB, all of the difference system time).
pub const READ: usize = 128 << 10;

/// The first line of a segmented digest's input; names the scheme and the segment size, so a
/// change of either never yields a digest equal to an old one.
pub fn header() -> String {
    format!("bake-sha256-segments v1 {SEGMENT}\n")
}

/// Whether a file of `size` bytes gets the segmented digest (else plain sha256).
pub fn is_segmented(size: u64) -> bool {
    size > SEGMENT
}

/// Number of segments of a file of `size` bytes (at least one).
pub fn segments(size: u64) -> u64 {
    size.div_ceil(SEGMENT).max(1)
}

/// The digest of a segmented file from its segments' hex sha256s, in order: sha256 of
/// [`header`] followed by each hex digest (lowercase) and a newline.
pub fn combine<'a>(segment_hexes: impl IntoIterator<Item = &'a str>) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(header().as_bytes());
    for s in segment_hexes {
        h.update(s.to_ascii_lowercase().as_bytes());
        h.update(b"\n");
    }
    h.finalize().into()
}

/// Hashes `len` bytes of `file` from `offset`; an early end of file means the file became
/// shorter than planned.
fn hash_range(
    file: &std::fs::File,
    offset: u64,
    len: u64,
    buf: &mut [u8],
) -> std::io::Result<[u8; 32]> {
    let mut h = Sha256::new();
    let mut done = 0u64;
    while done < len {
        let want = (len - done).min(buf.len() as u64) as usize;
        let n = file.read_at(&mut buf[..want], offset + done)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "changed since it was planned (shorter than planned)",
            ));
        }
        h.update(&buf[..n]);
        done += n as u64;
    }
    Ok(h.finalize().into())
}

fn err(path: &Path, e: impl std::fmt::Display) -> PlanError {
    PlanError {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// The digest of the first `size` bytes of `path` (see the module doc); `sha2` picks SHA-NI
/// at run time. A segmented file's segments are hashed on every available core. A small file
/// gets a buffer just big enough for it: thousands of fresh 128 KiB buffers cost more than
/// hashing the files.
pub fn file_digest(path: &Path, size: u64) -> Result<[u8; 32], PlanError> {
    let file = std::fs::File::open(path).map_err(|e| err(path, e))?;
    if !is_segmented(size) {
        let mut buf = vec![0u8; (size as usize + 1).clamp(4096, READ)];
        return hash_range(&file, 0, size, &mut buf).map_err(|e| err(path, e));
    }
    let n = segments(size);
    let threads = std::thread::available_parallelism()
        .map_or(2, usize::from)
        .min(n as usize);
    let next = AtomicU64::new(0);
    let mut hexes = vec![String::new(); n as usize];
    // Each worker's (segment index, digest) pairs.
    type Hashed = std::io::Result<Vec<(u64, [u8; 32])>>;
    let results: Vec<Hashed> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut buf = vec![0u8; READ];
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= n {
                            return Ok(mine);
                        }
                        let off = i * SEGMENT;
                        let len = SEGMENT.min(size - off);
                        mine.push((i, hash_range(&file, off, len, &mut buf)?));
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("hash worker panicked"))
            .collect()
    });
    for r in results {
        for (i, d) in r.map_err(|e| err(path, e))? {
            hexes[i as usize] = hex::encode(d);
        }
    }
    Ok(combine(hexes.iter().map(String::as_str)))
}

/// The digest of a file's bytes fed in order as they are read for sending, the same value
/// [`file_digest`] gives: the SSH raw stream hashes what it sends with it, so a file changed
/// since it was fingerprinted is caught without the builder reading it again.
pub struct Streaming {
    size: u64,
    /// The whole file (plain) or the current segment (segmented).
    current: Sha256,
    /// Bytes fed into `current`.
    fed: u64,
    /// The finished segments' hex digests (segmented only).
    done: Vec<String>,
}

impl Streaming {
    /// A digest of a file of `size` bytes (the planned size: what decides plain or segmented).
    pub fn new(size: u64) -> Self {
        Streaming {
            size,
            current: Sha256::new(),
            fed: 0,
            done: Vec::new(),
        }
    }

    /// Feeds the next bytes of the file.
    pub fn update(&mut self, mut bytes: &[u8]) {
        if !is_segmented(self.size) {
            self.current.update(bytes);
            return;
        }
        while !bytes.is_empty() {
            let room = (SEGMENT - self.fed) as usize;
            let (now, rest) = bytes.split_at(room.min(bytes.len()));
            self.current.update(now);
            self.fed += now.len() as u64;
            bytes = rest;
            if self.fed == SEGMENT {
                self.done
                    .push(hex::encode(std::mem::take(&mut self.current).finalize()));
                self.fed = 0;
            }
        }
    }

    /// The digest of everything fed.
    pub fn finish(mut self) -> [u8; 32] {
        if !is_segmented(self.size) {
            return self.current.finalize().into();
        }
        if self.fed > 0 {
            self.done.push(hex::encode(self.current.finalize()));
        }
        combine(self.done.iter().map(String::as_str))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo_random(len: usize) -> Vec<u8> {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn small_files_are_plain_sha256() {
        let dir = tempfile::tempdir().unwrap();
        for len in [0usize, 1, 4097, 200_000] {
            let p = dir.path().join(format!("f{len}"));
            let bytes = pseudo_random(len);
            std::fs::write(&p, &bytes).unwrap();
            let want: [u8; 32] = Sha256::digest(&bytes).into();
            assert_eq!(file_digest(&p, len as u64).unwrap(), want, "{len} bytes");
        }
    }

    #[test]
    fn a_large_file_is_digested_by_segments_and_differs_from_plain_sha256() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big");
        let len = 2 * SEGMENT as usize + 12345;
        let bytes = pseudo_random(len);
        std::fs::write(&p, &bytes).unwrap();
        let got = file_digest(&p, len as u64).unwrap();

        // The definition, spelled out: three segments' hex sha256s under the header.
        let segs: Vec<String> = bytes
            .chunks(SEGMENT as usize)
            .map(|c| hex::encode(Sha256::digest(c)))
            .collect();
        assert_eq!(segs.len(), 3);
        let mut text = format!("bake-sha256-segments v1 {}\n", 32 << 20);
        for s in &segs {
            text.push_str(s);
            text.push('\n');
        }
        let want: [u8; 32] = Sha256::digest(text.as_bytes()).into();
        assert_eq!(got, want);
        let plain: [u8; 32] = Sha256::digest(&bytes).into();
        assert_ne!(got, plain);
        // Stable: the same bytes give the same digest, whatever thread hashed which segment.
        assert_eq!(file_digest(&p, len as u64).unwrap(), got);
        // Only the planned size counts; a file that became shorter is an error.
        let e = file_digest(&p, len as u64 + 1).unwrap_err();
        assert!(e.message.contains("shorter than planned"), "{e}");
    }

    #[test]
    fn a_streaming_digest_equals_the_file_digest_however_the_bytes_are_cut() {
        let dir = tempfile::tempdir().unwrap();
        for len in [0usize, 5, SEGMENT as usize, 2 * SEGMENT as usize + 777] {
            let bytes = pseudo_random(len);
            let p = dir.path().join(format!("f{len}"));
            std::fs::write(&p, &bytes).unwrap();
            let want = file_digest(&p, len as u64).unwrap();
            // Pieces that do not line up with segments, as reads hand them over.
            for piece in [1usize << 20, 128 << 10 | 3] {
                let mut s = Streaming::new(len as u64);
                for c in bytes.chunks(piece) {
                    s.update(c);
                }
                assert_eq!(s.finish(), want, "{len} bytes in pieces of {piece}");
            }
        }
    }

    #[test]
    fn the_segmented_digest_is_pinned() {
        // A fixed input and its digest: if this changes, old images would stop matching (or,
        // worse, start matching something else) — bump plan::VERSION with it.
        let hexes = ["A".repeat(64), "b".repeat(64)];
        assert_eq!(
            hex::encode(combine(hexes.iter().map(String::as_str))),
            hex::encode(Sha256::digest(
                format!(
                    "bake-sha256-segments v1 33554432\n{}\n{}\n",
                    "a".repeat(64),
                    "b".repeat(64)
                )
                .as_bytes()
            ))
        );
        assert_eq!(segments(0), 1);
        assert_eq!(segments(SEGMENT), 1);
        assert_eq!(segments(SEGMENT + 1), 2);
        assert!(!is_segmented(SEGMENT));
        assert!(is_segmented(SEGMENT + 1));
    }
}
