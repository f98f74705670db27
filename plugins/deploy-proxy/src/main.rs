//! `deploy-proxy` binary: traffic on `0.0.0.0:$PROXY_PORT` (default 8080),
//! admin API on `0.0.0.0:$ADMIN_PORT` (default 8081). `$UPSTREAMS` (comma
//! separated `ip:port`) seeds the pool; it is empty otherwise.
//!
//! SIGTERM/SIGINT stop it at once (as PID 1 of a `FROM scratch` image the
//! kernel would otherwise ignore SIGTERM and `docker stop` would wait).

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use deploy_proxy::pool::{parse_addrs, Pool};
use deploy_proxy::Timeouts;

static STOP: AtomicBool = AtomicBool::new(false);

#[cfg(unix)]
mod signals {
    use super::{Ordering, STOP};

    const SIGINT: i32 = 2;
    const SIGTERM: i32 = 15;

    extern "C" {
        fn signal(signum: i32, handler: extern "C" fn(i32)) -> usize;
    }

    extern "C" fn on_signal(_: i32) {
        // Only an atomic store: async-signal-safe.
        STOP.store(true, Ordering::SeqCst);
    }

    pub fn install() {
        // SAFETY: `signal` from the C library the binary is linked with;
        // the handler only stores to an atomic.
        unsafe {
            signal(SIGTERM, on_signal);
            signal(SIGINT, on_signal);
        }
    }
}

#[cfg(not(unix))]
mod signals {
    pub fn install() {}
}

fn port(var: &str, default: u16) -> Result<u16, String> {
    match std::env::var(var) {
        Ok(p) if !p.trim().is_empty() => p
            .trim()
            .parse::<u16>()
            .map_err(|_| format!("{var} must be a port number, got {p:?}")),
        _ => Ok(default),
    }
}

fn main() -> ExitCode {
    let (traffic, admin) = match (port("PROXY_PORT", 8080), port("ADMIN_PORT", 8081)) {
        (Ok(t), Ok(a)) => (t, a),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("deploy-proxy: {e}");
            return ExitCode::from(2);
        }
    };
    let seed: Vec<String> = std::env::var("UPSTREAMS")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    let seed = match parse_addrs(&seed) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("deploy-proxy: UPSTREAMS: {e}");
            return ExitCode::from(2);
        }
    };
    let pool = Arc::new(Pool::new(seed));
    let bound = deploy_proxy::spawn(
        &format!("0.0.0.0:{traffic}"),
        &format!("0.0.0.0:{admin}"),
        pool.clone(),
        Timeouts::default(),
    );
    match bound {
        Ok((t, a)) => eprintln!(
            "deploy-proxy {} listening: traffic {t}, admin {a}, {} upstream(s)",
            env!("CARGO_PKG_VERSION"),
            pool.len()
        ),
        Err(e) => {
            eprintln!("deploy-proxy: cannot listen: {e}");
            return ExitCode::from(1);
        }
    }
    signals::install();
    while !STOP.load(Ordering::SeqCst) {
        thread::sleep(Duration::from_millis(50));
    }
    eprintln!("deploy-proxy: stopping");
    ExitCode::SUCCESS
}
