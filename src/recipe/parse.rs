//! Walks the spanned TOML tree of a recipe, collecting every problem, and builds the typed
//! [`Recipe`](super::model::Recipe).

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::checks::{self, Problem};
use super::diag::RecipeError;
use super::model::*;

type Span = Range<usize>;
type V<'i> = Spanned<DeValue<'i>>;

/// A value with the byte range it came from.
#[derive(Debug, Clone)]
pub(crate) struct Sp<T> {
    pub v: T,
    pub span: Span,
}

/// A table being read, with a display name for messages ("[builder]", "[[step]] #2").
struct Tbl<'a, 'i> {
    t: &'a DeTable<'i>,
    span: Span,
    name: String,
}

/// Keys of each table (also the candidates for "did you mean").
const TOP_KEYS: &[&str] = &[
    "name",
    "description",
    "communicator",
    "variables",
    "sensitive",
    "source",
    "builder",
    "ssh",
    "ssm",
    "upload",
    "step",
    "image",
    "deploy",
];
const SOURCE_KEYS: &[&str] = &["ami", "filter"];
const FILTER_KEYS: &[&str] = &["owners", "name", "architecture", "filters"];
const BUILDER_KEYS: &[&str] = &[
    "instance_type",
    "subnet_id",
    "security_group_ids",
    "ssh_ingress_cidrs",
    "iam_instance_profile",
    "user_data",
    "user_data_file",
    "associate_public_ip",
    "run_tags",
    "root_volume",
    "max_lifetime",
    "imds",
];
const ROOT_VOLUME_KEYS: &[&str] = &[
    "size_gb",
    "type",
    "encrypted",
    "kms_key_id",
    "iops",
    "throughput",
];
const SSH_KEYS: &[&str] = &["username", "port", "interface", "timeout"];
const SSM_KEYS: &[&str] = &["bucket", "prefix", "output_bucket", "timeout"];
const UPLOAD_KEYS: &[&str] = &["source", "destination", "mode", "owner"];
const STEP_KEYS: &[&str] = &[
    "name", "run", "script", "sudo", "env", "workdir", "timeout", "retries", "reboot",
];
const IMAGE_KEYS: &[&str] = &["name", "description", "tags", "snapshot_tags"];
const DEPLOY_KEYS: &[&str] = &[
    "asg",
    "min_healthy_percentage",
    "max_healthy_percentage",
    "instance_warmup",
    "skip_matching",
    "checkpoint_percentages",
    "checkpoint_delay",
    "auto_rollback",
    "keep_versions",
];
const VOLUME_TYPES: &[&str] = &["gp2", "gp3", "io1", "io2", "st1", "sc1", "standard"];
const ARCHITECTURES: &[&str] = &["x86_64", "arm64", "i386", "x86_64_mac", "arm64_mac"];
const INTERFACES: &[&str] = &["private_ip", "public_ip", "private_dns", "public_dns"];

/// Packer names a migrating user is likely to write, with where they live in bake.
fn packer_hint(key: &str) -> Option<&'static str> {
    Some(match key {
        "region" => {
            "bake has no region key: it uses the region of your AWS configuration (AWS_REGION, AWS_PROFILE, ~/.aws/config)"
        }
        "access_key" | "secret_key" | "profile" | "token" => {
            "bake takes credentials from the standard AWS configuration (environment, profile, SSO, instance role), never from a recipe"
        }
        "source_ami" => "write the AMI id as [source] ami = \"ami-…\"",
        "source_ami_filter" => "write a [source.filter] table with owners, name, architecture",
        "ami_name" => "write [image] name = \"{recipe}-{timestamp}\"",
        "ami_description" => "write [image] description = \"…\"",
        "ssh_username" => "write [ssh] username = \"…\"",
        "ssh_port" => "write [ssh] port = 22",
        "ssh_interface" => "write [ssh] interface = \"private_ip\"",
        "ssh_timeout" => "write [ssh] timeout = \"5m\"",
        "provisioner" | "provisioners" | "inline" => {
            "write each command as a [[step]] (run = \"…\") and each file as an [[upload]]"
        }
        "launch_block_device_mappings" => "write [builder.root_volume] size_gb, type, encrypted, …",
        "vpc_id" => "bake takes the VPC from builder.subnet_id (or the default VPC)",
        "tags" => {
            "image tags go in [image] tags = { … }; builder instance tags in [builder] run_tags"
        }
        _ => return None,
    })
}

fn type_name(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date-time",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

fn integer_of(v: &DeValue<'_>) -> Option<i128> {
    match v {
        DeValue::Integer(i) => i128::from_str_radix(i.as_str(), i.radix()).ok(),
        _ => None,
    }
}

pub(crate) struct Cx<'s> {
    src: &'s str,
    dir: PathBuf,
    pub errors: Vec<RecipeError>,
    vars: BTreeMap<String, String>,
    env: &'s dyn Fn(&str) -> Option<String>,
}

impl<'s> Cx<'s> {
    fn err(&mut self, span: Option<Span>, message: impl Into<String>, help: impl Into<String>) {
        self.errors.push(RecipeError::new(span, message, help));
    }

    /// Reports a [`Problem`] found in the string `value` whose TOML value sits at `span`:
    /// narrowed to the problem's place inside the string when the source spells the string
    /// literally (no escapes, no substitutions).
    fn problem(&mut self, span: &Span, value: &str, p: Problem) {
        let at = match &p.at {
            Some(at) => self.inner_span(span, value, at.clone()),
            None => span.clone(),
        };
        self.err(Some(at), p.message, p.help);
    }

    /// Where to point for something missing from the whole recipe: the start of the first
    /// line that is not blank or a comment.
    fn top_span(&self) -> Span {
        let mut pos = 0;
        for line in self.src.split_inclusive('\n') {
            let t = line.trim_start();
            if !t.is_empty() && !t.starts_with('#') {
                let at = pos + (line.len() - t.len());
                return at..at;
            }
            pos += line.len();
        }
        0..0
    }

    fn inner_span(&self, span: &Span, value: &str, at: Range<usize>) -> Span {
        let raw = &self.src[span.clone()];
        for q in ["\"\"\"", "'''", "\"", "'"] {
            if raw.len() >= 2 * q.len() && raw.starts_with(q) && raw.ends_with(q) {
                if &raw[q.len()..raw.len() - q.len()] == value {
                    return span.start + q.len() + at.start..span.start + q.len() + at.end;
                }
                break;
            }
        }
        span.clone()
    }

    // ---- keys and typed getters -------------------------------------------------------

    fn keys(&mut self, t: &Tbl<'_, '_>, known: &[&str]) {
        for (k, _) in t.t.iter() {
            let key: &str = k.get_ref();
            if known.contains(&key) {
                continue;
            }
            let mut help = match checks::suggest(key, known) {
                Some(s) => format!("did you mean `{s}`?"),
                None => format!("valid keys here: {}", known.join(", ")),
            };
            if let Some(h) = packer_hint(key) {
                help = h.to_string();
            }
            self.err(
                Some(k.span()),
                format!("unknown key `{key}` in {}", t.name),
                help,
            );
        }
    }

    fn get<'a, 'i>(&self, t: &Tbl<'a, 'i>, key: &str) -> Option<(Span, &'a V<'i>)> {
        t.t.get_key_value(key).map(|(k, v)| (k.span(), v))
    }

