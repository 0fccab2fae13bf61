//! `bake build` and `bake plan`: load clients once, run builds (several at once with -j), own
//! each build's cleanup stack so Ctrl-C/SIGTERM and failures end with nothing left, print the
//! [`Builds`] report and the manifest. The signal handling is in [`super::signals`].

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde::Serialize;

use super::manifest;
use super::signals::{Sig, Signals, sig_name};
use super::{CliError, Global, Report, Vars, load_all, load_clients};
use crate::aws::Clients;
use crate::pipeline::lookup::PlanRow;
use crate::pipeline::{self, BuildOptions, BuildResult, Cleanup};
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
        error: String,
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
    let recipes = load_all(paths, vars)?;
    let signals = Signals::install();
    let clients = load_clients(g).await?;
    // The build region is known only now (from the AWS configuration); still no AWS call.
    for r in &recipes {
        if let Some((at, msg)) = pipeline::distribute::build_region_listed(r, &clients.region) {
            return Err(CliError::Input(format!(
                "{}:{at}: {msg}\n  help: remove it from regions (copies go to the other regions)",
                r.path.display()
            )));
        }
    }
    let ui = Ui::new(g.plain);
    let report = run_builds(&recipes, &clients, &ui, flags, signals).await;
    if let Some(m) = &flags.manifest {
        let built: Vec<&BuildResult> = report.built().collect();
        if let Err(e) = write_manifest(m, &built) {
            ui.line(&format!("could not write manifest {}: {e}", m.display()));
        }
    }
    Ok(report)
}

