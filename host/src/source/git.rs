//! Check out one commit of a repository into a fresh directory, with the
//! system `git`.
//!
//! Only the configured URL is fetched (never one from a delivery), the
//! commit id and ref were checked by the webhook parser, and the new
//! repository gets no hooks (an empty template, `core.hooksPath` off), so
//! fetching runs nothing from the repository.
use std::path::Path;
use std::time::Duration;

use tokio::process::Command;

/// How long one git command may take.
const GIT_TIMEOUT: Duration = Duration::from_secs(600);

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

async fn git(dir: &Path, step: &str, args: &[&str]) -> Result<String, CheckoutError> {
    let mut cmd = Command::new("git");
    cmd.arg("-C")
        .arg(dir)
        .args([
            "-c",
            "core.hooksPath=/dev/null",
            "-c",
            "advice.detachedHead=false",
        ])
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_ASKPASS", "true")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let fail = |detail: String| CheckoutError::Git {
        step: step.to_string(),
        detail,
    };
    let out = tokio::time::timeout(GIT_TIMEOUT, cmd.output())
        .await
        .map_err(|_| fail(format!("timed out after {}s", GIT_TIMEOUT.as_secs())))?
        .map_err(|e| fail(format!("cannot run git: {e}")))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        return Err(fail(last[last.len().saturating_sub(3)..].join("; ")));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Fetch `sha` from `url` (or, when the remote will not serve a bare
/// commit id, `fetch_ref`, which must then contain it) and check it out,
/// detached, into `dir`, which must not exist yet or be empty.
///
/// A password in `url` never appears in the error.
pub async fn checkout(
    url: &str,
    sha: &str,
    fetch_ref: Option<&str>,
    dir: &Path,
) -> Result<(), CheckoutError> {
    let password = url::Url::parse(url)
        .ok()
        .and_then(|u| u.password().map(str::to_string))
        .filter(|p| !p.is_empty());
    checkout_inner(url, sha, fetch_ref, dir)
        .await
        .map_err(|e| match (&password, e) {
            (Some(p), CheckoutError::Git { step, detail }) => CheckoutError::Git {
                step,
                detail: detail.replace(p.as_str(), "***"),
            },
            (
                Some(p),
                CheckoutError::NoSuchCommit {
                    sha,
                    url,
                    fetch_ref,
                },
            ) => CheckoutError::NoSuchCommit {
                sha,
                url: url.replace(p.as_str(), "***"),
                fetch_ref,
            },
            (_, e) => e,
        })
}

async fn checkout_inner(
    url: &str,
    sha: &str,
    fetch_ref: Option<&str>,
    dir: &Path,
) -> Result<(), CheckoutError> {
    std::fs::create_dir_all(dir).map_err(|source| CheckoutError::Io {
        dir: dir.display().to_string(),
        source,
    })?;
    git(dir, "init", &["init", "--quiet", "--template="]).await?;
    let by_id = git(
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
            dir,
            "fetch",
            &["fetch", "--quiet", "--no-tags", "--", url, &refspec],
        )
        .await?;
        if git(
            dir,
            "cat-file",
            &["cat-file", "-e", &format!("{sha}^{{commit}}")],
        )
        .await
        .is_err()
        {
            return Err(CheckoutError::NoSuchCommit {
                sha: sha.to_string(),
                url: url.to_string(),
                fetch_ref: r.to_string(),
            });
        }
    }
    git(dir, "checkout", &["checkout", "--quiet", "--detach", sha]).await?;
    Ok(())
}
