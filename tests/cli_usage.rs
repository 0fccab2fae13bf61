//! Using the binary as an installed tool, no lab needed: shell completions bash can source,
//! a man page, help with its global-options heading and examples, `--color`, `--quiet`.

use std::process::{Command, Output};

fn bake(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bake"))
        .args(args)
        .env_remove("NO_COLOR")
        .output()
        .expect("run bake")
}

fn stdout(o: &Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).expect("utf-8 stdout")
}

#[test]
fn bash_can_source_the_completion_script_and_it_completes_bake() {
    let script = stdout(&bake(&["completions", "bash"]));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bake.bash");
    std::fs::write(&file, &script).unwrap();
    let o = Command::new("bash")
        .args(["--norc", "-c", r#"source "$1" && complete -p bake"#, "_"])
        .arg(&file)
        .output()
        .expect("run bash");
    let shown = stdout(&o);
    assert!(
        shown.starts_with("complete ") && shown.trim_end().ends_with(" bake"),
        "complete -p bake printed {shown:?}"
    );
    // The function it names exists and knows the subcommands.
    let func = shown
        .split_whitespace()
        .skip_while(|w| *w != "-F")
        .nth(1)
        .expect("a -F function");
    assert!(script.contains(&format!("{func}()")), "{func} not defined");
    for sub in ["build", "validate", "images", "completions"] {
        assert!(script.contains(sub), "no {sub} in the bash completions");
    }
}

#[test]
fn other_shells_get_scripts_and_an_unknown_shell_is_bad_input() {
    assert!(stdout(&bake(&["completions", "zsh"])).contains("#compdef bake"));
    assert!(stdout(&bake(&["completions", "fish"])).contains("complete -c bake"));
    let o = bake(&["completions", "tcsh"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn the_man_page_is_roff_naming_bake_and_its_commands() {
    let man = stdout(&bake(&["man"]));
    assert!(man.contains(".TH bake 1"), "{}", &man[..man.len().min(300)]);
    for s in ["build", "validate", "\\-\\-color", "\\-\\-quiet"] {
        assert!(man.contains(s), "no {s} in the man page");
    }
}

#[test]
fn help_separates_global_options_and_shows_examples() {
    let help = stdout(&bake(&["--color", "never", "--help"]));
    let global = help
        .find("Global options:")
        .expect("a Global options heading");
    let commands = help.find("Commands:").expect("a Commands heading");
    assert!(commands < global, "{help}");
    for flag in ["--region", "--output", "--color <WHEN>", "-q, --quiet"] {
        let at = help
            .find(flag)
            .unwrap_or_else(|| panic!("no {flag} in {help}"));
        assert!(at > global, "{flag} is not under Global options:\n{help}");
    }
    assert!(help.contains("Examples:\n  bake validate"), "{help}");
    // A subcommand's help shows the global options too, under their own heading.
    let sub = stdout(&bake(&["build", "--help", "--color=never"]));
    assert!(
        sub.contains("Global options:") && sub.contains("--jobs"),
        "{sub}"
    );
}

#[test]
fn color_always_colours_help_and_never_does_not() {
    let always = stdout(&bake(&["--color", "always", "--help"]));
    assert!(
        always.contains('\x1b'),
        "no escape codes with --color always"
    );
    let never = stdout(&bake(&["--color=never", "--help"]));
    assert!(!never.contains('\x1b'), "escape codes with --color never");
    let o = bake(&["--color", "sometimes", "--help"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn quiet_validate_prints_only_the_result() {
    let recipe = concat!(env!("CARGO_MANIFEST_DIR"), "/recipes/minimal.toml");
    let o = bake(&["-q", "validate", recipe]);
    let out = stdout(&o);
    assert!(out.contains("minimal.toml: ok ("), "{out}");
    assert!(
        o.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}
