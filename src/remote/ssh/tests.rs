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
            sha256: Some(sha(&bytes)),
        });
    }
    UploadPlan {
        upload: Upload {
            source: source.to_path_buf(),
            is_dir,
            destination: destination.into(),
            mode,
            owner: owner.map(String::from),
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
                Some(sha(&bytes)),
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

#[tokio::test]
async fn upload_file_with_mode_and_owner_into_nested_path() {
    let sshd = Sshd::started();
    let local = sshd.scratch("local");
    let remote = sshd.scratch("remote");
    // A small file (tar path) and a large one (raw stream path).
    let small = local.join("app.conf");
    std::fs::write(&small, b"listen 80\n").unwrap();
    let big = local.join("app.bin");
    let big_bytes: Vec<u8> = (0..20 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(&big, &big_bytes).unwrap();
    let small_dest = remote.join("opt/web/conf/app.conf");
    let big_dest = remote.join("opt/web/bin/app.bin");
    let plans = vec![
        plan(
            &small,
            small_dest.to_str().unwrap(),
            Some(0o640),
            Some("nobody:nogroup"),
        ),
        plan(
            &big,
            big_dest.to_str().unwrap(),
            Some(0o750),
            Some("nobody"),
        ),
    ];
    let (comm, sink) = connected(&sshd).await;
    comm.upload(&plans).await.unwrap();
    assert_eq!(std::fs::read(&small_dest).unwrap(), b"listen 80\n");
    assert_eq!(std::fs::read(&big_dest).unwrap(), big_bytes);
    let m = std::fs::metadata(&small_dest).unwrap();
    assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o640, 65534, 65534));
    let m = std::fs::metadata(&big_dest).unwrap();
    assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o750, 65534, 0));
    // Parents are created root-owned; no temp files are left behind.
    assert_eq!(
        std::fs::metadata(remote.join("opt/web/bin")).unwrap().uid(),
        0
    );
    assert_eq!(
        std::fs::read_dir(remote.join("opt/web/bin"))
            .unwrap()
            .count(),
        1
    );
    let total = (big_bytes.len() + 10) as u64;
    assert_eq!(*sink.progress.lock().unwrap(), Some((total, total)));
}

