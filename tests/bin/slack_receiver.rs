//! `slack-receiver`: the Slack-compatible incoming-webhook receiver of
//! `pipeline_tests::slack`, as a program for the demo.
//!
//! ```text
//! slack-receiver [--listen 127.0.0.1:9999] [--out messages.jsonl] [--burst N]
//! ```
//!
//! Prints `listening on http://ADDR` on stderr once ready, then each accepted
//! message as one JSON line on stdout (appended to `--out` too, when given).
//! Stops on SIGTERM or Ctrl-C.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context as _};
use pipeline_tests::slack::{Config, SlackReceiver};
use tokio::io::AsyncWriteExt as _;

const USAGE: &str =
    "usage: slack-receiver [--listen 127.0.0.1:9999] [--out messages.jsonl] [--burst N]";

struct Args {
    config: Config,
    out: Option<PathBuf>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut config = Config::default();
    let mut out = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => {
                (flag.to_owned(), Some(value.to_owned()))
            }
            _ => (arg.clone(), None),
        };
        let mut value = || -> anyhow::Result<String> {
            match inline.clone() {
                Some(v) => Ok(v),
                None => args
                    .next()
                    .with_context(|| format!("{flag} needs a value\n{USAGE}")),
            }
        };
        match flag.as_str() {
            "--listen" => {
                let v = value()?;
                config.listen = v
                    .parse::<SocketAddr>()
                    .with_context(|| format!("--listen {v}: not an address like 127.0.0.1:9999"))?;
            }
            "--out" => out = Some(PathBuf::from(value()?)),
            "--burst" => {
                let v = value()?;
                config.burst = v
                    .parse()
                    .with_context(|| format!("--burst {v}: not a number"))?;
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    Ok(Args { config, out })
}

async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("slack-receiver: {e:#}");
            std::process::exit(2);
        }
    };
    let mut out = match &args.out {
        Some(path) => Some(
            tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .await
                .with_context(|| format!("opening {}", path.display()))?,
        ),
        None => None,
    };

    let slack = SlackReceiver::start_with(args.config).await?;
    let mut messages = slack.subscribe();
    eprintln!("listening on http://{}", slack.addr());

    let stop = stop_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            message = messages.recv() => {
                let Some(message) = message else { break };
                let mut line = serde_json::to_string(&message)?;
                line.push('\n');
                {
                    let mut stdout = std::io::stdout().lock();
                    stdout.write_all(line.as_bytes())?;
                    stdout.flush()?;
                }
                if let Some(file) = out.as_mut() {
                    file.write_all(line.as_bytes()).await?;
                    file.flush().await?;
                }
            }
        }
    }
    slack.shutdown().await;
    Ok(())
}
