//! DESIGN.md "Canonical request" → Forwarded: what the upstream receives is the
//! client's request re-serialised, with hop-by-hop headers, the agent's credential and
//! every header the proxy owns removed, then the proxy's own headers and the upstream
//! credential set last. The injected secret never travels back to the agent.

use crate::common::*;
use std::time::Duration;

const CANARY: &str = "canary-upstream-secret-5d1e88b0c2f94a7e";
const API_KEY: &str = "canary-api-key-0b7f3c9d2e6a41f8";

struct Fixture {
    up: Upstream,
    proxy: Proxy,
    token: String,
}

/// `/api` → upstream `api` (base `/base`, injects `Authorization`, tenant header),
/// `/strip` → upstream `other` (base `/other`, injects `X-Api-Key`, strip_prefix).
async fn setup(behaviour: Behaviour, env_extra: &[(&str, &str)]) -> Fixture {
    let up = Upstream::start(behaviour).await;
    let cfg = config(&format!(
        "upstreams:\n\
         \x20 api:\n\
         \x20   url: \"{u}/base\"\n\
         \x20   inject: {{ header: Authorization, value_env: TEST_UPSTREAM_AUTH }}\n\
         \x20   tenant_header: X-Tenant-Id\n\
         \x20 other:\n\
         \x20   url: \"{u}/other/\"\n\
         \x20   inject: {{ header: X-Api-Key, value_env: TEST_UPSTREAM_KEY }}\n\
         \x20   tenant_header: X-Tenant-Id\n\
         routes:\n\
         \x20 - {{ prefix: /api, upstream: api }}\n\
         \x20 - {{ prefix: /strip, upstream: other, strip_prefix: true }}\n",
        u = up.url()
    ));
    let auth = format!("Bearer {CANARY}");
    let mut env: Vec<(&str, &str)> = vec![
        ("TEST_UPSTREAM_AUTH", auth.as_str()),
        ("TEST_UPSTREAM_KEY", API_KEY),
    ];
    env.extend_from_slice(env_extra);
    let proxy = Proxy::start(&cfg, &env);
    let token = proxy.agent_token("bot").await;
    Fixture { up, proxy, token }
}

impl Fixture {
    /// The agent's Authorization header line.
    fn agent_auth(&self) -> String {
        assert!(self.token.starts_with("pcx_"), "{}", self.token);
        format!("Authorization: Bearer {}\r\n", self.token)
    }
}

/// Everything a client could send that must not cross the proxy as sent.
fn hostile_headers() -> String {
    [
        "Forwarded: for=6.6.6.6;proto=https;host=evil.example",
        "X-Forwarded-For: 6.6.6.6, 7.7.7.7",
        "X-Forwarded-Proto: https",
        "X-Forwarded-Host: evil.example",
        "X-Forwarded-Port: 443",
        "X-Forwarded-Prefix: /evil",
        "X-Real-IP: 6.6.6.6",
        "X-Tenant-Id: other-tenant",
        "X-Api-Key: client-supplied-key",
        "X-Request-Id: client-chosen-request-id",
        "Keep-Alive: timeout=5",
        "TE: trailers",
        "Trailer: X-Checksum",
        "Proxy-Authorization: Basic cHJveHk6cHJveHk=",
        "Proxy-Connection: keep-alive",
        "X-Hop-Custom: named-in-connection",
        "X-Also-Hop: named-in-second-connection-header",
        "Connection: close, X-Hop-Custom",
        "Connection: X-Also-Hop",
        "X-Custom: kept-end-to-end",
        "Accept: application/json",
    ]
    .iter()
    .map(|h| format!("{h}\r\n"))
    .collect()
}

fn raw(f: &Fixture, target: &str) -> Vec<u8> {
    format!(
        "GET {target} HTTP/1.1\r\nHost: {}\r\n{}{}\r\n",
        f.proxy.addr,
        f.agent_auth(),
        hostile_headers()
    )
    .into_bytes()
}

fn names(s: &Seen) -> Vec<String> {
    s.headers.iter().map(|(n, _)| n.clone()).collect()
}

