//! Ignore rules: `with.ignore` entries and plain-text `.trivyignore` files.
//!
//! A rule names a vulnerability ID (or one of its vendor IDs), a secret rule
//! ID or a misconfiguration ID (`DS-0002` or `AVD-DS-0002`), compared
//! ASCII-case-insensitively. A rule with an expiry date applies while today
//! is before that date, as Trivy's `exp:` does (`exp:2023-01-01` stops
//! ignoring on 2023-01-01).

use crate::date::Date;
use crate::trivy::Finding;

/// One ignore rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub id: String,
    /// Why it is ignored (`with.ignore` requires one; in a `.trivyignore`
    /// the comment just above the line, when there is one).
    pub reason: String,
    pub expires: Option<Date>,
    /// Where the rule comes from: `with.ignore[0]`, `.trivyignore:4`.
    pub origin: String,
}

impl Rule {
    pub fn matches(&self, f: &Finding) -> bool {
        f.id.eq_ignore_ascii_case(&self.id)
            || f.aliases.iter().any(|a| a.eq_ignore_ascii_case(&self.id))
    }
}

/// Parses a plain-text `.trivyignore`: one ID per line (the first
/// whitespace-separated token), `#` comments, an optional `exp:YYYY-MM-DD`
/// token; other `key:value` tokens and words are ignored, as Trivy does.
/// A malformed `exp:` date is an error naming the line.
pub fn parse_trivyignore(name: &str, text: &str) -> Result<Vec<Rule>, String> {
    let mut rules = Vec::new();
    let mut comment = String::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() {
            comment.clear();
            continue;
        }
        if line.starts_with('#') {
            let c = line.trim_start_matches('#');
            let c = c.trim();
            if !c.is_empty() {
                comment = c.to_string();
            }
            continue;
        }
        // A trailing `# comment` after the ID is not part of it.
        let content = match line.find(" #") {
            Some(p) => &line[..p],
            None => line,
        };
        let mut tokens = content.split_whitespace();
        let Some(id) = tokens.next() else { continue };
        let mut expires = None;
        for t in tokens {
            if let Some(d) = t.strip_prefix("exp:") {
                expires = Some(Date::parse(d).map_err(|e| format!("{name}:{}: exp: {e}", i + 1))?);
            }
        }
        rules.push(Rule {
            id: id.to_string(),
            reason: if comment.is_empty() {
                format!("listed in {name}")
            } else {
                comment.clone()
            },
            expires,
            origin: format!("{name}:{}", i + 1),
        });
    }
    Ok(rules)
}

/// The rules in force on a given day.
#[derive(Debug, Default)]
pub struct Ignores {
    active: Vec<Rule>,
    /// Rules whose date has come: they no longer ignore anything.
    pub expired: Vec<Rule>,
}

impl Ignores {
    pub fn new(rules: Vec<Rule>, today: Date) -> Ignores {
        let (active, expired): (Vec<Rule>, Vec<Rule>) = rules
            .into_iter()
            .partition(|r| r.expires.is_none_or(|d| today < d));
        Ignores { active, expired }
    }

    /// The first active rule matching `f`.
    pub fn matching(&self, f: &Finding) -> Option<&Rule> {
        self.active.iter().find(|r| r.matches(f))
    }

    /// Expired rules whose ID no active rule covers (the ones worth a warning).
    pub fn stale(&self) -> Vec<&Rule> {
        self.expired
            .iter()
            .filter(|e| !self.active.iter().any(|a| a.id.eq_ignore_ascii_case(&e.id)))
            .collect()
    }

