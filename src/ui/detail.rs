//! The request page: the request line as the heading, the agent's rationale, the
//! change (`preview: current`), the body as fields and pretty JSON, the decision area
//! (Approve and Deny apart; critical tools typed to confirm; an operator who voted sees
//! their vote), votes with comments, the upstream's answer, and the context an
//! operator judges by. Decisions post here and redirect back with a plain banner.

use super::fields::{self, Field};
use super::{page_with_script, redirect, refusal, shown, ts, Chrome};
use crate::app::App;
use crate::approval::context::context;
use crate::approval::controls::{any_hidden, visible, Piece};
use crate::approval::diff::{diff, Diff};
use crate::approval::{self, Approval, State};
use crate::body::Body;
use crate::classify::Risk;
use crate::cli_view::short_duration;
use crate::error::Error;
use askama::Template;
use http::{Response, StatusCode};
use std::collections::HashMap;
use std::sync::Arc;

pub struct VoteView {
    operator: String,
    comment: Option<Vec<Piece>>,
    at: String,
}

pub struct ChangeView {
    field: Vec<Piece>,
    before: Option<Vec<Piece>>,
    after: Option<Vec<Piece>>,
}

pub struct PreviewView {
    read_at: String,
    /// Read again on opening the page, it is no longer what the diff was made against.
    changed_since: bool,
    deleted: bool,
    current: Vec<Piece>,
    note: Option<String>,
    changes: Vec<ChangeView>,
}

pub struct ResultView {
    status: u16,
    truncated: bool,
    headers: Vec<(String, Vec<Piece>)>,
    body: Vec<Piece>,
}

pub struct Detail {
    id: String,
    method: String,
    path: Vec<Piece>,
    state: String,
    votes_line: Option<String>,
    votes: Vec<VoteView>,
    my_vote: Option<String>,
    tool: String,
    critical: bool,
    description: Option<Vec<Piece>>,
    risk: String,
    risk_why: String,
    /// The condition that parked it or set its risk, as written in the config.
    condition: Option<String>,
    rationale: Option<Vec<Piece>>,
    preview: Option<PreviewView>,
    agent: String,
    owner: String,
    tenant: String,
    parked_today: usize,
    denied_today: usize,
    credential: String,
    issued_by: String,
    upstream: String,
    created_at: String,
    expires_at: String,
    left: String,
    request_sha256: String,
    outcome: Option<Vec<Piece>>,
    result: Option<ResultView>,
    headers: Vec<(String, Vec<Piece>)>,
    body: Vec<Piece>,
    fields: Option<Vec<Field>>,
    body_len: u64,
    body_encoding: &'static str,
    body_note: Option<String>,
    body_undecodable: bool,
    /// Something shown holds invisible or bidirectional control characters.
    hidden: bool,
    decidable: bool,
    resolvable: bool,
    /// Approved or executing: the outcome region refreshes until it lands.
    in_flight: bool,
}

#[derive(Template)]
#[template(path = "ui/detail.html")]
struct DetailPage {
    c: Chrome,
    a: Detail,
    message: Option<String>,
    bad: bool,
}

/// What the page says on top.
pub enum Banner {
    /// After a decision (`?done=STATE`): a fixed sentence from that state and the record.
    Done(Option<State>),
    /// A refusal, worded by the server.
    Refused(String),
}

/// The plain-language line after a decision, from what was done and where the record
/// is now.
fn done_line(done: State, a: &Approval) -> String {
    let outcome = || match (a.state, a.upstream_status) {
        (State::Executed, Some(s)) => format!(" Executed: upstream answered {s}."),
        (State::Failed, _) => format!(
            " It failed: {}.",
            a.detail
                .as_deref()
                .or(a.reason.as_deref())
                .unwrap_or("see the outcome below")
        ),
        (State::Unknown, _) => " Its outcome is unknown: see below.".into(),
        _ => " Sending it now; the answer appears below.".into(),
    };
    match done {
        State::Pending => match approval::approvals_needed(a) {
            0 => format!("Approved.{}", outcome()),
            1 => "Approved. Waiting for a second approver.".into(),
            n => format!("Approved. Waiting for {n} more approvers."),
        },
        State::Approved | State::Executing => format!("Approved.{}", outcome()),
        State::Executed => match a.upstream_status {
            Some(s) => format!("Executed: upstream answered {s}."),
            None => "Recorded: executed.".into(),
        },
        State::Denied => "Denied. The agent is told the reason.".into(),
        s => format!("Recorded: {}.", s.as_str()),
    }
}

