//! Plugin signatures: ed25519 over the component's sha256 digest.
//!
//! A signature file (`x.wasm.sig`, or the `dev.pipeline-host.signature`
//! annotation of an OCI manifest) is JSON:
//! `{"version":1,"algorithm":"ed25519","key":"ed25519:…","sha256":"…","signature":"…"}`.
//! The signed message is `pipeline-host/plugin-signature/v1\n` followed by
//! the lowercase hex digest: signing the digest (not the file) lets the
//! same signature travel with the bytes through any registry or cache, and
//! the prefix keeps it from being valid for any other protocol.
//!
//! Keys are plain ed25519: `host plugin keygen` writes the secret key file
//! (mode 0600) and prints the public key `ed25519:BASE64` that a pipeline
//! lists in `[trust] signed-by`.

use std::path::Path;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ed25519_dalek::{Signer, SigningKey, Verifier};
use serde::{Deserialize, Serialize};

const CONTEXT: &str = "pipeline-host/plugin-signature/v1\n";
const SECRET_HEADER: &str = "pipeline-host ed25519 secret key";

/// Why a plugin's signature is not accepted (callers report which).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("it is not signed (no signature found: {0})")]
    Unsigned(String),
    #[error("its signature is by key {0}, which is not in [trust] signed-by")]
    UntrustedKey(String),
    #[error("its signature is for sha256:{signed}, but the component is sha256:{actual}")]
    OtherDigest { signed: String, actual: String },
    #[error("its signature by key {0} does not verify (tampered or corrupt)")]
    Invalid(String),
    #[error("its signature file is malformed: {0}")]
    Malformed(String),
}

/// A public key, `ed25519:BASE64(32 bytes)` (defined in
/// [`crate::plugin_source`]; this is its old path).
pub use crate::plugin_source::{KeyError, PublicKey};

/// A secret signing key.
pub struct SecretKey(SigningKey);

impl SecretKey {
    pub fn generate() -> anyhow::Result<Self> {
        let mut seed = [0u8; 32];
        getrandom::getrandom(&mut seed)
            .map_err(|e| anyhow::anyhow!("no randomness for a key: {e}"))?;
        Ok(SecretKey(SigningKey::from_bytes(&seed)))
    }

    pub fn public(&self) -> PublicKey {
        PublicKey::from_verifying_key(self.0.verifying_key())
    }

    /// The key file's text (never logged).
    pub fn to_file_text(&self) -> String {
        format!("{SECRET_HEADER}\n{}\n", B64.encode(self.0.to_bytes()))
    }

    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading the key file {}: {e}", path.display()))?;
        let mut lines = text.lines();
        let bad = || {
            anyhow::anyhow!(
                "{} is not a key file written by `host plugin keygen`",
                path.display()
            )
        };
        if lines.next() != Some(SECRET_HEADER) {
            return Err(bad());
        }
        let bytes = B64
            .decode(lines.next().unwrap_or("").trim())
            .map_err(|_| bad())?;
        let arr: [u8; 32] = bytes.try_into().map_err(|_| bad())?;
        Ok(SecretKey(SigningKey::from_bytes(&arr)))
    }

    pub fn sign(&self, sha256: &str) -> Signature {
        let sig = self.0.sign(message(sha256).as_bytes());
        Signature {
            version: 1,
            algorithm: "ed25519".into(),
            key: self.public().to_string(),
            sha256: sha256.to_string(),
            signature: B64.encode(sig.to_bytes()),
        }
    }
}

/// The signature document.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Signature {
    pub version: u32,
    pub algorithm: String,
    pub key: String,
    pub sha256: String,
    pub signature: String,
}

impl Signature {
    pub fn from_json(text: &str) -> Result<Self, SignatureError> {
        serde_json::from_str(text).map_err(|e| SignatureError::Malformed(e.to_string()))
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a signature serializes")
    }

    /// Accept only a signature over `sha256` by one of `trusted`.
    pub fn verify(&self, sha256: &str, trusted: &[PublicKey]) -> Result<(), SignatureError> {
        if self.version != 1 || self.algorithm != "ed25519" {
            return Err(SignatureError::Malformed(format!(
                "unsupported version {} / algorithm {:?}",
                self.version, self.algorithm
            )));
        }
        let key =
            PublicKey::parse(&self.key).map_err(|e| SignatureError::Malformed(e.to_string()))?;
        let shown = key.to_string();
        if !trusted.contains(&key) {
            return Err(SignatureError::UntrustedKey(shown));
        }
        if self.sha256 != sha256 {
            return Err(SignatureError::OtherDigest {
                signed: self.sha256.clone(),
                actual: sha256.to_string(),
            });
        }
        let bytes: [u8; 64] = B64
            .decode(&self.signature)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| SignatureError::Malformed("signature is not 64 base64 bytes".into()))?;
        key.verifying_key()
            .verify(
                message(sha256).as_bytes(),
                &ed25519_dalek::Signature::from_bytes(&bytes),
            )
            .map_err(|_| SignatureError::Invalid(shown))
    }
}

fn message(sha256: &str) -> String {
    format!("{CONTEXT}{sha256}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_and_verify() {
        let k = SecretKey::generate().unwrap();
        let other = SecretKey::generate().unwrap();
        let d = "ab".repeat(32);
        let sig = k.sign(&d);
        let back = Signature::from_json(&sig.to_json()).unwrap();
        assert_eq!(back.verify(&d, &[other.public(), k.public()]), Ok(()));
        assert!(matches!(
            back.verify(&d, &[other.public()]),
            Err(SignatureError::UntrustedKey(_))
        ));
        assert!(matches!(
            back.verify(&"cd".repeat(32), &[k.public()]),
            Err(SignatureError::OtherDigest { .. })
        ));
        let mut forged = back.clone();
        forged.signature = other.sign(&d).signature;
        assert!(matches!(
            forged.verify(&d, &[k.public()]),
            Err(SignatureError::Invalid(_))
        ));
        assert_eq!(
            PublicKey::parse(&k.public().to_string()).unwrap(),
            k.public()
        );
    }

    #[test]
    fn key_file_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let k = SecretKey::generate().unwrap();
        let p = dir.path().join("k");
        std::fs::write(&p, k.to_file_text()).unwrap();
        assert_eq!(SecretKey::read(&p).unwrap().public(), k.public());
        std::fs::write(&p, "nope").unwrap();
        assert!(SecretKey::read(&p).is_err());
    }
}
