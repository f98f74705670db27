//! The PostgreSQL side of [`super::Db`]: a blocking client behind a mutex,
//! made again when the server restarted or dropped the connection, with
//! prepared statements kept per connection.
use std::collections::HashMap;

use anyhow::{anyhow, bail, Context, Result};
use parking_lot::Mutex;
use postgres::error::SqlState;
use postgres::{Client, NoTls, Statement};

use super::first_words;
use super::value::{from_postgres, Row, Value};

pub(super) struct Pg {
    config: postgres::Config,
    /// The URL without its password, for messages.
    shown: String,
    conn: Mutex<Option<Conn>>,
}

struct Conn {
    client: Client,
    /// Prepared statements by their PostgreSQL text.
    statements: HashMap<String, Statement>,
}

impl Pg {
    pub(super) fn connect(url: &str) -> Result<Pg> {
        let shown = redact_url(url);
        let config: postgres::Config = url
            .parse()
            .with_context(|| format!("reading the PostgreSQL URL {shown}"))?;
        let pg = Pg {
            config,
            shown,
            conn: Mutex::new(None),
        };
        *pg.conn.lock() = Some(pg.open()?);
        Ok(pg)
    }

    fn open(&self) -> Result<Conn> {
        let client = off_runtime(|| self.config.connect(NoTls))
            .with_context(|| format!("connecting to PostgreSQL at {}", self.shown))?;
        Ok(Conn {
            client,
            statements: HashMap::new(),
        })
    }

    /// Run `f` on the connection, made first if there is none (or it was
    /// closed). Outside a transaction, a statement that fails because the
    /// connection was lost is tried once more on a new one: the server
    /// did not run it, or (server gone mid-statement) only the last
    /// statement of an auto-committed call could be run twice.
    fn with_conn<T: Send>(
        &self,
        sql: &str,
        in_tx: bool,
        f: impl FnMut(&mut Conn) -> Result<T, postgres::Error> + Send,
    ) -> Result<T> {
        off_runtime(|| self.with_conn_here(sql, in_tx, f))
    }

    fn with_conn_here<T>(
        &self,
        sql: &str,
        in_tx: bool,
        mut f: impl FnMut(&mut Conn) -> Result<T, postgres::Error>,
    ) -> Result<T> {
        let mut guard = self.conn.lock();
        let mut retried = false;
        loop {
            if guard.as_ref().is_none_or(|c| c.client.is_closed()) {
                if in_tx {
                    *guard = None;
                    bail!(
                        "PostgreSQL at {}: the connection was lost during a transaction ({})",
                        self.shown,
                        first_words(sql)
                    );
                }
                *guard = Some(self.open()?);
            }
            let conn = guard.as_mut().expect("connected above");
            match f(conn) {
                Ok(v) => return Ok(v),
                Err(e) => {
                    let lost = connection_lost(&e) || conn.client.is_closed();
                    if lost {
                        *guard = None;
                    }
                    if lost && !in_tx && !retried {
                        retried = true;
                        continue;
                    }
                    return Err(anyhow!(e).context(format!("PostgreSQL: {}", first_words(sql))));
                }
            }
        }
    }

    pub(super) fn execute(&self, sql: &str, params: &[Value], in_tx: bool) -> Result<u64> {
        let text = rewrite_placeholders(sql);
        self.with_conn(sql, in_tx, |c| {
            let stmt = c.prepare(&text)?;
            c.client.execute(&stmt, &refs(params))
        })
    }

    pub(super) fn query(&self, sql: &str, params: &[Value], in_tx: bool) -> Result<Vec<Row>> {
        let text = rewrite_placeholders(sql);
        let rows = self.with_conn(sql, in_tx, |c| {
            let stmt = c.prepare(&text)?;
            c.client.query(&stmt, &refs(params))
        })?;
        rows.iter()
            .map(|r| {
                let values = (0..r.len())
                    .map(|i| from_postgres(r, i))
                    .collect::<Result<_>>()?;
                Ok(Row::new(values))
            })
            .collect::<Result<_>>()
            .with_context(|| format!("PostgreSQL: {}", first_words(sql)))
    }

