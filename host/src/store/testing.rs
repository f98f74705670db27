//! Test support: the same test body on SQLite and on PostgreSQL.
//!
//! PostgreSQL tests run when `PIPELINE_TEST_POSTGRES` holds a server's URL
//! (CI sets it); each gets a fresh schema of its own, dropped afterwards,
//! so they can run in parallel.
use std::ops::Deref;

use super::Db;

/// The environment variable naming the test server.
pub const PG_ENV: &str = "PIPELINE_TEST_POSTGRES";

/// A database in a schema of its own, dropped with it.
pub struct PgSchema {
    db: Option<Db>,
    admin: Db,
    pub name: String,
    /// The URL that selects the schema.
    pub url: String,
}

impl PgSchema {
    /// A fresh schema on the test server, or `None` (with a line saying the
    /// test was skipped) when `PIPELINE_TEST_POSTGRES` is not set.
    pub fn new(test: &str) -> Option<PgSchema> {
        let Some(base) = std::env::var(PG_ENV).ok().filter(|u| !u.is_empty()) else {
            eprintln!("{test}: skipped on PostgreSQL ({PG_ENV} is not set)");
            return None;
        };
        let admin = Db::postgres(&base).expect("connecting to the test PostgreSQL");
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        admin
            .batch(&format!("CREATE SCHEMA {name}"))
            .expect("creating a test schema");
        let url = with_schema(&base, &name);
        let db = Db::postgres(&url).expect("connecting to the test schema");
        Some(PgSchema {
            db: Some(db),
            admin,
            name,
            url,
        })
    }
}

/// `base` with `options=-c search_path=<schema>` added.
pub fn with_schema(base: &str, schema: &str) -> String {
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}options=-c%20search_path%3D{schema}")
}

impl Deref for PgSchema {
    type Target = Db;
    fn deref(&self) -> &Db {
        self.db.as_ref().expect("open until dropped")
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        // Close our connection first: it may hold locks in the schema.
        self.db.take();
        let _ = self
            .admin
            .batch(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name));
    }
}

/// Run `body` on a fresh PostgreSQL schema (skipped without a server).
pub fn on_postgres(test: &str, body: impl FnOnce(&Db)) {
    if let Some(db) = PgSchema::new(test) {
        body(&db);
    }
}

/// `#[test]`s running the same body on SQLite (in memory) and, when
/// `PIPELINE_TEST_POSTGRES` is set, on PostgreSQL: `both_engines!(a, b)`
/// with `fn a(db: &Db)` in the calling module makes `on_sqlite::a` and
/// `on_postgres::a`.
#[macro_export]
#[doc(hidden)]
macro_rules! both_engines {
    ($($body:ident),* $(,)?) => {
        mod on_sqlite {
            $(
                #[test]
                fn $body() {
                    let db = $crate::store::Db::sqlite_memory().unwrap();
                    super::$body(&db);
                }
            )*
        }
        mod on_postgres {
            $(
                #[test]
                fn $body() {
                    $crate::store::testing::on_postgres(stringify!($body), |db| super::$body(db));
                }
            )*
        }
    };
}
