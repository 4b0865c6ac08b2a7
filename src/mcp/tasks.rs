//! Parked calls seen from MCP. A task is an approval (task id = approval id, visible
//! only to the agent that parked it) whose status follows the approval: `working` while
//! pending, approved or executing; `completed` with the replayed upstream response;
//! `cancelled` when the agent withdrew it; `failed` when it was denied, expired, failed
//! or its outcome is unknown. `tasks/cancel` withdraws the request (the approval is
//! denied with reason `withdrawn`). Without tasks, the built-in
//! `portcullis.approval_status` tool long-polls the same record.
//!
//! Nothing here can approve: an approval is an operator's act on the admin API, never
//! something the client answers (no elicitation).

use super::call::upstream_result;
use super::transport::{Era, Rpc};
use crate::app::App;
use crate::approval::{self, rfc3339, Approval, State};
use crate::audit::Record;
use crate::error::Error;
use crate::identity::Identity;
use serde_json::{json, Value};
use std::time::Duration;

/// How often a client is asked to poll a working task.
const POLL_MS: u64 = 2000;
/// The longest `wait_seconds` honoured.
const MAX_WAIT_S: u64 = 60;

/// The MCP task status of an approval.
pub fn status_of(a: &Approval) -> &'static str {
    match a.state {
        State::Parking | State::Pending | State::Approved | State::Executing => "working",
        State::Executed => "completed",
        State::Denied if a.reason.as_deref() == Some("withdrawn") => "cancelled",
        State::Denied | State::Expired | State::Failed | State::Unknown => "failed",
    }
}

/// Words for the model about where the approval stands.
pub fn message_of(a: &Approval) -> String {
    match a.state {
        State::Parking | State::Pending => format!(
            "`{}` waits for an operator's approval (risk {}); it expires at {}",
            a.tool,
            a.risk,
            rfc3339(a.expires_at_ms)
        ),
        State::Approved => "approved by an operator; about to be sent".into(),
        State::Executing => "approved; being sent to the upstream".into(),
        State::Executed => format!(
            "approved and executed; the upstream answered {}",
            a.upstream_status.unwrap_or(0)
        ),
        State::Denied if a.reason.as_deref() == Some("withdrawn") => {
            "withdrawn by the agent before an operator decided".into()
        }
        State::Denied => format!(
            "denied by an operator: {}",
            a.detail.as_deref().unwrap_or("no reason given")
        ),
        State::Expired => "no operator decided before the approval expired".into(),
        State::Failed => format!(
            "failed ({}): {}",
            a.reason.as_deref().unwrap_or("failed"),
            a.detail.as_deref().unwrap_or("nothing was sent")
        ),
        State::Unknown => {
            "the outcome is unknown (the replay was interrupted); an operator must establish it"
                .into()
        }
    }
}

fn ttl_ms(a: &Approval) -> u64 {
    a.expires_at_ms.saturating_sub(a.created_at_ms)
}

/// The task object: 2026-07-28 (`ttlMs`, `pollIntervalMs`) or 2025-11-25 (`ttl`,
/// `pollInterval`).
pub fn task_json(a: &Approval, era: Era) -> Value {
    let mut t = json!({
        "taskId": a.id,
        "status": status_of(a),
        "statusMessage": message_of(a),
        "createdAt": rfc3339(a.created_at_ms),
        "lastUpdatedAt": rfc3339(a.updated_at_ms),
    });
    match era {
        Era::Modern => {
            t["ttlMs"] = ttl_ms(a).into();
            t["pollIntervalMs"] = POLL_MS.into();
        }
        Era::Handshake => {
            t["ttl"] = ttl_ms(a).into();
            t["pollInterval"] = POLL_MS.into();
        }
    }
    t
}

/// The created task a parked call answers with.
pub fn created(a: &Approval, era: Era) -> Value {
    match era {
        Era::Modern => {
            let mut t = task_json(a, era);
            t["resultType"] = "task".into();
            t
        }
        Era::Handshake => json!({"task": task_json(a, era)}),
    }
}

