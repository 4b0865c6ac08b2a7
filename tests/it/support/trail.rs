//! Reading an approval's history back from the audit trail: its park record (event
//! `request`, decision `park`) and its approval events (`approval_vote`,
//! `approval_approved`, `approval_denied`, `approval_resolved`, `replay_executed`,
//! `replay_failed`, `replay_unknown`, …), each checked for what it must say (decision,
//! reason, operator, comment, upstream status) and for the fields that link it to the
//! park record (approval id, request id, policy version, who, what).
#![allow(dead_code)]

use crate::support::audit::{assert_schema, records_of, RECORD_BOUND};
use serde_json::Value;
use std::path::Path;

/// Every record of approval `id` in the trail at `path` (its park record and its
/// events), in trail order.
pub fn of_approval(path: &Path, id: &str) -> Vec<Value> {
    records_of(path)
        .into_iter()
        .filter(|r| r["approval_id"].as_str() == Some(id))
        .collect()
}

/// The `event` names of approval `id`'s records, in trail order.
pub fn events_of(path: &Path, id: &str) -> Vec<String> {
    of_approval(path, id)
        .iter()
        .map(|r| r["event"].as_str().unwrap_or("?").to_string())
        .collect()
}

fn one(path: &Path, id: &str, pred: impl Fn(&Value) -> bool, what: &str) -> Option<Value> {
    let found: Vec<Value> = of_approval(path, id).into_iter().filter(pred).collect();
    match found.len() {
        0 => None,
        1 => found.into_iter().next(),
        n => panic!(
            "{n} `{what}` records for approval {id} in {} (want exactly one): {found:#?}",
            path.display()
        ),
    }
}

fn is_park(r: &Value) -> bool {
    r["event"] == "request" && r["decision"] == "park"
}

/// The park record of approval `id` (exactly one; it is durable before the 202).
pub fn park_record(path: &Path, id: &str) -> Value {
    one(path, id, is_park, "park").unwrap_or_else(|| {
        panic!(
            "no park record for approval {id} in {}:\n{}",
            path.display(),
            std::fs::read_to_string(path).unwrap_or_default()
        )
    })
}

/// The one `event` record of approval `id` on disk now, without waiting: for events the
/// admin API writes (durably) before it answers.
pub fn event_now(path: &Path, id: &str, event: &str) -> Value {
    one(path, id, |r| r["event"] == event, event).unwrap_or_else(|| {
        panic!(
            "no `{event}` record for approval {id} in {} when the admin API answered; its \
             records: {:?}",
            path.display(),
            events_of(path, id)
        )
    })
}

/// The one `event` record of approval `id`, waited for (bounded): for events written by
/// the proxy on its own (replays, the sweeper) after the state changed.
pub async fn wait_event(path: &Path, id: &str, event: &str) -> Value {
    crate::common::eventually(
        &format!("a `{event}` record for approval {id} in {}", path.display()),
        RECORD_BOUND,
        || async move {
            one(path, id, |r| r["event"] == event, event)
                .ok_or_else(|| format!("its records: {:?}", events_of(path, id)))
        },
    )
    .await
}

/// What one approval event must say. `None` means the field is null.
pub struct Ev<'a> {
    pub event: &'a str,
    /// The approval's state after the event.
    pub decision: &'a str,
    pub reason: Option<&'a str>,
    pub operator: Option<&'a str>,
    pub comment: Option<&'a str>,
    pub upstream_status: Option<u16>,
}

/// Fields an approval event carries over from its park record unchanged.
pub const LINKS: &[&str] = &[
    "approval_id",
    "request_id",
    "policy_version",
    "agent",
    "credential",
    "tenant",
    "tool",
    "risk",
    "method",
    "path",
    "body_sha256",
];

/// Checks approval event `rec` against `want`, and that it names the same approval,
/// request id, policy version, agent, credential and request as `park`. (Callers check
/// the order with [`events_of`] where both are in one trail.)
pub fn check_event(rec: &Value, park: &Value, want: &Ev) {
    let what = format!("`{}` of approval {}", want.event, park["approval_id"]);
    assert_schema(&what, rec);
    assert!(
        rec.as_object().is_some_and(|o| o.contains_key("comment")),
        "{what}: no `comment` field in {rec}"
    );
    assert_eq!(rec["event"].as_str(), Some(want.event), "{what}: {rec}");
    assert_eq!(
        rec["decision"].as_str(),
        Some(want.decision),
        "{what}: decision in {rec}"
    );
    assert_eq!(
        rec["reason"].as_str(),
        want.reason,
        "{what}: reason in {rec}"
    );
    assert_eq!(
        rec["operator"].as_str(),
        want.operator,
        "{what}: operator in {rec}"
    );
    assert_eq!(
        rec["comment"].as_str(),
        want.comment,
        "{what}: comment in {rec}"
    );
    assert_eq!(
        rec["upstream_status"].as_u64(),
        want.upstream_status.map(u64::from),
        "{what}: upstream_status in {rec}"
    );
    for k in LINKS {
        assert!(
            park[*k].is_string(),
            "{what}: the park record has no `{k}`: {park}"
        );
        assert_eq!(
            rec[*k], park[*k],
            "{what}: `{k}` differs from the park record {park}; event {rec}"
        );
    }
}
