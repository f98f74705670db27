use super::*;
use crate::run::Status;
use crate::serve::web::pictures::testing::parse;

fn stage(name: &str, start: &str, ms: u64, status: Status) -> StageRecord {
    let mut s = StageRecord::pending(name, "p");
    s.started_at = (!start.is_empty()).then(|| start.to_string());
    s.duration_ms = ms;
    s.status = status;
    s
}

#[test]
fn bars_follow_the_times() {
    let stages = vec![
        stage("build", "2024-01-01T00:00:00Z", 10_000, Status::Success),
        stage("lint", "2024-01-01T00:00:00Z", 4_000, Status::Success),
        stage("test", "2024-01-01T00:00:10Z", 30_000, Status::Failure),
        stage("deploy", "", 0, Status::Skipped),
    ];
    let doc = parse(&timeline(&stages, 0));
    // 40 s in all over PLOT_W.
    let px = PLOT_W / 40_000.0;
    for (name, start, ms) in [
        ("build", 0.0, 10_000.0),
        ("lint", 0.0, 4_000.0),
        ("test", 10_000.0, 30_000.0),
    ] {
        let bar = doc.by("rect", "data-stage", name);
        assert!(
            (bar.num("x") - (LABEL_W + start * px)).abs() < 0.1,
            "{name} x"
        );
        assert!((bar.num("width") - ms * px).abs() < 0.1, "{name} width");
    }
    // build and lint ran side by side: same start, different rows.
    assert_eq!(
        doc.by("rect", "data-stage", "build").num("x"),
        doc.by("rect", "data-stage", "lint").num("x")
    );
    assert_ne!(
        doc.by("rect", "data-stage", "build").num("y"),
        doc.by("rect", "data-stage", "lint").num("y")
    );
    let longest = doc.root.find(|e| e.attr("class") == Some("bar longest"));
    assert_eq!(longest.len(), 1);
    assert_eq!(longest[0].attr("data-stage"), Some("test"));
    assert_eq!(
        doc.by("rect", "data-stage", "test").attr("fill"),
        Some("#cf222e")
    );
    assert!(doc
        .root
        .find(|e| e.name == "rect" && e.attr("data-stage") == Some("deploy"))
        .is_empty());
    assert!(doc.root.find(|e| e.attr("class") == Some("cut"))[0]
        .text
        .contains("1 stage did not start"));
    let ticks: Vec<_> = doc
        .root
        .find(|e| e.attr("class") == Some("tick"))
        .iter()
        .map(|e| e.text.clone())
        .collect();
    assert_eq!(ticks.first().map(String::as_str), Some("+0ms"));
    assert_eq!(ticks.len(), 5);
}

#[test]
fn a_running_stage_reaches_now() {
    let stages = vec![
        stage("done", "2024-01-01T00:00:00Z", 1_000, Status::Success),
        stage("going", "2024-01-01T00:00:01Z", 0, Status::Running),
    ];
    let start = crate::run::record::parse_unix_ms("2024-01-01T00:00:00Z").unwrap();
    let doc = parse(&timeline(&stages, start + 4_000));
    let going = doc.by("rect", "data-stage", "going");
    assert!((going.num("width") - 0.75 * PLOT_W).abs() < 0.1);
}

#[test]
fn hostile_names_and_empty_input() {
    let name = "<script>alert(1)</script>";
    let doc = parse(&timeline(
        &[stage(name, "2024-01-01T00:00:00Z", 5, Status::Success)],
        0,
    ));
    assert!(doc.elements("script").is_empty());
    assert_eq!(
        doc.by("rect", "data-stage", name).attr("data-stage"),
        Some(name)
    );
    assert!(!doc
        .root
        .find(|e| e.name == "title" && e.text == name)
        .is_empty());
    assert!(!doc
        .root
        .find(|e| e.name == "text" && e.text == clip(name, 24))
        .is_empty());
    let doc = parse(&timeline(&[stage("x", "", 0, Status::Cancelled)], 0));
    assert_eq!(
        doc.elements("text")[0].text,
        "No stage started: nothing to draw."
    );
}
