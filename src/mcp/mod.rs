//! The MCP endpoint on the agent port (`mcp.path`, default `/mcp`): Streamable HTTP for
//! both protocol eras on one endpoint, the agent's `pcx_` credential, and method
//! dispatch. Every `tools/call` goes through the proxy's own request path (see
//! [`call`]); nothing here decides a request.
//!
//! Implemented directly on hyper and serde_json rather than with `rmcp` (README, "MCP":
//! the SDK serves one era per service and owns the dispatch).

pub mod call;
pub mod listen;
pub mod session;
pub mod tasks;
pub mod tools;
pub mod transport;

use crate::app::{App, Live};
use crate::body::{self, Body};
use crate::error::Error;
use crate::identity::Identity;
use crate::proxy::Conn;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{json, Value};
use std::sync::Arc;
use tracing::info;
use transport::{Era, Rpc};

/// Whether a request is for the MCP endpoint (matched before routes and `/_portcullis/`).
pub fn matches(app: &App, path: &str) -> bool {
    let live = app.live.load();
    live.snap.mcp.enabled && path == live.snap.mcp.path
}

/// One request to the MCP endpoint; always answers.
pub async fn handle(app: Arc<App>, conn: Conn, req: Request<Incoming>) -> Response<Body> {
    let request_id = crate::proxy::new_request_id();
    // Bounded like any agent request (a stream's answer returns at once; its events
    // are written by a task of their own).
    let deadline = app.live.load().snap.limits.request_deadline;
    let result = match tokio::time::timeout(deadline, entry(&app, conn, req)).await {
        Ok(r) => r,
        Err(_) => Err(Error::Deadline(deadline)),
    };
    let mut resp = match result {
        Ok(r) => r,
        Err(e) => {
            if matches!(e, Error::Unauthorized) {
                metrics::counter!("portcullis_unauthenticated_total", "reason" => e.reason())
                    .increment(1);
                // Sampled at the proxy's bounded rate, like HTTP's: nobody fills the disk
                // without a credential.
                if app.unauth_sampler.check().is_ok() {
                    let _ = app.audit.record(crate::audit::Record {
                        event: "request",
                        request_id: Some(request_id.clone()),
                        remote_addr: Some(conn.peer.ip().to_string()),
                        method: Some("POST".into()),
                        path: Some(app.live.load().snap.mcp.path.clone()),
                        decision: Some("deny".into()),
                        reason: Some(e.reason().into()),
                        status: Some(401),
                        via: Some("mcp"),
                        ..Default::default()
                    });
                }
            }
            info!(request_id = %request_id, via = "mcp", reason = e.reason(), status = e.status().as_u16(), "mcp request refused");
            e.to_response(&request_id)
        }
    };
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

async fn entry(
    app: &Arc<App>,
    conn: Conn,
    req: Request<Incoming>,
) -> Result<Response<Body>, Error> {
    let live = app.live.load_full();
    let snap = &live.snap;
    // DNS rebinding: a browser page from a foreign origin is refused before anything.
    transport::check_origin(&snap.mcp, req.headers())?;
    let who = app
        .creds
        .authenticate(
            &app.store,
            snap.store.pepper.as_deref(),
            &snap.agents,
            req.headers(),
        )
        .await?;
    let modern_header = transport::version_header(req.headers())
        .is_some_and(|v| transport::MODERN_VERSIONS.contains(&v));
    match *req.method() {
        Method::POST => post(app, conn, &live, &who, req).await,
        Method::GET if !modern_header => get_stream(app, &live, &who, req.headers()),
        _ if modern_header => Ok(transport::method_not_allowed("POST")),
        _ => Ok(transport::method_not_allowed("GET, POST")),
    }
}

/// The handshake era's standalone stream: `notifications/tools/list_changed`.
fn get_stream(
    app: &Arc<App>,
    live: &Live,
    who: &Identity,
    h: &HeaderMap,
) -> Result<Response<Body>, Error> {
    let (_, sse) = transport::accepts(h);
    if !sse {
        return Err(Error::NotAcceptable(
            "the stream is text/event-stream".into(),
        ));
    }
    let key = session::key(&live.snap);
    match h.get("mcp-session-id").and_then(|v| v.to_str().ok()) {
        None => Err(Error::BadRequest {
            reason: "mcp_session_required",
            detail: "the GET stream needs an Mcp-Session-Id from initialize".into(),
        }),
        Some(id) => match session::verify(&key, id, &who.token.record.id) {
            Some(_) => Ok(listen::open(app.clone(), h, listen::Mode::Handshake)),
            None => Err(Error::NotFound),
        },
    }
}

/// What one JSON-RPC request is served with.
pub struct Cx<'a> {
    pub app: &'a Arc<App>,
    pub live: &'a Live,
    pub who: &'a Identity,
    pub conn: Conn,
    pub headers: &'a HeaderMap,
    pub era: Era,
    /// The protocol version in force (negotiated, or the request's envelope).
    pub version: String,
    /// Modern: the client declared the tasks extension on this request.
    pub tasks_ext: bool,
    pub id: Value,
}

