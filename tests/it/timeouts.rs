//! A dead upstream is a quick 502, a slow one a bounded 504, a request past
//! `request_deadline` a 504 of its own: the agent always gets a JSON answer with the
//! reason, never a hang.

use crate::common::*;
use std::time::{Duration, Instant};

/// A proxy-generated failure: status, `reason`, `Portcullis-Decision: error`, and the
/// body's `request_id` equal to the `X-Request-Id` header.
fn assert_failure(r: &Resp, status: u16, reason: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    let v = r.json();
    assert_eq!(v["reason"].as_str(), Some(reason), "{v}");
    assert_eq!(r.header("portcullis-decision"), Some("error"), "{v}");
    let id = r.header("x-request-id").expect("X-Request-Id");
    assert_eq!(v["request_id"].as_str(), Some(id), "{v}");
}

#[tokio::test]
async fn upstream_down_is_a_quick_502() {
    // Bound and never listening, held for the test's life: the connection is refused.
    let dead = crate::common::DeadPort::new();
    let cfg = config(&format!(
        "upstreams:\n  api: {{ url: \"http://{}/base\", timeouts: {{ connect: 10s, response: 10s }} }}\n\
         routes:\n  - {{ prefix: /api, upstream: api }}\n",
        dead.addr
    ));
    let proxy = Proxy::start(&cfg, &[]);
    let token = proxy.agent_token("bot").await;
    let started = Instant::now();
    let r = get(proxy.addr, "/api/x", &token).await;
    let took = started.elapsed();
    assert_failure(&r, 502, "upstream_unreachable");
    // A refused connection is reported as such, not after the 10 s connect timeout.
    assert!(
        took < Duration::from_secs(5),
        "a refused connection took {took:?} to report"
    );
}

#[tokio::test]
async fn slow_upstream_is_a_bounded_504() {
    let up = Upstream::start(Behaviour::Slow(Duration::from_secs(20))).await;
    let cfg = config(&format!(
        "upstreams:\n  api: {{ url: \"{}\", timeouts: {{ connect: 2s, response: 300ms }} }}\n\
         routes:\n  - {{ prefix: /api, upstream: api }}\n",
        up.url()
    ));
    let proxy = Proxy::start(&cfg, &[]);
    let token = proxy.agent_token("bot").await;
    let started = Instant::now();
    let r = get(proxy.addr, "/api/slow", &token).await;
    let took = started.elapsed();
    assert_failure(&r, 504, "upstream_timeout");
    assert!(took < Duration::from_secs(10), "504 took {took:?}");
    assert!(
        took >= Duration::from_millis(250),
        "answered 504 after only {took:?}: before the upstream's timeout"
    );
    assert_eq!(up.hits(), 1, "the request is sent once, not retried");
}

/// `limits.request_deadline`: the whole request, until the response headers, is bounded
/// even when the upstream's own response timeout is longer: 504 `request_deadline`.
#[tokio::test]
async fn request_deadline_is_a_504_with_its_reason() {
    let up = Upstream::start(Behaviour::Hold).await;
    let cfg = config(&format!(
        "limits: {{ request_deadline: 700ms }}\n\
         upstreams:\n  api: {{ url: \"{}\", timeouts: {{ connect: 2s, response: 60s }} }}\n\
         routes:\n  - {{ prefix: /api, upstream: api }}\n",
        up.url()
    ));
    let proxy = Proxy::start(&cfg, &[]);
    let token = proxy.agent_token("bot").await;
    let started = Instant::now();
    let r = get(proxy.addr, "/api/held", &token).await;
    let took = started.elapsed();
    assert_failure(&r, 504, "request_deadline");
    assert!(
        took >= Duration::from_millis(650),
        "answered after only {took:?}: before the 700ms deadline"
    );
    assert!(took < Duration::from_secs(15), "504 took {took:?}");
    assert_eq!(up.hits(), 1, "the request reached the upstream once");
    // The audit record carries the same reason and status.
    let id = r.header("x-request-id").unwrap();
    let rec = crate::support::audit::wait_request_record(&proxy.path("data/audit.jsonl"), id).await;
    assert_eq!(rec["reason"], "request_deadline", "{rec}");
    assert_eq!(rec["status"], 504, "{rec}");
    // Control: once the upstream answers, the same route is served.
    up.release();
    let r = get(proxy.addr, "/api/now", &token).await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test]
async fn response_timeout_bounds_headers_not_the_whole_body() {
    // `response` is the time to response headers: a large body that takes longer than
    // that to stream must still arrive whole.
    let up = Upstream::start(Behaviour::Stream(64 * 1024 * 1024)).await;
    let cfg = config(&format!(
        "upstreams:\n  api: {{ url: \"{}\", timeouts: {{ response: 300ms }} }}\n\
         routes:\n  - {{ prefix: /api, upstream: api }}\n",
        up.url()
    ));
    let proxy = Proxy::start(&cfg, &[]);
    let token = proxy.agent_token("bot").await;
    let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let resp = tx
        .send_request(
            request("GET", proxy.addr, "/api/big", &token)
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // Read slowly at first so the transfer outlasts the 300 ms header timeout.
    let mut body = resp.into_body();
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < Duration::from_millis(600) {
        use http_body_util::BodyExt;
        match tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("frame in time")
        {
            Some(Ok(f)) => n += f.into_data().map(|d| d.len() as u64).unwrap_or(0),
            Some(Err(e)) => panic!("body failed after {n} bytes: {e}"),
            None => break,
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (rest, _, _) = tokio::time::timeout(Duration::from_secs(60), drain_body(body, 0))
        .await
        .expect("body finished in time")
        .expect("body completes after the header timeout has passed");
    assert_eq!(n + rest, 64 * 1024 * 1024);
}
