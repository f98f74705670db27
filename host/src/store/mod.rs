//! One way to reach the run database, whichever engine holds it: the
//! embedded SQLite file in the state directory (one machine) or a
//! PostgreSQL server (many machines sharing their runs, queue and
//! approvals).
//!
//! The stores (`RunStore`, the server's `Queue`, `ApprovalStore`) write
//! their SQL once, with SQLite's `?1, ?2` placeholders and the subset both
//! engines speak; [`Db`] rewrites placeholders for PostgreSQL and converts
//! values both ways. Only table definitions differ per engine
//! ([`Db::is_postgres`]).
mod pg;
mod value;

/// Test support (also for the integration tests): a fresh PostgreSQL
/// schema per test.
pub mod testing;
#[cfg(test)]
mod tests;

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use rusqlite::Connection;

pub use pg::redact_url;
pub use value::{Row, ToValue, Value};

/// Where the run database is: `<dir>/runs.db`, or a PostgreSQL URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    Dir(PathBuf),
    Postgres(String),
}

impl StoreLocation {
    /// `--database URL` when given, else the state directory.
    pub fn new(state_dir: &Path, database: Option<&str>) -> Self {
        match database {
            Some(url) => StoreLocation::Postgres(url.to_string()),
            None => StoreLocation::Dir(state_dir.to_path_buf()),
        }
    }

    /// Where it is, for messages (a URL without its password).
    pub fn describe(&self) -> String {
        match self {
            StoreLocation::Dir(d) => d.display().to_string(),
            StoreLocation::Postgres(url) => redact_url(url),
        }
    }
}

/// A connection to the run database (SQLite or PostgreSQL).
///
/// `Send` but not `Sync`: share it behind a mutex.
pub struct Db {
    engine: Engine,
    /// How many [`Db::transaction`] calls are open (nested ones just run).
    depth: Cell<u32>,
    /// A statement failed inside the open transaction: PostgreSQL has
    /// aborted it, so it must not be reported as committed.
    failed: Cell<bool>,
}

enum Engine {
    Sqlite(Connection),
    Postgres(Box<pg::Pg>),
}

/// The advisory lock key every writing transaction takes on PostgreSQL,
/// so that writers queue up as SQLite's `BEGIN IMMEDIATE` makes them.
const WRITER_LOCK: i64 = 0x7069_7065_6c69_6e65; // "pipeline"

impl Db {
    /// The SQLite database at `path` (made when missing), in WAL mode.
    pub fn sqlite(path: &Path) -> Result<Db> {
        let conn = Connection::open(path).with_context(|| format!("opening {}", path.display()))?;
        conn.busy_timeout(Duration::from_secs(10))?;
        // WAL with synchronous=NORMAL: a commit survives the process
        // dying (the server's queue relies on that); only a power cut can
        // lose the last commits. FULL would fsync every live update.
        conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;")
            .with_context(|| format!("opening {}", path.display()))?;
        Ok(Self::with(Engine::Sqlite(conn)))
    }

    /// A private in-memory SQLite database (tests).
    pub fn sqlite_memory() -> Result<Db> {
        Ok(Self::with(Engine::Sqlite(Connection::open_in_memory()?)))
    }

    /// The PostgreSQL database at `url` (`postgres://user@host:port/db`;
    /// `?options=-c%20search_path%3Dname` picks a schema). The connection
    /// is made again by the next call after it was lost.
    pub fn postgres(url: &str) -> Result<Db> {
        Ok(Self::with(Engine::Postgres(Box::new(pg::Pg::connect(
            url,
        )?))))
    }

    /// The database at `loc`: `<dir>/runs.db` (the directory is made) or
    /// PostgreSQL.
    pub fn open(loc: &StoreLocation) -> Result<Db> {
        match loc {
            StoreLocation::Dir(dir) => {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating state directory {}", dir.display()))?;
                Db::sqlite(&dir.join("runs.db"))
            }
            StoreLocation::Postgres(url) => Db::postgres(url),
        }
    }

