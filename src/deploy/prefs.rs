//! Instance refresh preferences: a recipe's `[deploy]` table, overridden by command-line flags.

use std::time::Duration;

use aws_sdk_autoscaling::types::RefreshPreferences;

use crate::recipe::model::Deploy;

/// What the command line says (None: not given).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PrefFlags {
    pub min_healthy_percentage: Option<i32>,
    pub max_healthy_percentage: Option<i32>,
    pub instance_warmup: Option<Duration>,
    pub skip_matching: bool,
    /// `--canary PCT`: checkpoints `[PCT, 100]`.
    pub canary: Option<i32>,
    pub checkpoint_delay: Option<Duration>,
    pub auto_rollback: bool,
    pub keep_versions: Option<u32>,
}

/// The merged preferences of one roll-out.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Prefs {
    pub min_healthy_percentage: Option<i32>,
    pub max_healthy_percentage: Option<i32>,
    pub instance_warmup_seconds: Option<i32>,
    pub skip_matching: bool,
    pub checkpoint_percentages: Vec<i32>,
    pub checkpoint_delay_seconds: Option<i32>,
    pub auto_rollback: bool,
    pub keep_versions: u32,
}

/// Launch template versions kept when neither the flag nor the recipe says.
pub const DEFAULT_KEEP_VERSIONS: u32 = 10;

fn secs(d: Duration) -> i32 {
    d.as_secs().min(i32::MAX as u64) as i32
}

/// Flags win over the recipe; `--canary` replaces the recipe's checkpoints; boolean flags can
/// only turn a setting on.
pub fn merge(recipe: Option<&Deploy>, flags: &PrefFlags) -> Result<Prefs, String> {
    let d = recipe.cloned().unwrap_or_default();
    let checkpoint_percentages = match flags.canary {
        Some(p) if p >= 100 => vec![100],
        Some(p) => vec![p, 100],
        None => d.checkpoint_percentages.clone(),
    };
    let delay = flags.checkpoint_delay.or(d.checkpoint_delay);
    if delay.is_some() && checkpoint_percentages.is_empty() {
        return Err("--checkpoint-delay needs checkpoints: --canary PCT or checkpoint_percentages in [deploy]".into());
    }
    let prefs = Prefs {
        min_healthy_percentage: flags.min_healthy_percentage.or(d.min_healthy_percentage),
        max_healthy_percentage: flags.max_healthy_percentage.or(d.max_healthy_percentage),
        instance_warmup_seconds: flags.instance_warmup.or(d.instance_warmup).map(secs),
        skip_matching: flags.skip_matching || d.skip_matching.unwrap_or(false),
        checkpoint_percentages,
        checkpoint_delay_seconds: delay.map(secs),
        auto_rollback: flags.auto_rollback || d.auto_rollback.unwrap_or(false),
        keep_versions: flags
            .keep_versions
            .or(d.keep_versions)
            .unwrap_or(DEFAULT_KEEP_VERSIONS),
    };
    if let (Some(min), Some(max)) = (prefs.min_healthy_percentage, prefs.max_healthy_percentage)
        && max - min > 100
    {
        return Err(format!(
            "max healthy percentage {max} minus min healthy percentage {min} exceeds 100"
        ));
    }
    Ok(prefs)
}

impl Prefs {
    pub fn to_sdk(&self) -> RefreshPreferences {
        RefreshPreferences::builder()
            .set_min_healthy_percentage(self.min_healthy_percentage)
            .set_max_healthy_percentage(self.max_healthy_percentage)
            .set_instance_warmup(self.instance_warmup_seconds)
            .skip_matching(self.skip_matching)
            .set_checkpoint_percentages(
                (!self.checkpoint_percentages.is_empty())
                    .then(|| self.checkpoint_percentages.clone()),
            )
            .set_checkpoint_delay(self.checkpoint_delay_seconds)
            .auto_rollback(self.auto_rollback)
            .build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recipe() -> Deploy {
        Deploy {
            asg: Some("web".into()),
            min_healthy_percentage: Some(90),
            max_healthy_percentage: Some(110),
            instance_warmup: Some(Duration::from_secs(60)),
            skip_matching: Some(true),
            checkpoint_percentages: vec![20, 50, 100],
            checkpoint_delay: Some(Duration::from_secs(600)),
            auto_rollback: Some(true),
            keep_versions: Some(5),
        }
    }

    #[test]
    fn recipe_only() {
        let p = merge(Some(&recipe()), &PrefFlags::default()).unwrap();
        assert_eq!(p.min_healthy_percentage, Some(90));
        assert_eq!(p.max_healthy_percentage, Some(110));
        assert_eq!(p.instance_warmup_seconds, Some(60));
        assert!(p.skip_matching && p.auto_rollback);
        assert_eq!(p.checkpoint_percentages, vec![20, 50, 100]);
        assert_eq!(p.checkpoint_delay_seconds, Some(600));
        assert_eq!(p.keep_versions, 5);
    }

    #[test]
    fn flags_override_recipe() {
        let flags = PrefFlags {
            min_healthy_percentage: Some(50),
            instance_warmup: Some(Duration::from_secs(0)),
            canary: Some(10),
            checkpoint_delay: Some(Duration::from_secs(30)),
            keep_versions: Some(2),
            ..Default::default()
        };
        let p = merge(Some(&recipe()), &flags).unwrap();
        assert_eq!(p.min_healthy_percentage, Some(50));
        assert_eq!(
            p.max_healthy_percentage,
            Some(110),
            "not overridden: from the recipe"
        );
        assert_eq!(p.instance_warmup_seconds, Some(0));
        assert_eq!(p.checkpoint_percentages, vec![10, 100]);
        assert_eq!(p.checkpoint_delay_seconds, Some(30));
        assert_eq!(p.keep_versions, 2);
    }

    #[test]
    fn defaults_without_recipe() {
        let p = merge(None, &PrefFlags::default()).unwrap();
        assert_eq!(
            p,
            Prefs {
                keep_versions: DEFAULT_KEEP_VERSIONS,
                ..Default::default()
            }
        );
        let sdk = p.to_sdk();
        assert_eq!(sdk.min_healthy_percentage(), None);
        assert_eq!(sdk.checkpoint_percentages(), &[] as &[i32]);
        assert_eq!(sdk.auto_rollback(), Some(false));
    }

    #[test]
    fn bad_combinations() {
        let flags = PrefFlags {
            checkpoint_delay: Some(Duration::from_secs(5)),
            ..Default::default()
        };
        assert!(merge(None, &flags).unwrap_err().contains("checkpoint"));
        let flags = PrefFlags {
            min_healthy_percentage: Some(0),
            max_healthy_percentage: Some(200),
            ..Default::default()
        };
        assert!(merge(None, &flags).is_err());
        let flags = PrefFlags {
            canary: Some(100),
            ..Default::default()
        };
        assert_eq!(
            merge(None, &flags).unwrap().checkpoint_percentages,
            vec![100]
        );
    }
}
