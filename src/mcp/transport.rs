//! Streamable HTTP framing for the MCP endpoint: which protocol era a POST speaks, the
//! 2026-07-28 header ladder (`MCP-Protocol-Version`, `Mcp-Method`, `Mcp-Name` against
//! the body), `Origin`, `Accept` and `Content-Type` checks, JSON-RPC replies and errors
//! with their HTTP statuses, and JSON or SSE encoding.

use crate::body::{self, Body};
use crate::config::McpConfig;
use crate::error::Error;
use base64::Engine;
use http::{header, HeaderMap, HeaderValue, Response, StatusCode};
use serde_json::{json, Map, Value};

/// Revisions served with `initialize` and sessions, oldest first.
pub const HANDSHAKE_VERSIONS: [&str; 3] = ["2025-03-26", "2025-06-18", "2025-11-25"];
/// Revisions served statelessly (per-request `_meta` envelope).
pub const MODERN_VERSIONS: [&str; 1] = ["2026-07-28"];
/// What a handshake-era client is offered when it asks for a version this server lacks.
pub const LATEST_HANDSHAKE: &str = "2025-11-25";

pub const META_PROTOCOL_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
pub const META_CLIENT_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";
pub const META_SERVER_INFO: &str = "io.modelcontextprotocol/serverInfo";

// JSON-RPC and MCP error codes.
pub const PARSE_ERROR: i64 = -32700;
pub const INVALID_REQUEST: i64 = -32600;
pub const METHOD_NOT_FOUND: i64 = -32601;
pub const INVALID_PARAMS: i64 = -32602;
pub const INTERNAL_ERROR: i64 = -32603;
pub const HEADER_MISMATCH: i64 = -32020;
pub const UNSUPPORTED_PROTOCOL_VERSION: i64 = -32022;

/// Which wire a POST speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Era {
    /// 2025-03-26 … 2025-11-25: `initialize`, `Mcp-Session-Id`.
    Handshake,
    /// 2026-07-28: stateless, every request carries its envelope.
    Modern,
}

/// A JSON-RPC error as sent.
#[derive(Debug, Clone)]
pub struct Rpc {
    pub code: i64,
    pub message: String,
    pub data: Option<Value>,
}

impl Rpc {
    pub fn new(code: i64, message: impl Into<String>) -> Rpc {
        Rpc {
            code,
            message: message.into(),
            data: None,
        }
    }
    pub fn invalid_params(message: impl Into<String>) -> Rpc {
        Rpc::new(INVALID_PARAMS, message)
    }
    pub fn with_data(mut self, data: Value) -> Rpc {
        self.data = Some(data);
        self
    }
    fn to_json(&self) -> Value {
        let mut e = json!({"code": self.code, "message": self.message});
        if let Some(d) = &self.data {
            e["data"] = d.clone();
        }
        e
    }
}

/// A failure of the proxy itself while serving a method (store down, audit trail
/// unavailable): JSON-RPC internal error, with the same reason and text the HTTP
/// answer would carry, and never an internal detail.
impl From<Error> for Rpc {
    fn from(e: Error) -> Rpc {
        let detail = match &e {
            Error::Internal(_) => "internal error; see the proxy log".to_string(),
            e => e.to_string(),
        };
        Rpc::new(INTERNAL_ERROR, detail).with_data(json!({"reason": e.reason()}))
    }
}

/// `MCP-Protocol-Version`, if given once.
pub fn version_header(h: &HeaderMap) -> Option<&str> {
    single(h, "mcp-protocol-version")
}

fn single<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    let mut all = h.get_all(name).iter();
    let v = all.next()?;
    if all.next().is_some() {
        return None;
    }
    v.to_str().ok()
}

/// The era of a POST: the modern wire when its version header or its body's `_meta`
/// names the 2026-07-28 envelope (or the method exists only there), else the handshake.
pub fn era_of(h: &HeaderMap, msg: &Value) -> Era {
    if version_header(h).is_some_and(|v| MODERN_VERSIONS.contains(&v)) {
        return Era::Modern;
    }
    let envelope = msg
        .get("params")
        .and_then(|p| p.get("_meta"))
        .and_then(|m| m.get(META_PROTOCOL_VERSION))
        .is_some();
    let method = msg.get("method").and_then(Value::as_str);
    if envelope || matches!(method, Some("server/discover" | "subscriptions/listen")) {
        return Era::Modern;
    }
    Era::Handshake
}

