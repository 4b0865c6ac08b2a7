//! Every approval event read back from the audit trail, on the embedded store and on a
//! real `redis-server`: `approval_vote` and `approval_approved` (two-person approval of a
//! critical tool), `replay_executed` (with the upstream's status and the approvers),
//! `approval_denied`, `replay_failed` (the gate re-run at replay), `replay_unknown` (the
//! upstream timed out after the request was written) and `approval_resolved` — each with
//! its decision, reason, operator, comment and `upstream_status`, each linked to its park
//! record by approval id, request id and policy version, in the order they happened, and
//! the trail still one verifiable chain.

use crate::common::{Proxy, Resp};
use crate::support::approvals::*;
use crate::support::audit::{out_text, verify};
use crate::support::redis::{random_prefix, RedisServer};
use crate::support::trail::{check_event, event_now, events_of, park_record, wait_event, Ev};
use serde_json::json;

const TRAIL: &str = "data/audit.jsonl";

/// A proxy on `store` in front of `up`; `upstream_extra` is one more key of the upstream
/// `api` (e.g. `timeouts: { response: 1s }`).
fn proxy(
    node: &str,
    up: &ReplayUpstream,
    store: &str,
    upstream_extra: &str,
    env: &[(&str, &str)],
) -> Proxy {
    let mut cfg = config(node, store, &up.url(), "");
    if !upstream_extra.is_empty() {
        let anchor = "    tenant_header: X-Tenant-Id\n";
        assert!(cfg.contains(anchor), "the approvals config changed shape");
        cfg = cfg.replacen(anchor, &format!("{anchor}    {upstream_extra}\n"), 1);
    }
    let mut e = vec![("API_KEY", UPSTREAM_KEY)];
    e.extend_from_slice(env);
    Proxy::start(&cfg, &e)
}

async fn decide(p: &Proxy, who: &str, id: &str, verb: &str, body: serde_json::Value) -> Resp {
    let r = admin(
        p.admin,
        who,
        "POST",
        &format!("/approvals/{id}/{verb}"),
        Some(&body),
    )
    .await;
    assert_eq!(r.status, 200, "{verb} {id}: {}", r.text());
    r
}

/// Parks `POST path` as `token` on `p`; returns the approval id and its park record,
/// checked against the 202 (request id) and the policy in force.
async fn park_checked(
    p: &Proxy,
    token: &str,
    token_id: &str,
    path: &str,
) -> (String, serde_json::Value) {
    let r = agent_call(p.addr, token, "POST", path, &[], b"{\"k\":1}").await;
    let id = approval_id(&check_parked(&format!("POST {path}"), &r));
    let park = park_record(&p.path(TRAIL), &id);
    assert_eq!(
        park["request_id"].as_str(),
        r.header("x-request-id"),
        "the park record's request_id is the agent's X-Request-Id: {park}"
    );
    let pv = admin(p.admin, ALICE, "GET", "/policy", None).await.json()["policy_version"].clone();
    assert!(pv.is_string(), "GET /policy: {pv}");
    assert_eq!(park["policy_version"], pv, "{park}");
    assert_eq!(park["credential"].as_str(), Some(token_id), "{park}");
    assert_eq!(park["reason"].as_str(), Some("approval_required"), "{park}");
    let v = view(p.admin, &id).await;
    for k in ["request_id", "policy_version"] {
        assert_eq!(
            park[k], v[k],
            "`{k}`: the park record and GET /approvals/{id} differ"
        );
    }
    (id, park)
}

fn assert_events(trail: &std::path::Path, id: &str, want: &[&str]) {
    assert_eq!(
        events_of(trail, id),
        want,
        "the records of approval {id}, in trail order"
    );
}

