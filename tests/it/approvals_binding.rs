//! Issue 13: an approval binds where the request goes. The upstream URI is fixed at
//! park time, shown to the approver and covered by `request_sha256`; a reload that
//! moves the upstream between park and approval fails the replay (`policy_changed`)
//! and nothing is sent to either address.

use crate::common;

use crate::common::Proxy;
use crate::support::approvals::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_that_moves_the_upstream_fails_the_replay() {
    let first = ReplayUpstream::start().await;
    let second = ReplayUpstream::start().await;
    let p = Proxy::start(
        &config("node-a", EMBEDDED, &first.url(), ""),
        &[("API_KEY", UPSTREAM_KEY)],
    );
    let (bot, _) = issue(p.admin, "bot").await;
    let parked = park(&p, &bot, "/tickets/5/close?x=1", &[], b"{}").await;
    let id = approval_id(&parked);
    let v = view(p.admin, &id).await;
    assert_eq!(
        v["upstream_uri"],
        format!("{}/v2/tickets/5/close?x=1", first.url()),
        "the approver sees where it will go: {v}"
    );
    // Same upstream name, tool, tenant and grant; only its URL moves.
    common::write_atomically(
        &p.config_path,
        config("node-a", EMBEDDED, &second.url(), "").as_bytes(),
    );
    let r = admin(p.admin, ISSUER, "POST", "/reload", None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = approve(p.admin, ALICE, &id, None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = wait_state(p.admin, &id, "failed", Duration::from_secs(10)).await;
    assert_eq!(v["reason"], "policy_changed", "{v}");
    assert!(v["detail"].as_str().unwrap().contains(&second.url()), "{v}");
    assert_eq!(first.hits() + second.hits(), 0, "nothing was sent anywhere");
}

/// Issue 13, item 7: a request's audit record names the policy that decided it, even
/// when a reload lands while the upstream is still working on it.
#[tokio::test(flavor = "multi_thread")]
async fn a_request_record_names_the_policy_in_force_when_it_was_decided() {
    use common::{Behaviour, Upstream};
    let up = Upstream::start(Behaviour::Hold).await;
    let cfg = common::config(&format!(
        "upstreams:\n  api: {{ url: \"{}\" }}\nroutes:\n  - {{ prefix: /api, upstream: api }}\n",
        up.url()
    ));
    let p = Proxy::start(&cfg, &[]);
    let token = p.agent_token("bot").await;
    let before = admin(p.admin, common::OPERATOR_SECRET, "GET", "/policy", None)
        .await
        .json()["policy_version"]
        .as_str()
        .unwrap()
        .to_string();
    let (addr, host, t) = (p.addr, p.addr.to_string(), token.clone());
    let pending = tokio::spawn(async move {
        common::raw_request(addr, &common::raw_get("GET", b"/api/slow", &host, &t, "")).await
    });
    assert!(up.wait_hits(1, Duration::from_secs(10)).await);
    common::write_atomically(
        &p.config_path,
        format!("{cfg}sensitive_paths: [\"/api/x\"]\n").as_bytes(),
    );
    let r = admin(p.admin, common::OPERATOR_SECRET, "POST", "/reload", None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let after = r.json()["policy_version"].as_str().unwrap().to_string();
    assert_ne!(before, after);
    up.release();
    let resp = pending.await.unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    let id = resp.header("x-request-id").unwrap().to_string();
    let mut p = p;
    assert!(p.terminate(Duration::from_secs(10)).await.is_some());
    let rec: serde_json::Value = p
        .audit_text()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .find(|r: &serde_json::Value| r["request_id"] == id.as_str() && r["event"] == "request")
        .expect("the request's record");
    assert_eq!(rec["policy_version"], before, "{rec}");
}
