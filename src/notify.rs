//! Approval notifications: an optional webhook (Slack-compatible `text` plus structured
//! fields) when a request parks and when it is decided. Fire-and-forget with retries
//! and a timeout; never blocks the agent, never carries a secret or a body; the path's
//! query is redacted as in the audit trail (`audit.redact_query`). The tool's
//! description (from its override or spec operation) rides along as `description`.
//! Signals (`crate::signals`) go to the same webhook, with the same `text` field.

use crate::app::App;
use crate::approval::{Approval, State};
use crate::body;
use http::{header, Method, Request};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use std::time::Duration;
use tracing::warn;

const ATTEMPTS: u32 = 3;
const TIMEOUT: Duration = Duration::from_secs(5);

pub fn approval(app: &App, a: &Approval) {
    let live = app.live.load();
    let Some(url) = live.snap.webhook_url.clone() else {
        return;
    };
    let path = crate::audit::redact_query(&a.path, &live.snap.audit.redact_query);
    let description = live.snap.tool_description(&a.tool).map(str::to_string);
    let link = live
        .snap
        .admin_url
        .as_ref()
        .map(|u| format!("{u}/ui/approvals/{}", a.id));
    drop(live);
    let verb = match a.state {
        State::Pending if a.approvals.is_empty() => "needs approval",
        State::Pending => "has one of two approvals",
        State::Approved => "was approved",
        State::Denied => "was denied",
        State::Expired => "expired",
        State::Executed => "was executed",
        State::Failed => "failed",
        State::Unknown => "has an unknown outcome",
        State::Executing | State::Parking => return,
    };
    let text = text(a, &path, verb, description.as_deref(), link.as_deref());
    let payload = serde_json::json!({
        "text": text, "url": link, "rationale": a.rationale, "event": a.state.as_str(), "approval_id": a.id, "agent": a.agent,
        "tenant": a.tenant, "tool": a.tool, "risk": a.risk, "method": a.method, "path": path,
        "request_sha256": a.request_sha256, "decided_by": a.decided_by,
        "description": description,
    });
    let body = serde_json::to_vec(&payload).unwrap_or_default();
    send(url, body);
}

/// The message a person reads: what, for whom, how risky, what the tool does, why the
/// agent says it wants it, and where to decide. Agent-supplied text is quoted with its
/// hidden characters spelled out, and links are only ever the configured base.
fn text(
    a: &Approval,
    path: &str,
    verb: &str,
    description: Option<&str>,
    link: Option<&str>,
) -> String {
    let shown = |s: &str| {
        crate::approval::controls::visible(s)
            .into_iter()
            .map(|p| p.text)
            .collect::<String>()
    };
    let mut t = format!(
        "[portcullis] {} {} `{}` ({} risk) for agent {} {verb} — approval {}",
        a.method,
        shown(path),
        a.tool,
        a.risk,
        a.agent,
        a.id
    );
    if let Some(v) = crate::approval::votes_line(a).filter(|_| !a.approvals.is_empty()) {
        t.push_str(&format!(" ({v})"));
    }
    if let Some(d) = description {
        t.push_str(&format!(
            "\nTool: {}",
            shown(d.lines().next().unwrap_or(""))
        ));
    }
    if let Some(r) = &a.rationale {
        t.push_str(&format!("\nAgent's rationale: \"{}\"", shown(r)));
    }
    if let Some(l) = link {
        t.push_str(&format!("\n<{l}|Open the request>"));
    }
    t
}

/// A signal raised (`crate::signals`): its one-line text and its evidence.
pub fn signal(app: &App, s: &crate::signals::record::Signal) {
    let Some(url) = app.live.load().snap.webhook_url.clone() else {
        return;
    };
    let mut payload = s.view();
    payload["text"] = s.text().into();
    payload["event"] = "signal".into();
    payload["signal_id"] = s.id.clone().into();
    send(url, serde_json::to_vec(&payload).unwrap_or_default());
}

/// Posts `body` to `url` in the background, with retries.
fn send(url: String, body: Vec<u8>) {
    tokio::spawn(async move {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(TIMEOUT));
        let Ok(tls) = crate::upstream::tls_config(None) else {
            return;
        };
        let conn = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client: Client<_, body::Body> = Client::builder(TokioExecutor::new()).build(conn);
        for attempt in 1..=ATTEMPTS {
            let req = Request::builder()
                .method(Method::POST)
                .uri(&url)
                .header(header::CONTENT_TYPE, "application/json")
                .body(body::full(body.clone()));
            let Ok(req) = req else { return };
            match tokio::time::timeout(TIMEOUT, client.request(req)).await {
                Ok(Ok(r)) if r.status().is_success() => return,
                Ok(Ok(r)) => warn!(attempt, status = r.status().as_u16(), "webhook refused"),
                Ok(Err(e)) => warn!(attempt, error = %e, "webhook failed"),
                Err(_) => warn!(attempt, "webhook timed out"),
            }
            tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
        }
    });
}
