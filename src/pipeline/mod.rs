//! The bake itself: from a validated recipe to a tagged AMI, with nothing left behind.
//!
//! A build is a sequence of stages. Each stage that creates something registers its undo on the
//! [`Cleanup`] stack *before* the call that creates it, so success, failure and interruption all
//! end the same way: the caller runs the stack. Independent work overlaps: uploads are hashed
//! while the source AMI is resolved; the key pair and security group are created together.

pub mod error;
pub use error::BuildError;
pub mod checkpoint;
pub mod cleanup;
mod deadman;
pub mod distribute;
mod image;
pub mod journal;
mod launch;
pub mod lease;
pub mod lock;
pub mod lookup;
pub mod newest;
pub mod on_error;
mod provision;
pub mod source;
pub mod verify_image;

use std::time::{Duration, Instant};

use serde::Serialize;

pub use cleanup::{Cleanup, Undo};
pub use distribute::RegionImage;
pub use image::{STATE_TAG, is_complete};

use crate::aws::Clients;
use crate::plan::{self, Fingerprint, HashCache};
use crate::recipe::model::Recipe;
use crate::ui::Ui;

#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// Rebuild even when an image with the same fingerprint exists.
    pub force: bool,
    /// A failing test keeps the new image (tagged `bake:tested=failed`) instead of removing it.
    pub keep_failed: bool,
    /// `bake test`: no build; run the tests on the image the fingerprint already has.
    pub test_only: bool,
    /// What a failure while the builder is reachable does with it (`--on-error`).
    pub on_error: on_error::OnError,
    /// `--no-checkpoints`: build from the source and make no checkpoint images.
    pub no_checkpoints: bool,
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
    /// The `[[test]]`s run on a fresh instance of the image (absent: none were run, e.g. the
    /// recipe has none or the image already passed these tests).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tests: Option<verify_image::TestsReport>,
    /// Every region's image, the build region first (just it without `[image] regions`).
    pub regions: Vec<RegionImage>,
    /// The checkpoint image the builder started from (null: from the source).
    pub from_checkpoint: Option<checkpoint::Resume>,
    /// The checkpoint images this build made.
    pub checkpoints: Vec<checkpoint::Checkpoint>,
}

impl BuildResult {
    /// Packer's manifest `artifact_id`: `region:ami` for every region, comma-separated.
    pub fn artifact_id(&self) -> String {
        if self.regions.is_empty() {
            return format!("{}:{}", self.region, self.ami_id);
        }
        self.regions
            .iter()
            .map(|r| format!("{}:{}", r.region, r.ami_id))
            .collect::<Vec<_>>()
            .join(",")
    }
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
        entry.copy_regions = recipe.image.distribution.region_names();
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

    /// The build failed and its builder is kept (`--on-error=abort`): the entry says so.
    pub fn end_kept(mut self) {
        self.entry.kept = true;
        let _ = self.entry.write();
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
    Bake {
        clients,
        recipe,
        opts,
        ui,
        cleanup,
        build_id,
    }
    .run()
    .await
}

/// One build in progress: what every stage needs. The stages are its methods, each in the
/// module that owns that stage (`launch`, `provision`, `image`).
#[derive(Clone, Copy)]
pub struct Bake<'a> {
    pub clients: &'a Clients,
    pub recipe: &'a Recipe,
    pub opts: &'a BuildOptions,
    pub ui: &'a Ui,
    /// The undo stack; the caller runs it after the build, whatever happened.
    pub cleanup: &'a Cleanup,
    /// Names and tags this build's temporary resources.
    pub build_id: &'a str,
}

/// An available, complete image of ours with the fingerprint asked for: a cache hit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundImage {
    pub ami_id: String,
    pub name: String,
    pub snapshots: Vec<String>,
}

