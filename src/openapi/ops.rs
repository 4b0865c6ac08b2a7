//! One spec on one route → [`Operation`]s: each operation's template under the route
//! (servers' base path combined with the prefix), its tool name, description, risk,
//! security (shown only), input schema (`path`, `query`, `header`, `body`) and output
//! schema (the first 2xx JSON response).

use super::load::{self, Version};
use super::names;
use super::refs::{escape, Docs, Place};
use super::schema::{self, Converted, Converter, Frozen, Schema, Side};
use super::{OpRef, Operation, SpecFile, SpecReport};
use crate::canon::Method;
use crate::classify::{self, Risk};
use serde_json::{json, Map, Value};
use std::sync::Arc;

/// What the importer needs to know about the route a spec is on.
pub struct RouteView<'a> {
    pub prefix: &'a str,
    pub strip_prefix: bool,
    pub tool_prefix: &'a str,
    pub upstream: &'a str,
    /// The upstream URL's path ("" for none).
    pub upstream_base: &'a str,
    /// `tool_names: generated`.
    pub generated_names: bool,
}

/// The methods read from a path item, in the order tools are listed.
const METHODS: [(&str, Option<Method>); 8] = [
    ("get", Some(Method::Get)),
    ("put", Some(Method::Put)),
    ("post", Some(Method::Post)),
    ("delete", Some(Method::Delete)),
    ("options", Some(Method::Options)),
    ("head", Some(Method::Head)),
    ("patch", Some(Method::Patch)),
    ("trace", None),
];

/// The longest description kept (summary and description together).
pub const MAX_DESCRIPTION: usize = 1024;

/// An operation read from the spec whose schemas still wait for the frozen tables.
struct Draft {
    op: Operation,
    input: Frozen,
    output: Option<Frozen>,
    /// Query parameters and whether a list is given by repeating them (`explode`).
    explodes: Vec<(String, bool)>,
}

