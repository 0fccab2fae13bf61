//! The recipe JSON Schema (`schema/recipe.schema.json`, for editors) against the parser:
//! the same sections with the same keys both ways, the same enum values, and the example
//! recipes valid under it. A parser error of a kind the schema can express (unknown key,
//! wrong type, missing key, value out of range, …) in `tests/bad-recipes/` must be a schema
//! error too.
//!
//! The validator here implements exactly the JSON Schema keywords the schema uses and
//! refuses any other, so the schema cannot start relying on a keyword nobody tests.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

type Sections = BTreeMap<String, BTreeSet<String>>;

/// Keys the schema documents before the parser on this branch knows them (the parser's
/// branch is merged separately). Once the parser knows one, `schema_and_parser_know_the_same_keys`
/// fails and says to remove it from here.
const PENDING: &[(&str, &str)] = &[];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn schema() -> Value {
    let p = repo().join("schema/recipe.schema.json");
    let s = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&s).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn toml_to_json(src: &str, what: &Path) -> Value {
    let v: toml::Value = toml::from_str(src).unwrap_or_else(|e| panic!("{}: {e}", what.display()));
    serde_json::to_value(v).unwrap()
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

// ---- the schema's sections --------------------------------------------------------------

/// The sections of the schema's main tree (objects with `properties`, reached through
/// `properties` and `items`), each with its keys, named as `bake::recipe::known_keys` names
/// them.
fn schema_sections(schema: &Value) -> Sections {
    fn walk(node: &Value, path: &str, out: &mut Sections) {
        if let Some(props) = node.get("properties").and_then(Value::as_object) {
            out.insert(path.to_string(), props.keys().cloned().collect());
            for (k, sub) in props {
                walk(sub, &join(path, k), out);
            }
        }
        if let Some(items) = node.get("items") {
            walk(items, &format!("{path}[]"), out);
        }
    }
    let mut out = Sections::new();
    walk(schema, "", &mut out);
    out
}

/// Every (section, key) the schema mentions anywhere: in `properties` and `required` of the
/// main tree and of the conditional branches (`if`/`then`/`else`, `oneOf`, `not`), and in
/// `dependencies`. A key misspelt in a branch would otherwise be silently ignored.
fn schema_mentions(schema: &Value) -> BTreeSet<(String, String)> {
    fn walk(node: &Value, path: &str, out: &mut BTreeSet<(String, String)>) {
        let Some(obj) = node.as_object() else { return };
        if let Some(props) = obj.get("properties").and_then(Value::as_object) {
            for (k, sub) in props {
                out.insert((path.to_string(), k.clone()));
                walk(sub, &join(path, k), out);
            }
        }
        for r in obj
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            out.insert((path.to_string(), r.as_str().unwrap().to_string()));
        }
        if let Some(deps) = obj.get("dependencies").and_then(Value::as_object) {
            for (k, v) in deps {
                out.insert((path.to_string(), k.clone()));
                for d in v.as_array().unwrap() {
                    out.insert((path.to_string(), d.as_str().unwrap().to_string()));
                }
            }
        }
        for key in ["if", "then", "else", "not"] {
            if let Some(sub) = obj.get(key) {
                walk(sub, path, out);
            }
        }
        for sub in obj
            .get("oneOf")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            walk(sub, path, out);
        }
        if let Some(items) = obj.get("items") {
            walk(items, &format!("{path}[]"), out);
        }
    }
    let mut out = BTreeSet::new();
    walk(schema, "", &mut out);
    out
}

/// The differences between the parser's sections and the schema's, one line each; empty
/// when they agree.
fn compare(parser: &Sections, schema: &Sections) -> Vec<String> {
    let mut out = Vec::new();
    let paths: BTreeSet<&String> = parser.keys().chain(schema.keys()).collect();
    for p in paths {
        let shown = if p.is_empty() { "(top level)" } else { p };
        match (parser.get(p), schema.get(p)) {
            (Some(_), None) => {
                out.push(format!("section {shown}: in the parser, not in the schema"));
            }
            (None, Some(_)) => {
                out.push(format!("section {shown}: in the schema, not in the parser"));
            }
            (Some(a), Some(b)) => {
                for k in a.difference(b) {
                    out.push(format!(
                        "{shown}: `{k}` is known to the parser but missing from the schema"
                    ));
                }
                for k in b.difference(a) {
                    out.push(format!(
                        "{shown}: `{k}` is in the schema but the parser rejects it"
                    ));
                }
            }
            (None, None) => unreachable!(),
        }
    }
    out
}

