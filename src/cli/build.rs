//! `bake build` and `bake plan`: load clients once, run builds (several at once with -j), own
//! each build's cleanup stack so Ctrl-C/SIGTERM and failures end with nothing left (or, with
//! `--on-error=abort`, exactly the builder kept to debug), print the [`Builds`] report, the
//! manifest and the CI results ([`super::ci`]). The signal handling is in [`super::signals`].

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::Serialize;

use super::ci::{self, Row};
use super::manifest;
use super::signals::{Sig, Signals, sig_name};
use super::{CliError, Global, Report, Vars, load_all, load_clients};
use crate::aws::Clients;
use crate::pipeline::lookup::{PlanRow, RegionStatus};
use crate::pipeline::on_error::{self, Choice, Kept, OnError};
use crate::pipeline::{self, BuildError, BuildOptions, BuildResult, Cleanup};
use crate::recipe::model::Recipe;
use crate::ui::{Ui, fmt_duration};

/// The flags of `bake build` beyond the recipes and their variables.
pub struct BuildFlags {
    pub jobs: usize,
    pub force: bool,
    pub manifest: Option<PathBuf>,
    /// A failing `[[test]]` keeps the new image, tagged `bake:tested=failed`.
    pub keep_failed: bool,
    /// `bake test`: run the tests on the current image, build nothing.
    pub test_only: bool,
    pub on_error: OnError,
    /// Write GitLab's dotenv report here.
    pub dotenv: Option<PathBuf>,
    /// `--no-checkpoints`: from the source, no checkpoint images.
    pub no_checkpoints: bool,
}

/// One recipe's build in the report: the image, or why there is none.
#[derive(Serialize)]
#[serde(untagged)]
enum Outcome {
    Built(Box<BuildResult>),
    Failed {
        recipe: String,
        region: String,
        build_id: String,
        error: String,
        /// The builder kept by `--on-error=abort` (or `ask`), and how to reach it.
        #[serde(skip_serializing_if = "Option::is_none")]
        kept: Option<Box<Kept>>,
    },
}

/// `bake build`: `{"format_version", "builds": [...], "left_behind": [...]}`, one entry per
/// recipe in the order given, whatever their number.
#[derive(Serialize)]
pub struct Builds {
    builds: Vec<Outcome>,
    left_behind: Vec<String>,
    #[serde(skip)]
    interrupted: bool,
}

pub async fn build(
    paths: &[PathBuf],
    vars: &Vars,
    g: &Global,
    flags: &BuildFlags,
) -> Result<Builds, CliError> {
    check_on_error(flags.on_error)?;
    let recipes = load_all(paths, vars)?;
    let signals = Signals::install();
    let clients = load_clients(g).await?;
    check_regions(&recipes, &clients)?;
    let ui = Ui::new(g.plain);
    let report = Batch::new(&recipes, &clients, &ui, flags)
        .run(signals)
        .await;
    write_results(&report, flags, &ui, recipes.len() == 1);
    Ok(report)
}

/// `--on-error=ask` needs someone to answer: a terminal on stdin and stderr.
fn check_on_error(on_error: OnError) -> Result<(), CliError> {
    if on_error == OnError::Ask
        && !(std::io::stdin().is_terminal() && std::io::stderr().is_terminal())
    {
        return Err(CliError::Input(
            "--on-error=ask needs a terminal to ask on (stdin and stderr are not one)\n  \
             help: use --on-error=abort to keep a failed builder, or cleanup (the default)"
                .into(),
        ));
    }
    Ok(())
}

/// The build region is known only now (from the AWS configuration); still no AWS call.
fn check_regions(recipes: &[Recipe], clients: &Clients) -> Result<(), CliError> {
    for r in recipes {
        if let Some((at, msg)) = pipeline::distribute::build_region_listed(r, &clients.region) {
            return Err(CliError::Input(format!(
                "{}:{at}: {msg}\n  help: remove it from regions (copies go to the other regions)",
                r.path.display()
            )));
        }
    }
    Ok(())
}

