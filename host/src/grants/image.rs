//! The docker grant dialect: image references, image patterns
//! (`grants.docker.build`, `run`, `tag`, `push`, `base`, `scan`) and
//! container-name patterns (`grants.docker.containers`).
//!
//! A pattern is parsed and compiled once, when the pipeline is validated
//! (so `host check` reports a bad one with its position), and the compiled
//! value is what the docker and scan capabilities match every call against:
//! there is no second parser and nothing is compiled per call.
//!
//! Patterns mean what they look like:
//! - `*` and `?` never cross a `/` (`local/*` is `local/app`, not
//!   `local/team/app`); `**` does.
//! - A pattern without a tag or digest (`127.0.0.1:5000/app`) matches every
//!   tag and digest of that repository.
//! - A pattern with a tag (`local/app:1.*`) matches references with a
//!   matching tag (no tag means `latest`) and no digest: with a digest the
//!   engine ignores the tag, so `local/app:1.2@sha256:…` is not `1.2`.
//! - A pattern with a digest (`local/app@sha256:0123…`) matches that digest.
//! - Docker Hub spellings are one image: `busybox`, `library/busybox`,
//!   `docker.io/library/busybox` and `index.docker.io/library/busybox` are
//!   matched as `busybox`, and `docker.io/team/app` as `team/app`.
use std::fmt;
use std::sync::Arc;

use globset::{GlobBuilder, GlobMatcher};

/// `FROM scratch`: the empty image. It reads nothing, so it needs no grant.
pub const SCRATCH: &str = "scratch";

/// Characters with a meaning in a glob.
const GLOB: &str = "*?[]{},!";

/// An image reference split into repository, tag and digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

/// `host:port/path` has a `:` before the last `/`: that one is no tag.
fn has_tag(reference: &str) -> bool {
    let last = reference.rsplit('/').next().unwrap_or(reference);
    last.contains(':')
}

/// The repository as the engine understands it, for matching: Docker
/// Hub's implicit registry and `library/` namespace removed.
pub fn canonical_repository(repository: &str) -> &str {
    let mut r = repository;
    for hub in ["docker.io/", "index.docker.io/"] {
        if let Some(rest) = r.strip_prefix(hub) {
            if !rest.is_empty() {
                r = rest;
                break;
            }
        }
    }
    match r.strip_prefix("library/") {
        Some(rest) if !rest.is_empty() && !rest.contains('/') && !rest.contains("**") => rest,
        _ => r,
    }
}

