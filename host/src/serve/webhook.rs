//! GitHub webhook deliveries: the signature check, what an event says, and
//! which runs it asks for under the server's configuration.
//!
//! Everything from a delivery goes into `git` command lines later, so refs
//! and commit ids are checked here, strictly, before anything is queued.
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

use crate::pipeline::Trigger;
use crate::run::record::parse_unix_ms;
use crate::run::TriggerInfo;
use crate::serve::config::{Repository, ServerConfig};
use crate::serve::queue::Job;

/// Why a delivery's signature is refused (answered with 401).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing X-Hub-Signature-256 header")]
    Missing,
    #[error("X-Hub-Signature-256 is not `sha256=` and 64 hex digits")]
    Malformed,
    #[error("X-Hub-Signature-256 does not match the body (wrong secret, or the body was changed)")]
    Mismatch,
}

/// Check `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body>`
/// in constant time.
pub fn verify_signature(
    secret: &[u8],
    body: &[u8],
    header: Option<&str>,
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let hex_sig = header
        .trim()
        .strip_prefix("sha256=")
        .ok_or(SignatureError::Malformed)?;
    let sig = hex::decode(hex_sig).map_err(|_| SignatureError::Malformed)?;
    if sig.len() != 32 {
        return Err(SignatureError::Malformed);
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any size");
    mac.update(body);
    mac.verify_slice(&sig).map_err(|_| SignatureError::Mismatch)
}

/// A payload that cannot be used (answered with 400), naming the field.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{event} payload: {message}")]
pub struct PayloadError {
    pub event: String,
    pub message: String,
}

/// What a delivery is about.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Ping {
        zen: String,
        hook_id: Option<u64>,
    },
    Push(Push),
    PullRequest(PullRequest),
    /// An event the server does not handle (answered 202 and ignored).
    Other(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Push {
    pub repository: String,
    /// `refs/heads/…` or `refs/tags/…` (other refs are ignored).
    pub git_ref: String,
    pub after: String,
    pub deleted: bool,
    pub sender: Option<String>,
    pub message: Option<String>,
    /// `head_commit.timestamp`: when the commit was made (RFC 3339).
    pub commit_time: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PullRequest {
    pub repository: String,
    pub action: String,
    pub number: u64,
    pub head_sha: String,
    pub head_ref: String,
    pub base_ref: String,
    /// The repository the head branch lives in (a fork, or the same one).
    pub head_repository: Option<String>,
    pub sender: Option<String>,
    pub title: Option<String>,
}

#[derive(Deserialize)]
struct RawRepo {
    full_name: Option<String>,
}

#[derive(Deserialize)]
struct RawUser {
    login: Option<String>,
}

#[derive(Deserialize)]
struct RawCommit {
    message: Option<String>,
    timestamp: Option<String>,
}

#[derive(Deserialize)]
struct RawPush {
    #[serde(rename = "ref")]
    git_ref: Option<String>,
    after: Option<String>,
    #[serde(default)]
    deleted: bool,
    repository: Option<RawRepo>,
    sender: Option<RawUser>,
    head_commit: Option<RawCommit>,
}

#[derive(Deserialize)]
struct RawBranch {
    #[serde(rename = "ref")]
    git_ref: Option<String>,
    sha: Option<String>,
    repo: Option<RawRepo>,
}

#[derive(Deserialize)]
struct RawPr {
    number: Option<u64>,
    title: Option<String>,
    head: Option<RawBranch>,
    base: Option<RawBranch>,
}

#[derive(Deserialize)]
struct RawPullRequest {
    action: Option<String>,
    number: Option<u64>,
    pull_request: Option<RawPr>,
    repository: Option<RawRepo>,
    sender: Option<RawUser>,
}

#[derive(Deserialize)]
struct RawPing {
    zen: Option<String>,
    hook_id: Option<u64>,
}

/// Decode a delivery of `event` (the `X-GitHub-Event` header).
pub fn parse(event: &str, body: &[u8]) -> Result<Event, PayloadError> {
    let err = |message: String| PayloadError {
        event: event.to_string(),
        message,
    };
    let missing = |field: &str| err(format!("`{field}` is missing"));
    fn decode<T: serde::de::DeserializeOwned>(
        body: &[u8],
        err: impl Fn(String) -> PayloadError,
    ) -> Result<T, PayloadError> {
        serde_json::from_slice(body).map_err(|e| err(format!("not the JSON GitHub sends: {e}")))
    }
    match event {
        "ping" => {
            let p: RawPing = decode(body, err)?;
            Ok(Event::Ping {
                zen: p.zen.unwrap_or_default(),
                hook_id: p.hook_id,
            })
        }
        "push" => {
            let p: RawPush = decode(body, err)?;
            let repository = p
                .repository
                .and_then(|r| r.full_name)
                .ok_or_else(|| missing("repository.full_name"))?;
            let git_ref = p.git_ref.ok_or_else(|| missing("ref"))?;
            check_ref(&git_ref).map_err(|m| err(format!("`ref`: {m}")))?;
            // Lowercase: one commit has one spelling in the queue and in git.
            let after = p
                .after
                .ok_or_else(|| missing("after"))?
                .to_ascii_lowercase();
            check_sha(&after).map_err(|m| err(format!("`after`: {m}")))?;
            let (message, timestamp) = match p.head_commit {
                Some(c) => (c.message, c.timestamp),
                None => (None, None),
            };
            Ok(Event::Push(Push {
                repository,
                git_ref,
                deleted: p.deleted || after.bytes().all(|b| b == b'0'),
                after,
                sender: p.sender.and_then(|s| s.login),
                message: message.map(|m| m.lines().next().unwrap_or("").to_string()),
                // Kept only if it is a time (it goes into lead times).
                commit_time: timestamp.filter(|t| parse_unix_ms(t).is_some()),
            }))
        }
        "pull_request" => {
            let p: RawPullRequest = decode(body, err)?;
            let repository = p
                .repository
                .and_then(|r| r.full_name)
                .ok_or_else(|| missing("repository.full_name"))?;
            let action = p.action.ok_or_else(|| missing("action"))?;
            let pr = p.pull_request.ok_or_else(|| missing("pull_request"))?;
            let number = p.number.or(pr.number).ok_or_else(|| missing("number"))?;
            let head = pr.head.ok_or_else(|| missing("pull_request.head"))?;
            let base = pr.base.ok_or_else(|| missing("pull_request.base"))?;
            let head_sha = head
                .sha
                .ok_or_else(|| missing("pull_request.head.sha"))?
                .to_ascii_lowercase();
            check_sha(&head_sha).map_err(|m| err(format!("`pull_request.head.sha`: {m}")))?;
            let head_ref = head
                .git_ref
                .ok_or_else(|| missing("pull_request.head.ref"))?;
            let base_ref = base
                .git_ref
                .ok_or_else(|| missing("pull_request.base.ref"))?;
            for (field, name) in [("head", &head_ref), ("base", &base_ref)] {
                check_ref(&format!("refs/heads/{name}"))
                    .map_err(|m| err(format!("`pull_request.{field}.ref`: {m}")))?;
            }
            Ok(Event::PullRequest(PullRequest {
                repository,
                action,
                number,
                head_sha,
                head_ref,
                base_ref,
                head_repository: head.repo.and_then(|r| r.full_name),
                sender: p.sender.and_then(|s| s.login),
                title: pr.title,
            }))
        }
        other => Ok(Event::Other(other.to_string())),
    }
}

/// A commit id: 40 (SHA-1) or 64 (SHA-256) hex digits.
fn check_sha(sha: &str) -> Result<(), String> {
    if matches!(sha.len(), 40 | 64) && sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(format!("`{}` is not a commit id", sha.escape_debug()))
    }
}

/// A ref name git accepts (`git check-ref-format` rules), under `refs/`.
fn check_ref(r: &str) -> Result<(), String> {
    let bad = !r.starts_with("refs/")
        || r.len() > 1024
        || r.ends_with('/')
        || r.ends_with(".lock")
        || r.ends_with('.')
        || r.contains("..")
        || r.contains("//")
        || r.contains("@{")
        || r.split('/').any(|c| c.is_empty() || c.starts_with('.'))
        || r.chars()
            .any(|c| c.is_control() || " ~^:?*[\\".contains(c) || c == '\u{7f}');
    if bad {
        Err(format!("`{}` is not a valid git ref", r.escape_debug()))
    } else {
        Ok(())
    }
}

/// What the server does with a delivery.
#[derive(Debug, PartialEq)]
pub enum Plan {
    Pong(String),
    /// Nothing to run, and why (answered 202: the delivery was fine).
    Ignore(String),
    Run(Vec<Job>),
}

/// The runs `event` asks for under `config`.
pub fn plan(config: &ServerConfig, event: &Event, delivery: &str) -> Plan {
    match event {
        Event::Ping { zen, .. } => Plan::Pong(zen.clone()),
        Event::Other(e) => Plan::Ignore(format!("event `{e}` is not handled")),
        Event::Push(p) => plan_push(config, p, delivery),
        Event::PullRequest(pr) => plan_pull_request(config, pr, delivery),
    }
}

fn repository<'a>(config: &'a ServerConfig, name: &str) -> Option<&'a Repository> {
    config.repositories.iter().find(|r| r.name == name)
}

