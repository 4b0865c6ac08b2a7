//! Approvals across replicas and a redis outage: two `portcullis serve` processes share
//! one real `redis-server`. Fifty concurrent approvals split over both admin ports
//! produce one upstream call; an agent's long-poll on one replica wakes when another
//! replica approves; with redis-server killed an approval fails closed (503, nothing
//! sent), and after redis restarts with its data the approval works exactly once.

use crate::common::{Proxy, Resp};
use crate::support::approvals::*;
use crate::support::redis::{random_prefix, RedisServer};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn replica(node: &str, up: &ReplayUpstream, redis: &RedisServer, prefix: &str) -> Proxy {
    replica_on(node, up, &redis.url(), prefix)
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_concurrent_approvals_on_two_replicas_send_once() {
    let redis = RedisServer::start();
    let prefix = random_prefix();
    let up = ReplayUpstream::start().await;
    let a = replica("node-a", &up, &redis, &prefix);
    let b = replica("node-b", &up, &redis, &prefix);
    let (bot, _) = issue(a.admin, "bot").await;

    // tickets.close is high, not critical: one approval decides it.
    let parked = park(&a, &bot, "/tickets/50/close", &[], b"{\"once\":true}").await;
    assert_eq!(parked["risk"], "high", "{parked}");
    let id = approval_id(&parked);
    assert_eq!(
        view(b.admin, &id).await["state"],
        "pending",
        "B sees A's park"
    );

    // 50 approvals at once: 25 to each admin port, alice and bob on both.
    let n = 50;
    let gate = Arc::new(tokio::sync::Barrier::new(n));
    let mut tasks = Vec::new();
    for i in 0..n {
        let admin_addr = if i % 2 == 0 { a.admin } else { b.admin };
        let who = if (i / 2) % 2 == 0 { ALICE } else { BOB };
        let gate = gate.clone();
        let id = id.clone();
        tasks.push(tokio::spawn(async move {
            gate.wait().await;
            let r: Resp = approve(
                admin_addr,
                who,
                &id,
                Some(json!({"comment": format!("approval #{i}")})),
            )
            .await;
            (i, r.status, r.text())
        }));
    }
    let mut ok = Vec::new();
    let mut other = Vec::new();
    for t in tasks {
        let (i, status, text) = t.await.expect("approve task");
        match status {
            200 => ok.push(i),
            409 => {}
            s => other.push(format!("#{i}: {s} {text}")),
        }
    }
    assert!(
        other.is_empty(),
        "approvals answered neither 200 nor 409: {other:#?}"
    );
    assert_eq!(
        ok.len(),
        1,
        "approvals answered 200: {ok:?} (want exactly one)"
    );

    // Both replicas agree it executed; the upstream saw one call.
    let va = wait_state(a.admin, &id, "executed", BOUND).await;
    let vb = wait_state(b.admin, &id, "executed", BOUND).await;
    assert_eq!(va["upstream_status"], RESULT_STATUS, "{va}");
    assert_eq!(vb["upstream_status"], RESULT_STATUS, "{vb}");
    assert!(
        up.wait_got(1, BOUND).await,
        "the upstream never got the replay"
    );
    let got = up.got();
    assert_eq!(
        up.hits(),
        1,
        "50 concurrent approvals made {} upstream calls: {got:?}",
        up.hits()
    );
    assert_eq!(got[0].body, b"{\"once\":true}");
    assert_eq!(got[0].header("idempotency-key"), Some(id.as_str()));

    // The agent reads the one result on either replica.
    for p in [&a, &b] {
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
            r.status,
            RESULT_STATUS,
            "result via {}: {}",
            p.addr,
            r.text()
        );
        assert_eq!(&r.body[..], RESULT_BODY);
    }
    assert_eq!(up.hits(), 1);
}

/// The long-poll's own debug lines (`portcullis::internal`): when a waiter is registered
/// (subscribed to change notices) and how it learned of the change (`woken_by`).
const LONG_POLL_LOG: &str = "info,portcullis::internal=debug";
/// The `?wait=` of the long-poll under test: far longer than any wake-up may take.
const LONG_WAIT_S: u64 = 30;

