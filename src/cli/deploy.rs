//! `bake deploy`: roll an image out to an Auto Scaling group with an instance refresh, and
//! `bake deploy status|cancel|rollback` to follow or stop one. The work is in
//! [`crate::deploy`]; this file parses flags, shows progress, handles Ctrl-C (stop waiting,
//! leave the refresh running) and prints text or JSON.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use serde_json::json;

use super::{
    EXIT_FAILED, EXIT_INPUT, EXIT_INTERRUPTED, Global, Vars, interrupted, load_clients,
    report_error,
};
use crate::aws::Clients;
use crate::deploy::{self, DeployRequest, GroupNow, PrefFlags, RefreshView, Retention, Started};
use crate::ui::{Output, Ui, fmt_duration};

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct DeployArgs {
    #[command(subcommand)]
    pub action: Option<DeployAction>,
    #[command(flatten)]
    pub run: RunArgs,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (e.g. 0s, 90s, 5m)"))
}

#[derive(Args, Debug, Default)]
pub struct RunArgs {
    /// Auto Scaling group to roll out to (default: `asg` in the recipe's [deploy] table).
    #[arg(long)]
    pub asg: Option<String>,
    /// The image to roll out.
    #[arg(long, conflicts_with = "recipe")]
    pub ami: Option<String>,
    /// Roll out the image with this recipe's current fingerprint (it must have been built);
    /// its [deploy] table gives defaults for the flags below.
    #[arg(long)]
    pub recipe: Option<PathBuf>,
    #[command(flatten)]
    pub vars: Vars,
    /// Capacity kept in service during the refresh, in percent (AWS default 90).
    #[arg(long, value_parser = clap::value_parser!(i32).range(0..=100))]
    pub min_healthy_percentage: Option<i32>,
    /// Capacity allowed above desired during the refresh, 100–200 (AWS default 100).
    #[arg(long, value_parser = clap::value_parser!(i32).range(100..=200))]
    pub max_healthy_percentage: Option<i32>,
    /// Time a new instance gets before it counts as ready (e.g. 30s, 5m).
    #[arg(long, value_parser = parse_duration)]
    pub instance_warmup: Option<Duration>,
    /// Leave instances that already run the new launch template version alone.
    #[arg(long)]
    pub skip_matching: bool,
    /// Replace PCT percent first, then pause (checkpoints PCT and 100).
    #[arg(long, value_name = "PCT", value_parser = clap::value_parser!(i32).range(1..=100))]
    pub canary: Option<i32>,
    /// How long to pause at a checkpoint (AWS default 1h).
    #[arg(long, value_parser = parse_duration)]
    pub checkpoint_delay: Option<Duration>,
    /// Roll back automatically if the refresh fails.
    #[arg(long)]
    pub auto_rollback: bool,
    /// Launch template versions to keep (never the default one or one a group uses; default 10).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub keep_versions: Option<u32>,
    /// Start the refresh and return; follow it with `bake deploy status`.
    #[arg(long)]
    pub no_wait: bool,
}

#[derive(Subcommand, Debug)]
pub enum DeployAction {
    /// Show the group's latest instance refresh and the image it runs.
    Status {
        #[arg(long)]
        asg: String,
    },
    /// Cancel the running instance refresh (replaced instances stay replaced).
    Cancel {
        #[arg(long)]
        asg: String,
        /// Return once the cancellation is requested.
        #[arg(long)]
        no_wait: bool,
    },
    /// Roll the running instance refresh back to the group's previous launch template version.
    Rollback {
        #[arg(long)]
        asg: String,
        /// Return once the rollback is requested.
        #[arg(long)]
        no_wait: bool,
    },
}

pub async fn run(args: DeployArgs, g: &Global) -> u8 {
    match args.action {
        Some(DeployAction::Status { asg }) => status(&asg, g).await,
        Some(DeployAction::Cancel { asg, no_wait }) => stop(&asg, g, no_wait, false).await,
        Some(DeployAction::Rollback { asg, no_wait }) => stop(&asg, g, no_wait, true).await,
        None => deploy_cmd(args.run, g).await,
    }
}

fn input_error(msg: &str, g: &Global) -> u8 {
    eprintln!("error: {msg}");
    if g.output == Output::Json {
        println!("{}", json!({ "error": msg }));
    }
    EXIT_INPUT
}

fn hints(asg: &str) -> String {
    format!(
        "  follow it:  bake deploy status --asg {asg}\n  cancel it:  bake deploy cancel --asg {asg}\n  roll back:  bake deploy rollback --asg {asg}"
    )
}

