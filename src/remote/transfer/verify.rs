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
    use super::*;

    #[test]
    fn parses_both_hasher_formats() {
        let h = "a".repeat(64);
        let text = format!("{h} */opt/x y\n{h}  /opt/z\n\\{h}  /opt/w\\nq\n");
        let m = parse_hashes(&text);
        assert_eq!(m.get("/opt/x y"), Some(&h));
        assert_eq!(m.get("/opt/z"), Some(&h));
        assert_eq!(m.len(), 3);
    }
}
