//! Provisioning the running builder through its communicator: connect once, upload, run each
//! step (retries, reboots), disconnect.

use std::sync::Arc;
use std::time::Duration;

use super::BuildError;
use super::launch::Builder;
use crate::aws::{Clients, Ctx};
use crate::communicator::any::Communicator;
use crate::communicator::ssh::{SshCommunicator, SshTarget};
use crate::communicator::{SharedSink, UploadPlan};
use crate::recipe::model::{Recipe, Step};
use crate::ui::{Ui, fmt_bytes};

pub async fn provision(
    recipe: &Recipe,
    builder: &Builder,
    plans: &[UploadPlan],
    scripts: &[String],
    ui: &Ui,
    clients: &Clients,
) -> Result<(), BuildError> {
    let sink: SharedSink = Arc::new(ui.clone());
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
    let mut comm = match SshCommunicator::connect(target, sink.clone()).await {
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

    if !plans.is_empty() {
        let files: usize = plans.iter().map(|p| p.entries.len()).sum();
        let bytes: u64 = plans.iter().flat_map(|p| &p.entries).map(|e| e.size).sum();
        let st = ui.stage("upload", &format!("{files} file(s), {}", fmt_bytes(bytes)));
        if let Err(e) = comm.upload(plans).await {
            st.fail(&e.to_string());
            return Err(e.into());
        }
        st.finish(&format!(
            "{files} file(s), {} uploaded and verified",
            fmt_bytes(bytes)
        ));
    }

    for (step, script) in recipe.steps.iter().zip(scripts) {
        run_step(&mut comm, step, script, ui, clients, builder).await?;
    }
    comm.close().await;
    Ok(())
}

async fn run_step(
    comm: &mut Communicator,
    step: &Step,
    script: &str,
    ui: &Ui,
    clients: &Clients,
    builder: &Builder,
) -> Result<(), BuildError> {
    let attempts = step.retries + 1;
    let mut last = None;
    for attempt in 1..=attempts {
        let label = if attempts > 1 {
            format!("{} (attempt {attempt}/{attempts})", step.name)
        } else {
            step.name.clone()
        };
        let st = ui.stage(&format!("step {}", step.name), &format!("running {label}"));
        let outcome = comm.run(step, script).await;
        match outcome {
            Ok(o) if o.exit_status == Some(0) => {
                st.finish("exit 0");
                if step.reboot {
                    reboot(comm, clients, builder, ui).await?;
                }
                return Ok(());
            }
            Ok(o) if o.disconnected && step.reboot => {
                // The step rebooted the machine itself.
                st.finish("builder went down for reboot");
                let st = ui.stage("reboot", "reconnecting");
                comm.reconnect().await?;
                st.finish("reconnected");
                return Ok(());
            }
            Ok(o) => {
                let status = match (o.exit_status, o.disconnected) {
                    (Some(s), _) => format!("exit status {s}"),
                    (None, true) => "the connection dropped".to_string(),
                    (None, false) => "no exit status".to_string(),
                };
                st.fail(&status);
                if o.disconnected {
                    comm.reconnect().await?;
                }
                last = Some(BuildError::StepFailed {
                    step: step.name.clone(),
                    status,
                    attempts: attempt,
                    tail: o.tail,
                });
            }
            Err(e) => {
                st.fail(&e.to_string());
                last = Some(e.into());
            }
        }
        if attempt < attempts {
            tokio::time::sleep(crate::retry::Backoff::AWS.delay(attempt)).await;
        }
    }
    Err(last.expect("at least one attempt"))
}

/// A `reboot = true` step that exited normally: bake reboots the builder through EC2, waits for
/// the old session to drop, then reconnects with the same pinned host key.
async fn reboot(
    comm: &mut Communicator,
    clients: &Clients,
    builder: &Builder,
    ui: &Ui,
) -> Result<(), BuildError> {
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
