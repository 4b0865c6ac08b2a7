//! Bodies are streamed, not buffered: 50 MiB each way passes byte-exact while the proxy's
//! resident memory stays small; `limits.max_body_bytes` is enforced before (Content-Length)
//! or while (chunked) forwarding, and an over-limit body never arrives whole upstream.

use crate::common::*;
use hyper_util::rt::TokioIo;
use std::time::Duration;

const MIB: u64 = 1024 * 1024;
const BIG: u64 = 50 * MIB;
const RSS_CEILING_KIB: u64 = 64 * 1024;

async fn start(limit: u64, sink: &Upstream, source: &Upstream) -> (Proxy, String) {
    let cfg = config(&format!(
        "limits: {{ max_body_bytes: {limit} }}\n\
         upstreams:\n  sink: {{ url: \"{}\" }}\n  source: {{ url: \"{}\" }}\n\
         routes:\n  - {{ prefix: /up, upstream: sink }}\n  - {{ prefix: /down, upstream: source }}\n",
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
    let (proxy, token) = start(64 * MIB, &sink, &source).await;
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
    assert!(
        peak < RSS_CEILING_KIB,
        "proxy VmRSS peaked at {peak} KiB (ceiling {RSS_CEILING_KIB} KiB)"
    );
    assert!(
        after < RSS_CEILING_KIB,
        "proxy VmRSS after the transfers: {after} KiB"
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

    match send(
        proxy.addr,
        upload(&proxy, &token, "/up/big", 4 * MIB, false),
    )
    .await
    {
        Ok(r) => assert_eq!(r.status, 413, "chunked body over the limit: {}", r.text()),
        Err(e) => eprintln!("the over-limit upload failed on the client side: {e}"),
    }
    // Let the upstream finish reading whatever arrived; one still reading after the bound
    // has not received a complete body either.
    let _settled = sink.wait_bodies_settled(Duration::from_secs(10)).await;
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
