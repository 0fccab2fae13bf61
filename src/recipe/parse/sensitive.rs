//! The rule that a `sensitive` variable never goes where AWS keeps it in plain text: user
//! data, tags, the image's name and description, and the names bake derives from the recipe
//! (key pair, security group, SSM command comments). Redacting output cannot help there, so
//! such a use is a validation error pointing at the `{var.NAME}` token.

use super::walker::{Cx, Span};

/// Where a value travels, which decides why a secret must not be in it.
#[derive(Debug, Clone, Copy)]
pub(super) enum Exposed {
    UserData,
    Tags,
    ImageText,
    RecipeName,
    StepName,
}

impl Exposed {
    fn why(self) -> &'static str {
        match self {
            Exposed::UserData => {
                "user data travels in plain text: anyone allowed DescribeInstanceAttribute on the builder can read it, and so can every process on the builder through the instance metadata service; pass the secret to a [[step]] instead (e.g. env = { TOKEN = \"{var.NAME}\" })"
            }
            Exposed::Tags => {
                "tags are plain text, visible to anyone who can describe the resource (DescribeTags, DescribeImages, DescribeInstances) and kept with the image; use a value that is not secret"
            }
            Exposed::ImageText => {
                "the image name and description are plain text, visible to anyone who can describe the image (everyone, once it is shared or public); use a value that is not secret"
            }
            Exposed::RecipeName => {
                "the recipe name is plain text in the names of the builder's key pair and security group and in the bake:recipe tag, visible to anyone who can describe them; use a value that is not secret"
            }
            Exposed::StepName => {
                "step names are shown in progress output and, with communicator \"ssm\", sent as the comment Systems Manager keeps in its command history; use a value that is not secret"
            }
        }
    }
}

impl Cx<'_> {
    /// Reports every sensitive variable substituted into the string value at `span` (the
    /// value of `what`, e.g. "`user_data` in [builder]"), at the variable's token.
    pub(super) fn no_sensitive(&mut self, span: &Span, what: &str, exposed: Exposed) {
        let hits: Vec<(String, Span)> = self
            .var_uses
            .iter()
            .filter(|(name, at)| {
                self.sensitive.contains(name) && at.start >= span.start && at.end <= span.end
            })
            .cloned()
            .collect();
        for (name, at) in hits {
            let help = format!(
                "{}; if `{name}` is not a secret, remove it from `sensitive`",
                exposed.why().replace("NAME", &name)
            );
            self.err(
                Some(at),
                format!("sensitive variable `{name}` is used in {what}"),
                help,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    const RECIPE: &str = r#"name = "s"
sensitive = ["token"]
[variables]
token = "t0ps3cret"
ami = "ami-0123456789abcdef0"
[source]
ami = "{var.ami}"
[builder]
instance_type = "t3.micro"
USER_DATA
[ssh]
username = "admin"
[[step]]
name = "uses-secret"
env = { TOKEN = "{var.token}" }
run = "echo {var.token} | tee /etc/token"
[image]
name = "{recipe}-{hash}"
"#;

    fn load(
        user_data: &str,
        vars: &[(String, String)],
    ) -> Result<crate::recipe::Recipe, crate::recipe::RecipeErrors> {
        let src = RECIPE.replace("USER_DATA", user_data);
        crate::recipe::load_str_with_env(&src, Path::new("s.toml"), vars, &|_| None)
    }

    #[test]
    fn secrets_in_steps_are_allowed() {
        let r = load("", &[]).unwrap_or_else(|e| panic!("{}", e.render_plain()));
        assert_eq!(r.secrets, vec!["t0ps3cret".to_string()]);
    }

    #[test]
    fn a_secret_in_user_data_is_reported_at_its_token_and_never_shown() {
        let e = load(r#"user_data = "echo {var.token}""#, &[]).unwrap_err();
        let out = e.render_plain();
        assert_eq!(e.len(), 1, "{out}");
        assert!(
            out.starts_with(
                "s.toml:10:19: error: sensitive variable `token` is used in `user_data` in [builder]"
            ),
            "{out}"
        );
        assert!(!out.contains("t0ps3cret"), "{out}");
    }

    #[test]
    fn the_rule_follows_the_name_not_the_value() {
        // an override, even an empty one, is still the sensitive variable
        for value in ["other-value", ""] {
            let vars = [("token".to_string(), value.to_string())];
            let e = load(r#"user_data = "{var.token}""#, &vars).unwrap_err();
            assert_eq!(e.len(), 1, "{}", e.render_plain());
        }
        // a token the source spells with an escape is reported at the whole value
        let e = load(r#"user_data = "\u007Bvar.token}""#, &[]).unwrap_err();
        assert!(
            e.render_plain()
                .starts_with("s.toml:10:13: error: sensitive variable `token`"),
            "{}",
            e.render_plain()
        );
    }
}
