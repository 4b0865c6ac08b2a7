//! Issue 13: a replay's lease follows its live owner. The owner renews it (every third
//! of `timers.replay_lease`, by the store's clock) while the upstream works, so an
//! upstream slower than the lease does not turn a live replay `unknown` on another
//! replica; a killed owner's replay is `unknown` on the other replica within about a
//! lease, and never sent twice. The suite runs a 3-s lease (`TEST_LEASE`).

use crate::common::Proxy;
use crate::support::approvals::*;
use crate::support::redis::{random_prefix, RedisServer};
use std::time::{Duration, Instant};

fn replica(node: &str, up: &ReplayUpstream, redis: &RedisServer, prefix: &str) -> Proxy {
    replica_on(node, up, &redis.url(), prefix)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_upstream_outlives_the_lease_and_the_replay_still_executes() {
    let redis = RedisServer::start();
    let prefix = random_prefix();
    let up = ReplayUpstream::start_holding().await;
    let a = replica("node-a", &up, &redis, &prefix);
    let b = replica("node-b", &up, &redis, &prefix);
    let (bot, _) = issue(a.admin, "bot").await;
    let parked = park(&a, &bot, "/tickets/7/close", &[], b"{}").await;
    let id = approval_id(&parked);
    let r = approve(a.admin, ALICE, &id, None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        up.wait_hits(1, Duration::from_secs(10)).await,
        "the replay was sent"
    );
    // Hold the upstream for one and a half leases while B's sweeper runs.
    let held = Instant::now();
    while held.elapsed() < TEST_LEASE * 3 / 2 {
        let v = view(b.admin, &id).await;
        assert_eq!(
            v["state"],
            "executing",
            "a live owner's replay changed state after {:?}: {v}",
            held.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    up.release();
    let v = wait_state(b.admin, &id, "executed", Duration::from_secs(10)).await;
    assert_eq!(v["state"], "executed", "{v}");
    assert_eq!(up.hits(), 1, "sent once");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_owner_leaves_unknown_on_the_other_replica_within_about_a_lease() {
    let redis = RedisServer::start();
    let prefix = random_prefix();
    let up = ReplayUpstream::start_holding().await;
    let a = replica("node-a", &up, &redis, &prefix);
    let b = replica("node-b", &up, &redis, &prefix);
    let (bot, _) = issue(b.admin, "bot").await;
    let parked = park(&b, &bot, "/tickets/8/close", &[], b"{}").await;
    let id = approval_id(&parked);
    // Approve on A only; A replays (B could pick up an orphan, so stop it racing by
    // checking who holds the lease).
    let r = approve(a.admin, ALICE, &id, None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        up.wait_hits(1, Duration::from_secs(10)).await,
        "the replay was sent"
    );
    let v = view(b.admin, &id).await;
    assert_eq!(v["state"], "executing", "{v}");
    let owner = v["lease"]["node"].as_str().unwrap().to_string();
    let killed = Instant::now();
    if owner == "node-a" {
        sigkill(&a);
    } else {
        sigkill(&b);
    }
    let survivor = if owner == "node-a" { &b } else { &a };
    let v = wait_state(survivor.admin, &id, "unknown", Duration::from_secs(15)).await;
    assert_eq!(v["state"], "unknown", "{v}");
    let took = killed.elapsed();
    eprintln!("unknown on the survivor {took:?} after the owner was killed");
    // A lease, the sweeper's tick, and generous slack for a loaded machine.
    assert!(took < TEST_LEASE + Duration::from_secs(8), "took {took:?}");
    up.release();
    assert_eq!(up.hits(), 1, "never a second call");
}

#[tokio::test(flavor = "multi_thread")]
async fn restarting_a_replica_with_the_same_node_name_leaves_the_others_replay_alone() {
    let redis = RedisServer::start();
    let prefix = random_prefix();
    let up = ReplayUpstream::start_holding().await;
    // Both replicas share one `node` name, as one shared routes.yaml would give them.
    let a = replica("proxy-a", &up, &redis, &prefix);
    let mut b = replica("proxy-a", &up, &redis, &prefix);
    let (bot, _) = issue(a.admin, "bot").await;
    let parked = park(&a, &bot, "/tickets/9/close", &[], b"{}").await;
    let id = approval_id(&parked);
    let r = approve(a.admin, ALICE, &id, None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        up.wait_hits(1, Duration::from_secs(10)).await,
        "the replay was sent"
    );
    let replaying =
        |p: &Proxy| p.logs().contains("replaying approved request") && p.logs().contains(&id);
    // The log line is written by the log's own thread: wait for it, not only the hit.
    let a_owns = crate::common::eventually(
        "one of them logs the replay",
        Duration::from_secs(10),
        || async {
            if replaying(&a) {
                Ok(true)
            } else if replaying(&b) {
                Ok(false)
            } else {
                Err("no replay line yet".to_string())
            }
        },
    )
    .await;
    // Restart the replica that does not own the replay (same name, new process).
    let (owner, other) = if a_owns {
        (&a, &mut b)
    } else {
        (&b, &mut { a })
    };
    sigkill(other);
    let _ = other.wait_exit(Duration::from_secs(10)).await;
    let restarted = replica("proxy-a", &up, &redis, &prefix);
    // Its start-up sweep and a lease and a half of sweeps leave the live replay alone.
    let since = Instant::now();
    while since.elapsed() < TEST_LEASE * 3 / 2 {
        let v = view(restarted.admin, &id).await;
        assert_eq!(v["state"], "executing", "after the restart: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    up.release();
    let v = wait_state(owner.admin, &id, "executed", Duration::from_secs(10)).await;
    assert_eq!(v["state"], "executed", "{v}");
    assert_eq!(up.hits(), 1);
}
