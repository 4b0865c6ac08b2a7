//! `tools/call` → one HTTP request through the proxy's own request path. The request is
//! built from the tool's template and the arguments (each path parameter percent-encoded
//! as one segment, `query`, a JSON `body`, an `Idempotency-Key` from `_meta`) and handed
//! to [`crate::proxy::serve`] as if it had arrived over HTTP: the same canon → classify →
//! decide → forward | deny | park, the same audit record (with `via: "mcp"` and the
//! JSON-RPC id). The proxy refuses it unless it classifies back to the called tool.
//! The answer is turned into a `CallToolResult`, or a parked request into a task or an
//! approval handle.

use super::tools::{has_body, ToolInfo};
use super::transport::Rpc;
use crate::app::App;
use crate::body::Body;
use crate::canon::Method;
use crate::proxy::{Conn, Via};
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full};
use serde_json::{json, Map, Value};
use std::sync::Arc;

/// Bytes never percent-encoded in a segment or query component (RFC 3986 unreserved).
fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Percent-encodes everything but the unreserved characters: a value is one segment
/// (or one query component), whatever it holds.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if unreserved(b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A scalar argument as text (strings as they are; numbers and booleans as JSON).
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The method, path + query and body of a call of `tool` with `args`.
pub fn build(tool: &ToolInfo, args: &Map<String, Value>) -> Result<(String, Option<Bytes>), Rpc> {
    for k in args.keys() {
        let known = tool.params.iter().any(|p| p.name == *k)
            || k == "query"
            || (k == "body" && has_body(tool.method));
        if !known {
            return Err(Rpc::invalid_params(format!(
                "`{}` takes no argument `{k}`",
                tool.name
            )));
        }
    }
    let mut path = String::new();
    for seg in tool.template.split('/').skip(1) {
        path.push('/');
        let param = seg
            .strip_prefix('{')
            .and_then(|s| s.strip_suffix('}'))
            .map(|s| s.trim_start_matches('*'));
        match param {
            None => path.push_str(seg),
            Some(name) => {
                let v = args.get(name).and_then(scalar).ok_or_else(|| {
                    Rpc::invalid_params(format!(
                        "`{}` needs the path parameter `{name}` (a string)",
                        tool.name
                    ))
                })?;
                if seg.starts_with("{*") {
                    let parts: Vec<String> = v.split('/').map(encode).collect();
                    path.push_str(&parts.join("/"));
                } else {
                    path.push_str(&encode(&v));
                }
            }
        }
    }
    if path.is_empty() {
        path.push('/');
    }
    if let Some(q) = args.get("query") {
        let q = match q {
            Value::Null => Map::new(),
            Value::Object(o) => o.clone(),
            _ => return Err(Rpc::invalid_params("`query` must be an object")),
        };
        let mut pairs = Vec::new();
        for (k, v) in &q {
            let vals: Vec<&Value> = match v {
                Value::Array(a) => a.iter().collect(),
                Value::Null => vec![],
                v => vec![v],
            };
            for v in vals {
                let s = scalar(v).ok_or_else(|| {
                    Rpc::invalid_params(format!(
                        "query parameter `{k}` must be a string, number, boolean or a list of them"
                    ))
                })?;
                pairs.push(format!("{}={}", encode(k), encode(&s)));
            }
        }
        if !pairs.is_empty() {
            path.push('?');
            path.push_str(&pairs.join("&"));
        }
    }
    let body = match args.get("body") {
        Some(b) if has_body(tool.method) => Some(Bytes::from(
            serde_json::to_vec(b).expect("JSON values serialise"),
        )),
        _ => None,
    };
    Ok((path, body))
}

/// The caller's headers a built request carries: its credential (the proxy
/// authenticates it again, as for any request), the authority it addressed, and the
/// forwarding chain (believed only from trusted proxies, as over HTTP).
fn carried(h: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for name in [header::AUTHORIZATION, header::HOST] {
        for v in h.get_all(&name) {
            out.append(name.clone(), v.clone());
        }
    }
    for v in h.get_all("x-forwarded-for") {
        out.append("x-forwarded-for", v.clone());
    }
    out
}

/// What the gate did with a call, read from the proxy's answer.
pub enum Outcome {
    /// Forwarded: the upstream's status, headers and body (capped).
    Upstream {
        status: u16,
        content_type: Option<String>,
        body: Bytes,
        truncated: bool,
    },
    /// Refused by the gate or the proxy: its JSON answer (reason, detail, tool, risk).
    Refused { status: u16, body: Value },
    /// Parked: the 202 answer (approval id, expiry, poll URL).
    Parked(Value),
}

