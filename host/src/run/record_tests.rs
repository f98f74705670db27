use super::*;

fn run(id: &str, pipeline: &str, n: u64, started_at: &str) -> RunRecord {
    RunRecord {
        id: id.into(),
        pipeline: pipeline.into(),
        file: "pipeline.toml".into(),
        build_number: n,
        commit_sha: "abc123".into(),
        branch: Some("main".into()),
        tag: None,
        event: "push".into(),
        environment: None,
        status: Status::Running,
        started_at: started_at.into(),
        duration_ms: 0,
        reason: None,
        trigger: None,
        stages: vec![StageRecord::pending("build", "build.wasm")],
        attempts: Vec::new(),
    }
}

fn line(text: &str) -> LogLine {
    LogLine {
        at_ms: 1,
        stream: "stdout".into(),
        text: text.into(),
    }
}

fn ids(s: &[RunSummary]) -> Vec<&str> {
    s.iter().map(|r| r.id.as_str()).collect()
}

fn records_are_saved_listed_and_filtered(db: Db) {
    let store = RunStore::with_db(db).unwrap();
    assert_eq!(store.next_build_number("app").unwrap(), 1);
    let t = "2024-05-01T10:00:00Z";
    store.save(&run("a", "app", 1, t)).unwrap();
    // Same start: the one saved later comes first.
    store.save(&run("b", "app", 2, t)).unwrap();
    let mut c = run("c", "other", 1, "2024-05-01T09:00:00Z");
    c.branch = None;
    c.status = Status::Success;
    store.save(&c).unwrap();
    assert_eq!(store.next_build_number("app").unwrap(), 3);
    // An update keeps the run's place.
    let mut a = run("a", "app", 1, t);
    a.status = Status::Failure;
    a.reason = Some("it broke".into());
    store.save(&a).unwrap();
    let all = store.summaries(&RunFilter::default(), 10).unwrap();
    assert_eq!(ids(&all), ["b", "a", "c"]);
    assert_eq!(all[1].status, Status::Failure);
    assert_eq!(all[1].reason.as_deref(), Some("it broke"));
    assert_eq!(all[2].branch, None);
    let filter = |pipeline: Option<&str>, branch: Option<&str>, status| RunFilter {
        pipeline: pipeline.map(Into::into),
        branch: branch.map(Into::into),
        status,
    };
    let by = |f: RunFilter| store.summaries(&f, 10).unwrap();
    assert_eq!(ids(&by(filter(Some("app"), None, None))), ["b", "a"]);
    assert_eq!(ids(&by(filter(None, Some("main"), None))), ["b", "a"]);
    assert_eq!(ids(&by(filter(None, None, Some(Status::Success)))), ["c"]);
    assert!(by(filter(Some("app"), None, Some(Status::Success))).is_empty());
    assert_eq!(
        ids(&store.summaries(&RunFilter::default(), 1).unwrap()),
        ["b"]
    );
    let listed: Vec<String> = store.list(10).unwrap().into_iter().map(|r| r.id).collect();
    assert_eq!(listed, ["b", "a", "c"]);
    assert_eq!(store.status("c").unwrap(), Some(Status::Success));
    assert_eq!(store.status("zz").unwrap(), None);
    assert!(store.get("zz").unwrap().is_none());
}

