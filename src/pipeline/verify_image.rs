//! The test stage: the recipe's `[[test]]`s run on a fresh instance launched from the new image
//! (not the builder), after it booted, over the recipe's communicator. Only an image whose tests
//! passed is published: it carries `bake:tested = pending` from its creation and
//! `bake:tested = <fingerprint of the tests>` once they pass. A failing test removes the image
//! this build made (its undo is still on the stack), unless `--keep-failed`.
//!
//! The tests have their own fingerprint, apart from the image's: a cache hit whose image was
//! tested with other tests runs the current ones on it, with no rebuild.

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use super::cleanup::Token;
use super::image::mark_complete;
use super::launch::Role;
use super::source::SourceImage;
use super::{Bake, BuildError, FoundImage};
use crate::aws::Ctx;
use crate::aws::ec2::{self, tag_list};
use crate::plan;
use crate::recipe::model::{CommunicatorKind, Test};
use crate::remote::any::Communicator;
use crate::retry::{Attempt, Tried, retry_times};
use crate::ui::SharedSink;

/// `pending` until the tests pass, then the tests' fingerprint; `failed` on an image kept
/// after failing them.
pub const TESTED_TAG: &str = "bake:tested";

/// What the test stage did, for the summary and `--output json`.
#[derive(Debug, Clone, Serialize)]
pub struct TestsReport {
    pub fingerprint: String,
    /// The instance launched from the image the tests ran on.
    pub instance_id: String,
    pub image_id: String,
    pub passed: bool,
    pub results: Vec<TestResult>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TestResult {
    pub name: String,
    pub passed: bool,
    pub exit_status: Option<u32>,
    pub attempts: u32,
    pub seconds: f64,
    /// Why it failed, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One attempt's verdict: `None` passed, else the status to report and the output tail.
fn verdict(test: &Test, outcome: &crate::remote::StepOutcome) -> Option<String> {
    match (outcome.exit_status, outcome.disconnected) {
        (Some(0), _) => {}
        (Some(s), _) => return Some(format!("exit status {s}")),
        (None, true) => return Some("the connection dropped".into()),
        (None, false) => return Some("no exit status".into()),
    }
    let pattern = test.expect_output.as_deref()?;
    // Checked when the recipe was loaded; an invalid one cannot get here.
    let re = regex_lite::Regex::new(pattern).ok()?;
    let output = outcome.tail.join("\n");
    if re.is_match(&output) {
        None
    } else {
        Some(format!(
            "exit status 0 but output does not match {pattern:?}"
        ))
    }
}

impl Bake<'_> {
    /// The "test …" stages. `made` is the undo of the image this build just made (None: the
    /// image existed already). Returns what ran, or None when nothing needed to.
    pub(super) async fn verify_image(
        &self,
        image: &FoundImage,
        made: Option<Token>,
    ) -> Result<Option<TestsReport>, BuildError> {
        let Bake {
            clients,
            recipe,
            opts,
            ui,
            cleanup,
            ..
        } = *self;
        if recipe.tests.is_empty() {
            if let Some(t) = made {
                cleanup.keep(t);
            }
            return Ok(None);
        }
        let scripts = plan::read_test_scripts(recipe)?;
        let fp = plan::tests_fingerprint(recipe, &scripts);
        if made.is_none() && !opts.test_only {
            match tested_tag(&clients.ec2, &image.ami_id).await?.as_deref() {
                Some(t) if t == fp => return Ok(None),
                was => ui.line(&format!(
                    "{} was tested with other tests ({}): running the current tests on it",
                    image.ami_id,
                    was.unwrap_or("none")
                )),
            }
        }

        let source = SourceImage {
            id: image.ami_id.clone(),
            name: Some(image.name.clone()),
            root_device: None,
            architecture: None,
        };
        let tester = self.launch_as(Role::Tester, &source).await?;
        let sink: SharedSink = Arc::new(ui.clone());
        let mut comm = match recipe.communicator {
            CommunicatorKind::Ssh => self.connect_ssh(&tester, sink).await?,
            CommunicatorKind::Ssm => self.connect_ssm(&tester, sink).await?,
        };
        let mut results = Vec::new();
        let mut failure = None;
        for (test, script) in recipe.tests.iter().zip(&scripts) {
            let (result, tail) = self.run_test(&mut comm, test, script).await;
            let failed = !result.passed;
            results.push(result);
            if failed {
                failure = Some(tail);
                break;
            }
        }
        comm.close().await;
        // The tester itself goes with the cleanup stack, like the builder.

        let report = TestsReport {
            fingerprint: fp.clone(),
            instance_id: tester.instance_id.clone(),
            image_id: image.ami_id.clone(),
            passed: failure.is_none(),
            results,
        };
        let Some(tail) = failure else {
            tag_tested(&clients.ec2, image, &fp).await?;
            if let Some(t) = made {
                mark_complete(&clients.ec2, &image.ami_id, &image.snapshots).await?;
                cleanup.keep(t);
            }
            return Ok(Some(report));
        };
        let last = report.results.last().expect("a failed test");
        let image_fate = match (made, opts.keep_failed) {
            (Some(_), false) => format!(
                "image {} and its snapshots are removed (--keep-failed keeps them to inspect)",
                image.ami_id
            ),
            (Some(t), true) => {
                tag_tested(&clients.ec2, image, "failed").await?;
                // Kept on purpose: not a leftover for `bake gc`.
                mark_complete(&clients.ec2, &image.ami_id, &image.snapshots).await?;
                cleanup.keep(t);
                keep_hint(image, &recipe.builder.instance_type)
            }
            (None, _) => {
                tag_tested(&clients.ec2, image, "failed").await?;
                format!(
                    "image {} existed before this run and is left in place, tagged {TESTED_TAG}=failed",
                    image.ami_id
                )
            }
        };
        Err(BuildError::TestFailed(Box::new(
            super::error::TestFailure {
                test: last.name.clone(),
                status: last.error.clone().unwrap_or_default(),
                attempts: last.attempts,
                instance: tester.instance_id.clone(),
                image: image.ami_id.clone(),
                image_fate,
                tail,
            },
        )))
    }

    /// Runs one test with its retries; returns its result and the last attempt's output tail.
    async fn run_test(
        &self,
        comm: &mut Communicator,
        test: &Test,
        script: &str,
    ) -> (TestResult, Vec<String>) {
        let ui = self.ui;
        let started = Instant::now();
        let result = |passed, exit_status, attempts, error| TestResult {
            name: test.step.name.clone(),
            passed,
            exit_status,
            attempts,
            seconds: started.elapsed().as_secs_f64(),
            error,
        };
        let tries = test.step.retries + 1;
        let outcome = retry_times(tries, async |attempt: Attempt| {
            let label = attempt.label(&test.step.name);
            let st = ui.stage(
                &format!("test {}", test.step.name),
                &format!("testing {label}"),
            );
            let o = match comm.run(&test.step, script).await {
                Ok(o) => o,
                Err(e) => {
                    st.fail(&e.to_string());
                    return Tried::Failed((None, e.to_string(), Vec::new()));
                }
            };
            match verdict(test, &o) {
                None => {
                    st.finish("passed");
                    Tried::Done((o.exit_status, attempt.n, o.tail))
                }
                Some(why) => {
                    st.fail(&why);
                    if o.disconnected {
                        let _ = comm.reconnect().await;
                    }
                    Tried::Failed((o.exit_status, why, o.tail))
                }
            }
        })
        .await;
        match outcome {
            Ok((exit_status, n, tail)) => (result(true, exit_status, n, None), tail),
            Err((exit_status, why, tail)) => (result(false, exit_status, tries, Some(why)), tail),
        }
    }
}

/// How to look at an image kept after failing its tests.
fn keep_hint(image: &FoundImage, instance_type: &str) -> String {
    format!(
        "image {ami} ({name}) is kept (--keep-failed), tagged {TESTED_TAG}=failed; inspect it on an instance \
         of its own: aws ec2 run-instances --image-id {ami} --instance-type {instance_type} --key-name <yours>, \
         and remove it afterwards with `bake images rm {ami}`",
        ami = image.ami_id,
        name = image.name,
    )
}

/// The image's `bake:tested` tag, if any.
async fn tested_tag(
    ec2: &aws_sdk_ec2::Client,
    ami: &str,
) -> Result<Option<String>, crate::aws::AwsError> {
    let out = ec2
        .describe_images()
        .image_ids(ami)
        .send()
        .await
        .ctx("DescribeImages", Some(ami))?;
    Ok(out
        .images()
        .first()
        .and_then(|i| ec2::tag_map(i.tags()).get(TESTED_TAG).cloned()))
}

/// Sets `bake:tested` on the image and its snapshots.
async fn tag_tested(
    ec2: &aws_sdk_ec2::Client,
    image: &FoundImage,
    value: &str,
) -> Result<(), crate::aws::AwsError> {
    let mut all = vec![image.ami_id.clone()];
    all.extend(image.snapshots.iter().cloned());
    let tags = std::collections::BTreeMap::from([(TESTED_TAG.to_string(), value.to_string())]);
    ec2.create_tags()
        .set_resources(Some(all))
        .set_tags(Some(tag_list(&tags)))
        .send()
        .await
        .ctx("CreateTags", Some(&image.ami_id))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recipe::model::{Step, StepBody};

    fn test(expect: Option<&str>) -> Test {
        Test {
            step: Step {
                name: "t".into(),
                body: StepBody::Run("true".into()),
                sudo: false,
                env: Default::default(),
                workdir: None,
                timeout: std::time::Duration::from_secs(1),
                retries: 0,
                reboot: false,
                checkpoint: false,
            },
            expect_output: expect.map(str::to_string),
        }
    }

    fn outcome(status: Option<u32>, lines: &[&str]) -> crate::remote::StepOutcome {
        crate::remote::StepOutcome {
            exit_status: status,
            tail: lines.iter().map(|l| l.to_string()).collect(),
            disconnected: status.is_none(),
            duration: Default::default(),
        }
    }

    #[test]
    fn a_test_passes_on_exit_0_with_matching_output() {
        assert_eq!(verdict(&test(None), &outcome(Some(0), &[])), None);
        assert_eq!(
            verdict(&test(None), &outcome(Some(3), &["x"])).as_deref(),
            Some("exit status 3")
        );
        assert_eq!(
            verdict(&test(None), &outcome(None, &[])).as_deref(),
            Some("the connection dropped")
        );
        let t = test(Some("(?m)^active$"));
        assert_eq!(verdict(&t, &outcome(Some(0), &["x", "active"])), None);
        assert!(
            verdict(&t, &outcome(Some(0), &["inactive"]))
                .unwrap()
                .contains("does not match")
        );
        // The exit status decides first.
        assert_eq!(
            verdict(&t, &outcome(Some(1), &["active"])).as_deref(),
            Some("exit status 1")
        );
    }
}
