//! The content-addressed plugin cache: `<state>/plugins/sha256/<hex>.wasm`
//! and, when the plugin came with one, `<hex>.sig`. A blob's name is its
//! digest, so reading one re-hashes it: a file changed on disk is refused,
//! never run.

use std::path::{Path, PathBuf};

use super::sha256_hex;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cached plugin {path} does not match its digest (sha256:{actual}): it was changed on disk; delete it to fetch it again")]
    Tampered { path: PathBuf, actual: String },
    #[error("plugin cache {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone)]
pub struct BlobStore {
    dir: PathBuf,
}

impl BlobStore {
    pub fn new(state_dir: &Path) -> Self {
        BlobStore {
            dir: state_dir.join("plugins").join("sha256"),
        }
    }

    pub fn path(&self, sha256: &str) -> PathBuf {
        self.dir.join(format!("{sha256}.wasm"))
    }

    fn sig_path(&self, sha256: &str) -> PathBuf {
        self.dir.join(format!("{sha256}.sig"))
    }

    /// The blob's path if it is cached and intact.
    pub fn get(&self, sha256: &str) -> Result<Option<PathBuf>, StoreError> {
        let path = self.path(sha256);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StoreError::Io { path, source }),
        };
        let actual = sha256_hex(&bytes);
        if actual != sha256 {
            return Err(StoreError::Tampered { path, actual });
        }
        Ok(Some(path))
    }

    /// Store bytes under their digest (atomically: a crash leaves no
    /// half-written blob under a valid name). Returns the digest and path.
    pub fn put(&self, bytes: &[u8]) -> Result<(String, PathBuf), StoreError> {
        let sha256 = sha256_hex(bytes);
        let path = self.path(&sha256);
        self.write(&path, bytes)?;
        Ok((sha256, path))
    }

    pub fn put_signature(&self, sha256: &str, json: &str) -> Result<(), StoreError> {
        self.write(&self.sig_path(sha256), json.as_bytes())
    }

    pub fn signature(&self, sha256: &str) -> Option<String> {
        std::fs::read_to_string(self.sig_path(sha256)).ok()
    }

    fn write(&self, path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
        let io = |source| StoreError::Io {
            path: path.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(&self.dir).map_err(io)?;
        let tmp = self
            .dir
            .join(format!(".tmp-{}", uuid::Uuid::new_v4().simple()));
        std::fs::write(&tmp, bytes).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_and_tamper() {
        let dir = tempfile::tempdir().unwrap();
        let s = BlobStore::new(dir.path());
        let (d, p) = s.put(b"\0asm component").unwrap();
        assert_eq!(s.get(&d).unwrap(), Some(p.clone()));
        assert_eq!(s.get(&"0".repeat(64)).unwrap(), None);
        std::fs::write(&p, b"\0asm evil").unwrap();
        assert!(matches!(s.get(&d), Err(StoreError::Tampered { .. })));
    }
}
