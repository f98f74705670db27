//! The upstream pool: the set of `ip:port` the traffic port sends requests
//! to, swapped atomically by the admin API, with in-flight counts.
//!
//! Every request takes a [`Lease`] on one upstream (round robin) under the
//! pool lock, so once [`Pool::replace`] returns, no new request can pick an
//! upstream it removed, and every request already on one is counted in its
//! `in_flight` until the response is relayed. Removed upstreams with
//! requests in flight stay listed as `draining` until those finish.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;

#[derive(Debug)]
struct Upstream {
    addr: SocketAddr,
    in_flight: AtomicUsize,
}

#[derive(Debug, Default)]
struct State {
    upstreams: Vec<Arc<Upstream>>,
    draining: Vec<Arc<Upstream>>,
    version: u64,
    next: usize,
}

/// The shared pool.
#[derive(Debug, Default)]
pub struct Pool {
    state: Mutex<State>,
}

/// One request's hold on an upstream: counted in its `in_flight` until dropped.
#[derive(Debug)]
pub struct Lease {
    upstream: Arc<Upstream>,
}

impl Lease {
    pub fn addr(&self) -> SocketAddr {
        self.upstream.addr
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.upstream.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One upstream in a [`Snapshot`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UpstreamInfo {
    pub addr: String,
    pub in_flight: usize,
}

/// What `GET /pool` answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Snapshot {
    /// The current pool, in order.
    pub upstreams: Vec<UpstreamInfo>,
    /// Upstreams removed from the pool that still have requests in flight.
    pub draining: Vec<UpstreamInfo>,
    /// Bumped by every replacement.
    pub version: u64,
}

fn info(u: &Upstream) -> UpstreamInfo {
    UpstreamInfo {
        addr: u.addr.to_string(),
        in_flight: u.in_flight.load(Ordering::SeqCst),
    }
}

impl Pool {
    pub fn new(addrs: Vec<SocketAddr>) -> Self {
        let pool = Pool::default();
        if !addrs.is_empty() {
            pool.replace(addrs);
        }
        pool
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking request thread must not take the proxy down.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next upstream in round-robin order, skipping `exclude` (the ones
    /// a request already failed to reach). `None` when none is left.
    pub fn pick(&self, exclude: &[SocketAddr]) -> Option<Lease> {
        let mut s = self.lock();
        let n = s.upstreams.len();
        for i in 0..n {
            let idx = (s.next + i) % n;
            let u = &s.upstreams[idx];
            if exclude.contains(&u.addr) {
                continue;
            }
            u.in_flight.fetch_add(1, Ordering::SeqCst);
            let upstream = u.clone();
            s.next = (idx + 1) % n;
            return Some(Lease { upstream });
        }
        None
    }

    /// Replaces the pool atomically (duplicates dropped, order kept) and
    /// returns the new version. Upstreams kept keep their counts; removed
    /// ones with requests in flight move to `draining`.
    pub fn replace(&self, addrs: Vec<SocketAddr>) -> u64 {
        let mut s = self.lock();
        let mut old: Vec<Arc<Upstream>> = std::mem::take(&mut s.upstreams);
        old.append(&mut s.draining);
        let mut new: Vec<Arc<Upstream>> = Vec::with_capacity(addrs.len());
        for addr in addrs {
            if new.iter().any(|u| u.addr == addr) {
                continue;
            }
            let u = match old.iter().position(|u| u.addr == addr) {
                Some(i) => old.swap_remove(i),
                None => Arc::new(Upstream {
                    addr,
                    in_flight: AtomicUsize::new(0),
                }),
            };
            new.push(u);
        }
        s.draining = old
            .into_iter()
            .filter(|u| u.in_flight.load(Ordering::SeqCst) > 0)
            .collect();
        s.upstreams = new;
        s.next = 0;
        s.version += 1;
        s.version
    }

    /// The pool, its draining upstreams (those still busy) and its version.
    pub fn snapshot(&self) -> Snapshot {
        let mut s = self.lock();
        s.draining
            .retain(|u| u.in_flight.load(Ordering::SeqCst) > 0);
        Snapshot {
            upstreams: s.upstreams.iter().map(|u| info(u)).collect(),
            draining: s.draining.iter().map(|u| info(u)).collect(),
            version: s.version,
        }
    }

    pub fn len(&self) -> usize {
        self.lock().upstreams.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Parses `ip:port` entries of a `PUT /pool` body.
pub fn parse_addrs(items: &[String]) -> Result<Vec<SocketAddr>, String> {
    items
        .iter()
        .map(|s| {
            s.trim()
                .parse::<SocketAddr>()
                .map_err(|_| format!("{s:?} is not an ip:port address"))
                .and_then(|a| {
                    if a.port() == 0 {
                        Err(format!("{s:?}: port 0"))
                    } else {
                        Ok(a)
                    }
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn round_robin_and_exclusions() {
        let p = Pool::new(vec![a("10.0.0.1:80"), a("10.0.0.2:80"), a("10.0.0.1:80")]);
        assert_eq!(p.len(), 2, "duplicates dropped");
        let picks: Vec<SocketAddr> = (0..4).map(|_| p.pick(&[]).unwrap().addr()).collect();
        assert_eq!(
            picks,
            vec![
                a("10.0.0.1:80"),
                a("10.0.0.2:80"),
                a("10.0.0.1:80"),
                a("10.0.0.2:80")
            ]
        );
        let l = p.pick(&[a("10.0.0.1:80")]).unwrap();
        assert_eq!(l.addr(), a("10.0.0.2:80"));
        assert!(p.pick(&[a("10.0.0.1:80"), a("10.0.0.2:80")]).is_none());
        assert!(Pool::default().pick(&[]).is_none());
    }

    #[test]
    fn in_flight_counts_follow_leases() {
        let p = Pool::new(vec![a("10.0.0.1:80")]);
        let l1 = p.pick(&[]).unwrap();
        let l2 = p.pick(&[]).unwrap();
        assert_eq!(p.snapshot().upstreams[0].in_flight, 2);
        drop(l1);
        assert_eq!(p.snapshot().upstreams[0].in_flight, 1);
        drop(l2);
        assert_eq!(p.snapshot().upstreams[0].in_flight, 0);
    }

    #[test]
    fn replace_keeps_counts_and_drains_removed() {
        let p = Pool::new(vec![a("10.0.0.1:80"), a("10.0.0.2:80")]);
        assert_eq!(p.snapshot().version, 1);
        let busy_old = p.pick(&[]).unwrap(); // .1
        let busy_kept = p.pick(&[]).unwrap(); // .2
        let v = p.replace(vec![a("10.0.0.2:80"), a("10.0.0.3:80")]);
        assert_eq!(v, 2);
        let s = p.snapshot();
        assert_eq!(
            s.upstreams,
            vec![
                UpstreamInfo {
                    addr: "10.0.0.2:80".into(),
                    in_flight: 1
                },
                UpstreamInfo {
                    addr: "10.0.0.3:80".into(),
                    in_flight: 0
                },
            ]
        );
        assert_eq!(
            s.draining,
            vec![UpstreamInfo {
                addr: "10.0.0.1:80".into(),
                in_flight: 1
            }]
        );
        // No new request goes to the removed upstream.
        for _ in 0..4 {
            assert_ne!(p.pick(&[]).unwrap().addr(), a("10.0.0.1:80"));
        }
        drop(busy_old);
        assert!(p.snapshot().draining.is_empty());
        // Re-adding a draining upstream brings its count back.
        let again = p.pick(&[]).unwrap();
        drop(busy_kept);
        p.replace(vec![]);
        assert!(p.is_empty());
        assert_eq!(p.snapshot().draining.len(), 1);
        p.replace(vec![again.addr()]);
        assert_eq!(p.snapshot().upstreams[0].in_flight, 1);
        assert!(p.snapshot().draining.is_empty());
    }

    #[test]
    fn parses_addresses() {
        assert_eq!(
            parse_addrs(&["172.17.0.5:8080".into(), " [::1]:80 ".into()]).unwrap(),
            vec![a("172.17.0.5:8080"), a("[::1]:80")]
        );
        assert!(parse_addrs(&["demo:8080".into()]).is_err());
        assert!(parse_addrs(&["1.2.3.4".into()]).is_err());
        assert!(parse_addrs(&["1.2.3.4:0".into()]).is_err());
    }
}