/// The -32022 error naming every version served.
pub fn unsupported(requested: &str) -> Rpc {
    let supported: Vec<&str> = HANDSHAKE_VERSIONS
        .iter()
        .chain(MODERN_VERSIONS.iter())
        .copied()
        .collect();
    Rpc::new(UNSUPPORTED_PROTOCOL_VERSION, "Unsupported protocol version")
        .with_data(json!({"supported": supported, "requested": requested}))
}

/// The 2026-07-28 ladder: the envelope is there, the mirrored headers agree with the
/// body (each given once), and the version is served. Returns the envelope's client
/// capabilities.
pub fn modern_ladder(h: &HeaderMap, msg: &Value) -> Result<Value, Rpc> {
    for name in ["mcp-protocol-version", "mcp-method", "mcp-name"] {
        if h.get_all(name).iter().count() > 1 {
            return Err(Rpc::new(
                HEADER_MISMATCH,
                format!("{name} header appears more than once"),
            ));
        }
    }
    let meta = msg
        .get("params")
        .and_then(|p| p.get("_meta"))
        .and_then(Value::as_object)
        .ok_or_else(|| {
            Rpc::invalid_params(format!(
                "params._meta must be an object carrying `{META_PROTOCOL_VERSION}` and `{META_CLIENT_CAPABILITIES}`"
            ))
        })?;
    let missing: Vec<&str> = [META_PROTOCOL_VERSION, META_CLIENT_CAPABILITIES]
        .into_iter()
        .filter(|k| !meta.contains_key(*k))
        .collect();
    if !missing.is_empty() {
        return Err(Rpc::invalid_params(format!(
            "params._meta is missing the required envelope key(s): {}",
            missing.join(", ")
        )));
    }
    let version = &meta[META_PROTOCOL_VERSION];
    if version_header(h).is_none_or(|v| Some(v) != version.as_str()) {
        return Err(Rpc::new(
            HEADER_MISMATCH,
            "mcp-protocol-version header does not match the request envelope's protocol version",
        ));
    }
    let method = msg.get("method").and_then(Value::as_str);
    if single(h, "mcp-method") != method {
        return Err(Rpc::new(
            HEADER_MISMATCH,
            "mcp-method header does not match the request body's method",
        ));
    }
    let name_key = match method {
        Some("tools/call" | "prompts/get") => Some("name"),
        Some("resources/read") => Some("uri"),
        _ => None,
    };
    // Tasks (SEP-2663) mirror their `taskId` too; checked when the client sends it.
    let task_key = matches!(method, Some("tasks/get" | "tasks/update" | "tasks/cancel"))
        && h.contains_key("mcp-name");
    if let Some(k) = name_key.or(task_key.then_some("taskId")) {
        if let Some(body_value) = msg.get("params").and_then(|p| p.get(k)) {
            let header = single(h, "mcp-name").and_then(decode_header_value);
            if header.as_deref() != body_value.as_str() {
                return Err(Rpc::new(
                    HEADER_MISMATCH,
                    format!("mcp-name header does not match the request body's `{k}` parameter"),
                ));
            }
        }
    }
    let version = version.as_str().ok_or_else(|| {
        Rpc::invalid_params("the protocol-version envelope value must be a string")
    })?;
    if !MODERN_VERSIONS.contains(&version) {
        return Err(unsupported(version));
    }
    Ok(meta[META_CLIENT_CAPABILITIES].clone())
}

/// A header value as the client mirrored it: verbatim, or `=?base64?…?=`-wrapped.
pub fn decode_header_value(v: &str) -> Option<String> {
    match v
        .strip_prefix("=?base64?")
        .and_then(|r| r.strip_suffix("?="))
    {
        None => Some(v.to_string()),
        Some(payload) => {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(payload)
                .ok()?;
            String::from_utf8(raw).ok()
        }
    }
}

/// A browser's `Origin` must be on the allow-list (DNS rebinding); clients that send
/// none (every non-browser MCP client) pass. One more origin passes without being
/// listed: a loopback origin naming exactly the `Host` the request was sent to (a page
/// served by this very address — a rebinding attacker's page carries its own name in
/// both headers, never `localhost`, `127.0.0.1` or `[::1]`).
pub fn check_origin(cfg: &McpConfig, h: &HeaderMap) -> Result<(), Error> {
    let mut all = h.get_all(header::ORIGIN).iter();
    let Some(o) = all.next() else {
        return Ok(());
    };
    let ok = all.next().is_none()
        && o.to_str().is_ok_and(|o| {
            let o = o.to_ascii_lowercase();
            cfg.allowed_origins.contains(&o) || same_loopback_origin(&o, h)
        });
    if ok {
        Ok(())
    } else {
        Err(Error::Forbidden(
            "this Origin may not use the MCP endpoint (mcp.allowed_origins)".into(),
        ))
    }
}