    fn wrong_type(&mut self, t: &Tbl<'_, '_>, key: &str, v: &V<'_>, expected: &str, help: String) {
        self.err(
            Some(v.span()),
            format!(
                "`{key}` in {} must be {expected}, not {}",
                t.name,
                type_name(v.get_ref())
            ),
            help,
        );
    }

    fn missing(&mut self, t: &Tbl<'_, '_>, key: &str, example: &str) {
        // a misspelt key already reported as unknown ("did you mean `key`?") says it all
        if t.t
            .iter()
            .any(|(k, _)| k.get_ref() != key && checks::suggest(k.get_ref(), &[key]).is_some())
        {
            return;
        }
        let span = if t.span.is_empty() {
            self.top_span()
        } else {
            t.span.clone()
        };
        self.err(
            Some(span),
            format!("{} is missing `{key}`", t.name),
            format!("add {key} = {example}"),
        );
    }

    /// A string with `{var.*}` / `{env.*}` substituted.
    fn string(&mut self, t: &Tbl<'_, '_>, key: &str) -> Option<Sp<String>> {
        let (_, v) = self.get(t, key)?;
        match v.get_ref() {
            DeValue::String(s) => {
                let s = self.subst(s, &v.span(), true);
                Some(Sp {
                    v: s,
                    span: v.span(),
                })
            }
            _ => {
                self.wrong_type(
                    t,
                    key,
                    v,
                    "a string",
                    format!("quote the value: {key} = \"…\""),
                );
                None
            }
        }
    }

    fn req_string(&mut self, t: &Tbl<'_, '_>, key: &str, example: &str) -> Option<Sp<String>> {
        if self.get(t, key).is_none() {
            self.missing(t, key, example);
            return None;
        }
        let s = self.string(t, key)?;
        if s.v.trim().is_empty() {
            self.err(
                Some(s.span.clone()),
                format!("`{key}` in {} is empty", t.name),
                format!("write {key} = {example}"),
            );
            return None;
        }
        Some(s)
    }

