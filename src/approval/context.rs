//! What an operator needs around a parked request to judge it: the tool's description,
//! a line of why it has its risk, the agent's owner and tenant, who issued the
//! credential, how many requests this agent parked and had denied today, and the votes
//! still needed. Shared by the operator page, the admin API and so `approvals show`.

use super::{list, votes_line, Approval, State};
use crate::app::App;
use crate::error::Error;
use serde::Serialize;

#[derive(Debug, Clone, Default, Serialize)]
pub struct Context {
    pub description: Option<String>,
    pub risk_why: Option<&'static str>,
    pub owner: Option<String>,
    pub issued_by: Option<String>,
    /// Requests this agent parked since 00:00 UTC, and how many of those were denied.
    pub parked_today: usize,
    pub denied_today: usize,
    pub votes_line: Option<String>,
    pub expires_in_s: u64,
}

const DAY_MS: u64 = 86_400_000;

pub async fn context(app: &App, a: &Approval) -> Result<Context, Error> {
    let (description, risk_why, owner) = {
        let live = app.live.load();
        let snap = &live.snap;
        let path = a.path.split('?').next().unwrap_or("");
        (
            snap.tool_description(&a.tool).map(str::to_string),
            crate::canon::Method::parse(&a.method).and_then(|m| snap.classifier.risk_why(m, path)),
            snap.agents.get(&a.agent).and_then(|g| g.owner.clone()),
        )
    };
    let issued_by = app
        .store
        .get_token(&a.credential)
        .await?
        .map(|t| t.issued_by);
    let now = crate::store::now_ms();
    let midnight = now - now % DAY_MS;
    let today: Vec<Approval> = list(app, None)
        .await?
        .into_iter()
        .filter(|x| x.agent == a.agent && x.created_at_ms >= midnight)
        .collect();
    Ok(Context {
        description,
        risk_why,
        owner,
        issued_by,
        parked_today: today.len(),
        denied_today: today.iter().filter(|x| x.state == State::Denied).count(),
        votes_line: votes_line(a),
        expires_in_s: a.expires_at_ms.saturating_sub(now) / 1000,
    })
}
