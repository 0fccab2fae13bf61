//! The builder-side shell of S3 staging (SSM uploads and scripts): the download helper that
//! fetches a presigned URL with whatever the image has (curl, wget, python3), the sha256 check
//! every staged object passes, and the stub that runs a staged script.

use super::script::shell_quote;

/// The download helper every staged object goes through on the builder.
pub(crate) const FETCH: &str = r#"fetch() {
  if command -v curl >/dev/null 2>&1; then curl -fsS --retry 3 -o "$2" "$1"
  elif command -v wget >/dev/null 2>&1; then wget -q -O "$2" "$1"
  elif command -v python3 >/dev/null 2>&1; then python3 -c 'import shutil, sys, urllib.request
with urllib.request.urlopen(sys.argv[1]) as r, open(sys.argv[2], "wb") as f: shutil.copyfileobj(r, f, 1 << 20)' "$1" "$2"
  else echo "bake: the builder has neither curl, wget nor python3 to fetch staged uploads" >&2; return 1
  fi
}
check() { printf '%s  %s\n' "$1" "$2" | sha256sum -c --quiet - >/dev/null 2>&1 || { echo "bake: $3: sha256 mismatch after download (expected $1)" >&2; exit 1; }; }
"#;

/// The command text that fetches the staged script at `url`, checks it against `sha256_hex`
/// and runs it under `sh` from a private temp file removed on exit.
pub(crate) fn run_staged_script(url: &str, sha256_hex: &str) -> String {
    format!(
        "set -e\n{FETCH}f=$(mktemp /tmp/bake-script.XXXXXXXX)\ntrap 'rm -f \"$f\"' EXIT\n\
         fetch {} \"$f\"\ncheck {sha256_hex} \"$f\" 'staged script'\nsh \"$f\"\n",
        shell_quote(url),
    )
}
