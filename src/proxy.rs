//! The agent-facing request path: canon → classify → (identify, decide) → forward.
//! Every refusal is built by `Error::to_response`; nothing refused is forwarded.

use crate::app::App;
use crate::approval;
use crate::audit::{redact_query, Audit, Record};
use crate::body::{self, Body, BoxError, Capped};
use crate::canon::{self, Canonical};
use crate::config::Snapshot;
use crate::error::Error;
use crate::internal;
use crate::override_scan;
use crate::policy::Decision;
use crate::signals;
use crate::upstream::{self, Origin};
use bytes::Bytes;
use http::{header, HeaderValue, Request, Response};
use http_body::Body as _;
use hyper::body::Incoming;
use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use tracing::{info, warn};

/// The header every answer on the agent port carries: allow, deny or park.
pub const DECISION: http::HeaderName = http::HeaderName::from_static("portcullis-decision");

/// Per-connection facts the request path needs.
#[derive(Clone, Copy)]
pub struct Conn {
    pub peer: SocketAddr,
    pub https: bool,
}

pub fn new_request_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// What the request path learned, for the one audit record written on every exit.
#[derive(Default)]
pub struct Trace {
    pub agent: Option<String>,
    pub credential: Option<String>,
    pub tenant: Option<String>,
    pub method: Option<&'static str>,
    pub path: Option<String>,
    pub tool: Option<Arc<str>>,
    /// The tool's metrics label (bounded; see `metrics::tool_label`).
    pub tool_label: Option<Arc<str>>,
    pub risk: Option<crate::classify::Risk>,
    /// The condition that decided the request, when one did.
    pub condition: Option<Arc<str>>,
    /// The policy in force when the request was decided.
    pub policy_version: Option<Arc<str>>,
    pub remote_addr: Option<IpAddr>,
    pub upstream_started: Option<std::time::Instant>,
    /// The path already wrote this request's audit record (parking does, durably).
    pub recorded: bool,
    pub started: Option<std::time::Instant>,
}

/// How a request reached the gate: over plain HTTP, or built by an MCP `tools/call`
/// (which names the tool the built request must classify as, and its JSON-RPC id).
#[derive(Debug, Clone, Default)]
pub enum Via {
    #[default]
    Http,
    Mcp {
        jsonrpc_id: String,
        tool: Arc<str>,
    },
}

impl Via {
    /// The `via` label of metrics and audit records.
    pub fn label(&self) -> &'static str {
        match self {
            Via::Http => "http",
            Via::Mcp { .. } => "mcp",
        }
    }
}

/// Entry point for one agent request; always answers, and always records.
pub async fn handle(app: Arc<App>, conn: Conn, req: Request<Incoming>) -> Response<Body> {
    serve(app, conn, req, Via::Http).await
}

