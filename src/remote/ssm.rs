//! SSM communicator: the same uploads and steps as over SSH, for builders that accept no inbound
//! connection. Everything goes through AWS APIs: Systems Manager Run Command
//! (`AWS-RunShellScript`) for steps, an S3 staging bucket for uploads.
//!
//! - [`SsmCommunicator::connect`] waits (through [`crate::retry::poll`]) until the instance is a
//!   managed node with `PingStatus` Online. There is no session: "reconnecting" after a reboot
//!   is waiting for Online again, and a command sent meanwhile is delivered when it is back.
//! - [`SsmCommunicator::run`]: one SendCommand per step with `executionTimeout` = the step's
//!   timeout, then GetCommandInvocation polled with backoff. The API hands out output only at
//!   the end (stdout cut at 24,000 characters, stderr at 8,000): it is printed line by line
//!   then (a long step says every 30 s that it is still running); with `ssm.output_bucket` the agent also writes the full streams to S3 and bake reads
//!   them from there whenever the API's copy was cut, otherwise it says that output was cut.
//! - Sudo semantics: the agent runs everything as root. A `sudo = true` step runs as root with
//!   `HOME=/root`; any other step runs as the recipe's `ssh.username` (through `runuser`), or as
//!   `ssm-user` (created on first use, as the SSM agent does for Session Manager) when the recipe
//!   names none. The working directory is that user's home, as after an SSH login; `workdir`,
//!   `env` and `sh -e` come from [`step_script`], shared with SSH, and the script runs from a
//!   private file removed as it starts (never on a command line, where `ps` would show it).
//! - [`upload`]: files staged in `s3://<bucket>/<prefix><build-id>/` with their sha256 as
//!   `ChecksumSHA256` (S3 verifies the bytes it received), fetched on the builder by presigned
//!   GET URLs (curl, wget or python3: no AWS CLI needed), verified with `sha256sum -c` in place.
//!   Commands over 8 KiB (big step scripts, the checksum list of many files) are staged the
//!   same way and fetched by a short command: SendCommand's parameters are limited in size. So
//!   are commands containing a sensitive value: SSM keeps command parameters in its history.
//!   Removing the staged objects is the build's undo stack's job (registered before the first
//!   put), so it also happens on failure and Ctrl-C.

mod upload;

use std::time::{Duration, Instant};

use aws_sdk_ssm::types::{CommandInvocationStatus, InstanceInformationStringFilter, PingStatus};

use super::transfer::fetch::run_staged_script;
use super::transfer::script::{run_file, shell_quote, step_script};
use super::{CommError, StepOutcome};
use crate::aws::{AwsError, Clients, Ctx};
use crate::plan::UploadPlan;
use crate::recipe::model::{Ssm, Step};
use crate::retry::{self, Backoff, Poll, PollError};
use crate::ui::{OutputTail, SharedSink, Stream};

/// What the API returns of stdout / stderr at most (characters).
pub const STDOUT_LIMIT: usize = 24_000;
pub const STDERR_LIMIT: usize = 8_000;
/// The user non-sudo steps run as when the recipe names no `ssh.username`.
pub const DEFAULT_USER: &str = "ssm-user";
const DOCUMENT: &str = "AWS-RunShellScript";
/// How long a command may wait for delivery (the node rebooting, the agent restarting).
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(600);
/// Commands above this size are staged in S3 and fetched by a short command (SendCommand's
/// parameters are limited in size).
const INLINE_LIMIT: usize = 8 * 1024;
/// How often a long step says it is still running.
const PROGRESS_EVERY: Duration = Duration::from_secs(30);

/// The key prefix of one build's objects: `<prefix><build-id>/` (staged uploads under
/// `upload/`, command output under `output/`).
pub fn build_prefix(settings: &Ssm, build_id: &str) -> String {
    let p = settings.prefix.trim_start_matches('/');
    if p.is_empty() || p.ends_with('/') {
        format!("{p}{build_id}/")
    } else {
        format!("{p}/{build_id}/")
    }
}

/// Objects a build stages outside the builder, under one bucket and prefix. Removing them is
/// the build's undo, registered before the builder is launched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagedObjects {
    pub bucket: String,
    pub prefix: String,
}

impl StagedObjects {
    /// `s3://bucket/prefix`, as recorded in the builder's `bake:staging` tag.
    pub fn location(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }
}

