use proptest::prelude::*;

use super::*;

fn list(patterns: &[&str]) -> UrlAllowlist {
    UrlAllowlist::new(patterns.iter().map(|p| UrlPattern::parse(p).unwrap()))
}

fn allows(a: &UrlAllowlist, url: &str) -> bool {
    match Url::parse(url) {
        Ok(u) => a.check(&u).is_ok(),
        Err(_) => false,
    }
}

#[test]
fn globs_match_whole_urls_as_before() {
    let a = list(&["https://hooks.slack.com/*", "http://127.0.0.1:*/ok"]);
    assert!(allows(&a, "https://hooks.slack.com/services/T/B/x"));
    assert!(allows(&a, "https://hooks.slack.com"));
    assert!(allows(&a, "http://127.0.0.1:8080/ok"));
    assert!(allows(&a, "http://127.0.0.1:8080/ok?x=1#y"));
    assert!(!allows(&a, "http://127.0.0.1:8080/ok/more"));
    assert!(!allows(&a, "https://hooks.slack.com.evil.example/x"));
    assert!(!allows(
        &a,
        "https://evil.example/?https://hooks.slack.com/"
    ));
    assert!(!allows(&a, "http://hooks.slack.com/services/x"), "scheme");
    // What the repository's pipelines and tests grant.
    let a = list(&["http://127.0.0.1:*/ok*", "http://127.0.0.1:1871[12]/*"]);
    assert!(allows(&a, "http://127.0.0.1:4000/ok?t=abc"));
    assert!(allows(&a, "http://127.0.0.1:4000/okay"));
    assert!(allows(&a, "http://127.0.0.1:18711/health"));
    assert!(allows(&a, "http://127.0.0.1:18712/a/b"));
    assert!(!allows(&a, "http://127.0.0.1:18713/health"));
    assert!(!allows(&a, "http://127.0.0.1:1871/health"));
}

#[test]
fn a_port_wildcard_does_not_span_the_path() {
    let a = list(&["http://127.0.0.1:*/services/*"]);
    assert!(allows(&a, "http://127.0.0.1:8080/services/x"));
    assert!(allows(&a, "http://127.0.0.1:8080/services/T0/B0/xyz"));
    assert!(allows(&a, "http://127.0.0.1/services/x"));
    assert!(
        allows(&a, "http://127.0.0.1:8080/%73ervices/x"),
        "same path"
    );
    for url in [
        "http://127.0.0.1:8080/admin/secret?x=/services/y",
        "http://127.0.0.1:8080/admin#/services/",
        "http://127.0.0.1:8080/admin?/services/",
        "http://127.0.0.1:8080/services/../admin",
        "http://127.0.0.1:8080/services/%2e%2e/admin",
        "http://127.0.0.1:8080/services/%2E%2E/admin",
        "http://127.0.0.1:8080/services/.%2e/admin",
        "http://127.0.0.1:8080/services\\..\\admin",
        "http://127.0.0.1:8080/services/..%2Fadmin",
        "http://127.0.0.1:8080/services/..%2fadmin",
        "http://127.0.0.1:8080/services/x%2F..%2F..%2Fadmin",
        "http://127.0.0.1:8080/services/..%5Cadmin",
        "http://127.0.0.1:8080/services/..;/admin",
        "http://127.0.0.1:8080/services/..;x=1/admin",
        "http://127.0.0.1:8080/services/%2e%2e;/admin",
        "http://127.0.0.1:8080/services",
        "http://127.0.0.1:8080/servicesx/y",
        "http://127.0.0.1:8080/x/services/y",
        // user info, either way round
        "http://127.0.0.1:8080@evil.example/services/x",
        "http://evil.example@127.0.0.1:8080/services/x",
        "http://u:p@127.0.0.1:8080/services/x",
        // other hosts, however written
        "http://127.0.0.2:8080/services/x",
        "http://2130706434:8080/services/x",
        "http://0x7f000002:8080/services/x",
        "http://0177.0.0.2:8080/services/x",
        "http://[::1]:8080/services/x",
        "http://[::ffff:127.0.0.1]:8080/services/x",
        "http://[::ffff:7f00:1]:8080/services/x",
        "http://localhost:8080/services/x",
        "http://127.0.0.1.nip.io:8080/services/x",
        "https://127.0.0.1:8080/services/x",
        "ftp://127.0.0.1:8080/services/x",
    ] {
        assert!(!allows(&a, url), "{url} must be refused");
    }
    // The same host written as a number is the same host.
    assert!(allows(&a, "http://2130706433:8080/services/x"));
    assert!(allows(&a, "http://0x7f.1:8080/services/x"));
}

