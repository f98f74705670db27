//! Where plugin bytes come from and why the host trusts them.
//!
//! A `[plugins]` entry is a path, an `oci://` reference or a URL with a
//! digest. [`resolve`] turns every entry into a local file before any stage
//! runs:
//! - remote entries are pinned in the pipeline's lock file ([`lock`]) and
//!   fetched into a content-addressed cache ([`store`]), so later runs are
//!   offline and run exactly the bytes of the first;
//! - bytes that differ from a pin (the file's `sha256`, or the lock file's)
//!   are refused, as is a tag that moved since it was locked;
//! - with `[trust] signed-by`, every plugin needs an ed25519 signature by
//!   one of those keys ([`signing`]).

pub mod lock;
pub mod oci;
pub mod signing;
pub mod store;
mod url;

use std::path::{Path, PathBuf};

use crate::confined::Origin;
use crate::pipeline::{Diagnostic, Location, Pipeline, PluginRef, PluginSource, MAX_PLUGIN_BYTES};
use lock::{LockEntry, LockFile};
use signing::{PublicKey, Signature, SignatureError};
use store::BlobStore;

/// The largest signature file the host reads.
const MAX_SIGNATURE_BYTES: u64 = 64 << 10;

pub use crate::digest::sha256_hex;

/// The plugin-source parsers live in [`crate::plugin_source`] (so that
/// `pipeline` can check a file without depending on this module); these
/// are their old paths.
pub use crate::plugin_source::{is_loopback, parse_sha256, DigestError};

/// How a run treats the lock file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// Use the pins; resolve and add entries that are missing or changed.
    Normal,
    /// Use the pins; refuse to run when one is missing (CI's `--locked`).
    Locked,
    /// Re-resolve every remote entry (`host lock --update`).
    Update,
}

/// One resolved plugin, for `host lock` to print.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub name: String,
    pub source: String,
    pub sha256: String,
    /// Fetched over the network in this call (not from the cache).
    pub fetched: bool,
    pub signed_by: Option<String>,
}

/// Load the operator's pipeline file and resolve its plugins to verified
/// local files (fetching and pinning remote ones).
pub async fn load_resolved(
    file: &Path,
    state_dir: &Path,
    mode: LockMode,
) -> Result<crate::pipeline::Pipeline, crate::pipeline::PipelineError> {
    load_resolved_from(&Origin::Operator, file, state_dir, mode).await
}

/// [`load_resolved`] for a pipeline file of `origin` (a checkout's).
pub async fn load_resolved_from(
    origin: &Origin,
    file: &Path,
    state_dir: &Path,
    mode: LockMode,
) -> Result<crate::pipeline::Pipeline, crate::pipeline::PipelineError> {
    let mut p = crate::pipeline::load_from(origin, file)?;
    resolve(&mut p, state_dir, mode)
        .await
        .map_err(crate::pipeline::PipelineError::new)?;
    Ok(p)
}

/// Make every plugin of `p` a verified local file (see the module docs).
/// Sets each [`PluginRef::path`]; writes the lock file when it changed.
pub async fn resolve(
    p: &mut Pipeline,
    state_dir: &Path,
    mode: LockMode,
) -> Result<Vec<Resolved>, Vec<Diagnostic>> {
    let lock_path = lock::path_for(&p.file);
    let file_diag = |message: String| Diagnostic {
        location: Location {
            file: p.file.clone(),
            line: 1,
            col: 1,
        },
        message,
    };
    let old = LockFile::read_from(&p.origin, &lock_path)
        .map_err(|e| vec![file_diag(format!("{e:#}"))])?;
    let trusted: Vec<PublicKey> = p
        .trust
        .signed_by
        .iter()
        .filter_map(|k| PublicKey::parse(k).ok())
        .collect();
    let r = Resolver {
        origin: p.origin.clone(),
        store: BlobStore::new(state_dir),
        auth: oci::auth_from_env(),
        mode,
        lock_name: lock_path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    };
    let mut new = LockFile {
        version: 1,
        ..Default::default()
    };
    let mut diags = Vec::new();
    let mut out = Vec::new();
    for plugin in p.plugins.values_mut() {
        match r
            .plugin(plugin, old.plugins.get(&plugin.name), &trusted)
            .await
        {
            Ok((resolved, entry)) => {
                if let Some(entry) = entry {
                    new.plugins.insert(plugin.name.clone(), entry);
                }
                out.push(resolved);
            }
            Err(e) => diags.push(Diagnostic {
                location: plugin.location.clone(),
                message: format!("plugin `{}` ({}): {e}", plugin.name, plugin.source),
            }),
        }
    }
    if !diags.is_empty() {
        return Err(diags);
    }
    update_lock(&p.origin, &lock_path, mode, &old, &new)
        .map_err(|e| vec![file_diag(format!("{e:#}"))])?;
    Ok(out)
}