fn valid_tag(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 128
        && t.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

fn valid_digest(d: &str) -> bool {
    let Some((algo, hex)) = d.split_once(':') else {
        return false;
    };
    !algo.is_empty()
        && algo
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+._-".contains(c))
        && hex.len() >= 32
        && hex.chars().all(|c| c.is_ascii_alphanumeric())
}

impl ImageRef {
    /// Accepts the reference grammar's characters only, so a reference can
    /// never be mistaken for an engine option, a path or a second line.
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        if s.is_empty() || s.len() > 255 {
            anyhow::bail!("an image reference must be 1 to 255 characters");
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || "._-/:@".contains(*c)))
        {
            anyhow::bail!(
                "`{}` is not an image reference (character {c:?})",
                s.escape_debug()
            );
        }
        if s.starts_with(['-', '/', '.', ':', '@']) || s.contains("..") || s.contains("//") {
            anyhow::bail!("`{s}` is not an image reference");
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => {
                if !valid_digest(d) {
                    anyhow::bail!("`{s}`: bad digest (expected `sha256:<hex>`)");
                }
                (r, Some(d.to_string()))
            }
            None => (s, None),
        };
        let (repository, tag) = if has_tag(rest) {
            let (r, t) = rest.rsplit_once(':').expect("has_tag found a colon");
            (r.to_string(), Some(t.to_string()))
        } else {
            (rest.to_string(), None)
        };
        if repository.is_empty() || repository.chars().any(|c| c.is_ascii_uppercase()) {
            anyhow::bail!("`{s}`: the repository must be non-empty and lower case");
        }
        let components: Vec<&str> = repository.split('/').collect();
        let registry = components.len() > 1
            && (components[0].contains('.')
                || components[0].contains(':')
                || components[0] == "localhost");
        let alnum = |c: char| c.is_ascii_alphanumeric();
        let bad_path = components.iter().skip(usize::from(registry)).any(|c| {
            c.is_empty() || c.contains(':') || !c.starts_with(alnum) || !c.ends_with(alnum)
        });
        if bad_path || components[0].is_empty() {
            anyhow::bail!("`{s}` is not an image reference");
        }
        if tag.as_deref().is_some_and(|t| !valid_tag(t)) {
            anyhow::bail!("`{s}`: bad tag");
        }
        Ok(Self {
            repository,
            tag,
            digest,
        })
    }

    /// Registry host of the repository, when it names one.
    pub fn registry(&self) -> Option<&str> {
        let first = self.repository.split('/').next()?;
        (self.repository.contains('/')
            && (first.contains('.') || first.contains(':') || first == "localhost"))
            .then_some(first)
    }

    /// `FROM scratch`: no image at all.
    pub fn is_scratch(&self) -> bool {
        self.repository == SCRATCH && self.tag.is_none() && self.digest.is_none()
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

fn glob(pattern: &str) -> anyhow::Result<GlobMatcher> {
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .backslash_escape(false)
        .empty_alternates(true)
        .build()
        .map(|g| g.compile_matcher())
        .map_err(|e| anyhow::anyhow!("invalid glob: {}", e.kind()))
}

/// What part of a reference a pattern matches besides the repository.
#[derive(Clone, Debug)]
enum Part {
    Any,
    Tag(GlobMatcher),
    Digest(GlobMatcher),
}

/// One compiled image pattern.
#[derive(Clone, Debug)]
pub struct ImagePattern {
    source: String,
    repository: GlobMatcher,
    part: Part,
}

fn check_chars(
    pattern: &str,
    part: &str,
    what: &str,
    ok: impl Fn(char) -> bool,
) -> anyhow::Result<()> {
    match part.chars().find(|&c| !(ok(c) || GLOB.contains(c))) {
        None => Ok(()),
        Some(c) if c.is_ascii_uppercase() => Err(anyhow::anyhow!(
            "`{pattern}`: {what} are lower case, so this pattern would never match"
        )),
        Some(c) => Err(anyhow::anyhow!(
            "`{}`: character {c:?} cannot appear in {what}",
            pattern.escape_debug()
        )),
    }
}

impl ImagePattern {
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        if s.is_empty() {
            anyhow::bail!("an image pattern must not be empty");
        }
        if s.len() > 512 {
            anyhow::bail!("an image pattern must be at most 512 characters");
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (r, Some(d)),
            None => (s, None),
        };
        let (repository, tag) = if has_tag(rest) {
            let (r, t) = rest.rsplit_once(':').expect("has_tag found a colon");
            (r, Some(t))
        } else {
            (rest, None)
        };
        check_chars(s, repository, "repository names", |c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || "._-/:".contains(c)
        })?;
        if repository.is_empty()
            || repository.starts_with('/')
            || repository.contains("//")
            || repository.split('/').skip(1).any(|c| c.contains(':'))
        {
            anyhow::bail!("`{s}`: the repository part is not a repository");
        }
        let part = match (tag, digest) {
            (Some(_), Some(_)) => {
                anyhow::bail!(
                    "`{s}`: a pattern names a tag or a digest, not both (with a digest the engine ignores the tag)"
                )
            }
            (Some(t), None) => {
                if t.is_empty() {
                    anyhow::bail!("`{s}`: empty tag");
                }
                check_chars(s, t, "tags", |c| {
                    c.is_ascii_alphanumeric() || "_.-".contains(c)
                })?;
                Part::Tag(glob(t).map_err(|e| anyhow::anyhow!("`{s}`: {e}"))?)
            }
            (None, Some(d)) => {
                if d.is_empty() {
                    anyhow::bail!("`{s}`: empty digest");
                }
                check_chars(s, d, "digests", |c| {
                    c.is_ascii_lowercase() || c.is_ascii_digit() || ":+._-".contains(c)
                })?;
                Part::Digest(glob(d).map_err(|e| anyhow::anyhow!("`{s}`: {e}"))?)
            }
            (None, None) => Part::Any,
        };
        Ok(Self {
            source: s.to_string(),
            repository: glob(canonical_repository(repository))
                .map_err(|e| anyhow::anyhow!("`{s}`: {e}"))?,
            part,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    pub fn matches(&self, r: &ImageRef) -> bool {
        if !self
            .repository
            .is_match(canonical_repository(&r.repository))
        {
            return false;
        }
        match &self.part {
            Part::Any => true,
            Part::Tag(g) => r.digest.is_none() && g.is_match(r.tag.as_deref().unwrap_or("latest")),
            Part::Digest(g) => r.digest.as_deref().is_some_and(|d| g.is_match(d)),
        }
    }
}

/// A list of compiled image patterns (one grant key). Cheap to clone.
#[derive(Clone, Default)]
pub struct ImagePatterns(Arc<Vec<ImagePattern>>);

impl ImagePatterns {
    pub fn new(patterns: Vec<ImagePattern>) -> Self {
        Self(Arc::new(patterns))
    }

    /// Parses every pattern (for tests and embedding; the pipeline file's
    /// patterns are parsed one by one by validation, to report positions).
    pub fn parse<S: AsRef<str>>(patterns: &[S]) -> anyhow::Result<Self> {
        patterns
            .iter()
            .map(|p| ImagePattern::parse(p.as_ref()))
            .collect::<Result<Vec<_>, _>>()
            .map(Self::new)
    }

    pub fn allows(&self, r: &ImageRef) -> bool {
        self.0.iter().any(|p| p.matches(r))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The patterns as written.
    pub fn sources(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(ImagePattern::as_str)
    }
}

impl fmt::Debug for ImagePatterns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.sources()).finish()
    }
}