/// The request path for a request from any source (an HTTP request as it arrived, or
/// one an MCP `tools/call` built): the same canon → classify → decide → forward | deny
/// | park, the same audit record and metrics, labelled with `via`.
pub async fn serve<B>(app: Arc<App>, conn: Conn, req: Request<B>, via: Via) -> Response<Body>
where
    B: http_body::Body<Data = Bytes> + Send + Sync + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let request_id = new_request_id();
    let started = std::time::Instant::now();
    // A refcount bump; the target is only spelled out for requests refused before
    // canonicalisation.
    let raw_uri = req.uri().clone();
    let raw_method = req.method().clone();
    let mut trace = Trace {
        remote_addr: Some(conn.peer.ip()),
        started: Some(started),
        ..Default::default()
    };
    let deadline = app.live.load().snap.limits.request_deadline;
    let result = match tokio::time::timeout(
        deadline,
        route_request(&app, conn, &request_id, req, &via, &mut trace),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => Err(Error::Deadline(deadline)),
    };
    let snap_guard = app.live.load();
    let snap = &snap_guard.snap;
    let mut rec = Record {
        event: "request",
        request_id: Some(request_id.clone()),
        agent: trace.agent.clone(),
        credential: trace.credential.clone(),
        tenant: trace.tenant.clone(),
        remote_addr: trace.remote_addr.map(ip_text),
        method: Some(
            trace
                .method
                .map(Cow::Borrowed)
                .unwrap_or_else(|| Cow::Owned(raw_method.as_str().chars().take(32).collect())),
        ),
        path: Some(match trace.path.as_deref() {
            Some(p) => redact_query(p, &snap.audit.redact_query),
            None => redact_query(
                raw_uri.path_and_query().map_or("", |p| p.as_str()),
                &snap.audit.redact_query,
            ),
        }),
        via: matches!(via, Via::Mcp { .. }).then_some("mcp"),
        jsonrpc_id: match &via {
            Via::Mcp { jsonrpc_id, .. } => Some(jsonrpc_id.clone()),
            Via::Http => None,
        },
        tool: trace.tool.as_ref().map(|t| t.to_string()),
        risk: trace.risk.map(|r| Cow::Borrowed(r.as_str())),
        condition: trace.condition.as_ref().map(|c| c.to_string()),
        policy_version: Some(
            trace
                .policy_version
                .as_deref()
                .unwrap_or(&snap.policy_version)
                .to_string(),
        ),
        ..Default::default()
    };
    if let Some(p) = rec.path.as_mut() {
        if crate::audit::cap_path(p) {
            rec.truncated = Some(true);
        }
    }
    let risk_label = trace.risk.map_or("none", |r| r.as_str());
    let tool_label: Arc<str> = trace
        .tool_label
        .clone()
        .unwrap_or_else(|| Arc::from("none"));
    let mut resp = match result {
        Ok(resp) => {
            let status = resp.status().as_u16();
            rec.decision = Some(match resp.headers().get(&DECISION) {
                None => Cow::Borrowed("allow"),
                Some(v) if v == "allow" => Cow::Borrowed("allow"),
                Some(v) => Cow::Owned(v.to_str().unwrap_or("allow").to_string()),
            });
            rec.reason = Some(Cow::Borrowed("granted"));
            rec.status = Some(status);
            let now = std::time::Instant::now();
            if let Some(t0) = trace.upstream_started {
                rec.upstream_status = Some(status);
                let waited = now.saturating_duration_since(t0);
                crate::metrics::observe("portcullis_upstream_seconds", waited.as_secs_f64());
            }
            rec.duration_us = Some(now.saturating_duration_since(started).as_micros() as u64);
            crate::metrics::count_request("allow", risk_label, &tool_label, via.label());
            info!(request_id = %request_id, via = via.label(), agent.id = trace.agent.as_deref().unwrap_or(""), tool.name = %tool_label, risk = risk_label, decision = "allow", status, duration_us = rec.duration_us, "request");
            // Allowed work is group-committed after the upstream answered.
            if !trace.recorded && app.audit.record(rec).is_err() {
                warn!(request_id = %request_id, "audit record for a forwarded request could not be queued");
            }
            let outcome = signals::Outcome::Answered {
                upstream_status: trace.upstream_started.map(|_| status),
                tool: trace.tool.as_ref(),
                bytes: http_body::Body::size_hint(resp.body()).exact(),
            };
            let agent = trace.agent.as_deref();
            let crossed = signals::observed(
                &app,
                snap,
                agent,
                trace.credential.as_deref(),
                &request_id,
                outcome,
            );
            signals::settle(&app, crossed).await;
            signals::meter(&app, snap, agent, resp)
        }
        Err(e) => {
            rec.decision = Some(Cow::Borrowed(e.decision()));
            rec.reason = Some(Cow::Borrowed(e.reason()));
            rec.status = Some(e.status().as_u16());
            rec.duration_us = Some(started.elapsed().as_micros() as u64);
            if let Error::BadGateway { .. } | Error::GatewayTimeout { .. } = e {
                metrics::counter!("portcullis_upstream_errors_total", "kind" => e.reason())
                    .increment(1);
            }
            let unauthenticated = trace.agent.is_none();
            let crossed = signals::refusal(&e).and_then(|o| {
                signals::observed(
                    &app,
                    snap,
                    trace.agent.as_deref(),
                    trace.credential.as_deref(),
                    &request_id,
                    o,
                )
            });
            if unauthenticated {
                metrics::counter!("portcullis_unauthenticated_total", "reason" => e.reason())
                    .increment(1);
            } else {
                crate::metrics::count_request(e.decision(), risk_label, &tool_label, via.label());
            }
            let level_warn = e.status().is_server_error();
            if level_warn {
                warn!(request_id = %request_id, via = via.label(), agent.id = trace.agent.as_deref().unwrap_or(""), tool.name = %tool_label, risk = risk_label, decision = e.decision(), reason = e.reason(), status = e.status().as_u16(), error = %e, "request failed");
            } else {
                info!(request_id = %request_id, via = via.label(), agent.id = trace.agent.as_deref().unwrap_or(""), tool.name = %tool_label, risk = risk_label, decision = e.decision(), reason = e.reason(), status = e.status().as_u16(), "request refused");
            }
            let e = if unauthenticated {
                // Sampled at a bounded rate: nobody fills the disk without a credential.
                if app.unauth_sampler.check().is_ok() {
                    let _ = app.audit.record(rec);
                }
                e
            } else if matches!(
                e,
                Error::Unavailable {
                    reason: "audit_unavailable",
                    ..
                }
            ) {
                e
            } else if e.status().is_client_error() && !metered(&app, &trace, &request_id, snap) {
                // Over the agent's refusal rate: counted into the second's aggregate
                // record instead of one record each.
                Error::TooMany {
                    reason: "refusal_rate",
                    detail: format!(
                        "more than {} refused requests in one second",
                        snap.audit.max_refusals_per_second
                    ),
                    retry_after: 1,
                }
            } else {
                // Refusals are durable before the agent hears back.
                match app.audit.record_durable(rec).await {
                    Ok(()) => e,
                    Err(audit) => audit,
                }
            };
            // The brake is in force before this refusal is answered.
            signals::settle(&app, crossed).await;
            e.to_response(&request_id)
        }
    };
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert(upstream::X_REQUEST_ID, v);
    }
    resp
}

