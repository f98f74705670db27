//! How a plugin's source and trust are spelled in a pipeline file: a sha256
//! pin, an OCI reference, a loopback host (where plain http is allowed), an
//! ed25519 public key. Pure parsers with typed errors, depending on neither
//! [`crate::pipeline`] (which checks the file with them) nor
//! [`crate::distribution`] (which fetches and verifies with them).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ed25519_dalek::VerifyingKey;
use oci_client::Reference;

/// The longest stretch of a refused value an error quotes (the value may
/// come from an untrusted file).
const MAX_QUOTED_CHARS: usize = 80;

/// `s` as a Rust string literal, at most [`MAX_QUOTED_CHARS`] of it.
fn quoted(s: &str) -> String {
    if s.chars().count() <= MAX_QUOTED_CHARS {
        format!("{s:?}")
    } else {
        let cut: String = s.chars().take(MAX_QUOTED_CHARS).collect();
        format!("{cut:?}…")
    }
}

/// A sha256 pin that is not 64 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} is not a sha256 digest (64 hex digits, optionally prefixed `sha256:`)", quoted(.text))]
pub struct DigestError {
    pub text: String,
}

/// `sha256:HEX` or `HEX` → lowercase hex.
pub fn parse_sha256(s: &str) -> Result<String, DigestError> {
    let hex = s.strip_prefix("sha256:").unwrap_or(s);
    if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(hex.to_ascii_lowercase())
    } else {
        Err(DigestError { text: s.into() })
    }
}

/// Whether `host` (a name or an IP address, `[…]` allowed) is this machine.
pub fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Why `registry/repo:tag` is not accepted as a plugin's OCI reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    /// Not a reference at all (the OCI grammar refused it).
    #[error("not an OCI reference ({reason})")]
    Syntax { reason: String },
    /// A reference without a registry, which would silently mean Docker Hub.
    #[error("name the registry, e.g. `127.0.0.1:5000/{text}` (a bare name would mean Docker Hub)")]
    NoRegistry { text: String },
}

/// Parse `registry/repo:tag` or `registry/repo@sha256:…`. The registry must
/// be written out: a bare `repo:tag` would silently mean Docker Hub.
pub fn parse_oci_reference(s: &str) -> Result<Reference, ReferenceError> {
    let r: Reference = s.parse().map_err(|e| ReferenceError::Syntax {
        reason: format!("{e}"),
    })?;
    let first = s.split('/').next().unwrap_or("");
    if !s.contains('/') || !(first.contains('.') || first.contains(':') || first == "localhost") {
        return Err(ReferenceError::NoRegistry { text: s.into() });
    }
    Ok(r)
}

/// Why a text is not a public key `ed25519:BASE64`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("{} is not a public key; expected `ed25519:BASE64` (from `host plugin keygen`)", quoted(.text))]
    NotAKey { text: String },
    #[error("{}: not base64 ({reason})", quoted(.text))]
    NotBase64 { text: String, reason: String },
    #[error("{}: an ed25519 public key is 32 bytes", quoted(.text))]
    WrongLength { text: String },
    #[error("{}: not a valid ed25519 key ({reason})", quoted(.text))]
    NotOnCurve { text: String, reason: String },
}

/// A public key, `ed25519:BASE64(32 bytes)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let b64 = text
            .trim()
            .strip_prefix("ed25519:")
            .ok_or_else(|| KeyError::NotAKey { text: text.into() })?;
        let bytes = B64.decode(b64).map_err(|e| KeyError::NotBase64 {
            text: text.into(),
            reason: e.to_string(),
        })?;
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| KeyError::WrongLength { text: text.into() })?;
        VerifyingKey::from_bytes(&arr)
            .map(PublicKey)
            .map_err(|e| KeyError::NotOnCurve {
                text: text.into(),
                reason: e.to_string(),
            })
    }

    pub fn from_verifying_key(key: VerifyingKey) -> Self {
        PublicKey(key)
    }

    pub fn verifying_key(&self) -> &VerifyingKey {
        &self.0
    }
}

impl std::fmt::Display for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ed25519:{}", B64.encode(self.0.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_and_hosts() {
        let d = "A".repeat(64);
        assert_eq!(
            parse_sha256(&format!("sha256:{d}")).unwrap(),
            "a".repeat(64)
        );
        assert_eq!(
            parse_sha256("sha256:12").unwrap_err().to_string(),
            "\"sha256:12\" is not a sha256 digest (64 hex digits, optionally prefixed `sha256:`)"
        );
        let long = parse_sha256(&"x".repeat(1000)).unwrap_err().to_string();
        assert!(long.len() < 200, "{long}");
        assert!(is_loopback("127.0.0.1") && is_loopback("localhost") && is_loopback("[::1]"));
        assert!(!is_loopback("example.com"));
    }

    #[test]
    fn references_name_their_registry() {
        let r = parse_oci_reference("127.0.0.1:5000/plugins/tag:1.0").unwrap();
        assert_eq!(r.repository(), "plugins/tag");
        assert_eq!(r.tag(), Some("1.0"));
        let e = parse_oci_reference("plugins/tag:1.0").unwrap_err();
        assert!(matches!(e, ReferenceError::NoRegistry { .. }));
        assert!(e.to_string().contains("name the registry"), "{e}");
        assert!(matches!(
            parse_oci_reference("127.0.0.1:5000/Bad/x"),
            Err(ReferenceError::Syntax { .. })
        ));
    }

    #[test]
    fn keys_say_what_is_wrong() {
        assert!(matches!(
            PublicKey::parse("ssh-ed25519 AAAA"),
            Err(KeyError::NotAKey { .. })
        ));
        assert!(matches!(
            PublicKey::parse("ed25519:!!"),
            Err(KeyError::NotBase64 { .. })
        ));
        assert!(matches!(
            PublicKey::parse("ed25519:AAAA"),
            Err(KeyError::WrongLength { .. })
        ));
        let e = PublicKey::parse("nope").unwrap_err().to_string();
        assert_eq!(
            e,
            "\"nope\" is not a public key; expected `ed25519:BASE64` (from `host plugin keygen`)"
        );
    }
}
