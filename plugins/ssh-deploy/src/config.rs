//! The `with` table: parsing, defaults and checks. Every error names its
//! key (`with.ports.green: …`).

use std::time::Duration;

use serde::Deserialize;
use stage_sdk::{Context, StageError};

use crate::remote::{Slot, Unpack};

/// Default number of releases kept on the server.
pub const DEFAULT_KEEP: u32 = 3;
/// Most releases `keep` may ask for.
pub const MAX_KEEP: u32 = 100;
/// Longest release id.
pub const MAX_VERSION_LEN: usize = 128;
/// `health.timeout` when not given (also quoted by `describe()`).
pub const DEFAULT_HEALTH_TIMEOUT: &str = "20s";
/// `health.interval` when not given (also quoted by `describe()`).
pub const DEFAULT_HEALTH_INTERVAL: &str = "250ms";
/// Longest `health.timeout`.
pub const MAX_HEALTH_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// `ports` table.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortsWith {
    pub blue: u16,
    pub green: u16,
}

/// `health` table. Its keys are nested, which the SDK does not fill from
/// `describe()`, so their defaults are the constants above.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct HealthWith {
    pub url: String,
    #[serde(default = "health_timeout")]
    pub timeout: String,
    #[serde(default = "health_interval")]
    pub interval: String,
    #[serde(default)]
    pub body_contains: Option<String>,
}

fn health_timeout() -> String {
    DEFAULT_HEALTH_TIMEOUT.into()
}
fn health_interval() -> String {
    DEFAULT_HEALTH_INTERVAL.into()
}

/// The `with` table as written. `keep` gets its default from `describe()`
/// (the SDK fills it in), not from serde.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct With {
    pub target: String,
    pub base: String,
    #[serde(default)]
    pub release: Option<String>,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub image: Option<String>,
    pub ports: PortsWith,
    pub start: String,
    pub health: HealthWith,
    #[serde(default)]
    pub switch: Option<String>,
    pub keep: u32,
}

/// Health check settings, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    /// With `{port}` still in it.
    pub url: String,
    pub timeout: Duration,
    pub interval: Duration,
    pub body_contains: Option<String>,
}

impl Health {
    /// The URL for a slot's port.
    pub fn url_for(&self, port: u16) -> String {
        self.url.replace("{port}", &port.to_string())
    }
}

/// Where the release comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// `release`: a workspace file, uploaded and unpacked.
    Upload { path: String, unpack: Unpack },
    /// `image`: a release already on the server.
    Existing,
}

/// Everything a deploy needs, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub target: String,
    /// Without a trailing `/`.
    pub base: String,
    /// The release id (`version`, `image`, or `build-<n>`).
    pub version: String,
    pub source: Source,
    pub blue_port: u16,
    pub green_port: u16,
    pub start: String,
    pub health: Health,
    pub switch: Option<String>,
    pub keep: u32,
}

impl Config {
    pub fn port(&self, slot: Slot) -> u16 {
        match slot {
            Slot::Blue => self.blue_port,
            Slot::Green => self.green_port,
        }
    }
}

fn cfg_err(key: &str, msg: impl std::fmt::Display) -> StageError {
    StageError::config(format!("with.{key}: {msg}"))
}

/// A release id: `[A-Za-z0-9._-]+`, at most 128 characters, not `.` or
/// `..`, not starting with `-`. Used as a directory name on the server.
pub fn check_version(v: &str) -> Result<(), String> {
    if v.is_empty() {
        return Err("empty".into());
    }
    if v.len() > MAX_VERSION_LEN {
        return Err(format!("{v:?} is longer than {MAX_VERSION_LEN} characters"));
    }
    if let Some(c) = v
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "{v:?} holds {c:?}: a release id is letters, digits, '.', '_' and '-'"
        ));
    }
    if v == "." || v == ".." || v.starts_with('-') {
        return Err(format!(
            "{v:?} is not a usable directory name (., .. or a leading -)"
        ));
    }
    Ok(())
}

/// The remote base directory: `[A-Za-z0-9._/-]`, no `..` component, not
/// starting with `-`, not `/`. Returns it without trailing slashes.
pub fn check_base(b: &str) -> Result<String, String> {
    if let Some(c) = b
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/')))
    {
        return Err(format!(
            "{b:?} holds {c:?}: only letters, digits and . _ - / are allowed"
        ));
    }
    let trimmed = b.trim_end_matches('/');
    if trimmed.is_empty() {
        return Err(if b.is_empty() {
            "empty".into()
        } else {
            "\"/\" is not a deploy directory".into()
        });
    }
    if trimmed.split('/').any(|c| c == "..") {
        return Err(format!("{b:?} has a `..` component"));
    }
    if trimmed.starts_with('-') {
        return Err(format!("{b:?} starts with -"));
    }
    Ok(trimmed.to_string())
}