/// Counts a refusal of an authenticated agent; false when it is over the agent's
/// refusal rate and must not get a record of its own. Writes the aggregate of a
/// second this refusal closed.
fn metered(app: &App, trace: &Trace, request_id: &str, snap: &Snapshot) -> bool {
    let Some(agent) = trace.agent.as_deref() else {
        return true;
    };
    let (verdict, closed) = app.refusals.refuse(
        agent,
        trace.tenant.as_deref(),
        request_id,
        snap.audit.max_refusals_per_second,
    );
    if let Some(r) = closed {
        let _ = app.audit.record(r);
    }
    verdict == crate::refusals::Verdict::Record
}

async fn route_request<B>(
    app: &App,
    conn: Conn,
    request_id: &str,
    req: Request<B>,
    via: &Via,
    trace: &mut Trace,
) -> Result<Response<Body>, Error>
where
    B: http_body::Body<Data = Bytes> + Send + Sync + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let live = app.live.load_full();
    let snap = &live.snap;
    let gate_started = std::time::Instant::now();
    let pepper = snap.store.pepper.as_deref();
    let canon = canon::canonicalize(req.method(), req.uri(), req.version(), req.headers());
    let (client_ip, forwarded_for) = client_origin(snap, conn.peer.ip(), req.headers());
    trace.remote_addr = Some(client_ip);
    // Authentication first: a client without a valid credential hears 401 and nothing
    // about why its request would have been refused otherwise.
    let who = app
        .creds
        .authenticate(&app.store, pepper, &snap.agents, req.headers())
        .await?;
    trace.agent = Some(who.agent.id.clone());
    trace.credential = Some(who.token.record.id.clone());
    trace.tenant = who.agent.tenant.clone();
    trace.policy_version = Some(snap.policy_version.clone());
    let c: Canonical = match canon {
        Ok(c) => c,
        Err(e) => {
            // A malformed request still costs the agent its rate.
            rate_limit(&live, &who)?;
            return Err(e);
        }
    };
    trace.method = Some(c.method.as_str());
    trace.path = Some(c.path_and_query());
    // Checked on every request (a bad one is refused whatever the gate would say);
    // kept only when the request parks.
    let rationale = match crate::rationale::from_headers(req.headers()) {
        Ok(r) => r,
        Err(e) => {
            rate_limit(&live, &who)?;
            return Err(e);
        }
    };
    if canon_is_internal(&c.path) {
        if let Via::Mcp { tool, .. } = via {
            return Err(tool_mismatch(tool, None));
        }
        // Answered here, recorded after: with no room left in the audit queue the record
        // would be dropped, so the request is refused like any other.
        if !app.audit.has_room() {
            return Err(Audit::unavailable());
        }
        // Boxed, like the other rare branches below: their state would otherwise sit in
        // every request's future, and be copied with it.
        return Box::pin(internal::handle(app, &live, &who, &c)).await;
    }
    let body_on_bodiless = carries_body(&c, req.headers(), req.body());
    let switches = app.switches.current(&app.store).await?;
    // The one path from canonical request to decision (`explain` runs it too). Once
    // the request has a tool, it is traced and counted against the agent's rate —
    // refused or not.
    let tool = crate::pipeline::classify(snap, &c, body_on_bodiless, &mut |tool| {
        if let Some(tool) = tool {
            trace.tool = Some(tool.name.clone());
            trace.tool_label = Some(crate::metrics::tool_label(Some(tool)));
            trace.risk = Some(tool.risk);
        }
        // A request an MCP `tools/call` built must be the tool that was called: an
        // argument that moved it elsewhere (`/`, `..`) is refused, never forwarded.
        if let Via::Mcp { tool: called, .. } = via {
            if tool.is_none_or(|t| t.name != *called) {
                return Err(tool_mismatch(called, tool.map(|t| &*t.name)));
            }
        }
        rate_limit(&live, &who)
    });
    let tool = tool.inspect_err(|_| {
        crate::metrics::observe(
            "portcullis_gate_seconds",
            gate_started.elapsed().as_secs_f64(),
        );
    })?;
    // The gate's time: what it spent before a body a condition reads, plus what it spent
    // since that body arrived (one clock read when no body is read).
    let mut gate_clock = (std::time::Duration::ZERO, gate_started);
    // Only a request a condition on `request.body` can apply to is read before the gate.
    let (req, read) = match crate::conditions::eval::needs(&who.agent, &tool).filter(|n| n.body) {
        // A body that breaks off is one the condition cannot read: denied.
        Some(_) => {
            gate_clock.0 = gate_started.elapsed();
            let read = Box::pin(crate::conditions::body::read(snap, req)).await;
            gate_clock.1 = std::time::Instant::now();
            read.map_err(|e| match e {
                Error::BadRequest {
                    reason: "bad_body", ..
                } => crate::pipeline::denial(
                    snap,
                    "uninspectable_body",
                    "a condition reads the body, and it could not be read".into(),
                    Some(&tool),
                ),
                e => e,
            })?
        }
        None => (req.map(http_body_util::Either::Left), None),
    };
    let judged = crate::pipeline::decide_for(
        snap,
        &who.agent,
        &who.token.narrowing,
        &switches,
        &c,
        req.headers(),
        read.as_ref(),
        tool,
    );
    let gate = gate_clock.0 + gate_clock.1.elapsed();
    crate::metrics::observe("portcullis_gate_seconds", gate.as_secs_f64());
    match &judged {
        Ok(j) => {
            trace.tool = Some(j.tool.name.clone());
            trace.risk = Some(j.tool.risk);
            trace.condition = j.decision.condition().cloned();
        }
        Err(Error::Denied(d)) => {
            if d.tool.is_some() {
                trace.tool = d.tool.clone();
                trace.risk = d.risk;
            }
            trace.condition = d.condition.clone();
        }
        Err(_) => {}
    }
    let crate::pipeline::Judged { tool, decision, .. } = judged?;
    let route = &snap.routes[tool.route];
    // `validate: request`: the operation's schema, before anything is forwarded or parked.
    let req = if crate::openapi::validate::applies(&tool) {
        Box::pin(crate::openapi::validate::request(snap, &tool, &c, req)).await?
    } else {
        req.map(http_body_util::Either::Left)
    };
    spend_budget(app, &who).await?;
    if let Decision::Park { condition } = &decision {
        let (parts, body) = req.into_parts();
        trace.recorded = true;
        let r = Box::pin(approval::park(
            app,
            &live,
            &who,
            &c,
            &tool,
            &parts.headers,
            body,
            rationale,
            request_id,
            (
                trace.remote_addr,
                trace.started.unwrap_or_else(std::time::Instant::now),
            ),
            via,
            condition.as_deref(),
        ))
        .await;
        trace.recorded = r.is_ok();
        return r;
    }
    let limit = snap.limits.max_body_bytes;
    if content_length(req.headers()).is_some_and(|n| n > limit) {
        return Err(Error::BodyTooLarge { limit });
    }
    if !app.audit.ready() {
        return Err(Audit::unavailable());
    }
    let up = &snap.upstreams[route.upstream];
    let origin = Origin {
        forwarded_for: Some(&forwarded_for),
        host: forwarded_host(snap, route, Some(&c.host)),
        https: conn.https,
        tenant: who.agent.tenant.as_deref(),
        request_id,
    };
    let (parts, incoming) = req.into_parts();
    let capped = Capped::new(incoming, limit);
    let body = if capped.is_end_stream() {
        upstream::boxed(capped)
    } else {
        match override_scan::format_of(&parts.headers)? {
            Some(f) => upstream::boxed(override_scan::guard(capped, f).await?),
            None => upstream::boxed(capped),
        }
    };
    let mut out = Request::new(body);
    *out.method_mut() = c.method.to_http();
    *out.uri_mut() = upstream::upstream_uri(up, route, &c)?;
    *out.headers_mut() = upstream::outbound_headers(&parts.headers, up, &origin);
    if body_on_bodiless {
        upstream::mark_not_reused(out.headers_mut());
    }
    trace.upstream_started = Some(std::time::Instant::now());
    let resp = upstream::send(&live.clients[route.upstream], up, out).await?;
    let mut resp = upstream::inbound_response(resp, up);
    resp.headers_mut()
        .insert(DECISION, HeaderValue::from_static("allow"));
    Ok(resp)
}

