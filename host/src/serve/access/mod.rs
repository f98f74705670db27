//! Who may do what on the server. Users are named in server.toml with
//! their roles; API clients present a token (`Authorization: Bearer …`)
//! whose sha256 the user's entry lists (tokens are random, so a plain
//! digest is enough; the server never holds a token itself). Roles:
//! every user may read; `operator` may cancel and re-run; approving a
//! stage needs the stage's environment in the user's `approves` (`*`: all)
//! — unless `[approvers]` names that environment's own approvers: then
//! only they decide on it.
//! Every action is recorded with who did it ([`actions`]).
//!
//! People sign in on the web pages with a password whose argon2 hash the
//! user's entry holds ([`password`]); a session cookie ([`session`]) then
//! names them, and every form carries the session's CSRF token
//! ([`forms`]). Failed sign-ins are slowed ([`throttle`]). Reading may be
//! public or for signed-in users only (`[server] read`, [`guard`]).
pub mod act;
pub mod actions;
pub mod forms;
pub mod guard;
pub mod password;
pub mod routes;
pub mod session;
pub mod throttle;
pub mod users;

use axum::http::HeaderMap;
use serde::Serialize;

/// `[[user]]` in server.toml.
#[derive(Debug, Clone, PartialEq)]
pub struct User {
    pub name: String,
    pub operator: bool,
    /// Environments whose deployments this user may approve or reject.
    pub approves: Vec<String>,
    /// What `[approvers]` says for this user: environments that name their
    /// own approvers, and those of them that name this user.
    pub named: Named,
    /// sha256 (hex) of each API token of this user.
    pub token_sha256: Vec<String>,
    /// argon2 hash (PHC string) of the user's password, to sign in on the
    /// web pages.
    pub password: Option<String>,
}

/// Who may read runs, logs and metrics (`[server] read`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Read {
    /// Anyone who reaches the server (the default).
    #[default]
    Public,
    /// Signed-in users and API tokens only.
    SignedIn,
}

/// `[approvers]` as one user sees it.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Named {
    /// Environments that name their own approvers (`[approvers]`).
    pub exclusive: Vec<String>,
    /// Those of them that name this user.
    pub by: Vec<String>,
}

/// Who is asking, once their token or session matched.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Principal {
    pub user: String,
    pub operator: bool,
    pub approves: Vec<String>,
    pub named: Named,
}

impl Principal {
    pub fn may_approve(&self, environment: &str) -> bool {
        let env = environment.to_string();
        if self.named.exclusive.contains(&env) {
            return self.named.by.contains(&env);
        }
        self.approves.iter().any(|e| e == "*" || *e == env)
    }
}

/// Why a request may not do what it asks.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum Denied {
    /// No credentials, or ones nobody holds: 401.
    #[error("sign in: send `Authorization: Bearer TOKEN` with a token of a [[user]]")]
    Unauthenticated,
    /// Known, but not allowed: 403.
    #[error("{0}")]
    Forbidden(String),
}

/// The user whose token the request carries.
pub fn from_headers(users: &[User], headers: &HeaderMap) -> Result<Principal, Denied> {
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or(Denied::Unauthenticated)?;
    let digest = crate::digest::sha256_hex(token.as_bytes());
    // Every entry is compared, each in constant time: how long this
    // takes says nothing about how close a guess was.
    let mut found = None;
    for u in users {
        for t in &u.token_sha256 {
            if constant_eq(t.as_bytes(), digest.as_bytes()) {
                found = Some(u);
            }
        }
    }
    found.map(User::principal).ok_or(Denied::Unauthenticated)
}

impl User {
    pub fn principal(&self) -> Principal {
        Principal {
            user: self.name.clone(),
            operator: self.operator,
            approves: self.approves.clone(),
            named: self.named.clone(),
        }
    }
}

/// The user of a session, as server.toml says now (a user removed from
/// it is signed out; changed roles hold at once).
pub fn named(users: &[User], name: &str) -> Option<Principal> {
    users.iter().find(|u| u.name == name).map(User::principal)
}

pub(crate) fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// An operator's action, or 403 saying what is needed.
pub fn operator(p: &Principal, what: &str) -> Result<(), Denied> {
    if p.operator {
        Ok(())
    } else {
        Err(Denied::Forbidden(format!(
            "{} may not {what}: it takes the operator role",
            p.user
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users() -> Vec<User> {
        vec![
            User {
                name: "olga".into(),
                operator: true,
                approves: vec!["*".into()],
                named: Named {
                    exclusive: vec!["prod".into()],
                    by: vec![],
                },
                token_sha256: vec![crate::digest::sha256_hex(b"tok-olga")],
                password: None,
            },
            User {
                name: "pat".into(),
                operator: false,
                approves: vec!["prod".into()],
                named: Named {
                    exclusive: vec!["prod".into()],
                    by: vec!["prod".into()],
                },
                token_sha256: vec![crate::digest::sha256_hex(b"tok-pat")],
                password: None,
            },
        ]
    }

    fn bearer(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("authorization", v.parse().unwrap());
        h
    }

    #[test]
    fn a_token_names_its_user_and_nothing_else_does() {
        let u = users();
        assert_eq!(
            from_headers(&u, &bearer("Bearer tok-olga")).unwrap().user,
            "olga"
        );
        let pat = from_headers(&u, &bearer("Bearer tok-pat")).unwrap();
        assert!(pat.may_approve("prod") && !pat.may_approve("staging"));
        // `*` reaches every environment but one that names its approvers.
        let olga = from_headers(&u, &bearer("Bearer tok-olga")).unwrap();
        assert!(olga.may_approve("staging") && !olga.may_approve("prod"));
        for bad in ["Bearer tok-nobody", "Bearer ", "tok-olga", "Basic b2xnYTp4"] {
            assert_eq!(
                from_headers(&u, &bearer(bad)),
                Err(Denied::Unauthenticated),
                "{bad}"
            );
        }
        assert_eq!(
            from_headers(&u, &HeaderMap::new()),
            Err(Denied::Unauthenticated)
        );
        assert!(operator(&pat, "cancel runs").is_err());
        assert!(operator(&from_headers(&u, &bearer("Bearer tok-olga")).unwrap(), "x").is_ok());
    }
}