#[tokio::test]
async fn upload_directory_tree() {
    let sshd = Sshd::started();
    let src = sshd.scratch("local/site");
    std::fs::create_dir_all(src.join("a/b")).unwrap();
    std::fs::create_dir_all(src.join("empty")).unwrap();
    std::fs::write(src.join("a/b/c.txt"), b"deep\n").unwrap();
    std::fs::write(src.join("a/run.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(src.join("a/run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(src.join("index.html"), b"<html/>").unwrap();
    std::os::unix::fs::symlink("a/b/c.txt", src.join("link")).unwrap();
    let long = "n".repeat(120);
    std::fs::write(src.join(&long), b"long name").unwrap();
    let dest = sshd.scratch("remote").join("srv/site");
    let p = plan(&src, dest.to_str().unwrap(), None, None);
    let (comm, _sink) = connected(&sshd).await;
    comm.upload(&[p]).await.unwrap();
    assert_eq!(std::fs::read(dest.join("a/b/c.txt")).unwrap(), b"deep\n");
    assert_eq!(std::fs::read(dest.join(&long)).unwrap(), b"long name");
    assert_eq!(
        std::fs::metadata(dest.join("a/run.sh")).unwrap().mode() & 0o777,
        0o755
    );
    assert_eq!(
        std::fs::read_link(dest.join("link")).unwrap(),
        Path::new("a/b/c.txt")
    );
    assert_eq!(std::fs::read(dest.join("link")).unwrap(), b"deep\n");
    assert!(std::fs::metadata(dest.join("empty")).unwrap().is_dir());
    assert_eq!(std::fs::metadata(dest.join("index.html")).unwrap().uid(), 0);

    // With a mode: files get it, directories get x where r is set.
    let dest2 = sshd.scratch("remote").join("srv/site2");
    comm.upload(&[plan(
        &src,
        dest2.to_str().unwrap(),
        Some(0o640),
        Some("nobody"),
    )])
    .await
    .unwrap();
    assert_eq!(
        std::fs::metadata(dest2.join("a/run.sh")).unwrap().mode() & 0o777,
        0o640
    );
    let d = std::fs::metadata(dest2.join("a/b")).unwrap();
    assert_eq!((d.mode() & 0o777, d.uid()), (0o750, 65534));
    assert_eq!(
        std::fs::symlink_metadata(dest2.join("link")).unwrap().uid(),
        65534
    );
    let root = std::fs::metadata(&dest2).unwrap();
    assert_eq!((root.mode() & 0o777, root.uid()), (0o750, 65534));

    // An existing destination that is a symlink to a directory stays a symlink.
    let real = sshd.scratch("remote/real-site");
    let linked = sshd.scratch("remote").join("linked-site");
    std::os::unix::fs::symlink(&real, &linked).unwrap();
    comm.upload(&[plan(&src, linked.to_str().unwrap(), None, None)])
        .await
        .unwrap();
    assert!(
        std::fs::symlink_metadata(&linked)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(std::fs::read(real.join("a/b/c.txt")).unwrap(), b"deep\n");
}

/// Enough files for two tar streams side by side: every directory still gets the recipe's
/// mode and owner whichever stream creates it, and a bad file in the last stream is caught.
#[tokio::test]
async fn many_files_unpack_as_parallel_streams() {
    let sshd = Sshd::started();
    let src = sshd.scratch("local/many");
    for d in 0..6 {
        let dir = src.join(format!("d{d}/sub"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..60 {
            std::fs::write(dir.join(format!("f{f:02}")), format!("{d}/{f}\n")).unwrap();
        }
    }
    let dest = sshd.scratch("remote").join("srv/many");
    let p = plan(&src, dest.to_str().unwrap(), Some(0o640), Some("nobody"));
    let files = p.entries.len();
    assert!(
        files >= super::upload::SPLIT_MIN_ENTRIES,
        "{files} files: one stream only"
    );
    let (comm, _sink) = connected(&sshd).await;
    comm.upload(&[p]).await.unwrap();
    for d in 0..6 {
        for sub in [format!("d{d}"), format!("d{d}/sub")] {
            let m = std::fs::metadata(dest.join(&sub)).unwrap();
            assert_eq!((m.mode() & 0o7777, m.uid()), (0o750, 65534), "{sub}");
        }
        let f = dest.join(format!("d{d}/sub/f59"));
        assert_eq!(std::fs::read_to_string(&f).unwrap(), format!("{d}/59\n"));
        let m = std::fs::metadata(&f).unwrap();
        assert_eq!((m.mode() & 0o7777, m.uid()), (0o640, 65534));
    }
    let count = walkdir_files(&dest);
    assert_eq!(count, 360);

    let mut p = plan(&src, dest.to_str().unwrap(), None, None);
    let last = p.entries.last_mut().unwrap();
    last.sha256 = Some([2u8; 32]);
    let bad = last.rel.clone();
    let err = comm.upload(&[p]).await.unwrap_err();
    assert!(
        matches!(&err, CommError::Checksum { path, .. } if path.ends_with(&bad)),
        "{err}"
    );
}

fn walkdir_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            if p.is_dir() { walkdir_files(&p) } else { 1 }
        })
        .sum()
}

/// The paths a non-root login without openssl takes: everything through `sudo -n`, hashes by
/// `sha256sum`.
#[tokio::test]
async fn sudo_and_sha256sum_fallback() {
    let sshd = Sshd::started();
    let local = sshd.scratch("local/tree");
    std::fs::create_dir_all(local.join("sub")).unwrap();
    std::fs::write(local.join("sub/a.txt"), b"a").unwrap();
    std::fs::write(local.join("big.bin"), vec![1u8; 17 * 1024 * 1024]).unwrap();
    let dest = sshd.scratch("remote").join("tree");
    let (mut comm, _sink) = connected(&sshd).await;
    comm.remote.sudo = "sudo -n ";
    comm.remote.openssl = false;
    comm.upload(&[plan(&local, dest.to_str().unwrap(), Some(0o600), None)])
        .await
        .unwrap();
    assert_eq!(std::fs::read(dest.join("sub/a.txt")).unwrap(), b"a");
    assert_eq!(
        std::fs::metadata(dest.join("big.bin")).unwrap().len(),
        17 << 20
    );
    let mut p = plan(&local, dest.to_str().unwrap(), None, None);
    for e in &mut p.entries {
        if e.rel == "sub/a.txt" {
            e.sha256 = Some([1u8; 32]);
        }
    }
    let err = comm.upload(&[p]).await.unwrap_err();
    assert!(
        matches!(&err, CommError::Checksum { path, .. } if path.ends_with("sub/a.txt")),
        "{err}"
    );
}

#[tokio::test]
async fn checksum_mismatch_is_detected() {
    let sshd = Sshd::started();
    let local = sshd.scratch("local");
    let remote = sshd.scratch("remote");
    let small = local.join("small.txt");
    std::fs::write(&small, b"hello").unwrap();
    let big = local.join("big.bin");
    std::fs::write(&big, vec![7u8; 17 * 1024 * 1024]).unwrap();
    let (comm, _sink) = connected(&sshd).await;
    for (src, name) in [(&small, "small.txt"), (&big, "big.bin")] {
        let dest = remote.join(name);
        let mut p = plan(src, dest.to_str().unwrap(), None, None);
        p.entries[0].sha256 = Some([0u8; 32]);
        match comm.upload(&[p]).await {
            Err(CommError::Checksum {
                path,
                local,
                remote,
            }) => {
                assert_eq!(path, dest.to_str().unwrap());
                assert_eq!(local, "0".repeat(64));
                assert_eq!(remote.len(), 64, "{remote}");
            }
            other => panic!("expected a checksum error for {name}, got {other:?}"),
        }
    }
    // A large file that fails verification never replaces the destination.
    assert!(!remote.join("big.bin").exists());
}

#[tokio::test]
async fn unknown_owner_is_an_error() {
    let sshd = Sshd::started();
    let local = sshd.scratch("local");
    std::fs::write(local.join("f"), b"x").unwrap();
    let dest = sshd.scratch("remote").join("f");
    let (comm, _sink) = connected(&sshd).await;
    let err = comm
        .upload(&[plan(
            &local.join("f"),
            dest.to_str().unwrap(),
            None,
            Some("no-such-user-bake"),
        )])
        .await;
    assert!(matches!(err, Err(CommError::Upload { .. })), "{err:?}");
}

#[tokio::test]
async fn reconnect_after_the_connection_drops() {
    let sshd = Sshd::started();
    let (mut comm, _sink) = connected(&sshd).await;
    let mut s = step("reboot");
    s.reboot = true;
    // Killing our own per-connection sshd process is what a reboot looks like from here.
    let out = comm.run(&s, "kill -9 $PPID; sleep 5").await.unwrap();
    assert!(out.disconnected, "{out:?}");
    assert_eq!(out.exit_status, None);
    comm.reconnect().await.unwrap();
    assert_eq!(
        comm.run(&step("t"), "true").await.unwrap().exit_status,
        Some(0)
    );
}

/// Uploads `plan` (one large file) over the SFTP transport, whatever `LARGE_FILES` says.
async fn sftp_upload(comm: &SshCommunicator, plan: &UploadPlan) -> Result<(), CommError> {
    let items = crate::remote::transfer::staging::items(std::slice::from_ref(plan));
    let item = items
        .into_iter()
        .find(|i| i.kind == EntryKind::File)
        .unwrap();
    let hasher = if comm.remote.openssl {
        "openssl dgst -sha256 -r"
    } else {
        "sha256sum"
    };
    let sent = std::sync::atomic::AtomicU64::new(0);
    let on_sent = |n: u64| {
        sent.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    };
    super::sftp::upload(&comm.handle, &comm.remote, hasher, item, &on_sent).await?;
    assert_eq!(
        sent.into_inner(),
        plan.entries[0].size,
        "progress must count every byte"
    );
    Ok(())
}

/// Both ways SFTP is reached: the `sftp` subsystem when logged in as root, and a root
/// `sftp-server` under `sudo -n` otherwise (with `sha256sum` instead of openssl).
#[tokio::test]
async fn sftp_upload_content_mode_owner_and_no_temp_left() {
    let sshd = Sshd::started();
    let local = sshd.scratch("local");
    let remote = sshd.scratch("remote");
    let big = local.join("app.bin");
    let bytes: Vec<u8> = (0..(20 * 1024 * 1024 + 12345u32))
        .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
        .collect();
    std::fs::write(&big, &bytes).unwrap();
    let (mut comm, _sink) = connected(&sshd).await;
    for (login, sudo, openssl) in [("root", "", true), ("sudo", "sudo -n ", false)] {
        comm.remote.sudo = sudo;
        comm.remote.openssl = openssl;
        let dir = remote.join(format!("{login}/opt/app/bin"));
        let dest = dir.join("app.bin");
        // An existing destination is replaced.
        if login == "sudo" {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&dest, b"old").unwrap();
        }
        let p = plan(
            &big,
            dest.to_str().unwrap(),
            Some(0o750),
            Some("nobody:nogroup"),
        );
        sftp_upload(&comm, &p).await.unwrap();
        assert!(std::fs::read(&dest).unwrap() == bytes, "{login}: content");
        let m = std::fs::metadata(&dest).unwrap();
        assert_eq!(
            (m.mode() & 0o7777, m.uid(), m.gid()),
            (0o750, 65534, 65534),
            "{login}"
        );
        // The parent was created root-owned with 0755; the temp file is gone.
        let d = std::fs::metadata(&dir).unwrap();
        assert_eq!((d.mode() & 0o777, d.uid()), (0o755, 0), "{login}");
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("app.bin")], "{login}");
    }
}

