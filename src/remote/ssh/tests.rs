//! Tests against a real OpenSSH sshd on loopback, started per test in a temp dir. Uploads only
//! ever target paths inside the test's temp dir.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use russh::keys::ssh_key::LineEnding;
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::{PrivateKey, PublicKey};
use sha2::{Digest, Sha256};

use super::{SshCommunicator, SshTarget};
use crate::plan::{EntryKind, PlannedEntry, UploadPlan};
use crate::recipe::model::{Step, StepBody, Upload};
use crate::remote::CommError;
use crate::ui::{SharedSink, Sink, Stream};

mod upload;

const SSHD: &str = "/usr/sbin/sshd";

pub fn random_key() -> PrivateKey {
    let seed: [u8; 32] = rand::random();
    PrivateKey::from(Ed25519Keypair::from_seed(&seed))
}

/// A throwaway sshd on 127.0.0.1, killed on drop.
pub struct Sshd {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub host_key: PublicKey,
    pub client_key: Arc<PrivateKey>,
    child: Option<std::process::Child>,
}

impl Sshd {
    /// Writes the config and keys without starting the daemon.
    pub fn prepare() -> Sshd {
        assert!(
            Path::new(SSHD).exists(),
            "{SSHD} is missing: these tests need a real OpenSSH server (apt-get install openssh-server)"
        );
        std::fs::create_dir_all("/run/sshd").expect("creating /run/sshd");
        let dir = tempfile::tempdir().unwrap();
        let host = random_key();
        let client = random_key();
        let host_path = dir.path().join("host_key");
        std::fs::write(
            &host_path,
            host.to_openssh(LineEnding::LF).unwrap().as_bytes(),
        )
        .unwrap();
        std::fs::set_permissions(&host_path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let auth = dir.path().join("authorized_keys");
        std::fs::write(&auth, client.public_key().to_openssh().unwrap() + "\n").unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\n\
             PermitRootLogin prohibit-password\nUsePAM no\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nStrictModes no\nPidFile none\nLogLevel ERROR\n\
             Subsystem sftp internal-sftp\n",
            host_path.display(),
            auth.display()
        );
        std::fs::write(dir.path().join("sshd_config"), config).unwrap();
        Sshd {
            dir,
            port,
            host_key: host.public_key().clone(),
            client_key: Arc::new(client),
            child: None,
        }
    }

    pub fn start(&mut self) {
        let child = std::process::Command::new(SSHD)
            .args(["-D", "-e", "-f"])
            .arg(self.dir.path().join("sshd_config"))
            .stdin(std::process::Stdio::null())
            .spawn()
            .expect("starting sshd");
        self.child = Some(child);
    }

    pub fn started() -> Sshd {
        let mut s = Sshd::prepare();
        s.start();
        s
    }

    pub fn target(&self) -> SshTarget {
        SshTarget {
            addr: "127.0.0.1".into(),
            port: self.port,
            user: whoami(),
            key: self.client_key.clone(),
            host_key: self.host_key.clone(),
            timeout: Duration::from_secs(20),
        }
    }

