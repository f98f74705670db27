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

impl PgSchema {
    /// Another connection to the schema.
    pub fn open(&self) -> Db {
        Db::postgres(&self.url).expect("connecting to the test schema")
    }
}

/// `#[test]`s running the same body on SQLite (in memory) and, when
/// `PIPELINE_TEST_POSTGRES` is set, on PostgreSQL: `both_engines!(a, b)`
/// with `fn a(db: &Db)` in the calling module makes `on_sqlite::a` and
/// `on_postgres::a`; `both_engines!(owned: a, b)` is for `fn a(db: Db)`.
#[macro_export]
#[doc(hidden)]
macro_rules! both_engines {
    (owned: $($body:ident),* $(,)?) => {
        $crate::both_engines!(@make |db| db, $($body),*);
    };
    ($($body:ident),* $(,)?) => {
        $crate::both_engines!(@make |db| &db, $($body),*);
    };
    (@make |$db:ident| $arg:expr, $($body:ident),*) => {
        mod on_sqlite {
            $(
                #[test]
                fn $body() {
                    let $db = $crate::store::Db::sqlite_memory().unwrap();
                    super::$body($arg);
                }
            )*
        }
        mod on_postgres {
            $(
                #[test]
                fn $body() {
                    if let Some(schema) = $crate::store::testing::PgSchema::new(stringify!($body)) {
                        let $db = schema.open();
                        super::$body($arg);
                    }
                }
            )*
        }
    };
}
