//! Request-then-approve: parking, operator decisions, and the state machine
//! `parking → pending → approved → executing → executed | failed | unknown` (plus
//! `denied`, `expired`). Every transition is a compare-and-set in the store, so any
//! number of replicas produce at most one upstream call per approval.
//!
//! A park is stored as `parking` and becomes `pending` (decidable) only once its park
//! record is durable in the audit trail; a `parking` record whose node stopped or gave
//! up is moved to `failed` (`unaudited`) by the sweeper, so nothing unaudited can ever
//! be approved or executed.

pub mod context;
pub mod controls;
pub mod diff;
pub mod encoding;
pub mod inflight;
pub mod preview;
mod replay;
mod sweep;
mod views;

pub use replay::{decode_result, replay, Decoded};
pub use sweep::{recover_own_leases, run_sweeper};
pub use views::{agent_view, approvals_needed, operator_view, summary_view, votes_line};

use crate::app::{App, Live};
use crate::audit::Record;
use crate::canon::Canonical;
use crate::classify::{Risk, Tool};
use crate::error::Error;
use crate::identity::Identity;
use crate::store::{now_ms, Cas, TimeIndex};
use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::future::Future;
use std::sync::Arc;
use tracing::{info, warn};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Stored, its park record not yet confirmed durable: not decidable.
    Parking,
    Pending,
    Approved,
    Executing,
    Executed,
    Failed,
    Denied,
    Expired,
    Unknown,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Parking => "parking",
            State::Pending => "pending",
            State::Approved => "approved",
            State::Executing => "executing",
            State::Executed => "executed",
            State::Failed => "failed",
            State::Denied => "denied",
            State::Expired => "expired",
            State::Unknown => "unknown",
        }
    }
    pub fn parse(s: &str) -> Option<State> {
        [
            State::Parking,
            State::Pending,
            State::Approved,
            State::Executing,
            State::Executed,
            State::Failed,
            State::Denied,
            State::Expired,
            State::Unknown,
        ]
        .into_iter()
        .find(|x| x.as_str() == s)
    }
    /// Decided for good: eligible for retention.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            State::Executed | State::Failed | State::Denied | State::Expired
        )
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Vote {
    pub operator: String,
    pub comment: Option<String>,
    pub at_ms: u64,
}

/// Who holds an `executing` record, until when. `boot` tells a restarted node's own
/// leftovers from another live process's work.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Lease {
    pub node: String,
    pub boot: String,
    pub until_ms: u64,
}

/// A parked request. Never holds a credential: headers are kept after hygiene, without
/// `Authorization`, `Cookie` or the upstream's injected header.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Approval {
    pub id: String,
    pub state: State,
    pub request_id: String,
    pub agent: String,
    pub credential: String,
    pub tenant: Option<String>,
    pub tool: String,
    pub risk: Risk,
    pub method: String,
    /// Canonical path + query, exactly as it will be sent.
    pub path: String,
    pub upstream: String,
    /// The URI the replay will send to (scheme, authority, base path, path, query),
    /// fixed at park time and covered by `request_sha256`: a reload that moves the
    /// upstream fails the replay instead of sending the approved request elsewhere.
    /// Absent in records parked before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_uri: Option<String>,
    pub headers: Vec<(String, String)>,
    pub body_len: u64,
    pub body_sha256: String,
    pub request_sha256: String,
    pub policy_version: String,
    pub created_at_ms: u64,
    pub expires_at_ms: u64,
    pub updated_at_ms: u64,
    pub required_approvals: u8,
    pub approvals: Vec<Vote>,
    pub decided_by: Option<String>,
    pub reason: Option<String>,
    pub detail: Option<String>,
    pub lease: Option<Lease>,
    pub upstream_status: Option<u16>,
    /// The agent's `Portcullis-Rationale`, as checked at park time; never changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rationale: Option<String>,
    /// `preview: current`: the resource as read at park time; never changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview: Option<preview::Preview>,
    /// The condition that parked it or set its risk (`request.body.amount > 100`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
}

/// The upstream's response as it was, kept for the agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredResult {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// base64
    pub body: String,
    pub truncated: bool,
}