/// The first log line of `p` holding every one of `needles`, waited for (bounded).
async fn log_line(p: &Proxy, needles: &[&str]) -> String {
    crate::common::eventually(
        &format!("a log line with {needles:?}"),
        BOUND,
        || async move {
            p.logs()
                .lines()
                .find(|l| needles.iter().all(|n| l.contains(n)))
                .map(str::to_string)
                .ok_or_else(|| format!("log:\n{}", p.logs()))
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn long_poll_on_a_wakes_when_b_approves() {
    let redis = RedisServer::start();
    let prefix = random_prefix();
    let up = ReplayUpstream::start().await;
    let url = redis.url();
    let env = [
        ("API_KEY", UPSTREAM_KEY),
        ("REDIS_URL", url.as_str()),
        ("RUST_LOG", LONG_POLL_LOG),
    ];
    let store = redis_store(&prefix);
    let a = Proxy::start(&config("node-a", &store, &up.url(), ""), &env);
    let b = Proxy::start(&config("node-b", &store, &up.url(), ""), &env);
    let (bot, _) = issue(a.admin, "bot").await;

    // With nothing happening, `?wait=1` holds about a second and says pending.
    let id = approval_id(&park(&a, &bot, "/tickets/60/close", &[], b"{}").await);
    let t = Instant::now();
    let r = agent_status(&a, &bot, &id, Some(1)).await;
    let held = t.elapsed();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["status"], "pending", "{}", r.text());
    assert!(
        held >= Duration::from_millis(900),
        "`?wait=1` returned after {held:?} without a change"
    );

    // A long-poll on A; B approves only once A logged the waiter as registered. The
    // waiter also re-reads the record every second (for expiry and a lost feed), and such
    // a re-read may land between B's write and the arrival of B's notice: that attempt
    // proves nothing and is repeated. Without working notices every attempt ends that way.
    let mut attempts = Vec::new();
    for attempt in 1..=3u32 {
        // A fresh approval each time: the `?wait=1` above logged its own waiter.
        let id =
            approval_id(&park(&a, &bot, &format!("/tickets/6{attempt}/close"), &[], b"{}").await);
        let (addr, token, pid) = (a.addr, bot.clone(), id.clone());
        let poll = tokio::spawn(async move {
            let r = agent_call(
                addr,
                &token,
                "GET",
                &format!("/_portcullis/approvals/{pid}?wait={LONG_WAIT_S}"),
                &[],
                b"",
            )
            .await;
            (r, Instant::now())
        });
        let tag = format!("approval_id={id}");
        log_line(&a, &["long-poll waiting for a change", &tag]).await;
        assert!(
            !poll.is_finished(),
            "the long-poll returned before anything changed"
        );
        let approved_at = Instant::now();
        let r = approve(b.admin, BOB, &id, None).await;
        assert_eq!(r.status, 200, "approve on B: {}", r.text());

        let (r, returned_at) = tokio::time::timeout(Duration::from_secs(LONG_WAIT_S + 15), poll)
            .await
            .expect("the long-poll returned")
            .expect("long-poll task");
        assert_eq!(r.status, 200, "long-poll: {}", r.text());
        let v = r.json();
        assert!(
            ["approved", "executing", "executed"].contains(&v["status"].as_str().unwrap_or("")),
            "the long-poll on A did not return B's approval: {v}"
        );
        let woke = returned_at.saturating_duration_since(approved_at);
        assert!(
            woke < Duration::from_secs(LONG_WAIT_S / 3),
            "the long-poll on A returned {woke:?} after B's approval: that is its own \
             `?wait={LONG_WAIT_S}` running out, not a wake-up"
        );
        // How it learned of the change (logged before it answered).
        let saw = log_line(&a, &["long-poll saw a change", &tag]).await;
        wait_state(a.admin, &id, "executed", BOUND).await;
        assert!(up.wait_got(attempt as usize, BOUND).await);
        assert_eq!(
            up.hits(),
            attempt as usize,
            "one upstream call per approval"
        );
        if saw.contains("woken_by=\"notice\"") || saw.contains("woken_by=notice") {
            return;
        }
        assert!(
            saw.contains("reread"),
            "the long-poll's log line names neither a notice nor a re-read: {saw}"
        );
        attempts.push(format!(
            "{id}: woke {woke:?} after the approval, by its re-read"
        ));
    }
    panic!(
        "in no attempt was the long-poll on A woken by B's change notice (each saw the \
         approval only on its own periodic re-read): {attempts:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_down_approve_fails_closed_then_works_once_after_restart() {
    let mut redis = RedisServer::start_aof();
    let prefix = random_prefix();
    let up = ReplayUpstream::start().await;
    let a = replica("node-a", &up, &redis, &prefix);
    let (bot, _) = issue(a.admin, "bot").await;
    let id = approval_id(&park(&a, &bot, "/tickets/70/close", &[], b"{\"k\":70}").await);
    assert_eq!(view(a.admin, &id).await["state"], "pending");

    redis.kill();
    assert!(!redis.running());
    let r = approve(a.admin, ALICE, &id, None).await;
    assert_eq!(
        r.status,
        503,
        "approve with redis-server down: {} {}",
        r.status,
        r.text()
    );
    assert_eq!(
        up.hits(),
        0,
        "an approval with the store down reached the upstream"
    );
    // Parking fails closed too.
    let r = agent_call(a.addr, &bot, "POST", "/tickets/71/close", &[], b"{}").await;
    assert_eq!(r.status, 503, "park with redis-server down: {}", r.text());
    assert_eq!(up.hits(), 0);

    // Back with its data: the request is still pending, and approving works once.
    redis.restart();
    let path = format!("/approvals/{id}");
    let v = crate::common::eventually("the store back after the restart", BOUND, || async {
        let r = admin(a.admin, ALICE, "GET", &path, None).await;
        if r.status == 200 {
            Ok(r.json())
        } else {
            Err(format!("{} {}", r.status, r.text()))
        }
    })
    .await;
    assert_eq!(v["state"], "pending", "after the redis restart: {v}");
    assert_eq!(up.hits(), 0);
    let r = admin(a.admin, ALICE, "GET", "/approvals", None).await;
    let n = r.json()["approvals"].as_array().map_or(0, |v| v.len());
    assert_eq!(n, 1, "the park during the outage was stored: {}", r.text());

    let r = approve(a.admin, ALICE, &id, None).await;
    assert_eq!(r.status, 200, "approve after the restart: {}", r.text());
    agent_wait_status(&a, &bot, &id, "executed").await;
    assert!(up.wait_got(1, BOUND).await);
    let r = approve(a.admin, BOB, &id, None).await;
    assert_eq!(r.status, 409, "a second approval: {}", r.text());
    assert_eq!(up.hits(), 1, "the upstream saw {} calls", up.hits());
    assert_eq!(up.got()[0].body, b"{\"k\":70}");
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_approves_and_denies_on_two_replicas_decide_once() {
    let redis = RedisServer::start();
    let prefix = random_prefix();
    let up = ReplayUpstream::start().await;
    let a = replica("node-a", &up, &redis, &prefix);
    let b = replica("node-b", &up, &redis, &prefix);
    let (bot, _) = issue(a.admin, "bot").await;
    let id = approval_id(&park(&a, &bot, "/tickets/90/close", &[], b"{}").await);

    // 20 approvals (alice) and 20 denials (bob), interleaved over both replicas.
    let n = 40;
    let gate = Arc::new(tokio::sync::Barrier::new(n));
    let mut tasks = Vec::new();
    for i in 0..n {
        let admin_addr = if (i / 2) % 2 == 0 { a.admin } else { b.admin };
        let gate = gate.clone();
        let id = id.clone();
        tasks.push(tokio::spawn(async move {
            gate.wait().await;
            let r = if i % 2 == 0 {
                approve(admin_addr, ALICE, &id, None).await
            } else {
                admin(
                    admin_addr,
                    BOB,
                    "POST",
                    &format!("/approvals/{id}/deny"),
                    Some(&json!({"reason": format!("deny #{i}")})),
                )
                .await
            };
            (i, r.status, r.text())
        }));
    }
    let mut won = Vec::new();
    let mut other = Vec::new();
    for t in tasks {
        let (i, status, text) = t.await.expect("decision task");
        match status {
            200 => won.push(i),
            409 => {}
            s => other.push(format!("#{i}: {s} {text}")),
        }
    }
    assert!(
        other.is_empty(),
        "decisions answered neither 200 nor 409: {other:#?}"
    );
    assert_eq!(
        won.len(),
        1,
        "decisions answered 200: {won:?} (want exactly one)"
    );
    if won[0] % 2 == 0 {
        wait_state(b.admin, &id, "executed", BOUND).await;
        assert!(up.wait_got(1, BOUND).await);
        assert_eq!(up.hits(), 1, "approved once, sent {} times", up.hits());
    } else {
        let v = wait_state(b.admin, &id, "denied", BOUND).await;
        assert_eq!(v["state"], "denied");
        assert_eq!(up.hits(), 0, "a denied request reached the upstream");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_parks_on_two_replicas_respect_the_pending_quota() {
    let redis = RedisServer::start();
    let prefix = random_prefix();
    let up = ReplayUpstream::start().await;
    let url = redis.url();
    let cfg = |node: &str| {
        config(
            node,
            &redis_store(&prefix),
            &up.url(),
            "limits: { max_pending_per_agent: 3 }",
        )
    };
    let env = [("API_KEY", UPSTREAM_KEY), ("REDIS_URL", url.as_str())];
    let a = Proxy::start(&cfg("node-a"), &env);
    let b = Proxy::start(&cfg("node-b"), &env);
    let (bot, _) = issue(a.admin, "bot").await;

    let n = 20;
    let gate = Arc::new(tokio::sync::Barrier::new(n));
    let mut tasks = Vec::new();
    for i in 0..n {
        let addr = if i % 2 == 0 { a.addr } else { b.addr };
        let (gate, bot) = (gate.clone(), bot.clone());
        tasks.push(tokio::spawn(async move {
            gate.wait().await;
            let r = agent_call(
                addr,
                &bot,
                "POST",
                &format!("/tickets/{i}/close"),
                &[],
                b"{}",
            )
            .await;
            (i, r.status, r.text())
        }));
    }
    let mut parked = 0;
    let mut other = Vec::new();
    for t in tasks {
        let (i, status, text) = t.await.expect("park task");
        match status {
            202 => parked += 1,
            429 => {}
            s => other.push(format!("#{i}: {s} {text}")),
        }
    }
    assert!(
        other.is_empty(),
        "parks answered neither 202 nor 429: {other:#?}"
    );
    assert_eq!(
        parked, 3,
        "{parked} of {n} concurrent parks were accepted (quota 3)"
    );
    let r = admin(b.admin, ALICE, "GET", "/approvals?state=pending", None).await;
    let listed = r.json()["approvals"].as_array().map_or(0, |v| v.len());
    assert_eq!(listed, 3, "pending in the store: {}", r.text());
    assert_eq!(up.hits(), 0);
}
