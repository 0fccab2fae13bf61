//! `{var.NAME}`, `{env.NAME}` and `{env.NAME:-fallback}` substitution in string values, and
//! the record of which variable was used where (for the rule on sensitive variables).

use super::super::checks;
use super::walker::{Cx, Span};

impl Cx<'_> {
    /// Replaces `{var.NAME}`, `{env.NAME}` and `{env.NAME:-fallback}` in `s` (a TOML string
    /// at `span`). Other braces are left alone (shell code uses them).
    pub(super) fn subst(&mut self, s: &str, span: &Span, allow_var: bool) -> String {
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
                    out.push_str(v);
                    self.var_uses.push((name.to_string(), tspan));
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
}