async fn deploy_cmd(a: RunArgs, g: &Global) -> u8 {
    let t0 = Instant::now();
    // ---- input: everything checked before any AWS call
    let loaded = match &a.recipe {
        Some(p) => match a.vars.load(p) {
            Ok(r) => Some(r),
            Err(e) => {
                eprint!("{e}");
                return EXIT_INPUT;
            }
        },
        None => None,
    };
    if a.ami.is_none() && loaded.is_none() {
        return input_error("say what to deploy: --ami ID or --recipe FILE", g);
    }
    if let Some(ami) = &a.ami
        && !ami.starts_with("ami-")
    {
        return input_error(&format!("--ami {ami:?} is not an image id (ami-…)"), g);
    }
    let recipe_deploy = loaded.as_ref().and_then(|r| r.deploy.as_ref());
    let Some(asg) = a
        .asg
        .clone()
        .or_else(|| recipe_deploy.and_then(|d| d.asg.clone()))
    else {
        return input_error(
            "which group? --asg NAME (or `asg` in the recipe's [deploy] table)",
            g,
        );
    };
    let flags = PrefFlags {
        min_healthy_percentage: a.min_healthy_percentage,
        max_healthy_percentage: a.max_healthy_percentage,
        instance_warmup: a.instance_warmup,
        skip_matching: a.skip_matching,
        canary: a.canary,
        checkpoint_delay: a.checkpoint_delay,
        auto_rollback: a.auto_rollback,
        keep_versions: a.keep_versions,
    };
    let prefs = match deploy::prefs::merge(recipe_deploy, &flags) {
        Ok(p) => p,
        Err(e) => return input_error(&e, g),
    };

    let Some(clients) = load_clients(g).await else {
        return EXIT_FAILED;
    };
    let ui = Ui::new(g.plain);
    if let Some(r) = &loaded {
        ui.add_secrets(&r.secrets);
    }
    let fail = |e: &(dyn std::error::Error + 'static), extra: serde_json::Value| {
        report_error(e);
        if g.output == Output::Json {
            let mut v = json!({ "asg": asg, "error": ui.redact(&e.to_string()) });
            if let (Some(o), Some(x)) = (v.as_object_mut(), extra.as_object()) {
                o.extend(x.clone());
            }
            println!("{v}");
        }
        EXIT_FAILED
    };

    // ---- which image
    let ami = match (&a.ami, &loaded) {
        (Some(ami), _) => ami.clone(),
        (None, Some(r)) => {
            let stage = ui.stage("image", &format!("fingerprinting recipe {}", r.name));
            match deploy::image_of_recipe(&clients, r).await {
                Ok(ami) => {
                    stage.finish(&format!("recipe {} is image {ami}", r.name));
                    ami
                }
                Err(e) => {
                    stage.fail("no image");
                    return fail(&e, json!({}));
                }
            }
        }
        (None, None) => unreachable!(),
    };

    // ---- start
    let req = DeployRequest {
        asg: asg.clone(),
        ami: ami.clone(),
        prefs: prefs.clone(),
    };
    let started = match deploy::start(&clients, &ui, &req).await {
        Ok(s) => s,
        Err(e) => return fail(&e, json!({ "ami_id": ami })),
    };
    let Started::Started {
        refresh_id,
        launch_template_id,
        version_number,
        previous_version,
        previous_image,
        pinned_from,
    } = &started
    else {
        let Started::AlreadyOnImage { version_number, .. } = &started else {
            unreachable!()
        };
        match g.output {
            Output::Json => println!(
                "{}",
                json!({ "asg": asg, "ami_id": ami, "result": "already_on_image", "version_number": version_number })
            ),
            Output::Text => println!(
                "{asg}: already on {ami} (launch template version {version_number}, every instance); nothing to do"
            ),
        }
        return 0;
    };
    ui.line(&format!(
        "instance refresh {refresh_id} started on {asg}: {previous_image} → {ami}"
    ));
    let base = json!({
        "asg": asg,
        "ami_id": ami,
        "refresh_id": refresh_id,
        "launch_template_id": launch_template_id,
        "version_number": version_number,
        "previous_version": previous_version,
        "previous_image": previous_image,
        "pinned_from": pinned_from,
        "preferences": prefs,
    });
    let keep_also = [*version_number, *previous_version];

    if a.no_wait {
        let retention = retain(
            &clients,
            &ui,
            launch_template_id,
            prefs.keep_versions,
            &keep_also,
        )
        .await;
        let mut v = base.clone();
        v["result"] = json!("started");
        v["retention"] = json!(retention);
        match g.output {
            Output::Json => println!("{v}"),
            Output::Text => println!(
                "{asg}: instance refresh {refresh_id} started (launch template {launch_template_id} version {version_number}, image {ami}); not waiting\n{}",
                hints(&asg)
            ),
        }
        return 0;
    }

    // ---- follow
    let stage = ui.stage("refresh", &format!("{refresh_id} Pending"));
    let waited = tokio::select! {
        r = deploy::wait(&clients, &stage, &asg, refresh_id) => r,
        _ = interrupted() => {
            stage.fail("interrupted");
            eprintln!(
                "interrupted: stopped waiting; instance refresh {refresh_id} keeps running on {asg}.\n{}",
                hints(&asg)
            );
            if g.output == Output::Json {
                let mut v = base.clone();
                v["result"] = json!("interrupted");
                println!("{v}");
            }
            return EXIT_INTERRUPTED;
        }
    };
    let refresh = match waited {
        Ok(r) => r,
        Err(e) => {
            stage.fail("lost track of the refresh");
            return fail(&e, base);
        }
    };
    let ok = refresh.status == "Successful";
    if ok {
        stage.finish(&format!("{refresh_id} Successful"));
    } else {
        stage.fail(&refresh.progress());
    }
    let retention = retain(
        &clients,
        &ui,
        launch_template_id,
        prefs.keep_versions,
        &keep_also,
    )
    .await;
    let now = deploy::group_now(&clients, &asg).await;
    let seconds = t0.elapsed().as_secs_f64();
    let result = match refresh.status.as_str() {
        "Successful" => "deployed",
        "Cancelled" => "cancelled",
        "RollbackSuccessful" => "rolled_back",
        "RollbackFailed" => "rollback_failed",
        _ => "failed",
    };
    let mut v = base.clone();
    v["result"] = json!(result);
    v["refresh"] = json!(refresh);
    v["retention"] = json!(retention);
    v["seconds"] = json!(seconds);
    match &now {
        Ok(n) => v["group"] = json!(n),
        Err(e) => v["group_error"] = json!(e.to_string()),
    }
    let runs = match &now {
        Ok(n) => n.describe(),
        Err(e) => format!("unknown ({e})"),
    };
    if g.output == Output::Json {
        println!("{v}");
    }
    if ok {
        if g.output == Output::Text {
            println!(
                "{asg}: deployed {ami} in {} (instance refresh {refresh_id} Successful)",
                fmt_duration(Duration::from_secs_f64(seconds))
            );
            println!(
                "  launch template {launch_template_id} version {version_number} (was version {previous_version}, {previous_image})"
            );
            println!("  group runs  {runs}");
            print_retention(retention.as_ref());
        }
        0
    } else {
        let what = match refresh.status.as_str() {
            "RollbackSuccessful" => "failed and was rolled back",
            "RollbackFailed" => "failed, and so did its rollback",
            "Cancelled" => "was cancelled",
            _ => "failed",
        };
        let reason = refresh
            .rollback_reason
            .clone()
            .or(refresh.status_reason.clone())
            .unwrap_or_else(|| "no reason given".into());
        eprintln!(
            "error: {asg}: instance refresh {refresh_id} {what} ({}): {reason}\n  the group now runs {runs}",
            refresh.status
        );
        let replaced = now
            .as_ref()
            .map(|n| n.instances.values().filter(|i| **i == ami).count())
            .unwrap_or(0);
        if (refresh.status == "Failed" || refresh.status == "Cancelled") && replaced > 0 {
            eprintln!(
                "  {replaced} instance(s) already replaced keep {ami}; to put the group back on {previous_image}, run `bake deploy --asg {asg} --ami {previous_image}`"
            );
        }
        EXIT_FAILED
    }
}

