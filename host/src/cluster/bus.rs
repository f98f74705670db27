//! The NATS side: connecting (with credentials from a secret, reconnecting
//! by itself), the JetStream streams both sides need, the agents' pull
//! consumers, and requests that retry while the other side is away.
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use async_nats::jetstream::{self, consumer::pull, stream};
use serde::Serialize;

use super::protocol::{Reply, Request, EVENTS_STREAM, RUNS_STREAM, SERVER_SUBJECT};
use crate::serve::config::SecretRef;

/// How a process reaches NATS.
#[derive(Debug, Clone)]
pub struct NatsSettings {
    pub url: String,
    /// `user:password` or a token.
    pub credentials: Option<SecretRef>,
}

/// A duplicate publish of a run (same message id) within this window is
/// stored once.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// How long a process waits for NATS to come up at its start.
const CONNECT_PATIENCE: Duration = Duration::from_secs(30);
/// How long one request waits for the server.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Connected client and JetStream context.
#[derive(Clone)]
pub struct Bus {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
}

impl Bus {
    /// Connect (waiting for the server if it is not up yet) and make sure
    /// the streams exist.
    pub async fn connect(s: &NatsSettings, name: &str) -> Result<Self> {
        let credentials = match &s.credentials {
            Some(c) => Some(c.read().context("reading the NATS credentials")?),
            None => None,
        };
        let deadline = tokio::time::Instant::now() + CONNECT_PATIENCE;
        let client = loop {
            let mut opts = async_nats::ConnectOptions::new()
                .name(name)
                .request_timeout(Some(REQUEST_TIMEOUT));
            if let Some(v) = &credentials {
                opts = match v.split_once(':') {
                    Some((u, p)) => opts.user_and_password(u.into(), p.into()),
                    None => opts.token(v.clone()),
                };
            }
            match opts.connect(&s.url).await {
                Ok(c) => break c,
                // Waiting does not mend wrong credentials.
                Err(e) if is_refusal(e.kind()) => {
                    bail!("NATS at {} refused this client's credentials ({e})", s.url)
                }
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!("connecting to NATS at {}: {e}; trying again", s.url);
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => bail!("no NATS server answered at {} ({e})", s.url),
            }
        };
        let js = jetstream::new(client.clone());
        let bus = Self { client, js };
        bus.streams().await?;
        Ok(bus)
    }

    async fn streams(&self) -> Result<()> {
        // Both are work queues kept on disk: a message stays until acked.
        for (name, subjects) in [
            (RUNS_STREAM, "pipeline.runs.>"),
            (EVENTS_STREAM, "pipeline.events.>"),
        ] {
            self.js
                .get_or_create_stream(stream::Config {
                    name: name.into(),
                    subjects: vec![subjects.into()],
                    retention: stream::RetentionPolicy::WorkQueue,
                    storage: stream::StorageType::File,
                    duplicate_window: DUPLICATE_WINDOW,
                    ..Default::default()
                })
                .await
                .map_err(|e| anyhow!("creating the {name} stream: {e}"))?;
        }
        Ok(())
    }

    /// The durable pull consumer of `stream` for `subject`, shared by
    /// every process that names it the same.
    pub async fn consumer(
        &self,
        stream: &str,
        durable: &str,
        subject: &str,
        ack_wait: Duration,
        max_deliver: i64,
    ) -> Result<jetstream::consumer::Consumer<pull::Config>> {
        let stream = self
            .js
            .get_stream(stream)
            .await
            .map_err(|e| anyhow!("opening stream {stream}: {e}"))?;
        stream
            .get_or_create_consumer(
                durable,
                pull::Config {
                    durable_name: Some(durable.into()),
                    filter_subject: subject.into(),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ack_wait,
                    max_deliver,
                    max_ack_pending: 10_000,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| anyhow!("creating consumer {durable}: {e}"))
    }

    /// Publish to a stream and wait until it is stored, trying again while
    /// NATS is away (up to `patience`). `id` deduplicates.
    pub async fn publish_stored(
        &self,
        subject: &str,
        id: &str,
        body: Vec<u8>,
        patience: Duration,
    ) -> Result<u64> {
        let deadline = tokio::time::Instant::now() + patience;
        let mut wait = Duration::from_millis(50);
        loop {
            let msg = jetstream::message::PublishMessage::build()
                .message_id(id)
                .payload(body.clone().into());
            let tried = async {
                let ack = self.js.send_publish(subject.to_string(), msg).await?;
                Ok::<_, anyhow::Error>(ack.await?.sequence)
            };
            match tried.await {
                Ok(seq) => return Ok(seq),
                Err(e) if tokio::time::Instant::now() + wait < deadline => {
                    tracing::debug!("publishing to {subject}: {e:#}; trying again");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(2));
                }
                Err(e) => return Err(e.context(format!("publishing to {subject}"))),
            }
        }
    }

    /// Ask the server; while it does not answer (down, restarting) try
    /// again until `patience` runs out.
    /// A `Retry` answer (the server's store is away) is asked again too.
    pub async fn ask(&self, req: &Request, patience: Duration) -> Result<Reply> {
        let body = serde_json::to_vec(req)?;
        let deadline = tokio::time::Instant::now() + patience;
        let mut wait = Duration::from_millis(100);
        loop {
            let tried = self
                .client
                .request(SERVER_SUBJECT, body.clone().into())
                .await;
            match tried {
                Ok(m) => {
                    let reply: Reply = serde_json::from_slice(&m.payload)
                        .context("the server's answer is not understood")?;
                    match reply {
                        Reply::Retry { why } if tokio::time::Instant::now() + wait < deadline => {
                            tracing::debug!("the server asks to try again: {why}");
                            tokio::time::sleep(wait).await;
                            wait = (wait * 2).min(Duration::from_secs(2));
                        }
                        reply => return Ok(reply),
                    }
                }
                Err(e) if tokio::time::Instant::now() + wait < deadline => {
                    tracing::debug!("asking the server: {e}; trying again");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(2));
                }
                Err(e) => return Err(anyhow!("the server did not answer: {e}")),
            }
        }
    }
}

/// Encode for the wire.
pub fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    Ok(serde_json::to_vec(v)?)
}

fn is_refusal(kind: async_nats::ConnectErrorKind) -> bool {
    matches!(
        kind,
        async_nats::ConnectErrorKind::AuthorizationViolation
            | async_nats::ConnectErrorKind::Authentication
    )
}