/// Where an SSM build stages objects: the staging bucket and, when it is another one, the
/// output bucket, each under `<prefix><build-id>/`.
pub fn staged_objects(settings: &Ssm, build_id: &str) -> Vec<StagedObjects> {
    let prefix = build_prefix(settings, build_id);
    let mut out = vec![StagedObjects {
        bucket: settings.bucket.clone(),
        prefix: prefix.clone(),
    }];
    if let Some(b) = settings
        .output_bucket
        .as_ref()
        .filter(|b| **b != settings.bucket)
    {
        out.push(StagedObjects {
            bucket: b.clone(),
            prefix,
        });
    }
    out
}

pub struct SsmCommunicator {
    clients: Clients,
    instance_id: String,
    settings: Ssm,
    /// `<prefix><build-id>/`
    prefix: String,
    /// Who non-sudo steps run as.
    user: String,
    sink: SharedSink,
    build_id: String,
    /// Values that must not be stored by Systems Manager: a command containing one is staged
    /// in S3 (gone after the build) instead of sent inline (kept in the command history).
    secrets: Vec<String>,
}

fn aws(e: AwsError) -> CommError {
    CommError::Aws(e)
}

impl SsmCommunicator {
    /// Waits until `instance_id` is online with Systems Manager (up to `settings.timeout`).
    /// `user`: the recipe's `ssh.username` ("" = [`DEFAULT_USER`]).
    pub async fn connect(
        clients: Clients,
        instance_id: &str,
        settings: Ssm,
        user: &str,
        sink: SharedSink,
        build_id: &str,
    ) -> Result<Self, CommError> {
        let c = SsmCommunicator {
            prefix: build_prefix(&settings, build_id),
            clients,
            instance_id: instance_id.to_string(),
            settings,
            user: if user.is_empty() {
                DEFAULT_USER.to_string()
            } else {
                user.to_string()
            },
            sink,
            build_id: build_id.to_string(),
            secrets: Vec::new(),
        };
        c.wait_online().await?;
        c.mark_boot().await?;
        Ok(c)
    }

    /// Values (sensitive variables) never to send inline: SSM keeps command parameters in its
    /// history (ListCommands) for weeks.
    pub fn with_secrets(mut self, secrets: &[String]) -> Self {
        self.secrets = secrets.iter().filter(|s| !s.is_empty()).cloned().collect();
        self
    }

    /// The marker that tells this boot from the next: a file on `/run` (a tmpfs, empty after
    /// every boot). Also the first proof that commands really run on the node.
    fn marker(&self) -> String {
        format!("/run/bake-{}", self.build_id)
    }

    async fn mark_boot(&self) -> Result<(), CommError> {
        let m = shell_quote(&self.marker());
        let inv = self
            .execute(
                "connect",
                &format!(": > {m}"),
                Duration::from_secs(60),
                "connect",
            )
            .await?;
        match inv.status {
            Done::Exit(0) => Ok(()),
            _ => Err(CommError::FirstCommand {
                instance: self.instance_id.clone(),
                stderr: inv.stderr.trim().to_string(),
            }),
        }
    }

    /// After RebootInstances: waits until commands run on the *next* boot (the marker from
    /// [`Self::mark_boot`] is gone), so the reboot is never mistaken for done while the old
    /// boot still answers. No session drops with SSM; this is its equivalent.
    pub async fn wait_rebooted(&self, timeout: Duration) -> Result<(), CommError> {
        let probe = format!(
            "if [ -e {m} ]; then echo same-boot; else echo new-boot; fi",
            m = shell_quote(&self.marker())
        );
        let r = retry::poll(
            Backoff::AWS
                .with_timeout(timeout)
                .with_max(Duration::from_secs(5)),
            |_| async {
                match self
                    .execute("reboot", &probe, Duration::from_secs(60), "reboot check")
                    .await
                {
                    Ok(inv) if inv.stdout.trim() == "new-boot" => Poll::Ready(()),
                    Ok(_) => Poll::Pending("the builder has not rebooted yet".to_string()),
                    Err(e) => Poll::<(), std::convert::Infallible>::Pending(e.to_string()),
                }
            },
        )
        .await;
        r.map_err(|source| CommError::Reboot { source })
    }

