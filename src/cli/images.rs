//! `bake images list | prune | rm`. `list` and `prune` cover every region of a recipe (the
//! configured region and, given the recipe file, its `[image] regions`), or only the one
//! `--region` names; `rm` works in one region.

use std::fmt::Write as _;
use std::path::Path;

use clap::Subcommand;
use serde::Serialize;

use super::{CliError, Global, Report, Vars, finish, load_clients, report_error};
use crate::aws::Clients;
use crate::images::retention::{self, Decision, ImageInfo, Verdict};

#[derive(Subcommand, Debug)]
pub enum ImagesCmd {
    /// List bake's images with their snapshots and what uses them.
    List {
        /// A recipe name, or its file: then every region of its `[image] regions` too
        /// (`--region R` lists only R).
        #[arg(long)]
        recipe: Option<String>,
        #[command(flatten)]
        vars: Vars,
    },
    /// Keep the newest N images of a recipe in each region (and any in use there); deregister
    /// the rest with their snapshots. Prints the plan and changes nothing without --yes.
    Prune {
        /// A recipe name, or its file: then every region of its `[image] regions` too
        /// (`--region R` prunes only R).
        #[arg(long)]
        recipe: String,
        #[command(flatten)]
        vars: Vars,
        #[arg(long)]
        keep: usize,
        /// Only remove images older than this (e.g. 14d, 12h).
        #[arg(long, value_parser = humantime::parse_duration)]
        older_than: Option<std::time::Duration>,
        #[arg(long)]
        yes: bool,
    },
    /// Deregister images (and their unshared snapshots) by id.
    Rm {
        #[arg(required = true)]
        amis: Vec<String>,
        /// Remove even if something still uses the image.
        #[arg(long)]
        force_in_use: bool,
    },
}

pub async fn run(cmd: ImagesCmd, g: &Global) -> u8 {
    let out = g.output;
    match cmd {
        ImagesCmd::List { recipe, vars } => finish(list(recipe, &vars, g).await, out),
        ImagesCmd::Prune {
            recipe,
            vars,
            keep,
            older_than,
            yes,
        } => finish(prune(&recipe, &vars, keep, older_than, yes, g).await, out),
        ImagesCmd::Rm { amis, force_in_use } => finish(rm(&amis, force_in_use, g).await, out),
    }
}

/// What `list` and `prune` look at: the recipe's name and the clients of each region.
struct Scope {
    recipe: Option<String>,
    regions: Vec<Clients>,
}

/// `--recipe` is a name, or a recipe file whose `[image] regions` join the configured region.
/// An explicit `--region` (or BAKE_REGION) means that region alone.
async fn scope(recipe: Option<&str>, vars: &Vars, g: &Global) -> Result<Scope, CliError> {
    let c = load_clients(g).await?;
    let file = recipe.filter(|r| r.ends_with(".toml") || Path::new(r).is_file());
    let (name, copies) = match file {
        Some(f) => {
            let r = vars
                .load(Path::new(f))
                .map_err(|e| CliError::Recipe(vec![e]))?;
            (Some(r.name.clone()), r.image.distribution.region_names())
        }
        None => (recipe.map(str::to_string), vec![]),
    };
    let mut regions = vec![c.clone()];
    if g.region.is_none() {
        for r in copies {
            if regions.iter().all(|c| c.region != r) {
                regions.push(c.in_region(&r));
            }
        }
    }
    Ok(Scope {
        recipe: name,
        regions,
    })
}

/// Every region's images, regions in scope order, each newest first.
async fn list_all(s: &Scope) -> Result<Vec<ImageInfo>, CliError> {
    let per = futures::future::try_join_all(
        s.regions
            .iter()
            .map(|c| retention::list(c, s.recipe.as_deref())),
    )
    .await
    .map_err(CliError::runtime)?;
    Ok(per.into_iter().flatten().collect())
}

/// `bake images list`: `{"format_version", "regions": [...], "images": [...]}`; each image
/// names its region.
#[derive(Serialize)]
pub struct Listed {
    regions: Vec<String>,
    images: Vec<ImageInfo>,
}

