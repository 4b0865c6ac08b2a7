//! JSON shapes of an approval: what the requesting agent sees, and what operators see.

use super::{rfc3339, Approval, State};
use crate::store::now_ms;
use base64::Engine;
use serde_json::{json, Value};

/// `GET /_portcullis/approvals/{id}` for the agent that parked it.
pub fn agent_view(a: &Approval) -> Value {
    let mut v = json!({
        "approval_id": a.id, "status": a.state.as_str(), "tool": a.tool, "risk": a.risk,
        "created_at": rfc3339(a.created_at_ms), "expires_at": rfc3339(a.expires_at_ms),
    });
    let o = v.as_object_mut().expect("object");
    if let Some(s) = a.upstream_status {
        o.insert("upstream_status".into(), s.into());
    }
    if let Some(r) = &a.reason {
        o.insert("reason".into(), r.as_str().into());
    }
    if a.state == State::Executed {
        o.insert(
            "result".into(),
            format!("/_portcullis/approvals/{}/result", a.id).into(),
        );
    }
    v
}

/// A row of `GET /approvals`.
pub fn summary_view(a: &Approval) -> Value {
    json!({
        "id": a.id, "state": a.state.as_str(), "agent": a.agent, "tenant": a.tenant, "tool": a.tool,
        "risk": a.risk, "method": a.method, "path": a.path, "request_sha256": a.request_sha256,
        "created_at": rfc3339(a.created_at_ms), "expires_at": rfc3339(a.expires_at_ms),
        "age_s": now_ms().saturating_sub(a.created_at_ms) / 1000,
        "approvals": a.approvals.iter().map(|v| v.operator.clone()).collect::<Vec<_>>(),
        "required_approvals": a.required_approvals,
    })
}

/// `GET /approvals/{id}`: the request as it will be sent, its hash, and its history.
pub fn operator_view(a: &Approval, body: Option<&[u8]>) -> Value {
    let mut v = summary_view(a);
    let o = v.as_object_mut().expect("object");
    o.insert("request_id".into(), a.request_id.clone().into());
    o.insert("credential".into(), a.credential.clone().into());
    o.insert("upstream".into(), a.upstream.clone().into());
    o.insert("upstream_uri".into(), json!(a.upstream_uri));
    o.insert("headers".into(), json!(a.headers));
    o.insert("body_sha256".into(), a.body_sha256.clone().into());
    o.insert("body_len".into(), a.body_len.into());
    if let Some(b) = body {
        match std::str::from_utf8(b) {
            Ok(s) => {
                o.insert("body".into(), s.into());
                o.insert("body_encoding".into(), "utf-8".into());
            }
            Err(_) => {
                o.insert(
                    "body".into(),
                    base64::engine::general_purpose::STANDARD.encode(b).into(),
                );
                o.insert("body_encoding".into(), "base64".into());
            }
        }
    }
    o.insert("policy_version".into(), a.policy_version.clone().into());
    if let Some(c) = &a.condition {
        o.insert("condition".into(), c.as_str().into());
    }
    o.insert("votes".into(), json!(a.approvals));
    o.insert("decided_by".into(), json!(a.decided_by));
    o.insert("reason".into(), json!(a.reason));
    o.insert("detail".into(), json!(a.detail));
    o.insert("upstream_status".into(), json!(a.upstream_status));
    o.insert("lease".into(), json!(a.lease));
    v
}
