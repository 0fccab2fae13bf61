//! The command line: argument definitions, dispatch, and the mapping of typed errors to what a
//! user sees and to exit codes (0 ok, 1 failed, 2 bad input, 130 interrupted).

mod build;
mod deploy;
mod gc;
mod images;
mod report;
mod signals;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use serde::Serialize;

pub use report::{CliError, Diagnostic, RecipeFailure, Report, exit_code, finish};

use crate::aws::Clients;
use crate::recipe::{self, model::Recipe};
use crate::ui::Output;

#[derive(Parser, Debug)]
#[command(
    name = "bake",
    version,
    about = "Bake golden AWS machine images from TOML recipes",
    propagate_version = true
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Args, Debug, Clone)]
pub struct Global {
    /// AWS region (default: the standard chain: AWS_REGION, profile, …).
    #[arg(long, global = true, env = "BAKE_REGION")]
    pub region: Option<String>,
    /// AWS profile from ~/.aws/config.
    #[arg(long, global = true)]
    pub profile: Option<String>,
    /// Result format on stdout; progress always goes to stderr.
    #[arg(long, global = true, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// Plain timestamped progress lines even on a terminal.
    #[arg(long, global = true)]
    pub plain: bool,
}

#[derive(Args, Debug, Clone, Default)]
pub struct Vars {
    /// Set a recipe variable: --var name=value (repeatable).
    #[arg(long = "var", value_name = "NAME=VALUE", value_parser = crate::recipe::parse_var)]
    pub vars: Vec<(String, String)>,
    /// Read variable values from a TOML file of `name = "value"` lines (repeatable; a later
    /// file wins). Precedence: recipe default < --var-file < BAKE_VAR_<name> < --var.
    #[arg(long = "var-file", value_name = "FILE")]
    pub var_files: Vec<PathBuf>,
}

impl Vars {
    /// Loads one recipe with every override source applied.
    pub fn load(&self, path: &std::path::Path) -> Result<Recipe, RecipeFailure> {
        let mut o = recipe::Overrides::new();
        for f in &self.var_files {
            o.add_var_file(f)
                .map_err(|e| RecipeFailure::from_errors(&e))?;
        }
        o.add_env(std::env::vars_os())
            .map_err(|errs| RecipeFailure {
                rendered: errs.iter().map(|e| format!("error: {e}\n")).collect(),
                diagnostics: errs
                    .iter()
                    .map(|e| Diagnostic {
                        file: None,
                        line: None,
                        column: None,
                        message: e.to_string(),
                        help: String::new(),
                    })
                    .collect(),
            })?;
        o.add_flags(&self.vars);
        recipe::load_with_overrides(path, &o).map_err(|e| RecipeFailure::from_errors(&e))
    }
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Check recipes without touching AWS.
    Validate {
        #[arg(required = true)]
        recipes: Vec<PathBuf>,
        #[command(flatten)]
        vars: Vars,
    },
    /// Build images from recipes (skipped when an image with the same fingerprint exists).
    Build {
        #[arg(required = true)]
        recipes: Vec<PathBuf>,
        #[command(flatten)]
        vars: Vars,
        /// Build this many recipes at once.
        #[arg(short = 'j', long, default_value_t = 1)]
        jobs: usize,
        /// Rebuild even if an image with the same fingerprint exists.
        #[arg(long)]
        force: bool,
        /// Write (append to) a Packer-style manifest JSON file.
        #[arg(long)]
        manifest: Option<PathBuf>,
    },
    /// Show each recipe's fingerprint and whether a build would be skipped.
    Plan {
        #[arg(required = true)]
        recipes: Vec<PathBuf>,
        #[command(flatten)]
        vars: Vars,
    },
    /// List, prune and remove images bake made.
    #[command(subcommand)]
    Images(images::ImagesCmd),
    /// Roll an image out to an Auto Scaling group (instance refresh); status, cancel, rollback.
    Deploy(deploy::DeployArgs),
    /// List (or with --yes remove) what builds that no longer run left behind.
    Gc(gc::GcArgs),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = rt.block_on(run(cli));
    // Don't wait for lingering blocking tasks (a hashing thread after Ctrl-C).
    rt.shutdown_timeout(std::time::Duration::from_millis(200));
    ExitCode::from(code)
}

