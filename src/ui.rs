//! What bake shows while it works: indicatif progress on a terminal, plain timestamped lines
//! otherwise (CI logs), always on stderr so stdout carries only the result (text or JSON).
//! Every line passes through [`Ui::redact`] so secrets never reach a log.
//!
//! On a terminal each running stage and each recipe's upload has one live line; a finished
//! stage is printed once above them and its line cleared (as cargo does), so `-j 10` stays
//! within the screen. Colour follows `--color` / `NO_COLOR`; symbols fall back to ASCII
//! outside a UTF-8 locale. `--quiet` keeps only failures (errors and the result are printed
//! by the command itself).

use std::io::IsTerminal;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Where step output and upload progress go (the UI implements this).
pub trait Sink: Send + Sync {
    /// One line of a step's output, without the trailing newline.
    fn step_line(&self, step: &str, stream: Stream, line: &str);
    /// Upload progress: `done` of `total` bytes sent so far, over all uploads.
    fn upload_progress(&self, done: u64, total: u64);
    /// A human-readable status note ("waiting for SSH on 127.0.1.4:22 (attempt 3)").
    fn note(&self, msg: &str);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// The sink the transports write to, shared between their tasks.
pub type SharedSink = Arc<dyn Sink>;

/// How results are printed on stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum Output {
    #[default]
    Text,
    Json,
}

/// `--color`: whether progress on stderr is coloured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum ColorChoice {
    /// When stderr is a terminal and `NO_COLOR` is not set.
    #[default]
    Auto,
    Always,
    Never,
}

impl ColorChoice {
    /// Whether to colour stderr: `auto` follows the terminal and the NO_COLOR convention
    /// (set and not empty means no colour) and `TERM=dumb`.
    pub fn enabled(self) -> bool {
        match self {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => {
                std::io::stderr().is_terminal()
                    && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
                    && std::env::var_os("TERM").is_none_or(|t| t != "dumb")
            }
        }
    }
}

/// Process-wide display settings from the global flags, set once before any command runs
/// (colour itself lives in `console`'s switch, which every styled string consults).
#[derive(Debug, Clone, Copy)]
struct Settings {
    quiet: bool,
    unicode: bool,
    /// `GITHUB_ACTIONS=true`: each step's output is a collapsible `::group::`.
    github: bool,
}

static SETTINGS: OnceLock<Settings> = OnceLock::new();

/// Applies `--color` and `--quiet` to every [`Ui`] made after it (the first call wins).
pub fn configure(color: ColorChoice, quiet: bool) {
    let color = color.enabled();
    console::set_colors_enabled_stderr(color);
    let _ = SETTINGS.set(Settings {
        quiet,
        unicode: utf8_locale(),
        github: github_actions(),
    });
}

fn settings() -> Settings {
    *SETTINGS.get_or_init(|| Settings {
        quiet: false,
        unicode: utf8_locale(),
        github: github_actions(),
    })
}

/// Whether bake runs as a GitHub Actions step (the runner sets `GITHUB_ACTIONS=true`).
pub fn github_actions() -> bool {
    std::env::var("GITHUB_ACTIONS").is_ok_and(|v| v == "true")
}

/// Stages named so carry a recipe step's output (one `::group::` each on GitHub Actions).
pub const STEP_STAGE: &str = "step ";

