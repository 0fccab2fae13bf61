//! The bake itself: from a validated recipe to a tagged AMI, with nothing left behind.
//!
//! A build is a sequence of stages. Each stage that creates something registers its undo on the
//! [`Cleanup`] stack *before* the call that creates it, so success, failure and interruption all
//! end the same way: the caller runs the stack. Independent work overlaps: uploads are hashed
//! while the source AMI is resolved; the key pair and security group are created together.

pub mod error;
pub use error::BuildError;
pub mod cleanup;
mod deadman;
mod image;
pub mod journal;
mod launch;
pub mod lease;
pub mod lock;
pub mod lookup;
mod provision;
pub mod source;

use std::time::{Duration, Instant};

use serde::Serialize;

pub use cleanup::{Cleanup, Undo};
pub use image::{STATE_TAG, is_complete};

use crate::aws::Clients;
use crate::plan::{self, Fingerprint, HashCache};
use crate::recipe::model::Recipe;
use crate::ui::Ui;

#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// Rebuild even when an image with the same fingerprint exists.
    pub force: bool,
}

/// What a build produced; printed as the summary or as JSON.
#[derive(Debug, Clone, Serialize)]
pub struct BuildResult {
    pub recipe: String,
    pub ami_id: String,
    pub ami_name: String,
    pub region: String,
    pub fingerprint: String,
    pub cached: bool,
    pub source_ami: String,
    pub snapshots: Vec<String>,
    pub build_id: String,
    pub seconds: f64,
    pub stages: Vec<StageTime>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StageTime {
    pub name: String,
    pub seconds: f64,
}

/// A running build's signs of life: its journal entry on this machine and the renewal of its
/// leases. Create it before the build creates anything; end it after cleanup.
pub struct Liveness {
    entry: journal::Entry,
    _renewal: lease::Renewal,
}

impl Liveness {
    pub fn start(clients: &Clients, recipe: &Recipe, build_id: &str) -> Liveness {
        let mut entry = journal::Entry::for_this_process(build_id, &recipe.name, &clients.region);
        entry.staging = provision::staging_locations(recipe, build_id);
        // Without a journal, gc on this machine falls back to the lease: slower, still safe.
        let _ = entry.write();
        Liveness {
            entry,
            _renewal: lease::renew(clients.clone(), build_id.to_string()),
        }
    }