#[test]
fn refusals_say_why() {
    let a = list(&["http://127.0.0.1:*/services/*"]);
    let check = |u: &str| a.check(&Url::parse(u).unwrap()).map(|_| ());
    assert_eq!(
        check("http://a@127.0.0.1/services/x"),
        Err(Refusal::UserInfo)
    );
    assert_eq!(
        check("http://127.0.0.1/services/..%2Fadmin"),
        Err(Refusal::HiddenDotSegment)
    );
    assert_eq!(check("http://127.0.0.1/admin"), Err(Refusal::NotGranted));
    assert_eq!(
        check("file:///etc/passwd"),
        Err(Refusal::Scheme("file".into()))
    );
}

#[test]
fn ports_are_exact_any_or_the_default() {
    let a = list(&["http://127.0.0.1:8080/*"]);
    assert!(allows(&a, "http://127.0.0.1:8080/x"));
    assert!(!allows(&a, "http://127.0.0.1:8081/x"));
    assert!(!allows(&a, "http://127.0.0.1/x"));
    let a = list(&["https://api.example.com/v1/*"]);
    assert!(allows(&a, "https://api.example.com/v1/x"));
    assert!(allows(&a, "https://API.Example.com:443/v1/x"));
    assert!(!allows(&a, "https://api.example.com:8443/v1/x"));
    let a = list(&["http://h:80/*"]);
    assert!(allows(&a, "http://h/x"));
    let a = list(&["http://h:*/*"]);
    assert!(allows(&a, "http://h/x") && allows(&a, "http://h:1/x"));
}

#[test]
fn an_omitted_path_is_the_root_only() {
    let a = list(&["https://api.example.com"]);
    assert!(allows(&a, "https://api.example.com"));
    assert!(allows(&a, "https://api.example.com/?q=1"));
    assert!(!allows(&a, "https://api.example.com/x"));
}

#[test]
fn a_leading_star_dot_allows_hosts_below_a_domain() {
    let a = list(&["https://*.example.com/*"]);
    assert!(allows(&a, "https://a.example.com/x"));
    assert!(allows(&a, "https://A.B.Example.COM/x"));
    for url in [
        "https://example.com/x",
        "https://evilexample.com/x",
        "https://example.com.evil.net/x",
        "https://a.example.com.evil.net/x",
        "https://a..example.com/x",
        "http://a.example.com/x",
        "https://a.example.com:444/x",
    ] {
        assert!(!allows(&a, url), "{url} must be refused");
    }
}

#[test]
fn escapes_are_compared_normalized() {
    let a = list(&["https://x/a%2fb/*", "https://x/%7Euser/*"]);
    assert!(allows(&a, "https://x/a%2Fb/c"));
    assert!(allows(&a, "https://x/a%2fb/c"));
    assert!(allows(&a, "https://x/~user/c"));
    assert!(!allows(&a, "https://x/a/b/c"));
}

