//! The content hash of everything that goes into an image, and what it is made of.
//!
//! A fingerprint is a versioned sha256 over named *components*: the resolved source AMI, the
//! settings that change the disk (user data, root volume, recipe name), every upload (its
//! destination, mode, owner and the bytes, modes and names of every file) and every step (its
//! script bytes, sudo, env, workdir, reboot). Formatting, comments and key order of the recipe
//! cannot change it because it is computed from the parsed [`Recipe`], never from the TOML text.
//! Deliberately left out: things that change how the image is built but not what is on it
//! (instance type, subnet, security groups, SSH/SSM settings, timeouts, retries, step names,
//! image name, description and tags).
//!
//! Component digests are stored on the image (see [`encode_inputs`]) so `bake plan` can say
//! which input changed from AWS alone.

pub mod digest;
mod hashcache;
pub mod prefix;
mod walk;

use std::collections::BTreeMap;

use serde::Serialize;
use sha2::{Digest, Sha256};

pub use hashcache::HashCache;
pub use walk::{EntryKind, FileChunks, PlanError, PlannedEntry, UploadPlan, plan_uploads};

use crate::recipe::model::{Recipe, StepBody};

/// Bumped whenever the definition changes, so an old image never matches by accident.
/// 2: files above [`digest::SEGMENT`] are digested by segments (see [`digest`]).
pub const VERSION: u32 = 2;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Fingerprint {
    /// Hex sha256 of all components, in order.
    pub hash: String,
    /// Component name → hex sha256, in recipe order.
    pub components: Vec<(String, String)>,
}

impl Fingerprint {
    pub fn short(&self) -> &str {
        &self.hash[..12]
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn digest_of(v: &impl Serialize) -> String {
    // serde_json over structs and BTreeMaps is deterministic: fields in declaration order,
    // map keys sorted.
    sha256_hex(&serde_json::to_vec(v).expect("serializable"))
}

/// Computes the fingerprint from the recipe, the resolved source AMI, the planned uploads
/// (already hashed) and the bytes of each step's script.
pub fn compute(
    recipe: &Recipe,
    source_ami: &str,
    uploads: &[UploadPlan],
    scripts: &[String],
) -> Fingerprint {
    let mut components = Vec::new();
    components.push(("source".to_string(), digest_of(&source_ami)));

    #[derive(Serialize)]
    struct Settings<'a> {
        recipe: &'a str,
        user_data: &'a Option<String>,
        root_volume: &'a crate::recipe::model::RootVolume,
    }
    components.push((
        "settings".to_string(),
        digest_of(&Settings {
            recipe: &recipe.name,
            user_data: &recipe.builder.user_data,
            root_volume: &recipe.builder.root_volume,
        }),
    ));

    for plan in uploads {
        #[derive(Serialize)]
        struct Entry<'a> {
            rel: &'a str,
            kind: &'a str,
            link: Option<&'a str>,
            mode: u32,
            sha256: Option<String>,
        }
        #[derive(Serialize)]
        struct Up<'a> {
            destination: &'a str,
            is_dir: bool,
            mode: Option<u32>,
            owner: &'a Option<String>,
            entries: Vec<Entry<'a>>,
            // Where the upload happens changes what the steps see. Absent when unset, so the
            // fingerprints of recipes without `before` are what they were.
            #[serde(skip_serializing_if = "Option::is_none")]
            before: &'a Option<String>,
        }
        let entries = plan
            .entries
            .iter()
            .map(|e| Entry {
                rel: &e.rel,
                kind: match e.kind {
                    EntryKind::File => "file",
                    EntryKind::Dir => "dir",
                    EntryKind::Symlink(_) => "symlink",
                },
                link: match &e.kind {
                    EntryKind::Symlink(t) => Some(t),
                    _ => None,
                },
                mode: e.mode,
                sha256: e.sha256.map(hex::encode),
            })
            .collect();
        let u = &plan.upload;
        components.push((
            format!("upload:{}", u.destination),
            digest_of(&Up {
                destination: &u.destination,
                is_dir: u.is_dir,
                mode: u.mode,
                owner: &u.owner,
                entries,
                before: &u.before,
            }),
        ));
    }

    for (step, script) in recipe.steps.iter().zip(scripts) {
        #[derive(Serialize)]
        struct St<'a> {
            script: &'a str,
            sudo: bool,
            env: &'a BTreeMap<String, String>,
            workdir: &'a Option<String>,
            reboot: bool,
        }
        components.push((
            format!("step:{}", step.name),
            digest_of(&St {
                script,
                sudo: step.sudo,
                env: &step.env,
                workdir: &step.workdir,
                reboot: step.reboot,
            }),
        ));
    }

    Fingerprint {
        hash: combine(VERSION, &components),
        components,
    }
}

