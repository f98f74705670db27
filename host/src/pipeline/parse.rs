//! Raw serde structs mirroring the file, keeping spans of every value that a
//! later check may need to point at. `deny_unknown_fields` everywhere: a
//! typo'd key must be an error, never silently ignored (a misspelt `grants`
//! key would otherwise widen or narrow a sandbox without anyone noticing).
//!
//! Values whose type we want to explain better than serde can (`timeout`,
//! `memory`, `with`, plugin entries, ports) are taken as `toml::Value` and
//! checked in `validate`.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::Deserialize;
use serde_spanned::Spanned;
use toml::de::DeTable;

use super::{Diagnostic, Location};

pub(super) type Str = Spanned<String>;
pub(super) type StrList = Vec<Str>;

#[derive(Debug, Deserialize)]
// Not `deny_unknown_fields`: capabilities read their own top-level tables
// (`[git.NAME]`); `validate::check_tables` refuses any other table.
pub(super) struct RawFile {
    pub pipeline: Option<Spanned<RawPipeline>>,
    #[serde(default)]
    pub plugins: BTreeMap<Str, Spanned<toml::Value>>,
    pub trust: Option<Spanned<RawTrust>>,
    #[serde(default)]
    pub secrets: BTreeMap<Str, Spanned<RawSecret>>,
    #[serde(default)]
    pub environments: BTreeMap<Str, Spanned<RawEnvironment>>,
    #[serde(default)]
    pub stage: Vec<Spanned<RawStage>>,
}

/// `[trust]`: the keys plugins must be signed by.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawTrust {
    pub signed_by: StrList,
}

/// `[environments.NAME]`: which runs deploy to it, and whether a person
/// must approve first.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawEnvironment {
    pub branch: Option<StrList>,
    pub tag: Option<StrList>,
    pub approval: Option<bool>,
    pub approval_timeout: Option<Spanned<toml::Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawPipeline {
    pub name: Option<Str>,
    pub default_branch: Option<Str>,
    pub labels: Option<StrList>,
    pub timeout: Option<Spanned<toml::Value>>,
    pub memory: Option<Spanned<toml::Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSecret {
    pub env: Option<Str>,
    pub file: Option<Str>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStage {
    pub name: Option<Str>,
    pub plugin: Option<Str>,
    pub needs: Option<StrList>,
    pub when: Option<Spanned<RawWhen>>,
    pub with: Option<Spanned<toml::Value>>,
    pub grants: Option<crate::caps::RawGrants>,
    pub timeout: Option<Spanned<toml::Value>>,
    pub memory: Option<Spanned<toml::Value>>,
    pub retries: Option<Spanned<i64>>,
    pub environment: Option<Str>,
    pub artifacts: Option<StrList>,
    pub rollback: Option<Str>,
    pub labels: Option<StrList>,
    pub cache: Option<Spanned<RawCache>>,
}

/// `cache = { inputs = [...], outside = true }`: what a stage depends on.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCache {
    pub inputs: StrList,
    pub outside: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWhen {
    pub branch: Option<StrList>,
    pub tag: Option<StrList>,
    pub event: Option<StrList>,
    pub always: Option<bool>,
}

/// The file being checked: its name for messages, its text for turning
/// byte offsets into line:col, and its TOML document, parsed once for
/// every view of the file decoded from it (the pipeline's own, each
/// capability's tables, the top-level key check).
pub(crate) struct Source<'a> {
    pub file: PathBuf,
    pub text: &'a str,
    /// Byte offset where each line starts.
    line_starts: Vec<usize>,
    doc: OnceLock<Result<Spanned<DeTable<'a>>, toml::de::Error>>,
}

impl<'a> Source<'a> {
    pub fn new(file: &Path, text: &'a str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Source {
            file: file.to_path_buf(),
            text,
            line_starts,
            doc: OnceLock::new(),
        }
    }

    /// The parsed document (parsed on first use).
    pub fn document(&self) -> Result<&Spanned<DeTable<'a>>, toml::de::Error> {
        self.doc
            .get_or_init(|| DeTable::parse(self.text))
            .as_ref()
            .map_err(Clone::clone)
    }

    /// A deserializer of the whole document, for one view of it.
    pub fn deserializer(&self) -> Result<toml::Deserializer<'a>, toml::de::Error> {
        Ok(toml::Deserializer::from(self.document()?.clone()))
    }

    /// 1-based line and character column of a byte offset (clamped to the
    /// text, and to a char boundary so odd spans never panic).
    pub fn location(&self, offset: usize) -> Location {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let line = self.line_starts.partition_point(|&s| s <= offset);
        let start = self.line_starts[line - 1];
        let col = self.text[start..offset].chars().count() + 1;
        Location {
            file: self.file.clone(),
            line,
            col,
        }
    }

    pub fn span(&self, span: Range<usize>) -> Location {
        self.location(span.start)
    }

    pub fn diag(&self, span: Range<usize>, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            location: self.span(span),
            message: message.into(),
        }
    }
}

