//! Recipe diagnostics: every problem found in one recipe, each with a byte span into the
//! source, a message and a help text, rendered as `path:line:col: error: message`.

use std::fmt;
use std::io::IsTerminal;
use std::ops::Range;
use std::path::PathBuf;

/// One problem in a recipe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipeError {
    /// Byte range into the recipe source; `None` when the problem has no place in the file
    /// (unreadable file, a `--var` naming an undeclared variable in a recipe without
    /// `[variables]`).
    pub span: Option<Range<usize>>,
    pub message: String,
    /// How to fix it.
    pub help: String,
}

impl RecipeError {
    pub fn new(
        span: Option<Range<usize>>,
        message: impl Into<String>,
        help: impl Into<String>,
    ) -> Self {
        Self {
            span,
            message: message.into(),
            help: help.into(),
        }
    }
}

impl fmt::Display for RecipeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for RecipeError {}

impl miette::Diagnostic for RecipeError {
    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new(&self.help))
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = miette::LabeledSpan> + '_>> {
        let span = self.span.clone()?;
        Some(Box::new(std::iter::once(
            miette::LabeledSpan::new_with_span(
                Some("here".to_string()),
                miette::SourceSpan::from(span.start..span.end),
            ),
        )))
    }
}

/// All problems found in one recipe (never empty when returned as an error).
#[derive(Debug, Clone)]
pub struct RecipeErrors {
    /// The recipe path as given.
    pub path: PathBuf,
    /// The recipe source the spans point into.
    pub source: String,
    /// Sorted by position.
    pub errors: Vec<RecipeError>,
    /// The source again, named after the file, for miette's graphical report.
    /// (Boxed: an error type this size would make every `Result<Recipe, _>` large.)
    named: Box<miette::NamedSource<String>>,
}

impl RecipeErrors {
    pub(crate) fn new(path: PathBuf, source: String, mut errors: Vec<RecipeError>) -> Self {
        errors.sort_by_key(|e| e.span.as_ref().map_or((0, 0), |s| (s.start + 1, s.end)));
        errors.dedup();
        let named = Box::new(miette::NamedSource::new(
            path.display().to_string(),
            source.clone(),
        ));
        Self {
            path,
            source,
            errors,
            named,
        }
    }

    /// Number of problems.
    pub fn len(&self) -> usize {
        self.errors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    /// Human-readable report: miette's graphical output when stderr is a terminal (and
    /// `NO_COLOR` is unset), otherwise the stable plain text of [`RecipeErrors::render_plain`].
    pub fn render(&self) -> String {
        if std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none() {
            let mut out = String::new();
            let handler = miette::GraphicalReportHandler::new();
            if handler.render_report(&mut out, self).is_ok() {
                return out;
            }
        }
        self.render_plain()
    }

    /// Plain text, no ANSI, stable (tests and scripts rely on it). For each error:
    ///
    /// ```text
    /// recipes/web.toml:7:1: error: unknown key `instnce_type` in [builder]
    ///     7 | instnce_type = "t3.micro"
    ///       | ^^^^^^^^^^^^
    ///   help: did you mean `instance_type`?
    /// ```
    ///
    /// followed by a blank line, and a final `error: N problem(s) in PATH` line.
    pub fn render_plain(&self) -> String {
        let path = self.path.display().to_string();
        let mut out = String::new();
        for e in &self.errors {
            match &e.span {
                Some(span) => {
                    let (line, col) = line_col(&self.source, span.start);
                    out.push_str(&format!("{path}:{line}:{col}: error: {}\n", e.message));
                    let (text, caret_prefix, caret_len) = snippet(&self.source, span.clone());
                    let num = line.to_string();
                    let pad = " ".repeat(num.len());
                    out.push_str(&format!("  {num} | {text}\n"));
                    out.push_str(&format!(
                        "  {pad} | {caret_prefix}{}\n",
                        "^".repeat(caret_len)
                    ));
                }
                None => out.push_str(&format!("{path}: error: {}\n", e.message)),
            }
            for (i, h) in e.help.lines().enumerate() {
                if i == 0 {
                    out.push_str(&format!("  help: {h}\n"));
                } else {
                    out.push_str(&format!("        {h}\n"));
                }
            }
            out.push('\n');
        }
        let n = self.errors.len();
        out.push_str(&format!(
            "error: {n} problem{} in {path}\n",
            if n == 1 { "" } else { "s" }
        ));
        out
    }
}

impl fmt::Display for RecipeErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        write!(
            f,
            "{} problem{} in recipe {}",
            n,
            if n == 1 { "" } else { "s" },
            self.path.display()
        )
    }
}

impl std::error::Error for RecipeErrors {}

