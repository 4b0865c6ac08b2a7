//! Issue 12 item 6: the embedded store on a full disk (its redb file on a small tmpfs
//! filled to the last byte). Parks, token issues and switch changes are each either
//! done and durable or refused with a clear 503 `store_unavailable` (never a 500, never
//! half-written: what was refused is not there afterwards, what was acknowledged is), and
//! the store works again once space returns, also across a restart.

use crate::support::approvals as approvals_support;

use crate::common::{Proxy, Resp};
use crate::support::approvals::{
    admin, config, issue, ReplayUpstream, ALICE, ISSUER, UPSTREAM_KEY,
};
use crate::support::faults::{report, Tally, Tmpfs};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const BOUND: Duration = Duration::from_secs(5);
/// Parked bodies big enough that the store needs fresh pages, not only freed ones.
const BODY: usize = 32 * 1024;

/// What one attempt asked for and how it was answered.
#[derive(Default)]
struct Outcomes {
    tally: Tally,
    parked: usize,
    tokens: BTreeSet<String>,
    paused: BTreeSet<String>,
    refused_tokens: usize,
    refused_pauses: BTreeSet<String>,
}

impl Outcomes {
    /// Any answer but success or a clean 503 is a failure of the test.
    fn check(&mut self, what: &str, r: &Resp, ok: &[u16]) -> bool {
        self.tally.add(r.status);
        if ok.contains(&r.status) {
            return true;
        }
        assert_eq!(r.status, 503, "{what}: {}", r.text());
        assert_eq!(
            r.reason().as_deref(),
            Some("store_unavailable"),
            "{what}: {}",
            r.text()
        );
        false
    }

    async fn park(&mut self, p: &Proxy, bot: &str, n: usize) -> bool {
        let body = format!("{{\"n\":{n},\"pad\":\"{}\"}}", "x".repeat(BODY));
        let r = approvals_support::agent_call(
            p.addr,
            bot,
            "POST",
            &format!("/tickets/{n}/close"),
            &[],
            body.as_bytes(),
        )
        .await;
        let ok = self.check("park", &r, &[202]);
        self.parked += ok as usize;
        ok
    }

    async fn issue(&mut self, p: &Proxy) -> bool {
        let r = admin(
            p.admin,
            ISSUER,
            "POST",
            "/tokens",
            Some(&json!({"agent": "other", "ttl": "1h"})),
        )
        .await;
        let ok = self.check("token issue", &r, &[200, 201]);
        if ok {
            self.tokens
                .insert(r.json()["id"].as_str().unwrap().to_string());
        } else {
            self.refused_tokens += 1;
        }
        ok
    }

    async fn pause(&mut self, p: &Proxy, n: usize) -> bool {
        let target = format!("tickets.t{n}");
        let r = admin(
            p.admin,
            ISSUER,
            "POST",
            "/pause",
            Some(&json!({"scope": "tool", "target": target})),
        )
        .await;
        let ok = self.check("pause", &r, &[200]);
        if ok {
            self.paused.insert(target);
        } else {
            self.refused_pauses.insert(target);
        }
        ok
    }
}

