//! The pending queue (oldest first, refreshing by itself, the count in the title) and the
//! history (filtered by agent, tool, state, operator and date; paged). Filters echo only
//! values the server knows (configured agents and operators, tools seen, state names,
//! dates it parsed), so no page repeats arbitrary query text.

use super::{html, page_with_script, ts, Chrome};
use crate::app::App;
use crate::approval::controls::{any_hidden, visible, Piece};
use crate::approval::{self, Approval, State};
use crate::body::Body;
use crate::cli_view::short_duration;
use crate::decode::query_param;
use crate::error::Error;
use askama::Template;
use http::{Response, StatusCode};

const PAGE: usize = 50;

pub struct Row {
    id: String,
    method: String,
    path: Vec<Piece>,
    hidden: bool,
    has_rationale: bool,
    tool: String,
    risk: String,
    agent: String,
    tenant: String,
    votes: usize,
    required: u8,
    age: String,
    left: String,
}

#[derive(Template)]
#[template(path = "ui/list.html")]
struct QueuePage {
    c: Chrome,
    rows: Vec<Row>,
    policy_version: String,
    message: Option<String>,
}

pub async fn pending(app: &App, c: Chrome) -> Result<Response<Body>, Error> {
    let now = crate::store::now_ms();
    let mut list = approval::list(app, Some(State::Pending)).await?;
    list.sort_by_key(|a| a.created_at_ms);
    let rows = list
        .into_iter()
        .map(|a| Row {
            age: short_duration(now.saturating_sub(a.created_at_ms) / 1000),
            left: short_duration(a.expires_at_ms.saturating_sub(now) / 1000),
            votes: a.approvals.len(),
            required: a.required_approvals,
            tenant: a.tenant.unwrap_or_else(|| "-".into()),
            risk: a.risk.to_string(),
            hidden: any_hidden(&visible(&a.path)),
            has_rationale: a.rationale.is_some(),
            path: visible(&a.path),
            id: a.id,
            method: a.method,
            tool: a.tool,
            agent: a.agent,
        })
        .collect();
    let policy_version = app.live.load().snap.policy_version.to_string();
    let nonce = c.nonce.clone();
    page_with_script(
        StatusCode::OK,
        &QueuePage {
            c,
            rows,
            policy_version,
            message: None,
        },
        Some(&nonce),
    )
}

pub struct HistoryRow {
    id: String,
    method: String,
    path: Vec<Piece>,
    tool: String,
    risk: String,
    agent: String,
    state: String,
    decided_by: String,
    created: String,
}

#[derive(Template)]
#[template(path = "ui/history.html")]
struct HistoryPage {
    c: Chrome,
    heading: String,
    rows: Vec<HistoryRow>,
    agents: Vec<(String, bool)>,
    tools: Vec<(String, bool)>,
    states: Vec<(String, bool)>,
    operators: Vec<(String, bool)>,
    from: String,
    to: String,
    total: usize,
    page: usize,
    pages: usize,
    prev: Option<String>,
    next: Option<String>,
}

/// `YYYY-MM-DD` as the UTC midnight it starts, in ms.
fn day_ms(s: &str) -> Option<u64> {
    let t = humantime::parse_rfc3339(&format!("{s}T00:00:00Z")).ok()?;
    Some(t.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis() as u64)
}

fn voted_or_decided(a: &Approval, op: &str) -> bool {
    a.approvals.iter().any(|v| v.operator == op)
        || a.decided_by
            .as_deref()
            .is_some_and(|d| d.split(',').any(|x| x == op))
}

/// `(value, selected)` options from known values; the wanted one only if known.
fn options(known: Vec<String>, wanted: &Option<String>) -> (Vec<(String, bool)>, Option<String>) {
    let chosen = wanted.clone().filter(|w| known.contains(w));
    let opts = known
        .into_iter()
        .map(|k| {
            let on = chosen.as_deref() == Some(k.as_str());
            (k, on)
        })
        .collect();
    (opts, chosen)
}

