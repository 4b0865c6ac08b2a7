//! Metrics, health and the audit sink's failure mode, through the real binary:
//! `/metrics` is Prometheus text (checked by a small parser) that counts a known sequence
//! of requests exactly and needs a viewer; `/healthz` and `/readyz` need no token;
//! unauthenticated refusals are all counted but only sampled into the audit log; when
//! the audit directory disappears (or the file becomes a directory) requests fail closed
//! with 503 `audit_unavailable`, nothing is forwarded, `/readyz` is 503, and it recovers
//! once the directory is back.

use crate::common;
use crate::support::audit as audit_support;

use crate::common::{Behaviour, Head, Proxy, Resp, Upstream, OPERATOR_SECRET};
use crate::support::admin::{admin_call, call, issue, op_ok};
use crate::support::audit::{parse_exposition, records_of, scrape, verify, wait_request_record};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const AUDIT_DIR: &str = "audit";
const AUDIT: &str = "audit/audit.jsonl";
const VIEWER_SECRET: &str = "pco-test-viewer-metrics-8e21b7c4";
/// How long recovery from an audit outage may take once the directory is back.
const RECOVERY: Duration = Duration::from_secs(10);

fn config(url: &str, dead: SocketAddr) -> String {
    format!(
        r#"{head}  - {{ name: watcher, token_sha256: "{viewer}", roles: [viewer] }}
upstreams:
  api: {{ url: "{url}" }}
  down: {{ url: "http://{dead}", timeouts: {{ connect: 500ms, response: 2s }} }}
routes:
  - prefix: /tickets
    upstream: api
    tool_prefix: tickets
    paths: ["/tickets/{{id}}"]
    tools:
      - {{ match: "POST /tickets/{{id}}/refund", name: tickets.refund, risk: critical }}
  - {{ prefix: /down, upstream: down, tool_prefix: down }}
profiles:
  drafter:
    tools: ["tickets.*", "down.*"]
    max_risk: medium
    approval: ["tickets.refund"]
    deny: ["*.delete"]
agents:
  bot: {{ profile: drafter, tenant: acme }}
"#,
        head = Head::new()
            .node("metrics-node")
            .audit(&format!("{{ path: {AUDIT} }}")),
        viewer = hex::encode(Sha256::digest(VIEWER_SECRET.as_bytes())),
    )
}

async fn start() -> (Upstream, Proxy, String) {
    let up = Upstream::start(Behaviour::Fixed).await;
    let p = Proxy::start(&config(&up.url(), common::dead_port()), &[]);
    let bot = issue(&p, json!({"agent": "bot", "ttl": "1h"})).await.token;
    (up, p, bot)
}

async fn admin_get(p: &Proxy, path: &str, token: &str) -> Resp {
    admin_call(p.admin, "GET", path, token, None).await
}

#[test]
fn the_exposition_parser_rejects_malformed_text() {
    let good = "# HELP a_total Things.\n# TYPE a_total counter\na_total{x=\"1\",y=\"q\\\"z\"} 3\n\
                # TYPE h histogram\nh_bucket{le=\"0.1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 0.3\nh_count 2\n";
    let e = parse_exposition(good).unwrap();
    assert_eq!(e.value("a_total", &[("x", "1"), ("y", "q\"z")]), Some(3.0));
    assert_eq!(e.value("h_count", &[]), Some(2.0));
    for bad in [
        "a_total{x=1} 3\n",
        "a_total{x=\"1\"}3\n",
        "a_total{x=\"1\"} three\n",
        "9a 1\n",
        "# TYPE a nonsense\n",
        "a 1\n# TYPE a counter\n",
        "# TYPE h histogram\nh_bucket{le=\"0.1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n",
        "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_count 3\n",
        "a{x=\"1\",x=\"2\"} 1\n",
    ] {
        assert!(parse_exposition(bad).is_err(), "accepted: {bad:?}");
    }
}

