//! Uploads over SSM: stage in S3, fetch on the builder through presigned URLs, verify.
//!
//! Small files (below 16 MiB), directories and symlinks of all uploads travel as one tar
//! object (one object and one URL whatever the file count); large files are staged as objects
//! of their own, streamed from disk. Every object is put with its `ChecksumSHA256`, so S3
//! refuses bytes that changed on the way in. Then one `AWS-RunShellScript` command, as root,
//! fetches each URL (curl, else wget, else python3), checks the object's sha256, unpacks or
//! moves it into place with the recipe's mode and owner, and finally checks every uploaded
//! file's sha256 where it landed (`sha256sum -c`). The objects are removed by the build's undo
//! stack (`Undo::DeleteStagedObjects`), success or not.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use base64::Engine;
use sha2::{Digest, Sha256};

use super::{Done, SsmCommunicator};
use crate::communicator::ssh::tarball::{self, Kind, Owner};
use crate::communicator::{CommError, EntryKind, UploadPlan, shell_quote};

/// Files at least this large are staged as objects of their own (streamed from disk); smaller
/// ones go into the tar object, built in memory.
const OWN_OBJECT: u64 = 16 * 1024 * 1024;

#[derive(Debug, Clone)]
struct Item {
    dest: String,
    local: PathBuf,
    kind: EntryKind,
    size: u64,
    mode: u32,
    owner: Option<String>,
    sha256: Option<[u8; 32]>,
    /// The destination directory of a directory upload: created by the script if missing,
    /// never by tar, so an existing directory (or symlink) there keeps its metadata.
    root: bool,
}

fn dir_mode(mode: u32) -> u32 {
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

fn local_mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0o755)
}

