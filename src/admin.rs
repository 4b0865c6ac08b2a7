//! The operator API on `admin_listen`: `handle_*` per endpoint, one role check, one
//! error mapping. Agent credentials are refused here; every change names its operator.

use crate::app::App;
use crate::approval;
use crate::audit::Record;
use crate::body::{self, Body};
use crate::classify::Risk;
use crate::config::duration;
use crate::error::Error;
use crate::explain;
use crate::identity::{self, IssueRequest, AGENT_PREFIX};
use crate::proxy::{new_request_id, Conn};
use crate::store::{now_ms, Scope, SwitchChange, TokenRecord};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use tracing::info;

const MAX_ADMIN_BODY: usize = 64 * 1024;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Role {
    Viewer,
    Approver,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Approver => "approver",
            Role::Admin => "admin",
        }
    }
}

pub async fn handle(app: Arc<App>, _conn: Conn, req: Request<Incoming>) -> Response<Body> {
    let request_id = new_request_id();
    let mut resp = route(&app, req)
        .await
        .unwrap_or_else(|e| e.to_response(&request_id));
    if let Ok(v) = http::HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

/// `GET /`: 303 to the operator page.
fn to_ui() -> Response<Body> {
    let mut r = Response::new(body::empty());
    *r.status_mut() = StatusCode::SEE_OTHER;
    r.headers_mut().insert(
        http::header::LOCATION,
        http::HeaderValue::from_static("/ui"),
    );
    r
}

fn ok(v: Value) -> Result<Response<Body>, Error> {
    Ok(body::json_response(StatusCode::OK, &v))
}

/// The operator a token belongs to, if it holds `role`: (name, roles).
/// Agent credentials are refused outright; every operator hash is compared in constant time.
pub fn operator_by_token(
    app: &App,
    token: &str,
    role: Role,
) -> Result<(String, Vec<String>), Error> {
    if token.starts_with(AGENT_PREFIX) {
        return Err(Error::Forbidden(
            "agent credentials are not accepted on the admin API".into(),
        ));
    }
    let presented = sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(
        token.as_bytes(),
    ));
    let live = app.live.load();
    let mut found = None;
    for op in &live.snap.operators {
        if bool::from(subtle::ConstantTimeEq::ct_eq(
            &op.token_sha256[..],
            &presented[..],
        )) {
            found = Some(op);
        }
    }
    let op = found.ok_or(Error::OperatorUnauthorized)?;
    if !op.roles.iter().any(|r| r == role.as_str()) {
        return Err(Error::Forbidden(format!(
            "operator `{}` lacks the `{}` role",
            op.name,
            role.as_str()
        )));
    }
    Ok((op.name.clone(), op.roles.clone()))
}

/// The operator behind a request's bearer token, if it holds `role`.
fn operator(app: &App, req: &Request<Incoming>, role: Role) -> Result<String, Error> {
    let token = identity::bearer(req.headers()).ok_or(Error::OperatorUnauthorized)?;
    Ok(operator_by_token(app, token, role)?.0)
}

async fn read_json<T: for<'de> Deserialize<'de>>(req: Request<Incoming>) -> Result<T, Error> {
    let bytes = body::read_small(req.into_body(), MAX_ADMIN_BODY).await?;
    serde_json::from_slice(&bytes).map_err(|e| Error::BadRequest {
        reason: "bad_json",
        detail: e.to_string(),
    })
}

/// Like `read_json`, but an empty body means the type's default.
async fn read_json_or_empty<T: for<'de> Deserialize<'de> + Default>(
    req: Request<Incoming>,
) -> Result<T, Error> {
    let bytes = body::read_small(req.into_body(), MAX_ADMIN_BODY).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(&bytes).map_err(|e| Error::BadRequest {
        reason: "bad_json",
        detail: e.to_string(),
    })
}

/// Query parameter `name` of an admin request, decoded (`crate::decode`).
fn query_param(req: &Request<Incoming>, name: &str) -> Option<String> {
    crate::decode::query_param(req.uri().query()?, name)
}