/// The fingerprint's hash: the version line, then every component, in order.
fn combine(version: u32, components: &[(String, String)]) -> String {
    let mut all = Sha256::new();
    all.update(format!("bake-fingerprint v{version}\n").as_bytes());
    for (name, d) in components {
        all.update(name.as_bytes());
        all.update([0]);
        all.update(d.as_bytes());
        all.update(b"\n");
    }
    hex::encode(all.finalize())
}

/// Reads every step's script: inline text, or the bytes of its script file.
pub fn read_scripts(recipe: &Recipe) -> Result<Vec<String>, PlanError> {
    recipe
        .steps
        .iter()
        .map(|s| match &s.body {
            StepBody::Run(text) => Ok(text.clone()),
            StepBody::Script(path) => std::fs::read_to_string(path).map_err(|e| PlanError {
                path: path.clone(),
                message: format!("cannot read script: {e}"),
            }),
        })
        .collect()
}

/// The bytes of each `[[test]]`'s script, in recipe order.
pub fn read_test_scripts(recipe: &Recipe) -> Result<Vec<String>, PlanError> {
    recipe
        .tests
        .iter()
        .map(|t| match &t.step.body {
            StepBody::Run(text) => Ok(text.clone()),
            StepBody::Script(path) => std::fs::read_to_string(path).map_err(|e| PlanError {
                path: path.clone(),
                message: format!("cannot read test script: {e}"),
            }),
        })
        .collect()
}

/// The fingerprint of the tests, apart from the image's (changing a test does not rebuild the
/// image; it re-runs the tests on it): everything that decides whether a test passes — names,
/// script bytes, sudo, env, workdir, expect_output — but not timeouts or retries.
pub fn tests_fingerprint(recipe: &Recipe, scripts: &[String]) -> String {
    #[derive(Serialize)]
    struct T<'a> {
        name: &'a str,
        script: &'a str,
        sudo: bool,
        env: &'a BTreeMap<String, String>,
        workdir: &'a Option<String>,
        expect_output: &'a Option<String>,
    }
    let all: Vec<T> = recipe
        .tests
        .iter()
        .zip(scripts)
        .map(|(t, script)| T {
            name: &t.step.name,
            script,
            sudo: t.step.sudo,
            env: &t.step.env,
            workdir: &t.step.workdir,
            expect_output: &t.expect_output,
        })
        .collect();
    format!("t{VERSION}-{}", &digest_of(&all)[..32])
}

/// The tag value recording component digests: `name=digest8` pairs, where a name is shortened
/// to a 6-hex hash of itself so long destinations fit. EC2 caps a tag value at 256 characters,
/// so the record is split over as many values as needed.
pub fn encode_inputs(fp: &Fingerprint) -> Vec<String> {
    let mut values = vec![String::new()];
    for (name, d) in &fp.components {
        let item = format!("{}={}", &sha256_hex(name.as_bytes())[..6], &d[..8]);
        let cur = values.last_mut().unwrap();
        if cur.len() + item.len() + 1 > 256 {
            values.push(item);
        } else {
            if !cur.is_empty() {
                cur.push(',');
            }
            cur.push_str(&item);
        }
    }
    values
}

/// What differs between the components of `now` and the recorded inputs of an older image.
/// Returns human names of changed/added components, plus "removed N" for vanished ones.
pub fn diff_inputs(now: &Fingerprint, recorded: &[String]) -> Vec<String> {
    let old: BTreeMap<&str, &str> = recorded
        .iter()
        .flat_map(|v| v.split(','))
        .filter_map(|kv| kv.split_once('='))
        .collect();
    let mut changed = Vec::new();
    let mut seen = 0;
    for (name, d) in &now.components {
        let key = &sha256_hex(name.as_bytes())[..6];
        match old.get(key) {
            Some(od) if *od == &d[..8] => seen += 1,
            Some(_) => {
                seen += 1;
                changed.push(format!("{name} changed"));
            }
            None => changed.push(format!("{name} added")),
        }
    }
    if old.len() > seen {
        changed.push(format!("{} input(s) removed", old.len() - seen));
    }
    changed
}

#[cfg(test)]
mod tests;
