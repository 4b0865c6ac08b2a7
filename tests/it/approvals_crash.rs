//! Approvals across process deaths on the embedded store: a proxy SIGKILLed while the
//! upstream is answering its replay leaves the approval `unknown` after a restart (never
//! a second call) until an operator resolves it; pending approvals survive a graceful
//! restart with their expiries; and on a shared redis store, a replica that dies holding
//! the lease leaves it to another replica to turn the expired lease into `unknown`.

use crate::common::Proxy;
use crate::support::approvals::*;
use crate::support::audit::{out_text, verify};
use crate::support::redis::{random_prefix, RedisServer};
use crate::support::trail::{check_event, event_now, events_of, park_record, wait_event, Ev};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;

/// A config on an embedded store outside the proxy's own temp dir, so a second process
/// (same `node:`) opens the same store.
fn shared_store_config(store_dir: &tempfile::TempDir, node: &str, up: &ReplayUpstream) -> String {
    let store = format!(
        "{{ embedded: \"{}\" }}",
        store_dir.path().join("portcullis.redb").display()
    );
    config(node, &store, &up.url(), "")
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_killed_during_replay_leaves_unknown_then_resolve_records_it() {
    let up = ReplayUpstream::start_holding().await;
    let store_dir = tempfile::tempdir().expect("tempdir");
    let cfg = shared_store_config(&store_dir, "crash-node", &up);
    let env = [("API_KEY", UPSTREAM_KEY)];

    let mut first = Proxy::start(&cfg, &env);
    let (bot, _) = issue(first.admin, "bot").await;
    let id = approval_id(&park(&first, &bot, "/tickets/80/close", &[], b"{\"k\":80}").await);
    let r = approve(first.admin, ALICE, &id, None).await;
    assert_eq!(r.status, 200, "approve: {}", r.text());

    // The upstream has the replay (and holds its answer); the proxy holds the lease.
    assert!(
        up.wait_got(1, BOUND).await,
        "the replay never reached the upstream; log:\n{}",
        first.logs()
    );
    let v = view(first.admin, &id).await;
    assert_eq!(v["state"], "executing", "{v}");

    sigkill(&first);
    assert!(
        first.wait_exit(BOUND).await.is_some(),
        "the proxy survived SIGKILL"
    );
    // Now the upstream answers — to nobody.
    up.release();

    // The first process's trail: the park and the approval, durable before their
    // answers; no replay outcome (it died before storing one).
    let first_trail = first.path("data/audit.jsonl");
    let park = park_record(&first_trail, &id);
    check_event(
        &event_now(&first_trail, &id, "approval_approved"),
        &park,
        &Ev {
            event: "approval_approved",
            decision: "approved",
            reason: None,
            operator: Some("alice"),
            comment: None,
            upstream_status: None,
        },
    );
    assert_eq!(
        events_of(&first_trail, &id),
        ["request", "approval_approved"],
        "the killed process's records of {id}"
    );

    let second = Proxy::start(&cfg, &env);
    let v = wait_state(second.admin, &id, "unknown", BOUND).await;
    assert_eq!(v["reason"], "outcome_unknown", "{v}");
    let detail = v["detail"].as_str().unwrap_or_default().to_string();
    assert!(!detail.is_empty(), "an unknown outcome says why: {v}");
    assert_eq!(
        up.hits(),
        1,
        "the restarted proxy called the upstream again"
    );
    // The restarted process records what it found, naming the approver.
    let second_trail = second.path("data/audit.jsonl");
    check_event(
        &wait_event(&second_trail, &id, "replay_unknown").await,
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

    // The agent sees `unknown` and no result; nobody can approve it again.
    let s = agent_status(&second, &bot, &id, None).await;
    assert_eq!(s.status, 200, "{}", s.text());
    assert_eq!(s.json()["status"], "unknown", "{}", s.text());
    let r = agent_call(
        second.addr,
        &bot,
        "GET",
        &format!("/_portcullis/approvals/{id}/result"),
        &[],
        b"",
    )
    .await;
    assert_ne!(
        r.status,
        200,
        "a result for an unknown outcome: {}",
        r.text()
    );
    let r = approve(second.admin, BOB, &id, None).await;
    assert_eq!(r.status, 409, "approving an unknown outcome: {}", r.text());

    // A human establishes what happened.
    let resolve = |who: &'static str, outcome: &'static str| {
        let id = id.clone();
        let admin_addr = second.admin;
        async move {
            admin(
                admin_addr,
                who,
                "POST",
                &format!("/approvals/{id}/resolve"),
                Some(&json!({"outcome": outcome, "comment": "the ledger shows the close"})),
            )
            .await
        }
    };
    let r = resolve(CAROL, "executed").await;
    assert_eq!(r.status, 403, "resolve as a viewer: {}", r.text());
    let r = resolve(ALICE, "executed").await;
    assert_eq!(r.status, 200, "resolve: {}", r.text());
    let v = view(second.admin, &id).await;
    assert_eq!(v["state"], "executed", "{v}");
    // The resolution is on the trail before the answer: who, what, and why.
    check_event(
        &event_now(&second_trail, &id, "approval_resolved"),
        &park,
        &Ev {
            event: "approval_resolved",
            decision: "executed",
            reason: Some("resolved_by_operator"),
            operator: Some("alice"),
            comment: Some("the ledger shows the close"),
            upstream_status: None,
        },
    );
    let r = resolve(BOB, "failed").await;
    assert_eq!(r.status, 409, "resolving a resolved outcome: {}", r.text());
    assert_eq!(view(second.admin, &id).await["state"], "executed");
    assert_eq!(up.hits(), 1, "resolving sent something upstream");
    // Refusals (the viewer, the second resolve) recorded nothing.
    assert_eq!(
        events_of(&second_trail, &id),
        ["replay_unknown", "approval_resolved"],
        "the restarted process's records of {id}"
    );
    for t in [&first_trail, &second_trail] {
        let o = verify(std::slice::from_ref(t), &[], &[]);
        assert!(o.status.success(), "{}", out_text(&o));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pending_approvals_survive_a_restart_with_their_expiries() {
    let up = ReplayUpstream::start().await;
    let store_dir = tempfile::tempdir().expect("tempdir");
    let cfg = shared_store_config(&store_dir, "solo", &up);
    let env = [("API_KEY", UPSTREAM_KEY)];

    let mut first = Proxy::start(&cfg, &env);
    let (bot, _) = issue(first.admin, "bot").await;
    let mut parked = BTreeMap::new();
    for n in 1..=5 {
        let v = park(
            &first,
            &bot,
            &format!("/tickets/{n}/close"),
            &[],
            format!("{{\"n\":{n}}}").as_bytes(),
        )
        .await;
        let id = approval_id(&v);
        let ov = view(first.admin, &id).await;
        parked.insert(id, (v["expires_at"].clone(), ov["expires_at"].clone(), n));
    }
    let status = first.terminate(BOUND).await;
    assert!(
        status.is_some(),
        "the proxy did not stop on SIGTERM; log:\n{}",
        first.logs()
    );

    let second = Proxy::start(&cfg, &env);
    let r = admin(second.admin, ALICE, "GET", "/approvals?state=pending", None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let listed: BTreeMap<String, serde_json::Value> = r.json()["approvals"]
        .as_array()
        .expect("approvals array")
        .iter()
        .map(|a| (a["id"].as_str().unwrap_or_default().to_string(), a.clone()))
        .collect();
    assert_eq!(
        listed.keys().collect::<Vec<_>>(),
        parked.keys().collect::<Vec<_>>(),
        "pending after the restart"
    );
    for (id, (agent_exp, op_exp, _)) in &parked {
        let v = view(second.admin, id).await;
        assert_eq!(v["state"], "pending", "{v}");
        assert_eq!(
            &v["expires_at"], op_exp,
            "expires_at changed across the restart: {v}"
        );
        let s = agent_status(&second, &bot, id, None).await;
        assert_eq!(s.status, 200, "{}", s.text());
        let s = s.json();
        assert_eq!(s["status"], "pending", "{s}");
        assert_eq!(
            &s["expires_at"], agent_exp,
            "the agent's expires_at changed: {s}"
        );
    }
    assert_eq!(up.hits(), 0);

    // And they are still decidable.
    let (id, (_, _, n)) = parked.iter().next().unwrap();
    let r = approve(second.admin, ALICE, id, None).await;
    assert_eq!(r.status, 200, "approve after the restart: {}", r.text());
    agent_wait_status(&second, &bot, id, "executed").await;
    assert!(up.wait_got(1, BOUND).await);
    assert_eq!(up.hits(), 1);
    assert_eq!(up.got()[0].body, format!("{{\"n\":{n}}}").as_bytes());
}

#[tokio::test(flavor = "multi_thread")]
async fn another_replica_turns_a_dead_nodes_expired_lease_into_unknown() {
    let redis = RedisServer::start();
    let prefix = random_prefix();
    let up = ReplayUpstream::start_holding().await;
    let url = redis.url();
    // The lease is request_deadline + 30 s: keep request_deadline short.
    let cfg = |node: &str| {
        config(
            node,
            &redis_store(&prefix),
            &up.url(),
            "limits: { request_deadline: 2s }",
        )
    };
    let env = [("API_KEY", UPSTREAM_KEY), ("REDIS_URL", url.as_str())];
    let mut a = Proxy::start(&cfg("node-a"), &env);
    let b = Proxy::start(&cfg("node-b"), &env);
    let (bot, _) = issue(a.admin, "bot").await;
    let id = approval_id(&park(&a, &bot, "/tickets/81/close", &[], b"{}").await);
    let r = approve(a.admin, ALICE, &id, None).await;
    assert_eq!(r.status, 200, "approve on A: {}", r.text());
    assert!(
        up.wait_got(1, BOUND).await,
        "the replay never reached the upstream"
    );
    let v = view(b.admin, &id).await;
    assert_eq!(v["state"], "executing", "{v}");
    assert_eq!(v["lease"]["node"], "node-a", "A holds the lease: {v}");
    let until = v["lease"]["until_ms"].as_u64().expect("lease.until_ms");

    sigkill(&a);
    assert!(a.wait_exit(BOUND).await.is_some(), "A survived SIGKILL");
    up.release();

    // While the lease runs, B leaves it alone; after, B calls it unknown — never a retry.
    let v = view(b.admin, &id).await;
    assert_eq!(v["state"], "executing", "B took over a live lease: {v}");
    let bound = Duration::from_millis(until.saturating_sub(now_ms())) + BOUND;
    let v = crate::common::eventually("the expired lease turned into unknown", bound, || async {
        let v = view(b.admin, &id).await;
        if v["state"] != "executing" {
            Ok(v)
        } else {
            Err(v.to_string())
        }
    })
    .await;
    assert_eq!(v["state"], "unknown", "after A's lease expired: {v}");
    assert!(
        now_ms() + 50 >= until,
        "B declared the outcome unknown before A's lease ran out"
    );
    assert_eq!(up.hits(), 1, "B called the upstream again");
}
