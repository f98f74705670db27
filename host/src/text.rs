//! Text from untrusted places made fit to show: one line, control
//! characters escaped, bounded. A leaf module: anything may use it.

/// The longest message a TOML error becomes: it may quote the offending
/// value, and the file may be untrusted, so no more than a token's worth.
const MAX_MESSAGE_CHARS: usize = 200;

/// toml's messages can span lines; a diagnostic is one line, with control
/// characters escaped and at most [`MAX_MESSAGE_CHARS`] long.
pub fn tidy_message(message: &str) -> String {
    let parts: Vec<&str> = message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if parts.is_empty() {
        return "invalid TOML".to_string();
    }
    let one: String = parts
        .join("; ")
        .chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect();
    cut(&one, MAX_MESSAGE_CHARS)
}

/// `text` with at most `max` characters, and `…` where it was cut.
pub fn cut(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod cut_tests {
    use super::cut;

    #[test]
    fn cut_counts_characters_and_marks_only_what_it_cut() {
        assert_eq!(cut("abc", 3), "abc");
        assert_eq!(cut("abcd", 3), "abc…");
        assert_eq!(cut("ééé", 2), "éé…");
        assert_eq!(cut("", 0), "");
    }
}