fn put_len(h: &mut Sha256, b: &[u8]) {
    h.update((b.len() as u64).to_be_bytes());
    h.update(b);
}

/// SHA-256 over the length-prefixed method, path + query, sorted kept headers and body.
pub fn request_sha256(
    method: &str,
    path: &str,
    headers: &[(String, String)],
    body: &[u8],
    upstream_uri: Option<&str>,
) -> String {
    let mut h = Sha256::new();
    put_len(&mut h, method.as_bytes());
    put_len(&mut h, path.as_bytes());
    let mut sorted: Vec<&(String, String)> = headers.iter().collect();
    sorted.sort();
    h.update((sorted.len() as u64).to_be_bytes());
    for (k, v) in sorted {
        put_len(&mut h, k.as_bytes());
        put_len(&mut h, v.as_bytes());
    }
    put_len(&mut h, body);
    if let Some(u) = upstream_uri {
        put_len(&mut h, u.as_bytes());
    }
    crate::digest::to_hex(&h.finalize())
}

fn encode(a: &Approval) -> Vec<u8> {
    serde_json::to_vec(a).expect("approvals serialise")
}

pub(crate) fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
        .to_string()
}

/// An approval as read, with the exact bytes the compare-and-set compares against.
pub struct Loaded {
    pub a: Approval,
    pub(crate) raw: Vec<u8>,
}

/// Reads a record; a pending one past its expiry is moved to `expired` on the way.
pub async fn load(app: &App, id: &str) -> Result<Option<Loaded>, Error> {
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
        return Ok(None);
    }
    let Some(raw) = app.store.get_approval(id).await? else {
        return Ok(None);
    };
    let a: Approval =
        serde_json::from_slice(&raw).map_err(|e| Error::Internal(format!("approval {id}: {e}")))?;
    let l = Loaded { a, raw };
    if l.a.state == State::Pending && now_ms() >= l.a.expires_at_ms {
        let mut n = l.a.clone();
        n.state = State::Expired;
        n.reason = Some("expired".into());
        if let Some(l2) = transition(app, &l, n, None).await? {
            audit(app, &l2.a, "approval_expired", None, None).await;
            return Ok(Some(l2));
        }
        return Box::pin(load(app, id)).await;
    }
    Ok(Some(l))
}

/// Compare-and-set from `from` to `to`; `None` if someone else changed it first.
pub async fn transition(
    app: &App,
    from: &Loaded,
    mut to: Approval,
    result: Option<&[u8]>,
) -> Result<Option<Loaded>, Error> {
    to.updated_at_ms = now_ms();
    let raw = encode(&to);
    let ok = app
        .store
        .cas_approval(Cas {
            id: &to.id,
            agent: &to.agent,
            old: &from.raw,
            new: &raw,
            old_state: from.a.state.as_str(),
            new_state: to.state.as_str(),
            result,
        })
        .await?;
    if ok && from.a.state != to.state {
        metrics::counter!("portcullis_approvals_total", "outcome" => to.state.as_str())
            .increment(1);
        if to.state.is_final() {
            // For retention. Not atomic with the change: a record whose entry is lost
            // here (store error, crash) is indexed by the next start's scan.
            if let Err(e) = app
                .store
                .track_approval(TimeIndex::Decided, &to.id, to.updated_at_ms)
                .await
            {
                warn!(approval_id = %to.id, error = %e, "could not index a decided approval for retention");
            }
        }
        crate::notify::approval(app, &to);
    }
    Ok(ok.then_some(Loaded { a: to, raw }))
}