    async fn wait_online(&self) -> Result<(), CommError> {
        let id = self.instance_id.as_str();
        let filter = InstanceInformationStringFilter::builder()
            .key("InstanceIds")
            .values(id)
            .build()
            .map_err(|e| AwsError::local("DescribeInstanceInformation", Some(id), e))?;
        let r = retry::poll(
            Backoff::AWS
                .with_timeout(self.settings.timeout)
                .with_max(Duration::from_secs(5)),
            |n| {
                let filter = filter.clone();
                async move {
                    let out = match self
                        .clients
                        .ssm
                        .describe_instance_information()
                        .filters(filter)
                        .send()
                        .await
                        .ctx("DescribeInstanceInformation", Some(id))
                    {
                        Ok(o) => o,
                        Err(e) => return Poll::from_err(e),
                    };
                    let info = out
                        .instance_information_list()
                        .iter()
                        .find(|i| i.instance_id() == Some(id));
                    match info.and_then(|i| i.ping_status()) {
                        Some(PingStatus::Online) => Poll::Ready(()),
                        Some(s) => {
                            let why = format!("{id} is registered but {}", s.as_str());
                            if n > 0 && n % 10 == 0 {
                                self.sink.note(&format!("waiting for SSM: {why}"));
                            }
                            Poll::Pending(why)
                        }
                        None => Poll::Pending(format!(
                            "{id} is not registered with Systems Manager (the instance profile's role needs \
                             AmazonSSMManagedInstanceCore, and the instance must reach the SSM endpoints)"
                        )),
                    }
                }
            },
        )
        .await;
        match r {
            Ok(()) => Ok(()),
            Err(PollError::Timeout { last, .. }) => Err(CommError::ConnectTimeout {
                addr: format!("{id} through Systems Manager"),
                timeout: self.settings.timeout,
                last,
            }),
            Err(PollError::Failed(e)) => Err(aws(e)),
        }
    }

    /// Uploads every plan through the staging bucket; see [`upload`].
    pub async fn upload(&self, plans: &[UploadPlan]) -> Result<(), CommError> {
        upload::upload(self, plans).await
    }

    /// After a reboot: wait until the node is online again (there is no session to re-open).
    pub async fn reconnect(&mut self) -> Result<(), CommError> {
        // The old ping may still say Online for a moment; a command sent then is delivered
        // after the reboot anyway (commands are queued per node).
        self.wait_online().await?;
        self.mark_boot().await
    }

    /// The agent keeps every command's script on the node (its orchestration directory), and
    /// its document state; step scripts may carry secrets: removed before the image is made.
    /// Best effort.
    pub async fn close(self) {
        // The agent also keeps each finished command's document (with its parameters).
        let base = format!("/var/lib/amazon/ssm/{}/document", self.instance_id);
        let _ = self
            .execute(
                "tidy",
                &format!(
                    "rm -rf -- {} {}",
                    shell_quote(&format!("{base}/orchestration")),
                    shell_quote(&format!("{base}/state/completed"))
                ),
                Duration::from_secs(60),
                "tidy",
            )
            .await;
    }

    /// The shell script the agent runs for a step (as root): become the step's user, go to
    /// its home, run [`step_script`] without `sudo` (root needs none, and the image may lack it).
    pub fn render(&self, step: &Step, script: &str) -> String {
        render(step, script, &self.user)
    }

    /// Runs one step to completion; the output arrives when it ends.
    pub async fn run(&self, step: &Step, script: &str) -> Result<StepOutcome, CommError> {
        let start = Instant::now();
        let body = self.render(step, script);
        let inv = self
            .execute(
                &step.name,
                &body,
                step.timeout,
                &format!("step {}", step.name),
            )
            .await?;
        let mut tail = OutputTail::default();
        for (stream, text) in [(Stream::Stdout, &inv.stdout), (Stream::Stderr, &inv.stderr)] {
            for line in text.lines() {
                self.sink.step_line(&step.name, stream, line);
                tail.push(line);
            }
        }
        if let Some(note) = &inv.cut {
            self.sink.note(&format!("step {}: {note}", step.name));
            tail.push(&format!("[{note}]"));
        }
        let tail = tail.into_lines();
        match inv.status {
            Done::Exit(code) => Ok(StepOutcome {
                exit_status: Some(code),
                tail,
                disconnected: false,
                duration: start.elapsed(),
            }),
            Done::Lost => Ok(StepOutcome {
                exit_status: None,
                tail,
                disconnected: true,
                duration: start.elapsed(),
            }),
            Done::TimedOut => Err(CommError::StepTimeout {
                step: step.name.clone(),
                timeout: step.timeout,
            }),
        }
    }

