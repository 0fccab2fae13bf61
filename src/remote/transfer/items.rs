//! What the SSH and SSM uploads share: the plans flattened into things to create on the
//! builder, tar headers for them, and the shell that checks owners and creates the
//! destination directories of directory uploads before a tar is unpacked.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::script::shell_quote;
use super::tar::{self, Kind, Owner};
use crate::plan::{EntryKind, FileChunks, UploadPlan};
use crate::remote::CommError;

/// One thing to create on the builder.
#[derive(Debug, Clone)]
pub(crate) struct Item {
    /// Absolute path on the builder.
    pub dest: String,
    pub local: PathBuf,
    pub kind: EntryKind,
    pub size: u64,
    pub mode: u32,
    pub owner: Option<String>,
    pub sha256: Option<[u8; 32]>,
    /// The destination directory of a directory upload: created by the script (only if
    /// missing), never by tar, so an existing directory or symlink there is left alone.
    pub root: bool,
}

/// Directories get execute bits wherever they have read bits, so a file mode like 0644 still
/// yields traversable directories.
pub(crate) fn dir_mode(mode: u32) -> u32 {
    mode | ((mode & 0o444) >> 2)
}

fn join(root: &str, rel: &str) -> String {
    let root = root.trim_end_matches('/');
    match (rel.is_empty(), root.is_empty()) {
        (true, true) => "/".into(),
        (true, false) => root.into(),
        (false, _) => format!("{root}/{rel}"),
    }
}

fn local_dir_mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0o755)
}

/// Flattens the plans into items, adding every directory on the way to an entry so each gets
/// the recipe's mode rather than whatever `tar` would invent.
pub(crate) fn items(plans: &[UploadPlan]) -> Vec<Item> {
    let mut out = BTreeMap::new();
    for plan in plans {
        let up = &plan.upload;
        if !up.is_dir {
            for e in &plan.entries {
                let item = Item {
                    dest: up.destination.clone(),
                    local: up.source.clone(),
                    kind: e.kind.clone(),
                    size: e.size,
                    mode: up.mode.unwrap_or(e.mode),
                    owner: up.owner.clone(),
                    sha256: e.sha256,
                    root: false,
                };
                out.insert(item.dest.clone(), item);
            }
            continue;
        }
        let dir_item = |rel: &str, mode: Option<u32>| Item {
            dest: join(&up.destination, rel),
            local: up.source.join(rel),
            kind: EntryKind::Dir,
            size: 0,
            mode: up
                .mode
                .map(dir_mode)
                .or(mode)
                .unwrap_or_else(|| local_dir_mode(&up.source.join(rel))),
            owner: up.owner.clone(),
            sha256: None,
            root: rel.is_empty(),
        };
        let mut dirs = BTreeSet::from([String::new()]);
        for e in &plan.entries {
            let mut parent = e.rel.as_str();
            while let Some((p, _)) = parent.rsplit_once('/') {
                dirs.insert(p.to_string());
                parent = p;
            }
            let item = match &e.kind {
                EntryKind::Dir => dir_item(&e.rel, Some(e.mode)),
                kind => Item {
                    dest: join(&up.destination, &e.rel),
                    local: up.source.join(&e.rel),
                    kind: kind.clone(),
                    size: e.size,
                    mode: if *kind == EntryKind::File {
                        up.mode.unwrap_or(e.mode)
                    } else {
                        0o777
                    },
                    owner: up.owner.clone(),
                    sha256: e.sha256,
                    root: false,
                },
            };
            out.insert(item.dest.clone(), item);
        }
        for d in dirs {
            let item = dir_item(&d, None);
            out.entry(item.dest.clone()).or_insert(item);
        }
    }
    out.into_values().collect()
}

/// Bytes of regular files among `items` (what upload progress counts).
pub(crate) fn file_bytes<'a>(items: impl IntoIterator<Item = &'a Item>) -> u64 {
    items
        .into_iter()
        .filter(|i| i.kind == EntryKind::File)
        .map(|i| i.size)
        .sum()
}