/// Write the lock file when what was resolved changed it. A pipeline of
/// local plugins only gets no lock file; a checkout is never written to
/// (its pins are used, missing ones resolved afresh); `--locked` refuses
/// any change.
fn update_lock(
    origin: &Origin,
    lock_path: &Path,
    mode: LockMode,
    old: &LockFile,
    new: &LockFile,
) -> anyhow::Result<()> {
    let wanted = origin.exists(lock_path) || !new.plugins.is_empty();
    if !wanted || new == old {
        return Ok(());
    }
    if mode == LockMode::Locked {
        let shown = if origin.is_untrusted() {
            origin.shown(lock_path)
        } else {
            lock_path.display().to_string()
        };
        anyhow::bail!(
            "{shown} is out of date and --locked forbids changing it; run `host lock` and commit it"
        );
    }
    if origin.is_untrusted() {
        tracing::info!(lock = %origin.shown(lock_path), "lock file out of date; used as is, not written (checkouts are never written to)");
        return Ok(());
    }
    new.write(origin, lock_path)?;
    tracing::info!(lock = %lock_path.display(), "lock file updated");
    Ok(())
}

/// A plugin's bytes on disk, and what the lock file should say about them.
struct Got {
    path: PathBuf,
    sha256: String,
    signature: Option<String>,
    /// Where a missing signature would have been looked for.
    signature_place: String,
    entry: Option<LockEntry>,
    fetched: bool,
}

struct Resolver {
    /// How the pipeline's own files (local plugins, signatures) are opened.
    origin: Origin,
    store: BlobStore,
    auth: oci_client::secrets::RegistryAuth,
    mode: LockMode,
    lock_name: String,
}

impl Resolver {
    /// One plugin fetched (or found) and verified, its path set; with the
    /// lock entry it should have.
    async fn plugin(
        &self,
        plugin: &mut PluginRef,
        locked: Option<&LockEntry>,
        trusted: &[PublicKey],
    ) -> Result<(Resolved, Option<LockEntry>), String> {
        let got = match &plugin.source {
            PluginSource::Path(_) => self.local(plugin),
            _ => self.remote(plugin, locked).await,
        }?;
        let signed_by = if trusted.is_empty() {
            None
        } else {
            Some(verify(&got, trusted).map_err(|e| {
                format!("refused: [trust] requires a signature by a listed key, and {e}")
            })?)
        };
        plugin.path = got.path.clone();
        let resolved = Resolved {
            name: plugin.name.clone(),
            source: plugin.source.to_string(),
            sha256: got.sha256,
            fetched: got.fetched,
            signed_by,
        };
        Ok((resolved, got.entry))
    }

    /// A plugin file the pipeline names. From a checkout, the bytes that
    /// were checked are copied into the host's store and run from there,
    /// so the file cannot change between the check and the run.
    fn local(&self, plugin: &PluginRef) -> Result<Got, String> {
        let bytes = self
            .origin
            .read_plugin(&plugin.path, MAX_PLUGIN_BYTES)
            .map_err(|e| format!("cannot read the plugin: {e}"))?;
        let sha256 = sha256_hex(&bytes);
        if let Some(pin) = plugin.sha256.as_ref().filter(|pin| **pin != sha256) {
            return Err(format!(
                "refused: the file's sha256 is {sha256}, but the pipeline pins {pin}"
            ));
        }
        let sig_path = PathBuf::from(format!("{}.sig", plugin.path.display()));
        let signature = self
            .origin
            .read_plugin(&sig_path, MAX_SIGNATURE_BYTES)
            .ok()
            .and_then(|b| String::from_utf8(b).ok());
        let path = if self.origin.is_untrusted() {
            self.keep(&bytes, &None)?;
            self.store.path(&sha256)
        } else {
            plugin.path.clone()
        };
        Ok(Got {
            signature,
            signature_place: self.origin.shown(&sig_path),
            path,
            sha256,
            entry: None,
            fetched: false,
        })
    }

    async fn remote(&self, plugin: &PluginRef, locked: Option<&LockEntry>) -> Result<Got, String> {
        let source = plugin.source.to_string();
        let usable = locked.filter(|l| {
            self.mode != LockMode::Update
                && l.source == source
                && plugin.sha256.as_ref().is_none_or(|pin| *pin == l.sha256)
        });
        if let Some(l) = usable {
            return self.locked(plugin, l).await;
        }
        if self.mode == LockMode::Locked {
            return Err(format!(
                "not pinned in {} (or its entry changed) and --locked forbids resolving it; run `host lock`",
                self.lock_name
            ));
        }
        let (bytes, resolved, signature) = self.fetch(&plugin.source).await?;
        let sha256 = sha256_hex(&bytes);
        if let Some(pin) = plugin.sha256.as_ref().filter(|pin| **pin != sha256) {
            return Err(format!(
                "refused: it resolved to bytes with sha256:{sha256}, but the pipeline pins sha256:{pin}"
            ));
        }
        self.keep(&bytes, &signature)?;
        Ok(Got {
            path: self.store.path(&sha256),
            entry: Some(LockEntry {
                source,
                resolved,
                sha256: sha256.clone(),
            }),
            sha256,
            signature_place: signature_place(&plugin.source),
            signature,
            fetched: true,
        })
    }

