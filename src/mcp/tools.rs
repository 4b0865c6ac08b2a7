//! The generated tools as MCP tools: one [`ToolInfo`] per templated tool (name, title,
//! description, input and output schema, annotations) produced by [`catalogue`] from
//! the configuration, the per-credential listing (profile, token narrowing, switches —
//! the same decisions as `GET /_portcullis/tools`), and cursor pagination.
//!
//! Schemas are generated from the template unless richer data is plugged in here (the
//! OpenAPI import fills `description` and `output_schema` through this one function).

use crate::canon::Method;
use crate::classify::Risk;
use crate::config::Snapshot;
use crate::policy::{Agent, Narrowing, Switches};
use base64::Engine;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};

/// The built-in tool that long-polls an approval (for clients without tasks).
pub const APPROVAL_STATUS: &str = "portcullis.approval_status";
/// Tools per `tools/list` page.
pub const PAGE: usize = 100;

/// A path parameter of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    pub name: String,
    /// `{*name}`: the rest of the path, `/` allowed between its segments.
    pub catch_all: bool,
}

/// One tool as MCP clients see it, and how a call of it becomes an HTTP request.
#[derive(Debug, Clone)]
pub struct ToolInfo {
    pub name: String,
    pub title: String,
    pub description: Option<String>,
    pub input_schema: Value,
    pub output_schema: Option<Value>,
    pub annotations: Value,
    pub method: Method,
    pub template: String,
    pub risk: Risk,
    pub params: Vec<Param>,
}

impl ToolInfo {
    /// The `Tool` object of `tools/list`, with portcullis' risk and this caller's posture.
    pub fn to_json(&self, posture: &str, tasks: bool) -> Value {
        let mut t = json!({
            "name": self.name,
            "title": self.title,
            "inputSchema": self.input_schema,
            "annotations": self.annotations,
            "_meta": {"portcullis/risk": self.risk.as_str(), "portcullis/posture": posture,
                      "portcullis/method": self.method.as_str(), "portcullis/template": self.template},
        });
        if let Some(d) = &self.description {
            t["description"] = d.clone().into();
        }
        if let Some(o) = &self.output_schema {
            t["outputSchema"] = o.clone();
        }
        if tasks && posture == "approval" {
            t["execution"] = json!({"taskSupport": "optional"});
        }
        t
    }
}

/// The parameters of a template, in order.
pub fn params_of(template: &str) -> Vec<Param> {
    template
        .split('/')
        .filter_map(|s| {
            let inner = s.strip_prefix('{')?.strip_suffix('}')?;
            Some(match inner.strip_prefix('*') {
                Some(n) => Param {
                    name: n.into(),
                    catch_all: true,
                },
                None => Param {
                    name: inner.into(),
                    catch_all: false,
                },
            })
        })
        .collect()
}

/// Whether a method carries a JSON body.
pub fn has_body(m: Method) -> bool {
    matches!(m, Method::Post | Method::Put | Method::Patch)
}

/// The input schema a template implies: one string per path parameter, `query`, and
/// `body` for methods with a body. JSON Schema 2020-12.
pub fn template_schema(method: Method, params: &[Param]) -> Value {
    let mut props = serde_json::Map::new();
    for p in params {
        let desc = if p.catch_all {
            format!("Path parameter `{}`: the rest of the path; its `/`-separated segments are each sent percent-encoded", p.name)
        } else {
            format!(
                "Path parameter `{}`: one path segment, sent percent-encoded",
                p.name
            )
        };
        props.insert(
            p.name.clone(),
            json!({"type": "string", "minLength": 1, "description": desc}),
        );
    }
    props.insert(
        "query".into(),
        json!({"type": "object", "description": "Query parameters (a list repeats the parameter)",
               "additionalProperties": {"type": ["string", "number", "boolean", "array"],
                                        "items": {"type": ["string", "number", "boolean"]}}}),
    );
    if has_body(method) {
        props.insert(
            "body".into(),
            json!({"description": "The JSON request body"}),
        );
    }
    let required: Vec<&str> = params.iter().map(|p| p.name.as_str()).collect();
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": props,
        "required": required,
        "additionalProperties": false,
    })
}

