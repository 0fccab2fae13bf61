//! Tidy checks on the source tree (after rust-analyzer's `tidy.rs`): the layering that
//! `src/lib.rs` describes, a `//!` doc on every file, no file over 800 lines, and no source
//! folder that common ignore templates would hide.
//!
//! The layering check reads every `crate::…`, `super::…` and `self::…` path in the code
//! (comments and string literals blanked out first), resolves it to the module it names and
//! fails on any that reaches a layer above its own, or a peer where peers must not import each
//! other. Paths relative to the current module (`use child::Item`) only reach down and are not
//! checked. It is a text check, not a compiler one: a path spelled through a `use` alias of a
//! higher module would slip through, which is why such aliases are not used in `src/`.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

/// A set of sibling modules at one level of the layering.
struct Group {
    names: &'static [&'static str],
    /// Whether modules of this group may use each other.
    peers: bool,
}

const fn g(names: &'static [&'static str]) -> Group {
    Group {
        names,
        peers: false,
    }
}

const fn peers(names: &'static [&'static str]) -> Group {
    Group { names, peers: true }
}

/// The layers, per scope (a module path), from the top down: a module may use those in lower
/// groups of its scope, and its own group's members only if `peers`. Items a scope's own
/// `mod.rs` defines (`crate::remote::CommError`) are the scope's interface, open to every
/// module inside it.
const LAYERS: &[(&[&str], &[Group])] = &[
    (
        &[],
        &[
            g(&["cli"]),
            g(&["deploy", "images", "gc"]),
            g(&["pipeline"]),
            g(&["remote"]),
            g(&["plan"]),
            g(&["aws"]),
            g(&["recipe"]),
            peers(&["ui", "retry"]),
        ],
    ),
    (
        &["remote"],
        &[g(&["any"]), g(&["ssh", "ssm"]), g(&["transfer"])],
    ),
    (
        &["remote", "ssh"],
        &[
            g(&["tests"]),
            g(&["upload"]),
            g(&["sftp"]),
            g(&["exec"]),
            g(&["connect"]),
        ],
    ),
    (
        &["remote", "transfer"],
        &[
            peers(&["sftp", "fetch"]),
            g(&["verify"]),
            g(&["items"]),
            peers(&["script", "tar"]),
        ],
    ),
];

/// What the binary (`src/main.rs`) may use of the library: it parses nothing itself.
const MAIN_USES: &[&str] = &["cli"];

/// Folder names that the usual `.gitignore` templates ignore; a source folder so named is
/// easily left out of a commit or an archive.
const IGNORED_NAMES: &[&str] = &["build", "dist", "target", "out", "tmp"];

const MAX_LINES: usize = 800;

#[derive(Debug, PartialEq, Eq)]
struct Violation {
    file: String,
    line: usize,
    path: String,
    rule: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: `{}`: {}",
            self.file, self.line, self.path, self.rule
        )
    }
}

