//! Durations in `with` tables: `500ms`, `30s`, `5m`, `1h30m`, `2d` — the
//! same words the pipeline file uses. Callers apply their own bounds.
//! [`format`] writes one back for messages.
use std::time::Duration;

/// Parse a sum of `<number><unit>` parts (units `ms`, `s`, `m`, `h`, `d`).
pub fn parse(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("empty duration".into());
    }
    let mut total = Duration::ZERO;
    let mut rest = t;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 {
            return Err(format!(
                "{text:?} is not a duration (e.g. 500ms, 30s, 5m, 1h30m)"
            ));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("{text:?}: number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(|b| b.is_ascii_alphabetic()).count();
        let secs = |per: u64| {
            n.checked_mul(per)
                .map(Duration::from_secs)
                .ok_or_else(|| format!("{text:?}: duration too large"))
        };
        let part = match &rest[..unit_len] {
            "ms" => Ok(Duration::from_millis(n)),
            "s" => secs(1),
            "m" => secs(60),
            "h" => secs(3600),
            "d" => secs(86_400),
            "" => Err(format!(
                "{text:?}: missing unit (ms, s, m, h or d) after {n}"
            )),
            u => Err(format!("{text:?}: unknown unit {u:?} (ms, s, m, h or d)")),
        }?;
        rest = &rest[unit_len..];
        total = total
            .checked_add(part)
            .ok_or_else(|| format!("{text:?}: duration too large"))?;
    }
    Ok(total)
}

/// `500ms`, `30s`, `1.5s`, `1m30s`, `2m` (for messages).
pub fn format(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let secs = d.as_secs();
    let rem_ms = ms % 1000;
    if secs < 60 {
        return if rem_ms == 0 {
            format!("{secs}s")
        } else {
            format!("{:.1}s", d.as_secs_f64())
        };
    }
    let (m, s) = (secs / 60, secs % 60);
    if s == 0 {
        format!("{m}m")
    } else {
        format!("{m}m{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sums_of_parts() {
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse(" 1h30m "), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("2d"), Ok(Duration::from_secs(172_800)));
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
        for bad in [
            "",
            "5",
            "m",
            "5x",
            "-1s",
            "1.5h",
            "99999999999999999999s",
            "5 m",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert!(parse("10").unwrap_err().contains("missing unit"));
    }

    #[test]
    fn formats_for_messages() {
        assert_eq!(format(Duration::from_millis(500)), "500ms");
        assert_eq!(format(Duration::from_secs(30)), "30s");
        assert_eq!(format(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format(Duration::from_secs(90)), "1m30s");
        assert_eq!(format(Duration::from_secs(120)), "2m");
    }
}
