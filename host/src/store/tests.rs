use super::pg::rewrite_placeholders;
use super::testing::PgSchema;
use super::*;

fn table(db: &Db) {
    let int = if db.is_postgres() {
        "BIGINT"
    } else {
        "INTEGER"
    };
    db.batch(&format!(
        "CREATE TABLE t (id TEXT PRIMARY KEY, n {int}, s TEXT);"
    ))
    .unwrap();
}

fn count(db: &Db) -> i64 {
    db.query_opt("SELECT COUNT(*) FROM t", &[])
        .unwrap()
        .unwrap()
        .get_i64(0)
        .unwrap()
}

fn values_and_nulls(db: &Db) {
    table(db);
    let none: Option<String> = None;
    let changed = db
        .execute(
            "INSERT INTO t (id, n, s) VALUES (?1, ?2, ?3)",
            &params!["a", 7u64, none],
        )
        .unwrap();
    assert_eq!(changed, 1);
    db.execute(
        "INSERT INTO t (id, n, s) VALUES (?1, ?2, ?3)",
        &params!["b", Option::<i64>::None, Some("it's ?1")],
    )
    .unwrap();
    let row = db
        .query_opt("SELECT id, n, s FROM t WHERE id = ?1", &params!["a"])
        .unwrap()
        .unwrap();
    assert_eq!(row.get_str(0).unwrap(), "a");
    assert_eq!(row.get_i64(1).unwrap(), 7);
    assert_eq!(row.opt_str(2).unwrap(), None);
    assert!(row.get_str(2).is_err());
    assert!(row.opt_i64(0).is_err(), "text is not an integer");
    // A NULL filter matches everything; the same parameter compares.
    let filter = "SELECT id FROM t WHERE (CAST(?1 AS TEXT) IS NULL OR s = ?1) ORDER BY id";
    let all = db.query(filter, &[Value::Null]).unwrap();
    assert_eq!(all.len(), 2);
    let b = db.query(filter, &params!["it's ?1"]).unwrap();
    assert_eq!(b, vec![Row::new(vec![Value::Text("b".into())])]);
    // A placeholder-looking literal is left alone.
    let lit = db
        .query_opt("SELECT '?1 and ''?2''', CAST(?1 AS TEXT)", &params!["x"])
        .unwrap()
        .unwrap();
    assert_eq!(lit.get_str(0).unwrap(), "?1 and '?2'");
    assert_eq!(lit.get_str(1).unwrap(), "x");
    assert!(db
        .query_opt("SELECT id FROM t WHERE id = ?1", &params!["zz"])
        .unwrap()
        .is_none());
    assert!(db.has_table("t").unwrap());
    assert!(!db.has_table("nope").unwrap());
    // Shared upsert.
    db.execute(
        "INSERT INTO t (id, n) VALUES (?1, ?2) ON CONFLICT (id) DO UPDATE SET n = excluded.n",
        &params!["a", 8],
    )
    .unwrap();
    let n = db
        .query_opt("SELECT n FROM t WHERE id = 'a'", &[])
        .unwrap()
        .unwrap();
    assert_eq!(n.get_i64(0).unwrap(), 8);
}

fn transactions_commit_or_roll_back(db: &Db) {
    table(db);
    let ins = |db: &Db, id: &str| {
        db.execute("INSERT INTO t (id) VALUES (?1)", &params![id])
            .map(|_| ())
    };
    db.transaction(|tx| ins(tx, "kept")).unwrap();
    let e = db
        .transaction(|tx| -> Result<()> {
            ins(tx, "gone")?;
            // Nested: part of the same transaction.
            tx.transaction(|tx| ins(tx, "gone too"))?;
            anyhow::bail!("changed my mind")
        })
        .unwrap_err();
    assert_eq!(e.to_string(), "changed my mind");
    assert_eq!(count(db), 1);
    // A failed statement fails the transaction, even if `f` goes on.
    let r = db.transaction(|tx| {
        let _ = ins(tx, "kept"); // duplicate key
        ins(tx, "after").ok();
        Ok(())
    });
    if db.is_postgres() {
        assert!(r.is_err());
        assert_eq!(count(db), 1);
    } else {
        r.unwrap();
        assert_eq!(count(db), 2);
    }
    // The connection is usable afterwards.
    ins(db, "later").unwrap();
}

