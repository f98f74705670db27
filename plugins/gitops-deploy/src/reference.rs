//! Image references: `[registry[:port]/]path[:tag][@algo:hex]`.
//!
//! Parsing is strict on purpose: a YAML value is only treated as an image
//! reference (and so only ever replaced) when it is a well-formed one, so
//! `registry/app:1}]` (the tail of a flow mapping) is never mistaken for
//! `registry/app` with tag `1}]`.

/// A parsed image reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRef {
    /// Everything before `:tag` / `@digest`, e.g. `127.0.0.1:5000/app`.
    pub repository: String,
    pub tag: Option<String>,
    /// `algo:hex`, without the `@`.
    pub digest: Option<String>,
}

impl ImageRef {
    /// Back to text: `repository[:tag][@digest]`.
    pub fn to_text(&self) -> String {
        let mut s = self.repository.clone();
        if let Some(t) = &self.tag {
            s.push(':');
            s.push_str(t);
        }
        if let Some(d) = &self.digest {
            s.push('@');
            s.push_str(d);
        }
        s
    }
}

/// Parses a reference; `None` when `text` is not a well-formed one.
///
/// The first colon of `127.0.0.1:5000/app:1` is a registry port, not a tag:
/// a tag is only what follows the last `:` after the last `/`.
pub fn parse(text: &str) -> Option<ImageRef> {
    if text.is_empty() || !text.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return None;
    }
    let (name, digest) = match text.split_once('@') {
        Some((n, d)) => {
            if !valid_digest(d) {
                return None;
            }
            (n, Some(d.to_string()))
        }
        None => (text, None),
    };
    let last_slash = name.rfind('/');
    let (repository, tag) = match name.rfind(':') {
        Some(i) if last_slash.is_none_or(|s| i > s) => (&name[..i], Some(&name[i + 1..])),
        _ => (name, None),
    };
    if let Some(t) = tag {
        if !valid_tag(t) {
            return None;
        }
    }
    if !valid_repository(repository) {
        return None;
    }
    Some(ImageRef {
        repository: repository.to_string(),
        tag: tag.map(str::to_string),
        digest,
    })
}

/// `[\w][\w.-]{0,127}`.
pub fn valid_tag(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 128
        && t.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// `algo:encoded`, e.g. `sha256:<64 hex>`.
pub fn valid_digest(d: &str) -> bool {
    let Some((algo, hex)) = d.split_once(':') else {
        return false;
    };
    !algo.is_empty()
        && algo.starts_with(|c: char| c.is_ascii_alphabetic())
        && algo
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '.' | '_' | '-'))
        && hex.len() >= 16
        && hex
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '=' | '_' | '-'))
}

/// `[host[:port]/]component(/component)*`, components of `[A-Za-z0-9._-]`
/// starting with a letter or digit.
pub fn valid_repository(r: &str) -> bool {
    if r.is_empty() {
        return false;
    }
    let parts: Vec<&str> = r.split('/').collect();
    for (i, p) in parts.iter().enumerate() {
        let (host, port) = match p.split_once(':') {
            // A port only on the registry part of a longer name.
            Some((h, port)) if i == 0 && parts.len() > 1 => (h, Some(port)),
            Some(_) => return false,
            None => (*p, None),
        };
        if host.is_empty()
            || !host.starts_with(|c: char| c.is_ascii_alphanumeric())
            || !host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return false;
        }
        if let Some(port) = port {
            if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
                return false;
            }
        }
    }
    true
}

/// The repository of a reference in canonical form, so `nginx`,
/// `library/nginx`, `docker.io/library/nginx` and
/// `index.docker.io/library/nginx` compare equal. Other registries are
/// compared as written (the registry host lower-cased).
pub fn canonical_repository(repository: &str) -> String {
    let (first, rest) = match repository.split_once('/') {
        Some((f, r)) => (f, Some(r)),
        None => (repository, None),
    };
    let is_registry = rest.is_some()
        && (first.contains('.') || first.contains(':') || first.eq_ignore_ascii_case("localhost"));
    let (registry, path) = if is_registry {
        (
            first.to_ascii_lowercase(),
            rest.unwrap_or_default().to_string(),
        )
    } else {
        ("docker.io".to_string(), repository.to_string())
    };
    let registry = if registry == "index.docker.io" || registry == "registry-1.docker.io" {
        "docker.io".to_string()
    } else {
        registry
    };
    if registry == "docker.io" && !path.contains('/') {
        format!("docker.io/library/{path}")
    } else {
        format!("{registry}/{path}")
    }
}