/// Blanks out comments, string literals and char literals (keeping newlines, so line numbers
/// stay right), leaving only code.
fn strip(text: &str) -> String {
    let b: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let blank = |out: &mut String, c: char| out.push(if c == '\n' { '\n' } else { ' ' });
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < b.len() && b[i] != '\n' {
                blank(&mut out, b[i]);
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == '/' && b.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if b[i] == '*' && b.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    blank(&mut out, b[i]);
                    i += 1;
                }
            }
        } else if c == 'r' && (next == Some('"') || next == Some('#')) && raw_start(&b, i) {
            // Raw string: r"…", r#"…"#, …
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                if j >= b.len() {
                    break;
                }
                if b[j] == '"' && (0..hashes).all(|k| b.get(j + 1 + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            for &ch in &b[i..j.min(b.len())] {
                blank(&mut out, ch);
            }
            i = j;
        } else if c == '"' {
            blank(&mut out, c);
            i += 1;
            while i < b.len() && b[i] != '"' {
                if b[i] == '\\' {
                    blank(&mut out, b[i]);
                    i += 1;
                }
                if i < b.len() {
                    blank(&mut out, b[i]);
                    i += 1;
                }
            }
            if i < b.len() {
                blank(&mut out, b[i]);
                i += 1;
            }
        } else if c == '\'' {
            // A char literal ('x', '\n', '\''), or else a lifetime ('a), left as is.
            let end = if next == Some('\\') {
                (i + 2..b.len()).find(|&k| b[k] == '\'' && k > i + 2)
            } else if b.get(i + 2) == Some(&'\'') {
                Some(i + 2)
            } else {
                None
            };
            match end {
                Some(e) => {
                    for &ch in &b[i..=e] {
                        blank(&mut out, ch);
                    }
                    i = e + 1;
                }
                None => {
                    out.push(c);
                    i += 1;
                }
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Whether the `r` at `i` starts a raw string (`r"`, `br#"`), not ends an identifier.
fn raw_start(b: &[char], i: usize) -> bool {
    let free = |k: usize| k == 0 || !is_ident(b[k - 1]);
    free(i) || (b[i - 1] == 'b' && free(i - 1))
}

/// A tiny tokenizer over stripped code: identifiers, `::` and single punctuation.
fn tokens(code: &str) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    let mut line = 1;
    let b: Vec<char> = code.chars().collect();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c.is_whitespace() {
            i += 1;
        } else if is_ident(c) {
            let s = i;
            while i < b.len() && is_ident(b[i]) {
                i += 1;
            }
            out.push((b[s..i].iter().collect(), line));
        } else if c == ':' && b.get(i + 1) == Some(&':') {
            out.push(("::".into(), line));
            i += 2;
        } else {
            out.push((c.to_string(), line));
            i += 1;
        }
    }
    out
}

/// Reads the path tree after a `::` at `toks[i]`: `a::b`, `a::{b, c::d}`, `*`. Returns the
/// paths (each a list of segments) and where reading stopped.
fn path_tail(toks: &[(String, usize)], mut i: usize) -> (Vec<Vec<String>>, usize) {
    let Some((t, _)) = toks.get(i) else {
        return (vec![vec![]], i);
    };
    if t == "{" {
        let mut all = Vec::new();
        i += 1;
        while let Some((t, _)) = toks.get(i) {
            if t == "}" {
                i += 1;
                break;
            }
            if t == "," {
                i += 1;
                continue;
            }
            let (paths, j) = path_item(toks, i);
            all.extend(paths);
            i = j.max(i + 1);
        }
        return (all, i);
    }
    path_item(toks, i)
}

fn path_item(toks: &[(String, usize)], i: usize) -> (Vec<Vec<String>>, usize) {
    let Some((t, _)) = toks.get(i) else {
        return (vec![vec![]], i);
    };
    if t == "{" {
        return path_tail(toks, i);
    }
    if t == "*" {
        return (vec![vec!["*".into()]], i + 1);
    }
    if !t.chars().all(is_ident) {
        return (vec![vec![]], i);
    }
    let head = t.clone();
    if toks.get(i + 1).map(|t| t.0.as_str()) == Some("::") {
        let (rest, j) = path_tail(toks, i + 2);
        let paths = rest
            .into_iter()
            .map(|mut p| {
                p.insert(0, head.clone());
                p
            })
            .collect();
        return (paths, j);
    }
    (vec![vec![head]], i + 1)
}

/// The module a file under `src/` defines: `src/a/b.rs` and `src/a/b/mod.rs` are `a::b`.
fn module_of(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if parts.first().map(String::as_str) == Some("src") {
        parts.remove(0);
    }
    let last = parts.pop().unwrap_or_default();
    let stem = last.trim_end_matches(".rs");
    if !matches!(stem, "mod" | "lib" | "main") {
        parts.push(stem.to_string());
    }
    parts
}

/// Every absolute module path a file of `src/` uses, with its line, resolved against the file's
/// module and the inline `mod x { … }` blocks around each use.
fn used_paths(file_module: &[String], text: &str) -> Vec<(usize, Vec<String>)> {
    let toks = tokens(&strip(text));
    let mut out = Vec::new();
    // Inline modules: (name, brace depth at which it closes).
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < toks.len() {
        let (t, line) = (&toks[i].0, toks[i].1);
        match t.as_str() {
            "{" => depth += 1,
            "}" => {
                depth = depth.saturating_sub(1);
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
            }
            "mod" if toks.get(i + 2).map(|t| t.0.as_str()) == Some("{") => {
                inline.push((toks[i + 1].0.clone(), depth));
            }
            _ => {}
        }
        let after_sep = i == 0 || toks[i - 1].0 != "::";
        let starts = matches!(t.as_str(), "crate" | "super" | "self");
        if starts && after_sep && toks.get(i + 1).map(|t| t.0.as_str()) == Some("::") {
            let mut base: Vec<String> = file_module.to_vec();
            base.extend(inline.iter().map(|(n, _)| n.clone()));
            let mut j = i;
            if t == "crate" {
                base.clear();
                j += 2;
            } else {
                while toks.get(j).map(|t| t.0.as_str()) == Some("super")
                    && toks.get(j + 1).map(|t| t.0.as_str()) == Some("::")
                {
                    base.pop();
                    j += 2;
                }
                if toks[j].0 == "self" && toks.get(j + 1).map(|t| t.0.as_str()) == Some("::") {
                    j += 2;
                }
            }
            let (paths, end) = path_tail(&toks, j);
            for p in paths {
                let mut abs = base.clone();
                abs.extend(p.into_iter().filter(|s| s != "self"));
                out.push((line, abs));
            }
            i = end.max(i + 1);
            continue;
        }
        i += 1;
    }
    out
}

/// The group index (0 = top) of `name` within `groups`.
fn rank(groups: &[Group], name: &str) -> Option<usize> {
    groups.iter().position(|g| g.names.contains(&name))
}

/// Checks one use of `target` by a file of module `from`; `modules` are all module paths of
/// the tree (to tell a module from an item of a scope's interface).
fn check_use(
    from: &[String],
    target: &[String],
    modules: &BTreeSet<Vec<String>>,
) -> Option<String> {
    for (scope, groups) in LAYERS {
        let n = scope.len();
        let inside = |p: &[String]| p.len() > n && p.iter().zip(scope.iter()).all(|(a, b)| a == b);
        if !inside(from) || !inside(target) {
            continue;
        }
        let (a, b) = (&from[n], &target[n]);
        if a == b {
            continue;
        }
        let mut b_mod = scope.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        b_mod.push(b.clone());
        let where_ = if n == 0 {
            "the crate".to_string()
        } else {
            scope.join("::")
        };
        let Some(ra) = rank(groups, a) else {
            return Some(format!(
                "module {a} is not in tidy.rs's layer table for {where_}: give it a layer"
            ));
        };
        if !modules.contains(&b_mod) {
            continue; // an item of the scope's own interface
        }
        let Some(rb) = rank(groups, b) else {
            return Some(format!(
                "module {b} is not in tidy.rs's layer table for {where_}: give it a layer"
            ));
        };
        if rb < ra {
            return Some(format!("{a} may not use {b}: {b} is a layer above {a}"));
        }
        if rb == ra && !groups[ra].peers {
            return Some(format!(
                "{a} may not use {b}: peers ({}) never import each other",
                groups[ra].names.join(", ")
            ));
        }
    }
    None
}

/// Every layering violation in one file (`rel` relative to the crate root, e.g.
/// `src/plan/mod.rs`).
fn check_file(rel: &Path, text: &str, modules: &BTreeSet<Vec<String>>) -> Vec<Violation> {
    let file = rel.display().to_string();
    if rel == Path::new("src/main.rs") {
        return tokens(&strip(text))
            .windows(3)
            .filter(|w| w[0].0 == "bake" && w[1].0 == "::" && !MAIN_USES.contains(&&*w[2].0))
            .map(|w| Violation {
                file: file.clone(),
                line: w[0].1,
                path: format!("bake::{}", w[2].0),
                rule: format!("main.rs stays thin: it uses only {}", MAIN_USES.join(", ")),
            })
            .collect();
    }
    let from = module_of(rel);
    used_paths(&from, text)
        .into_iter()
        .filter_map(|(line, target)| {
            check_use(&from, &target, modules).map(|rule| Violation {
                file: file.clone(),
                line,
                path: format!("crate::{}", target.join("::")),
                rule,
            })
        })
        .collect()
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.rs` file under `src/`, relative to the crate root, sorted.
fn source_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(&root().join("src"), &mut out);
    let mut rel: Vec<PathBuf> = out
        .into_iter()
        .map(|p| p.strip_prefix(root()).unwrap().to_path_buf())
        .collect();
    rel.sort();
    rel
}

fn all_modules(files: &[PathBuf]) -> BTreeSet<Vec<String>> {
    files.iter().map(|f| module_of(f)).collect()
}

fn fail_on(what: &str, problems: Vec<String>) {
    assert!(
        problems.is_empty(),
        "{what}:\n  {}\n({} in all)",
        problems.join("\n  "),
        problems.len()
    );
}

#[test]
fn no_import_reaches_up_or_across() {
    let files = source_files();
    assert!(files.len() > 20, "found only {files:?} under src/");
    let modules = all_modules(&files);
    let mut problems = Vec::new();
    let mut across = 0;
    for f in &files {
        let text = std::fs::read_to_string(root().join(f)).unwrap();
        problems.extend(check_file(f, &text, &modules).iter().map(|v| v.to_string()));
        let from = module_of(f);
        across += used_paths(&from, &text)
            .iter()
            .filter(|(_, t)| t.first() != from.first())
            .count();
    }
    // A reader that found nothing would pass every tree: the crate has hundreds of such paths.
    assert!(
        across > 100,
        "only {across} paths between top-level modules found"
    );
    eprintln!("{across} paths between top-level modules checked");
    fail_on(
        "imports that break the layering (table in tests/tidy.rs, prose in src/lib.rs)",
        problems,
    );
}

#[test]
fn every_layer_in_the_table_exists() {
    // A stale table would quietly check nothing for a renamed module.
    let modules = all_modules(&source_files());
    let mut problems = Vec::new();
    for (scope, groups) in LAYERS {
        for name in groups.iter().flat_map(|g| g.names) {
            let mut m: Vec<String> = scope.iter().map(|s| s.to_string()).collect();
            m.push(name.to_string());
            if !modules.contains(&m) {
                problems.push(format!("{} names no file under src/", m.join("::")));
            }
        }
    }
    // And the converse: every module directly inside a scope has a layer, even one that
    // imports nothing yet.
    for m in &modules {
        for (scope, groups) in LAYERS {
            let direct =
                m.len() == scope.len() + 1 && m.iter().zip(scope.iter()).all(|(a, b)| a == b);
            if direct && rank(groups, &m[scope.len()]).is_none() {
                problems.push(format!("{} has no layer in tidy.rs's table", m.join("::")));
            }
        }
    }
    fail_on(
        "layer table entries without a module, or modules without one",
        problems,
    );
}

#[test]
fn every_source_file_starts_with_a_module_doc() {
    let problems: Vec<String> = source_files()
        .into_iter()
        .filter(|f| {
            let text = std::fs::read_to_string(root().join(f)).unwrap();
            !text.trim_start().starts_with("//!")
        })
        .map(|f| {
            format!(
                "{}: add a `//!` doc saying what the module is for",
                f.display()
            )
        })
        .collect();
    fail_on("files without a module doc", problems);
}