/// What a call's `_meta` carries for the request it builds.
#[derive(Default, Clone, Copy)]
pub struct Meta<'a> {
    /// Sent as `Idempotency-Key`.
    pub idempotency_key: Option<&'a str>,
    /// Sent as `Portcullis-Rationale` (percent-encoded), checked like the header.
    pub rationale: Option<&'a str>,
}

/// Sends the call through the proxy's request path.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    app: &Arc<App>,
    conn: Conn,
    caller: &HeaderMap,
    tool: &ToolInfo,
    args: &Map<String, Value>,
    meta: Meta<'_>,
    jsonrpc_id: &Value,
    max_result: u64,
) -> Result<(Outcome, Option<String>), Rpc> {
    let (pq, body) = build(tool, args)?;
    let mut headers = carried(caller);
    if body.is_some() {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
    if let Some(r) = meta.rationale {
        let v = HeaderValue::from_str(&encode(r))
            .map_err(|_| Rpc::invalid_params("the rationale is not a valid header value"))?;
        headers.insert(crate::rationale::HEADER, v);
    }
    if let Some(k) = meta.idempotency_key {
        let v = HeaderValue::from_str(k)
            .map_err(|_| Rpc::invalid_params("the idempotency key is not a valid header value"))?;
        headers.insert("idempotency-key", v);
    }
    let mut req = Request::new(Full::new(body.unwrap_or_default()));
    *req.method_mut() = tool.method.to_http();
    *req.uri_mut() = pq
        .parse()
        .map_err(|_| Rpc::invalid_params("the arguments do not make a request target"))?;
    *req.version_mut() = http::Version::HTTP_11;
    *req.headers_mut() = headers;
    let via = Via::Mcp {
        jsonrpc_id: jsonrpc_id.to_string(),
        tool: Arc::from(tool.name.as_str()),
    };
    let resp = crate::proxy::serve(app.clone(), conn, req, via).await;
    outcome(resp, max_result).await
}

async fn read_capped(body: Body, max: u64) -> (Bytes, bool) {
    let mut body = body;
    let mut buf = Vec::new();
    let mut truncated = false;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            truncated = true;
            break;
        };
        if let Ok(data) = frame.into_data() {
            let room = (max as usize).saturating_sub(buf.len());
            if data.len() > room {
                buf.extend_from_slice(&data[..room]);
                truncated = true;
                break;
            }
            buf.extend_from_slice(&data);
        }
    }
    (Bytes::from(buf), truncated)
}

async fn outcome(resp: Response<Body>, max: u64) -> Result<(Outcome, Option<String>), Rpc> {
    let (parts, body) = resp.into_parts();
    let decision = parts
        .headers
        .get("portcullis-decision")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("allow")
        .to_string();
    let request_id = parts
        .headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let status = parts.status.as_u16();
    let (bytes, truncated) = read_capped(body, max).await;
    let o = match decision.as_str() {
        "park" => Outcome::Parked(serde_json::from_slice(&bytes).unwrap_or(Value::Null)),
        "deny" | "error" => Outcome::Refused {
            status,
            body: serde_json::from_slice(&bytes).unwrap_or_else(
                |_| json!({"error": "error", "detail": String::from_utf8_lossy(&bytes)}),
            ),
        },
        _ => Outcome::Upstream {
            status,
            content_type: parts
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            body: bytes,
            truncated,
        },
    };
    Ok((o, request_id))
}

