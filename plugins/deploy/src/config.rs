//! The `with` table: parsing, defaults and checks, and the image to deploy.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use stage_sdk::{Context, StageError};

/// Default image of the proxy container.
pub const DEFAULT_PROXY_IMAGE: &str = "local/deploy-proxy:latest";
/// Most replicas one deploy manages.
pub const MAX_REPLICAS: u32 = 20;

/// `strategy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// One replica at a time: start, check, swap into the pool, drain one old.
    Rolling,
    /// All new replicas, then one switch of the whole pool.
    BlueGreen,
}

impl Strategy {
    pub fn as_str(&self) -> &'static str {
        match self {
            Strategy::Rolling => "rolling",
            Strategy::BlueGreen => "blue-green",
        }
    }
}

/// A port or a port range, as a number or `"a-b"`.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum PortsText {
    One(u16),
    Text(String),
}

/// `health` table. Its defaults are written once, in [`Default`]: serde
/// falls back on them for a partly given table, and `describe()` declares
/// their JSON ([`HealthWith::default_json`]) for a table left out.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct HealthWith {
    pub path: String,
    pub timeout: String,
    pub interval: String,
    pub expect_status: u16,
}

impl Default for HealthWith {
    fn default() -> Self {
        HealthWith {
            path: "/health".into(),
            timeout: "30s".into(),
            interval: "500ms".into(),
            expect_status: 200,
        }
    }
}

impl HealthWith {
    /// The defaults as the `health` key's declared default.
    pub fn default_json() -> String {
        serde_json::to_string(&HealthWith::default()).expect("HealthWith serializes")
    }
}

/// The `with` table as written. Optional keys get their defaults from
/// `describe()` (the SDK fills them in), so none are written here; only a
/// partly given `health` table falls back on [`HealthWith`]'s defaults.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct With {
    pub service: String,
    #[serde(default)]
    pub image: Option<String>,
    pub strategy: Strategy,
    pub replicas: u32,
    pub port: u16,
    pub public_port: u16,
    pub admin_port: u16,
    pub host_ports: PortsText,
    pub env: BTreeMap<String, serde_json::Value>,
    pub health: HealthWith,
    pub drain: String,
    pub proxy_image: String,
}

/// Health check settings, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    pub path: String,
    pub timeout: Duration,
    pub interval: Duration,
    pub expect_status: u16,
}

/// Everything a deploy needs, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub service: String,
    pub image: String,
    pub strategy: Strategy,
    pub replicas: u32,
    pub port: u16,
    pub public_port: u16,
    pub admin_port: u16,
    /// Inclusive range of host ports for app containers.
    pub host_ports: (u16, u16),
    pub env: Vec<(String, String)>,
    pub health: Health,
    pub drain: Duration,
    pub proxy_image: String,
}

impl Config {
    /// Name of the proxy container.
    pub fn proxy_name(&self) -> String {
        format!("{}-proxy", self.service)
    }

    /// `http://127.0.0.1:<public-port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.public_port)
    }

    /// The proxy's `/pool` URL.
    pub fn pool_url(&self) -> String {
        format!("http://127.0.0.1:{}/pool", self.admin_port)
    }

    /// The proxy's `/health` URL.
    pub fn proxy_health_url(&self) -> String {
        format!("http://127.0.0.1:{}/health", self.admin_port)
    }
}

fn cfg_err(key: &str, msg: impl std::fmt::Display) -> StageError {
    StageError::config(format!("with.{key}: {msg}"))
}

/// `500ms`, `30s`, `5m`, `1h30m`, `1m30s` (at most 24h).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let total = stage_sdk::duration::parse(text)?;
    if total > Duration::from_secs(24 * 3600) {
        return Err(format!("{text:?} is more than 24h"));
    }
    Ok(total)
}

/// `30s`, `500ms`, `1m30s`, `1.5s`.
pub use stage_sdk::duration::format as fmt_duration;