/// Writes an approval event to the audit trail; a failure is logged loudly (the state
/// change already happened in the store and cannot be taken back).
pub async fn audit(
    app: &App,
    a: &Approval,
    event: &'static str,
    operator: Option<&str>,
    comment: Option<&str>,
) {
    let r = Record {
        event,
        request_id: Some(a.request_id.clone()),
        agent: Some(a.agent.clone()),
        credential: Some(a.credential.clone()),
        tenant: a.tenant.clone(),
        method: Some(a.method.clone().into()),
        path: Some(crate::audit::redact_query(
            &a.path,
            &app.live.load().snap.audit.redact_query,
        )),
        tool: Some(a.tool.clone()),
        risk: Some(a.risk.as_str().into()),
        decision: Some(a.state.as_str().into()),
        reason: a.reason.clone().map(Into::into),
        policy_version: Some(app.live.load().snap.policy_version.to_string()),
        body_sha256: Some(a.body_sha256.clone()),
        approval_id: Some(a.id.clone()),
        // A replay names who approved it, so an execution and its approvers stand on
        // one line even if an approval's own record was lost.
        operator: operator.map(str::to_string).or_else(|| {
            (event.starts_with("replay_") && !a.approvals.is_empty()).then(|| {
                a.approvals
                    .iter()
                    .map(|v| v.operator.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            })
        }),
        upstream_status: a.upstream_status,
        comment: comment.map(str::to_string),
        ..Default::default()
    };
    if let Err(e) = app.audit.record_durable(r.clone()).await {
        // The trail is down: queue it instead, to be written when it recovers.
        if app.audit.record(r).is_err() {
            tracing::error!(approval_id = %a.id, event, error = %e, "approval event could not be audited");
        }
    }
}

fn pending_quota(agent: &str, quota: u32) -> Error {
    Error::TooMany {
        reason: "pending_quota",
        detail: format!("agent `{agent}` already has {quota} requests waiting for approval"),
        retry_after: 60,
    }
}

/// How long past `request_deadline` a `parking` record is left to its node before the
/// sweeper calls it abandoned (the node's request has been cut off by then).
const PARK_GRACE_MS: u64 = 5_000;

/// Parks a request the gate said needs approval: buffers the body (capped), stores the
/// record as `parking`, audits it durably, then makes it `pending` and answers 202.
#[allow(clippy::too_many_arguments)]
pub async fn park<B>(
    app: &App,
    live: &Live,
    who: &Identity,
    c: &Canonical,
    tool: &Tool,
    headers: &HeaderMap,
    body: B,
    rationale: Option<String>,
    request_id: &str,
    origin: (Option<std::net::IpAddr>, std::time::Instant),
    via: &crate::proxy::Via,
    condition: Option<&str>,
) -> Result<Response<crate::body::Body>, Error>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<crate::body::BoxError>,
{
    encoding::check_parkable(headers)?;
    let snap = &live.snap;
    // Everything that can refuse without the body is checked before it is read, and
    // only a few parks per agent read bodies at once: one agent cannot hold
    // concurrency × max_parked_body_bytes of memory.
    let quota = snap.limits.max_pending_per_agent;
    let limit = snap
        .limits
        .max_body_bytes
        .min(snap.limits.max_parked_body_bytes);
    let mut collect = std::pin::pin!(crate::body::collect_limited(headers, body, limit));
    // A body that arrived whole with the head costs nothing to take: then the quota is
    // checked once, atomically, where the approval is created. Otherwise it is looked at
    // first, so a full quota is answered without waiting for (or holding) the body — and
    // also when a preview would read the upstream before the creation: an agent over its
    // quota never makes the proxy call the upstream.
    let previewed = preview::wanted(live, tool.route, &tool.name, c.method);
    let early = std::future::poll_fn(|cx| std::task::Poll::Ready(collect.as_mut().poll(cx))).await;
    if (previewed || !matches!(early, std::task::Poll::Ready(Ok(_))))
        && app.store.pending_count(&who.agent.id).await? >= u64::from(quota)
    {
        return Err(pending_quota(&who.agent.id, quota));
    }
    let _reading = app
        .parking
        .enter(
            &who.agent.id,
            snap.limits.max_concurrent_parks_per_agent as usize,
        )
        .ok_or_else(|| Error::TooMany {
            reason: "parking_concurrency",
            detail: format!(
                "agent `{}` already has {} requests being parked; retry when they are answered",
                who.agent.id, snap.limits.max_concurrent_parks_per_agent
            ),
            retry_after: 1,
        })?;
    let body = match early {
        std::task::Poll::Ready(b) => b?,
        std::task::Poll::Pending => collect.await?,
    };
    if let Some(f) = crate::override_scan::format_of(headers)?.filter(|_| !body.is_empty()) {
        let mut scan = crate::override_scan::Scanner::new(f);
        if scan.feed(&body).and_then(|_| scan.finish()).is_err() {
            return Err(crate::override_scan::refusal());
        }
    }
    if !app.audit.ready() {
        return Err(crate::audit::Audit::unavailable());
    }
    let preview = if previewed {
        let whose = preview::For {
            agent: &who.agent.id,
            credential: &who.token.record.id,
            tenant: who.agent.tenant.as_deref(),
        };
        Some(preview::fetch(app, live, whose, tool.route, &tool.name, c, request_id).await)
    } else {
        None
    };
    let route = &snap.routes[tool.route];
    let up = &snap.upstreams[route.upstream];
    let kept = crate::upstream::kept_headers(headers, up);
    let upstream_uri = crate::upstream::upstream_uri(up, route, c)?.to_string();
    let path = c.path_and_query();
    let now = now_ms();
    let ttl = tool.approval_ttl.unwrap_or(snap.limits.approval_ttl);
    let a = Approval {
        id: uuid::Uuid::now_v7().to_string(),
        state: State::Parking,
        request_id: request_id.to_string(),
        agent: who.agent.id.clone(),
        credential: who.token.record.id.clone(),
        tenant: who.agent.tenant.clone(),
        tool: tool.name.to_string(),
        risk: tool.risk,
        method: c.method.as_str().to_string(),
        request_sha256: request_sha256(c.method.as_str(), &path, &kept, &body, Some(&upstream_uri)),
        upstream_uri: Some(upstream_uri),
        path,
        upstream: up.name.clone(),
        headers: kept,
        body_len: body.len() as u64,
        body_sha256: crate::digest::to_hex(&Sha256::digest(&body)),
        policy_version: snap.policy_version.to_string(),
        created_at_ms: now,
        expires_at_ms: now.saturating_add(ttl.as_millis() as u64),
        updated_at_ms: now,
        required_approvals: if tool.risk == Risk::Critical { 2 } else { 1 },
        approvals: vec![],
        decided_by: None,
        reason: None,
        detail: None,
        lease: Some(Lease {
            node: snap.node.clone(),
            boot: app.boot_id.clone(),
            until_ms: now
                .saturating_add(snap.limits.request_deadline.as_millis() as u64)
                .saturating_add(PARK_GRACE_MS),
        }),
        upstream_status: None,
        rationale,
        preview,
        condition: condition.map(str::to_string),
    };
    let raw = encode(&a);
    if !app
        .store
        .create_approval(
            &a.id,
            &a.agent,
            a.state.as_str(),
            &raw,
            &body,
            snap.limits.max_pending_per_agent,
            a.expires_at_ms,
        )
        .await?
    {
        return Err(pending_quota(&a.agent, quota));
    }
    let rec = Record {
        event: "request",
        request_id: Some(request_id.to_string()),
        agent: Some(a.agent.clone()),
        credential: Some(a.credential.clone()),
        tenant: a.tenant.clone(),
        method: Some(a.method.clone().into()),
        path: Some(crate::audit::redact_query(
            &a.path,
            &snap.audit.redact_query,
        )),
        tool: Some(a.tool.clone()),
        risk: Some(a.risk.as_str().into()),
        decision: Some("park".into()),
        reason: Some("approval_required".into()),
        condition: a.condition.clone(),
        policy_version: Some(a.policy_version.clone()),
        body_sha256: Some(a.body_sha256.clone()),
        approval_id: Some(a.id.clone()),
        status: Some(202),
        remote_addr: origin.0.map(|a| a.to_string()),
        duration_us: Some(origin.1.elapsed().as_micros() as u64),
        via: matches!(via, crate::proxy::Via::Mcp { .. }).then_some("mcp"),
        jsonrpc_id: match via {
            crate::proxy::Via::Mcp { jsonrpc_id, .. } => Some(jsonrpc_id.clone()),
            crate::proxy::Via::Http => None,
        },
        rationale: a.rationale.clone(),
        ..Default::default()
    };
    let mut rec = rec;
    if let Some(p) = rec.path.as_mut() {
        if crate::audit::cap_path(p) {
            rec.truncated = Some(true);
        }
    }
    let l = Loaded { a, raw };
    if let Err(e) = app.audit.record_durable(rec).await {
        // Unrecorded work must not wait for approval: fail it, answer 503.
        let mut f = l.a.clone();
        f.state = State::Failed;
        f.reason = Some("audit_unavailable".into());
        f.lease = None;
        let _ = transition(app, &l, f, None).await;
        return Err(e);
    }
    // The park record is durable: only now may it be decided (and so executed). If this
    // does not happen (crash, store error, deadline), the sweeper fails it `unaudited`.
    let mut p = l.a.clone();
    p.state = State::Pending;
    p.lease = None;
    let a = transition(app, &l, p, None)
        .await?
        .ok_or_else(|| Error::Unavailable {
            reason: "store_unavailable",
            detail: "the park could not be confirmed in time; nothing waits for approval".into(),
        })?
        .a;
    metrics::gauge!("portcullis_parked").increment(1.0);
    info!(request_id, approval_id = %a.id, agent.id = %a.agent, tool.name = %a.tool, risk = %a.risk, decision = "park", "parked for approval");
    // The fields in the order a JSON object built with `json!` had them (sorted), so
    // the body is what it was, without building a map first.
    #[derive(Serialize)]
    struct Parked<'a> {
        approval_id: &'a str,
        expires_at: String,
        poll: String,
        request_sha256: &'a str,
        risk: Risk,
        status: &'static str,
        tool: &'a str,
    }
    let mut r = crate::body::json_response(
        StatusCode::ACCEPTED,
        &Parked {
            approval_id: &a.id,
            expires_at: rfc3339(a.expires_at_ms),
            poll: format!("/_portcullis/approvals/{}", a.id),
            request_sha256: &a.request_sha256,
            risk: a.risk,
            status: "pending",
            tool: &a.tool,
        },
    );
    r.headers_mut().insert(
        "portcullis-decision",
        http::HeaderValue::from_static("park"),
    );
    Ok(r)
}

