//! Request-then-approve end to end, on the real binary with a real recording upstream:
//! park → approve → exactly-once replay → result (embedded store and a real
//! `redis-server`), deny, expiry, the quoted hash, roles and agent credentials on the
//! approval endpoints, two-person approval of critical tools, the pending quota and the
//! parked-body cap, the gate re-run at replay (revoked, disabled, paused), the webhook,
//! and the `portcullis approvals` CLI.

use crate::common;

use crate::common::Proxy;
use crate::support::approvals::*;
use crate::support::redis::{random_prefix, RedisServer};
use serde_json::{json, Value};
use std::time::Duration;

fn start(up: &ReplayUpstream, store: &str, extra: &str, env: &[(&str, &str)]) -> Proxy {
    let mut e = vec![("API_KEY", UPSTREAM_KEY)];
    e.extend_from_slice(env);
    Proxy::start(&config("node-a", store, &up.url(), extra), &e)
}

/// The secret part of a `pcx_<id>_<secret>` credential.
fn secret_of(token: &str) -> &str {
    token.rsplit('_').next().unwrap()
}

/// Asserts that nothing in `text` carries a credential or the cookie.
fn assert_no_secrets(what: &str, text: &str, agent_tokens: &[&str]) {
    for t in agent_tokens {
        assert!(
            !text.contains(t),
            "{what} carries an agent credential: {text}"
        );
        assert!(
            !text.contains(secret_of(t)),
            "{what} carries an agent credential's secret: {text}"
        );
    }
    for s in [ISSUER, ALICE, BOB, CAROL] {
        assert!(
            !text.contains(s),
            "{what} carries an operator secret: {text}"
        );
    }
    assert!(
        !text.contains("upstream-key-0f4e2d9c8b7a"),
        "{what} carries the upstream credential: {text}"
    );
    assert!(
        !text.contains("agent-cookie-77d1e0c3"),
        "{what} carries the agent's cookie: {text}"
    );
}

