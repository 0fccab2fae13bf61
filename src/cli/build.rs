//! `bake build` and `bake plan`: load clients once, run builds (several at once with -j), own
//! each build's cleanup stack so Ctrl-C/SIGTERM and failures end with nothing left, print the
//! summary, JSON and manifest.

use std::path::Path;
use std::sync::Arc;

use futures::StreamExt;
use serde_json::json;

use super::{EXIT_FAILED, EXIT_INTERRUPTED, Global, load_clients, report_error};
use crate::pipeline::{self, BuildOptions, BuildResult, Cleanup};
use crate::recipe::model::Recipe;
use crate::ui::{Output, Ui, fmt_duration};

/// The signals a build reacts to, installed once at the start so none is missed (or kills the
/// process) between one wait and the next.
///
/// SIGINT, SIGTERM and SIGHUP stop the builds and start cleanup. Only a second SIGINT (Ctrl-C
/// again) abandons cleanup. SIGTERM and SIGHUP during cleanup do not: CI cancels a job with
/// SIGINT, then SIGTERM 7.5 s later, then SIGKILL 2.5 s after that, and abandoning at the
/// SIGTERM would leave everything behind that the remaining seconds could still remove.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    sigints: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sig {
    Int,
    Term,
    Hup,
}

impl Signals {
    fn install() -> Signals {
        use tokio::signal::unix::{SignalKind, signal};
        Signals {
            int: signal(SignalKind::interrupt()).expect("SIGINT handler"),
            term: signal(SignalKind::terminate()).expect("SIGTERM handler"),
            hup: signal(SignalKind::hangup()).expect("SIGHUP handler"),
            sigints: 0,
        }
    }

    async fn next(&mut self) -> Sig {
        let s = tokio::select! {
            _ = self.int.recv() => Sig::Int,
            _ = self.term.recv() => Sig::Term,
            _ = self.hup.recv() => Sig::Hup,
        };
        if s == Sig::Int {
            self.sigints += 1;
        }
        s
    }
}

enum Outcome {
    Built(Box<BuildResult>),
    Failed(String),
    Interrupted,
}

