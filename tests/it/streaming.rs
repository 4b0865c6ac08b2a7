//! Bodies are streamed, not buffered: 50 MiB each way passes byte-exact while the proxy's
//! resident memory stays small; `limits.max_body_bytes` is enforced before (Content-Length)
//! or while (chunked) forwarding, and an over-limit body never arrives whole upstream.

use crate::common::*;
use hyper_util::rt::TokioIo;
use std::time::Duration;

const MIB: u64 = 1024 * 1024;
const BIG: u64 = 50 * MIB;
/// The most the proxy's resident memory may grow, over its warmed-up baseline, while
/// 50 MiB pass each way: a proxy that buffered a body would need at least 50 MiB more.
const RSS_GROWTH_CEILING_KIB: u64 = 16 * 1024;

async fn start(limit: u64, sink: &Upstream, source: &Upstream) -> (Proxy, String) {
    start_with(limit, sink, source, None).await
}

/// `/up` → sink, `/down` → source, and (when given) `/small` → a small source.
async fn start_with(
    limit: u64,
    sink: &Upstream,
    source: &Upstream,
    small: Option<&Upstream>,
) -> (Proxy, String) {
    let (small_up, small_route) = match small {
        Some(u) => (
            format!("  small: {{ url: \"{}\" }}\n", u.url()),
            "  - { prefix: /small, upstream: small }\n".to_string(),
        ),
        None => (String::new(), String::new()),
    };
    let cfg = config(&format!(
        "limits: {{ max_body_bytes: {limit} }}\n\
         upstreams:\n  sink: {{ url: \"{}\" }}\n  source: {{ url: \"{}\" }}\n{small_up}\
         routes:\n  - {{ prefix: /up, upstream: sink }}\n  - {{ prefix: /down, upstream: source }}\n{small_route}",
        sink.url(),
        source.url()
    ));
    let proxy = Proxy::start(&cfg, &[]);
    let token = proxy.agent_token("bot").await;
    (proxy, token)
}

fn upload(
    proxy: &Proxy,
    token: &str,
    path: &str,
    len: u64,
    with_length: bool,
) -> http::Request<Body> {
    let mut b =
        request("POST", proxy.addr, path, token).header("content-type", "application/octet-stream");
    if with_length {
        b = b.header("content-length", len);
    }
    b.body(pattern_body(len, with_length)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_mib_each_way_streams_in_bounded_memory() {
    let sink = Upstream::start(Behaviour::Consume).await;
    let source = Upstream::start(Behaviour::Stream(BIG)).await;
    let small = Upstream::start(Behaviour::Stream(MIB)).await;
    let (proxy, token) = start_with(64 * MIB, &sink, &source, Some(&small)).await;
    // Warm up every path the transfers take (upload with and without Content-Length,
    // a streamed download, the upstream pools, the audit writer), then take the baseline.
    for with_length in [true, false] {
        let r = send(
            proxy.addr,
            upload(&proxy, &token, "/up/warm", MIB, with_length),
        )
        .await
        .expect("warm-up upload");
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let r = get(proxy.addr, "/small/warm", &token).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len() as u64, MIB);
    let baseline = proxy.vm_rss_kib().expect("VmRSS");
    let sampler = RssSampler::start(proxy.pid());

    // Upload: Content-Length, 50 MiB.
    let r = send(proxy.addr, upload(&proxy, &token, "/up/blob", BIG, true))
        .await
        .expect("upload");
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["received"].as_u64(), Some(BIG), "{v}");
    assert_eq!(
        v["pattern_ok"].as_bool(),
        Some(true),
        "upload bytes altered: {v}"
    );
    assert_eq!(sink.last().body_bytes, BIG);

    // Upload: chunked, 50 MiB.
    let r = send(proxy.addr, upload(&proxy, &token, "/up/blob", BIG, false))
        .await
        .expect("chunked upload");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["received"].as_u64(), Some(BIG));

    // Download: read the body as it arrives, never holding it.
    let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = request("GET", proxy.addr, "/down/blob", &token)
        .body(empty())
        .unwrap();
    let resp = tokio::time::timeout(REQUEST_BOUND, tx.send_request(req))
        .await
        .expect("download head in time")
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok()),
        Some(BIG.to_string().as_str())
    );
    let (n, ok, _) =
        tokio::time::timeout(Duration::from_secs(120), drain_body(resp.into_body(), 0))
            .await
            .expect("download finished in time")
            .expect("download body");
    assert_eq!(n, BIG, "download byte count");
    assert!(ok, "download bytes altered");

    let after = proxy.vm_rss_kib().expect("VmRSS after");
    let (peak, samples) = sampler.finish();
    assert!(samples > 0);
    eprintln!("VmRSS KiB: baseline {baseline}, peak {peak} over {samples} samples, after {after}");
    let growth = peak.saturating_sub(baseline);
    assert!(
        growth < RSS_GROWTH_CEILING_KIB,
        "proxy VmRSS grew by {growth} KiB over its warmed-up baseline of {baseline} KiB \
         while streaming 50 MiB each way (ceiling {RSS_GROWTH_CEILING_KIB} KiB)"
    );
}

