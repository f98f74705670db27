//! Secrets: resolved by the host once per run, used by name, masked everywhere.
//!
//! A stage granted `secrets = ["x"]` may have the host put `x` into a
//! capability call (`${secret:x}`); only `secrets-read = ["x"]` lets the
//! plugin read the value itself.
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use aho_corasick::{AhoCorasick, MatchKind};
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine;

use crate::caps::audit::Audit;
use crate::caps::capability::{Cap, Capability, GrantCx, NoGrant, StageEnv};
use crate::caps::denied;
use crate::confined::{read_operator_file, Root};
use crate::wit::{ci::stage::secrets::Host, CapError};

/// Replaced for every secret value in logs, reports and records.
pub const MASK: &str = "***";

/// Secret values of one run, by name. Never printed (Debug shows names only).
#[derive(Default)]
pub struct SecretStore {
    values: BTreeMap<String, Result<String, String>>,
    masker: Masker,
}

impl std::fmt::Debug for SecretStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretStore")
            .field("names", &self.values.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Where the host reads a secret's value from when a stage uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// `{ env = "VAR" }`: the host's environment variable `VAR`.
    Env(String),
    /// `{ file = "path" }`: a file, resolved against the pipeline directory.
    File(std::path::PathBuf),
}

/// Where `{ file = "…" }` secrets may be read from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum SecretFiles {
    /// As written, relative to the pipeline file (`host run`: the person
    /// running it wrote the file).
    #[default]
    AsWritten,
    /// Relative to this directory and never outside it (`host serve`: the
    /// pipeline file comes from the repository).
    Within(std::path::PathBuf),
    /// Not at all.
    Denied(String),
}

/// The largest secret file the host reads.
const MAX_SECRET_FILE_BYTES: u64 = 1 << 20;

impl SecretFiles {
    fn read(
        &self,
        pipeline_dir: &std::path::Path,
        path: &std::path::Path,
    ) -> Result<String, String> {
        let bytes = match self {
            SecretFiles::AsWritten => read_operator_file(path, MAX_SECRET_FILE_BYTES),
            SecretFiles::Denied(why) => return Err(why.clone()),
            SecretFiles::Within(dir) => {
                // The name comes from the repository: opened beneath the
                // server's secrets directory, never anywhere else.
                let rel = path
                    .strip_prefix(pipeline_dir)
                    .map_err(|_| "an absolute secret file path is not allowed here".to_string())?;
                Root::open(dir, "the server's secrets directory")
                    .map_err(|e| format!("the server's secrets directory: {e}"))?
                    .read(rel, MAX_SECRET_FILE_BYTES)
            }
        }
        .map_err(|e| format!("cannot read the secret file: {e}"))?;
        let text = String::from_utf8(bytes).map_err(|_| "the secret file is not UTF-8 text")?;
        Ok(text.trim_end_matches(['\n', '\r']).to_string())
    }
}

impl SecretStore {
    /// Resolve every secret the pipeline declares. A missing one is kept as
    /// an error and reported when a stage that is granted it starts.
    pub fn resolve(
        declared: &BTreeMap<String, SecretSource>,
        pipeline_dir: &std::path::Path,
        env: &dyn Fn(&str) -> Option<String>,
        files: &SecretFiles,
    ) -> Self {
        let mut values = BTreeMap::new();
        for (name, source) in declared {
            let value = match source {
                SecretSource::Env(var) => {
                    env(var).ok_or_else(|| format!("environment variable `{var}` is not set"))
                }
                SecretSource::File(path) => files.read(pipeline_dir, path),
            }
            .and_then(|v| {
                if v.is_empty() {
                    Err("the value is empty".to_string())
                } else {
                    Ok(v)
                }
            });
            values.insert(name.clone(), value);
        }
        Self::from_results(values)
    }

    /// For tests and embedding: secrets given directly.
    pub fn from_values(values: impl IntoIterator<Item = (String, String)>) -> Self {
        Self::from_results(values.into_iter().map(|(k, v)| (k, Ok(v))).collect())
    }

    fn from_results(values: BTreeMap<String, Result<String, String>>) -> Self {
        let masker = Masker::new(values.values().filter_map(|v| v.as_ref().ok().cloned()));
        Self { values, masker }
    }

