//! Helpers for the approval tests (`tests/approvals*.rs`): a config with four operators
//! (an `issuer` who issues agent credentials, two approvers `alice` and `bob`, a viewer
//! `carol`), a recording upstream that answers replays with a distinctive response (or
//! holds them until released), a webhook receiver, and small admin/agent calls.
#![allow(dead_code)]

use crate::common::{self, Head, Proxy, Resp};
use bytes::Bytes;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::time::Duration;

/// Issues agent credentials (all roles, so a refusal to approve is about having issued).
pub const ISSUER: &str = "pco-approvals-issuer-6d0c1f93a2b84e57";
/// Approvers.
pub const ALICE: &str = "pco-approvals-alice-91b2c7d4e5f60a18";
pub const BOB: &str = "pco-approvals-bob-27e8d1c6b5a40f93";
/// Viewer only.
pub const CAROL: &str = "pco-approvals-carol-5c4b3a2918f7e6d0";

/// The upstream's own credential, injected by the proxy.
pub const UPSTREAM_KEY: &str = "Bearer upstream-key-0f4e2d9c8b7a";
/// A cookie the agent sends; it must never reach the upstream or the record.
pub const AGENT_COOKIE: &str = "session=agent-cookie-77d1e0c3";

/// What the upstream answers a replay with: status, a marker header, a body.
pub const RESULT_STATUS: u16 = 201;
pub const RESULT_MARKER: &str = "replayed-5e1f";
pub const RESULT_BODY: &[u8] = b"{\"refund\":\"r-991\",\"note\":\"caf\xc3\xa9\"}\n";

/// How long anything the proxy does on its own (replay, sweep) may take to show.
pub const BOUND: Duration = Duration::from_secs(15);

/// The replay lease these configs set (`timers.replay_lease`; production: 6 s). The
/// owner renews it every third, so a live replay outlasts it by design.
pub const TEST_LEASE: Duration = Duration::from_secs(3);

pub fn sha_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// A complete config: `node`, `store` (a YAML mapping value, e.g. `{ embedded: data/p.redb }`),
/// the upstream at `upstream_url` (base path `/v2`), and `extra` top-level YAML lines
/// (`limits:`, `notify:`).
///
/// Tools: `tickets.refund` (critical), `tickets.close` (high), `tickets.quick` (high,
/// `approval_ttl: 1s`) — all three in the `approval:` list of profile `drafter`.
/// Agents `bot`, `other`, `bot2`, `bot3` (tenant acme), all `drafter`.
pub fn config(node: &str, store: &str, upstream_url: &str, extra: &str) -> String {
    let lease = TEST_LEASE.as_millis();
    let mut s = format!(
        r#"{head}  - {{ name: issuer, token_sha256: "{issuer}", roles: [viewer, approver, admin] }}
  - {{ name: alice, token_sha256: "{alice}", roles: [viewer, approver] }}
  - {{ name: bob, token_sha256: "{bob}", roles: [viewer, approver] }}
  - {{ name: carol, token_sha256: "{carol}", roles: [viewer] }}
timers: {{ sweep_every: 100ms, watch_every: 100ms, replay_lease: {lease}ms }}
upstreams:
  api:
    url: {upstream_url}/v2
    inject: {{ header: Authorization, value_env: API_KEY }}
    tenant_header: X-Tenant-Id
routes:
  - prefix: /tickets
    upstream: api
    tool_prefix: tickets
    paths: ["/tickets/{{id}}", "/tickets/{{id}}/comments"]
    tools:
      - {{ match: "POST /tickets/{{id}}/refund", name: tickets.refund, risk: critical }}
      - {{ match: "POST /tickets/{{id}}/close", name: tickets.close, risk: high }}
      - {{ match: "POST /tickets/{{id}}/quick", name: tickets.quick, risk: high, approval_ttl: 1s }}
profiles:
  drafter:
    tools: ["tickets.get", "tickets.list", "tickets.comments.*"]
    max_risk: medium
    approval: ["tickets.refund", "tickets.close", "tickets.quick"]
agents:
  bot: {{ profile: drafter, tenant: acme }}
  other: {{ profile: drafter, tenant: acme }}
  bot2: {{ profile: drafter, tenant: acme }}
  bot3: {{ profile: drafter, tenant: acme }}
"#,
        head = Head::new().node(node).store(store).without_tester(),
        issuer = sha_hex(ISSUER),
        alice = sha_hex(ALICE),
        bob = sha_hex(BOB),
        carol = sha_hex(CAROL),
    );
    s.push_str(extra);
    if !s.ends_with('\n') {
        s.push('\n');
    }
    s
}

/// The embedded store in the proxy's own dir.
pub const EMBEDDED: &str = "{ embedded: data/p.redb }";

/// The redis store (URL from `REDIS_URL`) under `prefix`.
pub fn redis_store(prefix: &str) -> String {
    format!("{{ redis: {{ url_env: REDIS_URL, key_prefix: \"{prefix}\" }} }}")
}

