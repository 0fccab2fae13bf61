//! Large files over pipelined SFTP: one `sftp-server` per file, run as root on the builder,
//! driven by `russh-sftp` with many large writes in flight. The file lands in a private temp
//! file next to its destination; the same verify / chown / chmod / `mv -T` step as the raw
//! stream then puts it in place only if its sha256 matches.
//!
//! How the server is reached (all on the one SSH connection, as channels): one root command
//! (`sudo -n` unless logged in as root) creates the parent directory and finds the
//! `sftp-server` binary (Debian/Ubuntu `/usr/lib/openssh`, RHEL/Amazon Linux
//! `/usr/libexec/openssh`, and older layouts); the binary then runs as root on its own channel
//! (`sudo -n /usr/lib/openssh/sftp-server`), because the `sftp` subsystem would run as the
//! login user. Logged in as root, the `sftp` subsystem is used directly.
//!
//! Which transport large files use is chosen in one place, [`LARGE_FILES`]; the measurements
//! behind the choice are in the docs of [`super::upload`].

use russh::client::Handle;
use russh_sftp::client::{Config, SftpSession};
use russh_sftp::protocol::{FileAttributes, OpenFlags};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use super::Remote;
use super::connect::Client;
use super::exec::{capture, protocol};
use crate::remote::CommError;
use crate::remote::transfer::items::{Item, SourceFile, upload_err};
use crate::remote::transfer::script::{as_root, program_as_root, remove_file};
use crate::remote::transfer::sftp::{SFTP_SERVERS, finish_script, prepare_script};
use crate::remote::transfer::verify;

/// How files at or above the stream threshold travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(dead_code)] // only one variant is chosen at a time; the other stays available and tested
pub(super) enum LargeFiles {
    /// Raw bytes into `cat > temp` over an exec channel.
    RawStream,
    /// Pipelined SFTP writes into the same temp file.
    Sftp,
}

/// The one place the large-file transport is chosen (see the measurements in `upload.rs`).
pub(super) const LARGE_FILES: LargeFiles = LargeFiles::RawStream;

/// Bytes per SFTP write request. OpenSSH accepts packets up to 256 KiB (and says so in its
/// `limits@openssh.com` reply, which russh-sftp honours); bigger writes mean fewer replies.
const WRITE_PACKET: u32 = 256 * 1024;

/// Write requests in flight before the oldest reply is awaited. The SSH channel window caps
/// what is actually on the wire; this only has to keep the window full.
const IN_FLIGHT: usize = 64;

/// Local read size; each read is handed to the SFTP file as one buffered write.
const READ_CHUNK: usize = 4 * 1024 * 1024;

/// Chunks read ahead of the network, so disk reads overlap encryption.
const READ_AHEAD: usize = 4;

/// The temp file the upload writes: next to the destination, so the final rename stays on one
/// filesystem, and unguessable, because it is created by root in a directory others may write.
pub(super) fn temp_name(dest: &str) -> String {
    format!("{dest}.bake-upload.{:016x}", rand::random::<u64>())
}

fn parent(dest: &str) -> &str {
    dest.rsplit_once('/')
        .map_or("/", |(p, _)| if p.is_empty() { "/" } else { p })
}

/// Opens an SFTP session as root whose working files may go into `parent` (created first).
///
/// One round trip first creates the directory and finds the `sftp-server` binary (as root, so
/// a `sudo` that wants a password fails here, with its own message, not as a hung SFTP
/// handshake). Logged in as root, the `sftp` subsystem serves the session (whatever sshd
/// configured: a binary or `internal-sftp`); otherwise the binary runs under `sudo -n` on its
/// own channel. (As root, subsystem and binary measured the same within noise.)
async fn session(
    handle: &Handle<Client>,
    remote: &Remote,
    parent: &str,
) -> Result<SftpSession, CommError> {
    let prepare = as_root(remote.sudo, &prepare_script(parent));
    let out = capture(handle, &prepare, Vec::new()).await?;
    if out.status != Some(0) {
        return Err(upload_err(
            parent,
            format!(
                "creating the directory as root failed: {}",
                out.stderr_text()
            ),
        ));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let server = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("bake-sftp-server:"))
        .unwrap_or("")
        .to_string();

    let channel = handle
        .channel_open_session()
        .await
        .map_err(|e| protocol("opening a channel", e))?;
    if remote.sudo.is_empty() {
        channel
            .request_subsystem(true, "sftp")
            .await
            .map_err(|e| protocol("starting the sftp subsystem", e))?;
    } else if !server.is_empty() {
        let command = program_as_root(remote.sudo, &server);
        channel
            .exec(true, command)
            .await
            .map_err(|e| protocol("starting sftp-server", e))?;
    } else {
        return Err(upload_err(
            parent,
            format!(
                "no sftp-server binary on the builder (looked for {}), and the sftp \
                 subsystem would not run as root",
                SFTP_SERVERS.join(", ")
            ),
        ));
    }
    let config = Config {
        max_packet_len: WRITE_PACKET,
        max_write_packet_len: WRITE_PACKET,
        max_concurrent_writes: IN_FLIGHT,
        ..Config::default()
    };
    let sftp = SftpSession::new_with_config(channel.into_stream(), config)
        .await
        .map_err(|e| {
            let how = if remote.sudo.is_empty() {
                "the sftp subsystem".to_string()
            } else {
                format!("{}{server}", remote.sudo)
            };
            CommError::Sftp {
                op: format!("could not start SFTP on the builder ({how})"),
                source: Box::new(e),
            }
        })?;
    // A reply can wait behind IN_FLIGHT large writes on a slow link: be patient once started.
    sftp.set_timeout(120);
    Ok(sftp)
}