#[tokio::test]
async fn content_length_over_the_limit_is_413_and_not_forwarded() {
    let sink = Upstream::start(Behaviour::Consume).await;
    let source = Upstream::start(Behaviour::Stream(1)).await;
    let (proxy, token) = start(MIB, &sink, &source).await;

    // Only the head and a little of the body are sent: the answer must not wait for the rest.
    let mut req = format!(
        "POST /up/blob HTTP/1.1\r\nHost: {}\r\n{}Content-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        proxy.addr,
        Proxy::auth_line(&token),
        2 * MIB
    )
    .into_bytes();
    req.extend(std::iter::repeat_n(b'x', 64 * 1024));
    let r = raw_request(proxy.addr, &req).await;
    let reason = assert_refusal("Content-Length over the limit", &r, 413);
    assert_eq!(reason, "body_too_large");
    assert_eq!(
        sink.hits(),
        0,
        "an over-limit body was forwarded: {:#?}",
        sink.seen()
    );

    // Exactly the limit is fine.
    let r = send(proxy.addr, upload(&proxy, &token, "/up/blob", MIB, true))
        .await
        .expect("upload at the limit");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["received"].as_u64(), Some(MIB));
}

#[tokio::test]
async fn chunked_body_over_the_limit_never_arrives_whole() {
    let sink = Upstream::start(Behaviour::Consume).await;
    let source = Upstream::start(Behaviour::Stream(1)).await;
    let (proxy, token) = start(MIB, &sink, &source).await;

    // Control: a chunked body under the limit passes whole.
    let r = send(
        proxy.addr,
        upload(&proxy, &token, "/up/small", MIB / 2, false),
    )
    .await
    .expect("small chunked upload");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["received"].as_u64(), Some(MIB / 2));
    let before = sink.hits();

    // A raw client writes a 4 MiB chunked body on one task and reads the answer on
    // another, so the answer is seen whether or not the proxy reads the rest.
    let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let head = format!(
        "POST /up/big HTTP/1.1\r\nHost: {}\r\n{}Content-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n",
        proxy.addr,
        Proxy::auth_line(&token)
    );
    tokio::io::AsyncWriteExt::write_all(&mut s, head.as_bytes())
        .await
        .unwrap();
    let (mut rd, mut wr) = s.into_split();
    let writer = tokio::spawn(async move {
        let chunk = vec![b'x'; 64 * 1024];
        let framed = [
            format!("{:x}\r\n", chunk.len()).into_bytes(),
            chunk,
            b"\r\n".to_vec(),
        ]
        .concat();
        for _ in 0..64 {
            if tokio::io::AsyncWriteExt::write_all(&mut wr, &framed)
                .await
                .is_err()
            {
                return;
            }
        }
        let _ = tokio::io::AsyncWriteExt::write_all(&mut wr, b"0\r\n\r\n").await;
    });
    let r = tokio::time::timeout(REQUEST_BOUND, read_response(&mut rd))
        .await
        .expect("an answer in time")
        .expect("an answer to the over-limit upload");
    assert_eq!(
        assert_refusal("chunked body over the limit", &r, 413),
        "body_too_large"
    );
    writer.abort();
    // The upstream's read of the cut body ends (failed), it does not hang.
    assert!(
        sink.wait_bodies_settled(Duration::from_secs(20)).await,
        "the upstream is still reading the cut body: {:#?}",
        sink.seen()
    );
    let seen = sink.seen();
    for s in &seen[before..] {
        assert_ne!(
            s.body_state,
            BodyState::Complete,
            "the upstream received a complete over-limit body: {s:?}"
        );
        assert!(
            s.body_bytes <= MIB,
            "the upstream received {} bytes, over the {MIB}-byte limit",
            s.body_bytes
        );
    }
}
