//! Canonical method + path → [`Tool`] { name, risk, template }: explicit overrides,
//! known templates (matchit), the id heuristic, sensitive paths, and the rule that a
//! request's risk is the highest over every spelling a lenient backend would accept.

use crate::canon::Method;
use crate::fastmap::FastMap;
use crate::openapi::Operation;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Risk {
    Low,
    Medium,
    High,
    Critical,
}

impl Risk {
    pub fn parse(s: &str) -> Option<Risk> {
        Some(match s {
            "low" => Risk::Low,
            "medium" => Risk::Medium,
            "high" => Risk::High,
            "critical" => Risk::Critical,
            _ => return None,
        })
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Risk::Low => "low",
            Risk::Medium => "medium",
            Risk::High => "high",
            Risk::Critical => "critical",
        }
    }
    /// The default risk of a method before any path rule applies.
    pub fn of_method(m: Method) -> Risk {
        match m {
            Method::Get | Method::Head | Method::Options => Risk::Low,
            Method::Post | Method::Put | Method::Patch => Risk::Medium,
            Method::Delete => Risk::High,
        }
    }
}

impl std::fmt::Display for Risk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a tool's name and risk came from (`check`'s SOURCE column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// A `tools[]` entry.
    Override,
    /// An operation of an `openapi:` spec.
    Spec,
    /// A `paths` template.
    Paths,
    /// Generated from the path: the id heuristic, or a method the spec does not define
    /// on one of its templates.
    Heuristic,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Override => "override",
            Source::Spec => "spec",
            Source::Paths => "paths",
            Source::Heuristic => "heuristic",
        }
    }
}

/// What a request was classified as. `route` indexes `Classifier::routes`.
#[derive(Debug, Clone)]
pub struct Tool {
    pub name: Arc<str>,
    pub risk: Risk,
    pub template: Arc<str>,
    pub route: usize,
    /// Set when an explicit `tools[]` entry named this tool.
    pub approval_ttl: Option<Duration>,
    /// Matched an override or a `paths` template (not the id heuristic).
    pub known: bool,
    /// The names the other spellings of this request classify as. Denies, pauses and
    /// approvals apply to these too, so `/Comments` or `comments.json` cannot step
    /// around a rule written for `comments`. Empty for almost every request.
    pub aliases: Vec<Arc<str>>,
    pub source: Source,
    /// The spec operation behind this request: the one matched, or the one an override
    /// shadows at this path and method.
    pub op: Option<Arc<Operation>>,
    /// The `when_risk` entries of the override that named it (none for most tools).
    pub when_risk: Option<Arc<[crate::conditions::WhenRisk]>>,
    /// The `when_risk` condition that set this request's risk and name, once evaluated.
    pub condition: Option<Arc<str>>,
}

impl Tool {
    /// The tool's name and every alias.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        std::iter::once(&*self.name).chain(self.aliases.iter().map(|a| &**a))
    }
}

/// Why a path could not be classified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unclassified {
    /// Under no route prefix.
    NoRoute,
    /// The route has `unknown_paths: deny` and no known template matches.
    UnknownPath(usize),
}

/// A template that a request path is matched against (matchit syntax).
#[derive(Debug, Clone)]
pub struct Pattern {
    router: matchit::Router<()>,
    pub text: String,
}

impl Pattern {
    /// Compiles a validated template. A trailing `{*rest}` also covers the bare prefix.
    pub fn new(text: &str) -> Result<Pattern, String> {
        check_template(text)?;
        let mut router = matchit::Router::new();
        router.insert(text, ()).map_err(|e| e.to_string())?;
        if let Some(bare) = text
            .strip_suffix('}')
            .and_then(|t| t.rfind("/{*").map(|i| &t[..i]))
        {
            let bare = if bare.is_empty() { "/" } else { bare };
            let _ = router.insert(bare, ());
            if bare != "/" {
                let _ = router.insert(format!("{bare}/"), ());
            }
        }
        Ok(Pattern {
            router,
            text: text.to_string(),
        })
    }
    pub fn matches(&self, path: &str) -> bool {
        self.router.at(path).is_ok()
    }
}

