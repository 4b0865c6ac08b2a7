//! Small helpers over `tests/common` for the identity/gate tests: admin API calls as an
//! operator, token issue/revoke, agent-port calls, and the deny-body check.
#![allow(dead_code)]

use crate::common::{self, Proxy, Resp, OPERATOR_SECRET};
use serde_json::Value;
use std::net::SocketAddr;

pub use crate::common::admin_call;

/// An admin call as the harness operator (all roles).
pub async fn op(p: &Proxy, method: &str, path: &str, body: Option<&Value>) -> Resp {
    admin_call(p.admin, method, path, OPERATOR_SECRET, body).await
}

/// An admin call as the harness operator that must succeed (2xx); returns the JSON.
pub async fn op_ok(p: &Proxy, method: &str, path: &str, body: Option<&Value>) -> Value {
    let r = op(p, method, path, body).await;
    assert!(
        (200..300).contains(&r.status),
        "{method} {path} {body:?} answered {}: {}",
        r.status,
        r.text()
    );
    r.json()
}

/// A credential issued through `POST /tokens`.
#[derive(Debug, Clone)]
pub struct Issued {
    pub id: String,
    pub token: String,
}

/// `POST /tokens` with `body` (e.g. `{"agent":"bot","ttl":"1h","tools":[..]}`).
pub async fn issue(p: &Proxy, body: Value) -> Issued {
    issue_at(p.admin, body).await
}

pub async fn issue_at(admin: SocketAddr, body: Value) -> Issued {
    let r = admin_call(admin, "POST", "/tokens", OPERATOR_SECRET, Some(&body)).await;
    assert!(
        r.status == 200 || r.status == 201,
        "POST /tokens {body} answered {}: {}",
        r.status,
        r.text()
    );
    let v = r.json();
    let id = v["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no id in {v}"))
        .to_string();
    let token = v["secret"]
        .as_str()
        .unwrap_or_else(|| panic!("no secret in {v}"))
        .to_string();
    assert!(
        token.starts_with("pcx_") && token.contains(&id),
        "token `{token}` is not pcx_<id>_<secret> for id {id}"
    );
    Issued { id, token }
}

/// `GET /policy` → the policy version in force.
pub async fn policy_version(p: &Proxy) -> String {
    policy_version_at(p.admin).await
}

pub async fn policy_version_at(admin: SocketAddr) -> String {
    let r = admin_call(admin, "GET", "/policy", OPERATOR_SECRET, None).await;
    assert_eq!(r.status, 200, "GET /policy: {}", r.text());
    let v = r.json();
    v["policy_version"]
        .as_str()
        .unwrap_or_else(|| panic!("no policy_version in {v}"))
        .to_string()
}

/// One request on the agent port with `token` (empty: no Authorization header).
pub async fn call(addr: SocketAddr, method: &str, path: &str, token: &str) -> Resp {
    common::send(
        addr,
        common::request(method, addr, path, token)
            .body(common::empty())
            .unwrap(),
    )
    .await
    .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// What a 403 deny must say (DESIGN.md "Agent-facing responses").
pub struct Deny<'a> {
    pub reason: &'a str,
    pub tool: &'a str,
    pub risk: &'a str,
    pub policy_version: &'a str,
}

/// Checks a deny: 403, `Portcullis-Decision: deny`, and the JSON
/// `{"error":"denied","reason","detail","tool","risk","policy_version","request_id"}`
/// with `request_id` equal to the `X-Request-Id` header.
pub fn assert_denied(what: &str, r: &Resp, want: &Deny) {
    assert_eq!(r.status, 403, "{what}: status; body {}", r.text());
    assert_eq!(
        r.header("portcullis-decision"),
        Some("deny"),
        "{what}: Portcullis-Decision"
    );
    let v = r.json();
    let s = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
    assert_eq!(
        s("error").as_deref(),
        Some("denied"),
        "{what}: error in {v}"
    );
    assert_eq!(
        s("reason").as_deref(),
        Some(want.reason),
        "{what}: reason in {v}"
    );
    assert!(
        s("detail").is_some_and(|d| !d.is_empty()),
        "{what}: a readable detail in {v}"
    );
    assert_eq!(s("tool").as_deref(), Some(want.tool), "{what}: tool in {v}");
    assert_eq!(s("risk").as_deref(), Some(want.risk), "{what}: risk in {v}");
    assert_eq!(
        s("policy_version").as_deref(),
        Some(want.policy_version),
        "{what}: policy_version in {v}"
    );
    let rid = s("request_id").unwrap_or_else(|| panic!("{what}: no request_id in {v}"));
    assert!(!rid.is_empty(), "{what}: empty request_id");
    assert_eq!(
        r.header("x-request-id"),
        Some(rid.as_str()),
        "{what}: request_id matches X-Request-Id"
    );
}

/// A 401 as DESIGN.md wants it: `WWW-Authenticate: Bearer`, and nothing said about why.
pub fn assert_unauthenticated(what: &str, r: &Resp) {
    assert_eq!(r.status, 401, "{what}: status; body {}", r.text());
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer"),
        "{what}: WWW-Authenticate"
    );
}

/// The 401 body without its request id: identical for every reason a credential fails.
pub fn unauth_shape(r: &Resp) -> Value {
    let mut v = r.json();
    if let Some(o) = v.as_object_mut() {
        o.remove("request_id");
    }
    v
}

/// `Retry-After` as whole seconds (panics if absent or not a number).
pub fn retry_after(what: &str, r: &Resp) -> u64 {
    let h = r
        .header("retry-after")
        .unwrap_or_else(|| panic!("{what}: no Retry-After; headers {:?}", r.headers));
    h.trim()
        .parse()
        .unwrap_or_else(|_| panic!("{what}: Retry-After `{h}` is not seconds"))
}