async fn route(app: &Arc<App>, req: Request<Incoming>) -> Result<Response<Body>, Error> {
    let path = req.uri().path().to_string();
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let m = req.method().clone();
    match (&m, segs.as_slice()) {
        (_, ["ui", ..]) => crate::ui::handle(app, req).await,
        // A browser pointed at the admin port lands on the operator page.
        (&Method::GET | &Method::HEAD, [""]) => Ok(to_ui()),
        (&Method::GET, ["healthz"]) => ok(json!({"status": "ok"})),
        (&Method::GET, ["readyz"]) => handle_readyz(app).await,
        (&Method::GET, ["metrics"]) => {
            operator(app, &req, Role::Viewer)?;
            crate::metrics_scrape::refresh(app).await;
            let mut r = Response::new(body::full(app.metrics.render()));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            Ok(r)
        }
        (&Method::GET, ["policy"]) => {
            operator(app, &req, Role::Viewer)?;
            let live = app.live.load();
            ok(
                json!({"policy_version": &*live.snap.policy_version, "file": live.snap.file.display().to_string(), "node": live.snap.node}),
            )
        }
        (&Method::POST, ["reload"]) => {
            let op = operator(app, &req, Role::Admin)?;
            let (old, new) = app.reload(&op).await?;
            ok(json!({"old_policy_version": old, "policy_version": new}))
        }
        (&Method::POST, ["tokens"]) => {
            let op = operator(app, &req, Role::Admin)?;
            let v = issue_token(app, op, read_json(req).await?).await?;
            Ok(body::json_response(StatusCode::CREATED, &v))
        }
        (&Method::GET, ["tokens"]) => {
            operator(app, &req, Role::Viewer)?;
            let list: Vec<Value> = app
                .store
                .list_tokens()
                .await?
                .iter()
                .map(token_json)
                .collect();
            ok(json!({"tokens": list}))
        }
        (&Method::DELETE, ["tokens", id]) => {
            let op = operator(app, &req, Role::Admin)?;
            revoke_token(app, &op, id).await?;
            ok(json!({"id": id, "revoked": true}))
        }
        (&Method::POST, ["agents", id, verb @ ("disable" | "enable")]) => {
            let op = operator(app, &req, Role::Admin)?;
            if !app.live.load().snap.agents.contains_key(*id) {
                return Err(Error::NotFound);
            }
            let change = if *verb == "disable" {
                SwitchChange::Disable(id.to_string())
            } else {
                SwitchChange::Enable(id.to_string())
            };
            apply(app, &op, change).await
        }
        (&Method::POST, [verb @ ("pause" | "resume")]) => {
            let op = operator(app, &req, Role::Admin)?;
            let b: PauseBody = read_json(req).await?;
            let scope = Scope::parse(&b.scope).ok_or_else(|| Error::BadRequest {
                reason: "bad_scope",
                detail: format!("`{}`: expected all, agent, tool or tenant", b.scope),
            })?;
            let target = b.target.unwrap_or_default();
            if scope != Scope::All && target.is_empty() {
                return Err(Error::BadRequest {
                    reason: "missing_target",
                    detail: format!("scope `{}` needs a target", b.scope),
                });
            }
            let change = if *verb == "pause" {
                SwitchChange::Pause(scope, target)
            } else {
                SwitchChange::Resume(scope, target)
            };
            ok(apply_switch(app, &op, change, b.note.as_deref()).await?)
        }
        (&Method::POST, ["mode"]) => {
            let op = operator(app, &req, Role::Admin)?;
            let b: ModeBody = read_json(req).await?;
            apply(app, &op, SwitchChange::DraftOnly(b.draft_only)).await
        }
        (&Method::GET, ["switches"]) => {
            operator(app, &req, Role::Viewer)?;
            ok(serde_json::to_value(app.store.switches().await?).unwrap_or_default())
        }
        (&Method::GET, ["explain"]) => {
            operator(app, &req, Role::Viewer)?;
            let need = |n: &str| {
                query_param(&req, n).ok_or_else(|| Error::BadRequest {
                    reason: "missing_parameter",
                    detail: format!("`{n}` is required"),
                })
            };
            let (agent, method, path) = (need("agent")?, need("method")?, need("path")?);
            // `body`: the request's JSON body (what conditions on `request.body` read).
            let body = query_param(&req, "body").map(|b| explain::json_body(b.into_bytes()));
            let switches = app.switches.current(&app.store).await?;
            let e = explain::explain_with(
                &app.live.load().snap,
                &switches,
                &agent,
                &method,
                &path,
                body.as_ref(),
            )?;
            ok(serde_json::to_value(e).unwrap_or_default())
        }
        (&Method::GET, ["approvals"]) => {
            operator(app, &req, Role::Viewer)?;
            let state = match query_param(&req, "state") {
                Some(s) => Some(approval::State::parse(&s).ok_or_else(|| Error::BadRequest {
                    reason: "bad_state",
                    detail: format!("`{s}` is not an approval state"),
                })?),
                None => None,
            };
            let list: Vec<Value> = approval::list(app, state)
                .await?
                .iter()
                .map(approval::summary_view)
                .collect();
            ok(json!({"approvals": list}))
        }
        (&Method::GET, ["approvals", id]) => {
            operator(app, &req, Role::Viewer)?;
            let l = approval::load(app, id).await?.ok_or(Error::NotFound)?;
            let body = app.store.get_approval_body(id).await?;
            let mut v = approval::operator_view(&l.a, body.as_deref());
            // What the operator page shows around it (`approvals show` prints it).
            if let (Some(o), Ok(serde_json::Value::Object(cx))) = (
                v.as_object_mut(),
                serde_json::to_value(approval::context::context(app, &l.a).await?),
            ) {
                o.extend(cx);
            }
            ok(v)
        }
        (&Method::POST, ["approvals", id, "approve"]) => {
            let op = operator(app, &req, Role::Approver)?;
            let id = id.to_string();
            let b: ApproveBody = read_json_or_empty(req).await?;
            let a = approval::approve(app, &id, &op, b.comment, b.request_sha256).await?;
            ok(approval::operator_view(&a, None))
        }
        (&Method::POST, ["approvals", id, "deny"]) => {
            let op = operator(app, &req, Role::Approver)?;
            let id = id.to_string();
            let b: DenyBody = read_json(req).await?;
            let a = approval::deny(app, &id, &op, b.reason).await?;
            ok(approval::operator_view(&a, None))
        }
        (&Method::POST, ["approvals", id, "resolve"]) => {
            let op = operator(app, &req, Role::Approver)?;
            let id = id.to_string();
            let b: ResolveBody = read_json(req).await?;
            let a = approval::resolve(app, &id, &op, &b.outcome, b.comment).await?;
            ok(approval::operator_view(&a, None))
        }
        (&Method::GET, ["signals"]) => {
            operator(app, &req, Role::Viewer)?;
            let open = match query_param(&req, "state").as_deref() {
                None | Some("all") => None,
                Some("open") => Some(true),
                Some("acknowledged") => Some(false),
                Some(s) => {
                    return Err(Error::BadRequest {
                        reason: "bad_state",
                        detail: format!("`{s}`: expected open, acknowledged or all"),
                    })
                }
            };
            let list: Vec<Value> = crate::signals::api::list(app, open)
                .await?
                .iter()
                .map(|s| s.view())
                .collect();
            ok(json!({"signals": list}))
        }
        (&Method::GET, ["signals", "baselines", agent]) => {
            operator(app, &req, Role::Viewer)?;
            ok(crate::signals::api::baselines(app, agent).await?)
        }
        (&Method::GET, ["signals", id]) => {
            operator(app, &req, Role::Viewer)?;
            ok(crate::signals::api::get(app, id).await?.view())
        }
        (&Method::POST, ["signals", id, "ack"]) => {
            let op = operator(app, &req, Role::Approver)?;
            let id = id.to_string();
            let b: AckBody = read_json_or_empty(req).await?;
            ok(crate::signals::api::ack(app, &id, &op, b.note)
                .await?
                .view())
        }
        (&Method::GET, ["tools"]) => {
            operator(app, &req, Role::Viewer)?;
            handle_tools(app, query_param(&req, "agent")).await
        }
        _ => Err(Error::NotFound),
    }
}

