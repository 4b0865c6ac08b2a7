//! TLS both ways: an https upstream signed by a private CA is trusted only through
//! `ca_file`; inbound `tls: {cert, key}` serves HTTPS over HTTP/1.1 and HTTP/2 (ALPN) and
//! tells the upstream `X-Forwarded-Proto: https`.

use crate::common::*;
use http::Version;

fn https_upstream_config(up: &Upstream, ca_line: &str) -> String {
    config(&format!(
        "upstreams:\n  api:\n    url: \"{}/base\"\n{ca_line}\
         routes:\n  - {{ prefix: /api, upstream: api }}\n",
        up.url()
    ))
}

#[tokio::test]
async fn https_upstream_with_a_private_ca_via_ca_file() {
    let up = Upstream::start_tls(Behaviour::Echo).await;
    let ca = up.ca_pem.clone().unwrap();
    let cfg = https_upstream_config(&up, "    ca_file: certs/upstream-ca.pem\n");
    let proxy = Proxy::start_with_files(&cfg, &[], &[("certs/upstream-ca.pem", ca.as_bytes())]);
    let token = proxy.agent_token("bot").await;
    let r = get(proxy.addr, "/api/items/1?x=y", &token).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.hits(), 1);
    let s = up.last();
    assert_eq!(s.target, "/base/api/items/1?x=y");
    let authority = up.addr.to_string();
    assert_eq!(s.header_all("host"), vec![authority.as_str()]);
}

#[tokio::test]
async fn https_upstream_without_its_ca_is_502() {
    let up = Upstream::start_tls(Behaviour::Echo).await;
    let proxy = Proxy::start(&https_upstream_config(&up, ""), &[]);
    let token = proxy.agent_token("bot").await;
    let r = get(proxy.addr, "/api/x", &token).await;
    assert_eq!(assert_error(&r, 502), "upstream_unreachable");
    assert_eq!(
        up.hits(),
        0,
        "no request may be sent over an unverified connection"
    );
}

#[tokio::test]
async fn https_upstream_with_the_wrong_ca_is_502() {
    let up = Upstream::start_tls(Behaviour::Echo).await;
    let other_ca = TestCa::new().pem();
    let cfg = https_upstream_config(&up, "    ca_file: certs/other-ca.pem\n");
    let proxy = Proxy::start_with_files(&cfg, &[], &[("certs/other-ca.pem", other_ca.as_bytes())]);
    let token = proxy.agent_token("bot").await;
    let r = get(proxy.addr, "/api/x", &token).await;
    assert_eq!(assert_error(&r, 502), "upstream_unreachable");
    assert_eq!(up.hits(), 0);
}

/// A proxy-generated failure: status, JSON `reason`, `Portcullis-Decision: error`.
fn assert_error(r: &Resp, status: u16) -> String {
    assert_eq!(r.status, status, "{}", r.text());
    let v = r.json();
    let reason = v["reason"]
        .as_str()
        .unwrap_or_else(|| panic!("no reason in {v}"))
        .to_string();
    assert_eq!(
        r.header("portcullis-decision"),
        Some("error"),
        "{:?}",
        r.headers
    );
    reason
}

struct TlsProxy {
    up: Upstream,
    proxy: Proxy,
    token: String,
    ca_pem: String,
}

async fn tls_proxy() -> TlsProxy {
    let up = Upstream::start(Behaviour::Echo).await;
    let ca = TestCa::new();
    let leaf = ca.issue();
    let cfg = config(&format!(
        "tls: {{ cert: certs/proxy.crt, key: certs/proxy.key }}\n\
         hosts: [localhost]\n\
         upstreams:\n  api: {{ url: \"{}/base\" }}\n\
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
    TlsProxy {
        up,
        proxy,
        token,
        ca_pem: ca.pem(),
    }
}

#[tokio::test]
async fn inbound_tls_http1() {
    let t = tls_proxy().await;
    let host = format!("localhost:{}", t.proxy.addr.port());
    let mut b = http::Request::get("/api/items/1").header("host", &host);
    b = b.header("authorization", format!("Bearer {}", t.token));
    let (alpn, r) = send_tls(
        t.proxy.addr,
        &t.ca_pem,
        &[b"http/1.1"],
        b.body(empty()).unwrap(),
    )
    .await
    .expect("https request");
    assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(r.version, Version::HTTP_11);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("portcullis-decision"), Some("allow"));
    let s = t.up.last();
    assert_eq!(s.target, "/base/api/items/1");
    assert_eq!(s.header_all("x-forwarded-proto"), vec!["https"]);
    assert_eq!(s.header_all("x-forwarded-host"), vec![host.as_str()]);
}

#[tokio::test]
async fn inbound_tls_h2_via_alpn() {
    let t = tls_proxy().await;
    let authority = format!("localhost:{}", t.proxy.addr.port());
    let mut b =
        http::Request::get(format!("https://{authority}/api/items/2?q=1")).version(Version::HTTP_2);
    b = b.header("authorization", format!("Bearer {}", t.token));
    let (alpn, r) = send_tls(
        t.proxy.addr,
        &t.ca_pem,
        &[b"h2", b"http/1.1"],
        b.body(empty()).unwrap(),
    )
    .await
    .expect("h2 request");
    assert_eq!(
        alpn.as_deref(),
        Some(&b"h2"[..]),
        "the proxy must offer h2 via ALPN"
    );
    assert_eq!(r.version, Version::HTTP_2);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("portcullis-decision"), Some("allow"));
    assert!(r.header("x-request-id").is_some());
    let s = t.up.last();
    assert_eq!(s.target, "/base/api/items/2?q=1");
    let up_authority = t.up.addr.to_string();
    assert_eq!(s.header_all("host"), vec![up_authority.as_str()]);
    assert_eq!(s.header_all("x-forwarded-proto"), vec!["https"]);
}

