use super::*;
use crate::run::Status;
use crate::serve::web::pictures::testing::parse;

const DAY: i64 = 24 * 3600 * 1000;
const NOW: i64 = 1_000 * DAY;

/// A deploy to prod that started at `start` (ms) and took `dur` ms.
fn run(id: &str, status: Status, deployment: Option<Status>, start: i64, dur: u64) -> RunSummary {
    RunSummary {
        id: id.into(),
        pipeline: "app".into(),
        build_number: 1,
        status,
        branch: Some("main".into()),
        tag: None,
        commit_sha: String::new(),
        event: "push".into(),
        environment: Some("prod".into()),
        deployment,
        started_at: String::new(),
        started_unix_ms: start,
        duration_ms: dur,
        reason: None,
        repository: None,
    }
}

#[test]
fn a_failed_deployment_then_a_recovery_lands_in_its_week() {
    // Four weeks, ending NOW. Week 0: one good deploy. Week 2: a good one,
    // a failed one, then (an hour after it ended) a rollback that recovers.
    // Week 3: a failure whose recovery comes the next week (not drawn).
    let w = |k: i64| NOW - (4 - k) * WEEK_MS;
    let mut rollback = run(
        "r",
        Status::Success,
        Some(Status::Success),
        w(2) + 3 * DAY + 3_600_000 - 10_000,
        10_000,
    );
    rollback.event = "rollback".into();
    let runs = vec![
        run(
            "a",
            Status::Success,
            Some(Status::Success),
            w(0) + DAY,
            60_000,
        ),
        run(
            "old-fail",
            Status::Failure,
            Some(Status::Failure),
            w(0) - DAY,
            1_000,
        ),
        run(
            "old-fix",
            Status::Success,
            Some(Status::Success),
            w(0) + 2 * DAY,
            1_000,
        ),
        run(
            "b",
            Status::Success,
            Some(Status::Success),
            w(2) + DAY,
            30_000,
        ),
        run(
            "c",
            Status::Failure,
            Some(Status::Failure),
            w(2) + 3 * DAY - 5_000,
            5_000,
        ),
        rollback,
        run(
            "d",
            Status::Failure,
            Some(Status::Success),
            w(3) + DAY,
            1_000,
        ),
        run("building", Status::Running, None, w(3) + 2 * DAY, 0),
        run("not-a-deploy", Status::Success, None, w(3) + 2 * DAY, 1_000),
    ];
    // b's commit was made ten minutes before its run started.
    let commits = BTreeMap::from([("b".to_string(), w(2) + DAY - 600_000)]);
    let weeks = weekly(&runs, &commits, NOW, 4);
    assert_eq!(weeks.len(), 4);
    assert_eq!(weeks[0].start_ms, w(0));
    assert_eq!(
        weeks.iter().map(|w| w.deployments).collect::<Vec<_>>(),
        vec![2, 0, 1, 0]
    );
    assert_eq!(
        weeks.iter().map(|w| w.failed).collect::<Vec<_>>(),
        vec![0, 0, 1, 1]
    );
    assert_eq!(weeks[2].change_failure_rate(), Some(0.5));
    assert_eq!(weeks[3].change_failure_rate(), Some(1.0));
    assert_eq!(weeks[1].change_failure_rate(), None);
    // The failure before the first week recovers in week 0.
    assert_eq!(weeks[0].recoveries.len(), 1);
    assert_eq!(weeks[2].recoveries, vec![3600.0]);
    assert_eq!(weeks[2].mean_restore(), Some(3600.0));
    assert!(weeks[3].recoveries.is_empty());
    // b: 10 min before its start plus 30 s; a and old-fix from their start.
    assert_eq!(weeks[2].lead_times, vec![630.0]);
    assert_eq!(weeks[2].lead_from_start, 0);
    assert_eq!(
        (weeks[0].lead_from_start, weeks[0].median_lead()),
        (2, Some(60.0))
    );

    let doc = parse(&dora("app", &weeks));
    let value = |fig: &str, week: &str| {
        doc.root.find(|e| {
            e.name == "text"
                && e.attr("data-figure") == Some(fig)
                && e.attr("data-week") == Some(week)
        })[0]
            .text
            .clone()
    };
    assert_eq!(value("deployments", "0"), "2");
    assert_eq!(value("change-failure-rate", "2"), "50%");
    assert_eq!(value("change-failure-rate", "1"), "–");
    assert_eq!(value("time-to-restore", "2"), "60m00s");
    assert_eq!(value("lead-time", "2"), "10m30s");
    let caption: Vec<_> = doc
        .root
        .find(|e| e.attr("class") == Some("caption"))
        .iter()
        .map(|e| e.text.clone())
        .collect();
    assert!(
        caption
            .join(" ")
            .contains("2 deployments had no commit time"),
        "{caption:?}"
    );
}

#[test]
fn no_deployments_say_so_and_names_are_escaped() {
    let weeks = weekly(&[], &BTreeMap::new(), NOW, 8);
    assert_eq!(weeks.len(), 8);
    let doc = parse(&dora("<script>x</script>", &weeks));
    assert!(doc.elements("script").is_empty());
    assert_eq!(
        doc.elements("title")[0].text,
        "DORA figures of <script>x</script> by week"
    );
    assert_eq!(
        doc.elements("text")[0].text,
        "No deployment in these weeks: nothing to draw."
    );
}
