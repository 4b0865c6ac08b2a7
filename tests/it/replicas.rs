//! Replicas and restarts: two `portcullis serve` processes sharing one real
//! `redis-server` (credentials and switches hold on both, a change on A holds on B at
//! once — the time each took is printed), a redis outage (fail closed, recover with the data), and a restart on the
//! embedded store (tokens, budgets and switches survive).

use crate::common::{Behaviour, Head, Proxy, Resp, Upstream, OPERATOR_SECRET};
use crate::support::admin::{admin_call, assert_unauthenticated, call, issue_at, Issued};
use crate::support::redis::{random_prefix, RedisServer};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A switch flipped on one replica holds on every other within this long. The product
/// target is well under a second (the invalidation notice is pushed, not polled; the
/// tests print the time each took); the assertion leaves slack for a loaded machine so
/// it fails on a replica that trusts its cache, not on a slow scheduler.
const REPLICA_BOUND: Duration = Duration::from_secs(3);

/// Everything after the head (listeners, `node:`, `store:`, audit, operators).
fn body(up: &Upstream) -> String {
    format!(
        r#"upstreams:
  api:
    url: {url}
    tenant_header: X-Tenant-Id
routes:
  - prefix: /tickets
    upstream: api
    tool_prefix: tickets
    paths: ["/tickets/{{id}}", "/tickets/{{id}}/comments"]
profiles:
  drafter:
    tools: ["tickets.*"]
    max_risk: medium
agents:
  bot: {{ profile: drafter, tenant: acme }}
  ops: {{ profile: drafter, tenant: globex }}
"#,
        url = up.url(),
    )
}

fn redis_config(up: &Upstream, node: &str, prefix: &str) -> String {
    let store = format!("{{ redis: {{ url_env: REDIS_URL, key_prefix: \"{prefix}\" }} }}");
    format!("{}{}", Head::new().node(node).store(&store), body(up))
}

fn embedded_config(up: &Upstream, store: &std::path::Path) -> String {
    let store = format!("{{ embedded: \"{}\" }}", store.display());
    format!("{}{}", Head::new().node("solo").store(&store), body(up))
}

async fn admin_ok(admin: SocketAddr, method: &str, path: &str, b: Option<Value>) -> Value {
    let r = admin_call(admin, method, path, OPERATOR_SECRET, b.as_ref()).await;
    assert!(
        (200..300).contains(&r.status),
        "{method} {path} {b:?} on {admin}: {} {}",
        r.status,
        r.text()
    );
    r.json()
}

/// Two replicas (A and B) on one redis-server and one upstream.
struct Pair {
    up: Upstream,
    a: Proxy,
    b: Proxy,
    redis: RedisServer,
}

async fn pair_with(redis: RedisServer) -> Pair {
    let up = Upstream::start(Behaviour::Fixed).await;
    let prefix = random_prefix();
    let url = redis.url();
    let env = [("REDIS_URL", url.as_str())];
    let a = Proxy::start(&redis_config(&up, "node-a", &prefix), &env);
    let b = Proxy::start(&redis_config(&up, "node-b", &prefix), &env);
    Pair { up, a, b, redis }
}

async fn pair() -> Pair {
    pair_with(RedisServer::start()).await
}

