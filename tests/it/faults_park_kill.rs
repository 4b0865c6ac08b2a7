//! Issue 12 item 3: `kill -9` while parking. The real binary is SIGKILLed at random
//! moments while many parks are in flight, restarted on the same store and trail, and
//! killed again; afterwards every approval that can still be decided (and so executed)
//! has its park record in the trail, nothing is left `parking`, every park that never got
//! its record confirmed is `failed` with an `approval_abandoned` record, every 202 an
//! agent received is decidable, and the trail verifies as one chain.
//!
//! Both stores: the embedded one (its file shared by the restarts) and a real
//! `redis-server` that keeps running while the proxy dies. CI runs 8 kills × 100
//! concurrent parks; the issue's full size runs by hand with
//! `FAULTS_PARK_KILLS=20 FAULTS_PARK_CONCURRENCY=200` (and `FAULTS_SEED=N` replays one).

use crate::common;
use crate::support::approvals as approvals_support;
use crate::support::redis as redis_support;

use crate::common::{Head, Proxy};
use crate::support::approvals::{
    admin, approve, sha_hex, sigkill, wait_state, ReplayUpstream, ALICE, ISSUER, UPSTREAM_KEY,
};
use crate::support::audit::{chain_files, out_text, records_of, verify};
use crate::support::faults::{report, Tally};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const AGENTS: usize = 50;
const BOUND: Duration = Duration::from_secs(15);

fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// xorshift64*: enough randomness for kill moments, reproducible from the printed seed.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1)
    }
}

