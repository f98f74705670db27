//! A pipeline's DORA figures by week: deployments, lead time for changes,
//! change failure rate and time to restore, as `/metrics` defines them
//! (`crate::serve::metrics`, whose counting this reuses).
use std::collections::BTreeMap;

use super::{nothing, Svg};
use crate::run::display::format_duration;
use crate::run::RunSummary;
use crate::serve::metrics::{deployment_failed, deployments, is_deployment, is_rollback};

pub const WEEK_MS: i64 = 7 * 24 * 3600 * 1000;

/// One week's figures.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Week {
    pub start_ms: i64,
    /// Successful deployments (rollbacks excluded) that ended this week.
    pub deployments: u64,
    pub failed: u64,
    /// Seconds from a failed deployment to the next successful one, for
    /// each recovery that ended this week.
    pub recoveries: Vec<f64>,
    /// Seconds from each successful deployment's commit to its end.
    pub lead_times: Vec<f64>,
    /// How many lead times count from the run's start: the delivery did
    /// not say when the commit was made.
    pub lead_from_start: usize,
}

impl Week {
    pub fn change_failure_rate(&self) -> Option<f64> {
        let all = self.deployments + self.failed;
        (all > 0).then(|| self.failed as f64 / all as f64)
    }
    pub fn mean_restore(&self) -> Option<f64> {
        (!self.recoveries.is_empty())
            .then(|| self.recoveries.iter().sum::<f64>() / self.recoveries.len() as f64)
    }
    pub fn median_lead(&self) -> Option<f64> {
        let mut v = self.lead_times.clone();
        v.sort_by(f64::total_cmp);
        (!v.is_empty()).then(|| v[v.len() / 2])
    }
}

/// Totals over every environment of the deployments that ended before `end`:
/// successes, failures, and each environment's recoveries so far.
fn totals(runs: &[RunSummary], end: i64) -> (u64, u64, BTreeMap<(String, String), Vec<f64>>) {
    let before: Vec<RunSummary> = runs
        .iter()
        .filter(|r| r.finished_unix_ms() < end)
        .cloned()
        .collect();
    let figures = deployments(&before, end);
    let ok = figures.values().map(|f| f.succeeded).sum();
    let bad = figures.values().map(|f| f.failed).sum();
    (
        ok,
        bad,
        figures
            .into_iter()
            .map(|(k, f)| (k, f.recoveries))
            .collect(),
    )
}

/// The last `weeks` weeks of 7 days ending at `now_ms`, oldest first.
/// `commit_times` holds, by run id, when its commit was made (Unix ms).
pub fn weekly(
    runs: &[RunSummary],
    commit_times: &BTreeMap<String, i64>,
    now_ms: i64,
    weeks: usize,
) -> Vec<Week> {
    let first = now_ms - weeks as i64 * WEEK_MS;
    let mut prev = totals(runs, first);
    (0..weeks as i64)
        .map(|i| {
            let (start, end) = (first + i * WEEK_MS, first + (i + 1) * WEEK_MS);
            let now = totals(runs, end);
            let mut w = Week {
                start_ms: start,
                deployments: now.0 - prev.0,
                failed: now.1 - prev.1,
                ..Week::default()
            };
            for (env, list) in &now.2 {
                let had = prev.2.get(env).map_or(0, Vec::len);
                w.recoveries.extend_from_slice(&list[had..]);
            }
            for r in runs
                .iter()
                .filter(|r| is_deployment(r) && !deployment_failed(r) && !is_rollback(r))
            {
                let done = r.finished_unix_ms();
                if (start..end).contains(&done) {
                    let from = commit_times.get(&r.id).copied().unwrap_or_else(|| {
                        w.lead_from_start += 1;
                        r.started_unix_ms
                    });
                    w.lead_times.push((done - from).max(0) as f64 / 1000.0);
                }
            }
            prev = now;
            w
        })
        .collect()
}

fn secs(v: f64) -> String {
    format_duration((v * 1000.0) as u64)
}

/// Left margin (for the figures' names), one week's column, one figure's
/// row and its tallest bar.
const LEFT: f64 = 170.0;
const COL: f64 = 70.0;
const ROW_H: f64 = 54.0;
const BAR_H: f64 = 34.0;

/// A week's value of one figure, none when the week has nothing to measure.
type Figure = fn(&Week) -> Option<f64>;
/// A row: its key (for `data-figure`), its title, its figure and how a value
/// is written.
type Row = (&'static str, &'static str, Figure, fn(f64) -> String);