/// Checks a template: absolute, `{name}` or `{*name}` whole segments only, no `:id`.
pub fn check_template(t: &str) -> Result<(), String> {
    if !t.starts_with('/') {
        return Err(format!("template `{t}` must start with `/`"));
    }
    let segs: Vec<&str> = t[1..].split('/').collect();
    for (i, s) in segs.iter().enumerate() {
        if let Some(name) = s.strip_prefix(':') {
            return Err(format!(
                "template `{t}`: `{s}` is a literal in matchit 0.9; write `{{{name}}}`"
            ));
        }
        if s.is_empty() && i + 1 != segs.len() {
            return Err(format!("template `{t}` has an empty segment (`//`)"));
        }
        if *s == "." || *s == ".." {
            return Err(format!("template `{t}` has a dot segment"));
        }
        let opens = s.matches('{').count();
        let closes = s.matches('}').count();
        if opens == 0 && closes == 0 {
            if s.starts_with('*') {
                return Err(format!("template `{t}`: write a catch-all as `{{{s}}}`"));
            }
            continue;
        }
        if opens != 1 || closes != 1 || !s.starts_with('{') || !s.ends_with('}') {
            return Err(format!(
                "template `{t}`: segment `{s}` must be a whole `{{name}}` (one parameter per segment)"
            ));
        }
        let name = &s[1..s.len() - 1];
        let (catch_all, name) = match name.strip_prefix('*') {
            Some(n) => (true, n),
            None => (false, name),
        };
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(format!("template `{t}`: bad parameter name in `{s}`"));
        }
        if catch_all && i + 1 != segs.len() {
            return Err(format!("template `{t}`: `{s}` must be the last segment"));
        }
    }
    Ok(())
}

/// An explicit `tools[]` entry.
#[derive(Debug)]
pub struct Override {
    /// The methods it names (`"POST|PATCH /…"`); `None` (`"* /…"`) matches any method.
    pub methods: Option<Vec<Method>>,
    pub pattern: Pattern,
    pub name: Arc<str>,
    pub risk: Risk,
    pub approval_ttl: Option<Duration>,
    pub description: Option<String>,
    /// `when_risk`: conditions that set the risk (and name) of a request (`None`: none).
    pub when_risk: Option<Arc<[crate::conditions::WhenRisk]>>,
}

/// A known template: from `paths` (every method) or from specs (their methods), with
/// its generated names, one per verb, and the spec operations on it.
#[derive(Debug)]
pub struct Known {
    pub template: Arc<str>,
    names: [Arc<str>; VERBS],
    /// A `paths` template: every method is known here, not only the spec's.
    pub all_methods: bool,
    /// Spec operations on this template (one per method).
    pub ops: Vec<Arc<Operation>>,
}

impl Known {
    /// The operation for `m` (HEAD falls back to GET's).
    pub fn op_for(&self, m: Method) -> Option<&Arc<Operation>> {
        self.ops.iter().find(|o| o.method == m).or_else(|| {
            (m == Method::Head)
                .then(|| self.ops.iter().find(|o| o.method == Method::Get))
                .flatten()
        })
    }
}

/// A spec operation that could not take its template: another source already answers
/// the same requests.
#[derive(Debug, Clone)]
pub struct Conflict {
    /// The operation whose requests classify as something else.
    pub op: Arc<Operation>,
    pub with: ConflictWith,
}

#[derive(Debug, Clone)]
pub enum ConflictWith {
    /// Another operation with the same method on a template of the same shape; it names
    /// the requests (the higher risk; at equal risk the one imported first).
    Operation(Arc<Operation>),
    /// A template matchit refused this one next to; `paths` is the index of the route's
    /// `paths` entry it is (`None`: another spec's template, or not found).
    Template {
        template: String,
        why: String,
        paths: Option<usize>,
    },
}

const VERBS: usize = 6;

#[derive(Debug)]
pub struct RouteRules {
    pub prefix: String,
    pub tool_prefix: String,
    pub unknown_deny: bool,
    pub overrides: Vec<Override>,
    pub known: Vec<Known>,
    known_router: matchit::Router<usize>,
    pub sensitive: Vec<Pattern>,
    /// Some known template carries spec operations.
    has_ops: bool,
}

