//! Check out one commit of a repository into a fresh directory, with the
//! host's hardened git ([`crate::exec::git`]).
//!
//! Only the configured URL is fetched (never one from a delivery), with
//! only the transport that URL needs; the commit id and ref were checked by
//! the webhook parser; and the new repository gets no hooks (an empty
//! template, `core.hooksPath` off), so fetching runs nothing from the
//! repository.
use std::path::Path;
use std::time::Duration;

use crate::exec::git::{redact_url, Git, GitError, Transport};

/// How long one git command may take.
const GIT_TIMEOUT: Duration = Duration::from_secs(600);

/// Of the server's own environment, what a fetch over the URL's transport
/// may need: the ssh agent, proxies and CA bundles. Nothing else reaches
/// git.
const SSH_ENV: &[&str] = &["SSH_AUTH_SOCK"];
const HTTP_ENV: &[&str] = &[
    "http_proxy",
    "https_proxy",
    "HTTPS_PROXY",
    "all_proxy",
    "ALL_PROXY",
    "no_proxy",
    "NO_PROXY",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
];

#[derive(Debug, thiserror::Error)]
pub enum CheckoutError {
    #[error("git {step} failed: {detail}")]
    Git { step: String, detail: String },
    #[error("commit {sha} is not in {url} (nor in {fetch_ref})")]
    NoSuchCommit {
        sha: String,
        url: String,
        fetch_ref: String,
    },
    #[error("cannot prepare {dir}: {source}")]
    Io { dir: String, source: std::io::Error },
}

/// The hardened git for fetching `url`.
fn runner(url: &str) -> Result<Git, CheckoutError> {
    let transport = Transport::of_url(url);
    let mut git = Git::with_temp_home()
        .map_err(|e| CheckoutError::Git {
            step: "setup".into(),
            detail: e.to_string(),
        })?
        .transports(transport.as_slice())
        .config("advice.detachedHead", "false")
        .deadline(GIT_TIMEOUT);
    let pass: &[&str] = match transport {
        Some(Transport::Ssh) => SSH_ENV,
        Some(Transport::Http | Transport::Https) => HTTP_ENV,
        _ => &[],
    };
    for k in pass {
        if let Some(v) = std::env::var_os(k) {
            git = git.env(k, v);
        }
    }
    Ok(git)
}

async fn git(git: &Git, dir: &Path, step: &str, args: &[&str]) -> Result<String, CheckoutError> {
    let out = git
        .output(dir, args)
        .await
        .map_err(|e| CheckoutError::Git {
            step: step.to_string(),
            detail: match e {
                GitError::Exit { stderr_tail, .. } => stderr_tail,
                GitError::Timeout { after, .. } => format!("timed out after {}s", after.as_secs()),
                e => e.to_string(),
            },
        })?;
    Ok(String::from_utf8_lossy(&out).trim().to_string())
}

/// Fetch `sha` from `url` (or, when the remote will not serve a bare
/// commit id, `fetch_ref`, which must then contain it) and check it out,
/// detached, into `dir`, which must not exist yet or be empty.
///
/// A password in `url` never appears in the error (the runner masks it in
/// git's output; the URL itself is shown redacted).
pub async fn checkout(
    url: &str,
    sha: &str,
    fetch_ref: Option<&str>,
    dir: &Path,
) -> Result<(), CheckoutError> {
    let g = runner(url)?;
    checkout_inner(&g, url, sha, fetch_ref, dir).await
}

async fn checkout_inner(
    g: &Git,
    url: &str,
    sha: &str,
    fetch_ref: Option<&str>,
    dir: &Path,
) -> Result<(), CheckoutError> {
    std::fs::create_dir_all(dir).map_err(|source| CheckoutError::Io {
        dir: dir.display().to_string(),
        source,
    })?;
    git(g, dir, "init", &["init", "--quiet", "--template="]).await?;
    let by_id = git(
        g,
        dir,
        "fetch",
        &["fetch", "--quiet", "--no-tags", "--depth=1", "--", url, sha],
    )
    .await;
    if let Err(first) = by_id {
        let Some(r) = fetch_ref else {
            return Err(first);
        };
        let refspec = format!("+{r}:refs/remotes/origin/build");
        git(
            g,
            dir,
            "fetch",
            &["fetch", "--quiet", "--no-tags", "--", url, &refspec],
        )
        .await?;
        if git(
            g,
            dir,
            "cat-file",
            &["cat-file", "-e", &format!("{sha}^{{commit}}")],
        )
        .await
        .is_err()
        {
            return Err(CheckoutError::NoSuchCommit {
                sha: sha.to_string(),
                url: redact_url(url),
                fetch_ref: r.to_string(),
            });
        }
    }
    git(
        g,
        dir,
        "checkout",
        &["checkout", "--quiet", "--detach", sha],
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::git::fixtures::{self, Hostile};

    #[tokio::test]
    async fn checks_out_a_commit_from_a_path_or_file_url() {
        let dir = tempfile::tempdir().unwrap();
        let (repo, sha) = fixtures::repo(dir.path());
        let file_url = format!("file://{}", repo.display());
        for (i, url) in [repo.display().to_string(), file_url].iter().enumerate() {
            let ws = dir.path().join(format!("ws{i}"));
            checkout(url, &sha, None, &ws).await.unwrap();
            assert_eq!(std::fs::read_to_string(ws.join("a.txt")).unwrap(), "a\n");
            assert_eq!(fixtures::git(&ws, &["rev-parse", "HEAD"]), sha);
            // An empty template: no sample hooks, no info/exclude.
            assert!(!ws.join(".git/hooks").exists());
        }
        let e = checkout(
            &repo.display().to_string(),
            &"0".repeat(40),
            None,
            &dir.path().join("none"),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(e, CheckoutError::Git { ref step, .. } if step == "fetch"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_hostile_source_repository_runs_nothing() {
        let h = Hostile::new();
        h.assert_armed();
        let ws = h._dir.path().join("ws");
        checkout(
            &format!("file://{}", h.repo.display()),
            &h.sha,
            Some("refs/heads/main"),
            &ws,
        )
        .await
        .unwrap();
        assert_eq!(h.fired(), "");
        // A checkout-like call in the hostile repository itself.
        let g = Git::with_temp_home()
            .unwrap()
            .transports(&[Transport::File]);
        git(
            &g,
            &h.repo,
            "checkout",
            &["checkout", "--quiet", "--detach", &h.sha],
        )
        .await
        .unwrap();
        assert_eq!(h.fired(), "");
    }

    #[tokio::test]
    async fn command_transports_are_refused_and_passwords_never_shown() {
        let h = Hostile::new();
        let url = format!("ext::sh -c touch% {}", h.marker.display());
        let e = checkout(
            &url,
            &h.sha,
            Some("refs/heads/main"),
            &h._dir.path().join("ws"),
        )
        .await
        .unwrap_err();
        assert!(e.to_string().contains("not allowed"), "{e}");
        assert!(!h.marker.exists());

        // Nothing listens on port 1.
        let url = "https://deploy:hunter2@127.0.0.1:1/app.git";
        let e = checkout(
            url,
            &h.sha,
            Some("refs/heads/main"),
            &h._dir.path().join("ws2"),
        )
        .await
        .unwrap_err();
        assert!(!format!("{e} {e:?}").contains("hunter2"), "{e:?}");
    }
}
