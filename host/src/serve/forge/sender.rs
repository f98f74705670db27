//! Posting the outbox: the oldest waiting status of each run and context,
//! one at a time; 5xx and network failures back off (1 s, 2 s, 4 s … a
//! minute) and rate limits wait as long as the forge says, up to
//! [`MAX_TRIES`]; a refusal is recorded and not tried again.
use std::sync::Arc;
use std::time::Duration;

use super::github::{Answer, Forge};
use super::outbox::{self, OutboxRow};
use super::ForgeSettings;
use crate::serve::queue::now_ms;
use crate::serve::ServerState;

/// Tries of one status before it is given up (with backoff, ~10 minutes).
pub const MAX_TRIES: u32 = 12;
/// Statuses taken per look.
const BATCH: usize = 32;

/// Until shutdown: post what is due.
pub async fn run(s: Arc<ServerState>, cfg: ForgeSettings) {
    let forge = match cfg.token.read().and_then(|t| Forge::new(&cfg.api_url, t)) {
        Ok(f) => f,
        Err(e) => {
            tracing::error!("[github] token: {e:#}; no commit statuses are posted");
            return;
        }
    };
    loop {
        let due = s
            .with_db(|db| outbox::due(db.db(), now_ms(), BATCH))
            .await
            .unwrap_or_else(|e| {
                tracing::debug!("reading the status outbox: {e:#}");
                Vec::new()
            });
        let idle = due.is_empty();
        for row in due {
            post_one(&s, &forge, row).await;
        }
        tokio::select! {
            _ = s.statuses.notified() => {}
            _ = s.shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(if idle { 500 } else { 0 })) => {}
        }
    }
}

/// The wait before try `tries + 1` after a failure that named none.
fn backoff(tries: u32) -> Duration {
    Duration::from_secs(1u64 << tries.saturating_sub(1).min(6)).min(Duration::from_secs(60))
}

async fn post_one(s: &Arc<ServerState>, forge: &Forge, row: OutboxRow) {
    // Sent before, answer never recorded (the server stopped): look first.
    if row.sending && forge.already_there(&row).await {
        record(s, row, outbox::posted).await;
        return;
    }
    let marked = row.clone();
    if s.with_db(move |db| outbox::sending(db.db(), &marked))
        .await
        .is_err()
    {
        return;
    }
    let tries = row.tries + 1;
    match forge.post(&row).await {
        Answer::Posted => record(s, row, outbox::posted).await,
        Answer::Refused(why) => {
            tracing::warn!(
                "status {} of run {}: refused: {why}",
                row.context,
                row.run_id
            );
            record(s, row, move |db, r| outbox::failed(db, r, "refused", &why)).await
        }
        Answer::Later { why, .. } if tries >= MAX_TRIES => {
            let why = format!("{why} (after {tries} tries)");
            tracing::warn!(
                "status {} of run {}: given up: {why}",
                row.context,
                row.run_id
            );
            record(s, row, move |db, r| outbox::failed(db, r, "given-up", &why)).await
        }
        Answer::Later { after, why } => {
            let wait = after.unwrap_or_else(|| backoff(tries));
            let at = now_ms() + wait.as_millis() as i64;
            record(s, row, move |db, r| outbox::retry_at(db, r, at, &why)).await
        }
    }
}

async fn record(
    s: &Arc<ServerState>,
    row: OutboxRow,
    f: impl FnOnce(&crate::store::Db, &OutboxRow) -> anyhow::Result<()> + Send + 'static,
) {
    let (run, context) = (row.run_id.clone(), row.context.clone());
    if let Err(e) = s.with_db(move |db| f(db.db(), &row)).await {
        tracing::warn!("status {context} of run {run}: recording the answer: {e:#}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_a_minute() {
        let secs: Vec<u64> = (1..=9).map(|t| backoff(t).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
    }
}
