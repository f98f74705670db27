//! Pure tag computation (no host calls), unit-tested natively.
//!
//! Tag kinds, in the order they are emitted (immutable ones first, floating
//! ones after; duplicates dropped, first occurrence kept):
//!
//! | kind | example | when |
//! |---|---|---|
//! | full version | `1.2.3`, `1.2.3-rc.1` | `semver`, run for a semver git tag (`v` prefix optional) |
//! | short sha | `0123abc` | `sha-length` > 0 and the commit sha is known |
//! | build number | `build-42` | `build-number-tag` |
//! | minor | `1.2` | `semver`, release (not prerelease) tag |
//! | major | `1` | `semver`, release tag with major > 0 |
//! | branch | `feature-login` | `branch-tag`, run for a branch (sanitised) |
//! | git tag | `release-2024` | `branch-tag`, run for a git tag that is not semver (sanitised) |
//! | `latest` | `latest` | `latest`, branch == default branch, and no prerelease tag |
//!
//! The build number is prefixed (`build-42`, not Jenkins' bare `42`) so it
//! can never be confused with a major-version tag such as `1`. The `0`
//! major tag is not emitted for `0.x` versions: they promise no
//! compatibility between minors, so a floating `0` would mislead.

use std::fmt;

/// The run facts the tags depend on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunInfo {
    pub build_number: u64,
    pub commit_sha: String,
    pub branch: Option<String>,
    pub tag: Option<String>,
    pub default_branch: String,
}

/// Which tag kinds to emit (the `with` table minus `image`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    pub latest: bool,
    pub sha_length: usize,
    pub branch_tag: bool,
    pub build_number_tag: bool,
    pub semver: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            latest: true,
            sha_length: 7,
            branch_tag: true,
            build_number_tag: true,
            semver: true,
        }
    }
}

/// A parsed `MAJOR.MINOR.PATCH[-PRE][+BUILD]` version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Version {
    pub major: u64,
    pub minor: u64,
    pub patch: u64,
    /// Prerelease identifiers after `-`, e.g. `rc.1`.
    pub pre: Option<String>,
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)?;
        if let Some(pre) = &self.pre {
            write!(f, "-{pre}")?;
        }
        Ok(())
    }
}

/// Parses a git tag like `v1.2.3`, `1.2.3-rc.1` or `v1.2.3+build.5` (build
/// metadata is ignored). `None` when it is not semver 2.0.
pub fn parse_semver(tag: &str) -> Option<Version> {
    let s = tag
        .strip_prefix('v')
        .or_else(|| tag.strip_prefix('V'))
        .unwrap_or(tag);
    let (s, build) = match s.split_once('+') {
        Some((v, b)) => (v, Some(b)),
        None => (s, None),
    };
    if let Some(b) = build {
        if !idents_ok(b, false) {
            return None;
        }
    }
    let (core, pre) = match s.split_once('-') {
        Some((c, p)) => (c, Some(p)),
        None => (s, None),
    };
    if let Some(p) = pre {
        if !idents_ok(p, true) {
            return None;
        }
    }
    let mut parts = core.split('.');
    let major = numeric(parts.next()?)?;
    let minor = numeric(parts.next()?)?;
    let patch = numeric(parts.next()?)?;
    if parts.next().is_some() {
        return None;
    }
    Some(Version {
        major,
        minor,
        patch,
        pre: pre.map(str::to_string),
    })
}

fn numeric(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0'))
    {
        return None;
    }
    s.parse().ok()
}

/// Dot-separated `[0-9A-Za-z-]+` identifiers; prerelease numerics have no leading zero.
fn idents_ok(s: &str, no_leading_zero: bool) -> bool {
    s.split('.').all(|id| {
        !id.is_empty()
            && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !(no_leading_zero
                && id.len() > 1
                && id.starts_with('0')
                && id.bytes().all(|b| b.is_ascii_digit()))
    })
}

/// Turns a branch or git tag name into a Docker tag
/// (`[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`): lower-cased, every other
/// character (`/` included) becomes `-`, leading and trailing `.`/`-`
/// dropped, cut to 128.
/// `None` when nothing is left.
pub fn sanitize(name: &str) -> Option<String> {
    let mapped: String = name
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let trimmed = mapped.trim_start_matches(['.', '-']);
    let cut: String = trimmed.chars().take(128).collect();
    let cut = cut.trim_end_matches(['.', '-']).to_string();
    if cut.is_empty() {
        None
    } else {
        Some(cut)
    }
}

