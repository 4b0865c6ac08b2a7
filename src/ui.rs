//! The operator web page under `/ui`: sign in with an operator token, see pending
//! approvals, read a request as it will be sent, approve (quoting its hash), deny, or
//! resolve an `unknown`. The session cookie is honoured only here (Path=/ui,
//! HttpOnly, SameSite=Strict); every form carries a per-session CSRF token, and every
//! request re-reads the operator from the live configuration. Decisions go through the
//! same `approval::*` functions as the API and CLI. Pages show agent text with hidden
//! characters spelled out, and no page echoes its query string.

mod session;
mod shown;

pub use session::Sessions;

use crate::admin::{operator_by_token, Role};
use crate::app::App;
use crate::approval::controls::{any_hidden, visible, Piece};
use crate::approval::{self, Approval, State};
use crate::body::{self, Body};
use crate::decode::{cookie, form, query_param};
use crate::error::Error;
use crate::identity::digest_eq;
use askama::Template;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

const COOKIE: &str = "pc_session";
const MAX_FORM: usize = 16 * 1024;

#[derive(Template)]
#[template(path = "ui/login.html")]
struct LoginPage {
    message: Option<String>,
}

struct Row {
    id: String,
    method: String,
    path: Vec<Piece>,
    hidden: bool,
    tool: String,
    risk: String,
    agent: String,
    tenant: String,
    state: String,
    votes: usize,
    required: u8,
    age: String,
    expires_at: String,
}

#[derive(Template)]
#[template(path = "ui/list.html")]
struct ListPage {
    operator: String,
    roles: String,
    csrf: String,
    heading: String,
    rows: Vec<Row>,
    policy_version: String,
    message: Option<String>,
}

struct Detail {
    id: String,
    method: String,
    path: Vec<Piece>,
    state: String,
    votes: usize,
    voters: String,
    required: u8,
    tool: String,
    /// The tool's description from the configuration in force (override or spec).
    description: Option<Vec<Piece>>,
    risk: String,
    /// The condition that parked it or set its risk, as written in the config.
    condition: Option<String>,
    agent: String,
    tenant: String,
    credential: String,
    upstream: String,
    created_at: String,
    expires_at: String,
    request_sha256: String,
    outcome: Option<Vec<Piece>>,
    headers: Vec<(String, Vec<Piece>)>,
    body: Vec<Piece>,
    body_len: u64,
    body_encoding: &'static str,
    body_note: Option<String>,
    body_undecodable: bool,
    /// Something shown holds invisible or bidirectional control characters.
    hidden: bool,
    decidable: bool,
    resolvable: bool,
}

#[derive(Template)]
#[template(path = "ui/detail.html")]
struct DetailPage {
    operator: String,
    csrf: String,
    a: Detail,
    message: Option<String>,
}