    fn boolean(&mut self, t: &Tbl<'_, '_>, key: &str) -> Option<bool> {
        let (_, v) = self.get(t, key)?;
        match v.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            _ => {
                self.wrong_type(
                    t,
                    key,
                    v,
                    "true or false",
                    format!("write {key} = true or {key} = false (no quotes)"),
                );
                None
            }
        }
    }

    fn integer(&mut self, t: &Tbl<'_, '_>, key: &str, min: i64, max: i64) -> Option<Sp<i64>> {
        let (_, v) = self.get(t, key)?;
        match integer_of(v.get_ref()) {
            Some(n) if (min as i128..=max as i128).contains(&n) => Some(Sp {
                v: n as i64,
                span: v.span(),
            }),
            Some(n) => {
                self.err(
                    Some(v.span()),
                    format!("`{key}` in {} is {n}, outside {min}–{max}", t.name),
                    format!("use a value from {min} to {max}"),
                );
                None
            }
            None => {
                self.wrong_type(
                    t,
                    key,
                    v,
                    "a whole number",
                    format!("write a whole number without quotes, e.g. {key} = {min}"),
                );
                None
            }
        }
    }

    fn duration(&mut self, t: &Tbl<'_, '_>, key: &str) -> Option<Sp<Duration>> {
        let (_, v) = self.get(t, key)?;
        if let DeValue::String(_) = v.get_ref() {
            let s = self.string(t, key)?;
            match checks::parse_duration(&s.v) {
                Ok(d) => Some(Sp { v: d, span: s.span }),
                Err(p) => {
                    self.problem(&s.span, &s.v, p);
                    None
                }
            }
        } else {
            let hint = match integer_of(v.get_ref()) {
                Some(n) => format!("durations are strings with a unit: {key} = \"{n}s\""),
                None => format!("durations are strings with a unit, e.g. {key} = \"5m\""),
            };
            self.wrong_type(t, key, v, "a duration string", hint);
            None
        }
    }

    fn string_list(&mut self, t: &Tbl<'_, '_>, key: &str) -> Option<Sp<Vec<Sp<String>>>> {
        let (_, v) = self.get(t, key)?;
        match v.get_ref() {
            DeValue::Array(a) => {
                let mut out = Vec::new();
                for item in a.iter() {
                    match item.get_ref() {
                        DeValue::String(s) => {
                            let s = self.subst(s, &item.span(), true);
                            out.push(Sp {
                                v: s,
                                span: item.span(),
                            });
                        }
                        other => self.err(
                            Some(item.span()),
                            format!(
                                "`{key}` in {} must list strings, but this item is {}",
                                t.name,
                                type_name(other)
                            ),
                            "quote each item: [\"a\", \"b\"]",
                        ),
                    }
                }
                Some(Sp {
                    v: out,
                    span: v.span(),
                })
            }
            DeValue::String(_) => {
                self.wrong_type(
                    t,
                    key,
                    v,
                    "an array of strings",
                    format!("put it in brackets: {key} = [\"…\"]"),
                );
                None
            }
            _ => {
                self.wrong_type(
                    t,
                    key,
                    v,
                    "an array of strings",
                    format!("write {key} = [\"…\", \"…\"]"),
                );
                None
            }
        }
    }

    /// A table of string values: (key, value) pairs with their spans.
    fn string_map(
        &mut self,
        t: &Tbl<'_, '_>,
        key: &str,
    ) -> Option<Sp<Vec<(Sp<String>, Sp<String>)>>> {
        let (_, v) = self.get(t, key)?;
        let DeValue::Table(tt) = v.get_ref() else {
            self.wrong_type(
                t,
                key,
                v,
                "a table",
                format!("write {key} = {{ name = \"value\" }}"),
            );
            return None;
        };
        let mut out = Vec::new();
        for (k, item) in tt.iter() {
            match item.get_ref() {
                DeValue::String(s) => {
                    let s = self.subst(s, &item.span(), true);
                    out.push((
                        Sp {
                            v: k.get_ref().to_string(),
                            span: k.span(),
                        },
                        Sp {
                            v: s,
                            span: item.span(),
                        },
                    ));
                }
                other => {
                    let raw = &self.src[item.span()];
                    self.err(
                        Some(item.span()),
                        format!(
                            "`{}` in `{key}` must be a string, not {}",
                            k.get_ref(),
                            type_name(other)
                        ),
                        format!(
                            "quote the value: {} = \"{}\"",
                            k.get_ref(),
                            raw.trim_matches('"')
                        ),
                    );
                }
            }
        }
        Some(Sp {
            v: out,
            span: v.span(),
        })
    }

    fn table<'a, 'i>(&mut self, t: &Tbl<'a, 'i>, key: &str, name: String) -> Option<Tbl<'a, 'i>> {
        let (kspan, v) = self.get(t, key)?;
        match v.get_ref() {
            DeValue::Table(tt) => {
                // implicit tables ([a.b] without [a]) get their key's span
                let span = if v.span().is_empty() { kspan } else { v.span() };
                Some(Tbl { t: tt, span, name })
            }
            _ => {
                self.wrong_type(
                    t,
                    key,
                    v,
                    "a table",
                    format!("write a {name} section, or {key} = {{ … }}"),
                );
                None
            }
        }
    }

    fn array_of_tables<'a, 'i>(&mut self, t: &Tbl<'a, 'i>, key: &str) -> Vec<Tbl<'a, 'i>> {
        let Some((_, v)) = self.get(t, key) else {
            return Vec::new();
        };
        match v.get_ref() {
            DeValue::Array(a) => {
                let mut out = Vec::new();
                for (i, item) in a.iter().enumerate() {
                    match item.get_ref() {
                        DeValue::Table(tt) => out.push(Tbl {
                            t: tt,
                            span: item.span(),
                            name: format!("[[{key}]] #{}", i + 1),
                        }),
                        other => self.err(
                            Some(item.span()),
                            format!("each `{key}` must be a table, not {}", type_name(other)),
                            format!("write each one as a [[{key}]] section"),
                        ),
                    }
                }
                out
            }
            DeValue::Table(_) => {
                self.err(
                    Some(v.span()),
                    format!("`{key}` must be an array of tables, written [[{key}]]"),
                    format!("use double brackets: [[{key}]] (one section per {key})"),
                );
                Vec::new()
            }
            other => {
                self.err(
                    Some(v.span()),
                    format!(
                        "`{key}` must be an array of tables, not {}",
                        type_name(other)
                    ),
                    format!("write each one as a [[{key}]] section"),
                );
                Vec::new()
            }
        }
    }

    // ---- substitution ------------------------------------------------------------------

    /// Replaces `{var.NAME}`, `{env.NAME}` and `{env.NAME:-fallback}` in `s` (a TOML string
    /// at `span`). Other braces are left alone (shell code uses them).
    fn subst(&mut self, s: &str, span: &Span, allow_var: bool) -> String {
        if !s.contains("{var.") && !s.contains("{env.") {
            return s.to_string();
        }
        let raw = &self.src[span.clone()];
        let mut raw_pos = 0;
        let mut out = String::with_capacity(s.len());
        let mut rest = s;
        loop {
            let next = [rest.find("{var."), rest.find("{env.")]
                .into_iter()
                .flatten()
                .min();
            let Some(start) = next else {
                out.push_str(rest);
                break;
            };
            let Some(close) = rest[start..].find('}') else {
                out.push_str(rest);
                break;
            };
            out.push_str(&rest[..start]);
            let token = &rest[start..start + close + 1];
            let inner = &token[1..token.len() - 1];
            // where the token sits in the source, for the error span
            let tspan = match raw[raw_pos..].find(token) {
                Some(i) => {
                    raw_pos += i + token.len();
                    span.start + raw_pos - token.len()..span.start + raw_pos
                }
                None => span.clone(),
            };
            if let Some(name) = inner.strip_prefix("var.") {
                if !allow_var {
                    self.err(
                        Some(tspan),
                        format!("variable defaults cannot use other variables (`{token}`)"),
                        "write the value itself, or read it from the environment with {env.NAME}",
                    );
                    out.push_str(token);
                } else if let Some(v) = self.vars.get(name) {
                    out.push_str(&v.clone());
                } else {
                    let names: Vec<&str> = self.vars.keys().map(String::as_str).collect();
                    let help = match checks::suggest(name, &names) {
                        Some(s) => format!("did you mean `{{var.{s}}}`?"),
                        None => format!("declare it: [variables] {name} = \"default value\""),
                    };
                    self.err(
                        Some(tspan),
                        format!("unknown variable `{name}` in `{token}`"),
                        help,
                    );
                    out.push_str(token);
                }
            } else {
                let body = &inner[4..];
                let (name, fallback) = match body.split_once(":-") {
                    Some((n, f)) => (n, Some(f)),
                    None => (body, None),
                };
                if !checks::is_env_name(name) {
                    self.err(
                        Some(tspan),
                        format!("`{token}` does not name an environment variable"),
                        "write {env.NAME} or {env.NAME:-fallback}, NAME being letters, digits and _",
                    );
                    out.push_str(token);
                } else {
                    match ((self.env)(name), fallback) {
                        (Some(v), _) => out.push_str(&v),
                        (None, Some(f)) => out.push_str(f),
                        (None, None) => {
                            self.err(
                                Some(tspan),
                                format!("environment variable `{name}` is not set"),
                                format!("export {name}=… before running bake, or give a fallback: {{env.{name}:-fallback}}"),
                            );
                            out.push_str(token);
                        }
                    }
                }
            }
            rest = &rest[start + close + 1..];
        }
        out
    }

    // ---- paths ---------------------------------------------------------------------------

    fn resolve(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.dir.join(p)
        }
    }

    /// Resolves a local path and checks it exists; returns (path, is_dir).
    fn existing_path(&mut self, what: &str, s: &Sp<String>) -> Option<(PathBuf, bool)> {
        let path = self.resolve(&s.v);
        match std::fs::metadata(&path) {
            Ok(m) => Some((path, m.is_dir())),
            Err(e) => {
                let why = if e.kind() == std::io::ErrorKind::NotFound {
                    "does not exist".to_string()
                } else {
                    format!("cannot be read ({e})")
                };
                self.err(
                    Some(s.span.clone()),
                    format!("{what} `{}` {why} (looked for {})", s.v, path.display()),
                    format!("paths are relative to the recipe's directory {}; fix the path or create the file", self.dir.display()),
                );
                None
            }
        }
    }

    // ---- tags ------------------------------------------------------------------------------

    fn tags(&mut self, t: &Tbl<'_, '_>, key: &str) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let Some(map) = self.string_map(t, key) else {
            return out;
        };
        if let Err(p) = checks::check_tag_count(map.v.len()) {
            self.problem(&map.span, "", p);
        }
        for (k, v) in map.v {
            for (on_key, p) in checks::check_tag(&k.v, &v.v) {
                if on_key {
                    self.problem(&k.span, &k.v, p)
                } else {
                    self.problem(&v.span, &v.v, p)
                }
            }
            out.insert(k.v, v.v);
        }
        out
    }

    fn absolute_remote(&mut self, t: &Tbl<'_, '_>, key: &str, s: &Sp<String>) -> bool {
        if s.v.starts_with('/') {
            return true;
        }
        self.err(
            Some(s.span.clone()),
            format!(
                "`{key}` in {} must be an absolute path on the builder, not `{}`",
                t.name, s.v
            ),
            format!(
                "start it with /, e.g. {key} = \"/{}\"",
                s.v.trim_start_matches("./")
            ),
        );
        false
    }
}

