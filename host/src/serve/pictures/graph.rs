//! A run's stages as the graph their `needs` make: one box per stage,
//! coloured by status, columns by depth (the longest path from a stage that
//! needs nothing), rows in file order. A rollback (`NAME:rollback`) stands
//! after the stage it rolls back.
use std::collections::{BTreeMap, BTreeSet};

use super::{clip, colour, nothing, num, Svg, MAX_STAGES};
use crate::run::display::{format_duration, status_word};
use crate::run::scheduler::ROLLBACK_SUFFIX;
use crate::run::StageRecord;

const W: f64 = 170.0;
const H: f64 = 46.0;
const GAP_X: f64 = 50.0;
const GAP_Y: f64 = 14.0;
const PAD: f64 = 10.0;
/// Below the boxes: a line saying what was cut.
const FOOT: f64 = 22.0;

/// The stages each stage is drawn after: its needs, or a rollback's target.
fn edges(stages: &[&StageRecord]) -> Vec<Vec<usize>> {
    let index: BTreeMap<&str, usize> = stages
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();
    stages
        .iter()
        .map(|s| match s.name.strip_suffix(ROLLBACK_SUFFIX) {
            Some(target) if index.contains_key(target) => vec![index[target]],
            _ => s
                .needs
                .iter()
                .filter_map(|n| index.get(n.as_str()).copied())
                .collect(),
        })
        .collect()
}

/// Each stage's column: 0 for a stage that needs nothing, else one more
/// than the deepest stage it needs (a cycle, which a record cannot have,
/// stops after as many rounds as there are stages).
pub fn depths(before: &[Vec<usize>]) -> Vec<usize> {
    let mut depth = vec![0; before.len()];
    for _ in 0..before.len() {
        let mut changed = false;
        for (i, b) in before.iter().enumerate() {
            let d = b.iter().map(|&j| depth[j] + 1).max().unwrap_or(0);
            if d > depth[i] && d < before.len() {
                depth[i] = d;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    depth
}

/// The graph of `stages`; stages named in `waiting` are marked as waiting
/// for an approval.
pub fn stage_graph(stages: &[StageRecord], waiting: &BTreeSet<String>) -> String {
    let label = "Stage graph";
    if stages.is_empty() {
        return nothing("stage-graph", label, "No stage to draw.");
    }
    let drawn: Vec<&StageRecord> = stages.iter().take(MAX_STAGES).collect();
    let before = edges(&drawn);
    let depth = depths(&before);
    let mut rows: BTreeMap<usize, usize> = BTreeMap::new();
    let pos: Vec<(f64, f64)> = depth
        .iter()
        .map(|&d| {
            let row = rows.entry(d).or_default();
            *row += 1;
            (
                PAD + d as f64 * (W + GAP_X),
                PAD + (*row - 1) as f64 * (H + GAP_Y),
            )
        })
        .collect();
    let cols = depth.iter().max().map_or(1, |d| d + 1) as f64;
    let most = rows.values().copied().max().unwrap_or(1) as f64;
    let width = 2.0 * PAD + cols * W + (cols - 1.0) * GAP_X;
    let height = 2.0 * PAD + most * H + (most - 1.0) * GAP_Y + FOOT;
    let mut svg = Svg::new("stage-graph", width.max(300.0), height, label);
    for (i, b) in before.iter().enumerate() {
        for &j in b {
            let (from, to) = (
                (pos[j].0 + W, pos[j].1 + H / 2.0),
                (pos[i].0, pos[i].1 + H / 2.0),
            );
            let mid = (from.0 + to.0) / 2.0;
            let d = format!(
                "M{} {} C{} {} {} {} {} {}",
                num(from.0),
                num(from.1),
                num(mid),
                num(from.1),
                num(mid),
                num(to.1),
                num(to.0),
                num(to.1)
            );
            let (a, b) = (&drawn[j].name, &drawn[i].name);
            svg.open(
                "path",
                &[
                    ("class", "edge"),
                    ("d", &d),
                    ("fill", "none"),
                    ("stroke", "#8c959f"),
                    ("data-from", a),
                    ("data-to", b),
                ],
                true,
            );
        }
    }
    for (s, &(x, y)) in drawn.iter().zip(&pos) {
        stage_box(&mut svg, s, x, y, waiting.contains(&s.name));
    }
    if stages.len() > drawn.len() {
        let note = format!(
            "{} more stages not drawn (at most {MAX_STAGES}).",
            stages.len() - drawn.len()
        );
        svg.text(PAD, height - 6.0, &[("class", "cut")], &note);
    }
    svg.finish()
}

fn stage_box(svg: &mut Svg, s: &StageRecord, x: f64, y: f64, waiting: bool) {
    let word = status_word(s.status, s.warning);
    let (xs, ys) = (num(x), num(y));
    let transform = format!("translate({xs} {ys})");
    let mut attrs = vec![
        ("class", "stage"),
        ("data-stage", s.name.as_str()),
        ("data-status", word),
        ("transform", &transform),
    ];
    if waiting {
        attrs.push(("data-waiting", "approval"));
    }
    svg.open("g", &attrs, false);
    svg.text_el("title", &[], &s.name);
    let (stroke, dash) = if waiting {
        ("#bf8700", "5 3")
    } else {
        ("none", "")
    };
    svg.rect(
        0.0,
        0.0,
        W,
        H,
        &[
            ("rx", "6"),
            ("fill", colour(word)),
            ("stroke", stroke),
            ("stroke-width", "3"),
            ("stroke-dasharray", dash),
        ],
    );
    svg.text(
        8.0,
        18.0,
        &[("class", "name"), ("fill", "#fff"), ("font-weight", "600")],
        &clip(&s.name, 24),
    );
    let mut detail = word.to_string();
    if s.started_at.is_some() && s.status.is_final() {
        detail = format!("{detail} · {}", format_duration(s.duration_ms));
    }
    if waiting {
        detail = "waiting for approval".into();
    } else if let Some(a) = &s.approval {
        detail = format!("{detail} · {}", a.decision.as_str());
    }
    svg.text(8.0, 36.0, &[("class", "detail"), ("fill", "#fff")], &detail);
    svg.end("g");
}

#[cfg(test)]
#[path = "graph_tests.rs"]
mod tests;