    /// The value, or why it is not available.
    pub fn get(&self, name: &str) -> Result<&str, SecretUnavailable> {
        match self.values.get(name) {
            Some(Ok(v)) => Ok(v),
            Some(Err(e)) => Err(SecretUnavailable::Unresolved {
                name: name.to_string(),
                reason: e.clone(),
            }),
            None => Err(SecretUnavailable::Undeclared(name.to_string())),
        }
    }

    pub fn masker(&self) -> &Masker {
        &self.masker
    }
}

/// Why a secret's value cannot be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretUnavailable {
    /// Declared, but its source gave no value (the reason names the source).
    #[error("secret `{name}`: {reason}")]
    Unresolved { name: String, reason: String },
    #[error("secret `{0}` is not declared in [secrets]")]
    Undeclared(String),
}

/// Replaces secret values, and the encodings they commonly travel in, with
/// [`MASK`]. Built once per run from every secret value of the run; every
/// path that stores or shows text a stage could influence goes through
/// [`Masker::mask`] (or [`Masker::mask_cut`] where the text is also cut).
///
/// For each value it looks for:
/// - the value itself;
/// - URL-encoded: RFC 3986, `encodeURIComponent`, Python's `quote` (keeps
///   `/`) and form style, each with `%2F`/`%2f` hex and `%20`/`+` spaces;
/// - JSON-escaped: minimal (serde, `JSON.stringify`), ASCII-only (`\u00e9`,
///   Python's default), with `\/` (PHP), HTML-safe (`\u003c`, Go);
/// - base64, standard and URL-safe, padded and not, and the part of it that
///   survives inside a longer base64 text (the value after 0, 1 or 2 bytes
///   of something else, with the characters it shares with its neighbours
///   trimmed), so `base64(prefix + value + suffix)` is masked too;
/// - hex, lower and upper case.
///
/// Every value is masked in its raw, URL and JSON forms whatever its length
/// (a one-character secret masks that character everywhere). The base64 and
/// hex forms are only used when they are at least [`MIN_ENCODED_NEEDLE`]
/// characters long (values of 2 bytes or less have none that long, apart
/// from the full hex and padded base64 forms).
///
/// A value of several lines is also masked line by line (lines of at least
/// [`MIN_ENCODED_NEEDLE`] characters), since logs are split into lines.
///
/// Text that overlaps several matches is masked as one `***`, so two
/// secrets sharing characters never leave a piece of either visible.
#[derive(Clone, Default)]
pub struct Masker {
    inner: Option<Arc<MaskerInner>>,
}

struct MaskerInner {
    /// Leftmost-longest: can use the fast (SIMD) prefilter, answers "is
    /// there anything to mask?" for the common line that holds nothing.
    quick: AhoCorasick,
    /// Every match, overlapping ones too (only run when `quick` matched).
    searcher: AhoCorasick,
    /// Longest needle in bytes: how far a match can reach past a cut.
    longest: usize,
}

/// Shortest base64 or hex needle used (shorter ones would mask noise).
pub const MIN_ENCODED_NEEDLE: usize = 4;

impl Masker {
    pub fn new(values: impl IntoIterator<Item = String>) -> Self {
        let mut needles: Vec<String> = values
            .into_iter()
            .filter(|v| !v.is_empty())
            .flat_map(|v| needles_of(&v))
            .collect();
        needles.sort();
        needles.dedup();
        if needles.is_empty() {
            return Self::default();
        }
        let longest = needles.iter().map(String::len).max().unwrap_or(0);
        let searcher = AhoCorasick::builder()
            .match_kind(MatchKind::Standard)
            .build(&needles)
            .expect("secret needles build an automaton");
        let quick = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(&needles)
            .expect("secret needles build an automaton");
        Self {
            inner: Some(Arc::new(MaskerInner {
                quick,
                searcher,
                longest,
            })),
        }
    }

    /// `text` with every secret (in every form above) replaced by [`MASK`].
    pub fn mask(&self, text: &str) -> String {
        self.mask_cow(text).into_owned()
    }

