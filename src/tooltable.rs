//! The tool table `check` prints: one row per known template and method with the tool
//! name, risk, route and upstream, and which profiles allow, park or deny it.

use crate::canon::Method;
use crate::config::Snapshot;
use crate::policy::{decide, Agent, Decision, Input, Narrowing, Switches};
use std::fmt::Write;

pub struct Row {
    pub tool: String,
    pub method: String,
    pub template: String,
    pub risk: String,
    pub route: String,
    pub upstream: String,
    pub allow: Vec<String>,
    pub park: Vec<String>,
    pub deny: Vec<String>,
}

const TABLE_METHODS: [Method; 5] = [
    Method::Get,
    Method::Post,
    Method::Put,
    Method::Patch,
    Method::Delete,
];

/// A concrete path that a template matches (`{x}` → `1`, `{*x}` → `x`).
pub fn sample_path(template: &str) -> String {
    template
        .split('/')
        .map(|s| {
            if s.starts_with("{*") {
                "x"
            } else if s.starts_with('{') {
                "1"
            } else {
                s
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

pub fn rows(snap: &Snapshot) -> Vec<Row> {
    let mut out = Vec::new();
    for (ri, rules) in snap.classifier.routes.iter().enumerate() {
        let mut entries: Vec<(Method, String)> = Vec::new();
        for o in &rules.overrides {
            match &o.methods {
                Some(ms) => entries.extend(ms.iter().map(|m| (*m, o.pattern.text.clone()))),
                None => entries.extend(TABLE_METHODS.iter().map(|m| (*m, o.pattern.text.clone()))),
            }
        }
        for k in &rules.known {
            entries.extend(TABLE_METHODS.iter().map(|m| (*m, k.template.to_string())));
        }
        for (m, template) in entries {
            let path = sample_path(&template);
            let Ok(tool) = snap.classifier.classify(m, &path) else {
                continue;
            };
            if tool.route != ri
                || out.iter().any(|r: &Row| {
                    r.method == m.as_str() && r.template == template && r.route == rules.prefix
                })
            {
                continue;
            }
            let route = &snap.routes[ri];
            let mut row = Row {
                tool: tool.name.to_string(),
                method: m.as_str().into(),
                template,
                risk: tool.risk.to_string(),
                route: route.prefix.clone(),
                upstream: snap.upstreams[route.upstream].name.clone(),
                allow: vec![],
                park: vec![],
                deny: vec![],
            };
            for p in snap.profiles.values() {
                let agent = Agent {
                    id: String::new(),
                    profile: p.clone(),
                    tenant: None,
                    owner: None,
                    resources: None,
                };
                let d = decide(&Input {
                    agent: &agent,
                    narrowing: &Narrowing::default(),
                    tool: &tool,
                    path: &path,
                    switches: &Switches::default(),
                    approved: false,
                });
                match d {
                    Decision::Allow { .. } => row.allow.push(p.name.clone()),
                    Decision::Park => row.park.push(p.name.clone()),
                    Decision::Deny { .. } => row.deny.push(p.name.clone()),
                }
            }
            out.push(row);
        }
    }
    out
}

pub fn render(snap: &Snapshot) -> String {
    let rows = rows(snap);
    let head = [
        "TOOL", "METHOD", "TEMPLATE", "RISK", "ROUTE", "UPSTREAM", "ALLOW", "PARK", "DENY",
    ];
    let cells: Vec<[String; 9]> = rows
        .iter()
        .map(|r| {
            let j = |v: &Vec<String>| {
                if v.is_empty() {
                    "-".to_string()
                } else {
                    v.join(",")
                }
            };
            [
                r.tool.clone(),
                r.method.clone(),
                r.template.clone(),
                r.risk.clone(),
                r.route.clone(),
                r.upstream.clone(),
                j(&r.allow),
                j(&r.park),
                j(&r.deny),
            ]
        })
        .collect();
    let mut w = head.map(str::len);
    for c in &cells {
        for (i, s) in c.iter().enumerate() {
            w[i] = w[i].max(s.len());
        }
    }
    let mut s = String::new();
    let line = |s: &mut String, c: &[&str]| {
        let parts: Vec<String> = c
            .iter()
            .enumerate()
            .map(|(i, x)| format!("{x:<width$}", width = w[i]))
            .collect();
        let _ = writeln!(s, "{}", parts.join("  ").trim_end());
    };
    line(&mut s, &head);
    for c in &cells {
        line(&mut s, &c.iter().map(String::as_str).collect::<Vec<_>>());
    }
    for (short, long) in &snap.shadows {
        let _ = writeln!(s, "note: route {long} takes precedence over {short} for paths under {long} (longest prefix wins)");
    }
    for w in partial_overrides(snap) {
        let _ = writeln!(s, "warning: {w}");
    }
    for w in crate::lint::profile_patterns(snap) {
        let _ = writeln!(s, "warning: {w}");
    }
    for (ri, r) in snap.classifier.routes.iter().enumerate() {
        if !r.unknown_deny {
            let _ = writeln!(s, "note: other paths under {} are classified by the id heuristic (unknown_paths: classify)", snap.routes[ri].prefix);
        }
    }
    let _ = writeln!(s, "policy_version: {}", snap.policy_version);
    s
}

/// Templates with an override for some methods and not others: the other methods on
/// that path fall to the next rule (a template or the heuristic), usually at a lower
/// risk than the override meant (`POST /x/{id}/refund` critical, `PATCH` there medium).
pub fn partial_overrides(snap: &Snapshot) -> Vec<String> {
    let mut out = Vec::new();
    for rules in &snap.classifier.routes {
        let mut seen: Vec<&str> = Vec::new();
        for o in &rules.overrides {
            let t = o.pattern.text.as_str();
            if seen.contains(&t) {
                continue;
            }
            seen.push(t);
            let mut covered: Vec<Method> = Vec::new();
            for o2 in rules.overrides.iter().filter(|o2| o2.pattern.text == t) {
                match &o2.methods {
                    None => covered.extend(TABLE_METHODS),
                    Some(ms) => covered.extend(ms.iter().copied()),
                }
            }
            if covered.contains(&Method::Get) {
                covered.push(Method::Head);
            }
            let missing: Vec<&str> = TABLE_METHODS
                .into_iter()
                .filter(|m| !covered.contains(m))
                .map(Method::as_str)
                .collect();
            if !missing.is_empty() && missing.len() < 5 {
                let names: Vec<&str> = covered
                    .iter()
                    .filter(|m| **m != Method::Head)
                    .map(|m| m.as_str())
                    .collect();
                out.push(format!(
                    "`{t}` has an override for {} but not for {}; those fall to the next rule \
                     (write `match: \"{}|{} {t}\"` or `\"* {t}\"` to cover them)",
                    names.join(", "),
                    missing.join(", "),
                    names.join("|"),
                    missing.join("|"),
                ));
            }
        }
    }
    out
}
