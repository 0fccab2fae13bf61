//! A `bake` process driven from a test: its stderr lines as they come, signals (one at a time
//! or CI's cancel sequence), and what the lab still holds of one build.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

pub const SIGINT: i32 = 2;
pub const SIGKILL: i32 = 9;
pub const SIGTERM: i32 = 15;

pub struct Running {
    child: Child,
    lines: Receiver<String>,
    pub seen: Vec<String>,
}

/// How a process driven through CI's cancel sequence ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancelled {
    /// It exited by itself (after SIGINT or SIGTERM) with this code.
    Exited(Option<i32>),
    /// It was still running when SIGKILL came.
    Killed,
}

impl Running {
    /// Spawns `cmd` with stderr piped (stdout discarded).
    pub fn start(mut cmd: Command) -> Running {
        let mut child = cmd
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let err = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        Running {
            child,
            lines: rx,
            seen: Vec::new(),
        }
    }

    /// Waits (up to `timeout`) for a stderr line `hit` accepts; panics with all output seen
    /// (and the process's fate) if none comes.
    pub fn wait_line(&mut self, what: &str, timeout: Duration, hit: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            let l = self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| {
                    let st = self.child.try_wait().ok().flatten();
                    panic!(
                        "{what:?} never appeared (process: {st:?}):\n{}",
                        self.seen.join("\n")
                    )
                });
            self.seen.push(l.clone());
            if hit(&l) {
                return;
            }
        }
    }

    /// Waits (up to two minutes) for a stderr line containing `marker`.
    pub fn wait_for(&mut self, marker: &str) {
        self.wait_line(marker, Duration::from_secs(120), |l| l.contains(marker));
    }

    /// The build id bake names on its first line.
    pub fn build_id(&self) -> String {
        self.seen
            .iter()
            .find_map(|l| l.split("build ").nth(1)?.split_whitespace().next())
            .filter(|id| id.starts_with("b-"))
            .expect("bake names its build id first")
            .to_string()
    }

    pub fn signal(&self, sig: i32) {
        super::signal(&self.child, sig);
    }

    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Polls for the exit until `deadline`; None if it still runs.
    fn exited_by(&mut self, deadline: Instant) -> Option<ExitStatus> {
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// GitHub Actions' cancel: SIGINT, SIGTERM `term_after` later, SIGKILL `kill_after` after
    /// that (each only if the process still runs).
    pub fn ci_cancel(&mut self, term_after: Duration, kill_after: Duration) -> Cancelled {
        self.signal(SIGINT);
        if let Some(s) = self.exited_by(Instant::now() + term_after) {
            return Cancelled::Exited(s.code());
        }
        self.signal(SIGTERM);
        if let Some(s) = self.exited_by(Instant::now() + kill_after) {
            return Cancelled::Exited(s.code());
        }
        self.kill9();
        Cancelled::Killed
    }

    /// Waits for the exit; returns the status and every stderr line.
    pub fn finish(mut self) -> (ExitStatus, String) {
        let st = self.child.wait().unwrap();
        self.drain();
        (st, self.seen.join("\n"))
    }

    /// Collects the stderr lines still in the pipe (the process has exited).
    pub fn drain(&mut self) -> String {
        while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(10)) {
            self.seen.push(l);
        }
        self.seen.join("\n")
    }
}

/// Everything the lab's leftovers report holds that names `build_id` (its tags, its name),
/// except the images that build finished (`bake:state=complete`: results, not leftovers).
pub fn leftovers_of_build(env: &BTreeMap<String, String>, build_id: &str) -> Vec<String> {
    let v = super::lab_api(env, "GET", "leftovers", "");
    let all = v["leftovers"]
        .as_array()
        .unwrap_or_else(|| panic!("lab leftovers report without a list: {v}"));
    all.iter()
        .filter(|e| e.to_string().contains(build_id))
        .filter(|e| e["tags"]["bake:state"] != "complete")
        .map(|e| e.to_string())
        .collect()
}