    pub(super) fn batch(&self, sql: &str, in_tx: bool) -> Result<()> {
        self.with_conn(sql, in_tx, |c| c.client.batch_execute(sql))
    }

    /// Start a transaction holding the writers' advisory lock.
    pub(super) fn begin(&self, lock: i64) -> Result<()> {
        self.with_conn("BEGIN", false, |c| {
            c.client.batch_execute("BEGIN")?;
            let locked = c
                .client
                .execute("SELECT pg_advisory_xact_lock($1)", &[&lock]);
            if locked.is_err() {
                let _ = c.client.batch_execute("ROLLBACK");
            }
            locked.map(|_| ())
        })
    }
}

/// The blocking client runs its own runtime, which cannot be entered from
/// a thread that already runs one (an async task that opened a store, or
/// dropped the last handle to one): there, `f` runs on a thread of its
/// own. The stores otherwise run on blocking threads, where it runs in
/// place.
fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    if tokio::runtime::Handle::try_current().is_err() {
        return f();
    }
    std::thread::scope(|s| {
        s.spawn(f)
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

impl Drop for Pg {
    fn drop(&mut self) {
        // Closing the client blocks on its runtime too.
        if let Some(conn) = self.conn.get_mut().take() {
            off_runtime(move || drop(conn));
        }
    }
}

impl Conn {
    fn prepare(&mut self, text: &str) -> Result<Statement, postgres::Error> {
        if let Some(s) = self.statements.get(text) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(text)?;
        self.statements.insert(text.to_string(), s.clone());
        Ok(s)
    }
}

fn refs(params: &[Value]) -> Vec<&(dyn postgres::types::ToSql + Sync)> {
    params
        .iter()
        .map(|v| v as &(dyn postgres::types::ToSql + Sync))
        .collect()
}

/// The connection is gone (closed, or the server is shutting it down).
fn connection_lost(e: &postgres::Error) -> bool {
    e.is_closed()
        || matches!(
            e.code(),
            Some(&SqlState::ADMIN_SHUTDOWN)
                | Some(&SqlState::CRASH_SHUTDOWN)
                | Some(&SqlState::CANNOT_CONNECT_NOW)
        )
}

/// SQLite's `?N` placeholders as PostgreSQL's `$N`, leaving string
/// literals, quoted names and comments as they are.
pub(crate) fn rewrite_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    // The character that ends what we are inside of, if anything.
    let mut inside: Option<&str> = None;
    while let Some(c) = chars.next() {
        match inside {
            Some("'") | Some("\"") => {
                if Some(c.to_string().as_str()) == inside {
                    inside = None;
                }
                out.push(c);
            }
            Some("\n") => {
                if c == '\n' {
                    inside = None;
                }
                out.push(c);
            }
            Some(_) => {
                // A block comment: ends at `*/`.
                out.push(c);
                if c == '*' && chars.peek() == Some(&'/') {
                    out.push(chars.next().expect("peeked"));
                    inside = None;
                }
            }
            None => {
                match c {
                    '\'' => inside = Some("'"),
                    '"' => inside = Some("\""),
                    '-' if chars.peek() == Some(&'-') => inside = Some("\n"),
                    '/' if chars.peek() == Some(&'*') => inside = Some("*/"),
                    '?' if chars.peek().is_some_and(char::is_ascii_digit) => {
                        out.push('$');
                        continue;
                    }
                    _ => {}
                }
                out.push(c);
            }
        }
    }
    out
}

/// `url` without its password (also in `key=value` form), for messages.
pub fn redact_url(url: &str) -> String {
    if let Ok(mut u) = url::Url::parse(url) {
        if u.password().is_some() {
            let _ = u.set_password(Some("***"));
        }
        let query: Vec<(String, String)> = u
            .query_pairs()
            .map(|(k, v)| {
                let v = if k == "password" {
                    "***".into()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        if query.iter().any(|(k, _)| k == "password") {
            u.query_pairs_mut().clear().extend_pairs(query);
        }
        return u.to_string();
    }
    url.split_whitespace()
        .map(|part| match part.split_once('=') {
            Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
            _ => part.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}