/// The result a parked call gives a client without tasks: the approval id, where to
/// poll, when it expires, and which tool waits for it.
pub fn parked_result(parked: &Value) -> Value {
    let id = parked
        .get("approval_id")
        .and_then(Value::as_str)
        .unwrap_or("");
    let expires = parked
        .get("expires_at")
        .and_then(Value::as_str)
        .unwrap_or("");
    let tool = parked.get("tool").and_then(Value::as_str).unwrap_or("");
    let text = format!(
        "Not executed yet: `{tool}` needs an operator's approval. approval_id: {id}. \
         Status URL: /_portcullis/approvals/{id}. Expires at {expires}. \
         Call the tool `{}` with {{\"approval_id\": \"{id}\"}} to wait for the decision and get the result.",
        super::tools::APPROVAL_STATUS
    );
    json!({
        "content": [{"type": "text", "text": text}],
        "isError": false,
        "_meta": {"portcullis/approval": parked},
    })
}

/// The final `CallToolResult` of a task in a terminal state (`None` while working).
pub async fn final_result(app: &App, a: &Approval) -> Result<Option<Value>, Error> {
    Ok(match a.state {
        State::Executed => {
            let d = crate::internal::stored_result(app, &a.id).await?;
            let mut r = upstream_result(d.status, &d.body, d.truncated, false);
            r["_meta"]["portcullis/approval_id"] = a.id.clone().into();
            Some(r)
        }
        State::Parking | State::Pending | State::Approved | State::Executing => None,
        _ => Some(json!({
            "content": [{"type": "text", "text": format!("Not executed: {}", message_of(a))}],
            "isError": true,
            "_meta": {"portcullis/approval_id": a.id, "portcullis/status": a.state.as_str(),
                      "portcullis/reason": a.reason},
        })),
    })
}

fn task_id(params: &Value) -> Result<&str, Rpc> {
    params
        .get("taskId")
        .and_then(Value::as_str)
        .ok_or_else(|| Rpc::invalid_params("`taskId` is required"))
}

async fn own(app: &App, who: &Identity, id: &str) -> Result<Approval, Rpc> {
    match crate::internal::own(app, who, id).await {
        Ok(a) => Ok(a),
        Err(Error::NotFound) => Err(Rpc::invalid_params(format!("no task `{id}`"))),
        Err(e) => Err(e.into()),
    }
}

/// `tasks/get`: the task; on the modern wire a terminal one carries its result or error.
pub async fn get(app: &App, who: &Identity, params: &Value, era: Era) -> Result<Value, Rpc> {
    let a = own(app, who, task_id(params)?).await?;
    let mut t = task_json(&a, era);
    if era == Era::Modern {
        match status_of(&a) {
            "completed" => {
                if let Some(r) = final_result(app, &a).await? {
                    t["result"] = r;
                }
            }
            "failed" => {
                t["error"] = json!({"code": -32010, "message": message_of(&a),
                                    "data": {"reason": a.reason, "state": a.state.as_str()}});
            }
            _ => {}
        }
    }
    Ok(t)
}

/// `tasks/result` (2025-11-25): waits for a terminal state, then the `CallToolResult`.
pub async fn result(
    app: &App,
    who: &Identity,
    params: &Value,
    deadline: Duration,
) -> Result<Value, Rpc> {
    let id = task_id(params)?;
    let until = tokio::time::Instant::now() + deadline;
    loop {
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        let a = match crate::internal::wait_for(
            app,
            who,
            id,
            Some(left.min(Duration::from_secs(MAX_WAIT_S))),
            crate::internal::Until::Change,
        )
        .await
        {
            Ok(a) => a,
            Err(Error::NotFound) => return Err(Rpc::invalid_params(format!("no task `{id}`"))),
            Err(e) => return Err(e.into()),
        };
        if let Some(mut r) = final_result(app, &a).await? {
            r["_meta"]["io.modelcontextprotocol/related-task"] = json!({"taskId": id});
            return Ok(r);
        }
        if left.is_zero() {
            return Err(Rpc::new(
                super::transport::INTERNAL_ERROR,
                "the task is still working; poll tasks/get and ask again",
            ));
        }
    }
}

/// `tasks/cancel`: the agent withdraws its request. Only a pending approval can be
/// withdrawn; the record is denied with reason `withdrawn`, durably audited.
pub async fn cancel(app: &App, who: &Identity, params: &Value, era: Era) -> Result<Value, Rpc> {
    let id = task_id(params)?;
    let a = withdraw(app, who, id).await?;
    Ok(task_json(&a, era))
}