    /// Like [`Masker::mask`], without a copy when there is nothing to mask.
    pub fn mask_cow<'a>(&self, text: &'a str) -> Cow<'a, str> {
        match self.spans(text) {
            None => Cow::Borrowed(text),
            Some(spans) => Cow::Owned(render(text, &spans, text.len())),
        }
    }

    /// The first `max` bytes of `text`, masked, then `marker` if anything
    /// was cut. Masked *before* cutting: a secret that straddles the cut is
    /// masked whole, never left half visible on either side.
    pub fn mask_cut(&self, text: &str, max: usize, marker: &str) -> String {
        let cut = if text.len() > max {
            let mut cut = max;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            cut
        } else {
            text.len()
        };
        let mut out = match self.spans(text) {
            None => text[..cut].to_string(),
            Some(spans) => render(text, &spans, cut),
        };
        if cut < text.len() {
            out.push_str(marker);
        }
        out
    }

    /// How many bytes past a cut a secret that starts before it can reach
    /// (the longest needle, minus one).
    pub fn reach(&self) -> usize {
        self.inner
            .as_ref()
            .map_or(0, |i| i.longest.saturating_sub(1))
    }

    pub fn is_empty(&self) -> bool {
        self.inner.is_none()
    }

    /// Byte ranges to mask, overlapping matches merged; `None` if none.
    fn spans(&self, text: &str) -> Option<Vec<(usize, usize)>> {
        let inner = self.inner.as_ref()?;
        if !inner.quick.is_match(text) {
            return None;
        }
        let mut found: Vec<(usize, usize)> = inner
            .searcher
            .find_overlapping_iter(text)
            .map(|m| (m.start(), m.end()))
            .collect();
        found.sort_unstable();
        let mut spans: Vec<(usize, usize)> = Vec::with_capacity(found.len());
        for (s, e) in found {
            match spans.last_mut() {
                Some(last) if s < last.1 => last.1 = last.1.max(e),
                _ => spans.push((s, e)),
            }
        }
        Some(spans)
    }
}

/// `text[..cut]` with each span that starts before `cut` replaced by
/// [`MASK`] (whole, even where it runs past `cut`).
fn render(text: &str, spans: &[(usize, usize)], cut: usize) -> String {
    let mut out = String::with_capacity(cut.min(text.len()));
    let mut pos = 0;
    for &(s, e) in spans.iter().take_while(|(s, _)| *s < cut) {
        out.push_str(&text[pos..s]);
        out.push_str(MASK);
        pos = e;
    }
    if pos < cut {
        out.push_str(&text[pos..cut]);
    }
    out
}

/// Every form of `value` the masker looks for.
fn needles_of(value: &str) -> Vec<String> {
    let mut out = vec![value.to_string()];
    // URL-encoded: which characters stay as they are, by encoder.
    let unreserved = |b: u8| b.is_ascii_alphanumeric() || b"-._~".contains(&b);
    let keep_sets: [&dyn Fn(u8) -> bool; 4] = [
        &unreserved,
        // encodeURIComponent
        &|b: u8| b.is_ascii_alphanumeric() || b"-_.!~*'()".contains(&b),
        // Python's urllib.parse.quote (safe="/")
        &|b: u8| unreserved(b) || b == b'/',
        // application/x-www-form-urlencoded (url::form_urlencoded)
        &|b: u8| b.is_ascii_alphanumeric() || b"*-._".contains(&b),
    ];
    for keep in keep_sets {
        for upper in [true, false] {
            for plus in [true, false] {
                out.push(percent_encode(value, keep, upper, plus));
            }
        }
    }
    // JSON string contents.
    for ascii in [false, true] {
        for slash in [false, true] {
            for html in [false, true] {
                out.push(json_escape(value, ascii, slash, html, false));
            }
        }
    }
    out.push(json_escape(value, true, false, false, true));
    // base64 (standard and URL-safe) and hex.
    let bytes = value.as_bytes();
    let mut encoded = vec![
        STANDARD.encode(bytes),
        STANDARD_NO_PAD.encode(bytes),
        URL_SAFE.encode(bytes),
        URL_SAFE_NO_PAD.encode(bytes),
        hex::encode(bytes),
        hex::encode_upper(bytes),
    ];
    // Inside a longer base64 text the value starts 0, 1 or 2 bytes into a
    // 3-byte group: encode it that way and keep the characters that only
    // depend on its own bits.
    let n = bytes.len();
    for shift in 0..3usize {
        let mut shifted = vec![0u8; shift];
        shifted.extend_from_slice(bytes);
        let enc = STANDARD_NO_PAD.encode(&shifted);
        let (start, end) = ((8 * shift).div_ceil(6), 8 * (shift + n) / 6);
        if start < end {
            let stable = &enc[start..end];
            encoded.push(stable.to_string());
            encoded.push(stable.replace('+', "-").replace('/', "_"));
        }
    }
    out.extend(
        encoded
            .into_iter()
            .filter(|e| e.len() >= MIN_ENCODED_NEEDLE),
    );
    // Logs are split into lines: a value of several lines (a key file) is
    // also masked line by line.
    if value.contains('\n') {
        out.extend(
            value
                .lines()
                .map(str::trim)
                .filter(|l| l.len() >= MIN_ENCODED_NEEDLE)
                .map(str::to_string),
        );
    }
    out.retain(|n| !n.is_empty());
    out
}