fn preview_view(a: &Approval, raw: &[u8]) -> Option<PreviewView> {
    let p = a.preview.as_ref()?;
    let current = p.body.clone().unwrap_or_default();
    let pretty = serde_json::from_str::<serde_json::Value>(&current)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| current.clone());
    let mut v = PreviewView {
        changed_since: false,
        read_at: ts(p.at_ms),
        deleted: false,
        current: visible(&pretty),
        note: p.note.clone(),
        changes: vec![],
    };
    if p.note.is_some() {
        return Some(v);
    }
    if p.truncated {
        v.note = Some(
            "The current resource was longer than the preview keeps (64 KiB or limits.max_result_bytes); no field comparison."
                .into(),
        );
        return Some(v);
    }
    match diff(&a.method, current.as_bytes(), raw) {
        Diff::Deleted => v.deleted = true,
        Diff::Unavailable(why) => v.note = Some(format!("No field comparison: {why}.")),
        Diff::Fields(c) => {
            let text = |x: &serde_json::Value| visible(&fields::scalar_text(x));
            v.changes = c
                .iter()
                .map(|ch| ChangeView {
                    field: visible(&ch.field),
                    before: ch.before.as_ref().map(text),
                    after: ch.after.as_ref().map(text),
                })
                .collect();
        }
    }
    Some(v)
}

async fn result_view(app: &App, a: &Approval) -> Option<ResultView> {
    if a.state != State::Executed && a.upstream_status.is_none() {
        return None;
    }
    let r = crate::internal::stored_result(app, &a.id).await.ok()?;
    let text = String::from_utf8_lossy(&r.body).into_owned();
    let pretty = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or(text);
    Some(ResultView {
        status: r.status,
        truncated: r.truncated,
        headers: r
            .headers
            .iter()
            .map(|(n, v)| (n.clone(), visible(v)))
            .collect(),
        body: visible(&pretty),
    })
}

pub async fn page(
    app: &App,
    c: Chrome,
    id: &str,
    banner: Banner,
    status: StatusCode,
) -> Result<Response<Body>, Error> {
    let l = approval::load(app, id).await?.ok_or(Error::NotFound)?;
    let raw = app.store.get_approval_body(id).await?.unwrap_or_default();
    let a: Approval = l.a;
    let cx = context(app, &a).await?;
    let limit = app.live.load().snap.limits.max_parked_body_bytes;
    let body = shown::body(
        &raw,
        &a.headers,
        usize::try_from(limit).unwrap_or(usize::MAX),
    );
    let body_fields = (body.encoding == "utf-8")
        .then(|| {
            body.pieces
                .iter()
                .map(|p| p.text.as_str())
                .collect::<String>()
        })
        .filter(|_| !body.pieces.iter().any(|p| p.hidden))
        .and_then(|t| fields::json(&t));
    let (body_pieces, field_rows) = match body_fields {
        Some((pretty, rows)) => (pretty, rows),
        None => (body.pieces, None),
    };
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
    let description = cx.description.as_deref().map(visible);
    let rationale = a.rationale.as_deref().map(visible);
    let mut preview = preview_view(&a, &raw);
    if let (Some(v), State::Pending) = (preview.as_mut(), a.state) {
        if let (Some(now), Some(then)) = (
            crate::approval::preview::reread(app, &a).await,
            a.preview.as_ref(),
        ) {
            v.changed_since = now.status != then.status || now.body != then.body;
        }
    }
    let votes: Vec<VoteView> = a
        .approvals
        .iter()
        .map(|v| VoteView {
            operator: v.operator.clone(),
            comment: v.comment.as_deref().map(visible),
            at: ts(v.at_ms),
        })
        .collect();
    let hidden = any_hidden(&path)
        || description.as_deref().is_some_and(any_hidden)
        || rationale.as_deref().is_some_and(any_hidden)
        || any_hidden(&body_pieces)
        || field_rows.as_deref().is_some_and(fields::fields_hidden)
        || headers.iter().any(|(_, v)| any_hidden(v))
        || outcome.as_deref().is_some_and(any_hidden)
        || votes
            .iter()
            .any(|v| v.comment.as_deref().is_some_and(any_hidden));
    let my_vote = a
        .approvals
        .iter()
        .find(|v| v.operator == c.operator)
        .map(|v| {
            format!(
                "You approved this at {}{}",
                ts(v.at_ms),
                match approval::approvals_needed(&a) {
                    0 => ".".to_string(),
                    1 => " — it needs another approver.".to_string(),
                    n => format!(" — it needs {n} more approvers."),
                }
            )
        });
    let result = result_view(app, &a).await;
    let (message, bad) = match banner {
        Banner::Done(Some(d)) => (Some(done_line(d, &a)), false),
        Banner::Done(None) => (None, false),
        Banner::Refused(m) => (Some(m), true),
    };
    let now = crate::store::now_ms();
    let d = Detail {
        decidable: a.state == State::Pending,
        resolvable: a.state == State::Unknown,
        in_flight: matches!(a.state, State::Approved | State::Executing),
        votes_line: cx.votes_line.clone(),
        votes,
        my_vote,
        critical: a.risk == Risk::Critical,
        state: a.state.as_str().into(),
        risk: a.risk.to_string(),
        risk_why: cx.risk_why.unwrap_or("").to_string(),
        condition: a.condition.clone(),
        owner: cx.owner.clone().unwrap_or_else(|| "-".into()),
        issued_by: cx.issued_by.clone().unwrap_or_else(|| "-".into()),
        parked_today: cx.parked_today,
        denied_today: cx.denied_today,
        tenant: a.tenant.clone().unwrap_or_else(|| "-".into()),
        created_at: ts(a.created_at_ms),
        expires_at: ts(a.expires_at_ms),
        left: short_duration(a.expires_at_ms.saturating_sub(now) / 1000),
        outcome,
        result,
        hidden,
        body: body_pieces,
        fields: field_rows,
        body_len: a.body_len,
        body_encoding: body.encoding,
        body_note: body.note,
        body_undecodable: body.undecodable,
        rationale,
        preview,
        path,
        headers,
        description,
        id: a.id,
        method: a.method,
        tool: a.tool,
        agent: a.agent,
        credential: a.credential,
        upstream: a.upstream,
        request_sha256: a.request_sha256,
    };
    let nonce = c.nonce.clone();
    page_with_script(
        status,
        &DetailPage {
            c,
            a: d,
            message,
            bad,
        },
        Some(&nonce),
    )
}

