use super::*;
use crate::serve::web::pictures::testing::parse;

fn run(n: u64, status: Status, ms: u64) -> RunSummary {
    RunSummary {
        id: format!("r{n}"),
        pipeline: "app".into(),
        build_number: n,
        status,
        branch: Some("main".into()),
        tag: None,
        commit_sha: String::new(),
        event: "push".into(),
        environment: None,
        deployment: None,
        started_at: String::new(),
        started_unix_ms: n as i64,
        duration_ms: ms,
        reason: None,
        repository: None,
    }
}

#[test]
fn bars_are_durations_coloured_by_status_oldest_left() {
    // Newest first, as the store lists them.
    let runs = vec![
        run(3, Status::Running, 0),
        run(2, Status::Failure, 5_000),
        run(1, Status::Success, 10_000),
    ];
    let doc = parse(&history("app", &runs));
    let bar = |id: &str| doc.by("rect", "data-run", id);
    assert!(bar("r1").num("x") < bar("r2").num("x") && bar("r2").num("x") < bar("r3").num("x"));
    assert!((bar("r1").num("height") - PLOT_H).abs() < 0.1);
    assert!((bar("r2").num("height") - PLOT_H / 2.0).abs() < 0.1);
    assert_eq!(bar("r1").attr("fill"), Some("#1a7f37"));
    assert_eq!(bar("r2").attr("fill"), Some("#cf222e"));
    assert_eq!(bar("r3").attr("fill"), Some("#0969da"));
    let links: Vec<_> = doc
        .elements("a")
        .iter()
        .filter_map(|a| a.attr("href"))
        .map(String::from)
        .collect();
    assert_eq!(links, vec!["/runs/r1", "/runs/r2", "/runs/r3"]);
    assert_eq!(
        doc.root.find(|e| e.attr("class") == Some("rate"))[0].text,
        "50% ok"
    );
}

#[test]
fn the_success_rate_looks_back_over_the_window() {
    let mut runs: Vec<RunSummary> = (0..WINDOW as u64)
        .map(|n| run(n, Status::Failure, 1))
        .collect();
    runs.extend((0..WINDOW as u64).map(|n| run(100 + n, Status::Success, 1)));
    runs.push(run(200, Status::Cancelled, 1));
    let refs: Vec<&RunSummary> = runs.iter().collect();
    let rates = success_rates(&refs);
    assert_eq!(rates[0], Some(0.0));
    assert_eq!(rates[WINDOW + 4], Some(0.5));
    assert_eq!(rates[2 * WINDOW - 1], Some(1.0));
    assert_eq!(rates[2 * WINDOW], Some(1.0));
    assert_eq!(success_rates(&[&run(1, Status::Cancelled, 1)]), vec![None]);
}

#[test]
fn at_most_max_runs_are_drawn_and_empty_says_so() {
    let runs: Vec<RunSummary> = (0..MAX_RUNS as u64 + 7)
        .rev()
        .map(|n| run(n, Status::Success, 1))
        .collect();
    let doc = parse(&history("a\"b&c", &runs));
    assert_eq!(
        doc.root.find(|e| e.attr("class") == Some("run")).len(),
        MAX_RUNS
    );
    assert!(doc.root.find(|e| e.attr("class") == Some("caption"))[0]
        .text
        .contains("only the last 100"));
    assert_eq!(
        doc.root.attr("aria-label"),
        Some("Duration and success rate of the last runs of a\"b&c")
    );
    let doc = parse(&history("app", &[]));
    assert_eq!(doc.elements("text")[0].text, "No run recorded yet.");
}