async fn retain(
    clients: &Clients,
    ui: &Ui,
    template_id: &str,
    keep: u32,
    also: &[i64],
) -> Option<Retention> {
    match deploy::retain(clients, template_id, keep, also).await {
        Ok(r) => {
            if !r.deleted.is_empty() {
                ui.line(&format!(
                    "launch template {template_id}: deleted version(s) {} (keeping {keep} newest, the default and those in use)",
                    join(&r.deleted)
                ));
            }
            for x in &r.refused {
                ui.line(&format!("launch template {template_id}: not deleted: {x}"));
            }
            Some(r)
        }
        Err(e) => {
            ui.line(&format!(
                "warning: launch template version retention failed: {e}"
            ));
            None
        }
    }
}

fn join(v: &[i64]) -> String {
    v.iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn print_retention(r: Option<&Retention>) {
    if let Some(r) = r
        && !r.deleted.is_empty()
    {
        println!("  deleted launch template versions {}", join(&r.deleted));
    }
}

fn print_refresh(asg: &str, r: &RefreshView, now: Option<&GroupNow>) {
    println!("{asg}: instance refresh {} {}", r.id, r.progress());
    if let Some(v) = &r.desired_version {
        println!("  desired launch template version {v}");
    }
    if let Some(t) = &r.start_time {
        println!(
            "  started {t}{}",
            r.end_time
                .as_ref()
                .map(|e| format!(", ended {e}"))
                .unwrap_or_default()
        );
    }
    if let Some(reason) = &r.rollback_reason {
        println!("  rollback: {reason}");
    }
    if let Some(n) = now {
        println!("  group runs {}", n.describe());
    }
}

async fn status(asg: &str, g: &Global) -> u8 {
    let Some(clients) = load_clients(g).await else {
        return EXIT_FAILED;
    };
    let list = match deploy::refreshes(&clients, asg, &[]).await {
        Ok(l) => l,
        Err(e) => {
            report_error(&e);
            return EXIT_FAILED;
        }
    };
    let now = match deploy::group_now(&clients, asg).await {
        Ok(n) => n,
        Err(e) => {
            report_error(&e);
            return EXIT_FAILED;
        }
    };
    let latest = list.first();
    match g.output {
        Output::Json => println!(
            "{}",
            json!({ "asg": asg, "refresh": latest, "active": latest.is_some_and(|r| r.is_active()), "group": now })
        ),
        Output::Text => match latest {
            Some(r) => {
                print_refresh(asg, r, Some(&now));
                if r.is_active() {
                    println!(
                        "{}",
                        hints(asg).lines().skip(1).collect::<Vec<_>>().join("\n")
                    );
                }
            }
            None => println!("{asg}: no instance refresh; group runs {}", now.describe()),
        },
    }
    0
}

/// `cancel` (rollback = false) or `rollback`: request it, then follow to the end.
async fn stop(asg: &str, g: &Global, no_wait: bool, rollback: bool) -> u8 {
    let Some(clients) = load_clients(g).await else {
        return EXIT_FAILED;
    };
    let (verb, want) = if rollback {
        ("rollback", "RollbackSuccessful")
    } else {
        ("cancel", "Cancelled")
    };
    let requested = if rollback {
        deploy::rollback(&clients, asg).await
    } else {
        deploy::cancel(&clients, asg).await
    };
    let id = match requested {
        Ok(id) => id,
        Err(e) => {
            report_error(&e);
            if g.output == Output::Json {
                println!("{}", json!({ "asg": asg, "error": e.to_string() }));
            }
            return EXIT_FAILED;
        }
    };
    if no_wait {
        match g.output {
            Output::Json => println!(
                "{}",
                json!({ "asg": asg, "refresh_id": id, "requested": verb })
            ),
            Output::Text => println!("{asg}: {verb} of instance refresh {id} requested"),
        }
        return 0;
    }
    let ui = Ui::new(g.plain);
    let stage = ui.stage(verb, &format!("{id}: {verb} requested"));
    let waited = tokio::select! {
        r = deploy::wait(&clients, &stage, asg, &id) => r,
        _ = interrupted() => {
            stage.fail("interrupted");
            eprintln!("interrupted: stopped waiting; the {verb} of {id} continues.\n{}", hints(asg));
            return EXIT_INTERRUPTED;
        }
    };
    let r = match waited {
        Ok(r) => r,
        Err(e) => {
            stage.fail("lost track of the refresh");
            report_error(&e);
            return EXIT_FAILED;
        }
    };
    if r.status == want {
        stage.finish(&format!("{id} {}", r.status));
    } else {
        stage.fail(&r.progress());
    }
    let now = deploy::group_now(&clients, asg).await.ok();
    match g.output {
        Output::Json => println!("{}", json!({ "asg": asg, "refresh": r, "group": now })),
        Output::Text => print_refresh(asg, &r, now.as_ref()),
    }
    if r.status == want { 0 } else { EXIT_FAILED }
}