    /// SendCommand + poll GetCommandInvocation until it ends. `timeout` bounds the execution
    /// on the builder (the agent kills the script); bake gives up a little later.
    async fn execute(
        &self,
        what: &str,
        body: &str,
        timeout: Duration,
        comment: &str,
    ) -> Result<Invocation, CommError> {
        let staged;
        let secret = self.secrets.iter().any(|s| body.contains(s.as_str()));
        let body = if body.len() > INLINE_LIMIT || secret {
            staged = self.stage_script(what, body).await?;
            staged.as_str()
        } else {
            body
        };
        let id = self.instance_id.as_str();
        let exec_secs = timeout.as_secs().clamp(1, 172_800);
        let out_prefix = format!("{}output", self.prefix);
        let comment: String = format!("bake {} {comment}", self.build_id)
            .chars()
            .take(100)
            .collect();
        // A node that just came back from a reboot may briefly be refused.
        let sent = retry::poll(Backoff::AWS.with_timeout(Duration::from_secs(60)), |_| {
            let comment = comment.clone();
            let out_prefix = out_prefix.clone();
            async move {
                let mut req = self
                    .clients
                    .ssm
                    .send_command()
                    .instance_ids(id)
                    .document_name(DOCUMENT)
                    .comment(comment)
                    .timeout_seconds(DELIVERY_TIMEOUT.as_secs() as i32)
                    .parameters("commands", vec![body.to_string()])
                    .parameters("executionTimeout", vec![exec_secs.to_string()]);
                if let Some(b) = &self.settings.output_bucket {
                    req = req
                        .output_s3_bucket_name(b)
                        .output_s3_key_prefix(out_prefix);
                }
                match req.send().await.ctx("SendCommand", Some(id)) {
                    Ok(o) => match o.command().and_then(|c| c.command_id()) {
                        Some(c) => Poll::Ready(c.to_string()),
                        None => Poll::Fail(AwsError::new(
                            "SendCommand",
                            Some(id.to_string()),
                            "no command id in the response",
                        )),
                    },
                    Err(e) => Poll::unless_throttled(e, |e| {
                        if e.code_is(&["InvalidInstanceId"]) {
                            Poll::Pending(e.to_string())
                        } else {
                            Poll::Fail(e)
                        }
                    }),
                }
            }
        })
        .await;
        let cid = match sent {
            Ok(c) => c,
            Err(PollError::Failed(e)) => return Err(aws(e)),
            Err(PollError::Timeout { last, .. }) => {
                return Err(CommError::CommandRefused {
                    what: what.to_string(),
                    instance: id.to_string(),
                    last,
                });
            }
        };

        let backoff = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
            factor: 1.5,
            timeout: timeout + DELIVERY_TIMEOUT + Duration::from_secs(60),
        };
        // The API has no live output: say now and then that the step is still going.
        let started = Instant::now();
        let last_note = std::sync::Mutex::new(started);
        let polled = retry::poll(backoff, |_| async {
            let out = match self
                .clients
                .ssm
                .get_command_invocation()
                .command_id(&cid)
                .instance_id(id)
                .send()
                .await
                .ctx("GetCommandInvocation", Some(&cid))
            {
                Ok(o) => o,
                // Eventual consistency right after SendCommand.
                Err(e) if e.code_is(&["InvocationDoesNotExist"]) => {
                    return Poll::Pending("command not visible yet".into());
                }
                Err(e) => return Poll::from_err(e),
            };
            match out.status() {
                None
                | Some(CommandInvocationStatus::Pending)
                | Some(CommandInvocationStatus::InProgress)
                | Some(CommandInvocationStatus::Delayed)
                | Some(CommandInvocationStatus::Cancelling) => {
                    let state = out.status().map(|s| s.as_str()).unwrap_or("Pending");
                    let mut last = last_note.lock().unwrap();
                    if last.elapsed() >= PROGRESS_EVERY {
                        *last = Instant::now();
                        self.sink.note(&format!(
                            "{what}: {state} on {id} for {}s (output comes when it ends)",
                            started.elapsed().as_secs()
                        ));
                    }
                    Poll::Pending(format!("command {cid} {state}"))
                }
                Some(_) => Poll::Ready(out),
            }
        })
        .await;
        let out = match polled {
            Ok(o) => o,
            Err(PollError::Failed(e)) => return Err(aws(e)),
            Err(PollError::Timeout { .. }) => {
                self.cancel(&cid).await;
                return Err(CommError::StepTimeout {
                    step: what.to_string(),
                    timeout,
                });
            }
        };