impl RouteRules {
    pub fn new(
        prefix: String,
        tool_prefix: String,
        unknown_deny: bool,
        overrides: Vec<Override>,
        paths: &[String],
        sensitive: Vec<Pattern>,
    ) -> Result<RouteRules, (usize, String)> {
        let mut known_router = matchit::Router::new();
        let mut known = Vec::new();
        for (i, p) in paths.iter().enumerate() {
            check_template(p).map_err(|e| (i, e))?;
            if !under_prefix(p, &prefix) {
                return Err((
                    i,
                    format!("template `{p}` is not under the route prefix `{prefix}`"),
                ));
            }
            known_router
                .insert(p.as_str(), known.len())
                .map_err(|e| (i, format!("template `{p}`: {e}")))?;
            known.push(Known {
                template: p.as_str().into(),
                names: names_for(&tool_prefix, &prefix, p),
                all_methods: true,
                ops: Vec::new(),
            });
        }
        Ok(RouteRules {
            prefix,
            tool_prefix,
            unknown_deny,
            overrides,
            known,
            known_router,
            sensitive,
            has_ops: false,
        })
    }

    /// Adds spec operations as known templates. An operation joins the known template of
    /// its shape (same segments, parameters in the same places, whatever their names);
    /// two operations with one method on one shape, or a template matchit refuses, are
    /// returned as conflicts — at equal shape the higher risk names the requests.
    pub fn add_operations(&mut self, ops: Vec<Arc<Operation>>) -> Vec<Conflict> {
        let mut shapes: HashMap<String, usize> = self
            .known
            .iter()
            .enumerate()
            .map(|(i, k)| (shape(&k.template), i))
            .collect();
        let mut conflicts = Vec::new();
        for op in ops {
            self.has_ops = true;
            let sh = shape(&op.template);
            let k = match shapes.get(&sh) {
                Some(&k) => k,
                None => {
                    let k = self.known.len();
                    if let Err(e) = self.known_router.insert(op.template.to_string(), k) {
                        let template = match &e {
                            matchit::InsertError::Conflict { with } => with.clone(),
                            _ => op.template.to_string(),
                        };
                        // `paths` entries are the first known templates, in their order,
                        // and the only ones known for every method.
                        let other = self.known.iter().position(|k| *k.template == *template);
                        conflicts.push(Conflict {
                            with: match other.map(|i| (i, &self.known[i])) {
                                Some((_, k)) if !k.all_methods && !k.ops.is_empty() => {
                                    ConflictWith::Operation(k.ops[0].clone())
                                }
                                other => ConflictWith::Template {
                                    template,
                                    why: e.to_string(),
                                    paths: other.filter(|(_, k)| k.all_methods).map(|(i, _)| i),
                                },
                            },
                            op,
                        });
                        continue;
                    }
                    self.known.push(Known {
                        template: op.template.clone(),
                        names: names_for(&self.tool_prefix, &self.prefix, &op.template),
                        all_methods: false,
                        ops: Vec::new(),
                    });
                    shapes.insert(sh, k);
                    k
                }
            };
            let known = &mut self.known[k];
            match known.ops.iter().position(|o| o.method == op.method) {
                Some(at) if op.risk > known.ops[at].risk => {
                    let loser = std::mem::replace(&mut known.ops[at], op.clone());
                    conflicts.push(Conflict {
                        op: loser,
                        with: ConflictWith::Operation(op),
                    });
                }
                Some(at) => conflicts.push(Conflict {
                    with: ConflictWith::Operation(known.ops[at].clone()),
                    op,
                }),
                None => known.ops.push(op),
            }
        }
        conflicts
    }

    /// The generated name of known template `known` for `m`.
    pub fn name_for(&self, known: usize, m: Method) -> &Arc<str> {
        &self.known[known].names[verb_index(m, ends_in_param(&self.known[known].template))]
    }
}

/// All routes, found by first path segment, longest prefix first.
#[derive(Debug)]
pub struct Classifier {
    pub routes: Vec<RouteRules>,
    by_first: FastMap<String, Vec<usize>>,
    root: Vec<usize>,
    global_sensitive: Vec<Pattern>,
}

