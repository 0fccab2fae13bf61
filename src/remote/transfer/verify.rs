//! Checking on the builder that what landed is what was sent: the hash command, reading its
//! output, and the verify-and-move fragment a large file passes through before it replaces its
//! destination. Shared by the SSH raw stream and SFTP, so both check the same way.

use std::collections::BTreeMap;

use super::items::{Item, upload_err};
use super::script::shell_quote;
use crate::plan::digest;
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

/// dd's block size for segments; [`digest::SEGMENT`] is a whole number of them. Small enough
/// that what dd reads stays in the CPU cache until it writes it: receiving and hashing 1 GiB
/// piped in took 5.8 s wall and 6.0 s system CPU with 1 MiB blocks, 1.4-1.5 s and 1.8-2.0 s
/// with 128 KiB (64 KiB and 32 KiB no better), where `cat` and one `openssl dgst` take 1.6 s
/// (ext4, 2 cores, 2026-12-07).
const DD_BLOCK: u64 = 128 << 10;

/// Shell (a brace group, to run in the background) that hashes segment `$i` of `$t` into
/// `$t.h$i` (its lowercase hex sha256 and a newline).
fn hash_segment(hasher: &str) -> String {
    let blocks = digest::SEGMENT / DD_BLOCK;
    format!(
        "{{ dd if=\"$t\" bs={DD_BLOCK} skip=$((i*{blocks})) count={blocks} 2>/dev/null \
         | {hasher} | cut -c1-64 >\"$t.h$i\"; }}"
    )
}

/// Shell that sets `$h` to the segmented digest of `$t` from the `n` segment hashes in
/// `$t.h0`…, then removes them (see [`digest::combine`]: the header line, then each
/// segment's hex line).
fn combine_segments(n: u64, hasher: &str) -> String {
    format!(
        "h=$({{ printf '%s\\n' {header}; i=0; while [ $i -lt {n} ]; do cat -- \"$t.h$i\"; \
         i=$((i+1)); done; }} | {hasher} | cut -c1-64)\nrm -f -- \"$t\".h*\n",
        header = shell_quote(digest::header().trim_end()),
    )
}

/// Shell that sets `$h` to the digest of the temp file `$t` as the fingerprint defines it:
/// plain sha256, or for a file above [`digest::SEGMENT`] its segments hashed side by side,
/// as many at a time as the builder has cores.
fn digest_of_temp(item: &Item, hasher: &str) -> String {
    if !digest::is_segmented(item.size) {
        return format!("h=$({hasher} \"$t\" | cut -c1-64)\n");
    }
    let n = digest::segments(item.size);
    format!(
        "j=$(nproc 2>/dev/null || echo 2)\ni=0\nwhile [ $i -lt {n} ]; do\n{} &\n\
         i=$((i+1))\n[ $((i % j)) -ne 0 ] || wait\ndone\nwait\n{}",
        hash_segment(hasher),
        combine_segments(n, hasher)
    )
}

/// The trap that removes the temp file `$t` and any segment hashes beside it.
pub(crate) const TEMP_TRAP: &str = "trap 'rm -f -- \"$t\" \"$t\".h*' EXIT\n";

