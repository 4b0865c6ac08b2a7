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

/// Polls `/metrics` (bounded) until `series` reads `want` (a close is counted just after
/// the socket is closed); returns the last value read and the text it came from.
async fn wait_sample(proxy: &Proxy, series: &str, want: f64) -> (Option<f64>, String) {
    let m = eventually(
        &format!("{series} at {want}"),
        Duration::from_secs(10),
        || async {
            let m = metrics(proxy).await;
            if sample(&m, series) == Some(want) {
                Ok(m)
            } else {
                Err(m)
            }
        },
    )
    .await;
    (Some(want), m)
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
    let (cut, m) = wait_sample(
        &proxy,
        "portcullis_connections_closed_total{reason=\"header_timeout\"}",
        9.0,
    )
    .await;
    assert_eq!(
        cut,
        Some(9.0),
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
    let after = no_handshake
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("no TLS handshake: still open after {bound:?}"));
    assert!(
        after >= header - Duration::from_millis(50),
        "no TLS handshake: closed after only {after:?}"
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
    let (seen, m) = wait_sample(&proxy, open, 5.0).await;
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

    // A closed connection frees its place: once the proxy has seen it go, a new agent
    // connection gets in at the first try.
    drop(silent_ones.pop());
    let (now_open, m) = wait_sample(&proxy, open, 4.0).await;
    assert_eq!(
        now_open,
        Some(4.0),
        "the closed connection was not released:\n{m}"
    );
    let r = send(
        proxy.addr,
        request("GET", proxy.addr, "/api/c", &token)
            .body(empty())
            .unwrap(),
    )
    .await
    .expect("a connection after a place was freed");
    assert_eq!(r.status, 200, "{}", r.text());
    let m = metrics(&proxy).await;
    assert_eq!(
        sample(
            &m,
            "portcullis_connections_refused_total{reason=\"per_ip\"}"
        ),
        Some(1.0),
        "{m}"
    );
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
    let (seen, m) = wait_sample(&proxy, open, 2.0).await;
    assert_eq!(seen, Some(2.0), "the proxy never held 2 connections:\n{m}");
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

// ---------------------------------------------------------------------------------------
// HTTP/2 stream cap, header size limits, slow heads and slow handshakes
// ---------------------------------------------------------------------------------------

use crate::h2_raw::{
    h2_get, H2Answer, H2Raw, REFUSED_STREAM, RST_STREAM, SETTINGS, SETTINGS_MAX_CONCURRENT_STREAMS,
    SETTINGS_MAX_HEADER_LIST_SIZE,
};

/// Generous bound for one frame or answer on a loaded machine.
const FRAME_BOUND: Duration = Duration::from_secs(20);

async fn server_settings(h2: &mut H2Raw) -> Vec<(u16, u32)> {
    h2.until("the server's SETTINGS", FRAME_BOUND, |f| {
        f.ty == SETTINGS && f.flags & 0x1 == 0
    })
    .await
    .settings()
}

/// README "Forwarding": h2 at most 100 concurrent streams. The server announces it, 100
/// requests in flight on one connection all reach the upstream, the 101st opened meanwhile
/// is refused with RST_STREAM(REFUSED_STREAM) and never forwarded, and once the 100 are
/// answered the connection serves new streams.
#[tokio::test]
async fn h2_serves_100_concurrent_streams_and_refuses_the_101st() {
    let up = Upstream::start(Behaviour::Hold).await;
    let proxy = Proxy::start(&upstream_config(&up, "header_timeout: 30s"), &[]);
    let token = proxy.agent_token("bot").await;
    let auth = format!("Bearer {token}");
    let authority = proxy.addr.to_string();
    let mut h2 = H2Raw::connect(proxy.addr).await;
    let settings = server_settings(&mut h2).await;
    assert!(
        settings.contains(&(SETTINGS_MAX_CONCURRENT_STREAMS, 100)),
        "SETTINGS_MAX_CONCURRENT_STREAMS 100 not announced: {settings:?}"
    );
    let paths: Vec<String> = (0..101).map(|i| format!("/api/s{i}")).collect();
    let mut bytes = Vec::new();
    for (i, path) in paths.iter().enumerate() {
        let id = 1 + 2 * i as u32;
        bytes.extend(H2Raw::headers_frames(
            id,
            &h2_get(&authority, path, &auth),
            true,
        ));
    }
    h2.write(&bytes).await;
    let rst = h2
        .until("RST_STREAM", FRAME_BOUND, |f| f.ty == RST_STREAM)
        .await;
    assert_eq!(
        (rst.stream, rst.error_code()),
        (201, REFUSED_STREAM),
        "the 101st stream (id 201) must be refused with REFUSED_STREAM"
    );
    assert!(
        up.wait_hits(100, FRAME_BOUND).await,
        "only {} of 100 concurrent streams reached the upstream",
        up.hits()
    );
    up.release();
    for (i, path) in paths.iter().take(100).enumerate() {
        let id = 1 + 2 * i as u32;
        match h2.response(id, FRAME_BOUND).await {
            H2Answer::Response {
                status: Some(200),
                body,
            } => {
                let v: serde_json::Value = serde_json::from_slice(&body).expect("JSON echo");
                assert_eq!(v["target"].as_str(), Some(path.as_str()), "stream {id}");
            }
            other => panic!("stream {id}: {other:?}"),
        }
    }
    // The slots are free again: a new stream on the same connection is served.
    h2.send_headers(203, &h2_get(&authority, "/api/after", &auth), true)
        .await;
    match h2.response(203, FRAME_BOUND).await {
        H2Answer::Response {
            status: Some(200), ..
        } => {}
        other => panic!("stream 203 after the 100 finished: {other:?}"),
    }
    let targets: Vec<String> = up.seen().into_iter().map(|s| s.target).collect();
    assert_eq!(up.hits(), 101, "{targets:?}");
    assert!(
        !targets.iter().any(|t| t == "/api/s100"),
        "the refused stream reached the upstream"
    );
}

/// `limits.max_header_bytes` on both protocols: HTTP/1 heads and h2 header lists over it
/// are answered 431 and never forwarded; just under it they are served, on the same
/// proxy (and, for h2, on the same connection, before and after the refusal).
#[tokio::test]
async fn max_header_bytes_holds_on_http1_and_h2() {
    let up = Upstream::start(Behaviour::Fixed).await;
    let proxy = Proxy::start(
        &upstream_config(&up, "header_timeout: 30s, max_header_bytes: 16384"),
        &[],
    );
    let token = proxy.agent_token("bot").await;
    let host = proxy.addr.to_string();
    let under = "a".repeat(12 * 1024);
    let over = "a".repeat(20 * 1024);

    // HTTP/1.1.
    let r = raw_request(
        proxy.addr,
        &raw_get(
            "GET",
            b"/api/h1",
            &host,
            &token,
            &format!("X-Pad: {under}\r\n"),
        ),
    )
    .await;
    assert_eq!(r.status, 200, "HTTP/1 head under the limit: {}", r.text());
    assert_eq!(up.hits(), 1);
    assert_eq!(up.last().header("x-pad").map(str::len), Some(under.len()));
    let r = raw_request(
        proxy.addr,
        &raw_get(
            "GET",
            b"/api/h1-big",
            &host,
            &token,
            &format!("X-Pad: {over}\r\n"),
        ),
    )
    .await;
    assert_eq!(r.status, 431, "HTTP/1 head over the limit: {}", r.text());
    assert_eq!(up.hits(), 1, "an over-limit head was forwarded");

    // HTTP/2 (prior knowledge): the limit is announced and enforced per stream.
    let auth = format!("Bearer {token}");
    let mut h2 = H2Raw::connect(proxy.addr).await;
    let settings = server_settings(&mut h2).await;
    assert!(
        settings.contains(&(SETTINGS_MAX_HEADER_LIST_SIZE, 16384)),
        "SETTINGS_MAX_HEADER_LIST_SIZE 16384 not announced: {settings:?}"
    );
    let with_pad = |path: &'static str, pad: &'static str| {
        let mut f = h2_get(&host, path, &auth);
        f.push(("x-pad", pad));
        f
    };
    let under: &'static str = Box::leak(under.into_boxed_str());
    let over: &'static str = Box::leak(over.into_boxed_str());
    h2.send_headers(1, &with_pad("/api/h2", under), true).await;
    assert_eq!(
        h2.response(1, FRAME_BOUND).await,
        H2Answer::Response {
            status: Some(200),
            body: br#"{"ok":true}"#.to_vec()
        },
        "h2 header list under the limit"
    );
    h2.send_headers(3, &with_pad("/api/h2-big", over), true)
        .await;
    match h2.response(3, FRAME_BOUND).await {
        H2Answer::Response {
            status: Some(431), ..
        } => {}
        other => panic!("h2 header list over the limit: want 431, got {other:?}"),
    }
    h2.send_headers(5, &with_pad("/api/h2-again", under), true)
        .await;
    match h2.response(5, FRAME_BOUND).await {
        H2Answer::Response {
            status: Some(200), ..
        } => {}
        other => panic!("h2 stream after the refusal: {other:?}"),
    }
    let targets: Vec<String> = up.seen().into_iter().map(|s| s.target).collect();
    assert_eq!(targets, vec!["/api/h1", "/api/h2", "/api/h2-again"]);
}

/// Writes `bytes` one byte every `every`, until they run out or the peer closes.
async fn trickle(mut w: impl AsyncWriteExt + Unpin, bytes: Vec<u8>, every: Duration) {
    for b in bytes {
        if w.write_all(&[b]).await.is_err() {
            return;
        }
        tokio::time::sleep(every).await;
    }
}

/// `header_timeout` runs from accept to a complete head, however steadily the head
/// arrives: a client that keeps sending one header byte every 50 ms (HTTP/1 on both
/// ports; an h2 HEADERS frame) is cut at the deadline, not kept alive by
/// its progress.
#[tokio::test]
async fn heads_trickled_byte_by_byte_are_cut_at_header_timeout() {
    let header = Duration::from_secs(1);
    // Well under the 10 s default: a proxy ignoring the setting is still open by then.
    let bound = header + Duration::from_secs(4);
    let up = Upstream::start(Behaviour::Fixed).await;
    let proxy = Proxy::start(&upstream_config(&up, "header_timeout: 1s"), &[]);
    let token = proxy.agent_token("bot").await;
    let every = Duration::from_millis(50);
    let endless_h1 = |host: &str| {
        let mut v = format!("GET /api/x HTTP/1.1\r\nHost: {host}\r\nX-Slow: ").into_bytes();
        v.extend(std::iter::repeat_n(b'a', 10_000));
        v
    };
    let mut runs = Vec::new();
    for (what, addr) in [
        ("agent, HTTP/1", proxy.addr),
        ("admin, HTTP/1", proxy.admin),
    ] {
        let bytes = endless_h1(&addr.to_string());
        runs.push((
            what,
            tokio::spawn(async move {
                let started = Instant::now();
                let s = TcpStream::connect(addr).await.expect("connect");
                let (mut rd, wr) = s.into_split();
                let writer = tokio::spawn(trickle(wr, bytes, every));
                let closed = closed_within(&mut rd, started, bound).await;
                writer.abort();
                closed
            }),
        ));
    }
    // h2: preface and SETTINGS at once, then one HEADERS frame written a byte at a time
    // (one byte per CONTINUATION frame would be cut sooner, by h2's CONTINUATION-flood
    // limit; a frame that is still arriving is the slow head itself).
    {
        let addr = proxy.addr;
        runs.push((
            "agent, h2 HEADERS",
            tokio::spawn(async move {
                use crate::h2_raw::{h2_frame, hpack_block, END_HEADERS, END_STREAM, HEADERS};
                let started = Instant::now();
                let mut s = TcpStream::connect(addr).await.expect("connect");
                let block = hpack_block(&[
                    (":method", "GET"),
                    (":scheme", "http"),
                    (":path", "/api/x"),
                    ("x-slow", &"a".repeat(5_000)),
                ]);
                let mut first = H2_PREFACE.to_vec();
                first.extend(H2_SETTINGS);
                s.write_all(&first).await.unwrap();
                let (mut rd, wr) = s.into_split();
                let frame = h2_frame(HEADERS, END_HEADERS | END_STREAM, 1, &block);
                let writer = tokio::spawn(trickle(wr, frame, every));
                let closed = closed_within(&mut rd, started, bound).await;
                writer.abort();
                closed
            }),
        ));
    }
    for (what, run) in runs {
        let after = run.await.expect("task");
        let after =
            after.unwrap_or_else(|| panic!("{what}: still open {bound:?} after connecting"));
        assert!(
            after >= header - Duration::from_millis(50),
            "{what}: closed after only {after:?}, before header_timeout"
        );
    }
    // Control: an agent that sends its head at once is served.
    assert_eq!(get(proxy.addr, "/api/x", &token).await.status, 200);
    let (cut, m) = wait_sample(
        &proxy,
        "portcullis_connections_closed_total{reason=\"header_timeout\"}",
        3.0,
    )
    .await;
    assert_eq!(
        cut,
        Some(3.0),
        "trickled heads not counted as header_timeout closes:\n{m}"
    );
}

/// The TLS handshake counts against `header_timeout`: half a ClientHello and then
/// silence, or a ClientHello trickled a byte at a time, is cut at the deadline; a
/// complete handshake and request on the same listener is served.
#[tokio::test]
async fn slow_tls_handshakes_are_cut_at_header_timeout() {
    let header = Duration::from_secs(1);
    let bound = header + Duration::from_secs(4);
    let up = Upstream::start(Behaviour::Fixed).await;
    let ca = TestCa::new();
    let leaf = ca.issue();
    let cfg = config(&format!(
        "tls: {{ cert: certs/proxy.crt, key: certs/proxy.key }}\n\
         limits: {{ header_timeout: 1s }}\n\
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
    let token = proxy.agent_token("bot").await;
    // A real ClientHello, as rustls would send it.
    let mut client = rustls::ClientConnection::new(
        Arc::new(tls_client_config(&ca.pem(), &[b"h2", b"http/1.1"])),
        ServerName::try_from("localhost").unwrap().to_owned(),
    )
    .expect("client connection");
    let mut hello = Vec::new();
    while client.wants_write() {
        client.write_tls(&mut hello).expect("ClientHello");
    }
    assert!(
        hello.len() > 100 && hello[0] == 22,
        "not a handshake record"
    );
    let half = hello[..hello.len() / 2].to_vec();

    let addr = proxy.addr;
    let half_run = tokio::spawn(async move {
        let started = Instant::now();
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(&half).await.unwrap();
        closed_within(&mut s, started, bound).await
    });
    let slow = hello.clone();
    let trickle_run = tokio::spawn(async move {
        let started = Instant::now();
        let s = TcpStream::connect(addr).await.expect("connect");
        let (mut rd, wr) = s.into_split();
        // A byte every 50 ms: the whole ClientHello would take far longer than 1 s.
        let writer = tokio::spawn(trickle(wr, slow, Duration::from_millis(50)));
        let closed = closed_within(&mut rd, started, bound).await;
        writer.abort();
        closed
    });
    for (what, run) in [
        ("half a ClientHello", half_run),
        ("ClientHello trickled", trickle_run),
    ] {
        let after = run.await.expect("task");
        let after =
            after.unwrap_or_else(|| panic!("{what}: still open {bound:?} after connecting"));
        assert!(
            after >= header - Duration::from_millis(50),
            "{what}: closed after only {after:?}, before header_timeout"
        );
    }
    // Control: a whole handshake and request on the same listener.
    let req = http::Request::get("/api/x")
        .header("host", format!("localhost:{}", proxy.addr.port()))
        .header("authorization", format!("Bearer {token}"))
        .body(empty())
        .unwrap();
    let (_, r) = send_tls(proxy.addr, &ca.pem(), &[b"http/1.1"], req)
        .await
        .expect("https request");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.hits(), 1);
    let (cut, m) = wait_sample(
        &proxy,
        "portcullis_connections_closed_total{reason=\"header_timeout\"}",
        2.0,
    )
    .await;
    assert_eq!(
        cut,
        Some(2.0),
        "slow handshakes not counted as header_timeout closes:\n{m}"
    );
}
