//! Answering agents: claims, build numbers, ownership checks, approvals
//! and uploaded sources, all from the run store. A request the store
//! cannot answer now (PostgreSQL restarting) gets `Retry`.
use std::io::{Read, Seek, SeekFrom};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use base64::Engine;
use futures::StreamExt;

use super::{end_unstarted, Cluster};
use crate::cluster::bus::encode;
use crate::cluster::claims::{self, Claim};
use crate::cluster::protocol::{valid_label, Reply, Request, SERVER_SUBJECT};
use crate::run::{RunRecord, Status};
use crate::serve::queue::{Queue, MAX_ATTEMPTS};
use crate::serve::ServerState;

/// Bytes of an uploaded archive per answer (under NATS's 1 MiB payload
/// once in base64).
const CHUNK: usize = 512 * 1024;

pub(super) async fn serve(s: Arc<ServerState>, c: Arc<Cluster>) {
    let mut sub = loop {
        match c
            .bus
            .client
            .queue_subscribe(SERVER_SUBJECT, "pipeline-server".into())
            .await
        {
            Ok(sub) => break sub,
            Err(e) => {
                tracing::warn!("subscribing to agents' requests: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    while let Some(m) = sub.next().await {
        let (s, c) = (s.clone(), c.clone());
        tokio::spawn(async move {
            let reply = match serde_json::from_slice::<Request>(&m.payload) {
                Ok(req) => answer(&s, &c, req).await.unwrap_or_else(|e| Reply::Retry {
                    why: format!("{e:#}"),
                }),
                Err(e) => Reply::Refused {
                    why: format!("a request that is not understood: {e}"),
                },
            };
            if let (Some(to), Ok(body)) = (m.reply, encode(&reply)) {
                if let Err(e) = c.bus.client.publish(to, body.into()).await {
                    tracing::warn!("answering an agent: {e}");
                }
            }
        });
    }
}

async fn answer(s: &Arc<ServerState>, c: &Arc<Cluster>, req: Request) -> Result<Reply> {
    match req {
        Request::Claim {
            run,
            agent,
            stream_seq,
            ..
        } => claim(s, run, agent, stream_seq).await,
        Request::Number { run, fence, record } => number(s, run, fence, *record).await,
        Request::Owns { run, fence } => Ok(match owns(s, &run, fence).await? {
            Ok(()) => Reply::Ok,
            Err(why) => Reply::Refused { why },
        }),
        Request::AskApproval {
            run,
            fence,
            stage,
            environment,
            timeout_ms,
        } => {
            if let Err(why) = owns(s, &run, fence).await? {
                return Ok(Reply::Refused { why });
            }
            let timeout = Duration::from_millis(timeout_ms);
            c.approvals.ask(&run, &stage, &environment, timeout).await?;
            Ok(Reply::Ok)
        }
        Request::Approval { run, fence, stage } => {
            if let Err(why) = owns(s, &run, fence).await? {
                return Ok(Reply::Refused { why });
            }
            let record = c.approvals.poll(&run, &stage).await?;
            Ok(Reply::Approval { record })
        }
        Request::Upload { run, fence, offset } => upload(s, run, fence, offset).await,
        Request::Relabel { run, fence, labels } => relabel(s, c, run, fence, labels).await,
        Request::Release { run, fence } => {
            s.with_db(move |db| claims::release(db.db(), &run, fence))
                .await?;
            Ok(Reply::Ok)
        }
    }
}

async fn owns(s: &Arc<ServerState>, run: &str, fence: i64) -> Result<Result<(), String>> {
    let run = run.to_string();
    s.with_db(move |db| claims::owns(db.db(), &run, fence))
        .await
}

async fn claim(s: &Arc<ServerState>, run: String, agent: String, seq: u64) -> Result<Reply> {
    let r = run.clone();
    let claimed = s
        .with_db(move |db| claims::claim(db.db(), &r, &agent, seq, MAX_ATTEMPTS))
        .await?;
    Ok(match claimed {
        Claim::Claimed { fence, attempt } => Reply::Claimed { fence, attempt },
        Claim::Refused(why) => Reply::Refused { why },
        Claim::GiveUp { attempts } => {
            let reason = format!(
                "its agent stopped answering {attempts} times (killed, or the machine gone); \
                 not run again"
            );
            let r = run.clone();
            if let Some(q) = s.with_db(move |db| Queue::new(db.db()).find(&r)).await? {
                end_unstarted(s, &q, Status::Failure, reason.clone()).await;
            }
            Reply::Refused { why: reason }
        }
    })
}

/// The build number: the run's own if it ran before as the same
/// pipeline, else the next; `record` is saved as its placeholder.
async fn number(s: &Arc<ServerState>, run: String, fence: i64, record: RunRecord) -> Result<Reply> {
    let _one_at_a_time = s.numbering.lock().await;
    s.with_db(move |db| {
        db.db().transaction(|tx| {
            if let Err(why) = claims::owns(tx, &run, fence)? {
                return Ok(Reply::Refused { why });
            }
            let mut rec = record;
            rec.id = run.clone();
            rec.build_number = match db.get(&run)? {
                Some(old) if old.pipeline == rec.pipeline => old.build_number,
                _ => db.next_build_number(&rec.pipeline)?,
            };
            rec.attempts = claims::attempts(tx, &run)?;
            db.save(&rec)?;
            Ok(Reply::Number {
                number: rec.build_number,
            })
        })
    })
    .await
}

/// Publish the run again for agents offering `labels`.
async fn relabel(
    s: &Arc<ServerState>,
    c: &Arc<Cluster>,
    run: String,
    fence: i64,
    labels: Vec<String>,
) -> Result<Reply> {
    if let Err(why) = owns(s, &run, fence).await? {
        return Ok(Reply::Refused { why });
    }
    if !labels.iter().all(|l| valid_label(l)) {
        return Ok(Reply::Refused {
            why: "not labels".into(),
        });
    }
    let r = run.clone();
    let Some(q) = s.with_db(move |db| Queue::new(db.db()).find(&r)).await? else {
        return Ok(Reply::Refused {
            why: "the server does not know this run".into(),
        });
    };
    let Some(seq) = super::publish_with(s, c, q, labels).await else {
        anyhow::bail!("NATS did not store the run");
    };
    s.with_db(move |db| claims::relabelled(db.db(), &run, fence, seq))
        .await?;
    Ok(Reply::Ok)
}

async fn upload(s: &Arc<ServerState>, run: String, fence: i64, offset: u64) -> Result<Reply> {
    if let Err(why) = owns(s, &run, fence).await? {
        return Ok(Reply::Refused { why });
    }
    let r = run.clone();
    let Some(q) = s.with_db(move |db| Queue::new(db.db()).find(&r)).await? else {
        return Ok(Reply::Refused {
            why: "the server does not know this run".into(),
        });
    };
    let Some(path) = q.job.archive else {
        return Ok(Reply::Refused {
            why: "the run has no uploaded source".into(),
        });
    };
    let read = tokio::task::spawn_blocking(move || -> std::io::Result<(Vec<u8>, bool)> {
        let mut f = std::fs::File::open(&path)?;
        let len = f.metadata()?.len();
        f.seek(SeekFrom::Start(offset.min(len)))?;
        let mut buf = vec![0; CHUNK];
        let n = f.read(&mut buf)?;
        buf.truncate(n);
        Ok((buf, offset + n as u64 >= len))
    })
    .await?;
    Ok(match read {
        Ok((data, eof)) => Reply::Chunk {
            data: base64::engine::general_purpose::STANDARD.encode(data),
            eof,
        },
        Err(e) => Reply::Refused {
            why: format!("the uploaded source cannot be read: {e}"),
        },
    })
}