/// TOML text → raw structs. Serde stops at the first syntax or shape error,
/// so this yields one diagnostic; semantic checks afterwards collect all.
pub(super) fn decode(src: &Source<'_>) -> Result<RawFile, Diagnostic> {
    decode_toml(src).map_err(|mut d| {
        // `[stage]` instead of `[[stage]]` is the likeliest shape mistake;
        // serde only says "expected a sequence".
        let line = src.text.lines().nth(d.location.line - 1).unwrap_or("");
        if line.trim_start().starts_with("[stage]") && !d.message.contains("write `[[stage]]`") {
            d.message
                .push_str("; each stage is an array-of-tables entry: write `[[stage]]`");
        }
        d
    })
}

/// TOML text → `T` (a file's raw structs), or one diagnostic at the value
/// at fault that names its key as a user would write it
/// (`stage[2].needs: invalid type: …`, `repository[0].trigger[1].branch: …`)
/// and says what was expected in the file's terms, not serde's.
pub(crate) fn decode_toml<T: serde::de::DeserializeOwned>(
    src: &Source<'_>,
) -> Result<T, Diagnostic> {
    let at = |e: &toml::de::Error| match e.span() {
        Some(span) => src.span(span),
        None => src.location(0),
    };
    let de = || {
        src.deserializer().map_err(|e| Diagnostic {
            location: at(&e),
            message: crate::text::tidy_message(e.message()),
        })
    };
    // Most files decode: tracking the key path of every value (what the
    // message names) is only paid for again when one does not.
    if let Ok(t) = T::deserialize(de()?) {
        return Ok(t);
    }
    serde_path_to_error::deserialize(de()?).map_err(|e| {
        let mut keys = key_segments(e.path());
        let e = e.into_inner();
        let location = at(&e);
        let got_text = e.span().and_then(|s| src.text.get(s)).unwrap_or("");
        // An unknown key is named by the message itself; say where it is.
        if e.message().starts_with("unknown field `") {
            keys.pop();
        }
        let message = explain(e.message(), &keys, got_text);
        let message = if keys.is_empty() {
            message
        } else {
            format!("{}: {message}", key_path(&keys))
        };
        Diagnostic {
            location,
            message: crate::text::tidy_message(&message),
        }
    })
}

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Key {
    Name(String),
    Index(usize),
    /// A table key serde could not capture (spanned map keys): shown as
    /// `<name>`; the position still points at it.
    Unnamed,
}

/// The keys a user wrote, without the private ones toml uses to carry
/// spans (`$__serde_spanned_private_value`) and datetimes.
fn key_segments(path: &serde_path_to_error::Path) -> Vec<Key> {
    use serde_path_to_error::Segment;
    path.iter()
        .filter_map(|s| match s {
            Segment::Map { key } if key.starts_with("$__") => None,
            Segment::Map { key } => Some(Key::Name(key.clone())),
            Segment::Enum { variant } => Some(Key::Name(variant.clone())),
            Segment::Seq { index } => Some(Key::Index(*index)),
            Segment::Unknown => Some(Key::Unnamed),
        })
        .collect()
}

/// The longest key a path spells out (keys come from the file).
const MAX_KEY_CHARS: usize = 40;

/// `stage[2].grants.http`, with keys that are not bare TOML keys quoted
/// (`plugins."my plugin"`) and long ones cut.
fn key_path(keys: &[Key]) -> String {
    let mut out = String::new();
    for k in keys {
        match k {
            Key::Index(i) => out.push_str(&format!("[{i}]")),
            Key::Unnamed => out.push_str(if out.is_empty() { "<name>" } else { ".<name>" }),
            Key::Name(name) => {
                if !out.is_empty() {
                    out.push('.');
                }
                let bare = !name.is_empty()
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
                // The mark goes outside the quotes: the quoted part is the key as written.
                let short: String = name.chars().take(MAX_KEY_CHARS).collect();
                let cut = if short.len() < name.len() { "…" } else { "" };
                if bare {
                    out.push_str(&format!("{short}{cut}"));
                } else {
                    out.push_str(&format!("{short:?}{cut}"));
                }
            }
        }
    }
    out
}

/// The longest value a type error quotes.
const MAX_QUOTED_CHARS: usize = 48;