#[tokio::test]
async fn inbound_h2_sets_x_forwarded_host_from_authority() {
    // HTTP/2 clients send `:authority` and usually no Host; the upstream must still learn
    // the host the agent addressed, as it does on HTTP/1.1.
    let t = tls_proxy().await;
    let authority = format!("localhost:{}", t.proxy.addr.port());
    let mut b =
        http::Request::get(format!("https://{authority}/api/items/3")).version(Version::HTTP_2);
    b = b.header("authorization", format!("Bearer {}", t.token));
    let (_, r) = send_tls(t.proxy.addr, &t.ca_pem, &[b"h2"], b.body(empty()).unwrap())
        .await
        .expect("h2 request");
    assert_eq!(r.status, 200, "{}", r.text());
    let s = t.up.last();
    assert_eq!(
        s.header_all("x-forwarded-host"),
        vec![authority.as_str()],
        "X-Forwarded-Host from :authority on HTTP/2"
    );
}

/// One h2 request over TLS with `:authority` = `localhost:PORT` and, optionally, a Host.
async fn h2_with_host(t: &TlsProxy, path: &str, host: Option<&str>) -> Resp {
    let authority = format!("localhost:{}", t.proxy.addr.port());
    let mut b = http::Request::get(format!("https://{authority}{path}")).version(Version::HTTP_2);
    if let Some(h) = host {
        b = b.header("host", h);
    }
    b = b.header("authorization", format!("Bearer {}", t.token));
    let (alpn, r) = send_tls(t.proxy.addr, &t.ca_pem, &[b"h2"], b.body(empty()).unwrap())
        .await
        .expect("an HTTP/2 answer (not a reset or a closed connection)");
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(r.version, Version::HTTP_2);
    r
}

#[tokio::test]
async fn inbound_h2_authority_differing_from_host_is_refused() {
    let t = tls_proxy().await;
    let r = h2_with_host(&t, "/api/x", Some("evil.example")).await;
    assert_eq!(
        assert_refusal(":authority vs Host", &r, 400),
        "host_mismatch"
    );
    assert_eq!(t.up.hits(), 0);
    // Controls on the same listener: a Host equal to `:authority`, and none at all.
    let authority = format!("localhost:{}", t.proxy.addr.port());
    let r = h2_with_host(&t, "/api/x", Some(&authority)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = h2_with_host(&t, "/api/y", None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(t.up.hits(), 2);
    assert_eq!(t.up.last().target, "/base/api/y");
}

#[tokio::test]
async fn inbound_tls_listener_does_not_serve_cleartext() {
    let t = tls_proxy().await;
    let mut s = tokio::net::TcpStream::connect(t.proxy.addr).await.unwrap();
    let req = raw_get("GET", b"/api/x", &t.proxy.addr.to_string(), &t.token, "");
    tokio::io::AsyncWriteExt::write_all(&mut s, &req)
        .await
        .unwrap();
    let got = read_to_eof(&mut s).await;
    // The answer is one fatal TLS alert record (type 21, level 2), then the close.
    assert!(
        got.len() == 7 && got[0] == 21 && got[3..5] == [0, 2] && got[5] == 2,
        "want one fatal TLS alert and EOF, got {got:?} ({:?})",
        String::from_utf8_lossy(&got)
    );
    assert_eq!(t.up.hits(), 0);
    // Control: the same request over TLS on the same listener is served.
    let b = http::Request::get("/api/x")
        .header("host", format!("localhost:{}", t.proxy.addr.port()))
        .header("authorization", format!("Bearer {}", t.token));
    let (_, r) = send_tls(
        t.proxy.addr,
        &t.ca_pem,
        &[b"http/1.1"],
        b.body(empty()).unwrap(),
    )
    .await
    .expect("https request");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(t.up.hits(), 1);
}
