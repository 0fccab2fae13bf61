//! What a user sees while `bake build` works, on a real terminal (a pseudo-terminal made by
//! util-linux `script`) and in a log: on the terminal live lines are redrawn in place, each
//! finished stage is printed once, several recipes stay one live line each with their own
//! prefix, colour follows `--color`/`NO_COLOR` and symbols fall back to ASCII outside a UTF-8
//! locale; in a log every line is timestamped and carries no terminal escape at all.

#![cfg(feature = "lab")]

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

/// `bake build <args>` on a pseudo-terminal of 120×40 with `lang` as the locale; everything
/// the terminal received (stdout and stderr share it) and the exit status.
fn on_terminal(lab: &Lab, dir: &Path, lang: &str, args: &[&str]) -> (String, i32) {
    assert!(
        Path::new("/usr/bin/script").exists(),
        "tests/terminal.rs needs `script` from util-linux (Debian: apt-get install bsdutils)"
    );
    let mut cmd = Command::new("/usr/bin/script");
    // The pseudo-terminal gets a fixed size so indicatif's layout does not depend on the
    // caller's terminal; the arguments travel in the environment, never through a shell.
    cmd.args([
        "-qfec",
        r#"stty cols 120 rows 40; exec "$BAKE_BIN" build $BAKE_ARGS"#,
        "/dev/null",
    ]);
    let base = lab.bake(&dir.join("cache"));
    cmd.env_clear();
    for (k, v) in base.get_envs() {
        if let Some(v) = v {
            cmd.env(k, v);
        }
    }
    cmd.env("BAKE_BIN", env!("CARGO_BIN_EXE_bake"))
        .env("BAKE_ARGS", args.join(" "))
        .env("LANG", lang)
        .env("TERM", "xterm-256color");
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    (text, out.status.code().unwrap_or(-1))
}

/// Columns of the pseudo-terminal.
const COLS: usize = 120;