/// Whether the terminal can be expected to draw ✓ and braille spinners: the locale that
/// governs character types (LC_ALL, then LC_CTYPE, then LANG) names UTF-8.
fn utf8_locale() -> bool {
    ["LC_ALL", "LC_CTYPE", "LANG"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
        .is_some_and(|v| {
            let v = v.to_ascii_lowercase();
            v.contains("utf-8") || v.contains("utf8")
        })
}

/// Per-recipe prefix colours, picked by name so a recipe keeps its colour between runs.
const PALETTE: [console::Color; 6] = [
    console::Color::Cyan,
    console::Color::Magenta,
    console::Color::Yellow,
    console::Color::Blue,
    console::Color::Green,
    console::Color::Red,
];

#[derive(Clone)]
pub struct Ui {
    inner: Arc<Inner>,
    /// Shown before every line: the recipe name when several build at once.
    prefix: String,
    /// The same prefix as drawn on a terminal (coloured when colour is on).
    styled_prefix: String,
    /// (stage name, when it started, how long it took).
    timings: Arc<Mutex<Vec<(String, Instant, Duration)>>>,
    /// This recipe's upload bar (and, in plain output, the last quarter told): one per
    /// recipe, so concurrent builds never drive one bar.
    upload: Arc<Mutex<Option<(ProgressBar, u64)>>>,
}

struct Inner {
    mp: Option<MultiProgress>,
    secrets: Mutex<Vec<String>>,
    settings: Settings,
    /// Step output in `::group::`s: on GitHub Actions, unless builds run at once (groups
    /// cannot interleave).
    groups: std::sync::atomic::AtomicBool,
}

impl Ui {
    /// Progress bars when stderr is a terminal (and `plain` is not forced), lines otherwise.
    pub fn new(plain: bool) -> Self {
        let settings = settings();
        let tty = !plain
            && !settings.quiet
            && std::io::stderr().is_terminal()
            && std::env::var_os("CI").is_none();
        let mp = tty.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        Ui {
            inner: Arc::new(Inner {
                mp,
                secrets: Mutex::new(Vec::new()),
                settings,
                groups: settings.github.into(),
            }),
            prefix: String::new(),
            styled_prefix: String::new(),
            timings: Arc::new(Mutex::new(Vec::new())),
            upload: Arc::new(Mutex::new(None)),
        }
    }

    /// A view of the same output that prefixes lines with `name` and keeps its own timings
    /// and its own upload bar.
    pub fn child(&self, name: &str) -> Self {
        let prefix = format!("{name} | ");
        let hash = name
            .bytes()
            .fold(0usize, |h, b| h.wrapping_mul(31) + b as usize);
        let styled_prefix = console::style(&prefix)
            .fg(PALETTE[hash % PALETTE.len()])
            .for_stderr()
            .to_string();
        Ui {
            inner: self.inner.clone(),
            prefix,
            styled_prefix,
            timings: Arc::new(Mutex::new(Vec::new())),
            upload: Arc::new(Mutex::new(None)),
        }
    }

    fn quiet(&self) -> bool {
        self.inner.settings.quiet
    }

    /// ✓/✗ on a UTF-8 terminal, words otherwise.
    fn mark(&self, ok: bool) -> String {
        let (sym, color) = match (ok, self.inner.settings.unicode) {
            (true, true) => ("✓", console::Color::Green),
            (false, true) => ("✗", console::Color::Red),
            (true, false) => ("ok", console::Color::Green),
            (false, false) => ("FAILED", console::Color::Red),
        };
        console::style(sym).fg(color).for_stderr().to_string()
    }

    /// Builds run at once: no `::group::`s (their lines would land in each other's groups).
    pub fn concurrent(&self) {
        self.inner
            .groups
            .store(false, std::sync::atomic::Ordering::Relaxed);
    }

    fn groups(&self) -> bool {
        self.inner.groups.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A GitHub Actions workflow command: at the very start of its own line, unprefixed.
    fn workflow_command(&self, cmd: &str) {
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "{cmd}");
    }

    /// Tells `what` and asks `prompt` on the terminal until the answer is one of `allowed`
    /// (blocking; progress is hidden meanwhile, and one question is asked at a time). None
    /// when stdin is closed.
    pub fn ask(&self, what: &str, prompt: &str, allowed: &[char]) -> Option<char> {
        static ASKING: Mutex<()> = Mutex::new(());
        let _one = ASKING.lock().unwrap_or_else(|e| e.into_inner());
        let read = || {
            use std::io::Write;
            // Not eprint!: a terminal gone (SIGHUP) must not panic; reading then ends it.
            let mut err = std::io::stderr();
            let _ = writeln!(err, "{}{}", self.styled_prefix, self.redact(what));
            loop {
                let _ = write!(err, "{}{prompt}", self.styled_prefix);
                let _ = err.flush();
                let mut s = String::new();
                match std::io::stdin().read_line(&mut s) {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
                let c = s.trim().chars().next().map(|c| c.to_ascii_lowercase());
                if let Some(c) = c.filter(|c| allowed.contains(c)) {
                    return Some(c);
                }
            }
        };
        match &self.inner.mp {
            Some(mp) => mp.suspend(read),
            None => read(),
        }
    }

    pub fn is_tty(&self) -> bool {
        self.inner.mp.is_some()
    }

    /// Values that must never be printed. A multi-line value is also redacted line by line:
    /// step output arrives a line at a time, so a printed key file never shows up whole.
    pub fn add_secrets(&self, secrets: &[String]) {
        let mut s = self.inner.secrets.lock().unwrap();
        s.extend(secret_fragments(secrets));
        // Longest first so a secret containing another is redacted whole.
        s.sort_by_key(|v| std::cmp::Reverse(v.len()));
        s.dedup();
    }

    pub fn redact(&self, text: &str) -> String {
        redact(text, &self.inner.secrets.lock().unwrap())
    }

    /// Prints one line above any progress bars (nothing with `--quiet`).
    pub fn line(&self, msg: &str) {
        if !self.quiet() {
            self.line_always(msg);
        }
    }

    /// Prints one line even with `--quiet`: what went wrong.
    fn line_always(&self, msg: &str) {
        let msg = self.redact(msg);
        match &self.inner.mp {
            Some(mp) => {
                let _ = mp.println(format!("{}{msg}", self.styled_prefix));
            }
            // Not eprintln!: after SIGHUP the terminal may be gone, and a failed write must
            // not panic in the middle of cleanup.
            None => {
                use std::io::Write;
                let _ = writeln!(std::io::stderr(), "{} {}{msg}", timestamp(), self.prefix);
            }
        }
    }

    /// Starts a named stage; its duration goes into the summary.
    pub fn stage(&self, name: &str, msg: &str) -> Stage {
        let bar = self.inner.mp.as_ref().map(|mp| {
            let pb = mp.add(ProgressBar::new_spinner());
            let style =
                ProgressStyle::with_template("{spinner:.cyan} {prefix}{msg} {elapsed:.dim}")
                    .unwrap();
            pb.set_style(if self.inner.settings.unicode {
                style
            } else {
                style.tick_chars("-\\|/ ")
            });
            pb.set_prefix(format!("{}{name}: ", self.styled_prefix));
            pb.set_message(self.redact(msg));
            pb.enable_steady_tick(Duration::from_millis(120));
            pb
        });
        let grouped =
            bar.is_none() && !self.quiet() && self.groups() && name.starts_with(STEP_STAGE);
        if grouped {
            self.workflow_command(&format!("::group::{}{name}", self.prefix));
        }
        if bar.is_none() {
            self.line(&format!("{name}: {msg}"));
        }
        Stage {
            ui: self.clone(),
            name: name.to_string(),
            start: Instant::now(),
            bar,
            last: Mutex::new(String::new()),
            grouped: grouped.into(),
        }
    }

    /// Wall time per stage name, in the order stages first started.
    pub fn timings(&self) -> Vec<(String, Duration)> {
        // A stage that ran several times (retries, concurrent cleanup items) counts from its
        // first start to its last end: wall time, not the sum of overlapping parts.
        let mut spans: Vec<(String, Instant, Instant)> = Vec::new();
        for (name, start, d) in self.timings.lock().unwrap().iter() {
            let end = *start + *d;
            match spans.iter_mut().find(|s| &s.0 == name) {
                Some(s) => {
                    s.1 = s.1.min(*start);
                    s.2 = s.2.max(end);
                }
                None => spans.push((name.clone(), *start, end)),
            }
        }
        spans.into_iter().map(|(n, a, b)| (n, b - a)).collect()
    }
}

/// What to redact for these secret values: each value, and each line of a multi-line value
/// (trimmed; lines shorter than 4 characters, such as a lone brace, would redact too much).
/// What a sensitive value is replaced with wherever bake prints text: output, stage
/// messages, recipe diagnostics.
pub const REDACTED: &str = "[redacted]";

/// `text` with every one of `secrets` (in the order given: longest first if one contains
/// another) replaced by [`REDACTED`].
pub fn redact(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_string();
    for s in secrets.iter().filter(|s| !s.is_empty()) {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), REDACTED);
        }
    }
    out
}