/// An operator approves. Critical tools need two distinct approvers; the operator who
/// issued the credential that parked the request may not approve it.
pub async fn approve(
    app: &Arc<App>,
    id: &str,
    op: &str,
    comment: Option<String>,
    quoted_sha: Option<String>,
) -> Result<Approval, Error> {
    let l = load(app, id).await?.ok_or(Error::NotFound)?;
    let a = &l.a;
    check_decidable(a)?;
    if let Some(q) = &quoted_sha {
        if !q.eq_ignore_ascii_case(&a.request_sha256) {
            return Err(Error::Conflict(
                "the quoted request_sha256 does not match the parked request".into(),
            ));
        }
    }
    if let Some(t) = app.store.get_token(&a.credential).await? {
        if t.issued_by == op {
            return Err(Error::Forbidden(format!("operator `{op}` issued the credential that parked this request and cannot approve it")));
        }
    }
    if a.approvals.iter().any(|v| v.operator == op) {
        return Err(Error::Conflict(format!("operator `{op}` already approved; a critical request needs a second, distinct approver")));
    }
    let mut n = a.clone();
    n.approvals.push(Vote {
        operator: op.to_string(),
        comment: comment.clone(),
        at_ms: now_ms(),
    });
    if n.approvals.len() >= n.required_approvals as usize {
        n.state = State::Approved;
        n.decided_by = Some(
            n.approvals
                .iter()
                .map(|v| v.operator.clone())
                .collect::<Vec<_>>()
                .join(","),
        );
    }
    let l2 = transition(app, &l, n, None)
        .await?
        .ok_or_else(|| Error::Conflict("the approval changed concurrently; look again".into()))?;
    let event = if l2.a.state == State::Approved {
        "approval_approved"
    } else {
        "approval_vote"
    };
    audit(app, &l2.a, event, Some(op), comment.as_deref()).await;
    if l2.a.state == State::Approved {
        metrics::gauge!("portcullis_parked").decrement(1.0);
        metrics::histogram!("portcullis_approval_wait_seconds")
            .record(now_ms().saturating_sub(l2.a.created_at_ms) as f64 / 1000.0);
        let (app2, id2) = (app.clone(), id.to_string());
        tokio::spawn(async move { replay(app2, id2).await });
    }
    Ok(l2.a)
}