/// `"18100-18199"`, `"18100"` or `18100`.
pub fn parse_ports(p: &PortsText) -> Result<(u16, u16), String> {
    let text = match p {
        PortsText::One(0) => return Err("port 0".into()),
        PortsText::One(n) => return Ok((*n, *n)),
        PortsText::Text(t) => t.trim(),
    };
    let num = |s: &str| -> Result<u16, String> {
        match s.trim().parse::<u16>() {
            Ok(0) | Err(_) => Err(format!(
                "{text:?} is not a port or a range like 18100-18199"
            )),
            Ok(n) => Ok(n),
        }
    };
    let (a, b) = match text.split_once('-') {
        Some((a, b)) => (num(a)?, num(b)?),
        None => {
            let n = num(text)?;
            (n, n)
        }
    };
    if a > b {
        return Err(format!("{text:?}: the range is backwards"));
    }
    Ok((a, b))
}

/// A service name usable as a container name prefix and a label value.
pub fn check_service(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 48
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{s:?} must be 1-48 characters of a-z, 0-9, - and _, starting with a letter or digit"
        ))
    }
}

fn env_value(key: &str, v: &serde_json::Value) -> Result<String, StageError> {
    match v {
        serde_json::Value::String(s) => Ok(s.clone()),
        serde_json::Value::Number(n) => Ok(n.to_string()),
        serde_json::Value::Bool(b) => Ok(b.to_string()),
        _ => Err(cfg_err(
            &format!("env.{key}"),
            "must be a string, a number or a boolean",
        )),
    }
}

/// The image to deploy: `with.image`, else the `ref` output (image@digest)
/// of a stage in `needs`, else an `image` output.
pub fn resolve_image(with: &With, ctx: &Context) -> Result<String, StageError> {
    if let Some(i) = &with.image {
        let i = i.trim();
        if i.is_empty() {
            return Err(cfg_err("image", "empty"));
        }
        return Ok(i.to_string());
    }
    for key in ["ref", "image"] {
        for up in ctx.needs() {
            if let Some((_, v)) = up.outputs.iter().find(|(k, _)| k == key) {
                if !v.trim().is_empty() {
                    return Ok(v.trim().to_string());
                }
            }
        }
    }
    Err(cfg_err(
        "image",
        "not given and no stage in `needs` has a `ref` or `image` output",
    ))
}

/// Parses and checks the `with` table.
pub fn load(ctx: &Context) -> Result<Config, StageError> {
    let with: With = ctx.config_with_defaults()?;
    from_with(&with, ctx)
}