/// The last lines of a step's output, kept for its error message.
#[derive(Debug, Clone, Default)]
pub struct OutputTail {
    lines: std::collections::VecDeque<String>,
}

impl OutputTail {
    /// As many lines as an error message shows.
    pub const LINES: usize = 20;

    pub fn push(&mut self, line: &str) {
        if self.lines.len() == Self::LINES {
            self.lines.pop_front();
        }
        self.lines.push_back(line.to_string());
    }

    pub fn into_lines(self) -> Vec<String> {
        self.lines.into()
    }
}

fn secret_fragments(secrets: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for v in secrets.iter().filter(|v| !v.is_empty()) {
        out.push(v.clone());
        if v.contains('\n') {
            out.extend(
                v.lines()
                    .map(|l| l.trim())
                    .filter(|l| l.chars().count() >= 4)
                    .map(str::to_string),
            );
            // As JSON or a log with escaped newlines would show it.
            out.push(v.replace('\n', "\\n"));
        }
    }
    out
}

/// A stage in progress.
pub struct Stage {
    ui: Ui,
    name: String,
    start: Instant,
    bar: Option<ProgressBar>,
    last: Mutex<String>,
    /// Opened a `::group::`: closed before the stage's last line, so that line shows.
    grouped: std::sync::atomic::AtomicBool,
}

