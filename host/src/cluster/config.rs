//! The cluster's settings: `[cluster]` in the server's configuration and
//! the agent's own file (`host agent --config agent.toml`). Every problem
//! names the file, line and key.
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_spanned::Spanned;

use super::bus::NatsSettings;
use super::protocol::valid_label;
use crate::pipeline::parse::{decode_toml, Source};
use crate::pipeline::{parse_duration, Diagnostic, PipelineError};
use crate::serve::config::{secret_ref, SecretRef};

type Str = Spanned<String>;

/// How long a delivered run may go without a heartbeat before JetStream
/// hands it to another agent.
pub const DEFAULT_ACK_WAIT: Duration = Duration::from_secs(30);

/// `[cluster]` of server.toml: runs go to agents over NATS; run state is
/// kept in PostgreSQL.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    pub nats: NatsSettings,
    /// The PostgreSQL URL (it may hold a password: a secret).
    pub database: SecretRef,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawCluster {
    nats: Option<Str>,
    /// Secrets are decoded by `secret_ref`, which never repeats a value.
    nats_credentials: Option<Spanned<toml::Value>>,
    database: Option<Spanned<toml::Value>>,
}

/// `[cluster]` checked; `None` after diagnostics.
pub(crate) fn cluster(
    src: &Source<'_>,
    raw: Spanned<RawCluster>,
    dir: &Path,
    diags: &mut Vec<Diagnostic>,
) -> Option<ClusterSettings> {
    let span = raw.span();
    let raw = raw.into_inner();
    let nats = nats_url(src, span.clone(), raw.nats, "cluster.nats", diags);
    let credentials = raw
        .nats_credentials
        .and_then(|c| secret_ref(src, "cluster.nats-credentials", c, dir, diags));
    let database = match raw.database {
        Some(d) => secret_ref(src, "cluster.database", d, dir, diags),
        None => {
            diags.push(src.diag(
                span,
                "cluster.database is required: the PostgreSQL URL, from a secret \
                 (e.g. `database = { env = \"PIPELINE_DATABASE_URL\" }`)",
            ));
            None
        }
    };
    Some(ClusterSettings {
        nats: NatsSettings {
            url: nats?,
            credentials,
        },
        database: database?,
    })
}

fn nats_url(
    src: &Source<'_>,
    span: std::ops::Range<usize>,
    url: Option<Str>,
    key: &str,
    diags: &mut Vec<Diagnostic>,
) -> Option<String> {
    let Some(u) = url else {
        diags.push(src.diag(
            span,
            format!("{key} is required (e.g. `nats = \"nats://127.0.0.1:4222\"`)"),
        ));
        return None;
    };
    match url::Url::parse(u.get_ref()) {
        Ok(p) if matches!(p.scheme(), "nats" | "tls") && p.password().is_none() => {
            Some(u.into_inner())
        }
        Ok(p) if p.password().is_some() => {
            diags.push(src.diag(
                u.span(),
                format!("{key}: put the password in `nats-credentials`, not in the URL"),
            ));
            None
        }
        _ => {
            diags.push(src.diag(
                u.span(),
                format!("{key}: `{}` is not a nats:// URL", u.get_ref()),
            ));
            None
        }
    }
}