/// `http(s)://<host>` where `<host>` is a loopback name with an optional port and equals the
/// request's one `Host` header exactly.
fn same_loopback_origin(origin: &str, h: &HeaderMap) -> bool {
    let Some(authority) = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
    else {
        return false;
    };
    let name = match authority.rsplit_once(':') {
        Some((n, port)) if !n.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => n,
        _ => authority,
    };
    let loopback = matches!(name, "localhost" | "127.0.0.1" | "[::1]");
    let mut hosts = h.get_all(header::HOST).iter();
    let host = hosts.next().and_then(|v| v.to_str().ok());
    loopback && hosts.next().is_none() && host.is_some_and(|v| v.eq_ignore_ascii_case(authority))
}

/// What the client accepts: (JSON, SSE). No `Accept` accepts both.
pub fn accepts(h: &HeaderMap) -> (bool, bool) {
    let vals: Vec<String> = h
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .collect();
    if vals.is_empty() {
        return (true, true);
    }
    let any = vals.iter().any(|v| v == "*/*");
    let json = any
        || vals
            .iter()
            .any(|v| v == "application/json" || v == "application/*");
    let sse = any
        || vals
            .iter()
            .any(|v| v == "text/event-stream" || v == "text/*");
    (json, sse)
}

/// A POST body must be JSON.
pub fn check_content_type(h: &HeaderMap) -> Result<(), Error> {
    let ok = h
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if ok {
        Ok(())
    } else {
        Err(Error::UnsupportedMediaType {
            reason: "mcp_content_type",
            detail: "MCP messages are POSTed as application/json".into(),
        })
    }
}

/// A result reply.
pub fn reply(id: &Value, result: Value) -> Value {
    envelope(id, "result", result)
}

/// An error reply (`id` null when the request's id could not be read).
pub fn error(id: &Value, e: &Rpc) -> Value {
    envelope(id, "error", e.to_json())
}

/// `{"jsonrpc":"2.0","id":…,key:value}`, moving `value` in (`json!` would serialise
/// the whole result into a new tree: a deep copy of every call's result).
fn envelope(id: &Value, key: &str, value: Value) -> Value {
    let mut m = serde_json::Map::with_capacity(3);
    m.insert("jsonrpc".into(), Value::from("2.0"));
    m.insert("id".into(), id.clone());
    m.insert(key.into(), value);
    Value::Object(m)
}

/// The HTTP status of an error reply on the modern wire (on the handshake wire every
/// reply to a parsed request is 200, as its transport specifies).
pub fn modern_status(code: i64) -> StatusCode {
    match code {
        PARSE_ERROR
        | INVALID_REQUEST
        | INVALID_PARAMS
        | HEADER_MISMATCH
        | UNSUPPORTED_PROTOCOL_VERSION
        | -32021 => StatusCode::BAD_REQUEST,
        METHOD_NOT_FOUND => StatusCode::NOT_FOUND,
        _ => StatusCode::OK,
    }
}

/// A JSON-RPC message as the response: JSON, or one SSE event when the client takes
/// only `text/event-stream`.
pub fn respond(status: StatusCode, msg: &Value, sse: bool) -> Response<Body> {
    if !sse || status != StatusCode::OK {
        let mut r = body::json_response(status, msg);
        r.headers_mut()
            .insert("portcullis-decision", HeaderValue::from_static("allow"));
        return r;
    }
    let mut r = Response::new(body::full(sse_event(msg)));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("portcullis-decision", HeaderValue::from_static("allow"));
    r
}

/// One SSE `message` event.
pub fn sse_event(msg: &Value) -> String {
    format!("event: message\ndata: {msg}\n\n")
}

/// 202 for a notification or a client's response.
pub fn accepted() -> Response<Body> {
    let mut r = Response::new(body::empty());
    *r.status_mut() = StatusCode::ACCEPTED;
    r
}

/// 405 with the methods this endpoint answers on the client's wire.
pub fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut r = body::json_response(
        StatusCode::METHOD_NOT_ALLOWED,
        &json!({"error": "method_not_allowed", "reason": "method_not_allowed",
                "detail": format!("the MCP endpoint answers {allow}")}),
    );
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    r.headers_mut()
        .insert("portcullis-decision", HeaderValue::from_static("deny"));
    r
}

/// `serverInfo` for this build.
pub fn server_info() -> Value {
    json!({"name": "portcullis", "title": "portcullis", "version": env!("CARGO_PKG_VERSION")})
}

