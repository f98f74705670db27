//! `demo-app` binary: listens on `0.0.0.0:$PORT` (default 8080).
//!
//! On SIGTERM/SIGINT it stops once in-flight requests are done (at most
//! ~6 s, longer than the longest `/slow`), so `docker stop` is prompt even
//! as PID 1 of a `FROM scratch` image (where the kernel would otherwise
//! ignore SIGTERM).

use std::net::TcpListener;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use demo_app::{serve, Config, InFlight};

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

fn main() -> ExitCode {
    let port = match std::env::var("PORT") {
        Ok(p) if !p.trim().is_empty() => match p.trim().parse::<u16>() {
            Ok(p) => p,
            Err(_) => {
                eprintln!("demo-app: PORT must be a port number, got {p:?}");
                return ExitCode::from(2);
            }
        },
        _ => 8080,
    };
    let config = Config::from_env();
    let listener = match TcpListener::bind(("0.0.0.0", port)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("demo-app: cannot listen on 0.0.0.0:{port}: {e}");
            return ExitCode::from(1);
        }
    };
    eprintln!(
        "demo-app {} listening on 0.0.0.0:{port}{}",
        config.version,
        if config.unhealthy {
            " (DEMO_UNHEALTHY: /health answers 503)"
        } else {
            ""
        }
    );
    signals::install();
    let in_flight = InFlight::default();
    let counter = in_flight.clone();
    thread::spawn(move || serve(listener, config, counter));
    while !STOP.load(Ordering::SeqCst) {
        thread::sleep(Duration::from_millis(50));
    }
    let deadline = Instant::now() + Duration::from_secs(6);
    while in_flight.count() > 0 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "demo-app: stopping ({} requests still in flight)",
        in_flight.count()
    );
    ExitCode::SUCCESS
}
