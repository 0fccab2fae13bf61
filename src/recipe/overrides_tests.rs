//! Unit tests of var files, `BAKE_VAR_*` and their precedence (`overrides.rs`).

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::Path;

use super::*;

fn names_values(v: &[Override]) -> Vec<(&str, &str)> {
    v.iter()
        .map(|o| (o.name.as_str(), o.value.as_str()))
        .collect()
}

#[test]
fn a_var_file_gives_its_pairs_with_where_each_name_is() {
    let src = "# prod values\nversion = \"1.2.3\"\n  db-host = 'db.internal'\nempty = \"\"\nbraces = \"{env.HOME}\"\n";
    let got = parse_var_file(src, Path::new("prod.toml")).unwrap();
    assert_eq!(
        names_values(&got),
        vec![
            ("version", "1.2.3"),
            ("db-host", "db.internal"),
            ("empty", ""),
            // literal, as with --var: no substitution in var files
            ("braces", "{env.HOME}"),
        ]
    );
    assert_eq!(
        got[1].origin,
        Origin::File {
            path: "prod.toml".into(),
            line: 3,
            col: 3
        }
    );
    assert!(
        parse_var_file("# nothing\n", Path::new("e.toml"))
            .unwrap()
            .is_empty()
    );
}

#[test]
fn non_string_values_are_each_reported_at_file_line_col() {
    let src = "port = 8080\nok = \"x\"\ndebug = true\nlist = [\"a\"]\nwhen = 1979-05-27\n[section]\nk = \"v\"\n";
    let e = parse_var_file(src, Path::new("vars.toml")).unwrap_err();
    let out = e.render_plain();
    assert_eq!(e.len(), 5, "{out}");
    for want in [
        "vars.toml:1:8: error: variable `port` must be a string, not an integer",
        "help: quote it: port = \"8080\"",
        "vars.toml:3:9: error: variable `debug` must be a string, not a boolean",
        "vars.toml:4:8: error: variable `list` must be a string, not an array",
        "vars.toml:5:8: error: variable `when` must be a string, not a date-time",
        "vars.toml:6:2: error: `section` in a var file is a table",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
}

#[test]
fn bad_names_syntax_and_missing_files_are_errors() {
    let e = parse_var_file("\"two words\" = \"x\"\n", Path::new("v.toml")).unwrap_err();
    assert!(
        e.render_plain()
            .starts_with("v.toml:1:1: error: `two words` is not a valid variable name"),
        "{}",
        e.render_plain()
    );
    let e = parse_var_file("a = \"1\"\na = \"2\"\n", Path::new("v.toml")).unwrap_err();
    assert!(
        e.render_plain().contains("v.toml:2:1: error: invalid TOML"),
        "{}",
        e.render_plain()
    );
    let e = read_var_file(Path::new("/nonexistent/bake/vars.toml")).unwrap_err();
    assert!(
        e.render_plain()
            .starts_with("/nonexistent/bake/vars.toml: error: cannot read var file"),
        "{}",
        e.render_plain()
    );
}

#[test]
fn only_bake_var_entries_of_the_environment_count() {
    let env = [
        ("PATH", "/bin"),
        ("BAKE_VAR_version", "2.0"),
        ("bake_var_lower", "ignored: the prefix is case-sensitive"),
        ("BAKE_VAR_db-host", "db"),
        ("BAKE_VARIABLE", "not the prefix"),
    ];
    let got = env_overrides(env).unwrap();
    assert_eq!(
        names_values(&got),
        vec![("version", "2.0"), ("db-host", "db")]
    );
    assert_eq!(
        got[0].origin,
        Origin::Env {
            var: "BAKE_VAR_version".into()
        }
    );
}

#[test]
fn malformed_bake_var_entries_are_all_reported() {
    let bad_value = OsString::from_vec(vec![0xff, 0xfe]);
    let env: Vec<(OsString, OsString)> = vec![
        ("BAKE_VAR_".into(), "x".into()),
        ("BAKE_VAR_a.b".into(), "x".into()),
        ("BAKE_VAR_ok".into(), bad_value),
        ("BAKE_VAR_fine".into(), "y".into()),
    ];
    let errs = env_overrides(env).unwrap_err();
    assert_eq!(
        errs,
        vec![
            EnvVarError::BadName {
                var: "BAKE_VAR_".into(),
                name: "".into()
            },
            EnvVarError::BadName {
                var: "BAKE_VAR_a.b".into(),
                name: "a.b".into()
            },
            EnvVarError::NotUtf8 {
                var: "BAKE_VAR_ok".into()
            },
        ]
    );
    assert_eq!(
        errs[1].to_string(),
        "environment variable BAKE_VAR_a.b: `a.b` is not a variable name (letters, digits, _ and -, starting with a letter or _)"
    );
}

const RECIPE: &str = r#"name = "p"
sensitive = ["token"]
[variables]
a = "default-a"
b = "default-b"
c = "default-c"
d = "default-d"
token = "default-token"
[source]
ami = "ami-0123456789abcdef0"
[builder]
instance_type = "t3.micro"
[ssh]
username = "admin"
[[step]]
name = "s"
run = "echo {var.token}"
[image]
name = "{recipe}-{hash}"
tags = { a = "{var.a}", b = "{var.b}", c = "{var.c}", d = "{var.d}" }
"#;

fn load(o: &Overrides) -> Result<super::super::Recipe, RecipeErrors> {
    super::super::load_str_with_overrides(RECIPE, Path::new("p.toml"), o, &|_| None)
}

fn tags(r: &super::super::Recipe) -> Vec<(&str, &str)> {
    r.image
        .tags
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

#[test]
fn precedence_is_default_then_files_then_environment_then_flags_whatever_the_call_order() {
    let mut o = Overrides::new();
    // added highest precedence first, to show the order of the calls does not matter
    o.add_flags(&[("d".into(), "flag-d".into())]);
    o.add_env([
        ("BAKE_VAR_c", "env-c"),
        ("BAKE_VAR_d", "env-d"),
        ("BAKE_VAR_token", "env-token"),
    ])
    .unwrap();
    o.add_var_file_str(
        "b = \"file1-b\"\nc = \"file1-c\"\nd = \"file1-d\"\n",
        Path::new("one.toml"),
    )
    .unwrap();
    o.add_var_file_str("b = \"file2-b\"\n", Path::new("two.toml"))
        .unwrap();
    let r = load(&o).unwrap_or_else(|e| panic!("{}", e.render_plain()));
    assert_eq!(
        tags(&r),
        vec![
            ("a", "default-a"),
            ("b", "file2-b"), // the later file wins
            ("c", "env-c"),
            ("d", "flag-d"),
        ]
    );
    // an overridden sensitive variable is still a secret, with its new value
    assert_eq!(r.secrets, vec!["env-token".to_string()]);
    assert_eq!(
        o.to_pairs(),
        vec![
            ("b".to_string(), "file2-b".to_string()),
            ("c".to_string(), "env-c".to_string()),
            ("d".to_string(), "flag-d".to_string()),
            ("token".to_string(), "env-token".to_string()),
        ]
    );
}

#[test]
fn undeclared_names_are_errors_from_files_and_flags_but_not_from_the_environment() {
    let mut o = Overrides::new();
    o.add_env([("BAKE_VAR_other_recipes_var", "x")]).unwrap();
    assert!(load(&o).is_ok());

    o.add_var_file_str("a = \"ok\"\n\nbb = \"typo\"\n", Path::new("vars/prod.toml"))
        .unwrap();
    o.add_flags(&[("zzz".into(), "1".into())]);
    let e = load(&o).unwrap_err();
    let out = e.render_plain();
    assert_eq!(e.len(), 2, "{out}");
    assert!(
        out.contains("error: var file vars/prod.toml:3:1: the recipe declares no variable `bb`"),
        "{out}"
    );
    assert!(
        out.contains("help: did you mean `b`? (fix the name in vars/prod.toml)"),
        "{out}"
    );
    // --var keeps its own message
    assert!(
        out.contains("error: --var `zzz`: the recipe declares no variable `zzz`"),
        "{out}"
    );
}

#[test]
fn load_with_plain_pairs_behaves_as_flags() {
    let pairs = [("a".to_string(), "x".to_string())];
    let r = super::super::load_str_with_env(RECIPE, Path::new("p.toml"), &pairs, &|_| None)
        .unwrap_or_else(|e| panic!("{}", e.render_plain()));
    assert_eq!(r.image.tags["a"], "x");
    let mut o = Overrides::new();
    o.add_flags(&pairs);
    assert_eq!(load(&o).unwrap().image.tags, r.image.tags);
}
