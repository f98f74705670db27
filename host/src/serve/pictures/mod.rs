//! Server-rendered SVG pictures for the web pages: a run's stage graph and
//! timeline, a pipeline's run history and its DORA figures by week.
//!
//! Pure functions from records to an SVG string (no I/O). Every text that
//! comes from a record goes through [`esc`] (stage, pipeline, branch and
//! environment names are whatever a pipeline file or a pusher wrote); the
//! builder [`Svg`] is the only place markup is written.
use std::fmt::Write;

pub mod dora;
pub mod graph;
pub mod history;
pub mod timeline;

/// The most stages (graph, timeline) and runs (history) one picture draws.
pub const MAX_STAGES: usize = 200;
pub const MAX_RUNS: usize = 100;

/// `s` as XML text or attribute value. Characters XML 1.0 does not allow
/// (most control characters) become U+FFFD.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// The fill of a status word, as `.status-*` in the page's style.
pub fn colour(word: &str) -> &'static str {
    match word {
        "success" => "#1a7f37",
        "failure" => "#cf222e",
        "running" => "#0969da",
        "cancelled" | "warning" => "#9a6700",
        _ => "#6e7781",
    }
}

/// At most `max` characters of `s`, an ellipsis when cut.
pub fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// An SVG document being written. Attribute values passed as `&str` are
/// escaped; numbers are written with one decimal.
pub struct Svg {
    out: String,
}

impl Svg {
    /// A picture `w`×`h` called `label` (its `<title>` and `aria-label`).
    pub fn new(class: &str, w: f64, h: f64, label: &str) -> Self {
        let mut out = String::new();
        let _ = write!(
            out,
            r#"<svg xmlns="http://www.w3.org/2000/svg" class="{}" role="img" aria-label="{}" width="{w:.0}" height="{h:.0}" viewBox="0 0 {w:.0} {h:.0}" font-family="system-ui, sans-serif" font-size="12"><title>{}</title>"#,
            esc(class),
            esc(label),
            esc(label)
        );
        Svg { out }
    }

    /// Open an element: `<name k="v" …>` (`close` for `/>`).
    pub fn open(&mut self, name: &str, attrs: &[(&str, &str)], close: bool) -> &mut Self {
        let _ = write!(self.out, "<{name}");
        for (k, v) in attrs {
            let _ = write!(self.out, r#" {k}="{}""#, esc(v));
        }
        self.out.push_str(if close { "/>" } else { ">" });
        self
    }

    pub fn end(&mut self, name: &str) -> &mut Self {
        let _ = write!(self.out, "</{name}>");
        self
    }

    /// `<name …>text</name>`, the text escaped.
    pub fn text_el(&mut self, name: &str, attrs: &[(&str, &str)], text: &str) -> &mut Self {
        self.open(name, attrs, false);
        self.out.push_str(&esc(text));
        self.end(name)
    }

    pub fn rect(&mut self, x: f64, y: f64, w: f64, h: f64, extra: &[(&str, &str)]) -> &mut Self {
        let (x, y, w, h) = (num(x), num(y), num(w.max(0.0)), num(h.max(0.0)));
        let mut attrs = vec![("x", x.as_str()), ("y", &y), ("width", &w), ("height", &h)];
        attrs.extend_from_slice(extra);
        self.open("rect", &attrs, true)
    }

    pub fn text(&mut self, x: f64, y: f64, extra: &[(&str, &str)], text: &str) -> &mut Self {
        let (x, y) = (num(x), num(y));
        let mut attrs = vec![("x", x.as_str()), ("y", &y)];
        attrs.extend_from_slice(extra);
        self.text_el("text", &attrs, text)
    }

    pub fn line(&mut self, (x1, y1): (f64, f64), (x2, y2): (f64, f64), stroke: &str) -> &mut Self {
        let p = [num(x1), num(y1), num(x2), num(y2)];
        self.open(
            "line",
            &[
                ("x1", &p[0]),
                ("y1", &p[1]),
                ("x2", &p[2]),
                ("y2", &p[3]),
                ("stroke", stroke),
            ],
            true,
        )
    }

    pub fn finish(mut self) -> String {
        self.out.push_str("</svg>");
        self.out
    }
}

/// A coordinate as written: one decimal.
pub fn num(v: f64) -> String {
    format!("{:.1}", if v.is_finite() { v } else { 0.0 })
}

/// A picture that says there is nothing to draw.
pub fn nothing(class: &str, label: &str, message: &str) -> String {
    let mut svg = Svg::new(class, 420.0, 40.0, label);
    svg.text(
        10.0,
        24.0,
        &[("class", "empty"), ("fill", "#57606a")],
        message,
    );
    svg.finish()
}

#[cfg(test)]
pub(crate) mod testing;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_leaves_only_text() {
        assert_eq!(
            esc(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(esc("a\u{1}b"), "a\u{FFFD}b");
        let mut svg = Svg::new("t", 10.0, 10.0, "<script>alert(1)</script>");
        svg.text(0.0, 0.0, &[("data-x", "a\"b&c")], "a\"b&c");
        let doc = testing::parse(&svg.finish());
        assert!(doc.elements("script").is_empty());
        assert_eq!(doc.elements("title")[0].text, "<script>alert(1)</script>");
        assert_eq!(doc.elements("text")[0].text, "a\"b&c");
        assert_eq!(doc.elements("text")[0].attr("data-x"), Some("a\"b&c"));
    }

    #[test]
    fn an_empty_picture_is_a_picture_that_says_so() {
        let doc = testing::parse(&nothing("graph", "Stages", "No stage ran."));
        assert_eq!(doc.elements("text")[0].text, "No stage ran.");
        assert_eq!(doc.root.attr("aria-label"), Some("Stages"));
    }
}
