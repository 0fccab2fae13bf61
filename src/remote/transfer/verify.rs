//! Checking on the builder that what landed is what was sent: the hash command, reading its
//! output, and the verify-and-move fragment a large file passes through before it replaces its
//! destination. Shared by the SSH raw stream and SFTP, so both check the same way.

use std::collections::BTreeMap;

use super::script::shell_quote;
use super::staging::{Item, upload_err};
use crate::remote::CommError;

/// The command that prints `HEX…  path` for each path: `openssl dgst -sha256 -r` where the
/// builder has openssl (faster on most images), `sha256sum` otherwise.
pub(crate) fn hasher(openssl: bool) -> &'static str {
    if openssl {
        "openssl dgst -sha256 -r"
    } else {
        "sha256sum"
    }
}

/// Parses `openssl dgst -r` ("HEX *name") and `sha256sum` ("HEX  name", "\HEX  name" when the
/// name needed escaping) output into name -> hex.
pub(crate) fn parse_hashes(text: &str) -> BTreeMap<&str, String> {
    let mut map = BTreeMap::new();
    for line in text.lines() {
        let line = line.strip_prefix('\\').unwrap_or(line);
        if line.len() < 66 || !line.is_char_boundary(64) || !line.is_char_boundary(66) {
            continue;
        }
        let (hex, rest) = line.split_at(64);
        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            continue;
        }
        map.insert(&rest[2..], hex.to_ascii_lowercase());
    }
    map
}

/// Shell that hashes the temp file `$t`, refuses it (exit 3, `bake-sha256:<hash>` on stderr)
/// unless it matches `item`'s sha256, then gives it `item`'s owner and mode and renames it
/// onto the destination. Shared by the raw stream and SFTP, so both check the same way.
pub(crate) fn verify_and_move(item: &Item, hasher: &str) -> String {
    let expected = item.sha256.map(hex::encode).unwrap_or_default();
    let mut script = format!("h=$({hasher} \"$t\" | cut -c1-64)\n");
    if !expected.is_empty() {
        script.push_str(&format!(
            "[ \"$h\" = {expected} ] || {{ echo \"bake-sha256:$h\" >&2; exit 3; }}\n"
        ));
    }
    if let Some(owner) = &item.owner {
        script.push_str(&format!("chown -- {} \"$t\"\n", shell_quote(owner)));
    }
    script.push_str(&format!(
        "chmod {:o} -- \"$t\"\nmv -f -T -- \"$t\" {}\n",
        item.mode & 0o7777,
        shell_quote(&item.dest)
    ));
    script
}

/// The root shell that receives one large file on stdin into a temp file next to its
/// destination (creating the parent first), then passes it through [`verify_and_move`]; the
/// temp file is removed whatever happens.
pub(crate) fn receive_script(item: &Item, hasher: &str) -> String {
    let dest = shell_quote(&item.dest);
    let parent = shell_quote(
        item.dest
            .rsplit_once('/')
            .map_or("/", |(p, _)| if p.is_empty() { "/" } else { p }),
    );
    let mut script = format!(
        "set -e\numask 022\nmkdir -p -- {parent}\numask 077\nt={dest}.bake-upload.$$\n\
         trap 'rm -f -- \"$t\"' EXIT\ncat >\"$t\"\n"
    );
    script.push_str(&verify_and_move(item, hasher));
    script
}

/// Reads the exit status and stderr of [`verify_and_move`]'s script: exit 3 with
/// `bake-sha256:<hex>` on stderr is a checksum mismatch.
pub(crate) fn finish_outcome(
    status: Option<u32>,
    stderr: &str,
    path: String,
    expected: String,
    doing: &str,
) -> Result<(), CommError> {
    match status {
        Some(0) => Ok(()),
        Some(3) => {
            let got = stderr
                .lines()
                .find_map(|l| l.strip_prefix("bake-sha256:"))
                .unwrap_or("unknown")
                .to_string();
            Err(CommError::Checksum {
                path,
                local: expected,
                remote: got,
            })
        }
        _ => Err(upload_err(
            &path,
            format!("{doing} on the builder failed: {stderr}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    use std::process::{Command, Stdio};

    use sha2::{Digest, Sha256};

    use super::*;
    use crate::plan::EntryKind;

    #[test]
    fn parses_both_hasher_formats() {
        let h = "a".repeat(64);
        let text = format!("{h} */opt/x y\n{h}  /opt/z\n\\{h}  /opt/w\\nq\n");
        let m = parse_hashes(&text);
        assert_eq!(m.get("/opt/x y"), Some(&h));
        assert_eq!(m.get("/opt/z"), Some(&h));
        assert_eq!(m.len(), 3);
    }

    fn item(dest: &str, expected: &[u8]) -> Item {
        Item {
            dest: dest.to_string(),
            local: "/nonexistent".into(),
            kind: EntryKind::File,
            size: expected.len() as u64,
            mode: 0o640,
            owner: None,
            sha256: Some(Sha256::digest(expected).into()),
            root: false,
        }
    }

    /// Runs [`receive_script`] under `sh` with `bytes` on stdin, as the raw stream does.
    fn receive(item: &Item, bytes: &[u8]) -> Result<(), CommError> {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(receive_script(item, hasher(false)))
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(bytes).unwrap();
        let out = child.wait_with_output().unwrap();
        let expected = item.sha256.map(hex::encode).unwrap_or_default();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let status = out.status.code().map(|c| c as u32);
        finish_outcome(status, &stderr, item.dest.clone(), expected, "writing")
    }

    fn leftovers(dir: &std::path::Path) -> Vec<String> {
        let mut names: Vec<String> = walk(dir);
        names.sort();
        names
    }

    fn walk(dir: &std::path::Path) -> Vec<String> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p.file_name().unwrap().to_string_lossy().into_owned());
            }
        }
        out
    }

    #[test]
    fn a_matching_file_lands_with_its_mode_in_a_new_directory_and_no_temp_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("new/sub/file");
        let it = item(dest.to_str().unwrap(), b"hello");
        receive(&it, b"hello").unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"hello");
        let mode = std::fs::metadata(&dest).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o640);
        assert_eq!(leftovers(dir.path()), vec!["file".to_string()]);
    }

    #[test]
    fn a_mismatch_is_a_checksum_error_naming_the_builder_hash_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("file");
        std::fs::write(&dest, b"old").unwrap();
        let it = item(dest.to_str().unwrap(), b"hello");
        match receive(&it, b"changed on the way") {
            Err(CommError::Checksum {
                path,
                local,
                remote,
            }) => {
                assert_eq!(path, dest.to_str().unwrap());
                assert_eq!(local, hex::encode(Sha256::digest(b"hello")));
                assert_eq!(remote, hex::encode(Sha256::digest(b"changed on the way")));
            }
            other => panic!("expected a checksum error, got {other:?}"),
        }
        // The destination keeps its old content; the temp file is gone.
        assert_eq!(std::fs::read(&dest).unwrap(), b"old");
        assert_eq!(leftovers(dir.path()), vec!["file".to_string()]);
    }

    #[test]
    fn any_other_failure_is_an_upload_error_with_the_builder_stderr() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("blocker");
        std::fs::write(&blocker, b"").unwrap();
        // The parent is a regular file: mkdir -p fails before anything is written.
        let it = item(blocker.join("file").to_str().unwrap(), b"x");
        let e = receive(&it, b"x").unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, CommError::Upload { .. }), "{msg}");
        assert!(msg.contains("writing on the builder failed"), "{msg}");
    }
}
