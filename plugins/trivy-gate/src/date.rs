//! Calendar dates (`YYYY-MM-DD`) without a date/time dependency.
//!
//! "Today" comes from `std::time::SystemTime::now()`, which in
//! `wasm32-wasip2` reads the WASI wall clock. Days since the Unix epoch are
//! turned into a civil date with Howard Hinnant's `civil_from_days`.

use std::fmt;

/// A proleptic Gregorian date (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Date {
    pub year: i32,
    pub month: u32,
    pub day: u32,
}

fn is_leap(year: i32) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i32, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(year) => 29,
        2 => 28,
        _ => 0,
    }
}

impl Date {
    /// A checked date.
    pub fn new(year: i32, month: u32, day: u32) -> Option<Date> {
        if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
            return None;
        }
        Some(Date { year, month, day })
    }

    /// Parses `YYYY-MM-DD`. A TOML datetime that the host turned into text
    /// (`2026-12-31T00:00:00Z`) is accepted too: only its date counts.
    pub fn parse(text: &str) -> Result<Date, String> {
        let t = text.trim();
        let bad = || format!("{text:?} is not a date (YYYY-MM-DD)");
        let date = match t.get(10..) {
            Some("") => t,
            Some(rest) if rest.starts_with(['T', 't', ' ']) => &t[..10],
            _ => return Err(bad()),
        };
        let b = date.as_bytes();
        let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
        if b.len() != 10 || b[4] != b'-' || b[7] != b'-' || !digits(0..4) || !digits(5..7) {
            return Err(bad());
        }
        if !digits(8..10) {
            return Err(bad());
        }
        let year: i32 = date[0..4].parse().map_err(|_| bad())?;
        let month: u32 = date[5..7].parse().map_err(|_| bad())?;
        let day: u32 = date[8..10].parse().map_err(|_| bad())?;
        Date::new(year, month, day).ok_or_else(|| format!("{text:?} is not a valid calendar date"))
    }

    /// The date `days` days after 1970-01-01 (negative: before).
    pub fn from_unix_days(days: i64) -> Date {
        // https://howardhinnant.github.io/date_algorithms.html#civil_from_days
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097); // [0, 146096]
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
        let mp = (5 * doy + 2) / 153; // [0, 11]
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = yoe + era * 400 + i64::from(month <= 2);
        Date {
            year: year.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32,
            month,
            day,
        }
    }

    /// Today (UTC) from the wall clock; 1970-01-01 if the clock is before the epoch.
    pub fn today() -> Date {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Date::from_unix_days((secs / 86_400) as i64)
    }
}

impl fmt::Display for Date {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(y: i32, m: u32, day: u32) -> Date {
        Date::new(y, m, day).unwrap()
    }

    #[test]
    fn civil_from_days_known_values() {
        assert_eq!(Date::from_unix_days(0), d(1970, 1, 1));
        assert_eq!(Date::from_unix_days(-1), d(1969, 12, 31));
        assert_eq!(Date::from_unix_days(11_016), d(2000, 2, 29));
        assert_eq!(Date::from_unix_days(19_723), d(2024, 1, 1));
        assert_eq!(Date::from_unix_days(19_782), d(2024, 2, 29));
        assert_eq!(Date::from_unix_days(20_088), d(2024, 12, 31));
        // 2026-12-31 = 1798675200 / 86400
        assert_eq!(Date::from_unix_days(20_818), d(2026, 12, 31));
    }

    #[test]
    fn consecutive_days_are_consecutive_dates() {
        let mut prev = Date::from_unix_days(-800);
        for n in -799..30_000 {
            let cur = Date::from_unix_days(n);
            assert!(cur > prev, "{prev} then {cur}");
            assert!(Date::new(cur.year, cur.month, cur.day).is_some(), "{cur}");
            prev = cur;
        }
    }

    #[test]
    fn parse_and_display() {
        assert_eq!(Date::parse("2026-12-31").unwrap(), d(2026, 12, 31));
        assert_eq!(Date::parse(" 2024-02-29 ").unwrap(), d(2024, 2, 29));
        assert_eq!(
            Date::parse("2026-12-31T00:00:00Z").unwrap(),
            d(2026, 12, 31)
        );
        assert_eq!(d(2023, 1, 1).to_string(), "2023-01-01");
        for bad in [
            "",
            "2023",
            "2023-1-1",
            "2023-13-01",
            "2023-02-29",
            "2023-00-10",
            "2023-01-32",
            "20231-01-01",
            "2023/01/01",
            "+023-01-01",
            "2023-01-01x",
            "２０２３-01-01",
        ] {
            assert!(Date::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn today_is_plausible() {
        let t = Date::today();
        assert!(t >= d(2024, 1, 1), "{t}");
    }
}