/// One node on `store` (a YAML value; `None`: an embedded store in `shared`) and a trail
/// in `shared`, outside its own temp dir so restarts share them; `tickets.close` needs
/// approval; agents `a0`..`a49`.
fn cfg(shared: &Path, store: Option<&str>, up: &ReplayUpstream) -> String {
    let mut agents = String::new();
    for i in 0..AGENTS {
        agents.push_str(&format!("  a{i}: {{ profile: drafter, tenant: acme }}\n"));
    }
    format!(
        r#"{head}  - {{ name: issuer, token_sha256: "{issuer}", roles: [viewer, approver, admin] }}
  - {{ name: alice, token_sha256: "{alice}", roles: [viewer, approver] }}
upstreams:
  api:
    url: {url}/v2
    inject: {{ header: Authorization, value_env: API_KEY }}
routes:
  - prefix: /tickets
    upstream: api
    tool_prefix: tickets
    paths: ["/tickets/{{id}}"]
    tools:
      - {{ match: "POST /tickets/{{id}}/close", name: tickets.close, risk: high }}
profiles:
  drafter:
    tools: ["tickets.get"]
    max_risk: medium
    approval: ["tickets.close"]
agents:
{agents}limits: {{ max_pending_per_agent: 100000, request_deadline: 5s }}
"#,
        head = Head::new()
            .node("kill-node")
            .store(&store.map_or_else(
                || format!("{{ embedded: \"{}\" }}", shared.join("p.redb").display()),
                str::to_string
            ))
            .audit(&format!(
                "{{ path: \"{}\" }}",
                shared.join("audit.jsonl").display()
            ))
            .without_tester(),
        issuer = sha_hex(ISSUER),
        alice = sha_hex(ALICE),
        url = up.url(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_while_parking_never_leaves_an_unaudited_executable_approval_embedded() {
    run("embedded store", None, &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_while_parking_never_leaves_an_unaudited_executable_approval_redis() {
    let redis = redis_support::RedisServer::start();
    let prefix = redis_support::random_prefix();
    let url = redis.url();
    let store = approvals_support::redis_store(&prefix);
    run("redis store", Some(&store), &[("REDIS_URL", url.as_str())]).await;
}

async fn run(what: &str, store: Option<&str>, extra_env: &[(&str, &str)]) {
    let kills = knob("FAULTS_PARK_KILLS", 8);
    let parks = knob("FAULTS_PARK_CONCURRENCY", 100) as usize;
    let seed = knob(
        "FAULTS_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1,
    );
    eprintln!("faults_park_kill ({what}): {kills} kills x {parks} parks, FAULTS_SEED={seed}");
    let mut rng = Rng(seed);
    let started = Instant::now();
    let up = ReplayUpstream::start().await;
    let shared = tempfile::tempdir().expect("tempdir");
    let cfg = cfg(shared.path(), store, &up);
    let mut env = vec![("API_KEY", UPSTREAM_KEY)];
    env.extend_from_slice(extra_env);

    // Credentials, issued once (the store keeps them across restarts).
    let mut tokens = Vec::new();
    {
        let p = Proxy::start(&cfg, &env);
        for i in 0..AGENTS {
            let r = admin(
                p.admin,
                ISSUER,
                "POST",
                "/tokens",
                Some(&json!({"agent": format!("a{i}"), "ttl": "1h"})),
            )
            .await;
            assert_eq!(r.status, 201, "{}", r.text());
            tokens.push(r.json()["secret"].as_str().unwrap().to_string());
        }
    }

    let mut answers = Tally::default();
    let mut got_202: BTreeSet<String> = BTreeSet::new();
    let mut sent = 0;
    for round in 0..kills {
        let mut p = Proxy::start(&cfg, &env);
        let done = Arc::new(Mutex::new(Vec::<Result<(u16, Value), String>>::new()));
        let mut tasks = Vec::new();
        for i in 0..parks {
            let (addr, token, done) = (p.addr, tokens[i % AGENTS].clone(), done.clone());
            let path = format!("/tickets/{round}-{i}/close");
            tasks.push(tokio::spawn(async move {
                let req = common::request("POST", addr, &path, &token)
                    .body(common::full(format!("{{\"round\":{round},\"i\":{i}}}")))
                    .unwrap();
                let r = match common::send(addr, req).await {
                    Ok(r) => {
                        let v = if r.status == 202 {
                            r.json()
                        } else {
                            Value::Null
                        };
                        Ok((r.status, v))
                    }
                    Err(e) => Err(e.to_string()),
                };
                done.lock().unwrap().push(r);
            }));
        }
        sent += parks;
        // Kill once a random number of parks have been answered (none, some, most).
        let k = rng.below(parks as u64 * 3 / 4 + 1) as usize;
        let end = Instant::now() + BOUND;
        while done.lock().unwrap().len() < k {
            assert!(Instant::now() < end, "parks stalled before the kill");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        sigkill(&p);
        assert!(p.wait_exit(BOUND).await.is_some(), "survived SIGKILL");
        for t in tasks {
            let _ = t.await;
        }
        for r in done.lock().unwrap().iter() {
            match r {
                Ok((s, v)) => {
                    answers.add(*s);
                    if *s == 202 {
                        got_202.insert(v["approval_id"].as_str().unwrap().to_string());
                    }
                }
                Err(_) => answers.add(0),
            }
        }
    }

    // After the last kill: a restart settles what the dead processes left.
    let p = Proxy::start(&cfg, &env);
    let r = admin(p.admin, ALICE, "GET", "/approvals", None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let all: Vec<Value> = r.json()["approvals"].as_array().unwrap().clone();
    let mut by_state: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for a in &all {
        by_state
            .entry(a["state"].as_str().unwrap().to_string())
            .or_default()
            .push(a["id"].as_str().unwrap().to_string());
    }
    let audit = shared.path().join("audit.jsonl");
    let files = chain_files(&audit);
    let o = verify(&files, &[], &[]);
    assert!(o.status.success(), "{}", out_text(&o));
    let recs: Vec<Value> = files.iter().flat_map(|f| records_of(f)).collect();
    let parked: BTreeSet<&str> = recs
        .iter()
        .filter(|r| r["event"] == "request" && r["decision"] == "park")
        .filter_map(|r| r["approval_id"].as_str())
        .collect();
    let abandoned: BTreeSet<&str> = recs
        .iter()
        .filter(|r| r["event"] == "approval_abandoned")
        .filter_map(|r| r["approval_id"].as_str())
        .collect();

    let none = Vec::new();
    let pending = by_state.get("pending").unwrap_or(&none);
    let unaudited: Vec<&String> = pending
        .iter()
        .filter(|id| !parked.contains(id.as_str()))
        .collect();
    assert!(
        unaudited.is_empty(),
        "{} decidable approvals have no park record in the trail: {unaudited:?}",
        unaudited.len()
    );
    assert!(
        by_state.get("parking").is_none_or(|v| v.is_empty()),
        "left parking after a restart: {:?}",
        by_state.get("parking")
    );
    for id in by_state.get("failed").unwrap_or(&none) {
        assert!(
            abandoned.contains(id.as_str()),
            "failed approval {id} has no approval_abandoned record"
        );
    }
    let pending_set: BTreeSet<&String> = pending.iter().collect();
    for id in &got_202 {
        assert!(
            pending_set.contains(id),
            "the agent got 202 for {id} but it is not pending"
        );
    }
    let unexpected: Vec<&String> = by_state
        .keys()
        .filter(|s| !["pending", "failed"].contains(&s.as_str()))
        .collect();
    assert!(unexpected.is_empty(), "states {unexpected:?}");

    // A sample of what is decidable executes, once each.
    let sample: Vec<&String> = pending.iter().take(5).collect();
    for id in &sample {
        let r = approve(p.admin, ALICE, id, None).await;
        assert_eq!(r.status, 200, "approve {id}: {}", r.text());
    }
    for id in &sample {
        wait_state(p.admin, id, "executed", BOUND).await;
    }
    assert_eq!(up.hits(), sample.len(), "upstream calls vs approved");

    let recs_now = files.iter().map(|f| records_of(f).len()).sum::<usize>();
    report(
        &format!("kill -9 while parking ({kills} kills x {parks} concurrent parks, {what})"),
        sent,
        &answers,
        up.hits(),
        recs_now,
    );
    eprintln!(
        "  after restart: {} approvals ({} pending, all with a park record; {} failed unaudited, all with approval_abandoned); {} park records; {} answered 202; {} approved and executed once; {:?}",
        all.len(),
        pending.len(),
        by_state.get("failed").map_or(0, Vec::len),
        parked.len(),
        got_202.len(),
        sample.len(),
        started.elapsed()
    );
}