/// Reads `item` in large chunks on a blocking thread.
fn produce(item: Item, tx: mpsc::Sender<Result<Vec<u8>, CommError>>) {
    let mut src = match SourceFile::open(&item) {
        Ok(s) => s,
        Err(e) => {
            let _ = tx.blocking_send(Err(e));
            return;
        }
    };
    while src.left() > 0 {
        let mut buf = Vec::with_capacity(src.left().min(READ_CHUNK as u64) as usize);
        let sent = match src.append(&mut buf, READ_CHUNK as u64) {
            Ok(_) => tx.blocking_send(Ok(buf)),
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        };
        if sent.is_err() {
            return;
        }
    }
}

/// Sends the bytes of `item` into `temp` (created 0600, exclusively).
async fn send(
    sftp: &SftpSession,
    item: Item,
    temp: &str,
    on_sent: &(dyn Fn(u64) + Sync),
) -> Result<(), CommError> {
    let dest = item.dest.clone();
    let attrs = FileAttributes {
        permissions: Some(0o600),
        ..FileAttributes::empty()
    };
    let mut file = sftp
        .open_with_flags_and_attributes(
            temp,
            OpenFlags::CREATE | OpenFlags::EXCLUDE | OpenFlags::WRITE,
            attrs,
        )
        .await
        .map_err(|e| upload_err(&dest, format!("creating {temp} on the builder: {e}")))?;
    let (tx, mut rx) = mpsc::channel(READ_AHEAD);
    let producer = tokio::task::spawn_blocking(move || produce(item, tx));
    let fed = async {
        while let Some(chunk) = rx.recv().await {
            let chunk = chunk?;
            file.write_all(&chunk)
                .await
                .map_err(|e| upload_err(&dest, format!("writing on the builder: {e}")))?;
            on_sent(chunk.len() as u64);
        }
        // Waits for every write's reply, then for the close: an error in any shows here.
        file.shutdown()
            .await
            .map_err(|e| upload_err(&dest, format!("writing on the builder: {e}")))
    }
    .await;
    producer.abort();
    fed
}

/// Uploads one large file over SFTP, then verifies and renames it into place. `hasher` is the
/// command that prints `HEX…` for a path (`openssl dgst -sha256 -r` or `sha256sum`).
pub(super) async fn upload(
    handle: &Handle<Client>,
    remote: &Remote,
    hasher: &str,
    item: Item,
    on_sent: &(dyn Fn(u64) + Sync),
) -> Result<(), CommError> {
    let temp = temp_name(&item.dest);
    let path = item.dest.clone();
    let expected = item.sha256.map(hex::encode).unwrap_or_default();
    let script = finish_script(&item, &temp, hasher);

    let sftp = session(handle, remote, parent(&item.dest)).await?;
    let sent = send(&sftp, item, &temp, on_sent).await;
    let _ = sftp.close().await;
    if let Err(e) = sent {
        let rm = remove_file(remote.sudo, &temp);
        let _ = capture(handle, &rm, Vec::new()).await;
        return Err(e);
    }

    let command = as_root(remote.sudo, &script);
    let out = capture(handle, &command, Vec::new()).await?;
    verify::finish_outcome(out.status, &out.stderr_text(), path, expected, "finishing")
}
