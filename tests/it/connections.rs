//! Issue 11, class 8 — connections that never speak: every accepted connection (agent and
//! admin port, plain and TLS) delivers a complete request head within `header_timeout` or
//! is closed; idle connections close after `idle_timeout`; over `max_connections` /
//! `max_connections_per_ip` a connection is closed right after accept and counted, while
//! agents already connected and the admin port are still served.

use crate::common::*;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::ServerName;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty HTTP/2 SETTINGS frame (length 0, type 4, no flags, stream 0).
const H2_SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];
/// Slack on top of a deadline for a loaded 2-CPU machine.
const SLACK: Duration = Duration::from_millis(1500);

/// Reads (and discards) until the peer closes: `Some(when)` for EOF or a reset within
/// `bound` of `since`, `None` if the connection is still open then.
async fn closed_within<S: AsyncRead + Unpin>(
    s: &mut S,
    since: Instant,
    bound: Duration,
) -> Option<Duration> {
    let mut buf = [0u8; 4096];
    let end = tokio::time::Instant::from_std(since + bound);
    loop {
        match tokio::time::timeout_at(end, s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(since.elapsed()),
            Ok(Ok(_)) => continue,
        }
    }
}

/// Connects to `addr`, writes `bytes` (if any) and reports when the proxy closed it.
async fn silent(addr: SocketAddr, bytes: Vec<u8>, bound: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut s = TcpStream::connect(addr).await.expect("connect");
    if !bytes.is_empty() {
        s.write_all(&bytes).await.expect("write");
    }
    closed_within(&mut s, started, bound).await
}

/// The value of one sample (`name{labels}` exactly) in Prometheus text, if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(series)?;
        rest.strip_prefix(' ')?.trim().parse().ok()
    })
}