/// Operator changes are recorded durably; the policy version in force is stamped on.
/// If the trail is down the change (already made) is queued to be recorded when it
/// recovers, and the operator hears 503.
async fn record(app: &App, mut r: Record) -> Result<(), Error> {
    r.policy_version = Some(app.live.load().snap.policy_version.to_string());
    r.decision.get_or_insert_with(|| "ok".into());
    match app.audit.record_durable(r.clone()).await {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = app.audit.record(r);
            Err(e)
        }
    }
}

async fn handle_readyz(app: &App) -> Result<Response<Body>, Error> {
    if app.is_draining() {
        return Err(Error::Unavailable {
            reason: "draining",
            detail: "shutting down".into(),
        });
    }
    if !app.audit.ready() {
        return Err(crate::audit::Audit::unavailable());
    }
    app.store.ping().await?;
    ok(json!({"status": "ready", "policy_version": &*app.live.load().snap.policy_version}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PauseBody {
    scope: String,
    #[serde(default)]
    target: Option<String>,
    /// Why, recorded with the change.
    #[serde(default)]
    note: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ApproveBody {
    #[serde(default)]
    comment: Option<String>,
    #[serde(default)]
    request_sha256: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct AckBody {
    #[serde(default)]
    note: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DenyBody {
    reason: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResolveBody {
    outcome: String,
    #[serde(default)]
    comment: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ModeBody {
    draft_only: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct IssueBody {
    pub agent: String,
    #[serde(default)]
    pub ttl: Option<String>,
    #[serde(default)]
    pub tools: Option<Vec<String>>,
    #[serde(default)]
    pub max_risk: Option<String>,
    #[serde(default)]
    pub max_calls: Option<u64>,
}

async fn apply(app: &App, op: &str, change: SwitchChange) -> Result<Response<Body>, Error> {
    ok(apply_switch(app, op, change, None).await?)
}

/// Changes a switch (API and operator page) and records it durably with the operator's
/// name and note; returns the switches as they are now.
pub(crate) async fn apply_switch(
    app: &App,
    op: &str,
    change: SwitchChange,
    note: Option<&str>,
) -> Result<Value, Error> {
    app.store.apply(&change).await?;
    app.switches.invalidate();
    info!(operator = %op, change = ?change, "switch changed");
    let (event, scope, target) = match &change {
        SwitchChange::Pause(s, t) => ("pause", Some(s.as_str()), Some(t.clone())),
        SwitchChange::Resume(s, t) => ("resume", Some(s.as_str()), Some(t.clone())),
        SwitchChange::Disable(a) => ("agent_disabled", None, Some(a.clone())),
        SwitchChange::Enable(a) => ("agent_enabled", None, Some(a.clone())),
        SwitchChange::DraftOnly(on) => ("mode", None, Some(format!("draft_only={on}"))),
    };
    let agent = matches!(
        change,
        SwitchChange::Disable(_)
            | SwitchChange::Enable(_)
            | SwitchChange::Pause(Scope::Agent, _)
            | SwitchChange::Resume(Scope::Agent, _)
    )
    .then(|| target.clone().unwrap_or_default());
    let mut detail = match scope {
        Some(s) => format!("{s} {}", target.unwrap_or_default()),
        None => target.unwrap_or_default(),
    };
    if let Some(n) = note.map(str::trim).filter(|n| !n.is_empty()) {
        detail = format!("{} — {n}", detail.trim());
    }
    record(
        app,
        Record {
            event,
            operator: Some(op.to_string()),
            agent,
            comment: Some(detail.trim().to_string()),
            ..Default::default()
        },
    )
    .await?;
    Ok(serde_json::to_value(app.store.switches().await?).unwrap_or_default())
}

fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
        .to_string()
}

fn token_json(t: &TokenRecord) -> Value {
    let now = now_ms();
    let state = if t.revoked {
        "revoked"
    } else if now >= t.expires_at_ms {
        "expired"
    } else {
        "active"
    };
    json!({
        "id": t.id, "agent": t.agent, "state": state, "created_at": rfc3339(t.created_at_ms),
        "expires_at": rfc3339(t.expires_at_ms), "tools": t.tools, "max_risk": t.max_risk,
        "max_calls": t.max_calls, "issued_by": t.issued_by,
    })
}

/// Revokes a credential (API and operator page) and records it durably.
pub(crate) async fn revoke_token(app: &App, op: &str, id: &str) -> Result<(), Error> {
    if !app.store.revoke_token(id).await? {
        return Err(Error::NotFound);
    }
    app.creds.invalidate(id);
    info!(operator = %op, credential = %id, "token revoked");
    record(
        app,
        Record {
            event: "token_revoked",
            operator: Some(op.to_string()),
            credential: Some(id.to_string()),
            ..Default::default()
        },
    )
    .await
}

/// Issues a credential (API and operator page): the answer holds the secret, once.
pub(crate) async fn issue_token(app: &App, op: String, b: IssueBody) -> Result<Value, Error> {
    let live = app.live.load_full();
    let agent = live
        .snap
        .agents
        .get(&b.agent)
        .ok_or_else(|| Error::BadRequest {
            reason: "unknown_agent",
            detail: format!("no agent `{}` in the config", b.agent),
        })?;
    let ttl =
        duration::parse(b.ttl.as_deref().unwrap_or("24h")).map_err(|e| Error::BadRequest {
            reason: "bad_ttl",
            detail: e,
        })?;
    if ttl.is_zero() {
        return Err(Error::BadRequest {
            reason: "bad_ttl",
            detail: "ttl must be more than zero".into(),
        });
    }
    let max_risk = match b.max_risk.as_deref() {
        None => None,
        Some(s) => Some(Risk::parse(s).ok_or_else(|| Error::BadRequest {
            reason: "bad_risk",
            detail: format!("`{s}`: expected low, medium, high or critical"),
        })?),
    };
    if let Some(tools) = &b.tools {
        if tools.iter().any(|t| t.is_empty()) {
            return Err(Error::BadRequest {
                reason: "bad_tools",
                detail: "empty tool pattern".into(),
            });
        }
    }
    if b.max_calls == Some(0) {
        return Err(Error::BadRequest {
            reason: "bad_max_calls",
            detail: "max_calls must be at least 1".into(),
        });
    }
    // A narrowing pattern that can match no known tool is most likely a typo.
    let warnings = b
        .tools
        .as_deref()
        .map(|t| crate::lint::narrowing(&live.snap, t))
        .unwrap_or_default();
    let issued = identity::issue(
        live.snap.store.pepper.as_deref(),
        IssueRequest {
            agent: agent.id.clone(),
            ttl_ms: ttl.as_millis() as u64,
            tools: b.tools,
            max_risk,
            max_calls: b.max_calls,
            issued_by: op.clone(),
        },
    );
    app.store.put_token(&issued.record).await?;
    info!(operator = %op, agent.id = %agent.id, credential = %issued.record.id, "token issued");
    record(
        app,
        Record {
            event: "token_issued",
            operator: Some(op.clone()),
            agent: Some(agent.id.clone()),
            credential: Some(issued.record.id.clone()),
            tenant: agent.tenant.clone(),
            ..Default::default()
        },
    )
    .await?;
    let mut v = json!({"id": issued.record.id, "secret": issued.token, "agent": agent.id, "expires_at": rfc3339(issued.record.expires_at_ms)});
    if !warnings.is_empty() {
        v["warnings"] = json!(warnings);
    }
    Ok(v)
}

async fn handle_tools(app: &App, agent: Option<String>) -> Result<Response<Body>, Error> {
    let live = app.live.load_full();
    match agent {
        Some(a) => {
            let agent = live.snap.agents.get(&a).ok_or(Error::NotFound)?;
            let switches = app.switches.current(&app.store).await?;
            let tools = explain::agent_tools(&live.snap, agent, &Default::default(), &switches);
            ok(json!({"agent": a, "policy_version": &*live.snap.policy_version, "tools": tools}))
        }
        None => {
            let rows: Vec<Value> = crate::tooltable::rows(&live.snap)
                .into_iter()
                .map(|r| json!({"tool": r.tool, "method": r.method, "template": r.template, "risk": r.risk, "route": r.route, "upstream": r.upstream, "allow": r.allow, "park": r.park, "deny": r.deny, "source": r.source, "description": r.description}))
                .collect();
            ok(json!({"policy_version": &*live.snap.policy_version, "tools": rows}))
        }
    }
}