/// Reads `file` and builds its operations for `route`. Errors are
/// `file:line:col: paths./x.get: why` (the place only when it can be found).
pub fn import(
    file: &std::path::Path,
    shown: &str,
    route: &RouteView,
) -> Result<(Vec<Operation>, SpecReport, Docs), String> {
    let mut docs = Docs::open(file, shown)?;
    let root_doc = docs.doc(0).clone();
    let (version, version_text) = load::version(&root_doc)?;
    let top = |pointer: &str| root_doc.at(pointer).map(|n| n.value().clone());
    let spec = Arc::new(SpecFile {
        shown: shown.to_string(),
        file: file.to_path_buf(),
    });
    let text = |pointer: &str| {
        top(pointer)
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    };
    let mut report = SpecReport {
        file: spec.clone(),
        openapi: version_text,
        title: text("/info/title"),
        api_version: text("/info/version"),
        operations: 0,
        combined: String::new(),
        outside: Vec::new(),
        notes: Vec::new(),
        schemes: root_doc.keys("/components/securitySchemes"),
    };
    let (root_base, root_host) =
        server_base(top("/servers").as_ref()).map_err(|e| format!("{shown}: servers: {e}"))?;
    report.combined = combination(route, &root_base);
    if root_doc
        .object_keys("/webhooks")
        .is_some_and(|k| !k.is_empty())
    {
        report
            .notes
            .push("`webhooks` are not imported (they are calls the API makes, not tools)".into());
    }
    let root_security = top("/security");
    // The keys only: the path items are read one by one below.
    if !root_doc.exists("/paths") {
        return Ok((Vec::new(), report, docs));
    }
    let paths = root_doc
        .object_keys("/paths")
        .ok_or_else(|| format!("{shown}: `paths` must be an object"))?;

    let mut conv = Converter::new(&mut docs, version == Version::V31);
    let mut drafts: Vec<Draft> = Vec::new();
    let mut ignored = Ignored::default();
    for spec_path in &paths {
        let at_path = |m: &str| vec!["paths".to_string(), spec_path.clone(), m.to_string()];
        let fail = |keys: Vec<String>, e: String| spec_error(&spec, keys, e);
        if !spec_path.starts_with('/') {
            return Err(fail(
                vec!["paths".into(), spec_path.clone()],
                format!("path `{spec_path}` must start with `/`"),
            ));
        }
        let item = conv
            .docs
            .deref(0, format!("/paths/{}", escape(spec_path)))
            .map_err(|e| fail(vec!["paths".into(), spec_path.clone()], e))?;
        let Some(item_map) = item.value().as_object() else {
            return Err(fail(
                vec!["paths".into(), spec_path.clone()],
                "a path item must be an object".into(),
            ));
        };
        let (path_base, path_host) = match item_map.get("servers") {
            Some(s) => server_base(Some(s)).map_err(|e| fail(at_path("servers"), e))?,
            None => (root_base.clone(), root_host.clone()),
        };
        for (key, method) in METHODS {
            let Some(op_value) = item_map.get(key) else {
                continue;
            };
            let Some(method) = method else {
                ignored.trace += 1;
                continue;
            };
            let keys = at_path(key);
            let op_ptr = format!("{}/{key}", item.place.pointer);
            let op_place = Place {
                doc: item.place.doc,
                pointer: op_ptr,
            };
            let (base, host) = match op_value.get("servers") {
                Some(s) => server_base(Some(s)).map_err(|e| fail(keys.clone(), e))?,
                None => (path_base.clone(), path_host.clone()),
            };
            if host.is_some() && host != root_host {
                report.notes.push(format!(
                    "{} {spec_path} names its own server `{}`; it is forwarded to upstream `{}` like the rest of the route",
                    method.as_str(),
                    host.as_deref().unwrap_or_default(),
                    route.upstream
                ));
            }
            let oref = OpRef {
                method,
                spec_path: spec_path.clone(),
                operation_id: op_value
                    .get("operationId")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                spec: spec.clone(),
            };
            let rel = relative_base(route, &base);
            let path = agent_path(route, &rel, spec_path);
            let (template, merged) = matchit_template(&path);
            classify::check_template(&template)
                .map_err(|e| fail(keys.clone(), format!("cannot be a template: {e}")))?;
            if !classify::under_prefix(&template, route.prefix) {
                report.outside.push(oref);
                continue;
            }
            if merged {
                report.notes.push(format!(
                    "{} {spec_path}: a segment with several parameters is matched whole, as `{template}`",
                    method.as_str()
                ));
            }
            if op_value.get("callbacks").is_some() {
                ignored.callbacks += 1;
            }
            let draft = operation(
                &mut conv,
                OpInput {
                    route,
                    oref,
                    op_place,
                    item_place: item.place.clone(),
                    template,
                    path,
                    root_security: root_security.as_ref(),
                },
                &mut ignored,
            )
            .map_err(|e| fail(keys, e))?;
            drafts.push(draft);
        }
    }
    for (n, what) in [
        (ignored.trace, "TRACE operations (never forwarded)"),
        (ignored.callbacks, "operations' callbacks"),
        (ignored.links, "responses' links"),
        (
            ignored.cookies,
            "cookie parameters (cookies are stripped by default)",
        ),
    ] {
        if n > 0 {
            report.notes.push(format!("not imported: {n} {what}"));
        }
    }
    let (input_table, output_table) = conv.finish();
    let ops: Vec<Operation> = drafts
        .into_iter()
        .map(|d| {
            let mut op = d.op;
            op.input = schema::tie(d.input, &input_table);
            op.output = d.output.map(|o| schema::tie(o, &output_table));
            op.query = super::validate::query_params(&op.input, &d.explodes);
            op
        })
        .collect();
    report.operations = ops.len();
    Ok((ops, report, docs))
}

#[derive(Default)]
struct Ignored {
    trace: usize,
    callbacks: usize,
    links: usize,
    cookies: usize,
}