// ---------------------------------------------------------------------------------------
// The upstream
// ---------------------------------------------------------------------------------------

/// One request as the upstream received it, body included.
pub type Got = common::Seen;

/// The harness upstream ([`common::Upstream`]) answering what a replayed request gets:
/// [`RESULT_STATUS`] with `X-Upstream-Marker: RESULT_MARKER` and [`RESULT_BODY`] —
/// after [`common::Upstream::release`] if it holds.
pub struct ReplayUpstream(pub common::Upstream);

impl std::ops::Deref for ReplayUpstream {
    type Target = common::Upstream;
    fn deref(&self) -> &common::Upstream {
        &self.0
    }
}

fn replay_result() -> common::Behaviour {
    common::Behaviour::Reply(
        common::Reply::new(RESULT_STATUS, Bytes::from_static(RESULT_BODY))
            .header("content-type", "application/json; charset=utf-8")
            .header("x-upstream-marker", RESULT_MARKER),
    )
}

impl ReplayUpstream {
    pub async fn start() -> ReplayUpstream {
        ReplayUpstream(common::Upstream::start(replay_result()).await)
    }

    /// Holds every request (after reading its body) until released.
    pub async fn start_holding() -> ReplayUpstream {
        ReplayUpstream(common::Upstream::start_holding(replay_result()).await)
    }
}

// ---------------------------------------------------------------------------------------
// The webhook receiver
// ---------------------------------------------------------------------------------------

/// One POST the webhook received.
#[derive(Clone, Debug)]
pub struct Hooked {
    pub method: String,
    pub content_type: Option<String>,
    pub raw: String,
}

impl Hooked {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.raw).unwrap_or(Value::Null)
    }
}

/// The harness upstream as a webhook receiver: records every request, answers 200.
pub struct Hook(common::Upstream);

impl Hook {
    pub async fn start() -> Hook {
        Hook(common::Upstream::start(common::Behaviour::Reply(common::Reply::new(200, "ok"))).await)
    }

    pub fn url(&self) -> String {
        format!("{}/hook", self.0.url())
    }

    pub fn got(&self) -> Vec<Hooked> {
        self.0
            .got()
            .into_iter()
            .map(|s| Hooked {
                method: s.method.clone(),
                content_type: s.header("content-type").map(str::to_string),
                raw: String::from_utf8_lossy(&s.body).into_owned(),
            })
            .collect()
    }

    /// The posts about approval `id` so far.
    pub fn about(&self, id: &str) -> Vec<Hooked> {
        self.got()
            .into_iter()
            .filter(|h| h.json()["approval_id"].as_str() == Some(id))
            .collect()
    }

    /// Waits (bounded) until at least `n` posts about `id` have arrived.
    pub async fn wait_about(&self, id: &str, n: usize, bound: Duration) -> bool {
        common::poll_until_async(bound, || self.about(id).len() >= n).await
    }
}

// ---------------------------------------------------------------------------------------
// Calls
// ---------------------------------------------------------------------------------------