/// Adds `resultType: complete` and the server info on the modern wire.
pub fn modern_result(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.entry("resultType")
            .or_insert_with(|| Value::from("complete"));
        let meta = o
            .entry("_meta")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Some(m) = meta.as_object_mut() {
            m.insert(META_SERVER_INFO.into(), server_info());
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        m
    }

    fn call(name: &str) -> Value {
        json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":name,
            "_meta":{META_PROTOCOL_VERSION:"2026-07-28", META_CLIENT_CAPABILITIES:{}}}})
    }

    #[test]
    fn the_ladder_checks_every_mirrored_header() {
        let ok = h(&[
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/call"),
            ("mcp-name", "tickets.get"),
        ]);
        assert!(modern_ladder(&ok, &call("tickets.get")).is_ok());
        assert_eq!(
            modern_ladder(&ok, &call("tickets.delete"))
                .unwrap_err()
                .code,
            HEADER_MISMATCH
        );
        let wrong_method = h(&[
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/list"),
            ("mcp-name", "tickets.get"),
        ]);
        assert_eq!(
            modern_ladder(&wrong_method, &call("tickets.get"))
                .unwrap_err()
                .code,
            HEADER_MISMATCH
        );
        let twice = h(&[
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/call"),
            ("mcp-method", "tools/call"),
            ("mcp-name", "tickets.get"),
        ]);
        assert_eq!(
            modern_ladder(&twice, &call("tickets.get"))
                .unwrap_err()
                .code,
            HEADER_MISMATCH
        );
        let b64 = h(&[
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/call"),
            ("mcp-name", "=?base64?dGlja2V0cy5nZXQ=?="),
        ]);
        assert!(modern_ladder(&b64, &call("tickets.get")).is_ok());
        let mut future = call("tickets.get");
        future["params"]["_meta"][META_PROTOCOL_VERSION] = "2099-01-01".into();
        let hf = h(&[
            ("mcp-protocol-version", "2099-01-01"),
            ("mcp-method", "tools/call"),
            ("mcp-name", "tickets.get"),
        ]);
        let e = modern_ladder(&hf, &future).unwrap_err();
        assert_eq!(e.code, UNSUPPORTED_PROTOCOL_VERSION);
        assert!(e.data.unwrap()["supported"]
            .as_array()
            .unwrap()
            .contains(&json!("2026-07-28")));
        let mut bare = call("tickets.get");
        bare["params"].as_object_mut().unwrap().remove("_meta");
        assert_eq!(modern_ladder(&ok, &bare).unwrap_err().code, INVALID_PARAMS);
    }

    #[test]
    fn origins_must_be_listed_and_accept_is_read() {
        let cfg = McpConfig {
            enabled: true,
            path: "/mcp".into(),
            allowed_origins: vec!["https://app.example".into()],
            session_key: None,
        };
        assert!(check_origin(&cfg, &h(&[])).is_ok());
        assert!(check_origin(&cfg, &h(&[("origin", "https://APP.example")])).is_ok());
        assert!(check_origin(&cfg, &h(&[("origin", "http://evil.example")])).is_err());
        // A loopback page of this very address passes; a rebinding page does not.
        let same = [
            ("origin", "http://127.0.0.1:8080"),
            ("host", "127.0.0.1:8080"),
        ];
        assert!(check_origin(&cfg, &h(&same)).is_ok());
        let local = [("origin", "http://localhost"), ("host", "LOCALHOST")];
        assert!(check_origin(&cfg, &h(&local)).is_ok());
        for bad in [
            [
                ("origin", "http://127.0.0.1:3000"),
                ("host", "127.0.0.1:8080"),
            ],
            [
                ("origin", "http://evil.example:8080"),
                ("host", "evil.example:8080"),
            ],
            [
                ("origin", "ftp://localhost:8080"),
                ("host", "localhost:8080"),
            ],
            [
                ("origin", "http://localhost:8080"),
                ("host", "evil.example"),
            ],
            [
                ("origin", "http://localhost.evil:80"),
                ("host", "localhost.evil:80"),
            ],
        ] {
            assert!(check_origin(&cfg, &h(&bad)).is_err(), "{bad:?}");
        }
        assert!(check_origin(&cfg, &h(&[("origin", "http://localhost")])).is_err());
        assert_eq!(
            accepts(&h(&[("accept", "text/event-stream")])),
            (false, true)
        );
        assert_eq!(
            accepts(&h(&[("accept", "application/json, text/event-stream")])),
            (true, true)
        );
        assert_eq!(accepts(&h(&[("accept", "text/html")])), (false, false));
    }
}