pub fn under_prefix(path: &str, prefix: &str) -> bool {
    prefix == "/"
        || (path.starts_with(prefix)
            && (path.len() == prefix.len() || path.as_bytes()[prefix.len()] == b'/'))
}

fn first_segment(path: &str) -> &str {
    let rest = &path[1.min(path.len())..];
    rest.split('/').next().unwrap_or("")
}

impl Classifier {
    pub fn new(routes: Vec<RouteRules>, global_sensitive: Vec<Pattern>) -> Classifier {
        let mut by_first: FastMap<String, Vec<usize>> = FastMap::default();
        let mut root = Vec::new();
        for (i, r) in routes.iter().enumerate() {
            if r.prefix == "/" {
                root.push(i);
            } else {
                by_first
                    .entry(first_segment(&r.prefix).to_string())
                    .or_default()
                    .push(i);
            }
        }
        for v in by_first.values_mut() {
            v.sort_by_key(|&i| std::cmp::Reverse(routes[i].prefix.len()));
        }
        Classifier {
            routes,
            by_first,
            root,
            global_sensitive,
        }
    }

    /// The route that owns `path`: the longest prefix on whole segments.
    pub fn route_of(&self, path: &str) -> Option<usize> {
        if let Some(c) = self.by_first.get(first_segment(path)) {
            if let Some(&i) = c
                .iter()
                .find(|&&i| under_prefix(path, &self.routes[i].prefix))
            {
                return Some(i);
            }
        }
        self.root.first().copied()
    }

    /// Classifies a canonical path. The risk is the highest over the path and its
    /// lenient spellings (one trailing slash off, `.ext` off the last segment, lower case),
    /// and, when it keeps an encoded `/`, over the path a backend that decodes `%2F` sees
    /// (and that path's lenient spellings).
    pub fn classify(&self, m: Method, path: &str) -> Result<Tool, Unclassified> {
        let route = self.route_of(path).ok_or(Unclassified::NoRoute)?;
        let mut best = self.spelling(route, m, path, true)?;
        let mut others = variants(path);
        if let Some(decoded) = decode_slashes(path) {
            let more = variants(&decoded);
            others.push(decoded);
            others.extend(more);
        }
        for v in others {
            if v == path {
                continue;
            }
            let r = self.route_of(&v).unwrap_or(route);
            let Ok(t) = self.spelling(r, m, &v, false) else {
                continue;
            };
            // Highest risk wins; at equal risk a known template beats the heuristic, a
            // template with more static segments beats one that took the segment as a
            // parameter (`/items/EXPORT` is the export, not `items.get`), then the
            // literal spelling. Every losing name stays as an alias.
            let t = Tool { route, ..t };
            let rank = |t: &Tool| (t.risk, t.known, static_segments(&t.template));
            let loser = if rank(&t) > rank(&best) {
                std::mem::replace(&mut best, t)
            } else {
                t
            };
            best.aliases.push(loser.name);
            best.aliases.extend(loser.aliases);
        }
        best.aliases.sort();
        best.aliases.dedup();
        best.aliases.retain(|a| *a != best.name);
        Ok(best)
    }

