//! `bake deploy`: roll an image out to an Auto Scaling group with an instance refresh, and
//! `bake deploy status|cancel|rollback` to follow or stop one. The work is in
//! [`crate::deploy`]; this file parses flags, shows progress, handles Ctrl-C (stop waiting,
//! leave the refresh running) and prints text or JSON.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use serde::Serialize;

use super::{CliError, Global, Report, Vars, finish, interrupted, load_clients};
use crate::aws::Clients;
use crate::deploy::{self, DeployRequest, GroupNow, PrefFlags, RefreshView, Retention, Started};
use crate::ui::{Ui, fmt_duration};

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
        Some(DeployAction::Status { asg }) => finish(status(&asg, g).await, g.output),
        Some(DeployAction::Cancel { asg, no_wait }) => {
            finish(stop(&asg, g, no_wait, false).await, g.output)
        }
        Some(DeployAction::Rollback { asg, no_wait }) => {
            finish(stop(&asg, g, no_wait, true).await, g.output)
        }
        None => finish(deploy_cmd(args.run, g).await, g.output),
    }
}

fn hints(asg: &str) -> String {
    format!(
        "  follow it:  bake deploy status --asg {asg}\n  cancel it:  bake deploy cancel --asg {asg}\n  roll back:  bake deploy rollback --asg {asg}"
    )
}

/// The refresh bake started: what it replaces with what.
#[derive(Serialize, Clone)]
struct Rollout {
    #[serde(flatten)]
    refresh: deploy::Refresh,
    preferences: deploy::prefs::Prefs,
}

/// `bake deploy`: `{"format_version", "region", "asg", "ami_id", "result", ...}` where `result` is
/// `already_on_image`, `started` (--no-wait), `interrupted`, `deployed`, `cancelled`,
/// `rolled_back`, `rollback_failed` or `failed`; the rest is there when known.
#[derive(Serialize)]
struct Deployed {
    /// The group's region (`--region`), where `ami_id` is.
    region: String,
    asg: String,
    ami_id: String,
    result: &'static str,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    rollout: Option<Rollout>,
    /// The launch template version already in use (`already_on_image`).
    #[serde(rename = "version_number", skip_serializing_if = "Option::is_none")]
    current_version: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refresh: Option<RefreshView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retention: Option<Retention>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    group: Option<GroupNow>,
    #[serde(skip_serializing_if = "Option::is_none")]
    group_error: Option<String>,
    /// What stderr says about a refresh that did not succeed.
    #[serde(skip)]
    failure: Option<String>,
}

impl Deployed {
    fn new(region: &str, asg: &str, ami: &str, result: &'static str) -> Deployed {
        Deployed {
            region: region.to_string(),
            asg: asg.to_string(),
            ami_id: ami.to_string(),
            result,
            rollout: None,
            current_version: None,
            refresh: None,
            retention: None,
            seconds: None,
            group: None,
            group_error: None,
            failure: None,
        }
    }
}

impl Report for Deployed {
    fn text(&self) -> String {
        let (asg, ami) = (&self.asg, &self.ami_id);
        let Some(ro) = &self.rollout else {
            let v = self.current_version.unwrap_or_default();
            return format!(
                "{asg}: already on {ami} (launch template version {v}, every instance); nothing to do"
            );
        };
        let (id, lt, v) = (
            &ro.refresh.refresh_id,
            &ro.refresh.launch_template_id,
            ro.refresh.version_number,
        );
        match self.result {
            "started" => format!(
                "{asg}: instance refresh {id} started (launch template {lt} version {v}, image {ami}); not waiting\n{}",
                hints(asg)
            ),
            "deployed" => {
                let took = fmt_duration(Duration::from_secs_f64(self.seconds.unwrap_or_default()));
                let mut t = format!(
                    "{asg}: deployed {ami} in {took} (instance refresh {id} Successful)\n  launch template {lt} version {v} (was version {}, {})\n  group runs  {}",
                    ro.refresh.previous_version,
                    ro.refresh.previous_image,
                    self.runs()
                );
                if let Some(r) = &self.retention
                    && !r.deleted.is_empty()
                {
                    let _ = write!(
                        t,
                        "\n  deleted launch template versions {}",
                        join(&r.deleted)
                    );
                }
                t
            }
            // Interrupted and failed rollouts are told on stderr.
            _ => String::new(),
        }
    }

