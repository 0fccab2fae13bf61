//! What a command hands back, and the one place that shows it: every handler returns
//! `Result<impl Report, CliError>`; [`finish`] renders the report once (text, or JSON with a
//! `format_version`) and turns the outcome into the exit code (0 ok, 1 failed, 2 bad input,
//! 130 interrupted).

use std::path::PathBuf;

use serde::Serialize;

use super::report_error;
use crate::recipe::{RecipeErrors, line_col};
use crate::ui::Output;

/// Bumped when a command's JSON changes incompatibly; every JSON document carries it.
pub const FORMAT_VERSION: u32 = 1;

/// A command's result: serialized as its JSON shape, written as text by [`Report::text`].
pub trait Report: Serialize {
    /// The text form for stdout (without a trailing newline; empty prints nothing).
    fn text(&self) -> String;
    /// The report's own verdict: a report of partial failure (a failed build among several,
    /// a refresh that failed) is still printed in full, then exits with this error's code.
    fn outcome(&self) -> Result<(), CliError> {
        Ok(())
    }
}

/// Why a command did not succeed, and so its exit code.
#[derive(Debug)]
pub enum CliError {
    /// Bad input found before any AWS call (exit 2); printed as `error: …`.
    Input(String),
    /// Recipes that do not load (exit 2); the diagnostics are already rendered for stderr.
    Recipe(Vec<RecipeFailure>),
    /// A runtime failure (exit 1), shown with its source chain by `report_error`.
    Runtime(Box<dyn std::error::Error + Send + Sync + 'static>),
    /// A failure already told on stderr (exit 1): the report says the rest.
    Failed,
    /// Stopped by a signal (exit 130); what is left has been said.
    Interrupted,
}

impl CliError {
    pub fn runtime(e: impl std::error::Error + Send + Sync + 'static) -> CliError {
        CliError::Runtime(Box::new(e))
    }

    /// Tells the error on stderr, and in JSON mode puts a document on stdout too, so a reader
    /// of stdout always gets one.
    fn show(&self, output: Output) {
        let msg = match self {
            CliError::Input(m) => {
                eprintln!("error: {m}");
                Some(m.clone())
            }
            CliError::Recipe(fails) => {
                for f in fails {
                    eprint!("{}", f.rendered);
                    super::ci::annotate(&f.diagnostics);
                }
                None
            }
            CliError::Runtime(e) => {
                report_error(&**e);
                Some(e.to_string())
            }
            CliError::Failed | CliError::Interrupted => None,
        };
        if output == Output::Json {
            let doc = match self {
                CliError::Recipe(fails) => serde_json::json!({
                    "format_version": FORMAT_VERSION,
                    "valid": false,
                    "diagnostics": fails.iter().flat_map(|f| &f.diagnostics).collect::<Vec<_>>(),
                }),
                _ => serde_json::json!({ "format_version": FORMAT_VERSION, "error": msg }),
            };
            if !matches!(self, CliError::Failed | CliError::Interrupted) {
                println!("{doc}");
            }
        }
    }
}

/// The one place exit codes are decided: 1 failed, 2 bad input, 130 interrupted.
pub fn exit_code(e: &CliError) -> u8 {
    match e {
        CliError::Input(_) | CliError::Recipe(_) => 2,
        CliError::Runtime(_) | CliError::Failed => 1,
        CliError::Interrupted => 130,
    }
}

/// One recipe that did not load: the text for stderr and its diagnostics for JSON.
#[derive(Debug)]
pub struct RecipeFailure {
    pub rendered: String,
    pub diagnostics: Vec<Diagnostic>,
}

/// One problem of a recipe (or of a var file or environment variable) with its place.
#[derive(Debug, Serialize)]
pub struct Diagnostic {
    pub file: Option<PathBuf>,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
    pub help: String,
}

impl RecipeFailure {
    pub fn from_errors(e: &RecipeErrors) -> RecipeFailure {
        let diagnostics = e
            .errors
            .iter()
            .map(|d| {
                let at = d.span.as_ref().map(|s| line_col(&e.source, s.start));
                Diagnostic {
                    file: Some(e.path.clone()),
                    line: at.map(|a| a.0),
                    column: at.map(|a| a.1),
                    message: d.message.clone(),
                    help: d.help.clone(),
                }
            })
            .collect();
        RecipeFailure {
            rendered: e.render(),
            diagnostics,
        }
    }
}

#[derive(Serialize)]
struct Versioned<'a, R> {
    format_version: u32,
    #[serde(flatten)]
    report: &'a R,
}

/// Renders a command's result once and returns its exit code.
pub fn finish<R: Report>(res: Result<R, CliError>, output: Output) -> u8 {
    let outcome = res.and_then(|r| {
        match output {
            Output::Json => {
                let doc = Versioned {
                    format_version: FORMAT_VERSION,
                    report: &r,
                };
                println!(
                    "{}",
                    serde_json::to_string(&doc).expect("reports serialize")
                );
            }
            Output::Text => {
                let t = r.text();
                if !t.is_empty() {
                    println!("{t}");
                }
            }
        }
        r.outcome()
    });
    match outcome {
        Ok(()) => 0,
        Err(e) => {
            // Partial-failure reports are already on stdout; only a handler's own error shows.
            e.show(output);
            exit_code(&e)
        }
    }
}
