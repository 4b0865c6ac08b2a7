//! SIGTERM drains: requests in flight finish, new connections are refused, exit code 0.

use crate::common::*;
use std::time::{Duration, Instant};

async fn start() -> (Upstream, Proxy, String) {
    let up = Upstream::start(Behaviour::Hold).await;
    let cfg = config(&format!(
        "upstreams:\n  api: {{ url: \"{}\" }}\nroutes:\n  - {{ prefix: /api, upstream: api }}\n",
        up.url()
    ));
    let proxy = Proxy::start(&cfg, &[]);
    let token = proxy.agent_token("bot").await;
    (up, proxy, token)
}

/// Waits (bounded) until a TCP connect to `addr` is refused; fails naming `what`.
async fn wait_refused(addr: std::net::SocketAddr, what: &str) {
    eventually(what, Duration::from_secs(5), || async {
        match tokio::net::TcpStream::connect(addr).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await
}

/// SIGTERM, then exit code 0 well inside the head deadline (10 s by default): nothing
/// left open holds the drain.
async fn exits_0_promptly(proxy: &mut Proxy, what: &str) {
    let started = Instant::now();
    let status = proxy
        .terminate(Duration::from_secs(15))
        .await
        .expect("exit within 15 s");
    assert_eq!(status.code(), Some(0), "log:\n{}", proxy.logs());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shutdown {what} took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_and_refuses_new_ones() {
    let (up, mut proxy, token) = start().await;
    let addr = proxy.addr;
    let in_flight = tokio::spawn({
        let req = request("GET", addr, "/api/slow", &token)
            .body(empty())
            .unwrap();
        async move { send(addr, req).await }
    });
    assert!(
        up.wait_hits(1, Duration::from_secs(10)).await,
        "the request never reached the upstream"
    );

    proxy.sigterm();
    assert!(
        proxy
            .wait_for_log("shutting down", Duration::from_secs(10))
            .await,
        "no shutdown log line:\n{}",
        proxy.logs()
    );
    wait_refused(addr, "new connections refused after SIGTERM").await;
    wait_refused(proxy.admin, "the admin listener refusing after SIGTERM").await;
    // Still refused on a second try, and the held request is still being served.
    assert!(
        matches!(tokio::net::TcpStream::connect(addr).await, Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused)
    );
    assert!(
        proxy.wait_exit(Duration::from_millis(0)).await.is_none(),
        "the proxy exited with a request in flight; log:\n{}",
        proxy.logs()
    );
    assert!(
        !in_flight.is_finished(),
        "the in-flight request ended before its upstream answered; log:\n{}",
        proxy.logs()
    );

    up.release();
    let r = tokio::time::timeout(Duration::from_secs(20), in_flight)
        .await
        .expect("in-flight request finished")
        .expect("task")
        .unwrap_or_else(|e| panic!("the in-flight request failed: {e}; log:\n{}", proxy.logs()));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("portcullis-decision"), Some("allow"));
    assert_eq!(r.json()["target"], "/api/slow");

    let status = proxy
        .wait_exit(Duration::from_secs(20))
        .await
        .expect("the proxy exits after draining");
    assert_eq!(
        status.code(),
        Some(0),
        "exit status {status:?}; log:\n{}",
        proxy.logs()
    );
    assert_eq!(up.hits(), 1);
}

#[tokio::test]
async fn sigterm_with_an_idle_keep_alive_connection_exits_0_promptly() {
    let (up, mut proxy, token) = start().await;
    up.release();
    // An agent that keeps its connection open between requests must not hold up shutdown.
    let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let resp = tx
        .send_request(
            request("GET", proxy.addr, "/api/x", &token)
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    drain_body(resp.into_body(), 0).await.unwrap();

    exits_0_promptly(&mut proxy, "with an idle keep-alive connection").await;
    drop(tx);
    let _ = conn.await;
}

#[tokio::test]
async fn sigterm_with_a_connection_that_sent_nothing_exits_0_promptly() {
    let (up, mut proxy, _token) = start().await;
    up.release();
    // Connected, not a byte sent: the proxy is still waiting for the first bytes (to
    // tell HTTP/1 from h2). Shutdown closes it at once instead of waiting out the head
    // deadline (10 s by default).
    let mut silent = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    exits_0_promptly(&mut proxy, "with a silent connection").await;
    // The proxy closed it: the read ends (EOF or reset), it does not hang.
    let mut buf = [0u8; 16];
    let r = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read(&mut silent, &mut buf),
    )
    .await
    .expect("the silent connection was closed");
    assert!(matches!(r, Ok(0) | Err(_)), "read {r:?}");
}
