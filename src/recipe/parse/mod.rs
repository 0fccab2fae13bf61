//! Recipe parsing: walks the spanned TOML tree of a recipe, collecting every problem, and
//! builds the typed [`Recipe`](super::model::Recipe).
//!
//! `walker`, `values`, `subst` and `packer` are section-independent (the traversal, typed
//! getters, substitution, unknown-key hints); every other module holds the rules of one
//! recipe section, named as `docs/recipe.md` names it.

mod builder;
mod deploy;
mod distribution;
mod image;
mod packer;
mod sensitive;
mod source;
mod ssh;
mod ssm;
mod step;
mod subst;
mod upload;
mod values;
mod vars;
mod walker;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use toml::de::DeTable;

use super::checks;
use super::diag::RecipeError;
use super::model::{CommunicatorKind, Recipe};
use super::overrides::Override;
use sensitive::Exposed;
pub(super) use walker::type_name;
use walker::{Cx, Sp, Tbl};

/// Keys of the top level (also the candidates for "did you mean"); each section module has
/// its own.
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
    "test",
    "image",
    "deploy",
];
const COMMUNICATORS: &[&str] = &["ssh", "ssm"];

/// Every fixed-key section the parser knows, as (section path, keys): `""` is the top level,
/// `a.b` a nested table, `x[]` each table of the array `[[x]]`. Tables of free names
/// (`variables`, `env`, tags, `filters`) are not sections. The recipe's JSON Schema is tested
/// against this list (`tests/recipe_schema.rs`), so the two cannot drift apart.
pub fn known_keys() -> Vec<(&'static str, &'static [&'static str])> {
    vec![
        ("", TOP_KEYS),
        ("source", source::SOURCE_KEYS),
        ("source.filter", source::FILTER_KEYS),
        ("builder", builder::BUILDER_KEYS),
        ("builder.root_volume", builder::ROOT_VOLUME_KEYS),
        ("ssh", ssh::SSH_KEYS),
        ("ssm", ssm::SSM_KEYS),
        ("upload[]", upload::UPLOAD_KEYS),
        ("step[]", step::STEP_KEYS),
        ("test[]", step::TEST_KEYS),
        ("image", image::IMAGE_KEYS),
        ("image.share", distribution::SHARE_KEYS),
        ("deploy", deploy::DEPLOY_KEYS),
    ]
}

/// Every key whose string value must be one of a fixed list, as (section path.key, values),
/// with section paths as in [`known_keys`].
pub fn known_values() -> Vec<(&'static str, &'static [&'static str])> {
    vec![
        ("communicator", COMMUNICATORS),
        ("source.filter.architecture", source::ARCHITECTURES),
        ("builder.root_volume.type", builder::VOLUME_TYPES),
        ("ssh.interface", ssh::INTERFACES),
        ("image.imds_support", distribution::IMDS_SUPPORT),
    ]
}

/// Parses and validates; returns the recipe, or every problem found.
pub(crate) fn build(
    src: &str,
    path: &Path,
    vars: &[Override],
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
        sensitive: BTreeSet::new(),
        var_uses: Vec::new(),
    };
    let root = Tbl {
        t: doc.get_ref(),
        span: 0..0,
        name: "the recipe".to_string(),
    };
    cx.keys(&root, TOP_KEYS);

    let secrets = vars::variables(&mut cx, &root, vars);

    let name = cx.req_string(&root, "name", "\"web\"");
    if let Some(n) = &name {
        cx.no_sensitive(&n.span, "the recipe `name`", Exposed::RecipeName);
    }
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
                    let help = match checks::suggest(other, COMMUNICATORS) {
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

    let source = source::source(&mut cx, &root);
    let builder = builder::builder(&mut cx, &root);
    let comm = communicator.as_ref().map(|c| c.v);
    let ssh = ssh::ssh(
        &mut cx,
        &root,
        comm,
        communicator.as_ref().map(|c| c.span.clone()),
    );
    let ssm = ssm::ssm(
        &mut cx,
        &root,
        comm,
        communicator.as_ref().map(|c| c.span.clone()),
    );

    // communicator-specific requirements on the builder
    if let (Some(c), Some(b)) = (&communicator, &builder)
        && c.v == CommunicatorKind::Ssm
    {
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

    let steps = step::steps(&mut cx, &root);
    let uploads = upload::uploads(&mut cx, &root, &steps);
    let tests = step::tests(&mut cx, &root);
    let image = image::image(&mut cx, &root, name.as_ref().map(|n| n.v.as_str()));
    let deploy = deploy::deploy(&mut cx, &root);

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
            tests,
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
        let mut secrets: Vec<String> = secrets.iter().filter(|s| s.len() >= 3).cloned().collect();
        // Longest first, so a value containing another is redacted whole.
        secrets.sort_by_key(|v| std::cmp::Reverse(v.len()));
        e.message = crate::ui::redact(&e.message, &secrets);
        e.help = crate::ui::redact(&e.help, &secrets);
    }
    errors
}
