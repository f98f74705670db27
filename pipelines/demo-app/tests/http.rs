//! Starts the server in-process on port 0 and talks raw HTTP/1.1 to it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use demo_app::{spawn, Config};

fn start(unhealthy: bool) -> SocketAddr {
    spawn(
        "127.0.0.1:0",
        Config {
            version: "9.9.9-test".into(),
            unhealthy,
        },
    )
    .expect("bind")
}

/// Sends `raw` and returns (status, body).
fn send(addr: SocketAddr, raw: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(raw.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    send(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: test\r\n\r\n"),
    )
}

#[test]
fn health_reports_ok_and_version() {
    let addr = start(false);
    assert_eq!(
        get(addr, "/health"),
        (200, r#"{"status":"ok","version":"9.9.9-test"}"#.to_string())
    );
}

#[test]
fn unhealthy_health_is_503() {
    let addr = start(true);
    let (status, body) = get(addr, "/health");
    assert_eq!(status, 503);
    assert!(body.contains("unhealthy"), "{body}");
    // The rest still works.
    assert_eq!(get(addr, "/").0, 200);
}

#[test]
fn root_greets() {
    let addr = start(false);
    let (status, body) = get(addr, "/");
    assert_eq!(status, 200);
    assert!(body.contains("demo-app 9.9.9-test"), "{body}");
}

#[test]
fn not_found_bad_request_and_head() {
    let addr = start(false);
    assert_eq!(get(addr, "/missing").0, 404);
    assert_eq!(send(addr, "garbage\r\n\r\n").0, 400);
    assert_eq!(
        send(addr, "DELETE /health HTTP/1.1\r\nHost: x\r\n\r\n").0,
        405
    );
    let (status, body) = send(addr, "HEAD /health HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!((status, body.as_str()), (200, ""));
    // HTTP/1.0 without headers.
    assert_eq!(send(addr, "GET / HTTP/1.0\r\n\r\n").0, 200);
}

#[test]
fn slow_sleeps_and_others_are_served_meanwhile() {
    let addr = start(false);
    let t0 = Instant::now();
    let slow = std::thread::spawn(move || get(addr, "/slow?ms=300"));
    std::thread::sleep(Duration::from_millis(50));
    let t1 = Instant::now();
    assert_eq!(get(addr, "/health").0, 200);
    assert!(
        t1.elapsed() < Duration::from_millis(250),
        "health was blocked"
    );
    let (status, body) = slow.join().unwrap();
    assert_eq!(status, 200);
    assert_eq!(body, "slept 300 ms\n");
    assert!(t0.elapsed() >= Duration::from_millis(300));
    assert_eq!(get(addr, "/slow?ms=x").0, 400);
}
