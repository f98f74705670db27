//! Passwords of `[[user]]`: server.toml holds an argon2 hash (a PHC
//! string, `host hash-password` makes one), never a password. A hash's
//! cost is bounded when the file is read, so a configuration cannot make
//! every sign-in take gigabytes or minutes.
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

/// Most memory (KiB) a configured hash may ask per sign-in.
const MAX_MEMORY_KIB: u32 = 256 * 1024;
const MAX_TIME_COST: u32 = 16;
const MAX_LANES: u32 = 8;

/// Why a configured password hash is refused (the hash itself is not
/// repeated: it may be a password pasted by mistake).
pub fn check_hash(phc: &str) -> Result<(), String> {
    let expected = "an argon2 PHC string (`$argon2id$v=19$m=…,t=…,p=…$SALT$HASH`) \
                    (`host hash-password` makes one; never the password itself)";
    let hash = PasswordHash::new(phc).map_err(|_| expected.to_string())?;
    if !matches!(hash.algorithm.as_str(), "argon2id" | "argon2i" | "argon2d") {
        return Err(expected.to_string());
    }
    if hash.hash.is_none() || hash.salt.is_none() {
        return Err(expected.to_string());
    }
    let p = Params::try_from(&hash).map_err(|e| format!("its parameters: {e}"))?;
    if p.m_cost() > MAX_MEMORY_KIB || p.t_cost() > MAX_TIME_COST || p.p_cost() > MAX_LANES {
        return Err(format!(
            "its cost is too high for a sign-in (at most m={MAX_MEMORY_KIB}, t={MAX_TIME_COST}, p={MAX_LANES})"
        ));
    }
    Ok(())
}

/// Whether `password` matches `phc` (a hash [`check_hash`] accepted).
pub fn verify(phc: &str, password: &str) -> bool {
    let Ok(hash) = PasswordHash::new(phc) else {
        return false;
    };
    Argon2::default()
        .verify_password(password.as_bytes(), &hash)
        .is_ok()
}

/// Spends what a real check spends, for a user that does not exist: how
/// long a sign-in takes says nothing about which names are accounts.
pub fn verify_nobody(password: &str) {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let phc = DUMMY.get_or_init(|| hash("not a password of anyone").unwrap_or_default());
    let _ = verify(phc, password);
}

/// A new argon2id hash of `password` (OWASP's parameters: 19 MiB, t=2).
pub fn hash(password: &str) -> anyhow::Result<String> {
    let mut salt = [0u8; 16];
    getrandom::getrandom(&mut salt).map_err(|e| anyhow::anyhow!("random salt: {e}"))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| anyhow::anyhow!("salt: {e}"))?;
    let params = Params::new(19 * 1024, 2, 1, None).map_err(|e| anyhow::anyhow!("{e}"))?;
    let a = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
    Ok(a.hash_password(password.as_bytes(), &salt)
        .map_err(|e| anyhow::anyhow!("hashing: {e}"))?
        .to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_verifies_its_password_only() {
        let h = hash("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        check_hash(&h).unwrap();
        assert!(verify(&h, "correct horse"));
        assert!(!verify(&h, "correct horse "));
        assert!(!verify(&h, ""));
        assert!(!verify("garbage", "correct horse"));
        verify_nobody("x");
    }

    #[test]
    fn a_configured_hash_is_bounded_and_never_a_password() {
        for bad in [
            "hunter2",
            "",
            "$argon2id$v=19$m=19456,t=2,p=1",
            "$pbkdf2-sha256$i=1000$c2FsdA$aGFzaA",
        ] {
            let e = check_hash(bad).unwrap_err();
            assert!(bad.is_empty() || !e.contains(bad), "{e}");
        }
        let huge = "$argon2id$v=19$m=4194304,t=2,p=1$c2FsdHNhbHRzYWx0$\
                    aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g";
        assert!(check_hash(huge).unwrap_err().contains("too high"));
    }
}