/// Parses and validates; returns the recipe, or every problem found.
pub(crate) fn build(
    src: &str,
    path: &Path,
    vars: &[(String, String)],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Recipe, Vec<RecipeError>> {
    let (doc, syntax) = DeTable::parse_recoverable(src);
    if !syntax.is_empty() {
        return Err(syntax
            .iter()
            .map(|e| {
                let msg = e.message().trim().to_string();
                let first = msg.lines().next().unwrap_or("").to_string();
                let help = if first.contains("duplicate key") {
                    "each key may appear only once per table; remove or rename one of them".to_string()
                } else {
                    "fix the TOML syntax (strings need quotes, tables are [name], lists are [\"a\", \"b\"]; see https://toml.io)"
                        .to_string()
                };
                RecipeError::new(e.span(), format!("invalid TOML: {first}"), help)
            })
            .collect());
    }
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    let mut cx = Cx {
        src,
        dir: dir.clone(),
        errors: Vec::new(),
        vars: BTreeMap::new(),
        env,
    };
    let root = Tbl {
        t: doc.get_ref(),
        span: 0..0,
        name: "the recipe".to_string(),
    };
    cx.keys(&root, TOP_KEYS);

    let secrets = variables(&mut cx, &root, vars);

    let name = cx.req_string(&root, "name", "\"web\"");
    if let Some(n) = &name
        && let Err(p) = checks::check_recipe_name(&n.v)
    {
        cx.problem(&n.span, &n.v, p);
    }
    let description = cx.string(&root, "description").map(|s| s.v);

    let communicator = match cx.string(&root, "communicator") {
        None => Some(Sp {
            v: CommunicatorKind::Ssh,
            span: 0..0,
        }), // empty span: not written
        Some(s) => {
            match s.v.as_str() {
                "ssh" => Some(Sp {
                    v: CommunicatorKind::Ssh,
                    span: s.span,
                }),
                "ssm" => Some(Sp {
                    v: CommunicatorKind::Ssm,
                    span: s.span,
                }),
                other => {
                    let help = match checks::suggest(other, &["ssh", "ssm"]) {
                    Some(x) if x != other => format!("did you mean \"{x}\"? bake talks to builders over \"ssh\" or \"ssm\""),
                    _ => "bake talks to builders over \"ssh\" (default) or \"ssm\" (Session Manager)".to_string(),
                };
                    cx.err(
                        Some(s.span.clone()),
                        format!("unknown communicator `{other}`"),
                        help,
                    );
                    None
                }
            }
        }
    };

    let source = source(&mut cx, &root);
    let builder = builder(&mut cx, &root);
    let comm = communicator.as_ref().map(|c| c.v);
    let ssh = ssh(
        &mut cx,
        &root,
        comm,
        communicator.as_ref().map(|c| c.span.clone()),
    );
    let ssm = ssm(
        &mut cx,
        &root,
        comm,
        communicator.as_ref().map(|c| c.span.clone()),
    );

    // communicator-specific requirements on the builder
    if let (Some(c), Some(b)) = (&communicator, &builder) {
        if c.v == CommunicatorKind::Ssm {
            if b.0.iam_instance_profile.is_none() {
                let span = if c.span.is_empty() {
                    None
                } else {
                    Some(c.span.clone())
                };
                cx.err(
                    span,
                    "communicator \"ssm\" needs builder.iam_instance_profile",
                    "the builder reaches Systems Manager with its instance role: set [builder] iam_instance_profile to a profile whose role has AmazonSSMManagedInstanceCore and access to the ssm.bucket",
                );
            }
            if let Some(span) = &b.1 {
                cx.err(
                    Some(span.clone()),
                    "`ssh_ingress_cidrs` has no effect with communicator \"ssm\"",
                    "remove it: with SSM bake opens no inbound port",
                );
            }
        }
    }

    let uploads = uploads(&mut cx, &root);
    let steps = steps(&mut cx, &root);
    let image = image(&mut cx, &root, name.as_ref().map(|n| n.v.as_str()));
    let deploy = deploy(&mut cx, &root);

    if !cx.errors.is_empty() {
        return Err(redact(cx.errors, &secrets));
    }
    let recipe = (|| {
        Some(Recipe {
            path: path.to_path_buf(),
            dir,
            name: name?.v,
            description,
            communicator: communicator?.v,
            source: source?,
            builder: builder?.0,
            ssh: ssh?,
            ssm: ssm?,
            uploads,
            steps,
            image: image?,
            deploy: deploy?,
            secrets: secrets.clone(),
        })
    })();
    recipe.ok_or_else(|| {
        vec![RecipeError::new(
            None,
            "internal error: recipe incomplete without a reported problem",
            "please report this bug",
        )]
    })
}

/// Sensitive values never appear in messages.
fn redact(mut errors: Vec<RecipeError>, secrets: &[String]) -> Vec<RecipeError> {
    for e in &mut errors {
        for s in secrets.iter().filter(|s| s.len() >= 3) {
            e.message = e.message.replace(s.as_str(), "***");
            e.help = e.help.replace(s.as_str(), "***");
        }
    }
    errors
}

/// Reads `[variables]` and `sensitive`, applies `--var` overrides; returns the secrets.
fn variables(cx: &mut Cx<'_>, root: &Tbl<'_, '_>, overrides: &[(String, String)]) -> Vec<String> {
    let vt = cx.table(root, "variables", "[variables]".to_string());
    if let Some(vt) = &vt {
        for (k, v) in vt.t.iter() {
            let name: &str = k.get_ref();
            if !checks::is_var_name(name) {
                cx.err(
                    Some(k.span()),
                    format!("`{name}` is not a valid variable name"),
                    "variable names use letters, digits, _ and -, starting with a letter or _",
                );
            }
            match v.get_ref() {
                DeValue::String(s) => {
                    let s = cx.subst(s, &v.span(), false);
                    cx.vars.insert(name.to_string(), s);
                }
                other => {
                    let raw = cx.src[v.span()].to_string();
                    cx.err(
                        Some(v.span()),
                        format!(
                            "variable `{name}` must have a string default, not {}",
                            type_name(other)
                        ),
                        format!("quote it: {name} = \"{}\"", raw.trim_matches('"')),
                    );
                    // keep it declared so references to it don't report twice
                    cx.vars.insert(name.to_string(), raw);
                }
            }
        }
    }
    for (k, v) in overrides {
        if cx.vars.contains_key(k) {
            cx.vars.insert(k.clone(), v.clone());
        } else {
            let names: Vec<&str> = cx.vars.keys().map(String::as_str).collect();
            let help = match checks::suggest(k, &names) {
                Some(s) => format!("did you mean `--var {s}=…`?"),
                None => format!("declare it in the recipe: [variables] {k} = \"default value\""),
            };
            let span = vt.as_ref().map(|t| t.span.clone());
            cx.err(
                span,
                format!("--var `{k}`: the recipe declares no variable `{k}`"),
                help,
            );
        }
    }
    let mut secrets = Vec::new();
    if let Some((_, v)) = cx.get(root, "sensitive") {
        match v.get_ref() {
            DeValue::Array(a) => {
                for i in a.iter() {
                    let DeValue::String(n) = i.get_ref() else {
                        cx.err(
                            Some(i.span()),
                            "`sensitive` must list variable names as strings",
                            "quote each name: sensitive = [\"db_password\"]",
                        );
                        continue;
                    };
                    match cx.vars.get(n.as_ref()) {
                        Some(val) => {
                            if !val.is_empty() {
                                secrets.push(val.clone());
                            }
                        }
                        None => {
                            let names: Vec<&str> = cx.vars.keys().map(String::as_str).collect();
                            let help = match checks::suggest(n, &names) {
                                Some(s) => format!("did you mean \"{s}\"?"),
                                None => {
                                    "list names of variables declared under [variables]".to_string()
                                }
                            };
                            cx.err(
                                Some(i.span()),
                                format!(
                                    "`sensitive` names `{n}`, which is not a declared variable"
                                ),
                                help,
                            );
                        }
                    }
                }
            }
            _ => cx.wrong_type(
                root,
                "sensitive",
                v,
                "an array of variable names",
                "write sensitive = [\"db_password\"]".to_string(),
            ),
        }
    }
    secrets
}

fn source(cx: &mut Cx<'_>, root: &Tbl<'_, '_>) -> Option<Source> {
    let Some(t) = cx.table(root, "source", "[source]".to_string()) else {
        if cx.get(root, "source").is_none() {
            cx.err(
                Some(cx.top_span()),
                "the recipe has no [source] section",
                "add [source] with ami = \"ami-…\", or a [source.filter] table (owners, name)",
            );
        }
        return None;
    };
    cx.keys(&t, SOURCE_KEYS);
    let has_ami = cx.get(&t, "ami").is_some();
    let filter_key = cx
        .get(&t, "filter")
        .map(|(k, v)| if v.span().is_empty() { k } else { v.span() });
    match (has_ami, filter_key) {
        (true, Some(fspan)) => {
            cx.err(
                Some(fspan),
                "[source] has both `ami` and `filter`",
                "keep one: ami = \"ami-…\" for a fixed image, or [source.filter] to take the newest match",
            );
            None
        }
        (false, None) => {
            cx.err(
                Some(t.span.clone()),
                "[source] needs `ami` or `filter`",
                "add ami = \"ami-…\", or a [source.filter] table with owners and name",
            );
            None
        }
        (true, None) => {
            let ami = cx.string(&t, "ami")?;
            if let Err(p) = checks::check_resource_id(&ami.v, "ami", "AMI") {
                cx.problem(&ami.span, &ami.v, p);
                return None;
            }
            Some(Source::Ami(ami.v))
        }
        (false, Some(_)) => {
            let f = cx.table(&t, "filter", "[source.filter]".to_string())?;
            cx.keys(&f, FILTER_KEYS);
            let n0 = cx.errors.len();
            let owners = match cx.string_list(&f, "owners") {
                None => {
                    if cx.get(&f, "owners").is_none() {
                        cx.err(
                            Some(f.span.clone()),
                            "[source.filter] is missing `owners`",
                            "say whose images may match, e.g. owners = [\"136693071363\"] (Debian), [\"099720109477\"] (Canonical), [\"amazon\"] or [\"self\"]",
                        );
                    }
                    Vec::new()
                }
                Some(list) => {
                    if list.v.is_empty() {
                        cx.err(
                            Some(list.span.clone()),
                            "`owners` is empty",
                            "list at least one account id or alias, e.g. [\"136693071363\"]",
                        );
                    }
                    for o in &list.v {
                        let ok = (o.v.len() == 12 && o.v.chars().all(|c| c.is_ascii_digit()))
                            || ["self", "amazon", "aws-marketplace", "aws-backup-vault"]
                                .contains(&o.v.as_str());
                        if !ok {
                            cx.err(
                                Some(o.span.clone()),
                                format!("`{}` is not an image owner", o.v),
                                "owners are 12-digit account ids or one of \"self\", \"amazon\", \"aws-marketplace\"",
                            );
                        }
                    }
                    list.v.into_iter().map(|s| s.v).collect()
                }
            };
            let name = cx.string(&f, "name").map(|s| s.v);
            let architecture = match cx.string(&f, "architecture") {
                Some(a) if !ARCHITECTURES.contains(&a.v.as_str()) => {
                    let alias = match a.v.as_str() {
                        "amd64" | "x86-64" | "x64" => Some("x86_64"),
                        "aarch64" | "arm" => Some("arm64"),
                        _ => None,
                    };
                    let help = match alias.or_else(|| checks::suggest(&a.v, ARCHITECTURES)) {
                        Some(s) => format!("did you mean \"{s}\"?"),
                        None => format!("use one of {}", ARCHITECTURES.join(", ")),
                    };
                    cx.err(
                        Some(a.span),
                        format!("unknown architecture `{}`", a.v),
                        help,
                    );
                    None
                }
                other => other.map(|a| a.v),
            };
            let mut filters = BTreeMap::new();
            if let Some((_, v)) = cx.get(&f, "filters") {
                match v.get_ref() {
                    DeValue::Table(ft) => {
                        for (k, item) in ft.iter() {
                            let key = k.get_ref().to_string();
                            let vals = match item.get_ref() {
                                DeValue::Array(a) => {
                                    let mut vals = Vec::new();
                                    for i in a.iter() {
                                        match i.get_ref() {
                                            DeValue::String(s) => {
                                                vals.push(cx.subst(s, &i.span(), true))
                                            }
                                            other => cx.err(
                                                Some(i.span()),
                                                format!(
                                                    "filter values must be strings, not {}",
                                                    type_name(other)
                                                ),
                                                "quote each value: [\"hvm\"]",
                                            ),
                                        }
                                    }
                                    vals
                                }
                                DeValue::String(s) => vec![cx.subst(s, &item.span(), true)],
                                other => {
                                    cx.err(
                                        Some(item.span()),
                                        format!(
                                            "filter `{key}` must be a list of strings, not {}",
                                            type_name(other)
                                        ),
                                        format!("write \"{key}\" = [\"value\"]"),
                                    );
                                    Vec::new()
                                }
                            };
                            filters.insert(key, vals);
                        }
                    }
                    _ => cx.wrong_type(
                        &f,
                        "filters",
                        v,
                        "a table",
                        "write filters = { \"virtualization-type\" = [\"hvm\"] }".to_string(),
                    ),
                }
            }
            if cx.errors.len() > n0 {
                return None;
            }
            Some(Source::Filter(SourceFilter {
                owners,
                name,
                architecture,
                filters,
            }))
        }
    }
}

/// The builder, and the span of `ssh_ingress_cidrs` when given (for communicator checks).
fn builder(cx: &mut Cx<'_>, root: &Tbl<'_, '_>) -> Option<(Builder, Option<Span>)> {
    let Some(t) = cx.table(root, "builder", "[builder]".to_string()) else {
        if cx.get(root, "builder").is_none() {
            cx.err(
                Some(cx.top_span()),
                "the recipe has no [builder] section",
                "add [builder] with instance_type = \"t3.micro\"",
            );
        }
        return None;
    };
    cx.keys(&t, BUILDER_KEYS);
    let n0 = cx.errors.len();
    let instance_type = cx.req_string(&t, "instance_type", "\"t3.micro\"");
    if let Some(it) = &instance_type
        && let Err(p) = checks::check_instance_type(&it.v)
    {
        cx.problem(&it.span, &it.v, p);
    }
    let subnet_id = cx.string(&t, "subnet_id");
    if let Some(s) = &subnet_id
        && let Err(p) = checks::check_resource_id(&s.v, "subnet", "subnet")
    {
        cx.problem(&s.span, &s.v, p);
    }
    let sgs = cx.string_list(&t, "security_group_ids");
    if let Some(list) = &sgs {
        for s in &list.v {
            if let Err(p) = checks::check_resource_id(&s.v, "sg", "security group") {
                cx.problem(&s.span, &s.v, p);
            }
        }
    }
    let cidrs = cx.string_list(&t, "ssh_ingress_cidrs");
    let mut cidr_span = None;
    if let Some(list) = &cidrs {
        cidr_span = Some(
            cx.get(&t, "ssh_ingress_cidrs")
                .map(|(k, _)| k)
                .unwrap_or(list.span.clone()),
        );
        for c in &list.v {
            if let Err(p) = checks::check_cidr(&c.v) {
                cx.problem(&c.span, &c.v, p);
            }
        }
        if let Some(sgs) = &sgs
            && !sgs.v.is_empty()
            && !list.v.is_empty()
        {
            cx.err(
                cidr_span.clone(),
                "`ssh_ingress_cidrs` only applies to the temporary security group, but `security_group_ids` is set",
                "remove ssh_ingress_cidrs and allow SSH in your own security groups, or remove security_group_ids to let bake create a temporary group",
            );
        }
    }
    let iam = cx.string(&t, "iam_instance_profile");
    if let Some(i) = &iam
        && let Err(p) = checks::check_instance_profile(&i.v)
    {
        cx.problem(&i.span, &i.v, p);
    }
    let ud = cx.string(&t, "user_data");
    let udf = cx.string(&t, "user_data_file");
    let mut user_data = None;
    match (ud, udf) {
        (Some(_), Some(f)) => cx.err(
            Some(f.span),
            "[builder] has both `user_data` and `user_data_file`",
            "keep one: inline user_data = \"…\" or user_data_file = \"path\"",
        ),
        (Some(u), None) => user_data = Some(u),
        (None, Some(f)) => {
            if let Some((p, is_dir)) = cx.existing_path("user_data_file", &f) {
                if is_dir {
                    cx.err(
                        Some(f.span.clone()),
                        format!("user_data_file `{}` is a directory ({})", f.v, p.display()),
                        "point it at a file",
                    );
                } else {
                    match std::fs::read_to_string(&p) {
                        Ok(s) => {
                            user_data = Some(Sp {
                                v: s,
                                span: f.span.clone(),
                            })
                        }
                        Err(e) => cx.err(
                            Some(f.span.clone()),
                            format!("cannot read user_data_file {}: {e}", p.display()),
                            "user data must be a readable UTF-8 text file",
                        ),
                    }
                }
            }
        }
        (None, None) => {}
    }
    if let Some(u) = &user_data
        && u.v.len() > 16384
    {
        cx.err(
            Some(u.span.clone()),
            format!("user data is {} bytes; EC2 allows 16384", u.v.len()),
            "shrink it (compress it with gzip, or move the work into a [[step]])",
        );
    }
    let associate_public_ip = cx.boolean(&t, "associate_public_ip");
    let run_tags = cx.tags(&t, "run_tags");
    let root_volume = match cx.table(&t, "root_volume", "[builder.root_volume]".to_string()) {
        Some(rv) => root_volume(cx, &rv),
        None => RootVolume::default(),
    };
    let max_lifetime = cx.duration(&t, "max_lifetime");
    if let Some(m) = &max_lifetime
        && m.v < std::time::Duration::from_secs(10)
    {
        cx.err(
            Some(m.span.clone()),
            "max_lifetime is shorter than 10s",
            "the builder powers itself off after max_lifetime; give it time to be built, e.g. \"2h\"",
        );
    }
    let imds = match cx.string(&t, "imds") {
        None => Imds::V2,
        Some(v) if v.v == "v2" => Imds::V2,
        Some(v) if v.v == "v1-allowed" => Imds::V1Allowed,
        Some(v) => {
            cx.err(
                Some(v.span.clone()),
                format!("unknown imds `{}`", v.v),
                "use \"v2\" (IMDSv2 only, the default) or \"v1-allowed\"",
            );
            Imds::V2
        }
    };
    if cx.errors.len() > n0 {
        return None;
    }
    Some((
        Builder {
            max_lifetime: max_lifetime
                .map(|m| m.v)
                .unwrap_or(std::time::Duration::from_secs(2 * 3600)),
            imds,
            instance_type: instance_type?.v,
            subnet_id: subnet_id.map(|s| s.v),
            security_group_ids: sgs
                .map(|l| l.v.into_iter().map(|s| s.v).collect())
                .unwrap_or_default(),
            ssh_ingress_cidrs: cidrs
                .map(|l| l.v.into_iter().map(|s| s.v).collect())
                .unwrap_or_default(),
            iam_instance_profile: iam.map(|s| s.v),
            user_data: user_data.map(|u| u.v),
            associate_public_ip,
            run_tags,
            root_volume,
        },
        cidr_span,
    ))
}

fn root_volume(cx: &mut Cx<'_>, t: &Tbl<'_, '_>) -> RootVolume {
    cx.keys(t, ROOT_VOLUME_KEYS);
    let size_gb = cx.integer(t, "size_gb", 1, 16384);
    let vtype = cx.string(t, "type");
    let mut volume_type = None;
    if let Some(v) = &vtype {
        if VOLUME_TYPES.contains(&v.v.as_str()) {
            volume_type = Some(v.v.clone());
        } else {
            let help = match checks::suggest(&v.v, VOLUME_TYPES) {
                Some(s) => format!(
                    "did you mean \"{s}\"? Volume types: {}",
                    VOLUME_TYPES.join(", ")
                ),
                None => format!("use one of {}", VOLUME_TYPES.join(", ")),
            };
            cx.err(
                Some(v.span.clone()),
                format!("unknown volume type `{}`", v.v),
                help,
            );
        }
    }
    let encrypted = cx.boolean(t, "encrypted");
    let kms = cx.string(t, "kms_key_id");
    if let Some(k) = &kms {
        if let Err(p) = checks::check_kms_key(&k.v) {
            cx.problem(&k.span, &k.v, p);
        }
        if encrypted == Some(false) {
            cx.err(
                Some(k.span.clone()),
                "`kms_key_id` is set but `encrypted = false`",
                "set encrypted = true (or remove kms_key_id)",
            );
        }
    }
    let iops = cx.integer(t, "iops", 100, 256_000);
    let throughput = cx.integer(t, "throughput", 125, 2000);
    let vt = volume_type.as_deref().unwrap_or("gp3");
    if let Some(i) = &iops {
        let range = match vt {
            "gp3" => Some((3000, 80_000)),
            "io1" => Some((100, 64_000)),
            "io2" => Some((100, 256_000)),
            _ => None,
        };
        match range {
            None => cx.err(
                Some(i.span.clone()),
                format!("`iops` does not apply to {vt} volumes"),
                "remove iops, or use type = \"gp3\", \"io1\" or \"io2\"",
            ),
            Some((lo, hi)) if !(lo..=hi).contains(&i.v) => cx.err(
                Some(i.span.clone()),
                format!("{vt} volumes take {lo}–{hi} iops, not {}", i.v),
                format!("use a value from {lo} to {hi}"),
            ),
            _ => {}
        }
    } else if matches!(vt, "io1" | "io2")
        && let Some(v) = &vtype
    {
        cx.err(
            Some(v.span.clone()),
            format!("{vt} volumes need `iops`"),
            "add iops = 3000 (or the rate you provisioned for)",
        );
    }
    if let Some(tp) = &throughput
        && vt != "gp3"
    {
        cx.err(
            Some(tp.span.clone()),
            format!("`throughput` only applies to gp3 volumes, not {vt}"),
            "remove throughput, or use type = \"gp3\"",
        );
    }
    RootVolume {
        size_gb: size_gb.map(|s| s.v as u32),
        volume_type,
        encrypted,
        kms_key_id: kms.map(|k| k.v),
        iops: iops.map(|i| i.v as u32),
        throughput: throughput.map(|t| t.v as u32),
    }
}

fn ssh(
    cx: &mut Cx<'_>,
    root: &Tbl<'_, '_>,
    comm: Option<CommunicatorKind>,
    comm_span: Option<Span>,
) -> Option<Ssh> {
    let mut ssh = Ssh {
        username: String::new(),
        port: 22,
        interface: SshInterface::PrivateIp,
        timeout: Duration::from_secs(300),
    };
    let Some(t) = cx.table(root, "ssh", "[ssh]".to_string()) else {
        if comm == Some(CommunicatorKind::Ssh) && cx.get(root, "ssh").is_none() {
            let span = comm_span
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| cx.top_span());
            cx.err(Some(span), "the ssh communicator needs an [ssh] section", "add [ssh] with username = \"admin\" (the image's default user: admin on Debian, ubuntu on Ubuntu, ec2-user on Amazon Linux)");
            return None;
        }
        return if comm == Some(CommunicatorKind::Ssh) {
            None
        } else {
            Some(ssh)
        };
    };
    cx.keys(&t, SSH_KEYS);
    let n0 = cx.errors.len();
    if comm == Some(CommunicatorKind::Ssh) {
        if let Some(u) = cx.req_string(&t, "username", "\"admin\"") {
            if checks::check_owner(&u.v).is_err() || u.v.contains(':') {
                cx.err(
                    Some(u.span.clone()),
                    format!("`{}` is not a valid user name", u.v),
                    "use the image's login user, e.g. \"admin\", \"ubuntu\" or \"ec2-user\"",
                );
            }
            ssh.username = u.v;
        }
    } else if let Some(u) = cx.string(&t, "username") {
        ssh.username = u.v;
    }
    if let Some(p) = cx.integer(&t, "port", 1, 65535) {
        ssh.port = p.v as u16;
    }
    if let Some(i) = cx.string(&t, "interface") {
        ssh.interface = match i.v.as_str() {
            "private_ip" => SshInterface::PrivateIp,
            "public_ip" => SshInterface::PublicIp,
            "private_dns" => SshInterface::PrivateDns,
            "public_dns" => SshInterface::PublicDns,
            other => {
                let help = match checks::suggest(other, INTERFACES) {
                    Some(s) => format!("did you mean \"{s}\"?"),
                    None => format!("use one of {}", INTERFACES.join(", ")),
                };
                cx.err(
                    Some(i.span.clone()),
                    format!("unknown ssh interface `{other}`"),
                    help,
                );
                SshInterface::PrivateIp
            }
        };
    }
    if let Some(d) = cx.duration(&t, "timeout") {
        ssh.timeout = d.v;
    }
    if cx.errors.len() > n0 {
        None
    } else {
        Some(ssh)
    }
}