        let mut stdout = out
            .standard_output_content()
            .unwrap_or_default()
            .to_string();
        let mut stderr = out.standard_error_content().unwrap_or_default().to_string();
        let cut_out = stdout.chars().count() >= STDOUT_LIMIT;
        let cut_err = stderr.chars().count() >= STDERR_LIMIT;
        let mut cut = None;
        if cut_out || cut_err {
            match &self.settings.output_bucket {
                Some(bucket) => {
                    let base =
                        format!("{out_prefix}/{cid}/{id}/awsrunShellScript/0.awsrunShellScript");
                    if cut_out {
                        match self.fetch(bucket, &format!("{base}/stdout")).await {
                            Some(full) => stdout = full,
                            None => {
                                cut = Some(format!(
                                    "stdout cut at {STDOUT_LIMIT} characters by the SSM API; the full copy in s3://{bucket}/{base}/stdout could not be read"
                                ));
                            }
                        }
                    }
                    if cut_err {
                        match self.fetch(bucket, &format!("{base}/stderr")).await {
                            Some(full) => stderr = full,
                            None => {
                                cut = Some(format!(
                                    "stderr cut at {STDERR_LIMIT} characters by the SSM API; the full copy in s3://{bucket}/{base}/stderr could not be read"
                                ));
                            }
                        }
                    }
                }
                None => {
                    cut = Some(format!(
                        "output cut by the SSM API (stdout at {STDOUT_LIMIT}, stderr at {STDERR_LIMIT} characters); \
                         set ssm.output_bucket to get all of it"
                    ));
                }
            }
        }
        let code = out.response_code();
        let status = match out.status() {
            Some(CommandInvocationStatus::Success) => Done::Exit(code.max(0) as u32),
            Some(CommandInvocationStatus::Failed) if code >= 0 => Done::Exit(code as u32),
            // -1: the script never finished on the node (it stopped or rebooted under it).
            Some(CommandInvocationStatus::Failed) => Done::Lost,
            Some(CommandInvocationStatus::TimedOut)
                if out.status_details() == Some("ExecutionTimedOut") =>
            {
                Done::TimedOut
            }
            Some(s) => {
                return Err(CommError::CommandEnded {
                    what: what.to_string(),
                    command_id: cid.to_string(),
                    status: format!(
                        "{} ({})",
                        s.as_str(),
                        out.status_details().unwrap_or_default()
                    ),
                    stderr: stderr.to_string(),
                });
            }
            None => unreachable!("polled until a final status"),
        };
        Ok(Invocation {
            status,
            stdout,
            stderr,
            cut,
        })
    }

    /// A script too large to send inline: staged in S3 like an upload, and a short command that
    /// fetches it, checks its sha256 and runs it.
    async fn stage_script(&self, what: &str, body: &str) -> Result<String, CommError> {
        use sha2::{Digest, Sha256};
        let hash: [u8; 32] = Sha256::digest(body.as_bytes()).into();
        let hex = hex::encode(hash);
        let key = format!("{}scripts/{}.sh", self.prefix, &hex[..16]);
        let url = upload::put(
            self,
            &self.settings.bucket,
            &key,
            upload::Body::Bytes(body.as_bytes()),
            Some(&hash),
            DELIVERY_TIMEOUT + Duration::from_secs(300),
            &format!("the script of {what}"),
        )
        .await?;
        Ok(run_staged_script(&url, &hex))
    }

    async fn cancel(&self, cid: &str) {
        let _ = self
            .clients
            .ssm
            .cancel_command()
            .command_id(cid)
            .instance_ids(&self.instance_id)
            .send()
            .await;
    }

    /// A full output stream the agent wrote to S3.
    async fn fetch(&self, bucket: &str, key: &str) -> Option<String> {
        let out = self
            .clients
            .s3
            .get_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .ok()?;
        let bytes = out.body.collect().await.ok()?.into_bytes();
        Some(String::from_utf8_lossy(&bytes).into_owned())
    }
}

