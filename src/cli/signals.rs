//! The signals bake's commands react to: [`Signals`] for a build (installed once, counting
//! Ctrl-C presses for the cleanup that follows) and [`interrupted`] for a wait that stops on the
//! first one.

/// The signals a build reacts to, installed once at the start so none is missed (or kills the
/// process) between one wait and the next.
///
/// SIGINT, SIGTERM and SIGHUP stop the builds and start cleanup. Only a second SIGINT (Ctrl-C
/// again) abandons cleanup. SIGTERM and SIGHUP during cleanup do not: CI cancels a job with
/// SIGINT, then SIGTERM 7.5 s later, then SIGKILL 2.5 s after that, and abandoning at the
/// SIGTERM would leave everything behind that the remaining seconds could still remove.
pub struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    pub sigints: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sig {
    Int,
    Term,
    Hup,
}

impl Signals {
    pub fn install() -> Signals {
        use tokio::signal::unix::{SignalKind, signal};
        Signals {
            int: signal(SignalKind::interrupt()).expect("SIGINT handler"),
            term: signal(SignalKind::terminate()).expect("SIGTERM handler"),
            hup: signal(SignalKind::hangup()).expect("SIGHUP handler"),
            sigints: 0,
        }
    }

    pub async fn next(&mut self) -> Sig {
        let s = tokio::select! {
            _ = self.int.recv() => Sig::Int,
            _ = self.term.recv() => Sig::Term,
            _ = self.hup.recv() => Sig::Hup,
        };
        if s == Sig::Int {
            self.sigints += 1;
        }
        s
    }
}

pub fn sig_name(s: Sig) -> &'static str {
    match s {
        Sig::Int => "interrupted (SIGINT)",
        Sig::Term => "terminated (SIGTERM)",
        Sig::Hup => "hung up (SIGHUP)",
    }
}

/// Resolves on SIGINT, SIGTERM or SIGHUP.
pub async fn interrupted() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
        _ = hup.recv() => {}
    }
}
