//! Commands on the builder: the capability probe, captured helper commands, and provisioning
//! steps with live output, timeouts and remote kill.

use std::time::{Duration, Instant};

use russh::ChannelMsg;
use russh::client::Handle;
use tokio::sync::mpsc;

use super::Remote;
use super::connect::Client;
use crate::recipe::model::Step;
use crate::remote::transfer::script::{kill_session, run_file, step_script};
use crate::remote::{CommError, StepOutcome};
use crate::ui::{OutputTail, SharedSink, Stream};

/// Longest line passed on as one; longer runs without a newline are cut into pieces.
const MAX_LINE: usize = 64 * 1024;

/// Printed to stderr before every step: the PID of the login shell that `exec`s the step. sshd
/// makes that process a session leader, so the PID names the step's whole process tree and a
/// timeout can kill all of it.
const PID_MARKER: &str = "bake-step-pid:";

/// What a captured command produced.
pub struct Captured {
    pub status: Option<u32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Captured {
    /// The end of stderr, for error messages: a failure on thousands of files must not turn
    /// into a megabyte-long error.
    pub fn stderr_text(&self) -> String {
        const KEEP: usize = 2000;
        let text = String::from_utf8_lossy(&self.stderr);
        let text = text.trim();
        if text.len() <= KEEP {
            return text.to_string();
        }
        let mut cut = text.len() - KEEP;
        while !text.is_char_boundary(cut) {
            cut += 1;
        }
        format!("…{}", &text[cut..])
    }
}

/// A failed SSH request, naming what bake was doing.
pub fn protocol(what: &str, source: russh::Error) -> CommError {
    CommError::Ssh {
        op: what.to_string(),
        source: Box::new(source),
    }
}

/// Runs `command`, feeding it `stdin` and collecting all output. For short helper commands.
pub async fn capture(
    handle: &Handle<Client>,
    command: &str,
    stdin: Vec<u8>,
) -> Result<Captured, CommError> {
    let (tx, rx) = mpsc::channel(1);
    if !stdin.is_empty() {
        let _ = tx.send(Ok((stdin, 0))).await;
    }
    drop(tx);
    pipe(handle, command, rx, |_| {}).await
}

/// A piece of a command's input, and how many payload bytes it carries (for progress).
pub type Chunk = Result<(Vec<u8>, u64), CommError>;

/// Opens a session channel on the one connection and starts `command` in it.
async fn open_exec(
    handle: &Handle<Client>,
    command: impl Into<Vec<u8>>,
    what: &str,
) -> Result<russh::Channel<russh::client::Msg>, CommError> {
    let channel = handle
        .channel_open_session()
        .await
        .map_err(|e| protocol("opening a channel", e))?;
    channel
        .exec(true, command)
        .await
        .map_err(|e| protocol(what, e))?;
    Ok(channel)
}

/// Runs `command` with the received chunks as its stdin and collects what it printed. Stops
/// feeding as soon as the command ends, so a remote failure never leaves us blocked on a
/// flow-control window that will not reopen.
pub async fn pipe(
    handle: &Handle<Client>,
    command: &str,
    mut rx: mpsc::Receiver<Chunk>,
    on_sent: impl Fn(u64),
) -> Result<Captured, CommError> {
    let channel = open_exec(handle, command, "starting a command").await?;
    let (mut read, write) = channel.split();
    let feed = async {
        while let Some(chunk) = rx.recv().await {
            let (bytes, payload) = chunk?;
            write
                .data_bytes(bytes)
                .await
                .map_err(|e| protocol("sending data", e))?;
            on_sent(payload);
        }
        write
            .eof()
            .await
            .map_err(|e| protocol("ending the input", e))?;
        Ok::<(), CommError>(())
    };
    let collect = async {
        let mut out = Captured {
            status: None,
            stdout: Vec::new(),
            stderr: Vec::new(),
        };
        while let Some(msg) = read.wait().await {
            match msg {
                ChannelMsg::Data { data } => out.stdout.extend_from_slice(&data),
                ChannelMsg::ExtendedData { data, ext: 1 } => out.stderr.extend_from_slice(&data),
                ChannelMsg::ExitStatus { exit_status } => out.status = Some(exit_status),
                _ => {}
            }
        }
        out
    };
    tokio::pin!(feed, collect);
    tokio::select! {
        fed = &mut feed => {
            fed?;
            Ok(collect.await)
        }
        out = &mut collect => Ok(out),
    }
}

/// Finds out who we are on the builder and which hasher it has.
pub async fn probe(handle: &Handle<Client>) -> Result<Remote, CommError> {
    let out = capture(
        handle,
        "echo \"bake-uid:$(id -u)\"; command -v openssl >/dev/null 2>&1 && echo bake-openssl; true",
        Vec::new(),
    )
    .await?;
    // Tagged lines, because shell start-up files may print their own chatter to stdout.
    let text = String::from_utf8_lossy(&out.stdout);
    let uid = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("bake-uid:"));
    let openssl = text.lines().any(|l| l.trim() == "bake-openssl");
    if uid.is_none() {
        return Err(CommError::NoShell {
            stderr: out.stderr_text(),
        });
    }
    Ok(Remote {
        sudo: if uid == Some("0") { "" } else { "sudo -n " },
        openssl,
    })
}