/// An MCP-built request that did not classify as the tool that was called.
fn tool_mismatch(called: &str, got: Option<&str>) -> Error {
    Error::BadRequest {
        reason: "tool_mismatch",
        detail: match got {
            Some(g) => format!(
                "the arguments of `{called}` built a request for `{g}`; it was refused and not sent"
            ),
            None => format!(
                "the arguments of `{called}` built a request for no tool; it was refused and not sent"
            ),
        },
    }
}

/// The agent's per-replica token bucket (`rate_limit.per_minute`).
fn rate_limit(live: &crate::app::Live, who: &crate::identity::Identity) -> Result<(), Error> {
    if let Some(l) = live.limiters.get(&who.agent.id) {
        if let Err(not_until) = l.check() {
            let wait = not_until.wait_time_from(governor::clock::Clock::now(
                &governor::clock::DefaultClock::default(),
            ));
            return Err(Error::TooMany {
                reason: "rate_limited",
                detail: format!("agent `{}` is over its rate limit", who.agent.id),
                retry_after: wait.as_secs().max(1),
            });
        }
    }
    Ok(())
}

/// One call of the credential's `max_calls`, for a request that is forwarded or parked.
async fn spend_budget(app: &App, who: &crate::identity::Identity) -> Result<(), Error> {
    if let Some(max) = who.token.record.max_calls {
        if !app.store.spend_call(&who.token.record.id, max).await? {
            return Err(Error::TooMany {
                reason: "token_budget",
                detail: format!("this credential's {max} calls are spent"),
                retry_after: 3600,
            });
        }
    }
    Ok(())
}

