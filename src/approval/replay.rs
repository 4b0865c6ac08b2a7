//! Replay of an approved request, at most once: only the compare-and-set
//! `approved → executing` may send; the gate is re-run (as approved) before anything
//! is sent; an outcome that cannot be established becomes `unknown`, never a retry.

use super::{audit, load, request_sha256, transition, Lease, Loaded, State, StoredResult};
use crate::app::App;
use crate::canon::{Canonical, Method};
use crate::conditions::{body::Read, context::Facts};
use crate::error::Error;
use crate::policy::{decide, Decision, Input};
use crate::store::now_ms;
use crate::upstream::{self, Origin};
use base64::Engine;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request};
use http_body_util::BodyExt;
use std::sync::Arc;
use tracing::{info, warn};

/// How long a replay's lease holds without renewal, by the store's clock
/// (`timers.replay_lease`); the owner renews it every third of that.
fn snap_lease_ms(app: &App) -> u64 {
    app.live.load().snap.timers.replay_lease.as_millis() as u64
}

/// Replays approval `id` if it is `approved` and this node wins the lease.
pub async fn replay(app: Arc<App>, id: String) {
    if let Err(e) = run(&app, &id).await {
        warn!(approval_id = %id, error = %e, "replay stopped");
    }
}

async fn fail(app: &App, l: &Loaded, reason: &str, detail: String) -> Result<(), Error> {
    let mut n = l.a.clone();
    n.state = State::Failed;
    n.reason = Some(reason.to_string());
    n.detail = Some(detail.clone());
    n.lease = None;
    if let Some(l2) = transition(app, l, n, None).await? {
        info!(approval_id = %l.a.id, reason, detail = %detail, "replay failed; nothing was sent");
        audit(app, &l2.a, "replay_failed", None, Some(&detail)).await;
    }
    Ok(())
}

async fn run(app: &App, id: &str) -> Result<(), Error> {
    let Some(l) = load(app, id).await? else {
        return Ok(());
    };
    let Some(l) = acquire(app, l).await? else {
        return Ok(());
    };
    match prepare(app, &l).await {
        Ok(Some(ready)) => send(app, &l, ready).await,
        Ok(None) => Ok(()),
        // Nothing was sent: the request failed, it did not become `unknown`.
        Err(e) => fail(app, &l, "failed_before_send", e.to_string()).await,
    }
}

/// `approved → executing` with this node's lease; `None` if another node won it.
async fn acquire(app: &App, l: Loaded) -> Result<Option<Loaded>, Error> {
    if l.a.state != State::Approved {
        return Ok(None);
    }
    let live = app.live.load_full();
    let snap = &live.snap;
    let mut ex = l.a.clone();
    ex.state = State::Executing;
    ex.lease = Some(Lease {
        node: snap.node.clone(),
        boot: app.boot_id.clone(),
        until_ms: app.store.clock_ms().await? + snap_lease_ms(app),
    });
    transition(app, &l, ex, None).await
}

/// The request to send, built under the policy in force.
struct Ready {
    live: Arc<crate::app::Live>,
    route: usize,
    req: Request<crate::body::Body>,
}

