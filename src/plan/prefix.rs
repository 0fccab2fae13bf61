//! Prefix fingerprints: what a checkpoint image is made of.
//!
//! The prefix of step `k` is everything the builder's disk holds once step `k` has run: the
//! fingerprint's base components (source AMI, the settings that change the disk), the uploads
//! made before a step up to `k` (an upload without `before` is made before the first step) and
//! the steps `0..=k`. It is hashed from the full fingerprint's own component digests, so a
//! change anywhere in the prefix changes it and a change after it cannot. Its header differs
//! from the full fingerprint's: a checkpoint image never matches an image's fingerprint, even
//! for a checkpoint on the last step.

use sha2::{Digest, Sha256};

use super::{Fingerprint, VERSION};
use crate::recipe::model::Recipe;

/// One `checkpoint = true` step and the fingerprint of the prefix ending with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prefix {
    /// Index of the step in the recipe.
    pub step: usize,
    pub name: String,
    /// Hex sha256 of the prefix.
    pub hash: String,
}

impl Prefix {
    pub fn short(&self) -> &str {
        &self.hash[..12]
    }
}

/// For each upload, the index of the step it is made just before (0 without `before`).
pub fn upload_positions(recipe: &Recipe) -> Vec<usize> {
    recipe
        .uploads
        .iter()
        .map(|u| {
            u.before
                .as_ref()
                .and_then(|b| recipe.steps.iter().position(|s| &s.name == b))
                .unwrap_or(0)
        })
        .collect()
}

/// The prefix fingerprint of every checkpoint step, in recipe order.
pub fn checkpoints(recipe: &Recipe, fp: &Fingerprint) -> Vec<Prefix> {
    recipe
        .steps
        .iter()
        .enumerate()
        .filter(|(_, s)| s.checkpoint)
        .map(|(k, s)| Prefix {
            step: k,
            name: s.name.clone(),
            hash: prefix_hash(recipe, fp, k),
        })
        .collect()
}

/// The fingerprint of everything up to and including step `k`.
pub fn prefix_hash(recipe: &Recipe, fp: &Fingerprint, k: usize) -> String {
    let positions = upload_positions(recipe);
    let mut upload = 0;
    let mut step = 0;
    let mut all = Sha256::new();
    all.update(format!("bake-prefix v{VERSION}\n").as_bytes());
    for (name, d) in &fp.components {
        let keep = if name.starts_with("upload:") {
            let i = upload;
            upload += 1;
            positions.get(i).is_some_and(|&p| p <= k)
        } else if name.starts_with("step:") {
            let i = step;
            step += 1;
            i <= k
        } else {
            true
        };
        if keep {
            all.update(name.as_bytes());
            all.update([0]);
            all.update(d.as_bytes());
            all.update(b"\n");
        }
    }
    hex::encode(all.finalize())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::plan::tests::sample;
    use crate::plan::{HashCache, compute, plan_uploads, read_scripts};
    use crate::recipe::model::{Step, StepBody, Upload};

    fn step(name: &str, run: &str, checkpoint: bool) -> Step {
        Step {
            name: name.into(),
            body: StepBody::Run(run.into()),
            sudo: false,
            env: Default::default(),
            workdir: None,
            timeout: Duration::from_secs(60),
            retries: 0,
            reboot: false,
            checkpoint,
        }
    }

    /// Three steps with checkpoints after the first two, the sample's upload before the first
    /// and a late upload before the third.
    fn setup() -> (tempfile::TempDir, Recipe) {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("files")).unwrap();
        std::fs::write(d.path().join("files/a.txt"), b"alpha").unwrap();
        std::fs::write(d.path().join("late.txt"), b"v1").unwrap();
        let mut r = sample(d.path());
        r.steps = vec![
            step("base", "apt-get upgrade", true),
            step("deps", "apt-get install nginx", true),
            step("app", "echo v1 > /etc/app", false),
        ];
        r.uploads.push(Upload {
            source: d.path().join("late.txt"),
            is_dir: false,
            destination: "/etc/late.txt".into(),
            mode: None,
            owner: None,
            before: Some("app".into()),
        });
        (d, r)
    }

    fn both(r: &Recipe) -> (Fingerprint, Vec<Prefix>) {
        let plans = plan_uploads(&r.uploads, &HashCache::disabled()).unwrap();
        let fp = compute(r, "ami-1", &plans, &read_scripts(r).unwrap());
        let p = checkpoints(r, &fp);
        (fp, p)
    }

    fn hashes(p: &[Prefix]) -> Vec<String> {
        p.iter().map(|p| p.hash.clone()).collect()
    }

    #[test]
    fn positions_follow_before() {
        let (_d, r) = setup();
        assert_eq!(upload_positions(&r), vec![0, 2]);
        let (_, p) = both(&r);
        assert_eq!(
            p.iter()
                .map(|p| (p.step, p.name.as_str()))
                .collect::<Vec<_>>(),
            vec![(0, "base"), (1, "deps")]
        );
    }

    #[test]
    fn a_late_step_change_keeps_every_earlier_prefix() {
        let (_d, mut r) = setup();
        let (fp1, p1) = both(&r);
        r.steps[2].body = StepBody::Run("echo v2 > /etc/app".into());
        let (fp2, p2) = both(&r);
        assert_ne!(fp1.hash, fp2.hash);
        assert_eq!(hashes(&p1), hashes(&p2));
    }

    #[test]
    fn a_late_upload_change_keeps_the_prefixes_before_it() {
        let (d, r) = setup();
        let (fp1, p1) = both(&r);
        std::fs::write(d.path().join("late.txt"), b"v2").unwrap();
        let (fp2, p2) = both(&r);
        assert_ne!(fp1.hash, fp2.hash);
        assert_eq!(hashes(&p1), hashes(&p2));
    }

    #[test]
    fn an_early_change_changes_every_later_prefix() {
        let (d, mut r) = setup();
        let (_, p1) = both(&r);
        r.steps[0].body = StepBody::Run("apt-get dist-upgrade".into());
        let (_, p2) = both(&r);
        assert_ne!(p1[0].hash, p2[0].hash);
        assert_ne!(p1[1].hash, p2[1].hash);
        // The second checkpoint's own step, or an upload before the first step, likewise.
        r.steps[0].body = StepBody::Run("apt-get upgrade".into());
        let (_, p3) = both(&r);
        assert_eq!(hashes(&p1), hashes(&p3));
        r.steps[1].env.insert("X".into(), "1".into());
        let (_, p4) = both(&r);
        assert_eq!(p1[0].hash, p4[0].hash);
        assert_ne!(p1[1].hash, p4[1].hash);
        r.steps[1].env.clear();
        std::fs::write(d.path().join("files/a.txt"), b"beta").unwrap();
        let (_, p5) = both(&r);
        assert_ne!(p1[0].hash, p5[0].hash);
        assert_ne!(p1[1].hash, p5[1].hash);
    }

    #[test]
    fn a_prefix_is_never_an_image_fingerprint() {
        let (_d, mut r) = setup();
        r.steps[2].checkpoint = true;
        let (fp, p) = both(&r);
        assert_eq!(p.len(), 3);
        assert!(p.iter().all(|p| p.hash != fp.hash));
        // Moving the late upload changes the full fingerprint (the steps see another disk).
        r.uploads[1].before = Some("deps".into());
        let (fp2, p2) = both(&r);
        assert_ne!(fp.hash, fp2.hash);
        assert_eq!(p[0].hash, p2[0].hash);
        assert_ne!(p[1].hash, p2[1].hash);
    }
}
