use std::collections::BTreeSet;

use super::*;
use crate::run::Status;
use crate::serve::web::pictures::testing::parse;

fn stage(name: &str, needs: &[&str], status: Status) -> StageRecord {
    let mut s = StageRecord::pending(name, "p");
    s.needs = needs.iter().map(|n| n.to_string()).collect();
    s.status = status;
    s
}

fn corner(doc: &crate::serve::web::pictures::testing::Doc, name: &str) -> (f64, f64) {
    let g = doc.by("g", "data-stage", name);
    let t = g.attr("transform").unwrap();
    let t = t.trim_start_matches("translate(").trim_end_matches(')');
    let (x, y) = t.split_once(' ').unwrap();
    (x.parse().unwrap(), y.parse().unwrap())
}

#[test]
fn a_stage_stands_right_of_everything_it_needs() {
    // Out of order in the file on purpose: d needs c, which comes later.
    let stages = vec![
        stage("a", &[], Status::Success),
        stage("d", &["b", "c"], Status::Skipped),
        stage("b", &["a"], Status::Success),
        stage("c", &["b"], Status::Failure),
        stage("lone", &[], Status::Success),
        stage("c:rollback", &[], Status::Success),
    ];
    let doc = parse(&stage_graph(&stages, &BTreeSet::new()));
    for s in &stages {
        for n in &s.needs {
            assert!(
                corner(&doc, n).0 + W <= corner(&doc, &s.name).0,
                "{} after {n}",
                s.name
            );
        }
    }
    assert!(corner(&doc, "c").0 + W <= corner(&doc, "c:rollback").0);
    // Columns by the longest path: a 0, b 1, c 2, d 3; rows in file order.
    assert_eq!(corner(&doc, "d").0, PAD + 3.0 * (W + GAP_X));
    assert_eq!(corner(&doc, "a").1, PAD);
    assert_eq!(corner(&doc, "lone"), (PAD, PAD + H + GAP_Y));
    let edges = doc
        .root
        .find(|e| e.name == "path" && e.attr("class") == Some("edge"));
    assert_eq!(edges.len(), 5);
    assert!(edges
        .iter()
        .any(|e| e.attr("data-from") == Some("c") && e.attr("data-to") == Some("d")));
}

#[test]
fn colours_follow_status_and_a_waiting_approval_is_marked() {
    let mut warned = stage("w", &[], Status::Success);
    warned.warning = true;
    let stages = vec![
        stage("ok", &[], Status::Success),
        stage("bad", &[], Status::Failure),
        stage("go", &[], Status::Running),
        stage("gate", &["ok"], Status::Pending),
        warned,
    ];
    let waiting = BTreeSet::from(["gate".to_string()]);
    let doc = parse(&stage_graph(&stages, &waiting));
    for (name, fill) in [
        ("ok", "#1a7f37"),
        ("bad", "#cf222e"),
        ("go", "#0969da"),
        ("gate", "#6e7781"),
        ("w", "#9a6700"),
    ] {
        let g = doc.by("g", "data-stage", name);
        assert_eq!(
            g.children
                .iter()
                .find(|c| c.name == "rect")
                .unwrap()
                .attr("fill"),
            Some(fill),
            "{name}"
        );
    }
    let gate = doc.by("g", "data-stage", "gate");
    assert_eq!(gate.attr("data-waiting"), Some("approval"));
    assert!(gate.find(|e| e.text == "waiting for approval").len() == 1);
    assert_eq!(doc.by("g", "data-stage", "ok").attr("data-waiting"), None);
}

#[test]
fn hostile_names_come_out_as_text() {
    for name in ["<script>alert(1)</script>", "a\"b&c", "x'</svg><svg>"] {
        let stages = vec![
            stage("a", &[], Status::Success),
            stage(name, &["a"], Status::Failure),
        ];
        let svg = stage_graph(&stages, &BTreeSet::from([name.to_string()]));
        let doc = parse(&svg);
        assert!(doc.elements("script").is_empty(), "{svg}");
        assert_eq!(doc.elements("svg").len(), 1);
        assert_eq!(doc.by("g", "data-stage", name).children[0].text, name);
        assert!(!doc
            .root
            .find(|e| e.name == "text" && e.text == clip(name, 24))
            .is_empty());
    }
}

#[test]
fn nothing_to_draw_and_too_much_to_draw_say_so() {
    let doc = parse(&stage_graph(&[], &BTreeSet::new()));
    assert_eq!(doc.elements("text")[0].text, "No stage to draw.");
    let many: Vec<StageRecord> = (0..MAX_STAGES + 5)
        .map(|i| stage(&format!("s{i}"), &[], Status::Success))
        .collect();
    let doc = parse(&stage_graph(&many, &BTreeSet::new()));
    assert_eq!(
        doc.root
            .find(|e| e.name == "g" && e.attr("class") == Some("stage"))
            .len(),
        MAX_STAGES
    );
    assert!(doc.root.find(|e| e.attr("class") == Some("cut"))[0]
        .text
        .starts_with("5 more stages"));
}

#[test]
fn a_cycle_does_not_hang_the_layout() {
    assert_eq!(depths(&[vec![1], vec![0]]).len(), 2);
}
