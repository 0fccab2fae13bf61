//! The command line: argument definitions, dispatch, and the mapping of typed errors to what a
//! user sees and to exit codes (0 ok, 1 failed, 2 bad input, 130 interrupted).

mod build;
mod ci;
mod deploy;
mod gc;
mod images;
mod manifest;
mod report;
mod signals;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use serde::Serialize;

pub use report::{CliError, Diagnostic, RecipeFailure, Report, exit_code, finish};

use crate::aws::Clients;
use crate::pipeline::on_error::OnError;
use crate::recipe::{self, model::Recipe};
use crate::ui::{ColorChoice, Output};

#[derive(Parser, Debug)]
#[command(
    name = "bake",
    version,
    about = "Bake golden AWS machine images from TOML recipes",
    propagate_version = true,
    after_help = EXAMPLES
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub cmd: Cmd,
}

const EXAMPLES: &str = "\
Examples:
  bake validate recipes/web.toml          check a recipe without touching AWS
  bake plan recipes/*.toml                fingerprints, and which builds would be skipped
  bake build -j 4 recipes/*.toml          build four recipes at once
  bake build --output json web.toml       the result as JSON on stdout, progress on stderr
  bake build --on-error=abort web.toml    a failed step keeps the builder; prints how to ssh in
  bake images prune --recipe web --keep 3 --older-than 14d --yes
  bake completions bash > ~/.local/share/bash-completion/completions/bake
  bake man > ~/.local/share/man/man1/bake.1";

#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Global options")]
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
    /// Colour on stderr: auto (a terminal, and NO_COLOR unset), always or never.
    #[arg(long, global = true, value_enum, default_value_t = ColorChoice::Auto, value_name = "WHEN")]
    pub color: ColorChoice,
    /// Print only errors and the final result, no progress.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Debug log on stderr: -v bake's own, -vv also the AWS SDK and SSH, -vvv trace.
    /// BAKE_LOG (tracing filter syntax, e.g. `debug` or `bake=debug,russh=trace`) wins.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
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
        /// When a [[test]] fails, keep the new image (tagged bake:tested=failed) to inspect it.
        #[arg(long)]
        keep_failed: bool,
        /// When a step (or anything after the builder is reachable) fails: clean up, abort
        /// (keep the builder and print how to log in and how to remove it), or ask (terminal).
        #[arg(long, value_enum, default_value_t = OnError::Cleanup, value_name = "WHAT")]
        on_error: OnError,
        /// Write a GitLab dotenv report (BAKE_AMI_ID=…, BAKE_FINGERPRINT=…, …) to FILE.
        #[arg(long, value_name = "FILE")]
        dotenv: Option<PathBuf>,
        /// Build from the source image, not from a checkpoint, and make no checkpoint images.
        #[arg(long)]
        no_checkpoints: bool,
    },
    /// Run the recipes' [[test]]s on their current images (on a fresh instance of each).
    Test {
        #[arg(required = true)]
        recipes: Vec<PathBuf>,
        #[command(flatten)]
        vars: Vars,
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
    /// Print a shell completion script: bash, zsh, fish, elvish or powershell.
    #[command(after_help = "Examples:\n  \
        bash: bake completions bash > ~/.local/share/bash-completion/completions/bake\n  \
        zsh:  bake completions zsh > \"${fpath[1]}/_bake\"\n  \
        fish: bake completions fish > ~/.config/fish/completions/bake.fish")]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print bake's man page (roff) on stdout.
    #[command(after_help = "Example:\n  bake man > ~/.local/share/man/man1/bake.1 && man bake")]
    Man,
}

pub fn main() -> ExitCode {
    // Help and usage errors come from clap before the flags are parsed, so `--color` is
    // looked for by hand to colour them (or not) too.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let cmd = Cli::command().color(clap_color(&args));
    let cli = match cmd
        .try_get_matches_from(&args)
        .and_then(|m| Cli::from_arg_matches(&m))
    {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    crate::ui::configure(cli.global.color, cli.global.quiet);
    init_log(cli.global.verbose);
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
            keep_failed,
            on_error,
            dotenv,
            no_checkpoints,
        } => {
            let opts = build::BuildFlags {
                jobs,
                force,
                manifest,
                keep_failed,
                test_only: false,
                on_error,
                dotenv,
                no_checkpoints,
            };
            finish(build::build(&recipes, &vars, &g, &opts).await, out)
        }
        Cmd::Test { recipes, vars } => {
            let opts = build::BuildFlags {
                jobs: 1,
                force: false,
                manifest: None,
                // The image was published already: a failure tags it, never removes it.
                keep_failed: true,
                test_only: true,
                on_error: OnError::Cleanup,
                dotenv: None,
                no_checkpoints: true,
            };
            finish(build::build(&recipes, &vars, &g, &opts).await, out)
        }
        Cmd::Plan { recipes, vars } => finish(build::plan(&recipes, &vars, &g).await, out),
        Cmd::Images(cmd) => images::run(cmd, &g).await,
        Cmd::Deploy(args) => deploy::run(args, &g).await,
        Cmd::Gc(args) => finish(gc::run(args, &g).await, out),
        Cmd::Completions { shell } => print_generated(|w| {
            clap_complete::generate(shell, &mut Cli::command(), "bake", w);
            Ok(())
        }),
        Cmd::Man => print_generated(|w| clap_mangen::Man::new(Cli::command()).render(w)),
    }
}

/// The debug log (tracing, to stderr): off unless BAKE_LOG or -v asks for it.
fn init_log(verbose: u8) {
    let spec = match std::env::var("BAKE_LOG") {
        Ok(s) if !s.trim().is_empty() => s,
        _ => match verbose {
            0 => return,
            1 => "bake=debug".to_string(),
            2 => "debug".to_string(),
            _ => "trace".to_string(),
        },
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&spec).unwrap_or_else(|e| {
        eprintln!("warning: BAKE_LOG={spec:?} is not a tracing filter ({e}); using `debug`");
        tracing_subscriber::EnvFilter::new("debug")
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(console::colors_enabled_stderr())
        .try_init();
}

/// `--color` as clap should use it for help and usage errors.
fn clap_color(args: &[std::ffi::OsString]) -> clap::ColorChoice {
    let mut it = args.iter().filter_map(|a| a.to_str());
    while let Some(a) = it.next() {
        let v = match a.strip_prefix("--color") {
            Some("") => it.next(),
            Some(rest) => rest.strip_prefix('='),
            None => continue,
        };
        match v {
            Some("always") => return clap::ColorChoice::Always,
            Some("never") => return clap::ColorChoice::Never,
            _ => {}
        }
    }
    clap::ColorChoice::Auto
}

/// Writes a generated file (completions, man page) to stdout; a closed pipe is not an error.
fn print_generated(f: impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<()>) -> u8 {
    let mut out = std::io::stdout().lock();
    match f(&mut out).and_then(|()| std::io::Write::flush(&mut out)) {
        Ok(()) => 0,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => 0,
        Err(e) => {
            report_error(&e);
            exit_code(&CliError::Failed)
        }
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
