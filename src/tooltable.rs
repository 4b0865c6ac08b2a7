//! The tool table `check` prints: one row per known template and method with the tool
//! name, risk, route and upstream, and which profiles allow, park or deny it.

use crate::canon::Method;
use crate::classify::{ConflictWith, Tool};
use crate::config::Snapshot;
use crate::policy::{decide, Agent, Decision, Input, Narrowing, Switches};
use std::collections::HashSet;
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
    /// `spec`, `paths`, `override` or `heuristic`.
    pub source: &'static str,
    /// The tool's description (an override's own, else its spec operation's).
    pub description: Option<String>,
}

/// A tool's description: its override's own, else its spec operation's.
pub fn description(snap: &Snapshot, tool: &Tool) -> Option<String> {
    if tool.source == crate::classify::Source::Override {
        if let Some(d) = snap.classifier.routes[tool.route]
            .overrides
            .iter()
            .find(|o| o.name == tool.name)
            .and_then(|o| o.description.clone())
        {
            return Some(d);
        }
    }
    tool.op.as_ref().and_then(|op| op.description.clone())
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
    let mut seen: HashSet<(Method, String, usize)> = HashSet::new();
    for (ri, rules) in snap.classifier.routes.iter().enumerate() {
        let mut entries: Vec<(Method, String)> = Vec::new();
        for o in &rules.overrides {
            match &o.methods {
                Some(ms) => entries.extend(ms.iter().map(|m| (*m, o.pattern.text.clone()))),
                None => entries.extend(TABLE_METHODS.iter().map(|m| (*m, o.pattern.text.clone()))),
            }
        }
        for k in &rules.known {
            // A spec template lists the spec's methods; a `paths` template every method.
            entries.extend(k.ops.iter().map(|op| (op.method, op.template.to_string())));
            if k.all_methods {
                entries.extend(
                    TABLE_METHODS
                        .iter()
                        .filter(|m| !k.ops.iter().any(|op| op.method == **m))
                        .map(|m| (*m, k.template.to_string())),
                );
            }
        }
        for (m, template) in entries {
            let path = sample_path(&template);
            let Ok(tool) = snap.classifier.classify(m, &path) else {
                continue;
            };
            if tool.route != ri || !seen.insert((m, template.clone(), ri)) {
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
                source: tool.source.as_str(),
                description: description(snap, &tool),
            };
            for p in snap.profiles.values() {
                let agent = Agent {
                    id: String::new(),
                    profile: p.clone(),
                    tenant: None,
                    owner: None,
                    resources: None,
                };
                let listing = crate::conditions::Evaluated::listing(p);
                let d = decide(&Input {
                    agent: &agent,
                    narrowing: &Narrowing::default(),
                    tool: &tool,
                    path: &path,
                    switches: &Switches::default(),
                    approved: false,
                    evaluated: &listing,
                });
                match d {
                    Decision::Allow { .. } => row.allow.push(p.name.clone()),
                    Decision::Park { .. } => row.park.push(p.name.clone()),
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
        "TOOL",
        "METHOD",
        "TEMPLATE",
        "RISK",
        "ROUTE",
        "UPSTREAM",
        "ALLOW",
        "PARK",
        "DENY",
        "SOURCE",
        "DESCRIPTION",
    ];
    let cells: Vec<[String; 11]> = rows
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
                r.source.to_string(),
                r.description.as_deref().map_or("-".into(), summary_line),
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
    conditions(snap, &mut s);
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
            let _ = writeln!(s, "note: other paths under {} are classified by the id heuristic (unknown_paths: classify; source heuristic): they have no template and are not listed as tools or MCP tools", snap.routes[ri].prefix);
        }
    }
    openapi_notes(snap, &mut s);
    let _ = writeln!(s, "policy_version: {}", snap.policy_version);
    s
}

/// The conditional entries of each profile and the conditional risks of tools. The
/// table above counts a conditional grant or approval as holding, a conditional deny as not.
fn conditions(snap: &Snapshot, s: &mut String) {
    let mut lines = Vec::new();
    for (name, p) in &snap.profiles {
        for e in &p.conditional {
            lines.push(format!(
                "  profile {name}  {:<8}  {}  when {}",
                e.list.as_str(),
                e.glob.0,
                e.when.text
            ));
        }
    }
    for r in &snap.classifier.routes {
        for o in &r.overrides {
            for w in o.when_risk.iter().flat_map(|w| w.iter()) {
                let rename = w
                    .name
                    .as_ref()
                    .map(|n| format!(" as {n}"))
                    .unwrap_or_default();
                lines.push(format!(
                    "  tool    {}  risk {}{rename} when {}",
                    o.name, w.risk, w.when.text
                ));
            }
        }
    }
    if !lines.is_empty() {
        let _ = writeln!(
            s,
            "conditions (in the table a conditional grant or approval counts as holding, a conditional deny as not):"
        );
        for l in lines {
            let _ = writeln!(s, "{l}");
        }
    }
}

/// The first line of a description, at most 72 characters (the table's last column).
fn summary_line(d: &str) -> String {
    let line = d.lines().next().unwrap_or("").trim();
    match line.char_indices().nth(72) {
        Some((i, _)) => format!("{}…", line[..i].trim_end()),
        None => line.to_string(),
    }
}

/// What `check` says about the routes' specs: how each was combined with its route,
/// operations outside the prefix, operations an override shadows, template conflicts.
fn openapi_notes(snap: &Snapshot, s: &mut String) {
    use crate::openapi::located;
    for (ri, imp) in snap.openapi.routes.iter().enumerate() {
        let prefix = &snap.routes[ri].prefix;
        for spec in &imp.specs {
            let f = &spec.file.shown;
            let _ = writeln!(
                s,
                "note: spec {f} (OpenAPI {}, {} {}) on route {prefix}: {} operations; {}",
                spec.openapi,
                if spec.title.is_empty() {
                    "untitled"
                } else {
                    &spec.title
                },
                spec.api_version,
                spec.operations,
                spec.combined
            );
            if !spec.schemes.is_empty() {
                let _ = writeln!(
                    s,
                    "note: spec {f}: security schemes {} are shown in tool listings, never used as grants (the upstream credential is injected; profiles grant)",
                    spec.schemes.join(", ")
                );
            }
            for n in &spec.notes {
                let _ = writeln!(s, "note: spec {f}: {n}");
            }
            let outside: Vec<_> = spec.outside.iter().collect();
            for o in located(&outside) {
                let _ = writeln!(
                    s,
                    "note: spec operation {o} is outside route prefix {prefix}: not imported"
                );
            }
        }
        let rules = &snap.classifier.routes[ri];
        let shadowed: Vec<_> = imp.shadowed.iter().map(|(op, _)| &op.source).collect();
        for ((op, i), at) in imp.shadowed.iter().zip(located(&shadowed)) {
            let o = &rules.overrides[*i];
            let _ = writeln!(
                s,
                "note: spec operation {at} (tool {}) is shadowed by routes[{ri}].tools[{i}] `{}` (tool {}, risk {})",
                op.name, o.pattern.text, o.name, o.risk
            );
        }
        for c in &imp.conflicts {
            let (this, other, why) = match &c.with {
                ConflictWith::Operation(w) => {
                    let mut both = located(&[&c.op.source, &w.source]);
                    let other = format!("{} (template {})", both.remove(1), w.template);
                    let why = format!(
                        "both answer {} {}; requests classify as {} (the higher risk, else the first imported)",
                        c.op.method.as_str(),
                        sample_path(&c.op.template),
                        w.name
                    );
                    (both.remove(0), other, why)
                }
                ConflictWith::Template {
                    template,
                    why,
                    paths: Some(i),
                } => {
                    let key = format!("routes[{ri}].paths[{i}]");
                    let at = crate::openapi::load::locate(&snap.file, &[vec![key.as_str()]])[0]
                        .map(|(l, col)| format!(" at {}:{l}:{col}", snap.file.display()))
                        .unwrap_or_default();
                    (
                        located(&[&c.op.source]).remove(0),
                        format!("{key} `{template}`{at}"),
                        format!("matchit: {why}; the operation is not a known template"),
                    )
                }
                ConflictWith::Template { template, why, .. } => (
                    located(&[&c.op.source]).remove(0),
                    format!("template {template}"),
                    format!("matchit: {why}"),
                ),
            };
            let _ = writeln!(
                s,
                "warning: template conflict on route {prefix}: spec operation {this} (template {}, tool {}) and {other}: {why}",
                c.op.template, c.op.name
            );
        }
    }
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
            // A method a spec operation defines here is described by the spec, not left
            // to a generic rule.
            let sample = sample_path(t);
            let by_spec = |m: &Method| {
                snap.classifier
                    .classify(*m, &sample)
                    .is_ok_and(|tool| tool.source == crate::classify::Source::Spec)
            };
            let missing: Vec<&str> = TABLE_METHODS
                .into_iter()
                .filter(|m| !covered.contains(m) && !by_spec(m))
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
