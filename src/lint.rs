//! Tool patterns that can match no known tool: a profile's `tools`, `approval` or `deny`
//! entry (or a token's narrowing) without a wildcard that names no override, no spec
//! operation and no name a `paths` template generates. A typo such as `tickets.refnd`
//! would otherwise turn a parked refund into a silent `not_granted`.

use crate::canon::Method;
use crate::config::Snapshot;
use crate::policy::Glob;
use std::collections::BTreeSet;

const METHODS: [Method; 7] = [
    Method::Get,
    Method::Head,
    Method::Post,
    Method::Put,
    Method::Patch,
    Method::Delete,
    Method::Options,
];

/// Every tool name the configuration knows: overrides' names, the names `paths`
/// templates generate for every method, and the names of spec operations (but those an
/// override shadows: their requests carry the override's name).
pub fn known_tools(snap: &Snapshot) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let shadowed: BTreeSet<&str> = snap
        .openapi
        .routes
        .iter()
        .flat_map(|r| r.shadowed.iter().map(|(op, _)| &*op.name))
        .collect();
    for rules in &snap.classifier.routes {
        for k in &rules.known {
            for op in &k.ops {
                if !shadowed.contains(&*op.name) {
                    out.insert(op.name.to_string());
                }
            }
        }
        for o in &rules.overrides {
            out.insert(o.name.to_string());
            for w in o.when_risk.iter().flat_map(|w| w.iter()) {
                if let Some(n) = &w.name {
                    out.insert(n.to_string());
                }
            }
        }
        for k in 0..rules.known.len() {
            for m in METHODS {
                out.insert(rules.name_for(k, m).to_string());
            }
        }
    }
    out
}

/// Whether `pattern` can match no known tool: no wildcard, and not a known name.
pub fn matches_nothing(known: &BTreeSet<String>, pattern: &str) -> bool {
    !pattern.contains('*') && !known.iter().any(|k| Glob(pattern.into()).matches(k))
}

/// The known name closest to `pattern` (by edit distance), if it is plausibly a typo.
pub fn closest<'a>(known: &'a BTreeSet<String>, pattern: &str) -> Option<&'a str> {
    let (best, d) = known
        .iter()
        .map(|k| (k.as_str(), edit_distance(k, pattern)))
        .min_by_key(|(_, d)| *d)?;
    (d <= 2.max(pattern.len() / 5)).then_some(best)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// One warning line (without `warning: `) for `pattern` at `place`.
fn warning(known: &BTreeSet<String>, place: &str, pattern: &str) -> String {
    let hint = match closest(known, pattern) {
        Some(k) => format!("; did you mean `{k}`?"),
        None => String::new(),
    };
    format!(
        "{place}: `{pattern}` matches no known tool (no override, spec operation or `paths` \
         template has that name){hint} — a request the id heuristic names so under \
         `unknown_paths: classify` is the only one it can match"
    )
}

/// Warnings for every profile pattern that can match no known tool.
pub fn profile_patterns(snap: &Snapshot) -> Vec<String> {
    let known = known_tools(snap);
    let mut out = Vec::new();
    for (name, p) in &snap.profiles {
        for (key, globs) in [
            ("tools", &p.tools),
            ("approval", &p.approval),
            ("deny", &p.deny),
        ] {
            for (i, g) in globs.iter().enumerate() {
                if matches_nothing(&known, &g.0) {
                    out.push(warning(
                        &known,
                        &format!("profiles.{name}.{key}[{i}]"),
                        &g.0,
                    ));
                }
            }
        }
        for e in &p.conditional {
            if matches_nothing(&known, &e.glob.0) {
                out.push(warning(
                    &known,
                    &format!(
                        "profiles.{name}.{} (when `{}`)",
                        e.list.as_str(),
                        e.when.text
                    ),
                    &e.glob.0,
                ));
            }
        }
    }
    out
}

/// Warnings for a token's `tools` narrowing (answered with `POST /tokens`).
pub fn narrowing(snap: &Snapshot, tools: &[String]) -> Vec<String> {
    let known = known_tools(snap);
    tools
        .iter()
        .enumerate()
        .filter(|(_, t)| matches_nothing(&known, t))
        .map(|(i, t)| warning(&known, &format!("tools[{i}]"), t))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_counts_single_edits() {
        assert_eq!(edit_distance("tickets.refund", "tickets.refnd"), 1);
        assert_eq!(edit_distance("abc", "abc"), 0);
        assert_eq!(edit_distance("", "ab"), 2);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn wildcards_and_known_names_are_not_flagged() {
        let known: BTreeSet<String> = ["tickets.get", "tickets.refund"]
            .into_iter()
            .map(String::from)
            .collect();
        assert!(!matches_nothing(&known, "tickets.get"));
        assert!(!matches_nothing(&known, "tickets.*"));
        assert!(!matches_nothing(&known, "*.nothing"));
        assert!(matches_nothing(&known, "tickets.refnd"));
        assert_eq!(closest(&known, "tickets.refnd"), Some("tickets.refund"));
        assert_eq!(closest(&known, "billing.invoices.list"), None);
    }
}
