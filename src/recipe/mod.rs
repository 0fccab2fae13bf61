//! Recipes: the TOML file a user writes, parsed with spans, validated without AWS, and turned
//! into the typed [`model::Recipe`] the rest of bake consumes.
//!
//! ```no_run
//! let recipe = bake::recipe::load(std::path::Path::new("recipes/web.toml"), &[])
//!     .map_err(|e| { eprint!("{}", e.render()); std::process::exit(2) })
//!     .unwrap();
//! ```
//!
//! The format is documented in `docs/recipe.md`.

pub mod checks;
mod diag;
pub mod model;
pub mod overrides;
mod parse;

use std::path::Path;

pub use diag::{RecipeError, RecipeErrors, line_col};
pub use model::Recipe;
pub use overrides::Overrides;
pub use parse::{known_keys, known_values};

/// Reads, parses and validates the recipe at `path`. `vars` are `--var NAME=VALUE` overrides
/// of the recipe's `[variables]`. Relative paths in the recipe are resolved against its
/// directory; `user_data_file` is read; uploads and scripts must exist.
pub fn load(path: &Path, vars: &[(String, String)]) -> Result<Recipe, RecipeErrors> {
    match std::fs::read_to_string(path) {
        Ok(src) => load_str(&src, path, vars),
        Err(e) => Err(unreadable(path, e)),
    }
}

fn unreadable(path: &Path, e: std::io::Error) -> RecipeErrors {
    RecipeErrors::new(
        path.to_path_buf(),
        String::new(),
        vec![RecipeError::new(
            None,
            format!("cannot read recipe: {e}"),
            "check the path (recipes are TOML files, e.g. recipes/web.toml)",
        )],
    )
}

/// Like [`load`] with the source given; `path` names the file in messages and its directory
/// anchors relative paths. Environment variables (`{env.NAME}`) are read from the process.
pub fn load_str(src: &str, path: &Path, vars: &[(String, String)]) -> Result<Recipe, RecipeErrors> {
    load_str_with_env(src, path, vars, &|name| std::env::var(name).ok())
}

/// Like [`load_str`] with an explicit environment lookup (for tests and embedding).
pub fn load_str_with_env(
    src: &str,
    path: &Path,
    vars: &[(String, String)],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Recipe, RecipeErrors> {
    let vars = overrides::flag_overrides(vars);
    parse::build(src, path, &vars, env)
        .map_err(|errors| RecipeErrors::new(path.to_path_buf(), src.to_string(), errors))
}

/// Like [`load`] with every kind of override (var files, `BAKE_VAR_*`, `--var`), applied in
/// their precedence order whatever order they were added in. A var file or `--var` naming a
/// variable the recipe does not declare is an error; a `BAKE_VAR_*` one is not (the
/// environment serves every recipe bake loads).
pub fn load_with_overrides(path: &Path, overrides: &Overrides) -> Result<Recipe, RecipeErrors> {
    match std::fs::read_to_string(path) {
        Ok(src) => load_str_with_overrides(&src, path, overrides, &|name| std::env::var(name).ok()),
        Err(e) => Err(unreadable(path, e)),
    }
}

/// Like [`load_with_overrides`] with the source and the `{env.NAME}` lookup given.
pub fn load_str_with_overrides(
    src: &str,
    path: &Path,
    overrides: &Overrides,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Recipe, RecipeErrors> {
    let vars: Vec<_> = overrides.iter().cloned().collect();
    parse::build(src, path, &vars, env)
        .map_err(|errors| RecipeErrors::new(path.to_path_buf(), src.to_string(), errors))
}

/// Splits a `--var` argument `NAME=VALUE`: the one parser for `--var`, used by the CLI as its
/// value parser and by anything else taking overrides as text. The name is trimmed and must be
/// a variable name (letters, digits, `_`, `-`, starting with a letter or `_`); the value is
/// everything after the first `=`, kept as written (it may be empty or contain `=`).
pub fn parse_var(arg: &str) -> Result<(String, String), String> {
    let Some((k, v)) = arg.split_once('=') else {
        return Err(format!("--var expects NAME=VALUE, got `{arg}`"));
    };
    let k = k.trim();
    if k.is_empty() {
        return Err(format!("--var expects NAME=VALUE, got `{arg}` (no name)"));
    }
    if !checks::is_var_name(k) {
        return Err(format!(
            "--var `{k}`: not a variable name (letters, digits, _ and -, starting with a letter or _)"
        ));
    }
    Ok((k.to_string(), v.to_string()))
}

#[cfg(test)]
mod tests {
    use super::parse_var;

    #[test]
    fn parse_var_splits_at_the_first_equals_and_checks_the_name() {
        let ok = |k: &str, v: &str| Ok((k.to_string(), v.to_string()));
        assert_eq!(parse_var("version=1.2"), ok("version", "1.2"));
        assert_eq!(parse_var("a=b=c"), ok("a", "b=c"));
        assert_eq!(parse_var("empty="), ok("empty", ""));
        assert_eq!(parse_var(" spaced =  v "), ok("spaced", "  v "));
        assert_eq!(parse_var("db-pass_2=x"), ok("db-pass_2", "x"));
        for bad in ["novalue", "=x", "  =x", "two words=x", "1st=x", "a.b=x", ""] {
            assert!(parse_var(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
