//! The operator web page under `/ui`: sign in with an operator token; the pending queue
//! (refreshing by itself), history, a request page (rationale, change, fields, context,
//! decision, result), switches and agents. This file routes and holds what every page
//! shares (session, CSRF check, security headers with a per-response script nonce). The session cookie is honoured only here (Path=/ui,
//! HttpOnly, SameSite=Strict); every form carries a per-session CSRF token, and every
//! request re-reads the operator from the live configuration. Decisions go through the
//! same `approval::*` functions as the API and CLI. Pages show agent text with hidden
//! characters spelled out, and no page echoes its query string.

mod agents;
mod detail;
mod fields;
mod queue;
mod session;
mod shown;
mod signals;
mod switches;

pub use session::Sessions;

use crate::admin::{operator_by_token, Role};
use crate::app::App;
use crate::approval::State;
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

/// What every signed-in page shows around its content, and what it may offer.
pub struct Chrome {
    pub operator: String,
    pub roles: String,
    pub csrf: String,
    /// This response's CSP nonce: the only script that runs carries it.
    pub nonce: String,
    /// The nav entry marked current.
    pub section: &'static str,
    pub approver: bool,
    pub admin: bool,
}

pub(crate) fn ts(ms: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

pub(crate) fn html(status: StatusCode, t: &impl Template) -> Result<Response<Body>, Error> {
    page_with_script(status, t, None)
}

/// A page; with `nonce`, an inline script carrying it may run (and read this origin).
pub(crate) fn page_with_script(
    status: StatusCode,
    t: &impl Template,
    nonce: Option<&str>,
) -> Result<Response<Body>, Error> {
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
    let csp = match nonce {
        Some(n) => format!("default-src 'none'; style-src 'unsafe-inline'; script-src 'nonce-{n}'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
        None => "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'".into(),
    };
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_str(&csp).map_err(|e| Error::Internal(e.to_string()))?,
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

pub(crate) fn redirect(to: &str, cookie: Option<String>) -> Result<Response<Body>, Error> {
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
pub(crate) fn refusal(e: &Error) -> String {
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
    let holds = |r: Role| roles.iter().any(|x| x == r.as_str());
    let mut c = Chrome {
        operator: s.operator.clone(),
        roles: roles.join(", "),
        csrf: s.csrf.clone(),
        nonce: crate::identity::random_hex(16),
        section: "queue",
        approver: holds(Role::Approver),
        admin: holds(Role::Admin),
    };
    match (req.method().clone(), segs.as_slice()) {
        // The old list filter `/ui?state=…` is the history page for that state.
        (Method::GET, ["ui"]) if query_param(&query, "state").is_some_and(|s| s != "pending") => {
            c.section = "history";
            queue::history(app, c, &query).await
        }
        (Method::GET, ["ui"]) => queue::pending(app, c).await,
        (Method::GET, ["ui", "history"]) => {
            c.section = "history";
            queue::history(app, c, &query).await
        }
        (Method::GET, ["ui", "switches"]) => {
            c.section = "switches";
            switches::page(app, c, None).await
        }
        (Method::GET, ["ui", "agents"]) => {
            c.section = "agents";
            agents::list(app, c).await
        }
        (Method::GET, ["ui", "agents", id]) => {
            c.section = "agents";
            agents::page(app, c, id, None, None).await
        }
        (Method::GET, ["ui", "signals"]) => {
            c.section = "signals";
            signals::list(app, c, &query, None).await
        }
        (Method::GET, ["ui", "approvals", id]) => {
            let id = id.to_string();
            // Only a state name selects a (fixed) message; nothing else is echoed.
            let done = query_param(&query, "done").and_then(|d| State::parse(&d));
            detail::page(app, c, &id, detail::Banner::Done(done), StatusCode::OK).await
        }
        (Method::POST, rest) => {
            let rest: Vec<String> = rest.iter().map(|s| s.to_string()).collect();
            let f = read_form(req).await?;
            if !f.get("csrf").is_some_and(|t| digest_eq(t, &c.csrf)) {
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
                ["ui", "signals", id, "ack"] => {
                    c.section = "signals";
                    signals::ack(app, c, id, &f).await
                }
                ["ui", "approvals", id, verb @ ("approve" | "deny" | "resolve")] => {
                    detail::decide(app, c, id, verb, &f).await
                }
                ["ui", "switches"] => {
                    c.section = "switches";
                    switches::change(app, c, &f).await
                }
                ["ui", "agents", id, "tokens"] => {
                    c.section = "agents";
                    agents::issue(app, c, id, &f).await
                }
                ["ui", "agents", id, "tokens", tid, "revoke"] => {
                    c.section = "agents";
                    agents::revoke(app, c, id, tid).await
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