/// The manifest, the CI outputs and the dotenv report; a failure to write one is told, not
/// fatal (the images exist).
fn write_results(report: &Builds, flags: &BuildFlags, ui: &Ui, single: bool) {
    let rows = report.rows();
    if let Some(m) = &flags.manifest {
        let built: Vec<&BuildResult> = report.built().collect();
        if let Err(e) = write_manifest(m, &built) {
            ui.line(&format!("could not write manifest {}: {e}", m.display()));
        }
    }
    if let Err(e) = ci::github(&rows, single) {
        ui.line(&format!("could not write the GitHub Actions outputs: {e}"));
    }
    if let Some(p) = &flags.dotenv
        && let Err(e) = ci::dotenv(p, &rows, single)
    {
        ui.line(&format!(
            "could not write dotenv report {}: {e}",
            p.display()
        ));
    }
}

/// One recipe's build: its id, its view of the output, its undo stack (which outlives the
/// build future: cleanup needs it after a cancellation), and the builder it keeps, if any.
struct Run {
    id: String,
    ui: Ui,
    cleanup: Arc<Cleanup>,
    kept: Option<Kept>,
}

/// Every build of one `bake build`, from start to cleanup.
struct Batch<'a> {
    recipes: &'a [Recipe],
    clients: &'a Clients,
    ui: &'a Ui,
    flags: &'a BuildFlags,
    opts: BuildOptions,
    runs: Vec<Run>,
    interrupted: bool,
}

impl<'a> Batch<'a> {
    fn new(recipes: &'a [Recipe], clients: &'a Clients, ui: &'a Ui, flags: &'a BuildFlags) -> Self {
        let several = recipes.len() > 1;
        if several && flags.jobs > 1 {
            ui.concurrent();
        }
        let runs = recipes
            .iter()
            .map(|r| Run {
                id: pipeline::new_build_id(),
                ui: if several {
                    ui.child(&r.name)
                } else {
                    ui.clone()
                },
                cleanup: Arc::new(Cleanup::new()),
                kept: None,
            })
            .collect();
        let opts = BuildOptions {
            force: flags.force,
            keep_failed: flags.keep_failed,
            test_only: flags.test_only,
            on_error: flags.on_error,
            no_checkpoints: flags.no_checkpoints,
        };
        Batch {
            recipes,
            clients,
            ui,
            flags,
            opts,
            runs,
            interrupted: false,
        }
    }

    /// Runs every build (`-j` at once), keeps what `--on-error` says to keep, then cleans up
    /// the rest, reacting to signals throughout.
    async fn run(mut self, mut signals: Signals) -> Builds {
        let started = Instant::now();
        // Journal entries and lease renewals outlive the build future (cleanup needs them).
        let lives: Vec<pipeline::Liveness> = self
            .recipes
            .iter()
            .zip(&self.runs)
            .map(|(r, run)| pipeline::Liveness::start(self.clients, r, &run.id))
            .collect();
        let results = self.drive(&mut signals).await;
        if !self.interrupted {
            self.keep_builders(&results, &mut signals).await;
        }
        let left = self.clean(&mut signals).await;
        for (l, run) in lives.into_iter().zip(&self.runs) {
            match run.kept {
                Some(_) => l.end_kept(),
                None => l.end(left.is_empty()),
            }
        }
        tell_left_behind(self.ui, &left);
        let builds = self.outcomes(results, started);
        Builds {
            builds,
            left_behind: left,
            interrupted: self.interrupted,
        }
    }