fn parser_sections() -> Sections {
    bake::recipe::known_keys()
        .into_iter()
        .map(|(p, keys)| (p.to_string(), keys.iter().map(|k| k.to_string()).collect()))
        .collect()
}

/// The schema node of the key at `path` (`a.b`, `x[].k`) in the main tree.
fn node_at<'a>(schema: &'a Value, path: &str) -> Option<&'a Value> {
    let mut node = schema;
    for seg in path.split('.') {
        let (key, items) = match seg.strip_suffix("[]") {
            Some(k) => (k, true),
            None => (seg, false),
        };
        node = node.get("properties")?.get(key)?;
        if items {
            node = node.get("items")?;
        }
    }
    Some(node)
}

#[test]
fn schema_and_parser_know_the_same_keys() {
    let schema = schema();
    let mut sections = schema_sections(&schema);
    let parser = parser_sections();
    for (section, key) in PENDING {
        assert!(
            !parser[*section].contains(*key),
            "the parser now knows `{key}` in {section}: remove it from PENDING in tests/recipe_schema.rs"
        );
        assert!(
            sections.get_mut(*section).unwrap().remove(*key),
            "PENDING names `{key}` in {section}, which the schema does not have"
        );
    }
    let diff = compare(&parser, &sections);
    assert!(
        diff.is_empty(),
        "schema/recipe.schema.json and the parser disagree:\n{}",
        diff.join("\n")
    );

    let mut all = sections.clone();
    for (section, key) in PENDING {
        all.get_mut(*section).unwrap().insert(key.to_string());
    }
    let stray: Vec<String> = schema_mentions(&schema)
        .into_iter()
        .filter(|(p, k)| !all.get(p).is_some_and(|keys| keys.contains(k)))
        .map(|(p, k)| format!("`{k}` in {}", if p.is_empty() { "(top level)" } else { &p }))
        .collect();
    assert!(
        stray.is_empty(),
        "the schema's conditions name keys no section has: {stray:?}"
    );
}

#[test]
fn every_section_rejects_unknown_keys_as_the_parser_does() {
    let schema = schema();
    for (path, _) in bake::recipe::known_keys() {
        let node = if path.is_empty() {
            Some(&schema)
        } else {
            node_at(&schema, path)
        };
        let node = node.unwrap_or_else(|| panic!("no section {path} in the schema"));
        assert_eq!(
            node.get("additionalProperties"),
            Some(&Value::Bool(false)),
            "section `{path}` of the schema must have additionalProperties: false"
        );
    }
}

#[test]
fn schema_enums_are_the_parsers_values() {
    let schema = schema();
    for (path, values) in bake::recipe::known_values() {
        let node = node_at(&schema, path).unwrap_or_else(|| panic!("no {path} in the schema"));
        let got: Vec<&str> = node["enum"]
            .as_array()
            .unwrap_or_else(|| panic!("{path} has no enum in the schema"))
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(got, values, "enum of {path}");
    }
}