async fn withdraw(app: &App, who: &Identity, id: &str) -> Result<Approval, Rpc> {
    own(app, who, id).await?;
    let l = approval::load(app, id)
        .await?
        .ok_or_else(|| Rpc::invalid_params(format!("no task `{id}`")))?;
    if l.a.state != State::Pending {
        return Err(Rpc::invalid_params(format!(
            "task `{id}` cannot be cancelled: it is {}",
            status_of(&l.a)
        )));
    }
    let mut n = l.a.clone();
    n.state = State::Denied;
    n.decided_by = Some(format!("agent:{}", who.agent.id));
    n.reason = Some("withdrawn".into());
    n.detail = Some("withdrawn by the requesting agent (MCP tasks/cancel)".into());
    let l2 = approval::transition(app, &l, n, None)
        .await?
        .ok_or_else(|| {
            Rpc::invalid_params(format!("task `{id}` changed concurrently; look again"))
        })?;
    metrics::gauge!("portcullis_parked").decrement(1.0);
    approval::audit(app, &l2.a, "approval_withdrawn", None, None).await;
    Ok(l2.a)
}

/// `portcullis.approval_status`: waits up to `wait_seconds` for a change, then the
/// outcome (and, once executed, the upstream's result). One audit record per call,
/// like the HTTP poll it stands for.
pub async fn approval_status(
    app: &App,
    who: &Identity,
    args: &serde_json::Map<String, Value>,
    jsonrpc_id: &Value,
    deadline: Duration,
) -> Result<Value, Rpc> {
    for k in args.keys() {
        if k != "approval_id" && k != "wait_seconds" {
            return Err(Rpc::invalid_params(format!(
                "`{}` takes no argument `{k}`",
                super::tools::APPROVAL_STATUS
            )));
        }
    }
    let id = args
        .get("approval_id")
        .and_then(Value::as_str)
        .ok_or_else(|| Rpc::invalid_params("`approval_id` (a string) is required"))?;
    let wait = match args.get("wait_seconds") {
        None | Some(Value::Null) => 30,
        Some(v) => v
            .as_u64()
            .ok_or_else(|| Rpc::invalid_params("`wait_seconds` must be a whole number"))?,
    };
    let wait = Duration::from_secs(wait.min(MAX_WAIT_S))
        .min(deadline.saturating_sub(Duration::from_secs(1)));
    let started = std::time::Instant::now();
    let found =
        crate::internal::wait_for(app, who, id, Some(wait), crate::internal::Until::Change).await;
    let record = |decision: &str, reason: &str, status: u16| Record {
        event: "request",
        request_id: Some(crate::proxy::new_request_id()),
        agent: Some(who.agent.id.clone()),
        credential: Some(who.token.record.id.clone()),
        tenant: who.agent.tenant.clone(),
        method: Some("GET".into()),
        path: Some(format!(
            "/_portcullis/approvals/{}",
            id.chars().take(64).collect::<String>()
        )),
        tool: Some(super::tools::APPROVAL_STATUS.into()),
        risk: Some("low".into()),
        decision: Some(decision.to_string().into()),
        reason: Some(reason.to_string().into()),
        policy_version: Some(app.live.load().snap.policy_version.to_string()),
        approval_id: Some(id.chars().take(64).collect()),
        status: Some(status),
        duration_us: Some(started.elapsed().as_micros() as u64),
        via: Some("mcp"),
        jsonrpc_id: Some(jsonrpc_id.to_string()),
        ..Default::default()
    };
    let a = match found {
        Ok(a) => a,
        Err(Error::NotFound) => {
            let _ = app
                .audit
                .record_durable(record("deny", "not_found", 404))
                .await;
            return Ok(json!({
                "content": [{"type": "text", "text": format!("No approval `{id}` for this agent.")}],
                "isError": true,
            }));
        }
        Err(e) => return Err(e.into()),
    };
    let _ = app.audit.record(record("allow", "granted", 200));
    let view = approval::agent_view(&a);
    Ok(match final_result(app, &a).await? {
        Some(mut r) => {
            r["_meta"]["portcullis/approval"] = view;
            r
        }
        None => json!({
            "content": [{"type": "text", "text": format!(
                "Still waiting ({}): {}. Call `{}` again to keep waiting.",
                a.state.as_str(), message_of(&a), super::tools::APPROVAL_STATUS)}],
            "isError": false,
            "_meta": {"portcullis/approval": view},
        }),
    })
}