    /// All builds inside one future, so a signal cancels them together. `None`: interrupted.
    async fn drive(
        &mut self,
        signals: &mut Signals,
    ) -> Vec<Option<Result<BuildResult, BuildError>>> {
        let (clients, opts, runs) = (self.clients, &self.opts, &self.runs);
        let builds = futures::stream::iter(self.recipes.iter().zip(runs).enumerate())
            .map(|(i, (r, run))| async move {
                run.ui.line(&format!(
                    "build {} of recipe {} ({})",
                    run.id,
                    r.name,
                    r.path.display()
                ));
                let res = pipeline::run(clients, r, opts, &run.ui, &run.cleanup, &run.id).await;
                (i, res)
            })
            .buffer_unordered(self.flags.jobs.max(1))
            .collect::<Vec<_>>();
        let mut results: Vec<_> = self.recipes.iter().map(|_| None).collect();
        tokio::select! {
            done = builds => {
                for (i, res) in done {
                    if let Err(e) = &res {
                        let ui = &self.runs[i].ui;
                        ui.line(&format!("build failed: {}", ui.redact(&e.to_string())));
                    }
                    results[i] = Some(res);
                }
            }
            sig = signals.next() => {
                self.interrupted = true;
                self.ui.line(&format!(
                    "{}: cleaning up (press Ctrl-C {} to stop cleaning and leave resources behind)",
                    sig_name(sig),
                    if sig == Sig::Int { "again" } else { "twice" }
                ));
            }
        }
        results
    }

    /// `--on-error`: for each build that failed while its builder was reachable, keep the
    /// builder (abort, or ask's answer) and write the way in.
    async fn keep_builders(
        &mut self,
        results: &[Option<Result<BuildResult, BuildError>>],
        signals: &mut Signals,
    ) {
        for (i, res) in results.iter().enumerate() {
            let Some(Err(e)) = res else { continue };
            let run = &self.runs[i];
            let Some(access) = run.cleanup.reachable() else {
                continue;
            };
            let keep = match (self.flags.on_error, run.cleanup.decided()) {
                (OnError::Cleanup, _) => false,
                (OnError::Abort, _) => true,
                (OnError::Ask, Some(c)) => c == Choice::Abort,
                (OnError::Ask, None) => {
                    let what = format!("build failed: {}", run.ui.redact(&e.to_string()));
                    tokio::select! {
                        c = on_error::ask(&run.ui, &what, false) => c == Choice::Abort,
                        _ = signals.next() => { self.interrupted = true; return; }
                    }
                }
            };
            if !keep {
                continue;
            }
            let dir = pipeline::journal::keep_dir(&run.id);
            let saved = dir
                .ok_or_else(|| std::io::Error::other("no state directory (HOME is not set)"))
                .and_then(|d| access.keep(&d, &run.id, &self.clients.region));
            match saved {
                Ok(k) => self.runs[i].kept = Some(k),
                Err(e) => run.ui.line(&format!(
                    "cannot keep the builder: writing its key failed ({e}); cleaning up instead"
                )),
            }
        }
    }

    /// Cleans every build's temporaries (all but a kept builder's). Only a second SIGINT
    /// stops this, and then says exactly what is left; SIGTERM and SIGHUP let it finish.
    async fn clean(&mut self, signals: &mut Signals) -> Vec<String> {
        let clients = self.clients;
        let cleaning = futures::future::join_all(self.runs.iter().map(|r| async move {
            match r.kept {
                Some(_) => {
                    r.cleanup
                        .run_except(clients, &r.ui, on_error::needed_by_builder)
                        .await
                }
                None => r.cleanup.run(clients, &r.ui).await,
            }
        }));
        tokio::pin!(cleaning);
        loop {
            tokio::select! {
                failed = &mut cleaning => {
                    return failed
                        .into_iter()
                        .flatten()
                        .map(|(u, e)| format!("{u} ({e})"))
                        .collect();
                }
                sig = signals.next() => {
                    self.interrupted = true;
                    if sig == Sig::Int && signals.sigints >= 2 {
                        self.ui.line("cleanup interrupted");
                        return self.pending();
                    }
                    // Say what is still being removed now: if SIGKILL follows, this is the record.
                    let pending = self.pending();
                    self.ui.line(&format!(
                        "{}: still cleaning up ({}); press Ctrl-C {} to stop and leave resources behind",
                        sig_name(sig),
                        if pending.is_empty() { "nearly done".to_string() } else { pending.join("; ") },
                        if signals.sigints == 0 { "twice" } else { "again" },
                    ));
                }
            }
        }
    }