#[test]
fn the_comparison_catches_a_key_missing_on_either_side() {
    let sections = |list: &[(&str, &[&str])]| -> Sections {
        list.iter()
            .map(|(p, ks)| (p.to_string(), ks.iter().map(|k| k.to_string()).collect()))
            .collect()
    };
    let parser = sections(&[
        ("", &["name", "builder"]),
        ("builder", &["instance_type", "subnet_id"]),
    ]);
    assert!(compare(&parser, &parser).is_empty());
    // the parser learnt a key the schema lacks
    let schema = sections(&[("", &["name", "builder"]), ("builder", &["instance_type"])]);
    assert_eq!(
        compare(&parser, &schema),
        vec!["builder: `subnet_id` is known to the parser but missing from the schema"]
    );
    // a key planted in the schema that the parser would reject
    let schema = sections(&[
        ("", &["name", "builder"]),
        ("builder", &["instance_type", "subnet_id", "subnet"]),
    ]);
    assert_eq!(
        compare(&parser, &schema),
        vec!["builder: `subnet` is in the schema but the parser rejects it"]
    );
    // whole sections
    let schema = sections(&[
        ("", &["name", "builder"]),
        ("builder", &["instance_type", "subnet_id"]),
        ("ssh", &["port"]),
    ]);
    assert_eq!(
        compare(&parser, &schema),
        vec!["section ssh: in the schema, not in the parser"]
    );
    assert_eq!(
        compare(&schema, &parser),
        vec!["section ssh: in the parser, not in the schema"]
    );
    // and the real schema, with a key planted, fails the real comparison
    let mut planted = schema_sections(&self::schema());
    planted
        .get_mut("ssh")
        .unwrap()
        .insert("ssh_password".to_string());
    assert!(
        compare(&parser_sections(), &planted).contains(
            &"ssh: `ssh_password` is in the schema but the parser rejects it".to_string()
        )
    );
}

// ---- a validator for the keywords the schema uses ---------------------------------------

/// Keywords that only describe (for editors) and never reject.
const ANNOTATIONS: &[&str] = &[
    "$schema",
    "title",
    "description",
    "default",
    "examples",
    "x-taplo",
];

fn type_ok(t: &str, v: &Value) -> bool {
    match t {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "boolean" => v.is_boolean(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        other => panic!("unknown type {other:?} in the schema"),
    }
}

fn num(s: &Value) -> i64 {
    s.as_i64().expect("an integer bound")
}

/// Appends to `errors` every way `v` (at instance path `at`) breaks `schema`.
fn validate(schema: &Value, v: &Value, at: &str, errors: &mut Vec<String>) {
    let obj = schema.as_object().expect("a schema is an object");
    let mut fail = |msg: String| {
        errors.push(format!(
            "{}: {msg}",
            if at.is_empty() { "(top level)" } else { at }
        ));
    };
    let mut sub_errors = Vec::new();
    for (kw, s) in obj {
        match kw.as_str() {
            k if ANNOTATIONS.contains(&k) => {}
            "type" => {
                let ok = match s {
                    Value::String(t) => type_ok(t, v),
                    Value::Array(ts) => ts.iter().any(|t| type_ok(t.as_str().unwrap(), v)),
                    _ => panic!("bad type keyword"),
                };
                if !ok {
                    fail(format!("must be of type {s}, not {v}"));
                }
            }
            "enum" => {
                if !s.as_array().unwrap().contains(v) {
                    fail(format!("{v} is not one of {s}"));
                }
            }
            "const" => {
                if s != v {
                    fail(format!("{v} is not {s}"));
                }
            }
            "minLength" | "maxLength" => {
                if let Some(text) = v.as_str() {
                    let n = text.chars().count() as i64;
                    if (kw == "minLength" && n < num(s)) || (kw == "maxLength" && n > num(s)) {
                        fail(format!("{n} characters breaks {kw} {s}"));
                    }
                }
            }
            "minimum" | "maximum" => {
                if let Some(n) = v.as_i64()
                    && ((kw == "minimum" && n < num(s)) || (kw == "maximum" && n > num(s)))
                {
                    fail(format!("{n} breaks {kw} {s}"));
                }
            }
            "minItems" => {
                if let Some(a) = v.as_array()
                    && (a.len() as i64) < num(s)
                {
                    fail(format!("{} items, fewer than {s}", a.len()));
                }
            }
            "maxProperties" => {
                if let Some(o) = v.as_object()
                    && o.len() as i64 > num(s)
                {
                    fail(format!("{} entries, more than {s}", o.len()));
                }
            }
            "required" => {
                if let Some(o) = v.as_object() {
                    for r in s.as_array().unwrap() {
                        if !o.contains_key(r.as_str().unwrap()) {
                            fail(format!("missing required key {r}"));
                        }
                    }
                }
            }
            "dependencies" => {
                if let Some(o) = v.as_object() {
                    for (k, needs) in s.as_object().unwrap() {
                        for n in needs.as_array().expect("only array dependencies are used") {
                            if o.contains_key(k) && !o.contains_key(n.as_str().unwrap()) {
                                fail(format!("`{k}` needs {n}"));
                            }
                        }
                    }
                }
            }
            "properties" | "additionalProperties" | "propertyNames" => {
                // checked together below
            }
            "items" => {
                if let Some(a) = v.as_array() {
                    for (i, item) in a.iter().enumerate() {
                        validate(s, item, &format!("{at}[{i}]"), &mut sub_errors);
                    }
                }
            }
            "oneOf" => {
                let n = s
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|sub| valid(sub, v))
                    .count();
                if n != 1 {
                    fail(format!(
                        "matches {n} of the oneOf alternatives, not exactly 1"
                    ));
                }
            }
            "not" => {
                if valid(s, v) {
                    fail(format!("must not match {s}"));
                }
            }
            "if" => {
                let branch = if valid(s, v) {
                    obj.get("then")
                } else {
                    obj.get("else")
                };
                if let Some(b) = branch {
                    validate(b, v, at, &mut sub_errors);
                }
            }
            "then" | "else" => {}
            other => {
                panic!("the schema uses `{other}`, which this test's validator does not implement")
            }
        }
    }
    if let Some(o) = v.as_object() {
        let props = obj.get("properties").and_then(Value::as_object);
        for (k, item) in o {
            if let Some(names) = obj.get("propertyNames") {
                validate(
                    names,
                    &Value::String(k.clone()),
                    &join(at, &format!("<key {k}>")),
                    &mut sub_errors,
                );
            }
            match (
                props.and_then(|p| p.get(k)),
                obj.get("additionalProperties"),
            ) {
                (Some(sub), _) => validate(sub, item, &join(at, k), &mut sub_errors),
                (None, Some(Value::Bool(false))) => sub_errors.push(format!(
                    "{}: unknown key `{k}`",
                    if at.is_empty() { "(top level)" } else { at }
                )),
                (None, Some(sub @ Value::Object(_))) => {
                    validate(sub, item, &join(at, k), &mut sub_errors);
                }
                (None, _) => {}
            }
        }
    }
    errors.append(&mut sub_errors);
}

