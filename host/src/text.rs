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
    if one.chars().count() > MAX_MESSAGE_CHARS {
        let cut: String = one.chars().take(MAX_MESSAGE_CHARS).collect();
        format!("{cut}…")
    } else {
        one
    }
}
