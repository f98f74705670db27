//! Host capabilities: what a stage can ask the host to do.
//!
//! Each capability is one module behind one trait, [`Capability`]: it
//! declares and compiles its grants once, links its WIT interface once,
//! and is built per stage attempt from a [`StageEnv`]. Every call checks
//! the grant before acting; a call outside the grants returns [`denied`]
//! and never reaches the outside world. They are registered in one list,
//! [`capabilities!`] below: adding a capability is its module, its WIT
//! interface and one line there.
pub mod audit;
pub mod capability;
pub mod docker;
pub mod git;
pub mod http;
pub mod log;
pub mod scan;
pub mod secrets;
pub mod ssh;

use crate::wit::{CapError, Denial};

/// The refusal every capability returns for an ungranted call.
pub fn denied(stage: &str, capability: &str, target: impl Into<String>) -> CapError {
    let target = target.into();
    // Escaped: a target is plugin-controlled text on its way into the log.
    let shown = target.escape_debug().to_string();
    tracing::warn!(stage, capability, target = %shown, "capability call denied");
    CapError::Denied(Denial {
        stage: stage.to_string(),
        capability: capability.to_string(),
        target,
    })
}

/// A capability error as one line for people.
pub fn describe(e: &CapError) -> String {
    match e {
        CapError::Denied(d) => format!(
            "denied: stage `{}` has no `{}` grant for `{}`",
            d.stage, d.capability, d.target
        ),
        CapError::Invalid(m) => format!("invalid request: {m}"),
        CapError::Limit(m) => format!("limit exceeded: {m}"),
        CapError::Failed(m) => format!("failed: {m}"),
        CapError::Unsupported(m) => format!("unsupported: {m}"),
        CapError::Remote(r) => {
            let status = r.status.map(|s| format!(" (HTTP {s})")).unwrap_or_default();
            format!("{}: {}{status}: {}", r.service, r.code, r.message)
        }
    }
}

/// The sandbox's own grants (not capabilities: they shape the WASI context
/// and every capability's secret use).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub enum WorkspaceAccess {
    #[serde(rename = "ro")]
    ReadOnly,
    #[serde(rename = "rw")]
    ReadWrite,
}

/// The one list of capabilities. `plain` ones have no `grants` key;
/// `granted` ones have `grants.NAME` (and maybe `[NAME.x]` declarations).
macro_rules! capabilities {
    (plain { $($p:ident: $pty:ty),* $(,)? } granted { $($g:ident: $gty:ty),* $(,)? }) => {
        /// Everything one stage attempt may touch outside its own memory,
        /// one field per capability.
        pub struct StageCaps {
            $(pub $p: $pty,)*
            $(pub $g: $gty,)*
        }

        /// What a stage may do beyond computing, compiled once at
        /// validation. Everything defaults to nothing.
        #[derive(Debug, Clone, Default, PartialEq)]
        pub struct Grants {
            /// `/workspace` preopen; `None` means no filesystem at all.
            pub workspace: Option<WorkspaceAccess>,
            /// Host environment variables passed through by name.
            pub env: Vec<String>,
            /// Secrets the plugin may *use* via `${secret:NAME}`.
            pub secrets: Vec<String>,
            /// Secrets whose *value* the plugin may read (`secrets-read`).
            pub secrets_read: Vec<String>,
            $(pub $g: <$gty as Capability>::Grant,)*
        }

        /// `grants` as written in pipeline.toml, with spans.
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields, rename_all = "kebab-case")]
        pub struct RawGrants {
            pub workspace: Option<WorkspaceAccess>,
            pub env: Option<capability::StrList>,
            pub secrets: Option<capability::StrList>,
            pub secrets_read: Option<capability::StrList>,
            $(pub $g: Option<<$gty as Capability>::Raw>,)*
        }

        /// What a pipeline declares for its capabilities (`[git.NAME]`).
        #[derive(Debug, Clone, Default, PartialEq)]
        pub struct Decls {
            $(pub $g: <$gty as Capability>::Decls,)*
        }

        /// The top-level tables capabilities own.
        pub fn tables() -> Vec<&'static str> {
            [$(<$gty as Capability>::TABLE),*].into_iter().flatten().collect()
        }

        /// Every capability's declarations, once per pipeline file.
        pub fn declare_all(cx: &mut GrantCx<'_>) -> Decls {
            Decls {
                $($g: if <$gty as Capability>::TABLE.is_some() {
                    <$gty as Capability>::declare(cx)
                } else {
                    Default::default()
                },)*
            }
        }

        /// Compiles the capability part of one stage's `grants` into `into`.
        pub fn compile_grants(raw: &RawGrants, decls: &Decls, cx: &mut GrantCx<'_>, into: &mut Grants) {
            $(if let Some(r) = &raw.$g {
                into.$g = <$gty as Capability>::compile(r, &decls.$g, cx);
            })*
        }

        /// Links every capability's interface, once per engine.
        pub fn link_all<T: HasCaps + Send + 'static>(
            linker: &mut wasmtime::component::Linker<T>,
        ) -> wasmtime::Result<()> {
            $(<$pty as Capability>::link(linker, |t| &mut t.caps().$p)?;)*
            $(<$gty as Capability>::link(linker, |t| &mut t.caps().$g)?;)*
            Ok(())
        }

        impl Grants {
            /// Whether these grants let a stage change something beyond
            /// the run (see [`Capability::reaches_outside`]).
            pub fn reach_outside(&self) -> bool {
                false $(|| <$gty as Capability>::reaches_outside(&self.$g))*
            }
        }

        impl StageCaps {
            /// Every capability for one attempt of one stage.
            pub fn for_stage(env: &StageEnv<'_>) -> anyhow::Result<Self> {
                Ok(Self {
                    $($p: <$pty as Capability>::for_stage(env)?,)*
                    $($g: <$gty as Capability>::for_stage(env)?,)*
                })
            }
        }

        /// Whether `grants` covers a capability a plugin declared it needs
        /// (`NAME` or `NAME.part`), and how to grant it when not; `None`
        /// for a name no capability has.
        fn coverage(grants: &Grants, head: &str, part: Option<&str>) -> Option<(bool, String)> {
            $(if head == <$pty as Capability>::NAME {
                return Some((true, String::new()));
            })*
            $(if head == <$gty as Capability>::NAME {
                return Some((
                    <$gty as Capability>::covers(&grants.$g, part),
                    <$gty as Capability>::hint(part),
                ));
            })*
            None
        }
    };
}