// ---------------------------------------------------------------------------------------
// /metrics
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn metrics_parse_and_count_a_known_sequence_exactly() {
    let (up, p, bot) = start().await;
    for i in 0..3 {
        let r = call(p.addr, "GET", &format!("/tickets/{i}"), &bot).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    for i in 0..2 {
        let r = call(p.addr, "DELETE", &format!("/tickets/{i}"), &bot).await;
        assert_eq!(r.status, 403, "{}", r.text());
    }
    for _ in 0..2 {
        let r = call(p.addr, "GET", "/tickets/1", "").await;
        assert_eq!(r.status, 401, "{}", r.text());
    }
    assert_eq!(up.hits(), 3);

    let m = scrape(&p).await;
    let req = "portcullis_requests_total";
    assert_eq!(
        m.types.get(req).map(String::as_str),
        Some("counter"),
        "{req} TYPE"
    );
    assert!(m.helps.contains_key(req), "{req} HELP");
    assert_eq!(
        m.value(
            req,
            &[
                ("decision", "allow"),
                ("risk", "low"),
                ("tool", "tickets.get"),
                ("via", "http")
            ]
        ),
        Some(3.0),
        "allows: {:#?}",
        m.all(req)
    );
    assert_eq!(
        m.value(
            req,
            &[
                ("decision", "deny"),
                ("risk", "high"),
                ("tool", "tickets.delete"),
                ("via", "http")
            ]
        ),
        Some(2.0),
        "denies: {:#?}",
        m.all(req)
    );
    assert_eq!(
        m.sum(req),
        5.0,
        "authenticated requests, nothing else: {:#?}",
        m.all(req)
    );
    assert_eq!(
        m.sum("portcullis_unauthenticated_total"),
        2.0,
        "{:#?}",
        m.all("portcullis_unauthenticated_total")
    );
    for h in ["portcullis_gate_seconds", "portcullis_upstream_seconds"] {
        assert_eq!(
            m.types.get(h).map(String::as_str),
            Some("histogram"),
            "{h} TYPE"
        );
    }
    assert_eq!(
        m.sum("portcullis_upstream_seconds_count"),
        3.0,
        "one upstream timing per forwarded request"
    );
    assert_eq!(
        m.sum("portcullis_gate_seconds_count"),
        5.0,
        "one gate timing per authenticated, classified request"
    );
    assert!(
        m.samples
            .iter()
            .any(|s| s.name == "portcullis_audit_queue_depth"),
        "audit queue depth gauge missing"
    );

    // One more of each moves the counts by exactly one.
    let r = call(p.addr, "GET", "/tickets/9", &bot).await;
    assert_eq!(r.status, 200);
    let r = call(p.addr, "DELETE", "/tickets/9", &bot).await;
    assert_eq!(r.status, 403);
    let m = scrape(&p).await;
    assert_eq!(
        m.value(
            req,
            &[
                ("decision", "allow"),
                ("risk", "low"),
                ("tool", "tickets.get"),
                ("via", "http")
            ]
        ),
        Some(4.0)
    );
    assert_eq!(
        m.value(
            req,
            &[
                ("decision", "deny"),
                ("risk", "high"),
                ("tool", "tickets.delete"),
                ("via", "http")
            ]
        ),
        Some(3.0)
    );

    // Upstream errors by kind, a reload by result, a parked request.
    let r = call(p.addr, "GET", "/down/1", &bot).await;
    assert_eq!(r.status, 502, "{}", r.text());
    op_ok(&p, "POST", "/reload", None).await;
    let parked = common::send(
        p.addr,
        common::request("POST", p.addr, "/tickets/1/refund", &bot)
            .body(common::full("{}"))
            .unwrap(),
    )
    .await
    .unwrap();
    let m = scrape(&p).await;
    assert_eq!(
        m.sum("portcullis_upstream_errors_total"),
        1.0,
        "{:#?}",
        m.all("portcullis_upstream_errors_total")
    );
    assert_eq!(
        m.value("portcullis_config_reloads_total", &[("result", "ok")]),
        Some(1.0),
        "{:#?}",
        m.all("portcullis_config_reloads_total")
    );
    if parked.status == 202 {
        assert_eq!(
            m.sum("portcullis_parked"),
            1.0,
            "one request parked: {:#?}",
            m.all("portcullis_parked")
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_need_a_viewer_and_health_needs_no_token() {
    let (_up, p, bot) = start().await;
    let r = admin_get(&p, "/metrics", "").await;
    assert_eq!(r.status, 401, "/metrics without a token: {}", r.text());
    assert!(!r.text().contains("portcullis_"), "{}", r.text());
    let r = admin_get(&p, "/metrics", "pco-not-an-operator").await;
    assert_eq!(
        r.status,
        401,
        "/metrics with an unknown token: {}",
        r.text()
    );
    let r = admin_get(&p, "/metrics", &bot).await;
    assert_eq!(r.status, 403, "/metrics with an agent token: {}", r.text());
    let r = admin_get(&p, "/metrics", VIEWER_SECRET).await;
    assert_eq!(r.status, 200, "/metrics as a viewer: {}", r.text());
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("text/plain")),
        "content-type {:?}",
        r.header("content-type")
    );
    parse_exposition(&r.text()).unwrap_or_else(|e| panic!("{e}\n{}", r.text()));
    let r = admin_get(&p, "/metrics", OPERATOR_SECRET).await;
    assert_eq!(r.status, 200);

    for path in ["/healthz", "/readyz"] {
        let r = admin_get(&p, path, "").await;
        assert_eq!(r.status, 200, "{path} without a token: {}", r.text());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unauthenticated_refusals_are_all_counted_but_sampled_into_the_log() {
    let (up, p, _bot) = start().await;
    let n = 80;
    let t0 = Instant::now();
    let mut ids = Vec::new();
    for _ in 0..n {
        let r = call(p.addr, "GET", "/tickets/1", "").await;
        assert_eq!(r.status, 401);
        ids.push(r.header("x-request-id").unwrap().to_string());
    }
    let elapsed = t0.elapsed();
    assert_eq!(up.hits(), 0);
    let m = scrape(&p).await;
    assert_eq!(
        m.sum("portcullis_unauthenticated_total"),
        n as f64,
        "every refusal counted: {:#?}",
        m.all("portcullis_unauthenticated_total")
    );
    // The sampler admits a burst of 50 then 10/s. Wait for the last admitted record
    // (the first 50 are always admitted) and for the writer to settle on the rest.
    let path = p.path(AUDIT);
    wait_request_record(&path, &ids[49]).await;
    let count = || {
        records_of(&path)
            .iter()
            .filter(|r| r["status"] == 401)
            .count()
    };
    // A token_issued record after the requests is durable, so every record queued before
    // it is on disk once it is.
    issue(&p, json!({"agent": "bot", "ttl": "1h"})).await;
    let recorded = count();
    let bound = 50 + (elapsed.as_secs_f64() * 10.0).ceil() as usize + 1;
    assert!(
        (50..=bound.min(n)).contains(&recorded),
        "{recorded} of {n} unauthenticated refusals in the audit log over {elapsed:?}; \
         want 50 (burst) ..= {bound}"
    );
}

// ---------------------------------------------------------------------------------------
// Audit sink failure
// ---------------------------------------------------------------------------------------

fn assert_audit_unavailable(what: &str, r: &Resp) {
    assert_eq!(r.status, 503, "{what}: status; body {}", r.text());
    assert_eq!(
        r.reason().as_deref(),
        Some("audit_unavailable"),
        "{what}: reason in {}",
        r.text()
    );
    assert!(r.header("x-request-id").is_some(), "{what}: X-Request-Id");
}

/// Retries `GET /tickets/1` (an allowed request) and `/readyz` until both succeed, bounded.
async fn wait_recovered(p: &Proxy, up: &Upstream, bot: &str) -> Resp {
    let end = Instant::now() + RECOVERY;
    loop {
        let ready = admin_get(p, "/readyz", "").await;
        let before = up.hits();
        let r = call(p.addr, "GET", "/tickets/1", bot).await;
        if r.status != 200 {
            assert_eq!(
                up.hits(),
                before,
                "a refused request reached the upstream during the outage"
            );
        }
        if ready.status == 200 && r.status == 200 {
            return r;
        }
        if Instant::now() >= end {
            panic!(
                "no recovery within {RECOVERY:?} after the audit directory came back: \
                 GET /tickets/1 → {} {}; /readyz → {} {}",
                r.status,
                r.text(),
                ready.status,
                ready.text()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// After an outage: the allowed request's record is in the new file, which continues the
/// chain from the last durable record before the outage (`old`: what the old file held)
/// — and, its head being gone, does not verify as a chain of its own.
async fn check_after_recovery(p: &Proxy, r: &Resp, old: &[serde_json::Value]) {
    let path = p.path(AUDIT);
    let rec = wait_request_record(&path, r.header("x-request-id").unwrap()).await;
    assert_eq!(rec["decision"], "allow", "{rec}");
    let from = audit_support::continue_after_outage(old, &path);
    let from: Vec<&str> = from.iter().map(String::as_str).collect();
    let o = verify(std::slice::from_ref(&path), &from, &[]);
    assert!(o.status.success(), "{}", audit_support::out_text(&o));
    let o = verify(&[path], &[], &[]);
    assert_eq!(o.status.code(), Some(1), "{}", audit_support::out_text(&o));
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_dir_removed_next_allowed_request_gets_503_and_is_not_forwarded() {
    let (up, p, bot) = start().await;
    let r = call(p.addr, "GET", "/tickets/1", &bot).await;
    assert_eq!(r.status, 200);
    wait_request_record(&p.path(AUDIT), r.header("x-request-id").unwrap()).await;
    assert_eq!(admin_get(&p, "/readyz", "").await.status, 200);

    std::fs::remove_dir_all(p.path(AUDIT_DIR)).unwrap();
    let hits = up.hits();
    let r = call(p.addr, "GET", "/tickets/2", &bot).await;
    assert_eq!(
        up.hits(),
        hits,
        "the first allowed request after the audit directory vanished was forwarded \
         (status {}), so it went unrecorded",
        r.status
    );
    assert_audit_unavailable("first allowed request after the audit dir vanished", &r);
    let ready = admin_get(&p, "/readyz", "").await;
    assert_eq!(ready.status, 503, "/readyz: {}", ready.text());
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_dir_removed_requests_fail_closed_then_recover() {
    let (up, p, bot) = start().await;
    let r = call(p.addr, "GET", "/tickets/1", &bot).await;
    assert_eq!(r.status, 200);
    wait_request_record(&p.path(AUDIT), r.header("x-request-id").unwrap()).await;

    let old = audit_support::records_of(&p.path(AUDIT));
    std::fs::remove_dir_all(p.path(AUDIT_DIR)).unwrap();
    // A refusal must be durable before its response: it cannot be, so 503.
    let r = call(p.addr, "DELETE", "/tickets/1", &bot).await;
    assert_audit_unavailable("a deny while the audit dir is gone", &r);
    assert_eq!(r.header("portcullis-decision"), Some("error"));
    // Now the writer knows: allowed requests are refused and not forwarded.
    let hits = up.hits();
    for i in 0..3 {
        let r = call(p.addr, "GET", &format!("/tickets/{i}"), &bot).await;
        assert_audit_unavailable("an allowed request during the outage", &r);
    }
    assert_eq!(
        up.hits(),
        hits,
        "requests were forwarded while the audit log was unwritable"
    );
    let ready = admin_get(&p, "/readyz", "").await;
    assert_eq!(
        ready.status,
        503,
        "/readyz during the outage: {}",
        ready.text()
    );
    assert_eq!(
        ready.reason().as_deref(),
        Some("audit_unavailable"),
        "{}",
        ready.text()
    );
    let m = scrape(&p).await;
    assert!(
        m.sum("portcullis_audit_write_errors_total") >= 1.0,
        "audit write errors are counted: {:#?}",
        m.all("portcullis_audit_write_errors_total")
    );
    let logs = p.logs_synced().await;
    assert!(
        logs.lines()
            .any(|l| l.contains("ERROR") && l.to_ascii_lowercase().contains("audit")),
        "the failure is loud in the log:\n{logs}"
    );
    assert!(
        !p.path(AUDIT_DIR).exists(),
        "nothing recreated the directory"
    );

    std::fs::create_dir_all(p.path(AUDIT_DIR)).unwrap();
    let r = wait_recovered(&p, &up, &bot).await;
    check_after_recovery(&p, &r, &old).await;
}

/// The audit file moved away (a log rotation by rename, without telling the proxy) and
/// a file renamed onto its path: each time, the next allowed request is refused, not
/// forwarded — the request path notices a change on the path without a `stat` per
/// request, and still before anything is forwarded.
#[tokio::test(flavor = "multi_thread")]
async fn audit_file_renamed_away_or_over_next_allowed_request_is_not_forwarded() {
    let (up, p, bot) = start().await;
    let r = call(p.addr, "GET", "/tickets/1", &bot).await;
    assert_eq!(r.status, 200);
    wait_request_record(&p.path(AUDIT), r.header("x-request-id").unwrap()).await;

    std::fs::rename(p.path(AUDIT), p.path(&format!("{AUDIT}.moved"))).unwrap();
    let hits = up.hits();
    let r = call(p.addr, "GET", "/tickets/2", &bot).await;
    assert_eq!(up.hits(), hits, "forwarded after the audit file moved away");
    assert_audit_unavailable("first allowed request after the audit file moved", &r);

    let r = wait_recovered(&p, &up, &bot).await;
    wait_request_record(&p.path(AUDIT), r.header("x-request-id").unwrap()).await;
    let other = p.path(&format!("{AUDIT}.other"));
    std::fs::write(&other, b"").unwrap();
    std::fs::rename(&other, p.path(AUDIT)).unwrap();
    let hits = up.hits();
    let r = call(p.addr, "GET", "/tickets/3", &bot).await;
    assert_eq!(
        up.hits(),
        hits,
        "forwarded after a file was renamed over the audit file"
    );
    assert_audit_unavailable(
        "first allowed request after the audit file was replaced",
        &r,
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_path_replaced_by_a_directory_fails_closed_then_recovers() {
    let (up, p, bot) = start().await;
    let r = call(p.addr, "GET", "/tickets/1", &bot).await;
    assert_eq!(r.status, 200);
    wait_request_record(&p.path(AUDIT), r.header("x-request-id").unwrap()).await;

    let old = audit_support::records_of(&p.path(AUDIT));
    std::fs::remove_file(p.path(AUDIT)).unwrap();
    std::fs::create_dir(p.path(AUDIT)).unwrap();
    let r = call(p.addr, "DELETE", "/tickets/1", &bot).await;
    assert_audit_unavailable("a deny while the audit path is a directory", &r);
    let hits = up.hits();
    let r = call(p.addr, "GET", "/tickets/1", &bot).await;
    assert_audit_unavailable("an allowed request while the audit path is a directory", &r);
    assert_eq!(
        up.hits(),
        hits,
        "forwarded while the audit log was unwritable"
    );
    let ready = admin_get(&p, "/readyz", "").await;
    assert_eq!(ready.status, 503, "/readyz: {}", ready.text());

    std::fs::remove_dir(p.path(AUDIT)).unwrap();
    let r = wait_recovered(&p, &up, &bot).await;
    check_after_recovery(&p, &r, &old).await;
}