/// A decision posted from the page: recorded through the same `approval::*` functions
/// as the API, then POST-redirect-GET to the request page with `?done=STATE`.
pub async fn decide(
    app: &Arc<App>,
    c: Chrome,
    id: &str,
    verb: &str,
    f: &HashMap<String, String>,
) -> Result<Response<Body>, Error> {
    let id = id.to_string();
    if !c.approver {
        let m = format!("`{}` lacks the approver role", c.operator);
        return page(app, c, &id, Banner::Refused(m), StatusCode::FORBIDDEN).await;
    }
    let nonempty = |k: &str| f.get(k).filter(|v| !v.trim().is_empty()).cloned();
    let op = c.operator.clone();
    let r = match verb {
        "approve" => {
            // A critical tool is approved only with its name typed.
            let l = approval::load(app, &id).await?.ok_or(Error::NotFound)?;
            if l.a.risk == Risk::Critical
                && nonempty("confirm").as_deref().map(str::trim) != Some(l.a.tool.as_str())
            {
                Err(Error::BadRequest {
                    reason: "confirmation_required",
                    detail: "type the tool's name to approve a critical request".into(),
                })
            } else {
                approval::approve(
                    app,
                    &id,
                    &op,
                    nonempty("comment"),
                    nonempty("request_sha256"),
                )
                .await
            }
        }
        "deny" => match nonempty("reason") {
            Some(reason) => approval::deny(app, &id, &op, reason).await,
            None => Err(Error::BadRequest {
                reason: "reason_required",
                detail: "a denial needs a reason".into(),
            }),
        },
        _ => {
            approval::resolve(
                app,
                &id,
                &op,
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
        // The page's own refusals, worded by the server (nothing the client sent).
        Err(
            e @ Error::BadRequest {
                reason: "confirmation_required" | "reason_required",
                ..
            },
        ) => {
            let m = format!("Not recorded: {e}.");
            let s = e.status();
            page(app, c, &id, Banner::Refused(m), s).await
        }
        Err(e) => {
            let s = e.status();
            page(app, c, &id, Banner::Refused(refusal(&e)), s).await
        }
    }
}