/// Polls `probe` on `addr` until `done(resp)` or `deadline`; returns the first response
/// that satisfied it and when it was received, or the last response seen.
async fn poll_until(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: &str,
    deadline: Instant,
    done: impl Fn(&Resp) -> bool,
) -> Result<(Resp, Instant), Resp> {
    loop {
        let r = call(addr, method, path, token).await;
        let at = Instant::now();
        if done(&r) {
            return Ok((r, at));
        }
        if at >= deadline {
            return Err(r);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn token_issued_on_a_works_on_b() {
    let p = pair().await;
    let t = issue_at(p.a.admin, json!({"agent": "bot", "ttl": "1h"})).await;
    let r = call(p.b.addr, "GET", "/tickets/1", &t.token).await;
    assert_eq!(r.status, 200, "token from A on B: {}", r.text());
    let r = call(p.a.addr, "GET", "/tickets/1", &t.token).await;
    assert_eq!(r.status, 200, "token from A on A: {}", r.text());
    assert_eq!(p.up.hits(), 2);
    // Both list it.
    for admin in [p.a.admin, p.b.admin] {
        let v = admin_ok(admin, "GET", "/tokens", None).await;
        let ids: Vec<&str> = v["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|t| t["id"].as_str())
            .collect();
        assert_eq!(ids, vec![t.id.as_str()], "GET /tokens on {admin}");
    }
}

/// One switch: how to flip it on A, how to undo it, what to probe, and the reason B
/// must answer while it holds.
struct Flip {
    name: &'static str,
    on: (&'static str, Value),
    off: (&'static str, Value),
    method: &'static str,
    path: &'static str,
    reason: &'static str,
}

#[tokio::test(flavor = "multi_thread")]
async fn a_switch_flipped_on_a_holds_on_b_at_once() {
    let p = pair().await;
    let bot = issue_at(p.a.admin, json!({"agent": "bot", "ttl": "1h"}))
        .await
        .token;
    let flips = [
        Flip {
            name: "pause all",
            on: ("/pause", json!({"scope": "all"})),
            off: ("/resume", json!({"scope": "all"})),
            method: "GET",
            path: "/tickets/1",
            reason: "paused",
        },
        Flip {
            name: "pause agent",
            on: ("/pause", json!({"scope": "agent", "target": "bot"})),
            off: ("/resume", json!({"scope": "agent", "target": "bot"})),
            method: "GET",
            path: "/tickets/1",
            reason: "paused",
        },
        Flip {
            name: "pause tool",
            on: ("/pause", json!({"scope": "tool", "target": "tickets.get"})),
            off: ("/resume", json!({"scope": "tool", "target": "tickets.get"})),
            method: "GET",
            path: "/tickets/1",
            reason: "paused",
        },
        Flip {
            name: "pause tenant",
            on: ("/pause", json!({"scope": "tenant", "target": "acme"})),
            off: ("/resume", json!({"scope": "tenant", "target": "acme"})),
            method: "GET",
            path: "/tickets/1",
            reason: "paused",
        },
        Flip {
            name: "disable agent",
            on: ("/agents/bot/disable", Value::Null),
            off: ("/agents/bot/enable", Value::Null),
            method: "GET",
            path: "/tickets/1",
            reason: "agent_disabled",
        },
        Flip {
            name: "draft-only",
            on: ("/mode", json!({"draft_only": true})),
            off: ("/mode", json!({"draft_only": false})),
            method: "POST",
            path: "/tickets/1/comments",
            reason: "draft_only",
        },
    ];
    for f in &flips {
        // Warm B: the request is allowed there, so its switch cache is filled.
        for _ in 0..2 {
            let r = call(p.b.addr, f.method, f.path, &bot).await;
            assert_eq!(r.status, 200, "{}: B before the flip: {}", f.name, r.text());
        }
        let body = |v: &Value| (!v.is_null()).then(|| v.clone());
        admin_ok(p.a.admin, "POST", f.on.0, body(&f.on.1)).await;
        let t0 = Instant::now();
        let hits = p.up.hits();
        let res = poll_until(p.b.addr, f.method, f.path, &bot, t0 + REPLICA_BOUND, |r| {
            r.status == 403
        })
        .await;
        let (r, at) = match res {
            Ok(x) => x,
            Err(last) => panic!(
                "{}: flipped on A, B still answered {} {} after {REPLICA_BOUND:?}",
                f.name,
                last.status,
                last.text()
            ),
        };
        assert!(
            at.duration_since(t0) <= REPLICA_BOUND,
            "{}: B denied only after {:?}",
            f.name,
            at.duration_since(t0)
        );
        assert_eq!(
            r.reason().as_deref(),
            Some(f.reason),
            "{}: {}",
            f.name,
            r.text()
        );
        let settled_hits = p.up.hits();
        // It holds: B keeps denying and forwards nothing.
        for _ in 0..3 {
            let r = call(p.b.addr, f.method, f.path, &bot).await;
            assert_eq!(
                r.reason().as_deref(),
                Some(f.reason),
                "{}: held on B",
                f.name
            );
        }
        assert_eq!(
            p.up.hits(),
            settled_hits,
            "{}: B forwarded while switched",
            f.name
        );
        assert!(settled_hits - hits <= 200, "sanity: bounded polling");

        // Undo on A; B follows within the same bound.
        admin_ok(p.a.admin, "POST", f.off.0, body(&f.off.1)).await;
        let t1 = Instant::now();
        if let Err(last) = poll_until(p.b.addr, f.method, f.path, &bot, t1 + REPLICA_BOUND, |r| {
            r.status == 200
        })
        .await
        {
            panic!(
                "{}: undone on A, B still answered {} {} after {REPLICA_BOUND:?}",
                f.name,
                last.status,
                last.text()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn revoke_on_a_is_refused_on_b_at_once() {
    let p = pair().await;
    let t: Issued = issue_at(p.a.admin, json!({"agent": "bot", "ttl": "1h"})).await;
    let keep = issue_at(p.a.admin, json!({"agent": "bot", "ttl": "1h"}))
        .await
        .token;
    // Warm B's credential cache.
    for _ in 0..2 {
        assert_eq!(
            call(p.b.addr, "GET", "/tickets/1", &t.token).await.status,
            200
        );
    }
    admin_ok(p.a.admin, "DELETE", &format!("/tokens/{}", t.id), None).await;
    let t0 = Instant::now();
    // On A itself: refused on the very next request.
    assert_unauthenticated(
        "revoked, on A",
        &call(p.a.addr, "GET", "/tickets/1", &t.token).await,
    );
    let res = poll_until(
        p.b.addr,
        "GET",
        "/tickets/1",
        &t.token,
        t0 + REPLICA_BOUND,
        |r| r.status == 401,
    )
    .await;
    let (r, at) = res.unwrap_or_else(|last| {
        panic!(
            "revoked on A, B still answered {} after {REPLICA_BOUND:?}",
            last.status
        )
    });
    assert_unauthenticated("revoked, on B", &r);
    eprintln!("the revoke held on B after {:?}", at.duration_since(t0));
    assert!(at.duration_since(t0) <= REPLICA_BOUND);
    let hits = p.up.hits();
    for _ in 0..3 {
        assert_unauthenticated(
            "revoked, held on B",
            &call(p.b.addr, "GET", "/tickets/1", &t.token).await,
        );
    }
    assert_eq!(
        p.up.hits(),
        hits,
        "a revoked token reached the upstream via B"
    );
    assert_eq!(
        call(p.b.addr, "GET", "/tickets/1", &keep).await.status,
        200,
        "other token"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn token_budget_is_shared_across_replicas() {
    let p = pair().await;
    let t = issue_at(
        p.a.admin,
        json!({"agent": "bot", "ttl": "1h", "max_calls": 3}),
    )
    .await
    .token;
    let mut statuses = Vec::new();
    for i in 0..6 {
        let addr = if i % 2 == 0 { p.a.addr } else { p.b.addr };
        statuses.push(call(addr, "GET", "/tickets/1", &t).await.status);
    }
    assert_eq!(
        statuses,
        vec![200, 200, 200, 429, 429, 429],
        "3 calls across A and B"
    );
    assert_eq!(p.up.hits(), 3);
}

/// Redis goes away: once caches can no longer be trusted, both replicas answer 503 and
/// forward nothing; when redis is back (AOF), the same credential works again.
#[tokio::test(flavor = "multi_thread")]
async fn redis_outage_fails_closed_and_recovers_with_its_data() {
    let mut p = pair_with(RedisServer::start_aof()).await;
    let t = issue_at(p.a.admin, json!({"agent": "bot", "ttl": "1h"}))
        .await
        .token;
    admin_ok(
        p.a.admin,
        "POST",
        "/pause",
        Some(json!({"scope": "agent", "target": "ops"})),
    )
    .await;
    for x in [&p.a, &p.b] {
        assert_eq!(call(x.addr, "GET", "/tickets/1", &t).await.status, 200);
    }

    p.redis.kill();
    let t0 = Instant::now();
    let bound = Duration::from_secs(5);
    for (name, x) in [("A", &p.a), ("B", &p.b)] {
        let r = poll_until(x.addr, "GET", "/tickets/1", &t, t0 + bound, |r| {
            r.status == 503
        })
        .await
        .unwrap_or_else(|last| {
            panic!(
                "{name}: redis down for {bound:?}, still answering {} {}",
                last.status,
                last.text()
            )
        })
        .0;
        let v = r.json();
        assert_eq!(v["reason"], json!("store_unavailable"), "{name}: {v}");
        assert_eq!(r.header("portcullis-decision"), Some("error"), "{name}");
        let hits = p.up.hits();
        for _ in 0..3 {
            assert_eq!(
                call(x.addr, "GET", "/tickets/1", &t).await.status,
                503,
                "{name}: held"
            );
        }
        assert_eq!(
            p.up.hits(),
            hits,
            "{name}: forwarded with the store unreachable"
        );
        let r = admin_call(x.admin, "GET", "/readyz", "", None).await;
        assert_eq!(
            r.status,
            503,
            "{name}: /readyz with redis down: {}",
            r.text()
        );
    }

    p.redis.restart();
    let t1 = Instant::now();
    let bound = Duration::from_secs(10);
    for (name, x) in [("A", &p.a), ("B", &p.b)] {
        poll_until(x.addr, "GET", "/tickets/1", &t, t1 + bound, |r| {
            r.status == 200
        })
        .await
        .unwrap_or_else(|last| {
            panic!(
                "{name}: redis back for {bound:?}, still answering {} {}",
                last.status,
                last.text()
            )
        });
    }
    // The switch set before the outage survived too.
    let ops = issue_at(p.b.admin, json!({"agent": "ops", "ttl": "1h"}))
        .await
        .token;
    let r = call(p.b.addr, "GET", "/tickets/1", &ops).await;
    assert_eq!(r.reason().as_deref(), Some("paused"), "{}", r.text());
}

/// Stop the process, start a new one on the same embedded store file: tokens (valid,
/// revoked, partly spent) and every kind of switch survive.
#[tokio::test(flavor = "multi_thread")]
async fn restart_with_the_embedded_store_keeps_tokens_and_switches() {
    let up = Upstream::start(Behaviour::Fixed).await;
    let data = tempfile::tempdir().unwrap();
    let store = data.path().join("p.redb");
    let cfg = embedded_config(&up, &store);

    let mut first = Proxy::start(&cfg, &[]);
    let admin = first.admin;
    let bot = issue_at(admin, json!({"agent": "bot", "ttl": "1h"})).await;
    let revoked = issue_at(admin, json!({"agent": "bot", "ttl": "1h"})).await;
    let budget = issue_at(admin, json!({"agent": "bot", "ttl": "1h", "max_calls": 2})).await;
    let ops = issue_at(admin, json!({"agent": "ops", "ttl": "1h"})).await;
    assert_eq!(
        call(first.addr, "GET", "/tickets/1", &budget.token)
            .await
            .status,
        200
    );
    admin_ok(admin, "DELETE", &format!("/tokens/{}", revoked.id), None).await;
    admin_ok(
        admin,
        "POST",
        "/pause",
        Some(json!({"scope": "tool", "target": "tickets.comments.list"})),
    )
    .await;
    admin_ok(admin, "POST", "/agents/ops/disable", None).await;
    admin_ok(admin, "POST", "/mode", Some(json!({"draft_only": true}))).await;
    let switches_before = admin_ok(admin, "GET", "/switches", None).await;
    let status = first.terminate(Duration::from_secs(20)).await;
    assert!(
        status.is_some(),
        "the first process did not exit on SIGTERM"
    );
    assert!(store.exists(), "the store file is where the config put it");

    let second = Proxy::start(&cfg, &[]);
    assert_eq!(
        admin_ok(second.admin, "GET", "/switches", None).await,
        switches_before,
        "switches after restart"
    );
    let hits = up.hits();
    let r = call(second.addr, "GET", "/tickets/1", &bot.token).await;
    assert_eq!(
        r.status,
        200,
        "token issued before the restart: {}",
        r.text()
    );
    assert_unauthenticated(
        "revoked before the restart",
        &call(second.addr, "GET", "/tickets/1", &revoked.token).await,
    );
    let r = call(second.addr, "GET", "/tickets/1/comments", &bot.token).await;
    assert_eq!(
        r.reason().as_deref(),
        Some("paused"),
        "paused tool: {}",
        r.text()
    );
    let r = call(second.addr, "GET", "/tickets/1", &ops.token).await;
    assert_eq!(
        r.reason().as_deref(),
        Some("agent_disabled"),
        "disabled agent: {}",
        r.text()
    );
    let r = call(second.addr, "POST", "/tickets/1/comments", &bot.token).await;
    assert_eq!(
        r.reason().as_deref(),
        Some("draft_only"),
        "draft-only mode: {}",
        r.text()
    );
    assert_eq!(
        call(second.addr, "GET", "/tickets/1", &budget.token)
            .await
            .status,
        200,
        "1 of 2 calls left"
    );
    let r = call(second.addr, "GET", "/tickets/1", &budget.token).await;
    assert_eq!(
        r.status,
        429,
        "the call spent before the restart counts: {}",
        r.text()
    );
    assert_eq!(up.hits(), hits + 2);
}

/// The invalidation feed drops (redis kills every pub/sub connection) and a switch is
/// flipped on A at once: B must still hold it within the bound, not trust its cache.
#[tokio::test(flavor = "multi_thread")]
async fn a_lost_subscription_does_not_stretch_the_replica_bound() {
    let p = pair().await;
    let bot = issue_at(p.a.admin, json!({"agent": "bot", "ttl": "1h"}))
        .await
        .token;
    for _ in 0..2 {
        assert_eq!(call(p.b.addr, "GET", "/tickets/1", &bot).await.status, 200);
    }
    let mut c = p.redis.conn();
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query(&mut c)
        .expect("CLIENT KILL TYPE pubsub");
    assert!(
        killed >= 2,
        "both replicas had a subscription ({killed} killed)"
    );
    admin_ok(p.a.admin, "POST", "/pause", Some(json!({"scope": "all"}))).await;
    let t0 = Instant::now();
    let res = poll_until(
        p.b.addr,
        "GET",
        "/tickets/1",
        &bot,
        t0 + REPLICA_BOUND,
        |r| r.status == 403,
    )
    .await;
    let (r, _) = res.unwrap_or_else(|last| {
        panic!(
            "feed dropped, paused on A: B still answered {} {} after {REPLICA_BOUND:?}",
            last.status,
            last.text()
        )
    });
    assert_eq!(r.reason().as_deref(), Some("paused"), "{}", r.text());
}