/// An imported operation's input schema (`{path: {…}, query: {…}, header: {…}, body}`,
/// see "OpenAPI") in the argument shape `tools/call` takes: each path parameter a
/// top-level property with the spec's schema, `query` the spec's query object, `body`
/// the spec's body schema, and the `$defs` they reference. Header parameters are not
/// arguments over MCP (the proxy sends no caller-chosen headers upstream from a call).
fn flatten_spec_input(spec: &Value, mut generated: Value) -> Value {
    let sprops = spec.get("properties");
    if let (Some(gp), Some(sp)) = (
        generated
            .get_mut("properties")
            .and_then(Value::as_object_mut),
        sprops,
    ) {
        if let Some(path) = sp.get("path").and_then(|p| p.get("properties")) {
            if let Some(path) = path.as_object() {
                for (name, schema) in path {
                    if let Some(slot) = gp.get_mut(name) {
                        let mut s = schema.clone();
                        if let (Some(o), Some(d)) =
                            (s.as_object_mut(), slot.get("description").cloned())
                        {
                            o.entry("description").or_insert(d);
                        }
                        *slot = s;
                    }
                }
            }
        }
        if let Some(q) = sp.get("query") {
            gp.insert("query".into(), q.clone());
        }
        if let Some(b) = sp.get("body") {
            if gp.contains_key("body") {
                gp.insert("body".into(), b.clone());
            }
        }
    }
    let body_required = spec
        .get("required")
        .and_then(Value::as_array)
        .is_some_and(|r| r.iter().any(|v| v == "body"));
    if body_required && generated["properties"].get("body").is_some() {
        if let Some(r) = generated.get_mut("required").and_then(Value::as_array_mut) {
            r.push(Value::String("body".into()));
        }
    }
    if let Some(defs) = spec.get("$defs") {
        generated["$defs"] = defs.clone();
    }
    generated
}

/// MCP hints from the method and risk: the tool listings' [`crate::openapi::annotations`],
/// with a title and `openWorldHint`.
pub fn annotations(method: Method, risk: Risk, title: &str) -> Value {
    let a = crate::openapi::annotations(method, risk);
    json!({
        "title": title,
        "readOnlyHint": a.read_only,
        "destructiveHint": a.destructive,
        "idempotentHint": a.idempotent,
        "openWorldHint": true,
    })
}

/// The built-in approval-status tool.
pub fn approval_status_tool() -> Value {
    json!({
        "name": APPROVAL_STATUS,
        "title": "Approval status",
        "description": "Waits for an operator's decision on a request that needs approval, and returns its outcome: once executed, the upstream's result. Pass the approval_id a parked call returned.",
        "inputSchema": {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": {
                "approval_id": {"type": "string", "description": "The id a parked call returned"},
                "wait_seconds": {"type": "integer", "minimum": 0, "maximum": 60,
                                 "description": "How long to wait for a change (default 30)"}
            },
            "required": ["approval_id"],
            "additionalProperties": false
        },
        "annotations": {"title": "Approval status", "readOnlyHint": true, "destructiveHint": false,
                        "idempotentHint": true, "openWorldHint": false},
        "_meta": {"portcullis/risk": "low", "portcullis/posture": "allow"},
    })
}

/// Every templated tool of a configuration, by name (first of a name wins: a tool that
/// several methods share is called with the first of GET POST PUT PATCH DELETE).
pub struct Catalogue {
    pub tools: Vec<ToolInfo>,
}

impl Catalogue {
    pub fn get(&self, name: &str) -> Option<&ToolInfo> {
        self.tools
            .binary_search_by(|t| t.name.as_str().cmp(name))
            .ok()
            .map(|i| &self.tools[i])
    }
    pub fn by_template(&self, method: &str, template: &str) -> Option<&ToolInfo> {
        self.tools
            .iter()
            .find(|t| t.method.as_str() == method && t.template == template)
    }
}

/// The catalogue of `snap`, built once per policy version.
pub fn catalogue(snap: &Snapshot) -> Arc<Catalogue> {
    static CACHE: Mutex<Option<(Arc<str>, Arc<Catalogue>)>> = Mutex::new(None);
    let mut c = CACHE.lock().expect("catalogue lock");
    if let Some((v, cat)) = &*c {
        if *v == snap.policy_version {
            return cat.clone();
        }
    }
    let cat = Arc::new(build(snap));
    *c = Some((snap.policy_version.clone(), cat.clone()));
    cat
}

fn build(snap: &Snapshot) -> Catalogue {
    let mut tools: Vec<ToolInfo> = Vec::new();
    for row in crate::tooltable::rows(snap) {
        let Some(method) = Method::parse(&row.method) else {
            continue;
        };
        let risk = Risk::parse(&row.risk).unwrap_or(Risk::Critical);
        let params = params_of(&row.template);
        // The spec operation behind this row, when the route imports one (OpenAPI).
        let op = snap
            .openapi
            .by_name(&row.tool)
            .filter(|op| op.method == method && *op.template == *row.template);
        let description = snap
            .classifier
            .routes
            .iter()
            .flat_map(|r| r.overrides.iter())
            .find(|o| *o.name == *row.tool && o.pattern.text == row.template)
            .and_then(|o| o.description.clone())
            .or_else(|| op.and_then(|op| op.description.clone()))
            .or_else(|| {
                Some(format!(
                    "{} {} on upstream `{}` through portcullis (risk {}).",
                    row.method, row.template, row.upstream, row.risk
                ))
            });
        let title = op
            .and_then(|op| op.summary.clone())
            .unwrap_or_else(|| format!("{} {}", row.method, row.template));
        let generated = template_schema(method, &params);
        let input_schema = match op {
            Some(op) => flatten_spec_input(&op.input.to_value(), generated),
            None => generated,
        };
        tools.push(ToolInfo {
            name: row.tool.clone(),
            annotations: annotations(method, risk, &title),
            title,
            description,
            input_schema,
            output_schema: op.and_then(|op| op.output.as_ref().map(|s| s.to_value())),
            method,
            template: row.template.clone(),
            risk,
            params,
        });
    }
    // Stable: rows come in route, template and GET POST PUT PATCH DELETE order.
    tools.sort_by(|a, b| a.name.cmp(&b.name));
    tools.dedup_by(|b, a| a.name == b.name);
    Catalogue { tools }
}