    fn outcome(&self) -> Result<(), CliError> {
        match self.result {
            "interrupted" => Err(CliError::Interrupted),
            "already_on_image" | "started" | "deployed" => Ok(()),
            _ => {
                if let Some(f) = &self.failure {
                    eprintln!("{f}");
                }
                Err(CliError::Failed)
            }
        }
    }
}

impl Deployed {
    fn runs(&self) -> String {
        match (&self.group, &self.group_error) {
            (Some(n), _) => n.describe(),
            (None, e) => format!("unknown ({})", e.as_deref().unwrap_or("not read")),
        }
    }

    /// The stderr account of a refresh that ended other than Successful.
    fn failure_text(&self, r: &RefreshView, ro: &Rollout) -> String {
        let (asg, ami, id) = (&self.asg, &self.ami_id, &ro.refresh.refresh_id);
        let what = match r.status.as_str() {
            "RollbackSuccessful" => "failed and was rolled back",
            "RollbackFailed" => "failed, and so did its rollback",
            "Cancelled" => "was cancelled",
            _ => "failed",
        };
        let reason = r
            .rollback_reason
            .clone()
            .or(r.status_reason.clone())
            .unwrap_or_else(|| "no reason given".into());
        let mut t = format!(
            "error: {asg}: instance refresh {id} {what} ({}): {reason}\n  the group now runs {}",
            r.status,
            self.runs()
        );
        let replaced = self
            .group
            .as_ref()
            .map(|n| n.instances.values().filter(|i| *i == ami).count())
            .unwrap_or(0);
        if (r.status == "Failed" || r.status == "Cancelled") && replaced > 0 {
            let _ = write!(
                t,
                "\n  {replaced} instance(s) already replaced keep {ami}; to put the group back on {}, run `bake deploy --asg {asg} --ami {}`",
                ro.refresh.previous_image, ro.refresh.previous_image
            );
        }
        t
    }
}

/// Everything `bake deploy` needs, checked before any AWS call.
struct Plan {
    asg: String,
    ami: Option<String>,
    recipe: Option<crate::recipe::model::Recipe>,
    prefs: deploy::prefs::Prefs,
}

fn check_input(a: &RunArgs) -> Result<Plan, CliError> {
    let recipe = match &a.recipe {
        Some(p) => Some(a.vars.load(p).map_err(|e| CliError::Recipe(vec![e]))?),
        None => None,
    };
    if a.ami.is_none() && recipe.is_none() {
        return Err(CliError::Input(
            "say what to deploy: --ami ID or --recipe FILE".into(),
        ));
    }
    if let Some(ami) = &a.ami
        && !ami.starts_with("ami-")
    {
        return Err(CliError::Input(format!(
            "--ami {ami:?} is not an image id (ami-…)"
        )));
    }
    let recipe_deploy = recipe.as_ref().and_then(|r| r.deploy.as_ref());
    let asg = a
        .asg
        .clone()
        .or_else(|| recipe_deploy.and_then(|d| d.asg.clone()))
        .ok_or_else(|| {
            CliError::Input(
                "which group? --asg NAME (or `asg` in the recipe's [deploy] table)".into(),
            )
        })?;
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
    let prefs = deploy::prefs::merge(recipe_deploy, &flags).map_err(CliError::Input)?;
    Ok(Plan {
        asg,
        ami: a.ami.clone(),
        recipe,
        prefs,
    })
}

/// The image to roll out: `--ami`, or the one the recipe's fingerprint names.
async fn which_image(clients: &Clients, ui: &Ui, plan: &Plan) -> Result<String, CliError> {
    if let Some(ami) = &plan.ami {
        return Ok(ami.clone());
    }
    let r = plan.recipe.as_ref().expect("checked: --ami or --recipe");
    let stage = ui.stage("image", &format!("fingerprinting recipe {}", r.name));
    match deploy::image_of_recipe(clients, r).await {
        Ok(ami) => {
            stage.finish(&format!("recipe {} is image {ami}", r.name));
            Ok(ami)
        }
        Err(e) => {
            stage.fail("no image");
            Err(CliError::runtime(e))
        }
    }
}

