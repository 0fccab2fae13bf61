//! Typed getters for a table's values (strings with substitution, booleans, bounded integers,
//! durations, string lists and maps, tags), local paths that must exist and absolute paths on
//! the builder. Each reports a precise problem and returns `None` when the value is unusable.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::de::DeValue;

use super::super::checks;
use super::sensitive::Exposed;
use super::walker::{Cx, Sp, Tbl, integer_of, type_name};

/// The (key, value) pairs of a table of strings, each with its span.
pub(super) type StringMap = Vec<(Sp<String>, Sp<String>)>;

impl Cx<'_> {
    /// A string with `{var.*}` / `{env.*}` substituted.
    pub(super) fn string(&mut self, t: &Tbl<'_, '_>, key: &str) -> Option<Sp<String>> {
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

    pub(super) fn req_string(
        &mut self,
        t: &Tbl<'_, '_>,
        key: &str,
        example: &str,
    ) -> Option<Sp<String>> {
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

    pub(super) fn boolean(&mut self, t: &Tbl<'_, '_>, key: &str) -> Option<bool> {
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

    pub(super) fn integer(
        &mut self,
        t: &Tbl<'_, '_>,
        key: &str,
        min: i64,
        max: i64,
    ) -> Option<Sp<i64>> {
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

    pub(super) fn duration(&mut self, t: &Tbl<'_, '_>, key: &str) -> Option<Sp<Duration>> {
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

    pub(super) fn string_list(
        &mut self,
        t: &Tbl<'_, '_>,
        key: &str,
    ) -> Option<Sp<Vec<Sp<String>>>> {
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
    pub(super) fn string_map(&mut self, t: &Tbl<'_, '_>, key: &str) -> Option<Sp<StringMap>> {
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

    pub(super) fn resolve(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.dir.join(p)
        }
    }

    /// Resolves a local path and checks it exists; returns (path, is_dir).
    pub(super) fn existing_path(&mut self, what: &str, s: &Sp<String>) -> Option<(PathBuf, bool)> {
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

    pub(super) fn tags(&mut self, t: &Tbl<'_, '_>, key: &str) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let Some(map) = self.string_map(t, key) else {
            return out;
        };
        if let Err(p) = checks::check_tag_count(map.v.len()) {
            self.problem(&map.span, "", p);
        }
        let what = format!("`{key}` in {}", t.name);
        for (k, v) in map.v {
            self.no_sensitive(&v.span, &what, Exposed::Tags);
            for (on_key, p) in checks::check_tag(&k.v, &v.v) {
                if on_key {
                    self.problem(&k.span, &k.v, p);
                } else {
                    self.problem(&v.span, &v.v, p);
                }
            }
            out.insert(k.v, v.v);
        }
        out
    }

    pub(super) fn absolute_remote(&mut self, t: &Tbl<'_, '_>, key: &str, s: &Sp<String>) -> bool {
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
