//! `[ssh]`: how bake reaches the builder with the ssh communicator (user, port, which
//! address, connect timeout).

use std::time::Duration;

use super::super::checks;
use super::super::model::{CommunicatorKind, Ssh, SshInterface};
use super::walker::{Cx, Span, Tbl};

pub(super) const SSH_KEYS: &[&str] = &["username", "port", "interface", "timeout"];
pub(super) const INTERFACES: &[&str] = &["private_ip", "public_ip", "private_dns", "public_dns"];

pub(super) fn ssh(
    cx: &mut Cx<'_>,
    root: &Tbl<'_, '_>,
    comm: Option<CommunicatorKind>,
    comm_span: Option<Span>,
) -> Option<Ssh> {
    let mut ssh = Ssh {
        username: String::new(),
        port: 22,
        interface: SshInterface::PrivateIp,
        timeout: Duration::from_secs(300),
    };
    let Some(t) = cx.table(root, "ssh", "[ssh]".to_string()) else {
        if comm == Some(CommunicatorKind::Ssh) && cx.get(root, "ssh").is_none() {
            let span = comm_span
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| cx.top_span());
            cx.err(Some(span), "the ssh communicator needs an [ssh] section", "add [ssh] with username = \"admin\" (the image's default user: admin on Debian, ubuntu on Ubuntu, ec2-user on Amazon Linux)");
            return None;
        }
        return if comm == Some(CommunicatorKind::Ssh) {
            None
        } else {
            Some(ssh)
        };
    };
    cx.keys(&t, SSH_KEYS);
    let n0 = cx.errors.len();
    if comm == Some(CommunicatorKind::Ssh) {
        if let Some(u) = cx.req_string(&t, "username", "\"admin\"") {
            if checks::check_owner(&u.v).is_err() || u.v.contains(':') {
                cx.err(
                    Some(u.span.clone()),
                    format!("`{}` is not a valid user name", u.v),
                    "use the image's login user, e.g. \"admin\", \"ubuntu\" or \"ec2-user\"",
                );
            }
            ssh.username = u.v;
        }
    } else if let Some(u) = cx.string(&t, "username") {
        ssh.username = u.v;
    }
    if let Some(p) = cx.integer(&t, "port", 1, 65535) {
        ssh.port = p.v as u16;
    }
    if let Some(i) = cx.string(&t, "interface") {
        ssh.interface = match i.v.as_str() {
            "private_ip" => SshInterface::PrivateIp,
            "public_ip" => SshInterface::PublicIp,
            "private_dns" => SshInterface::PrivateDns,
            "public_dns" => SshInterface::PublicDns,
            other => {
                let help = match checks::suggest(other, INTERFACES) {
                    Some(s) => format!("did you mean \"{s}\"?"),
                    None => format!("use one of {}", INTERFACES.join(", ")),
                };
                cx.err(
                    Some(i.span.clone()),
                    format!("unknown ssh interface `{other}`"),
                    help,
                );
                SshInterface::PrivateIp
            }
        };
    }
    if let Some(d) = cx.duration(&t, "timeout") {
        ssh.timeout = d.v;
    }
    if cx.errors.len() > n0 {
        None
    } else {
        Some(ssh)
    }
}
