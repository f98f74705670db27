//! `[ssh.NAME]`: the hosts a pipeline declares once and grants stages by
//! name (`grants.ssh`), with the pinned host key and the secret holding
//! the private key next to the address.
use std::collections::BTreeMap;

use serde::Deserialize;
use serde_spanned::Spanned;

use crate::caps::capability::{Capability, GrantCx, Str};

/// A host the system `ssh` reaches for the stages granted it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshHost {
    pub name: String,
    pub user: String,
    pub host: String,
    pub port: u16,
    /// `TYPE BASE64` of the host's public key, as in known_hosts.
    pub host_key: String,
    /// Secret holding the private key (OpenSSH format).
    pub key: String,
}

impl SshHost {
    /// The one known_hosts line ssh may accept for this host.
    pub fn known_hosts_line(&self) -> String {
        if self.port == 22 {
            format!("{} {}", self.host, self.host_key)
        } else {
            format!("[{}]:{} {}", self.host, self.port, self.host_key)
        }
    }

    /// `user@host:port`, for messages and the audit trail.
    pub fn address(&self) -> String {
        format!("{}@{}:{}", self.user, self.host, self.port)
    }
}

/// Host key types ssh accepts in known_hosts.
const HOST_KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

/// The pipeline file as the ssh capability reads it: its own tables.
#[derive(Deserialize)]
struct Doc {
    #[serde(default)]
    ssh: BTreeMap<Str, Spanned<RawSshHost>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawSshHost {
    address: Option<Str>,
    host_key: Option<Str>,
    key: Option<Str>,
}

/// Every `[ssh.NAME]` table, checked.
pub(super) fn declare(cx: &mut GrantCx<'_>) -> BTreeMap<String, SshHost> {
    let Some(doc) = cx.decode::<Doc>(super::SshCap::TABLE.as_slice()) else {
        return BTreeMap::new();
    };
    cx.declarations(doc.ssh, "ssh host", host)
}

fn host(
    cx: &mut GrantCx<'_>,
    name: String,
    span: std::ops::Range<usize>,
    r: RawSshHost,
) -> Option<SshHost> {
    let missing = |cx: &mut GrantCx<'_>, field: &str, example: &str| {
        cx.err(
            span.clone(),
            format!("[ssh.{name}] is missing `{field}`; expected e.g. `{field} = {example}`"),
        );
    };
    let (Some(address), Some(host_key), Some(key_secret)) = (&r.address, &r.host_key, &r.key)
    else {
        if r.address.is_none() {
            missing(cx, "address", "\"deploy@203.0.113.7:22\"");
        }
        if r.host_key.is_none() {
            missing(
                cx,
                "host-key",
                "\"ssh-ed25519 AAAA…\" (the server's key, as `ssh-keyscan` prints it; host key checking is never turned off)",
            );
        }
        if r.key.is_none() {
            missing(
                cx,
                "key",
                "\"deploy-key\" (the [secrets] entry holding the private key)",
            );
        }
        return None;
    };
    let (user, host, port) = match ssh_address(address.get_ref()) {
        Ok(a) => a,
        Err(e) => {
            cx.err(address.span(), format!("[ssh.{name}] `address`: {e}"));
            return None;
        }
    };
    if let Err(e) = check_host_key(host_key.get_ref()) {
        cx.err(host_key.span(), format!("[ssh.{name}] `host-key`: {e}"));
    }
    if !cx.secrets.iter().any(|s| s == key_secret.get_ref()) {
        cx.err(
            key_secret.span(),
            format!(
                "[ssh.{name}] `key` names undeclared secret `{}`; declare it in [secrets]",
                key_secret.get_ref()
            ),
        );
    }
    Some(SshHost {
        name,
        user,
        host,
        port,
        host_key: host_key
            .get_ref()
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" "),
        key: key_secret.get_ref().clone(),
    })
}

/// `user@host[:port]` → parts. The user and host are plain names: they
/// end up on ssh's command line.
pub fn ssh_address(a: &str) -> anyhow::Result<(String, String, u16)> {
    let expected = "expected `user@host` or `user@host:port`";
    let (user, rest) = a
        .split_once('@')
        .ok_or_else(|| anyhow::anyhow!("{a:?} has no user; {expected}"))?;
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| anyhow::anyhow!("port {p:?} is not a port number"))?,
        ),
        None => (rest, 22),
    };
    let plain = |s: &str| {
        !s.is_empty()
            && !s.starts_with('-')
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    if !plain(user) {
        anyhow::bail!("user {user:?} is not a plain user name; {expected}");
    }
    if !plain(host) {
        anyhow::bail!("host {host:?} is not a plain host name or IPv4 address; {expected}");
    }
    Ok((user.to_string(), host.to_string(), port))
}

/// `TYPE BASE64 [comment]` as `ssh-keyscan` prints it (without the host).
pub fn check_host_key(k: &str) -> anyhow::Result<()> {
    use base64::Engine;
    let mut parts = k.split_whitespace();
    let (Some(kind), Some(data)) = (parts.next(), parts.next()) else {
        anyhow::bail!("expected `TYPE BASE64`, e.g. \"ssh-ed25519 AAAAC3Nza…\" (the output of `ssh-keyscan -t ed25519 HOST` without the host)");
    };
    if !HOST_KEY_TYPES.contains(&kind) {
        anyhow::bail!(
            "unknown key type `{kind}`; expected one of {}",
            HOST_KEY_TYPES.join(", ")
        );
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data)
        .map_err(|_| anyhow::anyhow!("the key is not valid base64"))?;
    // The blob starts with its own type name: catches a key pasted under
    // the wrong type or truncated.
    let named = bytes
        .get(4..)
        .and_then(|b| {
            let n = u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
            b.get(..n)
        })
        .map(|n| n == kind.as_bytes())
        .unwrap_or(false);
    if !named {
        anyhow::bail!("the key data is not a `{kind}` key");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_addresses() {
        assert_eq!(
            ssh_address("deploy@127.0.0.1:2222").unwrap(),
            ("deploy".into(), "127.0.0.1".into(), 2222)
        );
        assert_eq!(ssh_address("d@h").unwrap().2, 22);
        for bad in [
            "host",
            "-oProxyCommand=x@h",
            "d@-oProxyCommand=x",
            "d@h:0",
            "d@h:x",
            "d@h;x",
        ] {
            assert!(ssh_address(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn host_keys() {
        // A real ed25519 public key blob.
        let k = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";
        assert!(check_host_key(k).is_ok());
        assert!(check_host_key(&format!("{k} comment")).is_ok());
        assert!(check_host_key("ssh-ed25519").is_err());
        assert!(check_host_key("ssh-dss AAAA").is_err());
        assert!(check_host_key("ssh-ed25519 !!!").is_err());
        let wrong = k.replace("ssh-ed25519", "ssh-rsa");
        assert!(check_host_key(&wrong)
            .unwrap_err()
            .to_string()
            .contains("not a `ssh-rsa` key"));
    }
}