impl miette::Diagnostic for RecipeErrors {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new("bake::recipe"))
    }

    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        Some(&*self.named)
    }

    fn related<'a>(&'a self) -> Option<Box<dyn Iterator<Item = &'a dyn miette::Diagnostic> + 'a>> {
        Some(Box::new(
            self.errors.iter().map(|e| e as &dyn miette::Diagnostic),
        ))
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let offset = floor_char_boundary(src, offset.min(src.len()));
    let before = &src[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = src[line_start..offset].chars().count() + 1;
    (line, col)
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Longest source line shown; longer lines are cut around the span, with `…` marking the cuts.
const MAX_LINE: usize = 120;
/// Characters kept before the span when a long line is cut.
const LEAD: usize = 30;

/// The source line holding `span.start` (without its newline), the whitespace to put before
/// the carets (tabs kept so they line up) and the number of carets (at least one; a span
/// running past the line end is cut there). Long lines are shown as a window around the span.
fn snippet(src: &str, span: Range<usize>) -> (String, String, usize) {
    let start = floor_char_boundary(src, span.start.min(src.len()));
    let end = floor_char_boundary(src, span.end.min(src.len())).max(start);
    let line_start = src[..start].rfind('\n').map_or(0, |i| i + 1);
    let line_end = src[start..].find('\n').map_or(src.len(), |i| start + i);
    let line: Vec<char> = src[line_start..line_end]
        .trim_end_matches('\r')
        .chars()
        .collect();
    let col = src[line_start..start].chars().count().min(line.len());
    let span_chars = src[start..end.min(line_end)]
        .trim_end_matches('\r')
        .chars()
        .count();
    let (from, cut_left) = if line.len() > MAX_LINE && col > LEAD {
        (col - LEAD, true)
    } else {
        (0, false)
    };
    let to = (from + MAX_LINE).min(line.len());
    let cut_right = to < line.len();
    let mut text = String::new();
    let mut prefix = String::new();
    if cut_left {
        text.push('…');
        prefix.push(' ');
    }
    text.extend(&line[from..to]);
    if cut_right {
        text.push('…');
    }
    prefix.extend(
        line[from..col]
            .iter()
            .map(|&c| if c == '\t' { '\t' } else { ' ' }),
    );
    let carets = span_chars.min(to.saturating_sub(col)).max(1);
    (text, prefix, carets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_is_one_based_and_counts_chars() {
        let src = "a = 1\nbé = \"x\"\n";
        assert_eq!(line_col(src, 0), (1, 1));
        assert_eq!(line_col(src, 4), (1, 5));
        assert_eq!(line_col(src, 6), (2, 1));
        // after the two-byte é
        assert_eq!(line_col(src, 9), (2, 3));
        assert_eq!(line_col(src, src.len()), (3, 1));
    }

    #[test]
    fn render_plain_format() {
        let src = "name = \"x\"\n[builder]\n\tinstnce_type = \"t3.micro\"\n".to_string();
        let start = src.find("instnce_type").unwrap();
        let errs = RecipeErrors::new(
            PathBuf::from("r.toml"),
            src,
            vec![
                RecipeError::new(
                    Some(start..start + 12),
                    "unknown key `instnce_type` in [builder]",
                    "did you mean `instance_type`?",
                ),
                RecipeError::new(None, "no place", "fix it"),
            ],
        );
        let out = errs.render_plain();
        let expected = "r.toml: error: no place\n  help: fix it\n\n\
r.toml:3:2: error: unknown key `instnce_type` in [builder]\n  3 | \tinstnce_type = \"t3.micro\"\n    | \t^^^^^^^^^^^^\n  help: did you mean `instance_type`?\n\n\
error: 2 problems in r.toml\n";
        assert_eq!(out, expected);
    }

    #[test]
    fn long_lines_are_cut_around_the_span() {
        let src = format!("k = \"{}\" # {}", "v".repeat(300), "c".repeat(100));
        let (text, prefix, n) = snippet(&src, 4..306);
        assert_eq!(text.chars().count(), MAX_LINE + 1);
        assert!(text.ends_with('…') && text.starts_with("k = \"v"));
        assert_eq!((prefix.len(), n), (4, MAX_LINE - 4));
        let at = src.find('#').unwrap();
        let (text, prefix, n) = snippet(&src, at..at + 1);
        assert!(text.starts_with('…') && text.ends_with('…'));
        assert_eq!(text.chars().nth(prefix.chars().count()), Some('#'));
        assert_eq!(n, 1);
    }

    #[test]
    fn empty_span_gets_one_caret() {
        let (text, prefix, n) = snippet("abc\n", 3..3);
        assert_eq!((text.as_str(), prefix.as_str(), n), ("abc", "   ", 1));
    }
}
