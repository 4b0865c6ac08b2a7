//! Signals and brakes through the real binary: each signal fires at its threshold and not
//! below, is recorded with its evidence (signal record, audit record, metric), its brake
//! is the ordinary switch the gate already obeys (and holds on a second replica within a
//! second), acknowledging and resuming restores service, and a scripted prompt-injected
//! agent ends paused after exactly N refusals.

use crate::common::{eventually, Behaviour, Head, Proxy, Upstream};
use crate::support::admin::{call, op, op_ok};
use crate::support::audit::{records_of, scrape, wait_record};
use crate::support::redis::{random_prefix, RedisServer};
use serde_json::{json, Value};
use std::time::Duration;

const BOUND: Duration = Duration::from_secs(10);
/// The issue's bound for a brake to hold on every replica.
const REPLICA_BOUND: Duration = Duration::from_secs(1);

/// `bot` (drafter: reads allowed, refunds denied, closes parked), `learner` (new tools
/// are not flagged for an hour) and `watched` (flagged at once).
fn cfg(head: Head, up: &Upstream, signals: &str) -> String {
    format!(
        r#"{head}timers: {{ sweep_every: 100ms, watch_every: 100ms, signals_flush: 50ms }}
upstreams:
  api: {{ url: "{url}" }}
routes:
  - prefix: /tickets
    upstream: api
    tool_prefix: tickets
    paths: ["/tickets/{{id}}", "/tickets/{{id}}/comments"]
    tools:
      - {{ match: "POST /tickets/{{id}}/refund", name: tickets.refund, risk: critical }}
      - {{ match: "POST /tickets/{{id}}/close", name: tickets.close, risk: high }}
profiles:
  drafter:
    tools: ["tickets.get", "tickets.list", "tickets.comments.*"]
    max_risk: medium
    approval: ["tickets.close"]
  learning:
    tools: ["tickets.get", "tickets.comments.*"]
    signals: {{ new_tool: {{ learn_for: 1h }} }}
  watching:
    tools: ["tickets.get", "tickets.comments.*"]
    max_risk: medium
    signals: {{ new_tool: {{ learn_for: 0s }} }}
agents:
  bot: {{ profile: drafter, tenant: acme }}
  learner: {{ profile: learning, tenant: acme }}
  watched: {{ profile: watching, tenant: acme }}
signals:
{signals}
"#,
        url = up.url(),
    )
}

async fn signals(p: &Proxy, state: &str) -> Vec<Value> {
    let v = op_ok(p, "GET", &format!("/signals?state={state}"), None).await;
    v["signals"].as_array().cloned().unwrap_or_default()
}

async fn agent_paused(p: &Proxy, token: &str) -> bool {
    let r = call(p.addr, "GET", "/tickets/1", token).await;
    r.status == 403 && r.reason().as_deref() == Some("paused")
}