    /// What is still on the undo stacks, without what a kept builder keeps on purpose.
    fn pending(&self) -> Vec<String> {
        self.runs
            .iter()
            .flat_map(|r| {
                r.cleanup
                    .pending()
                    .into_iter()
                    .filter(|u| r.kept.is_none() || !on_error::needed_by_builder(u))
            })
            .map(|u| u.to_string())
            .collect()
    }

    /// Each build's entry in the report; the summary covers cleanup too (it is part of what a
    /// build costs).
    fn outcomes(
        &mut self,
        results: Vec<Option<Result<BuildResult, BuildError>>>,
        started: Instant,
    ) -> Vec<Outcome> {
        let region = &self.clients.region;
        let runs = self.runs.iter_mut();
        results
            .into_iter()
            .zip(runs.zip(self.recipes))
            .map(|(res, (run, r))| {
                let error = match res {
                    Some(Ok(mut b)) => {
                        b.stages = pipeline::stage_times(&run.ui);
                        b.seconds = started.elapsed().as_secs_f64();
                        return Outcome::Built(Box::new(b));
                    }
                    Some(Err(e)) => run.ui.redact(&e.to_string()),
                    None => "interrupted".into(),
                };
                let kept = run.kept.take().map(|mut k| {
                    k.resources = run
                        .cleanup
                        .pending()
                        .iter()
                        .map(|u| u.to_string())
                        .collect();
                    Box::new(k)
                });
                Outcome::Failed {
                    recipe: r.name.clone(),
                    region: region.clone(),
                    build_id: run.id.clone(),
                    error,
                    kept,
                }
            })
            .collect()
    }
}

fn tell_left_behind(ui: &Ui, left: &[String]) {
    if left.is_empty() {
        return;
    }
    ui.line("these resources were NOT removed; delete them by hand (or run `bake gc`):");
    for l in left {
        ui.line(&format!("  - {l}"));
    }
    ui.line("every one carries the tag bake:build-id; e.g. aws ec2 describe-instances --filters Name=tag:bake:build-id,Values=<id>");
}

impl Builds {
    fn built(&self) -> impl Iterator<Item = &BuildResult> {
        self.builds.iter().filter_map(|o| match o {
            Outcome::Built(b) => Some(&**b),
            Outcome::Failed { .. } => None,
        })
    }

    fn rows(&self) -> Vec<Row<'_>> {
        self.builds
            .iter()
            .map(|o| match o {
                Outcome::Built(b) => Row::Built(b),
                Outcome::Failed { recipe, error, .. } => Row::Failed { recipe, error },
            })
            .collect()
    }
}

impl Report for Builds {
    fn text(&self) -> String {
        let mut t = String::new();
        for b in self.built() {
            built_text(&mut t, b);
        }
        t.trim_end().to_string()
    }

    fn outcome(&self) -> Result<(), CliError> {
        for o in &self.builds {
            if let Outcome::Failed {
                recipe,
                error,
                kept,
                ..
            } = o
            {
                if error == "interrupted" {
                    eprintln!("{recipe}: interrupted");
                    continue;
                }
                eprintln!("{recipe}: FAILED: {error}");
                ci::annotate_failure(recipe, error);
                if let Some(k) = kept {
                    eprint!("{}", kept_text(recipe, k));
                }
            }
        }
        if self.interrupted {
            Err(CliError::Interrupted)
        } else if self.built().count() == self.builds.len() && self.left_behind.is_empty() {
            Ok(())
        } else {
            Err(CliError::Failed)
        }
    }
}