/// A body on a method that takes none (GET, HEAD, OPTIONS, DELETE): a backend that
/// ignores it would read it as the next request on a pooled connection.
fn carries_body<B: http_body::Body>(c: &Canonical, h: &http::HeaderMap, body: &B) -> bool {
    crate::pipeline::bodiless(c.method)
        && (!http_body::Body::is_end_stream(body)
            || h.contains_key(header::TRANSFER_ENCODING)
            || content_length(h).is_some_and(|n| n > 0))
}

/// The X-Forwarded-Host to send: the route's `public_host`, else the listener's, else
/// the client's Host only when it is one of the configured `hosts:`; otherwise none
/// (an agent's arbitrary Host must not reach a backend that builds links or trusts it).
pub fn forwarded_host<'a>(
    snap: &'a Snapshot,
    route: &'a crate::config::Route,
    client_host: Option<&'a str>,
) -> Option<&'a str> {
    if let Some(h) = route.public_host.as_ref().or(snap.public_host.as_ref()) {
        return h.to_str().ok();
    }
    client_host.filter(|h| snap.hosts.iter().any(|k| host_matches(k, h)))
}

/// A `hosts:` entry matches a Host exactly, or, written without a port, on any port.
fn host_matches(entry: &str, host: &str) -> bool {
    if entry.eq_ignore_ascii_case(host) {
        return true;
    }
    match host.rsplit_once(':') {
        Some((name, port))
            if !entry.contains(':')
                && !name.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit()) =>
        {
            name.eq_ignore_ascii_case(entry)
        }
        _ => false,
    }
}