/// `file:line:col: paths./x.get: why`.
fn spec_error(spec: &SpecFile, keys: Vec<String>, e: String) -> String {
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let at = load::locate(&spec.file, std::slice::from_ref(&refs))[0];
    let key = refs.join(".");
    match at {
        Some((l, c)) => format!("{}:{l}:{c}: {key}: {e}", spec.shown),
        None => format!("{}: {key}: {e}", spec.shown),
    }
}

/// The path part of the first server URL (its variables at their defaults), without
/// a trailing `/`, and its host if it names one.
fn server_base(servers: Option<&Value>) -> Result<(String, Option<String>), String> {
    let Some(first) = servers.and_then(Value::as_array).and_then(|a| a.first()) else {
        return Ok((String::new(), None));
    };
    let mut url = first
        .get("url")
        .and_then(Value::as_str)
        .ok_or("the first server has no `url`")?
        .to_string();
    if let Some(vars) = first.get("variables").and_then(Value::as_object) {
        for (name, var) in vars {
            if let Some(d) = var.get("default").and_then(Value::as_str) {
                url = url.replace(&format!("{{{name}}}"), d);
            }
        }
    }
    let (host, path) = match url.split_once("://") {
        Some((_, rest)) => match rest.find('/') {
            Some(i) => (Some(rest[..i].to_string()), rest[i..].to_string()),
            None => (Some(rest.to_string()), String::new()),
        },
        None if url.starts_with("//") => {
            let rest = &url[2..];
            match rest.find('/') {
                Some(i) => (Some(rest[..i].to_string()), rest[i..].to_string()),
                None => (Some(rest.to_string()), String::new()),
            }
        }
        None if url.starts_with('/') => (None, url.clone()),
        None => (None, format!("/{url}")),
    };
    let path = path
        .split(['?', '#'])
        .next()
        .unwrap_or("")
        .trim_end_matches('/');
    if path.contains('{') {
        return Err(format!(
            "server URL `{url}` has a variable without a default"
        ));
    }
    Ok((path.to_string(), host))
}

/// The part of the server's base path that the upstream URL does not already carry;
/// "" when the server's path is not under the upstream's (the spec's paths are then
/// taken relative to the upstream URL).
fn relative_base(route: &RouteView, base: &str) -> String {
    let up = route.upstream_base;
    if up.is_empty() {
        return base.to_string();
    }
    if base == up {
        return String::new();
    }
    match base.strip_prefix(up) {
        Some(rest) if rest.starts_with('/') => rest.to_string(),
        _ => String::new(),
    }
}

/// How `check` explains the combination of servers, upstream and prefix.
fn combination(route: &RouteView, base: &str) -> String {
    let rel = relative_base(route, base);
    let shown = |s: &str| {
        if s.is_empty() {
            "(none)".to_string()
        } else {
            s.to_string()
        }
    };
    let lead = if route.strip_prefix && route.prefix != "/" {
        format!("{}{rel}", route.prefix)
    } else {
        rel.clone()
    };
    let mut s = format!(
        "server base path {}, upstream `{}` base path {}",
        shown(base),
        route.upstream,
        shown(route.upstream_base)
    );
    if !base.is_empty() && rel.is_empty() && base != route.upstream_base {
        s.push_str(" (not under it: spec paths are taken relative to the upstream URL)");
    }
    s.push_str(&format!(
        "; templates = {}<spec path> (strip_prefix: {})",
        if lead.is_empty() {
            String::new()
        } else {
            format!("{lead} + ")
        },
        route.strip_prefix
    ));
    s
}

/// The agent-side path of an operation, in the spec's own syntax.
fn agent_path(route: &RouteView, rel: &str, spec_path: &str) -> String {
    let mut s = String::new();
    if route.strip_prefix && route.prefix != "/" {
        s.push_str(route.prefix);
    }
    s.push_str(rel);
    if spec_path != "/" || s.is_empty() {
        s.push_str(spec_path);
    }
    s
}

