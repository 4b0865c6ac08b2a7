//! The Agents pages: every configured agent with its profile, owner, tenant and state;
//! one agent's tool table (may call / may request / denied, with risk), its
//! credentials (issue with TTL and narrowing, revoke — admin role), and its recent
//! denied approvals. Issuing shows the secret once, on the answer to the POST itself.

use super::{html, redirect, ts, Chrome};
use crate::app::App;
use crate::approval::controls::{visible, Piece};
use crate::approval::{self, State};
use crate::body::Body;
use crate::error::Error;
use crate::store::TokenRecord;
use askama::Template;
use http::{Response, StatusCode};
use std::collections::HashMap;

pub struct AgentRow {
    id: String,
    profile: String,
    owner: String,
    tenant: String,
    state: String,
    active_tokens: usize,
}

#[derive(Template)]
#[template(path = "ui/agents.html")]
struct AgentsPage {
    c: Chrome,
    agents: Vec<AgentRow>,
}

pub struct ToolRow {
    name: String,
    method: String,
    template: String,
    risk: String,
    posture: &'static str,
}

pub struct TokenRow {
    id: String,
    state: &'static str,
    expires: String,
    narrowing: String,
    issued_by: String,
}

#[derive(Template)]
#[template(path = "ui/agent.html")]
struct AgentPage {
    c: Chrome,
    g: AgentRow,
    tools: Vec<ToolRow>,
    tokens: Vec<TokenRow>,
    denials: Vec<(String, Vec<Piece>, Vec<Piece>)>,
    message: Option<String>,
    /// A credential just issued: (id, secret), shown once.
    secret: Option<(String, String)>,
}

fn token_state(t: &TokenRecord, now: u64) -> &'static str {
    if t.revoked {
        "revoked"
    } else if now >= t.expires_at_ms {
        "expired"
    } else {
        "active"
    }
}

async fn rows(app: &App) -> Result<Vec<AgentRow>, Error> {
    let sw = app.store.switches().await?;
    let tokens = app.store.list_tokens().await?;
    let now = crate::store::now_ms();
    let live = app.live.load();
    let mut out: Vec<AgentRow> = live
        .snap
        .agents
        .values()
        .map(|a| AgentRow {
            id: a.id.clone(),
            profile: a.profile.name.clone(),
            owner: a.owner.clone().unwrap_or_else(|| "-".into()),
            tenant: a.tenant.clone().unwrap_or_else(|| "-".into()),
            state: if sw.disabled_agents.contains(&a.id) {
                "disabled".into()
            } else if sw.paused_agents.contains(&a.id) {
                "paused".into()
            } else {
                "enabled".into()
            },
            active_tokens: tokens
                .iter()
                .filter(|t| t.agent == a.id && token_state(t, now) == "active")
                .count(),
        })
        .collect();
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

pub async fn list(app: &App, c: Chrome) -> Result<Response<Body>, Error> {
    let agents = rows(app).await?;
    html(StatusCode::OK, &AgentsPage { c, agents })
}

pub async fn page(
    app: &App,
    c: Chrome,
    id: &str,
    message: Option<String>,
    secret: Option<(String, String)>,
) -> Result<Response<Body>, Error> {
    let g = rows(app)
        .await?
        .into_iter()
        .find(|g| g.id == id)
        .ok_or(Error::NotFound)?;
    let tools = {
        let live = app.live.load();
        crate::tooltable::rows(&live.snap)
            .into_iter()
            .filter_map(|r| {
                let has = |v: &[String]| v.iter().any(|x| x == id);
                let posture = if has(&r.allow) {
                    "may call"
                } else if has(&r.park) {
                    "may request (approval)"
                } else if has(&r.deny) {
                    "denied"
                } else {
                    return None;
                };
                Some(ToolRow {
                    name: r.tool,
                    method: r.method,
                    template: r.template,
                    risk: r.risk,
                    posture,
                })
            })
            .collect()
    };
    let now = crate::store::now_ms();
    let mut tokens: Vec<TokenRecord> = app
        .store
        .list_tokens()
        .await?
        .into_iter()
        .filter(|t| t.agent == id)
        .collect();
    tokens.sort_by_key(|t| std::cmp::Reverse(t.created_at_ms));
    let tokens = tokens
        .iter()
        .map(|t| TokenRow {
            id: t.id.clone(),
            state: token_state(t, now),
            expires: ts(t.expires_at_ms),
            narrowing: {
                let mut n = Vec::new();
                if let Some(tools) = &t.tools {
                    n.push(format!("tools {}", tools.join(", ")));
                }
                if let Some(r) = t.max_risk {
                    n.push(format!("risk ≤ {r}"));
                }
                if let Some(m) = t.max_calls {
                    n.push(format!("{m} calls"));
                }
                if n.is_empty() {
                    "-".into()
                } else {
                    n.join("; ")
                }
            },
            issued_by: t.issued_by.clone(),
        })
        .collect();
    let denials = approval::list(app, Some(State::Denied))
        .await?
        .into_iter()
        .filter(|a| a.agent == id)
        .take(10)
        .map(|a| {
            (
                a.id.clone(),
                visible(&format!("{} {}", a.method, a.path)),
                visible(&format!(
                    "denied by {}: {}",
                    a.decided_by.as_deref().unwrap_or("-"),
                    a.detail.as_deref().unwrap_or("-")
                )),
            )
        })
        .collect();
    html(
        StatusCode::OK,
        &AgentPage {
            c,
            g,
            tools,
            tokens,
            denials,
            message,
            secret,
        },
    )
}

pub async fn issue(
    app: &App,
    c: Chrome,
    id: &str,
    f: &HashMap<String, String>,
) -> Result<Response<Body>, Error> {
    if !c.admin {
        return Err(Error::Forbidden(format!(
            "`{}` lacks the admin role",
            c.operator
        )));
    }
    let get = |k: &str| {
        f.get(k)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let tools = get("tools").map(|t| {
        t.split(',')
            .map(|x| x.trim().to_string())
            .filter(|x| !x.is_empty())
            .collect::<Vec<_>>()
    });
    let body = crate::admin::IssueBody {
        agent: id.to_string(),
        ttl: get("ttl"),
        tools,
        max_risk: get("max_risk"),
        max_calls: None,
    };
    let op = c.operator.clone();
    match crate::admin::issue_token(app, op, body).await {
        Ok(v) => {
            let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string();
            let msg = v.get("warnings").and_then(|w| w.as_array()).map(|w| {
                w.iter()
                    .filter_map(|x| x.as_str())
                    .collect::<Vec<_>>()
                    .join(" ")
            });
            page(app, c, id, msg, Some((s("id"), s("secret")))).await
        }
        Err(e) => {
            let m = format!("Not issued ({}).", e.reason());
            page(app, c, id, Some(m), None).await
        }
    }
}

pub async fn revoke(app: &App, c: Chrome, id: &str, token: &str) -> Result<Response<Body>, Error> {
    if !c.admin {
        return Err(Error::Forbidden(format!(
            "`{}` lacks the admin role",
            c.operator
        )));
    }
    let t = app.store.get_token(token).await?.ok_or(Error::NotFound)?;
    if t.agent != id {
        return Err(Error::NotFound);
    }
    crate::admin::revoke_token(app, &c.operator, token).await?;
    redirect(&format!("/ui/agents/{id}"), None)
}
