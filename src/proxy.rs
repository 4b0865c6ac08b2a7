//! The agent-facing request path: canon → classify → (identify, decide) → forward.
//! Every refusal is built by `Error::to_response`; nothing refused is forwarded.

use crate::app::App;
use crate::body::{self, Body, Capped};
use crate::canon::{self, Canonical};
use crate::classify::{Tool, Unclassified};
use crate::config::Snapshot;
use crate::error::{Denial, Error};
use crate::internal;
use crate::policy::{decide, Decision, Input};
use crate::upstream::{self, Origin};
use http::{header, HeaderValue, Request, Response};
use hyper::body::Incoming;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use tracing::{info, warn};

/// Per-connection facts the request path needs.
#[derive(Clone, Copy)]
pub struct Conn {
    pub peer: SocketAddr,
    pub https: bool,
}

pub fn new_request_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Entry point for one agent request; always answers.
pub async fn handle(app: Arc<App>, conn: Conn, req: Request<Incoming>) -> Response<Body> {
    let request_id = new_request_id();
    let deadline = app.live.load().snap.limits.request_deadline;
    let started = std::time::Instant::now();
    let method = req.method().clone();
    let result =
        match tokio::time::timeout(deadline, route_request(&app, conn, &request_id, req)).await {
            Ok(r) => r,
            Err(_) => Err(Error::Deadline(deadline)),
        };
    let mut resp = match result {
        Ok(r) => r,
        Err(e) => {
            if e.status().is_server_error() {
                warn!(request_id = %request_id, method = %method, status = e.status().as_u16(), reason = e.reason(), error = %e, "request failed");
            } else {
                info!(request_id = %request_id, method = %method, status = e.status().as_u16(), reason = e.reason(), "request refused");
            }
            e.to_response(&request_id)
        }
    };
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    tracing::debug!(request_id = %request_id, status = resp.status().as_u16(), duration_us = started.elapsed().as_micros() as u64, "request done");
    resp
}

fn deny(snap: &Snapshot, reason: &'static str, detail: String, tool: Option<&Tool>) -> Error {
    Error::Denied(Box::new(Denial {
        reason,
        detail,
        tool: tool.map(|t| t.name.clone()),
        risk: tool.map(|t| t.risk),
        policy_version: snap.policy_version.clone(),
    }))
}

async fn route_request(
    app: &App,
    conn: Conn,
    request_id: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>, Error> {
    let live = app.live.load_full();
    let snap = &live.snap;
    let c: Canonical = canon::canonicalize(req.method(), req.uri(), req.version(), req.headers())?;
    let pepper = snap.store.pepper.as_deref();
    let who = app
        .creds
        .authenticate(&app.store, pepper, &snap.agents, req.headers())
        .await?;
    if canon_is_internal(&c.path) {
        return internal::handle(app, &live, &who, &c).await;
    }
    let tool = match snap.classifier.classify(c.method, &c.path) {
        Ok(t) => t,
        Err(Unclassified::NoRoute) => {
            return Err(deny(
                snap,
                "no_route",
                format!("no route serves `{}`", c.path),
                None,
            ))
        }
        Err(Unclassified::UnknownPath(r)) => {
            return Err(deny(
                snap,
                "unknown_path",
                format!(
                    "`{}` is not a known path of route `{}`",
                    c.path, snap.routes[r].prefix
                ),
                None,
            ))
        }
    };
    let route = &snap.routes[tool.route];
    if c.encoded_slash && !route.allow_encoded_slash {
        return Err(Error::BadRequest {
            reason: "encoded_slash",
            detail: "an encoded `/` is not accepted on this route".into(),
        });
    }
    let switches = app.switches.current(&app.store).await?;
    let decision = decide(&Input {
        agent: &who.agent,
        narrowing: &who.token.narrowing,
        tool: &tool,
        path: &c.path,
        switches: &switches,
        approved: false,
    });
    info!(request_id, agent.id = %who.agent.id, tool.name = %tool.name, risk = %tool.risk, decision = decision.label(), reason = decision.reason(), "decided");
    match decision {
        Decision::Deny { reason, detail } => return Err(deny(snap, reason, detail, Some(&tool))),
        Decision::Park => {
            return Err(Error::NotImplemented(format!(
                "`{}` needs an operator's approval; parking is not available in this build",
                tool.name
            )))
        }
        Decision::Allow { .. } => {}
    }
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
    if let Some(max) = who.token.record.max_calls {
        if !app.store.spend_call(&who.token.record.id, max).await? {
            return Err(Error::TooMany {
                reason: "token_budget",
                detail: format!("this credential's {max} calls are spent"),
                retry_after: 3600,
            });
        }
    }
    let limit = snap.limits.max_body_bytes;
    if content_length(req.headers()).is_some_and(|n| n > limit) {
        return Err(Error::BodyTooLarge { limit });
    }
    let up = &snap.upstreams[route.upstream];
    let (_client_ip, forwarded_for) = client_origin(snap, conn.peer.ip(), req.headers());
    let origin = Origin {
        forwarded_for: &forwarded_for,
        https: conn.https,
        tenant: who.agent.tenant.as_deref(),
        request_id,
    };
    let (parts, incoming) = req.into_parts();
    let mut out = Request::new(upstream::boxed(Capped::new(incoming, limit)));
    *out.method_mut() = c.method.to_http();
    *out.uri_mut() = upstream::upstream_uri(up, route, &c)?;
    *out.headers_mut() = upstream::outbound_headers(&parts.headers, up, &origin);
    let resp = upstream::send(&live.clients[route.upstream], up, out).await?;
    let mut resp = upstream::inbound_response(resp);
    resp.headers_mut()
        .insert("portcullis-decision", HeaderValue::from_static("allow"));
    Ok(resp)
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
        return (peer, peer.to_string());
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
    xff.push_str(&peer.to_string());
    (client, xff)
}

/// A small helper for internal JSON answers on the agent port.
pub fn json(status: http::StatusCode, v: serde_json::Value) -> Response<Body> {
    let mut r = body::json_response(status, &v);
    r.headers_mut()
        .insert("portcullis-decision", HeaderValue::from_static("allow"));
    r
}