/// The whole flow on one store: park, everything that must not decide it, approve with
/// the quoted hash, the replay as the upstream sees it, the result as the agent sees it;
/// then once more with the agent's own `Idempotency-Key`. Returns the proxy and the two
/// agent credentials (for checks of the store at rest).
async fn park_approve_replay_result(store: &str, env: &[(&str, &str)]) -> (Proxy, [String; 2]) {
    let up = ReplayUpstream::start().await;
    let p = start(&up, store, "", env);
    let (bot, _) = issue(p.admin, "bot").await;
    let (other, _) = issue(p.admin, "other").await;

    // Binary and UTF-8 bytes, CRLF, NUL: the replay must carry exactly these.
    let body: &[u8] = b"{\"amount\":1250,\"note\":\"caf\xc3\xa9\"}\r\n\x00\xff\xferaw-tail";
    let path = "/tickets/42/close?reason=dup&x=1";
    let before = now_ms();
    let parked = park(
        &p,
        &bot,
        path,
        &[
            ("content-type", "application/octet-stream"),
            ("cookie", AGENT_COOKIE),
            ("x-tenant-id", "evil-tenant"),
            ("x-custom", "keep-me"),
        ],
        body,
    )
    .await;
    let id = approval_id(&parked);
    assert_eq!(parked["tool"], "tickets.close", "{parked}");
    assert_eq!(parked["risk"], "high", "{parked}");
    // Default approval_ttl is 1h (expires_at has whole seconds).
    let exp = rfc3339_ms(parked["expires_at"].as_str().unwrap());
    assert!(
        exp + 1000 >= before + 3_600_000 && exp <= now_ms() + 3_600_000,
        "expires_at {} is not about an hour from now: {parked}",
        parked["expires_at"]
    );
    assert_eq!(up.hits(), 0, "a parked request reached the upstream");

    // The agent sees it pending; nobody else sees it at all.
    let r = agent_status(&p, &bot, &id, None).await;
    assert_eq!(r.status, 200, "agent poll: {}", r.text());
    let s = r.json();
    assert_eq!(s["status"], "pending", "{s}");
    assert_eq!(s["approval_id"], id.as_str(), "{s}");
    let r = agent_status(&p, &other, &id, None).await;
    assert_eq!(r.status, 404, "another agent polling {id}: {}", r.text());
    let r = agent_call(
        p.addr,
        &bot,
        "GET",
        &format!("/_portcullis/approvals/{id}/result"),
        &[],
        b"",
    )
    .await;
    assert_ne!(r.status, 200, "a result before execution: {}", r.text());

    // Operators see the request, its hash, and no credential.
    let list = admin(p.admin, CAROL, "GET", "/approvals?state=pending", None).await;
    assert_eq!(list.status, 200, "{}", list.text());
    let lv = list.json();
    assert!(
        lv["approvals"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x["id"] == id.as_str())),
        "GET /approvals?state=pending lacks {id}: {lv}"
    );
    let v = view(p.admin, &id).await;
    assert_eq!(v["state"], "pending", "{v}");
    assert_eq!(v["agent"], "bot", "{v}");
    assert_eq!(v["tenant"], "acme", "{v}");
    assert_eq!(v["tool"], "tickets.close", "{v}");
    assert_eq!(v["method"], "POST", "{v}");
    assert_eq!(v["path"], path, "{v}");
    assert_eq!(v["risk"], "high", "{v}");
    assert_eq!(v["expires_at"], parked["expires_at"], "{v}");
    assert!(v["age_s"].is_u64(), "age in {v}");
    assert_eq!(v["body_len"], body.len(), "{v}");
    let sha = v["request_sha256"].as_str().unwrap_or_default().to_string();
    assert!(
        sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit()),
        "request_sha256 `{sha}` in {v}"
    );
    assert_no_secrets("the operator view", &v.to_string(), &[&bot, &other]);

    // Wrong hash → 409; an agent credential, a viewer and the issuer → 403.
    let wrong = format!(
        "{}{}",
        if sha.starts_with('0') { "1" } else { "0" },
        &sha[1..]
    );
    let r = approve(
        p.admin,
        ALICE,
        &id,
        Some(json!({"comment": "looks fine", "request_sha256": wrong})),
    )
    .await;
    assert_eq!(r.status, 409, "approve quoting a wrong hash: {}", r.text());
    let r = approve(p.admin, &bot, &id, None).await;
    assert_eq!(
        r.status,
        403,
        "approve with an agent credential: {}",
        r.text()
    );
    let r = approve(p.admin, CAROL, &id, None).await;
    assert_eq!(r.status, 403, "approve as a viewer: {}", r.text());
    let r = approve(p.admin, ISSUER, &id, None).await;
    assert_eq!(
        r.status,
        403,
        "approve by the operator who issued the credential: {}",
        r.text()
    );
    assert_eq!(view(p.admin, &id).await["state"], "pending");
    assert_eq!(up.hits(), 0, "a refused approval reached the upstream");

    // The approval that counts.
    let r = approve(
        p.admin,
        ALICE,
        &id,
        Some(json!({"comment": "checked the order", "request_sha256": sha})),
    )
    .await;
    assert_eq!(r.status, 200, "approve: {}", r.text());
    let s = agent_wait_status(&p, &bot, &id, "executed").await;
    assert_eq!(s["upstream_status"], RESULT_STATUS, "{s}");

    assert!(
        up.wait_got(1, BOUND).await,
        "the upstream never got the replay"
    );
    let got = up.got();
    assert_eq!(
        got.len(),
        1,
        "the upstream saw {} calls: {got:?}",
        got.len()
    );
    let g = &got[0];
    assert_eq!(g.method, "POST");
    assert_eq!(g.target, format!("/v2{path}"));
    assert_eq!(
        g.body, body,
        "the replayed body differs from the parked one"
    );
    assert_eq!(
        g.header_all("authorization"),
        vec![UPSTREAM_KEY],
        "the injected upstream credential (and only it): {:?}",
        g.headers
    );
    assert_eq!(
        g.header_all("x-tenant-id"),
        vec!["acme"],
        "the agent's tenant (the client's copy stripped): {:?}",
        g.headers
    );
    assert_eq!(
        g.header_all("idempotency-key"),
        vec![id.as_str()],
        "Idempotency-Key = the approval id: {:?}",
        g.headers
    );
    assert_eq!(g.header("x-custom"), Some("keep-me"), "{:?}", g.headers);
    assert_eq!(
        g.header("content-type"),
        Some("application/octet-stream"),
        "{:?}",
        g.headers
    );
    assert!(
        g.header("cookie").is_none(),
        "the agent's cookie reached the upstream: {:?}",
        g.headers
    );
    let seen = format!("{:?}", g.headers);
    assert!(
        !seen.contains("pcx_"),
        "an agent credential reached the upstream: {seen}"
    );
    assert!(!seen.contains(secret_of(&bot)), "{seen}");

    // The result, as the upstream gave it.
    let r = agent_call(
        p.addr,
        &bot,
        "GET",
        &format!("/_portcullis/approvals/{id}/result"),
        &[],
        b"",
    )
    .await;
    assert_eq!(r.status, RESULT_STATUS, "result status; body {}", r.text());
    assert_eq!(
        r.header("x-upstream-marker"),
        Some(RESULT_MARKER),
        "{:?}",
        r.headers
    );
    assert_eq!(
        r.header("content-type"),
        Some("application/json; charset=utf-8"),
        "{:?}",
        r.headers
    );
    assert_eq!(&r.body[..], RESULT_BODY, "result body");
    let r = agent_call(
        p.addr,
        &other,
        "GET",
        &format!("/_portcullis/approvals/{id}/result"),
        &[],
        b"",
    )
    .await;
    assert_eq!(r.status, 404, "another agent's /result: {}", r.text());

    // The replay's record names who approved it (issue 13).
    let trail = p.audit_text();
    let executed: Vec<serde_json::Value> = trail
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|r: &serde_json::Value| {
            r["event"] == "replay_executed" && r["approval_id"] == id.as_str()
        })
        .collect();
    assert_eq!(executed.len(), 1, "{trail}");
    assert_eq!(executed[0]["operator"], "alice", "{}", executed[0]);

    // Deciding again changes nothing.
    let r = approve(p.admin, BOB, &id, None).await;
    assert_eq!(r.status, 409, "approving an executed request: {}", r.text());
    let v = view(p.admin, &id).await;
    assert_eq!(v["state"], "executed", "{v}");
    assert_eq!(v["upstream_status"], RESULT_STATUS, "{v}");
    assert_eq!(up.hits(), 1, "the upstream saw a second call");

    // The agent's own Idempotency-Key is the one sent.
    let parked = park(
        &p,
        &bot,
        "/tickets/43/close",
        &[("idempotency-key", "agent-key-5b1c")],
        b"{\"n\":2}",
    )
    .await;
    let id2 = approval_id(&parked);
    let r = approve(p.admin, BOB, &id2, None).await;
    assert_eq!(r.status, 200, "approve: {}", r.text());
    agent_wait_status(&p, &bot, &id2, "executed").await;
    assert!(
        up.wait_got(2, BOUND).await,
        "the second replay never arrived"
    );
    let got = up.got();
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[1].target, "/v2/tickets/43/close");
    assert_eq!(got[1].body, b"{\"n\":2}");
    assert_eq!(
        got[1].header_all("idempotency-key"),
        vec!["agent-key-5b1c"],
        "the agent's Idempotency-Key: {:?}",
        got[1].headers
    );
    (p, [bot, other])
}

