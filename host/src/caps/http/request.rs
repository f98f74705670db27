//! Checks of a request as the plugin wrote it, before any secret is
//! expanded: the URL text, the method, the headers.
use reqwest::header::HeaderName;

use crate::caps::audit::refuse_line_breaks;
use crate::caps::secrets::contains_reference;
use crate::wit::CapError;

/// Headers only the host sets: they decide where a request goes, how it
/// is framed, or who it claims to come from. A plugin asking for one is
/// refused (not silently overridden).
const HOST_ONLY: &[&str] = &[
    "host",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "forwarded",
    "x-real-ip",
    "x-original-url",
    "x-rewrite-url",
];
/// Prefixes of host-only header names (`Proxy-Authorization`,
/// `X-Forwarded-For`, …).
const HOST_ONLY_PREFIXES: &[&str] = &["proxy-", "x-forwarded"];

/// Whether the host alone sets this header.
pub fn host_only(name: &HeaderName) -> bool {
    let n = name.as_str();
    HOST_ONLY.contains(&n) || HOST_ONLY_PREFIXES.iter().any(|p| n.starts_with(p))
}

/// The URL text (template or expanded): no raw line break (the audit's
/// shared refusal) and no other control character, which a URL parser
/// would silently drop or encode.
pub fn check_url_text(url: &str) -> Result<(), CapError> {
    refuse_line_breaks("the URL", url)?;
    if url.chars().any(char::is_control) {
        return Err(CapError::Invalid(
            "the URL contains a control character; percent-encode it".into(),
        ));
    }
    Ok(())
}

/// The method: a token, never expanded, never CONNECT.
pub fn method(m: &str, show: &dyn Fn(&str) -> String) -> Result<reqwest::Method, CapError> {
    if contains_reference(m) {
        return Err(CapError::Invalid(
            "`${secret:…}` is expanded in the URL, header values and the body, never in the method"
                .into(),
        ));
    }
    let method = reqwest::Method::from_bytes(m.to_uppercase().as_bytes())
        .map_err(|_| CapError::Invalid(format!("bad HTTP method `{}`", show(m))))?;
    if method == reqwest::Method::CONNECT {
        return Err(CapError::Invalid(
            "CONNECT is not offered: the host makes the request itself".into(),
        ));
    }
    Ok(method)
}

/// A header name: a token, never expanded, not one the host sets.
pub fn header_name(k: &str, show: &dyn Fn(&str) -> String) -> Result<HeaderName, CapError> {
    if contains_reference(k) {
        return Err(CapError::Invalid(
            "`${secret:…}` is expanded in header values, never in header names".into(),
        ));
    }
    let name = HeaderName::from_bytes(k.as_bytes())
        .map_err(|_| CapError::Invalid(format!("bad header name `{}`", show(k))))?;
    if host_only(&name) {
        return Err(CapError::Invalid(format!(
            "header `{k}` is set by the host only: it decides where the request goes, how it is framed or whom it claims to come from"
        )));
    }
    Ok(name)
}

/// A header value as written: no line break.
pub fn check_header_value(name: &HeaderName, v: &str) -> Result<(), CapError> {
    refuse_line_breaks(&format!("the value of header `{name}`"), v)?;
    if v.contains('\0') {
        return Err(CapError::Invalid(format!(
            "the value of header `{name}` contains a NUL character"
        )));
    }
    Ok(())
}

/// `scheme://authority/` when the template writes all of it before its
/// first `${secret:…}` (the authority ends at `/`, `\`, `?` or `#`, as a
/// URL parser ends it), so the origin can be checked before expansion.
pub fn literal_origin(template: &str) -> Option<String> {
    let first = template.find("${secret:")?;
    let prefix = &template[..first];
    let start = prefix.find("://")? + 3;
    let end = start + prefix[start..].find(['/', '\\', '?', '#'])?;
    Some(format!("{}/", &prefix[..end]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_only_headers() {
        for h in [
            "Host",
            "host",
            "Proxy-Authorization",
            "proxy-connection",
            "Connection",
            "Keep-Alive",
            "TE",
            "Trailer",
            "Transfer-Encoding",
            "Upgrade",
            "Content-Length",
            "Forwarded",
            "X-Forwarded-For",
            "X-Forwarded-Host",
            "x-forwarded-proto",
            "X-Real-IP",
        ] {
            assert!(
                host_only(&HeaderName::from_bytes(h.as_bytes()).unwrap()),
                "{h}"
            );
        }
        for h in ["Authorization", "Content-Type", "X-Token", "Accept"] {
            assert!(!host_only(&HeaderName::from_bytes(h.as_bytes()).unwrap()));
        }
    }

    #[test]
    fn the_origin_is_literal_only_when_written_out() {
        let o = |t: &str| literal_origin(t);
        assert_eq!(
            o("http://127.0.0.1:8080/services/${secret:x}").as_deref(),
            Some("http://127.0.0.1:8080/")
        );
        assert_eq!(
            o("http://evil.example?${secret:x}").as_deref(),
            Some("http://evil.example/")
        );
        assert_eq!(
            o("http://evil.example#@127.0.0.1/${secret:x}").as_deref(),
            Some("http://evil.example/")
        );
        assert_eq!(o("${secret:x}"), None);
        assert_eq!(o("http://${secret:x}/services/"), None);
        assert_eq!(o("http://127.0.0.1:${secret:x}/"), None);
        assert_eq!(o("a${secret:x}:"), None);
        assert_eq!(o("http://x/"), None);
    }
}
