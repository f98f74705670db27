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

use serde::Deserialize;
use serde_spanned::Spanned;

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
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWhen {
    pub branch: Option<StrList>,
    pub tag: Option<StrList>,
    pub event: Option<StrList>,
    pub always: Option<bool>,
}

/// The file being checked: its name for messages and its text for turning
/// byte offsets into line:col.
pub(crate) struct Source<'a> {
    pub file: PathBuf,
    pub text: &'a str,
    /// Byte offset where each line starts.
    line_starts: Vec<usize>,
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
        }
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
    toml::from_str::<RawFile>(src.text).map_err(|e| {
        let location = match e.span() {
            Some(span) => src.span(span),
            None => src.location(0),
        };
        let mut message = crate::text::tidy_message(e.message());
        // `[stage]` instead of `[[stage]]` is the likeliest shape mistake;
        // serde only says "expected a sequence".
        let line = src.text.lines().nth(location.line - 1).unwrap_or("");
        if line.trim_start().starts_with("[stage]") {
            message.push_str("; each stage is an array-of-tables entry: write `[[stage]]`");
        }
        Diagnostic { location, message }
    })
}