    /// A scratch directory inside the temp dir, standing in for the builder's filesystem.
    pub fn scratch(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::create_dir_all(&p).unwrap();
        p
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn whoami() -> String {
    String::from_utf8(
        std::process::Command::new("id")
            .arg("-un")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .to_string()
}

#[derive(Default)]
pub struct TestSink {
    pub lines: Mutex<Vec<(Stream, String)>>,
    pub notes: Mutex<Vec<String>>,
    pub progress: Mutex<Option<(u64, u64)>>,
}

impl Sink for TestSink {
    fn step_line(&self, _step: &str, stream: Stream, line: &str) {
        self.lines.lock().unwrap().push((stream, line.to_string()));
    }
    fn upload_progress(&self, done: u64, total: u64) {
        *self.progress.lock().unwrap() = Some((done, total));
    }
    fn note(&self, msg: &str) {
        self.notes.lock().unwrap().push(msg.to_string());
    }
}

fn step(script: &str) -> Step {
    Step {
        name: "test-step".into(),
        body: StepBody::Run(script.into()),
        sudo: false,
        env: BTreeMap::new(),
        workdir: None,
        timeout: Duration::from_secs(30),
        retries: 0,
        reboot: false,
        checkpoint: false,
    }
}

async fn connected(sshd: &Sshd) -> (SshCommunicator, Arc<TestSink>) {
    let sink = Arc::new(TestSink::default());
    let shared: SharedSink = sink.clone();
    let comm = SshCommunicator::connect(sshd.target(), shared)
        .await
        .expect("connect");
    (comm, sink)
}

fn sha(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// The digest the fingerprint gives `bytes`: plain sha256, segmented above
/// [`crate::plan::digest::SEGMENT`] (spelled out here, apart from the implementation).
fn digest_of(bytes: &[u8]) -> [u8; 32] {
    use crate::plan::digest;
    if !digest::is_segmented(bytes.len() as u64) {
        return sha(bytes);
    }
    let segs: Vec<String> = bytes
        .chunks(digest::SEGMENT as usize)
        .map(|c| hex::encode(sha(c)))
        .collect();
    digest::combine(segs.iter().map(String::as_str))
}

/// What the fingerprint module would plan for `source` (file or directory).
pub fn plan(
    source: &Path,
    destination: &str,
    mode: Option<u32>,
    owner: Option<&str>,
) -> UploadPlan {
    let meta = std::fs::symlink_metadata(source).unwrap();
    let is_dir = meta.is_dir();
    let mut entries = Vec::new();
    if is_dir {
        walk(source, source, &mut entries);
    } else {
        let bytes = std::fs::read(source).unwrap();
        entries.push(PlannedEntry {
            rel: String::new(),
            kind: EntryKind::File,
            size: bytes.len() as u64,
            mode: meta.permissions().mode() & 0o7777,
            sha256: Some(digest_of(&bytes)),
        });
    }
    UploadPlan {
        upload: Upload {
            source: source.to_path_buf(),
            is_dir,
            destination: destination.into(),
            mode,
            owner: owner.map(String::from),
            before: None,
        },
        entries,
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<PlannedEntry>) {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    if names.is_empty() && dir != root {
        out.push(entry(root, dir, EntryKind::Dir, 0, None));
    }
    for p in names {
        let meta = std::fs::symlink_metadata(&p).unwrap();
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&p)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            out.push(entry(root, &p, EntryKind::Symlink(target), 0, None));
        } else if meta.is_dir() {
            walk(root, &p, out);
        } else {
            let bytes = std::fs::read(&p).unwrap();
            out.push(entry(
                root,
                &p,
                EntryKind::File,
                bytes.len() as u64,
                Some(digest_of(&bytes)),
            ));
        }
    }
}

fn entry(
    root: &Path,
    p: &Path,
    kind: EntryKind,
    size: u64,
    sha256: Option<[u8; 32]>,
) -> PlannedEntry {
    let mode = std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777;
    let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
    PlannedEntry {
        rel,
        kind,
        size,
        mode,
        sha256,
    }
}

fn stdout_lines(sink: &TestSink) -> Vec<String> {
    sink.lines
        .lock()
        .unwrap()
        .iter()
        .filter(|(s, _)| *s == Stream::Stdout)
        .map(|(_, l)| l.clone())
        .collect()
}

#[tokio::test]
async fn run_streams_lines_and_exit_status() {
    let sshd = Sshd::started();
    let (comm, sink) = connected(&sshd).await;
    let out = comm
        .run(&step("t"), "echo out1\necho err1 >&2\nprintf 'out2'\n")
        .await
        .unwrap();
    assert_eq!(out.exit_status, Some(0));
    assert!(!out.disconnected);
    let lines = sink.lines.lock().unwrap().clone();
    assert!(
        lines.contains(&(Stream::Stdout, "out1".into())),
        "{lines:?}"
    );
    assert!(
        lines.contains(&(Stream::Stderr, "err1".into())),
        "{lines:?}"
    );
    // A last line without a newline still arrives; the pid marker never does.
    assert!(
        lines.contains(&(Stream::Stdout, "out2".into())),
        "{lines:?}"
    );
    assert!(
        !lines.iter().any(|(_, l)| l.contains("bake-step-pid")),
        "{lines:?}"
    );

    let out = comm
        .run(&step("t"), "echo about to fail\nexit 7")
        .await
        .unwrap();
    assert_eq!(out.exit_status, Some(7));
    assert_eq!(out.tail.last().map(String::as_str), Some("about to fail"));

    // `sh -e`: a failing command stops the step.
    let out = comm
        .run(&step("t"), "false\necho not reached")
        .await
        .unwrap();
    assert_eq!(out.exit_status, Some(1));
    assert!(!out.tail.iter().any(|l| l == "not reached"));

    // Steps get EOF on stdin rather than hanging.
    let out = comm.run(&step("t"), "cat; echo done").await.unwrap();
    assert_eq!(out.exit_status, Some(0));
    comm.close().await;
}

#[tokio::test]
async fn env_workdir_and_sudo_are_rendered() {
    let sshd = Sshd::started();
    let work = sshd.scratch("work dir");
    let (comm, sink) = connected(&sshd).await;
    let mut s = step("t");
    s.env.insert("GREETING".into(), "it's \"me\" $HOME".into());
    s.workdir = Some(work.to_string_lossy().into_owned());
    s.sudo = true;
    let out = comm
        .run(&s, "echo \"$GREETING\"\npwd\nid -u")
        .await
        .unwrap();
    assert_eq!(out.exit_status, Some(0), "{:?}", out.tail);
    let lines = stdout_lines(&sink);
    assert_eq!(
        lines,
        vec![
            "it's \"me\" $HOME".to_string(),
            work.to_string_lossy().into_owned(),
            "0".into()
        ]
    );
}

#[tokio::test]
async fn large_script_runs_from_a_staged_file() {
    let sshd = Sshd::started();
    let (comm, sink) = connected(&sshd).await;
    let mut script = String::new();
    for i in 0..20_000 {
        script.push_str(&format!("x={i} # padding padding padding\n"));
    }
    script.push_str("echo \"last $x\"\n");
    assert!(script.len() > 200 * 1024);
    let out = comm.run(&step("t"), &script).await.unwrap();
    assert_eq!(out.exit_status, Some(0), "{:?}", out.tail);
    assert_eq!(stdout_lines(&sink), vec!["last 19999".to_string()]);
}

#[tokio::test]
async fn step_timeout_kills_the_remote_processes() {
    let sshd = Sshd::started();
    let (comm, _sink) = connected(&sshd).await;
    let mut s = step("t");
    s.timeout = Duration::from_secs(1);
    // A distinctive duration so we can look for leftovers.
    let marker = format!(
        "{}.{}",
        300 + rand::random::<u16>() % 100,
        rand::random::<u16>()
    );
    let start = Instant::now();
    let err = comm
        .run(
            &s,
            &format!("sleep {marker} &\necho started\nsleep {marker}\n"),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, CommError::StepTimeout { .. }), "{err}");
    assert!(start.elapsed() < Duration::from_secs(10));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let left = std::process::Command::new("pgrep")
        .args(["-f", &format!("sleep {marker}")])
        .output()
        .unwrap();
    assert!(
        left.stdout.is_empty(),
        "leftover processes: {}",
        String::from_utf8_lossy(&left.stdout)
    );
    // The connection is still usable.
    assert_eq!(
        comm.run(&step("t"), "true").await.unwrap().exit_status,
        Some(0)
    );
}

#[tokio::test]
async fn host_key_mismatch_is_refused_at_once() {
    let sshd = Sshd::started();
    let mut target = sshd.target();
    target.host_key = random_key().public_key().clone();
    target.timeout = Duration::from_secs(30);
    let start = Instant::now();
    let sink: SharedSink = Arc::new(TestSink::default());
    let err = SshCommunicator::connect(target.clone(), sink)
        .await
        .err()
        .expect("must refuse");
    match &err {
        CommError::HostKeyMismatch { expected, got, .. } => {
            assert_eq!(*expected, super::connect::fingerprint(&target.host_key));
            assert_eq!(*got, super::connect::fingerprint(&sshd.host_key));
        }
        other => panic!("expected a host key mismatch, got {other}"),
    }
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "took {:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn connect_retries_until_sshd_is_up() {
    let mut sshd = Sshd::prepare();
    let target = sshd.target();
    let sink = Arc::new(TestSink::default());
    let shared: SharedSink = sink.clone();
    let connecting = tokio::spawn(SshCommunicator::connect(target, shared));
    tokio::time::sleep(Duration::from_millis(500)).await;
    sshd.start();
    let comm = connecting
        .await
        .unwrap()
        .expect("connect after sshd came up");
    assert_eq!(
        comm.run(&step("t"), "true").await.unwrap().exit_status,
        Some(0)
    );
    assert!(
        !sink.notes.lock().unwrap().is_empty(),
        "retries should be noted"
    );
}

#[tokio::test]
async fn connect_gives_up_after_timeout() {
    let sshd = Sshd::prepare(); // never started: connection refused throughout
    let mut target = sshd.target();
    target.timeout = Duration::from_millis(800);
    let start = Instant::now();
    let sink: SharedSink = Arc::new(TestSink::default());
    let err = SshCommunicator::connect(target, sink)
        .await
        .err()
        .expect("nothing listens");
    assert!(matches!(err, CommError::ConnectTimeout { .. }), "{err}");
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn unknown_client_key_ends_in_auth_refused() {
    let sshd = Sshd::started();
    let mut target = sshd.target();
    target.key = Arc::new(random_key());
    target.timeout = Duration::from_secs(1);
    let sink: SharedSink = Arc::new(TestSink::default());
    let err = SshCommunicator::connect(target, sink)
        .await
        .err()
        .expect("key is not authorized");
    assert!(matches!(err, CommError::AuthRefused { .. }), "{err}");
}

#[tokio::test]
async fn long_output_lines_are_bounded() {
    let sshd = Sshd::started();
    let (comm, sink) = connected(&sshd).await;
    let out = comm
        .run(&step("t"), "head -c 300000 /dev/zero | tr '\\0' x")
        .await
        .unwrap();
    assert_eq!(out.exit_status, Some(0));
    let lines = stdout_lines(&sink);
    assert!(lines.len() >= 4, "{}", lines.len());
    assert_eq!(lines.iter().map(String::len).sum::<usize>(), 300000);
}
