//! The values a condition reads, built per request: `request` (method, path, params,
//! query, headers, body), `agent` (id, tenant, owner) and `tool` (name, risk). Only the
//! parts the applicable conditions read are built; headers are the ones a parked
//! request keeps (lower-case, no credential, none of the proxy's own).

use super::body::Owned;
use super::compile::Needs;
use crate::canon::Canonical;
use crate::classify::Risk;
use crate::config::Upstream;
use crate::policy::Agent;
use cel::common::types::{CelList, CelMap, CelMapKey, CelNull, CelString};
use std::collections::HashMap;

/// What the request path knows of a request, for building `request`.
pub struct Facts<'a> {
    pub c: &'a Canonical,
    pub headers: &'a http::HeaderMap,
    pub upstream: &'a Upstream,
    /// The body, when a condition reads it and it was read (see [`super::body::Read`]).
    pub body: Option<&'a super::body::Read>,
}

fn s<'v>(v: &'v str) -> Owned<'v> {
    Box::new(CelString::from(v))
}

fn owned<'v>(v: String) -> Owned<'v> {
    Box::new(CelString::from(v))
}

fn map<'v>(entries: HashMap<CelMapKey<'v>, Owned<'v>>) -> Owned<'v> {
    Box::new(CelMap::from(entries))
}

/// `request`, with `body` when given (a parsed object).
pub fn request<'v>(
    f: &Facts<'v>,
    template: &'v str,
    needs: Needs,
    body: Option<Owned<'v>>,
) -> Owned<'v> {
    let c: &'v Canonical = f.c;
    let mut m: HashMap<CelMapKey<'v>, Owned<'v>> = HashMap::with_capacity(6);
    m.insert("method".into(), s(c.method.as_str()));
    m.insert("path".into(), s(&c.path));
    if needs.params {
        let p = params(template, &c.path)
            .into_iter()
            .map(|(k, v)| (CelMapKey::from(k), s(v)))
            .collect();
        m.insert("params".into(), map(p));
    }
    if needs.query {
        let mut q: HashMap<String, Vec<String>> = HashMap::new();
        if let Some(raw) = &c.query {
            for (k, v) in crate::decode::pairs(raw.as_bytes()) {
                q.entry(k).or_default().push(v);
            }
        }
        let q = q
            .into_iter()
            .map(|(k, vs)| {
                let list: Vec<Owned<'v>> = vs.into_iter().map(owned).collect();
                (
                    CelMapKey::from(k),
                    Box::new(CelList::from(list)) as Owned<'v>,
                )
            })
            .collect();
        m.insert("query".into(), map(q));
    }
    if needs.headers {
        let mut h: HashMap<String, String> = HashMap::new();
        for (k, v) in crate::upstream::kept_headers(f.headers, f.upstream) {
            h.entry(k)
                .and_modify(|e| {
                    e.push_str(", ");
                    e.push_str(&v)
                })
                .or_insert(v);
        }
        let h = h
            .into_iter()
            .map(|(k, v)| (CelMapKey::from(k), owned(v)))
            .collect();
        m.insert("headers".into(), map(h));
    }
    if let Some(b) = body {
        m.insert("body".into(), b);
    }
    map(m)
}

/// `agent`; an absent tenant or owner is `null`.
pub fn agent(a: &Agent) -> Owned<'_> {
    fn opt(v: &Option<String>) -> Owned<'_> {
        match v {
            Some(x) => s(x),
            None => Box::new(CelNull),
        }
    }
    let mut m: HashMap<CelMapKey<'_>, Owned<'_>> = HashMap::with_capacity(3);
    m.insert("id".into(), s(&a.id));
    m.insert("tenant".into(), opt(&a.tenant));
    m.insert("owner".into(), opt(&a.owner));
    map(m)
}

/// `tool`: its name and risk (`"low"` … `"critical"`).
pub fn tool(name: &str, risk: Risk) -> Owned<'static> {
    let mut m: HashMap<CelMapKey<'static>, Owned<'static>> = HashMap::with_capacity(2);
    m.insert("name".into(), owned(name.to_string()));
    m.insert("risk".into(), s(risk.as_str()));
    map(m)
}

/// The template parameters of `path` by name (`/t/{id}/x` on `/t/7/x` → id: 7), as
/// the canonical path spells them; a catch-all takes the rest of the path.
pub fn params<'a>(template: &'a str, path: &'a str) -> Vec<(&'a str, &'a str)> {
    let mut out = Vec::new();
    let mut rest = path.strip_prefix('/').unwrap_or(path);
    for seg in template.trim_start_matches('/').split('/') {
        if let Some(name) = seg.strip_prefix("{*").and_then(|s| s.strip_suffix('}')) {
            out.push((name, rest));
            break;
        }
        let (here, next) = rest.split_once('/').unwrap_or((rest, ""));
        if let Some(name) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            out.push((name, here));
        }
        rest = next;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_parameters_by_name() {
        assert_eq!(
            params("/tickets/{id}/refund", "/tickets/7/refund"),
            vec![("id", "7")]
        );
        assert_eq!(
            params("/files/{bucket}/{*key}", "/files/b/a/b/c"),
            vec![("bucket", "b"), ("key", "a/b/c")]
        );
        assert!(params("/tickets", "/tickets").is_empty());
    }
}