/// The checks every forwarded request must pass, whichever upstream.
fn assert_common_hygiene(f: &Fixture, s: &Seen) {
    let all = names(s);
    for gone in [
        "forwarded",
        "x-real-ip",
        "keep-alive",
        "te",
        "trailer",
        "proxy-authorization",
        "proxy-connection",
        "x-hop-custom",
        "x-also-hop",
        "x-forwarded-port",
        "x-forwarded-prefix",
        "upgrade",
        "transfer-encoding",
    ] {
        assert!(!s.has(gone), "upstream received `{gone}`: {all:?}");
    }
    for v in s.header_all("connection") {
        let v = v.to_ascii_lowercase();
        assert!(
            !v.contains("x-hop-custom") && !v.contains("x-also-hop"),
            "client's Connection tokens forwarded: {v}"
        );
    }
    let up_authority = f.up.addr.to_string();
    assert_eq!(
        s.header_all("host"),
        vec![up_authority.as_str()],
        "Host must be the upstream's authority"
    );
    assert_eq!(
        s.header_all("x-forwarded-for"),
        vec!["127.0.0.1"],
        "X-Forwarded-For must be the peer only"
    );
    assert_eq!(s.header_all("x-forwarded-proto"), vec!["http"]);
    // The agent's Host is not a configured `hosts:` entry and there is no `public_host`:
    // no X-Forwarded-Host at all (issue 11, class 6; see tests/hardening.rs).
    assert!(
        s.header_all("x-forwarded-host").is_empty(),
        "an arbitrary client Host must not be sent as X-Forwarded-Host"
    );
    for (n, v) in &s.headers {
        assert!(
            !v.contains("6.6.6.6") && !v.contains("evil.example"),
            "client-forged value forwarded in `{n}: {v}`"
        );
        assert!(!v.contains(&f.token), "agent token forwarded in `{n}`");
        assert!(
            !v.contains("client-chosen-request-id"),
            "client's X-Request-Id forwarded in `{n}`"
        );
    }
    // The tenant header is the agent's tenant, set by the proxy; the client's copy is gone.
    let tenant = s.header_all("x-tenant-id");
    assert!(
        !tenant.contains(&"other-tenant"),
        "client's tenant header forwarded: {tenant:?}"
    );
    assert_eq!(
        tenant,
        vec!["acme"],
        "tenant header must be the agent's tenant, exactly once"
    );
    // End-to-end headers pass.
    assert_eq!(s.header_all("x-custom"), vec!["kept-end-to-end"]);
    assert_eq!(s.header_all("accept"), vec!["application/json"]);
}

