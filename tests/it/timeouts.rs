//! A dead upstream is a quick 502, a slow one a bounded 504: the agent always gets a JSON
//! answer, never a hang.

use crate::common::*;
use std::time::{Duration, Instant};

#[tokio::test]
async fn upstream_down_is_a_quick_502() {
    let dead = dead_port();
    let cfg = config(&format!(
        "upstreams:\n  api: {{ url: \"http://{dead}/base\", timeouts: {{ connect: 2s, response: 5s }} }}\n\
         routes:\n  - {{ prefix: /api, upstream: api }}\n"
    ));
    let proxy = Proxy::start(&cfg, &[]);
    let token = proxy.agent_token("bot").await;
    let started = Instant::now();
    let r = get(proxy.addr, "/api/x", &token).await;
    let took = started.elapsed();
    assert_eq!(r.status, 502, "{}", r.text());
    let v = r.json();
    assert!(v["reason"].as_str().is_some_and(|s| !s.is_empty()), "{v}");
    assert_eq!(r.header("portcullis-decision"), Some("error"));
    assert!(r.header("x-request-id").is_some());
    assert!(
        took < Duration::from_secs(3),
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
    assert_eq!(r.status, 504, "{}", r.text());
    let v = r.json();
    assert!(v["reason"].as_str().is_some_and(|s| !s.is_empty()), "{v}");
    assert_eq!(r.header("portcullis-decision"), Some("error"));
    assert!(took < Duration::from_secs(5), "504 took {took:?}");
    assert!(
        took >= Duration::from_millis(250),
        "answered 504 after only {took:?}: before the upstream's timeout"
    );
    assert_eq!(up.hits(), 1, "the request is sent once, not retried");
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