async fn run(cli: Cli) -> u8 {
    let g = cli.global.clone();
    let out = g.output;
    match cli.cmd {
        Cmd::Validate { recipes, vars } => finish(validate(&recipes, &vars), out),
        Cmd::Build {
            recipes,
            vars,
            jobs,
            force,
            manifest,
        } => {
            let opts = build::BuildFlags {
                jobs,
                force,
                manifest,
            };
            finish(build::build(&recipes, &vars, &g, &opts).await, out)
        }
        Cmd::Plan { recipes, vars } => finish(build::plan(&recipes, &vars, &g).await, out),
        Cmd::Images(cmd) => images::run(cmd, &g).await,
        Cmd::Deploy(args) => deploy::run(args, &g).await,
        Cmd::Gc(args) => finish(gc::run(args, &g).await, out),
    }
}

/// Loads every recipe; on failure, every problem of every file.
pub fn load_all(paths: &[PathBuf], vars: &Vars) -> Result<Vec<Recipe>, CliError> {
    let mut ok = Vec::new();
    let mut bad = Vec::new();
    for p in paths {
        match vars.load(p) {
            Ok(r) => ok.push(r),
            Err(e) => bad.push(e),
        }
    }
    if bad.is_empty() {
        Ok(ok)
    } else {
        Err(CliError::Recipe(bad))
    }
}

/// `bake validate`: `{"format_version", "valid": true, "recipes": [...]}`; an invalid recipe
/// is `{"format_version", "valid": false, "diagnostics": [...]}` from [`CliError::Recipe`].
#[derive(Serialize)]
struct Validated {
    valid: bool,
    recipes: Vec<ValidRecipe>,
}

#[derive(Serialize)]
struct ValidRecipe {
    path: PathBuf,
    name: String,
    uploads: usize,
    steps: usize,
}

impl Report for Validated {
    fn text(&self) -> String {
        self.recipes
            .iter()
            .map(|r| {
                format!(
                    "{}: ok ({} upload(s), {} step(s))",
                    r.path.display(),
                    r.uploads,
                    r.steps
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn validate(paths: &[PathBuf], vars: &Vars) -> Result<Validated, CliError> {
    let recipes = load_all(paths, vars)?
        .into_iter()
        .map(|r| ValidRecipe {
            uploads: r.uploads.len(),
            steps: r.steps.len(),
            path: r.path,
            name: r.name,
        })
        .collect();
    Ok(Validated {
        valid: true,
        recipes,
    })
}

/// Prints a runtime error as a diagnostic (miette on a terminal, plain otherwise).
pub fn report_error(err: &(dyn std::error::Error + 'static)) {
    // Each cause once: a cause whose text its parent already printed adds nothing. An AWS
    // error ends the chain: its message is the SDK's, so what lies below says it again; its
    // code and request id (what AWS support asks for) are shown instead.
    let mut lines: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        let text = e.to_string();
        if !lines.iter().any(|l| l.contains(&text)) {
            lines.push(text);
        }
        if let Some(aws) = e.downcast_ref::<crate::aws::AwsError>() {
            if let Some(id) = &aws.request_id {
                lines.push(format!("AWS request id: {id}"));
            }
            break;
        }
        cur = e.source();
    }
    let mut msg = format!("error: {}", lines[0]);
    for l in &lines[1..] {
        msg.push_str(&format!("\n  caused by: {l}"));
    }
    eprintln!("{msg}");
}

/// The AWS clients of one command, from one loaded config.
pub async fn load_clients(g: &Global) -> Result<Clients, CliError> {
    Clients::load(g.region.as_deref(), g.profile.as_deref())
        .await
        .map_err(CliError::runtime)
}

pub use signals::interrupted;
