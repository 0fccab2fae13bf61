//! Values for a recipe's `[variables]` from outside the recipe: `--var-file` files,
//! `BAKE_VAR_<name>` environment variables and `--var NAME=VALUE` flags, each remembered with
//! where it came from so a mistake can be reported at its origin.
//!
//! Precedence, lowest first: the recipe's default < var files (in the order given; a later
//! file wins) < `BAKE_VAR_<name>` < `--var` (a later flag wins). [`Overrides`] keeps the three
//! kinds apart, so the order in which a caller adds them does not matter.
//!
//! A value from any of them is literal text, never substituted (`{env.X}` in a var file stays
//! `{env.X}`), exactly as for `--var`.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};

use super::checks;
use super::diag::{RecipeError, RecipeErrors, line_col};

/// The prefix of the environment variables that set recipe variables.
pub const ENV_PREFIX: &str = "BAKE_VAR_";

/// Where an override came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// `--var NAME=VALUE`.
    Flag,
    /// A `--var-file`, at this 1-based line and column (of the name).
    File {
        path: PathBuf,
        line: usize,
        col: usize,
    },
    /// The environment variable `var` (`BAKE_VAR_<name>`).
    Env { var: String },
}

/// One value for the recipe variable `name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    pub name: String,
    pub value: String,
    pub origin: Origin,
}

/// A `BAKE_VAR_*` environment variable that cannot set a recipe variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvVarError {
    #[error(
        "environment variable {var}: `{name}` is not a variable name (letters, digits, _ and -, starting with a letter or _)"
    )]
    BadName { var: String, name: String },
    #[error("environment variable {var}: its value is not valid UTF-8")]
    NotUtf8 { var: String },
}

/// Every override for one run of bake, applied to each recipe loaded with
/// [`load_with_overrides`](super::load_with_overrides).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    files: Vec<Override>,
    env: Vec<Override>,
    flags: Vec<Override>,
}

impl Overrides {
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads a `--var-file`; call once per file, in the order given on the command line.
    pub fn add_var_file(&mut self, path: &Path) -> Result<(), RecipeErrors> {
        self.files.extend(read_var_file(path)?);
        Ok(())
    }

    /// Like [`Overrides::add_var_file`] with the file's contents given.
    pub fn add_var_file_str(&mut self, src: &str, path: &Path) -> Result<(), RecipeErrors> {
        self.files.extend(parse_var_file(src, path)?);
        Ok(())
    }

    /// Takes the `BAKE_VAR_<name>` variables of an environment (`std::env::vars_os()`).
    pub fn add_env<I, K, V>(&mut self, env: I) -> Result<(), Vec<EnvVarError>>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        self.env.extend(env_overrides(env)?);
        Ok(())
    }

    /// Takes `--var` values, as [`parse_var`](super::parse_var) splits them.
    pub fn add_flags(&mut self, vars: &[(String, String)]) {
        self.flags.extend(flag_overrides(vars));
    }

    /// Every override, lowest precedence first (a later one replaces an earlier one).
    pub fn iter(&self) -> impl Iterator<Item = &Override> {
        self.files.iter().chain(&self.env).chain(&self.flags)
    }

    /// The final value of each variable named by any override, as `--var` pairs (for showing
    /// them; to load a recipe use [`load_with_overrides`](super::load_with_overrides), which
    /// keeps each origin: as pairs every one would count as a `--var`).
    pub fn to_pairs(&self) -> Vec<(String, String)> {
        let mut map = std::collections::BTreeMap::new();
        for o in self.iter() {
            map.insert(o.name.clone(), o.value.clone());
        }
        map.into_iter().collect()
    }
}

/// `--var` pairs as overrides.
pub fn flag_overrides(vars: &[(String, String)]) -> Vec<Override> {
    vars.iter()
        .map(|(k, v)| Override {
            name: k.clone(),
            value: v.clone(),
            origin: Origin::Flag,
        })
        .collect()
}

