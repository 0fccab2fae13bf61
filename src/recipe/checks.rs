//! Pure checks on recipe values: no I/O, no spans beyond offsets inside one string.

use std::ops::Range;
use std::time::Duration;

/// A problem inside one string value; `at` is a byte range inside that string when the
/// problem has a precise place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub at: Option<Range<usize>>,
    pub message: String,
    pub help: String,
}

impl Problem {
    fn new(at: Option<Range<usize>>, message: impl Into<String>, help: impl Into<String>) -> Self {
        Self {
            at,
            message: message.into(),
            help: help.into(),
        }
    }
}

/// Image-name placeholders and the representative values used to check the final name's
/// length and characters (the longest forms the build produces).
pub const IMAGE_PLACEHOLDERS: &[(&str, &str)] = &[
    ("recipe", ""), // the recipe's own name, filled in by the caller
    (
        "hash",
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    ),
    ("short_hash", "0123456789ab"),
    ("timestamp", "20261123T074907Z"),
    ("date", "2026-11-23"),
];

/// Bake adds its own `bake:*` tags to every resource it tags; this many are reserved.
pub const RESERVED_TAGS: usize = 5;
pub const MAX_TAGS: usize = 50;

/// Best "did you mean" candidate for `word` among `candidates`.
pub fn suggest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let lw = word.to_ascii_lowercase();
    let mut best: Option<(&str, f64)> = None;
    for &c in candidates {
        let dist = strsim::damerau_levenshtein(&lw, c);
        let jw = strsim::jaro_winkler(&lw, c);
        let close =
            dist <= 1 || (dist <= 2 && c.len() > 4) || (dist <= 3 && c.len() > 10) || jw >= 0.9;
        if close && best.is_none_or(|(_, s)| jw > s) {
            best = Some((c, jw));
        }
    }
    best.map(|(c, _)| c)
}

/// `5m`, `1h 30m`, `90s` (humantime). Zero is refused: every duration in a recipe is a limit
/// or a delay where zero makes no sense.
pub fn parse_duration(s: &str) -> Result<Duration, Problem> {
    let t = s.trim();
    if !t.is_empty() && t.chars().all(|c| c.is_ascii_digit()) {
        return Err(Problem::new(
            None,
            format!("duration `{s}` has no unit"),
            format!("add a unit, e.g. \"{t}s\" or \"{t}m\""),
        ));
    }
    match humantime::parse_duration(t) {
        Ok(d) if d.is_zero() => Err(Problem::new(
            None,
            "duration must be greater than zero",
            "use e.g. \"30s\", \"5m\" or \"1h\"",
        )),
        Ok(d) => Ok(d),
        Err(e) => Err(Problem::new(
            None,
            format!("invalid duration `{s}`: {e}"),
            "write a duration like \"90s\", \"5m\", \"1h 30m\" (units: s, m, h, d)",
        )),
    }
}

