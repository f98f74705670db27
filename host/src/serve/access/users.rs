//! `[[user]]` in server.toml: who may sign in and act on runs.
//!
//! ```toml
//! [[user]]
//! name = "olga"
//! roles = ["operator"]                 # viewer (default), operator: cancel, re-run
//! approves = ["staging", "prod"]       # environments whose deployments they decide ("*": all)
//! password = "$argon2id$v=19$…"        # `host hash-password` (to sign in on the pages)
//! tokens = ["sha256:…"]                # sha256 of each API token
//!
//! [approvers]
//! prod = ["olga", "pat"]               # only they decide on prod (a user's "*" does not reach it)
//! ```
use std::collections::BTreeMap;

use serde::Deserialize;
use serde_spanned::Spanned;

use super::{Named, User};
use crate::pipeline::parse::Source;
use crate::pipeline::Diagnostic;

type Str = Spanned<String>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawUser {
    name: Option<Str>,
    #[serde(default)]
    roles: Vec<Str>,
    #[serde(default)]
    approves: Vec<Str>,
    /// `sha256:HEX` of each API token.
    #[serde(default)]
    tokens: Vec<Str>,
    /// argon2 PHC string.
    password: Option<Str>,
}

/// The users of the file, each checked; a name given twice is refused.
pub(crate) fn users(
    src: &Source<'_>,
    raw: Vec<Spanned<RawUser>>,
    diags: &mut Vec<Diagnostic>,
) -> Vec<User> {
    let mut out: Vec<User> = Vec::new();
    for u in raw {
        let span = u.span();
        let Some(user) = user(src, span.clone(), u.into_inner(), diags) else {
            continue;
        };
        if out.iter().any(|o| o.name == user.name) {
            diags.push(src.diag(span, format!("user `{}` is configured twice", user.name)));
        } else {
            out.push(user);
        }
    }
    out
}

/// One `[[user]]`: name, roles, environments they approve, credentials.
fn user(
    src: &Source<'_>,
    span: std::ops::Range<usize>,
    u: RawUser,
    diags: &mut Vec<Diagnostic>,
) -> Option<User> {
    let name = crate::serve::config::required(src, span, u.name, "user.name", diags)?;
    if !valid_name(name.get_ref()) {
        let why = "user.name: letters, digits, `.`, `_`, `-` and `@` (1–64)";
        diags.push(src.diag(name.span(), why));
        return None;
    }
    let name = name.into_inner();
    let mut operator = false;
    for r in &u.roles {
        match r.get_ref().as_str() {
            "operator" => operator = true,
            "viewer" => {}
            other => diags.push(src.diag(
                r.span(),
                format!("user.roles: `{other}` is not a role (viewer, operator)"),
            )),
        }
    }
    let mut token_sha256 = Vec::new();
    for t in &u.tokens {
        match t.get_ref().strip_prefix("sha256:") {
            Some(h) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => {
                token_sha256.push(h.to_ascii_lowercase())
            }
            // Not repeated: it may be the token itself, pasted by mistake.
            _ => diags.push(src.diag(
                t.span(),
                "user.tokens: each is `sha256:HEX`, the sha256 of a token (never the token)",
            )),
        }
    }
    let password = u
        .password
        .and_then(|p| match super::password::check_hash(p.get_ref()) {
            Ok(()) => Some(p.into_inner()),
            Err(why) => {
                diags.push(src.diag(p.span(), format!("user.password: {why}")));
                None
            }
        });
    Some(User {
        name,
        operator,
        approves: u.approves.into_iter().map(|a| a.into_inner()).collect(),
        token_sha256,
        password,
        named: Named::default(),
    })
}

/// `[approvers]`: environments that name their own approvers. Each name
/// must be a `[[user]]`; each user learns what it says about them.
pub(crate) fn approvers(
    src: &Source<'_>,
    raw: Spanned<BTreeMap<String, Vec<Str>>>,
    users: &mut [User],
    diags: &mut Vec<Diagnostic>,
) {
    let span = raw.span();
    let table = raw.into_inner();
    for (env, names) in &table {
        if names.is_empty() {
            let why = format!("approvers.{env}: name at least one [[user]] (nobody could deploy)");
            diags.push(src.diag(span.clone(), why));
        }
        for n in names {
            if !users.iter().any(|u| u.name == *n.get_ref()) {
                let why = format!("approvers.{env}: `{}` is not a [[user]]", n.get_ref());
                diags.push(src.diag(n.span(), why));
            }
        }
    }
    let exclusive: Vec<String> = table.keys().cloned().collect();
    for u in users.iter_mut() {
        let by: Vec<String> = table
            .iter()
            .filter(|(_, names)| names.iter().any(|n| *n.get_ref() == u.name))
            .map(|(env, _)| env.clone())
            .collect();
        if let Some(env) = u
            .approves
            .iter()
            .find(|e| exclusive.contains(e) && !by.contains(e))
        {
            let why = format!(
                "user `{}` approves `{env}`, but [approvers] names who decides on `{env}`, not them",
                u.name
            );
            diags.push(src.diag(span.clone(), why));
        }
        u.named = Named {
            exclusive: exclusive.clone(),
            by,
        };
    }
}