/// Checks a parsed `with` table.
pub fn from_with(with: &With, ctx: &Context) -> Result<Config, StageError> {
    check_service(&with.service).map_err(|e| cfg_err("service", e))?;
    if with.replicas == 0 || with.replicas > MAX_REPLICAS {
        return Err(cfg_err(
            "replicas",
            format!("{} is not between 1 and {MAX_REPLICAS}", with.replicas),
        ));
    }
    for (key, p) in [
        ("port", with.port),
        ("public-port", with.public_port),
        ("admin-port", with.admin_port),
    ] {
        if p == 0 {
            return Err(cfg_err(key, "port 0"));
        }
    }
    if with.public_port == with.admin_port {
        return Err(cfg_err("admin-port", "must differ from public-port"));
    }
    let host_ports = parse_ports(&with.host_ports).map_err(|e| cfg_err("host-ports", e))?;
    for (key, p) in [
        ("public-port", with.public_port),
        ("admin-port", with.admin_port),
    ] {
        if (host_ports.0..=host_ports.1).contains(&p) {
            return Err(cfg_err(
                key,
                format!("{p} is inside host-ports {}-{}", host_ports.0, host_ports.1),
            ));
        }
    }
    let range_len = u32::from(host_ports.1 - host_ports.0) + 1;
    // The next version starts beside the running one (all of it for
    // blue-green), so a range of only `replicas` ports runs out on the
    // second deploy.
    if range_len < 2 * with.replicas {
        return Err(cfg_err(
            "host-ports",
            format!(
                "{range_len} port(s) for {} replicas (old and new replicas run side by side: give at least twice as many)",
                with.replicas
            ),
        ));
    }
    let mut env = Vec::new();
    for (k, v) in &with.env {
        if k.is_empty() || k.contains('=') || k.contains(char::is_whitespace) {
            return Err(cfg_err("env", format!("{k:?} is not a variable name")));
        }
        env.push((k.clone(), env_value(k, v)?));
    }
    let h = &with.health;
    if !h.path.starts_with('/') {
        return Err(cfg_err(
            "health.path",
            format!("{:?} must start with /", h.path),
        ));
    }
    let timeout = parse_duration(&h.timeout).map_err(|e| cfg_err("health.timeout", e))?;
    let interval = parse_duration(&h.interval).map_err(|e| cfg_err("health.interval", e))?;
    if interval.is_zero() {
        return Err(cfg_err("health.interval", "must be more than 0"));
    }
    if timeout.is_zero() {
        return Err(cfg_err("health.timeout", "must be more than 0"));
    }
    if !(100..=599).contains(&h.expect_status) {
        return Err(cfg_err(
            "health.expect-status",
            format!("{} is not an HTTP status", h.expect_status),
        ));
    }
    let drain = parse_duration(&with.drain).map_err(|e| cfg_err("drain", e))?;
    if with.proxy_image.trim().is_empty() {
        return Err(cfg_err("proxy-image", "empty"));
    }
    Ok(Config {
        service: with.service.clone(),
        image: resolve_image(with, ctx)?,
        strategy: with.strategy,
        replicas: with.replicas,
        port: with.port,
        public_port: with.public_port,
        admin_port: with.admin_port,
        host_ports,
        env,
        health: Health {
            path: h.path.clone(),
            timeout,
            interval,
            expect_status: h.expect_status,
        },
        drain,
        proxy_image: with.proxy_image.trim().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(json: &str, needs: Vec<(&str, Vec<(&str, &str)>)>) -> Context {
        // With the keys `describe()` declares, as the export glue does.
        Context::for_test_with_needs("deploy", json, needs)
            .with_keys(<crate::Deploy as stage_sdk::Stage>::describe().config)
    }

    #[test]
    fn health_default_declared_as_before() {
        // What `describe()` (and so `host check`) shows for `health`.
        assert_eq!(
            HealthWith::default_json(),
            r#"{"path":"/health","timeout":"30s","interval":"500ms","expect-status":200}"#
        );
    }

    fn err(json: &str) -> String {
        match load(&ctx(json, vec![])) {
            Err(StageError::Config(m)) => m,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    const MIN: &str =
        r#""service":"demo","image":"local/demo:1","public-port":18080,"admin-port":18081"#;

    #[test]
    fn defaults() {
        let c = load(&ctx(&format!("{{{MIN}}}"), vec![])).unwrap();
        assert_eq!(c.strategy, Strategy::Rolling);
        assert_eq!((c.replicas, c.port), (1, 8080));
        assert_eq!(c.host_ports, (18100, 18199));
        assert_eq!(
            c.health,
            Health {
                path: "/health".into(),
                timeout: Duration::from_secs(30),
                interval: Duration::from_millis(500),
                expect_status: 200
            }
        );
        assert_eq!(c.drain, Duration::from_secs(10));
        assert_eq!(c.proxy_image, DEFAULT_PROXY_IMAGE);
        assert_eq!(c.proxy_name(), "demo-proxy");
        assert_eq!(c.endpoint(), "http://127.0.0.1:18080");
        assert_eq!(c.pool_url(), "http://127.0.0.1:18081/pool");
    }

    #[test]
    fn every_key() {
        let c = load(&ctx(
            &format!(
                r#"{{{MIN},"strategy":"blue-green","replicas":3,"port":9000,"host-ports":"20000-20009",
                "env":{{"VERSION":"v2","N":3,"DEBUG":true}},
                "health":{{"path":"/ready","timeout":"1m30s","interval":"250ms","expect-status":204}},
                "drain":"2s","proxy-image":"local/deploy-proxy:0.1.0"}}"#
            ),
            vec![],
        ))
        .unwrap();
        assert_eq!(c.strategy, Strategy::BlueGreen);
        assert_eq!(
            (c.replicas, c.port, c.host_ports),
            (3, 9000, (20000, 20009))
        );
        assert_eq!(
            c.env,
            vec![
                ("DEBUG".to_string(), "true".to_string()),
                ("N".into(), "3".into()),
                ("VERSION".into(), "v2".into())
            ]
        );
        assert_eq!(c.health.timeout, Duration::from_secs(90));
        assert_eq!(c.health.interval, Duration::from_millis(250));
        assert_eq!(c.health.expect_status, 204);
        assert_eq!(c.health.path, "/ready");
        assert_eq!(c.drain, Duration::from_secs(2));
        assert_eq!(c.proxy_image, "local/deploy-proxy:0.1.0");
        // Partial health table: the rest are defaults.
        let c = load(&ctx(
            &format!(r#"{{{MIN},"health":{{"timeout":"5s"}},"host-ports":"20000-20001"}}"#),
            vec![],
        ))
        .unwrap();
        assert_eq!(c.health.path, "/health");
        assert_eq!(c.health.timeout, Duration::from_secs(5));
        assert_eq!(c.host_ports, (20000, 20001));
        // A single port parses, but cannot hold the old and the new replica.
        assert!(
            err(&format!(r#"{{{MIN},"host-ports":20000}}"#)).contains("1 port(s) for 1 replicas")
        );
    }

    #[test]
    fn image_from_upstream_prefers_ref() {
        let json = r#"{"service":"demo","public-port":1,"admin-port":2}"#;
        let c = load(&ctx(
            json,
            vec![
                ("build", vec![("image", "local/demo:build-1")]),
                (
                    "push",
                    vec![("image", "r:5000/demo"), ("ref", "r:5000/demo@sha256:ab")],
                ),
            ],
        ))
        .unwrap();
        assert_eq!(c.image, "r:5000/demo@sha256:ab");
        let c = load(&ctx(
            json,
            vec![("build", vec![("image", "local/demo:build-1")])],
        ))
        .unwrap();
        assert_eq!(c.image, "local/demo:build-1");
        match load(&ctx(json, vec![])) {
            Err(StageError::Config(m)) => assert!(m.starts_with("with.image: not given"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn errors_name_the_key() {
        assert_eq!(
            err(r#"{"image":"a","public-port":1,"admin-port":2}"#),
            "with.service: required key is missing"
        );
        assert!(err(&format!(r#"{{{MIN},"strategy":"canary"}}"#)).starts_with("with.strategy"));
        assert!(err(&format!(r#"{{{MIN},"replicas":0}}"#)).starts_with("with.replicas"));
        assert!(err(&format!(r#"{{{MIN},"replicas":21}}"#)).starts_with("with.replicas"));
        assert!(err(&format!(r#"{{{MIN},"host-ports":"9-1"}}"#)).starts_with("with.host-ports"));
        assert!(err(&format!(r#"{{{MIN},"host-ports":"x"}}"#)).starts_with("with.host-ports"));
        assert!(err(&format!(r#"{{{MIN},"host-ports":"18080-18090"}}"#))
            .starts_with("with.public-port"));
        assert!(
            err(&format!(r#"{{{MIN},"replicas":3,"host-ports":"1-2"}}"#))
                .starts_with("with.host-ports")
        );
        assert!(err(&format!(r#"{{{MIN},"health":{{"path":"health"}}}}"#))
            .starts_with("with.health.path"));
        assert!(err(&format!(r#"{{{MIN},"health":{{"timeout":"30"}}}}"#))
            .starts_with("with.health.timeout"));
        assert!(err(&format!(r#"{{{MIN},"health":{{"interval":"0s"}}}}"#))
            .starts_with("with.health.interval"));
        assert!(err(&format!(r#"{{{MIN},"health":{{"expect":200}}}}"#))
            .starts_with("with.health.expect"));
        assert!(err(&format!(r#"{{{MIN},"drain":"soon"}}"#)).starts_with("with.drain"));
        assert!(err(&format!(r#"{{{MIN},"env":{{"A":[1]}}}}"#)).starts_with("with.env.A"));
        assert!(err(&format!(r#"{{{MIN},"colour":1}}"#)).starts_with("with.colour"));
        assert!(
            err(r#"{"service":"Demo!","image":"a","public-port":1,"admin-port":2}"#)
                .starts_with("with.service")
        );
        assert!(
            err(r#"{"service":"demo","image":"a","public-port":1,"admin-port":1}"#)
                .starts_with("with.admin-port")
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("25h").is_err());
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("").is_err());
        assert_eq!(fmt_duration(Duration::from_millis(500)), "500ms");
        assert_eq!(fmt_duration(Duration::from_secs(30)), "30s");
        assert_eq!(fmt_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(fmt_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(fmt_duration(Duration::from_secs(120)), "2m");
    }
}
