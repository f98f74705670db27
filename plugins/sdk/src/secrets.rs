//! Secrets granted to the stage.
//!
//! Prefer passing [`placeholder`]s (`${secret:NAME}`) in HTTP URLs, headers
//! or bodies: the host substitutes the value and the plugin never sees it.
//! [`read`] needs an explicit `secrets-read` grant.

use crate::bindings::ci::stage::secrets as raw;
use crate::CapError;

/// Names the stage may use in `${secret:NAME}` (never values).
pub fn names() -> Vec<String> {
    raw::names()
}

/// A secret's value (needs a `secrets-read` grant for `name`).
pub fn read(name: &str) -> Result<String, CapError> {
    raw::read(name)
}

/// `${secret:NAME}`, for the host to expand in an HTTP request.
pub fn placeholder(name: &str) -> String {
    format!("${{secret:{name}}}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn placeholder_format() {
        assert_eq!(
            super::placeholder("slack-webhook"),
            "${secret:slack-webhook}"
        );
    }
}