    /// A pinned plugin: from the cache if there, else fetched and checked
    /// against the pin.
    async fn locked(&self, plugin: &PluginRef, l: &LockEntry) -> Result<Got, String> {
        let got = |path, signature, fetched| Got {
            path,
            sha256: l.sha256.clone(),
            signature,
            signature_place: signature_place(&plugin.source),
            entry: Some(l.clone()),
            fetched,
        };
        if let Some(path) = self
            .store
            .get(&l.sha256)
            .map_err(|e| format!("refused: {e}"))?
        {
            return Ok(got(path, self.store.signature(&l.sha256), false));
        }
        let (bytes, signature) = match &plugin.source {
            PluginSource::Oci(r) => {
                let tag = oci::parse_reference(r).map_err(|e| e.to_string())?;
                let pinned = l
                    .resolved
                    .strip_prefix("oci://")
                    .and_then(|x| oci::parse_reference(x).ok())
                    .filter(|x| x.digest().is_some())
                    .ok_or_else(|| {
                        format!(
                            "{}: entry `resolved` is not an oci://…@sha256 reference",
                            self.lock_name
                        )
                    })?;
                if tag.digest().is_none() {
                    let now = oci::manifest_digest(&tag, &self.auth)
                        .await
                        .map_err(|e| format!("{e:#}"))?;
                    if Some(now.as_str()) != pinned.digest() {
                        return Err(format!(
                            "refused: tag `{}` now points to {now}, but {} pins {}; if the new version is wanted, run `host lock --update`",
                            tag.tag().unwrap_or("latest"),
                            self.lock_name,
                            pinned.digest().unwrap_or("?")
                        ));
                    }
                }
                let (bytes, a) = oci::pull(&pinned, &self.auth)
                    .await
                    .map_err(|e| format!("{e:#}"))?;
                (bytes, a.signature)
            }
            PluginSource::Url(u) => url::fetch(u).await.map_err(|e| format!("{e:#}"))?,
            PluginSource::Path(_) => unreachable!("paths are not locked"),
        };
        let sha256 = sha256_hex(&bytes);
        if sha256 != l.sha256 {
            return Err(format!(
                "refused: it now has sha256:{sha256}, but {} pins sha256:{} (the published bytes changed)",
                self.lock_name, l.sha256
            ));
        }
        self.keep(&bytes, &signature)?;
        Ok(got(self.store.path(&sha256), signature, true))
    }

    /// Fetch a remote plugin fresh: (bytes, resolved reference, signature).
    async fn fetch(
        &self,
        source: &PluginSource,
    ) -> Result<(Vec<u8>, String, Option<String>), String> {
        match source {
            PluginSource::Oci(r) => {
                let reference = oci::parse_reference(r).map_err(|e| e.to_string())?;
                let (bytes, a) = oci::pull(&reference, &self.auth)
                    .await
                    .map_err(|e| format!("{e:#}"))?;
                let pinned = reference.clone_with_digest(a.manifest_digest.clone());
                let resolved = format!(
                    "oci://{}/{}@{}",
                    pinned.registry(),
                    pinned.repository(),
                    a.manifest_digest
                );
                Ok((bytes, resolved, a.signature))
            }
            PluginSource::Url(u) => {
                let (bytes, sig) = url::fetch(u).await.map_err(|e| format!("{e:#}"))?;
                Ok((bytes, u.clone(), sig))
            }
            PluginSource::Path(_) => unreachable!("paths are not fetched"),
        }
    }

    fn keep(&self, bytes: &[u8], signature: &Option<String>) -> Result<(), String> {
        let (sha256, _) = self.store.put(bytes).map_err(|e| e.to_string())?;
        if let Some(s) = signature {
            self.store
                .put_signature(&sha256, s)
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

fn signature_place(source: &PluginSource) -> String {
    match source {
        PluginSource::Oci(_) => format!("manifest annotation {}", oci::SIGNATURE_ANNOTATION),
        other => format!("{other}.sig"),
    }
}

/// The trusted key that signed `got`, or why none did.
fn verify(got: &Got, trusted: &[PublicKey]) -> Result<String, SignatureError> {
    let text = got
        .signature
        .as_deref()
        .ok_or_else(|| SignatureError::Unsigned(got.signature_place.clone()))?;
    let sig = Signature::from_json(text)?;
    sig.verify(&got.sha256, trusted)?;
    Ok(sig.key)
}