/// Everything before the send: integrity, the credential, the gate re-run (as approved),
/// the audit sink. A refusal fails the approval (`Ok(None)`); nothing is sent before
/// this returns `Ready`.
async fn prepare(app: &App, l: &Loaded) -> Result<Option<Ready>, Error> {
    let a = &l.a;
    let id = a.id.as_str();
    let live = app.live.load_full();
    let snap = &live.snap;
    let refuse = |reason: &'static str, detail: String| async move {
        fail(app, l, reason, detail).await.map(|_| None)
    };

    // Integrity: the body and everything hashed are what the operator saw.
    let Some(body) = app.store.get_approval_body(id).await? else {
        return refuse("integrity", "the parked body is missing".into()).await;
    };
    if request_sha256(
        &a.method,
        &a.path,
        &a.headers,
        &body,
        a.upstream_uri.as_deref(),
    ) != a.request_sha256
    {
        return refuse(
            "integrity",
            "the parked request no longer matches its request_sha256".into(),
        )
        .await;
    }
    // The credential and the agent behind it must still stand.
    let token = app.store.get_token(&a.credential).await?;
    let detail = match &token {
        None => Some("the credential no longer exists"),
        Some(t) if t.revoked => Some("the credential was revoked"),
        Some(t) if now_ms() >= t.expires_at_ms => Some("the credential expired"),
        _ => None,
    };
    if let Some(d) = detail {
        return refuse("policy_changed", d.into()).await;
    }
    let token = token.expect("checked above");
    let Some(agent) = snap.agents.get(&a.agent).cloned() else {
        return refuse(
            "policy_changed",
            format!("agent `{}` is no longer configured", a.agent),
        )
        .await;
    };
    // Re-classify under the policy in force now: same tool, upstream and tenant.
    let method = Method::parse(&a.method).ok_or_else(|| Error::Internal("stored method".into()))?;
    let (path, query) = match a.path.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (a.path.clone(), None),
    };
    let mut tool = match snap.classifier.classify(method, &path) {
        Ok(t) => t,
        Err(_) => return refuse("policy_changed", "the path is no longer routed".into()).await,
    };
    let route = &snap.routes[tool.route];
    let up = &snap.upstreams[route.upstream];
    let c = Canonical {
        method,
        path,
        query,
        host: up.authority.to_string(),
        encoded_slash: false,
    };
    let mut kept = HeaderMap::new();
    for (k, v) in &a.headers {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            kept.append(k, v);
        }
    }
    // The conditions run again, over the parked bytes, under the policy in force.
    let read = if body.is_empty() {
        Read::Empty
    } else {
        Read::Bytes {
            bytes: Bytes::from(body.clone()),
            json: crate::override_scan::format_of(&kept).ok().flatten()
                == Some(crate::override_scan::Format::Json),
        }
    };
    let facts = Facts {
        c: &c,
        headers: &kept,
        upstream: up,
        body: Some(&read),
    };
    let evaluated = match crate::conditions::eval::evaluate(&agent, &mut tool, &facts) {
        Ok(e) => e,
        Err(crate::conditions::eval::Uninspectable(d)) => {
            return refuse("policy_changed", format!("uninspectable_body: {d}")).await
        }
    };
    if *tool.name != *a.tool || up.name != a.upstream || agent.tenant != a.tenant {
        return refuse(
            "policy_changed",
            "a reload changed the tool, upstream or tenant of this request".into(),
        )
        .await;
    }
    let switches = app.switches.current(&app.store).await?;
    let narrowing = crate::identity::narrowing_of(&token);
    let d = decide(&Input {
        agent: &agent,
        narrowing: &narrowing,
        tool: &tool,
        path: &c.path,
        switches: &switches,
        approved: true,
        evaluated: &evaluated,
    });
    if let Decision::Deny { reason, detail, .. } = d {
        return refuse("policy_changed", format!("{reason}: {detail}")).await;
    }
    if !matches!(d, Decision::Allow { .. }) {
        return refuse(
            "policy_changed",
            "the gate no longer allows this request as approved".into(),
        )
        .await;
    }
    if !app.audit.ready() {
        return refuse(
            "audit_unavailable",
            "the audit trail cannot be written".into(),
        )
        .await;
    }

    let mut headers = upstream::outbound_headers(
        &kept,
        up,
        &Origin {
            forwarded_for: None,
            host: crate::proxy::forwarded_host(snap, route, None),
            https: false,
            tenant: agent.tenant.as_deref(),
            request_id: &a.request_id,
        },
    );
    if !headers.contains_key("idempotency-key") {
        if let Ok(v) = HeaderValue::from_str(&a.id) {
            headers.insert("idempotency-key", v);
        }
    }
    if !body.is_empty() && crate::pipeline::bodiless(method) {
        upstream::mark_not_reused(&mut headers);
    }
    let mut req = Request::new(upstream::boxed(http_body_util::Full::new(Bytes::from(
        body,
    ))));
    *req.method_mut() = method.to_http();
    let uri = upstream::upstream_uri(up, route, &c)?;
    if a.upstream_uri.as_deref().is_some_and(|u| uri != u) {
        return refuse(
            "policy_changed",
            format!(
                "a reload moved this request from `{}` to `{uri}`",
                a.upstream_uri.as_deref().unwrap_or_default()
            ),
        )
        .await;
    }
    *req.uri_mut() = uri;
    *req.headers_mut() = headers;
    Ok(Some(Ready {
        live: live.clone(),
        route: tool.route,
        req,
    }))
}