/// Whether two repositories name the same one (see [`canonical_repository`]).
pub fn same_repository(a: &str, b: &str) -> bool {
    a == b || canonical_repository(a) == canonical_repository(b)
}

/// Whether the plain (unquoted) YAML scalar `s` would be read as something
/// other than a string (a number, a boolean, null, a YAML 1.1 sexagesimal
/// or octal...), so it must be quoted to stay a string.
pub fn plain_needs_quotes(s: &str) -> bool {
    let lower = s.to_ascii_lowercase();
    if matches!(
        lower.as_str(),
        "" | "~"
            | "null"
            | "true"
            | "false"
            | "yes"
            | "no"
            | "on"
            | "off"
            | "y"
            | "n"
            | ".inf"
            | "-.inf"
            | "+.inf"
            | ".nan"
    ) {
        return true;
    }
    if s.parse::<f64>().is_ok() {
        return true;
    }
    // Integers with `_`, sexagesimal `1:20`, `0x1f`, `0o17`, `1e5`-ish.
    let body = s.trim_start_matches(['+', '-']);
    if body.starts_with(|c: char| c.is_ascii_digit())
        && body
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '_' | ':' | '.'))
    {
        return true;
    }
    if let Some(h) = body.strip_prefix("0x").or_else(|| body.strip_prefix("0o")) {
        if !h.is_empty() && h.chars().all(|c| c.is_ascii_hexdigit() || c == '_') {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(repo: &str, tag: Option<&str>, digest: Option<&str>) -> ImageRef {
        ImageRef {
            repository: repo.into(),
            tag: tag.map(Into::into),
            digest: digest.map(Into::into),
        }
    }

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn registry_ports_are_not_tags() {
        assert_eq!(
            parse("127.0.0.1:5000/app:1"),
            Some(r("127.0.0.1:5000/app", Some("1"), None))
        );
        assert_eq!(
            parse("127.0.0.1:5000/app"),
            Some(r("127.0.0.1:5000/app", None, None))
        );
        assert_eq!(
            parse(&format!("127.0.0.1:5000/app@{D}")),
            Some(r("127.0.0.1:5000/app", None, Some(D)))
        );
        assert_eq!(
            parse(&format!("localhost:5000/team/app:v1.2@{D}")),
            Some(r("localhost:5000/team/app", Some("v1.2"), Some(D)))
        );
        assert_eq!(parse("nginx"), Some(r("nginx", None, None)));
        assert_eq!(parse("nginx:1.27"), Some(r("nginx", Some("1.27"), None)));
    }

    #[test]
    fn junk_is_not_a_reference() {
        for bad in [
            "",
            "registry/app:1}]",
            "app:",
            "{image: x}",
            "\"app:1\"",
            "app:1 # c",
            "app@sha256",
            "app@sha256:xyz",
            ":1",
            "a//b",
            "a:1/b:2/c",
            "app:1:2",
            "&anchor",
            "-app",
            "app:-x",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn round_trip() {
        for s in [
            "127.0.0.1:5000/app:1",
            "app",
            &format!("app:1@{D}"),
            &format!("r.io/a/b@{D}"),
        ] {
            assert_eq!(parse(s).unwrap().to_text(), s);
        }
    }

    #[test]
    fn docker_hub_names_compare_equal() {
        assert!(same_repository("nginx", "docker.io/library/nginx"));
        assert!(same_repository(
            "library/nginx",
            "index.docker.io/library/nginx"
        ));
        assert!(same_repository("bitnami/redis", "docker.io/bitnami/redis"));
        assert!(same_repository("Localhost:5000/app", "localhost:5000/app"));
        assert!(!same_repository(
            "127.0.0.1:5000/app",
            "127.0.0.1:5000/app-worker"
        ));
        assert!(!same_repository("127.0.0.1:5000/app", "app"));
        assert!(!same_repository("ghcr.io/x/app", "docker.io/x/app"));
    }

    #[test]
    fn quoting_plain_values() {
        for s in [
            "1.0", "10", "1_000", "1:20", "true", "No", "null", "~", "0x1f", "1e5",
        ] {
            assert!(plain_needs_quotes(s), "{s:?}");
        }
        for s in [
            "v1.0",
            "1.0-rc1",
            "app:1",
            "127.0.0.1:5000/app:1",
            "abc",
            "1.2.3a",
        ] {
            assert!(!plain_needs_quotes(s), "{s:?}");
        }
    }
}