/// A matchit template for an agent-side path: `{name}` segments keep their names
/// (characters outside `[A-Za-z0-9_]` become `_`); a segment with anything beside one
/// parameter (`{base}...{head}`) is matched whole as one parameter (`{base_head}`).
/// Returns whether such a segment was merged.
fn matchit_template(path: &str) -> (String, bool) {
    let mut merged = false;
    let segs: Vec<String> = path
        .split('/')
        .map(|seg| {
            if !seg.contains('{') {
                return seg.to_string();
            }
            let names: Vec<String> = seg
                .split('{')
                .skip(1)
                .filter_map(|p| p.split_once('}').map(|(n, _)| sanitise(n)))
                .collect();
            let whole = seg.starts_with('{') && seg.ends_with('}') && names.len() == 1;
            if !whole {
                merged = true;
            }
            format!("{{{}}}", names.join("_"))
        })
        .collect();
    (segs.join("/"), merged)
}

fn sanitise(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

struct OpInput<'a> {
    route: &'a RouteView<'a>,
    oref: OpRef,
    op_place: Place,
    item_place: Place,
    template: String,
    path: String,
    root_security: Option<&'a Value>,
}

fn operation(conv: &mut Converter, i: OpInput, ignored: &mut Ignored) -> Result<Draft, String> {
    let found = conv.docs.found(i.op_place.clone());
    let op = found.value();
    let doc = i.op_place.doc;
    let route = i.route;
    let method = i.oref.method;

    let from_id = match (&i.oref.operation_id, route.generated_names) {
        (Some(id), false) => names::tool_name(route.tool_prefix, id),
        _ => None,
    };
    let from_operation_id = from_id.is_some();
    let name: Arc<str> = from_id
        .unwrap_or_else(|| {
            classify::generated_name(route.tool_prefix, route.prefix, &i.template, method)
        })
        .into();
    let (risk, risk_from_spec) = match op.get("x-portcullis-risk") {
        None => (Risk::of_method(method), false),
        Some(v) => {
            let r = v.as_str().and_then(Risk::parse).ok_or_else(|| {
                let shown = v.as_str().map_or_else(|| v.to_string(), str::to_string);
                format!("x-portcullis-risk `{shown}`: expected low, medium, high or critical")
            })?;
            (r, true)
        }
    };
    let text = |k: &str| {
        op.get(k)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
    };
    let summary = text("summary").map(|s| cap(s, MAX_DESCRIPTION));
    let description = describe(text("summary"), text("description"));
    let security = security(op.get("security").or(i.root_security));

    // Parameters: the path item's, replaced by the operation's of the same name and place.
    let mut params: Vec<(String, String, Place)> = Vec::new();
    for (owner, ptr) in [
        (
            &i.item_place,
            format!("{}/parameters", i.item_place.pointer),
        ),
        (&i.op_place, format!("{}/parameters", i.op_place.pointer)),
    ] {
        let count = conv
            .docs
            .found(Place {
                doc: owner.doc,
                pointer: ptr.clone(),
            })
            .value()
            .as_array()
            .map_or(0, Vec::len);
        for n in 0..count {
            let p = conv.docs.deref(owner.doc, format!("{ptr}/{n}"))?;
            let v = p.value();
            let name = v
                .get("name")
                .and_then(Value::as_str)
                .ok_or("a parameter has no `name`")?
                .to_string();
            let place_in = v
                .get("in")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("parameter `{name}` has no `in`"))?
                .to_string();
            params.retain(|(n, w, _)| !(n == &name && w == &place_in));
            params.push((name, place_in, p.place.clone()));
        }
    }
    let mut groups: [(Map<String, Value>, Vec<Value>); 3] = Default::default();
    let mut refs_input: Vec<u32> = Vec::new();
    let mut explodes: Vec<(String, bool)> = Vec::new();
    for (name, place_in, place) in &params {
        let g = match place_in.as_str() {
            "path" => 0,
            "query" => 1,
            "header" => {
                if ["accept", "content-type", "authorization"]
                    .contains(&name.to_ascii_lowercase().as_str())
                {
                    continue;
                }
                2
            }
            "cookie" => {
                ignored.cookies += 1;
                continue;
            }
            other => return Err(format!("parameter `{name}`: unknown `in: {other}`")),
        };
        let p = conv.docs.found(place.clone());
        let pv = p.value();
        let schema_v = match (
            pv.get("schema"),
            pv.get("content").and_then(Value::as_object),
        ) {
            (Some(s), _) => Some(s.clone()),
            (None, Some(c)) => c.values().next().and_then(|m| m.get("schema")).cloned(),
            (None, None) => None,
        };
        let mut prop = match schema_v {
            Some(s) => {
                let (v, r) = conv
                    .convert(place.doc, &s, Side::Input)
                    .map_err(|e| format!("parameter `{name}`: {e}"))?
                    .split();
                refs_input.extend(r);
                v
            }
            None => json!({"type": "string"}),
        };
        if let Value::Object(m) = &mut prop {
            if let Some(d) = pv.get("description").and_then(Value::as_str) {
                m.entry("description").or_insert_with(|| d.trim().into());
            }
            if pv.get("deprecated") == Some(&Value::Bool(true)) {
                m.insert("deprecated".into(), true.into());
            }
        }
        if g == 1 {
            let style = pv.get("style").and_then(Value::as_str).unwrap_or("form");
            let explode = pv
                .get("explode")
                .and_then(Value::as_bool)
                .unwrap_or(style == "form");
            explodes.push((name.clone(), explode));
        }
        let required = g == 0 || pv.get("required") == Some(&Value::Bool(true));
        groups[g].0.insert(name.clone(), prop);
        if required {
            groups[g].1.push(Value::String(name.clone()));
        }
    }
    let mut props = Map::new();
    let mut required = Vec::new();
    for (g, key) in ["path", "query", "header"].into_iter().enumerate() {
        let (p, req) = std::mem::take(&mut groups[g]);
        if p.is_empty() {
            continue;
        }
        let mut o = json!({"type": "object", "properties": Value::Object(p)});
        if !req.is_empty() {
            o["required"] = Value::Array(req);
            required.push(Value::String(key.into()));
        }
        if g == 0 {
            o["additionalProperties"] = false.into();
        }
        props.insert(key.into(), o);
    }

    // The request body: the first JSON media type, else the first one with a schema.
    let mut json_body = false;
    let mut body_required = false;
    if op.get("requestBody").is_some() {
        let rb = conv
            .docs
            .deref(doc, format!("{}/requestBody", i.op_place.pointer))?;
        let rbv = rb.value();
        body_required = rbv.get("required") == Some(&Value::Bool(true));
        let content = rbv.get("content").and_then(Value::as_object);
        let chosen = content.and_then(|c| {
            c.iter()
                .find(|(k, _)| media_base(k) == "application/json")
                .or_else(|| c.iter().find(|(k, _)| is_json(k)))
                .or_else(|| c.iter().next())
        });
        if let Some((media, mv)) = chosen {
            let mut body = match mv.get("schema") {
                Some(s) => {
                    let (v, r) = conv
                        .convert(rb.place.doc, s, Side::Input)
                        .map_err(|e| format!("requestBody: {e}"))?
                        .split();
                    refs_input.extend(r);
                    v
                }
                None => json!({}),
            };
            json_body = is_json(media);
            if !json_body
                && !media.starts_with("multipart/")
                && media_base(media) != "application/x-www-form-urlencoded"
            {
                body = json!({"type": "string", "contentMediaType": media});
            }
            if let (Value::Object(m), Some(d)) =
                (&mut body, rbv.get("description").and_then(Value::as_str))
            {
                m.entry("description").or_insert_with(|| d.trim().into());
            }
            props.insert("body".into(), body);
            if body_required {
                required.push(Value::String("body".into()));
            }
        }
    }
    let mut input = json!({
        "type": "object",
        "properties": Value::Object(props),
        "additionalProperties": false,
    });
    if !required.is_empty() {
        input["required"] = Value::Array(required);
    }
    // The input's direct references are those of every piece converted above.
    let input_refs = Converted::new(input, refs_input).freeze();

    // The output: the first 2xx response, if it has a JSON schema.
    let mut output = None;
    if let Some(responses) = op.get("responses").and_then(Value::as_object) {
        let mut codes: Vec<&String> = responses
            .keys()
            .filter(|k| k.starts_with('2') && k.len() == 3)
            .collect();
        codes.sort_by_key(|k| (k.ends_with("XX") || k.ends_with("xx"), k.to_string()));
        for code in responses.keys() {
            if responses[code].get("links").is_some() {
                ignored.links += 1;
            }
        }
        if let Some(code) = codes.first() {
            let r = conv.docs.deref(
                doc,
                format!("{}/responses/{}", i.op_place.pointer, escape(code)),
            )?;
            let schema_v = r
                .value()
                .get("content")
                .and_then(Value::as_object)
                .and_then(|c| {
                    c.iter()
                        .find(|(k, _)| media_base(k) == "application/json")
                        .or_else(|| c.iter().find(|(k, _)| is_json(k)))
                        .and_then(|(_, m)| m.get("schema"))
                        .cloned()
                });
            if let Some(s) = schema_v {
                let c = conv
                    .convert(r.place.doc, &s, Side::Output)
                    .map_err(|e| format!("responses.{code}: {e}"))?;
                output = Some(c.freeze());
            }
        }
    }

    Ok(Draft {
        op: Operation {
            name,
            method,
            template: i.template.into(),
            path: i.path,
            summary,
            description,
            risk,
            risk_from_spec,
            from_operation_id,
            security,
            deprecated: op.get("deprecated") == Some(&Value::Bool(true)),
            input: Schema::plain(Value::Null),
            output: None,
            query: Vec::new(),
            json_body,
            body_required,
            check: None,
            validate: false,
            source: i.oref,
        },
        input: input_refs,
        output,
        explodes,
    })
}