#[test]
fn no_source_file_is_over_the_line_limit() {
    let problems: Vec<String> = source_files()
        .into_iter()
        .filter_map(|f| {
            let n = std::fs::read_to_string(root().join(&f))
                .unwrap()
                .lines()
                .count();
            (n > MAX_LINES).then(|| format!("{}: {n} lines (split it)", f.display()))
        })
        .collect();
    fail_on(&format!("files over {MAX_LINES} lines"), problems);
}

#[test]
fn no_source_folder_has_a_commonly_ignored_name() {
    let problems: Vec<String> = source_files()
        .into_iter()
        .filter(|f| {
            f.parent()
                .into_iter()
                .flat_map(|p| p.iter())
                .any(|c| IGNORED_NAMES.contains(&&*c.to_string_lossy()))
        })
        .map(|f| format!("{}: rename its folder", f.display()))
        .collect();
    fail_on("sources in folders .gitignore templates ignore", problems);
}

/// The checker itself, on planted files.
mod checker {
    use super::*;

    fn modules() -> BTreeSet<Vec<String>> {
        [
            "cli", "deploy", "images", "gc", "pipeline", "remote", "plan", "aws", "recipe", "ui",
            "retry",
        ]
        .iter()
        .map(|m| vec![m.to_string()])
        .chain(
            [
                "remote::ssh",
                "remote::ssm",
                "remote::transfer",
                "remote::transfer::tar",
                "remote::ssh::upload",
                "remote::ssh::sftp",
                "plan::walk",
            ]
            .iter()
            .map(|m| m.split("::").map(str::to_string).collect()),
        )
        .collect()
    }

