//! Human-friendly units for `timeout` and `memory`.
//!
//! Both are strings with an explicit unit so a bare `30` can never be read as
//! "30 seconds" by one person and "30 milliseconds" by another.

use std::time::Duration;

/// Longest timeout a stage may ask for.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);
/// Smallest memory cap: below this not even a tiny component instantiates.
pub const MIN_SIZE: u64 = 1 << 20;
/// Largest memory cap (a 64-bit linear memory could ask for more, but a CI
/// stage that needs more than this is almost certainly a bug).
pub const MAX_SIZE: u64 = 16 << 30;

const DURATION_HINT: &str = "expected a duration like \"500ms\", \"30s\", \"5m\" or \"1h30m\" (units ms, s, m, h; largest unit first)";
const SIZE_HINT: &str =
    "expected a size like \"64MiB\", \"512MB\" or \"1GiB\" (units B, kB, KiB, MB, MiB, GB, GiB)";

/// Why a duration or size string is refused: each says what was written
/// and what is expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    #[error("{hint}, got {written:?}")]
    Malformed { hint: &'static str, written: String },
    #[error("{hint}; {written:?} is missing a unit")]
    MissingUnit { hint: &'static str, written: String },
    #[error(
        "{}; in {written:?} the units are repeated or out of order",
        DURATION_HINT
    )]
    UnitOrder { written: String },
    #[error("duration {written:?} must be greater than zero")]
    ZeroDuration { written: String },
    #[error("duration {written:?} is too long; the maximum is 24h")]
    DurationTooLong { written: String },
    #[error("size {written:?} is too large; the maximum is 16GiB")]
    SizeTooLarge { written: String },
    #[error("size {written:?} is too small; the minimum is 1MiB")]
    SizeTooSmall { written: String },
}

/// Parses `"500ms"`, `"30s"`, `"5m"`, `"1h30m"`, `"2h"`.
///
/// A duration is one or more `<integer><unit>` parts with units in
/// decreasing order (`1h30m`, not `30m1h`), each unit at most once. Bare
/// numbers, zero and anything above 24h are refused.
pub fn parse_duration(s: &str) -> Result<Duration, UnitError> {
    let written = || s.to_string();
    let bad = || UnitError::Malformed {
        hint: DURATION_HINT,
        written: written(),
    };
    let too_long = || UnitError::DurationTooLong { written: written() };
    let text = s.trim();
    if text.is_empty() {
        return Err(bad());
    }
    let bytes = text.as_bytes();
    let mut i = 0;
    let mut total_ms: u128 = 0;
    // Rank of the last unit seen; units must strictly decrease.
    let mut last_rank = u8::MAX;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return Err(bad());
        }
        // Cap the digit count so the number fits; anything longer is far
        // beyond the 24h limit anyway.
        let digits = &text[start..i];
        if digits.len() > 18 {
            return Err(too_long());
        }
        let n: u128 = digits.parse().map_err(|_| bad())?;
        let ustart = i;
        while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
            i += 1;
        }
        let (rank, ms_per_unit) = match &text[ustart..i] {
            "h" => (3, 3_600_000),
            "m" => (2, 60_000),
            "s" => (1, 1_000),
            "ms" => (0, 1),
            "" => {
                return Err(UnitError::MissingUnit {
                    hint: DURATION_HINT,
                    written: written(),
                })
            }
            _ => return Err(bad()),
        };
        if rank >= last_rank {
            return Err(UnitError::UnitOrder { written: written() });
        }
        last_rank = rank;
        total_ms += n * ms_per_unit;
    }
    if total_ms == 0 {
        return Err(UnitError::ZeroDuration { written: written() });
    }
    if total_ms > MAX_DURATION.as_millis() {
        return Err(too_long());
    }
    Ok(Duration::from_millis(total_ms as u64))
}

/// Parses `"64MiB"`, `"1GiB"`, `"512MB"`, `"100kB"`, `"2097152B"`.
///
/// A unit is required (decimal `kB`/`MB`/`GB`, binary `KiB`/`MiB`/`GiB`, or
/// `B`; lower-case spellings are accepted too), an optional space may sit
/// between number and unit. The result must lie in 1MiB..=16GiB.
pub fn parse_size(s: &str) -> Result<u64, UnitError> {
    let written = || s.to_string();
    let bad = || UnitError::Malformed {
        hint: SIZE_HINT,
        written: written(),
    };
    let text = s.trim();
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(digits_end);
    if digits.is_empty() {
        return Err(bad());
    }
    let unit = unit.trim_start();
    let mult: u64 = match unit {
        "B" | "b" => 1,
        "kB" | "KB" | "kb" => 1_000,
        "KiB" | "kib" => 1 << 10,
        "MB" | "mb" => 1_000_000,
        "MiB" | "mib" => 1 << 20,
        "GB" | "gb" => 1_000_000_000,
        "GiB" | "gib" => 1 << 30,
        "" => {
            return Err(UnitError::MissingUnit {
                hint: SIZE_HINT,
                written: written(),
            })
        }
        _ => return Err(bad()),
    };
    let too_big = || UnitError::SizeTooLarge { written: written() };
    let n: u64 = digits.parse().map_err(|_| too_big())?;
    let bytes = n.checked_mul(mult).ok_or_else(too_big)?;
    if bytes > MAX_SIZE {
        return Err(too_big());
    }
    if bytes < MIN_SIZE {
        return Err(UnitError::SizeTooSmall { written: written() });
    }
    Ok(bytes)
}