fn is_hex_lower(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `prefix-` followed by 8 or 17 lowercase hex digits (EC2 resource ids).
pub fn check_resource_id(s: &str, prefix: &str, what: &str) -> Result<(), Problem> {
    let ok = s
        .strip_prefix(prefix)
        .and_then(|r| r.strip_prefix('-'))
        .is_some_and(|r| (r.len() == 8 || r.len() == 17) && is_hex_lower(r));
    if ok {
        Ok(())
    } else {
        Err(Problem::new(
            None,
            format!("`{s}` is not a valid {what} id"),
            format!(
                "{what} ids look like `{prefix}-0123456789abcdef0` ({prefix}- and 8 or 17 lowercase hex digits)"
            ),
        ))
    }
}

/// `family.size`, e.g. `t3.micro`, `m7g.2xlarge`, `u-6tb1.metal`.
pub fn check_instance_type(s: &str) -> Result<(), Problem> {
    let ok = match s.split_once('.') {
        Some((family, size)) => {
            family.starts_with(|c: char| c.is_ascii_lowercase())
                && family
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !size.is_empty()
                && size
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        }
        None => false,
    };
    if ok {
        Ok(())
    } else {
        Err(Problem::new(
            None,
            format!("`{s}` is not an instance type"),
            "instance types are `family.size` in lower case, e.g. \"t3.micro\" or \"m7g.large\"",
        ))
    }
}

/// IPv4 or IPv6 CIDR block.
pub fn check_cidr(s: &str) -> Result<(), Problem> {
    let bad = |why: &str| {
        Problem::new(
            None,
            format!("`{s}` is not a CIDR block: {why}"),
            "write an address and prefix length, e.g. \"10.0.0.0/16\", \"203.0.113.7/32\" or \"2001:db8::/32\"",
        )
    };
    let Some((addr, len)) = s.split_once('/') else {
        return Err(bad("missing the /prefix length"));
    };
    let Ok(len) = len.parse::<u8>() else {
        return Err(bad("the prefix length is not a number"));
    };
    match addr.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(_)) if len <= 32 => Ok(()),
        Ok(std::net::IpAddr::V6(_)) if len <= 128 => Ok(()),
        Ok(_) => Err(bad("prefix length too long")),
        Err(_) => Err(bad("not an IP address")),
    }
}

/// A Linux user or group name, or a numeric id.
fn is_account_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && s.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// `user` or `user:group`.
pub fn check_owner(s: &str) -> Result<(), Problem> {
    let ok = match s.split_once(':') {
        Some((u, g)) => is_account_name(u) && is_account_name(g),
        None => is_account_name(s),
    };
    if ok {
        Ok(())
    } else {
        Err(Problem::new(
            None,
            format!("`{s}` is not a valid owner"),
            "write \"user\" or \"user:group\" (names or numeric ids)",
        ))
    }
}

/// An octal mode string: `"0644"`, `"644"`, `"0o755"`; at most `0o7777`.
pub fn parse_mode(s: &str) -> Result<u32, Problem> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    let parsed = if !digits.is_empty()
        && digits.len() <= 5
        && digits.chars().all(|c| ('0'..='7').contains(&c))
    {
        u32::from_str_radix(digits, 8).ok()
    } else {
        None
    };
    match parsed {
        Some(m) if m <= 0o7777 => Ok(m),
        Some(_) => Err(Problem::new(
            None,
            format!("mode `{s}` is larger than 0o7777"),
            "use at most four octal digits, e.g. \"0644\" or \"4755\"",
        )),
        None => Err(Problem::new(
            None,
            format!("mode `{s}` is not an octal number"),
            "write the mode as an octal string, e.g. \"0644\" or \"0755\"",
        )),
    }
}

/// A recipe name: used in tags and image names.
pub fn check_recipe_name(s: &str) -> Result<(), Problem> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(Problem::new(
            None,
            format!("`{s}` is not a valid recipe name"),
            "use 1-64 characters: letters, digits, '-', '_' and '.', starting with a letter or digit",
        ))
    }
}

fn ami_name_char_ok(c: char) -> bool {
    c.is_ascii_alphanumeric() || " ()[]./-'@_".contains(c)
}