/// Shell that refuses `$t` (exit 3, `bake-sha256:<hash>` on stderr) unless `$h` matches
/// `item`'s digest, then gives it `item`'s owner and mode and renames it onto the destination.
fn check_and_move(item: &Item) -> String {
    let expected = item.sha256.map(hex::encode).unwrap_or_default();
    let mut script = String::new();
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

/// Shell that hashes the temp file `$t`, refuses it (exit 3, `bake-sha256:<hash>` on stderr)
/// unless it matches `item`'s digest, then gives it `item`'s owner and mode and renames it
/// onto the destination. Shared by SFTP and SSM, so both check the same way.
pub(crate) fn verify_and_move(item: &Item, hasher: &str) -> String {
    format!("{}{}", digest_of_temp(item, hasher), check_and_move(item))
}

/// The root shell that receives one large file on stdin into a temp file next to its
/// destination (creating the parent first), then the sender's digest of the bytes it sent on
/// one line after them; the file replaces its destination only when exactly its planned size
/// arrived and that digest is the planned one (exit 3 with `bake-sha256:<digest>` on stderr
/// otherwise, as [`verify_and_move`]). The temp file is removed whatever happens.
///
/// Why the builder takes the sender's digest instead of hashing the file again: the SSH
/// channel authenticates every byte (AES-GCM or ChaCha20-Poly1305), so what reaches this
/// shell is what bake sent, and bake hashes what it sends as it reads it
/// ([`digest::Streaming`]), which catches a file changed since it was fingerprinted. Reading
/// the gigabyte again here cost the lab's two shared cores about 1.8 s of CPU per GiB
/// (benches/README.md, the 1 GiB build); on EC2 it cost the builder the same.
pub(crate) fn receive_script(item: &Item) -> String {
    let dest = shell_quote(&item.dest);
    let parent = shell_quote(
        item.dest
            .rsplit_once('/')
            .map_or("/", |(p, _)| if p.is_empty() { "/" } else { p }),
    );
    let size = item.size;
    let mut script = format!(
        "set -e\numask 022\nmkdir -p -- {parent}\numask 077\nt={dest}.bake-upload.$$\n{TEMP_TRAP}\
         : >\"$t\"\n"
    );
    // Exactly `size` bytes, so the digest line after them stays on stdin. `iflag=fullblock`:
    // from a pipe, a plain `count=` would count short reads. dd's stderr stays: on success
    // nobody reads it, on failure it names the cause (a full disk, most often).
    let (blocks, rest) = (size / DD_BLOCK, size % DD_BLOCK);
    if blocks > 0 {
        script.push_str(&format!(
            "dd bs={DD_BLOCK} count={blocks} iflag=fullblock >>\"$t\"\n"
        ));
    }
    if rest > 0 {
        script.push_str(&format!("dd bs={rest} count=1 iflag=fullblock >>\"$t\"\n"));
    }
    script.push_str(&format!(
        "IFS= read -r h || h=\n\
         n=$(wc -c <\"$t\" | tr -d ' ')\n\
         [ \"$n\" = {size} ] || {{ echo \"received $n of {size} bytes\" >&2; exit 1; }}\n"
    ));
    script.push_str(&check_and_move(item));
    script
}

/// What the sender writes after a file's bytes for [`receive_script`]: the digest of the
/// bytes it sent, hex, on a line of its own.
pub(crate) fn trailer(sent: [u8; 32]) -> Vec<u8> {
    format!("{}\n", hex::encode(sent)).into_bytes()
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

    /// The digest the fingerprint gives `bytes` (plain or segmented).
    fn digest_of(bytes: &[u8]) -> [u8; 32] {
        if digest::is_segmented(bytes.len() as u64) {
            let segs: Vec<String> = bytes
                .chunks(digest::SEGMENT as usize)
                .map(|c| hex::encode(Sha256::digest(c)))
                .collect();
            digest::combine(segs.iter().map(String::as_str))
        } else {
            Sha256::digest(bytes).into()
        }
    }

    fn item(dest: &str, expected: &[u8]) -> Item {
        Item {
            dest: dest.to_string(),
            local: "/nonexistent".into(),
            kind: EntryKind::File,
            size: expected.len() as u64,
            mode: 0o640,
            owner: None,
            sha256: Some(digest_of(expected)),
            root: false,
        }
    }

    fn have_openssl() -> bool {
        Command::new("openssl")
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// Runs [`receive_script`] under `sh` with `bytes` and their digest's [`trailer`] on
    /// stdin, as the raw stream sends them.
    fn receive(item: &Item, bytes: &[u8]) -> Result<(), CommError> {
        let mut stream = bytes.to_vec();
        stream.extend(trailer(digest_of(bytes)));
        receive_raw(item, &stream)
    }

    /// Runs [`receive_script`] under `sh` with exactly `bytes` on stdin.
    fn receive_raw(item: &Item, bytes: &[u8]) -> Result<(), CommError> {
        receive_after(item, bytes, "")
    }

    /// Runs `shell` (setting up the builder's limits) and then [`receive_script`] under `sh`
    /// in the C locale, with exactly `bytes` on stdin.
    fn receive_after(item: &Item, bytes: &[u8], shell: &str) -> Result<(), CommError> {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!("{shell}{}", receive_script(item)))
            .env("LC_ALL", "C")
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // A script that fails early stops reading: the rest may meet a closed pipe.
        let _ = child.stdin.take().unwrap().write_all(bytes);
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
    fn a_file_changed_since_it_was_planned_is_a_checksum_error_naming_what_was_sent() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("file");
        std::fs::write(&dest, b"old").unwrap();
        let it = item(dest.to_str().unwrap(), b"hello");
        // Same size, other bytes: the sender's digest of what it sent is not the planned one.
        match receive(&it, b"jello") {
            Err(CommError::Checksum {
                path,
                local,
                remote,
            }) => {
                assert_eq!(path, dest.to_str().unwrap());
                assert_eq!(local, hex::encode(Sha256::digest(b"hello")));
                assert_eq!(remote, hex::encode(Sha256::digest(b"jello")));
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

    #[test]
    fn a_write_error_on_the_builder_is_named_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("big");
        let bytes = vec![5u8; 1 << 20];
        let it = item(dest.to_str().unwrap(), &bytes);
        let mut stream = bytes.clone();
        stream.extend(trailer(digest_of(&bytes)));
        // A file size limit of 64 KiB (dash counts 512-byte blocks) stands for a full disk:
        // dd's write fails with EFBIG.
        let e = receive_after(&it, &stream, "trap '' XFSZ; ulimit -f 128; ").unwrap_err();
        assert!(matches!(e, CommError::Upload { .. }), "{e}");
        assert!(e.to_string().contains("File too large"), "{e}");
        assert!(
            leftovers(dir.path()).is_empty(),
            "{:?}",
            leftovers(dir.path())
        );
    }

    /// A file of two segments and a bit: random-ish so segments differ.
    fn segmented_bytes() -> Vec<u8> {
        let len = 2 * digest::SEGMENT as usize + 777;
        let mut x = 0x2545_f491_4f6c_dd1du64;
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
    fn a_large_file_lands_whole_with_the_digest_line_left_out_of_it() {
        let bytes = segmented_bytes();
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("big");
        let it = item(dest.to_str().unwrap(), &bytes);
        receive(&it, &bytes).unwrap();
        assert!(std::fs::read(&dest).unwrap() == bytes, "content differs");
        // No temp file is left beside it.
        assert_eq!(leftovers(dir.path()), vec!["big".to_string()]);
    }

    #[test]
    fn a_short_or_damaged_stream_is_refused_and_leaves_nothing() {
        let bytes = segmented_bytes();
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("big");
        let it = item(dest.to_str().unwrap(), &bytes);
        // One byte flipped in the middle segment before it was sent: the sender's digest says so.
        let mut bad = bytes.clone();
        bad[digest::SEGMENT as usize + 5] ^= 1;
        match receive(&it, &bad) {
            Err(CommError::Checksum { local, remote, .. }) => {
                assert_eq!(local, hex::encode(digest_of(&bytes)));
                assert_eq!(remote, hex::encode(digest_of(&bad)));
            }
            other => panic!("expected a checksum error, got {other:?}"),
        }
        // A stream cut short (the sender died): the size is wrong, nothing replaces the file.
        let e = receive_raw(&it, &bytes[..bytes.len() - 1]).unwrap_err();
        assert!(matches!(e, CommError::Upload { .. }), "{e}");
        let want = format!("of {} bytes", bytes.len());
        assert!(e.to_string().contains(&want), "{e}");
        // All the bytes but no digest line: refused as well.
        match receive_raw(&it, &bytes) {
            Err(CommError::Checksum { remote, .. }) => assert_eq!(remote, ""),
            other => panic!("expected a checksum error, got {other:?}"),
        }
        assert!(
            leftovers(dir.path()).is_empty(),
            "{:?}",
            leftovers(dir.path())
        );
    }

    /// [`verify_and_move`] on a segmented file already in place (SFTP, SSM): segments hashed
    /// side by side, the same digest; a flipped byte is refused.
    #[test]
    fn verify_and_move_checks_a_segmented_temp_file_with_either_hasher() {
        let bytes = segmented_bytes();
        let mut hashers = vec![hasher(false)];
        if have_openssl() {
            hashers.push(hasher(true));
        }
        for h in hashers {
            let dir = tempfile::tempdir().unwrap();
            let dest = dir.path().join("big");
            let temp = dir.path().join("big.part");
            let it = item(dest.to_str().unwrap(), &bytes);
            let run = |content: &[u8]| {
                std::fs::write(&temp, content).unwrap();
                let script = format!(
                    "set -e\nt={}\n{TEMP_TRAP}{}",
                    shell_quote(temp.to_str().unwrap()),
                    verify_and_move(&it, h)
                );
                Command::new("sh").arg("-c").arg(script).output().unwrap()
            };
            let mut bad = bytes.clone();
            bad[7] ^= 0x80;
            let out = run(&bad);
            assert_eq!(out.status.code(), Some(3), "{h}: {out:?}");
            assert!(!dest.exists(), "{h}");
            let out = run(&bytes);
            assert!(out.status.success(), "{h}: {out:?}");
            assert!(std::fs::read(&dest).unwrap() == bytes, "{h}");
            assert_eq!(leftovers(dir.path()), vec!["big".to_string()], "{h}");
        }
    }
}