/// The four DORA figures, in the order they are drawn.
fn rows() -> [Row; 4] {
    [
        (
            "deployments",
            "Deployments",
            |w| Some(w.deployments as f64),
            |v| format!("{v:.0}"),
        ),
        ("lead-time", "Lead time (median)", Week::median_lead, secs),
        (
            "change-failure-rate",
            "Change failure rate",
            Week::change_failure_rate,
            |v| format!("{:.0}%", v * 100.0),
        ),
        (
            "time-to-restore",
            "Time to restore (mean)",
            Week::mean_restore,
            secs,
        ),
    ]
}

/// Row `r`: the figure's title, then a bar and its value for each week,
/// scaled to the row's highest week so each figure fills its own row.
fn figure_row(svg: &mut Svg, r: usize, (key, title, figure, show): &Row, weeks: &[Week]) {
    let base = r as f64 * ROW_H + 44.0;
    svg.text(
        8.0,
        base - 10.0,
        &[("class", "figure"), ("font-weight", "600")],
        title,
    );
    let values: Vec<Option<f64>> = weeks.iter().map(figure).collect();
    let top = values.iter().flatten().fold(0.0f64, |a, b| a.max(*b));
    for (i, v) in values.iter().enumerate() {
        let x = LEFT + i as f64 * COL;
        let week = i.to_string();
        let h = v.map_or(0.0, |v| if top > 0.0 { v / top * BAR_H } else { 0.0 });
        svg.rect(
            x + 8.0,
            base - h,
            COL - 16.0,
            h,
            &[
                ("class", "dora-bar"),
                ("data-figure", key),
                ("data-week", &week),
                ("fill", "#0969da"),
            ],
        );
        let text = v.map_or("–".to_string(), show);
        svg.text(
            x + COL / 2.0,
            base - h - 3.0,
            &[
                ("class", "value"),
                ("data-figure", key),
                ("data-week", &week),
                ("text-anchor", "middle"),
            ],
            &text,
        );
    }
}

/// Under the columns, the day each week starts (month-day).
fn week_axis(svg: &mut Svg, weeks: &[Week], axis: f64) {
    for (i, w) in weeks.iter().enumerate() {
        let day = time::OffsetDateTime::from_unix_timestamp(w.start_ms / 1000)
            .map(|t| format!("{:02}-{:02}", u8::from(t.month()), t.day()))
            .unwrap_or_default();
        svg.text(
            LEFT + (i as f64 + 0.5) * COL,
            axis,
            &[
                ("class", "week"),
                ("text-anchor", "middle"),
                ("fill", "#57606a"),
            ],
            &format!("from {day}"),
        );
    }
}

/// What the weeks and the lead time mean, and how many lead times count
/// from the run's start for want of a commit time.
fn caption(svg: &mut Svg, weeks: &[Week], axis: f64) {
    let fallback: usize = weeks.iter().map(|w| w.lead_from_start).sum();
    let mut caption = vec![
        "Weeks of 7 days ending now. Lead time: from the commit (when its push said it was made)"
            .to_string(),
        "to the end of its successful deployment.".to_string(),
    ];
    if fallback > 0 {
        caption[1].push_str(&format!(
            " {fallback} deployments had no commit time (a pull request, an upload, host run):"
        ));
        caption.push("their lead time counts from the run's start instead.".into());
    }
    for (i, line) in caption.iter().enumerate() {
        svg.text(
            8.0,
            axis + 20.0 + i as f64 * 15.0,
            &[("class", "caption"), ("fill", "#57606a")],
            line,
        );
    }
}

/// Four rows of weekly bars, one per figure.
pub fn dora(pipeline: &str, weeks: &[Week]) -> String {
    let label = format!("DORA figures of {pipeline} by week");
    if weeks
        .iter()
        .all(|w| w.deployments + w.failed == 0 && w.recoveries.is_empty())
    {
        return nothing(
            "dora",
            &label,
            "No deployment in these weeks: nothing to draw.",
        );
    }
    let rows = rows();
    let height = rows.len() as f64 * ROW_H + 90.0;
    let mut svg = Svg::new(
        "dora",
        LEFT + weeks.len() as f64 * COL + 10.0,
        height,
        &label,
    );
    for (r, row) in rows.iter().enumerate() {
        figure_row(&mut svg, r, row, weeks);
    }
    let axis = rows.len() as f64 * ROW_H + 22.0;
    week_axis(&mut svg, weeks, axis);
    caption(&mut svg, weeks, axis);
    svg.finish()
}

#[cfg(test)]
#[path = "dora_tests.rs"]
mod tests;