fn percent_encode(value: &str, keep: &dyn Fn(u8) -> bool, upper: bool, plus: bool) -> String {
    let mut out = String::with_capacity(value.len());
    for &b in value.as_bytes() {
        if keep(b) {
            out.push(b as char);
        } else if b == b' ' && plus {
            out.push('+');
        } else if upper {
            out.push_str(&format!("%{b:02X}"));
        } else {
            out.push_str(&format!("%{b:02x}"));
        }
    }
    out
}

/// The contents of a JSON string holding `value`, as different encoders
/// write them: `ascii` escapes non-ASCII as `\uXXXX` (UTF-16), `slash`
/// writes `\/`, `html` escapes `<`, `>`, `&`, U+2028 and U+2029.
fn json_escape(value: &str, ascii: bool, slash: bool, html: bool, upper: bool) -> String {
    let mut out = String::with_capacity(value.len());
    let unicode = |out: &mut String, u: u16| {
        if upper {
            out.push_str(&format!("\\u{u:04X}"));
        } else {
            out.push_str(&format!("\\u{u:04x}"));
        }
    };
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '/' if slash => out.push_str("\\/"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' if html => unicode(&mut out, c as u16),
            c if (c as u32) < 0x20 => unicode(&mut out, c as u16),
            c if ascii && !c.is_ascii() => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    unicode(&mut out, *u);
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// Per-stage view of the secrets: which names it may use and read.
pub struct SecretsCap {
    stage: String,
    usable: Vec<String>,
    readable: Vec<String>,
    store: Arc<SecretStore>,
    audit: Audit,
}

impl SecretsCap {
    pub fn new(
        stage: &str,
        usable: Vec<String>,
        readable: Vec<String>,
        store: Arc<SecretStore>,
    ) -> Self {
        Self {
            stage: stage.to_string(),
            usable,
            readable,
            store,
            audit: Audit::default(),
        }
    }

    /// Record every call in this trail (names only, never values).
    pub fn with_audit(mut self, audit: Audit) -> Self {
        self.audit = audit;
        self
    }

    /// Value of a secret the stage may *use* in a capability call.
    pub fn usable_value(&self, name: &str) -> Result<&str, CapError> {
        self.check_usable(name)?;
        self.store
            .get(name)
            .map_err(|e| CapError::Failed(e.to_string()))
    }

    /// Check a `${secret:NAME}` template without touching any value: the
    /// references are well formed and each NAME is granted for use. Says
    /// whether `text` references a secret at all. Capabilities call this
    /// before they validate a request, and [`SecretsCap::expand`] after.
    pub fn check_template(&self, text: &str) -> Result<bool, CapError> {
        let mut any = false;
        for piece in pieces(text)? {
            if let Piece::Secret(name) = piece {
                self.check_usable(name)?;
                any = true;
            }
        }
        Ok(any)
    }

    fn check_usable(&self, name: &str) -> Result<(), CapError> {
        if !self.usable.iter().any(|n| n == name) && !self.readable.iter().any(|n| n == name) {
            return Err(denied(&self.stage, "secrets", name));
        }
        Ok(())
    }

    /// Replace every `${secret:NAME}` in `text` with the value. Each NAME
    /// must be granted to the stage. The only place a secret value is put
    /// into text: call it after the request was validated in its template
    /// form, and build every message, log line and audit entry from the
    /// template, never from what this returns. Values are put in as they
    /// are (a value holding `${secret:…}` is not expanded again).
    pub fn expand(&self, text: &str) -> Result<String, CapError> {
        let mut out = String::with_capacity(text.len());
        for piece in pieces(text)? {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Secret(name) => out.push_str(self.usable_value(name)?),
            }
        }
        Ok(out)
    }

    /// Check that every granted secret resolved (run before the stage starts).
    pub fn check_available(&self) -> Result<(), SecretUnavailable> {
        for name in self.usable.iter().chain(&self.readable) {
            self.store.get(name)?;
        }
        Ok(())
    }

    pub fn masker(&self) -> &Masker {
        self.store.masker()
    }
}

pub fn contains_reference(text: &str) -> bool {
    text.contains(OPEN)
}

const OPEN: &str = "${secret:";

/// A template split into literal text and `${secret:NAME}` references.
enum Piece<'a> {
    Text(&'a str),
    Secret(&'a str),
}

fn pieces(text: &str) -> Result<Vec<Piece<'_>>, CapError> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(OPEN) {
        if start > 0 {
            out.push(Piece::Text(&rest[..start]));
        }
        let after = &rest[start + OPEN.len()..];
        let Some(end) = after.find('}') else {
            return Err(CapError::Invalid(
                "unterminated `${secret:` reference".to_string(),
            ));
        };
        out.push(Piece::Secret(&after[..end]));
        rest = &after[end + 1..];
    }
    if !rest.is_empty() {
        out.push(Piece::Text(rest));
    }
    Ok(out)
}