fn live_logs_are_kept_in_order_and_follow_from_a_position(db: Db) {
    let store = RunStore::with_db(db).unwrap();
    let mut r = run("r", "app", 1, "2024-05-01T10:00:00Z");
    r.stages.push(StageRecord::pending("test", "test.wasm"));
    store.save(&r).unwrap();
    let batch = |lines: &[(&str, &str)]| -> Vec<(String, LogLine)> {
        lines
            .iter()
            .map(|(s, t)| (s.to_string(), line(t)))
            .collect()
    };
    store
        .append_logs("r", &batch(&[("build", "one"), ("build", "two")]))
        .unwrap();
    store
        .append_logs("r", &batch(&[("test", "three")]))
        .unwrap();
    let all = store.logs("r", None, 0, usize::MAX).unwrap();
    let texts: Vec<&str> = all.iter().map(|l| l.line.text.as_str()).collect();
    assert_eq!(texts, ["one", "two", "three"]);
    // From a position: only what came after it.
    let after = store.logs("r", None, all[0].seq, usize::MAX).unwrap();
    assert_eq!(after.len(), 2);
    assert_eq!(after[0].line.text, "two");
    assert_eq!(store.logs("r", Some("test"), 0, 10).unwrap().len(), 1);
    assert_eq!(store.logs("r", None, 0, 1).unwrap().len(), 1);
    // Many batches, read a few at a time.
    for i in 0..40 {
        store
            .append_logs("r", &batch(&[("build", &format!("l{i}"))]))
            .unwrap();
    }
    assert_eq!(store.logs("r", None, 0, usize::MAX).unwrap().len(), 43);
    assert_eq!(store.logs("r", Some("build"), 0, 30).unwrap().len(), 30);
    // `get` puts the log back into the stages.
    let got = store.get("r").unwrap().unwrap();
    assert_eq!(got.stage("build").unwrap().log.len(), 42);
    assert_eq!(got.stage("test").unwrap().log.len(), 1);
    // A record saved with logs keeps them out of the record.
    let mut with_log = got.clone();
    with_log.stages[0].log.push(line("inline"));
    store.save(&with_log).unwrap();
    assert_eq!(store.get("r").unwrap().unwrap().stages[0].log.len(), 42);
    store.clear_logs("r").unwrap();
    assert!(store.logs("r", None, 0, 10).unwrap().is_empty());
}

fn a_batch_is_one_transaction(db: Db) {
    let store = RunStore::with_db(db).unwrap();
    let r = run("r", "app", 1, "2024-05-01T10:00:00Z");
    let e = store
        .db()
        .transaction(|_| -> Result<()> {
            store.save(&r)?;
            store.append_logs("r", &[("build".into(), line("x"))])?;
            anyhow::bail!("stop")
        })
        .unwrap_err();
    assert_eq!(e.to_string(), "stop");
    assert!(store.get("r").unwrap().is_none());
    assert!(store.logs("r", None, 0, 10).unwrap().is_empty());
}

crate::both_engines!(
    owned: records_are_saved_listed_and_filtered,
    live_logs_are_kept_in_order_and_follow_from_a_position,
    a_batch_is_one_transaction,
);

/// A `runs.db` from before the summary columns (and `ord`): opened, its
/// runs get their columns and keep their order.
#[test]
fn an_old_sqlite_database_is_migrated() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::sqlite(&dir.path().join("runs.db")).unwrap();
    db.batch(SQLITE_TABLES).unwrap();
    let t = "2024-05-01T10:00:00Z";
    for id in ["first", "second"] {
        let r = run(id, "app", 1, t);
        db.execute(
            "INSERT INTO runs (id, pipeline, build_number, status, started_at, duration_ms, record)
             VALUES (?1, 'app', 1, 'running', ?2, 0, ?3)",
            &params![id, t, serde_json::to_string(&r).unwrap()],
        )
        .unwrap();
    }
    drop(db);
    let store = RunStore::open(dir.path()).unwrap();
    let all = store.summaries(&RunFilter::default(), 10).unwrap();
    assert_eq!(ids(&all), ["second", "first"]);
    assert_eq!(all[0].branch.as_deref(), Some("main"));
    assert!(all[0].started_unix_ms > 0);
    store.save(&run("third", "app", 2, t)).unwrap();
    let all = store.summaries(&RunFilter::default(), 10).unwrap();
    assert_eq!(ids(&all), ["third", "second", "first"]);
    drop(store);
    // Opening again changes nothing.
    let again = RunStore::open(dir.path()).unwrap();
    assert_eq!(again.summaries(&RunFilter::default(), 10).unwrap().len(), 3);
}
