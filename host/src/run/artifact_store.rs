//! The encrypted artifact store: a copy of every artifact a stage declares
//! (`artifacts = [...]`), kept after the run (the workspace may be gone:
//! an uploaded archive's is removed) under the state directory, encrypted
//! with AES-256-GCM, as a pipeline service keeps artifacts in an encrypted
//! bucket. `host artifacts RUN --out DIR` gets them back.
//!
//! The key is `HOST_ARTIFACT_KEY` (32 bytes, base64) when set, else a key
//! generated once into `STATE/keys/artifacts.key` (mode 0600) — the local
//! stand-in for a KMS key. Each blob is bound to its run, stage, path and
//! digest (the AEAD's associated data): a blob moved to another name, or
//! changed by one bit, does not decrypt.
use std::io::Write;
use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use sha2::{Digest, Sha256};

/// First bytes of a blob: format and version.
const MAGIC: &[u8; 4] = b"PHA1";
/// Largest artifact kept (read whole to encrypt).
pub const MAX_ARTIFACT: u64 = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the artifact key: {0}")]
    Key(String),
    #[error("artifact `{path}` of stage `{stage}`: {message}")]
    Artifact {
        stage: String,
        path: String,
        message: String,
    },
}

#[derive(Clone)]
pub struct ArtifactStore {
    dir: PathBuf,
    key: [u8; 32],
}

impl std::fmt::Debug for ArtifactStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArtifactStore")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl ArtifactStore {
    /// The store of `state_dir`, with the key from `HOST_ARTIFACT_KEY` or
    /// the state directory's own (made on first use).
    pub fn open(state_dir: &Path) -> Result<Self, StoreError> {
        let key = match std::env::var("HOST_ARTIFACT_KEY") {
            Ok(v) if !v.trim().is_empty() => decode_key(v.trim())
                .map_err(|e| StoreError::Key(format!("HOST_ARTIFACT_KEY: {e}")))?,
            _ => local_key(&state_dir.join("keys").join("artifacts.key"))?,
        };
        Ok(Self {
            dir: state_dir.join("artifacts"),
            key,
        })
    }

    fn blob(&self, run: &str, stage: &str, path: &str) -> PathBuf {
        let name = hex::encode(Sha256::digest(path.as_bytes()));
        self.dir
            .join(run)
            .join(stage)
            .join(format!("{}.enc", &name[..32]))
    }

    /// [`ArtifactStore::keep`] for `artifacts::record_with`: every declared
    /// file of `stage` in `run`, kept as it is hashed.
    pub fn keeper<'a>(
        &'a self,
        run: &'a str,
        stage: &'a str,
    ) -> impl FnMut(&str, std::fs::File) -> Result<String, crate::run::artifacts::ArtifactError> + 'a
    {
        move |path, file| {
            self.keep(run, stage, path, file)
                .map_err(|e| crate::run::artifacts::ArtifactError::NotKept(Box::new(e)))
        }
    }

    /// Encrypts one declared file of a stage that just succeeded (`file`,
    /// resolved in the workspace) and returns its digest: the file is read
    /// once, so the bytes stored are the bytes recorded.
    pub fn keep(
        &self,
        run: &str,
        stage: &str,
        path: &str,
        file: std::fs::File,
    ) -> Result<String, StoreError> {
        let err = |message: String| StoreError::Artifact {
            stage: stage.into(),
            path: path.into(),
            message,
        };
        let mut plain = Vec::new();
        std::io::Read::read_to_end(&mut std::io::Read::take(file, MAX_ARTIFACT + 1), &mut plain)
            .map_err(|e| err(e.to_string()))?;
        if plain.len() as u64 > MAX_ARTIFACT {
            return Err(err(format!(
                "it is more than the {MAX_ARTIFACT} bytes the store keeps"
            )));
        }
        let digest = sha256(&plain);
        let mut nonce = [0u8; 12];
        getrandom::getrandom(&mut nonce).map_err(|e| err(e.to_string()))?;
        let aad = aad(run, stage, path, &digest);
        let sealed = self
            .cipher()
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &plain,
                    aad: &aad,
                },
            )
            .map_err(|_| err("encryption failed".into()))?;
        let blob = self.blob(run, stage, path);
        std::fs::create_dir_all(blob.parent().expect("blob has a parent"))
            .map_err(|e| err(e.to_string()))?;
        let tmp = blob.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp).map_err(|e| err(e.to_string()))?;
        f.write_all(MAGIC)
            .and_then(|_| f.write_all(&nonce))
            .and_then(|_| f.write_all(&sealed))
            .and_then(|_| f.sync_all())
            .map_err(|e| err(e.to_string()))?;
        std::fs::rename(&tmp, &blob).map_err(|e| err(e.to_string()))?;
        Ok(digest)
    }

    /// The plaintext of one artifact, checked against its recorded digest.
    pub fn fetch(
        &self,
        run: &str,
        stage: &str,
        path: &str,
        digest: &str,
    ) -> Result<Vec<u8>, StoreError> {
        let err = |message: &str| StoreError::Artifact {
            stage: stage.into(),
            path: path.into(),
            message: message.into(),
        };
        let bytes = std::fs::read(self.blob(run, stage, path))
            .map_err(|_| err("not in the artifact store"))?;
        if bytes.len() < MAGIC.len() + 12 || &bytes[..4] != MAGIC {
            return Err(err("the stored blob is not an artifact blob"));
        }
        let (nonce, sealed) = bytes[4..].split_at(12);
        let plain = self
            .cipher()
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: &aad(run, stage, path, digest),
                },
            )
            .map_err(|_| {
                err("the stored blob does not decrypt: it was changed, moved, or the key is not the one it was stored with")
            })?;
        if sha256(&plain) != digest {
            return Err(err("decrypted to other bytes than the digest recorded"));
        }
        Ok(plain)
    }

    /// Whether the store holds a blob for this artifact.
    pub fn holds(&self, run: &str, stage: &str, path: &str) -> bool {
        self.blob(run, stage, path).is_file()
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(aes_gcm::Key::<Aes256Gcm>::from_slice(&self.key))
    }
}

