//! Provisioning the running builder through its communicator: connect once, run each step
//! (retries, reboots) with the uploads made before it, checkpoints after the steps that ask
//! for one, disconnect.

use std::sync::Arc;
use std::time::Duration;

use super::checkpoint::{Pending, Resume};
use super::launch::Launched;
use super::{Bake, BuildError, Inputs};
use crate::aws::Ctx;
use crate::plan::{UploadPlan, prefix};
use crate::recipe::model::{CommunicatorKind, Recipe, Step};
use crate::remote::any::Communicator;
use crate::remote::ssh::{SshCommunicator, SshTarget};
use crate::remote::ssm::{self, SsmCommunicator};
use crate::retry::{Attempt, Tried, retry_times};
use crate::ui::SharedSink;
use crate::ui::fmt_bytes;

impl Bake<'_> {
    /// The "connect", "upload", "step …", "checkpoint …" and "tidy" stages, over whichever
    /// communicator the recipe chose. On a builder booted from checkpoint `resume`, only the
    /// steps after it run, with the uploads that belong to them. Returns the checkpoint images
    /// asked for and not waited for.
    pub(super) async fn provision(
        &self,
        builder: &Launched,
        inputs: &Inputs,
        resume: Option<&Resume>,
    ) -> Result<Vec<Pending>, BuildError> {
        let sink: SharedSink = Arc::new(self.ui.clone());
        let mut comm = match self.recipe.communicator {
            CommunicatorKind::Ssh => self.connect_ssh(builder, sink).await?,
            CommunicatorKind::Ssm => self.connect_ssm(builder, sink).await?,
        };
        // From here until the temporary key is removed, `--on-error=abort` can keep it.
        let access = super::on_error::Access::of(builder, self.recipe);
        self.cleanup.set_reachable(Some(access));
        if let Some(r) = resume {
            self.tidy_checkpoint(&mut comm, r).await?;
        }
        let pending = self
            .provision_with(&mut comm, builder, inputs, resume)
            .await?;
        self.tidy(&mut comm, builder).await?;
        self.cleanup.set_reachable(None);
        comm.close().await;
        Ok(pending)
    }

    /// After the last step: disarm the dead-man switch and remove what bake itself put on the
    /// builder (the temporary authorized key, cloud-init's copies of the user data), so the image
    /// carries none of it. See [`super::deadman`].
    async fn tidy(&self, comm: &mut Communicator, builder: &Launched) -> Result<(), BuildError> {
        let Bake { recipe, ui, .. } = *self;
        let st = ui.stage(
            "tidy",
            "disarming the dead-man switch, removing the temporary key",
        );
        let blob = match recipe.communicator {
            CommunicatorKind::Ssh => builder
                .client_key
                .public_key()
                .to_openssh()
                .ok()
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_string)),
            CommunicatorKind::Ssm => None,
        };
        let user = if recipe.ssh.username.is_empty() {
            ssm::DEFAULT_USER
        } else {
            recipe.ssh.username.as_str()
        };
        let script = super::deadman::tidy_script(user, blob.as_deref(), &builder.instance_id);
        match run_internal(comm, "tidy", &script).await {
            Ok(()) => {
                st.finish("dead-man switch disarmed; temporary key and user data copies removed");
                Ok(())
            }
            Err(e) => {
                st.fail(&e.to_string());
                Err(e)
            }
        }
    }

    /// SSM: no session, no inbound port.
    pub(super) async fn connect_ssm(
        &self,
        builder: &Launched,
        sink: SharedSink,
    ) -> Result<Communicator, BuildError> {
        let Bake {
            clients,
            recipe,
            ui,
            build_id,
            ..
        } = *self;
        let settings = recipe.ssm.clone().ok_or_else(|| BuildError::NoSsmSection)?;
        let st = ui.stage(
            "connect",
            &format!(
                "waiting for {} to come online with Systems Manager",
                builder.instance_id
            ),
        );
        let user = recipe.ssh.username.clone();
        match SsmCommunicator::connect(
            clients.clone(),
            &builder.instance_id,
            settings,
            &user,
            sink,
            build_id,
        )
        .await
        {
            Ok(c) => {
                let c = c.with_secrets(&recipe.secrets);
                st.finish(&format!(
                    "{} online with Systems Manager (no inbound port)",
                    builder.instance_id
                ));
                Ok(Communicator::Ssm(c))
            }
            Err(e) => {
                st.fail(&e.to_string());
                Err(e.into())
            }
        }
    }

    pub(super) async fn connect_ssh(
        &self,
        builder: &Launched,
        sink: SharedSink,
    ) -> Result<Communicator, BuildError> {
        let Bake { recipe, ui, .. } = *self;
        let st = ui.stage(
            "connect",
            &format!("waiting for SSH on {}:{}", builder.addr, recipe.ssh.port),
        );
        let target = SshTarget {
            addr: builder.addr.clone(),
            port: recipe.ssh.port,
            user: recipe.ssh.username.clone(),
            key: builder.client_key.clone(),
            host_key: builder.host_key.clone(),
            timeout: recipe.ssh.timeout,
        };
        let comm = match SshCommunicator::connect(target, sink).await {
            Ok(c) => Communicator::Ssh(c),
            Err(e) => {
                st.fail(&e.to_string());
                return Err(e.into());
            }
        };
        st.finish(&format!(
            "connected as {} (host key pinned)",
            recipe.ssh.username
        ));
        Ok(comm)
    }

    /// Uploads, steps and checkpoints: the same whatever the communicator.
    async fn provision_with(
        &self,
        comm: &mut Communicator,
        builder: &Launched,
        inputs: &Inputs,
        resume: Option<&Resume>,
    ) -> Result<Vec<Pending>, BuildError> {
        let Bake { recipe, ui, .. } = *self;
        let checkpoints = if self.opts.no_checkpoints {
            Vec::new()
        } else {
            prefix::checkpoints(recipe, &inputs.fp)
        };
        let start = resume.map_or(0, |r| r.index + 1);
        let mut pending = Vec::new();
        // One round past the last step: a recipe without steps still makes its uploads.
        for i in start..recipe.steps.len().max(1) {
            let done = self
                .provision_step(comm, builder, inputs, i, &checkpoints, &mut pending)
                .await;
            if let Err(e) = done {
                self.keep_after_failure(pending).await;
                return Err(e);
            }
        }
        if let Some(r) = resume {
            ui.line(&format!(
                "steps up to {} came from checkpoint {}",
                r.step, r.ami_id
            ));
        }
        Ok(pending)
    }

    /// Step `i` with the uploads before it and its checkpoint, if it asks for one.
    async fn provision_step(
        &self,
        comm: &mut Communicator,
        builder: &Launched,
        inputs: &Inputs,
        i: usize,
        checkpoints: &[prefix::Prefix],
        pending: &mut Vec<Pending>,
    ) -> Result<(), BuildError> {
        let recipe = self.recipe;
        let due: Vec<UploadPlan> = inputs
            .plans
            .iter()
            .zip(prefix::upload_positions(recipe))
            .filter(|(_, p)| *p == i)
            .map(|(plan, _)| plan.clone())
            .collect();
        let stage = match (i, recipe.steps.get(i)) {
            (0, _) | (_, None) => "upload".to_string(),
            (_, Some(s)) => format!("upload before {}", s.name),
        };
        self.upload_batch(comm, &stage, &due).await?;
        let (Some(step), Some(script)) = (recipe.steps.get(i), inputs.scripts.get(i)) else {
            return Ok(());
        };
        self.run_step_or_ask(comm, step, script, builder).await?;
        if step.reboot {
            // The dead-man switch lives in /run: re-arm it with the time left.
            let left = recipe
                .builder
                .max_lifetime
                .saturating_sub(builder.launched.elapsed());
            run_internal(comm, "re-arm", &super::deadman::arm_script(left.as_secs())).await?;
        }
        if let Some(p) = checkpoints.iter().find(|p| p.step == i) {
            pending.push(self.checkpoint(comm, builder, inputs, p).await?);
        }
        Ok(())
    }

    /// A later step failed: the checkpoints before it are sound whatever that step did, so
    /// they are finished and kept, and the fixed recipe starts from them. (Interrupted
    /// instead, the build waits for nothing and they go with the rest.)
    async fn keep_after_failure(&self, pending: Vec<Pending>) {
        if pending.is_empty() {
            return;
        }
        self.ui.line(&format!(
            "the build failed after {} checkpoint(s): keeping them for the next build",
            pending.len()
        ));
        if let Err(e) = self.finish_checkpoints(pending).await {
            self.ui
                .line(&format!("could not finish the checkpoints (removed): {e}"));
        }
    }

    /// The uploads made before one step, as one stage.
    async fn upload_batch(
        &self,
        comm: &mut Communicator,
        stage: &str,
        plans: &[UploadPlan],
    ) -> Result<(), BuildError> {
        if plans.is_empty() {
            return Ok(());
        }
        let files: usize = plans.iter().map(|p| p.entries.len()).sum();
        let bytes: u64 = plans.iter().flat_map(|p| &p.entries).map(|e| e.size).sum();
        let st = self
            .ui
            .stage(stage, &format!("{files} file(s), {}", fmt_bytes(bytes)));
        if let Err(e) = comm.upload(plans).await {
            st.fail(&e.to_string());
            return Err(e.into());
        }
        st.finish(&format!(
            "{files} file(s), {} uploaded and verified",
            fmt_bytes(bytes)
        ));
        Ok(())
    }

    pub(super) async fn run_step(
        &self,
        comm: &mut Communicator,
        step: &Step,
        script: &str,
        builder: &Launched,
    ) -> Result<(), BuildError> {
        let ui = self.ui;
        retry_times(step.retries + 1, async |attempt: Attempt| {
            let label = attempt.label(&step.name);
            let st = ui.stage(&format!("step {}", step.name), &format!("running {label}"));
            let o = match comm.run(step, script).await {
                Ok(o) => o,
                Err(e) => {
                    st.fail(&e.to_string());
                    return Tried::Failed(e.into());
                }
            };
            if o.exit_status == Some(0) {
                st.finish("exit 0");
                return match step.reboot {
                    true => self
                        .reboot(comm, builder)
                        .await
                        .map_or_else(Tried::Fatal, Tried::Done),
                    false => Tried::Done(()),
                };
            }
            if o.disconnected && step.reboot {
                // The step rebooted the machine itself.
                st.finish("builder went down for reboot");
                let st = ui.stage("reboot", "reconnecting");
                if let Err(e) = comm.reconnect().await {
                    return Tried::Fatal(e.into());
                }
                st.finish("reconnected");
                return Tried::Done(());
            }
            let status = match (o.exit_status, o.disconnected) {
                (Some(s), _) => format!("exit status {s}"),
                (None, true) => "the connection dropped".to_string(),
                (None, false) => "no exit status".to_string(),
            };
            st.fail(&status);
            if o.disconnected
                && let Err(e) = comm.reconnect().await
            {
                return Tried::Fatal(e.into());
            }
            Tried::Failed(BuildError::StepFailed {
                step: step.name.clone(),
                status,
                attempts: attempt.n,
                tail: o.tail,
            })
        })
        .await
    }

    /// A `reboot = true` step that exited normally: bake reboots the builder through EC2, waits for
    /// the old session to drop, then reconnects with the same pinned host key.
    async fn reboot(&self, comm: &mut Communicator, builder: &Launched) -> Result<(), BuildError> {
        let Bake { clients, ui, .. } = *self;
        let st = ui.stage("reboot", &format!("rebooting {}", builder.instance_id));
        clients
            .ec2
            .reboot_instances()
            .instance_ids(&builder.instance_id)
            .send()
            .await
            .ctx("RebootInstances", Some(&builder.instance_id))?;
        comm.wait_disconnected(Duration::from_secs(300)).await?;
        st.update("down; reconnecting");
        comm.reconnect().await?;
        st.finish("reconnected after reboot");
        Ok(())
    }
}

/// Runs one of bake's own root scripts on the builder as a step.
pub(super) async fn run_internal(
    comm: &mut Communicator,
    name: &str,
    script: &str,
) -> Result<(), BuildError> {
    let step = Step {
        name: name.to_string(),
        body: crate::recipe::model::StepBody::Run(script.to_string()),
        sudo: true,
        env: Default::default(),
        workdir: None,
        timeout: Duration::from_secs(120),
        retries: 0,
        reboot: false,
        checkpoint: false,
    };
    let o = comm.run(&step, script).await?;
    if o.exit_status != Some(0) {
        return Err(BuildError::StepFailed {
            step: name.to_string(),
            status: format!("{:?}", o.exit_status),
            attempts: 1,
            tail: o.tail,
        });
    }
    Ok(())
}

/// `s3://bucket/<prefix><build-id>/` for each bucket the build's communicator stages objects
/// in, for the journal and the builder's tags.
pub fn staging_locations(recipe: &Recipe, build_id: &str) -> Vec<String> {
    Communicator::staged_objects(recipe, build_id)
        .iter()
        .map(|s| s.location())
        .collect()
}