fn ssm(
    cx: &mut Cx<'_>,
    root: &Tbl<'_, '_>,
    comm: Option<CommunicatorKind>,
    comm_span: Option<Span>,
) -> Option<Option<Ssm>> {
    let needed = comm == Some(CommunicatorKind::Ssm);
    let Some(t) = cx.table(root, "ssm", "[ssm]".to_string()) else {
        if needed && cx.get(root, "ssm").is_none() {
            cx.err(
                comm_span.filter(|s| !s.is_empty()),
                "communicator \"ssm\" needs an [ssm] section",
                "add [ssm] with bucket = \"my-bake-staging\" (an S3 bucket uploads are staged in)",
            );
            return None;
        }
        return if needed { None } else { Some(None) };
    };
    cx.keys(&t, SSM_KEYS);
    let n0 = cx.errors.len();
    let bucket = if needed {
        cx.req_string(&t, "bucket", "\"my-bake-staging\"")
    } else {
        cx.string(&t, "bucket")
    };
    if let Some(b) = &bucket
        && let Err(p) = checks::check_bucket(&b.v)
    {
        cx.problem(&b.span, &b.v, p);
    }
    let prefix = cx.string(&t, "prefix");
    if let Some(p) = &prefix
        && p.v.starts_with('/')
    {
        cx.err(
            Some(p.span.clone()),
            "`prefix` must not start with /",
            format!("write prefix = \"{}\"", p.v.trim_start_matches('/')),
        );
    }
    let output_bucket = cx.string(&t, "output_bucket");
    if let Some(b) = &output_bucket
        && let Err(p) = checks::check_bucket(&b.v)
    {
        cx.problem(&b.span, &b.v, p);
    }
    let timeout = cx
        .duration(&t, "timeout")
        .map(|d| d.v)
        .unwrap_or(Duration::from_secs(600));
    if cx.errors.len() > n0 {
        return None;
    }
    if !needed && bucket.is_none() {
        return Some(None);
    }
    Some(Some(Ssm {
        bucket: bucket?.v,
        prefix: prefix.map(|p| p.v).unwrap_or_else(|| "bake/".to_string()),
        output_bucket: output_bucket.map(|b| b.v),
        timeout,
    }))
}