fn errors_say_which_statement(db: &Db) {
    let e = db.query("SELECT nothing FROM nowhere", &[]).unwrap_err();
    let text = format!("{e:#}");
    assert!(text.contains("SELECT nothing FROM nowhere"), "{text}");
}

crate::both_engines! {
    values_and_nulls,
    transactions_commit_or_roll_back,
    errors_say_which_statement,
}

#[test]
fn placeholders_are_rewritten_outside_literals() {
    assert_eq!(
        rewrite_placeholders("SELECT ?1, '?2', \"?3\", ?12 -- ?4\n, ?5 /* ?6 */ ?7"),
        "SELECT $1, '?2', \"?3\", $12 -- ?4\n, $5 /* ?6 */ $7"
    );
    assert_eq!(
        rewrite_placeholders("a = 'it''s ?1' AND ?2"),
        "a = 'it''s ?1' AND $2"
    );
    assert_eq!(rewrite_placeholders("j ? 'k'"), "j ? 'k'");
}

#[test]
fn passwords_are_not_shown() {
    assert_eq!(
        redact_url("postgres://ci:s3cret@db:5432/pipeline?sslmode=disable"),
        "postgres://ci:***@db:5432/pipeline?sslmode=disable"
    );
    assert_eq!(
        redact_url("host=db user=ci password=s3cret dbname=x"),
        "host=db user=ci password=*** dbname=x"
    );
    let e = Db::postgres("postgres://ci:s3cret@127.0.0.1:1/x")
        .err()
        .unwrap();
    let text = format!("{e:#}");
    assert!(!text.contains("s3cret"), "{text}");
    assert!(text.contains("127.0.0.1:1"), "{text}");
}

#[test]
fn postgres_reconnects_after_the_connection_is_killed() {
    let Some(db) = PgSchema::new("postgres_reconnects_after_the_connection_is_killed") else {
        return;
    };
    table(&db);
    let pid = db
        .query_opt("SELECT pg_backend_pid()", &[])
        .unwrap()
        .unwrap()
        .opt_i64(0)
        .unwrap()
        .unwrap();
    let other = Db::postgres(&db.url).unwrap();
    let killed = other
        .query_opt(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = ?1",
            &params![pid],
        )
        .unwrap()
        .unwrap();
    assert_eq!(killed.get_i64(0).unwrap(), 1, "terminated");
    // The next call on the first connection just works.
    db.execute("INSERT INTO t (id) VALUES (?1)", &params!["after"])
        .unwrap();
    assert_eq!(count(&db), 1);
    let new_pid = db
        .query_opt("SELECT pg_backend_pid()", &[])
        .unwrap()
        .unwrap();
    assert_ne!(new_pid.opt_i64(0).unwrap(), Some(pid));
}

/// A second writer waits for the first one's commit, then sees its rows.
fn writers_take_turns(first: &Db, open_second: impl FnOnce() -> Db + Send + 'static) {
    table(first);
    first
        .transaction(|tx| {
            let second = std::thread::spawn(move || {
                let db = open_second();
                db.transaction(|tx| {
                    let seen = count(tx);
                    tx.execute("INSERT INTO t (id) VALUES ('second')", &[])?;
                    Ok(seen)
                })
            });
            std::thread::sleep(std::time::Duration::from_millis(300));
            tx.execute("INSERT INTO t (id) VALUES ('first')", &[])?;
            Ok(second)
        })
        .map(|second| assert_eq!(second.join().unwrap().unwrap(), 1))
        .unwrap();
    assert_eq!(count(first), 2);
}

#[test]
fn writers_take_turns_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("runs.db");
    let db = Db::sqlite(&path).unwrap();
    writers_take_turns(&db, move || Db::sqlite(&path).unwrap());
}

#[test]
fn writers_take_turns_on_postgres() {
    let Some(db) = PgSchema::new("writers_take_turns_on_postgres") else {
        return;
    };
    let url = db.url.clone();
    writers_take_turns(&db, move || Db::postgres(&url).unwrap());
}

#[test]
fn a_db_can_move_to_another_thread() {
    fn send<T: Send>() {}
    send::<Db>();
}