fn check_decidable(a: &Approval) -> Result<(), Error> {
    match a.state {
        State::Pending => Ok(()),
        State::Parking => Err(Error::Conflict(
            "the request is still being parked (its audit record is not confirmed yet)".into(),
        )),
        State::Expired => Err(Error::Gone("the approval request expired".into())),
        s => Err(Error::Conflict(format!(
            "the approval is already {}",
            s.as_str()
        ))),
    }
}

pub async fn deny(app: &App, id: &str, op: &str, reason: String) -> Result<Approval, Error> {
    let l = load(app, id).await?.ok_or(Error::NotFound)?;
    check_decidable(&l.a)?;
    let mut n = l.a.clone();
    n.state = State::Denied;
    n.decided_by = Some(op.to_string());
    n.reason = Some("denied_by_operator".into());
    n.detail = Some(reason.clone());
    let l2 = transition(app, &l, n, None)
        .await?
        .ok_or_else(|| Error::Conflict("the approval changed concurrently; look again".into()))?;
    metrics::gauge!("portcullis_parked").decrement(1.0);
    audit(app, &l2.a, "approval_denied", Some(op), Some(&reason)).await;
    let a = &l2.a;
    let crossed = app.signals.observe_denial(
        app.live.load().snap.signals.rules(&a.agent),
        app.store.shared(),
        &a.agent,
        &a.credential,
        &a.request_id,
    );
    if let Some(c) = crossed {
        crate::signals::brake::fire(app, c).await;
    }
    Ok(l2.a)
}