async fn list(recipe: Option<String>, vars: &Vars, g: &Global) -> Result<Listed, CliError> {
    let s = scope(recipe.as_deref(), vars, g).await?;
    let images = list_all(&s).await?;
    Ok(Listed {
        regions: s.regions.iter().map(|c| c.region.clone()).collect(),
        images,
    })
}

impl Report for Listed {
    fn text(&self) -> String {
        let mut t = comfy_table::Table::new();
        // Borderless columns (grep- and awk-friendly); on a terminal long cells wrap within
        // their column instead of pushing the next ones out of line.
        t.load_style(comfy_table::presets::NOTHING)
            .set_content_arrangement(comfy_table::ContentArrangement::Dynamic)
            .set_header([
                "REGION",
                "AMI",
                "NAME",
                "RECIPE",
                "FINGERPRINT",
                "CREATED",
                "SNAPSHOTS",
                "USED BY",
            ]);
        for i in &self.images {
            let snaps: Vec<String> = i
                .snapshots
                .iter()
                .map(|s| match s.size_gib {
                    Some(g) => format!("{} ({g} GiB)", s.id),
                    None => s.id.clone(),
                })
                .collect();
            let used = if i.used_by.is_empty() {
                "-".to_string()
            } else {
                i.used_by.join("\n")
            };
            t.add_row([
                i.region.clone(),
                i.ami_id.clone(),
                i.name.clone(),
                i.recipe.clone(),
                i.fingerprint.chars().take(12).collect(),
                created(&i.created),
                snaps.join("\n"),
                used,
            ]);
        }
        // comfy-table pads every line to the table's width; trailing blanks are noise in a
        // log and in a diff.
        t.lines()
            .map(|l| l.trim_end().to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// An EC2 creation date (RFC 3339) as UTC to the second; what EC2 sent if it is not a date.
fn created(raw: &str) -> String {
    match raw.parse::<jiff::Timestamp>() {
        Ok(ts) => ts.strftime("%Y-%m-%d %H:%M:%SZ").to_string(),
        Err(_) => raw.to_string(),
    }
}

/// One image removed, with the snapshots that went with it.
#[derive(Serialize)]
struct Removed {
    region: String,
    ami_id: String,
    snapshots_deleted: Vec<String>,
}

/// `bake images prune`: `{"format_version", "recipe", "regions", "dry_run", "decisions",
/// "deleted"}`; each decision's image and each deleted image names its region.
#[derive(Serialize)]
pub struct Pruned {
    recipe: String,
    regions: Vec<String>,
    dry_run: bool,
    decisions: Vec<Decision>,
    deleted: Vec<Removed>,
    #[serde(skip)]
    failed: bool,
}

async fn prune(
    recipe: &str,
    vars: &Vars,
    keep: usize,
    older_than: Option<std::time::Duration>,
    yes: bool,
    g: &Global,
) -> Result<Pruned, CliError> {
    let s = scope(Some(recipe), vars, g).await?;
    let list = list_all(&s).await?;
    let decisions = retention::decide(list, keep, older_than, jiff::Timestamp::now());
    let mut deleted = Vec::new();
    let mut failed = false;
    for c in &s.regions {
        let doomed: Vec<String> = decisions
            .iter()
            .filter(|d| yes && d.verdict == Verdict::Delete && d.image.region == c.region)
            .map(|d| d.image.ami_id.clone())
            .collect();
        let (gone, f) = remove_all(c, &doomed).await;
        deleted.extend(gone);
        failed |= f;
    }
    Ok(Pruned {
        recipe: s.recipe.unwrap_or_default(),
        regions: s.regions.iter().map(|c| c.region.clone()).collect(),
        dry_run: !yes,
        decisions,
        deleted,
        failed,
    })
}

/// Removes each image in turn; a failure is told and the rest still go.
async fn remove_all(c: &Clients, amis: &[String]) -> (Vec<Removed>, bool) {
    let mut done = Vec::new();
    let mut failed = false;
    for ami in amis {
        match retention::remove(c, ami).await {
            Ok(snapshots_deleted) => done.push(Removed {
                region: c.region.clone(),
                ami_id: ami.clone(),
                snapshots_deleted,
            }),
            Err(e) => {
                report_error(&e);
                failed = true;
            }
        }
    }
    (done, failed)
}

fn failed_if(failed: bool) -> Result<(), CliError> {
    if failed {
        Err(CliError::Failed)
    } else {
        Ok(())
    }
}

impl Report for Pruned {
    fn text(&self) -> String {
        let mut t = String::new();
        for d in &self.decisions {
            let what = match (d.verdict == Verdict::Delete, self.dry_run) {
                (true, false) => "DELETE",
                (true, true) => "would delete",
                (false, _) => "keep",
            };
            let (region, id, name) = (&d.image.region, &d.image.ami_id, &d.image.name);
            let _ = writeln!(t, "{what:<13} {region} {id} {name} ({})", d.reason);
        }
        if self.dry_run {
            t.push_str("(dry run: nothing changed; add --yes to delete)");
        }
        t.trim_end().to_string()
    }

    fn outcome(&self) -> Result<(), CliError> {
        failed_if(self.failed)
    }
}

/// `bake images rm`: `{"format_version", "removed": [...]}`.
#[derive(Serialize)]
pub struct RemovedAll {
    removed: Vec<Removed>,
    #[serde(skip)]
    failed: bool,
}

async fn rm(amis: &[String], force_in_use: bool, g: &Global) -> Result<RemovedAll, CliError> {
    let c = load_clients(g).await?;
    // An id that is not bake's (or not there) is bad input, not a failure.
    let infos = retention::lookup(&c, amis)
        .await
        .map_err(|e| CliError::Input(e.to_string()))?;
    let busy: Vec<_> = infos.iter().filter(|i| !i.used_by.is_empty()).collect();
    if !busy.is_empty() && !force_in_use {
        for i in busy {
            eprintln!(
                "error: {} is in use by {}; pass --force-in-use to remove it anyway",
                i.ami_id,
                i.used_by.join(", ")
            );
        }
        return Err(CliError::Failed);
    }
    let ids: Vec<String> = infos.iter().map(|i| i.ami_id.clone()).collect();
    let (removed, failed) = remove_all(&c, &ids).await;
    Ok(RemovedAll { removed, failed })
}

impl Report for RemovedAll {
    fn text(&self) -> String {
        self.removed
            .iter()
            .map(|r| {
                let snaps = r.snapshots_deleted.join(", ");
                format!(
                    "removed {} in {} and snapshot(s) {snaps}",
                    r.ami_id, r.region
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn outcome(&self) -> Result<(), CliError> {
        failed_if(self.failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::images::retention::SnapshotInfo;

    fn img(id: &str, name: &str, created: &str) -> ImageInfo {
        ImageInfo {
            region: "us-east-1".into(),
            built_at: None,
            ami_id: id.into(),
            name: name.into(),
            recipe: "web".into(),
            fingerprint: "0123456789abcdef0123".into(),
            created: created.into(),
            state: "available".into(),
            snapshots: vec![SnapshotInfo {
                id: "snap-0123".into(),
                size_gib: Some(8),
            }],
            used_by: vec![],
            checkpoint: None,
        }
    }

    #[test]
    fn the_list_table_keeps_its_columns_with_long_names_and_parses_dates() {
        let long = "web-".to_string() + &"x".repeat(70);
        let l = Listed {
            regions: vec!["us-east-1".into()],
            images: vec![
                img("ami-1", &long, "2026-12-02T11:05:09.000Z"),
                img("ami-22", "web-1", "2026-12-01T10:00:00+02:00"),
            ],
        };
        let text = l.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        // Every row's RECIPE cell starts where its header does: long names do not shift it.
        let col = lines[0].find("RECIPE").unwrap();
        for row in &lines[1..] {
            assert_eq!(row.find(" web ").map(|i| i + 1), Some(col), "{text}");
        }
        assert!(lines[1].contains("2026-12-02 11:05:09Z"), "{text}");
        // Parsed, not sliced: an offset is converted to UTC.
        assert!(lines[2].contains("2026-12-01 08:00:00Z"), "{text}");
        assert!(lines[1].contains("0123456789ab "), "{text}");
    }
}