impl PartialEq for ImagePatterns {
    fn eq(&self, other: &Self) -> bool {
        self.sources().eq(other.sources())
    }
}
impl Eq for ImagePatterns {}

impl<const N: usize> PartialEq<[&str; N]> for ImagePatterns {
    fn eq(&self, other: &[&str; N]) -> bool {
        self.sources().eq(other.iter().copied())
    }
}

/// One compiled container-name pattern (`app-*`).
#[derive(Clone, Debug)]
pub struct NamePattern {
    source: String,
    matcher: GlobMatcher,
}

impl NamePattern {
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        if s.is_empty() {
            anyhow::bail!("a container-name pattern must not be empty");
        }
        if s.len() > 256 {
            anyhow::bail!("a container-name pattern must be at most 256 characters");
        }
        match s
            .chars()
            .find(|&c| !(c.is_ascii_alphanumeric() || "_.-".contains(c) || GLOB.contains(c)))
        {
            Some(c) => Err(anyhow::anyhow!(
                "`{}`: character {c:?} cannot appear in a container name (letters, digits, `_`, `.`, `-`)",
                s.escape_debug()
            )),
            None => Ok(Self {
                source: s.to_string(),
                matcher: glob(s).map_err(|e| anyhow::anyhow!("`{s}`: {e}"))?,
            }),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }
}

/// Compiled container-name patterns (`grants.docker.containers`).
#[derive(Clone, Default)]
pub struct NamePatterns(Arc<Vec<NamePattern>>);

impl NamePatterns {
    pub fn new(patterns: Vec<NamePattern>) -> Self {
        Self(Arc::new(patterns))
    }

    pub fn parse<S: AsRef<str>>(patterns: &[S]) -> anyhow::Result<Self> {
        patterns
            .iter()
            .map(|p| NamePattern::parse(p.as_ref()))
            .collect::<Result<Vec<_>, _>>()
            .map(Self::new)
    }

    pub fn allows(&self, name: &str) -> bool {
        self.0.iter().any(|p| p.matcher.is_match(name))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn sources(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(NamePattern::as_str)
    }
}

impl fmt::Debug for NamePatterns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.sources()).finish()
    }
}

impl PartialEq for NamePatterns {
    fn eq(&self, other: &Self) -> bool {
        self.sources().eq(other.sources())
    }
}
impl Eq for NamePatterns {}

