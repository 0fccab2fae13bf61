//! Walks each upload's source and hashes its files (sha256, segmented for large files, SHA-NI
//! where the CPU has it: see [`super::digest`]), producing the [`UploadPlan`]s that both the fingerprint and the builder-side checksum
//! verification use, so every byte is read once.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::HashCache;
use crate::recipe::model::Upload;

/// The local sha256 of every file of one upload, computed once (by the fingerprint) and
/// reused to verify what landed on the builder.
#[derive(Debug, Clone)]
pub struct UploadPlan {
    pub upload: Upload,
    /// For a file: one entry with an empty relative path. For a directory: every regular
    /// file, symlink and (empty) directory below it, relative path with `/` separators.
    pub entries: Vec<PlannedEntry>,
}

#[derive(Debug, Clone)]
pub struct PlannedEntry {
    pub rel: String,
    pub kind: EntryKind,
    pub size: u64,
    /// Unix mode bits of the local file (permission bits only).
    pub mode: u32,
    /// The file's digest (files only): plain sha256, or for files above
    /// [`super::digest::SEGMENT`] the segmented sha256 of [`super::digest`].
    pub sha256: Option<[u8; 32]>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
    Symlink(String),
}

#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct PlanError {
    pub path: PathBuf,
    pub message: String,
}

fn err(path: &Path, e: impl std::fmt::Display) -> PlanError {
    PlanError {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// The digest of a file of `size` bytes (plain sha256, or segmented for large files: see
/// [`super::digest`]).
pub fn hash_file(path: &Path, size: u64) -> Result<[u8; 32], PlanError> {
    super::digest::file_digest(path, size)
}

/// A file read in chunks up to exactly the size it was planned with: the one reader behind
/// hashing and every upload, so what is sent is what was hashed. A file that has become shorter
/// is an error; bytes it has gained are neither hashed nor sent.
pub struct FileChunks {
    reader: std::io::Take<std::fs::File>,
    left: u64,
}

impl FileChunks {
    pub fn open(path: &Path, size: u64) -> std::io::Result<FileChunks> {
        Ok(FileChunks {
            reader: std::fs::File::open(path)?.take(size),
            left: size,
        })
    }

    /// Bytes still to read.
    pub fn left(&self) -> u64 {
        self.left
    }

    /// Appends the next bytes, at most `max`, to `buf`; 0 once the planned size is read.
    pub fn append(&mut self, buf: &mut Vec<u8>, max: u64) -> std::io::Result<usize> {
        let want = max.min(self.left);
        if want == 0 {
            return Ok(0);
        }
        // `read_to_end` fills spare capacity without zeroing it first: at a gigabyte that matters.
        let n = (&mut self.reader).take(want).read_to_end(buf)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "changed since it was planned (shorter than planned)",
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

fn file_entry(
    path: &Path,
    rel: String,
    meta: &std::fs::Metadata,
    cache: &HashCache,
) -> Result<PlannedEntry, PlanError> {
    let sha = match cache.get(path, meta) {
        Some(h) => h,
        None => {
            let h = hash_file(path, meta.len())?;
            cache.put(path, meta, h);
            h
        }
    };
    Ok(PlannedEntry {
        rel,
        kind: EntryKind::File,
        size: meta.len(),
        mode: meta.permissions().mode() & 0o7777,
        sha256: Some(sha),
    })
}

fn walk_dir(
    root: &Path,
    dir: &Path,
    out: &mut Vec<PlannedEntry>,
    cache: &HashCache,
) -> Result<(), PlanError> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| err(dir, e))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(|e| err(dir, e))?;
    names.sort();
    for path in names {
        let rel = path
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        let meta = std::fs::symlink_metadata(&path).map_err(|e| err(&path, e))?;
        let ft = meta.file_type();
        if ft.is_symlink() {
            let target = std::fs::read_link(&path).map_err(|e| err(&path, e))?;
            out.push(PlannedEntry {
                rel,
                kind: EntryKind::Symlink(target.to_string_lossy().into_owned()),
                size: 0,
                mode: 0o777,
                sha256: None,
            });
        } else if ft.is_dir() {
            out.push(PlannedEntry {
                rel,
                kind: EntryKind::Dir,
                size: 0,
                mode: meta.permissions().mode() & 0o7777,
                sha256: None,
            });
            walk_dir(root, &path, out, cache)?;
        } else if ft.is_file() {
            out.push(file_entry(&path, rel, &meta, cache)?);
        } else {
            return Err(err(
                &path,
                "not a regular file, directory or symlink; bake cannot upload it",
            ));
        }
    }
    Ok(())
}

/// Plans every upload of a recipe: walks directories in a stable (sorted) order and hashes
/// each file, using the cache for files whose metadata is unchanged.
pub fn plan_uploads(uploads: &[Upload], cache: &HashCache) -> Result<Vec<UploadPlan>, PlanError> {
    let plans = uploads
        .iter()
        .map(|u| {
            let meta = std::fs::metadata(&u.source).map_err(|e| err(&u.source, e))?;
            let entries = if meta.is_dir() {
                let mut v = Vec::new();
                walk_dir(&u.source, &u.source, &mut v, cache)?;
                v
            } else {
                vec![file_entry(&u.source, String::new(), &meta, cache)?]
            };
            Ok(UploadPlan {
                upload: u.clone(),
                entries,
            })
        })
        .collect::<Result<Vec<_>, PlanError>>()?;
    cache.save();
    Ok(plans)
}