fn reason(r: &crate::common::Resp) -> String {
    r.reason().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_prompt_injected_agent_is_paused_after_exactly_n_refusals() {
    const N: usize = 5;
    let up = Upstream::start(Behaviour::Fixed).await;
    let p = Proxy::start(
        &cfg(
            Head::new(),
            &up,
            &format!("  refusal_burst: {{ threshold: {N}, window: 1m }}"),
        ),
        &[],
    );
    let token = p.agent_token("bot").await;
    // The injected instruction: refund everything, then try again another way.
    let attempts = [
        ("POST", "/tickets/1/refund"),
        ("POST", "/tickets/2/refund"),
        ("DELETE", "/tickets/1"),
        ("POST", "/tickets/3/refund"),
        ("POST", "/tickets/4/refund"),
    ];
    let mut last_id = String::new();
    for (i, (m, path)) in attempts.iter().enumerate() {
        let r = call(p.addr, m, path, &token).await;
        assert_eq!(r.status, 403, "attempt {} {m} {path}: {}", i + 1, r.text());
        assert_ne!(reason(&r), "paused", "attempt {} was already paused", i + 1);
        last_id = r.header("x-request-id").unwrap().to_string();
        if i + 1 < N {
            // Below the threshold the agent still works.
            let ok = call(p.addr, "GET", "/tickets/7", &token).await;
            assert_eq!(ok.status, 200, "after {} refusals: {}", i + 1, ok.text());
            assert!(
                signals(&p, "all").await.is_empty(),
                "fired below the threshold"
            );
        }
    }
    // Request N+1 meets the brake (applied before refusal N was answered).
    let r = call(p.addr, "POST", "/tickets/5/refund", &token).await;
    assert_eq!(
        (r.status, reason(&r)),
        (403, "paused".into()),
        "{}",
        r.text()
    );
    let r = call(p.addr, "GET", "/tickets/7", &token).await;
    assert_eq!(reason(&r), "paused", "an allowed tool is paused too");

    let list = signals(&p, "open").await;
    assert_eq!(list.len(), 1, "{list:?}");
    let s = &list[0];
    assert_eq!(s["kind"], "refusal_burst");
    assert_eq!(s["agent"], "bot");
    assert_eq!(s["observed"].as_f64(), Some(N as f64));
    assert_eq!(s["threshold"].as_f64(), Some(N as f64));
    assert_eq!(s["window"], "1m");
    assert_eq!(s["action"], "pause_agent");
    assert_eq!(s["brake"], "applied");
    assert_eq!(
        s["request_id"].as_str(),
        Some(last_id.as_str()),
        "the request that crossed it"
    );
    assert!(
        s["credential"].as_str().is_some_and(|c| token.contains(c)),
        "{s}"
    );

    // More refusals while paused raise nothing more (no alert storm).
    for _ in 0..N {
        call(p.addr, "POST", "/tickets/1/refund", &token).await;
    }
    assert_eq!(signals(&p, "all").await.len(), 1);

    // Recorded: the signal with its evidence, and the pause it made.
    let audit = p.path("data/audit.jsonl");
    let rec = wait_record(&audit, "signal", |r| r["event"] == "signal").await;
    assert_eq!(rec["request_id"].as_str(), Some(last_id.as_str()));
    assert_eq!(rec["agent"], "bot");
    let ev = &rec["signal"];
    assert_eq!(ev["kind"], "refusal_burst");
    assert_eq!(ev["observed"].as_f64(), Some(N as f64));
    assert_eq!(ev["threshold"].as_f64(), Some(N as f64));
    assert_eq!(ev["window"], "1m");
    assert_eq!(ev["action"], "pause_agent");
    assert_eq!(ev["id"], s["id"]);
    let pause = wait_record(&audit, "pause", |r| r["event"] == "pause").await;
    assert_eq!(pause["operator"], "signal:refusal_burst");
    assert_eq!(pause["agent"], "bot");
    let m = scrape(&p).await;
    assert_eq!(
        m.value(
            "portcullis_signals_total",
            &[("kind", "refusal_burst"), ("action", "pause_agent")]
        ),
        Some(1.0)
    );

    // Acknowledge (CLI) and resume: service is back, and counting starts afresh.
    let id = s["id"].as_str().unwrap();
    let out = crate::common::run_bin(
        &[
            "signals",
            "ack",
            id,
            "--note",
            "injected email; sender blocked",
            "--admin",
            &format!("http://{}", p.admin),
        ],
        &[("PORTCULLIS_OPERATOR_TOKEN", crate::common::OPERATOR_SECRET)],
        BOUND,
    );
    assert!(
        out.status.success(),
        "signals ack: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let again = op(&p, "POST", &format!("/signals/{id}/ack"), None).await;
    assert_eq!(again.status, 409, "a second ack: {}", again.text());
    assert!(
        agent_paused(&p, &token).await,
        "acknowledging does not lift the brake"
    );
    op_ok(
        &p,
        "POST",
        "/resume",
        Some(&json!({"scope": "agent", "target": "bot"})),
    )
    .await;
    assert_eq!(call(p.addr, "GET", "/tickets/7", &token).await.status, 200);
    for _ in 0..N - 1 {
        call(p.addr, "POST", "/tickets/1/refund", &token).await;
    }
    assert_eq!(
        call(p.addr, "GET", "/tickets/7", &token).await.status,
        200,
        "old refusals counted again"
    );
    let acked = signals(&p, "acknowledged").await;
    assert_eq!(acked.len(), 1);
    assert_eq!(acked[0]["acked_by"], "tester");
    assert_eq!(acked[0]["ack_note"], "injected email; sender blocked");
    wait_record(&audit, "signal_ack", |r| r["event"] == "signal_ack").await;

    // The CLI lists what is open.
    call(p.addr, "POST", "/tickets/1/refund", &token).await;
    let out = crate::common::run_bin(
        &["signals", "list", "--admin", &format!("http://{}", p.admin)],
        &[("PORTCULLIS_OPERATOR_TOKEN", crate::common::OPERATOR_SECRET)],
        BOUND,
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("refusal_burst") && text.contains("bot"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_on_one_replica_pauses_the_agent_on_the_other_within_a_second() {
    let (_redis, _up, a, b) = two_replicas(
        Behaviour::Fixed,
        "  refusal_burst: { threshold: 4, window: 1m }",
    )
    .await;
    let token = a.agent_token("bot").await;
    assert_eq!(call(b.addr, "GET", "/tickets/1", &token).await.status, 200);
    for i in 0..4 {
        let r = call(a.addr, "POST", "/tickets/1/refund", &token).await;
        assert_eq!(r.status, 403, "refusal {i}: {}", r.text());
    }
    let t0 = std::time::Instant::now();
    eventually("the brake holds on node-b", REPLICA_BOUND, || async {
        if agent_paused(&b, &token).await {
            Ok(())
        } else {
            Err("node-b still serves bot".to_string())
        }
    })
    .await;
    eprintln!(
        "brake seen on node-b {:?} after the crossing refusal was answered",
        t0.elapsed()
    );
    assert!(agent_paused(&a, &token).await);
    assert_eq!(signals(&a, "all").await.len(), 1);
    assert_eq!(signals(&b, "all").await.len(), 1, "one store, one signal");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_split_across_replicas_fires_once() {
    let (_redis, _up, a, b) = two_replicas(
        Behaviour::Fixed,
        "  refusal_burst: { threshold: 6, window: 1m }",
    )
    .await;
    let token = a.agent_token("bot").await;
    // Three on each replica: neither alone is over the threshold.
    for _ in 0..3 {
        assert_eq!(
            call(a.addr, "POST", "/tickets/1/refund", &token)
                .await
                .status,
            403
        );
        assert_eq!(
            call(b.addr, "POST", "/tickets/1/refund", &token)
                .await
                .status,
            403
        );
    }
    eventually(
        "the split burst pauses bot on both replicas",
        Duration::from_secs(3),
        || async {
            if agent_paused(&a, &token).await && agent_paused(&b, &token).await {
                Ok(())
            } else {
                Err("not paused yet".to_string())
            }
        },
    )
    .await;
    // Later flushes see the same total; the claim lets one replica fire, once.
    let list = signals(&a, "all").await;
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["observed"].as_f64(), Some(6.0), "{list:?}");
    let audit_a = records_of(&a.path("data/audit.jsonl"));
    let audit_b = records_of(&b.path("data/audit.jsonl"));
    let n = |v: &[Value]| v.iter().filter(|r| r["event"] == "signal").count();
    assert_eq!(
        n(&audit_a) + n(&audit_b),
        1,
        "exactly one replica recorded the signal"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn consecutive_upstream_failures_revoke_the_credential() {
    let up = Upstream::start(Behaviour::StatusFromPath).await;
    let p = Proxy::start(
        &cfg(
            Head::new(),
            &up,
            "  upstream_failures: { threshold: 3, action: revoke_credential }",
        ),
        &[],
    );
    let token = p.agent_token("bot").await;
    // Two failures, a success (the run ends), two more: never three in a row.
    for path in [
        "/tickets/503",
        "/tickets/502",
        "/tickets/1",
        "/tickets/503",
        "/tickets/500",
    ] {
        call(p.addr, "GET", path, &token).await;
    }
    assert_eq!(call(p.addr, "GET", "/tickets/1", &token).await.status, 200);
    assert!(
        signals(&p, "all").await.is_empty(),
        "fired below the threshold"
    );
    for path in ["/tickets/503", "/tickets/503", "/tickets/504"] {
        assert!(call(p.addr, "GET", path, &token).await.status >= 500);
    }
    let r = call(p.addr, "GET", "/tickets/1", &token).await;
    assert_eq!(r.status, 401, "the credential is revoked: {}", r.text());
    let s = &signals(&p, "open").await[0];
    assert_eq!(
        (s["kind"].as_str(), s["observed"].as_f64()),
        (Some("upstream_failures"), Some(3.0))
    );
    assert_eq!(
        (s["action"].as_str(), s["brake"].as_str()),
        (Some("revoke_credential"), Some("applied"))
    );
    let audit = p.path("data/audit.jsonl");
    let rev = wait_record(&audit, "token_revoked", |r| r["event"] == "token_revoked").await;
    assert_eq!(rev["operator"], "signal:upstream_failures");
    // Service is restored the usual way: a new credential.
    let fresh = p.agent_token("bot").await;
    assert_eq!(call(p.addr, "GET", "/tickets/1", &fresh).await.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn operators_denying_parked_requests_pause_the_agent() {
    let up = Upstream::start(Behaviour::Fixed).await;
    let p = Proxy::start(
        &cfg(Head::new(), &up, "  approval_denials: { threshold: 2 }"),
        &[],
    );
    let token = p.agent_token("bot").await;
    let deny = |id: String| {
        let p = &p;
        async move {
            op_ok(
                p,
                "POST",
                &format!("/approvals/{id}/deny"),
                Some(&json!({"reason": "no"})),
            )
            .await;
        }
    };
    let park = |n: u32| {
        let (addr, token) = (p.addr, token.clone());
        async move {
            let r = call(addr, "POST", &format!("/tickets/{n}/close"), &token).await;
            assert_eq!(r.status, 202, "{}", r.text());
            r.json()["approval_id"].as_str().unwrap().to_string()
        }
    };
    let first = park(1).await;
    let second = park(2).await;
    deny(first).await;
    assert_eq!(
        call(p.addr, "GET", "/tickets/1", &token).await.status,
        200,
        "one denial is below"
    );
    deny(second).await;
    assert!(agent_paused(&p, &token).await, "two denials pause bot");
    let s = &signals(&p, "open").await[0];
    assert_eq!(s["kind"], "approval_denials");
    assert_eq!(s["window"], "1h");
    assert_eq!(s["observed"].as_f64(), Some(2.0));
    // Acknowledge and resume: restored.
    op_ok(
        &p,
        "POST",
        &format!("/signals/{}/ack", s["id"].as_str().unwrap()),
        Some(&json!({"note": "ok"})),
    )
    .await;
    op_ok(
        &p,
        "POST",
        "/resume",
        Some(&json!({"scope": "agent", "target": "bot"})),
    )
    .await;
    assert_eq!(call(p.addr, "GET", "/tickets/1", &token).await.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_first_call_of_a_tool_is_flagged_after_learning() {
    let up = Upstream::start(Behaviour::Fixed).await;
    let p = Proxy::start(&cfg(Head::new(), &up, "  new_tool: { action: alert }"), &[]);
    let learner = p.agent_token("learner").await;
    let watched = p.agent_token("watched").await;
    assert_eq!(
        call(p.addr, "GET", "/tickets/1", &learner).await.status,
        200
    );
    assert_eq!(
        call(p.addr, "GET", "/tickets/1", &watched).await.status,
        200
    );
    let s = eventually("a new_tool signal for watched", BOUND, || async {
        match signals(&p, "all")
            .await
            .into_iter()
            .find(|s| s["kind"] == "new_tool")
        {
            Some(s) => Ok(s),
            None => Err("none yet".to_string()),
        }
    })
    .await;
    assert_eq!(
        (s["agent"].as_str(), s["tool"].as_str()),
        (Some("watched"), Some("tickets.get"))
    );
    assert_eq!(s["action"], "alert");
    // Alert only: the agent keeps working; a tool it has called is not new again.
    assert_eq!(
        call(p.addr, "GET", "/tickets/2", &watched).await.status,
        200
    );
    let id = s["id"].as_str().unwrap().to_string();
    // One first called while the signal is open is listed on it (it is not new again).
    assert_eq!(
        call(p.addr, "POST", "/tickets/2/comments", &watched)
            .await
            .status,
        200
    );
    eventually("the open signal lists the next new tool", BOUND, || async {
        let v = op_ok(&p, "GET", &format!("/signals/{id}"), None).await;
        if v["more_tools"] == json!(["tickets.comments.create"]) {
            Ok(())
        } else {
            Err(format!("{v}"))
        }
    })
    .await;
    op_ok(&p, "POST", &format!("/signals/{id}/ack"), None).await;
    assert_eq!(
        call(p.addr, "GET", "/tickets/3", &watched).await.status,
        200
    );
    assert_eq!(
        call(p.addr, "GET", "/tickets/3/comments", &watched)
            .await
            .status,
        200
    );
    let next = eventually("the second tool is flagged", BOUND, || async {
        let all = signals(&p, "open").await;
        match all.into_iter().find(|s| s["kind"] == "new_tool") {
            Some(s) => Ok(s),
            None => Err("none yet".to_string()),
        }
    })
    .await;
    assert_eq!(
        next["tool"].as_str(),
        Some("tickets.comments.list"),
        "{next}"
    );
    let all = signals(&p, "all").await;
    assert!(
        all.iter().all(|s| s["agent"] == "watched"),
        "the learning agent was flagged: {all:?}"
    );
    assert_eq!(all.len(), 2, "{all:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_volume_spike_over_the_baseline_is_flagged() {
    let up = Upstream::start(Behaviour::Stream(4096)).await;
    let p = Proxy::start(
        &cfg(
            Head::new(),
            &up,
            "  volume_spike: { window: 1s, half_life: 1h, factor: 4, min_baseline: 10000 }",
        ),
        &[],
    );
    let token = p.agent_token("bot").await;
    // Quiet traffic: 4 KiB a call.
    assert_eq!(call(p.addr, "GET", "/tickets/1", &token).await.status, 200);
    // The baseline is taken once a window has passed (one quiet window: ≤ 3 calls).
    let b = eventually("a volume baseline", BOUND, || async {
        let v = op_ok(&p, "GET", "/signals/baselines/bot", None).await;
        match v["volume_spike"]["threshold"].as_f64() {
            Some(_) => Ok(v),
            None => Err(format!("still learning: {v}")),
        }
    })
    .await;
    assert_eq!(
        b["volume_spike"]["threshold"].as_f64(),
        Some(40_000.0),
        "the floor: {b}"
    );
    // Eight calls (32 KiB; with the first, 36 KiB) in a window stay under 4 × 10000.
    for _ in 0..8 {
        call(p.addr, "GET", "/tickets/1", &token).await;
    }
    // Bytes are counted when a response ends; a flush or two later nothing has fired.
    let m = scrape(&p).await;
    assert!(m.sum("portcullis_requests_total") >= 9.0);
    assert!(
        signals(&p, "all").await.is_empty(),
        "fired below the threshold"
    );
    // Ten more in the window: ≥ 40 KiB.
    for _ in 0..10 {
        call(p.addr, "GET", "/tickets/1", &token).await;
    }
    let s = eventually("a volume_spike signal", BOUND, || async {
        match signals(&p, "all")
            .await
            .into_iter()
            .find(|s| s["kind"] == "volume_spike")
        {
            Some(s) => Ok(s),
            None => Err("none yet".to_string()),
        }
    })
    .await;
    assert!(s["observed"].as_f64().unwrap() >= 40_000.0, "{s}");
    assert_eq!(s["threshold"].as_f64(), Some(40_000.0), "{s}");
    assert!(s["baseline"].as_f64().is_some(), "{s}");
}

#[tokio::test(flavor = "multi_thread")]
async fn signals_config_errors_name_the_key() {
    let up = Upstream::start(Behaviour::Fixed).await;
    let dir = tempfile::tempdir().unwrap();
    for (signals, key) in [
        (
            "  refusal_burst: { threshold: 0 }",
            "signals.refusal_burst.threshold",
        ),
        (
            "  rate_spike: { threshold: 3 }",
            "signals.rate_spike.threshold",
        ),
        (
            "  upstream_failures: { action: explode }",
            "signals.upstream_failures.action",
        ),
        ("  refusal_bust: { threshold: 3 }", "refusal_bust"),
    ] {
        let path = dir.path().join("routes.yaml");
        std::fs::write(&path, cfg(Head::new(), &up, signals)).unwrap();
        let out =
            crate::common::run_bin(&["check", "--config", path.to_str().unwrap()], &[], BOUND);
        let err = String::from_utf8_lossy(&out.stderr).to_string()
            + &String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "{signals} accepted");
        assert!(
            err.contains(key) && err.contains("routes.yaml:"),
            "{signals}: {err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_call_rate_over_the_baseline_is_flagged_on_the_request_that_crosses_it() {
    let up = Upstream::start(Behaviour::Fixed).await;
    let p = Proxy::start(
        &cfg(
            Head::new(),
            &up,
            "  rate_spike: { window: 1s, half_life: 1h, factor: 4, min_baseline: 5, action: pause_agent }",
        ),
        &[],
    );
    let token = p.agent_token("bot").await;
    assert_eq!(call(p.addr, "GET", "/tickets/1", &token).await.status, 200);
    let b = eventually("a rate baseline", BOUND, || async {
        let v = op_ok(&p, "GET", "/signals/baselines/bot", None).await;
        match v["rate_spike"]["threshold"].as_f64() {
            Some(_) => Ok(v),
            None => Err(format!("still learning: {v}")),
        }
    })
    .await;
    assert_eq!(
        b["rate_spike"]["threshold"].as_f64(),
        Some(20.0),
        "4 × the floor of 5: {b}"
    );
    // Calls until the brake: the request that makes the window's count 20 is answered,
    // the next one is paused — never before the count reaches the threshold.
    let mut answered = 0;
    for _ in 0..40 {
        let r = call(p.addr, "GET", "/tickets/1", &token).await;
        if r.status != 200 {
            assert_eq!(reason(&r), "paused", "{}", r.text());
            break;
        }
        answered += 1;
    }
    let s = &signals(&p, "all").await[0];
    assert_eq!(s["kind"], "rate_spike");
    assert!(s["observed"].as_f64().unwrap() >= 20.0, "{s}");
    assert!(answered >= 19, "paused after {answered} calls: {s}");
    assert_eq!(s["threshold"].as_f64(), Some(20.0));
    assert!(s["baseline"].as_f64().is_some(), "{s}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_resumed_without_acknowledging_is_braked_again() {
    let up = Upstream::start(Behaviour::Fixed).await;
    let p = Proxy::start(
        &cfg(Head::new(), &up, "  refusal_burst: { threshold: 3 }"),
        &[],
    );
    let token = p.agent_token("bot").await;
    for _ in 0..3 {
        call(p.addr, "POST", "/tickets/1/refund", &token).await;
    }
    assert!(agent_paused(&p, &token).await);
    op_ok(
        &p,
        "POST",
        "/resume",
        Some(&json!({"scope": "agent", "target": "bot"})),
    )
    .await;
    assert_eq!(call(p.addr, "GET", "/tickets/1", &token).await.status, 200);
    // Still over the threshold, unacknowledged, brake lifted: the next refusal re-brakes.
    let r = call(p.addr, "POST", "/tickets/1/refund", &token).await;
    assert_ne!(reason(&r), "paused");
    assert!(agent_paused(&p, &token).await, "not braked again");
    let open = signals(&p, "open").await;
    assert_eq!(open.len(), 2, "{open:?}");
    assert!(open.iter().all(|s| s["kind"] == "refusal_burst"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_operator_page_lists_signals_and_acknowledges_one_with_a_note() {
    use crate::operator_ui::{csrf_of, form_post, page, sign_in};
    let up = Upstream::start(Behaviour::Fixed).await;
    let p = Proxy::start(
        &cfg(Head::new(), &up, "  refusal_burst: { threshold: 2 }"),
        &[],
    );
    let token = p.agent_token("bot").await;
    for _ in 0..2 {
        call(p.addr, "POST", "/tickets/1/refund", &token).await;
    }
    let s = signals(&p, "open").await.remove(0);
    let id = s["id"].as_str().unwrap();
    let cookie = sign_in(p.admin, crate::common::OPERATOR_SECRET).await;
    let r = page(p.admin, "/ui/signals", Some(&cookie)).await;
    let html = r.text();
    assert_eq!(r.status, 200, "{html}");
    for want in [
        id,
        "refusal_burst",
        "bot",
        "pause_agent",
        s["request_id"].as_str().unwrap(),
    ] {
        assert!(html.contains(want), "the Signals list lacks {want}: {html}");
    }
    let csrf = csrf_of(&html);
    let bad = form_post(
        p.admin,
        &format!("/ui/signals/{id}/ack"),
        Some(&cookie),
        "csrf=wrong&note=x",
    )
    .await;
    assert_eq!(bad.status, 403, "without the session's CSRF token");
    let r = form_post(
        p.admin,
        &format!("/ui/signals/{id}/ack"),
        Some(&cookie),
        &format!("csrf={csrf}&note=looked+at+it"),
    )
    .await;
    assert_eq!(r.status, 303, "{}", r.text());
    let acked = signals(&p, "acknowledged").await;
    assert_eq!(
        (acked[0]["acked_by"].as_str(), acked[0]["ack_note"].as_str()),
        (Some("tester"), Some("looked at it"))
    );
    let html = page(p.admin, "/ui/signals?state=all", Some(&cookie))
        .await
        .text();
    assert!(
        html.contains("acknowledged by tester") && html.contains("looked at it"),
        "{html}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_credential_is_refused_on_the_other_replica_within_a_second() {
    let (_redis, _up, a, b) = two_replicas(
        Behaviour::StatusFromPath,
        "  upstream_failures: { threshold: 2, action: revoke_credential }",
    )
    .await;
    let token = a.agent_token("bot").await;
    assert_eq!(call(b.addr, "GET", "/tickets/1", &token).await.status, 200);
    assert_eq!(
        call(a.addr, "GET", "/tickets/503", &token).await.status,
        503
    );
    assert_eq!(
        call(a.addr, "GET", "/tickets/502", &token).await.status,
        502
    );
    eventually(
        "node-b refuses the revoked credential",
        REPLICA_BOUND,
        || async {
            match call(b.addr, "GET", "/tickets/1", &token).await.status {
                401 => Ok(()),
                s => Err(format!("node-b answered {s}")),
            }
        },
    )
    .await;
    let s = &signals(&b, "open").await[0];
    assert_eq!(
        (s["kind"].as_str(), s["brake"].as_str()),
        (Some("upstream_failures"), Some("applied"))
    );
}

/// Two replicas (`node-a`, `node-b`) on one fresh redis, with `sig` in their `signals:`
/// block, in front of one upstream behaving as `b`. Keep the redis server alive.
async fn two_replicas(b: Behaviour, sig: &str) -> (RedisServer, Upstream, Proxy, Proxy) {
    let redis = RedisServer::start();
    let up = Upstream::start(b).await;
    let prefix = random_prefix();
    let url = redis.url();
    let env = [("REDIS_URL", url.as_str())];
    let store = format!("{{ redis: {{ url_env: REDIS_URL, key_prefix: \"{prefix}\" }} }}");
    let start =
        |node: &str| Proxy::start(&cfg(Head::new().node(node).store(&store), &up, sig), &env);
    let (a, b) = (start("node-a"), start("node-b"));
    (redis, up, a, b)
}