impl<const N: usize> PartialEq<[&str; N]> for NamePatterns {
    fn eq(&self, other: &[&str; N]) -> bool {
        self.sources().eq(other.iter().copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> ImageRef {
        ImageRef::parse(s).unwrap()
    }

    fn allows(pattern: &str, image: &str) -> bool {
        ImagePattern::parse(pattern).unwrap().matches(&r(image))
    }

    const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn references_parse_and_reject_tricks() {
        let x = r("127.0.0.1:5000/app:1.2");
        assert_eq!(x.repository, "127.0.0.1:5000/app");
        assert_eq!(x.tag.as_deref(), Some("1.2"));
        assert_eq!(x.registry(), Some("127.0.0.1:5000"));
        assert_eq!(r("app").registry(), None);
        assert_eq!(r(&format!("app@{DIGEST}")).digest.as_deref(), Some(DIGEST));
        assert!(r("scratch").is_scratch());
        for bad in [
            "",
            "--privileged",
            "/etc/passwd",
            "a b",
            "App",
            "x:y:z/../q",
            "a;b",
            "local/app\nrm",
            "local/app\r",
            "local/app\u{0}",
            "local/app:\u{1b}[2J",
            "a/b:c/d",
            "app:-x",
            "app@sha256:short",
            "app@x@y",
            "local/x-",
            "local/_x",
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn patterns_mean_what_they_look_like() {
        // No tag: every tag and digest of exactly that repository.
        assert!(allows("local/app", "local/app"));
        assert!(allows("local/app", "local/app:1"));
        assert!(allows("local/app", &format!("local/app@{DIGEST}")));
        assert!(!allows("local/app", "local/app-evil"));
        assert!(!allows("local/app", "local/app/sub"));
        // `*` stays within one path component; `**` does not.
        assert!(allows("local/*", "local/app:3"));
        assert!(!allows("local/*", "local/team/app"));
        assert!(allows("local/**", "local/team/app"));
        assert!(!allows("*", "local/app"));
        assert!(allows("*", "busybox"));
        // A tag: that tag only, `latest` when none, never a digest.
        assert!(allows("local/app:1.*", "local/app:1.2"));
        assert!(!allows("local/app:1.*", "local/app:2.0"));
        assert!(!allows("local/app:1.*", "local/app"));
        assert!(allows("local/app:latest", "local/app"));
        assert!(!allows("local/app:1.2", &format!("local/app:1.2@{DIGEST}")));
        assert!(allows(
            &format!("local/app@{DIGEST}"),
            &format!("local/app:x@{DIGEST}")
        ));
        assert!(!allows(&format!("local/app@{DIGEST}"), "local/app"));
        // Registries and ports are part of the name.
        assert!(allows("127.0.0.1:5000/app", "127.0.0.1:5000/app:1"));
        assert!(!allows("127.0.0.1:5000/app", "127.0.0.1:5001/app:1"));
        assert!(!allows("127.0.0.1:5000/app", "app"));
        // Docker Hub spellings are one image.
        assert!(allows("busybox", "docker.io/library/busybox:1"));
        assert!(allows("docker.io/library/busybox", "busybox"));
        assert!(allows(
            "library/busybox:1",
            "index.docker.io/library/busybox:1"
        ));
        assert!(allows("team/app", "docker.io/team/app"));
        assert!(!allows("busybox", "local/busybox"));
    }

    #[test]
    fn bad_patterns_are_refused_with_a_reason() {
        for (bad, why) in [
            ("", "empty"),
            ("Local/App", "lower case"),
            ("local/app b", "character ' '"),
            ("local/app\n", "character '\\n'"),
            (&format!("local/app:1@{DIGEST}"), "not both"),
            ("local/[", "invalid glob"),
            ("local/app:", "empty tag"),
            ("local/app:a/b", "repository"),
            ("/app", "not a repository"),
        ] {
            let e = ImagePattern::parse(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
        assert!(NamePattern::parse("app-*").is_ok());
        assert!(NamePattern::parse("app/x").is_err());
        assert!(NamePattern::parse("").is_err());
    }

    #[test]
    fn pattern_lists_compare_by_source_and_match_names() {
        let p = ImagePatterns::parse(&["local/app:*"]).unwrap();
        assert_eq!(p, ["local/app:*"]);
        assert!(ImagePatterns::default().is_empty());
        let n = NamePatterns::parse(&["app-*", "db"]).unwrap();
        assert!(n.allows("app-blue") && n.allows("db"));
        assert!(!n.allows("dbx") && !n.allows("other"));
    }
}