/// `host agent --config agent.toml`.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub file: PathBuf,
    /// How this agent is named in claims and records.
    pub name: String,
    pub nats: NatsSettings,
    /// What this agent offers (`docker`, `linux`…): it runs runs that
    /// require a subset of them.
    pub labels: Vec<String>,
    /// Runs at once.
    pub concurrency: usize,
    /// Where `{ file = … }` secrets of runs are read from (none: refused).
    pub secrets_dir: Option<PathBuf>,
    /// Compiled plugins, the artifact store and the local copy of records.
    pub state_dir: PathBuf,
    pub workspaces: PathBuf,
    pub keep_workspaces: bool,
    pub plugin_dirs: Vec<PathBuf>,
    /// See [`DEFAULT_ACK_WAIT`]; heartbeats go every third of it.
    pub ack_wait: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgentFile {
    agent: Option<Spanned<RawAgent>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawAgent {
    name: Option<Str>,
    nats: Option<Str>,
    nats_credentials: Option<Spanned<toml::Value>>,
    #[serde(default)]
    labels: Vec<Str>,
    concurrency: Option<Spanned<i64>>,
    secrets_dir: Option<Str>,
    state_dir: Option<Str>,
    workspaces: Option<Str>,
    keep_workspaces: Option<bool>,
    #[serde(default)]
    plugin_dirs: Vec<Str>,
    ack_wait: Option<Str>,
}

/// Read and check an agent's configuration file.
pub fn load_agent(path: &Path) -> Result<AgentConfig, PipelineError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        PipelineError::new(vec![Diagnostic {
            location: Source::new(path, "").location(0),
            message: format!("cannot read agent configuration: {e}"),
        }])
    })?;
    let src = Source::new(path, &text);
    let raw: RawAgentFile = decode_toml(&src).map_err(|d| PipelineError::new(vec![d]))?;
    let mut diags = Vec::new();
    let cfg = agent(&src, raw, &mut diags);
    match cfg {
        Some(c) if diags.is_empty() => Ok(c),
        _ => Err(PipelineError::new(diags)),
    }
}

fn agent(src: &Source<'_>, raw: RawAgentFile, diags: &mut Vec<Diagnostic>) -> Option<AgentConfig> {
    let Some(a) = raw.agent else {
        diags.push(src.diag(
            0..0,
            "missing [agent] table (with at least `nats = \"nats://…\"`)",
        ));
        return None;
    };
    let (span, a) = (a.span(), a.into_inner());
    let dir = src.file.parent().unwrap_or(Path::new(".")).to_path_buf();
    let rel = |p: &str| dir.join(p);
    let url = nats_url(src, span, a.nats, "agent.nats", diags);
    let credentials = a
        .nats_credentials
        .and_then(|c| secret_ref(src, "agent.nats-credentials", c, &dir, diags));
    let mut labels = Vec::new();
    for l in a.labels {
        if valid_label(l.get_ref()) {
            labels.push(l.into_inner());
        } else {
            diags.push(src.diag(
                l.span(),
                format!(
                    "agent.labels: `{}` is not a label (a-z, 0-9, `-`, `_`, at most 32; not `any`)",
                    l.get_ref()
                ),
            ));
        }
    }
    let concurrency = match a.concurrency {
        None => 1,
        Some(n) if (1..=64).contains(n.get_ref()) => *n.get_ref() as usize,
        Some(n) => {
            diags.push(src.diag(
                n.span(),
                format!("agent.concurrency: {} is out of range (1–64)", n.get_ref()),
            ));
            1
        }
    };
    let ack_wait = match a.ack_wait {
        None => DEFAULT_ACK_WAIT,
        Some(w) => match parse_duration(w.get_ref()) {
            Ok(d) if d >= Duration::from_millis(300) => d,
            _ => {
                diags.push(src.diag(
                    w.span(),
                    format!(
                        "agent.ack-wait: `{}` is not a duration of 300ms or more",
                        w.get_ref()
                    ),
                ));
                DEFAULT_ACK_WAIT
            }
        },
    };
    let state_dir = a
        .state_dir
        .map(|s| rel(s.get_ref()))
        .unwrap_or_else(|| crate::cli::default_state_dir().join("agent"));
    Some(AgentConfig {
        file: src.file.clone(),
        name: a.name.map(|n| n.into_inner()).unwrap_or_else(default_name),
        nats: NatsSettings {
            url: url?,
            credentials,
        },
        labels,
        concurrency,
        secrets_dir: a.secrets_dir.map(|s| rel(s.get_ref())),
        workspaces: a
            .workspaces
            .map(|s| rel(s.get_ref()))
            .unwrap_or_else(|| state_dir.join("workspaces")),
        state_dir,
        keep_workspaces: a.keep_workspaces.unwrap_or(false),
        plugin_dirs: a.plugin_dirs.iter().map(|d| rel(d.get_ref())).collect(),
        ack_wait,
    })
}