    fn with(engine: Engine) -> Db {
        Db {
            engine,
            depth: Cell::new(0),
            failed: Cell::new(false),
        }
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self.engine, Engine::Postgres(_))
    }

    /// Run one statement; the number of rows it changed.
    pub fn execute(&self, sql: &str, params: &[Value]) -> Result<u64> {
        let r = match &self.engine {
            Engine::Sqlite(c) => sqlite_execute(c, sql, params),
            Engine::Postgres(p) => p.execute(sql, params, self.in_transaction()),
        };
        self.note(r)
    }

    /// The rows a query returns.
    pub fn query(&self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        let r = match &self.engine {
            Engine::Sqlite(c) => sqlite_query(c, sql, params),
            Engine::Postgres(p) => p.query(sql, params, self.in_transaction()),
        };
        self.note(r)
    }

    /// The first row a query returns, if any.
    pub fn query_opt(&self, sql: &str, params: &[Value]) -> Result<Option<Row>> {
        Ok(self.query(sql, params)?.into_iter().next())
    }

    /// Several statements without parameters (table definitions).
    pub fn batch(&self, sql: &str) -> Result<()> {
        let r = match &self.engine {
            Engine::Sqlite(c) => c
                .execute_batch(sql)
                .with_context(|| format!("SQLite: {}", first_words(sql))),
            Engine::Postgres(p) => p.batch(sql, self.in_transaction()),
        };
        self.note(r)
    }

    /// Whether table `name` exists (in the schema in use).
    pub fn has_table(&self, name: &str) -> Result<bool> {
        let sql = if self.is_postgres() {
            "SELECT COUNT(*) FROM information_schema.tables
             WHERE table_schema = current_schema() AND table_name = ?1"
        } else {
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?1"
        };
        let row = self.query_opt(sql, &[name.into()])?;
        Ok(row.map(|r| r.get_i64(0)).transpose()?.unwrap_or(0) > 0)
    }

    /// Run `f` in a transaction: committed when it returns `Ok`, rolled
    /// back on `Err`. One writing transaction at a time across processes
    /// (SQLite: `BEGIN IMMEDIATE`; PostgreSQL: an advisory lock held until
    /// the end), so read-then-write inside `f` sees no other writer. A
    /// call inside `f` just runs its closure in the same transaction.
    pub fn transaction<T>(&self, f: impl FnOnce(&Db) -> Result<T>) -> Result<T> {
        if self.in_transaction() {
            return f(self);
        }
        match &self.engine {
            Engine::Sqlite(c) => c
                .execute_batch("BEGIN IMMEDIATE")
                .context("SQLite: BEGIN")?,
            Engine::Postgres(p) => p.begin(WRITER_LOCK)?,
        }
        self.depth.set(1);
        self.failed.set(false);
        let result = f(self);
        self.depth.set(0);
        let failed = self.failed.replace(false);
        match result {
            Ok(v) if !failed => {
                self.end(true)?;
                Ok(v)
            }
            Ok(_) => {
                let _ = self.end(false);
                anyhow::bail!("the transaction was rolled back: a statement in it failed")
            }
            Err(e) => {
                let _ = self.end(false);
                Err(e)
            }
        }
    }

    fn end(&self, commit: bool) -> Result<()> {
        let sql = if commit { "COMMIT" } else { "ROLLBACK" };
        match &self.engine {
            Engine::Sqlite(c) => {
                let r = c.execute_batch(sql);
                if r.is_err() && commit {
                    let _ = c.execute_batch("ROLLBACK");
                }
                r.with_context(|| format!("SQLite: {sql}"))
            }
            Engine::Postgres(p) => p.batch(sql, true),
        }
    }

    fn in_transaction(&self) -> bool {
        self.depth.get() > 0
    }

    /// Remember a failure inside a transaction (see `failed`).
    fn note<T>(&self, r: Result<T>) -> Result<T> {
        if r.is_err() && self.in_transaction() && self.is_postgres() {
            self.failed.set(true);
        }
        r
    }
}

/// `params![a, b, c]`: the values of a statement's `?1, ?2, ?3`.
#[macro_export]
macro_rules! params {
    () => {
        [] as [$crate::store::Value; 0]
    };
    ($($x:expr),+ $(,)?) => {
        [$($crate::store::ToValue::to_value(&$x)),+]
    };
}
pub use crate::params;

/// The statement's first words, to say which one failed.
pub(crate) fn first_words(sql: &str) -> String {
    let words: Vec<&str> = sql.split_whitespace().take(4).collect();
    words.join(" ")
}

fn sqlite_execute(c: &Connection, sql: &str, params: &[Value]) -> Result<u64> {
    let run = || -> rusqlite::Result<usize> {
        c.prepare_cached(sql)?
            .execute(rusqlite::params_from_iter(params.iter()))
    };
    let n = run().with_context(|| format!("SQLite: {}", first_words(sql)))?;
    Ok(n as u64)
}

fn sqlite_query(c: &Connection, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
    let run = || -> rusqlite::Result<Vec<Row>> {
        let mut stmt = c.prepare_cached(sql)?;
        let width = stmt.column_count();
        let mut rows = stmt.query(rusqlite::params_from_iter(params.iter()))?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let mut values = Vec::with_capacity(width);
            for i in 0..width {
                values.push(Value::from_sqlite(r.get_ref(i)?));
            }
            out.push(Row::new(values));
        }
        Ok(out)
    };
    run().with_context(|| format!("SQLite: {}", first_words(sql)))
}