/// Sends once and records the outcome.
async fn send(app: &App, l: &Loaded, ready: Ready) -> Result<(), Error> {
    let Ready { live, route, req } = ready;
    let snap = &live.snap;
    let a = &l.a;
    let route = &snap.routes[route];
    let up = &snap.upstreams[route.upstream];
    info!(approval_id = %a.id, tool.name = %a.tool, "replaying approved request");
    let exchange = async {
        match upstream::send(&live.clients[route.upstream], up, req).await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let (parts, body) = upstream::inbound_response(resp, up).into_parts();
                let limit = snap.limits.max_result_bytes as usize;
                let collected =
                    tokio::time::timeout(snap.limits.request_deadline, read_capped(body, limit))
                        .await;
                match collected {
                    Ok(Ok((bytes, truncated))) => Ok((status, parts.headers, bytes, truncated)),
                    _ => Err((
                        "unknown",
                        format!("the upstream answered {status} but its body could not be read"),
                    )),
                }
            }
            Err(Error::BadGateway {
                connect: true,
                detail,
                ..
            }) => Err((
                "failed",
                format!("upstream unreachable, nothing sent: {detail}"),
            )),
            Err(e) => Err((
                "unknown",
                format!("{e}; the upstream may or may not have acted"),
            )),
        }
    };
    // The lease is renewed while the upstream works, so a live owner's replay is never
    // declared `unknown`, and a dead owner's is within one lease on any replica.
    let mut current = Loaded {
        a: l.a.clone(),
        raw: l.raw.clone(),
    };
    let mut lost = false;
    let mut renew = tokio::time::interval(std::time::Duration::from_millis(
        (snap_lease_ms(app) / 3).max(1),
    ));
    renew.tick().await;
    let mut exchange = std::pin::pin!(exchange);
    let outcome = loop {
        tokio::select! {
            o = &mut exchange => break o,
            _ = renew.tick(), if !lost => {
                let mut r = current.a.clone();
                if let Some(lease) = r.lease.as_mut() {
                    lease.until_ms = app.store.clock_ms().await.unwrap_or_else(|_| now_ms()) + snap_lease_ms(app);
                }
                match transition(app, &current, r, None).await {
                    Ok(Some(next)) => current = next,
                    Ok(None) => {
                        lost = true;
                        warn!(approval_id = %a.id, "this node lost the replay's lease while the upstream was working");
                    }
                    Err(e) => warn!(approval_id = %a.id, error = %e, "lease renewal failed; retrying"),
                }
            }
        }
    };
    let l = &current;
    let mut n = l.a.clone();
    n.lease = None;
    let result = match outcome {
        Ok((status, headers, bytes, truncated)) => {
            n.state = State::Executed;
            n.upstream_status = Some(status);
            let r = StoredResult {
                status,
                headers: headers
                    .iter()
                    .filter_map(|(k, v)| {
                        Some((k.as_str().to_string(), v.to_str().ok()?.to_string()))
                    })
                    .collect(),
                body: base64::engine::general_purpose::STANDARD.encode(&bytes),
                truncated,
            };
            Some(serde_json::to_vec(&r).map_err(|e| Error::Internal(e.to_string()))?)
        }
        Err((state, detail)) => {
            n.state = if state == "failed" {
                State::Failed
            } else {
                State::Unknown
            };
            n.reason = Some(if state == "failed" {
                "upstream_unreachable".into()
            } else {
                "outcome_unknown".into()
            });
            n.detail = Some(detail);
            None
        }
    };
    let attempted = n.clone();
    match transition(app, l, n, result.as_deref()).await? {
        Some(l2) => {
            let event = match l2.a.state {
                State::Executed => "replay_executed",
                State::Failed => "replay_failed",
                _ => "replay_unknown",
            };
            audit(app, &l2.a, event, None, l2.a.detail.as_deref()).await;
        }
        None => {
            warn!(approval_id = %a.id, "the replay's result could not be stored (the lease was taken over); the outcome stays unknown");
            // What the upstream answered still goes on the trail.
            audit(
                app,
                &attempted,
                "replay_result_after_lease",
                None,
                Some("the upstream answered after this node lost the lease; the approval's state was not changed"),
            )
            .await;
        }
    }
    Ok(())
}

async fn read_capped(mut body: crate::body::Body, limit: usize) -> Result<(Vec<u8>, bool), Error> {
    let mut out = Vec::new();
    let mut truncated = false;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Error::Internal(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            let room = limit.saturating_sub(out.len());
            if data.len() > room {
                out.extend_from_slice(&data[..room]);
                truncated = true;
            } else {
                out.extend_from_slice(&data);
            }
        }
    }
    Ok((out, truncated))
}

/// The stored upstream response, decoded.
pub struct Decoded {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub truncated: bool,
}

pub fn decode_result(raw: &[u8]) -> Option<Decoded> {
    let r: StoredResult = serde_json::from_slice(raw).ok()?;
    let body = base64::engine::general_purpose::STANDARD
        .decode(r.body)
        .ok()?;
    Some(Decoded {
        status: r.status,
        headers: r.headers,
        body,
        truncated: r.truncated,
    })
}
