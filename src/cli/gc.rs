//! `bake gc`: list (default) or remove (`--yes`) what dead builds left behind.

use std::fmt::Write as _;

use clap::Args;
use serde::Serialize;

use super::{CliError, Global, Report, load_clients};
use crate::aws::Clients;
use crate::gc::{self, Options};

#[derive(Args, Debug)]
pub struct GcArgs {
    /// Remove what dead builds left (without it, only list).
    #[arg(long)]
    pub yes: bool,
    /// Only builds that started at least this long ago (e.g. 2h, 1d).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub older_than: Option<std::time::Duration>,
    /// Also look for staged objects (SSM communicator) in this bucket (`bucket` or
    /// `bucket/prefix`; repeatable). Builds bake knows of are found without it.
    #[arg(long = "bucket", value_name = "BUCKET[/PREFIX]")]
    pub buckets: Vec<String>,
    /// Only this build (e.g. one kept by `bake build --on-error=abort`); repeatable.
    #[arg(long = "build-id", value_name = "ID")]
    pub build_ids: Vec<String>,
}

/// `bake gc`: `{"format_version", "region", "regions", "removed", "builds": [...]}`; each
/// build names its `region` (a build's copies are in regions of their own).
#[derive(Serialize)]
pub struct GcReport {
    region: String,
    /// Every region looked in: the build region, then the copy regions of its builds.
    regions: Vec<String>,
    removed: bool,
    builds: Vec<gc::Build>,
    #[serde(skip)]
    failed: bool,
}

pub async fn run(args: GcArgs, g: &Global) -> Result<GcReport, CliError> {
    if let Some(bad) = args.build_ids.iter().find(|b| !gc::is_build_id(b)) {
        return Err(CliError::Input(format!(
            "--build-id {bad:?} is not a build id\n  help: build ids look like b-0123456789 (bake build prints them first)"
        )));
    }
    let c = load_clients(g).await?;
    let opts = Options {
        older_than: args.older_than,
        buckets: args.buckets,
        build_ids: args.build_ids,
    };
    // The copy regions first: what tells them a build is dead (its journal entry) goes with
    // the build region's pass, which comes last.
    let copy_regions = gc::copy_regions(&c.region, &opts);
    let mut builds = Vec::new();
    let mut failed = false;
    for region in &copy_regions {
        let (b, f) = pass(&c.in_region(region), &opts, args.yes).await?;
        builds.extend(b);
        failed |= f;
    }
    let (b, f) = pass(&c, &opts, args.yes).await?;
    builds.extend(b);
    failed |= f;
    let mut regions = vec![c.region.clone()];
    regions.extend(copy_regions);
    Ok(GcReport {
        region: c.region.clone(),
        regions,
        removed: args.yes,
        builds,
        failed,
    })
}

/// One region: what dead builds left there, removed with `yes`; whether a removal failed.
async fn pass(c: &Clients, opts: &Options, yes: bool) -> Result<(Vec<gc::Build>, bool), CliError> {
    let mut survey = gc::survey(c, opts).await.map_err(CliError::runtime)?;
    if !yes {
        return Ok((survey.builds, false));
    }
    let fresh = gc::fresh(&survey);
    let users = survey.snapshot_users.clone();
    let jobs = survey
        .builds
        .iter_mut()
        .filter(|b| b.remove)
        .map(|b| gc::remove(c, b, &users));
    let mut failed = !futures::future::join_all(jobs)
        .await
        .into_iter()
        .all(|ok| ok);
    for id in &survey.stale_journal {
        crate::pipeline::journal::remove(id);
    }
    if fresh.is_empty() {
        return Ok((survey.builds, failed));
    }
    let ids: Vec<&str> = fresh.iter().map(|(id, _)| id.as_str()).collect();
    eprintln!(
        "{} died less than {}s after creating something; looking again in {} once EC2 lists it",
        ids.join(", "),
        gc::SETTLE.as_secs(),
        c.region
    );
    match gc::settle(c, opts, &fresh).await {
        Ok(found) => {
            for b in found {
                failed |= b.resources.iter().any(|r| r.error.is_some());
                match survey.builds.iter_mut().find(|x| x.build_id == b.build_id) {
                    Some(x) => {
                        x.remove = true;
                        x.resources.extend(b.resources);
                    }
                    None => survey.builds.push(b),
                }
            }
        }
        Err(e) => {
            super::report_error(&e);
            failed = true;
        }
    }
    Ok((survey.builds, failed))
}

impl GcReport {
    /// " in <region>" for a build's resources outside the build region.
    fn elsewhere(&self, b: &gc::Build) -> String {
        if b.region == self.region {
            String::new()
        } else {
            format!(" in {}", b.region)
        }
    }
}

impl Report for GcReport {
    fn text(&self) -> String {
        let mut t = String::new();
        for b in self.builds.iter().filter(|b| b.remove) {
            let kept = if b.kept {
                " (its builder was kept to debug by --on-error)"
            } else {
                ""
            };
            let _ = writeln!(
                t,
                "{} (recipe {}, started {}){}: dead: {}{kept}",
                b.build_id,
                b.recipe.as_deref().unwrap_or("?"),
                b.started.as_deref().unwrap_or("?"),
                self.elsewhere(b),
                b.verdict.reason()
            );
            for r in &b.resources {
                let _ = match (&r.result, &r.error) {
                    (Some(m), _) => writeln!(t, "  removed {r}: {m}"),
                    (_, Some(e)) => writeln!(t, "  NOT removed {r}: {e}"),
                    _ => writeln!(t, "  {r}"),
                };
            }
        }
        for b in self.builds.iter().filter(|b| !b.remove) {
            let why = if b.verdict.is_dead() {
                format!(
                    "dead ({}) but younger than --older-than",
                    b.verdict.reason()
                )
            } else {
                format!("running: {}", b.verdict.reason())
            };
            let _ = writeln!(
                t,
                "{} (recipe {}){}: {why}; left alone ({} resource(s))",
                b.build_id,
                b.recipe.as_deref().unwrap_or("?"),
                self.elsewhere(b),
                b.resources.len()
            );
        }
        let dead = self.builds.iter().filter(|b| b.remove).count();
        if dead == 0 {
            let _ = write!(
                t,
                "nothing to clean up: no dead build left anything in {}",
                self.regions.join(", ")
            );
        } else if !self.removed {
            let _ = write!(
                t,
                "{dead} dead build(s) left resources; `bake gc --yes` removes them"
            );
        }
        t.trim_end().to_string()
    }

    fn outcome(&self) -> Result<(), CliError> {
        if self.failed {
            Err(CliError::Failed)
        } else {
            Ok(())
        }
    }
}