/// Splits a byte stream into lines for the sink, remembering the last few for the tail.
struct Lines<'a> {
    sink: &'a SharedSink,
    step: &'a str,
    partial: [Vec<u8>; 2],
    tail: OutputTail,
    /// The PID marker is the first stderr line of ours (shell start-up files may print before).
    want_marker: bool,
    pid: Option<u32>,
}

impl Lines<'_> {
    fn feed(&mut self, stream: Stream, data: &[u8]) {
        let idx = stream as usize;
        self.partial[idx].extend_from_slice(data);
        while let Some(pos) = self.partial[idx].iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial[idx].drain(..=pos).collect();
            self.emit(stream, &line[..line.len() - 1]);
        }
        // Output without newlines (a progress bar, binary junk) must not grow without bound.
        if self.partial[idx].len() > MAX_LINE {
            let line = std::mem::take(&mut self.partial[idx]);
            self.emit(stream, &line);
        }
    }

    fn emit(&mut self, stream: Stream, raw: &[u8]) {
        let text = String::from_utf8_lossy(raw);
        let line = text.strip_suffix('\r').unwrap_or(&text);
        if stream == Stream::Stderr
            && self.want_marker
            && let Some(pid) = line.strip_prefix(PID_MARKER)
        {
            self.want_marker = false;
            self.pid = pid.trim().parse().ok();
            return;
        }
        self.sink.step_line(self.step, stream, line);
        self.tail.push(line);
    }

    fn flush(&mut self) {
        for stream in [Stream::Stdout, Stream::Stderr] {
            let rest = std::mem::take(&mut self.partial[stream as usize]);
            if !rest.is_empty() {
                self.emit(stream, &rest);
            }
        }
    }
}

pub async fn run(
    handle: &Handle<Client>,
    remote: &Remote,
    sink: &SharedSink,
    step: &Step,
    script: &str,
) -> Result<StepOutcome, CommError> {
    let start = Instant::now();
    // The script (which may carry secrets) arrives on stdin into a private file (mktemp makes
    // it 0600; the step's umask stays the login's); the command
    // line — what sudo logs and `ps` shows — holds only this stub.
    let command = format!(
        "printf '{PID_MARKER}%s\\n' \"$$\" >&2; \
         f=$(mktemp /tmp/bake-step.XXXXXXXX) && cat > \"$f\" || exit 125; exec {}",
        run_file(step.sudo, "\"$f\"")
    );

    let mut channel = open_exec(handle, command, "starting the step").await?;
    channel
        .data(step_script(step, script).as_bytes())
        .await
        .map_err(|e| protocol("sending the step script", e))?;
    // Then EOF: `cat` ends, and a step that reads stdin gets EOF instead of hanging.
    channel
        .eof()
        .await
        .map_err(|e| protocol("closing the step's input", e))?;

    let mut lines = Lines {
        sink,
        step: &step.name,
        partial: [Vec::new(), Vec::new()],
        tail: OutputTail::default(),
        want_marker: true,
        pid: None,
    };
    let mut exit_status = None;
    let mut closed = false;
    let deadline = tokio::time::Instant::now() + step.timeout;
    loop {
        let Ok(msg) = tokio::time::timeout_at(deadline, channel.wait()).await else {
            lines.flush();
            kill(handle, remote, lines.pid).await;
            let _ = channel.close().await;
            return Err(CommError::StepTimeout {
                step: step.name.clone(),
                timeout: step.timeout,
            });
        };
        match msg {
            Some(ChannelMsg::Data { data }) => lines.feed(Stream::Stdout, &data),
            Some(ChannelMsg::ExtendedData { data, ext: 1 }) => lines.feed(Stream::Stderr, &data),
            Some(ChannelMsg::ExitStatus { exit_status: s }) => exit_status = Some(s),
            Some(ChannelMsg::ExitSignal { signal_name, .. }) => {
                lines.flush();
                lines
                    .tail
                    .push(&format!("[terminated by signal {signal_name:?}]"));
            }
            Some(ChannelMsg::Close) => closed = true,
            Some(_) => {}
            None => break,
        }
    }
    lines.flush();
    // Without an exit status or an orderly close the connection itself went away (a reboot).
    let disconnected = exit_status.is_none() && (!closed || handle.is_closed());
    Ok(StepOutcome {
        exit_status,
        tail: lines.tail.into_lines(),
        disconnected,
        duration: start.elapsed(),
    })
}

/// Best effort: kills the timed-out step's whole session on the builder (as root if we can,
/// because sudo steps run as root).
async fn kill(handle: &Handle<Client>, remote: &Remote, pid: Option<u32>) {
    let Some(pid) = pid else { return };
    let command = kill_session(remote.sudo, pid);
    let _ = tokio::time::timeout(
        Duration::from_secs(10),
        capture(handle, &command, Vec::new()),
    )
    .await;
}