/// A push of a branch or tag that a push trigger of its repository matches.
fn plan_push(config: &ServerConfig, p: &Push, delivery: &str) -> Plan {
    let Some(repo) = repository(config, &p.repository) else {
        return not_configured(&p.repository);
    };
    if p.deleted {
        return Plan::Ignore(format!("{} was deleted", p.git_ref));
    }
    let (branch, tag) = if let Some(b) = p.git_ref.strip_prefix("refs/heads/") {
        (Some(b.to_string()), None)
    } else if let Some(t) = p.git_ref.strip_prefix("refs/tags/") {
        (None, Some(t.to_string()))
    } else {
        return Plan::Ignore(format!("{} is neither a branch nor a tag", p.git_ref));
    };
    let trigger = Trigger {
        branch: branch.clone(),
        tag: tag.clone(),
        event: "push".into(),
    };
    let Some(rule) = repo
        .triggers
        .iter()
        .find(|t| t.event == "push" && t.when.matches(&trigger))
    else {
        return Plan::Ignore(format!(
            "no push trigger of `{}` matches {}",
            repo.name, p.git_ref
        ));
    };
    let short = branch.clone().or(tag.clone()).unwrap_or_default();
    Plan::Run(vec![Job {
        repository: repo.name.clone(),
        branch,
        tag,
        sha: p.after.clone(),
        event: "push".into(),
        environment: rule.environment.clone(),
        fetch_ref: Some(p.git_ref.clone()),
        trusted: true,
        group: group(repo, &short, "push"),
        archive: None,
        trigger: TriggerInfo {
            repository: p.repository.clone(),
            delivery: delivery.to_string(),
            sender: p.sender.clone(),
            message: p.message.clone(),
            pull_request: None,
            archive: None,
            commit_time: p.commit_time.clone(),
            ..Default::default()
        },
    }])
}

