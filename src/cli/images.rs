//! `bake images list | prune | rm`.

use clap::Subcommand;
use serde_json::json;

use super::{EXIT_FAILED, EXIT_INPUT, Global, load_clients, report_error};
use crate::images::retention::{self, Verdict};
use crate::ui::Output;

#[derive(Subcommand, Debug)]
pub enum ImagesCmd {
    /// List bake's images with their snapshots and what uses them.
    List {
        #[arg(long)]
        recipe: Option<String>,
    },
    /// Keep the newest N images of a recipe (and any in use); deregister the rest with their
    /// snapshots. Prints the plan and changes nothing without --yes.
    Prune {
        #[arg(long)]
        recipe: String,
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
    let Some(c) = load_clients(g).await else {
        return EXIT_FAILED;
    };
    match cmd {
        ImagesCmd::List { recipe } => match retention::list(&c, recipe.as_deref()).await {
            Ok(list) => {
                match g.output {
                    Output::Json => println!("{}", json!({ "images": list })),
                    Output::Text => {
                        println!(
                            "{:<22} {:<14} {:<12} {:<21} {:<30} USED BY",
                            "AMI", "RECIPE", "FINGERPRINT", "CREATED", "SNAPSHOTS"
                        );
                        for i in &list {
                            let snaps: Vec<String> = i
                                .snapshots
                                .iter()
                                .map(|s| {
                                    format!(
                                        "{}{}",
                                        s.id,
                                        s.size_gib
                                            .map(|g| format!(" ({g} GiB)"))
                                            .unwrap_or_default()
                                    )
                                })
                                .collect();
                            println!(
                                "{:<22} {:<14} {:<12} {:<21} {:<30} {}",
                                i.ami_id,
                                i.recipe,
                                &i.fingerprint[..i.fingerprint.len().min(12)],
                                format!("{}Z", &i.created[..i.created.len().min(19)]),
                                snaps.join(", "),
                                if i.used_by.is_empty() {
                                    "-".to_string()
                                } else {
                                    i.used_by.join("; ")
                                }
                            );
                            println!("{:<22} {}", "", i.name);
                        }
                    }
                }
                0
            }
            Err(e) => {
                report_error(&e);
                EXIT_FAILED
            }
        },
        ImagesCmd::Prune {
            recipe,
            keep,
            older_than,
            yes,
        } => {
            let list = match retention::list(&c, Some(&recipe)).await {
                Ok(l) => l,
                Err(e) => {
                    report_error(&e);
                    return EXIT_FAILED;
                }
            };
            let decisions = retention::decide(list, keep, older_than, jiff::Timestamp::now());
            let mut deleted = Vec::new();
            let mut failed = false;
            if g.output == Output::Text {
                for d in &decisions {
                    let what = if d.verdict == Verdict::Delete {
                        if yes { "DELETE" } else { "would delete" }
                    } else {
                        "keep"
                    };
                    println!(
                        "{what:<13} {} {} ({})",
                        d.image.ami_id, d.image.name, d.reason
                    );
                }
            }
            if yes {
                for d in decisions.iter().filter(|d| d.verdict == Verdict::Delete) {
                    match retention::remove(&c, &d.image.ami_id).await {
                        Ok(snaps) => deleted
                            .push(json!({ "ami_id": d.image.ami_id, "snapshots_deleted": snaps })),
                        Err(e) => {
                            report_error(&e);
                            failed = true;
                        }
                    }
                }
            } else if g.output == Output::Text {
                println!("(dry run: nothing changed; add --yes to delete)");
            }
            if g.output == Output::Json {
                println!(
                    "{}",
                    json!({ "recipe": recipe, "dry_run": !yes, "decisions": decisions, "deleted": deleted })
                );
            }
            if failed { EXIT_FAILED } else { 0 }
        }
        ImagesCmd::Rm { amis, force_in_use } => {
            let infos = match retention::lookup(&c, &amis).await {
                Ok(i) => i,
                Err(e) => {
                    report_error(&e);
                    return EXIT_INPUT;
                }
            };
            let busy: Vec<_> = infos.iter().filter(|i| !i.used_by.is_empty()).collect();
            if !busy.is_empty() && !force_in_use {
                for i in busy {
                    eprintln!(
                        "error: {} is in use by {}; pass --force-in-use to remove it anyway",
                        i.ami_id,
                        i.used_by.join(", ")
                    );
                }
                return EXIT_FAILED;
            }
            let mut out = Vec::new();
            let mut failed = false;
            for i in &infos {
                match retention::remove(&c, &i.ami_id).await {
                    Ok(snaps) => {
                        if g.output == Output::Text {
                            println!("removed {} and snapshot(s) {}", i.ami_id, snaps.join(", "));
                        }
                        out.push(json!({ "ami_id": i.ami_id, "snapshots_deleted": snaps }));
                    }
                    Err(e) => {
                        report_error(&e);
                        failed = true;
                    }
                }
            }
            if g.output == Output::Json {
                println!("{}", json!({ "removed": out }));
            }
            if failed { EXIT_FAILED } else { 0 }
        }
    }
}