/// An upstream answer as a `CallToolResult`: the body as text (JSON objects also as
/// `structuredContent`); a 4xx/5xx is `isError` with the status, so the model can
/// correct itself.
pub fn upstream_result(
    status: u16,
    body: &[u8],
    truncated: bool,
    has_output_schema: bool,
) -> Value {
    let text = match std::str::from_utf8(body) {
        Ok(s) => s.to_string(),
        Err(_) => format!(
            "(a binary body of {} bytes, base64) {}",
            body.len(),
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, body)
        ),
    };
    let is_error = status >= 400;
    let shown = if is_error {
        format!("HTTP {status}\n{text}")
    } else {
        text
    };
    // Built by hand: `json!` would copy the body's text once more.
    let mut item = serde_json::Map::with_capacity(2);
    item.insert("type".into(), Value::from("text"));
    item.insert("text".into(), Value::String(shown));
    let mut r = serde_json::Map::with_capacity(4);
    r.insert("content".into(), Value::Array(vec![Value::Object(item)]));
    r.insert("isError".into(), Value::Bool(is_error));
    r.insert(
        "_meta".into(),
        json!({"portcullis/status": status, "portcullis/truncated": truncated}),
    );
    // Only what could be a JSON object is parsed as one.
    let object_like = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    if object_like {
        if let Ok(v @ Value::Object(_)) = serde_json::from_slice::<Value>(body) {
            // With an output schema only a success may carry it (clients validate it).
            if !is_error || !has_output_schema {
                r.insert("structuredContent".into(), v);
            }
        }
    }
    Value::Object(r)
}

/// A refusal as a `CallToolResult`: `isError` with the reason code and the same JSON
/// text the HTTP answer carries.
pub fn refused_result(status: u16, body: &Value) -> Value {
    let reason = body
        .get("reason")
        .and_then(Value::as_str)
        .unwrap_or("error");
    let detail = body.get("detail").and_then(Value::as_str).unwrap_or("");
    json!({
        "content": [{"type": "text", "text": format!("refused ({reason}): {detail}\n{body}")}],
        "structuredContent": body,
        "isError": true,
        "_meta": {"portcullis/status": status, "portcullis/reason": reason},
    })
}

/// Whether a method is one the catalogue can hold.
pub fn callable(m: Method) -> bool {
    matches!(
        m,
        Method::Get | Method::Post | Method::Put | Method::Patch | Method::Delete
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::Risk;
    use crate::mcp::tools::{params_of, template_schema};

    fn tool(m: Method, t: &str) -> ToolInfo {
        let params = params_of(t);
        ToolInfo {
            name: "x".into(),
            title: "x".into(),
            description: None,
            input_schema: template_schema(m, &params),
            output_schema: None,
            annotations: json!({}),
            method: m,
            template: t.into(),
            risk: Risk::Low,
            params,
        }
    }

    fn args(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn every_path_parameter_is_one_encoded_segment() {
        let t = tool(Method::Get, "/tickets/{id}/comments");
        let (p, b) = build(&t, &args(json!({"id": "42"}))).unwrap();
        assert_eq!(p, "/tickets/42/comments");
        assert!(b.is_none());
        let (p, _) = build(&t, &args(json!({"id": "../admin"}))).unwrap();
        assert_eq!(p, "/tickets/..%2Fadmin/comments");
        let (p, _) = build(&t, &args(json!({"id": "a b?c#d"}))).unwrap();
        assert_eq!(p, "/tickets/a%20b%3Fc%23d/comments");
        let (p, _) = build(
            &t,
            &args(json!({"id": 7, "query": {"q": "x&y=z", "t": ["1", 2]}})),
        )
        .unwrap();
        assert_eq!(p, "/tickets/7/comments?q=x%26y%3Dz&t=1&t=2");
        assert!(build(&t, &args(json!({}))).is_err(), "missing parameter");
        assert!(build(&t, &args(json!({"id": "1", "extra": 1}))).is_err());
        assert!(
            build(&t, &args(json!({"id": "1", "body": {}}))).is_err(),
            "GET takes no body"
        );
        let post = tool(Method::Post, "/tickets/{id}/refund");
        let (p, b) = build(&post, &args(json!({"id": "9", "body": {"amount": 5}}))).unwrap();
        assert_eq!(p, "/tickets/9/refund");
        assert_eq!(&b.unwrap()[..], br#"{"amount":5}"#);
        let rest = tool(Method::Get, "/files/{*path}");
        let (p, _) = build(&rest, &args(json!({"path": "a/b c/d"}))).unwrap();
        assert_eq!(p, "/files/a/b%20c/d");
    }

    #[test]
    fn results_keep_status_and_structure() {
        let r = upstream_result(200, br#"{"id":1}"#, false, false);
        assert_eq!(r["isError"], json!(false));
        assert_eq!(r["structuredContent"], json!({"id": 1}));
        let r = upstream_result(404, b"nope", false, false);
        assert_eq!(r["isError"], json!(true));
        assert!(r["content"][0]["text"]
            .as_str()
            .unwrap()
            .starts_with("HTTP 404"));
    }
}