    /// The build is over. With nothing left the entry goes; otherwise it stays, so `bake gc`
    /// here knows at once that what is left belongs to a dead build.
    pub fn end(self, nothing_left: bool) {
        if nothing_left {
            journal::remove(&self.entry.build_id);
        }
    }
}

/// A short random id naming this build's temporary resources.
pub fn new_build_id() -> String {
    format!("b-{:010x}", rand::random::<u64>() & 0xff_ffff_ffff)
}

/// Runs one build. The caller owns `cleanup` and must run it afterwards, whatever happened
/// (including when this future is dropped on Ctrl-C).
pub async fn run(
    clients: &Clients,
    recipe: &Recipe,
    opts: &BuildOptions,
    ui: &Ui,
    cleanup: &Cleanup,
    build_id: &str,
) -> Result<BuildResult, BuildError> {
    let started = Instant::now();
    ui.add_secrets(&recipe.secrets);

    let st = ui.stage("resolve", "resolving source image and hashing inputs");
    let Inputs {
        fp,
        source,
        plans,
        scripts,
    } = inputs(clients, recipe).await?;
    let total_bytes: u64 = plans.iter().flat_map(|p| &p.entries).map(|e| e.size).sum();
    st.finish(&format!(
        "{} ({}), fingerprint {}, {} to upload",
        source.id,
        source.name.as_deref().unwrap_or("unnamed"),
        fp.short(),
        crate::ui::fmt_bytes(total_bytes)
    ));

    // The image's name is fixed now, and refused before anything is created if it is taken.
    let image_name = image::image_name(&recipe.image.name, &recipe.name, &fp);
    let mut hit = None;
    if !opts.force {
        hit = image::find_by_fingerprint(&clients.ec2, &fp.hash).await?;
        if hit.is_none() {
            image::check_name_free(&clients.ec2, &image_name).await?;
            // Nobody has it yet: take the per-fingerprint lock, or wait for whoever holds it.
            let public = lock_key_material();
            match lock::acquire(
                clients,
                &fp.hash,
                &public,
                build_id,
                ui,
                cleanup,
                Duration::from_secs(4 * 3600),
            )
            .await?
            {
                lock::Acquired::Held => cleanup.lock_held(&lock::lock_name(&fp.hash)),
                lock::Acquired::Built(h) => hit = Some(h),
            }
        }
    } else {
        image::check_name_free(&clients.ec2, &image_name).await?;
    }
    if let Some(hit) = hit {
        {
            ui.line(&format!(
                "image {} ({}) already has fingerprint {}: nothing to build",
                hit.0,
                hit.1,
                fp.short()
            ));
            return Ok(BuildResult {
                recipe: recipe.name.clone(),
                ami_id: hit.0,
                ami_name: hit.1,
                region: clients.region.clone(),
                fingerprint: fp.hash.clone(),
                cached: true,
                source_ami: source.id.clone(),
                snapshots: hit.2,
                build_id: build_id.to_string(),
                seconds: started.elapsed().as_secs_f64(),
                stages: stage_times(ui),
            });
        }
    }

    provision::register_staging_cleanup(recipe, cleanup, build_id);
    let builder = launch::launch(clients, recipe, &source, ui, cleanup, build_id).await?;
    provision::provision(recipe, &builder, &plans, &scripts, ui, clients, build_id).await?;
    let made = image::make_image(
        clients,
        recipe,
        &builder,
        &fp,
        &source,
        ui,
        cleanup,
        build_id,
        &image_name,
    )
    .await?;

    Ok(BuildResult {
        recipe: recipe.name.clone(),
        ami_id: made.ami_id,
        ami_name: made.name,
        region: clients.region.clone(),
        fingerprint: fp.hash.clone(),
        cached: false,
        source_ami: source.id.clone(),
        snapshots: made.snapshots,
        build_id: build_id.to_string(),
        seconds: started.elapsed().as_secs_f64(),
        stages: stage_times(ui),
    })
}

/// Public key material for the lock key pair: never used to log in anywhere.
fn lock_key_material() -> String {
    russh::keys::PrivateKey::random(&mut rand::rng(), russh::keys::Algorithm::Ed25519)
        .ok()
        .and_then(|k| k.public_key().to_openssh().ok())
        .unwrap_or_default()
}

/// Wall time per stage, for the summary and JSON.
pub fn stage_times(ui: &Ui) -> Vec<StageTime> {
    ui.timings()
        .into_iter()
        .map(|(name, d): (String, Duration)| StageTime {
            name,
            seconds: d.as_secs_f64(),
        })
        .collect()
}

/// Everything a build is made from: the resolved source, the hashed uploads, the step scripts,
/// and the fingerprint over them.
pub struct Inputs {
    pub fp: Fingerprint,
    pub source: source::SourceImage,
    pub plans: Vec<plan::UploadPlan>,
    pub scripts: Vec<String>,
}

/// Resolves the source AMI while hashing the uploads (blocking I/O on its own thread), then
/// computes the fingerprint. `bake build` and `bake plan` both start here.
pub async fn inputs(clients: &Clients, recipe: &Recipe) -> Result<Inputs, BuildError> {
    let uploads = recipe.uploads.clone();
    let hashing = tokio::task::spawn_blocking(move || {
        let cache = HashCache::default_path()
            .map(HashCache::open)
            .unwrap_or_else(HashCache::disabled);
        plan::plan_uploads(&uploads, &cache)
    });
    let source = source::resolve(&clients.ec2, &recipe.source).await;
    let plans = hashing
        .await
        .map_err(|source| BuildError::Hashing { source })??;
    let source = source?;
    let scripts = plan::read_scripts(recipe)?;
    let fp = plan::compute(recipe, &source.id, &plans, &scripts);
    Ok(Inputs {
        fp,
        source,
        plans,
        scripts,
    })
}
