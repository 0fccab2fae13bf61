//! `[[step]]`: the commands run on the builder (unique name, inline `run` or a `script` file,
//! sudo, env, workdir, timeout, retries, reboot, checkpoint), and `[[test]]`, shaped like a step (no
//! `reboot`) plus `expect_output`, run on a fresh instance of the new image.

use std::collections::BTreeMap;
use std::time::Duration;

use super::super::checks;
use super::super::model::{Step, StepBody, Test};
use super::sensitive::Exposed;
use super::walker::{Cx, Span, Tbl};

pub(super) const STEP_KEYS: &[&str] = &[
    "name",
    "run",
    "script",
    "sudo",
    "env",
    "workdir",
    "timeout",
    "retries",
    "reboot",
    "checkpoint",
];

pub(super) const TEST_KEYS: &[&str] = &[
    "name",
    "run",
    "script",
    "sudo",
    "env",
    "workdir",
    "timeout",
    "retries",
    "expect_output",
];

pub(super) fn steps(cx: &mut Cx<'_>, root: &Tbl<'_, '_>) -> Vec<Step> {
    let mut out = Vec::new();
    let mut names: BTreeMap<String, Span> = BTreeMap::new();
    for t in cx.array_of_tables(root, "step") {
        cx.keys(&t, STEP_KEYS);
        let checkpoint = cx.boolean(&t, "checkpoint").unwrap_or(false);
        if let Some(step) = step_like(cx, &t, &mut names, "step") {
            out.push(Step { checkpoint, ..step });
        }
    }
    out
}

/// `[[test]]`: a step without `reboot` (the test instance is not rebooted), with an optional
/// `expect_output` regex checked against the test's output.
pub(super) fn tests(cx: &mut Cx<'_>, root: &Tbl<'_, '_>) -> Vec<Test> {
    let mut out = Vec::new();
    let mut names: BTreeMap<String, Span> = BTreeMap::new();
    for t in cx.array_of_tables(root, "test") {
        cx.keys(&t, TEST_KEYS);
        let n0 = cx.errors.len();
        let step = step_like(cx, &t, &mut names, "test");
        let expect = cx.string(&t, "expect_output");
        if let Some(e) = &expect
            && let Err(err) = regex_lite::Regex::new(&e.v)
        {
            let first = err.to_string();
            let first = first.lines().last().unwrap_or("").trim().to_string();
            cx.err(
                Some(e.span.clone()),
                format!("`expect_output` is not a valid regular expression: {first}"),
                "write a regex the output must match, e.g. \"^active$\" (escape \\ . ( [ as \\\\. \\\\( \\\\[)",
            );
        }
        if cx.errors.len() > n0 {
            continue;
        }
        if let Some(step) = step {
            out.push(Test {
                step,
                expect_output: expect.map(|e| e.v),
            });
        }
    }
    out
}

/// The keys a step and a test share; `what` is "step" or "test" for messages.
fn step_like(
    cx: &mut Cx<'_>,
    t: &Tbl<'_, '_>,
    names: &mut BTreeMap<String, Span>,
    what: &str,
) -> Option<Step> {
    let n0 = cx.errors.len();
    let name = cx.req_string(t, "name", "\"install\"");
    if let Some(n) = &name {
        cx.no_sensitive(&n.span, &format!("`name` in {}", t.name), Exposed::StepName);
        if let Some(first) = names.get(&n.v) {
            let (line, _) = super::super::diag::line_col(cx.src, first.start);
            cx.err(
                Some(n.span.clone()),
                format!("duplicate {what} name `{}`", n.v),
                format!(
                    "{what} names must be unique; `{}` is already used on line {line}: rename one",
                    n.v
                ),
            );
        } else {
            names.insert(n.v.clone(), n.span.clone());
        }
    }
    let run = cx.string(t, "run");
    let script = cx.string(t, "script");
    let body = match (run, script) {
        (Some(_), Some(s)) => {
            cx.err(
                Some(s.span),
                format!("{} has both `run` and `script`", t.name),
                "keep one: run = \"inline shell\" or script = \"scripts/x.sh\"",
            );
            None
        }
        (None, None) => {
            if cx.get(t, "run").is_none() && cx.get(t, "script").is_none() {
                cx.err(
                    Some(t.span.clone()),
                    format!("{} needs `run` or `script`", t.name),
                    "add run = \"shell commands\" or script = \"scripts/install.sh\"",
                );
            }
            None
        }
        (Some(r), None) => {
            if r.v.trim().is_empty() {
                cx.err(
                    Some(r.span),
                    "`run` is empty",
                    format!("write the shell commands to run, or remove the {what}"),
                );
                None
            } else {
                Some(StepBody::Run(r.v))
            }
        }
        (None, Some(s)) => match cx.existing_path("script", &s) {
            Some((p, false)) => match std::fs::read_to_string(&p) {
                Ok(_) => Some(StepBody::Script(p)),
                Err(e) => {
                    cx.err(
                        Some(s.span),
                        format!("cannot read script {}: {e}", p.display()),
                        "scripts must be readable UTF-8 text files",
                    );
                    None
                }
            },
            Some((p, true)) => {
                cx.err(
                    Some(s.span),
                    format!("script `{}` is a directory ({})", s.v, p.display()),
                    "point script at a file",
                );
                None
            }
            None => None,
        },
    };
    let sudo = cx.boolean(t, "sudo").unwrap_or(false);
    let mut env = BTreeMap::new();
    if let Some(map) = cx.string_map(t, "env") {
        for (k, v) in map.v {
            if !checks::is_env_name(&k.v) {
                cx.err(
                    Some(k.span),
                    format!("`{}` is not a valid environment variable name", k.v),
                    "use letters, digits and _, not starting with a digit",
                );
            }
            env.insert(k.v, v.v);
        }
    }
    let workdir = cx.string(t, "workdir");
    if let Some(w) = &workdir {
        cx.absolute_remote(t, "workdir", w);
    }
    let timeout = cx
        .duration(t, "timeout")
        .map(|d| d.v)
        .unwrap_or(Duration::from_secs(30 * 60));
    let retries = cx
        .integer(t, "retries", 0, 100)
        .map(|r| r.v as u32)
        .unwrap_or(0);
    let reboot = cx.boolean(t, "reboot").unwrap_or(false);
    if cx.errors.len() > n0 {
        return None;
    }
    let (name, body) = (name?, body?);
    Some(Step {
        name: name.v,
        body,
        sudo,
        env,
        workdir: workdir.map(|w| w.v),
        timeout,
        retries,
        reboot,
        checkpoint: false,
    })
}