async fn approval_events_read_back(stores: [String; 2], env: &[(&str, &str)]) {
    let up = ReplayUpstream::start().await;
    let held = ReplayUpstream::start_holding().await;
    let p = proxy("trail-a", &up, &stores[0], "", env);
    let q = proxy(
        "trail-b",
        &held,
        &stores[1],
        "timeouts: { response: 1s }",
        env,
    );
    let trail = p.path(TRAIL);
    let (bot, bot_id) = issue(p.admin, "bot").await;

    // Two-person approval of a critical tool: a vote, the deciding approval, the replay.
    let (id, park) = park_checked(&p, &bot, &bot_id, "/tickets/11/refund").await;
    decide(&p, ALICE, &id, "approve", json!({"comment": "first look"})).await;
    let vote = event_now(&trail, &id, "approval_vote");
    check_event(
        &vote,
        &park,
        &Ev {
            event: "approval_vote",
            decision: "pending",
            reason: None,
            operator: Some("alice"),
            comment: Some("first look"),
            upstream_status: None,
        },
    );
    decide(&p, BOB, &id, "approve", json!({"comment": "second look"})).await;
    check_event(
        &event_now(&trail, &id, "approval_approved"),
        &park,
        &Ev {
            event: "approval_approved",
            decision: "approved",
            reason: None,
            operator: Some("bob"),
            comment: Some("second look"),
            upstream_status: None,
        },
    );
    wait_state(p.admin, &id, "executed", BOUND).await;
    check_event(
        &wait_event(&trail, &id, "replay_executed").await,
        &park,
        &Ev {
            event: "replay_executed",
            decision: "executed",
            reason: None,
            operator: Some("alice,bob"),
            comment: None,
            upstream_status: Some(RESULT_STATUS),
        },
    );
    assert_events(
        &trail,
        &id,
        &[
            "request",
            "approval_vote",
            "approval_approved",
            "replay_executed",
        ],
    );

    // A denial: the operator's reason is the comment.
    let (id, park) = park_checked(&p, &bot, &bot_id, "/tickets/12/close").await;
    decide(&p, ALICE, &id, "deny", json!({"reason": "wrong customer"})).await;
    check_event(
        &event_now(&trail, &id, "approval_denied"),
        &park,
        &Ev {
            event: "approval_denied",
            decision: "denied",
            reason: Some("denied_by_operator"),
            operator: Some("alice"),
            comment: Some("wrong customer"),
            upstream_status: None,
        },
    );
    assert_events(&trail, &id, &["request", "approval_denied"]);

    // A replay the gate refuses (the agent was disabled after the park): failed, with the
    // detail the operators see as the comment, and the approver named.
    let (bot2, bot2_id) = issue(p.admin, "bot2").await;
    let (id, park) = park_checked(&p, &bot2, &bot2_id, "/tickets/13/close").await;
    let r = admin(p.admin, ISSUER, "POST", "/agents/bot2/disable", None).await;
    assert_eq!(r.status, 200, "disable bot2: {}", r.text());
    decide(&p, BOB, &id, "approve", json!({"comment": "fine by me"})).await;
    check_event(
        &event_now(&trail, &id, "approval_approved"),
        &park,
        &Ev {
            event: "approval_approved",
            decision: "approved",
            reason: None,
            operator: Some("bob"),
            comment: Some("fine by me"),
            upstream_status: None,
        },
    );
    let v = wait_state(p.admin, &id, "failed", BOUND).await;
    assert_eq!(v["reason"], "policy_changed", "{v}");
    let detail = v["detail"].as_str().unwrap_or_default().to_string();
    assert!(!detail.is_empty(), "a failed replay says why: {v}");
    check_event(
        &wait_event(&trail, &id, "replay_failed").await,
        &park,
        &Ev {
            event: "replay_failed",
            decision: "failed",
            reason: Some("policy_changed"),
            operator: Some("bob"),
            comment: Some(&detail),
            upstream_status: None,
        },
    );
    assert_events(
        &trail,
        &id,
        &["request", "approval_approved", "replay_failed"],
    );
    assert_eq!(
        up.hits(),
        1,
        "only the executed approval reached the upstream"
    );

    // On Q the upstream takes the replay and never answers within `timeouts.response`:
    // unknown (never retried), then an operator resolves it.
    let qtrail = q.path(TRAIL);
    let (qbot, qbot_id) = issue(q.admin, "bot").await;
    let (id, park) = park_checked(&q, &qbot, &qbot_id, "/tickets/14/close").await;
    decide(&q, ALICE, &id, "approve", json!({"comment": "go ahead"})).await;
    check_event(
        &event_now(&qtrail, &id, "approval_approved"),
        &park,
        &Ev {
            event: "approval_approved",
            decision: "approved",
            reason: None,
            operator: Some("alice"),
            comment: Some("go ahead"),
            upstream_status: None,
        },
    );
    let v = wait_state(q.admin, &id, "unknown", BOUND).await;
    assert_eq!(v["reason"], "outcome_unknown", "{v}");
    let detail = v["detail"].as_str().unwrap_or_default().to_string();
    assert!(!detail.is_empty(), "an unknown outcome says why: {v}");
    check_event(
        &wait_event(&qtrail, &id, "replay_unknown").await,
        &park,
        &Ev {
            event: "replay_unknown",
            decision: "unknown",
            reason: Some("outcome_unknown"),
            operator: Some("alice"),
            comment: Some(&detail),
            upstream_status: None,
        },
    );
    decide(
        &q,
        BOB,
        &id,
        "resolve",
        json!({"outcome": "failed", "comment": "the ledger shows no close"}),
    )
    .await;
    check_event(
        &event_now(&qtrail, &id, "approval_resolved"),
        &park,
        &Ev {
            event: "approval_resolved",
            decision: "failed",
            reason: Some("resolved_by_operator"),
            operator: Some("bob"),
            comment: Some("the ledger shows no close"),
            upstream_status: None,
        },
    );
    assert_events(
        &qtrail,
        &id,
        &[
            "request",
            "approval_approved",
            "replay_unknown",
            "approval_resolved",
        ],
    );
    assert_eq!(
        held.hits(),
        1,
        "the unknown replay was sent once, never retried"
    );
    held.release();

    for t in [&trail, &qtrail] {
        let o = verify(std::slice::from_ref(t), &[], &[]);
        assert!(o.status.success(), "{}", out_text(&o));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn approval_events_are_read_back_from_the_trail_embedded() {
    approval_events_read_back([EMBEDDED.to_string(), EMBEDDED.to_string()], &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn approval_events_are_read_back_from_the_trail_redis() {
    let redis = RedisServer::start();
    let url = redis.url();
    approval_events_read_back(
        [redis_store(&random_prefix()), redis_store(&random_prefix())],
        &[("REDIS_URL", &url)],
    )
    .await;
}