/// Destination and local sha256 of every regular file among `items`, to verify on the builder.
pub(crate) fn file_hashes<'a>(
    items: impl IntoIterator<Item = &'a Item>,
) -> Vec<(String, [u8; 32])> {
    items
        .into_iter()
        .filter(|i| i.kind == EntryKind::File)
        .filter_map(|i| i.sha256.map(|h| (i.dest.clone(), h)))
        .collect()
}

/// `user[:group]` as tar header fields. Names are resolved by tar on the builder; numeric ids
/// go in the numeric fields so they need no lookup.
pub(crate) fn tar_owner(owner: Option<&str>) -> Owner {
    let mut o = Owner {
        uid: 0,
        gid: 0,
        uname: "root".into(),
        gname: "root".into(),
    };
    let Some(spec) = owner else { return o };
    let (user, group) = spec
        .split_once(':')
        .map_or((spec, None), |(u, g)| (u, Some(g)));
    match user.parse::<u64>() {
        Ok(n) => (o.uid, o.uname) = (n, String::new()),
        Err(_) => o.uname = user.to_string(),
    }
    if let Some(g) = group.filter(|g| !g.is_empty()) {
        match g.parse::<u64>() {
            Ok(n) => (o.gid, o.gname) = (n, String::new()),
            Err(_) => o.gname = g.to_string(),
        }
    }
    o
}

/// Seconds since the epoch, the mtime every tar entry of one upload gets.
pub(crate) fn tar_mtime() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Appends the tar header(s) of `item` to `buf`; a file's bytes and padding are the caller's.
pub(crate) fn tar_header(buf: &mut Vec<u8>, item: &Item, mtime: u64) {
    let owner = tar_owner(item.owner.as_deref());
    let name = item.dest.trim_start_matches('/');
    let kind = match &item.kind {
        EntryKind::File => Kind::File { size: item.size },
        EntryKind::Dir => Kind::Dir,
        EntryKind::Symlink(t) => Kind::Symlink { target: t },
    };
    tar::header(buf, name, &kind, item.mode, &owner, mtime);
}

/// Shell that fails up front on owners of `owned` the builder does not know (tar would
/// quietly fall back to root), then creates the missing root directories among `items` with
/// their mode and owner.
pub(crate) fn owners_and_roots<'a>(
    owned: impl IntoIterator<Item = &'a Item>,
    items: &[Item],
) -> String {
    let mut script = String::new();
    let mut users = BTreeSet::new();
    let mut groups = BTreeSet::new();
    for item in owned {
        let o = tar_owner(item.owner.as_deref());
        if !o.uname.is_empty() && o.uname != "root" {
            users.insert(o.uname);
        }
        if !o.gname.is_empty() && o.gname != "root" {
            groups.insert(o.gname);
        }
    }
    for u in &users {
        let q = shell_quote(u);
        script.push_str(&format!("id -u -- {q} >/dev/null 2>&1 || {{ echo \"no user {q} on the builder\" >&2; exit 1; }}\n"));
    }
    for g in &groups {
        let q = shell_quote(g);
        script.push_str(&format!("getent group {q} >/dev/null || {{ echo \"no group {q} on the builder\" >&2; exit 1; }}\n"));
    }
    for root in items.iter().filter(|i| i.root) {
        let d = shell_quote(&root.dest);
        script.push_str(&format!(
            "if [ ! -e {d} ] && [ ! -L {d} ]; then mkdir -p -- {d}; chmod {:o} -- {d}",
            root.mode & 0o7777
        ));
        if let Some(owner) = &root.owner {
            script.push_str(&format!("; chown -- {} {d}", shell_quote(owner)));
        }
        script.push_str("; fi\n");
    }
    script
}

/// Sets `$k` to tar's `--keep-directory-symlink` where the builder's tar has it, so existing
/// symlinks to directories stay symlinks.
const TAR_KEEP_SYMLINKS: &str = "k=\ntar --help 2>/dev/null | grep -q -e --keep-directory-symlink && k=--keep-directory-symlink\n";