    fn check(file: &str, text: &str) -> Vec<Violation> {
        check_file(Path::new(file), text, &modules())
    }

    #[test]
    fn a_planted_upward_import_fails_with_file_line_and_rule() {
        let text = "//! doc\n\nuse crate::recipe::model::Upload;\nuse crate::remote::CommError;\n";
        let v = check("src/plan/walk.rs", text);
        assert_eq!(
            v,
            vec![Violation {
                file: "src/plan/walk.rs".into(),
                line: 4,
                path: "crate::remote::CommError".into(),
                rule: "plan may not use remote: remote is a layer above plan".into(),
            }]
        );
        assert_eq!(
            v[0].to_string(),
            "src/plan/walk.rs:4: `crate::remote::CommError`: plan may not use remote: remote is \
             a layer above plan"
        );
    }

    #[test]
    fn grouped_and_inline_paths_are_read_too() {
        let text = "use crate::{aws::Ctx, cli::Global};\nfn f() { crate::pipeline::run(); }\n";
        let v = check("src/remote/ssm.rs", text);
        let got: Vec<_> = v.iter().map(|v| (v.line, v.path.as_str())).collect();
        assert_eq!(
            got,
            vec![(1, "crate::cli::Global"), (2, "crate::pipeline::run")]
        );
    }