fn valid(schema: &Value, v: &Value) -> bool {
    let mut e = Vec::new();
    validate(schema, v, "", &mut e);
    e.is_empty()
}

fn schema_errors(schema: &Value, src: &str, what: &Path) -> Vec<String> {
    let mut errors = Vec::new();
    validate(schema, &toml_to_json(src, what), "", &mut errors);
    errors
}

const MINIMAL: &str = r#"name = "m"
[source]
ami = "ami-0123456789abcdef0"
[builder]
instance_type = "t3.micro"
[ssh]
username = "admin"
[[step]]
name = "hello"
run = "true"
[image]
name = "{recipe}-{hash}"
"#;

#[test]
fn the_validator_rejects_what_it_should() {
    let schema = schema();
    let p = Path::new("t.toml");
    assert_eq!(schema_errors(&schema, MINIMAL, p), Vec::<String>::new());
    let cases: &[(&str, &str, &str)] = &[
        (
            "instance_type = \"t3.micro\"",
            "instance_type = \"t3.micro\"\ninstnce = 1",
            "builder: unknown key `instnce`",
        ),
        (
            "instance_type = \"t3.micro\"",
            "instance_type = 3",
            "builder.instance_type: must be of type \"string\"",
        ),
        (
            "username = \"admin\"",
            "username = \"admin\"\nport = 0",
            "ssh.port: 0 breaks minimum 1",
        ),
        (
            "username = \"admin\"",
            "username = \"admin\"\ninterface = \"public\"",
            "ssh.interface: \"public\" is not one of",
        ),
        (
            "username = \"admin\"",
            "port = 22",
            "ssh: missing required key \"username\"",
        ),
        (
            "run = \"true\"",
            "run = \"true\"\nscript = \"x.sh\"",
            "step[0]: matches 2 of the oneOf alternatives",
        ),
        (
            "name = \"m\"",
            "name = \"m\"\ncommunicator = \"ssm\"",
            "(top level): missing required key \"ssm\"",
        ),
        (
            "[image]",
            "[deploy]\ncheckpoint_delay = \"5m\"\n[image]",
            "deploy: `checkpoint_delay` needs \"checkpoint_percentages\"",
        ),
        (
            "[builder]",
            "[builder]\nrun_tags = { \"\" = \"x\" }",
            "builder.run_tags.<key >: 0 characters breaks minLength 1",
        ),
    ];
    for (from, to, want) in cases {
        assert!(MINIMAL.contains(from), "{from}");
        let src = MINIMAL.replacen(from, to, 1);
        let errors = schema_errors(&schema, &src, p);
        assert!(
            errors.iter().any(|e| e.starts_with(want)),
            "want {want:?} for {to:?}, got {errors:?}"
        );
        // the parser rejects each of them too
        assert!(
            bake::recipe::load_str_with_env(&src, p, &[], &|_| None).is_err(),
            "the parser accepts {to:?}"
        );
    }
}