/// Serde's message in the file's terms: `map` is a table, `i64` an integer,
/// a sequence a list (with what belongs in it, for the keys we know);
/// quoted values and names are cut short. `got_text` is the source text of
/// the value at fault.
fn explain(message: &str, keys: &[Key], got_text: &str) -> String {
    if let Some((got, expected)) = message
        .strip_prefix("invalid type: ")
        .and_then(|rest| rest.rsplit_once(", expected "))
    {
        let got = match got {
            "map" if got_text.starts_with(|c: char| c.is_ascii_digit()) => "a date-time".into(),
            "map" => "table".into(),
            "sequence" => "array".into(),
            other => shorten(other),
        };
        return format!(
            "invalid type: {got}, expected {}",
            expected_in_toml(expected, keys)
        );
    }
    for prefix in ["unknown field `", "unknown variant `"] {
        if let Some((name, rest)) = message
            .strip_prefix(prefix)
            .and_then(|rest| rest.rsplit_once("`, expected "))
        {
            let short = crate::text::cut(name, MAX_KEY_CHARS);
            return format!("{prefix}{short}`, expected {rest}");
        }
    }
    message.to_string()
}

/// A quoted value (`string "…"`) cut to [`MAX_QUOTED_CHARS`].
fn shorten(got: &str) -> String {
    if got.chars().count() <= MAX_QUOTED_CHARS + 10 {
        return got.to_string();
    }
    let cut = crate::text::cut(got, MAX_QUOTED_CHARS);
    match got.chars().last() {
        Some(q @ ('"' | '`')) => format!("{cut}{q}"),
        _ => cut,
    }
}

/// What serde expected, as the TOML file spells it.
fn expected_in_toml(expected: &str, keys: &[Key]) -> String {
    match expected {
        "i8" | "i16" | "i32" | "i64" | "u8" | "u16" | "u32" | "u64" | "usize" | "isize" => {
            "an integer".into()
        }
        "f32" | "f64" => "a number".into(),
        "a map" | "map" => "a table".into(),
        "a sequence" => format!("a sequence ({})", list_of(keys)),
        s if s.starts_with("struct ") => "a table".into(),
        other => other.to_string(),
    }
}

