//! Issue 13: replicas never disagree about a revoke or a pause. A change and its notice
//! are one step (a notice that cannot be sent undoes the change and the caller hears
//! 503); and a replica that missed a notice still stops within the cache's maximum age.
//! Two `portcullis serve` processes on one real `redis-server`, one of them as a redis
//! user whose ACL denies `PUBLISH`.

use crate::common::{Behaviour, Head, Proxy, Upstream, OPERATOR_SECRET};
use crate::support::admin::{admin_call, call, issue_at};
use crate::support::redis::{random_prefix, RedisServer};
use serde_json::json;
use std::time::{Duration, Instant};

/// The cache's maximum age the lost-notice test configures (`timers.cache_max_age`).
const CACHE_MAX_AGE: &str = "1s";
/// That age plus generous scheduling slack for a loaded machine.
const STALE_BOUND: Duration = Duration::from_secs(4);

fn cfg(up: &Upstream, node: &str, prefix: &str, url_env: &str) -> String {
    format!(
        r#"{head}upstreams:
  api: {{ url: "{url}" }}
routes:
  - {{ prefix: /tickets, upstream: api, tool_prefix: tickets }}
profiles:
  drafter: {{ tools: ["tickets.*"], max_risk: medium }}
agents:
  bot: {{ profile: drafter, tenant: acme }}
"#,
        head = Head::new().node(node).store(&format!(
            "{{ redis: {{ url_env: {url_env}, key_prefix: \"{prefix}\" }} }}"
        )),
        url = up.url(),
    )
}

/// Two replicas (`node-a`, `node-b`) with full rights on one fresh redis-server.
async fn pair() -> (RedisServer, Upstream, Proxy, Proxy) {
    let redis = RedisServer::start();
    let up = Upstream::start(Behaviour::Fixed).await;
    let prefix = random_prefix();
    let url = redis.url();
    let env = [("REDIS_URL", url.as_str())];
    let a = Proxy::start(&cfg(&up, "node-a", &prefix, "REDIS_URL"), &env);
    let b = Proxy::start(&cfg(&up, "node-b", &prefix, "REDIS_URL"), &env);
    (redis, up, a, b)
}

