//! What an operator approves is what is sent. `request_sha256` covers the headers that
//! will be forwarded (one kept header differing gives a different hash; a header the
//! proxy drops does not change it), and the replay recomputes it: a parked body edited in
//! the store (redis: with a redis client; embedded: with the proxy stopped, through redb)
//! ends the approval `failed` with reason `integrity` and a `replay_failed` record, and
//! nothing reaches the upstream — while an untouched approval on the same proxy executes.

use crate::common::Proxy;
use crate::support::approvals::*;
use crate::support::audit::{out_text, verify};
use crate::support::redis::{random_prefix, RedisServer};
use crate::support::trail::{check_event, park_record, wait_event, Ev};
use serde_json::json;

const TRAIL: &str = "data/audit.jsonl";
const BODY: &[u8] = b"{\"refund_to\":\"acct-1111\"}";
const TAMPERED: &[u8] = b"{\"refund_to\":\"acct-6666\"}";

fn start(up: &ReplayUpstream, store: &str, env: &[(&str, &str)]) -> Proxy {
    let mut e = vec![("API_KEY", UPSTREAM_KEY)];
    e.extend_from_slice(env);
    Proxy::start(&config("node-a", store, &up.url(), ""), &e)
}

#[tokio::test(flavor = "multi_thread")]
async fn request_sha256_covers_kept_headers_and_ignores_dropped_ones() {
    let up = ReplayUpstream::start().await;
    let p = start(&up, EMBEDDED, &[]);
    let (bot, _) = issue(p.admin, "bot").await;
    let path = "/tickets/20/close";
    let park_with = |extra: Vec<(&'static str, &'static str)>| {
        let (p, bot) = (&p, bot.clone());
        async move {
            let v = park(p, &bot, path, &extra, BODY).await;
            let id = approval_id(&v);
            let sha = v["request_sha256"].as_str().unwrap_or_default().to_string();
            assert_eq!(sha.len(), 64, "request_sha256 in the 202: {v}");
            let o = view(p.admin, &id).await;
            assert_eq!(
                o["request_sha256"].as_str(),
                Some(sha.as_str()),
                "the 202 and GET /approvals/{id} name the same hash"
            );
            (sha, o)
        }
    };
    let (a, va) = park_with(vec![("x-custom", "one")]).await;
    let (b, vb) = park_with(vec![("x-custom", "two")]).await;
    // Headers the proxy never forwards: the agent's cookie, client-address claims, its
    // own request id, routing overrides.
    let (c, vc) = park_with(vec![
        ("x-custom", "one"),
        ("cookie", AGENT_COOKIE),
        ("x-forwarded-for", "10.9.9.9"),
        ("true-client-ip", "10.9.9.8"),
        ("x-request-id", "client-chosen-5e2a"),
        ("x-original-url", "/tickets/20/refund"),
    ])
    .await;

    assert_ne!(
        a, b,
        "two parks differing only in a kept header (x-custom) have one request_sha256"
    );
    assert_ne!(va["headers"], vb["headers"]);
    assert_eq!(
        a, c,
        "headers the proxy drops changed request_sha256 (kept headers {} vs {})",
        va["headers"], vc["headers"]
    );
    assert_eq!(
        va["headers"], vc["headers"],
        "the kept headers differ though only dropped headers were added"
    );
    let kept = vc["headers"].to_string().to_ascii_lowercase();
    for dropped in [
        "cookie",
        "x-forwarded-for",
        "true-client-ip",
        "client-chosen-5e2a",
        "x-original-url",
    ] {
        assert!(
            !kept.contains(dropped),
            "`{dropped}` is among the kept headers: {kept}"
        );
    }
    assert!(kept.contains("x-custom"), "x-custom is kept: {kept}");
    assert_eq!(up.hits(), 0);
}