async fn metrics(proxy: &Proxy) -> String {
    let r = admin_call(proxy.admin, "GET", "/metrics", OPERATOR_SECRET, None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.text()
}

/// A kept-alive HTTP/1.1 client connection, as an agent would hold one.
async fn keep_alive(
    addr: SocketAddr,
) -> (
    hyper::client::conn::http1::SendRequest<Body>,
    tokio::task::JoinHandle<Result<(), hyper::Error>>,
) {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("handshake");
    (tx, tokio::spawn(conn))
}

async fn call_h1(
    tx: &mut hyper::client::conn::http1::SendRequest<Body>,
    addr: SocketAddr,
    path: &str,
    token: &str,
) -> Result<u16, BoxError> {
    let req = request("GET", addr, path, token).body(empty()).unwrap();
    let resp = tokio::time::timeout(REQUEST_BOUND, tx.send_request(req)).await??;
    let status = resp.status().as_u16();
    drain_body(resp.into_body(), 0).await?;
    Ok(status)
}

fn upstream_config(up: &Upstream, limits: &str) -> String {
    config(&format!(
        "limits: {{ {limits} }}\n\
         upstreams:\n  api: {{ url: \"{}\" }}\n\
         routes:\n  - {{ prefix: /api, upstream: api }}\n",
        up.url()
    ))
}

#[tokio::test]
async fn connections_that_never_speak_are_closed() {
    let header = Duration::from_millis(500);
    let up = Upstream::start(Behaviour::Fixed).await;
    let proxy = Proxy::start(&upstream_config(&up, "header_timeout: 500ms"), &[]);
    let token = proxy.agent_token("bot").await;
    let h2_settings = [H2_PREFACE, H2_SETTINGS].concat();
    let cases: Vec<(&str, SocketAddr, Vec<u8>)> = vec![
        ("agent: nothing", proxy.addr, vec![]),
        // `P` could still be the h2 preface: protocol detection waits for more.
        ("agent: one byte `P`", proxy.addr, b"P".to_vec()),
        ("agent: one byte `G`", proxy.addr, b"G".to_vec()),
        (
            "agent: a partial HTTP/1 head",
            proxy.addr,
            b"GET /api/x HTTP/1.1\r\nHost: a\r\n".to_vec(),
        ),
        (
            "agent: the h2 preface only",
            proxy.addr,
            H2_PREFACE.to_vec(),
        ),
        (
            "agent: h2 preface and SETTINGS, no HEADERS",
            proxy.addr,
            h2_settings.clone(),
        ),
        ("admin: nothing", proxy.admin, vec![]),
        (
            "admin: the h2 preface only",
            proxy.admin,
            H2_PREFACE.to_vec(),
        ),
        ("admin: h2 SETTINGS, no HEADERS", proxy.admin, h2_settings),
    ];
    let bound = header + SLACK;
    let runs: Vec<_> = cases
        .iter()
        .map(|(_, addr, bytes)| tokio::spawn(silent(*addr, bytes.clone(), bound)))
        .collect();
    for ((what, _, _), run) in cases.iter().zip(runs) {
        let closed = run.await.expect("task");
        let Some(after) = closed else {
            panic!("{what}: still open {bound:?} after connecting (header_timeout 500ms)");
        };
        // Closed by the deadline, not by something that happens earlier.
        assert!(
            after >= header - Duration::from_millis(50),
            "{what}: closed after only {after:?}"
        );
    }
    // Agents that do speak are served, on both ports.
    assert_eq!(get(proxy.addr, "/api/x", &token).await.status, 200);
    let m = metrics(&proxy).await;
    let cut = sample(
        &m,
        "portcullis_connections_closed_total{reason=\"header_timeout\"}",
    );
    assert!(
        cut.is_some_and(|n| n >= 7.0),
        "header_timeout closes not counted: {cut:?}\n{m}"
    );
}

#[tokio::test]
async fn tls_connections_that_never_speak_are_closed() {
    let header = Duration::from_millis(500);
    let up = Upstream::start(Behaviour::Fixed).await;
    let ca = TestCa::new();
    let leaf = ca.issue();
    let cfg = config(&format!(
        "tls: {{ cert: certs/proxy.crt, key: certs/proxy.key }}\n\
         limits: {{ header_timeout: 500ms }}\n\
         upstreams:\n  api: {{ url: \"{}\" }}\n\
         routes:\n  - {{ prefix: /api, upstream: api }}\n",
        up.url()
    ));
    let proxy = Proxy::start_with_files(
        &cfg,
        &[],
        &[
            ("certs/proxy.crt", leaf.cert_pem.as_bytes()),
            ("certs/proxy.key", leaf.key_pem.as_bytes()),
        ],
    );
    let bound = header + SLACK;
    let no_handshake = tokio::spawn(silent(proxy.addr, vec![], bound));
    let mut handshaken = Vec::new();
    for alpn in [&b"http/1.1"[..], &b"h2"[..]] {
        let started = Instant::now();
        let tcp = TcpStream::connect(proxy.addr).await.unwrap();
        let cfg = Arc::new(tls_client_config(&ca.pem(), &[alpn]));
        let mut tls = tokio_rustls::TlsConnector::from(cfg)
            .connect(ServerName::try_from("localhost").unwrap().to_owned(), tcp)
            .await
            .expect("TLS handshake");
        if alpn == b"h2" {
            tls.write_all(H2_PREFACE).await.unwrap();
        }
        handshaken.push(tokio::spawn(async move {
            closed_within(&mut tls, started, bound).await
        }));
    }
    let after = no_handshake.await.unwrap();
    assert!(
        after.is_some(),
        "no TLS handshake: still open after {bound:?}"
    );
    for (what, run) in ["TLS, http/1.1, no request", "TLS, h2 preface only"]
        .iter()
        .zip(handshaken)
    {
        let after = run.await.unwrap();
        let after = after.unwrap_or_else(|| panic!("{what}: still open after {bound:?}"));
        assert!(
            after >= header - Duration::from_millis(50),
            "{what}: closed after {after:?}"
        );
    }
}

#[tokio::test]
async fn idle_connections_are_closed_after_idle_timeout() {
    // header_timeout well above idle_timeout: the close must come from the idle deadline.
    let idle = Duration::from_millis(400);
    let up = Upstream::start(Behaviour::Slow(Duration::from_millis(1200))).await;
    let proxy = Proxy::start(
        &upstream_config(&up, "header_timeout: 5s, idle_timeout: 400ms"),
        &[],
    );
    let token = proxy.agent_token("bot").await;
    let bound = idle + SLACK;

    // HTTP/1.1 keep-alive: a request slower than idle_timeout is not cut (it is in
    // flight), then the idle connection is closed.
    let (mut tx, conn) = keep_alive(proxy.addr).await;
    let status = call_h1(&mut tx, proxy.addr, "/api/slow", &token)
        .await
        .expect("a request in flight outlives idle_timeout");
    assert_eq!(status, 200);
    let done = Instant::now();
    let ended = tokio::time::timeout(bound, conn).await;
    let after = done.elapsed();
    assert!(
        ended.is_ok(),
        "HTTP/1.1 keep-alive still open {bound:?} after its last response"
    );
    assert!(
        after >= idle - Duration::from_millis(50),
        "closed after {after:?}"
    );

    // HTTP/2 (prior knowledge): the same, with a GOAWAY.
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut tx, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("h2 handshake");
    let conn = tokio::spawn(conn);
    let resp = tx
        .send_request(
            request("GET", proxy.addr, "/api/slow", &token)
                .body(empty())
                .unwrap(),
        )
        .await
        .expect("h2 request in flight outlives idle_timeout");
    assert_eq!(resp.status(), 200);
    drain_body(resp.into_body(), 0).await.unwrap();
    let done = Instant::now();
    let ended = tokio::time::timeout(bound, conn).await;
    let after = done.elapsed();
    assert!(
        ended.is_ok(),
        "h2 connection still open {bound:?} after its last response"
    );
    assert!(
        after >= idle - Duration::from_millis(50),
        "closed after {after:?}"
    );
    assert_eq!(up.hits(), 2);

    let m = metrics(&proxy).await;
    let idled = sample(
        &m,
        "portcullis_connections_closed_total{reason=\"idle_timeout\"}",
    );
    assert!(
        idled.is_some_and(|n| n >= 2.0),
        "idle closes not counted: {idled:?}"
    );
}

#[tokio::test]
async fn connections_over_the_per_ip_cap_are_refused_at_once() {
    let up = Upstream::start(Behaviour::Fixed).await;
    let proxy = Proxy::start(
        &upstream_config(&up, "header_timeout: 30s, max_connections_per_ip: 5"),
        &[],
    );
    let token = proxy.agent_token("bot").await;
    // One agent that speaks, four sockets that do not: the cap of 5 is reached.
    let (mut agent, _agent_conn) = keep_alive(proxy.addr).await;
    assert_eq!(
        call_h1(&mut agent, proxy.addr, "/api/a", &token)
            .await
            .unwrap(),
        200
    );
    let mut silent_ones = Vec::new();
    for _ in 0..4 {
        silent_ones.push(TcpStream::connect(proxy.addr).await.unwrap());
    }
    let open = "portcullis_connections_open{listener=\"agent\"}";
    let mut m = String::new();
    let mut seen = None;
    for _ in 0..500 {
        m = metrics(&proxy).await;
        seen = sample(&m, open);
        if seen == Some(5.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(seen, Some(5.0), "the proxy never held 5 connections:\n{m}");

    // The sixth is closed at once, long before any timeout.
    let started = Instant::now();
    let mut sixth = TcpStream::connect(proxy.addr).await.unwrap();
    let after = closed_within(&mut sixth, started, Duration::from_secs(5)).await;
    assert!(
        after.is_some_and(|d| d < Duration::from_secs(2)),
        "the connection over the cap was not closed at once: {after:?}"
    );
    // The agent on its existing connection, and the admin port, are still served.
    assert_eq!(
        call_h1(&mut agent, proxy.addr, "/api/b", &token)
            .await
            .unwrap(),
        200
    );
    let r = admin_call(proxy.admin, "GET", "/healthz", "", None).await;
    assert_eq!(r.status, 200);
    let m = metrics(&proxy).await;
    assert_eq!(
        sample(
            &m,
            "portcullis_connections_refused_total{reason=\"per_ip\"}"
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(sample(&m, open), Some(5.0), "{m}");

    // A closed connection frees its place: a new agent connection gets in.
    drop(silent_ones.pop());
    let mut served = false;
    for _ in 0..500 {
        if let Ok(r) = send(
            proxy.addr,
            request("GET", proxy.addr, "/api/c", &token)
                .body(empty())
                .unwrap(),
        )
        .await
        {
            served = r.status == 200;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(served, "no place freed after a connection closed");
    assert_eq!(up.hits(), 3);
}

#[tokio::test]
async fn connections_over_max_connections_are_refused_and_admin_still_answers() {
    let up = Upstream::start(Behaviour::Fixed).await;
    let proxy = Proxy::start(
        &upstream_config(&up, "header_timeout: 30s, max_connections: 2"),
        &[],
    );
    let token = proxy.agent_token("bot").await;
    let (mut agent, _agent_conn) = keep_alive(proxy.addr).await;
    assert_eq!(
        call_h1(&mut agent, proxy.addr, "/api/a", &token)
            .await
            .unwrap(),
        200
    );
    let _held = TcpStream::connect(proxy.addr).await.unwrap();
    let open = "portcullis_connections_open{listener=\"agent\"}";
    let mut seen = None;
    for _ in 0..500 {
        seen = sample(&metrics(&proxy).await, open);
        if seen == Some(2.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(seen, Some(2.0));
    let after = silent(proxy.addr, vec![], Duration::from_secs(5)).await;
    assert!(
        after.is_some_and(|d| d < Duration::from_secs(2)),
        "the connection over max_connections was not closed at once: {after:?}"
    );
    // Admin connections are counted apart and never refused by the agent caps.
    let mut admin_held = Vec::new();
    for _ in 0..3 {
        admin_held.push(TcpStream::connect(proxy.admin).await.unwrap());
    }
    let r = admin_call(proxy.admin, "GET", "/healthz", "", None).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        call_h1(&mut agent, proxy.addr, "/api/b", &token)
            .await
            .unwrap(),
        200
    );
    let m = metrics(&proxy).await;
    assert_eq!(
        sample(
            &m,
            "portcullis_connections_refused_total{reason=\"max_connections\"}"
        ),
        Some(1.0),
        "{m}"
    );
}

#[tokio::test]
async fn the_open_file_limit_is_raised_and_logged() {
    // Start the proxy with a soft limit below the hard one (children inherit it), then
    // put this process's back.
    let mut was = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a valid, owned struct.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut was) }, 0);
    let low = libc::rlimit {
        rlim_cur: 256.min(was.rlim_max),
        rlim_max: was.rlim_max,
    };
    // SAFETY: as above.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &low) }, 0);
    // A cap no descriptor limit can hold (nr_open is below 2^30) is warned about.
    let cfg = config("limits: { max_connections: 4294967295 }");
    let proxy = std::panic::catch_unwind(|| Proxy::start(&cfg, &[]));
    // SAFETY: as above.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &was) }, 0);
    let proxy = proxy.expect("proxy starts");
    let logs = proxy.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("open-file limit"))
        .unwrap_or_else(|| panic!("no open-file limit line:\n{logs}"));
    let field = |k: &str| -> u64 {
        let i = line.find(k).unwrap_or_else(|| panic!("no {k} in {line}")) + k.len();
        line[i..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{k} in {line}"))
    };
    let (soft, hard, before) = (
        field("nofile_soft="),
        field("nofile_hard="),
        field("nofile_was="),
    );
    assert_eq!(before, low.rlim_cur, "{line}");
    assert_eq!(soft, hard, "soft limit not raised to the hard one: {line}");
    assert!(
        logs.contains("max_connections is not below the open-file limit"),
        "no warning for a cap above the limit:\n{logs}"
    );
    // The figure is the process's own.
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", proxy.pid())).unwrap();
    let row = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    assert!(row.contains(&soft.to_string()), "{row} vs {line}");
}
