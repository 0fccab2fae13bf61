//! The builder-side shell around an SFTP upload: the root command that prepares the parent
//! directory and finds `sftp-server`, and the one that verifies the temp file and moves it
//! into place. The SFTP protocol itself is `remote::ssh::sftp`; every shell it sends is here.

use super::items::Item;
use super::script::shell_quote;
use super::verify;

/// Where `sftp-server` lives on the distributions builders run; the first executable wins.
pub(crate) const SFTP_SERVERS: &[&str] = &[
    "/usr/lib/openssh/sftp-server",
    "/usr/libexec/openssh/sftp-server",
    "/usr/lib/ssh/sftp-server",
    "/usr/libexec/sftp-server",
    "/usr/lib/sftp-server",
];

/// The root shell that creates `parent` and names the first `sftp-server` binary it finds (on
/// a line `bake-sftp-server:<path>`, empty when there is none).
pub(crate) fn prepare_script(parent: &str) -> String {
    let candidates: Vec<String> = SFTP_SERVERS.iter().map(|s| shell_quote(s)).collect();
    format!(
        "set -e\numask 022\nmkdir -p -- {}\n\
         for s in {}; do [ -x \"$s\" ] && {{ echo \"bake-sftp-server:$s\"; exit 0; }}; done\n\
         echo bake-sftp-server:\n",
        shell_quote(parent),
        candidates.join(" ")
    )
}

/// The root shell that checks the temp file's hash and renames it into place; the temp file is
/// removed whatever happens.
pub(crate) fn finish_script(item: &Item, temp: &str, hasher: &str) -> String {
    let mut script = format!("set -e\nt={}\n{}", shell_quote(temp), verify::TEMP_TRAP);
    script.push_str(&verify::verify_and_move(item, hasher));
    script
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `prepare_script` under sh in a temp dir: the directory appears and the line that
    /// names the server is there (empty or a path that exists).
    #[test]
    fn prepare_creates_the_parent_and_names_a_server_line() {
        let dir = tempfile::tempdir().unwrap();
        let parent = dir.path().join("a b/c'd");
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(prepare_script(parent.to_str().unwrap()))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert!(parent.is_dir());
        let stdout = String::from_utf8(out.stdout).unwrap();
        let server = stdout
            .lines()
            .find_map(|l| l.strip_prefix("bake-sftp-server:"))
            .expect("a server line");
        assert!(server.is_empty() || std::path::Path::new(server).exists());
    }
}