fn built_text(t: &mut String, b: &BuildResult) {
    let how = if b.cached {
        "existing image (cache hit)"
    } else {
        "built"
    };
    let _ = writeln!(
        t,
        "{}: {} {} in {} ({how})",
        b.recipe,
        b.region,
        b.ami_id,
        fmt_duration(Duration::from_secs_f64(b.seconds))
    );
    let _ = writeln!(t, "  name        {}", b.ami_name);
    let _ = writeln!(t, "  fingerprint {}", b.fingerprint);
    if !b.snapshots.is_empty() {
        let _ = writeln!(t, "  snapshots   {}", b.snapshots.join(", "));
    }
    if let Some(tests) = &b.tests {
        let _ = writeln!(
            t,
            "  tests       {} passed on {} (from {}), {}",
            tests.results.len(),
            tests.instance_id,
            tests.image_id,
            tests.fingerprint
        );
    }
    for s in &b.stages {
        let d = fmt_duration(Duration::from_secs_f64(s.seconds));
        let _ = writeln!(t, "  {:<24}{d}", s.name);
    }
}

/// What stderr says of a kept builder: what is kept, how to get in, how to remove it.
fn kept_text(recipe: &str, k: &Kept) -> String {
    let mut t = format!(
        "{recipe}: kept the builder to debug it (--on-error); the rest of the build was removed\n"
    );
    for r in &k.resources {
        let _ = writeln!(t, "  kept:      {r}");
    }
    if let Some(ssh) = &k.ssh_command {
        let _ = writeln!(t, "  log in:    {ssh}");
    }
    if let Some(ssm) = &k.ssm_command {
        let _ = writeln!(t, "  log in:    {ssm}");
    }
    let _ = writeln!(t, "  clean up:  {}", k.cleanup_command);
    let _ = writeln!(
        t,
        "  (its dead-man switch still powers it off at {}: builder.max_lifetime)",
        k.powers_off_at
    );
    t
}

fn write_manifest(path: &Path, built: &[&BuildResult]) -> std::io::Result<()> {
    let entries: Vec<manifest::Entry> = built.iter().map(|b| manifest::Entry::from(*b)).collect();
    manifest::append(path, &manifest::run_uuid(), &entries)
}

/// `bake plan`: `{"format_version", "plans": [...]}`.
#[derive(Serialize)]
pub struct Plans {
    plans: Vec<PlanRow>,
}

pub async fn plan(paths: &[PathBuf], vars: &Vars, g: &Global) -> Result<Plans, CliError> {
    let recipes = load_all(paths, vars)?;
    let clients = load_clients(g).await?;
    let mut plans = Vec::new();
    for r in &recipes {
        plans.push(
            pipeline::lookup::plan_one(&clients, r)
                .await
                .map_err(CliError::runtime)?,
        );
    }
    Ok(Plans { plans })
}

impl Report for Plans {
    fn text(&self) -> String {
        let mut t = String::new();
        for p in &self.plans {
            let fp = &p.fingerprint[..12];
            match &p.hit {
                Some(ami) => {
                    let _ = writeln!(t, "{}: {fp} hit: {ami}", p.recipe);
                    if p.tests_changed {
                        let _ = writeln!(
                            t,
                            "  tests changed: a build runs the current tests on {ami} (no rebuild)"
                        );
                    }
                }
                None => {
                    let _ = writeln!(t, "{}: {fp} miss: would build", p.recipe);
                    if let Some(c) = &p.checkpoint {
                        let _ = writeln!(
                            t,
                            "  from checkpoint {} (after step {}; runs only the steps after it)",
                            c.ami_id, c.step
                        );
                    }
                }
            }
            if p.regions.len() > 1 {
                for r in &p.regions {
                    let state = match r.state {
                        RegionStatus::Present => "present",
                        RegionStatus::CopyNeeded => "copy needed",
                        RegionStatus::BuildNeeded => "build needed",
                    };
                    let ami = r.ami_id.as_deref().unwrap_or("");
                    let line = format!("  {:<15} {state:<12} {ami}", r.region);
                    let _ = writeln!(t, "{}", line.trim_end());
                }
            }
            if p.hit.is_some() {
                continue;
            }
            let Some(newest) = &p.newest else {
                let _ = writeln!(t, "  no earlier image of this recipe");
                continue;
            };
            let _ = writeln!(t, "  compared with newest image {newest}:");
            for c in &p.changed {
                let _ = writeln!(t, "    {c}");
            }
        }
        t.trim_end().to_string()
    }
}