fn sha256(b: &[u8]) -> String {
    format!("sha256:{}", crate::digest::sha256_hex(b))
}

fn aad(run: &str, stage: &str, path: &str, digest: &str) -> Vec<u8> {
    format!("ci-artifact-v1\0{run}\0{stage}\0{path}\0{digest}").into_bytes()
}

fn decode_key(text: &str) -> Result<[u8; 32], String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|_| "not base64".to_string())?;
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| format!("{} bytes; expected 32", b.len()))
}

fn local_key(file: &Path) -> Result<[u8; 32], StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Ok(text) = std::fs::read_to_string(file) {
        return decode_key(text.trim())
            .map_err(|e| StoreError::Key(format!("{}: {e}", file.display())));
    }
    let mut key = [0u8; 32];
    getrandom::getrandom(&mut key).map_err(|e| StoreError::Key(e.to_string()))?;
    let dir = file.parent().expect("key file has a parent");
    std::fs::create_dir_all(dir).map_err(|e| StoreError::Key(format!("{}: {e}", dir.display())))?;
    let text = base64::engine::general_purpose::STANDARD.encode(key);
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)
    {
        Ok(mut f) => f
            .write_all(text.as_bytes())
            .map_err(|e| StoreError::Key(format!("{}: {e}", file.display())))?,
        // Another run made it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return local_key(file),
        Err(e) => return Err(StoreError::Key(format!("{}: {e}", file.display()))),
    }
    Ok(key)
}

/// Checks a recorded path before writing it under an output directory.
pub fn output_path(
    out: &Path,
    stage: &str,
    path: &str,
) -> Result<PathBuf, crate::pipeline::ArtifactPathError> {
    crate::pipeline::check_artifact_path(path)?;
    Ok(out.join(stage).join(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_the_store_cannot_keep_fails_naming_it_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(&dir.path().join("state")).unwrap();
        // Opened for writing only: reading it to keep it fails.
        let file = std::fs::File::create(dir.path().join("app")).unwrap();
        let e = store.keeper("r1", "build")("dist/app", file)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("artifact `dist/app` of stage `build`: "),
            "{e}"
        );
        assert_eq!(e.matches("dist/app").count(), 1, "{e}");
    }

    #[test]
    fn artifacts_round_trip_and_any_change_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path().join("ws");
        std::fs::create_dir_all(ws.join("dist")).unwrap();
        std::fs::write(ws.join("dist/app"), b"the release").unwrap();
        let store = ArtifactStore::open(&dir.path().join("state")).unwrap();
        let digests = crate::run::artifacts::record_with(
            &ws,
            &["dist/app".to_string()],
            store.keeper("r1", "build"),
        )
        .unwrap();
        let digest = digests["dist/app"].clone();
        assert_eq!(
            digests,
            crate::run::artifacts::record(&ws, &["dist/app".to_string()]).unwrap()
        );
        assert!(store.holds("r1", "build", "dist/app"));
        assert_eq!(
            store.fetch("r1", "build", "dist/app", &digest).unwrap(),
            b"the release"
        );

        // Encrypted at rest.
        let blob = store.blob("r1", "build", "dist/app");
        let mut bytes = std::fs::read(&blob).unwrap();
        assert!(!bytes.windows(11).any(|w| w == b"the release"));
        // Bound to its name: another run's or stage's name does not open it.
        std::fs::create_dir_all(store.blob("r2", "build", "dist/app").parent().unwrap()).unwrap();
        std::fs::copy(&blob, store.blob("r2", "build", "dist/app")).unwrap();
        assert!(store.fetch("r2", "build", "dist/app", &digest).is_err());
        // One bit changed.
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&blob, &bytes).unwrap();
        let e = store.fetch("r1", "build", "dist/app", &digest).unwrap_err();
        assert!(e.to_string().contains("does not decrypt"), "{e}");
        // Another key.
        let other = ArtifactStore::open(&dir.path().join("other")).unwrap();
        assert_ne!(other.key, store.key);
        // The key persists for the state directory.
        let again = ArtifactStore::open(&dir.path().join("state")).unwrap();
        assert_eq!(again.key, store.key);
        assert!(decode_key("short").is_err());
    }
}
