//! Conditions end to end, through the real binary and a real upstream: a refund granted
//! or parked by its amount, bodies the gate cannot read refused, a query parameter
//! raising the risk, the deciding condition in the deny JSON, the approval and the audit
//! trail, the same over MCP, and `explain` / `test` / `check` with bodies.

use crate::common::{run_bin, Behaviour, Head, Proxy, Upstream};
use crate::mcp::{text_of, Mcp};
use crate::support::admin::{assert_denied, issue, op_ok, policy_version, Deny};
use crate::support::approvals::{self as ap, agent_call, check_parked};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::time::Duration;

const SMALL: &str = "request.body.amount <= 50";
const LARGE: &str = "request.body.amount > 100";
const FORCE: &str = "has(request.query.force) && 'true' in request.query.force";

fn config(url: &str) -> String {
    format!(
        r#"{head}  - {{ name: alice, token_sha256: "{alice}", roles: [viewer, approver] }}
limits: {{ max_inspected_body_bytes: 4096 }}
upstreams:
  api: {{ url: "{url}/v1" }}
routes:
  - prefix: /tickets
    upstream: api
    tool_prefix: tickets
    paths: ["/tickets/{{id}}", "/tickets/{{id}}/comments"]
    tools:
      - {{ match: "POST /tickets/{{id}}/refund", name: tickets.refund, risk: medium }}
      - match: "DELETE /tickets/{{id}}"
        name: tickets.delete
        risk: high
        when_risk: [{{ when: "{FORCE}", risk: critical }}]
profiles:
  support:
    tools:
      - tickets.get
      - tickets.delete
      - "tickets.comments.*"
      - {{ tool: tickets.refund, when: "{SMALL}" }}
    approval:
      - {{ tool: tickets.refund, when: "{LARGE}" }}
    max_risk: high
agents:
  bot: {{ profile: support, tenant: acme }}
"#,
        head = Head::new(),
        alice = ap::sha_hex(ap::ALICE),
    )
}

async fn start() -> (Upstream, Proxy, String) {
    let up = Upstream::start(Behaviour::Echo).await;
    let p = Proxy::start(&config(&up.url()), &[]);
    let token = issue(&p, json!({"agent": "bot", "ttl": "1h"})).await.token;
    (up, p, token)
}

const JSON: (&str, &str) = ("content-type", "application/json");

