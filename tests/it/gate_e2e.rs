//! Identity and the gate end to end, through the real `portcullis serve` binary and a
//! real upstream that counts what reaches it: credentials (malformed, unknown, revoked,
//! expired, narrowed), operator roles, every deny reason of DESIGN.md's gate with its
//! JSON shape, rate limits and budgets, tenant injection, the tool listing, `explain`
//! and `test`, and hot reload.

use crate::common;

use crate::common::run_bin;
use crate::common::{Behaviour, Head, Proxy, Upstream, OPERATOR_SECRET};
use crate::support::admin::{
    admin_call, assert_denied, assert_unauthenticated, call, issue, op, op_ok, policy_version,
    retry_after, unauth_shape, Deny,
};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::time::{Duration, Instant};

/// The upstream credential the proxy injects (never held by an agent).
const UPSTREAM_KEY: &str = "upstream-key-7d1e0c55";
/// A second operator with only the `viewer` role.
const VIEWER_SECRET: &str = "pco-test-viewer-0b8d2f6a4c1e9735";

fn sha_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// The routes, profiles and agents every test here shares. `routes` lets the reload
/// test drop one.
/// `full: false` is the trimmed variant the reload test swaps in: no `/reports` route
/// and no agent `other`.
fn gate_config_text(url: &str, full: bool) -> String {
    let (reports, other) = if full {
        (
            "  - { prefix: /reports, upstream: api, tool_prefix: reports }\n",
            "  other: { profile: drafter, tenant: globex }\n",
        )
    } else {
        ("", "")
    };
    format!(
        r#"{head}  - {{ name: watcher, token_sha256: "{viewer}", roles: [viewer] }}
upstreams:
  api:
    url: {url}/v1
    inject: {{ header: Authorization, value_env: API_KEY }}
    tenant_header: X-Tenant-Id
routes:
  - prefix: /tickets
    upstream: api
    tool_prefix: tickets
    paths: ["/tickets/{{id}}", "/tickets/{{id}}/comments"]
    sensitive_paths: ["/tickets/{{id}}/export"]
    tools:
      - {{ match: "POST /tickets/{{id}}/refund", name: tickets.refund, risk: critical }}
  - {{ prefix: /notes, upstream: api, tool_prefix: notes }}
  - {{ prefix: /orgs, upstream: api, tool_prefix: orgs }}
{reports}profiles:
  drafter:
    tools: ["tickets.get", "tickets.list", "tickets.comments.*", "tickets.export.*", "tickets.delete", "notes.*", "reports.*"]
    resources: ["/tickets", "/tickets/{{*rest}}", "/reports", "/reports/{{*rest}}"]
    max_risk: medium
    approval: ["tickets.refund"]
    deny: ["*.delete"]
  limited:
    tools: ["tickets.*"]
    max_risk: low
    rate_limit: {{ per_minute: 3 }}
  tenanted:
    tools: ["orgs.*"]
    resources: ["/orgs/{{tenant}}", "/orgs/{{tenant}}/{{*rest}}"]
    max_risk: medium
  broad:
    tools: ["tickets.*"]
    max_risk: high
    deny: ["tickets.comments.delete", "tickets.export.*"]
agents:
  bot: {{ profile: drafter, tenant: acme }}
  broadbot: {{ profile: broad, tenant: acme }}
{other}  slow: {{ profile: limited, tenant: acme }}
  scoped: {{ profile: tenanted, tenant: acme }}
"#,
        head = Head::new(),
        viewer = sha_hex(VIEWER_SECRET),
    )
}

fn gate_config(up: &Upstream) -> String {
    gate_config_text(&up.url(), true)
}

async fn start() -> (Upstream, Proxy) {
    let up = Upstream::start(Behaviour::Echo).await;
    let p = Proxy::start(&gate_config(&up), &[("API_KEY", UPSTREAM_KEY)]);
    (up, p)
}

async fn bot_token(p: &Proxy) -> String {
    issue(p, json!({"agent": "bot", "ttl": "1h"})).await.token
}

/// An allowed request: 2xx from the upstream, one more hit.
async fn expect_allowed(
    what: &str,
    up: &Upstream,
    p: &Proxy,
    method: &str,
    path: &str,
    token: &str,
) {
    let before = up.hits();
    let r = call(p.addr, method, path, token).await;
    assert_eq!(
        r.status,
        200,
        "{what}: {method} {path} should be allowed; got {}",
        r.text()
    );
    assert_eq!(
        up.hits(),
        before + 1,
        "{what}: the allowed request reached the upstream once"
    );
}

/// A raw request with the given extra header lines and no harness-added credential.
async fn raw_with_headers(p: &Proxy, path: &str, extra: &str) -> common::Resp {
    let host = p.addr.to_string();
    common::raw_request(
        p.addr,
        &common::raw_get("GET", path.as_bytes(), &host, "", extra),
    )
    .await
}