fn uploads(cx: &mut Cx<'_>, root: &Tbl<'_, '_>) -> Vec<Upload> {
    let mut out = Vec::new();
    for t in cx.array_of_tables(root, "upload") {
        cx.keys(&t, UPLOAD_KEYS);
        let source = cx.req_string(&t, "source", "\"files/app.tar.gz\"");
        let found = source
            .as_ref()
            .and_then(|s| cx.existing_path("upload source", s));
        let dest = cx.req_string(&t, "destination", "\"/opt/app/app.tar.gz\"");
        let mut dest_ok = dest
            .as_ref()
            .is_some_and(|d| cx.absolute_remote(&t, "destination", d));
        if let (Some((p, false)), Some(d)) = (&found, &dest)
            && dest_ok
            && d.v.ends_with('/')
        {
            let file = p
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default();
            let shown = source.as_ref().map_or("", |s| s.v.as_str());
            cx.err(
                Some(d.span.clone()),
                format!("`destination` for the file `{shown}` ends with /"),
                format!(
                    "for a file, destination is the full path of the file on the builder: destination = \"{}{file}\"",
                    d.v
                ),
            );
            dest_ok = false;
        }
        let mode = match cx.get(&t, "mode") {
            Some((_, v)) => match v.get_ref() {
                DeValue::String(_) => {
                    cx.string(&t, "mode")
                        .and_then(|m| match checks::parse_mode(&m.v) {
                            Ok(x) => Some(Some(x)),
                            Err(p) => {
                                cx.problem(&m.span, &m.v, p);
                                None
                            }
                        })
                }
                DeValue::Integer(i) => {
                    let lit = i.as_str().to_string();
                    cx.wrong_type(
                        &t,
                        "mode",
                        v,
                        "an octal string",
                        format!(
                            "quote it: mode = \"{lit}\" (a bare {lit} would be read as decimal)"
                        ),
                    );
                    None
                }
                _ => {
                    cx.wrong_type(
                        &t,
                        "mode",
                        v,
                        "an octal string",
                        "write mode = \"0644\"".to_string(),
                    );
                    None
                }
            },
            None => Some(None),
        };
        let owner = cx.string(&t, "owner");
        if let Some(o) = &owner
            && let Err(p) = checks::check_owner(&o.v)
        {
            cx.problem(&o.span, &o.v, p);
        }
        if let (Some((source, is_dir)), Some(dest), true, Some(mode)) = (found, dest, dest_ok, mode)
        {
            out.push(Upload {
                source,
                is_dir,
                destination: dest.v,
                mode,
                owner: owner.map(|o| o.v),
            });
        }
    }
    out
}