/// Records what a human established about an `unknown` outcome.
pub async fn resolve(
    app: &App,
    id: &str,
    op: &str,
    outcome: &str,
    comment: Option<String>,
) -> Result<Approval, Error> {
    let l = load(app, id).await?.ok_or(Error::NotFound)?;
    if l.a.state != State::Unknown {
        return Err(Error::Conflict(format!(
            "only an `unknown` outcome can be resolved; this one is {}",
            l.a.state.as_str()
        )));
    }
    let mut n = l.a.clone();
    n.state = match outcome {
        "executed" => State::Executed,
        "failed" => State::Failed,
        o => {
            return Err(Error::BadRequest {
                reason: "bad_outcome",
                detail: format!("`{o}`: expected executed or failed"),
            })
        }
    };
    n.reason = Some("resolved_by_operator".into());
    n.detail = comment.clone();
    n.decided_by = Some(op.to_string());
    let l2 = transition(app, &l, n, None)
        .await?
        .ok_or_else(|| Error::Conflict("the approval changed concurrently; look again".into()))?;
    audit(
        app,
        &l2.a,
        "approval_resolved",
        Some(op),
        comment.as_deref(),
    )
    .await;
    Ok(l2.a)
}

/// The records stored in `state` (through the store's per-state index), as stored.
pub(crate) async fn in_state(app: &App, state: State) -> Result<Vec<Approval>, Error> {
    Ok(app
        .store
        .list_approvals(Some(state.as_str()))
        .await?
        .iter()
        .filter_map(|raw| serde_json::from_slice::<Approval>(raw).ok())
        .collect())
}

/// All records, newest first, optionally one state. A pending record past its expiry
/// is shown as `expired` (the sweeper moves it within a second).
pub async fn list(app: &App, state: Option<State>) -> Result<Vec<Approval>, Error> {
    let raw = match state {
        None => app.store.list_approvals(None).await?,
        Some(State::Expired) => {
            let mut v = app.store.list_approvals(Some("expired")).await?;
            v.extend(app.store.list_approvals(Some("pending")).await?);
            v
        }
        Some(s) => app.store.list_approvals(Some(s.as_str())).await?,
    };
    let now = now_ms();
    let mut v: Vec<Approval> = raw
        .iter()
        .filter_map(|raw| serde_json::from_slice::<Approval>(raw).ok())
        .map(|mut a| {
            if a.state == State::Pending && now >= a.expires_at_ms {
                a.state = State::Expired;
            }
            a
        })
        .filter(|a| state.is_none_or(|s| a.state == s))
        .collect();
    v.sort_by_key(|a| std::cmp::Reverse(a.created_at_ms));
    Ok(v)
}