/// A pull request whose base branch and action a trigger matches; a head
/// from a fork runs untrusted.
fn plan_pull_request(config: &ServerConfig, pr: &PullRequest, delivery: &str) -> Plan {
    let Some(repo) = repository(config, &pr.repository) else {
        return not_configured(&pr.repository);
    };
    let base = Trigger {
        branch: Some(pr.base_ref.clone()),
        tag: None,
        event: "pull_request".into(),
    };
    let Some(rule) = repo.triggers.iter().find(|t| {
        t.event == "pull_request"
            && t.when.matches(&base)
            && t.actions.iter().any(|a| a == &pr.action)
    }) else {
        return Plan::Ignore(format!(
            "no pull_request trigger of `{}` matches action `{}` into {}",
            repo.name, pr.action, pr.base_ref
        ));
    };
    Plan::Run(vec![Job {
        repository: repo.name.clone(),
        branch: Some(pr.head_ref.clone()),
        tag: None,
        sha: pr.head_sha.clone(),
        event: "pull_request".into(),
        environment: rule.environment.clone(),
        fetch_ref: Some(format!("refs/pull/{}/head", pr.number)),
        // A head in another repository is a fork: its code was not
        // pushed by anyone with access to this one.
        trusted: pr.head_repository.as_deref() == Some(pr.repository.as_str()),
        group: group(repo, &format!("pr-{}", pr.number), "pull_request"),
        archive: None,
        trigger: TriggerInfo {
            repository: pr.repository.clone(),
            delivery: delivery.to_string(),
            sender: pr.sender.clone(),
            message: pr.title.clone(),
            pull_request: Some(pr.number),
            archive: None,
            // The payload says when the pull request changed, not when
            // its head commit was made.
            commit_time: None,
            ..Default::default()
        },
    }])
}