/// `[ssh.NAME]`: letters, digits, `.`, `_`, `-`.
fn check_target(t: &str) -> Result<(), String> {
    let ok = !t.is_empty()
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(format!("{t:?} is not an [ssh.NAME] name"))
    }
}

/// A workspace-relative file: not absolute, no `..`; its file name
/// `[A-Za-z0-9._-]+` (it becomes a name on the server).
fn check_release(p: &str) -> Result<Unpack, String> {
    if p.trim().is_empty() {
        return Err("empty".into());
    }
    if p.starts_with('/') || p.contains('\\') {
        return Err(format!(
            "{p:?} must be a path relative to the workspace (with /)"
        ));
    }
    if p.split('/').any(|c| c == "..") {
        return Err(format!("{p:?} has a `..` component"));
    }
    let name = p.rsplit('/').next().unwrap_or(p);
    check_version(name)
        .map_err(|_| format!("{p:?}: the file name must be letters, digits, '.', '_' and '-'"))?;
    if name.ends_with(".tar.gz") || name.ends_with(".tgz") {
        Ok(Unpack::Tarball)
    } else {
        Ok(Unpack::File(name.to_string()))
    }
}

fn parse_duration(key: &str, text: &str, max: Duration) -> Result<Duration, StageError> {
    let d = stage_sdk::duration::parse(text).map_err(|e| cfg_err(key, e))?;
    if d.is_zero() {
        return Err(cfg_err(key, "must be more than 0"));
    }
    if d > max {
        return Err(cfg_err(
            key,
            format!("{text:?} is more than {}", stage_sdk::duration::format(max)),
        ));
    }
    Ok(d)
}

/// Parses and checks the `with` table.
pub fn load(ctx: &Context) -> Result<Config, StageError> {
    let with: With = ctx.config_with_defaults()?;
    from_with(&with, ctx.run().build_number)
}

/// Checks a parsed `with` table.
pub fn from_with(with: &With, build_number: u64) -> Result<Config, StageError> {
    check_target(&with.target).map_err(|e| cfg_err("target", e))?;
    let base = check_base(&with.base).map_err(|e| cfg_err("base", e))?;
    let (version, source) = release_of(with, build_number)?;
    check_ports(&with.ports)?;
    check_command("start", &with.start)?;
    let health = health_of(&with.health)?;
    if let Some(s) = &with.switch {
        if s.trim().is_empty() {
            return Err(cfg_err(
                "switch",
                "empty (leave it out to switch only the `live` file)",
            ));
        }
        check_command("switch", s)?;
    }
    if with.keep == 0 || with.keep > MAX_KEEP {
        return Err(cfg_err(
            "keep",
            format!("{} is not between 1 and {MAX_KEEP}", with.keep),
        ));
    }
    Ok(Config {
        target: with.target.clone(),
        base,
        version,
        source,
        blue_port: with.ports.blue,
        green_port: with.ports.green,
        start: with.start.clone(),
        health,
        switch: with.switch.clone(),
        keep: with.keep,
    })
}

/// The release id and where it comes from: `image` (already on the
/// server) or `release` (uploaded), named by `version` or the build number.
fn release_of(with: &With, build_number: u64) -> Result<(String, Source), StageError> {
    // A rollback re-runs the stage with `image` added to the same
    // table: `release` and `version` are still there, and ignored.
    if let Some(image) = &with.image {
        check_version(image).map_err(|e| cfg_err("image", e))?;
        return Ok((image.clone(), Source::Existing));
    }
    let Some(path) = &with.release else {
        return Err(cfg_err(
            "release",
            "required key is missing (or give `image`: a release already on the server)",
        ));
    };
    let unpack = check_release(path).map_err(|e| cfg_err("release", e))?;
    let version = match &with.version {
        Some(v) => {
            check_version(v).map_err(|e| cfg_err("version", e))?;
            v.clone()
        }
        None => format!("build-{build_number}"),
    };
    let source = Source::Upload {
        path: path.clone(),
        unpack,
    };
    Ok((version, source))
}

/// Both ports non-zero and distinct: the slots run side by side.
fn check_ports(ports: &PortsWith) -> Result<(), StageError> {
    for (key, p) in [("ports.blue", ports.blue), ("ports.green", ports.green)] {
        if p == 0 {
            return Err(cfg_err(key, "port 0"));
        }
    }
    if ports.blue == ports.green {
        return Err(cfg_err(
            "ports.green",
            format!(
                "{} is also the blue port: the slots run side by side",
                ports.green
            ),
        ));
    }
    Ok(())
}