    /// A short line of why `m path` has the risk it has, for the operator page.
    pub fn risk_why(&self, m: Method, path: &str) -> Option<&'static str> {
        let route = self.route_of(path)?;
        let base = self.match_in(route, m, path, true).ok()?;
        let t = self.classify(m, path).ok()?;
        Some(if t.risk > base.risk && self.is_sensitive(route, path) {
            "raised to high: a sensitive path"
        } else if t.risk > base.risk {
            "raised: another spelling of this path is riskier"
        } else {
            match base.source {
                Source::Override => "set by a tools[] entry",
                Source::Spec => "from the OpenAPI operation (its method unless the spec says)",
                Source::Paths | Source::Heuristic => "the method's default",
            }
        })
    }

    /// One spelling: its match, with its own sensitivity raising its risk to high.
    fn spelling(
        &self,
        route: usize,
        m: Method,
        path: &str,
        strict: bool,
    ) -> Result<Tool, Unclassified> {
        let mut t = self.match_in(route, m, path, strict)?;
        if t.risk < Risk::High && self.is_sensitive(route, path) {
            t.risk = Risk::High;
        }
        Ok(t)
    }

    fn is_sensitive(&self, route: usize, path: &str) -> bool {
        self.global_sensitive.iter().any(|p| p.matches(path))
            || self.routes[route].sensitive.iter().any(|p| p.matches(path))
    }

    /// First override, else known template, else (if allowed) the id heuristic.
    fn match_in(
        &self,
        route: usize,
        m: Method,
        path: &str,
        strict: bool,
    ) -> Result<Tool, Unclassified> {
        let r = &self.routes[route];
        let mm = if m == Method::Head { Method::Get } else { m };
        for o in &r.overrides {
            if o.methods.as_ref().is_none_or(|ms| ms.contains(&mm)) && o.pattern.matches(path) {
                // The spec operation this override shadows here, for its schemas.
                let op = if r.has_ops {
                    r.known_router
                        .at(path)
                        .ok()
                        .and_then(|hit| r.known[*hit.value].op_for(m).cloned())
                } else {
                    None
                };
                return Ok(Tool {
                    name: o.name.clone(),
                    risk: o.risk,
                    template: o.pattern.text.as_str().into(),
                    route,
                    approval_ttl: o.approval_ttl,
                    known: true,
                    aliases: Vec::new(),
                    source: Source::Override,
                    op,
                    when_risk: o.when_risk.clone(),
                    condition: None,
                });
            }
        }
        if let Ok(hit) = r.known_router.at(path) {
            let k = *hit.value;
            let known = &r.known[k];
            if let Some(op) = known.op_for(m) {
                return Ok(Tool {
                    name: op.name.clone(),
                    risk: op.risk,
                    template: op.template.clone(),
                    route,
                    approval_ttl: None,
                    known: true,
                    aliases: Vec::new(),
                    source: Source::Spec,
                    op: Some(op.clone()),
                    when_risk: None,
                    condition: None,
                });
            }
            if !known.all_methods && r.unknown_deny && strict {
                // `unknown_paths: deny`: only the spec's operations are known here.
                return Err(Unclassified::UnknownPath(route));
            }
            return Ok(Tool {
                name: r.name_for(k, m).clone(),
                risk: Risk::of_method(m),
                template: known.template.clone(),
                route,
                approval_ttl: None,
                known: true,
                aliases: Vec::new(),
                source: if known.all_methods {
                    Source::Paths
                } else {
                    Source::Heuristic
                },
                op: None,
                when_risk: None,
                condition: None,
            });
        }
        if r.unknown_deny && strict {
            return Err(Unclassified::UnknownPath(route));
        }
        let template = heuristic_template(path);
        let name = generated_name(&r.tool_prefix, &r.prefix, &template, m);
        Ok(Tool {
            name: name.into(),
            risk: Risk::of_method(m),
            template: template.into(),
            route,
            approval_ttl: None,
            known: false,
            aliases: Vec::new(),
            source: Source::Heuristic,
            op: None,
            when_risk: None,
            condition: None,
        })
    }
}

