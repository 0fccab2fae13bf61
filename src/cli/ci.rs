//! CI-native results: GitHub Actions annotations (`::error file=…,line=…,col=…::`), step
//! outputs (`$GITHUB_OUTPUT`) and the job summary (`$GITHUB_STEP_SUMMARY`), and GitLab's
//! dotenv report (`--dotenv FILE`). The step output groups are drawn by the UI.
//!
//! Output names: with one recipe, `ami_id`, `ami_name`, `region`, `fingerprint`, `cached`,
//! and `ami_id_<region>` for every region when the image has copies; the same names prefixed
//! by `<recipe>_` are always written, so several recipes never overwrite each other; `builds`
//! holds all of it as one JSON array (for `fromJSON`). Names are lowercase with every
//! character outside `[a-z0-9_]` as `_` (`ami_id_us_west_2`). The dotenv report has the same
//! names in upper case behind `BAKE_` (`BAKE_AMI_ID`, `BAKE_WEB_AMI_ID_US_WEST_2`).

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use super::report::Diagnostic;
use crate::pipeline::BuildResult;
use crate::ui::github_actions;

/// One build of the run as CI sees it: a result, or why there is none.
pub enum Row<'a> {
    Built(&'a BuildResult),
    Failed { recipe: &'a str, error: &'a str },
}

/// Annotations for recipe diagnostics, on stderr (the runner reads workflow commands on both
/// streams; stdout may carry JSON).
pub fn annotate(diagnostics: &[Diagnostic]) {
    if !github_actions() {
        return;
    }
    for d in diagnostics {
        eprintln!("{}", annotation(d));
    }
}

/// `::error file=F,line=L,col=C::message` (help on a second line of the message).
pub fn annotation(d: &Diagnostic) -> String {
    let mut props = Vec::new();
    if let Some(f) = &d.file {
        props.push(format!("file={}", property(&workspace_relative(f))));
    }
    if let Some(l) = d.line {
        props.push(format!("line={l}"));
    }
    if let Some(c) = d.column {
        props.push(format!("col={c}"));
    }
    let mut msg = d.message.clone();
    if !d.help.is_empty() {
        msg.push_str(&format!("\nhelp: {}", d.help));
    }
    let props = if props.is_empty() {
        String::new()
    } else {
        format!(" {}", props.join(","))
    };
    format!("::error{props}::{}", data(&msg))
}

/// A failed build as an annotation (no file: the recipe loaded; the failure is the build's).
pub fn annotate_failure(recipe: &str, error: &str) {
    if github_actions() {
        eprintln!(
            "::error title={}::{}",
            property(&format!("bake build {recipe} failed")),
            data(error)
        );
    }
}

/// Paths in annotations are relative to the checkout, as GitHub links them.
fn workspace_relative(p: &Path) -> String {
    std::env::var_os("GITHUB_WORKSPACE")
        .and_then(|w| p.strip_prefix(w).ok().map(Path::to_path_buf))
        .unwrap_or_else(|| p.to_path_buf())
        .display()
        .to_string()
}

/// Workflow command data: `%`, CR and LF escaped (the runner's own escaping).
fn data(s: &str) -> String {
    s.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

/// Workflow command property values also escape `:` and `,`.
fn property(s: &str) -> String {
    data(s).replace(':', "%3A").replace(',', "%2C")
}

/// An output name part: lowercase, `[a-z0-9_]` only.
fn name_part(s: &str) -> String {
    s.chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '_') => c,
            _ => '_',
        })
        .collect()
}

/// Every output (name, value) of the run; `single`: the run had exactly one recipe.
pub fn outputs(rows: &[Row<'_>], single: bool) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for b in rows.iter().filter_map(|r| match r {
        Row::Built(b) => Some(*b),
        Row::Failed { .. } => None,
    }) {
        let mut vals = vec![
            ("ami_id".to_string(), b.ami_id.clone()),
            ("ami_name".into(), b.ami_name.clone()),
            ("region".into(), b.region.clone()),
            ("fingerprint".into(), b.fingerprint.clone()),
            ("cached".into(), b.cached.to_string()),
        ];
        if b.regions.len() > 1 {
            for r in &b.regions {
                vals.push((format!("ami_id_{}", name_part(&r.region)), r.ami_id.clone()));
            }
        }
        let prefix = name_part(&b.recipe);
        for (k, v) in &vals {
            out.push((format!("{prefix}_{k}"), v.clone()));
        }
        if single {
            out.extend(vals);
        }
    }
    out
}

