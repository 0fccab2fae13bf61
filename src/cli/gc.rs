//! `bake gc`: list (default) or remove (`--yes`) what dead builds left behind.

use clap::Args;
use serde_json::json;

use super::{EXIT_FAILED, Global, load_clients, report_error};
use crate::gc::{self, Options};
use crate::ui::Output;

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
}

pub async fn run(args: GcArgs, g: &Global) -> u8 {
    let Some(c) = load_clients(g).await else {
        return EXIT_FAILED;
    };
    let opts = Options {
        older_than: args.older_than,
        buckets: args.buckets,
    };
    let mut survey = match gc::survey(&c, &opts).await {
        Ok(s) => s,
        Err(e) => {
            report_error(&e);
            return EXIT_FAILED;
        }
    };
    let mut failed = false;
    if args.yes {
        let fresh = gc::fresh(&survey);
        let users = survey.snapshot_users.clone();
        let jobs = survey
            .builds
            .iter_mut()
            .filter(|b| b.remove)
            .map(|b| gc::remove(&c, b, &users));
        failed = !futures::future::join_all(jobs)
            .await
            .into_iter()
            .all(|ok| ok);
        for id in &survey.stale_journal {
            crate::pipeline::journal::remove(id);
        }
        if !fresh.is_empty() {
            let ids: Vec<&str> = fresh.iter().map(|(id, _)| id.as_str()).collect();
            eprintln!(
                "{} died less than {}s after creating something; looking again once EC2 lists it",
                ids.join(", "),
                gc::SETTLE.as_secs()
            );
            match gc::settle(&c, &opts, &fresh).await {
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
                    report_error(&e);
                    failed = true;
                }
            }
        }
    }
    let dead = survey.builds.iter().filter(|b| b.remove).count();
    match g.output {
        Output::Json => println!(
            "{}",
            json!({
                "region": c.region,
                "removed": args.yes,
                "builds": survey.builds,
            })
        ),
        Output::Text => {
            for b in survey.builds.iter().filter(|b| b.remove) {
                println!(
                    "{} (recipe {}, started {}): dead: {}",
                    b.build_id,
                    b.recipe.as_deref().unwrap_or("?"),
                    b.started.as_deref().unwrap_or("?"),
                    b.verdict.reason()
                );
                for r in &b.resources {
                    match (&r.result, &r.error) {
                        (Some(m), _) => println!("  removed {r}: {m}"),
                        (_, Some(e)) => println!("  NOT removed {r}: {e}"),
                        _ => println!("  {r}"),
                    }
                }
            }
            for b in survey.builds.iter().filter(|b| !b.remove) {
                let why = if b.verdict.is_dead() {
                    format!(
                        "dead ({}) but younger than --older-than",
                        b.verdict.reason()
                    )
                } else {
                    format!("running: {}", b.verdict.reason())
                };
                println!(
                    "{} (recipe {}): {why}; left alone ({} resource(s))",
                    b.build_id,
                    b.recipe.as_deref().unwrap_or("?"),
                    b.resources.len()
                );
            }
            if dead == 0 {
                println!(
                    "nothing to clean up: no dead build left anything in {}",
                    c.region
                );
            } else if !args.yes {
                println!("{dead} dead build(s) left resources; `bake gc --yes` removes them");
            }
        }
    }
    if failed { EXIT_FAILED } else { 0 }
}