// ---------------------------------------------------------------------------------------
// Credentials
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn bad_credentials_get_401_and_never_reach_the_upstream() {
    let (up, p) = start().await;
    let good = issue(&p, json!({"agent": "bot", "ttl": "1h"})).await;
    let (_, secret) = good.token.rsplit_once('_').unwrap();
    let unknown_id = format!("pcx_{}_{}", "0".repeat(32), secret);
    let wrong_secret = format!("pcx_{}_{}", good.id, "ab".repeat(32));
    let truncated = &good.token[..good.token.len() - 1];

    let cases: Vec<(&str, String)> = vec![
        ("no Authorization", String::new()),
        (
            "malformed pcx_zz",
            "Authorization: Bearer pcx_zz\r\n".into(),
        ),
        (
            "Bearer scheme missing",
            format!("Authorization: {}\r\n", good.token),
        ),
        (
            "Basic scheme",
            format!("Authorization: Basic {}\r\n", good.token),
        ),
        (
            "Basic user:pass",
            "Authorization: Basic Ym90OnNlY3JldA==\r\n".into(),
        ),
        (
            "two Authorization headers (both the valid token)",
            format!(
                "Authorization: Bearer {t}\r\nAuthorization: Bearer {t}\r\n",
                t = good.token
            ),
        ),
        ("empty Bearer", "Authorization: Bearer \r\n".into()),
        (
            "unknown id",
            format!("Authorization: Bearer {unknown_id}\r\n"),
        ),
        (
            "known id, wrong secret",
            format!("Authorization: Bearer {wrong_secret}\r\n"),
        ),
        (
            "truncated token",
            format!("Authorization: Bearer {truncated}\r\n"),
        ),
        (
            "operator token on the agent port",
            format!("Authorization: Bearer {OPERATOR_SECRET}\r\n"),
        ),
    ];
    let mut shapes = Vec::new();
    for (what, extra) in &cases {
        let r = raw_with_headers(&p, "/tickets/1", extra).await;
        assert_unauthenticated(what, &r);
        shapes.push((what.to_string(), unauth_shape(&r)));
    }
    assert_eq!(
        up.hits(),
        0,
        "no unauthenticated request reached the upstream"
    );
    // Every 401 looks the same: nothing tells a prober which check failed.
    for (what, s) in &shapes[1..] {
        assert_eq!(
            s, &shapes[0].1,
            "401 body for `{what}` differs from the others"
        );
    }
    // The control: the same token, sent properly, works.
    expect_allowed("valid token", &up, &p, "GET", "/tickets/1", &good.token).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn revoked_token_is_refused_on_the_next_request() {
    let (up, p) = start().await;
    let t = issue(&p, json!({"agent": "bot", "ttl": "1h"})).await;
    let keep = bot_token(&p).await;
    expect_allowed("before revoke", &up, &p, "GET", "/tickets/1", &t.token).await;
    // Twice, so the credential is certainly cached.
    expect_allowed(
        "before revoke (cached)",
        &up,
        &p,
        "GET",
        "/tickets/1",
        &t.token,
    )
    .await;

    let v = op_ok(&p, "DELETE", &format!("/tokens/{}", t.id), None).await;
    assert_eq!(v["revoked"], json!(true), "DELETE /tokens answer: {v}");
    let hits = up.hits();
    let r = call(p.addr, "GET", "/tickets/1", &t.token).await;
    assert_unauthenticated("right after revoke (same node)", &r);
    assert_eq!(up.hits(), hits, "a revoked token reached the upstream");

    // The listing shows it revoked; another token of the same agent is unaffected.
    let list = op_ok(&p, "GET", "/tokens", None).await;
    let row = list["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == json!(t.id))
        .cloned()
        .unwrap_or_else(|| panic!("revoked token not listed: {list}"));
    assert_eq!(row["state"], json!("revoked"), "{row}");
    expect_allowed(
        "other token of the agent",
        &up,
        &p,
        "GET",
        "/tickets/1",
        &keep,
    )
    .await;
    // Revoking an unknown id is a 404, not a success.
    let r = op(&p, "DELETE", &format!("/tokens/{}", "f".repeat(32)), None).await;
    assert_eq!(r.status, 404, "revoke unknown id: {}", r.text());
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_token_is_refused() {
    let (up, p) = start().await;
    // Taken before the token is asked for: the proxy starts its ttl later than this.
    let issued_at = Instant::now();
    let t = issue(&p, json!({"agent": "bot", "ttl": "300ms"})).await;
    let keep = bot_token(&p).await;
    // Until the short-lived token stops working (bounded), it works.
    let r = common::eventually(
        "a 300ms token refused once expired",
        Duration::from_secs(10),
        || async {
            let r = call(p.addr, "GET", "/tickets/1", &t.token).await;
            match r.status {
                401 => Ok(r),
                200 => Err("still served".to_string()),
                s => panic!("before expiry: {s} {}", r.text()),
            }
        },
    )
    .await;
    assert_unauthenticated("expired", &r);
    assert!(
        issued_at.elapsed() >= Duration::from_millis(300),
        "the token was refused before its ttl could have passed"
    );
    let hits = up.hits();
    for _ in 0..3 {
        assert_unauthenticated(
            "expired, again",
            &call(p.addr, "GET", "/tickets/1", &t.token).await,
        );
    }
    assert_eq!(up.hits(), hits, "an expired token reached the upstream");
    let list = op_ok(&p, "GET", "/tokens", None).await;
    let row = list["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == json!(t.id))
        .cloned()
        .unwrap_or_else(|| panic!("expired token not listed: {list}"));
    assert_eq!(row["state"], json!("expired"), "{row}");
    assert_eq!(
        row["issued_by"],
        json!("tester"),
        "the issuing operator is recorded: {row}"
    );
    expect_allowed(
        "a 1h token still works",
        &up,
        &p,
        "GET",
        "/tickets/1",
        &keep,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_issue_validation() {
    let (_up, p) = start().await;
    for (what, body, reason) in [
        (
            "unknown agent",
            json!({"agent": "nobody", "ttl": "1h"}),
            "unknown_agent",
        ),
        (
            "bad ttl",
            json!({"agent": "bot", "ttl": "forever"}),
            "bad_ttl",
        ),
        ("zero ttl", json!({"agent": "bot", "ttl": "0s"}), "bad_ttl"),
        (
            "bad max_risk",
            json!({"agent": "bot", "ttl": "1h", "max_risk": "extreme"}),
            "bad_risk",
        ),
        (
            "empty tool pattern",
            json!({"agent": "bot", "ttl": "1h", "tools": [""]}),
            "bad_tools",
        ),
        (
            "zero max_calls",
            json!({"agent": "bot", "ttl": "1h", "max_calls": 0}),
            "bad_max_calls",
        ),
        (
            "unknown key",
            json!({"agent": "bot", "ttl": "1h", "admin": true}),
            "bad_json",
        ),
    ] {
        let r = op(&p, "POST", "/tokens", Some(&body)).await;
        assert_eq!(r.status, 400, "{what}: {}", r.text());
        assert_eq!(r.reason().as_deref(), Some(reason), "{what}: {}", r.text());
    }
    // Control: a valid issue is accepted, and is the only token listed.
    let ok = op(
        &p,
        "POST",
        "/tokens",
        Some(&json!({"agent": "bot", "ttl": "1h"})),
    )
    .await;
    assert_eq!(ok.status, 201, "{}", ok.text());
    let list = op_ok(&p, "GET", "/tokens", None).await;
    let ids: Vec<&str> = list["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["id"].as_str())
        .collect();
    assert_eq!(
        ids,
        vec![ok.json()["id"].as_str().unwrap()],
        "refused issues store nothing: {list}"
    );
}

// ---------------------------------------------------------------------------------------
// Narrowed tokens
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn narrowed_tokens_cannot_exceed_their_narrowing() {
    let (up, p) = start().await;
    let pv = policy_version(&p).await;

    // tools: only tickets.list
    let list_only = issue(
        &p,
        json!({"agent": "bot", "ttl": "1h", "tools": ["tickets.list"]}),
    )
    .await;
    expect_allowed(
        "narrowed tools: in scope",
        &up,
        &p,
        "GET",
        "/tickets",
        &list_only.token,
    )
    .await;
    let hits = up.hits();
    let r = call(p.addr, "GET", "/tickets/1", &list_only.token).await;
    assert_denied(
        "narrowed tools: out of scope",
        &r,
        &Deny {
            reason: "token_scope",
            tool: "tickets.get",
            risk: "low",
            policy_version: &pv,
        },
    );
    assert_eq!(up.hits(), hits);

    // max_risk: low
    let low = issue(&p, json!({"agent": "bot", "ttl": "1h", "max_risk": "low"})).await;
    expect_allowed(
        "max_risk low: low tool",
        &up,
        &p,
        "GET",
        "/tickets/1",
        &low.token,
    )
    .await;
    let hits = up.hits();
    let r = call(p.addr, "POST", "/tickets/1/comments", &low.token).await;
    assert_denied(
        "max_risk low: medium tool",
        &r,
        &Deny {
            reason: "risk_ceiling",
            tool: "tickets.comments.create",
            risk: "medium",
            policy_version: &pv,
        },
    );
    assert_eq!(up.hits(), hits);

    // A token cannot widen its agent's profile.
    let wide = issue(
        &p,
        json!({"agent": "bot", "ttl": "1h", "tools": ["*"], "max_risk": "critical"}),
    )
    .await;
    let r = call(p.addr, "GET", "/tickets/1/export", &wide.token).await;
    assert_denied(
        "wide token: above the profile ceiling",
        &r,
        &Deny {
            reason: "risk_ceiling",
            tool: "tickets.export.list",
            risk: "high",
            policy_version: &pv,
        },
    );
    let r = call(p.addr, "PUT", "/tickets/1", &wide.token).await;
    assert_denied(
        "wide token: tool the profile does not grant",
        &r,
        &Deny {
            reason: "not_granted",
            tool: "tickets.update",
            risk: "medium",
            policy_version: &pv,
        },
    );
    let r = call(p.addr, "DELETE", "/tickets/1", &wide.token).await;
    assert_denied(
        "wide token: tool the profile denies",
        &r,
        &Deny {
            reason: "profile_deny",
            tool: "tickets.delete",
            risk: "high",
            policy_version: &pv,
        },
    );
    assert_eq!(up.hits(), hits, "no widened request reached the upstream");

    // max_calls: 2 → the third allowed call is 429 token_budget.
    let budget = issue(&p, json!({"agent": "bot", "ttl": "1h", "max_calls": 2})).await;
    expect_allowed("budget call 1", &up, &p, "GET", "/tickets/1", &budget.token).await;
    expect_allowed("budget call 2", &up, &p, "GET", "/tickets/1", &budget.token).await;
    let hits = up.hits();
    for i in 0..2 {
        let r = call(p.addr, "GET", "/tickets/1", &budget.token).await;
        assert_eq!(r.status, 429, "budget spent (#{i}): {}", r.text());
        assert_eq!(r.reason().as_deref(), Some("token_budget"), "{}", r.text());
        assert!(retry_after("token_budget", &r) >= 1);
    }
    assert_eq!(up.hits(), hits, "a spent budget reached the upstream");
    // The gate decides before the budget is looked at: a denied request is a 403.
    let r = call(p.addr, "DELETE", "/tickets/1", &budget.token).await;
    assert_denied(
        "spent budget, denied tool",
        &r,
        &Deny {
            reason: "profile_deny",
            tool: "tickets.delete",
            risk: "high",
            policy_version: &pv,
        },
    );
    // The budget is the token's, not the agent's.
    let plain = bot_token(&p).await;
    expect_allowed(
        "another token of the agent",
        &up,
        &p,
        "GET",
        "/tickets/1",
        &plain,
    )
    .await;
}

// ---------------------------------------------------------------------------------------
// Operators and the admin API
// ---------------------------------------------------------------------------------------

async fn switches(p: &Proxy) -> Value {
    op_ok(p, "GET", "/switches", None).await
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_api_refuses_agents_and_enforces_roles() {
    let (up, p) = start().await;
    let agent = bot_token(&p).await;
    let before = switches(&p).await;
    let pause_all = json!({"scope": "all"});

    // An agent credential is never accepted on the admin API: 403.
    for (m, path, body) in [
        ("GET", "/policy", None),
        ("GET", "/tokens", None),
        ("GET", "/switches", None),
        ("POST", "/pause", Some(&pause_all)),
        (
            "POST",
            "/tokens",
            Some(&json!({"agent": "bot", "ttl": "1h"})),
        ),
        ("POST", "/reload", None),
    ] {
        let r = admin_call(p.admin, m, path, &agent, body).await;
        assert_eq!(
            r.status,
            403,
            "agent token on admin {m} {path}: {}",
            r.text()
        );
    }

    // No credential → 401.
    let r = admin_call(p.admin, "GET", "/policy", "", None).await;
    assert_eq!(r.status, 401, "no credential on admin: {}", r.text());
    let r = admin_call(
        p.admin,
        "POST",
        "/pause",
        "pco-not-an-operator",
        Some(&pause_all),
    )
    .await;
    assert_eq!(r.status, 401, "unknown operator: {}", r.text());

    // A viewer may look but not change.
    for path in ["/policy", "/switches", "/tokens", "/tools"] {
        let r = admin_call(p.admin, "GET", path, VIEWER_SECRET, None).await;
        assert_eq!(r.status, 200, "viewer GET {path}: {}", r.text());
    }
    for (m, path, body) in [
        ("POST", "/pause", Some(&pause_all)),
        ("POST", "/mode", Some(&json!({"draft_only": true}))),
        ("POST", "/agents/bot/disable", None),
        (
            "POST",
            "/tokens",
            Some(&json!({"agent": "bot", "ttl": "1h"})),
        ),
        ("POST", "/reload", None),
    ] {
        let r = admin_call(p.admin, m, path, VIEWER_SECRET, body).await;
        assert_eq!(r.status, 403, "viewer {m} {path}: {}", r.text());
    }
    let r = admin_call(p.admin, "GET", "/tokens", VIEWER_SECRET, None).await;
    assert_eq!(
        r.json()["tokens"].as_array().map(Vec::len),
        Some(1),
        "the viewer issued nothing"
    );

    assert_eq!(
        switches(&p).await,
        before,
        "refused calls changed no switch"
    );
    expect_allowed("traffic still flows", &up, &p, "GET", "/tickets/1", &agent).await;

    // healthz/readyz need no token.
    assert_eq!(
        admin_call(p.admin, "GET", "/healthz", "", None)
            .await
            .status,
        200
    );
    assert_eq!(
        admin_call(p.admin, "GET", "/readyz", "", None).await.status,
        200
    );
}

// ---------------------------------------------------------------------------------------
// Every deny reason of the gate, end to end
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn every_deny_reason_end_to_end() {
    let (up, p) = start().await;
    let pv = policy_version(&p).await;
    let bot = bot_token(&p).await;
    let other = issue(&p, json!({"agent": "other", "ttl": "1h"}))
        .await
        .token;

    // Each check: the request is denied with the right JSON and reaches nothing.
    async fn denied(
        up: &Upstream,
        p: &Proxy,
        what: &str,
        m: &str,
        path: &str,
        tok: &str,
        want: Deny<'_>,
    ) {
        let hits = up.hits();
        let r = call(p.addr, m, path, tok).await;
        assert_denied(what, &r, &want);
        assert_eq!(
            up.hits(),
            hits,
            "{what}: a denied request reached the upstream"
        );
    }
    let get1 = |reason| Deny {
        reason,
        tool: "tickets.get",
        risk: "low",
        policy_version: &pv,
    };

    // Baseline.
    expect_allowed("baseline bot", &up, &p, "GET", "/tickets/1", &bot).await;
    expect_allowed("baseline other", &up, &p, "GET", "/tickets/1", &other).await;

    // paused: all
    op_ok(&p, "POST", "/pause", Some(&json!({"scope": "all"}))).await;
    denied(
        &up,
        &p,
        "pause all (bot)",
        "GET",
        "/tickets/1",
        &bot,
        get1("paused"),
    )
    .await;
    denied(
        &up,
        &p,
        "pause all (other)",
        "GET",
        "/tickets/1",
        &other,
        get1("paused"),
    )
    .await;
    op_ok(&p, "POST", "/resume", Some(&json!({"scope": "all"}))).await;
    expect_allowed("after resume all", &up, &p, "GET", "/tickets/1", &bot).await;

    // paused: agent
    op_ok(
        &p,
        "POST",
        "/pause",
        Some(&json!({"scope": "agent", "target": "bot"})),
    )
    .await;
    denied(
        &up,
        &p,
        "pause agent bot",
        "GET",
        "/tickets/1",
        &bot,
        get1("paused"),
    )
    .await;
    expect_allowed(
        "pause agent bot: other runs",
        &up,
        &p,
        "GET",
        "/tickets/1",
        &other,
    )
    .await;
    op_ok(
        &p,
        "POST",
        "/resume",
        Some(&json!({"scope": "agent", "target": "bot"})),
    )
    .await;
    expect_allowed("after resume agent", &up, &p, "GET", "/tickets/1", &bot).await;

    // paused: tool
    op_ok(
        &p,
        "POST",
        "/pause",
        Some(&json!({"scope": "tool", "target": "tickets.get"})),
    )
    .await;
    denied(
        &up,
        &p,
        "pause tool tickets.get",
        "GET",
        "/tickets/1",
        &bot,
        get1("paused"),
    )
    .await;
    expect_allowed(
        "pause tool: other tools run",
        &up,
        &p,
        "GET",
        "/tickets",
        &bot,
    )
    .await;
    op_ok(
        &p,
        "POST",
        "/resume",
        Some(&json!({"scope": "tool", "target": "tickets.get"})),
    )
    .await;
    expect_allowed("after resume tool", &up, &p, "GET", "/tickets/1", &bot).await;

    // paused: tool by pattern
    op_ok(
        &p,
        "POST",
        "/pause",
        Some(&json!({"scope": "tool", "target": "tickets.*"})),
    )
    .await;
    denied(
        &up,
        &p,
        "pause tool tickets.*",
        "GET",
        "/tickets/1/comments",
        &bot,
        Deny {
            reason: "paused",
            tool: "tickets.comments.list",
            risk: "low",
            policy_version: &pv,
        },
    )
    .await;
    op_ok(
        &p,
        "POST",
        "/resume",
        Some(&json!({"scope": "tool", "target": "tickets.*"})),
    )
    .await;

    // paused: tenant
    op_ok(
        &p,
        "POST",
        "/pause",
        Some(&json!({"scope": "tenant", "target": "acme"})),
    )
    .await;
    denied(
        &up,
        &p,
        "pause tenant acme (bot is acme)",
        "GET",
        "/tickets/1",
        &bot,
        get1("paused"),
    )
    .await;
    expect_allowed(
        "pause tenant acme: globex runs",
        &up,
        &p,
        "GET",
        "/tickets/1",
        &other,
    )
    .await;
    op_ok(
        &p,
        "POST",
        "/resume",
        Some(&json!({"scope": "tenant", "target": "acme"})),
    )
    .await;
    expect_allowed("after resume tenant", &up, &p, "GET", "/tickets/1", &bot).await;

    // profile_deny
    denied(
        &up,
        &p,
        "profile deny *.delete",
        "DELETE",
        "/tickets/1",
        &bot,
        Deny {
            reason: "profile_deny",
            tool: "tickets.delete",
            risk: "high",
            policy_version: &pv,
        },
    )
    .await;

    // token_scope
    let scoped = issue(
        &p,
        json!({"agent": "bot", "ttl": "1h", "tools": ["tickets.list"]}),
    )
    .await
    .token;
    denied(
        &up,
        &p,
        "token narrowed to tickets.list",
        "GET",
        "/tickets/1",
        &scoped,
        get1("token_scope"),
    )
    .await;

    // out_of_scope: notes.* is granted but /notes is outside `resources`.
    denied(
        &up,
        &p,
        "outside resources",
        "GET",
        "/notes",
        &bot,
        Deny {
            reason: "out_of_scope",
            tool: "notes.list",
            risk: "low",
            policy_version: &pv,
        },
    )
    .await;

    // risk_ceiling: a sensitive path makes it high; the profile's ceiling is medium.
    denied(
        &up,
        &p,
        "above max_risk",
        "GET",
        "/tickets/1/export",
        &bot,
        Deny {
            reason: "risk_ceiling",
            tool: "tickets.export.list",
            risk: "high",
            policy_version: &pv,
        },
    )
    .await;

    // draft_only: only low risk runs.
    expect_allowed(
        "medium before draft-only",
        &up,
        &p,
        "POST",
        "/tickets/1/comments",
        &bot,
    )
    .await;
    op_ok(&p, "POST", "/mode", Some(&json!({"draft_only": true}))).await;
    denied(
        &up,
        &p,
        "draft-only mode",
        "POST",
        "/tickets/1/comments",
        &bot,
        Deny {
            reason: "draft_only",
            tool: "tickets.comments.create",
            risk: "medium",
            policy_version: &pv,
        },
    )
    .await;
    expect_allowed("low in draft-only", &up, &p, "GET", "/tickets/1", &bot).await;
    op_ok(&p, "POST", "/mode", Some(&json!({"draft_only": false}))).await;
    expect_allowed(
        "medium after draft-only off",
        &up,
        &p,
        "POST",
        "/tickets/1/comments",
        &bot,
    )
    .await;

    // not_granted
    denied(
        &up,
        &p,
        "tool not in the profile",
        "PUT",
        "/tickets/1",
        &bot,
        Deny {
            reason: "not_granted",
            tool: "tickets.update",
            risk: "medium",
            policy_version: &pv,
        },
    )
    .await;

    // agent_disabled
    op_ok(&p, "POST", "/agents/bot/disable", None).await;
    denied(
        &up,
        &p,
        "disabled agent",
        "GET",
        "/tickets/1",
        &bot,
        get1("agent_disabled"),
    )
    .await;
    expect_allowed(
        "disable bot: other runs",
        &up,
        &p,
        "GET",
        "/tickets/1",
        &other,
    )
    .await;
    op_ok(&p, "POST", "/agents/bot/enable", None).await;
    expect_allowed("after enable", &up, &p, "GET", "/tickets/1", &bot).await;
    let r = op(&p, "POST", "/agents/nobody/disable", None).await;
    assert_eq!(r.status, 404, "disabling an unknown agent: {}", r.text());

    // Everything was undone.
    let sw = switches(&p).await;
    for k in [
        "paused_agents",
        "paused_tools",
        "paused_tenants",
        "disabled_agents",
    ] {
        assert_eq!(sw[k], json!([]), "{k} in {sw}");
    }
    assert_eq!(sw["paused_all"], json!(false), "{sw}");
    assert_eq!(sw["draft_only"], json!(false), "{sw}");
}

#[tokio::test(flavor = "multi_thread")]
async fn pause_requires_a_valid_scope_and_target() {
    let (_up, p) = start().await;
    for (body, reason) in [
        (json!({"scope": "everything"}), "bad_scope"),
        (json!({"scope": "agent"}), "missing_target"),
        (json!({"scope": "tool", "target": ""}), "missing_target"),
        (json!({"target": "bot"}), "bad_json"),
    ] {
        let r = op(&p, "POST", "/pause", Some(&body)).await;
        assert_eq!(r.status, 400, "POST /pause {body}: {}", r.text());
        assert_eq!(r.reason().as_deref(), Some(reason), "{body}: {}", r.text());
    }
    let sw = switches(&p).await;
    assert_eq!(sw["paused_all"], json!(false), "{sw}");
}

// ---------------------------------------------------------------------------------------
// Rate limit
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn rate_limit_per_minute() {
    let (up, p) = start().await;
    let slow = issue(&p, json!({"agent": "slow", "ttl": "1h"})).await.token;
    let bot = bot_token(&p).await;
    for i in 1..=3 {
        expect_allowed(
            &format!("rate limit: request {i} of 3"),
            &up,
            &p,
            "GET",
            "/tickets/1",
            &slow,
        )
        .await;
    }
    let hits = up.hits();
    let r = call(p.addr, "GET", "/tickets/1", &slow).await;
    assert_eq!(r.status, 429, "4th request in a minute: {}", r.text());
    assert_eq!(r.reason().as_deref(), Some("rate_limited"), "{}", r.text());
    let secs = retry_after("rate_limited", &r);
    assert!(
        (1..=60).contains(&secs),
        "Retry-After {secs}s for a 3/minute limit"
    );
    assert_eq!(
        up.hits(),
        hits,
        "a rate-limited request reached the upstream"
    );
    // Refusals count against the rate too (issue 11): a request the profile would deny
    // is refused as rate limited, so a limited agent cannot flood the trail with denials.
    let r = call(p.addr, "POST", "/tickets/1/comments", &slow).await;
    assert_eq!(r.status, 429, "denied while rate limited: {}", r.text());
    assert_eq!(r.reason().as_deref(), Some("rate_limited"), "{}", r.text());
    // Per agent: another agent is not limited by it.
    expect_allowed("other agent unaffected", &up, &p, "GET", "/tickets/1", &bot).await;
}

// ---------------------------------------------------------------------------------------
// Tenant and credential injection
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn tenant_header_is_injected_and_client_copies_stripped() {
    let (up, p) = start().await;
    let bot = bot_token(&p).await;
    let other = issue(&p, json!({"agent": "other", "ttl": "1h"}))
        .await
        .token;
    let host = p.addr.to_string();
    let req = common::raw_get(
        "GET",
        b"/tickets/1",
        &host,
        &bot,
        "X-Tenant-Id: globex\r\nx-tenant-id: evil\r\n",
    );
    let r = common::raw_request(p.addr, &req).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.last();
    assert_eq!(
        seen.header_all("x-tenant-id"),
        vec!["acme"],
        "tenant header upstream: {:?}",
        seen.headers
    );
    assert_eq!(
        seen.header_all("authorization"),
        vec![UPSTREAM_KEY],
        "the upstream gets its own credential, never the agent's"
    );
    assert!(
        !seen.headers.iter().any(|(_, v)| v.contains(&bot)),
        "the agent token reached the upstream: {:?}",
        seen.headers
    );

    let r = call(p.addr, "GET", "/tickets/1", &other).await;
    assert_eq!(r.status, 200);
    assert_eq!(up.last().header_all("x-tenant-id"), vec!["globex"]);
}

// ---------------------------------------------------------------------------------------
// Tool listings
// ---------------------------------------------------------------------------------------

fn postures(v: &Value) -> Vec<(String, String, String)> {
    let mut out: Vec<(String, String, String)> = v["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("no tools array in {v}"))
        .iter()
        .map(|t| {
            let s = |k: &str| {
                t[k].as_str()
                    .unwrap_or_else(|| panic!("no {k} in {t}"))
                    .to_string()
            };
            (s("tool"), s("method"), s("posture"))
        })
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn portcullis_tools_lists_what_the_agent_may_call_or_request() {
    let (up, p) = start().await;
    let bot = bot_token(&p).await;
    let r = call(p.addr, "GET", "/_portcullis/tools", &bot).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["agent"], json!("bot"));
    let got = postures(&v);
    let has = |tool: &str, posture: &str| got.iter().any(|(t, _, p)| t == tool && p == posture);
    assert!(has("tickets.get", "allow"), "tickets.get allowed: {got:?}");
    assert!(has("tickets.comments.create", "allow"), "{got:?}");
    assert!(
        has("tickets.refund", "approval"),
        "tickets.refund is requested with approval: {got:?}"
    );
    for t in [
        "tickets.delete",
        "tickets.update",
        "tickets.comments.delete",
    ] {
        assert!(
            !got.iter().any(|(n, _, _)| n == t),
            "`{t}` is denied yet listed: {got:?}"
        );
    }
    for t in v["tools"].as_array().unwrap() {
        assert!(
            t["risk"].is_string() && t["template"].is_string(),
            "entry shape: {t}"
        );
    }
    // The admin view of the same agent agrees.
    let a = op_ok(&p, "GET", "/tools?agent=bot", None).await;
    assert_eq!(
        postures(&a),
        got,
        "GET /tools?agent=bot vs /_portcullis/tools"
    );

    // A narrowed token sees only its narrowing.
    let scoped = issue(
        &p,
        json!({"agent": "bot", "ttl": "1h", "tools": ["tickets.comments.*"]}),
    )
    .await
    .token;
    let v = call(p.addr, "GET", "/_portcullis/tools", &scoped)
        .await
        .json();
    let names: Vec<String> = postures(&v).into_iter().map(|(t, _, _)| t).collect();
    assert!(
        !names.is_empty() && names.iter().all(|t| t.starts_with("tickets.comments.")),
        "{names:?}"
    );

    // Needs a credential; never forwarded.
    assert_unauthenticated(
        "tools without token",
        &call(p.addr, "GET", "/_portcullis/tools", "").await,
    );
    assert_eq!(up.hits(), 0, "/_portcullis/ reached the upstream");
}

// ---------------------------------------------------------------------------------------
// explain and policy tests
// ---------------------------------------------------------------------------------------

/// Bound for one CLI run (a hung binary fails its test instead of hanging the suite).
const CLI_BOUND: Duration = Duration::from_secs(60);

fn portcullis(args: &[&str]) -> std::process::Output {
    run_bin(args, &[("API_KEY", UPSTREAM_KEY)], CLI_BOUND)
}

#[tokio::test(flavor = "multi_thread")]
async fn explain_cli_and_admin_agree() {
    let (up, p) = start().await;
    let cfg = p.config_path.to_str().unwrap().to_string();
    let cases = [
        ("GET", "/tickets/1", "allow", "tools", Some("tickets.get")),
        (
            "DELETE",
            "/tickets/1",
            "deny",
            "profile_deny",
            Some("tickets.delete"),
        ),
        (
            "GET",
            "/tickets/1/export",
            "deny",
            "risk_ceiling",
            Some("tickets.export.list"),
        ),
        (
            "PUT",
            "/tickets/1",
            "deny",
            "not_granted",
            Some("tickets.update"),
        ),
        ("GET", "/notes", "deny", "out_of_scope", Some("notes.list")),
        (
            "POST",
            "/tickets/1/refund",
            "park",
            "approval_required",
            Some("tickets.refund"),
        ),
        ("GET", "/nowhere", "deny", "no_route", None),
    ];
    for (m, path, decision, reason, tool) in cases {
        let q = format!(
            "/explain?agent=bot&method={m}&path={}",
            path.replace('/', "%2F")
        );
        let v = op_ok(&p, "GET", &q, None).await;
        assert_eq!(
            v["decision"],
            json!(decision),
            "GET /explain {m} {path}: {v}"
        );
        assert_eq!(v["reason"], json!(reason), "GET /explain {m} {path}: {v}");
        if let Some(t) = tool {
            assert_eq!(v["tool"], json!(t), "GET /explain {m} {path}: {v}");
        }

        let out = portcullis(&["explain", "--config", &cfg, "--agent", "bot", m, path]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "explain {m} {path} failed: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains(decision) && stdout.contains(reason),
            "CLI explain {m} {path} should print `{decision}` and `{reason}`:\n{stdout}"
        );
        if let Some(t) = tool {
            assert!(
                stdout.contains(t),
                "CLI explain {m} {path} names the tool `{t}`:\n{stdout}"
            );
        }
    }
    let out = portcullis(&[
        "explain",
        "--config",
        &cfg,
        "--agent",
        "nobody",
        "GET",
        "/tickets/1",
    ]);
    assert!(
        !out.status.success(),
        "explain for an unknown agent must fail"
    );
    assert_eq!(up.hits(), 0, "explain forwards nothing");
}

#[test]
fn policy_test_files_pass_and_fail_with_a_diff() {
    let dir = tempfile::tempdir().unwrap();
    // The proxy is not started: `test` only loads the config.
    let up_addr = common::dead_port();
    let cfg_text = gate_config_text(&format!("http://{up_addr}"), true);
    let cfg = dir.path().join("routes.yaml");
    std::fs::write(&cfg, cfg_text).unwrap();
    let pass = dir.path().join("pass.yaml");
    std::fs::write(
        &pass,
        r#"- { agent: bot, request: "GET /tickets/1", expect: allow }
- { agent: bot, request: "DELETE /tickets/1", expect: deny, reason: profile_deny }
- { agent: bot, request: "POST /tickets/1/refund", expect: park }
- { agent: slow, request: "POST /tickets/1/comments", expect: deny, reason: risk_ceiling }
"#,
    )
    .unwrap();
    let fail = dir.path().join("fail.yaml");
    std::fs::write(
        &fail,
        r#"- { agent: bot, request: "GET /tickets/1", expect: allow }
- { agent: bot, request: "DELETE /tickets/1", expect: allow }
"#,
    )
    .unwrap();
    let c = cfg.to_str().unwrap();

    let out = portcullis(&["test", "--config", c, pass.to_str().unwrap()]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "passing file:\n{text}");

    let out = portcullis(&["test", "--config", c, fail.to_str().unwrap()]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "failing file:\n{text}");
    let lower = text.to_lowercase();
    assert!(
        lower.contains("expected") && lower.contains("got"),
        "shows expected vs got:\n{text}"
    );
    assert!(
        text.contains("profile_deny"),
        "shows the actual reason:\n{text}"
    );
    assert!(
        text.contains("DELETE /tickets/1"),
        "names the failing case:\n{text}"
    );
}

// ---------------------------------------------------------------------------------------
// Hot reload
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn reload_removes_a_route_and_refuses_an_invalid_config() {
    let (up, p) = start().await;
    let bot = bot_token(&p).await;
    let other = issue(&p, json!({"agent": "other", "ttl": "1h"}))
        .await
        .token;
    let v1 = policy_version(&p).await;
    expect_allowed("route before reload", &up, &p, "GET", "/reports", &bot).await;
    expect_allowed("agent before reload", &up, &p, "GET", "/tickets/1", &other).await;

    // Remove the /reports route, then reload.
    p.write_config(&gate_config_text(&up.url(), false));
    let r = op(&p, "POST", "/reload", None).await;
    assert_eq!(r.status, 200, "POST /reload: {}", r.text());
    let v2 = policy_version(&p).await;
    assert_ne!(v1, v2, "GET /policy shows a new version after reload");
    assert_eq!(
        r.json()["policy_version"],
        json!(v2),
        "reload answers the version now in force"
    );

    let hits = up.hits();
    let r = call(p.addr, "GET", "/reports", &bot).await;
    assert_eq!(r.status, 403, "removed route: {}", r.text());
    assert_eq!(r.reason().as_deref(), Some("no_route"), "{}", r.text());
    assert_eq!(
        r.json()["policy_version"],
        json!(v2),
        "denied under the new policy"
    );
    assert_eq!(up.hits(), hits, "a removed route reached the upstream");
    expect_allowed(
        "other routes keep working",
        &up,
        &p,
        "GET",
        "/tickets/1",
        &bot,
    )
    .await;
    // An agent removed from the config: its credential no longer authenticates.
    assert_unauthenticated(
        "token of an agent removed by reload",
        &call(p.addr, "GET", "/tickets/1", &other).await,
    );
    assert_eq!(up.hits(), hits + 1, "a removed agent reached the upstream");

    // An invalid config is refused whole; the old one keeps serving.
    let mut bad = gate_config_text(&up.url(), true);
    bad.push_str("no_such_key: true\n");
    p.write_config(&bad);
    let r = op(&p, "POST", "/reload", None).await;
    assert_eq!(r.status, 422, "an invalid config on reload: {}", r.text());
    assert_eq!(
        r.reason().as_deref(),
        Some("invalid_config"),
        "{}",
        r.text()
    );
    // The error names the file, line and column, and the key.
    let detail = r.json()["detail"].as_str().unwrap_or_default().to_string();
    assert!(
        detail.contains("portcullis.yaml:") && detail.contains("no_such_key"),
        "{detail}"
    );
    assert_eq!(
        policy_version(&p).await,
        v2,
        "the previous version stays in force"
    );
    expect_allowed(
        "old config keeps serving",
        &up,
        &p,
        "GET",
        "/tickets/1",
        &bot,
    )
    .await;
    let r = call(p.addr, "GET", "/reports", &bot).await;
    assert_eq!(
        r.reason().as_deref(),
        Some("no_route"),
        "the invalid file's route is not live: {}",
        r.text()
    );
    // Tokens survive a reload.
    expect_allowed(
        "token issued before the reloads",
        &up,
        &p,
        "GET",
        "/tickets/1",
        &bot,
    )
    .await;
}

/// The policy version once it differs from `from` (bounded).
async fn changed_policy(p: &Proxy, from: &str, what: &str) -> String {
    common::eventually(what, Duration::from_secs(15), || async {
        let v = policy_version(p).await;
        if v != from {
            Ok(v)
        } else {
            Err(format!("still {v}"))
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn reload_on_sighup_and_on_file_change() {
    let (up, p) = start().await;
    let bot = bot_token(&p).await;
    let v1 = policy_version(&p).await;
    expect_allowed("before", &up, &p, "GET", "/reports", &bot).await;

    // A change to the file alone is picked up (bounded poll on GET /policy).
    p.write_config(&gate_config_text(&up.url(), false));
    let v = changed_policy(&p, &v1, "a change to the config file picked up").await;
    let r = call(p.addr, "GET", "/reports", &bot).await;
    assert_eq!(r.reason().as_deref(), Some("no_route"), "{}", r.text());

    // SIGHUP: put the full config back (renamed into place) with the mtime unchanged, so
    // only the signal can explain a reload.
    let before = std::fs::metadata(&p.config_path)
        .unwrap()
        .modified()
        .unwrap();
    let tmp = p.path("portcullis.yaml.sighup");
    std::fs::write(
        &tmp,
        common::with_test_timers(&gate_config_text(&up.url(), true)),
    )
    .unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&tmp).unwrap();
    f.set_modified(before).unwrap();
    drop(f);
    std::fs::rename(&tmp, &p.config_path).unwrap();
    // SAFETY: a signal to the child process this test spawned and still owns.
    let rc = unsafe { libc::kill(p.pid() as libc::pid_t, libc::SIGHUP) };
    assert_eq!(rc, 0, "kill(SIGHUP) failed");
    let v3 = changed_policy(&p, &v, "SIGHUP reloading the restored config").await;
    assert_eq!(
        v3, v1,
        "SIGHUP did not reload the (restored) config within 15s"
    );
    // The watcher may have noticed the rewrite too (its tick is 100 ms here): the trail
    // says which trigger reloaded, and the signal must be one of them.
    assert!(
        common::poll_until_async(Duration::from_secs(15), || p
            .audit_text()
            .contains("\"operator\":\"signal:SIGHUP\""))
        .await,
        "no reload record by signal:SIGHUP in the trail"
    );
    expect_allowed("route back after SIGHUP", &up, &p, "GET", "/reports", &bot).await;
}

// ---------------------------------------------------------------------------------------
// Precedence and tenant-scoped resources, end to end
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn gate_precedence_end_to_end() {
    let (up, p) = start().await;
    let pv = policy_version(&p).await;
    let bot = bot_token(&p).await;
    let list_only = issue(
        &p,
        json!({"agent": "bot", "ttl": "1h", "tools": ["tickets.list"]}),
    )
    .await
    .token;
    let d = |reason, tool, risk| Deny {
        reason,
        tool,
        risk,
        policy_version: &pv,
    };
    // profile_deny before token_scope.
    let r = call(p.addr, "DELETE", "/tickets/1", &list_only).await;
    assert_denied(
        "deny before scope",
        &r,
        &d("profile_deny", "tickets.delete", "high"),
    );
    // token_scope before out_of_scope.
    let r = call(p.addr, "GET", "/notes", &list_only).await;
    assert_denied(
        "scope before resources",
        &r,
        &d("token_scope", "notes.list", "low"),
    );
    // profile_deny before out_of_scope.
    let r = call(p.addr, "DELETE", "/notes/1", &bot).await;
    assert_denied(
        "deny before resources",
        &r,
        &d("profile_deny", "notes.delete", "high"),
    );
    // out_of_scope before the ceiling.
    let r = call(p.addr, "POST", "/notes/1/share", &bot).await;
    assert_denied(
        "resources before grant",
        &r,
        &d("out_of_scope", "notes.share.create", "medium"),
    );
    // paused before everything in the profile.
    op_ok(&p, "POST", "/pause", Some(&json!({"scope": "all"}))).await;
    let r = call(p.addr, "DELETE", "/tickets/1", &list_only).await;
    assert_denied("pause first", &r, &d("paused", "tickets.delete", "high"));
    // A disabled agent is refused as such even while paused.
    op_ok(&p, "POST", "/agents/bot/disable", None).await;
    let r = call(p.addr, "GET", "/tickets/1", &bot).await;
    assert_denied(
        "disabled over paused",
        &r,
        &d("agent_disabled", "tickets.get", "low"),
    );
    // Above the profile's own ceiling it stays risk_ceiling in draft-only mode.
    op_ok(&p, "POST", "/agents/bot/enable", None).await;
    op_ok(&p, "POST", "/resume", Some(&json!({"scope": "all"}))).await;
    op_ok(&p, "POST", "/mode", Some(&json!({"draft_only": true}))).await;
    let r = call(p.addr, "GET", "/tickets/1/export", &bot).await;
    assert_denied(
        "ceiling over draft",
        &r,
        &d("risk_ceiling", "tickets.export.list", "high"),
    );
    assert_eq!(up.hits(), 0, "no request in this test is allowed");
}

#[tokio::test(flavor = "multi_thread")]
async fn tenant_placeholder_scopes_resources_per_agent() {
    let (up, p) = start().await;
    let pv = policy_version(&p).await;
    let t = issue(&p, json!({"agent": "scoped", "ttl": "1h"}))
        .await
        .token;
    expect_allowed("own tenant", &up, &p, "GET", "/orgs/acme/items", &t).await;
    expect_allowed("own tenant root", &up, &p, "GET", "/orgs/acme", &t).await;
    let hits = up.hits();
    let r = call(p.addr, "GET", "/orgs/globex/items", &t).await;
    assert_denied(
        "another tenant's resources",
        &r,
        &Deny {
            reason: "out_of_scope",
            tool: "orgs.globex.items.list",
            risk: "low",
            policy_version: &pv,
        },
    );
    assert_eq!(up.hits(), hits);
}

#[tokio::test(flavor = "multi_thread")]
async fn sensitive_path_variants_keep_their_risk() {
    let (up, p) = start().await;
    let bot = bot_token(&p).await;
    // /tickets/{id}/export is sensitive (high); the profile's ceiling is medium.
    for path in [
        "/tickets/1/export",
        "/tickets/1/export/",
        "/tickets/1/export.json",
        "/tickets/1/EXPORT",
        "/tickets/1/Export.CSV",
    ] {
        let r = call(p.addr, "GET", path, &bot).await;
        assert_eq!(r.status, 403, "GET {path}: {}", r.text());
        assert_eq!(
            r.reason().as_deref(),
            Some("risk_ceiling"),
            "GET {path}: {}",
            r.text()
        );
        assert_eq!(r.json()["risk"], json!("high"), "GET {path}: {}", r.text());
        assert_eq!(
            r.json()["tool"],
            json!("tickets.export.list"),
            "GET {path}: the tool takes the name of the match that set the risk: {}",
            r.text()
        );
    }
    assert_eq!(up.hits(), 0);
}

/// DESIGN.md: the risk is the highest over every template and sensitive path a request
/// matches, also after removing a trailing slash, a `.ext` and ASCII case, "and the
/// tool takes the name of the match that set that risk". So a profile `deny` (or a
/// tool pause) on a template's tool cannot be sidestepped by spelling the path
/// differently.
#[tokio::test(flavor = "multi_thread")]
async fn path_variants_cannot_sidestep_a_deny_or_a_pause() {
    let (up, p) = start().await;
    let t = issue(&p, json!({"agent": "broadbot", "ttl": "1h"}))
        .await
        .token;
    expect_allowed("a granted tool", &up, &p, "GET", "/tickets/1/comments", &t).await;
    let hits = up.hits();
    let mut leaks = Vec::new();
    let cases = [
        ("DELETE", "/tickets/1/comments", "tickets.comments.delete"),
        ("DELETE", "/tickets/1/comments/", "tickets.comments.delete"),
        ("DELETE", "/tickets/1/Comments", "tickets.comments.delete"),
        (
            "DELETE",
            "/tickets/1/comments.json",
            "tickets.comments.delete",
        ),
        ("GET", "/tickets/1/export", "tickets.export.list"),
        ("GET", "/tickets/1/export.csv", "tickets.export.list"),
        ("GET", "/tickets/1/EXPORT", "tickets.export.list"),
    ];
    for (m, path, tool) in cases {
        let r = call(p.addr, m, path, &t).await;
        if r.status != 403 || r.reason().as_deref() != Some("profile_deny") {
            leaks.push(format!(
                "{m} {path}: {} {} (want 403 profile_deny as {tool})",
                r.status,
                r.text()
            ));
        }
    }
    // A paused tool, likewise.
    op_ok(
        &p,
        "POST",
        "/pause",
        Some(&json!({"scope": "tool", "target": "tickets.comments.list"})),
    )
    .await;
    for path in [
        "/tickets/1/comments",
        "/tickets/1/comments.json",
        "/tickets/1/COMMENTS",
    ] {
        let r = call(p.addr, "GET", path, &t).await;
        if r.reason().as_deref() != Some("paused") {
            leaks.push(format!(
                "GET {path} with tickets.comments.list paused: {} {}",
                r.status,
                r.text()
            ));
        }
    }
    assert!(
        leaks.is_empty(),
        "path variants sidestepped the profile's deny / a tool pause ({} upstream hits):\n{}",
        up.hits() - hits,
        leaks.join("\n")
    );
}

/// `--admin URL` is accepted after the verb, as `portcullis tokens issue AGENT` and
/// `portcullis agents disable ID` are documented.
#[tokio::test(flavor = "multi_thread")]
async fn cli_admin_flag_after_the_verb() {
    let (_up, p) = start().await;
    let url = format!("http://{}", p.admin);
    for args in [
        vec!["pause", "all", "--admin", &url],
        vec!["resume", "all", "--admin", &url],
        vec!["tokens", "list", "--admin", &url],
        vec!["tokens", "issue", "bot", "--admin", &url],
        vec!["agents", "enable", "bot", "--admin", &url],
    ] {
        let out = run_bin(
            &args,
            &[("PORTCULLIS_OPERATOR_TOKEN", OPERATOR_SECRET)],
            CLI_BOUND,
        );
        assert!(
            out.status.success(),
            "portcullis {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

// ---------------------------------------------------------------------------------------
// CLI runtime verbs (through the admin API)
// ---------------------------------------------------------------------------------------

fn cli(
    admin: std::net::SocketAddr,
    token_env: Option<&str>,
    args: &[&str],
) -> (bool, String, String) {
    // The admin URL through its environment variable (where `--admin` may go on the
    // command line is checked separately).
    let url = format!("http://{admin}");
    let mut env = vec![("PORTCULLIS_ADMIN", url.as_str())];
    if let Some(t) = token_env {
        env.push(("PORTCULLIS_OPERATOR_TOKEN", t));
    }
    let out = run_bin(args, &env, CLI_BOUND);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_runtime_verbs_drive_the_admin_api() {
    let (up, p) = start().await;
    let op_tok = Some(OPERATOR_SECRET);

    // Without an operator token the CLI refuses (and changes nothing).
    let (ok, _, _) = cli(p.admin, None, &["pause", "all"]);
    assert!(!ok, "pause without an operator token succeeded");
    // An agent token is refused by the admin API.
    let agent = bot_token(&p).await;
    let (ok, _, _) = cli(p.admin, Some(&agent), &["pause", "all"]);
    assert!(!ok, "pause with an agent token succeeded");
    assert_eq!(switches(&p).await["paused_all"], json!(false));

    // tokens issue: the secret on stdout.
    let (ok, out, err) = cli(
        p.admin,
        op_tok,
        &[
            "tokens",
            "issue",
            "bot",
            "--ttl",
            "1h",
            "--tools",
            "tickets.get,tickets.list",
            "--max-risk",
            "low",
            "--max-calls",
            "5",
        ],
    );
    assert!(ok, "tokens issue: {out}{err}");
    let token = out
        .split_whitespace()
        .find(|w| w.starts_with("pcx_"))
        .unwrap_or_else(|| panic!("no pcx_ token on stdout: {out}"))
        .to_string();
    expect_allowed("CLI-issued token", &up, &p, "GET", "/tickets/1", &token).await;
    let r = call(p.addr, "POST", "/tickets/1/comments", &token).await;
    assert_eq!(
        r.reason().as_deref(),
        Some("token_scope"),
        "CLI narrowing applied: {}",
        r.text()
    );
    let id = token.split('_').nth(1).unwrap().to_string();

    // tokens list names it; the secret is not printed again.
    let (ok, out, err) = cli(p.admin, op_tok, &["tokens", "list"]);
    assert!(ok && out.contains(&id), "tokens list: {out}{err}");
    assert!(!out.contains(&token), "tokens list printed the secret");

    // pause / resume / mode / agents through the CLI, with a token file this time.
    let tf = p.path("op.token");
    std::fs::write(&tf, OPERATOR_SECRET).unwrap();
    let tfs = tf.to_str().unwrap();
    let (ok, out, err) = cli(
        p.admin,
        None,
        &["pause", "tool", "tickets.get", "--token-file", tfs],
    );
    assert!(ok, "pause tool: {out}{err}");
    let r = call(p.addr, "GET", "/tickets/1", &token).await;
    assert_eq!(r.reason().as_deref(), Some("paused"), "{}", r.text());
    let (ok, out, err) = cli(p.admin, op_tok, &["resume", "tool", "tickets.get"]);
    assert!(ok, "resume tool: {out}{err}");
    expect_allowed("after CLI resume", &up, &p, "GET", "/tickets/1", &token).await;

    let (ok, out, err) = cli(p.admin, op_tok, &["agents", "disable", "bot"]);
    assert!(ok, "agents disable: {out}{err}");
    let r = call(p.addr, "GET", "/tickets/1", &token).await;
    assert_eq!(
        r.reason().as_deref(),
        Some("agent_disabled"),
        "{}",
        r.text()
    );
    let (ok, out, err) = cli(p.admin, op_tok, &["agents", "enable", "bot"]);
    assert!(ok, "agents enable: {out}{err}");

    let full = bot_token(&p).await;
    let (ok, out, err) = cli(p.admin, op_tok, &["mode", "draft-only", "on"]);
    assert!(ok, "mode draft-only on: {out}{err}");
    let r = call(p.addr, "POST", "/tickets/1/comments", &full).await;
    assert_eq!(r.reason().as_deref(), Some("draft_only"), "{}", r.text());
    let (ok, out, err) = cli(p.admin, op_tok, &["mode", "draft-only", "off"]);
    assert!(ok, "mode draft-only off: {out}{err}");
    expect_allowed(
        "after draft-only off",
        &up,
        &p,
        "POST",
        "/tickets/1/comments",
        &full,
    )
    .await;

    // tokens revoke → the next request is refused.
    let (ok, out, err) = cli(p.admin, op_tok, &["tokens", "revoke", &id]);
    assert!(ok, "tokens revoke: {out}{err}");
    assert_unauthenticated(
        "CLI-revoked",
        &call(p.addr, "GET", "/tickets/1", &token).await,
    );
    let (ok, out, err) = cli(p.admin, op_tok, &["reload"]);
    assert!(ok, "reload: {out}{err}");
}