impl Bake<'_> {
    /// Resolve, then either find the image already made or launch, provision and image a
    /// builder.
    pub async fn run(&self) -> Result<BuildResult, BuildError> {
        let started = Instant::now();
        self.ui.add_secrets(&self.recipe.secrets);
        let inputs = self.resolve().await?;

        // The image's name is fixed now, and refused before anything is created if it is taken.
        let image_name = image::image_name(&self.recipe.image.name, &self.recipe.name, &inputs.fp);
        let hit = if self.opts.test_only {
            let hit = image::find_by_fingerprint(&self.clients.ec2, &inputs.fp.hash).await?;
            Some(hit.ok_or_else(|| BuildError::NoImageToTest {
                recipe: self.recipe.name.clone(),
                fingerprint: inputs.fp.hash.clone(),
            })?)
        } else {
            self.cached(&inputs.fp, &image_name).await?
        };
        let mut from_checkpoint = None;
        let mut checkpoints = Vec::new();
        let (image, made) = match hit {
            Some(hit) => {
                self.ui.line(&format!(
                    "image {} ({}) already has fingerprint {}: nothing to build",
                    hit.ami_id,
                    hit.name,
                    inputs.fp.short()
                ));
                (hit, None)
            }
            None => {
                let resume = self.resume_point(&inputs).await?;
                let source = resume
                    .as_ref()
                    .map_or_else(|| inputs.source.clone(), checkpoint::Resume::as_source);
                let builder = self.launch(&source).await?;
                let pending = self.provision(&builder, &inputs, resume.as_ref()).await?;
                let pending_amis = checkpoint::ami_ids(&pending);
                // The checkpoints' snapshots complete while the builder stops and is imaged.
                let ((made, undo), done) = tokio::try_join!(
                    self.make_image(
                        &builder,
                        &inputs,
                        &image_name,
                        resume.as_ref(),
                        &pending_amis
                    ),
                    self.finish_checkpoints(pending),
                )?;
                from_checkpoint = resume;
                checkpoints = done;
                (made, Some(undo))
            }
        };
        let cached = made.is_none();
        // Nothing may use the image before its tests pass: only a tested image is copied,
        // shared or published.
        let tests = self.verify_image(&image, made).await?;
        let regions = self.distribute(&inputs.fp, &image).await?;
        Ok(BuildResult {
            recipe: self.recipe.name.clone(),
            ami_id: image.ami_id,
            ami_name: image.name,
            region: self.clients.region.clone(),
            fingerprint: inputs.fp.hash.clone(),
            cached,
            source_ami: inputs.source.id.clone(),
            snapshots: image.snapshots,
            build_id: self.build_id.to_string(),
            seconds: started.elapsed().as_secs_f64(),
            stages: stage_times(self.ui),
            tests,
            regions,
            from_checkpoint,
            checkpoints,
        })
    }

    /// The "resolve" stage: source image, hashed uploads, fingerprint.
    async fn resolve(&self) -> Result<Inputs, BuildError> {
        let st = self
            .ui
            .stage("resolve", "resolving source image and hashing inputs");
        let inputs = inputs(self.clients, self.recipe).await?;
        let total_bytes: u64 = inputs
            .plans
            .iter()
            .flat_map(|p| &p.entries)
            .map(|e| e.size)
            .sum();
        st.finish(&format!(
            "{} ({}), fingerprint {}, {} to upload",
            inputs.source.id,
            inputs.source.name.as_deref().unwrap_or("unnamed"),
            inputs.fp.short(),
            crate::ui::fmt_bytes(total_bytes)
        ));
        Ok(inputs)
    }

    /// The image this fingerprint already has, if any (never with `--force`). Without one, the
    /// name must be free and this build holds the per-fingerprint lock when it returns, or has
    /// waited for whoever held it to finish the image.
    async fn cached(
        &self,
        fp: &Fingerprint,
        image_name: &str,
    ) -> Result<Option<FoundImage>, BuildError> {
        let ec2 = &self.clients.ec2;
        if self.opts.force {
            image::check_name_free(ec2, image_name).await?;
            return Ok(None);
        }
        if let Some(hit) = image::find_by_fingerprint(ec2, &fp.hash).await? {
            return Ok(Some(hit));
        }
        image::check_name_free(ec2, image_name).await?;
        // Nobody has it yet: take the per-fingerprint lock, or wait for whoever holds it.
        let public = lock_key_material();
        match lock::acquire(
            self.clients,
            &fp.hash,
            &public,
            self.build_id,
            self.ui,
            self.cleanup,
            Duration::from_secs(4 * 3600),
        )
        .await?
        {
            lock::Acquired::Held => {
                self.cleanup.lock_held(&lock::lock_name(&fp.hash));
                Ok(None)
            }
            lock::Acquired::Built(hit) => Ok(Some(hit)),
        }
    }
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