// Shared with the http capability, which expands `${secret:…}`.
impl Capability for Arc<SecretsCap> {
    const NAME: &'static str = "secrets";
    type Raw = NoGrant;
    type Grant = ();
    type Decls = ();

    fn compile(_: &NoGrant, _: &(), _: &mut GrantCx<'_>) {}

    /// What a stage may do with secrets is in the sandbox grants
    /// (`grants.secrets`, `secrets-read`), checked by the caller.
    fn covers(_: &(), _: Option<&str>) -> bool {
        true
    }

    fn link<T: Send + 'static>(
        linker: &mut wasmtime::component::Linker<T>,
        get: fn(&mut T) -> &mut Self,
    ) -> wasmtime::Result<()> {
        crate::wit::ci::stage::secrets::add_to_linker::<_, Cap<Self>>(linker, get)
    }

    /// The stage's secret use, shared with the capabilities that expand
    /// `${secret:…}`.
    fn for_stage(env: &StageEnv<'_>) -> anyhow::Result<Self> {
        Ok(env.secrets_cap.clone())
    }
}

impl Host for Arc<SecretsCap> {
    async fn names(&mut self) -> wasmtime::Result<Vec<String>> {
        let mut names: Vec<String> = self.usable.iter().chain(&self.readable).cloned().collect();
        names.sort();
        names.dedup();
        self.audit
            .note("secrets.names", "", &format!("{} names", names.len()));
        Ok(names)
    }