    #[test]
    fn peers_that_must_not_meet_fail() {
        let v = check(
            "src/deploy/mod.rs",
            "fn f() { crate::images::plan_one(); }\n",
        );
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].rule.contains("peers"), "{}", v[0]);
        let v = check(
            "src/remote/ssm/upload.rs",
            "use crate::remote::ssh::tarball;\n",
        );
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(
            v[0].rule,
            "ssm may not use ssh: peers (ssh, ssm) never import each other"
        );
        // ui and retry are declared peers that may.
        assert_eq!(check("src/ui.rs", "use crate::retry::Backoff;\n"), vec![]);
    }

    #[test]
    fn super_resolves_against_the_file_and_its_inline_modules() {
        // sftp sits below upload within ssh: reaching it through `super::` is caught.
        let v = check(
            "src/remote/ssh/sftp.rs",
            "fn f() { super::upload::finish(); }\n",
        );
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].path, "crate::remote::ssh::upload::finish");
        // In `mod tests { use super::*; }` super is the file itself, not its parent.
        let text =
            "//! x\n#[cfg(test)]\nmod tests {\n    use super::*;\n}\nuse super::super::cli::X;\n";
        let v = check("src/plan/walk.rs", text);
        let got: Vec<_> = v.iter().map(|v| (v.line, v.path.as_str())).collect();
        assert_eq!(got, vec![(6, "crate::cli::X")]);
    }

    #[test]
    fn comments_strings_and_downward_uses_pass() {
        let text = "//! See [`crate::cli`].\n\
                    /* crate::deploy::x */\n\
                    const S: &str = \"crate::cli::y\";\n\
                    const R: &str = r#\"crate::cli \"q\" \"#;\n\
                    const C: char = '\\'';\n\
                    fn f<'a>(x: &'a str) { crate::aws::ec2::go(); crate::remote::CommError; }\n";
        assert_eq!(check("src/pipeline/mod.rs", text), vec![]);
    }

    #[test]
    fn items_of_a_scope_interface_are_open_to_its_modules_and_unknown_modules_fail() {
        assert_eq!(
            check(
                "src/remote/transfer/tar.rs",
                "use crate::remote::CommError;\n"
            ),
            vec![]
        );
        let v = check("src/newthing.rs", "use crate::ui::Ui;\n");
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(
            v[0].rule.contains("not in tidy.rs's layer table"),
            "{}",
            v[0]
        );
    }

    #[test]
    fn main_uses_only_the_cli() {
        let text = "fn main() { bake::cli::main(); bake::pipeline::run(); }\n";
        let v = check("src/main.rs", text);
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].path, "bake::pipeline");
    }
}
