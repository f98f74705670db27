//! Pure planning: rolling steps, pool comparisons, port choice, which image
//! is the previous version, and the proxy's `/pool` document.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One step of a rolling deploy: start (and check) a new replica, and/or
/// take old replica `remove` out of the pool and stop it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    pub add: bool,
    pub remove: Option<usize>,
}

/// Rolling steps from `old` running replicas to `replicas` new ones. New
/// replicas come first, so the pool is never empty while an old one goes
/// (when there is something to serve with).
pub fn rolling_steps(old: usize, replicas: usize) -> Vec<Step> {
    (0..old.max(replicas))
        .map(|i| Step {
            add: i < replicas,
            remove: (i < old).then_some(i),
        })
        .collect()
}

/// One upstream of the proxy's pool, as `GET /pool` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Upstream {
    pub addr: String,
    #[serde(default)]
    pub in_flight: usize,
}

/// `GET /pool`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct PoolDoc {
    #[serde(default)]
    pub upstreams: Vec<Upstream>,
    #[serde(default)]
    pub draining: Vec<Upstream>,
    #[serde(default)]
    pub version: u64,
}

/// `PUT /pool`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PoolUpdate<'a> {
    pub upstreams: &'a [String],
}

impl PoolDoc {
    /// The pool's addresses, in order.
    pub fn addrs(&self) -> Vec<String> {
        self.upstreams.iter().map(|u| u.addr.clone()).collect()
    }

    /// Whether the pool holds exactly `want` (order and duplicates aside).
    pub fn same_set(&self, want: &[String]) -> bool {
        let mut a = self.addrs();
        let mut b = want.to_vec();
        a.sort();
        a.dedup();
        b.sort();
        b.dedup();
        a == b
    }

    /// Requests still in flight on any of `addrs` (in the pool or draining).
    pub fn in_flight(&self, addrs: &[String]) -> usize {
        self.upstreams
            .iter()
            .chain(self.draining.iter())
            .filter(|u| addrs.contains(&u.addr))
            .map(|u| u.in_flight)
            .sum()
    }
}

/// The first port of `range` (inclusive) not in `used`.
pub fn pick_port(range: (u16, u16), used: &[u16]) -> Option<u16> {
    (range.0..=range.1).find(|p| !used.contains(p))
}

/// The image most of `images` run (the first one seen on a tie): the
/// version currently deployed.
pub fn majority_image<'a>(images: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let mut counts: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for (i, img) in images.into_iter().enumerate() {
        let e = counts.entry(img).or_insert((0, i));
        e.0 += 1;
    }
    counts
        .into_iter()
        .max_by(|a, b| a.1 .0.cmp(&b.1 .0).then(b.1 .1.cmp(&a.1 .1)))
        .map(|(img, _)| img.to_string())
}

/// Whether a failed container start is a host port someone else holds
/// (worth another port from the range).
pub fn is_port_conflict(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("port is already allocated")
        || m.contains("address already in use")
        || (m.contains("bind for") && m.contains("failed"))
}

/// `<service>-<suffix>`: a name for a new app container that is not taken
/// and is not the proxy's.
pub fn app_name(service: &str, suffix: &str) -> String {
    format!("{service}-{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(add: bool, remove: Option<usize>) -> Step {
        Step { add, remove }
    }

    #[test]
    fn rolling_plans() {
        assert_eq!(rolling_steps(0, 2), vec![s(true, None), s(true, None)]);
        assert_eq!(
            rolling_steps(2, 2),
            vec![s(true, Some(0)), s(true, Some(1))]
        );
        assert_eq!(
            rolling_steps(3, 1),
            vec![s(true, Some(0)), s(false, Some(1)), s(false, Some(2))]
        );
        assert_eq!(
            rolling_steps(1, 3),
            vec![s(true, Some(0)), s(true, None), s(true, None)]
        );
    }

    #[test]
    fn pool_documents() {
        let doc: PoolDoc = serde_json::from_str(
            r#"{"upstreams":[{"addr":"172.17.0.5:8080","in_flight":2},{"addr":"172.17.0.6:8080","in_flight":0}],
                "draining":[{"addr":"172.17.0.4:8080","in_flight":1}],"version":7}"#,
        )
        .unwrap();
        assert_eq!(doc.version, 7);
        assert!(doc.same_set(&["172.17.0.6:8080".into(), "172.17.0.5:8080".into()]));
        assert!(!doc.same_set(&["172.17.0.6:8080".into()]));
        assert_eq!(doc.in_flight(&["172.17.0.4:8080".into()]), 1);
        assert_eq!(
            doc.in_flight(&["172.17.0.4:8080".into(), "172.17.0.5:8080".into()]),
            3
        );
        assert_eq!(doc.in_flight(&["10.0.0.1:1".into()]), 0);
        // A proxy without `draining` still parses.
        let doc: PoolDoc = serde_json::from_str(r#"{"upstreams":[],"version":0}"#).unwrap();
        assert!(doc.same_set(&[]));
        let body = serde_json::to_string(&PoolUpdate {
            upstreams: &["1.2.3.4:80".into()],
        })
        .unwrap();
        assert_eq!(body, r#"{"upstreams":["1.2.3.4:80"]}"#);
    }

    #[test]
    fn ports_images_and_names() {
        assert_eq!(pick_port((10, 12), &[10, 11]), Some(12));
        assert_eq!(pick_port((10, 11), &[10, 11]), None);
        assert_eq!(majority_image(["a", "b", "b"]).as_deref(), Some("b"));
        assert_eq!(majority_image(["b", "a"]).as_deref(), Some("b"));
        assert_eq!(majority_image([]), None);
        assert!(is_port_conflict(
            "failed: Bind for 127.0.0.1:18100 failed: port is already allocated"
        ));
        assert!(is_port_conflict(
            "listen tcp4 127.0.0.1:1: bind: address already in use"
        ));
        assert!(!is_port_conflict("no such image"));
        assert_eq!(app_name("demo", "ab12cd"), "demo-ab12cd");
    }
}
