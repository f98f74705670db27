//! `[git.NAME]` and `[ssh.NAME]`: the repositories and hosts a pipeline
//! declares once and grants stages by name (`grants.git`, `grants.ssh`).
//! Declaring them in one place keeps what a stage may reach readable: a
//! grant is a name, and the URL, branch rules, host key and key secret sit
//! next to each other where a reviewer sees them.

use std::collections::BTreeMap;

use serde_spanned::Spanned;

use super::parse::{RawGitRemote, RawSshHost, Str, StrList};
use super::validate::Ctx;
use super::{GitRemote, SecretSource, SshHost};

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

pub(super) fn build_git(
    cx: &mut Ctx<'_, '_>,
    raw: BTreeMap<Str, Spanned<RawGitRemote>>,
) -> BTreeMap<String, GitRemote> {
    let mut out = BTreeMap::new();
    for (key, value) in raw {
        cx.check_id(&key, "git repository");
        let name = key.get_ref().clone();
        let span = value.span();
        let r = value.into_inner();
        let Some(url) = r.url else {
            cx.err(
                span,
                format!("[git.{name}] is missing `url`; expected e.g. `url = \"https://git.example.com/org/deploy.git\"`"),
            );
            continue;
        };
        if let Err(e) = git_url(url.get_ref()) {
            cx.err(url.span(), format!("[git.{name}] `url`: {e}"));
        }
        let branch = match &r.branch {
            Some(b) => {
                if let Err(e) = branch_name(b.get_ref()) {
                    cx.err(b.span(), format!("[git.{name}] `branch`: {e}"));
                }
                b.get_ref().clone()
            }
            None => "main".to_string(),
        };
        let push = match &r.push {
            Some(list) => {
                for p in list {
                    if let Err(e) = globset::Glob::new(p.get_ref()) {
                        cx.err(
                            p.span(),
                            format!("[git.{name}] `push`: invalid branch glob: {}", e.kind()),
                        );
                    }
                }
                list.iter().map(|p| p.get_ref().clone()).collect()
            }
            None => vec![branch.clone()],
        };
        out.insert(
            name.clone(),
            GitRemote {
                name,
                url: url.into_inner(),
                branch,
                push,
                location: cx.loc(key.span()),
            },
        );
    }
    out
}

pub(super) fn build_ssh(
    cx: &mut Ctx<'_, '_>,
    raw: BTreeMap<Str, Spanned<RawSshHost>>,
    secrets: &BTreeMap<String, SecretSource>,
) -> BTreeMap<String, SshHost> {
    let mut out = BTreeMap::new();
    for (key, value) in raw {
        cx.check_id(&key, "ssh host");
        let name = key.get_ref().clone();
        let span = value.span();
        let r = value.into_inner();
        let mut missing = |field: &str, example: &str| {
            cx.err(
                span.clone(),
                format!("[ssh.{name}] is missing `{field}`; expected e.g. `{field} = {example}`"),
            );
        };
        let (Some(address), Some(host_key), Some(key_secret)) = (&r.address, &r.host_key, &r.key)
        else {
            if r.address.is_none() {
                missing("address", "\"deploy@203.0.113.7:22\"");
            }
            if r.host_key.is_none() {
                missing(
                    "host-key",
                    "\"ssh-ed25519 AAAA…\" (the server's key, as `ssh-keyscan` prints it; host key checking is never turned off)",
                );
            }
            if r.key.is_none() {
                missing(
                    "key",
                    "\"deploy-key\" (the [secrets] entry holding the private key)",
                );
            }
            continue;
        };
        let (user, host, port) = match ssh_address(address.get_ref()) {
            Ok(a) => a,
            Err(e) => {
                cx.err(address.span(), format!("[ssh.{name}] `address`: {e}"));
                continue;
            }
        };
        if let Err(e) = check_host_key(host_key.get_ref()) {
            cx.err(host_key.span(), format!("[ssh.{name}] `host-key`: {e}"));
        }
        if !secrets.contains_key(key_secret.get_ref()) {
            cx.err(
                key_secret.span(),
                format!(
                    "[ssh.{name}] `key` names undeclared secret `{}`; declare it in [secrets]",
                    key_secret.get_ref()
                ),
            );
        }
        out.insert(
            name.clone(),
            SshHost {
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
                location: cx.loc(key.span()),
            },
        );
    }
    out
}