/// Names go into pages, records and logs: plain ones only.
fn valid_name(n: &str) -> bool {
    (1..=64).contains(&n.len())
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::serve::access::Read;
    use crate::serve::config::parse;

    const SERVER: &str = r#"
[server]
webhook-secret = { env = "S" }
READ

[[repository]]
name = "acme/app"
url = "file:///srv/app.git"

[[repository.trigger]]
event = "push"
branch = ["main"]
"#;

    fn file(read: &str, users: &str) -> String {
        SERVER.replace("READ", read) + users
    }

    fn errors(text: &str) -> String {
        parse(Path::new("server.toml"), text)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn users_with_passwords_and_tokens_parse() {
        let hash = crate::serve::access::password::hash("a password").unwrap();
        let users = format!(
            "[[user]]\nname = \"olga\"\nroles = [\"operator\"]\napproves = [\"prod\"]\npassword = \"{hash}\"\n\
             [[user]]\nname = \"ci-bot\"\ntokens = [\"sha256:{}\"]\n",
            "AB".repeat(32)
        );
        let c = parse(
            Path::new("server.toml"),
            &file("read = \"signed-in\"", &users),
        )
        .unwrap();
        assert_eq!(c.read, Read::SignedIn);
        assert_eq!(c.users[0].password.as_deref(), Some(hash.as_str()));
        assert!(c.users[0].operator);
        assert_eq!(c.users[1].token_sha256, ["ab".repeat(32)]);
        let c = parse(Path::new("server.toml"), &file("", &users)).unwrap();
        assert_eq!(c.read, Read::Public, "the default");
    }

    #[test]
    fn a_bad_user_is_named_and_a_pasted_secret_never_repeated() {
        let e = errors(&file("read = \"signed-in\"", ""));
        assert!(e.contains("nobody could read"), "{e}");
        let e = errors(&file("read = \"everyone\"", ""));
        assert!(
            e.contains("server.toml:4:8: server.read: `everyone`"),
            "{e}"
        );
        let u = |body: &str| file("", &format!("[[user]]\n{body}\n"));
        let e = errors(&u("name = \"olga\"\npassword = \"hunter2-plain\""));
        assert!(e.contains("user.password: an argon2 PHC string"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        let e = errors(&u("name = \"olga\"\ntokens = [\"tok-secret-value\"]"));
        assert!(
            e.contains("user.tokens: each is `sha256:HEX`") && !e.contains("tok-secret"),
            "{e}"
        );
        let e = errors(&u("name = \"<b>olga</b>\""));
        assert!(e.contains("user.name: letters, digits"), "{e}");
        let e = errors(&u("name = \"olga\"\nroles = [\"admin\"]"));
        assert!(e.contains("`admin` is not a role"), "{e}");
        let e = errors(&file(
            "",
            "[[user]]\nname = \"a\"\n[[user]]\nname = \"a\"\n",
        ));
        assert!(e.contains("user `a` is configured twice"), "{e}");
        let e = errors(&u("roles = [\"viewer\"]"));
        assert!(e.contains("user.name is required"), "{e}");
        let e = errors(&u(
            "name = \"olga\"\n[approvers]\nprod = [\"olga\", \"mallory\"]\nqa = []",
        ));
        assert!(
            e.contains("approvers.prod: `mallory` is not a [[user]]"),
            "{e}"
        );
        assert!(e.contains("approvers.qa: name at least one"), "{e}");
        let e = errors(&u(
            "name = \"olga\"\napproves = [\"prod\"]\n[approvers]\nprod = []",
        ));
        assert!(
            e.contains("user `olga` approves `prod`, but [approvers]"),
            "{e}"
        );
    }

    #[test]
    fn an_environment_that_names_its_approvers_is_theirs_alone() {
        let users = "[[user]]\nname = \"olga\"\napproves = [\"*\"]\n\
                     [[user]]\nname = \"pat\"\n\
                     [approvers]\nprod = [\"pat\"]\n";
        let c = parse(Path::new("server.toml"), &file("", users)).unwrap();
        let olga = c.users[0].principal();
        let pat = c.users[1].principal();
        assert!(olga.may_approve("staging") && !olga.may_approve("prod"));
        assert!(pat.may_approve("prod") && !pat.may_approve("staging"));
    }
}