pub use stage_sdk::docker::is_valid_tag;

/// Checks a repository name such as `127.0.0.1:5000/demo-app` (the tags
/// are computed, so none may be given).
pub fn validate_image(image: &str) -> Result<(), String> {
    stage_sdk::docker::validate_repository(image).map_err(|e| {
        e.replace(
            "must be a repository without a tag",
            "must be a repository without a tag (the tags are computed)",
        )
    })
}

/// The tags for this run, deduplicated, in the order documented above.
pub fn compute_tags(opts: &Options, run: &RunInfo) -> Vec<String> {
    let version = if opts.semver {
        run.tag.as_deref().and_then(parse_semver)
    } else {
        None
    };
    let prerelease = version.as_ref().is_some_and(|v| v.pre.is_some());

    let mut tags: Vec<String> = Vec::new();
    let mut push = |t: String| {
        if is_valid_tag(&t) && !tags.contains(&t) {
            tags.push(t);
        }
    };

    if let Some(v) = &version {
        push(v.to_string());
    }
    if opts.sha_length > 0 {
        let sha = sanitize(&run.commit_sha).unwrap_or_default();
        let short: String = sha.chars().take(opts.sha_length).collect();
        if !short.is_empty() {
            push(short);
        }
    }
    if opts.build_number_tag {
        push(format!("build-{}", run.build_number));
    }
    if let Some(v) = version.as_ref().filter(|v| v.pre.is_none()) {
        push(format!("{}.{}", v.major, v.minor));
        if v.major > 0 {
            push(v.major.to_string());
        }
    }
    if opts.branch_tag {
        if let Some(b) = run.branch.as_deref().and_then(sanitize) {
            push(b);
        }
        if version.is_none() {
            if let Some(t) = run.tag.as_deref().and_then(sanitize) {
                push(t);
            }
        }
    }
    if opts.latest
        && !prerelease
        && !run.default_branch.is_empty()
        && run.branch.as_deref() == Some(run.default_branch.as_str())
    {
        push("latest".to_string());
    }
    tags
}

