//! `/_portcullis/…` on the agent port: matched before any route, needs an agent
//! credential, never forwarded. Tool listing and the agent's own approvals.

use crate::app::{App, Live};
use crate::approval::{self, State};
use crate::body::{self, Body};
use crate::canon::{Canonical, Method};
use crate::error::Error;
use crate::explain;
use crate::identity::Identity;
use crate::store::Event;
use http::{HeaderName, HeaderValue, Response, StatusCode};
use std::time::Duration;
use tracing::debug;

/// The longest `?wait=` honoured (also bounded by the request deadline).
const MAX_WAIT: Duration = Duration::from_secs(60);

pub async fn handle(
    app: &App,
    live: &Live,
    who: &Identity,
    c: &Canonical,
) -> Result<Response<Body>, Error> {
    let segs: Vec<&str> = c.path.trim_start_matches('/').split('/').collect();
    match (c.method, segs.as_slice()) {
        (Method::Get, ["_portcullis", "tools"]) => {
            let switches = app.switches.current(&app.store).await?;
            let tools =
                explain::agent_tools(&live.snap, &who.agent, &who.token.narrowing, &switches);
            Ok(crate::proxy::json(
                StatusCode::OK,
                serde_json::json!({"agent": who.agent.id, "policy_version": &*live.snap.policy_version, "tools": tools}),
            ))
        }
        (Method::Get, ["_portcullis", "approvals", id]) => {
            // `?until=final`: wait through `approved`/`executing` to the outcome (and
            // wait the longest allowed when no `wait` is given).
            let until = match query_str(c, "until") {
                None => Until::Change,
                Some("final") => Until::Final,
                Some(_) => {
                    return Err(Error::BadRequest {
                        reason: "bad_query",
                        detail: "`until` takes only `final`".into(),
                    })
                }
            };
            let wait = query_u64(c, "wait")
                .or((until == Until::Final).then_some(MAX_WAIT.as_secs()))
                .map(|s| {
                    Duration::from_secs(s).min(MAX_WAIT).min(
                        live.snap
                            .limits
                            .request_deadline
                            .saturating_sub(Duration::from_secs(1)),
                    )
                });
            status(app, who, id, wait, until).await
        }
        (Method::Get, ["_portcullis", "approvals", id, "result"]) => result(app, who, id).await,
        _ => Err(Error::NotFound),
    }
}

fn query_str<'a>(c: &'a Canonical, name: &str) -> Option<&'a str> {
    c.query
        .as_deref()?
        .split('&')
        .find_map(|p| p.strip_prefix(name)?.strip_prefix('='))
}

fn query_u64(c: &Canonical, name: &str) -> Option<u64> {
    query_str(c, name)?.parse().ok()
}

/// What a long poll waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// Any change of state.
    Change,
    /// An outcome: executed, failed, denied, expired or unknown.
    Final,
}

fn settled(s: State) -> bool {
    matches!(
        s,
        State::Executed | State::Failed | State::Denied | State::Expired | State::Unknown
    )
}

/// Only the agent that parked a request sees it; any other id is just not found.
pub async fn own(app: &App, who: &Identity, id: &str) -> Result<approval::Approval, Error> {
    match approval::load(app, id).await? {
        Some(l) if l.a.agent == who.agent.id => Ok(l.a),
        _ => Err(Error::NotFound),
    }
}

async fn status(
    app: &App,
    who: &Identity,
    id: &str,
    wait: Option<Duration>,
    until: Until,
) -> Result<Response<Body>, Error> {
    let a = wait_for(app, who, id, wait, until).await?;
    Ok(crate::proxy::json(StatusCode::OK, approval::agent_view(&a)))
}

/// The agent's own approval `id`, after waiting up to `wait` for its state to change
/// (returns at once when it is final). Shared with MCP's `portcullis.approval_status`
/// and tasks.
pub async fn wait_for(
    app: &App,
    who: &Identity,
    id: &str,
    wait: Option<Duration>,
    until: Until,
) -> Result<approval::Approval, Error> {
    let mut events = app.store.events();
    let mut a = own(app, who, id).await?;
    if let Some(wait) = wait {
        let start = a.state;
        let deadline = tokio::time::Instant::now() + wait;
        // Subscribed above, before the first read: from here on no change is missed.
        debug!(approval_id = %id, state = start.as_str(), wait_ms = wait.as_millis() as u64, "long-poll waiting for a change");
        let waiting = |s: State| match until {
            Until::Change => s == start && !settled(s),
            Until::Final => !settled(s),
        };
        while waiting(a.state) {
            let now = tokio::time::Instant::now();
            if now >= deadline {
                break;
            }
            // Woken by a change notice from any replica; re-read at least every second
            // (covers expiry, which nobody announces, and a lost feed).
            let step = (deadline - now).min(Duration::from_secs(1));
            let noticed = tokio::time::timeout(step, async {
                loop {
                    match events.recv().await {
                        Ok(Event::Approval(x)) if x == id => return true,
                        Ok(_) => continue,
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return false,
                        Err(_) => return std::future::pending().await,
                    }
                }
            })
            .await
            .unwrap_or(false);
            a = own(app, who, id).await?;
            if a.state != start {
                let woken_by = if noticed { "notice" } else { "reread" };
                debug!(approval_id = %id, state = a.state.as_str(), woken_by, "long-poll saw a change");
            }
        }
    }
    Ok(a)
}

/// The stored upstream result of an executed approval.
pub async fn stored_result(app: &App, id: &str) -> Result<approval::Decoded, Error> {
    let raw = app
        .store
        .get_approval_result(id)
        .await?
        .ok_or(Error::NotFound)?;
    approval::decode_result(&raw).ok_or_else(|| Error::Internal("stored result unreadable".into()))
}

async fn result(app: &App, who: &Identity, id: &str) -> Result<Response<Body>, Error> {
    let a = own(app, who, id).await?;
    if a.state != State::Executed {
        return Err(Error::Conflict(format!(
            "approval {id} is {}, not executed; there is no result",
            a.state.as_str()
        )));
    }
    let approval::Decoded {
        status,
        headers,
        body: bytes,
        truncated,
    } = stored_result(app, id).await?;
    let mut r = Response::new(body::full(bytes));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    for (k, v) in headers {
        if k.eq_ignore_ascii_case("content-length") {
            continue;
        }
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(&v),
        ) {
            r.headers_mut().append(k, v);
        }
    }
    let h = r.headers_mut();
    h.insert("portcullis-decision", HeaderValue::from_static("allow"));
    h.insert(
        "portcullis-approval-id",
        HeaderValue::from_str(id).map_err(|e| Error::Internal(e.to_string()))?,
    );
    if truncated {
        h.insert(
            "portcullis-result-truncated",
            HeaderValue::from_static("true"),
        );
    }
    Ok(r)
}