/// The `builds` output: every result as one JSON line.
fn builds_json(rows: &[Row<'_>]) -> String {
    let all: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| match r {
            Row::Built(b) => serde_json::json!({
                "recipe": b.recipe, "ami_id": b.ami_id, "ami_name": b.ami_name,
                "region": b.region, "fingerprint": b.fingerprint, "cached": b.cached,
                "regions": b.regions.iter()
                    .map(|r| (r.region.clone(), serde_json::Value::from(r.ami_id.clone())))
                    .collect::<serde_json::Map<_, _>>(),
            }),
            Row::Failed { recipe, error } => {
                serde_json::json!({ "recipe": recipe, "error": error })
            }
        })
        .collect();
    serde_json::Value::from(all).to_string()
}

/// On GitHub Actions: the outputs appended to `$GITHUB_OUTPUT` and the summary table to
/// `$GITHUB_STEP_SUMMARY` (each only when the runner set it).
pub fn github(rows: &[Row<'_>], single: bool) -> std::io::Result<()> {
    if !github_actions() {
        return Ok(());
    }
    if let Some(p) = std::env::var_os("GITHUB_OUTPUT").filter(|p| !p.is_empty()) {
        let mut text: String = outputs(rows, single)
            .iter()
            .map(|(k, v)| format!("{k}={v}\n"))
            .collect();
        let _ = writeln!(text, "builds={}", builds_json(rows));
        append(Path::new(&p), &text)?;
    }
    if let Some(p) = std::env::var_os("GITHUB_STEP_SUMMARY").filter(|p| !p.is_empty()) {
        append(Path::new(&p), &summary(rows))?;
    }
    Ok(())
}

fn append(path: &Path, text: &str) -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?
        .write_all(text.as_bytes())
}

/// The job summary: one markdown table row per recipe.
pub fn summary(rows: &[Row<'_>]) -> String {
    let mut t = String::from(
        "### bake build\n\n| recipe | region | image | fingerprint | result | copies |\n\
         |---|---|---|---|---|---|\n",
    );
    for r in rows {
        let _ = match r {
            Row::Built(b) => {
                let copies: Vec<String> = b
                    .regions
                    .iter()
                    .skip(1)
                    .map(|r| format!("{} `{}`", r.region, r.ami_id))
                    .collect();
                writeln!(
                    t,
                    "| {} | {} | `{}` {} | `{}` | {} | {} |",
                    cell(&b.recipe),
                    b.region,
                    b.ami_id,
                    cell(&b.ami_name),
                    &b.fingerprint[..b.fingerprint.len().min(12)],
                    if b.cached { "cache hit" } else { "built" },
                    copies.join(", ")
                )
            }
            Row::Failed { recipe, error } => writeln!(
                t,
                "| {} | | | | **failed**: {} | |",
                cell(recipe),
                cell(error)
            ),
        };
    }
    t.push('\n');
    t
}

/// Text safe inside a markdown table cell.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace(['\r', '\n'], " ")
}

/// GitLab's dotenv report (`artifacts: reports: dotenv:`): `BAKE_<NAME>=value` lines,
/// written whole (a temp file renamed over `path`).
pub fn dotenv(path: &Path, rows: &[Row<'_>], single: bool) -> std::io::Result<()> {
    let text: String = outputs(rows, single)
        .iter()
        .map(|(k, v)| format!("BAKE_{}={v}\n", k.to_ascii_uppercase()))
        .collect();
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotations_escape_as_the_runner_reads_them() {
        let d = Diagnostic {
            file: Some("recipes/a,b.toml".into()),
            line: Some(3),
            column: Some(7),
            message: "100% wrong: x".into(),
            help: "fix it".into(),
        };
        assert_eq!(
            annotation(&d),
            "::error file=recipes/a%2Cb.toml,line=3,col=7::100%25 wrong: x%0Ahelp: fix it"
        );
    }

    #[test]
    fn output_names_are_safe_and_prefixed_by_recipe() {
        assert_eq!(name_part("web-App.1"), "web_app_1");
        assert_eq!(cell("a|b\nc"), "a\\|b c");
    }
}