fn not_configured(name: &str) -> Plan {
    Plan::Ignore(format!(
        "repository `{name}` is not configured on this server"
    ))
}

fn group(repo: &Repository, git_ref: &str, event: &str) -> Option<String> {
    let g = repo
        .group
        .replace("{repository}", &repo.name)
        .replace("{ref}", git_ref)
        .replace("{event}", event);
    (!g.is_empty()).then_some(g)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn data(name: &str) -> Vec<u8> {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/data/github-webhooks")
            .join(name);
        std::fs::read(&p).unwrap_or_else(|e| {
            panic!("{}: {e} (shared/ must be beside the checkout)", p.display())
        })
    }

    #[test]
    fn github_s_own_signature_test_vector_verifies() {
        let secret = b"It's a Secret to Everybody";
        let body = b"Hello, World!";
        let good = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert_eq!(verify_signature(secret, body, Some(good)), Ok(()));
        assert_eq!(
            verify_signature(b"another secret", body, Some(good)),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_signature(secret, b"Hello, World?", Some(good)),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_signature(secret, body, None),
            Err(SignatureError::Missing)
        );
        for bad in [
            "sha1=757107ea0eb2509fc211221cce984b8a37570b6d",
            "sha256=zz",
            "sha256=757107ea",
            "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
        ] {
            assert_eq!(
                verify_signature(secret, body, Some(bad)),
                Err(SignatureError::Malformed),
                "{bad}"
            );
        }
    }

    #[test]
    fn real_payloads_decode() {
        let Event::Push(p) = parse("push", &data("push_new-branch.payload.json")).unwrap() else {
            panic!()
        };
        assert_eq!(p.repository, "Codertocat/Hello-World");
        assert_eq!(p.git_ref, "refs/heads/master");
        assert_eq!(p.after, "6113728f27ae82c7b1a177c8d03f9e96e0adf246");
        assert!(!p.deleted);
        assert_eq!(p.message.as_deref(), Some("Initial commit"));
        assert_eq!(p.commit_time.as_deref(), Some("2019-05-15T15:19:25Z"));
        let Event::Push(t) = parse("push", &data("push_tag-created.ghes-34.payload.json")).unwrap()
        else {
            panic!()
        };
        assert_eq!(t.git_ref, "refs/tags/simple-tag");
        let Event::PullRequest(pr) =
            parse("pull_request", &data("pull_request_opened.payload.json")).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (pr.number, pr.action.as_str(), pr.base_ref.as_str()),
            (2, "opened", "master")
        );
        assert_eq!(pr.head_sha, "ec26c3e57ca3a959ca5aad62de7213c562f8c821");
        assert_eq!(
            pr.head_repository.as_deref(),
            Some("Codertocat/Hello-World")
        );
        assert!(matches!(
            parse("ping", &data("ping_payload.json")).unwrap(),
            Event::Ping {
                hook_id: Some(_),
                ..
            }
        ));
    }

    #[test]
    fn bad_payloads_name_the_field() {
        let e = parse("push", b"{\"ref\": 1").unwrap_err();
        assert!(
            e.to_string().starts_with("push payload: not the JSON"),
            "{e}"
        );
        let e = parse(
            "push",
            br#"{"repository": {"full_name": "a/b"}, "after": "x"}"#,
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "push payload: `ref` is missing");
        let e = parse(
            "push",
            br#"{"repository": {"full_name": "a/b"}, "ref": "refs/heads/main", "after": "--upload-pack=evil"}"#,
        )
        .unwrap_err();
        assert!(e
            .to_string()
            .contains("`after`: `--upload-pack=evil` is not a commit id"));
        for r in [
            "main",
            "refs/heads/../x",
            "refs/heads/a b",
            "refs/heads/-x:y",
            "refs/heads/",
        ] {
            assert!(check_ref(r).is_err(), "{r}");
        }
        assert!(check_ref("refs/heads/feature/login-2").is_ok());
        assert!(check_ref("refs/tags/v1.2.3").is_ok());
    }

    fn planned(config: &ServerConfig, event: &str, body: &str, delivery: &str) -> Job {
        let parsed = parse(event, body.as_bytes()).unwrap();
        match plan(config, &parsed, delivery) {
            Plan::Run(mut jobs) if jobs.len() == 1 => jobs.remove(0),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn what_a_delivery_means_is_what_it_asks_to_build() {
        let config = crate::serve::config::parse(
            Path::new("server.toml"),
            r#"
[server]
webhook-secret = { env = "SECRET" }

[[repository]]
name = "acme/app"
url = "file:///srv/app.git"

[[repository.trigger]]
event = "push"
branch = ["main"]

[[repository.trigger]]
event = "push"
tag = ["v*"]

[[repository.trigger]]
event = "pull_request"
branch = ["main"]
actions = ["opened", "synchronize", "reopened", "edited"]
"#,
        )
        .unwrap();
        let sha = "6113728f27ae82c7b1a177c8d03f9e96e0adf246";
        let push = |r: &str, after: &str, sender: &str| {
            format!(
                r#"{{"ref": "{r}", "after": "{after}", "repository": {{"full_name": "acme/app"}},
                    "sender": {{"login": "{sender}"}}}}"#
            )
        };
        let main = planned(&config, "push", &push("refs/heads/main", sha, "a"), "d1");
        assert_eq!(
            main.meaning().unwrap(),
            format!(r#"["acme/app","push","refs/heads/main","{sha}"]"#)
        );
        // The same body under another delivery id, or the same push told
        // with other details: the same meaning.
        let replay = planned(&config, "push", &push("refs/heads/main", sha, "a"), "d2");
        assert_eq!(replay.meaning(), main.meaning());
        let upper = sha.to_ascii_uppercase();
        let other = planned(&config, "push", &push("refs/heads/main", &upper, "b"), "d3");
        assert_eq!(other.meaning(), main.meaning());
        // The same commit as a tag, or another commit: another meaning.
        let tag = planned(&config, "push", &push("refs/tags/v1", sha, "a"), "d4");
        assert_ne!(tag.meaning(), main.meaning());
        let next = "0123456789abcdef0123456789abcdef01234567";
        let newer = planned(&config, "push", &push("refs/heads/main", next, "a"), "d5");
        assert_ne!(newer.meaning(), main.meaning());

        // Pull requests: whatever the action, the same head commit of the
        // same pull request means the same code.
        let pr = |action: &str, number: u64, head: &str| {
            format!(
                r#"{{"action": "{action}", "number": {number},
                    "repository": {{"full_name": "acme/app"}},
                    "pull_request": {{"title": "t",
                        "head": {{"ref": "feature", "sha": "{head}", "repo": {{"full_name": "acme/app"}}}},
                        "base": {{"ref": "main", "sha": "{head}"}}}}}}"#
            )
        };
        let opened = planned(&config, "pull_request", &pr("opened", 7, sha), "p1");
        assert_eq!(
            opened.meaning().unwrap(),
            format!(r#"["acme/app","pull_request","refs/pull/7/head","{sha}"]"#)
        );
        for action in ["synchronize", "reopened", "edited"] {
            let again = planned(&config, "pull_request", &pr(action, 7, sha), "p2");
            assert_eq!(again.meaning(), opened.meaning(), "{action}");
        }
        let pushed = planned(&config, "pull_request", &pr("synchronize", 7, next), "p3");
        assert_ne!(pushed.meaning(), opened.meaning());
        let another = planned(&config, "pull_request", &pr("opened", 8, sha), "p4");
        assert_ne!(another.meaning(), opened.meaning());
        assert_ne!(opened.meaning(), main.meaning());
    }
}
