//! Secrets: resolved by the host once per run, used by name, masked everywhere.
//!
//! A stage granted `secrets = ["x"]` may have the host put `x` into a
//! capability call (`${secret:x}`); only `secrets-read = ["x"]` lets the
//! plugin read the value itself.
use std::collections::BTreeMap;
use std::sync::Arc;

use crate::caps::audit::Audit;
use crate::caps::denied;
use crate::confined::{read_operator_file, Root};
use crate::pipeline::{Pipeline, SecretSource};
use crate::runtime::bindings::{ci::stage::secrets::Host, CapError};

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
    fn read(&self, pipeline: &Pipeline, path: &std::path::Path) -> Result<String, String> {
        let bytes = match self {
            SecretFiles::AsWritten => read_operator_file(path, MAX_SECRET_FILE_BYTES),
            SecretFiles::Denied(why) => return Err(why.clone()),
            SecretFiles::Within(dir) => {
                // The name comes from the repository: opened beneath the
                // server's secrets directory, never anywhere else.
                let rel = path
                    .strip_prefix(&pipeline.dir)
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
        pipeline: &Pipeline,
        env: &dyn Fn(&str) -> Option<String>,
        files: &SecretFiles,
    ) -> Self {
        let mut values = BTreeMap::new();
        for (name, source) in &pipeline.secrets {
            let value = match source {
                SecretSource::Env(var) => {
                    env(var).ok_or_else(|| format!("environment variable `{var}` is not set"))
                }
                SecretSource::File(path) => files.read(pipeline, path),
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
    pub fn get(&self, name: &str) -> Result<&str, String> {
        match self.values.get(name) {
            Some(Ok(v)) => Ok(v),
            Some(Err(e)) => Err(format!("secret `{name}`: {e}")),
            None => Err(format!("secret `{name}` is not declared in [secrets]")),
        }
    }

    pub fn masker(&self) -> &Masker {
        &self.masker
    }
}

/// Replaces secret values (and their common encodings) with [`MASK`].
#[derive(Clone, Default)]
pub struct Masker {
    needles: Arc<Vec<String>>,
}

impl Masker {
    pub fn new(values: impl IntoIterator<Item = String>) -> Self {
        let mut needles = Vec::new();
        for v in values {
            // Very short values would mask random text; they are still
            // secrets, so mask them anyway: leaking beats nothing here.
            let encoded = url::form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>();
            if encoded != v {
                needles.push(encoded);
            }
            needles.push(v);
        }
        // Longest first, so a secret containing another is masked whole.
        needles.sort_by_key(|n| std::cmp::Reverse(n.len()));
        needles.dedup();
        Self {
            needles: Arc::new(needles),
        }
    }

    pub fn mask(&self, text: &str) -> String {
        let mut out = text.to_string();
        for n in self.needles.iter() {
            if !n.is_empty() && out.contains(n.as_str()) {
                out = out.replace(n.as_str(), MASK);
            }
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.needles.is_empty()
    }
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
        self.store.get(name).map_err(CapError::Failed)
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
    pub fn check_available(&self) -> Result<(), String> {
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
                .map_err(CapError::Failed)
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
        let err = c.check_available().unwrap_err();
        assert!(err.contains("secret `x`") && err.contains("`X`"), "{err}");
    }
}
