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
        "approvals_needed": approvals_needed(a),
        "expires_in_s": a.expires_at_ms.saturating_sub(now_ms()) / 1000,
        "rationale": a.rationale,
    })
}

/// Votes still needed before a pending request is approved (0 once it is not pending).
pub fn approvals_needed(a: &Approval) -> usize {
    if a.state == State::Pending {
        (a.required_approvals as usize).saturating_sub(a.approvals.len())
    } else {
        0
    }
}

/// "1 of 2 approvals — needs another approver", for a pending request that has votes;
/// "needs 2 approvers" for one that has none; `None` once it is not pending.
pub fn votes_line(a: &Approval) -> Option<String> {
    if a.state != State::Pending {
        return None;
    }
    let (have, need) = (a.approvals.len(), a.required_approvals as usize);
    Some(match (have, need) {
        (0, 1) => "needs an approver".to_string(),
        (0, n) => format!("needs {n} distinct approvers"),
        (h, n) if n > h + 1 => format!("{h} of {n} approvals — needs {} more approvers", n - h),
        (h, n) => format!("{h} of {n} approvals — needs another approver"),
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
    if let Some(p) = &a.preview {
        o.insert("preview".into(), preview_view(a, p, body));
    }
    v
}

/// The resource as read at park time and the change the request makes to it.
fn preview_view(a: &Approval, p: &super::preview::Preview, body: Option<&[u8]>) -> Value {
    use super::diff::{diff, Diff};
    let mut v = json!({
        "read_at": rfc3339(p.at_ms), "status": p.status, "current": p.body,
        "truncated": p.truncated, "note": p.note,
    });
    let o = v.as_object_mut().expect("object");
    let usable = p.status.is_some_and(|s| (200..300).contains(&s)) && !p.truncated;
    match (usable, &p.body, body) {
        (true, Some(cur), Some(b)) => match diff(&a.method, cur.as_bytes(), b) {
            Diff::Fields(c) => {
                o.insert("changes".into(), json!(c));
            }
            Diff::Deleted => {
                o.insert("deleted".into(), true.into());
                o.insert("changes".into(), json!([]));
            }
            Diff::Unavailable(why) => {
                o.insert("note".into(), why.into());
            }
        },
        (true, Some(_), None) if a.method == "DELETE" => {
            o.insert("deleted".into(), true.into());
            o.insert("changes".into(), json!([]));
        }
        _ => {}
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn votes_needed_are_said_plainly() {
        let raw = r#"{"id":"a","state":"pending","request_id":"r","agent":"bot","credential":"c",
            "tenant":null,"tool":"t","risk":"critical","method":"POST","path":"/x","upstream":"u",
            "headers":[],"body_len":0,"body_sha256":"","request_sha256":"","policy_version":"p",
            "created_at_ms":0,"expires_at_ms":0,"updated_at_ms":0,"required_approvals":2,
            "approvals":[],"decided_by":null,"reason":null,"detail":null,"lease":null,
            "upstream_status":null}"#;
        let mut a: Approval = serde_json::from_str(raw).unwrap();
        assert_eq!(approvals_needed(&a), 2);
        assert_eq!(votes_line(&a).unwrap(), "needs 2 distinct approvers");
        a.approvals.push(super::super::Vote {
            operator: "alice".into(),
            comment: None,
            at_ms: 1,
        });
        assert_eq!(approvals_needed(&a), 1);
        assert_eq!(
            votes_line(&a).unwrap(),
            "1 of 2 approvals — needs another approver"
        );
        a.state = State::Approved;
        assert_eq!((approvals_needed(&a), votes_line(&a)), (0, None));
        a.required_approvals = 1;
        a.approvals.clear();
        a.state = State::Pending;
        assert_eq!(votes_line(&a).unwrap(), "needs an approver");
    }
}