    async fn read(&mut self, name: String) -> wasmtime::Result<Result<String, CapError>> {
        let result = if !self.readable.contains(&name) {
            Err(denied(&self.stage, "secrets-read", name.clone()))
        } else {
            self.store
                .get(&name)
                .map(str::to_string)
                .map_err(|e| CapError::Failed(e.to_string()))
        };
        // The value itself is never recorded (and the masker would hide it).
        self.audit.record("secrets.read", &name, &result, |_| {
            "ok (value not recorded)".into()
        });
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cap(usable: &[&str], readable: &[&str]) -> SecretsCap {
        let store = SecretStore::from_values([
            (
                "hook".to_string(),
                "https://hooks.example/T0/B0/xyz".to_string(),
            ),
            ("token".to_string(), "s3cr3t&x".to_string()),
        ]);
        SecretsCap::new(
            "notify",
            usable.iter().map(|s| s.to_string()).collect(),
            readable.iter().map(|s| s.to_string()).collect(),
            Arc::new(store),
        )
    }

    #[test]
    fn expands_granted_references_only() {
        let c = cap(&["hook"], &[]);
        assert_eq!(
            c.expand("${secret:hook}?a=1").unwrap(),
            "https://hooks.example/T0/B0/xyz?a=1"
        );
        match c.expand("Bearer ${secret:token}") {
            Err(CapError::Denied(d)) => {
                assert_eq!(d.stage, "notify");
                assert_eq!(d.target, "token");
            }
            other => panic!("expected denial, got {other:?}"),
        }
        assert!(matches!(
            c.expand("${secret:hook"),
            Err(CapError::Invalid(_))
        ));
        // A value is put in as it is, never expanded again.
        let store = SecretStore::from_values([
            ("a".to_string(), "${secret:b}".to_string()),
            ("b".to_string(), "B".to_string()),
        ]);
        let c = SecretsCap::new("s", vec!["a".into(), "b".into()], vec![], Arc::new(store));
        assert_eq!(c.expand("x${secret:a}y").unwrap(), "x${secret:b}y");
    }

    #[test]
    fn templates_are_checked_without_values() {
        let store =
            SecretStore::from_results([("hook".to_string(), Err("not set".to_string()))].into());
        let c = SecretsCap::new("s", vec!["hook".into()], vec![], Arc::new(store));
        assert!(matches!(
            c.check_template("https://x/${secret:hook}"),
            Ok(true)
        ));
        assert!(matches!(c.check_template("https://x/"), Ok(false)));
        assert!(matches!(
            c.check_template("${secret:other}"),
            Err(CapError::Denied(d)) if d.target == "other"
        ));
        assert!(matches!(
            c.check_template("a${secret:hook"),
            Err(CapError::Invalid(_))
        ));
    }

    #[test]
    fn masks_values_and_url_encoded_forms() {
        let c = cap(&[], &[]);
        let m = c.masker();
        assert_eq!(
            m.mask("url=https://hooks.example/T0/B0/xyz done"),
            "url=*** done"
        );
        assert_eq!(m.mask("t=s3cr3t%26x"), "t=***");
        assert_eq!(m.mask("nothing here"), "nothing here");
    }

    const SECRET: &str = "Tok3n/+? &=\"q\"\\é~42xyz";

    /// No 8-character piece of `secret` (all of a shorter one) in `text`.
    fn assert_hidden(text: &str, secret: &str, what: &str) {
        let chars: Vec<char> = secret.chars().collect();
        for w in chars.windows(chars.len().min(8)) {
            let piece: String = w.iter().collect();
            assert!(
                !text.contains(&piece),
                "{what}: `{piece}` visible in {text}"
            );
        }
    }

    fn pct(s: &str, keep: &[u8], upper: bool, plus: bool) -> String {
        s.bytes()
            .map(|b| match b {
                b if b.is_ascii_alphanumeric() || keep.contains(&b) => (b as char).to_string(),
                b' ' if plus => "+".into(),
                b if upper => format!("%{b:02X}"),
                b => format!("%{b:02x}"),
            })
            .collect()
    }

    #[test]
    fn masks_every_common_encoding() {
        let m = Masker::new([SECRET.to_string()]);
        let b = SECRET.as_bytes();
        let json = serde_json::to_string(SECRET).unwrap();
        let json = &json[1..json.len() - 1];
        let forms = [
            SECRET.to_string(),
            STANDARD.encode(b),
            STANDARD_NO_PAD.encode(b),
            URL_SAFE.encode(b),
            URL_SAFE_NO_PAD.encode(b),
            hex::encode(b),
            hex::encode_upper(b),
            pct(SECRET, b"*-._", true, true),
            pct(SECRET, b"*-._", false, true),
            pct(SECRET, b"-._~", true, false),
            pct(SECRET, b"-._~", false, false),
            pct(SECRET, b"-._~/", true, false),
            pct(SECRET, b"-_.!~*'()", false, false),
            json.to_string(),
            json.replace('é', "\\u00e9"),
            json.replace('é', "\\u00E9"),
            json.replace('/', "\\/"),
        ];
        assert_ne!(STANDARD.encode(b), URL_SAFE.encode(b));
        for f in &forms {
            let masked = m.mask(&format!("before {f} after"));
            assert_eq!(masked, "before *** after", "form {f}");
        }
    }

    #[test]
    fn masks_base64_of_a_value_inside_longer_data() {
        let m = Masker::new([SECRET.to_string()]);
        for prefix in ["", "A", "AB", "ABC", "user:", "Authorization: Basic x"] {
            for suffix in ["", "\n", "CD", "xyz!"] {
                let data = format!("{prefix}{SECRET}{suffix}");
                for (url, enc) in [
                    (false, STANDARD.encode(&data)),
                    (true, URL_SAFE_NO_PAD.encode(&data)),
                ] {
                    let masked = m.mask(&enc);
                    assert!(masked.contains(MASK), "{prefix:?}+{suffix:?}: {masked}");
                    // What depends on the value alone is gone.
                    let (p, n) = (prefix.len(), SECRET.len());
                    let core = &enc[(8 * p).div_ceil(6)..8 * (p + n) / 6];
                    assert_hidden(&masked, core, &format!("url={url} {prefix:?}"));
                }
            }
        }
        // hex inside a longer dump, either case.
        let dump = hex::encode(format!("pre{SECRET}post"));
        assert_eq!(m.mask(&dump), format!("707265***706f7374"));
        assert_eq!(m.mask(&dump.to_uppercase()), format!("707265***706F7374"));
    }

    #[test]
    fn overlapping_secrets_are_masked_as_one() {
        let m = Masker::new(["abcdef12".to_string(), "ef12ghij".to_string()]);
        assert_eq!(m.mask("x abcdef12ghij y"), "x *** y");
        assert_eq!(m.mask("abcdef12ef12ghij"), "******");
    }

    #[test]
    fn mask_cut_masks_a_secret_across_the_cut_whole() {
        let m = Masker::new(["hunter2-secret".to_string()]);
        let text = format!("{}hunter2-secret{}", "x".repeat(10), "y".repeat(10));
        for cut in 8..30 {
            let out = m.mask_cut(&text, cut, "|cut");
            assert_hidden(&out, "hunter2-secret", &format!("cut {cut}"));
            if cut > 10 {
                assert!(out.starts_with("xxxxxxxxxx***"), "{cut}: {out}");
            }
            assert!(out.ends_with("|cut"), "{out}");
        }
        assert_eq!(m.mask_cut("short", 100, "|cut"), "short");
        assert!(
            m.reach() >= "hunter2-secret".len() * 2 - 1,
            "hex is the longest"
        );
    }

    #[test]
    fn short_and_multi_line_values() {
        // A one-character secret is masked raw (today's rule: every value,
        // whatever its length), but not as 2-character hex or base64.
        let m = Masker::new(["x".to_string()]);
        assert_eq!(m.mask("a x b 78 eA"), "a *** b 78 eA");
        // A key file: masked whole, and line by line as logs split it.
        let key = "-----BEGIN KEY-----\nMIIEabcdefgh\nQUJDREVGR0hJ\n-----END KEY-----";
        let m = Masker::new([key.to_string()]);
        assert_eq!(m.mask(&format!("k={key}.")), "k=***.");
        assert_eq!(m.mask("line: QUJDREVGR0hJ"), "line: ***");
        // Nothing to mask: no copy.
        assert!(matches!(m.mask_cow("plain"), Cow::Borrowed(_)));
        assert!(Masker::default().is_empty());
        assert_eq!(Masker::default().mask("x"), "x");
    }

    #[tokio::test]
    async fn read_needs_read_grant() {
        let mut c = Arc::new(cap(&["token"], &[]));
        assert!(matches!(
            c.read("token".into()).await.unwrap(),
            Err(CapError::Denied(_))
        ));
        let mut c = Arc::new(cap(&[], &["token"]));
        assert_eq!(c.read("token".into()).await.unwrap().unwrap(), "s3cr3t&x");
    }

    #[test]
    fn missing_secret_is_reported_by_name() {
        let store = SecretStore::from_results(
            [(
                "x".to_string(),
                Err("environment variable `X` is not set".to_string()),
            )]
            .into(),
        );
        let c = SecretsCap::new("s", vec!["x".into()], vec![], Arc::new(store));
        let err = c.check_available().unwrap_err().to_string();
        assert!(err.contains("secret `x`") && err.contains("`X`"), "{err}");
    }
}
