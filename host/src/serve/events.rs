//! Live run pages: `GET /api/runs/{id}/events` is a server-sent event
//! stream of the run's new log lines (`event: log`) and of its status
//! whenever it changes (`event: status`, with a key the page compares with
//! the one it was drawn with), ending when the run does. The run page
//! appends lines as they come and redraws on a status change, instead of
//! reloading every two seconds.
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::stream::{self, Stream, StreamExt};
use serde::Deserialize;
use serde_json::json;

use crate::run::RunRecord;
use crate::serve::ServerState;

/// How often the stream looks at the store.
const LOOK: Duration = Duration::from_millis(250);
/// Lines per look (a flood is sent over several).
const LINES: usize = 2000;

/// What a page compares to know whether to redraw: the run's status and
/// each stage's.
pub fn status_key(run: &RunRecord) -> String {
    let mut key = run.status.to_string();
    for s in &run.stages {
        key.push('|');
        key.push_str(&s.name);
        key.push('=');
        key.push_str(s.status.as_str());
    }
    key
}

#[derive(Deserialize)]
pub struct EventsQuery {
    /// The log position the page already shows.
    after: Option<i64>,
}

struct Cursor {
    s: Arc<ServerState>,
    id: String,
    after: i64,
    key: Option<String>,
    done: bool,
}

pub async fn events(
    State(s): State<Arc<ServerState>>,
    Path(id): Path<String>,
    Query(q): Query<EventsQuery>,
) -> Response {
    let cursor = Cursor {
        s,
        id,
        after: q.after.unwrap_or(0).max(0),
        key: None,
        done: false,
    };
    Sse::new(stream_of(cursor))
        .keep_alive(KeepAlive::default())
        .into_response()
}

fn stream_of(cursor: Cursor) -> impl Stream<Item = Result<Event, Infallible>> {
    stream::unfold(cursor, |mut c| async move {
        if c.done {
            return None;
        }
        let events = look(&mut c).await;
        Some((stream::iter(events.into_iter().map(Ok)), c))
    })
    .flatten()
}

/// One look: new lines, and the status when it changed (the first look
/// always says it). Waits [`LOOK`] when there was nothing.
async fn look(c: &mut Cursor) -> Vec<Event> {
    let (id, after) = (c.id.clone(), c.after);
    let read =
        c.s.with_db(move |db| {
            let run = db.get(&id)?;
            let lines = db.logs(&id, None, after, LINES)?;
            Ok((run, lines))
        })
        .await;
    let Ok((Some(run), lines)) = read else {
        c.done = true;
        return vec![Event::default().event("gone").data("{}")];
    };
    let mut out = Vec::new();
    for l in &lines {
        c.after = c.after.max(l.seq);
        let data =
            json!({ "seq": l.seq, "stage": l.stage, "stream": l.line.stream, "text": l.line.text });
        out.push(Event::default().event("log").data(data.to_string()));
    }
    let key = status_key(&run);
    if c.key.as_deref() != Some(key.as_str()) {
        let data = json!({ "status": run.status, "key": key });
        out.push(Event::default().event("status").data(data.to_string()));
        c.key = Some(key);
    }
    if run.status.is_final() && lines.len() < LINES {
        c.done = true;
    }
    if out.is_empty() {
        tokio::time::sleep(LOOK).await;
    }
    out
}
