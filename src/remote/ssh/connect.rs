//! Establishing the one SSH connection: pinned host key, public-key auth, retries while the
//! builder boots.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use russh::client::{self, Handle};
use russh::keys::{HashAlg, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh::{Preferred, cipher};

use super::SshTarget;
use crate::remote::CommError;
use crate::retry::{self, Backoff, Poll, PollError};
use crate::ui::SharedSink;

/// Upper bound for one TCP connect + handshake + auth. A booting builder either answers
/// quickly or not at all; waiting longer on one attempt only delays the next one.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// Upper bound for the TCP connect alone. While an EC2 instance boots, its address drops SYNs
/// instead of refusing them, so an unbounded connect would notice sshd only after the kernel's
/// own SYN retries (~2 min) or the attempt timeout; this keeps "SSH is up" noticed within about
/// the polling ceiling. On a reachable host a connect takes one round trip.
const TCP_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Connection retries: quick at first (sshd often comes up within a second of the port
/// opening, and a refused connect costs one packet each way), settling at one attempt every
/// two seconds.
const BACKOFF: Backoff = Backoff {
    initial: Duration::from_millis(25),
    max: Duration::from_secs(2),
    factor: 1.5,
    timeout: Duration::from_secs(300),
};

pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// The russh event handler: only the host-key check matters to us.
pub struct Client {
    pinned: PublicKey,
    /// Set when the server showed a different key, so the caller can tell a mismatch (fatal)
    /// from any other handshake failure (retryable).
    mismatch: Arc<Mutex<Option<String>>>,
}

impl client::Handler for Client {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        // Only the bare pinned key is trusted; a certificate is not what we handed the builder.
        let got = match key {
            PublicKeyOrCertificate::PublicKey { key, .. } => key,
            PublicKeyOrCertificate::Certificate(cert) => {
                *self.mismatch.lock().unwrap() = Some(format!(
                    "certificate {}",
                    cert.public_key().fingerprint(HashAlg::Sha256)
                ));
                return Ok(false);
            }
        };
        if got.key_data() == self.pinned.key_data() {
            Ok(true)
        } else {
            *self.mismatch.lock().unwrap() = Some(fingerprint(got));
            Ok(false)
        }
    }
}

fn config() -> Arc<client::Config> {
    // AES-GCM runs on AES-NI/PCLMUL on both ends and is the fastest cipher pair with OpenSSH;
    // chacha20 stays as a fallback for servers that disable GCM.
    let preferred = Preferred {
        cipher: std::borrow::Cow::Borrowed(&[
            cipher::AES_256_GCM,
            cipher::AES_128_GCM,
            cipher::CHACHA20_POLY1305,
            cipher::AES_256_CTR,
            cipher::AES_128_CTR,
        ]),
        ..Preferred::default()
    };
    Arc::new(client::Config {
        // Large window and packets so output and probes never stall on flow control.
        window_size: 16 * 1024 * 1024,
        maximum_packet_size: 65535,
        channel_buffer_size: 256,
        preferred,
        nodelay: true,
        // A builder that dies (or reboots without closing TCP) is noticed in ~45 s instead of
        // hanging a step forever.
        keepalive_interval: Some(Duration::from_secs(15)),
        keepalive_max: 3,
        inactivity_timeout: None,
        ..Default::default()
    })
}

enum AttemptError {
    /// Not up yet (refused, reset, timed out, auth not ready): try again.
    Retry(String),
    /// Never going to work: stop at once.
    Fatal(CommError),
}

async fn attempt(
    target: &SshTarget,
    config: Arc<client::Config>,
) -> Result<Handle<Client>, AttemptError> {
    let endpoint = target.endpoint();
    let mismatch = Arc::new(Mutex::new(None));
    let handler = Client {
        pinned: target.host_key.clone(),
        mismatch: mismatch.clone(),
    };
    let tcp = tokio::time::timeout(
        TCP_CONNECT_TIMEOUT,
        TcpStream::connect((target.addr.as_str(), target.port)),
    )
    .await;
    let socket = match tcp {
        Ok(Ok(socket)) => socket,
        Ok(Err(e)) => return Err(AttemptError::Retry(e.to_string())),
        Err(_) => {
            return Err(AttemptError::Retry(format!(
                "TCP connect not answered within {TCP_CONNECT_TIMEOUT:?}"
            )));
        }
    };
    // `connect_stream` leaves the socket alone: apply the config's `nodelay` here.
    let _ = socket.set_nodelay(true);
    let connected = client::connect_stream(config, socket, handler).await;
    let mut handle = match connected {
        Ok(h) => h,
        Err(e) => {
            if let Some(got) = mismatch.lock().unwrap().take() {
                return Err(AttemptError::Fatal(CommError::HostKeyMismatch {
                    addr: endpoint,
                    expected: fingerprint(&target.host_key),
                    got,
                }));
            }
            return Err(AttemptError::Retry(describe(&e)));
        }
    };
    let key = PrivateKeyWithHashAlg::new(target.key.clone(), None);
    match handle
        .authenticate_publickey(target.user.clone(), key)
        .await
    {
        Ok(r) if r.success() => Ok(handle),
        // cloud-init installs the authorized key a little after sshd starts: keep trying, and
        // report the refusal only if it lasts until the deadline.
        Ok(_) => Err(AttemptError::Retry(format!(
            "authentication as {} not accepted yet",
            target.user
        ))),
        Err(e) => Err(AttemptError::Retry(describe(&e))),
    }
}

fn describe(e: &russh::Error) -> String {
    match e {
        russh::Error::IO(io) => io.to_string(),
        other => other.to_string(),
    }
}

pub async fn connect(target: &SshTarget, sink: &SharedSink) -> Result<Handle<Client>, CommError> {
    let endpoint = target.endpoint();
    let config = config();
    let start = Instant::now();
    let auth_refused = Arc::new(Mutex::new(false));
    let result = retry::poll(BACKOFF.with_timeout(target.timeout), |n| {
        let config = config.clone();
        let endpoint = endpoint.clone();
        let auth_refused = auth_refused.clone();
        async move {
            let left = target
                .timeout
                .saturating_sub(start.elapsed())
                .max(Duration::from_millis(200));
            let bound = ATTEMPT_TIMEOUT.min(left);
            let outcome = match tokio::time::timeout(bound, attempt(target, config)).await {
                Ok(r) => r,
                Err(_) => Err(AttemptError::Retry(format!("no answer within {bound:?}"))),
            };
            match outcome {
                Ok(h) => Poll::Ready(h),
                Err(AttemptError::Fatal(e)) => Poll::Fail(e),
                Err(AttemptError::Retry(why)) => {
                    *auth_refused.lock().unwrap() = why.starts_with("authentication");
                    if n > 0 {
                        sink.note(&format!(
                            "waiting for SSH on {endpoint} (attempt {}): {why}",
                            n + 1
                        ));
                    }
                    Poll::Pending(why)
                }
            }
        }
    })
    .await;
    match result {
        Ok(h) => Ok(h),
        Err(PollError::Failed(e)) => Err(e),
        Err(PollError::Timeout { last, .. }) => {
            if *auth_refused.lock().unwrap() {
                Err(CommError::AuthRefused {
                    addr: endpoint,
                    user: target.user.clone(),
                })
            } else {
                Err(CommError::ConnectTimeout {
                    addr: endpoint,
                    timeout: target.timeout,
                    last,
                })
            }
        }
    }
}