enum Done {
    Exit(u32),
    /// The node went away under the command (reboot, stop).
    Lost,
    TimedOut,
}

struct Invocation {
    status: Done,
    stdout: String,
    stderr: String,
    /// Why some output is missing, if it is.
    cut: Option<String>,
}

fn render(step: &Step, script: &str, user: &str) -> String {
    use sha2::Digest;
    let plain = Step {
        sudo: false,
        ..step.clone()
    };
    let inner = step_script(&plain, script);
    let delim = format!(
        "BAKE_STEP_{}",
        &hex::encode(sha2::Sha256::digest(inner.as_bytes()))[..20]
    );
    let u = shell_quote(user);
    let mut s = format!("U={u}\n");
    if user == DEFAULT_USER {
        // What the SSM agent does for Session Manager: a local user to drop privileges to.
        s.push_str("id -u \"$U\" >/dev/null 2>&1 || useradd -m -s /bin/sh \"$U\" || exit 125\n");
    }
    s.push_str("H=$(getent passwd \"$U\" | cut -d: -f6)\n");
    // The step script goes to a private file (never onto a command line); the heredoc
    // delimiter embeds the script's hash, so no line of it can end the heredoc early.
    s.push_str(&format!(
        "f=$(umask 077; mktemp /tmp/bake-step.XXXXXXXX) || exit 125\ncat > \"$f\" <<'{delim}'\n{inner}{delim}\n"
    ));
    let run = run_file(false, "\"$f\"");
    if step.sudo {
        s.push_str(
            "cd \"${H:-/root}\" 2>/dev/null || cd /\nexport HOME=/root USER=root LOGNAME=root\n",
        );
        s.push_str(&format!("exec {run}\n"));
    } else {
        s.push_str(
            "[ -n \"$H\" ] || { rm -f \"$f\"; echo \"bake: no user $U on the builder (over SSM, steps without sudo run as ssh.username)\" >&2; exit 125; }\n\
             chown \"$U\" \"$f\"\ncd \"$H\" 2>/dev/null || cd /\n",
        );
        s.push_str(&format!(
            "exec runuser -u \"$U\" -- env HOME=\"$H\" USER=\"$U\" LOGNAME=\"$U\" {run}\n"
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn step(sudo: bool) -> Step {
        Step {
            name: "s".into(),
            body: crate::recipe::model::StepBody::Run("echo hi".into()),
            sudo,
            env: BTreeMap::from([("A".to_string(), "x y".to_string())]),
            workdir: Some("/opt".into()),
            timeout: Duration::from_secs(5),
            retries: 0,
            reboot: false,
            checkpoint: false,
        }
    }

    #[test]
    fn sudo_steps_run_as_root_without_sudo_others_as_the_user() {
        let root = render(&step(true), "echo hi", "admin");
        assert!(!root.contains("sudo"), "{root}");
        assert!(root.contains("export HOME=/root"));
        assert!(root.contains("exec sh -ec "));
        // env and workdir come from step_script, in the heredoc that fills the private file
        assert!(root.contains("export A='x y'\n"), "{root}");
        assert!(root.contains("/opt"), "{root}");
        let user = render(&step(false), "echo hi", "admin");
        assert!(user.starts_with("U='admin'\n"));
        assert!(user.contains("exec runuser -u \"$U\" -- env HOME=\"$H\""));
        assert!(!user.contains("useradd"));
        let dflt = render(&step(false), "echo hi", DEFAULT_USER);
        assert!(dflt.contains("useradd -m"));
    }

    #[test]
    fn build_prefix_always_ends_in_the_build_id() {
        let s = |p: &str| Ssm {
            bucket: "b".into(),
            prefix: p.into(),
            output_bucket: None,
            timeout: Duration::from_secs(1),
        };
        assert_eq!(build_prefix(&s("bake/"), "b-1"), "bake/b-1/");
        assert_eq!(build_prefix(&s("bake"), "b-1"), "bake/b-1/");
        assert_eq!(build_prefix(&s(""), "b-1"), "b-1/");
    }
}