fn ts(ms: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

fn html(status: StatusCode, t: &impl Template) -> Result<Response<Body>, Error> {
    let text = t
        .render()
        .map_err(|e| Error::Internal(format!("template: {e}")))?;
    let mut r = Response::new(body::full(text));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    Ok(r)
}

fn redirect(to: &str, cookie: Option<String>) -> Result<Response<Body>, Error> {
    let mut r = Response::new(body::empty());
    *r.status_mut() = StatusCode::SEE_OTHER;
    r.headers_mut().insert(
        header::LOCATION,
        HeaderValue::from_str(to).map_err(|e| Error::Internal(e.to_string()))?,
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(c) = cookie {
        r.headers_mut().insert(
            header::SET_COOKIE,
            HeaderValue::from_str(&c).map_err(|e| Error::Internal(e.to_string()))?,
        );
    }
    Ok(r)
}

fn session_id(req: &Request<Incoming>) -> Option<String> {
    cookie(
        req.headers()
            .get_all(header::COOKIE)
            .iter()
            .map(HeaderValue::as_bytes),
        COOKIE,
    )
}

async fn read_form(req: Request<Incoming>) -> Result<HashMap<String, String>, Error> {
    Ok(form(&body::read_small(req.into_body(), MAX_FORM).await?))
}

fn clear_cookie(secure: bool) -> String {
    format!(
        "{COOKIE}=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0{}",
        if secure { "; Secure" } else { "" }
    )
}

/// What the page says when a decision is refused. Refusals the server words from its
/// own state (conflict, expired, forbidden, not found) are shown as worded; any other
/// shows only its fixed reason code. Nothing the client sent is echoed.
fn refusal(e: &Error) -> String {
    match e {
        Error::Conflict(_) | Error::Gone(_) | Error::Forbidden(_) | Error::NotFound => {
            format!("Not recorded: {e}.")
        }
        _ => format!("Not recorded ({}).", e.reason()),
    }
}

pub async fn handle(app: &Arc<App>, req: Request<Incoming>) -> Result<Response<Body>, Error> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let segs: Vec<&str> = path
        .trim_start_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    if (req.method(), segs.as_slice()) == (&Method::POST, ["ui", "login"].as_slice()) {
        return login(app, req).await;
    }
    let sid = session_id(&req);
    let Some(s) = sid.as_deref().and_then(|s| app.ui_sessions.get(s)) else {
        return html(StatusCode::OK, &LoginPage { message: None });
    };
    let live = app.live.load();
    let secure = live.snap.admin_tls.is_some();
    // The operator as configured now: removed, re-keyed or demoted ends the session.
    let Some(roles) = session::live_roles(&live.snap.operators, &s) else {
        if let Some(id) = &sid {
            app.ui_sessions.remove(id);
        }
        tracing::info!(operator = %s.operator, "operator page session ended: the operator was removed, given a new token or lost a role");
        return redirect("/ui", Some(clear_cookie(secure)));
    };
    drop(live);
    let (operator, csrf) = (s.operator, s.csrf);
    match (req.method().clone(), segs.as_slice()) {
        (Method::GET, ["ui"]) => list(app, operator, roles, csrf, &query).await,
        (Method::GET, ["ui", "approvals", id]) => {
            let id = id.to_string();
            // Only a state name selects a (fixed) message; nothing else is echoed.
            let msg = query_param(&query, "done")
                .and_then(|d| State::parse(&d))
                .map(|st| format!("Recorded: {}.", st.as_str()));
            detail(app, operator, csrf, &id, msg, StatusCode::OK).await
        }
        (Method::POST, rest) => {
            let rest: Vec<String> = rest.iter().map(|s| s.to_string()).collect();
            let f = read_form(req).await?;
            if !f.get("csrf").is_some_and(|c| digest_eq(c, &csrf)) {
                return Err(Error::Forbidden(
                    "the form's CSRF token does not match this session".into(),
                ));
            }
            let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
            match rest.as_slice() {
                ["ui", "logout"] => {
                    if let Some(s) = &sid {
                        app.ui_sessions.remove(s);
                    }
                    redirect("/ui", Some(clear_cookie(secure)))
                }
                ["ui", "approvals", id, verb @ ("approve" | "deny" | "resolve")] => {
                    let id = id.to_string();
                    if !roles.iter().any(|r| r == Role::Approver.as_str()) {
                        return detail(
                            app,
                            operator.clone(),
                            csrf,
                            &id,
                            Some(format!("`{operator}` lacks the approver role")),
                            StatusCode::FORBIDDEN,
                        )
                        .await;
                    }
                    let nonempty = |k: &str| f.get(k).filter(|v| !v.trim().is_empty()).cloned();
                    let r = match *verb {
                        "approve" => {
                            approval::approve(
                                app,
                                &id,
                                &operator,
                                nonempty("comment"),
                                nonempty("request_sha256"),
                            )
                            .await
                        }
                        "deny" => {
                            approval::deny(
                                app,
                                &id,
                                &operator,
                                nonempty("reason")
                                    .unwrap_or_else(|| "denied from the operator page".into()),
                            )
                            .await
                        }
                        _ => {
                            approval::resolve(
                                app,
                                &id,
                                &operator,
                                f.get("outcome").map(String::as_str).unwrap_or(""),
                                nonempty("comment"),
                            )
                            .await
                        }
                    };
                    match r {
                        Ok(a) => redirect(
                            &format!("/ui/approvals/{id}?done={}", a.state.as_str()),
                            None,
                        ),
                        Err(e) => {
                            detail(app, operator, csrf, &id, Some(refusal(&e)), e.status()).await
                        }
                    }
                }
                _ => Err(Error::NotFound),
            }
        }
        _ => Err(Error::NotFound),
    }
}

async fn login(app: &App, req: Request<Incoming>) -> Result<Response<Body>, Error> {
    let f = read_form(req).await?;
    let token = f
        .get("token")
        .map(|t| t.trim().to_string())
        .unwrap_or_default();
    match operator_by_token(app, &token, Role::Viewer) {
        Ok((name, roles)) => {
            tracing::info!(operator = %name, "operator page sign-in");
            let sid = app
                .ui_sessions
                .create(name, roles, Sha256::digest(token.as_bytes()).into());
            let secure = app.live.load().snap.admin_tls.is_some();
            let cookie = format!(
                "{COOKIE}={sid}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={}{}",
                session::TTL.as_secs(),
                if secure { "; Secure" } else { "" }
            );
            redirect("/ui", Some(cookie))
        }
        Err(_) => html(
            StatusCode::UNAUTHORIZED,
            &LoginPage {
                message: Some("That is not an operator token with the viewer role.".into()),
            },
        ),
    }
}

async fn list(
    app: &App,
    operator: String,
    roles: Vec<String>,
    csrf: String,
    query: &str,
) -> Result<Response<Body>, Error> {
    let wanted = query_param(query, "state");
    let state = match wanted.as_deref() {
        Some("all") => None,
        w => Some(w.and_then(State::parse).unwrap_or(State::Pending)),
    };
    let now = crate::store::now_ms();
    let rows = approval::list(app, state)
        .await?
        .into_iter()
        .map(|a| Row {
            age: format!("{}s", now.saturating_sub(a.created_at_ms) / 1000),
            expires_at: ts(a.expires_at_ms),
            votes: a.approvals.len(),
            required: a.required_approvals,
            state: a.state.as_str().into(),
            tenant: a.tenant.unwrap_or_else(|| "-".into()),
            risk: a.risk.to_string(),
            hidden: any_hidden(&visible(&a.path)),
            path: visible(&a.path),
            id: a.id,
            method: a.method,
            tool: a.tool,
            agent: a.agent,
        })
        .collect();
    let heading = match state {
        Some(s) => format!("Approvals: {}", s.as_str()),
        None => "All approvals".into(),
    };
    let policy_version = app.live.load().snap.policy_version.to_string();
    html(
        StatusCode::OK,
        &ListPage {
            operator,
            roles: roles.join(", "),
            csrf,
            heading,
            rows,
            policy_version,
            message: None,
        },
    )
}

async fn detail(
    app: &App,
    operator: String,
    csrf: String,
    id: &str,
    message: Option<String>,
    status: StatusCode,
) -> Result<Response<Body>, Error> {
    let l = approval::load(app, id).await?.ok_or(Error::NotFound)?;
    let raw = app.store.get_approval_body(id).await?.unwrap_or_default();
    let a: Approval = l.a;
    let limit = app.live.load().snap.limits.max_parked_body_bytes;
    let body = shown::body(
        &raw,
        &a.headers,
        usize::try_from(limit).unwrap_or(usize::MAX),
    );
    let path = visible(&a.path);
    let headers: Vec<(String, Vec<Piece>)> = a
        .headers
        .iter()
        .map(|(n, v)| (n.clone(), visible(v)))
        .collect();
    let outcome = match (&a.reason, &a.detail, a.upstream_status) {
        (_, _, Some(s)) => Some(format!("upstream answered {s}")),
        (Some(r), Some(d), _) => Some(format!("{r}: {d}")),
        (Some(r), None, _) => Some(r.clone()),
        _ => None,
    }
    .map(|o| visible(&o));
    let description = app.live.load().snap.tool_description(&a.tool).map(visible);
    let hidden = any_hidden(&path)
        || description.as_deref().is_some_and(any_hidden)
        || any_hidden(&body.pieces)
        || headers.iter().any(|(_, v)| any_hidden(v))
        || outcome.as_deref().is_some_and(any_hidden);
    let d = Detail {
        decidable: a.state == State::Pending,
        resolvable: a.state == State::Unknown,
        votes: a.approvals.len(),
        voters: a
            .approvals
            .iter()
            .map(|v| v.operator.clone())
            .collect::<Vec<_>>()
            .join(", "),
        required: a.required_approvals,
        state: a.state.as_str().into(),
        risk: a.risk.to_string(),
        condition: a.condition.clone(),
        tenant: a.tenant.clone().unwrap_or_else(|| "-".into()),
        created_at: ts(a.created_at_ms),
        expires_at: ts(a.expires_at_ms),
        outcome,
        hidden,
        body: body.pieces,
        body_len: a.body_len,
        body_encoding: body.encoding,
        body_note: body.note,
        body_undecodable: body.undecodable,
        path,
        headers,
        id: a.id,
        method: a.method,
        tool: a.tool,
        description,
        agent: a.agent,
        credential: a.credential,
        upstream: a.upstream,
        request_sha256: a.request_sha256,
    };
    html(
        status,
        &DetailPage {
            operator,
            csrf,
            a: d,
            message,
        },
    )
}