#[test]
fn bad_patterns_say_what_is_wrong() {
    for (p, msg) in [
        (
            "hooks.slack.com/*",
            "must start with `https://` or `http://`",
        ),
        ("ftp://x/*", "must start with"),
        ("HTTPS://x/*", "must start with"),
        ("https:///x", "the host is missing"),
        ("https://*/x", "cannot be left open"),
        ("https://*:443/x", "cannot be left open"),
        ("https://a*b.com/x", "only as a leading `*.`"),
        ("https://*.*.com/x", "only as a leading `*.`"),
        ("https://*.127.0.0.1/x", "not an IP address"),
        ("https://x/a?b=*", "query"),
        ("https://x/a#b", "fragment"),
        ("https://u@x/", "user info"),
        ("https://u:p@x/", "user info"),
        ("https://x:0/", "out of range"),
        ("https://x:99999/", "out of range"),
        ("https://x:/", "expected a port number"),
        ("https://x:ab/", "expected a port number"),
        ("https://x:8[0/", "port"),
        ("https://x/a b", "percent-encoded"),
        ("https://x/a\nb", "percent-encoded"),
        ("https://x/é", "percent-encoded"),
        ("https://x/a\"b", "percent-encoded"),
        ("https://x/../y", "`..` segments"),
        ("https://x/a/./y", "`..` segments"),
        ("https://x/a/%2e%2e/y", "`..` segments"),
        ("https://x/[", "invalid glob pattern in the path"),
        ("https://x/%zz", "escape"),
        ("https://[::1/x", "closing `]`"),
        ("https://bad host/", "percent-encoded"),
    ] {
        let e = UrlPattern::parse(p).expect_err(p).to_string();
        assert!(e.contains(msg), "{p}: expected `{msg}` in `{e}`");
    }
    for ok in [
        "https://[::1]:8443/*",
        "http://[::1]/x",
        "https://bücher.example/*",
        "http://127.0.0.1:*/*",
        "https://x/a\\*b",
        "https://x/{a,b}/*",
    ] {
        UrlPattern::parse(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
}

#[test]
fn patterns_compare_as_written() {
    let p = UrlPattern::parse("https://x/*").unwrap();
    assert_eq!(p, "https://x/*");
    assert_eq!(p.as_str(), "https://x/*");
    assert_eq!(format!("{p:?}"), "UrlPattern(\"https://x/*\")");
    let a = list(&["https://bücher.example/*"]);
    assert!(allows(&a, "https://xn--bcher-kva.example/x"));
}

/// What a server that decodes everything, drops path parameters (`;x`)
/// and resolves dot segments (`\` as `/`) would take the path for.
fn server_view(path: &str) -> String {
    let decoded = String::from_utf8_lossy(&decode_all(path)).replace('\\', "/");
    let mut out: Vec<&str> = Vec::new();
    for seg in decoded.split('/').skip(1) {
        match seg.split(';').next().unwrap_or_default() {
            "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    format!("/{}", out.join("/"))
}

fn tricky(max: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            Just("/"),
            Just("."),
            Just(".."),
            Just("%2e"),
            Just("%2E"),
            Just("%2f"),
            Just("%2F"),
            Just("%5c"),
            Just("\\"),
            Just("%25"),
            Just("?"),
            Just("#"),
            Just("@"),
            Just(":"),
            Just("services"),
            Just("admin"),
            Just("x"),
            Just("%"),
            Just(";"),
            Just("\t"),
        ],
        0..max,
    )
    .prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Whatever follows `/services/`, an allowed request is one a server
    /// sees under `/services/`, on the granted host and port.
    #[test]
    fn an_allowed_path_stays_under_the_granted_prefix(s in tricky(12)) {
        let a = list(&["http://127.0.0.1:8080/services/*"]);
        let text = format!("http://127.0.0.1:8080/services/{s}");
        if let Ok(u) = Url::parse(&text) {
            if a.check(&u).is_ok() {
                prop_assert_eq!(u.host_str(), Some("127.0.0.1"));
                prop_assert_eq!(u.port_or_known_default(), Some(8080));
                let seen = server_view(u.path());
                prop_assert!(seen.starts_with("/services/"), "{} seen as {}", text, seen);
            }
        }
    }

    /// Whatever is written between the scheme and the path, an allowed
    /// request goes to the granted host and port, with no user info.
    #[test]
    fn an_allowed_authority_is_the_granted_one(
        s in proptest::collection::vec(
            prop_oneof![
                Just("127.0.0.1"), Just("127.0.0.2"), Just("evil.example"), Just("@"),
                Just(":"), Just("8080"), Just("80"), Just("."), Just("%40"), Just("["),
                Just("]"), Just("::1"), Just("0x7f"), Just("2130706433"), Just("/"),
                Just("\\"), Just("#"), Just("?"),
            ],
            1..8,
        ).prop_map(|v| v.concat())
    ) {
        let a = list(&["http://127.0.0.1:8080/services/*"]);
        let text = format!("http://{s}/services/x");
        if let Ok(u) = Url::parse(&text) {
            if a.check(&u).is_ok() {
                prop_assert_eq!(u.host_str(), Some("127.0.0.1"), "{}", text);
                prop_assert_eq!(u.port_or_known_default(), Some(8080), "{}", text);
                prop_assert!(u.username().is_empty() && u.password().is_none());
                prop_assert!(server_view(u.path()).starts_with("/services/"));
            }
        }
    }

    #[test]
    fn another_port_is_refused(port in 1u16..) {
        let a = list(&["http://127.0.0.1:8080/*"]);
        let allowed = allows(&a, &format!("http://127.0.0.1:{port}/x"));
        prop_assert_eq!(allowed, port == 8080);
    }

    #[test]
    fn another_host_below_is_refused(label in "[a-z0-9-]{1,12}", tail in "[a-z.]{0,12}") {
        let a = list(&["https://*.example.com/*"]);
        let host = format!("{label}.example.com{tail}");
        let allowed = allows(&a, &format!("https://{host}/x"));
        prop_assert_eq!(allowed, tail.is_empty(), "{}", host);
    }

    /// Patterns never panic, whatever is written.
    #[test]
    fn any_pattern_text_parses_or_errs(s in "\\PC{0,40}") {
        let _ = UrlPattern::parse(&format!("https://{s}"));
        let _ = UrlPattern::parse(&s);
    }
}