fn records(p: &Proxy) -> Vec<Value> {
    p.audit_text()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|r: &Value| r["event"] == "request")
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn refunds_are_granted_or_parked_by_amount() {
    let (up, p, token) = start().await;
    let pv = policy_version(&p).await;
    // 50: granted by its condition; the upstream gets the bytes as sent.
    let small = br#"{ "amount": 50,  "note": "caf\u00e9" }"#;
    let r = agent_call(p.addr, &token, "POST", "/tickets/7/refund", &[JSON], small).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.hits(), 1);
    assert_eq!(up.last().body, small, "forwarded byte for byte");
    // 500: parked; the approval binds the bytes received and names the condition.
    let large = br#"{"amount":500}"#;
    let r = agent_call(p.addr, &token, "POST", "/tickets/7/refund", &[JSON], large).await;
    let v = check_parked("refund of 500", &r);
    let id = v["approval_id"].as_str().unwrap();
    let a = op_ok(&p, "GET", &format!("/approvals/{id}"), None).await;
    assert_eq!(a["condition"], LARGE, "{a}");
    assert_eq!(a["body"], std::str::from_utf8(large).unwrap());
    assert_eq!(a["body_sha256"], hex::encode(Sha256::digest(large)));
    assert_eq!(up.hits(), 1, "nothing parked reaches the upstream");
    // 75: neither holds; the deny names the grant's condition.
    let r = agent_call(
        p.addr,
        &token,
        "POST",
        "/tickets/7/refund",
        &[JSON],
        br#"{"amount":75}"#,
    )
    .await;
    let want = Deny {
        reason: "not_granted",
        tool: "tickets.refund",
        risk: "medium",
        policy_version: &pv,
    };
    assert_denied("refund of 75", &r, &want);
    assert_eq!(r.json()["condition"], SMALL);
    // `GET /explain` with the same body says the same, naming the condition.
    let e = op_ok(
        &p,
        "GET",
        "/explain?agent=bot&method=POST&path=/tickets/7/refund&body=%7B%22amount%22%3A500%7D",
        None,
    )
    .await;
    assert_eq!(e["decision"], "park", "{e}");
    assert_eq!(e["condition"], LARGE, "{e}");
    // Approved, it is replayed (its conditions run again over the parked bytes).
    let r = ap::approve(p.admin, ap::ALICE, id, None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    ap::wait_state(p.admin, id, "executed", ap::BOUND).await;
    assert_eq!(up.hits(), 2);
    assert_eq!(up.last().body, large, "replayed byte for byte");
    // Audit records carry the deciding condition.
    let recs = records(&p);
    let by_decision = |d: &str| {
        recs.iter()
            .find(|r| r["tool"] == "tickets.refund" && r["decision"] == d)
            .unwrap_or_else(|| panic!("no {d} record in {recs:?}"))
    };
    assert_eq!(by_decision("allow")["condition"], SMALL);
    assert_eq!(by_decision("park")["condition"], LARGE);
    assert_eq!(by_decision("deny")["condition"], SMALL);
    assert_eq!(up.hits(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn bodies_the_gate_cannot_read_are_refused() {
    let (up, p, token) = start().await;
    let pv = policy_version(&p).await;
    let want = Deny {
        reason: "uninspectable_body",
        tool: "tickets.refund",
        risk: "medium",
        policy_version: &pv,
    };
    let cases: [(&str, (&str, &str), &[u8]); 5] = [
        (
            "a duplicate amount (a backend reading the last sees 5000)",
            JSON,
            br#"{"amount": 5, "amount": 5000}"#,
        ),
        (
            "a duplicate key deeper down",
            JSON,
            br#"{"amount": 5, "meta": {"k": 1, "k": 2}}"#,
        ),
        ("a top-level array", JSON, br#"[{"amount": 5}]"#),
        ("invalid UTF-8", JSON, b"{\"amount\": 5, \"n\": \"\xff\"}"),
        (
            "a form body on a conditional tool",
            ("content-type", "application/x-www-form-urlencoded"),
            b"amount=5",
        ),
    ];
    for (what, ct, body) in cases {
        let r = agent_call(p.addr, &token, "POST", "/tickets/7/refund", &[ct], body).await;
        assert_denied(what, &r, &want);
    }
    // Over `limits.max_inspected_body_bytes`: 413 before anything is decided.
    let big = format!(r#"{{"amount": 5, "pad": "{}"}}"#, "x".repeat(5000));
    let r = agent_call(
        p.addr,
        &token,
        "POST",
        "/tickets/7/refund",
        &[JSON],
        big.as_bytes(),
    )
    .await;
    assert_eq!(r.status, 413, "{}", r.text());
    // A tool with no condition is not inspected: any body passes as it is.
    let r = agent_call(
        p.addr,
        &token,
        "POST",
        "/tickets/7/comments",
        &[("content-type", "text/plain")],
        b"{\"a\":1,\"a\":2}",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.hits(), 1, "only the unconditional request was forwarded");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_query_parameter_raises_the_risk() {
    let (up, p, token) = start().await;
    let pv = policy_version(&p).await;
    let r = agent_call(p.addr, &token, "DELETE", "/tickets/7", &[], b"").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = agent_call(p.addr, &token, "DELETE", "/tickets/7?force=true", &[], b"").await;
    let want = Deny {
        reason: "risk_ceiling",
        tool: "tickets.delete",
        risk: "critical",
        policy_version: &pv,
    };
    assert_denied("forced delete", &r, &want);
    assert_eq!(r.json()["condition"], FORCE);
    assert_eq!(up.hits(), 1);
    let recs = records(&p);
    let denied = recs
        .iter()
        .find(|r| r["decision"] == "deny")
        .expect("a deny record");
    assert_eq!(denied["risk"], "critical");
    assert_eq!(denied["condition"], FORCE);
}

#[tokio::test(flavor = "multi_thread")]
async fn conditions_apply_to_mcp_calls() {
    let (up, p, token) = start().await;
    let mut m = Mcp::modern(p.addr, &token, false);
    let r = m
        .tool("tickets.refund", json!({"id": "7", "body": {"amount": 75}}))
        .await;
    assert_eq!(r["isError"], true, "{r}");
    assert_eq!(r["structuredContent"]["reason"], "not_granted", "{r}");
    assert_eq!(r["structuredContent"]["condition"], SMALL, "{r}");
    assert!(text_of(&r).contains(SMALL));
    assert_eq!(up.hits(), 0);
    let r = m
        .tool("tickets.refund", json!({"id": "7", "body": {"amount": 20}}))
        .await;
    assert_eq!(r["isError"], false, "{r}");
    assert_eq!(up.hits(), 1);
    assert_eq!(up.last().body, br#"{"amount":20}"#);
}

#[test]
fn explain_test_and_check_take_bodies_and_show_conditions() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("routes.yaml");
    std::fs::write(&cfg, config("http://127.0.0.1:9")).unwrap();
    let cfg_s = cfg.to_str().unwrap();
    let bound = Duration::from_secs(60);
    let out = run_bin(
        &[
            "explain",
            "--config",
            cfg_s,
            "--agent",
            "bot",
            "--body",
            r#"{"amount": 500}"#,
            "POST",
            "/tickets/7/refund",
        ],
        &[],
        bound,
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!("when:     {LARGE} → true")),
        "{text}"
    );
    assert!(text.contains("decision: park"), "{text}");
    // Policy test files: `body:` and `body_file:`, `condition:` expected.
    std::fs::write(dir.path().join("big.json"), r#"{"amount": 900}"#).unwrap();
    let cases = format!(
        r#"
- {{ agent: bot, request: "POST /tickets/7/refund", body: {{ amount: 50 }}, expect: allow, condition: "{SMALL}" }}
- {{ agent: bot, request: "POST /tickets/7/refund", body_file: big.json, expect: park, condition: "{LARGE}" }}
- {{ agent: bot, request: "DELETE /tickets/7?force=true", expect: deny, reason: risk_ceiling }}
"#
    );
    let file = dir.path().join("policy.yaml");
    std::fs::write(&file, cases).unwrap();
    let out = run_bin(
        &["test", "--config", cfg_s, file.to_str().unwrap()],
        &[],
        bound,
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("3 passed, 0 failed"), "{text}");
    // `check` lists the conditional entries per profile.
    let out = run_bin(&["check", "--config", cfg_s], &[], bound);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!("support  tools     tickets.refund  when {SMALL}")),
        "{text}"
    );
    assert!(
        text.contains(&format!("tickets.delete  risk critical when {FORCE}")),
        "{text}"
    );
}
