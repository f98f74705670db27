//! Slows password guessing: after a few failed sign-ins for one account,
//! or from one address, that account (or address) must wait before its
//! next try, twice as long after each further failure (up to
//! [`MAX_WAIT`]); a try made while waiting is refused without its password
//! being checked. A success clears the account's count; counts are
//! forgotten [`FORGET`] after the last failure. Kept in memory, bounded.
use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

pub const MAX_WAIT: Duration = Duration::from_secs(15 * 60);
const FORGET: Duration = Duration::from_secs(60 * 60);
const MAX_ENTRIES: usize = 10_000;

/// Who a try counts against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    Account(String),
    Address(std::net::IpAddr),
}

impl Key {
    /// Failures allowed before waits begin: an address may hold several
    /// people mistyping.
    fn free(&self) -> u32 {
        match self {
            Key::Account(_) => 3,
            Key::Address(_) => 10,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    last: Instant,
}

#[derive(Default)]
pub struct Throttle {
    entries: Mutex<HashMap<Key, Entry>>,
}

impl Throttle {
    /// `Err(wait)` while any of `keys` must still wait.
    pub fn check(&self, keys: &[Key], now: Instant) -> Result<(), Duration> {
        let entries = self.entries.lock();
        let wait = keys
            .iter()
            .filter_map(|k| {
                let e = entries.get(k)?;
                let over = e.failures.checked_sub(k.free()).filter(|n| *n > 0)?;
                let wait = Duration::from_secs(1u64 << (over - 1).min(20)).min(MAX_WAIT);
                (e.last + wait).checked_duration_since(now)
            })
            .max();
        match wait {
            Some(w) if !w.is_zero() => Err(w),
            _ => Ok(()),
        }
    }

    pub fn failed(&self, keys: &[Key], now: Instant) {
        let mut entries = self.entries.lock();
        if entries.len() >= MAX_ENTRIES {
            entries.retain(|_, e| now.duration_since(e.last) < FORGET);
            if entries.len() >= MAX_ENTRIES {
                // A flood of names or addresses: keep the newest half.
                let mut lasts: Vec<Instant> = entries.values().map(|e| e.last).collect();
                lasts.sort();
                let cut = lasts[lasts.len() / 2];
                entries.retain(|_, e| e.last > cut);
            }
        }
        for k in keys {
            let e = entries.entry(k.clone()).or_insert(Entry {
                failures: 0,
                last: now,
            });
            if now.duration_since(e.last) >= FORGET {
                e.failures = 0;
            }
            e.failures = e.failures.saturating_add(1);
            e.last = now;
        }
    }

    pub fn succeeded(&self, account: &Key) {
        self.entries.lock().remove(account);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_grow_after_the_free_failures_and_a_success_clears_them() {
        let t = Throttle::default();
        let olga = Key::Account("olga".into());
        let ip = Key::Address("10.0.0.1".parse().unwrap());
        let keys = [olga.clone(), ip.clone()];
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(t.check(&keys, t0), Ok(()));
            t.failed(&keys, t0);
        }
        assert_eq!(t.check(&keys, t0), Ok(()), "three are free");
        t.failed(&keys, t0);
        assert_eq!(t.check(&keys, t0), Err(Duration::from_secs(1)));
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(t.check(&keys, t1), Ok(()));
        t.failed(&keys, t1);
        assert_eq!(t.check(&keys, t1), Err(Duration::from_secs(2)));
        // Another account from the same address is not held back yet.
        let other = [Key::Account("pat".into()), ip.clone()];
        assert_eq!(t.check(&other, t1), Ok(()));
        t.succeeded(&olga);
        assert_eq!(t.check(&keys, t1), Ok(()));
        // Many failures: bounded wait.
        let olga = [olga];
        for _ in 0..40 {
            t.failed(&olga, t1);
        }
        assert_eq!(t.check(&olga, t1), Err(MAX_WAIT));
        // Forgotten after an hour without failures.
        let later = t1 + FORGET;
        t.failed(&olga, later);
        assert_eq!(t.check(&olga, later), Ok(()));
    }

    #[test]
    fn a_flood_of_names_stays_bounded() {
        let t = Throttle::default();
        let now = Instant::now();
        for i in 0..(MAX_ENTRIES + 10) {
            let at = now + Duration::from_millis(i as u64);
            t.failed(&[Key::Account(format!("u{i}"))], at);
        }
        assert!(t.entries.lock().len() <= MAX_ENTRIES);
    }
}