#[tokio::test]
async fn sftp_checksum_mismatch_is_detected_and_leaves_nothing() {
    let sshd = Sshd::started();
    let local = sshd.scratch("local");
    let remote = sshd.scratch("remote");
    let big = local.join("big.bin");
    std::fs::write(&big, vec![7u8; 17 * 1024 * 1024]).unwrap();
    let (mut comm, _sink) = connected(&sshd).await;
    for sudo in ["", "sudo -n "] {
        comm.remote.sudo = sudo;
        let dest = remote.join("big.bin");
        let mut p = plan(&big, dest.to_str().unwrap(), None, None);
        p.entries[0].sha256 = Some([0u8; 32]);
        match sftp_upload(&comm, &p).await {
            Err(CommError::Checksum {
                path,
                local,
                remote,
            }) => {
                assert_eq!(path, dest.to_str().unwrap());
                assert_eq!(local, "0".repeat(64));
                assert_eq!(remote, hex::encode(sha(&vec![7u8; 17 * 1024 * 1024])));
            }
            other => panic!("expected a checksum error ({sudo:?}), got {other:?}"),
        }
        // Neither the destination nor the temp file exists.
        assert_eq!(std::fs::read_dir(&remote).unwrap().count(), 0, "{sudo:?}");
    }
}