/// Parks two requests, has `tamper` replace the first one's stored body (returning the
/// proxy to approve on — the same one, or a restart), then approves both quoting the
/// hashes shown: the tampered one fails `integrity` with nothing sent, the other executes.
async fn tampered_body_fails_integrity<F, Fut>(
    up: &ReplayUpstream,
    p: Proxy,
    trail: &std::path::Path,
    tamper: F,
) -> Proxy
where
    F: FnOnce(Proxy, String) -> Fut,
    Fut: std::future::Future<Output = Proxy>,
{
    let (bot, _) = issue(p.admin, "bot").await;
    let bad = approval_id(&park(&p, &bot, "/tickets/21/close", &[], BODY).await);
    let good = approval_id(&park(&p, &bot, "/tickets/22/close", &[], BODY).await);
    let park_rec = park_record(trail, &bad);
    let sha = view(p.admin, &bad).await["request_sha256"]
        .as_str()
        .unwrap()
        .to_string();

    let p = tamper(p, bad.clone()).await;
    // The operator is shown the stored bytes: the edit is real.
    let v = view(p.admin, &bad).await;
    assert_eq!(v["state"], "pending", "{v}");
    assert_eq!(
        v["body"].as_str().map(str::as_bytes),
        Some(TAMPERED),
        "the stored body was not replaced: {v}"
    );

    for id in [&bad, &good] {
        let quoted = view(p.admin, id).await["request_sha256"].clone();
        let r = approve(
            p.admin,
            ALICE,
            id,
            Some(json!({"comment": "looks right", "request_sha256": quoted})),
        )
        .await;
        assert_eq!(r.status, 200, "approve {id}: {}", r.text());
    }
    let v = wait_state(p.admin, &bad, "failed", BOUND).await;
    assert_eq!(v["reason"], "integrity", "{v}");
    let detail = v["detail"].as_str().unwrap_or_default().to_string();
    assert!(
        detail.contains("request_sha256"),
        "the detail says the request no longer matches its hash: {v}"
    );
    assert!(v["upstream_status"].is_null(), "{v}");
    assert_eq!(
        v["request_sha256"].as_str(),
        Some(sha.as_str()),
        "the recorded hash changed: {v}"
    );
    let s = agent_status(&p, &bot, &bad, None).await;
    assert_eq!(s.json()["status"], "failed", "{}", s.text());
    assert_eq!(s.json()["reason"], "integrity", "{}", s.text());
    check_event(
        &wait_event(trail, &bad, "replay_failed").await,
        &park_rec,
        &Ev {
            event: "replay_failed",
            decision: "failed",
            reason: Some("integrity"),
            operator: Some("alice"),
            comment: Some(&detail),
            upstream_status: None,
        },
    );

    // The untouched one went through, alone.
    let v = wait_state(p.admin, &good, "executed", BOUND).await;
    assert_eq!(v["upstream_status"], RESULT_STATUS, "{v}");
    assert!(
        up.wait_got(1, BOUND).await,
        "the untouched replay never arrived"
    );
    let got = up.got();
    assert_eq!(got.len(), 1, "upstream calls: {got:?}");
    assert_eq!(got[0].target, "/v2/tickets/22/close");
    assert_eq!(got[0].body, BODY);
    p
}

#[tokio::test(flavor = "multi_thread")]
async fn tampered_parked_body_fails_integrity_redis() {
    let redis = RedisServer::start();
    let url = redis.url();
    let up = ReplayUpstream::start().await;
    let p = start(&up, &redis_store(&random_prefix()), &[("REDIS_URL", &url)]);
    let trail = p.path(TRAIL);
    tampered_body_fails_integrity(&up, p, &trail, |p, id| {
        let mut c = redis.conn();
        async move {
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("*approval:{id}:body"))
                .query(&mut c)
                .expect("KEYS");
            assert_eq!(keys.len(), 1, "the parked body's key: {keys:?}");
            let old: Vec<u8> = redis::cmd("GET").arg(&keys[0]).query(&mut c).expect("GET");
            assert_eq!(old, BODY, "{} holds the parked body", keys[0]);
            let _: () = redis::cmd("SET")
                .arg(&keys[0])
                .arg(TAMPERED)
                .query(&mut c)
                .expect("SET");
            p
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tampered_parked_body_fails_integrity_embedded() {
    const BODIES: redb::TableDefinition<&str, &[u8]> =
        redb::TableDefinition::new("approval_bodies");
    let up = ReplayUpstream::start().await;
    // The store and the trail outside the proxy's own dir: the restart shares both.
    let shared = tempfile::tempdir().expect("tempdir");
    let db_path = shared.path().join("p.redb");
    let trail = shared.path().join("audit.jsonl");
    let own_trail = format!("audit: {{ path: {TRAIL} }}");
    let cfg = config(
        "node-a",
        &format!("{{ embedded: \"{}\" }}", db_path.display()),
        &up.url(),
        "",
    );
    assert!(
        cfg.contains(&own_trail),
        "the approvals config changed shape"
    );
    let cfg = cfg.replace(
        &own_trail,
        &format!("audit: {{ path: \"{}\" }}", trail.display()),
    );
    let env = [("API_KEY", UPSTREAM_KEY)];
    let p = Proxy::start(&cfg, &env);
    tampered_body_fails_integrity(&up, p, &trail, |mut p, id| {
        let (cfg, db_path) = (cfg.clone(), db_path.clone());
        async move {
            // redb holds the file exclusively: stop the proxy, edit, start it again.
            assert!(
                p.terminate(BOUND).await.is_some(),
                "the proxy did not stop; log:\n{}",
                p.logs()
            );
            let db = redb::Database::open(&db_path).expect("open the store file");
            let tx = db.begin_write().expect("begin_write");
            {
                let mut t = tx.open_table(BODIES).expect("the approval_bodies table");
                let old = redb::ReadableTable::get(&t, id.as_str())
                    .expect("get")
                    .map(|g| g.value().to_vec());
                assert_eq!(old.as_deref(), Some(BODY), "the stored body of {id}");
                t.insert(id.as_str(), TAMPERED).expect("insert");
            }
            tx.commit().expect("commit");
            drop(db);
            Proxy::start(&cfg, &env)
        }
    })
    .await;
    // One trail across the restart: the park record, then the replay's failure.
    let o = verify(&[trail], &[], &[]);
    assert!(o.status.success(), "{}", out_text(&o));
}