/// The shell that unpacks the tar `archive` (a quoted path, or `-` for stdin) into `/`, the
/// same way for both transports: owners and modes as recorded, existing directories keep their
/// metadata (uploading into /usr/local/bin must not chmod it), and existing symlinks to
/// directories stay symlinks where the builder's tar supports that. With `exec`, tar replaces
/// the shell (the last command of a stream's script).
pub(crate) fn tar_extract(archive: &str, exec: bool) -> String {
    let exec = if exec { "exec " } else { "" };
    format!(
        "{TAR_KEEP_SYMLINKS}{exec}tar -x -p --same-owner --no-overwrite-dir $k -C / -f {archive}\n"
    )
}

/// Splits `items` (sorted by destination, as [`items`] returns them) into at most `n` tar
/// streams of about equal cost, for builders that unpack them side by side. Each stream
/// carries every directory on the way to its entries, so whichever stream reaches a directory
/// first creates it with the recipe's mode and owner: tar never invents one, and the other
/// stream's `--no-overwrite-dir` leaves it as it is. Fewer than `min_entries` files and links
/// stay one stream: below that a second channel and shell cost more than they save.
pub(crate) fn split_streams(items: Vec<Item>, n: usize, min_entries: usize) -> Vec<Vec<Item>> {
    let (dirs, leaves): (Vec<Item>, Vec<Item>) =
        items.into_iter().partition(|i| i.kind == EntryKind::Dir);
    if n < 2 || leaves.len() < min_entries.max(2) {
        let mut all: Vec<Item> = dirs.into_iter().chain(leaves).collect();
        all.sort_by(|a, b| a.dest.cmp(&b.dest));
        return vec![all];
    }
    // Creating an entry costs about as much as writing 64 KiB into it.
    let cost = |i: &Item| 65_536 + i.size;
    let total: u64 = leaves.iter().map(cost).sum();
    let mut groups: Vec<Vec<Item>> = vec![Vec::new()];
    let mut acc = 0u64;
    for leaf in leaves {
        // Start the next stream where this entry's midpoint passes the next equal share.
        let share = total * groups.len() as u64 / n as u64;
        let current = groups.last().expect("one group at least");
        if groups.len() < n && !current.is_empty() && acc + cost(&leaf) / 2 > share {
            groups.push(Vec::new());
        }
        acc += cost(&leaf);
        groups.last_mut().expect("one group at least").push(leaf);
    }
    let by_dest: BTreeMap<&str, &Item> = dirs.iter().map(|d| (d.dest.as_str(), d)).collect();
    let mut used = BTreeSet::new();
    let mut out = Vec::with_capacity(groups.len());
    for group in groups {
        let mut wanted = BTreeSet::new();
        for leaf in &group {
            let mut path = leaf.dest.as_str();
            while let Some((parent, _)) = path.rsplit_once('/') {
                if let Some((&dir, _)) = by_dest.get_key_value(parent) {
                    wanted.insert(dir);
                }
                path = parent;
            }
        }
        used.extend(wanted.iter().copied());
        let mut stream: Vec<Item> = wanted.iter().map(|d| by_dest[d].clone()).collect();
        stream.extend(group);
        out.push(stream);
    }
    // Directories with nothing in them ride along with the first stream.
    let empty: Vec<Item> = dirs
        .iter()
        .filter(|d| !used.contains(d.dest.as_str()))
        .cloned()
        .collect();
    out[0].extend(empty);
    for stream in &mut out {
        stream.sort_by(|a, b| a.dest.cmp(&b.dest));
    }
    out
}

/// An upload's local file, read through [`FileChunks`] (the reader hashing used): the SSH tar
/// stream, SFTP and the SSM bundle all read with it.
pub(crate) struct SourceFile<'a> {
    item: &'a Item,
    chunks: FileChunks,
}

impl<'a> SourceFile<'a> {
    pub(crate) fn open(item: &'a Item) -> Result<Self, CommError> {
        let chunks = FileChunks::open(&item.local, item.size)
            .map_err(|e| upload_err(&item.dest, format!("{}: {e}", item.local.display())))?;
        Ok(SourceFile { item, chunks })
    }

    /// Bytes still to read.
    pub(crate) fn left(&self) -> u64 {
        self.chunks.left()
    }