#[test]
fn the_validator_refuses_keywords_it_does_not_implement() {
    let r =
        std::panic::catch_unwind(|| valid(&serde_json::json!({ "pattern": "^a" }), &Value::Null));
    assert!(r.is_err());
}

#[test]
fn example_recipes_conform_to_the_schema() {
    let schema = schema();
    let mut n = 0;
    for entry in std::fs::read_dir(repo().join("recipes")).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let src = std::fs::read_to_string(&p).unwrap();
        let errors = schema_errors(&schema, &src, &p);
        assert!(
            errors.is_empty(),
            "{} breaks the schema:\n{}",
            p.display(),
            errors.join("\n")
        );
        bake::recipe::load(&p, &[]).unwrap_or_else(|e| panic!("{}", e.render_plain()));
        n += 1;
    }
    assert!(n >= 3, "only {n} example recipes found");
}

/// Parser messages of the kinds the schema expresses too.
const SCHEMA_EXPRESSIBLE: &[&str] = &[
    "unknown key",
    "must be a string, not",
    "must be true or false",
    "must be a table",
    "must be an array",
    "must list strings",
    "must be strings, not",
    "must be a duration string",
    "is missing `",
    "has no [",
    "needs an [ssh] section",
    "needs builder.iam_instance_profile",
    "has no effect with communicator",
    "outside",
    "unknown volume type",
    "unknown architecture",
    "unknown communicator",
    "unknown ssh interface",
    "has both `ami` and `filter`",
    "needs `ami` or `filter`",
    "has both `run` and `script`",
    "needs `run` or `script`",
    "`owners` is empty",
    "checkpoint_delay is set without",
    "characters; EC2 allows 255",
    "tag key is 129 characters long",
    "tag value is 257 characters long",
    "tags is too many",
];

#[test]
fn bad_recipes_of_a_kind_the_schema_expresses_break_the_schema_too() {
    let schema = schema();
    let dir = repo().join("tests/bad-recipes");
    let mut checked = Vec::new();
    let mut missed = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let src = std::fs::read_to_string(&p).unwrap();
        if toml::from_str::<toml::Value>(&src).is_err() {
            continue; // a TOML syntax error: no document to validate
        }
        let expressible = src
            .lines()
            .take_while(|l| l.starts_with('#'))
            .filter_map(|l| l.strip_prefix("# expect:"))
            .any(|e| SCHEMA_EXPRESSIBLE.iter().any(|k| e.contains(k)));
        if !expressible {
            continue;
        }
        checked.push(p.file_name().unwrap().to_string_lossy().into_owned());
        if schema_errors(&schema, &src, &p).is_empty() {
            missed.push(p.display().to_string());
        }
    }
    assert!(
        missed.is_empty(),
        "the schema accepts these bad recipes: {missed:#?}"
    );
    assert!(
        checked.len() >= 40,
        "only {} corpus files checked: {checked:?}",
        checked.len()
    );
}