/// What a list-valued key holds, with an example.
fn list_of(keys: &[Key]) -> &'static str {
    let names: Vec<&str> = keys
        .iter()
        .filter_map(|k| match k {
            Key::Name(n) => Some(n.as_str()),
            Key::Index(_) | Key::Unnamed => None,
        })
        .collect();
    let in_docker = names.contains(&"docker");
    match names.last().copied().unwrap_or("") {
        "stage" => "an array of tables: write `[[stage]]`",
        "repository" => "an array of tables: write `[[repository]]`",
        "trigger" => "an array of tables: write `[[repository.trigger]]`",
        "upload" => "an array of tables: write `[[upload]]`",
        "needs" => "a list of stage names, like [\"build\"]",
        "build" | "run" | "tag" | "push" | "base" | "scan" if in_docker => {
            "a list of image patterns, like [\"local/app:*\"]"
        }
        "containers" => "a list of container-name patterns, like [\"app-*\"]",
        "ports" => "a list of ports, like [8080]",
        "branch" | "tag" | "push" => "a list of patterns, like [\"main\"]",
        "event" => "a list of events, like [\"push\"]",
        "actions" => "a list of pull request actions, like [\"opened\"]",
        "http" => "a list of URL patterns, like [\"https://api.example.com/**\"]",
        "env" | "secrets" | "secrets-read" | "git" | "ssh" => "a list of names, like [\"NAME\"]",
        "artifacts" => "a list of paths, like [\"dist/**\"]",
        "signed-by" => "a list of public keys, like [\"ed25519:…\"]",
        "plugin-dirs" => "a list of directories, like [\"/opt/host/plugins\"]",
        _ => "a list, like [\"…\"]",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str = "[pipeline]\nname = \"demo\"\n[plugins]\ntag = \"tag.wasm\"\n";

    /// The one diagnostic `decode` gives for `text`, as `line:col: message`.
    fn decoded(text: &str) -> String {
        let src = Source::new(Path::new("pipeline.toml"), text);
        match decode(&src) {
            Ok(_) => panic!("expected an error for:\n{text}"),
            Err(d) => format!("{}:{}: {}", d.location.line, d.location.col, d.message),
        }
    }

    fn stage(name: &str, extra: &str) -> String {
        format!("[[stage]]\nname = \"{name}\"\nplugin = \"tag\"\n{extra}\n")
    }

    #[test]
    fn a_type_error_names_the_key_path_and_what_was_expected() {
        let text = format!(
            "{HEAD}{}{}{}",
            stage("a", ""),
            stage("b", ""),
            stage("c", "needs = \"beta\"")
        );
        assert_eq!(
            decoded(&text),
            "16:9: stage[2].needs: invalid type: string \"beta\", expected a sequence \
             (a list of stage names, like [\"build\"])"
        );
        let e = decoded(&format!(
            "{HEAD}{}",
            stage("a", "grants = { http = \"x\" }")
        ));
        assert!(
            e.starts_with("8:19: stage[0].grants.http: invalid type: string \"x\", expected a sequence (a list of URL patterns"),
            "{e}"
        );
        let e = decoded(&format!(
            "{HEAD}{}",
            stage("a", "[stage.grants]\nhttp = [\"https://a.example/**\", 3]")
        ));
        assert_eq!(
            e,
            "9:33: stage[0].grants.http[1]: invalid type: integer `3`, expected a string"
        );
        assert_eq!(
            decoded("[pipeline]\nname = 3\n"),
            "2:8: pipeline.name: invalid type: integer `3`, expected a string"
        );
        assert_eq!(
            decoded(&format!("{HEAD}{}", stage("a", "retries = \"2\""))),
            "8:11: stage[0].retries: invalid type: string \"2\", expected an integer"
        );
        assert_eq!(
            decoded(&format!("{HEAD}{}", stage("a", "retries = 1979-05-27"))),
            "8:11: stage[0].retries: invalid type: a date-time, expected an integer"
        );
        assert_eq!(
            decoded(&format!(
                "{HEAD}{}",
                stage("a", "when = { branch = \"main\" }")
            )),
            "8:19: stage[0].when.branch: invalid type: string \"main\", expected a sequence \
             (a list of patterns, like [\"main\"])"
        );
        assert_eq!(
            decoded(&format!("{HEAD}{}", stage("a", "grants = \"all\""))),
            "8:10: stage[0].grants: invalid type: string \"all\", expected a table"
        );
        assert_eq!(
            decoded(&format!(
                "{HEAD}{}",
                stage("a", "grants = { docker = { tag = \"x\" } }")
            )),
            "8:29: stage[0].grants.docker.tag: invalid type: string \"x\", expected a sequence \
             (a list of image patterns, like [\"local/app:*\"])"
        );
    }

    #[test]
    fn keys_that_are_not_bare_are_quoted_and_unknown_keys_name_their_table() {
        assert_eq!(
            decoded("[secrets.\"db pass\"]\nenv = 3\n"),
            "2:7: secrets.<name>.env: invalid type: integer `3`, expected a string"
        );
        let e = decoded(&format!("{HEAD}{}", stage("a", "plugn = \"x\"")));
        assert!(
            e.starts_with("8:1: stage[0]: unknown field `plugn`, expected one of `name`"),
            "{e}"
        );
        assert_eq!(
            decoded(&format!(
                "{HEAD}{}",
                stage("a", "grants = { workspace = \"rx\" }")
            )),
            "8:24: stage[0].grants.workspace: unknown variant `rx`, expected `ro` or `rw`"
        );
    }

    #[test]
    fn the_stage_table_mistake_says_to_write_an_array_of_tables() {
        let e = decoded("[pipeline]\nname = \"x\"\n[stage]\nname = \"a\"\n");
        assert_eq!(
            e,
            "3:1: stage: invalid type: table, expected a sequence \
             (an array of tables: write `[[stage]]`)"
        );
        let e = decoded("stage = 3\n");
        assert!(e.contains("write `[[stage]]`"), "{e}");
    }

    #[test]
    fn quoted_values_and_keys_stay_bounded() {
        let long = "x".repeat(5000);
        let e = decoded(&format!(
            "{HEAD}{}",
            stage("a", &format!("needs = \"{long}\""))
        ));
        assert!(e.chars().count() < 230, "{e}");
        assert!(
            e.contains("stage[0].needs: invalid type: string \"xxx"),
            "{e}"
        );
        assert!(
            e.contains("…\", expected a sequence (a list of stage names"),
            "{e}"
        );
        let e = decoded(&format!("[secrets.\"{long}\"]\nenv = 3\n"));
        assert!(e.chars().count() < 230, "{e}");
        assert!(
            e.contains("secrets.<name>.env: invalid type: integer `3`"),
            "{e}"
        );
        let e = decoded(&format!("{HEAD}{}", stage("a", &format!("{long} = 1"))));
        assert!(e.contains("stage[0]: unknown field `xxx"), "{e}");
        assert!(e.contains("…`, expected one of `name`"), "{e}");
    }

    #[test]
    fn a_timeout_given_as_a_number_names_the_key_and_the_form() {
        let text = format!("{HEAD}{}", stage("a", "timeout = 30"));
        let e = crate::pipeline::parse(Path::new("pipeline.toml"), &text)
            .unwrap_err()
            .to_string();
        assert!(e.contains("pipeline.toml:8:11: "), "{e}");
        assert!(e.contains("`timeout`: expected a duration string"), "{e}");
    }
}