/// What the terminal (with its scrollback) shows once `raw` has been drawn: a small emulator
/// of the sequences indicatif and bake use (carriage return, newline, auto-wrap at [`COLS`],
/// cursor up/down, clear line, clear to the end of the screen; colour ignored).
fn screen(raw: &str) -> Vec<String> {
    let mut rows: Vec<Vec<char>> = vec![Vec::new()];
    let (mut row, mut col) = (0usize, 0usize);
    let mut chars = raw.chars().peekable();
    let ensure = |rows: &mut Vec<Vec<char>>, row: usize| {
        while rows.len() <= row {
            rows.push(Vec::new());
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '\x1b' if chars.peek() == Some(&'[') => {
                chars.next();
                let mut param = String::new();
                let mut fin = ' ';
                for f in chars.by_ref() {
                    if ('@'..='~').contains(&f) {
                        fin = f;
                        break;
                    }
                    param.push(f);
                }
                let n = param.parse::<usize>().unwrap_or(1).max(1);
                match fin {
                    'A' => row = row.saturating_sub(n),
                    'B' => {
                        row += n;
                        ensure(&mut rows, row);
                    }
                    'K' => rows[row].clear(),
                    'J' => rows.truncate(row + 1),
                    'G' => col = n - 1,
                    _ => {}
                }
            }
            '\x1b' => {}
            '\r' => col = 0,
            '\n' => {
                row += 1;
                ensure(&mut rows, row);
            }
            c => {
                if col >= COLS {
                    row += 1;
                    col = 0;
                    ensure(&mut rows, row);
                }
                let line = &mut rows[row];
                while line.len() < col {
                    line.push(' ');
                }
                if col < line.len() {
                    line[col] = c;
                } else {
                    line.push(c);
                }
                col += 1;
            }
        }
    }
    rows.into_iter()
        .map(|r| r.into_iter().collect::<String>().trim_end().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

fn count(lines: &[String], needle: &str) -> usize {
    lines.iter().filter(|l| l.contains(needle)).count()
}

/// A recipe `name` with one step, in `dir`.
fn recipe(dir: &Path, name: &str) -> std::path::PathBuf {
    write_recipe(
        dir,
        name,
        Recipe {
            head: "",
            builder: "",
            ssh: "",
            tail: "[[step]]\nname = \"hello\"\nrun = \"echo hello-from-the-builder\"\n",
        },
    )
}

#[test]
fn a_terminal_gets_live_lines_and_each_finished_stage_once() {
    let lab = Lab::new();
    let dir = tempfile::tempdir().unwrap();
    let name = unique("tty-");
    let r = recipe(dir.path(), &name);
    let (raw, code) = on_terminal(
        &lab,
        dir.path(),
        "C.UTF-8",
        &["--force", "--color", "always", r.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{raw}");
    assert!(
        raw.contains("\x1b[2K"),
        "live lines are cleared and redrawn:\n{raw}"
    );
    assert!(
        raw.contains("\x1b[32m✓"),
        "a green tick with --color always:\n{raw}"
    );
    let lines = screen(&raw);
    for stage in [
        "resolve",
        "prepare",
        "launch",
        "connect",
        "step hello",
        "stop",
        "image",
    ] {
        assert_eq!(
            count(&lines, &format!("{stage}: ✓")),
            1,
            "stage {stage} finished once in {lines:#?}"
        );
    }
    assert_eq!(
        count(&lines, "hello | hello-from-the-builder"),
        1,
        "{lines:#?}"
    );
    // Live lines are gone once their stage is: no spinner is left on the screen.
    assert!(
        !lines
            .iter()
            .any(|l| l.starts_with(|c| ('\u{2800}'..='\u{28ff}').contains(&c))),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&format!("{name}: us-east-1 ami-"))),
        "the result:\n{lines:#?}"
    );
    // No plain-log timestamps on a terminal.
    assert!(
        !lines
            .iter()
            .any(|l| l.starts_with("20") && l.contains("Z ")),
        "{lines:#?}"
    );
    lab.assert_no_leftovers(&name, "terminal build");
}

#[test]
fn several_recipes_on_a_terminal_keep_their_prefixes_and_no_colour_means_none() {
    let lab = Lab::new();
    let dir = tempfile::tempdir().unwrap();
    let names: Vec<String> = (0..3).map(|i| unique(&format!("ttyj{i}-"))).collect();
    let paths: Vec<String> = names
        .iter()
        .map(|n| recipe(dir.path(), n).to_string_lossy().into_owned())
        .collect();
    let mut args = vec!["--force", "-j", "3", "--color", "never"];
    args.extend(paths.iter().map(String::as_str));
    // Not a UTF-8 locale: words instead of symbols.
    let (raw, code) = on_terminal(&lab, dir.path(), "C", &args);
    assert_eq!(code, 0, "{raw}");
    assert!(raw.contains("\x1b[2K"), "still live lines:\n{raw}");
    for sgr in ["\x1b[32m", "\x1b[31m", "\x1b[36m", "\x1b[2m"] {
        assert!(
            !raw.contains(sgr),
            "no colour with --color never ({sgr:?}):\n{raw}"
        );
    }
    assert!(!raw.contains('✓'), "ASCII outside a UTF-8 locale:\n{raw}");
    let lines = screen(&raw);
    for n in &names {
        assert_eq!(
            count(&lines, &format!("{n} | image: ok")),
            1,
            "{n}'s image stage finished once:\n{lines:#?}"
        );
        assert_eq!(
            lines
                .iter()
                .filter(|l| l.starts_with(&format!("{n} |"))
                    && l.ends_with("hello | hello-from-the-builder"))
                .count(),
            1,
            "{n}'s step output, prefixed, once:\n{lines:#?}"
        );
        lab.assert_no_leftovers(n, "terminal -j 3");
    }
}

#[test]
fn a_log_gets_timestamped_lines_and_no_escapes() {
    let lab = Lab::new();
    let dir = tempfile::tempdir().unwrap();
    let name = unique("plain-");
    let r = recipe(dir.path(), &name);
    let out = lab.build(dir.path(), &["--force", "--color", "auto"], &r);
    let err = assert_exit(&out, 0, &[]);
    assert!(!err.contains('\x1b'), "no escapes in a log:\n{err}");
    let stamped = err
        .lines()
        .filter(|l| {
            l.len() > 25
                && l.as_bytes()[4] == b'-'
                && l.as_bytes()[10] == b'T'
                && l[..24].ends_with('Z')
        })
        .count();
    assert!(
        stamped >= 8,
        "every progress line starts with its UTC time, to the millisecond:\n{err}"
    );
    assert!(err.contains("hello | hello-from-the-builder"), "{err}");
    lab.assert_no_leftovers(&name, "plain build");
}
