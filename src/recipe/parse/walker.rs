//! The section-independent walker over a recipe's spanned TOML tree: the parsing context that
//! collects every problem, tables and arrays of tables with display names, required and
//! mistyped keys, and unknown keys with "did you mean" suggestions and Packer hints.
//!
//! Section rules live in the sibling modules, one per recipe section; typed getters for
//! values are in `values.rs`, `{var.*}`/`{env.*}` substitution in `subst.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::PathBuf;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::super::checks::{self, Problem};
use super::super::diag::RecipeError;
use super::packer::packer_hint;

pub(super) type Span = Range<usize>;
pub(super) type V<'i> = Spanned<DeValue<'i>>;

/// A value with the byte range it came from.
#[derive(Debug, Clone)]
pub(super) struct Sp<T> {
    pub v: T,
    pub span: Span,
}

/// A table being read, with a display name for messages ("[builder]", "[[step]] #2").
pub(super) struct Tbl<'a, 'i> {
    pub t: &'a DeTable<'i>,
    pub span: Span,
    pub name: String,
}

pub(in crate::recipe) fn type_name(v: &DeValue<'_>) -> &'static str {
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

pub(super) fn integer_of(v: &DeValue<'_>) -> Option<i128> {
    match v {
        DeValue::Integer(i) => i128::from_str_radix(i.as_str(), i.radix()).ok(),
        _ => None,
    }
}

/// Everything one parse needs: the source (for spans), the recipe's directory, the variables
/// and the environment for substitution, and the problems found so far.
pub(super) struct Cx<'s> {
    pub src: &'s str,
    pub dir: PathBuf,
    pub errors: Vec<RecipeError>,
    pub vars: BTreeMap<String, String>,
    pub env: &'s dyn Fn(&str) -> Option<String>,
    /// Names of the variables listed in `sensitive`.
    pub sensitive: BTreeSet<String>,
    /// Every `{var.NAME}` substituted so far, with the span of its token in the source.
    pub var_uses: Vec<(String, Span)>,
}

impl<'s> Cx<'s> {
    pub(super) fn err(
        &mut self,
        span: Option<Span>,
        message: impl Into<String>,
        help: impl Into<String>,
    ) {
        self.errors.push(RecipeError::new(span, message, help));
    }

    /// Reports a [`Problem`] found in the string `value` whose TOML value sits at `span`:
    /// narrowed to the problem's place inside the string when the source spells the string
    /// literally (no escapes, no substitutions).
    pub(super) fn problem(&mut self, span: &Span, value: &str, p: Problem) {
        let at = match &p.at {
            Some(at) => self.inner_span(span, value, at.clone()),
            None => span.clone(),
        };
        self.err(Some(at), p.message, p.help);
    }

    /// Where to point for something missing from the whole recipe: the start of the first
    /// line that is not blank or a comment.
    pub(super) fn top_span(&self) -> Span {
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

    // ---- keys and tables ---------------------------------------------------------------

    /// Reports every key of `t` not in `known`, with the closest known key or the Packer
    /// equivalent as help.
    pub(super) fn keys(&mut self, t: &Tbl<'_, '_>, known: &[&str]) {
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

    pub(super) fn get<'a, 'i>(&self, t: &Tbl<'a, 'i>, key: &str) -> Option<(Span, &'a V<'i>)> {
        t.t.get_key_value(key).map(|(k, v)| (k.span(), v))
    }

    pub(super) fn wrong_type(
        &mut self,
        t: &Tbl<'_, '_>,
        key: &str,
        v: &V<'_>,
        expected: &str,
        help: String,
    ) {
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

    pub(super) fn missing(&mut self, t: &Tbl<'_, '_>, key: &str, example: &str) {
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

    pub(super) fn table<'a, 'i>(
        &mut self,
        t: &Tbl<'a, 'i>,
        key: &str,
        name: String,
    ) -> Option<Tbl<'a, 'i>> {
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

    pub(super) fn array_of_tables<'a, 'i>(
        &mut self,
        t: &Tbl<'a, 'i>,
        key: &str,
    ) -> Vec<Tbl<'a, 'i>> {
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
}
