//! `grants.docker`: what a stage may build, run, tag, push and manage, and
//! the limits its containers get; compiled once from pipeline.toml and
//! matched as it is by the docker and scan capabilities.
use std::fmt;

use serde::Deserialize;
use serde_spanned::Spanned;

use crate::caps::capability::{toml_type, GrantCx, StrList};
use crate::grants::image::{ImagePattern, ImagePatterns, ImageRef, NamePattern, NamePatterns};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawDocker {
    pub build: Option<StrList>,
    pub run: Option<StrList>,
    pub tag: Option<StrList>,
    pub push: Option<StrList>,
    pub containers: Option<StrList>,
    pub ports: Option<Vec<Spanned<toml::Value>>>,
    pub base: Option<StrList>,
    pub scan: Option<StrList>,
    pub root: Option<bool>,
    pub memory: Option<Spanned<toml::Value>>,
    pub cpus: Option<Spanned<toml::Value>>,
    pub pids: Option<Spanned<toml::Value>>,
    pub context_limit: Option<Spanned<toml::Value>>,
}

/// `grants.docker`: image and container-name patterns, compiled once here
/// (see [`crate::grants::image`]) and matched as they are by the docker and
/// scan capabilities; the limits every container and build gets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DockerGrants {
    pub build: ImagePatterns,
    pub run: ImagePatterns,
    pub tag: ImagePatterns,
    pub push: ImagePatterns,
    /// Images a build may start `FROM` (or `COPY --from`); `scratch` needs none.
    pub base: ImagePatterns,
    /// Images the stage may scan (besides those it may build, run, tag,
    /// push or build from); `grants.scan` must be on too.
    pub scan: ImagePatterns,
    pub containers: NamePatterns,
    pub ports: Vec<PortRange>,
    /// Containers may run as uid 0 inside (still without capabilities and
    /// with `no-new-privileges`); otherwise they run as the workspace owner.
    pub root: bool,
    /// Container and build memory; the stage's `memory` when unset.
    pub memory: Option<u64>,
    /// CPUs in billionths (`cpus = 1.5` is 1_500_000_000).
    pub nano_cpus: Option<u64>,
    /// Most processes and threads in a container.
    pub pids: Option<u32>,
    /// Largest build context sent to the engine.
    pub context_limit: Option<u64>,
}

impl DockerGrants {
    /// Whether the stage may use `image` in any way: build, run, tag, push,
    /// build from or scan it. A tag's source and a scan must be one of these.
    pub fn may_use(&self, image: &ImageRef) -> bool {
        [
            &self.build,
            &self.run,
            &self.tag,
            &self.push,
            &self.base,
            &self.scan,
        ]
        .iter()
        .any(|p| p.allows(image))
    }
}

/// An inclusive host port range; a single port has `start == end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub start: u16,
    pub end: u16,
}

impl PortRange {
    pub fn contains(&self, port: u16) -> bool {
        (self.start..=self.end).contains(&port)
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.start == self.end {
            write!(f, "{}", self.start)
        } else {
            write!(f, "{}-{}", self.start, self.end)
        }
    }
}

pub(crate) fn compile(cx: &mut GrantCx<'_>, d: &RawDocker) -> DockerGrants {
    let mut ports = Vec::new();
    for p in d.ports.iter().flatten() {
        match port_range(p.get_ref()) {
            Ok(r) => ports.push(r),
            Err(msg) => cx.err(p.span(), msg),
        }
    }
    let mut images = |list: Option<&StrList>, key: &str| -> ImagePatterns {
        let mut out = Vec::new();
        for p in list.into_iter().flatten() {
            match ImagePattern::parse(p.get_ref()) {
                Ok(c) => out.push(c),
                Err(e) => cx.err(p.span(), format!("`grants.docker.{key}`: {e}")),
            }
        }
        ImagePatterns::new(out)
    };
    let build = images(d.build.as_ref(), "build");
    let run = images(d.run.as_ref(), "run");
    let tag = images(d.tag.as_ref(), "tag");
    let push = images(d.push.as_ref(), "push");
    let base = images(d.base.as_ref(), "base");
    let scan = images(d.scan.as_ref(), "scan");
    let mut containers = Vec::new();
    for p in d.containers.iter().flatten() {
        match NamePattern::parse(p.get_ref()) {
            Ok(c) => containers.push(c),
            Err(e) => cx.err(p.span(), format!("`grants.docker.containers`: {e}")),
        }
    }
    let mut size = |v: Option<&Spanned<toml::Value>>, key: &str| -> Option<u64> {
        let v = v?;
        let r = match v.get_ref() {
            toml::Value::String(s) => crate::units::parse_size(s).map_err(|e| e.to_string()),
            other => Err(format!(
                "expected a size string like \"512MiB\" or \"2GiB\", found {}",
                toml_type(other)
            )),
        };
        r.map_err(|m| cx.err(v.span(), format!("`grants.docker.{key}`: {m}")))
            .ok()
    };
    let memory = size(d.memory.as_ref(), "memory");
    let context_limit = size(d.context_limit.as_ref(), "context-limit");
    let nano_cpus = d.cpus.as_ref().and_then(|v| {
        const HINT: &str = "expected a number of CPUs from 0.01 to 64, like 1 or 0.5";
        let n = match v.get_ref() {
            toml::Value::Integer(i) => Some(*i as f64),
            toml::Value::Float(f) => Some(*f),
            _ => None,
        };
        match n {
            Some(n) if (0.01..=64.0).contains(&n) => Some((n * 1e9).round() as u64),
            _ => {
                cx.err(v.span(), format!("`grants.docker.cpus`: {HINT}"));
                None
            }
        }
    });
    let pids = d.pids.as_ref().and_then(|v| match v.get_ref() {
        toml::Value::Integer(i) if (16..=65_536).contains(i) => Some(*i as u32),
        _ => {
            cx.err(
                v.span(),
                "`grants.docker.pids`: expected a number of processes from 16 to 65536",
            );
            None
        }
    });
    DockerGrants {
        build,
        run,
        tag,
        push,
        base,
        scan,
        containers: NamePatterns::new(containers),
        ports,
        root: d.root.unwrap_or(false),
        memory,
        nano_cpus,
        pids,
        context_limit,
    }
}

fn port_range(v: &toml::Value) -> Result<PortRange, String> {
    const HINT: &str = "expected a port (1-65535) or a range string like \"8000-8100\"";
    let port = |n: i64| -> Result<u16, String> {
        u16::try_from(n)
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| format!("port {n} is out of range; {HINT}"))
    };
    let parse = |s: &str| -> Result<u16, String> {
        let n: i64 = s
            .trim()
            .parse()
            .map_err(|_| format!("{HINT}, found {s:?}"))?;
        port(n)
    };
    match v {
        toml::Value::Integer(n) => port(*n).map(|p| PortRange { start: p, end: p }),
        toml::Value::String(s) => {
            let (start, end) = match s.split_once('-') {
                Some((a, b)) => (parse(a)?, parse(b)?),
                None => {
                    let p = parse(s)?;
                    (p, p)
                }
            };
            if start > end {
                return Err(format!("port range {s:?} is reversed; {HINT}"));
            }
            Ok(PortRange { start, end })
        }
        other => Err(format!("{HINT}, found {}", toml_type(other))),
    }
}