pub async fn history(app: &App, c: Chrome, query: &str) -> Result<Response<Body>, Error> {
    let q = |k: &str| query_param(query, k).filter(|v| !v.is_empty());
    let all = approval::list(app, None).await?;
    let (agent_names, operator_names) = {
        let live = app.live.load();
        let mut a: Vec<String> = live.snap.agents.keys().cloned().collect();
        a.sort();
        let o: Vec<String> = live.snap.operators.iter().map(|o| o.name.clone()).collect();
        (a, o)
    };
    let mut tool_names: Vec<String> = all.iter().map(|a| a.tool.clone()).collect();
    tool_names.sort();
    tool_names.dedup();
    let state_names: Vec<String> = [
        "pending",
        "approved",
        "executing",
        "executed",
        "failed",
        "denied",
        "expired",
        "unknown",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (agents, agent) = options(agent_names, &q("agent"));
    let (tools, tool) = options(tool_names, &q("tool"));
    let (states, state) = options(state_names, &q("state"));
    let (operators, operator) = options(operator_names, &q("operator"));
    let from_ms = q("from").as_deref().and_then(day_ms);
    let to_ms = q("to").as_deref().and_then(day_ms).map(|t| t + 86_400_000);
    let show_day = |ms: Option<u64>, minus: u64| {
        ms.map(|m| ts(m - minus).chars().take(10).collect::<String>())
            .unwrap_or_default()
    };
    let (from, to) = (show_day(from_ms, 0), show_day(to_ms, 86_400_000));
    let matching: Vec<Approval> = all
        .into_iter()
        .filter(|a| agent.as_deref().is_none_or(|x| a.agent == x))
        .filter(|a| tool.as_deref().is_none_or(|x| a.tool == x))
        .filter(|a| state.as_deref().is_none_or(|x| a.state.as_str() == x))
        .filter(|a| operator.as_deref().is_none_or(|x| voted_or_decided(a, x)))
        .filter(|a| from_ms.is_none_or(|f| a.created_at_ms >= f))
        .filter(|a| to_ms.is_none_or(|t| a.created_at_ms < t))
        .collect();
    let total = matching.len();
    let pages = total.div_ceil(PAGE).max(1);
    let page = q("page")
        .and_then(|p| p.parse::<usize>().ok())
        .unwrap_or(1)
        .clamp(1, pages);
    // Links carry only the values the server accepted.
    let link = |p: usize| {
        let mut parts = vec![format!("page={p}")];
        for (k, v) in [
            ("agent", &agent),
            ("tool", &tool),
            ("state", &state),
            ("operator", &operator),
        ] {
            if let Some(v) = v {
                parts.push(format!("{k}={}", crate::mcp::call::encode(v)));
            }
        }
        for (k, v) in [("from", &from), ("to", &to)] {
            if !v.is_empty() {
                parts.push(format!("{k}={v}"));
            }
        }
        format!("/ui/history?{}", parts.join("&"))
    };
    let rows = matching
        .into_iter()
        .skip((page - 1) * PAGE)
        .take(PAGE)
        .map(|a| HistoryRow {
            path: visible(&a.path),
            created: ts(a.created_at_ms),
            decided_by: a.decided_by.clone().unwrap_or_else(|| "-".into()),
            state: a.state.as_str().into(),
            risk: a.risk.to_string(),
            id: a.id,
            method: a.method,
            tool: a.tool,
            agent: a.agent,
        })
        .collect();
    let (prev, next) = (
        (page > 1).then(|| link(page - 1)),
        (page < pages).then(|| link(page + 1)),
    );
    let heading = match &state {
        Some(s) => format!("Approvals: {s}"),
        None => "History".into(),
    };
    html(
        StatusCode::OK,
        &HistoryPage {
            c,
            heading,
            rows,
            agents,
            tools,
            states,
            operators,
            from,
            to,
            total,
            page,
            pages,
            prev,
            next,
        },
    )
}