/// The plans as things to create, every directory on the way included (same rules as SSH).
fn items(plans: &[UploadPlan]) -> Vec<Item> {
    let mut out = BTreeMap::new();
    for plan in plans {
        let up = &plan.upload;
        if !up.is_dir {
            for e in &plan.entries {
                out.insert(
                    up.destination.clone(),
                    Item {
                        dest: up.destination.clone(),
                        local: up.source.clone(),
                        kind: e.kind.clone(),
                        size: e.size,
                        mode: up.mode.unwrap_or(e.mode),
                        owner: up.owner.clone(),
                        sha256: e.sha256,
                        root: false,
                    },
                );
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
                .unwrap_or_else(|| local_mode(&up.source.join(rel))),
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

fn tar_owner(owner: Option<&str>) -> Owner {
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

fn upload_err(path: &str, reason: impl std::fmt::Display) -> CommError {
    CommError::Upload {
        path: path.to_string(),
        reason: reason.to_string(),
    }
}

/// The tar object for `items` (no root directories) and its sha256.
fn build_tar(items: &[Item]) -> Result<(Vec<u8>, [u8; 32]), CommError> {
    let mtime = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut buf = Vec::new();
    for item in items {
        let owner = tar_owner(item.owner.as_deref());
        let name = item.dest.trim_start_matches('/');
        let kind = match &item.kind {
            EntryKind::File => Kind::File { size: item.size },
            EntryKind::Dir => Kind::Dir,
            EntryKind::Symlink(t) => Kind::Symlink { target: t },
        };
        tarball::header(&mut buf, name, &kind, item.mode, &owner, mtime);
        if item.kind == EntryKind::File {
            let f = std::fs::File::open(&item.local)
                .map_err(|e| upload_err(&item.dest, format!("{}: {e}", item.local.display())))?;
            let n = f
                .take(item.size)
                .read_to_end(&mut buf)
                .map_err(|e| upload_err(&item.dest, e))?;
            if n as u64 != item.size {
                return Err(upload_err(
                    &item.dest,
                    format!("{} changed while uploading", item.local.display()),
                ));
            }
            buf.extend(std::iter::repeat_n(0u8, tarball::padding(item.size)));
        }
    }
    tarball::finish(&mut buf);
    let hash: [u8; 32] = Sha256::digest(&buf).into();
    Ok((buf, hash))
}

/// The download helper every staged object goes through on the builder.
pub(super) const FETCH: &str = r#"fetch() {
  if command -v curl >/dev/null 2>&1; then curl -fsS --retry 3 -o "$2" "$1"
  elif command -v wget >/dev/null 2>&1; then wget -q -O "$2" "$1"
  elif command -v python3 >/dev/null 2>&1; then python3 -c 'import shutil, sys, urllib.request
with urllib.request.urlopen(sys.argv[1]) as r, open(sys.argv[2], "wb") as f: shutil.copyfileobj(r, f, 1 << 20)' "$1" "$2"
  else echo "bake: the builder has neither curl, wget nor python3 to fetch staged uploads" >&2; return 1
  fi
}
check() { printf '%s  %s\n' "$1" "$2" | sha256sum -c --quiet - >/dev/null 2>&1 || { echo "bake: $3: sha256 mismatch after download (expected $1)" >&2; exit 1; }; }
"#;

pub async fn upload(c: &SsmCommunicator, plans: &[UploadPlan]) -> Result<(), CommError> {
    let all = items(plans);
    if all.is_empty() {
        return Ok(());
    }
    let total: u64 = all
        .iter()
        .filter(|i| i.kind == EntryKind::File)
        .map(|i| i.size)
        .sum();
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
    let mut users = BTreeSet::new();
    let mut groups = BTreeSet::new();
    for item in small.iter().chain(&large) {
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
    for root in small.iter().filter(|i| i.root) {
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
    script.push_str("T=$(mktemp -d /tmp/bake-upload.XXXXXXXX)\ntrap 'rm -rf \"$T\"' EXIT\n");

    let files: Vec<(String, [u8; 32])> = small
        .iter()
        .chain(&large)
        .filter(|i| i.kind == EntryKind::File)
        .filter_map(|i| i.sha256.map(|h| (i.dest.clone(), h)))
        .collect();

    let tar_items: Vec<Item> = small.into_iter().filter(|i| !i.root).collect();
    if !tar_items.is_empty() {
        let small_bytes: u64 = tar_items
            .iter()
            .filter(|i| i.kind == EntryKind::File)
            .map(|i| i.size)
            .sum();
        let (tar, hash) = tokio::task::spawn_blocking(move || build_tar(&tar_items))
            .await
            .map_err(|e| CommError::Protocol(format!("building the upload bundle: {e}")))??;
        let key = format!("{stage}bundle.tar");
        let url = put(
            c,
            &bucket,
            &key,
            ByteStream::from(tar),
            &hash,
            expiry,
            "upload bundle",
        )
        .await?;
        done += small_bytes;
        c.sink.upload_progress(done, total);
        script.push_str(&format!(
            "fetch {} \"$T/bundle.tar\"\ncheck {} \"$T/bundle.tar\" 'upload bundle'\n\
             k=\ntar --help 2>/dev/null | grep -q -e --keep-directory-symlink && k=--keep-directory-symlink\n\
             tar -x -p --same-owner --no-overwrite-dir $k -C / -f \"$T/bundle.tar\"\nrm -f \"$T/bundle.tar\"\n",
            shell_quote(&url),
            hex::encode(hash)
        ));
    }
    for (n, item) in large.iter().enumerate() {
        let hash = item.sha256.unwrap_or_default();
        let name = item
            .dest
            .rsplit('/')
            .next()
            .filter(|s| !s.is_empty())
            .unwrap_or("file");
        let key = format!("{stage}{n:04}-{name}");
        let body = ByteStream::from_path(&item.local)
            .await
            .map_err(|e| upload_err(&item.dest, format!("{}: {e}", item.local.display())))?;
        let url = put(c, &bucket, &key, body, &hash, expiry, &item.dest).await?;
        done += item.size;
        c.sink.upload_progress(done, total);
        let d = shell_quote(&item.dest);
        let mut s = format!(
            "d={d}\nmkdir -p -- \"$(dirname -- \"$d\")\"\nfetch {} \"$d.bake-part\"\ncheck {} \"$d.bake-part\" {d}\nchmod {:o} -- \"$d.bake-part\"\n",
            shell_quote(&url),
            hex::encode(hash),
            item.mode & 0o7777
        );
        if let Some(owner) = &item.owner {
            s.push_str(&format!(
                "chown -- {} \"$d.bake-part\"\n",
                shell_quote(owner)
            ));
        }
        s.push_str("mv -f -- \"$d.bake-part\" \"$d\"\n");
        script.push_str(&s);
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

/// Stages one object with its sha256 and returns a presigned GET URL for it.
pub(super) async fn put(
    c: &SsmCommunicator,
    bucket: &str,
    key: &str,
    body: ByteStream,
    sha256: &[u8; 32],
    expiry: Duration,
    what: &str,
) -> Result<String, CommError> {
    let s3 = &c.clients.s3;
    s3.put_object()
        .bucket(bucket)
        .key(key)
        .body(body)
        .checksum_sha256(base64::engine::general_purpose::STANDARD.encode(sha256))
        .send()
        .await
        .map_err(|e| {
            upload_err(
                what,
                format!(
                    "staging in s3://{bucket}/{key}: {}",
                    crate::aws::AwsError::from_sdk("PutObject", Some(key), e)
                ),
            )
        })?;
    let conf = PresigningConfig::expires_in(expiry)
        .map_err(|e| CommError::Protocol(format!("presigning: {e}")))?;
    let req = s3
        .get_object()
        .bucket(bucket)
        .key(key)
        .presigned(conf)
        .await
        .map_err(|e| upload_err(what, format!("presigning s3://{bucket}/{key}: {e}")))?;
    Ok(req.uri().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::communicator::PlannedEntry;
    use crate::recipe::model::Upload;

    #[test]
    fn directory_items_include_parents_and_root() {
        let plan = UploadPlan {
            upload: Upload {
                source: "/src".into(),
                is_dir: true,
                destination: "/opt/app".into(),
                mode: Some(0o644),
                owner: None,
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
}