/// `image:tag` for each tag.
pub fn refs(image: &str, tags: &[String]) -> Vec<String> {
    tags.iter().map(|t| format!("{image}:{t}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "0123abcdef4567890123abcdef4567890123abcd";

    fn branch_run(branch: &str) -> RunInfo {
        RunInfo {
            build_number: 42,
            commit_sha: SHA.into(),
            branch: Some(branch.into()),
            tag: None,
            default_branch: "main".into(),
        }
    }

    fn tag_run(tag: &str) -> RunInfo {
        RunInfo {
            branch: None,
            tag: Some(tag.into()),
            ..branch_run("x")
        }
    }

    #[test]
    fn default_branch_gets_latest() {
        let tags = compute_tags(&Options::default(), &branch_run("main"));
        assert_eq!(tags, vec!["0123abc", "build-42", "main", "latest"]);
    }

    #[test]
    fn feature_branch_is_sanitised_and_not_latest() {
        let tags = compute_tags(&Options::default(), &branch_run("Feature/Login_Page#2"));
        assert_eq!(tags, vec!["0123abc", "build-42", "feature-login_page-2"]);
    }

    #[test]
    fn release_tag_gets_floating_semver_tags() {
        let tags = compute_tags(&Options::default(), &tag_run("v1.2.3"));
        assert_eq!(tags, vec!["1.2.3", "0123abc", "build-42", "1.2", "1"]);
    }

    #[test]
    fn prerelease_gets_only_the_full_version_and_no_latest() {
        let mut run = tag_run("v1.2.3-rc.1");
        run.branch = Some("main".into());
        let tags = compute_tags(&Options::default(), &run);
        assert_eq!(tags, vec!["1.2.3-rc.1", "0123abc", "build-42", "main"]);
    }

    #[test]
    fn zero_major_has_no_bare_zero_tag() {
        let tags = compute_tags(&Options::default(), &tag_run("0.4.1"));
        assert_eq!(tags, vec!["0.4.1", "0123abc", "build-42", "0.4"]);
    }

    #[test]
    fn build_metadata_is_dropped() {
        let tags = compute_tags(&Options::default(), &tag_run("v2.0.0+exp.sha.5114f85"));
        assert_eq!(tags[0], "2.0.0");
        assert!(tags.iter().all(|t| is_valid_tag(t)), "{tags:?}");
    }

    #[test]
    fn non_semver_tag_is_used_sanitised() {
        let tags = compute_tags(&Options::default(), &tag_run("Release/2024-06"));
        assert_eq!(tags, vec!["0123abc", "build-42", "release-2024-06"]);
    }

    #[test]
    fn options_switch_kinds_off() {
        let opts = Options {
            latest: false,
            sha_length: 12,
            branch_tag: false,
            build_number_tag: false,
            semver: false,
        };
        assert_eq!(
            compute_tags(&opts, &branch_run("main")),
            vec!["0123abcdef45"]
        );
        // semver off: a version tag is neither parsed nor used as a ref tag.
        assert_eq!(
            compute_tags(&opts, &tag_run("v1.2.3")),
            vec!["0123abcdef45"]
        );
        let none = Options {
            sha_length: 0,
            ..opts
        };
        assert!(compute_tags(&none, &branch_run("main")).is_empty());
    }

    #[test]
    fn missing_sha_gives_no_sha_tag() {
        let mut run = branch_run("dev");
        run.commit_sha.clear();
        assert_eq!(
            compute_tags(&Options::default(), &run),
            vec!["build-42", "dev"]
        );
    }

    #[test]
    fn duplicates_are_dropped_keeping_first() {
        // A branch literally called "build-42" collides with the build tag.
        let tags = compute_tags(&Options::default(), &branch_run("build-42"));
        assert_eq!(tags, vec!["0123abc", "build-42"]);
        let tags = compute_tags(&Options::default(), &branch_run("latest"));
        assert_eq!(tags, vec!["0123abc", "build-42", "latest"]);
    }

    #[test]
    fn semver_parsing() {
        assert_eq!(
            parse_semver("v10.20.30"),
            Some(Version {
                major: 10,
                minor: 20,
                patch: 30,
                pre: None
            })
        );
        assert_eq!(
            parse_semver("1.0.0-alpha.beta-1").unwrap().pre.as_deref(),
            Some("alpha.beta-1")
        );
        for bad in [
            "1.2",
            "1.2.3.4",
            "01.2.3",
            "1.2.3-",
            "1.2.3-01",
            "v",
            "",
            "1.2.x",
            "1.2.3+",
            "release",
            "1.2.3-rc..1",
        ] {
            assert_eq!(parse_semver(bad), None, "{bad}");
        }
    }

    #[test]
    fn sanitising_follows_docker_grammar() {
        assert_eq!(
            sanitize("feature/ABC-12").as_deref(),
            Some("feature-abc-12")
        );
        assert_eq!(sanitize("..-x").as_deref(), Some("x"));
        assert_eq!(sanitize("release/").as_deref(), Some("release"));
        assert_eq!(sanitize("_x").as_deref(), Some("_x"));
        assert_eq!(sanitize("///").as_deref(), None);
        assert_eq!(sanitize("").as_deref(), None);
        assert_eq!(sanitize("ünï").as_deref(), Some("n"));
        let long = "a".repeat(300);
        assert_eq!(sanitize(&long).unwrap().len(), 128);
        for s in [
            "feature/x",
            "-a",
            "dependabot/npm_and_yarn/lodash-4.17.21",
            "%%a",
        ] {
            assert!(is_valid_tag(&sanitize(s).unwrap()), "{s}");
        }
        assert!(!is_valid_tag(".x"));
        assert!(!is_valid_tag(&"a".repeat(129)));
    }

    #[test]
    fn image_validation() {
        for ok in [
            "demo-app",
            "127.0.0.1:5000/demo-app",
            "ghcr.io/org/app",
            "localhost/a_b",
            "library/ubuntu",
        ] {
            assert_eq!(validate_image(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "demo:1.0",
            "127.0.0.1:5000/demo-app:latest",
            "Org/App",
            "a//b",
            "app@sha256:abc",
            "-app",
        ] {
            assert!(validate_image(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn refs_join_image_and_tag() {
        assert_eq!(
            refs("r:5000/a", &["1".into(), "latest".into()]),
            vec!["r:5000/a:1", "r:5000/a:latest"]
        );
    }
}
