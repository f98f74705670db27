//! A run's stages on one time axis (a Gantt chart): a bar from each
//! stage's start for its duration, so what ran side by side and the slow
//! stage show. The longest bar is marked.
use super::{clip, colour, nothing, Svg, MAX_STAGES};
use crate::run::display::{format_duration, status_word};
use crate::run::record::parse_unix_ms;
use crate::run::StageRecord;

pub const LABEL_W: f64 = 170.0;
pub const PLOT_W: f64 = 560.0;
const ROW: f64 = 22.0;
const TOP: f64 = 10.0;
const AXIS: f64 = 34.0;
const TICKS: u32 = 4;

/// A drawn stage: its record, its start and its end (Unix ms).
type Bar<'a> = (&'a StageRecord, i64, i64);

/// The first [`MAX_STAGES`] of `stages` that started, with their start and
/// end; a stage still running ends at `now_ms`, so it grows as it runs.
fn started(stages: &[StageRecord], now_ms: i64) -> Vec<Bar<'_>> {
    stages
        .iter()
        .take(MAX_STAGES)
        .filter_map(|s| {
            let start = parse_unix_ms(s.started_at.as_deref()?)?;
            let end = if s.status.is_final() {
                start + s.duration_ms as i64
            } else {
                now_ms.max(start)
            };
            Some((s, start, end))
        })
        .collect()
}

/// Where a time falls: the first start at the plot's left edge, the last
/// end at its right one, so every picture uses the whole width.
struct Scale {
    t0: i64,
    span: f64,
}

impl Scale {
    fn x(&self, t: i64) -> f64 {
        LABEL_W + (t - self.t0) as f64 / self.span * PLOT_W
    }
}

/// Evenly spaced ticks under the bars, as time since the first start; the
/// end ones are anchored inwards so their text stays in the picture.
fn ticks(svg: &mut Svg, scale: &Scale, bottom: f64) {
    for k in 0..=TICKS {
        let ms = (scale.span * k as f64 / TICKS as f64) as i64;
        let tx = scale.x(scale.t0 + ms);
        svg.line((tx, TOP), (tx, bottom + 4.0), "#d0d7de");
        let anchor = if k == 0 {
            "start"
        } else if k == TICKS {
            "end"
        } else {
            "middle"
        };
        svg.text(
            tx,
            bottom + 18.0,
            &[
                ("class", "tick"),
                ("text-anchor", anchor),
                ("fill", "#57606a"),
            ],
            &format!("+{}", format_duration(ms as u64)),
        );
    }
}

/// Row `i`: the stage's name, its bar (outlined when it is the longest, so
/// the slow stage is seen at once) and its duration after the bar.
fn bar(svg: &mut Svg, scale: &Scale, i: usize, (s, start, end): &Bar, is_longest: bool) {
    let y = TOP + i as f64 * ROW;
    let word = status_word(s.status, s.warning);
    svg.text(
        LABEL_W - 8.0,
        y + 15.0,
        &[("text-anchor", "end"), ("class", "label")],
        &clip(&s.name, 24),
    );
    let mut attrs = vec![
        ("class", if is_longest { "bar longest" } else { "bar" }),
        ("data-stage", s.name.as_str()),
        ("data-status", word),
        ("fill", colour(word)),
    ];
    if is_longest {
        attrs.extend([("stroke", "#1f2328"), ("stroke-width", "2")]);
    }
    svg.open("g", &[], false);
    svg.text_el("title", &[], &s.name);
    let (x0, x1) = (scale.x(*start), scale.x(*end));
    svg.rect(x0, y + 3.0, (x1 - x0).max(1.0), ROW - 6.0, &attrs);
    let note = if is_longest {
        format!("{} · longest", format_duration((end - start) as u64))
    } else {
        format_duration((end - start) as u64)
    };
    svg.text(
        x1 + 4.0,
        y + 15.0,
        &[("class", "dur"), ("fill", "#57606a")],
        &note,
    );
    svg.end("g");
}

/// Says which stages have no bar (never started, or past [`MAX_STAGES`]),
/// so a missing stage is not taken for a fast one.
fn footnote(svg: &mut Svg, stages: &[StageRecord], drawn: usize, bottom: f64) {
    let not_started = stages.iter().take(MAX_STAGES).count() - drawn;
    let mut foot = Vec::new();
    if not_started > 0 {
        let noun = if not_started == 1 { "stage" } else { "stages" };
        foot.push(format!("{not_started} {noun} did not start"));
    }
    if stages.len() > MAX_STAGES {
        foot.push(format!(
            "{} more not drawn (at most {MAX_STAGES})",
            stages.len() - MAX_STAGES
        ));
    }
    if !foot.is_empty() {
        svg.text(
            LABEL_W + PLOT_W / 2.0,
            bottom + 32.0,
            &[
                ("class", "cut"),
                ("text-anchor", "middle"),
                ("fill", "#57606a"),
            ],
            &foot.join("; "),
        );
    }
}

/// `stages` from their starts; a stage still running ends at `now_ms`.
pub fn timeline(stages: &[StageRecord], now_ms: i64) -> String {
    let label = "Stage timeline";
    let bars = started(stages, now_ms);
    if bars.is_empty() {
        return nothing(
            "stage-timeline",
            label,
            "No stage started: nothing to draw.",
        );
    }
    let t0 = bars.iter().map(|b| b.1).min().unwrap_or(0);
    let t1 = bars.iter().map(|b| b.2).max().unwrap_or(t0);
    let scale = Scale {
        t0,
        span: (t1 - t0).max(1) as f64,
    };
    let longest = bars
        .iter()
        .enumerate()
        .max_by_key(|(i, b)| (b.2 - b.1, std::cmp::Reverse(*i)))
        .map(|(i, _)| i);
    let height = TOP + bars.len() as f64 * ROW + AXIS;
    let mut svg = Svg::new("stage-timeline", LABEL_W + PLOT_W + 90.0, height, label);
    let bottom = TOP + bars.len() as f64 * ROW;
    ticks(&mut svg, &scale, bottom);
    for (i, b) in bars.iter().enumerate() {
        bar(&mut svg, &scale, i, b, longest == Some(i));
    }
    footnote(&mut svg, stages, bars.len(), bottom);
    svg.finish()
}

#[cfg(test)]
#[path = "timeline_tests.rs"]
mod tests;