/// One admin API call as `who` (a secret; empty: no Authorization header).
pub async fn admin(
    addr: SocketAddr,
    who: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Resp {
    common::admin_call(addr, method, path, who, body).await
}

/// `POST /tokens` as the issuer; returns the agent credential `pcx_<id>_<secret>` and its id.
pub async fn issue(admin_addr: SocketAddr, agent: &str) -> (String, String) {
    let r = admin(
        admin_addr,
        ISSUER,
        "POST",
        "/tokens",
        Some(&json!({ "agent": agent, "ttl": "1h" })),
    )
    .await;
    assert!(
        r.status == 200 || r.status == 201,
        "POST /tokens for {agent}: {} {}",
        r.status,
        r.text()
    );
    let v = r.json();
    let token = v["secret"].as_str().expect("secret").to_string();
    let id = v["id"].as_str().expect("id").to_string();
    assert!(token.starts_with("pcx_"), "token {token}");
    (token, id)
}

/// `GET /approvals/{id}` as alice; panics unless 200.
pub async fn view(admin_addr: SocketAddr, id: &str) -> Value {
    let r = admin(admin_addr, ALICE, "GET", &format!("/approvals/{id}"), None).await;
    assert_eq!(r.status, 200, "GET /approvals/{id}: {}", r.text());
    r.json()
}

/// `POST /approvals/{id}/approve` as `who` with `body` (`{}` if none).
pub async fn approve(admin_addr: SocketAddr, who: &str, id: &str, body: Option<Value>) -> Resp {
    let b = body.unwrap_or_else(|| json!({}));
    admin(
        admin_addr,
        who,
        "POST",
        &format!("/approvals/{id}/approve"),
        Some(&b),
    )
    .await
}

/// `POST /approvals/{id}/deny` as `who` with the operator's `reason`.
pub async fn deny(admin_addr: SocketAddr, who: &str, id: &str, reason: &str) -> Resp {
    admin(
        admin_addr,
        who,
        "POST",
        &format!("/approvals/{id}/deny"),
        Some(&json!({ "reason": reason })),
    )
    .await
}

/// Polls `GET /approvals/{id}` (bounded) until its `state` is `want`; returns the last view.
pub async fn wait_state(admin_addr: SocketAddr, id: &str, want: &str, bound: Duration) -> Value {
    common::eventually(
        &format!("approval {id} reaches `{want}`"),
        bound,
        || async {
            let v = view(admin_addr, id).await;
            if v["state"] == want {
                Ok(v)
            } else {
                Err(v.to_string())
            }
        },
    )
    .await
}

/// A request on the agent port with `token`, `extra` headers and `body`.
pub async fn agent_call(
    addr: SocketAddr,
    token: &str,
    method: &str,
    path: &str,
    extra: &[(&str, &str)],
    body: &[u8],
) -> Resp {
    let mut b = common::request(method, addr, path, token);
    for (k, v) in extra {
        b = b.header(*k, *v);
    }
    common::send(
        addr,
        b.body(common::full(Bytes::copy_from_slice(body))).unwrap(),
    )
    .await
    .unwrap_or_else(|e| panic!("{method} {path} on the agent port: {e}"))
}

/// Parks `POST path` with `body`; asserts the 202 of DESIGN.md and returns its JSON.
pub async fn park(
    p: &Proxy,
    token: &str,
    path: &str,
    extra: &[(&str, &str)],
    body: &[u8],
) -> Value {
    let r = agent_call(p.addr, token, "POST", path, extra, body).await;
    check_parked(&format!("POST {path}"), &r)
}

/// Checks a park answer: 202, `Portcullis-Decision: park`, `X-Request-Id`, and
/// `{"status":"pending","approval_id","tool","risk","expires_at","poll"}`.
pub fn check_parked(what: &str, r: &Resp) -> Value {
    assert_eq!(r.status, 202, "{what}: want 202 (park); body {}", r.text());
    assert_eq!(
        r.header("portcullis-decision"),
        Some("park"),
        "{what}: Portcullis-Decision"
    );
    assert!(r.header("x-request-id").is_some(), "{what}: X-Request-Id");
    let v = r.json();
    assert_eq!(v["status"], "pending", "{what}: {v}");
    let id = v["approval_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: no approval_id in {v}"));
    assert!(!id.is_empty(), "{what}: empty approval_id");
    assert_eq!(
        v["poll"].as_str(),
        Some(format!("/_portcullis/approvals/{id}").as_str()),
        "{what}: poll in {v}"
    );
    for k in ["tool", "risk", "expires_at"] {
        assert!(
            v[k].as_str().is_some_and(|s| !s.is_empty()),
            "{what}: `{k}` in {v}"
        );
    }
    v
}

pub fn approval_id(v: &Value) -> String {
    v["approval_id"].as_str().expect("approval_id").to_string()
}

/// `GET /_portcullis/approvals/{id}` (with `?wait=N` if given) as the agent.
pub async fn agent_status(p: &Proxy, token: &str, id: &str, wait: Option<u64>) -> Resp {
    let path = match wait {
        Some(w) => format!("/_portcullis/approvals/{id}?wait={w}"),
        None => format!("/_portcullis/approvals/{id}"),
    };
    agent_call(p.addr, token, "GET", &path, &[], b"").await
}

/// Polls the agent's view (bounded) until `status` is `want`; returns it.
pub async fn agent_wait_status(p: &Proxy, token: &str, id: &str, want: &str) -> Value {
    let what = format!("approval {id} shows `{want}` to the agent");
    common::eventually(&what, BOUND, || async {
        let r = agent_status(p, token, id, None).await;
        assert_eq!(r.status, 200, "agent poll of {id}: {}", r.text());
        let v = r.json();
        if v["status"] == want {
            Ok(v)
        } else {
            Err(v.to_string())
        }
    })
    .await
}

/// Parses an RFC 3339 timestamp into milliseconds since the epoch.
pub fn rfc3339_ms(s: &str) -> u64 {
    humantime::parse_rfc3339(s)
        .unwrap_or_else(|e| panic!("`{s}` is not RFC 3339: {e}"))
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Sends SIGKILL to the proxy process (it is reaped by `wait_exit` or on drop).
pub fn sigkill(p: &Proxy) {
    // SAFETY: `kill` on the pid of a child we spawned and have not reaped.
    let rc = unsafe { libc::kill(p.pid() as libc::pid_t, libc::SIGKILL) };
    assert_eq!(rc, 0, "kill(SIGKILL) failed");
}

/// A replica named `node` on the shared redis store under `prefix` (tests that also
/// include `support/redis.rs`).
pub fn replica_on(node: &str, up: &ReplayUpstream, redis_url: &str, prefix: &str) -> Proxy {
    Proxy::start(
        &config(node, &redis_store(prefix), &up.url(), ""),
        &[("API_KEY", UPSTREAM_KEY), ("REDIS_URL", redis_url)],
    )
}