/// Asserts that the bytes of a store hold no credential and no cookie.
fn assert_store_clean(what: &str, bytes: &[u8], tokens: &[String; 2]) {
    let text = String::from_utf8_lossy(bytes);
    assert!(!text.is_empty(), "{what} is empty");
    for t in tokens {
        assert!(
            !text.contains(secret_of(t)),
            "{what} holds an agent credential's secret"
        );
    }
    assert!(
        !text.contains("agent-cookie-77d1e0c3"),
        "{what} holds the agent's cookie"
    );
    assert!(
        !text.contains("upstream-key-0f4e2d9c8b7a"),
        "{what} holds the upstream credential"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn park_approve_replay_result_embedded() {
    let (mut p, tokens) = park_approve_replay_result(EMBEDDED, &[]).await;
    assert!(p.terminate(BOUND).await.is_some(), "the proxy did not stop");
    let bytes = std::fs::read(p.path("data/p.redb")).expect("the embedded store file");
    assert!(
        bytes.windows(5).any(|w| w == b"caf\xc3\xa9"),
        "the parked body is not in data/p.redb (is this the store?)"
    );
    assert_store_clean("the embedded store", &bytes, &tokens);
}

#[tokio::test(flavor = "multi_thread")]
async fn park_approve_replay_result_redis() {
    let redis = RedisServer::start();
    let url = redis.url();
    let (_p, tokens) =
        park_approve_replay_result(&redis_store(&random_prefix()), &[("REDIS_URL", &url)]).await;
    let dump = redis.dump();
    assert!(
        dump.contains("tickets.close"),
        "the redis dump lacks the approvals: {dump}"
    );
    assert_store_clean("the redis store", dump.as_bytes(), &tokens);
}

#[tokio::test(flavor = "multi_thread")]
async fn deny_records_denied_and_nothing_is_sent() {
    let up = ReplayUpstream::start().await;
    let p = start(&up, EMBEDDED, "", &[]);
    let (bot, _) = issue(p.admin, "bot").await;
    let id = approval_id(&park(&p, &bot, "/tickets/7/close", &[], b"{\"x\":1}").await);

    // A viewer and an agent credential may not deny; a deny needs a reason.
    let r = deny(p.admin, CAROL, &id, "no").await;
    assert_eq!(r.status, 403, "deny as a viewer: {}", r.text());
    let r = deny(p.admin, &bot, &id, "no").await;
    assert_eq!(r.status, 403, "deny with an agent credential: {}", r.text());
    assert_eq!(view(p.admin, &id).await["state"], "pending");

    let r = deny(p.admin, ALICE, &id, "not this customer").await;
    assert_eq!(r.status, 200, "deny: {}", r.text());
    let v = view(p.admin, &id).await;
    assert_eq!(v["state"], "denied", "{v}");
    let s = agent_status(&p, &bot, &id, None).await;
    assert_eq!(s.status, 200, "{}", s.text());
    assert_eq!(s.json()["status"], "denied", "{}", s.text());

    let r = agent_call(
        p.addr,
        &bot,
        "GET",
        &format!("/_portcullis/approvals/{id}/result"),
        &[],
        b"",
    )
    .await;
    assert_eq!(
        (r.status, r.reason().as_deref()),
        (409, Some("conflict")),
        "/result of a denied request: {}",
        r.text()
    );
    // Denied is final: approving now is a conflict, and nothing is ever sent.
    let r = approve(p.admin, BOB, &id, None).await;
    assert_eq!(r.status, 409, "approve after deny: {}", r.text());
    let listed = admin(p.admin, ALICE, "GET", "/approvals?state=denied", None).await;
    assert!(
        listed.json()["approvals"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x["id"] == id.as_str())),
        "GET /approvals?state=denied lacks {id}: {}",
        listed.text()
    );
    assert_eq!(up.hits(), 0, "a denied request reached the upstream");
}

/// Retention: a decided approval is deleted once it is older than `approval_retention`
/// (found through the store's decided index, on a running node); a pending one is not.
async fn retention_deletes_decided_keeps_pending(store: &str, env: &[(&str, &str)]) {
    let up = ReplayUpstream::start().await;
    let p = start(&up, store, "limits: { approval_retention: 1s }", env);
    let (bot, _) = issue(p.admin, "bot").await;
    let denied = approval_id(&park(&p, &bot, "/tickets/7/close", &[], b"{}").await);
    let pending = approval_id(&park(&p, &bot, "/tickets/8/close", &[], b"{}").await);
    let r = deny(p.admin, ALICE, &denied, "no").await;
    assert_eq!(r.status, 200, "deny: {}", r.text());
    let path = format!("/approvals/{denied}");
    common::eventually(
        "a denied approval deleted with approval_retention 1s",
        Duration::from_secs(15),
        || async {
            let r = admin(p.admin, ALICE, "GET", &path, None).await;
            match r.status {
                404 => Ok(()),
                200 => Err("still stored".to_string()),
                s => panic!("GET {path}: {s} {}", r.text()),
            }
        },
    )
    .await;
    let s = agent_status(&p, &bot, &denied, None).await;
    assert_eq!(
        s.status,
        404,
        "the agent's status of a deleted approval: {}",
        s.text()
    );
    assert_eq!(
        view(p.admin, &pending).await["state"],
        "pending",
        "retention touched a pending approval"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_deletes_decided_keeps_pending_embedded() {
    retention_deletes_decided_keeps_pending(EMBEDDED, &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_deletes_decided_keeps_pending_redis() {
    let redis = RedisServer::start();
    let url = redis.url();
    retention_deletes_decided_keeps_pending(&redis_store(&random_prefix()), &[("REDIS_URL", &url)])
        .await;
}

/// Waits (bounded) until the audit trail holds an `approval_expired` record for `id` —
/// written by the sweeper, since nobody reads the record meanwhile.
async fn wait_audited_expiry(p: &Proxy, id: &str) -> bool {
    let path = p.path("data/audit.jsonl");
    let id = id.to_string();
    common::poll_until_async(Duration::from_secs(10), || {
        std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .any(|l| l.contains(&id) && l.contains("\"event\":\"approval_expired\""))
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn expiry_per_tool_ttl_then_approve_is_gone() {
    let up = ReplayUpstream::start().await;
    let p = start(&up, EMBEDDED, "", &[]);
    let (bot, _) = issue(p.admin, "bot").await;
    let before = now_ms();
    let parked = park(&p, &bot, "/tickets/9/quick", &[], b"{}").await;
    let id = approval_id(&parked);
    assert_eq!(parked["tool"], "tickets.quick", "{parked}");
    let exp = rfc3339_ms(parked["expires_at"].as_str().unwrap());
    assert!(
        exp + 1000 >= before + 1000 && exp <= now_ms() + 1000,
        "tools[].approval_ttl 1s: expires_at {} is not a second from now",
        parked["expires_at"]
    );
    // The sweeper moves it to `expired` on its own.
    assert!(
        wait_audited_expiry(&p, &id).await,
        "no approval_expired audit record for {id}; audit:\n{}",
        p.audit_text()
    );
    let r = approve(p.admin, ALICE, &id, None).await;
    assert_eq!(r.status, 410, "approve after expiry: {}", r.text());
    let v = view(p.admin, &id).await;
    assert_eq!(v["state"], "expired", "{v}");
    let s = agent_status(&p, &bot, &id, None).await;
    assert_eq!(s.json()["status"], "expired", "{}", s.text());
    let r = deny(p.admin, ALICE, &id, "late").await;
    assert_eq!(r.status, 410, "deny after expiry: {}", r.text());
    assert_eq!(up.hits(), 0, "an expired request reached the upstream");
}

#[tokio::test(flavor = "multi_thread")]
async fn expiry_limits_ttl_then_approve_is_gone() {
    let up = ReplayUpstream::start().await;
    let p = start(
        &up,
        EMBEDDED,
        "limits: { approval_ttl: 1s, max_pending_per_agent: 1 }",
        &[],
    );
    let (bot, _) = issue(p.admin, "bot").await;
    let before = now_ms();
    let parked = park(&p, &bot, "/tickets/9/close", &[], b"{}").await;
    let id = approval_id(&parked);
    let exp = rfc3339_ms(parked["expires_at"].as_str().unwrap());
    assert!(
        exp + 1000 >= before + 1000 && exp <= now_ms() + 1000,
        "limits.approval_ttl 1s: expires_at {} is not a second from now",
        parked["expires_at"]
    );
    // The agent's long-poll sees the expiry.
    let r = agent_status(&p, &bot, &id, Some(10)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["status"],
        "expired",
        "long-poll over the expiry: {}",
        r.text()
    );
    let r = approve(p.admin, ALICE, &id, None).await;
    assert_eq!(r.status, 410, "approve after expiry: {}", r.text());
    assert_eq!(view(p.admin, &id).await["state"], "expired");
    let listed = admin(p.admin, ALICE, "GET", "/approvals?state=expired", None).await;
    assert!(
        listed.json()["approvals"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x["id"] == id.as_str())),
        "GET /approvals?state=expired lacks {id}: {}",
        listed.text()
    );
    // An expired request no longer counts against the pending quota (1).
    park(&p, &bot, "/tickets/10/close", &[], b"{}").await;
    assert_eq!(up.hits(), 0, "an expired request reached the upstream");
}

#[tokio::test(flavor = "multi_thread")]
async fn approval_endpoints_refuse_agents_and_non_approvers() {
    let up = ReplayUpstream::start().await;
    let p = start(&up, EMBEDDED, "", &[]);
    let (bot, _) = issue(p.admin, "bot").await;
    let (other, _) = issue(p.admin, "other").await;
    let id = approval_id(&park(&p, &bot, "/tickets/5/close", &[], b"{}").await);

    let decide = [
        ("POST", format!("/approvals/{id}/approve"), json!({})),
        (
            "POST",
            format!("/approvals/{id}/deny"),
            json!({"reason": "x"}),
        ),
        (
            "POST",
            format!("/approvals/{id}/resolve"),
            json!({"outcome": "executed"}),
        ),
    ];
    let look = [
        ("GET", "/approvals".to_string()),
        ("GET", "/approvals?state=pending".to_string()),
        ("GET", format!("/approvals/{id}")),
    ];
    // An agent credential — even the one that parked it — is never accepted.
    for token in [&bot, &other] {
        for (m, path, b) in &decide {
            let r = admin(p.admin, token, m, path, Some(b)).await;
            assert_eq!(
                r.status,
                403,
                "agent credential on {m} {path}: {}",
                r.text()
            );
        }
        for (m, path) in &look {
            let r = admin(p.admin, token, m, path, None).await;
            assert_eq!(
                r.status,
                403,
                "agent credential on {m} {path}: {}",
                r.text()
            );
        }
    }
    // No credential → 401; a viewer may look but not decide.
    for (m, path, b) in &decide {
        let r = admin(p.admin, "", m, path, Some(b)).await;
        assert_eq!(r.status, 401, "no credential on {m} {path}: {}", r.text());
        let r = admin(p.admin, CAROL, m, path, Some(b)).await;
        assert_eq!(r.status, 403, "viewer on {m} {path}: {}", r.text());
    }
    for (m, path) in &look {
        let r = admin(p.admin, CAROL, m, path, None).await;
        assert_eq!(r.status, 200, "viewer on {m} {path}: {}", r.text());
    }

    // On the agent port: only the agent that parked it; everyone else gets 404, the same
    // 404 as for an id that does not exist.
    let r = agent_status(&p, &other, &id, None).await;
    assert_eq!(r.status, 404, "another agent polling {id}: {}", r.text());
    let r = agent_status(&p, &other, &id, Some(2)).await;
    assert_eq!(
        r.status,
        404,
        "another agent long-polling {id}: {}",
        r.text()
    );
    let missing = "01900000-0000-7000-8000-000000000000";
    let r = agent_status(&p, &bot, missing, None).await;
    assert_eq!(r.status, 404, "an unknown id: {}", r.text());
    let r = agent_status(&p, &bot, &id, None).await;
    assert_eq!(r.status, 200, "the parking agent: {}", r.text());
    let r = agent_status(&p, "", &id, None).await;
    assert_eq!(
        r.status,
        401,
        "no credential on the agent port: {}",
        r.text()
    );

    assert_eq!(view(p.admin, &id).await["state"], "pending");
    assert_eq!(up.hits(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn critical_tool_needs_two_distinct_operators() {
    let up = ReplayUpstream::start().await;
    let p = start(&up, EMBEDDED, "", &[]);
    let (bot, _) = issue(p.admin, "bot").await;
    let parked = park(&p, &bot, "/tickets/11/refund", &[], b"{\"amount\":10}").await;
    assert_eq!(parked["tool"], "tickets.refund", "{parked}");
    assert_eq!(parked["risk"], "critical", "{parked}");
    let id = approval_id(&parked);

    // The operator who issued the agent's credential cannot approve at all.
    let r = approve(p.admin, ISSUER, &id, None).await;
    assert_eq!(r.status, 403, "approve by the issuer: {}", r.text());

    let r = approve(p.admin, ALICE, &id, Some(json!({"comment": "first"}))).await;
    assert_eq!(r.status, 200, "first approval: {}", r.text());
    let v = view(p.admin, &id).await;
    assert_eq!(v["state"], "pending", "one of two approvals: {v}");

    let r = approve(p.admin, ALICE, &id, Some(json!({"comment": "again"}))).await;
    assert_eq!(r.status, 409, "the same operator twice: {}", r.text());
    let v = view(p.admin, &id).await;
    assert_eq!(v["state"], "pending", "{v}");
    let s = agent_status(&p, &bot, &id, None).await;
    assert_eq!(s.json()["status"], "pending", "{}", s.text());
    assert_eq!(
        up.hits(),
        0,
        "one operator's approval sent a critical request"
    );

    let r = approve(p.admin, ISSUER, &id, None).await;
    assert_eq!(r.status, 403, "the issuer as second approver: {}", r.text());
    assert_eq!(view(p.admin, &id).await["state"], "pending");

    let r = approve(p.admin, BOB, &id, Some(json!({"comment": "second"}))).await;
    assert_eq!(r.status, 200, "second, distinct approval: {}", r.text());
    agent_wait_status(&p, &bot, &id, "executed").await;
    let v = view(p.admin, &id).await;
    assert_eq!(v["state"], "executed", "{v}");
    let approvers: Vec<&str> = v["approvals"]
        .as_array()
        .map(|a| a.iter().filter_map(|x| x.as_str()).collect())
        .unwrap_or_default();
    assert_eq!(approvers, vec!["alice", "bob"], "{v}");
    assert!(up.wait_got(1, BOUND).await);
    assert_eq!(
        up.hits(),
        1,
        "the critical request was sent {} times",
        up.hits()
    );
    assert_eq!(up.got()[0].body, b"{\"amount\":10}");
}

#[tokio::test(flavor = "multi_thread")]
async fn pending_quota_per_agent() {
    let up = ReplayUpstream::start().await;
    let p = start(&up, EMBEDDED, "limits: { max_pending_per_agent: 2 }", &[]);
    let (bot, _) = issue(p.admin, "bot").await;
    let (other, _) = issue(p.admin, "other").await;
    let a = approval_id(&park(&p, &bot, "/tickets/1/close", &[], b"1").await);
    let b = approval_id(&park(&p, &bot, "/tickets/2/close", &[], b"2").await);
    let r = agent_call(p.addr, &bot, "POST", "/tickets/3/close", &[], b"3").await;
    assert_eq!(r.status, 429, "third park over the quota: {}", r.text());
    assert_eq!(r.reason().as_deref(), Some("pending_quota"), "{}", r.text());
    assert!(
        r.header("retry-after").is_some(),
        "Retry-After: {:?}",
        r.headers
    );
    assert!(r.header("portcullis-decision").is_some(), "{:?}", r.headers);
    let pending = admin(p.admin, ALICE, "GET", "/approvals?state=pending", None).await;
    let n = pending.json()["approvals"]
        .as_array()
        .map_or(0, |a| a.len());
    assert_eq!(n, 2, "the refused park was stored: {}", pending.text());

    // The quota is per agent.
    park(&p, &other, "/tickets/4/close", &[], b"4").await;
    // A decision frees a slot.
    let r = deny(p.admin, ALICE, &a, "no").await;
    assert_eq!(r.status, 200, "{}", r.text());
    park(&p, &bot, "/tickets/5/close", &[], b"5").await;
    let r = agent_call(p.addr, &bot, "POST", "/tickets/6/close", &[], b"6").await;
    assert_eq!(r.status, 429, "full again: {}", r.text());
    // So does an execution.
    let r = approve(p.admin, ALICE, &b, None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    agent_wait_status(&p, &bot, &b, "executed").await;
    park(&p, &bot, "/tickets/7/close", &[], b"7").await;
    let r = agent_call(p.addr, &bot, "POST", "/tickets/8/close", &[], b"8").await;
    assert_eq!(r.status, 429, "full again: {}", r.text());
    assert!(up.wait_got(1, BOUND).await);
    assert_eq!(up.hits(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn parked_body_over_the_cap_is_413_and_nothing_parks() {
    let up = ReplayUpstream::start().await;
    let p = start(
        &up,
        EMBEDDED,
        "limits: { max_parked_body_bytes: 1024 }",
        &[],
    );
    let (bot, _) = issue(p.admin, "bot").await;

    // Declared length over the cap.
    let big = vec![b'a'; 1025];
    let r = agent_call(p.addr, &bot, "POST", "/tickets/1/close", &[], &big).await;
    assert_eq!(r.status, 413, "1025-byte body: {}", r.text());
    // Chunked, no declared length.
    let req = common::request("POST", p.addr, "/tickets/2/close", &bot)
        .body(common::pattern_body(64 * 1024, false))
        .unwrap();
    let r = common::send(p.addr, req).await.expect("chunked park");
    assert_eq!(r.status, 413, "64 KiB chunked body: {}", r.text());

    let all = admin(p.admin, ALICE, "GET", "/approvals", None).await;
    assert_eq!(all.status, 200, "{}", all.text());
    let n = all.json()["approvals"]
        .as_array()
        .map_or(usize::MAX, |a| a.len());
    assert_eq!(n, 0, "an oversized request was parked: {}", all.text());

    // Exactly at the cap parks, and replays those bytes.
    let edge: Vec<u8> = (0..1024u32).map(|i| (i % 251) as u8).collect();
    let id = approval_id(&park(&p, &bot, "/tickets/3/close", &[], &edge).await);
    let v = view(p.admin, &id).await;
    assert_eq!(v["body_len"], 1024, "{v}");
    let r = approve(p.admin, ALICE, &id, None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    agent_wait_status(&p, &bot, &id, "executed").await;
    assert!(up.wait_got(1, BOUND).await);
    assert_eq!(up.hits(), 1);
    assert_eq!(up.got()[0].body, edge);
}

/// What changes between the park and the approval.
#[derive(Debug, Clone, Copy)]
enum Change {
    /// `DELETE /tokens/{id}`.
    Revoke,
    /// `POST /agents/{id}/disable`.
    Disable,
    /// `POST /pause {"scope":"tool","target":"tickets.close"}`.
    PauseTool,
    /// The credential (ttl 2s) runs out.
    Expire,
    /// A reload takes `tickets.close` out of the profile's `approval:` list.
    Ungrant,
}

/// Parks as `agent`, applies `change`, approves: the approval is accepted, and the replay
/// must end `failed` with `policy_changed`, sending nothing.
async fn change_then_approve_fails(agent: &str, change: Change) {
    let up = ReplayUpstream::start().await;
    let p = start(&up, EMBEDDED, "", &[]);
    let ttl = if matches!(change, Change::Expire) {
        "2s"
    } else {
        "1h"
    };
    let r = admin(
        p.admin,
        ISSUER,
        "POST",
        "/tokens",
        Some(&json!({"agent": agent, "ttl": ttl})),
    )
    .await;
    assert_eq!(r.status, 201, "POST /tokens: {}", r.text());
    let t = r.json();
    let (token, token_id) = (
        t["secret"].as_str().unwrap().to_string(),
        t["id"].as_str().unwrap().to_string(),
    );
    let id = approval_id(&park(&p, &token, "/tickets/8/close", &[], b"{}").await);

    let call = |m: &'static str, path: String, b: Option<Value>| {
        let admin_addr = p.admin;
        async move {
            let r = admin(admin_addr, ISSUER, m, &path, b.as_ref()).await;
            assert!(
                (200..300).contains(&r.status),
                "{m} {path}: {} {}",
                r.status,
                r.text()
            );
        }
    };
    match change {
        Change::Revoke => call("DELETE", format!("/tokens/{token_id}"), None).await,
        Change::Disable => call("POST", format!("/agents/{agent}/disable"), None).await,
        Change::PauseTool => {
            call(
                "POST",
                "/pause".into(),
                Some(json!({"scope": "tool", "target": "tickets.close"})),
            )
            .await
        }
        Change::Expire => {
            // The credential is refused once it has expired.
            common::eventually("a 2s credential refused once expired", BOUND, || async {
                let r = agent_status(&p, &token, &id, None).await;
                (r.status == 401)
                    .then_some(())
                    .ok_or(format!("{}", r.status))
            })
            .await;
        }
        Change::Ungrant => {
            let text = std::fs::read_to_string(&p.config_path).unwrap();
            let from = r#"approval: ["tickets.refund", "tickets.close", "tickets.quick"]"#;
            assert!(text.contains(from));
            let text = text.replace(from, r#"approval: ["tickets.refund", "tickets.quick"]"#);
            common::write_atomically(&p.config_path, text.as_bytes());
            call("POST", "/reload".into(), None).await;
            let r = agent_call(p.addr, &token, "POST", "/tickets/9/close", &[], b"{}").await;
            assert_eq!(
                r.status,
                403,
                "tickets.close after the reload: {}",
                r.text()
            );
        }
    }
    // Nothing moves until someone decides.
    assert_eq!(view(p.admin, &id).await["state"], "pending", "{change:?}");

    let r = approve(p.admin, ALICE, &id, None).await;
    assert_eq!(r.status, 200, "approve after {change:?}: {}", r.text());
    let v = wait_state(p.admin, &id, "failed", BOUND).await;
    assert_eq!(v["reason"], "policy_changed", "{change:?}: {v}");
    assert!(
        v["upstream_status"].is_null(),
        "{change:?}: an upstream status on a failed replay: {v}"
    );
    assert_eq!(up.hits(), 0, "{change:?}: the replay reached the upstream");
}

#[tokio::test(flavor = "multi_thread")]
async fn revoked_credential_fails_the_replay() {
    change_then_approve_fails("bot", Change::Revoke).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn disabled_agent_fails_the_replay() {
    change_then_approve_fails("bot2", Change::Disable).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn paused_tool_fails_the_replay() {
    change_then_approve_fails("bot3", Change::PauseTool).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_credential_fails_the_replay() {
    change_then_approve_fails("bot", Change::Expire).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn reload_that_drops_the_grant_fails_the_replay() {
    change_then_approve_fails("bot", Change::Ungrant).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn webhook_on_park_and_decision_without_secrets_or_body() {
    let hook = Hook::start().await;
    let up = ReplayUpstream::start().await;
    let url = hook.url();
    let p = start(
        &up,
        EMBEDDED,
        "notify: { webhook: { url_env: HOOK } }",
        &[("HOOK", &url)],
    );
    let (bot, _) = issue(p.admin, "bot").await;
    let body = b"{\"card\":\"BODY-MARKER-4411\"}";
    let check = |what: &str, h: &Hooked| {
        assert_eq!(h.method, "POST", "{what}");
        assert!(
            h.content_type
                .as_deref()
                .is_some_and(|c| c.starts_with("application/json")),
            "{what}: content-type {:?}",
            h.content_type
        );
        let v = h.json();
        assert!(
            v["text"].as_str().is_some_and(|t| !t.is_empty()),
            "{what}: no `text` in {}",
            h.raw
        );
        assert_no_secrets(what, &h.raw, &[&bot]);
        assert!(
            !h.raw.contains("BODY-MARKER-4411"),
            "{what} carries the body: {}",
            h.raw
        );
        // Class 13: the query is redacted as in the audit trail (`audit.redact_query`).
        assert!(
            !h.raw.contains("QUERY-SECRET-8812"),
            "{what} carries a query secret: {}",
            h.raw
        );
    };

    // Park → one post, before anyone decides.
    let id = approval_id(
        &park(
            &p,
            &bot,
            "/tickets/21/close?token=QUERY-SECRET-8812&x=1",
            &[("cookie", AGENT_COOKIE)],
            body,
        )
        .await,
    );
    assert!(
        hook.wait_about(&id, 1, BOUND).await,
        "no webhook post for the park of {id}; got {:?}",
        hook.got()
    );
    let first = hook.about(&id);
    check("park post", &first[0]);
    let v = first[0].json();
    for got in [&v["path"], &v["text"]] {
        assert!(
            got.as_str()
                .is_some_and(|t| t.contains("/tickets/21/close?token=REDACTED&x=1")),
            "the webhook does not show the redacted path: {v}"
        );
    }
    let park_text = first[0].json()["text"].as_str().unwrap().to_string();

    // Approve → a decision post.
    let r = approve(p.admin, ALICE, &id, None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        common::poll_until_async(BOUND, || hook
            .about(&id)
            .iter()
            .any(|h| h.json()["text"].as_str() != Some(park_text.as_str())))
        .await,
        "no decision post for {id}; got {:?}",
        hook.about(&id)
    );

    // Deny → a decision post too.
    let id2 = approval_id(&park(&p, &bot, "/tickets/22/close", &[], body).await);
    assert!(
        hook.wait_about(&id2, 1, BOUND).await,
        "no park post for {id2}"
    );
    let park2 = hook.about(&id2)[0].json()["text"]
        .as_str()
        .unwrap()
        .to_string();
    let r = deny(p.admin, BOB, &id2, "no").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        common::poll_until_async(BOUND, || hook
            .about(&id2)
            .iter()
            .any(|h| h.json()["text"].as_str() != Some(park2.as_str())))
        .await,
        "no decision post for the deny of {id2}; got {:?}",
        hook.about(&id2)
    );
    for (i, h) in hook.got().iter().enumerate() {
        check(&format!("webhook post #{i}"), h);
    }
}

/// Runs `portcullis approvals ARGS` against `admin` (named by `PORTCULLIS_ADMIN`) as
/// `who`; returns (success, stdout+stderr).
async fn cli(admin_addr: std::net::SocketAddr, who: &str, args: &[&str]) -> (bool, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_portcullis"));
    cmd.arg("approvals")
        .args(args)
        .env("PORTCULLIS_ADMIN", format!("http://{admin_addr}"))
        .env("PORTCULLIS_OPERATOR_TOKEN", who)
        .kill_on_drop(true);
    run_cli(cmd).await
}

async fn run_cli(mut cmd: tokio::process::Command) -> (bool, String) {
    let out = tokio::time::timeout(common::REQUEST_BOUND, cmd.output())
        .await
        .expect("the CLI finished in time")
        .expect("run the CLI");
    let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
    s.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), s)
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_lists_shows_approves_and_denies() {
    let up = ReplayUpstream::start().await;
    let p = start(&up, EMBEDDED, "", &[]);
    let (bot, _) = issue(p.admin, "bot").await;
    let id = approval_id(
        &park(
            &p,
            &bot,
            "/tickets/31/close",
            &[("content-type", "application/json")],
            b"{\"a\":1}",
        )
        .await,
    );
    let id2 = approval_id(&park(&p, &bot, "/tickets/32/close", &[], b"{\"a\":2}").await);
    let sha = view(p.admin, &id).await["request_sha256"]
        .as_str()
        .unwrap()
        .to_string();

    let (ok, out) = cli(p.admin, ALICE, &["list"]).await;
    assert!(
        ok && out.contains(&id) && out.contains(&id2),
        "approvals list:\n{out}"
    );
    let (ok, out) = cli(p.admin, ALICE, &["show", &id]).await;
    assert!(ok && out.contains(&sha), "approvals show:\n{out}");
    assert!(
        out.contains("\nHeaders:\n  content-type: application/json\n"),
        "the header by its name:\n{out}"
    );

    let (ok, out) = cli(p.admin, CAROL, &["approve", &id]).await;
    assert!(!ok, "a viewer approved through the CLI:\n{out}");
    let (ok, out) = cli(
        p.admin,
        ALICE,
        &["approve", &id, "--sha256", &"0".repeat(64)],
    )
    .await;
    assert!(!ok, "the CLI approved a wrong hash:\n{out}");
    assert_eq!(view(p.admin, &id).await["state"], "pending");

    let (ok, out) = cli(
        p.admin,
        ALICE,
        &["approve", &id, "--sha256", &sha, "--comment", "ok"],
    )
    .await;
    assert!(ok, "approvals approve:\n{out}");
    agent_wait_status(&p, &bot, &id, "executed").await;
    let (ok, out) = cli(p.admin, BOB, &["deny", &id2, "--reason", "no"]).await;
    assert!(ok, "approvals deny:\n{out}");
    assert_eq!(view(p.admin, &id2).await["state"], "denied");
    assert!(up.wait_got(1, BOUND).await);
    assert_eq!(up.hits(), 1);
}

/// `portcullis demo` tells operators to run `portcullis approvals list --admin URL` (the
/// flag after the verb, as DESIGN.md writes `--admin URL`): that form must work.
#[tokio::test(flavor = "multi_thread")]
async fn cli_accepts_admin_flag_after_the_verb_as_the_demo_prints() {
    let up = ReplayUpstream::start().await;
    let p = start(&up, EMBEDDED, "", &[]);
    let (bot, _) = issue(p.admin, "bot").await;
    let id = approval_id(&park(&p, &bot, "/tickets/33/close", &[], b"{}").await);
    let admin_url = format!("http://{}", p.admin);
    for args in [
        vec!["approvals", "list", "--admin", admin_url.as_str()],
        vec![
            "approvals",
            "show",
            id.as_str(),
            "--admin",
            admin_url.as_str(),
        ],
    ] {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_portcullis"));
        cmd.args(&args)
            .env_remove("PORTCULLIS_ADMIN")
            .env("PORTCULLIS_OPERATOR_TOKEN", ALICE)
            .kill_on_drop(true);
        let (ok, out) = run_cli(cmd).await;
        assert!(
            ok && out.contains(&id),
            "`portcullis {}` failed:\n{out}",
            args.join(" ")
        );
    }
}

/// An upstream that refuses the connection got nothing: `failed`, not `unknown`.
#[tokio::test(flavor = "multi_thread")]
async fn unreachable_upstream_fails_the_replay() {
    let dead = common::dead_port();
    let p = Proxy::start(
        &config("node-a", EMBEDDED, &format!("http://{dead}"), ""),
        &[("API_KEY", UPSTREAM_KEY)],
    );
    let (bot, _) = issue(p.admin, "bot").await;
    let id = approval_id(&park(&p, &bot, "/tickets/12/close", &[], b"{}").await);
    let r = approve(p.admin, ALICE, &id, None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = wait_state(p.admin, &id, "failed", BOUND).await;
    assert!(v["upstream_status"].is_null(), "{v}");
    let s = agent_status(&p, &bot, &id, None).await;
    assert_eq!(s.json()["status"], "failed", "{}", s.text());
}

/// A reload that leaves the request's tool, upstream, tenant and grant alone does not
/// fail it (only the policy version changed).
#[tokio::test(flavor = "multi_thread")]
async fn reload_that_keeps_the_grant_still_replays() {
    let up = ReplayUpstream::start().await;
    let p = start(&up, EMBEDDED, "", &[]);
    let (bot, _) = issue(p.admin, "bot").await;
    let id = approval_id(&park(&p, &bot, "/tickets/13/close", &[], b"{\"r\":1}").await);
    let before = admin(p.admin, ALICE, "GET", "/policy", None).await.json();
    let text = std::fs::read_to_string(&p.config_path).unwrap();
    common::write_atomically(
        &p.config_path,
        text.replace(
            "  bot3:",
            "  bot4: { profile: drafter, tenant: acme }\n  bot3:",
        )
        .as_bytes(),
    );
    let r = admin(p.admin, ISSUER, "POST", "/reload", None).await;
    assert!(
        (200..300).contains(&r.status),
        "reload: {} {}",
        r.status,
        r.text()
    );
    let after = admin(p.admin, ALICE, "GET", "/policy", None).await.json();
    assert_ne!(
        before["policy_version"], after["policy_version"],
        "the reload did not change the policy version"
    );
    let r = approve(p.admin, ALICE, &id, None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = wait_state(p.admin, &id, "executed", BOUND).await;
    assert_eq!(v["upstream_status"], RESULT_STATUS, "{v}");
    assert!(up.wait_got(1, BOUND).await);
    assert_eq!(up.hits(), 1);
}

/// The webhook never holds up the agent's 202: one that accepts and never answers, and
/// one that is not there at all.
#[tokio::test(flavor = "multi_thread")]
async fn webhook_that_hangs_or_is_down_does_not_block_the_park() {
    let hang = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hang_url = format!("http://{}/hook", hang.local_addr().unwrap());
    let accepted = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = accepted.clone();
    let task = tokio::spawn(async move {
        while let Ok((s, _)) = hang.accept().await {
            keep.lock().unwrap().push(s);
        }
    });
    let dead_url = format!("http://{}/hook", common::dead_port());
    for (what, url) in [("hanging", hang_url), ("down", dead_url)] {
        let up = ReplayUpstream::start().await;
        let p = start(
            &up,
            EMBEDDED,
            "notify: { webhook: { url_env: HOOK } }",
            &[("HOOK", &url)],
        );
        let (bot, _) = issue(p.admin, "bot").await;
        for n in 0..3 {
            let t = std::time::Instant::now();
            let r = agent_call(
                p.addr,
                &bot,
                "POST",
                &format!("/tickets/{n}/close"),
                &[],
                b"{}",
            )
            .await;
            let took = t.elapsed();
            check_parked(&format!("park #{n} with the webhook {what}"), &r);
            // A park takes milliseconds; one that waited on the webhook would take its
            // 5-s timeout. The bound tells the two apart with room for a loaded machine.
            assert!(
                took < Duration::from_secs(4),
                "park #{n} took {took:?} with the webhook {what}"
            );
        }
    }
    assert!(
        !accepted.lock().unwrap().is_empty(),
        "the hanging webhook was never called (is the webhook wired?)"
    );
    task.abort();
}

/// Parks and approves one request on a proxy with `limits.max_result_bytes: cap`; returns
/// the agent's `GET /_portcullis/approvals/{id}/result` once executed.
async fn result_with_cap(cap: usize) -> common::Resp {
    let up = ReplayUpstream::start().await;
    let p = start(
        &up,
        EMBEDDED,
        &format!("limits: {{ max_result_bytes: {cap} }}"),
        &[],
    );
    let (bot, _) = issue(p.admin, "bot").await;
    let id = approval_id(&park(&p, &bot, "/tickets/14/close", &[], b"{}").await);
    let r = approve(p.admin, ALICE, &id, None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let s = agent_wait_status(&p, &bot, &id, "executed").await;
    assert_eq!(s["upstream_status"], RESULT_STATUS, "cap {cap}: {s}");
    let r = agent_call(
        p.addr,
        &bot,
        "GET",
        &format!("/_portcullis/approvals/{id}/result"),
        &[],
        b"",
    )
    .await;
    assert_eq!(r.status, RESULT_STATUS, "cap {cap}: {}", r.text());
    assert_eq!(
        r.header("x-upstream-marker"),
        Some(RESULT_MARKER),
        "cap {cap}: the upstream's headers are kept: {:?}",
        r.headers
    );
    assert_eq!(up.hits(), 1, "cap {cap}: upstream calls");
    r
}

/// A result over `max_result_bytes` is kept only up to the cap and marked
/// `Portcullis-Result-Truncated: true` (README "Approvals"); it still counts as executed.
/// One that fits exactly is whole and carries no such header.
#[tokio::test(flavor = "multi_thread")]
async fn result_over_max_result_bytes_is_cut_and_marked_truncated() {
    let whole = RESULT_BODY.len();
    let (fits, cut) = tokio::join!(result_with_cap(whole), result_with_cap(whole - 1));

    assert_eq!(&fits.body[..], RESULT_BODY, "a result of exactly the cap");
    assert_eq!(
        fits.header("portcullis-result-truncated"),
        None,
        "a result that fits is marked truncated: {:?}",
        fits.headers
    );

    assert_eq!(
        &cut.body[..],
        &RESULT_BODY[..whole - 1],
        "a result one byte over the cap: the first cap bytes"
    );
    assert_eq!(
        cut.header_all("portcullis-result-truncated"),
        vec!["true"],
        "a cut result is marked: {:?}",
        cut.headers
    );
}