/// `application/json; charset=utf-8` → `application/json`.
fn media_base(m: &str) -> String {
    m.split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// `application/json`, `application/vnd.x+json`, `application/json-patch+json`.
fn is_json(m: &str) -> bool {
    let b = media_base(m);
    b == "application/json"
        || b.ends_with("+json")
        || (b.starts_with("application/") && b.ends_with("json"))
}

/// Summary and description, trimmed, the summary first unless the description starts
/// with it, at most [`MAX_DESCRIPTION`] bytes.
fn describe(summary: Option<&str>, description: Option<&str>) -> Option<String> {
    let text = match (summary, description) {
        (None, None) => return None,
        (Some(s), None) => s.to_string(),
        (None, Some(d)) => d.to_string(),
        (Some(s), Some(d)) if d.starts_with(s) => d.to_string(),
        (Some(s), Some(d)) => format!("{s}\n\n{d}"),
    };
    Some(cap(&text, MAX_DESCRIPTION))
}

/// At most `max` bytes, cut on a character boundary and marked with `…`.
pub fn cap(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut cut = max - '…'.len_utf8();
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…", s[..cut].trim_end())
}

/// Security requirements as text: one entry per alternative, `a(scope, scope) + b`;
/// `{}` is `anonymous`, `security: []` is `none`. Shown, never used as a grant.
fn security(v: Option<&Value>) -> Vec<String> {
    let Some(alts) = v.and_then(Value::as_array) else {
        return Vec::new();
    };
    if alts.is_empty() {
        return vec!["none".into()];
    }
    alts.iter()
        .filter_map(Value::as_object)
        .map(|req| {
            if req.is_empty() {
                return "anonymous".to_string();
            }
            req.iter()
                .map(|(scheme, scopes)| {
                    let scopes: Vec<&str> = scopes
                        .as_array()
                        .map(|a| a.iter().filter_map(Value::as_str).collect())
                        .unwrap_or_default();
                    if scopes.is_empty() {
                        scheme.clone()
                    } else {
                        format!("{scheme}({})", scopes.join(", "))
                    }
                })
                .collect::<Vec<_>>()
                .join(" + ")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view<'a>(prefix: &'a str, strip: bool, up_base: &'a str) -> RouteView<'a> {
        RouteView {
            prefix,
            strip_prefix: strip,
            tool_prefix: "t",
            upstream: "up",
            upstream_base: up_base,
            generated_names: false,
        }
    }

    #[test]
    fn server_base_paths_combine_with_the_route() {
        let servers = json!([{"url": "https://{host}/api/{v}", "variables": {"host": {"default": "x.io"}, "v": {"default": "v3"}}}]);
        let (base, host) = server_base(Some(&servers)).unwrap();
        assert_eq!((base.as_str(), host.as_deref()), ("/api/v3", Some("x.io")));
        assert_eq!(
            server_base(Some(&json!([{"url": "/v1/"}]))).unwrap().0,
            "/v1"
        );
        assert_eq!(server_base(None).unwrap().0, "");
        // Upstream URL carries the server's path: templates are prefix + spec path.
        let r = view("/pets", true, "/api/v3");
        assert_eq!(
            agent_path(&r, &relative_base(&r, "/api/v3"), "/pet/{id}"),
            "/pets/pet/{id}"
        );
        // Upstream URL is the host only; the route keeps its prefix: base + spec path.
        let r = view("/api/v3", false, "");
        assert_eq!(
            agent_path(&r, &relative_base(&r, "/api/v3"), "/pet/{id}"),
            "/api/v3/pet/{id}"
        );
        // The same with strip_prefix: prefix + base + spec path.
        let r = view("/pets", true, "");
        assert_eq!(
            agent_path(&r, &relative_base(&r, "/api/v3"), "/pet"),
            "/pets/api/v3/pet"
        );
        // A server path not under the upstream's: spec paths relative to the upstream.
        let r = view("/pets", true, "/v2");
        assert_eq!(relative_base(&r, "/api"), "");
        assert!(combination(&r, "/api").contains("not under it"));
        // The spec's root path is the prefix itself.
        let r = view("/pets", true, "");
        assert_eq!(agent_path(&r, "", "/"), "/pets");
    }

    #[test]
    fn templates_keep_parameter_names_and_merge_compound_segments() {
        assert_eq!(
            matchit_template("/repos/{owner}/{repo}/compare/{base}...{head}"),
            (
                "/repos/{owner}/{repo}/compare/{base_head}".to_string(),
                true
            )
        );
        assert_eq!(
            matchit_template("/enterprises/{enterprise}/teams/{enterprise-team}"),
            (
                "/enterprises/{enterprise}/teams/{enterprise_team}".to_string(),
                false
            )
        );
        assert_eq!(matchit_template("/files/{name}.json").0, "/files/{name}");
    }

    #[test]
    fn descriptions_are_trimmed_and_capped() {
        assert_eq!(
            describe(Some("Get"), Some("Get a pet.")).unwrap(),
            "Get a pet."
        );
        assert_eq!(
            describe(Some("Get"), Some("Returns one.")).unwrap(),
            "Get\n\nReturns one."
        );
        let long = "é".repeat(2000);
        let d = describe(None, Some(&long)).unwrap();
        assert!(
            d.len() <= MAX_DESCRIPTION && d.ends_with('…'),
            "{}",
            d.len()
        );
        assert_eq!(
            security(Some(&json!([{"oauth": ["read", "write"], "key": []}, {}]))),
            vec![
                "key + oauth(read, write)".to_string(),
                "anonymous".to_string()
            ]
        );
    }
}