/// A template's shape: its parameters without their names (`/a/{}/b/{*}`).
fn shape(template: &str) -> String {
    template
        .split('/')
        .map(|s| {
            if s.starts_with("{*") {
                "{*}"
            } else if s.starts_with('{') {
                "{}"
            } else {
                s
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// The path with every `%2F` decoded, if it has one.
fn decode_slashes(path: &str) -> Option<String> {
    if !path.contains("%2F") && !path.contains("%2f") {
        return None;
    }
    Some(path.replace("%2F", "/").replace("%2f", "/"))
}

/// How many segments of a template are literal (not `{param}`).
fn static_segments(template: &str) -> usize {
    template
        .split('/')
        .filter(|s| !s.is_empty() && !s.starts_with('{'))
        .count()
}

/// The other spellings a lenient backend may route to the same handler.
fn variants(path: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let push = |s: &str, out: &mut Vec<String>| {
        if s != path && !s.is_empty() && !out.iter().any(|o| o == s) {
            out.push(s.to_string());
        }
    };
    let no_slash = if path.len() > 1 {
        path.strip_suffix('/').unwrap_or(path)
    } else {
        path
    };
    push(no_slash, &mut out);
    let last_start = no_slash.rfind('/').map_or(0, |i| i + 1);
    if let Some(dot) = no_slash[last_start..].find('.') {
        if dot > 0 {
            push(&no_slash[..last_start + dot], &mut out);
        }
    }
    if path.bytes().any(|b| b.is_ascii_uppercase()) {
        let base: Vec<String> = std::iter::once(path.to_string())
            .chain(out.iter().cloned())
            .collect();
        for b in base {
            push(&b.to_ascii_lowercase(), &mut out);
        }
    }
    out
}

/// Replaces id-like segments (digits, UUID, ULID, ≥16 hex) with `{id}`.
pub fn heuristic_template(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for (i, seg) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        if is_id(seg) {
            out.push_str("{id}");
        } else {
            out.push_str(seg);
        }
    }
    out
}

fn is_id(s: &str) -> bool {
    let b = s.as_bytes();
    if b.is_empty() {
        return false;
    }
    if b.iter().all(u8::is_ascii_digit) {
        return true;
    }
    if b.len() >= 16 && b.iter().all(u8::is_ascii_hexdigit) {
        return true;
    }
    if b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
    {
        return true;
    }
    b.len() == 26
        && matches!(b[0], b'0'..=b'7')
        && b.iter().all(|c| {
            let c = c.to_ascii_uppercase();
            c.is_ascii_digit()
                || (c.is_ascii_uppercase() && !matches!(c, b'I' | b'L' | b'O' | b'U'))
        })
}

fn ends_in_param(template: &str) -> bool {
    let t = template.strip_suffix('/').unwrap_or(template);
    t.rsplit('/').next().is_some_and(|s| s.starts_with('{'))
}

fn verb_index(m: Method, ends_param: bool) -> usize {
    match m {
        Method::Get | Method::Head => {
            if ends_param {
                0
            } else {
                1
            }
        }
        Method::Post => 2,
        Method::Put | Method::Patch => 3,
        Method::Delete => 4,
        Method::Options => 5,
    }
}

const VERB_NAMES: [&str; VERBS] = ["get", "list", "create", "update", "delete", "options"];

fn names_for(tool_prefix: &str, prefix: &str, template: &str) -> [Arc<str>; VERBS] {
    let base = name_base(tool_prefix, prefix, template);
    VERB_NAMES.map(|v| Arc::from(format!("{base}.{v}")))
}

fn name_base(tool_prefix: &str, prefix: &str, template: &str) -> String {
    let rest = if prefix == "/" {
        template
    } else {
        &template[prefix.len().min(template.len())..]
    };
    // Room for the name and a verb: one allocation per generated name.
    let mut name = String::with_capacity(tool_prefix.len() + rest.len() + 9);
    name.push_str(tool_prefix);
    for seg in rest.split('/') {
        if seg.is_empty() || seg.starts_with('{') {
            continue;
        }
        name.push('.');
        for (i, part) in seg.split('.').enumerate() {
            if i > 0 {
                name.push('_');
            }
            name.push_str(part);
        }
    }
    name
}

/// `<tool_prefix>.<static segments after the prefix>.<verb>`.
pub fn generated_name(tool_prefix: &str, prefix: &str, template: &str, m: Method) -> String {
    let mut name = name_base(tool_prefix, prefix, template);
    name.push('.');
    name.push_str(VERB_NAMES[verb_index(m, ends_in_param(template))]);
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classifier() -> Classifier {
        let tickets = RouteRules::new(
            "/tickets".into(),
            "tickets".into(),
            false,
            vec![Override {
                methods: Some(vec![Method::Post]),
                pattern: Pattern::new("/tickets/{id}/refund").unwrap(),
                name: "tickets.refund".into(),
                risk: Risk::Critical,
                approval_ttl: None,
                description: None,
                when_risk: None,
            }],
            &["/tickets/{id}".into(), "/tickets/{id}/comments".into()],
            vec![Pattern::new("/tickets/{id}/export").unwrap()],
        )
        .unwrap();
        let strict = RouteRules::new(
            "/billing/v1".into(),
            "billing".into(),
            true,
            vec![],
            &["/billing/v1/invoices/{id}".into()],
            vec![],
        )
        .unwrap();
        Classifier::new(
            vec![tickets, strict],
            vec![
                Pattern::new("/admin/{*rest}").unwrap(),
                Pattern::new("/tickets/secret/{*rest}").unwrap(),
            ],
        )
    }

    #[test]
    fn names_verbs_and_default_risks() {
        let c = classifier();
        let cases = [
            (
                Method::Get,
                "/tickets/42",
                "tickets.get",
                Risk::Low,
                "/tickets/{id}",
            ),
            (
                Method::Head,
                "/tickets/42",
                "tickets.get",
                Risk::Low,
                "/tickets/{id}",
            ),
            (
                Method::Get,
                "/tickets",
                "tickets.list",
                Risk::Low,
                "/tickets",
            ),
            (
                Method::Post,
                "/tickets/42/comments",
                "tickets.comments.create",
                Risk::Medium,
                "/tickets/{id}/comments",
            ),
            (
                Method::Patch,
                "/tickets/42",
                "tickets.update",
                Risk::Medium,
                "/tickets/{id}",
            ),
            (
                Method::Delete,
                "/tickets/42",
                "tickets.delete",
                Risk::High,
                "/tickets/{id}",
            ),
            (
                Method::Post,
                "/tickets/42/close",
                "tickets.close.create",
                Risk::Medium,
                "/tickets/{id}/close",
            ),
            (
                Method::Get,
                "/tickets/42/attachments/3",
                "tickets.attachments.get",
                Risk::Low,
                "/tickets/{id}/attachments/{id}",
            ),
            (
                Method::Get,
                "/tickets/0190d6f4-8a6b-7c3e-9d1a-2b3c4d5e6f70",
                "tickets.get",
                Risk::Low,
                "/tickets/{id}",
            ),
            (
                Method::Get,
                "/tickets/01ARZ3NDEKTSV4RRFFQ69G5FAV",
                "tickets.get",
                Risk::Low,
                "/tickets/{id}",
            ),
            (
                Method::Get,
                "/tickets/deadbeefdeadbeef",
                "tickets.get",
                Risk::Low,
                "/tickets/{id}",
            ),
            (
                Method::Get,
                "/tickets/42/v1.2",
                "tickets.v1_2.list",
                Risk::Low,
                "/tickets/{id}/v1.2",
            ),
            (
                Method::Post,
                "/tickets/42/refund",
                "tickets.refund",
                Risk::Critical,
                "/tickets/{id}/refund",
            ),
            (
                Method::Get,
                "/tickets/42/export",
                "tickets.export.list",
                Risk::High,
                "/tickets/{id}/export",
            ),
            (
                Method::Options,
                "/tickets",
                "tickets.options",
                Risk::Low,
                "/tickets",
            ),
        ];
        for (m, p, name, risk, tpl) in cases {
            let t = c.classify(m, p).unwrap();
            assert_eq!(
                (&*t.name, t.risk, &*t.template),
                (name, risk, tpl),
                "{m:?} {p}"
            );
        }
    }

    #[test]
    fn lenient_spellings_never_lower_the_risk() {
        let c = classifier();
        for p in [
            "/tickets/42/refund/",
            "/tickets/42/refund.json",
            "/tickets/42/Refund",
            "/tickets/42/REFUND.json/",
        ] {
            let t = c.classify(Method::Post, p).unwrap();
            assert_eq!(
                (&*t.name, t.risk),
                ("tickets.refund", Risk::Critical),
                "{p}"
            );
        }
        assert_eq!(
            c.classify(Method::Get, "/tickets/42/Export").unwrap().risk,
            Risk::High
        );
        // At equal risk the known template names the request; the literal name is an alias.
        let t = c.classify(Method::Delete, "/tickets/42/Comments").unwrap();
        assert_eq!(&*t.name, "tickets.comments.delete");
        assert_eq!(t.aliases, vec![Arc::<str>::from("tickets.Comments.delete")]);
        let t = c
            .classify(Method::Get, "/tickets/42/comments.json")
            .unwrap();
        assert_eq!(&*t.name, "tickets.comments.list");
        // A sensitive spelling names the request by the spelling that set the risk.
        let t = c.classify(Method::Get, "/tickets/42/export.csv").unwrap();
        assert_eq!((&*t.name, t.risk), ("tickets.export.list", Risk::High));
        assert!(c
            .classify(Method::Get, "/tickets/42")
            .unwrap()
            .aliases
            .is_empty());
        assert_eq!(
            c.classify(Method::Get, "/tickets/secret").unwrap().risk,
            Risk::High
        );
        assert_eq!(
            c.classify(Method::Get, "/tickets/secret/").unwrap().risk,
            Risk::High
        );
        assert_eq!(
            c.classify(Method::Get, "/tickets/Secret.txt").unwrap().risk,
            Risk::High
        );
    }

    #[test]
    fn encoded_slashes_are_classified_as_a_decoding_backend_sees_them() {
        let c = classifier();
        // `1%2Frefund` fills `{id}` literally, but a backend that decodes `%2F` runs the refund.
        let t = c.classify(Method::Post, "/tickets/1%2Frefund").unwrap();
        assert_eq!((&*t.name, t.risk), ("tickets.refund", Risk::Critical));
        assert!(t.aliases.iter().any(|a| &**a == "tickets.create"), "{t:?}");
        let t = c.classify(Method::Get, "/tickets/1%2fexport").unwrap();
        assert_eq!(t.risk, Risk::High);
        // Its lenient spellings too.
        let t = c
            .classify(Method::Post, "/tickets/1%2FRefund.json")
            .unwrap();
        assert_eq!(t.risk, Risk::Critical);
    }

    #[test]
    fn a_static_template_segment_names_a_lenient_spelling() {
        let items = RouteRules::new(
            "/items".into(),
            "items".into(),
            false,
            vec![],
            &["/items/{id}".into(), "/items/export".into()],
            vec![],
        )
        .unwrap();
        let c = Classifier::new(vec![items], vec![]);
        for p in ["/items/EXPORT", "/items/export.json", "/items/Export/"] {
            let t = c.classify(Method::Get, p).unwrap();
            assert_eq!(&*t.name, "items.export.list", "{p}");
            assert!(t.aliases.iter().any(|a| &**a == "items.get"), "{p}: {t:?}");
        }
        let t = c.classify(Method::Get, "/items/42").unwrap();
        assert_eq!((&*t.name, t.aliases.len()), ("items.get", 0));
    }

    #[test]
    fn whole_segment_prefixes_and_unknown_paths() {
        let c = classifier();
        assert_eq!(
            c.classify(Method::Get, "/ticketsX").unwrap_err(),
            Unclassified::NoRoute
        );
        assert_eq!(
            c.classify(Method::Get, "/").unwrap_err(),
            Unclassified::NoRoute
        );
        assert_eq!(
            c.classify(Method::Get, "/billing/v1/invoices/7")
                .unwrap()
                .name
                .as_ref(),
            "billing.invoices.get"
        );
        assert_eq!(
            c.classify(Method::Get, "/billing/v1/other").unwrap_err(),
            Unclassified::UnknownPath(1)
        );
        assert_eq!(
            c.classify(Method::Get, "/billing/v1/invoices/7/")
                .unwrap_err(),
            Unclassified::UnknownPath(1)
        );
    }

    #[test]
    fn templates_are_checked() {
        assert!(check_template("/t/:id").is_err());
        assert!(check_template("/t/{a}{b}").is_err());
        assert!(check_template("/t/{a}.json").is_err());
        assert!(check_template("/t/{*r}/x").is_err());
        assert!(check_template("/t//x").is_err());
        assert!(check_template("t/x").is_err());
        assert!(check_template("/t/{id}/x/{*rest}").is_ok());
        let p = Pattern::new("/admin/{*rest}").unwrap();
        assert!(p.matches("/admin") && p.matches("/admin/") && p.matches("/admin/x/y"));
        assert!(!p.matches("/adminx"));
    }
}