async fn post(
    app: &Arc<App>,
    conn: Conn,
    live: &Live,
    who: &Identity,
    req: Request<Incoming>,
) -> Result<Response<Body>, Error> {
    let (parts, incoming) = req.into_parts();
    let h = &parts.headers;
    transport::check_content_type(h)?;
    let (json_ok, sse_ok) = transport::accepts(h);
    if !json_ok && !sse_ok {
        return Err(Error::NotAcceptable(
            "MCP answers application/json or text/event-stream".into(),
        ));
    }
    let sse = !json_ok;
    let raw = body::read_small(incoming, live.snap.limits.max_body_bytes as usize).await?;
    let msg: Value = match serde_json::from_slice(&raw) {
        Ok(v) => v,
        Err(_) => {
            let e = Rpc::new(transport::PARSE_ERROR, "Parse error");
            return Ok(transport::respond(
                StatusCode::BAD_REQUEST,
                &transport::error(&Value::Null, &e),
                false,
            ));
        }
    };
    let invalid = |why: &str| {
        transport::respond(
            StatusCode::BAD_REQUEST,
            &transport::error(&Value::Null, &Rpc::new(transport::INVALID_REQUEST, why)),
            false,
        )
    };
    let Some(obj) = msg.as_object() else {
        return Ok(invalid(
            "the body must be one JSON-RPC request, notification or response object",
        ));
    };
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Ok(invalid("`jsonrpc` must be \"2.0\""));
    }
    let era = transport::era_of(h, &msg);
    let method = obj.get("method").and_then(Value::as_str);
    let id = obj.get("id").cloned();
    let Some(method) = method else {
        // A client's response (to nothing this server asks): accepted and dropped.
        return Ok(if obj.contains_key("result") || obj.contains_key("error") {
            transport::accepted()
        } else {
            invalid("a request needs a `method`")
        });
    };
    let id = match id {
        None => {
            metrics::counter!("portcullis_mcp_messages_total", "method" => "notification", "era" => era_label(era)).increment(1);
            if era == Era::Handshake {
                if let Some(v) = transport::version_header(h) {
                    if !transport::HANDSHAKE_VERSIONS.contains(&v) {
                        return Ok(bad_version(v));
                    }
                }
            }
            return Ok(transport::accepted());
        }
        Some(id @ (Value::String(_) | Value::Number(_))) => id,
        Some(_) => return Ok(invalid("`id` must be a string or a number")),
    };
    metrics::counter!("portcullis_mcp_messages_total", "method" => method_label(method), "era" => era_label(era)).increment(1);
    let params = obj.get("params").cloned().unwrap_or(json!({}));
    let mut headers_out = HeaderMap::new();
    let (version, tasks_ext) =
        match era {
            Era::Modern => match transport::modern_ladder(h, &msg) {
                Ok(caps) => (
                    transport::MODERN_VERSIONS[0].to_string(),
                    caps.get("extensions")
                        .and_then(|e| e.get("io.modelcontextprotocol/tasks"))
                        .is_some(),
                ),
                Err(e) => {
                    return Ok(transport::respond(
                        transport::modern_status(e.code),
                        &transport::error(&id, &e),
                        false,
                    ))
                }
            },
            Era::Handshake => {
                if let Some(v) = transport::version_header(h) {
                    if !transport::HANDSHAKE_VERSIONS.contains(&v) {
                        return Ok(bad_version(v));
                    }
                }
                let key = session::key(&live.snap);
                if method == "initialize" {
                    let asked = params
                        .get("protocolVersion")
                        .and_then(Value::as_str)
                        .unwrap_or(transport::LATEST_HANDSHAKE);
                    let v = if transport::HANDSHAKE_VERSIONS.contains(&asked) {
                        asked
                    } else {
                        transport::LATEST_HANDSHAKE
                    };
                    let sid = session::issue(&key, &who.token.record.id, v);
                    headers_out.insert(
                        "mcp-session-id",
                        HeaderValue::from_str(&sid).map_err(|e| Error::Internal(e.to_string()))?,
                    );
                    (v.to_string(), false)
                } else {
                    match h.get("mcp-session-id").and_then(|v| v.to_str().ok()) {
                        None => return Err(Error::BadRequest {
                            reason: "mcp_session_required",
                            detail:
                                "send initialize first, then its Mcp-Session-Id on every request"
                                    .into(),
                        }),
                        Some(sid) => match session::verify(&key, sid, &who.token.record.id) {
                            Some(s) => (s.version, false),
                            // Unknown or expired: the client starts a new session.
                            None => return Err(Error::NotFound),
                        },
                    }
                }
            }
        };
    if era == Era::Modern && method == "subscriptions/listen" {
        if !sse_ok {
            return Err(Error::NotAcceptable(
                "subscriptions/listen answers text/event-stream".into(),
            ));
        }
        let wants = params
            .get("notifications")
            .and_then(|n| n.get("toolsListChanged"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if wants {
            return Ok(listen::open(
                app.clone(),
                h,
                listen::Mode::Modern { subscription: id },
            ));
        }
    }
    let cx = Cx {
        app,
        live,
        who,
        conn,
        headers: h,
        era,
        version,
        tasks_ext,
        id: id.clone(),
    };
    let (status, reply) = match dispatch(&cx, method, &params).await {
        Ok(result) => {
            let result = if era == Era::Modern {
                transport::modern_result(result)
            } else {
                result
            };
            (StatusCode::OK, transport::reply(&id, result))
        }
        Err(e) => {
            let status = if era == Era::Modern {
                transport::modern_status(e.code)
            } else {
                StatusCode::OK
            };
            (status, transport::error(&id, &e))
        }
    };
    let mut resp = transport::respond(status, &reply, sse);
    for (k, v) in headers_out.iter() {
        resp.headers_mut().insert(k.clone(), v.clone());
    }
    Ok(resp)
}

fn bad_version(v: &str) -> Response<Body> {
    transport::respond(
        StatusCode::BAD_REQUEST,
        &transport::error(&Value::Null, &transport::unsupported(v)),
        false,
    )
}

fn era_label(e: Era) -> &'static str {
    match e {
        Era::Handshake => "handshake",
        Era::Modern => "2026-07-28",
    }
}