/// `<hostname>-<pid>`: unique enough to tell agents apart in records.
fn default_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "agent".into());
    format!("{host}-{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent_file(text: &str) -> Result<AgentConfig, String> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("agent.toml");
        std::fs::write(&p, text).unwrap();
        load_agent(&p).map_err(|e| e.to_string())
    }

    #[test]
    fn an_agent_file_is_checked_key_by_key() {
        let a = agent_file(
            "[agent]\nnats = \"nats://127.0.0.1:4222\"\nname = \"b1\"\nlabels = [\"docker\", \"linux\"]\nconcurrency = 3\nack-wait = \"2s\"\nstate-dir = \"st\"\n",
        )
        .unwrap();
        assert_eq!((a.name.as_str(), a.concurrency), ("b1", 3));
        assert_eq!(a.labels, ["docker", "linux"]);
        assert_eq!(a.ack_wait, Duration::from_secs(2));
        assert!(a.state_dir.ends_with("st") && a.workspaces.ends_with("st/workspaces"));
        let bad = [
            ("[agent]\n", "agent.nats is required"),
            ("[agent]\nnats = \"http://x\"\n", "is not a nats:// URL"),
            (
                "[agent]\nnats = \"nats://u:pw@x:4222\"\n",
                "put the password in `nats-credentials`",
            ),
            (
                "[agent]\nnats = \"nats://x\"\nlabels = [\"Docker\"]\n",
                "agent.labels: `Docker` is not a label",
            ),
            (
                "[agent]\nnats = \"nats://x\"\nconcurrency = 0\n",
                "agent.concurrency: 0 is out of range",
            ),
            (
                "[agent]\nnats = \"nats://x\"\nack-wait = \"10ms\"\n",
                "agent.ack-wait",
            ),
            (
                "[agent]\nnats = \"nats://x\"\nnats-credentials = { env = \"A\", file = \"b\" }\n",
                "agent.nats-credentials: give exactly one of",
            ),
            (
                "[agent]\nnats = \"nats://x\"\nbogus = 1\n",
                "unknown field `bogus`",
            ),
            (
                "[agent]\nnats = \"nats://x\"\nnats-credentials = \"ci:hunter2\"\n",
                "agent.nats-credentials: not written in this file",
            ),
            ("", "missing [agent] table"),
        ];
        for (text, want) in bad {
            let e = agent_file(text).unwrap_err();
            assert!(e.contains(want), "{text:?}: {e}");
            assert!(e.contains("agent.toml:"), "names the file: {e}");
            assert!(!e.contains("hunter2"), "repeats a secret: {e}");
        }
    }

    #[test]
    fn the_cluster_table_needs_nats_and_a_database_secret() {
        let base = "[server]\nwebhook-secret = { env = \"S\" }\n[[upload]]\nname = \"u\"\n";
        let parse = |extra: &str| {
            crate::serve::config::parse(Path::new("server.toml"), &format!("{base}{extra}"))
        };
        let c = parse("[cluster]\nnats = \"nats://127.0.0.1:4222\"\ndatabase = { env = \"DB\" }\n")
            .unwrap();
        let cl = c.cluster.unwrap();
        assert_eq!(cl.nats.url, "nats://127.0.0.1:4222");
        assert_eq!(cl.database, SecretRef::Env("DB".into()));
        assert!(parse("").unwrap().cluster.is_none());
        let e = parse("[cluster]\nnats = \"nats://x\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("cluster.database is required"), "{e}");
        let e = parse("[cluster]\ndatabase = { env = \"DB\" }\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("cluster.nats is required"), "{e}");
        let e = parse("[cluster]\nnats = \"nats://x\"\ndatabase = \"postgres://u:pw@h/db\"\n")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("pw@"), "{e}");
        assert!(
            e.contains("cluster.database: not written in this file"),
            "{e}"
        );
        // The same for every secret of the server's file.
        let e = crate::serve::config::parse(
            Path::new("server.toml"),
            "[server]\nwebhook-secret = \"hunter2\"\n[[upload]]\nname = \"u\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("server.webhook-secret: not written in this file"),
            "{e}"
        );
        assert!(!e.contains("hunter2"), "{e}");
        // A token pasted where its digest goes is refused, not repeated.
        let e = parse("[[user]]\nname = \"a\"\ntokens = [\"ghp_secret123\"]\nroles = [\"root\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("user.tokens: each is `sha256:HEX`"), "{e}");
        assert!(e.contains("`root` is not a role"), "{e}");
        assert!(!e.contains("ghp_secret123"), "{e}");
    }
}