    /// Appends the next bytes, at most `max`, to `buf`; 0 once the planned size is read.
    pub(crate) fn append(&mut self, buf: &mut Vec<u8>, max: u64) -> Result<usize, CommError> {
        self.chunks.append(buf, max).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                upload_err(
                    &self.item.dest,
                    format!(
                        "{} changed while uploading (shorter than planned)",
                        self.item.local.display()
                    ),
                )
            } else {
                upload_err(&self.item.dest, e)
            }
        })
    }
}

pub(crate) fn upload_err(path: &str, reason: impl std::fmt::Display) -> CommError {
    CommError::Upload {
        path: path.to_string(),
        reason: reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::PlannedEntry;
    use crate::recipe::model::Upload;

    #[test]
    fn owner_fields() {
        let o = tar_owner(Some("app:www"));
        assert_eq!((o.uname.as_str(), o.gname.as_str()), ("app", "www"));
        let o = tar_owner(Some("1001"));
        assert_eq!(
            (o.uid, o.uname.as_str(), o.gname.as_str()),
            (1001, "", "root")
        );
        assert_eq!(dir_mode(0o640), 0o750);
    }

    #[test]
    fn directory_items_include_parents_and_root() {
        let plan = UploadPlan {
            upload: Upload {
                source: "/src".into(),
                is_dir: true,
                destination: "/opt/app".into(),
                mode: Some(0o644),
                owner: None,
                before: None,
            },
            entries: vec![PlannedEntry {
                rel: "a/b/c.txt".into(),
                kind: EntryKind::File,
                size: 3,
                mode: 0o600,
                sha256: Some([1; 32]),
            }],
        };
        let it = items(&[plan]);
        let dests: Vec<_> = it
            .iter()
            .map(|i| (i.dest.as_str(), i.mode, i.root))
            .collect();
        assert_eq!(
            dests,
            vec![
                ("/opt/app", 0o755, true),
                ("/opt/app/a", 0o755, false),
                ("/opt/app/a/b", 0o755, false),
                ("/opt/app/a/b/c.txt", 0o644, false),
            ]
        );
    }

    fn item(dest: &str, kind: EntryKind, size: u64) -> Item {
        Item {
            dest: dest.into(),
            local: PathBuf::from("/src").join(dest.trim_start_matches('/')),
            kind,
            size,
            mode: 0o750,
            owner: Some("app".into()),
            sha256: None,
            root: false,
        }
    }

    fn tree(files_per_dir: usize) -> Vec<Item> {
        let mut v = vec![
            item("/o", EntryKind::Dir, 0),
            item("/o/empty", EntryKind::Dir, 0),
        ];
        for d in ["a", "b", "b/c"] {
            v.push(item(&format!("/o/{d}"), EntryKind::Dir, 0));
            for f in 0..files_per_dir {
                v.push(item(&format!("/o/{d}/f{f:03}"), EntryKind::File, 2048));
            }
        }
        v.sort_by(|a, b| a.dest.cmp(&b.dest));
        v
    }

    #[test]
    fn streams_share_nothing_but_the_directories_they_need() {
        let all = tree(100);
        let streams = split_streams(all.clone(), 2, 10);
        assert_eq!(streams.len(), 2);
        let leaves = |s: &[Item]| s.iter().filter(|i| i.kind != EntryKind::Dir).count();
        let (a, b) = (leaves(&streams[0]), leaves(&streams[1]));
        assert_eq!(a + b, 300);
        assert!(a.abs_diff(b) <= 1, "balanced: {a} vs {b}");
        for s in &streams {
            // sorted, so a directory comes before what is in it
            assert!(s.windows(2).all(|w| w[0].dest < w[1].dest));
            // every directory on the way to an entry travels with it, with its own metadata
            for i in s.iter().filter(|i| i.kind != EntryKind::Dir) {
                let mut p = i.dest.as_str();
                while let Some((parent, _)) = p.rsplit_once('/') {
                    if all.iter().any(|d| d.dest == parent) {
                        let d = s.iter().find(|d| d.dest == parent).expect(parent);
                        assert_eq!((d.mode, d.owner.as_deref()), (0o750, Some("app")));
                    }
                    p = parent;
                }
            }
        }
        // each entry exactly once; directories possibly in both; the empty one somewhere
        let mut seen: Vec<&str> = streams
            .iter()
            .flatten()
            .filter(|i| i.kind != EntryKind::Dir)
            .map(|i| i.dest.as_str())
            .collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 300);
        assert!(streams[0].iter().any(|i| i.dest == "/o/empty"));
    }

    #[test]
    fn few_files_or_one_stream_stay_whole() {
        let all = tree(3);
        let one = split_streams(all.clone(), 2, 10);
        assert_eq!(one.len(), 1);
        assert_eq!(
            one[0].iter().map(|i| &i.dest).collect::<Vec<_>>(),
            all.iter().map(|i| &i.dest).collect::<Vec<_>>()
        );
        assert_eq!(split_streams(tree(100), 1, 10).len(), 1);
    }

    #[test]
    fn one_big_file_gets_a_stream_of_its_own() {
        let mut all = tree(10);
        all.push(item("/o/big", EntryKind::File, 64 << 20));
        all.sort_by(|a, b| a.dest.cmp(&b.dest));
        let streams = split_streams(all, 2, 10);
        assert_eq!(streams.len(), 2);
        let big = streams
            .iter()
            .position(|s| s.iter().any(|i| i.dest == "/o/big"))
            .unwrap();
        let leaves = streams[big]
            .iter()
            .filter(|i| i.kind != EntryKind::Dir)
            .count();
        assert_eq!(leaves, 1, "the big file's stream holds nothing else");
    }

    /// The unpack fragment under a real `sh` and `tar`, fed a stream built from the items as
    /// the transports build it: files, modes and a symlink land, and an existing directory
    /// keeps its own mode.
    #[test]
    fn items_unpack_under_sh_and_an_existing_directory_keeps_its_mode() {
        use std::io::Write;
        let src = tempfile::tempdir().unwrap();
        std::fs::create_dir(src.path().join("keep")).unwrap();
        std::fs::write(src.path().join("keep/f.txt"), b"hi").unwrap();
        let dst = tempfile::tempdir().unwrap();
        let out = dst.path().join("out");
        let entry = |rel: &str, kind: EntryKind, size: u64| PlannedEntry {
            rel: rel.into(),
            kind,
            size,
            mode: 0o600,
            sha256: None,
        };
        let plan = UploadPlan {
            upload: Upload {
                source: src.path().to_path_buf(),
                is_dir: true,
                destination: out.display().to_string(),
                mode: Some(0o644),
                owner: None,
                before: None,
            },
            entries: vec![
                entry("keep", EntryKind::Dir, 0),
                entry("keep/f.txt", EntryKind::File, 2),
                entry("l", EntryKind::Symlink("keep".into()), 0),
            ],
        };
        let all = items(&[plan]);
        let mut tar_bytes = Vec::new();
        for it in all.iter().filter(|i| !i.root) {
            tar_header(&mut tar_bytes, it, tar_mtime());
            if it.kind == EntryKind::File {
                tar_bytes.extend(std::fs::read(&it.local).unwrap());
                tar_bytes.extend(std::iter::repeat_n(0u8, tar::padding(it.size)));
            }
        }
        tar::finish(&mut tar_bytes);
        std::fs::create_dir_all(out.join("keep")).unwrap();
        std::fs::set_permissions(out.join("keep"), std::fs::Permissions::from_mode(0o700)).unwrap();
        let script = format!(
            "set -e\numask 022\n{}{}",
            owners_and_roots(&all, &all),
            tar_extract("-", true)
        );
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg(&script)
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&tar_bytes).unwrap();
        let done = child.wait_with_output().unwrap();
        assert!(
            done.status.success(),
            "{script}\n{}",
            String::from_utf8_lossy(&done.stderr)
        );
        let mode = |p: &Path| std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(std::fs::read(out.join("keep/f.txt")).unwrap(), b"hi");
        assert_eq!(mode(&out.join("keep/f.txt")), 0o644);
        assert_eq!(
            mode(&out.join("keep")),
            0o700,
            "an existing directory keeps its mode"
        );
        assert_eq!(
            std::fs::read_link(out.join("l")).unwrap(),
            Path::new("keep")
        );
    }
}