/// A bounded label: known methods by name, anything else `other`.
fn method_label(m: &str) -> &'static str {
    const KNOWN: [&str; 12] = [
        "initialize",
        "ping",
        "server/discover",
        "tools/list",
        "tools/call",
        "tasks/get",
        "tasks/result",
        "tasks/cancel",
        "tasks/list",
        "subscriptions/listen",
        "prompts/list",
        "resources/list",
    ];
    KNOWN.iter().find(|k| **k == m).copied().unwrap_or("other")
}

fn capabilities(cx: &Cx) -> Value {
    let mut caps = json!({"tools": {"listChanged": true}});
    match cx.era {
        Era::Modern => {
            caps["extensions"] = json!({"io.modelcontextprotocol/tasks": {}});
        }
        Era::Handshake if cx.version == "2025-11-25" => {
            caps["tasks"] = json!({"requests": {"tools": {"call": {}}}, "cancel": {}});
        }
        Era::Handshake => {}
    }
    caps
}

const INSTRUCTIONS: &str =
    "These tools call real APIs through portcullis, which decides every call: \
allowed calls return the upstream's answer, denied calls return the reason, and calls that need an \
operator's approval wait for one (as a task, or through the portcullis.approval_status tool).";

async fn dispatch(cx: &Cx<'_>, method: &str, params: &Value) -> Result<Value, Rpc> {
    let app = cx.app;
    let snap = &cx.live.snap;
    match (cx.era, method) {
        (Era::Handshake, "initialize") => Ok(json!({
            "protocolVersion": cx.version,
            "capabilities": capabilities(cx),
            "serverInfo": transport::server_info(),
            "instructions": INSTRUCTIONS,
        })),
        (Era::Handshake, "ping") => Ok(json!({})),
        (Era::Modern, "server/discover") => {
            let versions: Vec<&str> = transport::HANDSHAKE_VERSIONS
                .iter()
                .chain(transport::MODERN_VERSIONS.iter())
                .copied()
                .collect();
            Ok(json!({
                "supportedVersions": versions,
                "capabilities": capabilities(cx),
                "instructions": INSTRUCTIONS,
                "cacheScope": "private",
                "ttlMs": 0,
            }))
        }
        (_, "tools/list") => {
            let switches = app.switches.current(&app.store).await?;
            let tasks = cx.era == Era::Modern || cx.version == "2025-11-25";
            let all = tools::listed(
                snap,
                &cx.who.agent,
                &cx.who.token.narrowing,
                &switches,
                tasks,
            );
            let cursor = params.get("cursor").and_then(Value::as_str);
            let (page, next) = tools::page(all, cursor).map_err(Rpc::invalid_params)?;
            let mut r = json!({"tools": page});
            if let Some(n) = next {
                r["nextCursor"] = n.into();
            }
            if cx.era == Era::Modern {
                r["ttlMs"] = 0.into();
                r["cacheScope"] = "private".into();
            }
            Ok(r)
        }
        (_, "tools/call") => tools_call(cx, params).await,
        (_, "tasks/get") if tasks_on(cx) => tasks::get(app, cx.who, params, cx.era).await,
        (Era::Handshake, "tasks/result") if tasks_on(cx) => {
            tasks::result(app, cx.who, params, request_wait(cx)).await
        }
        (_, "tasks/cancel") if tasks_on(cx) => tasks::cancel(app, cx.who, params, cx.era).await,
        (_, "subscriptions/listen") => Err(Rpc::invalid_params(
            "only toolsListChanged can be subscribed to here",
        )),
        _ => Err(Rpc::new(
            transport::METHOD_NOT_FOUND,
            format!("method `{method}` is not served"),
        )),
    }
}