/// What the store holds: pending approvals, tokens of `other`, paused tools.
async fn state(p: &Proxy) -> (usize, BTreeSet<String>, BTreeSet<String>) {
    let r = admin(p.admin, ALICE, "GET", "/approvals?state=pending", None).await;
    assert_eq!(r.status, 200, "{}; log:\n{}", r.text(), p.logs());
    let pending = r.json()["approvals"].as_array().unwrap().len();
    let r = admin(p.admin, ISSUER, "GET", "/tokens", None).await;
    assert_eq!(r.status, 200, "{}; log:\n{}", r.text(), p.logs());
    let v = r.json();
    let list = v
        .as_array()
        .or_else(|| v["tokens"].as_array())
        .cloned()
        .unwrap_or_default();
    let tokens = list
        .iter()
        .filter(|t| t["agent"] == "other")
        .filter_map(|t| t["id"].as_str().map(str::to_string))
        .collect();
    let r = admin(p.admin, ALICE, "GET", "/switches", None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let paused = r.json()["paused_tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t: &Value| t.as_str().unwrap().to_string())
        .collect();
    (pending, tokens, paused)
}

#[tokio::test(flavor = "multi_thread")]
async fn embedded_store_on_a_full_disk_refuses_cleanly_and_recovers() {
    let Some(fs) = Tmpfs::mount("embedded_store_disk_full", "size=4m") else {
        return;
    };
    fs.prepare_filler();
    let up = ReplayUpstream::start().await;
    let store = format!("{{ embedded: \"{}\" }}", fs.path().join("p.redb").display());
    let cfg = config(
        "disk-node",
        &store,
        &up.url(),
        "limits: { max_pending_per_agent: 100000 }",
    );
    let env = [("API_KEY", UPSTREAM_KEY)];
    let mut p = Proxy::start(&cfg, &env);
    let (bot, _) = issue(p.admin, "bot").await;
    let mut o = Outcomes::default();
    let mut n = 0;
    for _ in 0..3 {
        assert!(o.park(&p, &bot, n).await);
        assert!(o.issue(&p).await);
        assert!(o.pause(&p, n).await);
        n += 1;
    }

    // Full disk: keep asking until each kind of write has been refused at least once
    // (redb reuses pages it freed, so some writes may still fit).
    fs.fill();
    let (mut refused_park, mut refused_issue, mut refused_pause) = (0, 0, 0);
    let end = Instant::now() + BOUND;
    while refused_park < 3 || refused_issue < 3 || refused_pause < 3 {
        assert!(
            Instant::now() < end,
            "writes still succeed {BOUND:?} into a full disk ({refused_park} parks, {refused_issue} issues, {refused_pause} pauses refused; {})",
            o.tally
        );
        refused_park += !o.park(&p, &bot, n).await as usize;
        refused_issue += !o.issue(&p).await as usize;
        refused_pause += !o.pause(&p, n).await as usize;
        n += 1;
        fs.fill();
    }
    // Refused means not there, acknowledged means there (read while still full).
    let (pending, tokens, paused) = state(&p).await;
    assert_eq!(pending, o.parked, "pending approvals vs parks answered 202");
    assert_eq!(tokens, o.tokens, "tokens vs issues answered 200");
    assert_eq!(paused, o.paused, "paused tools vs pauses answered 200");

    // Space returns: every kind of write works again.
    fs.free();
    let end = Instant::now() + BOUND;
    loop {
        let all = o.park(&p, &bot, n).await & o.issue(&p).await & o.pause(&p, n).await;
        n += 1;
        if all {
            break;
        }
        assert!(
            Instant::now() < end,
            "the store did not recover within {BOUND:?} of space returning: {}",
            o.tally
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (pending, tokens, paused) = state(&p).await;
    assert_eq!(pending, o.parked);
    assert_eq!(tokens, o.tokens);
    assert_eq!(paused, o.paused);
    for r in &o.refused_pauses {
        assert!(!paused.contains(r), "{r} was refused but is paused");
    }

    // And the file is sound: a restart reads the same state, and writes work.
    let records = p.audit_text().lines().count();
    assert!(p.terminate(BOUND).await.is_some(), "no clean exit");
    let p = Proxy::start(&cfg, &env);
    assert_eq!(
        state(&p).await,
        (o.parked, o.tokens.clone(), o.paused.clone())
    );
    assert!(o.park(&p, &bot, n).await);
    let sent = o.tally.sent();
    report(
        "embedded store on a full 4 MiB tmpfs",
        sent,
        &o.tally,
        up.hits(),
        records + p.audit_text().lines().count(),
    );
    eprintln!(
        "  {} parks answered 202 (all pending after), {} tokens issued, {} refused; {} pauses applied, {} refused; state identical after a restart",
        o.parked,
        o.tokens.len(),
        o.refused_tokens,
        o.paused.len(),
        o.refused_pauses.len()
    );
}
