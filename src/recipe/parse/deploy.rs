//! `[deploy]`: the optional roll-out to an Auto Scaling group (instance refresh settings,
//! checkpoints, versions kept).

use std::time::Duration;

use toml::de::DeValue;

use super::super::model::Deploy;
use super::walker::{Cx, Tbl, integer_of};

pub(super) const DEPLOY_KEYS: &[&str] = &[
    "asg",
    "min_healthy_percentage",
    "max_healthy_percentage",
    "instance_warmup",
    "skip_matching",
    "checkpoint_percentages",
    "checkpoint_delay",
    "auto_rollback",
    "keep_versions",
];

pub(super) fn deploy(cx: &mut Cx<'_>, root: &Tbl<'_, '_>) -> Option<Option<Deploy>> {
    let Some(t) = cx.table(root, "deploy", "[deploy]".to_string()) else {
        return if cx.get(root, "deploy").is_some() {
            None
        } else {
            Some(None)
        };
    };
    cx.keys(&t, DEPLOY_KEYS);
    let n0 = cx.errors.len();
    let asg = cx.string(&t, "asg");
    if let Some(a) = &asg
        && (a.v.is_empty() || a.v.chars().count() > 255)
    {
        cx.err(
            Some(a.span.clone()),
            "`asg` must be an Auto Scaling group name of 1–255 characters",
            "write asg = \"web-asg\"",
        );
    }
    let min = cx.integer(&t, "min_healthy_percentage", 0, 100);
    let max = cx.integer(&t, "max_healthy_percentage", 100, 200);
    let instance_warmup = cx.duration(&t, "instance_warmup").map(|d| d.v);
    let skip_matching = cx.boolean(&t, "skip_matching");
    let mut checkpoints = Vec::new();
    let cp_present = cx.get(&t, "checkpoint_percentages").map(|(k, _)| k);
    if let Some((_, v)) = cx.get(&t, "checkpoint_percentages") {
        match v.get_ref() {
            DeValue::Array(a) => {
                let mut prev = 0;
                for i in a.iter() {
                    match integer_of(i.get_ref()) {
                        Some(n) if (1..=100).contains(&n) => {
                            if n <= prev {
                                cx.err(
                                    Some(i.span()),
                                    "checkpoint percentages must increase",
                                    "list them in ascending order, e.g. [20, 50, 100]",
                                );
                            }
                            prev = n;
                            checkpoints.push(n as i32);
                        }
                        Some(n) => cx.err(
                            Some(i.span()),
                            format!("checkpoint percentage {n} is outside 1–100"),
                            "use percentages from 1 to 100, e.g. [20, 50, 100]",
                        ),
                        None => cx.err(
                            Some(i.span()),
                            "checkpoint percentages must be whole numbers",
                            "write checkpoint_percentages = [20, 50, 100]",
                        ),
                    }
                }
            }
            _ => cx.wrong_type(
                &t,
                "checkpoint_percentages",
                v,
                "an array of percentages",
                "write checkpoint_percentages = [20, 50, 100]".to_string(),
            ),
        }
    }
    let checkpoint_delay = cx.duration(&t, "checkpoint_delay");
    if let Some(d) = &checkpoint_delay {
        if d.v > Duration::from_secs(172_800) {
            cx.err(
                Some(d.span.clone()),
                "checkpoint_delay is longer than 2 days (the instance refresh limit)",
                "use at most \"48h\"",
            );
        }
        if cp_present.is_none() {
            cx.err(
                Some(d.span.clone()),
                "checkpoint_delay is set without checkpoint_percentages",
                "add checkpoint_percentages = [20, 50, 100] or remove checkpoint_delay",
            );
        }
    }
    let auto_rollback = cx.boolean(&t, "auto_rollback");
    let keep_versions = cx.integer(&t, "keep_versions", 1, 1000).map(|k| k.v as u32);
    if cx.errors.len() > n0 {
        return None;
    }
    Some(Some(Deploy {
        asg: asg.map(|a| a.v),
        min_healthy_percentage: min.map(|m| m.v as i32),
        max_healthy_percentage: max.map(|m| m.v as i32),
        instance_warmup,
        skip_matching,
        checkpoint_percentages: checkpoints,
        checkpoint_delay: checkpoint_delay.map(|d| d.v),
        auto_rollback,
        keep_versions,
    }))
}
