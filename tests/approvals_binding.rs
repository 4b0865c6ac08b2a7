//! Issue 13: an approval binds where the request goes. The upstream URI is fixed at
//! park time, shown to the approver and covered by `request_sha256`; a reload that
//! moves the upstream between park and approval fails the replay (`policy_changed`)
//! and nothing is sent to either address.

#[path = "support/approvals.rs"]
mod approvals_support;
mod common;

use approvals_support::*;
use common::Proxy;
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
    std::fs::write(
        &p.config_path,
        config("node-a", EMBEDDED, &second.url(), ""),
    )
    .unwrap();
    let r = admin(p.admin, ISSUER, "POST", "/reload", None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = approve(p.admin, ALICE, &id, None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = wait_state(p.admin, &id, "failed", Duration::from_secs(10)).await;
    assert_eq!(v["reason"], "policy_changed", "{v}");
    assert!(v["detail"].as_str().unwrap().contains(&second.url()), "{v}");
    assert_eq!(first.hits() + second.hits(), 0, "nothing was sent anywhere");
}