fn canon_is_internal(path: &str) -> bool {
    path == "/_portcullis" || path.starts_with("/_portcullis/")
}

fn content_length(h: &http::HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// The client address and the X-Forwarded-For to send. A client's X-Forwarded-For is
/// believed only from a trusted proxy: then the client is the right-most untrusted hop
/// and the chain is kept with the peer appended; otherwise it is the peer alone.
pub fn client_origin(snap: &Snapshot, peer: IpAddr, h: &http::HeaderMap) -> (IpAddr, String) {
    let trusted = |ip: &IpAddr| snap.trusted_proxies.iter().any(|n| n.contains(ip));
    if snap.trusted_proxies.is_empty() || !trusted(&peer) {
        return (peer, ip_text(peer));
    }
    let chain: Vec<&str> = h
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let mut client = peer;
    for hop in chain.iter().rev() {
        match hop.parse::<IpAddr>() {
            Ok(ip) if trusted(&ip) => client = ip,
            Ok(ip) => {
                client = ip;
                break;
            }
            Err(_) => break,
        }
    }
    let mut xff = chain.join(", ");
    if !xff.is_empty() {
        xff.push_str(", ");
    }
    xff.push_str(&ip_text(peer));
    (client, xff)
}

/// An address as text, as `Display` writes it; IPv4 without the formatting machinery
/// (twice per request: the X-Forwarded-For and the audit record's `remote_addr`).
pub fn ip_text(ip: IpAddr) -> String {
    let IpAddr::V4(v4) = ip else {
        return ip.to_string();
    };
    let mut s = String::with_capacity(15);
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            s.push('.');
        }
        if octet >= 100 {
            s.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            s.push(char::from(b'0' + octet / 10 % 10));
        }
        s.push(char::from(b'0' + octet % 10));
    }
    s
}

/// A small helper for internal JSON answers on the agent port.
pub fn json(status: http::StatusCode, v: serde_json::Value) -> Response<Body> {
    let mut r = body::json_response(status, &v);
    r.headers_mut()
        .insert(DECISION, HeaderValue::from_static("allow"));
    r
}

#[cfg(test)]
mod tests {
    use super::ip_text;
    use std::net::IpAddr;

    #[test]
    fn ip_text_writes_what_display_writes() {
        let octets = [0u8, 1, 9, 10, 42, 99, 100, 101, 110, 199, 200, 255];
        for a in octets {
            for b in octets {
                let ip = IpAddr::from([a, b, 255 - a, 7]);
                assert_eq!(ip_text(ip), ip.to_string());
            }
        }
        for v6 in ["::1", "2001:db8::8a2e:370:7334", "::ffff:10.0.0.1"] {
            let ip: IpAddr = v6.parse().unwrap();
            assert_eq!(ip_text(ip), ip.to_string());
        }
    }
}
