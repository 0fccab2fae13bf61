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
mod parse;

use std::path::Path;

pub use diag::{RecipeError, RecipeErrors, line_col};
pub use model::Recipe;

/// Reads, parses and validates the recipe at `path`. `vars` are `--var NAME=VALUE` overrides
/// of the recipe's `[variables]`. Relative paths in the recipe are resolved against its
/// directory; `user_data_file` is read; uploads and scripts must exist.
pub fn load(path: &Path, vars: &[(String, String)]) -> Result<Recipe, RecipeErrors> {
    match std::fs::read_to_string(path) {
        Ok(src) => load_str(&src, path, vars),
        Err(e) => Err(RecipeErrors::new(
            path.to_path_buf(),
            String::new(),
            vec![RecipeError::new(
                None,
                format!("cannot read recipe: {e}"),
                "check the path (recipes are TOML files, e.g. recipes/web.toml)",
            )],
        )),
    }
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
    parse::build(src, path, vars, env)
        .map_err(|errors| RecipeErrors::new(path.to_path_buf(), src.to_string(), errors))
}

/// Splits a `--var` argument `NAME=VALUE`.
pub fn parse_var(arg: &str) -> Result<(String, String), String> {
    match arg.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("--var expects NAME=VALUE, got `{arg}`")),
    }
}