/// `grants.git` / `grants.ssh`: names of declared entries, deduplicated.
pub(super) fn granted_names<T>(
    cx: &mut Ctx<'_, '_>,
    list: Option<&StrList>,
    declared: &BTreeMap<String, T>,
    key: &str,
    table: &str,
) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for n in list.into_iter().flatten() {
        if !declared.contains_key(n.get_ref()) {
            let known = if declared.is_empty() {
                format!("no [{table}.NAME] tables are declared")
            } else {
                let names: Vec<String> = declared.keys().map(|k| format!("`{k}`")).collect();
                format!("declared: {}", names.join(", "))
            };
            cx.err(
                n.span(),
                format!("`{key}` names undeclared `{}`; {known}", n.get_ref()),
            );
        } else if !out.contains(n.get_ref()) {
            out.push(n.get_ref().clone());
        }
    }
    out
}

/// Remotes the host's git may talk to. `ssh://` and scp-style addresses
/// are refused: git would use the user's own ssh keys and config, outside
/// every grant. `ext::` and friends would run commands.
pub fn git_url(url: &str) -> Result<(), String> {
    let parsed = url::Url::parse(url).map_err(|e| {
        format!("{url:?} is not a URL ({e}); expected https://, http://, git:// or file://")
    })?;
    match parsed.scheme() {
        "https" | "http" | "git" | "file" => {}
        other => {
            return Err(format!(
                "scheme `{other}` is not supported; expected https://, http://, git:// or file://"
            ))
        }
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(
            "credentials do not belong in the URL (they would be logged and stored)".into(),
        );
    }
    Ok(())
}

/// A branch name git accepts and no option can hide in.
pub fn branch_name(b: &str) -> Result<(), String> {
    let ok = !b.is_empty()
        && !b.starts_with(['-', '/', '.'])
        && !b.ends_with(['/', '.'])
        && !b.ends_with(".lock")
        && !b.contains("..")
        && !b.contains("//")
        && !b.contains("@{")
        && b.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{b:?} is not a branch name (letters, digits, `-`, `_`, `.`, `/`; no `..`, not starting with `-`)"
        ))
    }
}

/// `user@host[:port]` → parts. The user and host are plain names: they
/// end up on ssh's command line.
pub fn ssh_address(a: &str) -> Result<(String, String, u16), String> {
    let expected = "expected `user@host` or `user@host:port`";
    let (user, rest) = a
        .split_once('@')
        .ok_or_else(|| format!("{a:?} has no user; {expected}"))?;
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("port {p:?} is not a port number"))?,
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
        return Err(format!(
            "user {user:?} is not a plain user name; {expected}"
        ));
    }
    if !plain(host) {
        return Err(format!(
            "host {host:?} is not a plain host name or IPv4 address; {expected}"
        ));
    }
    Ok((user.to_string(), host.to_string(), port))
}

/// `TYPE BASE64 [comment]` as `ssh-keyscan` prints it (without the host).
pub fn check_host_key(k: &str) -> Result<(), String> {
    use base64::Engine;
    let mut parts = k.split_whitespace();
    let (Some(kind), Some(data)) = (parts.next(), parts.next()) else {
        return Err("expected `TYPE BASE64`, e.g. \"ssh-ed25519 AAAAC3Nza…\" (the output of `ssh-keyscan -t ed25519 HOST` without the host)".into());
    };
    if !HOST_KEY_TYPES.contains(&kind) {
        return Err(format!(
            "unknown key type `{kind}`; expected one of {}",
            HOST_KEY_TYPES.join(", ")
        ));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data)
        .map_err(|_| "the key is not valid base64".to_string())?;
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
        return Err(format!("the key data is not a `{kind}` key"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_urls() {
        for ok in [
            "https://git.example.com/o/r.git",
            "git://127.0.0.1:19418/r.git",
            "file:///srv/git/r.git",
        ] {
            assert!(git_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "ssh://git@github.com/o/r",
            "git@github.com:o/r.git",
            "ext::sh -c touch% /tmp/x",
            "https://user:token@github.com/o/r",
            "/srv/r.git",
        ] {
            assert!(git_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn branch_names() {
        for ok in ["main", "env/dev", "release-1.2"] {
            assert!(branch_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-f", "a..b", "x.lock", "a b", "a/", "@{u}", "a;rm"] {
            assert!(branch_name(bad).is_err(), "{bad}");
        }
    }

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
            .contains("not a `ssh-rsa` key"));
    }
}