/// Validates an image-name template: known placeholders only, and after substituting
/// representative values 3–128 characters from the AMI name alphabet.
pub fn check_image_name(template: &str, recipe: &str) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut expanded = String::new();
    let mut i = 0;
    let bytes = template.as_bytes();
    while i < template.len() {
        let c = template[i..].chars().next().unwrap();
        if c == '{' {
            match template[i + 1..].find(['}', '{']) {
                Some(off) if bytes[i + 1 + off] == b'}' => {
                    let name = &template[i + 1..i + 1 + off];
                    let end = i + 2 + off;
                    match IMAGE_PLACEHOLDERS.iter().find(|(n, _)| *n == name) {
                        // an unresolved {var.X}/{env.X}: already reported where it is substituted
                        None if name.starts_with("var.") || name.starts_with("env.") => {
                            expanded.push('x');
                        }
                        Some(("recipe", _)) => expanded.push_str(recipe),
                        Some((_, v)) => expanded.push_str(v),
                        None => {
                            let names: Vec<&str> =
                                IMAGE_PLACEHOLDERS.iter().map(|(n, _)| *n).collect();
                            let help = match suggest(name, &names) {
                                Some(s) => format!("did you mean `{{{s}}}`? Image names know {{recipe}} {{hash}} {{short_hash}} {{timestamp}} {{date}}"),
                                None => "image names know {recipe} {hash} {short_hash} {timestamp} {date}; use {var.NAME} for your own values".to_string(),
                            };
                            problems.push(Problem::new(
                                Some(i..end),
                                format!("unknown placeholder `{{{name}}}` in image name"),
                                help,
                            ));
                        }
                    }
                    i = end;
                    continue;
                }
                _ => {
                    problems.push(Problem::new(
                        Some(i..i + 1),
                        "unclosed `{` in image name",
                        "placeholders are written {name}; braces are not allowed in AMI names otherwise",
                    ));
                    i += 1;
                    continue;
                }
            }
        }
        if !ami_name_char_ok(c) {
            if !problems
                .iter()
                .any(|p| p.message.contains(&format!("`{c}`")))
            {
                problems.push(Problem::new(
                    Some(i..i + c.len_utf8()),
                    format!("image name contains `{c}`, which AMI names may not contain"),
                    "AMI names allow letters, digits, spaces and ( ) [ ] . / - ' @ _",
                ));
            }
        } else {
            expanded.push(c);
        }
        i += c.len_utf8();
    }
    let n = expanded.chars().count();
    if problems.is_empty() && !(3..=128).contains(&n) {
        problems.push(Problem::new(
            None,
            format!("image name would be {n} characters long; AMI names must be 3-128"),
            format!(
                "with representative values ({{hash}} = 64 chars, {{short_hash}} = 12, {{timestamp}} = 16, {{date}} = 10) the name is `{expanded}`; {}",
                if n < 3 { "make it longer" } else { "shorten it, e.g. use {short_hash} instead of {hash}" }
            ),
        ));
    }
    problems
}

/// Tag key and value limits for one tag.
pub fn check_tag(key: &str, value: &str) -> Vec<(bool, Problem)> {
    // (true = problem is with the key, false = with the value)
    let mut out = Vec::new();
    if key.is_empty() {
        out.push((
            true,
            Problem::new(None, "tag key is empty", "give the tag a key"),
        ));
    }
    if key.chars().count() > 128 {
        out.push((
            true,
            Problem::new(
                None,
                format!(
                    "tag key is {} characters long (EC2 allows 128)",
                    key.chars().count()
                ),
                "shorten the key to at most 128 characters",
            ),
        ));
    }
    if key.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("aws:")) {
        out.push((
            true,
            Problem::new(
                None,
                format!("tag key `{key}` starts with `aws:`"),
                "the aws: prefix is reserved by AWS; choose another key",
            ),
        ));
    }
    if key
        .get(..5)
        .is_some_and(|p| p.eq_ignore_ascii_case("bake:"))
    {
        out.push((
            true,
            Problem::new(
                None,
                format!("tag key `{key}` starts with `bake:`"),
                "bake: tags are set by bake itself; choose another key",
            ),
        ));
    }
    if value.chars().count() > 256 {
        out.push((
            false,
            Problem::new(
                None,
                format!(
                    "tag value is {} characters long (EC2 allows 256)",
                    value.chars().count()
                ),
                "shorten the value to at most 256 characters",
            ),
        ));
    }
    out
}

/// Too many tags for one resource, counting the ones bake adds.
pub fn check_tag_count(n: usize) -> Result<(), Problem> {
    if n + RESERVED_TAGS > MAX_TAGS {
        Err(Problem::new(
            None,
            format!(
                "{n} tags is too many: EC2 allows {MAX_TAGS} per resource and bake reserves {RESERVED_TAGS} for its own bake:* tags"
            ),
            format!("use at most {} tags here", MAX_TAGS - RESERVED_TAGS),
        ))
    } else {
        Ok(())
    }
}