/// A local file that shrank after planning fails the upload and leaves no temp file.
#[tokio::test]
async fn sftp_short_source_fails_cleanly() {
    let sshd = Sshd::started();
    let local = sshd.scratch("local");
    let remote = sshd.scratch("remote");
    let big = local.join("big.bin");
    std::fs::write(&big, vec![1u8; 17 * 1024 * 1024]).unwrap();
    let dest = remote.join("big.bin");
    let p = plan(&big, dest.to_str().unwrap(), None, None);
    std::fs::write(&big, vec![1u8; 1024 * 1024]).unwrap();
    let (comm, _sink) = connected(&sshd).await;
    let err = sftp_upload(&comm, &p).await.unwrap_err();
    assert!(
        matches!(&err, CommError::Upload { reason, .. } if reason.contains("shorter than planned")),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(&remote).unwrap().count(), 0);
}

/// A parent directory that cannot be created is reported as such, before any SFTP starts.
#[tokio::test]
async fn sftp_uncreatable_parent_is_an_upload_error() {
    let sshd = Sshd::started();
    let local = sshd.scratch("local");
    let remote = sshd.scratch("remote");
    let big = local.join("big.bin");
    std::fs::write(&big, vec![3u8; 17 * 1024 * 1024]).unwrap();
    std::fs::write(remote.join("file"), b"not a directory").unwrap();
    let dest = remote.join("file/sub/big.bin");
    let (mut comm, _sink) = connected(&sshd).await;
    for sudo in ["", "sudo -n "] {
        comm.remote.sudo = sudo;
        let err = sftp_upload(&comm, &plan(&big, dest.to_str().unwrap(), None, None))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, CommError::Upload { reason, .. } if reason.contains("creating the directory")),
            "{sudo:?}: {err}"
        );
    }
    assert_eq!(std::fs::read_dir(&remote).unwrap().count(), 1);
}

/// The pipeline runs steps and uploads from spawned tasks: the futures must be `Send`.
#[allow(dead_code)]
fn futures_are_send(c: &SshCommunicator, s: &Step, p: &[UploadPlan]) {
    fn send<T: Send>(_: T) {}
    send(c.run(s, ""));
    send(c.upload(p));
    send(SshCommunicator::connect(c.target.clone(), c.sink.clone()));
}
