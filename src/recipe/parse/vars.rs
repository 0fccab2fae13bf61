//! `[variables]`, the `sensitive` list and the overrides (`--var`, var files, `BAKE_VAR_*`):
//! the values `{var.NAME}` stands for, and which of them are secrets.

use toml::de::DeValue;

use super::super::checks;
use super::super::overrides::{Origin, Override};
use super::walker::{Cx, Tbl, type_name};

/// Reads `[variables]` and `sensitive`, applies the overrides in order (a later one wins);
/// returns the secrets.
pub(super) fn variables(
    cx: &mut Cx<'_>,
    root: &Tbl<'_, '_>,
    overrides: &[Override],
) -> Vec<String> {
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
    for o in overrides {
        let k = &o.name;
        if cx.vars.contains_key(k) {
            cx.vars.insert(k.clone(), o.value.clone());
            continue;
        }
        let names: Vec<&str> = cx.vars.keys().map(String::as_str).collect();
        let suggestion = checks::suggest(k, &names);
        let (message, help) = match &o.origin {
            // the environment serves every recipe bake loads: a variable this one does not
            // declare is meant for another
            Origin::Env { .. } => continue,
            Origin::Flag => (
                format!("--var `{k}`: the recipe declares no variable `{k}`"),
                match suggestion {
                    Some(s) => format!("did you mean `--var {s}=…`?"),
                    None => {
                        format!("declare it in the recipe: [variables] {k} = \"default value\"")
                    }
                },
            ),
            Origin::File { path, line, col } => (
                format!(
                    "var file {}:{line}:{col}: the recipe declares no variable `{k}`",
                    path.display()
                ),
                match suggestion {
                    Some(s) => format!("did you mean `{s}`? (fix the name in {})", path.display()),
                    None => format!(
                        "declare it in the recipe ([variables] {k} = \"default value\"), or remove it from {}",
                        path.display()
                    ),
                },
            ),
        };
        let span = vt.as_ref().map(|t| t.span.clone());
        cx.err(span, message, help);
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
                            cx.sensitive.insert(n.to_string());
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