/// The `Tool` objects this credential may call or request, in name order, with the
/// built-in approval-status tool.
pub fn listed(
    snap: &Snapshot,
    agent: &Agent,
    narrowing: &Narrowing,
    switches: &Switches,
    tasks: bool,
) -> Vec<Value> {
    let cat = catalogue(snap);
    let mut out: Vec<(String, Value)> = Vec::new();
    for e in crate::explain::agent_tools(snap, agent, narrowing, switches) {
        let Some(t) = cat.by_template(&e.method, &e.template) else {
            continue;
        };
        // A name several methods share is one MCP tool (the catalogue's).
        if t.name != e.tool || out.iter().any(|(n, _)| *n == t.name) {
            continue;
        }
        out.push((t.name.clone(), t.to_json(&e.posture, tasks)));
    }
    out.push((APPROVAL_STATUS.into(), approval_status_tool()));
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out.into_iter().map(|(_, v)| v).collect()
}

/// One page of `all` from `cursor`, and the cursor of the next page.
pub fn page(all: Vec<Value>, cursor: Option<&str>) -> Result<(Vec<Value>, Option<String>), String> {
    let start = match cursor {
        None => 0,
        Some(c) => decode_cursor(c).ok_or_else(|| "invalid or expired cursor".to_string())?,
    };
    if start > all.len() {
        return Err("invalid or expired cursor".into());
    }
    let end = (start + PAGE).min(all.len());
    let next = (end < all.len()).then(|| encode_cursor(end));
    Ok((
        all.into_iter().skip(start).take(end - start).collect(),
        next,
    ))
}

fn encode_cursor(offset: usize) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("tools:{offset}"))
}

fn decode_cursor(c: &str) -> Option<usize> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(c)
        .ok()?;
    String::from_utf8(raw)
        .ok()?
        .strip_prefix("tools:")?
        .parse()
        .ok()
}

/// A fingerprint of a listing, to tell when it changed.
pub fn fingerprint(tools: &[Value]) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for t in tools {
        h.update(t.to_string().as_bytes());
        h.update([0]);
    }
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_input_schema_is_flattened_into_the_call_arguments() {
        let spec = json!({
            "type": "object",
            "properties": {
                "path": {"type": "object", "properties": {"petId": {"type": "integer"}}},
                "query": {"type": "object", "properties": {"limit": {"type": "integer"}}},
                "header": {"type": "object", "properties": {"X-Trace": {"type": "string"}}},
                "body": {"$ref": "#/$defs/Pet"}
            },
            "required": ["path", "body"],
            "$defs": {"Pet": {"type": "object"}}
        });
        let generated = template_schema(Method::Put, &params_of("/pets/{petId}"));
        let flat = flatten_spec_input(&spec, generated);
        assert_eq!(flat["properties"]["petId"]["type"], "integer");
        assert_eq!(
            flat["properties"]["query"]["properties"]["limit"]["type"],
            "integer"
        );
        assert_eq!(flat["properties"]["body"]["$ref"], "#/$defs/Pet");
        assert!(flat["properties"].get("header").is_none(), "{flat}");
        assert_eq!(flat["$defs"]["Pet"]["type"], "object");
        let req: Vec<&str> = flat["required"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(req, ["petId", "body"]);
    }

    #[test]
    fn schemas_follow_the_template() {
        let ps = params_of("/tickets/{id}/files/{*path}");
        assert_eq!(
            ps,
            vec![
                Param {
                    name: "id".into(),
                    catch_all: false
                },
                Param {
                    name: "path".into(),
                    catch_all: true
                }
            ]
        );
        let s = template_schema(Method::Post, &ps);
        assert_eq!(s["required"], json!(["id", "path"]));
        assert!(s["properties"]["body"].is_object());
        assert_eq!(s["additionalProperties"], json!(false));
        let g = template_schema(Method::Get, &ps);
        assert!(g["properties"].get("body").is_none());
        let a = annotations(Method::Delete, Risk::High, "x");
        assert_eq!(a["destructiveHint"], json!(true));
        assert_eq!(a["readOnlyHint"], json!(false));
    }

    #[test]
    fn pages_are_cut_at_one_hundred_with_an_opaque_cursor() {
        let all: Vec<Value> = (0..250).map(|i| json!(i)).collect();
        let (p1, c1) = page(all.clone(), None).unwrap();
        assert_eq!(p1.len(), 100);
        let (p2, c2) = page(all.clone(), c1.as_deref()).unwrap();
        assert_eq!(p2[0], json!(100));
        let (p3, c3) = page(all.clone(), c2.as_deref()).unwrap();
        assert_eq!(p3.len(), 50);
        assert!(c3.is_none());
        assert!(page(all, Some("nonsense")).is_err());
    }
}