/// Runs every build (`-j` at once) and then every cleanup, reacting to signals throughout.
async fn run_builds(
    recipes: &[Recipe],
    clients: &Clients,
    ui: &Ui,
    flags: &BuildFlags,
    mut signals: Signals,
) -> Builds {
    let started = std::time::Instant::now();
    let (clients, jobs) = (clients.clone(), flags.jobs);
    let several = recipes.len() > 1;
    let opts = BuildOptions {
        force: flags.force,
        keep_failed: flags.keep_failed,
        test_only: flags.test_only,
        no_checkpoints: flags.no_checkpoints,
    };
    let cleanups: Vec<Arc<Cleanup>> = recipes.iter().map(|_| Arc::new(Cleanup::new())).collect();
    let uis: Vec<Ui> = recipes
        .iter()
        .map(|r| {
            if several {
                ui.child(&r.name)
            } else {
                ui.clone()
            }
        })
        .collect();

    // Ids, journal entries and lease renewals outlive the build future (cleanup needs them).
    let ids: Vec<String> = recipes.iter().map(|_| pipeline::new_build_id()).collect();
    let lives: Vec<pipeline::Liveness> = recipes
        .iter()
        .zip(&ids)
        .map(|(r, id)| pipeline::Liveness::start(&clients, r, id))
        .collect();

    // All builds run inside one future so a signal cancels them together; each build's
    // cleanup stack lives outside it and survives the cancellation.
    let builds = futures::stream::iter(recipes.iter().enumerate())
        .map(|(i, r)| {
            let (clients, opts, ui, cleanup) = (&clients, &opts, &uis[i], cleanups[i].clone());
            let id = ids[i].clone();
            async move {
                ui.line(&format!(
                    "build {id} of recipe {} ({})",
                    r.name,
                    r.path.display()
                ));
                let res = pipeline::run(clients, r, opts, ui, &cleanup, &id).await;
                (i, res)
            }
        })
        .buffer_unordered(jobs.max(1))
        .collect::<Vec<_>>();

    let region = clients.region.clone();
    let failed = |r: &Recipe, error: String| Outcome::Failed {
        recipe: r.name.clone(),
        region: region.clone(),
        error,
    };
    let mut outcomes: Vec<Outcome> = recipes
        .iter()
        .map(|r| failed(r, "interrupted".into()))
        .collect();
    let mut was_interrupted = false;
    tokio::select! {
        done = builds => {
            for (i, res) in done {
                outcomes[i] = match res {
                    Ok(r) => Outcome::Built(Box::new(r)),
                    Err(e) => {
                        uis[i].line(&format!("build failed: {}", uis[i].redact(&e.to_string())));
                        failed(&recipes[i], uis[i].redact(&e.to_string()))
                    }
                };
            }
        }
        sig = signals.next() => {
            was_interrupted = true;
            ui.line(&format!(
                "{}: cleaning up (press Ctrl-C {} to stop cleaning and leave resources behind)",
                sig_name(sig),
                if sig == Sig::Int { "again" } else { "twice" }
            ));
        }
    }

    // Clean every build's temporaries. Only a second SIGINT stops this, and then says exactly
    // what is left; SIGTERM and SIGHUP let it finish.
    let cleaning =
        futures::future::join_all(cleanups.iter().zip(&uis).map(|(c, u)| c.run(&clients, u)));
    tokio::pin!(cleaning);
    let mut left: Vec<String> = Vec::new();
    loop {
        tokio::select! {
            failed = &mut cleaning => {
                for f in failed.into_iter().flatten() {
                    left.push(format!("{} ({})", f.0, f.1));
                }
                break;
            }
            sig = signals.next() => {
                was_interrupted = true;
                if sig == Sig::Int && signals.sigints >= 2 {
                    for c in &cleanups {
                        left.extend(c.pending().iter().map(|u| u.to_string()));
                    }
                    ui.line("cleanup interrupted");
                    break;
                }
                // Say what is still being removed now: if SIGKILL follows, this is the record.
                let pending: Vec<String> = cleanups
                    .iter()
                    .flat_map(|c| c.pending())
                    .map(|u| u.to_string())
                    .collect();
                ui.line(&format!(
                    "{}: still cleaning up ({}); press Ctrl-C {} to stop and leave resources behind",
                    sig_name(sig),
                    if pending.is_empty() { "nearly done".to_string() } else { pending.join("; ") },
                    if signals.sigints == 0 { "twice" } else { "again" },
                ));
            }
        }
    }
    for l in lives {
        l.end(left.is_empty());
    }
    if !left.is_empty() {
        ui.line("these resources were NOT removed; delete them by hand (or run `bake gc`):");
        for l in &left {
            ui.line(&format!("  - {l}"));
        }
        ui.line("every one carries the tag bake:build-id; e.g. aws ec2 describe-instances --filters Name=tag:bake:build-id,Values=<id>");
    }

    // The summary covers cleanup too: it is part of what a build costs.
    for (o, u) in outcomes.iter_mut().zip(&uis) {
        if let Outcome::Built(b) = o {
            b.stages = pipeline::stage_times(u);
            b.seconds = started.elapsed().as_secs_f64();
        }
    }

    Builds {
        builds: outcomes,
        left_behind: left,
        interrupted: was_interrupted,
    }
}

impl Builds {
    fn built(&self) -> impl Iterator<Item = &BuildResult> {
        self.builds.iter().filter_map(|o| match o {
            Outcome::Built(b) => Some(&**b),
            Outcome::Failed { .. } => None,
        })
    }
}

impl Report for Builds {
    fn text(&self) -> String {
        let mut t = String::new();
        for b in self.built() {
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
        t.trim_end().to_string()
    }

    fn outcome(&self) -> Result<(), CliError> {
        for o in &self.builds {
            if let Outcome::Failed { recipe, error, .. } = o {
                if error == "interrupted" {
                    eprintln!("{recipe}: interrupted");
                } else {
                    eprintln!("{recipe}: FAILED: {error}");
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
            let Some(newest) = (match &p.hit {
                Some(ami) => {
                    let _ = writeln!(t, "{}: {fp} hit: {ami}", p.recipe);
                    if p.tests_changed {
                        let _ = writeln!(
                            t,
                            "  tests changed: a build runs the current tests on {ami} (no rebuild)"
                        );
                    }
                    continue;
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
                    &p.newest
                }
            }) else {
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