/// S3 bucket naming rules (the common subset).
pub fn check_bucket(s: &str) -> Result<(), Problem> {
    let ok = (3..=63).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
        && !s.contains("..");
    if ok {
        Ok(())
    } else {
        Err(Problem::new(
            None,
            format!("`{s}` is not a valid S3 bucket name"),
            "bucket names are 3-63 characters: lower-case letters, digits, '-' and '.', starting and ending with a letter or digit (a bucket name, not an s3:// URL)",
        ))
    }
}

/// A shell environment variable name.
pub fn is_env_name(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A variable name (`{var.NAME}`).
pub fn is_var_name(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// An IAM instance profile name or ARN.
pub fn check_instance_profile(s: &str) -> Result<(), Problem> {
    let name = if s.starts_with("arn:") {
        match s.split_once(":instance-profile/") {
            Some((_, rest)) => rest.rsplit('/').next().unwrap_or(""),
            None => "",
        }
    } else {
        s
    };
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+=,.@_-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(Problem::new(
            None,
            format!("`{s}` is not an instance profile name or ARN"),
            "give the instance profile name (letters, digits, +=,.@_-) or its ARN arn:aws:iam::ACCOUNT:instance-profile/NAME",
        ))
    }
}

/// A KMS key: id (UUID), `alias/NAME`, or an ARN.
pub fn check_kms_key(s: &str) -> Result<(), Problem> {
    let uuid = s.len() == 36
        && s.char_indices().all(|(i, c)| {
            if [8, 13, 18, 23].contains(&i) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        });
    let mrk = s.starts_with("mrk-") && s.len() > 4 && s[4..].chars().all(|c| c.is_ascii_hexdigit());
    let ok = uuid
        || mrk
        || (s.starts_with("alias/") && s.len() > 6)
        || (s.starts_with("arn:") && s.contains(":kms:"));
    if ok {
        Ok(())
    } else {
        Err(Problem::new(
            None,
            format!("`{s}` is not a KMS key id, alias or ARN"),
            "use a key id (1234abcd-12ab-34cd-56ef-1234567890ab), \"alias/NAME\" or a key ARN",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        let keys = [
            "instance_type",
            "subnet_id",
            "security_group_ids",
            "user_data",
            "user_data_file",
        ];
        assert_eq!(suggest("instnce_type", &keys), Some("instance_type"));
        assert_eq!(suggest("subnet", &keys), Some("subnet_id"));
        assert_eq!(suggest("userdata", &keys), Some("user_data"));
        assert_eq!(suggest("Instance_Type", &keys), Some("instance_type"));
        assert_eq!(suggest("zzz", &keys), None);
        assert_eq!(suggest("step", &["name", "steps", "upload"]), Some("steps"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1h 30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert!(parse_duration("300").unwrap_err().help.contains("\"300s\""));
        assert!(parse_duration("5 minutes please").is_err());
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn ids() {
        assert!(check_resource_id("ami-0123456789abcdef0", "ami", "AMI").is_ok());
        assert!(check_resource_id("ami-12345678", "ami", "AMI").is_ok());
        assert!(check_resource_id("ami-123456789", "ami", "AMI").is_err());
        assert!(check_resource_id("ami-0123456789ABCDEF0", "ami", "AMI").is_err());
        assert!(check_resource_id("sg-12345678", "sg", "security group").is_ok());
        assert!(check_resource_id("subnet-1234567g", "subnet", "subnet").is_err());
    }

    #[test]
    fn instance_types() {
        for ok in [
            "t3.micro",
            "m7g.2xlarge",
            "u-6tb1.metal",
            "c5n.18xlarge",
            "mac2-m2pro.metal",
        ] {
            assert!(check_instance_type(ok).is_ok(), "{ok}");
        }
        for bad in ["t3", "T3.micro", "t3.micro.x", ".micro", "t3."] {
            assert!(check_instance_type(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cidrs() {
        assert!(check_cidr("10.0.0.0/16").is_ok());
        assert!(check_cidr("0.0.0.0/0").is_ok());
        assert!(check_cidr("2001:db8::/32").is_ok());
        assert!(check_cidr("10.0.0.0").is_err());
        assert!(check_cidr("10.0.0.0/33").is_err());
        assert!(check_cidr("10.0.0.300/8").is_err());
    }

    #[test]
    fn modes_and_owners() {
        assert_eq!(parse_mode("0644").unwrap(), 0o644);
        assert_eq!(parse_mode("755").unwrap(), 0o755);
        assert_eq!(parse_mode("0o4755").unwrap(), 0o4755);
        assert!(parse_mode("0888").is_err());
        assert!(parse_mode("17777").unwrap_err().message.contains("larger"));
        assert!(check_owner("web").is_ok());
        assert!(check_owner("web:web").is_ok());
        assert!(check_owner("1000:1000").is_ok());
        assert!(check_owner("web:").is_err());
        assert!(check_owner("a b").is_err());
    }

    #[test]
    fn image_names() {
        assert!(check_image_name("{recipe}-{timestamp}-{short_hash}", "web").is_empty());
        assert!(check_image_name("{recipe}-{hash}", "web").is_empty());
        let p = check_image_name("web-{foo}", "web");
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].at, Some(4..9));
        assert!(p[0].message.contains("unknown placeholder `{foo}`"));
        let p = check_image_name("web-{hsah}", "web");
        assert!(p[0].help.contains("did you mean `{hash}`"));
        let p = check_image_name("web:{hash}", "web");
        assert_eq!(p[0].at, Some(3..4));
        assert!(check_image_name("ab", "x")[0].message.contains("3-128"));
        let long = format!("{}-{{hash}}", "x".repeat(70));
        assert!(check_image_name(&long, "x")[0].message.contains("3-128"));
        assert!(
            check_image_name("web-{hash", "web")[0]
                .message
                .contains("unclosed")
        );
        assert!(check_image_name("web-{var.unknown}-{hash}", "web").is_empty());
        assert!(check_image_name("{recipe} (v1) [x] it's@a_b/c.d", "web").is_empty());
    }

    #[test]
    fn tags() {
        assert!(check_tag("role", "web").is_empty());
        assert!(check_tag("aws:foo", "x")[0].1.message.contains("aws:"));
        assert!(check_tag("AWS:foo", "x")[0].0);
        assert!(check_tag("bake:recipe", "x")[0].1.message.contains("bake:"));
        assert!(
            check_tag(&"k".repeat(129), "x")[0]
                .1
                .message
                .contains("128")
        );
        assert!(check_tag(&"k".repeat(128), &"v".repeat(256)).is_empty());
        assert!(!check_tag("k", &"v".repeat(257))[0].0);
        assert!(check_tag("ab€", "ü").is_empty());
        assert!(check_tag("a€", "x").is_empty());
        assert!(check_tag_count(45).is_ok());
        assert!(check_tag_count(46).is_err());
    }

    #[test]
    fn misc() {
        assert!(check_bucket("my-bucket.1").is_ok());
        assert!(check_bucket("s3://my-bucket").is_err());
        assert!(check_bucket("My-Bucket").is_err());
        assert!(check_instance_profile("bake-builder").is_ok());
        assert!(
            check_instance_profile("arn:aws:iam::123456789012:instance-profile/path/bake").is_ok()
        );
        assert!(check_instance_profile("bad name").is_err());
        assert!(check_kms_key("alias/bake").is_ok());
        assert!(check_kms_key("1234abcd-12ab-34cd-56ef-1234567890ab").is_ok());
        assert!(
            check_kms_key(
                "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
            )
            .is_ok()
        );
        assert!(check_kms_key("mykey").is_err());
        assert!(check_recipe_name("web-1.2_x").is_ok());
        assert!(check_recipe_name("web app").is_err());
        assert!(check_recipe_name("-web").is_err());
    }
}