#[tokio::test]
async fn upstream_receives_clean_headers_and_its_own_credential_once() {
    let f = setup(Behaviour::Echo, &[]).await;
    let r = raw_request(f.proxy.addr, &raw(&f, "/api/items/42?q=1")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(f.up.hits(), 1);
    let s = f.up.last();
    assert_eq!(s.method, "GET");
    assert_eq!(
        s.target, "/base/api/items/42?q=1",
        "path = upstream base path + canonical path"
    );
    assert_common_hygiene(&f, &s);
    let expected = format!("Bearer {CANARY}");
    assert_eq!(
        s.header_all("authorization"),
        vec![expected.as_str()],
        "exactly the injected credential, once"
    );

    // Response side: one id, the proxy's, and the very id the upstream was sent.
    let ids = r.header_all("x-request-id");
    assert_eq!(ids.len(), 1, "exactly one X-Request-Id: {ids:?}");
    assert!(
        !ids[0].is_empty() && ids[0] != "client-chosen-request-id",
        "X-Request-Id must be the proxy's: {ids:?}"
    );
    assert_eq!(
        s.header_all("x-request-id"),
        ids,
        "the upstream must receive exactly the id the agent was answered with"
    );
    assert_eq!(r.header("portcullis-decision"), Some("allow"));
}

#[tokio::test]
async fn strip_prefix_and_a_non_authorization_credential() {
    let f = setup(Behaviour::Echo, &[]).await;
    let r = raw_request(f.proxy.addr, &raw(&f, "/strip/items/42?q=1")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let s = f.up.last();
    assert_eq!(
        s.target, "/other/items/42?q=1",
        "base path + path minus the route prefix"
    );
    assert_common_hygiene(&f, &s);
    assert_eq!(
        s.header_all("x-api-key"),
        vec![API_KEY],
        "the injected key replaces the client's, once"
    );
    assert!(
        !s.has("authorization"),
        "the agent's Authorization must not reach an upstream: {:?}",
        s.header_all("authorization")
    );

    // The bare prefix maps to the base path.
    let r = raw_request(f.proxy.addr, &raw(&f, "/strip")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let t = f.up.last().target;
    assert!(
        t == "/other" || t == "/other/",
        "bare prefix with strip_prefix → base path, got {t}"
    );
    let r = raw_request(f.proxy.addr, &raw(&f, "/strip/")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(f.up.last().target, "/other/", "trailing slash kept");
}

#[tokio::test]
async fn duplicate_agent_credentials_are_not_forwarded() {
    // A second Authorization header is not one well-formed credential: a bare 401, and
    // nothing reaches the upstream (neither credential).
    let f = setup(Behaviour::Echo, &[]).await;
    let req = format!(
        "GET /strip/x HTTP/1.1\r\nHost: {}\r\n{}Authorization: Basic c2Vjb25kOmNyZWQ=\r\nConnection: close\r\n\r\n",
        f.proxy.addr,
        f.agent_auth()
    );
    let r = raw_request(f.proxy.addr, req.as_bytes()).await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    assert_eq!(f.up.hits(), 0, "{:#?}", f.up.seen());
    // Control: the same request with the agent's one credential is forwarded, without it.
    let req = format!(
        "GET /strip/x HTTP/1.1\r\nHost: {}\r\n{}Connection: close\r\n\r\n",
        f.proxy.addr,
        f.agent_auth()
    );
    let r = raw_request(f.proxy.addr, req.as_bytes()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(f.up.hits(), 1);
    assert!(!f.up.last().has("authorization"));
}

#[tokio::test]
async fn request_id_is_set_even_when_the_client_sends_none() {
    let f = setup(Behaviour::Echo, &[]).await;
    let r = get(f.proxy.addr, "/api/x", &f.token).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let ids = r.header_all("x-request-id");
    assert_eq!(ids.len(), 1, "{ids:?}");
    // The upstream got exactly this id (one header, same value).
    assert_eq!(f.up.hits(), 1);
    assert_eq!(
        f.up.last().header_all("x-request-id"),
        ids,
        "the upstream must see the id the response carries"
    );
    let r2 = get(f.proxy.addr, "/api/x", &f.token).await;
    assert_ne!(
        r.header("x-request-id"),
        r2.header("x-request-id"),
        "request ids must differ per request"
    );
    assert_eq!(
        f.up.last().header_all("x-request-id"),
        r2.header_all("x-request-id")
    );
    // Proxy-generated answers carry one too, and it names their audit record.
    let r3 = get(f.proxy.addr, "/nowhere", &f.token).await;
    assert_eq!(r3.status, 403, "{}", r3.text());
    let id3 = r3.header_all("x-request-id");
    assert_eq!(id3.len(), 1);
    assert_eq!(r3.json()["request_id"].as_str(), Some(id3[0]));
    let rec =
        crate::support::audit::wait_request_record(&f.proxy.path("data/audit.jsonl"), id3[0]).await;
    assert_eq!(rec["reason"], "no_route", "{rec}");
}

#[tokio::test]
async fn injected_secret_never_reaches_the_agent_or_the_logs() {
    // The upstream reflects nothing of the request, so any canary in a response came from the proxy.
    let f = setup(Behaviour::Fixed, &[("RUST_LOG", "portcullis=trace,info")]).await;
    let mut responses = Vec::new();
    responses.push(raw_request(f.proxy.addr, &raw(&f, "/api/items/1")).await);
    responses.push(raw_request(f.proxy.addr, &raw(&f, "/strip/items/1")).await);
    responses.push(get(f.proxy.addr, "/api/items/2", &f.token).await);
    responses.push(get(f.proxy.addr, "/nowhere", &f.token).await);
    responses.push(
        raw_request(
            f.proxy.addr,
            &raw_get(
                "GET",
                b"/api/%2e%2e/x",
                &f.proxy.addr.to_string(),
                &f.token,
                "",
            ),
        )
        .await,
    );
    assert_eq!(responses[0].status, 200, "{}", responses[0].text());
    assert_eq!(responses[1].status, 200, "{}", responses[1].text());
    // The secret did go upstream (so its absence below means something).
    let seen = f.up.seen();
    assert!(seen.iter().any(|s| s
        .header_all("authorization")
        .iter()
        .any(|v| v.contains(CANARY))));
    assert!(seen
        .iter()
        .any(|s| s.header_all("x-api-key").contains(&API_KEY)));

    for r in &responses {
        let t = r.all_text();
        assert!(
            !t.contains(CANARY) && !t.contains(API_KEY),
            "secret in a response to the agent: {t}"
        );
    }
    // Give the proxy a moment's worth of log lines to flush: wait until it logged something
    // about the last request (bounded), then check everything it wrote.
    let last_id = responses
        .last()
        .unwrap()
        .header("x-request-id")
        .expect("X-Request-Id")
        .to_string();
    assert!(
        f.proxy
            .wait_for_log(&last_id, Duration::from_secs(10))
            .await,
        "the last request was never logged"
    );
    let logs = f.proxy.logs_synced().await;
    assert!(!logs.is_empty());
    assert!(
        !logs.contains(CANARY) && !logs.contains(API_KEY),
        "secret in the proxy's log:\n{logs}"
    );
    let audit = f.proxy.audit_text();
    assert!(
        !audit.contains(CANARY) && !audit.contains(API_KEY),
        "secret in the audit file:\n{audit}"
    );
    let secret_part = f.token.rsplit('_').next().unwrap();
    assert!(
        !logs.contains(secret_part),
        "agent token secret in the proxy's log"
    );
    assert!(
        !audit.contains(secret_part),
        "agent token secret in the audit file"
    );
}

#[tokio::test]
async fn upstream_failure_does_not_leak_the_secret() {
    // Upstream down: the 502 must not quote the request it tried to send.
    let dead = crate::common::DeadPort::new();
    let cfg = config(&format!(
        "upstreams:\n  api:\n    url: \"http://{}/base\"\n    inject: {{ header: Authorization, value_env: TEST_UPSTREAM_AUTH }}\n\
         routes:\n  - {{ prefix: /api, upstream: api }}\n",
        dead.addr
    ));
    let auth = format!("Bearer {CANARY}");
    let proxy = Proxy::start(
        &cfg,
        &[
            ("TEST_UPSTREAM_AUTH", &auth),
            ("RUST_LOG", "portcullis=trace,info"),
        ],
    );
    let token = proxy.agent_token("bot").await;
    let r = get(proxy.addr, "/api/x", &token).await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.reason().as_deref(), Some("upstream_unreachable"));
    assert!(!r.all_text().contains(CANARY));
    let id = r.header("x-request-id").expect("X-Request-Id").to_string();
    assert!(
        proxy.wait_for_log(&id, Duration::from_secs(10)).await,
        "the failed request was never logged"
    );
    assert!(
        !proxy.logs_synced().await.contains(CANARY),
        "secret in the proxy's log:\n{}",
        proxy.logs()
    );
}

#[tokio::test]
async fn trailers_are_never_merged_into_headers() {
    // A chunked body whose trailer section tries to set headers the proxy owns.
    let f = setup(Behaviour::Echo, &[]).await;
    let req = format!(
        "POST /api/items HTTP/1.1\r\nHost: {}\r\n{}Transfer-Encoding: chunked\r\n\
         Trailer: X-Tenant-Id, Authorization, X-Forwarded-For\r\nConnection: close\r\n\r\n\
         5\r\nhello\r\n0\r\nX-Tenant-Id: evil-tenant\r\nAuthorization: Bearer trailer-cred\r\n\
         X-Forwarded-For: 6.6.6.6\r\n\r\n",
        f.proxy.addr,
        f.agent_auth()
    );
    let r = raw_request(f.proxy.addr, req.as_bytes()).await;
    // README "Canonical requests": request trailers are dropped, never merged.
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(f.up.hits(), 1);
    let s = f.up.last();
    assert_eq!(s.body_bytes, 5, "the body itself is forwarded");
    assert_eq!(s.body_state, BodyState::Complete);
    for (n, v) in s.headers.iter().chain(s.trailers.iter()) {
        assert!(
            !v.contains("evil-tenant") && !v.contains("trailer-cred") && !v.contains("6.6.6.6"),
            "a trailer field reached the upstream as `{n}: {v}`"
        );
    }
    assert!(
        s.trailers.is_empty(),
        "trailers forwarded: {:?}",
        s.trailers
    );
    assert_eq!(s.header_all("x-tenant-id"), vec!["acme"]);
}

/// Sends `bytes` from a client socket bound to `from` (any 127.0.0.0/8 address is local)
/// and reads one response.
async fn raw_request_from(from: &str, to: std::net::SocketAddr, bytes: &[u8]) -> Resp {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(format!("{from}:0").parse().unwrap())
        .expect("bind the client address");
    let mut s = tokio::time::timeout(REQUEST_BOUND, socket.connect(to))
        .await
        .expect("connect in time")
        .expect("connect");
    tokio::io::AsyncWriteExt::write_all(&mut s, bytes)
        .await
        .unwrap();
    tokio::time::timeout(REQUEST_BOUND, read_response(&mut s))
        .await
        .expect("response in time")
        .expect("response")
}

/// README "Forwarding" and `trusted_proxies`: a client's X-Forwarded-For is believed only
/// from a trusted peer; then the client is the right-most untrusted address of the chain,
/// and the chain goes upstream with the peer appended. From any other peer the chain is
/// dropped and the client is the socket address. The audit record's `remote_addr` is
/// that client.
#[tokio::test]
async fn x_forwarded_for_is_believed_only_from_trusted_proxies() {
    let up = Upstream::start(Behaviour::Echo).await;
    let cfg = config(&format!(
        "trusted_proxies: [127.0.0.1/32, 10.0.0.0/8]\n\
         upstreams:\n  api: {{ url: \"{}\" }}\n\
         routes:\n  - {{ prefix: /api, upstream: api }}\n",
        up.url()
    ));
    let proxy = Proxy::start(&cfg, &[]);
    let token = proxy.agent_token("bot").await;
    let audit = proxy.path("data/audit.jsonl");
    // (peer, X-Forwarded-For lines sent, X-Forwarded-For the upstream must get, remote_addr)
    let cases: &[(&str, &[&str], &str, &str)] = &[
        (
            "127.0.0.1",
            &["203.0.113.7, 10.1.2.3"],
            "203.0.113.7, 10.1.2.3, 127.0.0.1",
            "203.0.113.7",
        ),
        // The right-most untrusted hop, not whatever the client claimed left of it.
        (
            "127.0.0.1",
            &["198.51.100.1, 203.0.113.7, 10.1.2.3"],
            "198.51.100.1, 203.0.113.7, 10.1.2.3, 127.0.0.1",
            "203.0.113.7",
        ),
        // Two header lines are one chain.
        (
            "127.0.0.1",
            &["203.0.113.9", "10.4.4.4"],
            "203.0.113.9, 10.4.4.4, 127.0.0.1",
            "203.0.113.9",
        ),
        // Every hop trusted: the left-most one is the client.
        (
            "127.0.0.1",
            &["10.9.9.9"],
            "10.9.9.9, 127.0.0.1",
            "10.9.9.9",
        ),
        // A trusted peer that sends no chain is the client itself.
        ("127.0.0.1", &[], "127.0.0.1", "127.0.0.1"),
        // An untrusted peer: its chain is not believed and not forwarded.
        (
            "127.0.0.2",
            &["203.0.113.7, 10.1.2.3"],
            "127.0.0.2",
            "127.0.0.2",
        ),
        ("127.0.0.2", &[], "127.0.0.2", "127.0.0.2"),
    ];
    for (i, (peer, sent, want_xff, want_addr)) in cases.iter().enumerate() {
        let what = format!("case {i}: from {peer} with X-Forwarded-For {sent:?}");
        let extra: String = sent
            .iter()
            .map(|v| format!("X-Forwarded-For: {v}\r\n"))
            .collect();
        let req = raw_get(
            "GET",
            b"/api/whoami",
            &proxy.addr.to_string(),
            &token,
            &extra,
        );
        let r = raw_request_from(peer, proxy.addr, &req).await;
        assert_eq!(r.status, 200, "{what}: {}", r.text());
        assert_eq!(up.hits(), i + 1, "{what}");
        let seen = up.last();
        assert_eq!(
            seen.header_all("x-forwarded-for"),
            vec![*want_xff],
            "{what}: X-Forwarded-For upstream"
        );
        let id = r.header("x-request-id").expect("X-Request-Id");
        let rec = crate::support::audit::wait_request_record(&audit, id).await;
        assert_eq!(
            rec["remote_addr"].as_str(),
            Some(*want_addr),
            "{what}: audit remote_addr in {rec}"
        );
    }
}