impl Drop for Stage {
    /// A stage dropped unfinished (its build was cancelled) still closes its group.
    fn drop(&mut self) {
        self.end_group();
    }
}

impl Stage {
    fn end_group(&self) {
        if self
            .grouped
            .swap(false, std::sync::atomic::Ordering::Relaxed)
        {
            self.ui.workflow_command("::endgroup::");
        }
    }

    /// Says what the stage is waiting on now; plain output prints only changes.
    pub fn update(&self, msg: &str) {
        let msg = self.ui.redact(msg);
        match &self.bar {
            Some(b) => b.set_message(msg),
            None => {
                let mut last = self.last.lock().unwrap();
                if *last != msg {
                    self.ui.line(&format!("{}: {msg}", self.name));
                    *last = msg;
                }
            }
        }
    }

    pub fn finish(self, msg: &str) -> Duration {
        self.end_group();
        let d = self.start.elapsed();
        let msg = self.ui.redact(msg);
        match &self.bar {
            Some(b) => {
                // Printed once above the live lines and its own line cleared: finished stages
                // scroll away instead of piling up as bars.
                b.finish_and_clear();
                let mark = self.ui.mark(true);
                self.ui.line(&format!(
                    "{}: {mark} {msg} ({})",
                    self.name,
                    fmt_duration(d)
                ));
            }
            None => self
                .ui
                .line(&format!("{}: {msg} ({})", self.name, fmt_duration(d))),
        }
        self.ui
            .timings
            .lock()
            .unwrap()
            .push((self.name.clone(), self.start, d));
        d
    }

    pub fn fail(self, msg: &str) {
        self.end_group();
        let d = self.start.elapsed();
        let msg = self.ui.redact(msg);
        match &self.bar {
            Some(b) => {
                b.finish_and_clear();
                let mark = self.ui.mark(false);
                self.ui.line_always(&format!(
                    "{}: {mark} {msg} ({})",
                    self.name,
                    fmt_duration(d)
                ));
            }
            None => self.ui.line_always(&format!(
                "{}: FAILED: {msg} ({})",
                self.name,
                fmt_duration(d)
            )),
        }
        self.ui
            .timings
            .lock()
            .unwrap()
            .push((self.name.clone(), self.start, d));
    }
}

