//! A local cache of file hashes, so re-planning an unchanged 1 GiB artifact is instant.
//!
//! An entry is trusted only if path, size, mtime, ctime, inode and device all still match: any
//! write, truncate, replace or `touch` changes one of them. A missing, unreadable or corrupt
//! cache file only costs time: bad lines are ignored and the file is rewritten. The file name
//! carries the digest's version (`hashes-v2`: segmented digests of large files), so a cache
//! written by an older bake is never read as the new digest.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Key {
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    ino: u64,
    dev: u64,
}

impl Key {
    fn of(meta: &std::fs::Metadata) -> Key {
        Key {
            size: meta.len(),
            mtime_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
            ctime_ns: meta.ctime() as i128 * 1_000_000_000 + meta.ctime_nsec() as i128,
            ino: meta.ino(),
            dev: meta.dev(),
        }
    }
}

pub struct HashCache {
    file: Option<PathBuf>,
    entries: Mutex<HashMap<PathBuf, (Key, [u8; 32])>>,
    dirty: Mutex<bool>,
}

impl HashCache {
    /// No persistence: every file is hashed.
    pub fn disabled() -> Self {
        HashCache {
            file: None,
            entries: Mutex::new(HashMap::new()),
            dirty: Mutex::new(false),
        }
    }

    /// `$BAKE_CACHE_DIR`, else `$XDG_CACHE_HOME/bake`, else `~/.cache/bake`.
    pub fn default_path() -> Option<PathBuf> {
        if let Some(d) = std::env::var_os("BAKE_CACHE_DIR") {
            return Some(PathBuf::from(d).join("hashes-v2"));
        }
        let base = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
        Some(base.join("bake").join("hashes-v2"))
    }

    pub fn open(file: PathBuf) -> Self {
        let mut entries = HashMap::new();
        if let Ok(text) = std::fs::read_to_string(&file) {
            for line in text.lines() {
                if let Some((p, k, h)) = parse_line(line) {
                    entries.insert(p, (k, h));
                }
            }
        }
        HashCache {
            file: Some(file),
            entries: Mutex::new(entries),
            dirty: Mutex::new(false),
        }
    }

    /// The cached hash of `path` if its metadata is unchanged.
    pub fn get(&self, path: &Path, meta: &std::fs::Metadata) -> Option<[u8; 32]> {
        let entries = self.entries.lock().unwrap();
        let (k, h) = entries.get(path)?;
        (*k == Key::of(meta)).then_some(*h)
    }

    pub fn put(&self, path: &Path, meta: &std::fs::Metadata, hash: [u8; 32]) {
        self.entries
            .lock()
            .unwrap()
            .insert(path.to_path_buf(), (Key::of(meta), hash));
        *self.dirty.lock().unwrap() = true;
    }

    /// Writes the cache atomically (temp file + rename); failures are ignored on purpose: the
    /// cache is an optimisation.
    pub fn save(&self) {
        let Some(file) = &self.file else { return };
        if !*self.dirty.lock().unwrap() {
            return;
        }
        let entries = self.entries.lock().unwrap();
        let mut out = String::new();
        for (p, (k, h)) in entries.iter() {
            let Some(ps) = p.to_str() else { continue };
            if ps.contains('\n') {
                continue;
            }
            out.push_str(&format!(
                "{} {} {} {} {} {} {}\n",
                hex::encode(h),
                k.size,
                k.mtime_ns,
                k.ctime_ns,
                k.ino,
                k.dev,
                ps
            ));
        }
        if let Some(dir) = file.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let tmp = file.with_extension(format!("tmp{}", std::process::id()));
        if std::fs::write(&tmp, out).is_ok() {
            let _ = std::fs::rename(&tmp, file);
        }
    }
}

fn parse_line(line: &str) -> Option<(PathBuf, Key, [u8; 32])> {
    let mut it = line.splitn(7, ' ');
    let hash: [u8; 32] = hex::decode(it.next()?).ok()?.try_into().ok()?;
    let key = Key {
        size: it.next()?.parse().ok()?,
        mtime_ns: it.next()?.parse().ok()?,
        ctime_ns: it.next()?.parse().ok()?,
        ino: it.next()?.parse().ok()?,
        dev: it.next()?.parse().ok()?,
    };
    let path = PathBuf::from(it.next()?);
    Some((path, key, hash))
}