pub async fn build(
    recipes: Vec<Recipe>,
    g: &Global,
    jobs: usize,
    force: bool,
    manifest: Option<&Path>,
) -> u8 {
    let started = std::time::Instant::now();
    let mut signals = Signals::install();
    let Some(clients) = load_clients(g).await else {
        return EXIT_FAILED;
    };
    let ui = Ui::new(g.plain);
    let several = recipes.len() > 1;
    let opts = BuildOptions { force };
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

    let mut outcomes: Vec<Outcome> = recipes.iter().map(|_| Outcome::Interrupted).collect();
    let mut was_interrupted = false;
    tokio::select! {
        done = builds => {
            for (i, res) in done {
                outcomes[i] = match res {
                    Ok(r) => Outcome::Built(Box::new(r)),
                    Err(e) => {
                        uis[i].line(&format!("build failed: {}", uis[i].redact(&e.to_string())));
                        Outcome::Failed(uis[i].redact(&e.to_string()))
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

    let region = clients.region.clone();
    if let Some(m) = manifest {
        let built: Vec<&BuildResult> = outcomes
            .iter()
            .filter_map(|o| {
                if let Outcome::Built(r) = o {
                    Some(&**r)
                } else {
                    None
                }
            })
            .collect();
        if let Err(e) = write_manifest(m, &built) {
            ui.line(&format!("could not write manifest {}: {e}", m.display()));
        }
    }
    print_results(&recipes, &outcomes, &left, g.output, &region);

    if was_interrupted {
        EXIT_INTERRUPTED
    } else if outcomes.iter().all(|o| matches!(o, Outcome::Built(_))) && left.is_empty() {
        0
    } else {
        EXIT_FAILED
    }
}

fn sig_name(s: Sig) -> &'static str {
    match s {
        Sig::Int => "interrupted (SIGINT)",
        Sig::Term => "terminated (SIGTERM)",
        Sig::Hup => "hung up (SIGHUP)",
    }
}

fn print_results(
    recipes: &[Recipe],
    outcomes: &[Outcome],
    left: &[String],
    output: Output,
    region: &str,
) {
    match output {
        Output::Json => {
            let items: Vec<_> = recipes
                .iter()
                .zip(outcomes)
                .map(|(r, o)| match o {
                    Outcome::Built(b) => serde_json::to_value(b).unwrap(),
                    Outcome::Failed(e) => json!({ "recipe": r.name, "region": region, "error": e }),
                    Outcome::Interrupted => {
                        json!({ "recipe": r.name, "region": region, "error": "interrupted" })
                    }
                })
                .map(|mut v| {
                    v["left_behind"] = json!(left);
                    v
                })
                .collect();
            if items.len() == 1 {
                println!("{}", items[0]);
            } else {
                println!("{}", json!({ "builds": items, "left_behind": left }));
            }
        }
        Output::Text => {
            for (r, o) in recipes.iter().zip(outcomes) {
                match o {
                    Outcome::Built(b) => {
                        let how = if b.cached {
                            "existing image (cache hit)"
                        } else {
                            "built"
                        };
                        println!(
                            "{}: {} {} in {} ({how})",
                            r.name,
                            b.region,
                            b.ami_id,
                            fmt_duration(std::time::Duration::from_secs_f64(b.seconds))
                        );
                        println!("  name        {}", b.ami_name);
                        println!("  fingerprint {}", b.fingerprint);
                        if !b.snapshots.is_empty() {
                            println!("  snapshots   {}", b.snapshots.join(", "));
                        }
                        for s in &b.stages {
                            println!(
                                "  {:<24}{}",
                                s.name,
                                fmt_duration(std::time::Duration::from_secs_f64(s.seconds))
                            );
                        }
                    }
                    Outcome::Failed(e) => eprintln!("{}: FAILED: {e}", r.name),
                    Outcome::Interrupted => eprintln!("{}: interrupted", r.name),
                }
            }
        }
    }
}

/// Appends to a Packer-style manifest so pipelines that read Packer's keep working.
fn write_manifest(path: &Path, built: &[&BuildResult]) -> std::io::Result<()> {
    let mut doc: serde_json::Value = std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_else(|| json!({ "builds": [] }));
    let now = jiff::Timestamp::now().as_second();
    for b in built {
        if let Some(arr) = doc["builds"].as_array_mut() {
            arr.push(json!({
                "name": b.recipe,
                "builder_type": "bake.amazon-ebs",
                "build_time": now,
                "files": null,
                "artifact_id": format!("{}:{}", b.region, b.ami_id),
                "packer_run_uuid": b.build_id,
                "custom_data": { "fingerprint": b.fingerprint, "cached": b.cached, "ami_name": b.ami_name, "source_ami": b.source_ami },
            }));
        }
        doc["last_run_uuid"] = json!(b.build_id);
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&doc)?)?;
    std::fs::rename(tmp, path)
}

pub async fn plan(recipes: Vec<Recipe>, g: &Global) -> u8 {
    let Some(clients) = load_clients(g).await else {
        return EXIT_FAILED;
    };
    let mut rows = Vec::new();
    let mut code = 0;
    for r in &recipes {
        match pipeline::lookup::plan_one(&clients, r).await {
            Ok(p) => rows.push(p),
            Err(e) => {
                report_error(&e);
                code = EXIT_FAILED;
            }
        }
    }
    match g.output {
        Output::Json => println!("{}", json!({ "plans": rows })),
        Output::Text => {
            for p in &rows {
                match &p.hit {
                    Some(ami) => println!("{}: {} hit: {ami}", p.recipe, &p.fingerprint[..12]),
                    None => {
                        println!("{}: {} miss: would build", p.recipe, &p.fingerprint[..12]);
                        match &p.newest {
                            Some(n) => {
                                println!("  compared with newest image {n}:");
                                for c in &p.changed {
                                    println!("    {c}");
                                }
                            }
                            None => println!("  no earlier image of this recipe"),
                        }
                    }
                }
            }
        }
    }
    code
}
