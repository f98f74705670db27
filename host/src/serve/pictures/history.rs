//! A pipeline's last runs: one bar per run (oldest on the left), as tall as
//! the run took and coloured by its status, and a line of the success rate
//! over the last [`WINDOW`] finished runs at each run.
use super::{colour, nothing, num, Svg, MAX_RUNS};
use crate::run::display::{format_duration, status_word};
use crate::run::{RunSummary, Status};

/// How many finished runs the success rate at a run looks back over.
pub const WINDOW: usize = 10;
const LEFT: f64 = 56.0;
const PLOT_H: f64 = 140.0;
const TOP: f64 = 12.0;
const SLOT: f64 = 9.0;

/// The success rate at each of `runs` (oldest first): successes over
/// successes and failures among the last `WINDOW` of those up to it; none
/// before the first finished one.
pub fn success_rates(runs: &[&RunSummary]) -> Vec<Option<f64>> {
    let mut seen: Vec<bool> = Vec::new();
    runs.iter()
        .map(|r| {
            if matches!(r.status, Status::Success | Status::Failure) {
                seen.push(r.status == Status::Success);
            }
            let last = &seen[seen.len().saturating_sub(WINDOW)..];
            (!last.is_empty())
                .then(|| last.iter().filter(|ok| **ok).count() as f64 / last.len() as f64)
        })
        .collect()
}

/// The y axis's two ends (the longest run at the top, 0 at the bottom) and
/// the base line under the bars, so a bar's height reads as a duration.
fn axis(svg: &mut Svg, longest: f64, runs: usize, bottom: f64) {
    svg.text(
        LEFT - 6.0,
        TOP + 4.0,
        &[
            ("text-anchor", "end"),
            ("class", "axis"),
            ("fill", "#57606a"),
        ],
        &format_duration(longest as u64),
    );
    svg.text(
        LEFT - 6.0,
        bottom,
        &[
            ("text-anchor", "end"),
            ("class", "axis"),
            ("fill", "#57606a"),
        ],
        "0",
    );
    svg.line(
        (LEFT, bottom),
        (LEFT + runs as f64 * SLOT, bottom),
        "#8c959f",
    );
}

/// Run `r` in slot `i`: a link to its page around a bar as tall as it took
/// (a sliver while it runs, so it still shows), titled for the tooltip.
fn run_bar(svg: &mut Svg, i: usize, r: &RunSummary, longest: f64, bottom: f64) {
    let word = status_word(r.status, false);
    let h = if r.status.is_final() {
        r.duration_ms as f64 / longest * PLOT_H
    } else {
        2.0
    };
    let href = format!("/runs/{}", r.id);
    svg.open("a", &[("href", &href)], false);
    let tip = format!(
        "#{} {word}, {} ({})",
        r.build_number,
        format_duration(r.duration_ms),
        r.started_at
    );
    svg.text_el("title", &[], &tip);
    let x = LEFT + i as f64 * SLOT + 1.0;
    svg.rect(
        x,
        bottom - h.max(1.0),
        SLOT - 2.0,
        h.max(1.0),
        &[
            ("class", "run"),
            ("data-run", &r.id),
            ("data-status", word),
            ("fill", colour(word)),
        ],
    );
    svg.end("a");
}

/// The success rate over the bars, from the first finished run on, and its
/// last value at the right end: how things stand now.
fn rate_line(svg: &mut Svg, drawn: &[&RunSummary], bottom: f64) {
    let rates = success_rates(drawn);
    let points: Vec<String> = rates
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            r.map(|r| {
                format!(
                    "{},{}",
                    num(LEFT + (i as f64 + 0.5) * SLOT),
                    num(bottom - r * PLOT_H)
                )
            })
        })
        .collect();
    if points.is_empty() {
        return;
    }
    svg.open(
        "polyline",
        &[
            ("class", "success-rate"),
            ("points", &points.join(" ")),
            ("fill", "none"),
            ("stroke", "#1f2328"),
            ("stroke-width", "1.5"),
        ],
        true,
    );
    let last = rates.iter().rev().flatten().next().copied().unwrap_or(0.0);
    let right = LEFT + drawn.len() as f64 * SLOT + 4.0;
    svg.text(
        right,
        bottom - last * PLOT_H + 4.0,
        &[("class", "rate")],
        &format!("{:.0}% ok", last * 100.0),
    );
}

/// How to read the picture, and that older runs were left out if they were.
fn caption(svg: &mut Svg, drawn: usize, all: usize, bottom: f64) {
    let mut caption = format!("{drawn} runs, oldest left; bars: duration; line: success rate of the last {WINDOW} finished runs");
    if all > drawn {
        caption.push_str(&format!(" (only the last {MAX_RUNS} runs drawn)"));
    }
    svg.text(
        LEFT,
        bottom + 22.0,
        &[("class", "caption"), ("fill", "#57606a")],
        &caption,
    );
}

/// `runs` newest first (as the store lists them).
pub fn history(pipeline: &str, runs: &[RunSummary]) -> String {
    let label = format!("Duration and success rate of the last runs of {pipeline}");
    if runs.is_empty() {
        return nothing("run-history", &label, "No run recorded yet.");
    }
    let drawn: Vec<&RunSummary> = runs.iter().take(MAX_RUNS).rev().collect();
    let longest = drawn
        .iter()
        .map(|r| r.duration_ms)
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let width = (LEFT + drawn.len() as f64 * SLOT + 60.0).max(620.0);
    let bottom = TOP + PLOT_H;
    let mut svg = Svg::new("run-history", width, bottom + 44.0, &label);
    axis(&mut svg, longest, drawn.len(), bottom);
    for (i, r) in drawn.iter().enumerate() {
        run_bar(&mut svg, i, r, longest, bottom);
    }
    rate_line(&mut svg, &drawn, bottom);
    caption(&mut svg, drawn.len(), runs.len(), bottom);
    svg.finish()
}

#[cfg(test)]
#[path = "history_tests.rs"]
mod tests;