fn steps(cx: &mut Cx<'_>, root: &Tbl<'_, '_>) -> Vec<Step> {
    let mut out = Vec::new();
    let mut names: BTreeMap<String, Span> = BTreeMap::new();
    for t in cx.array_of_tables(root, "step") {
        cx.keys(&t, STEP_KEYS);
        let n0 = cx.errors.len();
        let name = cx.req_string(&t, "name", "\"install\"");
        if let Some(n) = &name {
            if let Some(first) = names.get(&n.v) {
                let (line, _) = super::diag::line_col(cx.src, first.start);
                cx.err(
                    Some(n.span.clone()),
                    format!("duplicate step name `{}`", n.v),
                    format!("step names must be unique; `{}` is already used on line {line}: rename one", n.v),
                );
            } else {
                names.insert(n.v.clone(), n.span.clone());
            }
        }
        let run = cx.string(&t, "run");
        let script = cx.string(&t, "script");
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
                if cx.get(&t, "run").is_none() && cx.get(&t, "script").is_none() {
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
                        "write the shell commands to run, or remove the step",
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
        let sudo = cx.boolean(&t, "sudo").unwrap_or(false);
        let mut env = BTreeMap::new();
        if let Some(map) = cx.string_map(&t, "env") {
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
        let workdir = cx.string(&t, "workdir");
        if let Some(w) = &workdir {
            cx.absolute_remote(&t, "workdir", w);
        }
        let timeout = cx
            .duration(&t, "timeout")
            .map(|d| d.v)
            .unwrap_or(Duration::from_secs(30 * 60));
        let retries = cx
            .integer(&t, "retries", 0, 100)
            .map(|r| r.v as u32)
            .unwrap_or(0);
        let reboot = cx.boolean(&t, "reboot").unwrap_or(false);
        if cx.errors.len() > n0 {
            continue;
        }
        if let (Some(name), Some(body)) = (name, body) {
            out.push(Step {
                name: name.v,
                body,
                sudo,
                env,
                workdir: workdir.map(|w| w.v),
                timeout,
                retries,
                reboot,
            });
        }
    }
    out
}

fn image(cx: &mut Cx<'_>, root: &Tbl<'_, '_>, recipe: Option<&str>) -> Option<Image> {
    let Some(t) = cx.table(root, "image", "[image]".to_string()) else {
        if cx.get(root, "image").is_none() {
            cx.err(
                Some(cx.top_span()),
                "the recipe has no [image] section",
                "add [image] with name = \"{recipe}-{timestamp}-{short_hash}\"",
            );
        }
        return None;
    };
    cx.keys(&t, IMAGE_KEYS);
    let n0 = cx.errors.len();
    let name = cx.req_string(&t, "name", "\"{recipe}-{timestamp}-{short_hash}\"");
    if let Some(n) = &name {
        for p in checks::check_image_name(&n.v, recipe.unwrap_or("recipe")) {
            cx.problem(&n.span, &n.v, p);
        }
    }
    let description = cx.string(&t, "description");
    if let Some(d) = &description
        && d.v.chars().count() > 255
    {
        cx.err(
            Some(d.span.clone()),
            format!(
                "image description is {} characters; EC2 allows 255",
                d.v.chars().count()
            ),
            "shorten the description",
        );
    }
    let tags = cx.tags(&t, "tags");
    let snapshot_tags = cx.tags(&t, "snapshot_tags");
    if cx.errors.len() > n0 {
        return None;
    }
    Some(Image {
        name: name?.v,
        description: description.map(|d| d.v),
        tags,
        snapshot_tags,
    })
}

fn deploy(cx: &mut Cx<'_>, root: &Tbl<'_, '_>) -> Option<Option<Deploy>> {
    let Some(t) = cx.table(root, "deploy", "[deploy]".to_string()) else {
        return if cx.get(root, "deploy").is_some() {
            None
        } else {
            Some(None)
        };
    };
    cx.keys(&t, DEPLOY_KEYS);
    let n0 = cx.errors.len();
    let asg = cx.string(&t, "asg");
    if let Some(a) = &asg
        && (a.v.is_empty() || a.v.chars().count() > 255)
    {
        cx.err(
            Some(a.span.clone()),
            "`asg` must be an Auto Scaling group name of 1–255 characters",
            "write asg = \"web-asg\"",
        );
    }
    let min = cx.integer(&t, "min_healthy_percentage", 0, 100);
    let max = cx.integer(&t, "max_healthy_percentage", 100, 200);
    let instance_warmup = cx.duration(&t, "instance_warmup").map(|d| d.v);
    let skip_matching = cx.boolean(&t, "skip_matching");
    let mut checkpoints = Vec::new();
    let cp_present = cx.get(&t, "checkpoint_percentages").map(|(k, _)| k);
    if let Some((_, v)) = cx.get(&t, "checkpoint_percentages") {
        match v.get_ref() {
            DeValue::Array(a) => {
                let mut prev = 0;
                for i in a.iter() {
                    match integer_of(i.get_ref()) {
                        Some(n) if (1..=100).contains(&n) => {
                            if n <= prev {
                                cx.err(
                                    Some(i.span()),
                                    "checkpoint percentages must increase",
                                    "list them in ascending order, e.g. [20, 50, 100]",
                                );
                            }
                            prev = n;
                            checkpoints.push(n as i32);
                        }
                        Some(n) => cx.err(
                            Some(i.span()),
                            format!("checkpoint percentage {n} is outside 1–100"),
                            "use percentages from 1 to 100, e.g. [20, 50, 100]",
                        ),
                        None => cx.err(
                            Some(i.span()),
                            "checkpoint percentages must be whole numbers",
                            "write checkpoint_percentages = [20, 50, 100]",
                        ),
                    }
                }
            }
            _ => cx.wrong_type(
                &t,
                "checkpoint_percentages",
                v,
                "an array of percentages",
                "write checkpoint_percentages = [20, 50, 100]".to_string(),
            ),
        }
    }
    let checkpoint_delay = cx.duration(&t, "checkpoint_delay");
    if let Some(d) = &checkpoint_delay {
        if d.v > Duration::from_secs(172_800) {
            cx.err(
                Some(d.span.clone()),
                "checkpoint_delay is longer than 2 days (the instance refresh limit)",
                "use at most \"48h\"",
            );
        }
        if cp_present.is_none() {
            cx.err(
                Some(d.span.clone()),
                "checkpoint_delay is set without checkpoint_percentages",
                "add checkpoint_percentages = [20, 50, 100] or remove checkpoint_delay",
            );
        }
    }
    let auto_rollback = cx.boolean(&t, "auto_rollback");
    let keep_versions = cx.integer(&t, "keep_versions", 1, 1000).map(|k| k.v as u32);
    if cx.errors.len() > n0 {
        return None;
    }
    Some(Some(Deploy {
        asg: asg.map(|a| a.v),
        min_healthy_percentage: min.map(|m| m.v as i32),
        max_healthy_percentage: max.map(|m| m.v as i32),
        instance_warmup,
        skip_matching,
        checkpoint_percentages: checkpoints,
        checkpoint_delay: checkpoint_delay.map(|d| d.v),
        auto_rollback,
        keep_versions,
    }))
}
