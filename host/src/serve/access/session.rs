//! Web sessions: a random token in an HttpOnly, SameSite=Strict cookie
//! (Secure, under the `__Host-` prefix, unless the server is reached over
//! plain HTTP). The run store keeps only the token's sha256, so reading
//! the store gives no one a session; each session has its own CSRF token
//! that every form of the pages carries back.
use anyhow::Result;
use axum::http::HeaderMap;

use crate::params;
use crate::store::Db;

/// How long a sign-in lasts.
pub const LIFETIME_MS: i64 = 12 * 60 * 60 * 1000;

pub fn init(db: &Db) -> Result<()> {
    db.batch(
        "CREATE TABLE IF NOT EXISTS sessions (
             id_sha256 TEXT PRIMARY KEY,
             user_name TEXT NOT NULL,
             csrf TEXT NOT NULL,
             expires_ms BIGINT NOT NULL
         );",
    )
}

/// A signed-in browser.
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    pub user: String,
    /// What the session's forms carry back (`csrf` field).
    pub csrf: String,
}

/// 32 random bytes, hex.
pub fn random_token() -> Result<String> {
    let mut b = [0u8; 32];
    getrandom::getrandom(&mut b).map_err(|e| anyhow::anyhow!("random token: {e}"))?;
    Ok(hex::encode(b))
}

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// A new session of `user`: its token (for the cookie only) and itself.
pub fn start(db: &Db, user: &str) -> Result<(String, Session)> {
    let token = random_token()?;
    let s = Session {
        user: user.to_string(),
        csrf: random_token()?,
    };
    let now = now_ms();
    db.execute("DELETE FROM sessions WHERE expires_ms <= ?1", &params![now])?;
    db.execute(
        "INSERT INTO sessions (id_sha256, user_name, csrf, expires_ms) VALUES (?1, ?2, ?3, ?4)",
        &params![
            crate::digest::sha256_hex(token.as_bytes()),
            user,
            s.csrf.clone(),
            now + LIFETIME_MS
        ],
    )?;
    Ok((token, s))
}

/// The live session a token belongs to.
pub fn find(db: &Db, token: &str) -> Result<Option<Session>> {
    let row = db.query_opt(
        "SELECT user_name, csrf FROM sessions WHERE id_sha256 = ?1 AND expires_ms > ?2",
        &params![crate::digest::sha256_hex(token.as_bytes()), now_ms()],
    )?;
    row.map(|r| {
        Ok(Session {
            user: r.get_str(0)?,
            csrf: r.get_str(1)?,
        })
    })
    .transpose()
}

pub fn end(db: &Db, token: &str) -> Result<()> {
    db.execute(
        "DELETE FROM sessions WHERE id_sha256 = ?1",
        &params![crate::digest::sha256_hex(token.as_bytes())],
    )?;
    Ok(())
}

/// The cookies' names and attributes, by whether the server is reached
/// over HTTPS (`public-url`): browsers drop a `Secure` cookie set over
/// plain HTTP except on loopback, and the `__Host-` prefix needs `Secure`.
#[derive(Debug, Clone, Copy)]
pub struct Cookies {
    pub secure: bool,
}

impl Cookies {
    pub fn session_name(&self) -> &'static str {
        if self.secure {
            "__Host-pipeline-session"
        } else {
            "pipeline-session"
        }
    }

    /// The cookie tying a sign-in form to the browser that fetched it.
    pub fn form_name(&self) -> &'static str {
        if self.secure {
            "__Host-pipeline-signin"
        } else {
            "pipeline-signin"
        }
    }

    /// `Set-Cookie` for `name=value`; `max_age` 0 removes it.
    pub fn set(&self, name: &str, value: &str, max_age_s: i64) -> String {
        format!(
            "{name}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age_s}{}",
            if self.secure { "; Secure" } else { "" }
        )
    }
}

/// A cookie's value from the request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty() && v.len() <= 128)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_found_by_its_token_only_and_ends() {
        let db = Db::sqlite_memory().unwrap();
        init(&db).unwrap();
        let (token, s) = start(&db, "olga").unwrap();
        assert_eq!(find(&db, &token).unwrap(), Some(s.clone()));
        assert_eq!(
            find(&db, &s.csrf).unwrap(),
            None,
            "the CSRF token is no session"
        );
        let stored: Vec<String> = db
            .query("SELECT id_sha256 FROM sessions", &[])
            .unwrap()
            .iter()
            .map(|r| r.get_str(0).unwrap())
            .collect();
        assert!(!stored.contains(&token), "only its digest is kept");
        end(&db, &token).unwrap();
        assert_eq!(find(&db, &token).unwrap(), None);
        db.execute(
            "INSERT INTO sessions VALUES (?1, 'old', 'c', 1)",
            &params![crate::digest::sha256_hex(b"old")],
        )
        .unwrap();
        assert_eq!(find(&db, "old").unwrap(), None, "expired");
    }

    #[test]
    fn cookies_are_read_from_every_header_and_bounded() {
        let mut h = HeaderMap::new();
        h.append("cookie", "a=1; pipeline-session=abc".parse().unwrap());
        h.append("cookie", "b=2".parse().unwrap());
        assert_eq!(cookie(&h, "pipeline-session"), Some("abc"));
        assert_eq!(cookie(&h, "b"), Some("2"));
        assert_eq!(cookie(&h, "c"), None);
        h.append(
            "cookie",
            format!("long={}", "x".repeat(500)).parse().unwrap(),
        );
        assert_eq!(cookie(&h, "long"), None);
        let c = Cookies { secure: true };
        assert_eq!(
            c.set(c.session_name(), "v", 60),
            "__Host-pipeline-session=v; Path=/; HttpOnly; SameSite=Strict; Max-Age=60; Secure"
        );
    }
}