/// A redis user that may do everything but publish.
fn no_publish_url(redis: &RedisServer) -> String {
    let mut c = redis.conn();
    let _: () = redis::cmd("ACL")
        .arg(&[
            "SETUSER",
            "nopub",
            "on",
            ">nopub-pw",
            "~*",
            "&*",
            "+@all",
            "-publish",
        ])
        .query(&mut c)
        .expect("ACL SETUSER");
    format!("redis://nopub:nopub-pw@{}/", redis.addr())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_change_whose_notice_cannot_be_published_is_refused() {
    let redis = RedisServer::start();
    let up = Upstream::start(Behaviour::Fixed).await;
    let prefix = random_prefix();
    let full = redis.url();
    let limited = no_publish_url(&redis);
    let a = Proxy::start(
        &cfg(&up, "node-a", &prefix, "REDIS_URL"),
        &[("REDIS_URL", limited.as_str())],
    );
    let b = Proxy::start(
        &cfg(&up, "node-b", &prefix, "REDIS_URL"),
        &[("REDIS_URL", full.as_str())],
    );
    let t = issue_at(b.admin, json!({"agent": "bot", "ttl": "1h"})).await;
    // Warm both caches.
    for p in [&a, &b] {
        let r = call(p.addr, "GET", "/tickets/1", &t.token).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // A cannot publish: its pause and its revoke are refused, not half done.
    let r = admin_call(
        a.admin,
        "POST",
        "/pause",
        OPERATOR_SECRET,
        Some(&json!({"scope": "all"})),
    )
    .await;
    assert_eq!(r.status, 503, "pause without a notice: {}", r.text());
    let r = admin_call(
        a.admin,
        "DELETE",
        &format!("/tokens/{}", t.id),
        OPERATOR_SECRET,
        None,
    )
    .await;
    assert_eq!(r.status, 503, "revoke without a notice: {}", r.text());
    // Nothing changed anywhere: both still serve.
    for p in [&a, &b] {
        let r = call(p.addr, "GET", "/tickets/1", &t.token).await;
        assert_eq!(r.status, 200, "after the refused changes: {}", r.text());
    }
    // A change made on B reaches A (A's feed is live: it may subscribe).
    let r = admin_call(
        b.admin,
        "POST",
        "/pause",
        OPERATOR_SECRET,
        Some(&json!({"scope": "all"})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let end = Instant::now() + Duration::from_secs(2);
    loop {
        let r = call(a.addr, "GET", "/tickets/1", &t.token).await;
        if r.status == 403 {
            break;
        }
        assert!(
            Instant::now() < end,
            "A still forwards after B paused: {}",
            r.text()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_notice_is_bounded_by_the_cache_age() {
    let redis = RedisServer::start();
    let up = Upstream::start(Behaviour::Fixed).await;
    let prefix = random_prefix();
    let url = redis.url();
    let env = [("REDIS_URL", url.as_str())];
    let text = cfg(&up, "node-a", &prefix, "REDIS_URL")
        + &format!("timers: {{ sweep_every: 100ms, cache_max_age: {CACHE_MAX_AGE} }}\n");
    let a = Proxy::start(&text, &env);
    let t = issue_at(a.admin, json!({"agent": "bot", "ttl": "1h"})).await;
    let r = call(a.addr, "GET", "/tickets/1", &t.token).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // Pause behind the proxies' backs, the way a lost notice looks to a replica: the
    // store says paused, and no notice is ever sent.
    let mut c = redis.conn();
    let _: () = redis::cmd("SET")
        .arg(format!("{prefix}v1:sw:paused_all"))
        .arg("1")
        .query(&mut c)
        .unwrap();
    let changed = Instant::now();
    loop {
        let r = call(a.addr, "GET", "/tickets/1", &t.token).await;
        if r.status == 403 {
            assert_eq!(r.reason().as_deref(), Some("paused"), "{}", r.text());
            break;
        }
        assert!(
            changed.elapsed() < STALE_BOUND,
            "still forwarding {:?} after the store was paused",
            changed.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = changed.elapsed();
    eprintln!("a lost pause notice took effect after {took:?}");
    // The same for a revoke written without a notice.
    let _: () = redis::cmd("DEL")
        .arg(format!("{prefix}v1:sw:paused_all"))
        .query(&mut c)
        .unwrap();
    let _: () = redis::cmd("PUBLISH")
        .arg(format!("{prefix}v1:events"))
        .arg("switches")
        .query(&mut c)
        .unwrap();
    let end = Instant::now() + Duration::from_secs(2);
    while call(a.addr, "GET", "/tickets/1", &t.token).await.status != 200 {
        assert!(Instant::now() < end, "resume did not take effect");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _: () = redis::cmd("SET")
        .arg(format!("{prefix}v1:revoked:{}", t.id))
        .arg("1")
        .query(&mut c)
        .unwrap();
    let changed = Instant::now();
    loop {
        let r = call(a.addr, "GET", "/tickets/1", &t.token).await;
        if r.status == 401 {
            break;
        }
        assert!(
            changed.elapsed() < STALE_BOUND,
            "a revoked credential still works {:?} later",
            changed.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `addr` with `token` until the status is `want` or `bound` passes; returns the time taken.
async fn until_status(
    addr: std::net::SocketAddr,
    token: &str,
    want: u16,
    bound: Duration,
) -> Duration {
    let start = Instant::now();
    loop {
        let r = call(addr, "GET", "/tickets/1", token).await;
        if r.status == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < bound,
            "still {} after {bound:?} (want {want}): {}",
            r.status,
            r.text()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoke_during_a_feed_reconnect_is_not_missed() {
    let (redis, _up, a, b) = pair().await;
    for round in 0..5 {
        let t = issue_at(a.admin, json!({"agent": "bot", "ttl": "1h"})).await;
        until_status(b.addr, &t.token, 200, Duration::from_secs(2)).await;
        // Cut every subscriber; revoke while the feeds reconnect.
        let mut c = redis.conn();
        let _: () = redis::cmd("CLIENT")
            .arg(&["KILL", "TYPE", "pubsub"])
            .query(&mut c)
            .unwrap();
        let r = admin_call(
            a.admin,
            "DELETE",
            &format!("/tokens/{}", t.id),
            OPERATOR_SECRET,
            None,
        )
        .await;
        assert_eq!(r.status, 200, "round {round}: {}", r.text());
        let took = until_status(b.addr, &t.token, 401, Duration::from_secs(3)).await;
        eprintln!("round {round}: revoke held on B after {took:?}");
        // Once refused, never served again.
        for _ in 0..20 {
            assert_eq!(
                call(b.addr, "GET", "/tickets/1", &t.token).await.status,
                401
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn refills_racing_invalidations_never_keep_an_old_switch_state() {
    let (_redis, _up, a, b) = pair().await;
    let t = issue_at(a.admin, json!({"agent": "bot", "ttl": "1h"})).await;
    // B is kept busy refilling its switch cache from several tasks while A flips.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop, token, addr) = (stop.clone(), t.token.clone(), b.addr);
        load.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = call(addr, "GET", "/tickets/1", &token).await;
            }
        }));
    }
    let mut worst = Duration::ZERO;
    for i in 0..30 {
        let (path, want) = if i % 2 == 0 {
            ("/pause", 403)
        } else {
            ("/resume", 200)
        };
        let r = admin_call(
            a.admin,
            "POST",
            path,
            OPERATOR_SECRET,
            Some(&json!({"scope": "all"})),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        // Within the feed's bound, and far inside the cache's maximum age.
        worst = worst.max(until_status(b.addr, &t.token, want, Duration::from_secs(2)).await);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for l in load {
        let _ = l.await;
    }
    eprintln!("30 flips: B followed each within {worst:?}");
}