    pub fn active_count(&self) -> usize {
        self.active.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trivy::{Kind, Severity};

    fn data(name: &str) -> String {
        let p = format!(
            "{}/../../../shared/data/trivy/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
    }

    fn date(s: &str) -> Date {
        Date::parse(s).unwrap()
    }

    fn finding(kind: Kind, id: &str, aliases: &[&str]) -> Finding {
        Finding {
            kind,
            id: id.into(),
            aliases: aliases.iter().map(|a| a.to_string()).collect(),
            severity: Severity::High,
            target: "t".into(),
            class: None,
            pkg: None,
            installed: None,
            fixed: None,
            status: None,
            title: None,
            line: None,
        }
    }

    #[test]
    fn trivyignore_txt_from_trivy_tests() {
        let rules = parse_trivyignore(".trivyignore", &data("trivyignore.txt")).unwrap();
        let ids: Vec<&str> = rules.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "CVE-2019-0001",
                "CVE-2019-0002",
                "CVE-2019-0004",
                "CVE-2019-0005",
                "CVE-2019-0006",
                "ID300",
                "AVD-ID400",
                "generic-unwanted-rule",
                "GPL-3.0",
            ]
        );
        assert_eq!(rules[0].expires, None);
        assert_eq!(rules[2].expires, Some(date("2020-01-01")));
        assert_eq!(rules[3].expires, Some(date("9999-01-01")));
        // `key2:value2` is an extra token, not part of the ID or the date.
        assert_eq!(rules[4].expires, Some(date("9999-01-01")));
        assert_eq!(rules[0].reason, "vulnerabilities");
        assert_eq!(rules[6].reason, "alias");
        assert_eq!(rules[2].origin, ".trivyignore:4");

        let ign = Ignores::new(rules, date("2025-06-01"));
        assert_eq!(ign.active_count(), 8);
        assert_eq!(ign.expired.len(), 1);
        assert_eq!(ign.expired[0].id, "CVE-2019-0004");
        assert!(ign
            .matching(&finding(Kind::Vulnerability, "CVE-2019-0005", &[]))
            .is_some());
        assert!(ign
            .matching(&finding(Kind::Vulnerability, "CVE-2019-0004", &[]))
            .is_none());
        assert!(ign
            .matching(&finding(Kind::Misconfiguration, "ID400", &["AVD-ID400"]))
            .is_some());
        assert!(ign
            .matching(&finding(Kind::Secret, "generic-unwanted-rule", &[]))
            .is_some());
    }

    #[test]
    fn trivyignore_docs_example() {
        let rules = parse_trivyignore(".trivyignore", &data("trivyignore-docs.txt")).unwrap();
        let ids: Vec<&str> = rules.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "CVE-2018-14618",
                "CVE-2019-14697",
                "CVE-2019-1543",
                "AVD-DS-0002",
                "generic-unwanted-rule",
                "aws-account-id",
                "GPL-3.0",
                "Apache-2.0",
            ]
        );
        assert_eq!(rules[0].reason, "Accept the risk");
        assert_eq!(rules[1].reason, "Accept the risk until 2023-01-01");
        assert_eq!(rules[1].expires, Some(date("2023-01-01")));
        // Expiry: in force the day before, expired on the day.
        let f = finding(Kind::Vulnerability, "CVE-2019-14697", &[]);
        let before = Ignores::new(rules.clone(), date("2022-12-31"));
        assert!(before.matching(&f).is_some());
        let on = Ignores::new(rules, date("2023-01-01"));
        assert!(on.matching(&f).is_none());
        assert_eq!(on.stale().len(), 1);
        // DS-0002 misconfigs are matched through their AVD alias.
        let m = finding(Kind::Misconfiguration, "DS-0002", &["AVD-DS-0002"]);
        assert!(on.matching(&m).is_some());
    }

    #[test]
    fn bad_exp_names_the_line() {
        let e = parse_trivyignore("ci/.trivyignore", "# x\nCVE-1 exp:2023-02-30\n").unwrap_err();
        assert!(e.starts_with("ci/.trivyignore:2: exp:"), "{e}");
    }

    #[test]
    fn trailing_comment_and_case() {
        let rules = parse_trivyignore("f", "cve-2020-1  # not reachable\n\n  \n").unwrap();
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].reason, "listed in f");
        let ign = Ignores::new(rules, date("2025-01-01"));
        assert!(ign
            .matching(&finding(Kind::Vulnerability, "CVE-2020-1", &[]))
            .is_some());
    }

    #[test]
    fn renewed_entry_is_not_stale() {
        let mk = |exp: &str, origin: &str| Rule {
            id: "CVE-1".into(),
            reason: "r".into(),
            expires: Some(date(exp)),
            origin: origin.into(),
        };
        let ign = Ignores::new(
            vec![mk("2020-01-01", "a"), mk("2030-01-01", "b")],
            date("2025-01-01"),
        );
        assert_eq!(ign.expired.len(), 1);
        assert!(ign.stale().is_empty());
    }
}