/// A remote command (`start`, `switch`): not blank, no NUL (it goes
/// through `sh -c`).
fn check_command(key: &str, cmd: &str) -> Result<(), StageError> {
    if cmd.trim().is_empty() {
        return Err(cfg_err(key, "empty"));
    }
    if cmd.contains('\0') {
        return Err(cfg_err(key, "holds a NUL character"));
    }
    Ok(())
}

/// The `health` table, checked: an http(s) URL with `{port}`, durations.
fn health_of(h: &HealthWith) -> Result<Health, StageError> {
    let url = h.url.trim();
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(cfg_err(
            "health.url",
            format!("{url:?} is not an http:// or https:// URL"),
        ));
    }
    if !url.contains("{port}") {
        return Err(cfg_err(
            "health.url",
            format!("{url:?} has no {{port}}: each slot is checked on its own port"),
        ));
    }
    let timeout = parse_duration("health.timeout", &h.timeout, MAX_HEALTH_TIMEOUT)?;
    let interval = parse_duration("health.interval", &h.interval, Duration::from_secs(60))?;
    if let Some(b) = &h.body_contains {
        if b.is_empty() {
            return Err(cfg_err("health.body-contains", "empty"));
        }
    }
    Ok(Health {
        url: url.to_string(),
        timeout,
        interval,
        body_contains: h.body_contains.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = r#""target":"prod","base":"prod","release":"dist/demo-app","ports":{"blue":18701,"green":18702},"start":"./demo-app","health":{"url":"http://127.0.0.1:{port}/health"}"#;

    fn load_json(json: &str) -> Result<Config, StageError> {
        // With the keys `describe()` declares, as the export glue does.
        load(&Context::for_test("deploy-prod", json).with_keys(crate::info().config))
    }

    fn err(json: &str) -> String {
        match load_json(json) {
            Err(StageError::Config(m)) => m,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    /// MIN with `key` replaced (or added) by `value` (JSON).
    fn with(key: &str, value: &str) -> String {
        let mut v: serde_json::Value = serde_json::from_str(&format!("{{{MIN}}}")).unwrap();
        let mut target = &mut v;
        let parts: Vec<&str> = key.split('.').collect();
        for p in &parts[..parts.len() - 1] {
            target = target.get_mut(*p).unwrap();
        }
        target[parts[parts.len() - 1]] = serde_json::from_str(value).unwrap();
        v.to_string()
    }

    #[test]
    fn defaults() {
        let c = load_json(&format!("{{{MIN}}}")).unwrap();
        assert_eq!(c.target, "prod");
        assert_eq!(c.base, "prod");
        assert_eq!(c.version, "build-1");
        assert_eq!(
            c.source,
            Source::Upload {
                path: "dist/demo-app".into(),
                unpack: Unpack::File("demo-app".into())
            }
        );
        assert_eq!((c.port(Slot::Blue), c.port(Slot::Green)), (18701, 18702));
        assert_eq!(c.health.timeout, Duration::from_secs(20));
        assert_eq!(c.health.interval, Duration::from_millis(250));
        assert_eq!(c.health.body_contains, None);
        assert_eq!(c.health.url_for(18702), "http://127.0.0.1:18702/health");
        assert_eq!(c.switch, None);
        assert_eq!(c.keep, 3);
    }

    #[test]
    fn every_key() {
        let c = load_json(&format!(
            r#"{{{MIN},"version":"v1.2.3","switch":"router use {{port}}","keep":5}}"#
        ))
        .unwrap();
        assert_eq!(c.version, "v1.2.3");
        assert_eq!(c.switch.as_deref(), Some("router use {port}"));
        assert_eq!(c.keep, 5);
        let c = load_json(&with("release", r#""out/app-1.tar.gz""#)).unwrap();
        assert!(matches!(
            c.source,
            Source::Upload {
                unpack: Unpack::Tarball,
                ..
            }
        ));
        let c = load_json(&with("release", r#""app.tgz""#)).unwrap();
        assert!(matches!(
            c.source,
            Source::Upload {
                unpack: Unpack::Tarball,
                ..
            }
        ));
        let c = load_json(&with(
            "health",
            r#"{"url":"https://h:{port}/ready","timeout":"1m","interval":"1s","body-contains":"ok"}"#,
        ))
        .unwrap();
        assert_eq!(c.health.timeout, Duration::from_secs(60));
        assert_eq!(c.health.interval, Duration::from_secs(1));
        assert_eq!(c.health.body_contains.as_deref(), Some("ok"));
        assert_eq!(
            load_json(&with("base", r#""/srv/app/""#)).unwrap().base,
            "/srv/app"
        );
    }

    #[test]
    fn image_wins_over_release_and_version() {
        // What a rollback sends: the stage's own table plus `image`.
        let c = load_json(&format!(r#"{{{MIN},"version":"v9","image":"v1"}}"#)).unwrap();
        assert_eq!(c.version, "v1");
        assert_eq!(c.source, Source::Existing);
        // `release` is not needed then.
        let mut v: serde_json::Value = serde_json::from_str(&format!("{{{MIN}}}")).unwrap();
        v.as_object_mut().unwrap().remove("release");
        v["image"] = "build-7".into();
        assert_eq!(load_json(&v.to_string()).unwrap().version, "build-7");
        v.as_object_mut().unwrap().remove("image");
        assert!(err(&v.to_string()).starts_with("with.release: required key is missing"));
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases: &[(&str, &str, &str)] = &[
            ("target", r#""""#, "with.target"),
            ("target", r#""a b""#, "with.target"),
            ("base", r#""""#, "with.base"),
            ("base", r#""/""#, "with.base"),
            ("base", r#""prod/../etc""#, "with.base"),
            ("base", r#""../x""#, "with.base"),
            ("base", r#""prod;rm -rf ~""#, "with.base"),
            ("base", r#""my app""#, "with.base"),
            ("base", r#""$HOME/x""#, "with.base"),
            ("base", r#""-rf""#, "with.base"),
            ("release", r#""/etc/passwd""#, "with.release"),
            ("release", r#""../secret""#, "with.release"),
            ("release", r#""dist/my app""#, "with.release"),
            ("release", r#""""#, "with.release"),
            ("version", r#""v1;reboot""#, "with.version"),
            ("version", r#""..""#, "with.version"),
            ("version", r#""v/1""#, "with.version"),
            ("version", r#""-x""#, "with.version"),
            ("version", r#""""#, "with.version"),
            ("image", r#""../v1""#, "with.image"),
            ("image", r#""v1 v2""#, "with.image"),
            (
                "ports",
                r#"{"blue":18701,"green":18701}"#,
                "with.ports.green",
            ),
            ("ports", r#"{"blue":0,"green":18701}"#, "with.ports.blue"),
            ("ports", r#"{"blue":18701}"#, "with.ports.green"),
            (
                "ports",
                r#"{"blue":18701,"green":70000}"#,
                "with.ports.green",
            ),
            ("ports", r#"{"blue":1,"green":2,"red":3}"#, "with.ports.red"),
            ("start", r#""  ""#, "with.start"),
            (
                "health",
                r#"{"url":"127.0.0.1:{port}/health"}"#,
                "with.health.url",
            ),
            (
                "health",
                r#"{"url":"http://127.0.0.1:18701/health"}"#,
                "with.health.url",
            ),
            ("health", r#"{"timeout":"5s"}"#, "with.health.url"),
            ("health.timeout", r#""20""#, "with.health.timeout"),
            ("health.timeout", r#""0s""#, "with.health.timeout"),
            ("health.timeout", r#""2h""#, "with.health.timeout"),
            ("health.interval", r#""fast""#, "with.health.interval"),
            ("health.body-contains", r#""""#, "with.health.body-contains"),
            ("health.expect", "200", "with.health.expect"),
            ("switch", r#""""#, "with.switch"),
            ("keep", "0", "with.keep"),
            ("keep", "101", "with.keep"),
            ("keep", r#""3""#, "with.keep"),
            ("colour", r#""blue""#, "with.colour"),
        ];
        for (key, value, want) in cases {
            let m = err(&with(key, value));
            assert!(
                m.starts_with(&format!("{want}:")),
                "{key} = {value}: {m} (expected {want})"
            );
        }
        assert_eq!(
            err(r#"{"base":"x"}"#),
            "with.target: required key is missing"
        );
    }

    #[test]
    fn versions_and_bases() {
        for ok in ["v1", "1.2.3", "build-12", "a_b", "x.tar"] {
            assert!(check_version(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "-v",
            "a/b",
            "a b",
            "ü",
            "a'b",
            &"x".repeat(129),
        ] {
            assert!(check_version(bad).is_err(), "{bad}");
        }
        assert_eq!(check_base("srv/app//").unwrap(), "srv/app");
        assert_eq!(check_base("./prod").unwrap(), "./prod");
        assert!(check_base("a/../b").is_err());
        assert!(check_base("a/..").is_err());
        assert!(check_base("a/...").is_ok());
    }
}
