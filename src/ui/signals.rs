//! The operator page's Signals list (`/ui/signals`): what the proxy raised about each
//! agent, with its evidence, and a form to acknowledge one with a note (approvers).

use super::{html, redirect, Chrome};
use crate::app::App;
use crate::approval::controls::{visible, Piece};
use crate::body::Body;
use crate::decode::query_param;
use crate::error::Error;
use askama::Template;
use http::{Response, StatusCode};
use std::collections::HashMap;

struct Row {
    id: String,
    kind: String,
    agent: String,
    credential: String,
    request_id: String,
    evidence: String,
    action: String,
    brake: String,
    at: String,
    open: bool,
    acked_by: String,
    note: Option<Vec<Piece>>,
}

#[derive(Template)]
#[template(path = "ui/signals.html")]
struct SignalsPage {
    c: Chrome,
    rows: Vec<Row>,
    message: Option<String>,
}

/// `GET /ui/signals[?state=all]`.
pub async fn list(
    app: &App,
    c: Chrome,
    query: &str,
    message: Option<String>,
) -> Result<Response<Body>, Error> {
    let open = (query_param(query, "state").as_deref() != Some("all")).then_some(true);
    let rows = crate::signals::api::list(app, open)
        .await?
        .into_iter()
        .map(|s| Row {
            evidence: match (&s.tool, &s.window) {
                (Some(t), _) => format!("first call of {t}"),
                (None, Some(w)) => format!("{} in {w} (threshold {})", s.observed, s.threshold),
                (None, None) => format!("{} (threshold {})", s.observed, s.threshold),
            } + &s
                .baseline
                .map(|b| format!(", baseline {b:.1}"))
                .unwrap_or_default(),
            id: s.id,
            kind: s.kind,
            agent: s.agent,
            credential: s.credential.unwrap_or_default(),
            request_id: s.request_id.unwrap_or_default(),
            action: s.action,
            brake: s.brake,
            at: super::ts(s.at_ms),
            open: s.state == "open",
            acked_by: s.acked_by.unwrap_or_default(),
            note: s.ack_note.as_deref().map(visible),
        })
        .collect();
    html(StatusCode::OK, &SignalsPage { c, rows, message })
}

/// `POST /ui/signals/<id>/ack` (the CSRF token is already checked).
pub async fn ack(
    app: &App,
    c: Chrome,
    id: &str,
    form: &HashMap<String, String>,
) -> Result<Response<Body>, Error> {
    if !c.approver {
        let m = format!("`{}` lacks the approver role", c.operator);
        return list(app, c, "", Some(m)).await;
    }
    let note = form.get("note").filter(|n| !n.trim().is_empty()).cloned();
    let operator = c.operator.clone();
    match crate::signals::api::ack(app, id, &operator, note).await {
        Ok(_) => redirect("/ui/signals", None),
        Err(e) => list(app, c, "", Some(super::refusal(&e))).await,
    }
}