capabilities! {
    plain {
        log: log::StageLog,
        secrets: std::sync::Arc<secrets::SecretsCap>,
    }
    granted {
        http: http::HttpCap,
        docker: docker::DockerCap,
        scan: scan::ScanCap,
        git: git::GitCap,
        ssh: ssh::SshCap,
    }
}

pub use capability::{Capability, GrantCx, Shared, StageEnv};

/// A store that holds a stage's capabilities (the runtime's store data).
pub trait HasCaps {
    fn caps(&mut self) -> &mut StageCaps;
}

/// What a plugin says it needs (`describe().capabilities`) that the stage's
/// grants do not give it, as `(name, how to grant it)`. Names no capability
/// has are reported too, so a typo in a plugin does not pass silently.
pub fn missing(grants: &Grants, needs: &[String]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for need in needs {
        // `NAME?`: used when the stage's settings call for it; the name is
        // still checked, the grant is not required.
        let (name, optional) = match need.strip_suffix('?') {
            Some(n) => (n, true),
            None => (need.as_str(), false),
        };
        let (head, part) = match name.split_once('.') {
            Some((h, p)) => (h, Some(p)),
            None => (name, None),
        };
        let (ok, hint) = match head {
            "workspace" => (
                grants.workspace.is_some(),
                "grants.workspace = \"ro\"".into(),
            ),
            "env" => (!grants.env.is_empty(), "grants.env = [...]".into()),
            "secrets" => (
                !grants.secrets.is_empty() || !grants.secrets_read.is_empty(),
                "grants.secrets = [...]".into(),
            ),
            _ => match coverage(grants, head, part) {
                Some(c) => c,
                None => (false, format!("no capability is called `{head}`")),
            },
        };
        let unknown = hint.starts_with("no capability");
        if !ok && (!optional || unknown) {
            out.push((name.to_string(), hint));
        }
    }
    out
}

impl StageCaps {
    /// Capabilities of a stage granted nothing (used for `describe`).
    pub fn ungranted(stage: &str) -> Self {
        let grants = Grants::default();
        let decls = Decls::default();
        let shared = Shared::default();
        let store = std::sync::Arc::new(secrets::SecretStore::default());
        let env = StageEnv {
            stage,
            pipeline: "",
            run_id: "",
            grants: &grants,
            decls: &decls,
            workspace: None,
            memory: 0,
            secrets_cap: std::sync::Arc::new(secrets::SecretsCap::new(
                stage,
                vec![],
                vec![],
                store.clone(),
            )),
            secrets: store,
            log: log::StageLog::new(
                stage,
                log::DEFAULT_LOG_LIMIT,
                secrets::Masker::default(),
                None,
            ),
            audit: audit::Audit::default(),
            shared: &shared,
        };
        Self::for_stage(&env).expect("a stage granted nothing can always be built")
    }
}

#[cfg(test)]
mod tests {
    use super::missing;

    fn grants(toml: &str) -> super::Grants {
        let text = format!(
            "[pipeline]\nname = \"p\"\n[plugins]\np = \"p.wasm\"\n\
             [[stage]]\nname = \"s\"\nplugin = \"p\"\ngrants = {{ {toml} }}\n"
        );
        let p = crate::pipeline::parse(std::path::Path::new("pipeline.toml"), &text).unwrap();
        p.stages[0].grants.clone()
    }

    fn needs(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_declared_capability_without_its_grant_is_named_with_the_fix() {
        let none = grants("");
        assert_eq!(
            missing(&none, &needs(&["http", "workspace", "docker.run"])),
            [
                ("http".into(), "grants.http = [...]".into()),
                ("workspace".into(), "grants.workspace = \"ro\"".into()),
                (
                    "docker.run".to_string(),
                    missing(&none, &needs(&["docker.run"]))[0].1.clone()
                ),
            ]
        );
        assert!(missing(&none, &needs(&["docker.run"]))[0].1.contains("run"));
        let some = grants(r#"workspace = "ro", http = ["https://example.com/*"]"#);
        assert!(missing(&some, &needs(&["http", "workspace", "log"])).is_empty());
    }

    #[test]
    fn optional_names_need_no_grant_but_must_exist() {
        let none = grants("");
        assert!(missing(&none, &needs(&["scan?", "docker.tag?"])).is_empty());
        let typo = missing(&none, &needs(&["scna?", "htp"]));
        assert_eq!(typo.len(), 2, "{typo:?}");
        assert!(typo[0].1.contains("no capability is called `scna`"));
    }
}