async fn deploy_cmd(a: RunArgs, g: &Global) -> Result<Deployed, CliError> {
    let t0 = Instant::now();
    let plan = check_input(&a)?;
    let clients = load_clients(g).await?;
    let ui = Ui::new(g.plain);
    if let Some(r) = &plan.recipe {
        ui.add_secrets(&r.secrets);
    }
    let asg = plan.asg.clone();
    let ami = which_image(&clients, &ui, &plan).await?;
    let req = DeployRequest {
        asg: asg.clone(),
        ami: ami.clone(),
        prefs: plan.prefs.clone(),
    };
    let ro = match deploy::start(&clients, &ui, &req)
        .await
        .map_err(CliError::runtime)?
    {
        Started::AlreadyOnImage { version_number, .. } => {
            let mut d = Deployed::new(&clients.region, &asg, &ami, "already_on_image");
            d.current_version = Some(version_number);
            return Ok(d);
        }
        Started::Started(refresh) => Rollout {
            refresh,
            preferences: plan.prefs.clone(),
        },
    };
    ui.line(&format!(
        "instance refresh {} started on {asg}: {} → {ami}",
        ro.refresh.refresh_id, ro.refresh.previous_image
    ));
    let keep_also = [ro.refresh.version_number, ro.refresh.previous_version];
    let retain_now = || {
        retain(
            &clients,
            &ui,
            &ro.refresh.launch_template_id,
            plan.prefs.keep_versions,
            &keep_also,
        )
    };
    if a.no_wait {
        let mut d = Deployed::new(&clients.region, &asg, &ami, "started");
        d.retention = retain_now().await;
        d.rollout = Some(ro);
        return Ok(d);
    }

    let id = &ro.refresh.refresh_id;
    let stage = ui.stage("refresh", &format!("{id} Pending"));
    let waited = tokio::select! {
        r = deploy::wait(&clients, &stage, &asg, id) => r,
        _ = interrupted() => {
            stage.fail("interrupted");
            eprintln!(
                "interrupted: stopped waiting; instance refresh {id} keeps running on {asg}.\n{}",
                hints(&asg)
            );
            let mut d = Deployed::new(&clients.region, &asg, &ami, "interrupted");
            d.rollout = Some(ro.clone());
            return Ok(d);
        }
    };
    let refresh = match waited {
        Ok(r) => r,
        Err(e) => {
            stage.fail("lost track of the refresh");
            return Err(CliError::runtime(e));
        }
    };
    if refresh.status == "Successful" {
        stage.finish(&format!("{id} Successful"));
    } else {
        stage.fail(&refresh.progress());
    }
    let result = match refresh.status.as_str() {
        "Successful" => "deployed",
        "Cancelled" => "cancelled",
        "RollbackSuccessful" => "rolled_back",
        "RollbackFailed" => "rollback_failed",
        _ => "failed",
    };
    let mut d = Deployed::new(&clients.region, &asg, &ami, result);
    d.retention = retain_now().await;
    match deploy::group_now(&clients, &asg).await {
        Ok(n) => d.group = Some(n),
        Err(e) => d.group_error = Some(e.to_string()),
    }
    d.seconds = Some(t0.elapsed().as_secs_f64());
    if result != "deployed" {
        d.failure = Some(d.failure_text(&refresh, &ro));
    }
    d.refresh = Some(refresh);
    d.rollout = Some(ro);
    Ok(d)
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

fn refresh_text(asg: &str, r: &RefreshView, now: Option<&GroupNow>) -> String {
    let mut t = format!("{asg}: instance refresh {} {}", r.id, r.progress());
    if let Some(v) = &r.desired_version {
        let _ = write!(t, "\n  desired launch template version {v}");
    }
    if let Some(start) = &r.start_time {
        let end = r.end_time.as_ref().map(|e| format!(", ended {e}"));
        let _ = write!(t, "\n  started {start}{}", end.unwrap_or_default());
    }
    if let Some(reason) = &r.rollback_reason {
        let _ = write!(t, "\n  rollback: {reason}");
    }
    if let Some(n) = now {
        let _ = write!(t, "\n  group runs {}", n.describe());
    }
    t
}

/// `bake deploy status`: `{"format_version", "asg", "refresh", "active", "group"}`.
#[derive(Serialize)]
struct Status {
    asg: String,
    refresh: Option<RefreshView>,
    active: bool,
    group: GroupNow,
}

async fn status(asg: &str, g: &Global) -> Result<Status, CliError> {
    let clients = load_clients(g).await?;
    let list = deploy::refreshes(&clients, asg, &[])
        .await
        .map_err(CliError::runtime)?;
    let group = deploy::group_now(&clients, asg)
        .await
        .map_err(CliError::runtime)?;
    let refresh = list.into_iter().next();
    Ok(Status {
        asg: asg.to_string(),
        active: refresh.as_ref().is_some_and(|r| r.is_active()),
        refresh,
        group,
    })
}

impl Report for Status {
    fn text(&self) -> String {
        let asg = &self.asg;
        let Some(r) = &self.refresh else {
            return format!(
                "{asg}: no instance refresh; group runs {}",
                self.group.describe()
            );
        };
        let mut t = refresh_text(asg, r, Some(&self.group));
        if self.active {
            t.push('\n');
            t.push_str(&hints(asg).lines().skip(1).collect::<Vec<_>>().join("\n"));
        }
        t
    }
}

/// `bake deploy cancel|rollback`: `{"format_version", "asg", "refresh_id", "requested"}` with
/// --no-wait, else `{"format_version", "asg", "refresh", "group"}` once it ended.
#[derive(Serialize)]
struct Stopped {
    asg: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    refresh_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    requested: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refresh: Option<RefreshView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    group: Option<GroupNow>,
    /// Whether the refresh reached the state asked for.
    #[serde(skip)]
    reached: bool,
}

impl Report for Stopped {
    fn text(&self) -> String {
        match (&self.refresh, &self.requested, &self.refresh_id) {
            (Some(r), _, _) => refresh_text(&self.asg, r, self.group.as_ref()),
            (None, Some(verb), Some(id)) => {
                format!("{}: {verb} of instance refresh {id} requested", self.asg)
            }
            _ => String::new(),
        }
    }

    fn outcome(&self) -> Result<(), CliError> {
        if self.reached {
            Ok(())
        } else {
            Err(CliError::Failed)
        }
    }
}

/// `cancel` (rollback = false) or `rollback`: request it, then follow to the end.
async fn stop(asg: &str, g: &Global, no_wait: bool, rollback: bool) -> Result<Stopped, CliError> {
    let clients = load_clients(g).await?;
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
    let id = requested.map_err(CliError::runtime)?;
    if no_wait {
        return Ok(Stopped {
            asg: asg.to_string(),
            refresh_id: Some(id),
            requested: Some(verb),
            refresh: None,
            group: None,
            reached: true,
        });
    }
    let ui = Ui::new(g.plain);
    let stage = ui.stage(verb, &format!("{id}: {verb} requested"));
    let waited = tokio::select! {
        r = deploy::wait(&clients, &stage, asg, &id) => r,
        _ = interrupted() => {
            stage.fail("interrupted");
            eprintln!("interrupted: stopped waiting; the {verb} of {id} continues.\n{}", hints(asg));
            return Err(CliError::Interrupted);
        }
    };
    let r = match waited {
        Ok(r) => r,
        Err(e) => {
            stage.fail("lost track of the refresh");
            return Err(CliError::runtime(e));
        }
    };
    let reached = r.status == want;
    if reached {
        stage.finish(&format!("{id} {}", r.status));
    } else {
        stage.fail(&r.progress());
    }
    Ok(Stopped {
        asg: asg.to_string(),
        refresh_id: None,
        requested: None,
        group: deploy::group_now(&clients, asg).await.ok(),
        refresh: Some(r),
        reached,
    })
}