fn tasks_on(cx: &Cx) -> bool {
    cx.era == Era::Modern || cx.version == "2025-11-25"
}

/// How long a call may wait inside one request (under the request deadline).
fn request_wait(cx: &Cx) -> std::time::Duration {
    cx.live
        .snap
        .limits
        .request_deadline
        .saturating_sub(std::time::Duration::from_secs(1))
}

async fn tools_call(cx: &Cx<'_>, params: &Value) -> Result<Value, Rpc> {
    let name = params
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| Rpc::invalid_params("`name` (a string) is required"))?;
    let none = serde_json::Map::new();
    let args = match params.get("arguments") {
        None | Some(Value::Null) => &none,
        Some(Value::Object(o)) => o,
        Some(_) => return Err(Rpc::invalid_params("`arguments` must be an object")),
    };
    if name == tools::APPROVAL_STATUS {
        return tasks::approval_status(cx.app, cx.who, args, &cx.id, request_wait(cx)).await;
    }
    let snap = &cx.live.snap;
    let cat = tools::catalogue(snap);
    let tool = cat
        .get(name)
        .ok_or_else(|| Rpc::invalid_params(format!("unknown tool `{name}`")))?;
    let meta = params.get("_meta");
    let idem = meta
        .and_then(|m| {
            m.get("idempotencyKey")
                .or_else(|| m.get("portcullis/idempotencyKey"))
        })
        .and_then(Value::as_str);
    // The agent's reason for the operator (`Portcullis-Rationale` over HTTP).
    let rationale = meta
        .and_then(|m| m.get("rationale").or_else(|| m.get("portcullis/rationale")))
        .and_then(Value::as_str);
    // Tasks: the client declared the extension (2026-07-28) or asked for one (2025-11-25).
    let task = match cx.era {
        Era::Modern => cx.tasks_ext,
        Era::Handshake => cx.version == "2025-11-25" && params.get("task").is_some(),
    };
    let (outcome, request_id) = call::run(
        cx.app,
        cx.conn,
        cx.headers,
        tool,
        args,
        call::Meta {
            idempotency_key: idem,
            rationale,
        },
        &cx.id,
        snap.limits.max_result_bytes,
    )
    .await?;
    let mut result = match outcome {
        call::Outcome::Upstream {
            status,
            body,
            truncated,
            ..
        } => call::upstream_result(status, &body, truncated, tool.output_schema.is_some()),
        call::Outcome::Refused { status, body } => call::refused_result(status, &body),
        call::Outcome::Parked(p) => {
            let id = p.get("approval_id").and_then(Value::as_str).unwrap_or("");
            if task {
                let a = crate::internal::own(cx.app, cx.who, id).await?;
                tasks::created(&a, cx.era)
            } else {
                tasks::parked_result(&p)
            }
        }
    };
    // The proxy's request id: the audit record of this call carries it.
    if let (Some(rid), Some(o)) = (request_id, result.as_object_mut()) {
        let meta = o.entry("_meta").or_insert_with(|| json!({}));
        if let Some(m) = meta.as_object_mut() {
            m.insert("portcullis/request_id".into(), rid.into());
        }
    }
    Ok(result)
}