impl Sink for Ui {
    fn step_line(&self, step: &str, stream: Stream, line: &str) {
        let tag = if stream == Stream::Stderr { "!" } else { "|" };
        self.line(&format!("  {step} {tag} {line}"));
    }

    fn upload_progress(&self, done: u64, total: u64) {
        if self.quiet() {
            return;
        }
        let mut up = self.upload.lock().unwrap();
        match (&self.inner.mp, up.as_mut()) {
            (Some(mp), None) => {
                let pb = mp.add(ProgressBar::new(total));
                pb.set_style(
                    ProgressStyle::with_template(
                        "  {prefix}[{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                    )
                    .unwrap()
                    .progress_chars("=> "),
                );
                pb.set_prefix(self.styled_prefix.clone());
                pb.set_position(done);
                *up = Some((pb, 0));
            }
            (Some(_), Some((pb, _))) => pb.set_position(done),
            (None, _) => {
                // Plain output: a line per quarter, not per chunk.
                let quarter = (done * 4).checked_div(total).unwrap_or(4);
                let last = up.as_ref().map(|u| u.1).unwrap_or(u64::MAX);
                if last != quarter {
                    drop(up);
                    self.line(&format!(
                        "upload: {} of {} ({}%)",
                        fmt_bytes(done),
                        fmt_bytes(total),
                        quarter * 25
                    ));
                    *self.upload.lock().unwrap() = Some((ProgressBar::hidden(), quarter));
                    return;
                }
            }
        }
        if done >= total
            && let Some((pb, _)) = up.take()
        {
            pb.finish_and_clear();
        }
    }

    fn note(&self, msg: &str) {
        self.line(msg);
    }
}

pub fn timestamp() -> String {
    let now = jiff::Timestamp::now();
    now.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

pub fn fmt_duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 1.0 {
        format!("{}ms", d.as_millis())
    } else if s < 90.0 {
        format!("{s:.1}s")
    } else {
        format!("{}m{:02}s", d.as_secs() / 60, d.as_secs() % 60)
    }
}

pub fn fmt_bytes(n: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_longest_secret_first() {
        let ui = Ui::new(true);
        ui.add_secrets(&["abc".into(), "abcdef".into(), String::new()]);
        assert_eq!(ui.redact("x abcdef y abc"), "x [redacted] y [redacted]");
    }

    #[test]
    fn multi_line_secrets_are_redacted_whole_and_line_by_line() {
        let ui = Ui::new(true);
        let key = "-----BEGIN KEY-----\nAAAAsecretline1\n}\nBBBBsecretline2\n-----END KEY-----"
            .to_string();
        ui.add_secrets(std::slice::from_ref(&key));
        assert_eq!(ui.redact(&format!("k={key}!")), "k=[redacted]!");
        assert_eq!(ui.redact("  step | BBBBsecretline2"), "  step | [redacted]");
        assert_eq!(ui.redact(&key.replace('\n', "\\n")), "[redacted]");
        // A short line of the value (a brace) is not redacted everywhere.
        assert_eq!(ui.redact("fn x() {}"), "fn x() {}");
    }

    #[test]
    fn the_output_tail_keeps_the_last_lines_in_order() {
        let mut t = OutputTail::default();
        for i in 0..OutputTail::LINES + 5 {
            t.push(&format!("line {i}"));
        }
        let lines = t.into_lines();
        assert_eq!(lines.len(), OutputTail::LINES);
        assert_eq!(lines.first().map(String::as_str), Some("line 5"));
        assert_eq!(
            lines.last().map(String::as_str),
            Some(format!("line {}", OutputTail::LINES + 4).as_str())
        );
    }

    #[test]
    fn formats() {
        assert_eq!(fmt_bytes(512), "512 B");
        assert_eq!(fmt_bytes(1536), "1.5 KiB");
        assert_eq!(fmt_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(fmt_duration(Duration::from_secs(125)), "2m05s");
    }
}