/// The `BAKE_VAR_<name>` entries of an environment, in its order; every other variable is
/// skipped. Names are case-sensitive (`BAKE_VAR_version` sets `version`). Fails with every
/// entry that has the prefix but cannot set a variable.
pub fn env_overrides<I, K, V>(env: I) -> Result<Vec<Override>, Vec<EnvVarError>>
where
    I: IntoIterator<Item = (K, V)>,
    K: AsRef<OsStr>,
    V: AsRef<OsStr>,
{
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for (k, v) in env {
        let k = k.as_ref();
        if !k.as_encoded_bytes().starts_with(ENV_PREFIX.as_bytes()) {
            continue;
        }
        let var = k.to_string_lossy().into_owned();
        let (Some(key), Some(value)) = (k.to_str(), v.as_ref().to_str()) else {
            errors.push(EnvVarError::NotUtf8 { var });
            continue;
        };
        let name = &key[ENV_PREFIX.len()..];
        if !checks::is_var_name(name) {
            errors.push(EnvVarError::BadName {
                var,
                name: name.to_string(),
            });
            continue;
        }
        out.push(Override {
            name: name.to_string(),
            value: value.to_string(),
            origin: Origin::Env { var },
        });
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// Reads a var file: a TOML file of `name = "value"` lines, nothing else.
pub fn read_var_file(path: &Path) -> Result<Vec<Override>, RecipeErrors> {
    match std::fs::read_to_string(path) {
        Ok(src) => parse_var_file(&src, path),
        Err(e) => Err(RecipeErrors::new(
            path.to_path_buf(),
            String::new(),
            vec![RecipeError::new(
                None,
                format!("cannot read var file: {e}"),
                "--var-file takes a TOML file of name = \"value\" lines",
            )],
        )),
    }
}

/// Like [`read_var_file`] with the contents given; `path` names the file in messages and
/// origins. Every problem is reported, each at its `file:line:col`.
pub fn parse_var_file(src: &str, path: &Path) -> Result<Vec<Override>, RecipeErrors> {
    let fail = |errors| RecipeErrors::new(path.to_path_buf(), src.to_string(), errors);
    let (doc, syntax) = DeTable::parse_recoverable(src);
    if !syntax.is_empty() {
        return Err(fail(
            syntax
                .iter()
                .map(|e| {
                    let msg = e.message().trim().to_string();
                    let first = msg.lines().next().unwrap_or("").to_string();
                    RecipeError::new(
                        e.span(),
                        format!("invalid TOML: {first}"),
                        "a var file holds name = \"value\" lines (values quoted, each name once)",
                    )
                })
                .collect(),
        ));
    }
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for (k, v) in doc.get_ref().iter() {
        let name: &str = k.get_ref();
        let (line, col) = line_col(src, k.span().start);
        if !checks::is_var_name(name) {
            errors.push(RecipeError::new(
                Some(k.span()),
                format!("`{name}` is not a valid variable name"),
                "variable names use letters, digits, _ and -, starting with a letter or _",
            ));
        }
        match v.get_ref() {
            DeValue::String(s) => out.push(Override {
                name: name.to_string(),
                value: s.to_string(),
                origin: Origin::File {
                    path: path.to_path_buf(),
                    line,
                    col,
                },
            }),
            DeValue::Table(_) => {
                // `[name]` headers and dotted keys: point at the name, the table has no span
                errors.push(RecipeError::new(
                    Some(k.span()),
                    format!("`{name}` in a var file is a table"),
                    "a var file holds only name = \"value\" lines: no [sections], no dotted names",
                ));
            }
            other => {
                let raw = src.get(v.span()).unwrap_or("").trim_matches('"');
                let help = match other {
                    DeValue::Array(_) => {
                        "variables are strings; write the list as one string, e.g. name = \"a,b\""
                            .to_string()
                    }
                    _ => format!("quote it: {name} = \"{raw}\""),
                };
                errors.push(RecipeError::new(
                    Some(v.span()),
                    format!(
                        "variable `{name}` must be a string, not {}",
                        super::parse::type_name(other)
                    ),
                    help,
                ));
            }
        }
    }
    if errors.is_empty() {
        // in file order (the table itself is sorted by name)
        out.sort_by_key(|o| match o.origin {
            Origin::File { line, col, .. } => (line, col),
            _ => (0, 0),
        });
        Ok(out)
    } else {
        Err(fail(errors))
    }
}

#[cfg(test)]
#[path = "overrides_tests.rs"]
mod tests;
