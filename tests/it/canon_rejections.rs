//! DESIGN.md "Canonical request": what cannot be put into one unambiguous form is
//! refused (400, or 405 for methods) with a JSON reason and never reaches a backend;
//! what can is forwarded in exactly that form.
//!
//! Hostile targets go over a raw socket, since hyper/curl-style clients would normalise
//! them before they left the test.

use crate::common::*;
use std::time::Duration;

struct Fixture {
    up: Upstream,
    proxy: Proxy,
    token: String,
    host: String,
}

async fn setup() -> Fixture {
    let up = Upstream::start(Behaviour::Echo).await;
    let cfg = config(&format!(
        "upstreams:\n  api: {{ url: \"{}/base\" }}\n\
         routes:\n  - {{ prefix: /api, upstream: api }}\n  - {{ prefix: /enc, upstream: api, allow_encoded_slash: true }}\n",
        up.url()
    ));
    let proxy = Proxy::start(&cfg, &[]);
    let token = proxy.agent_token("bot").await;
    let host = proxy.addr.to_string();
    Fixture {
        up,
        proxy,
        token,
        host,
    }
}

impl Fixture {
    /// `GET target` with Host and the agent token, plus `extra` header lines.
    fn req(&self, method: &str, target: &[u8], extra: &str) -> Vec<u8> {
        raw_get(method, target, &self.host, &self.token, extra)
    }

    /// Sends every request, checks each is refused with `status` and its expected
    /// `reason`, and reports all mismatches together; then checks the upstream saw nothing.
    async fn expect_refused(&self, status: u16, cases: &[(&str, Vec<u8>, &str)]) {
        let mut failures = Vec::new();
        for (what, bytes, want) in cases {
            let r = raw_request(self.proxy.addr, bytes).await;
            match check_refusal(&r, status) {
                Ok(reason) if reason == *want => {}
                Ok(reason) => failures.push(format!("{what}: reason `{reason}`, want `{want}`")),
                Err(e) => failures.push(format!("{what}: {e}")),
            }
        }
        assert!(
            failures.is_empty(),
            "requests not refused as expected:\n{}",
            failures.join("\n")
        );
        assert_eq!(
            self.up.hits(),
            0,
            "the upstream received refused requests: {:#?}",
            self.up.seen()
        );
    }

    /// Sends one request that must be forwarded; returns the target the upstream saw.
    async fn expect_forwarded(&self, target: &[u8]) -> String {
        let before = self.up.hits();
        let r = raw_request(self.proxy.addr, &self.req("GET", target, "")).await;
        assert_eq!(
            r.status,
            200,
            "{:?} should be forwarded; got {}",
            String::from_utf8_lossy(target),
            r.text()
        );
        assert_eq!(r.header("portcullis-decision"), Some("allow"));
        assert_eq!(
            self.up.hits(),
            before + 1,
            "{:?} did not reach the upstream once",
            String::from_utf8_lossy(target)
        );
        self.up.last().target
    }
}

fn case<'a>(what: &'a str, bytes: Vec<u8>, reason: &'a str) -> (&'a str, Vec<u8>, &'a str) {
    (what, bytes, reason)
}

#[tokio::test]
async fn encoded_slash_refused_unless_the_route_allows_it() {
    let f = setup().await;
    f.expect_refused(
        400,
        &[
            case("%2F", f.req("GET", b"/api/a%2Fb", ""), "encoded_slash"),
            case("%2f", f.req("GET", b"/api/a%2fb", ""), "encoded_slash"),
            case(
                "%2F at the end",
                f.req("GET", b"/api/a%2F", ""),
                "encoded_slash",
            ),
        ],
    )
    .await;
    // Control: the same shape on a route with allow_encoded_slash is forwarded, still encoded.
    assert_eq!(f.expect_forwarded(b"/enc/a%2Fb").await, "/base/enc/a%2Fb");
    assert_eq!(f.expect_forwarded(b"/enc/a%2fb").await, "/base/enc/a%2fb");
}

#[tokio::test]
async fn encoded_backslash_percent_semicolon_hash_dot_nul_and_controls_refused() {
    let f = setup().await;
    let targets: &[(&[u8], &str)] = &[
        (b"/api/a%5Cb", "encoded_backslash"),
        (b"/api/a%5cb", "encoded_backslash"),
        (b"/api/%5C..%5Cadmin", "encoded_backslash"),
        (b"/api/a%25b", "encoded_percent"),
        (b"/api/%252e%252e/admin", "encoded_percent"),
        (b"/api/a%3Bb", "encoded_semicolon"),
        (b"/api/a%3bjsessionid=1", "encoded_semicolon"),
        (b"/api/a%23frag", "encoded_hash"),
        (b"/api/%2e%2e/admin", "encoded_dot"),
        (b"/api/%2E%2E/admin", "encoded_dot"),
        (b"/api/%2e/x", "encoded_dot"),
        (b"/api/a%2eb", "encoded_dot"),
        (b"/api/a%00b", "encoded_control"),
        (b"/api/a%00", "encoded_control"),
        (b"/api/a%0Ab", "encoded_control"),
        (b"/api/a%0d%0aX-Injected:%201", "encoded_control"),
        (b"/api/a%09b", "encoded_control"),
        (b"/api/a%1fb", "encoded_control"),
        (b"/api/a%7Fb", "encoded_control"),
    ];
    let cases: Vec<_> = targets
        .iter()
        .map(|(t, r)| (std::str::from_utf8(t).unwrap(), f.req("GET", t, ""), *r))
        .collect();
    f.expect_refused(400, &cases).await;
}

#[tokio::test]
async fn raw_backslash_semicolon_and_non_ascii_refused() {
    let f = setup().await;
    f.expect_refused(
        400,
        &[
            case("raw \\", f.req("GET", b"/api/a\\b", ""), "backslash"),
            case(
                "raw \\..\\",
                f.req("GET", b"/api\\..\\admin", ""),
                "backslash",
            ),
            case("raw ;", f.req("GET", b"/api/a;b=1", ""), "semicolon"),
            case(
                "raw ; in query",
                f.req("GET", b"/api/a?x=1;y=2", ""),
                "semicolon",
            ),
            case(
                "raw UTF-8",
                f.req("GET", b"/api/caf\xc3\xa9", ""),
                "non_ascii",
            ),
        ],
    )
    .await;
}

/// Raw control bytes and raw bytes that are not UTF-8 in the request line are refused by
/// the HTTP/1 parser before the proxy sees a request: a bare 400 (no proxy decision).
/// Raw non-ASCII that is valid UTF-8 reaches canonicalisation and is refused as
/// `non_ascii`. None is forwarded; a clean request on the same proxy is.
#[tokio::test]
async fn raw_control_and_invalid_utf8_bytes_refused_and_not_forwarded() {
    let f = setup().await;
    for t in [
        &b"/api/a\x01b"[..],
        b"/api/a\x7fb",
        b"/api/a\x00b",
        b"/api/a\x1bb",
        b"/api/a\xffb",
        b"/api/a\xc3b",
    ] {
        let what = String::from_utf8_lossy(t);
        let r = try_raw_request(f.proxy.addr, &f.req("GET", t, ""))
            .await
            .unwrap_or_else(|e| panic!("{what:?}: no answer ({e})"));
        assert_eq!(r.status, 400, "{what:?}: {}", r.text());
        assert_eq!(
            r.header("portcullis-decision"),
            None,
            "{what:?}: the parser, not the proxy, refuses it"
        );
    }
    for t in [&b"/api/a\xc3\xa9b"[..], b"/api/\xe2\x80\xaex"] {
        let what = String::from_utf8_lossy(t);
        let r = raw_request(f.proxy.addr, &f.req("GET", t, "")).await;
        assert_eq!(assert_refusal(&what, &r, 400), "non_ascii", "{what:?}");
    }
    assert_eq!(f.up.hits(), 0, "{:#?}", f.up.seen());
    assert_eq!(
        f.expect_forwarded(b"/api/a%C3%A9b").await,
        "/base/api/a%C3%A9b"
    );
}

#[tokio::test]
async fn dot_segments_and_empty_segments_refused() {
    let f = setup().await;
    let targets: &[(&[u8], &str)] = &[
        (b"/api/./x", "dot_segment"),
        (b"/api/x/./y", "dot_segment"),
        (b"/api/x/..", "dot_segment"),
        (b"/api/x/../y", "dot_segment"),
        (b"/api/../api/x", "dot_segment"),
        (b"/api/.", "dot_segment"),
        (b"/api/..", "dot_segment"),
        (b"/api//x", "empty_segment"),
        (b"//api/x", "empty_segment"),
        (b"/api/x//", "empty_segment"),
        (b"/api/x//y", "empty_segment"),
    ];
    let cases: Vec<_> = targets
        .iter()
        .map(|(t, r)| (std::str::from_utf8(t).unwrap(), f.req("GET", t, ""), *r))
        .collect();
    f.expect_refused(400, &cases).await;
}

#[tokio::test]
async fn authority_form_star_and_foreign_absolute_form_refused() {
    let f = setup().await;
    let own = f.host.clone();
    f.expect_refused(
        400,
        &[
            case(
                "authority-form",
                f.req("GET", b"example.com:80", ""),
                "host_mismatch",
            ),
            case(
                "authority-form naming the proxy",
                f.req("GET", own.as_bytes(), ""),
                "authority_form",
            ),
            case("OPTIONS *", f.req("OPTIONS", b"*", ""), "bad_target"),
            case("GET *", f.req("GET", b"*", ""), "bad_target"),
            case(
                "absolute-form, other authority",
                f.req("GET", b"http://evil.example/api/x", ""),
                "host_mismatch",
            ),
            case(
                "absolute-form, other port",
                f.req("GET", b"http://127.0.0.1:1/api/x", ""),
                "host_mismatch",
            ),
        ],
    )
    .await;
}

#[tokio::test]
async fn absolute_form_naming_the_host_is_forwarded_as_origin_form() {
    let f = setup().await;
    let target = format!("http://{}/api/x?y=1", f.host);
    assert_eq!(
        f.expect_forwarded(target.as_bytes()).await,
        "/base/api/x?y=1"
    );
}

#[tokio::test]
async fn duplicate_or_missing_host_refused() {
    let f = setup().await;
    let auth = Proxy::auth_line(&f.token);
    let dup = format!(
        "GET /api/x HTTP/1.1\r\nHost: {0}\r\nHost: {0}\r\n{auth}Connection: close\r\n\r\n",
        f.host
    );
    let dup_other = format!(
        "GET /api/x HTTP/1.1\r\nHost: {0}\r\nHost: evil.example\r\n{auth}Connection: close\r\n\r\n",
        f.host
    );
    let missing11 = format!("GET /api/x HTTP/1.1\r\n{auth}Connection: close\r\n\r\n");
    let missing10 = format!("GET /api/x HTTP/1.0\r\n{auth}\r\n");
    f.expect_refused(
        400,
        &[
            case("duplicate Host", dup.into_bytes(), "duplicate_host"),
            case(
                "two different Hosts",
                dup_other.into_bytes(),
                "duplicate_host",
            ),
            case("no Host, HTTP/1.1", missing11.into_bytes(), "missing_host"),
            case("no Host, HTTP/1.0", missing10.into_bytes(), "missing_host"),
        ],
    )
    .await;
}

#[tokio::test]
async fn method_overrides_refused() {
    let f = setup().await;
    f.expect_refused(
        400,
        &[
            case(
                "X-HTTP-Method-Override",
                f.req("GET", b"/api/x", "X-HTTP-Method-Override: DELETE\r\n"),
                "method_override",
            ),
            case(
                "X-HTTP-Method",
                f.req("GET", b"/api/x", "X-HTTP-Method: DELETE\r\n"),
                "method_override",
            ),
            case(
                "X-Method-Override",
                f.req("GET", b"/api/x", "X-Method-Override: DELETE\r\n"),
                "method_override",
            ),
            case(
                "override on POST",
                f.req(
                    "POST",
                    b"/api/x",
                    "X-HTTP-Method-Override: PUT\r\nContent-Length: 0\r\n",
                ),
                "method_override",
            ),
            case(
                "_method query",
                f.req("GET", b"/api/x?_method=DELETE", ""),
                "method_override",
            ),
            case(
                "_method second param",
                f.req("GET", b"/api/x?a=1&_method=DELETE", ""),
                "method_override",
            ),
            case(
                "%5Fmethod (decodes to _method)",
                f.req("GET", b"/api/x?%5Fmethod=DELETE", ""),
                "method_override",
            ),
        ],
    )
    .await;
}

#[tokio::test]
async fn header_names_with_underscore_refused() {
    let f = setup().await;
    f.expect_refused(
        400,
        &[
            case(
                "X_Tenant_Id",
                f.req("GET", b"/api/x", "X_Tenant_Id: evil\r\n"),
                "underscore_header",
            ),
            case(
                "X_Forwarded_For",
                f.req("GET", b"/api/x", "X_Forwarded_For: 10.0.0.1\r\n"),
                "underscore_header",
            ),
            case(
                "Some_Header",
                f.req("GET", b"/api/x", "Some_Header: 1\r\n"),
                "underscore_header",
            ),
        ],
    )
    .await;
}

#[tokio::test]
async fn upgrade_refused() {
    let f = setup().await;
    let ws = "Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";
    f.expect_refused(
        400,
        &[
            // raw_get adds `Connection: close`; an Upgrade header alone must already be refused.
            case("Upgrade: websocket", f.req("GET", b"/api/x", ws), "upgrade"),
            case(
                "Upgrade: h2c",
                f.req(
                    "GET",
                    b"/api/x",
                    "Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n",
                ),
                "upgrade",
            ),
        ],
    )
    .await;
    // And with the usual `Connection: Upgrade` too.
    let auth = Proxy::auth_line(&f.token);
    let req = format!(
        "GET /api/x HTTP/1.1\r\nHost: {}\r\n{auth}Connection: Upgrade\r\n{ws}\r\n",
        f.host
    );
    let r = raw_request(f.proxy.addr, req.as_bytes()).await;
    assert_eq!(
        assert_refusal("Connection: Upgrade + Upgrade: websocket", &r, 400),
        "upgrade"
    );
    assert_eq!(f.up.hits(), 0);
}

#[tokio::test]
async fn connect_trace_lowercase_and_unknown_methods_get_405() {
    let f = setup().await;
    let own = f.host.clone();
    f.expect_refused(
        405,
        &[
            case(
                "CONNECT authority",
                f.req("CONNECT", own.as_bytes(), ""),
                "method_not_allowed",
            ),
            case(
                "CONNECT path",
                f.req("CONNECT", b"/api/x", ""),
                "method_not_allowed",
            ),
            case("TRACE", f.req("TRACE", b"/api/x", ""), "method_not_allowed"),
            case("get", f.req("get", b"/api/x", ""), "method_not_allowed"),
            case("Get", f.req("Get", b"/api/x", ""), "method_not_allowed"),
            case("FOO", f.req("FOO", b"/api/x", ""), "method_not_allowed"),
            case(
                "PROPFIND",
                f.req("PROPFIND", b"/api/x", ""),
                "method_not_allowed",
            ),
        ],
    )
    .await;
}

#[tokio::test]
async fn unreserved_escapes_decoded_others_kept_trailing_slash_kept() {
    let f = setup().await;
    assert_eq!(f.expect_forwarded(b"/api/%61dmin").await, "/base/api/admin");
    assert_eq!(f.expect_forwarded(b"/api/%41%42c").await, "/base/api/ABc");
    assert_eq!(f.expect_forwarded(b"/api/%7Euser").await, "/base/api/~user");
    assert_eq!(
        f.expect_forwarded(b"/api/caf%C3%A9").await,
        "/base/api/caf%C3%A9"
    );
    assert_eq!(
        f.expect_forwarded(b"/api/caf%c3%a9").await,
        "/base/api/caf%c3%a9"
    );
    assert_eq!(f.expect_forwarded(b"/api/a%20b").await, "/base/api/a%20b");
    assert_eq!(f.expect_forwarded(b"/api/items/").await, "/base/api/items/");
    assert_eq!(f.expect_forwarded(b"/api/items").await, "/base/api/items");
    assert_eq!(f.expect_forwarded(b"/api").await, "/base/api");
    assert_eq!(
        f.expect_forwarded(b"/api/x?q=1&r=two").await,
        "/base/api/x?q=1&r=two"
    );
    // Decoding makes `/%61pi/..` the same as `/api/..`: routed by the decoded form.
    assert_eq!(f.expect_forwarded(b"/%61pi/x").await, "/base/api/x");
}

#[tokio::test]
async fn path_under_no_route_is_403_no_route_and_not_forwarded() {
    let f = setup().await;
    for t in [
        &b"/nowhere"[..],
        b"/nowhere/x",
        b"/apix",
        b"/ap",
        b"/",
        b"/API/x",
        b"/%61pix",
    ] {
        let r = raw_request(f.proxy.addr, &f.req("GET", t, "")).await;
        let what = String::from_utf8_lossy(t);
        assert_eq!(assert_refusal(&what, &r, 403), "no_route", "{what}");
    }
    assert_eq!(f.up.hits(), 0, "{:#?}", f.up.seen());
}

#[tokio::test]
async fn internal_prefix_is_never_forwarded() {
    let f = setup().await;
    // (target, status the proxy itself answers): unknown internal paths and ids are 404,
    // the tool listing is the agent's own; an escaped `_` is the same path.
    for (t, status) in [
        (&b"/_portcullis"[..], 404),
        (b"/_portcullis/", 404),
        (b"/_portcullis/nothing", 404),
        (b"/_portcullis/tools", 200),
        (b"/_portcullis/approvals/abc", 404),
        (b"/%5Fportcullis/tools", 200),
        (b"/%5fportcullis/approvals/abc/result", 404),
    ] {
        let r = raw_request(f.proxy.addr, &f.req("GET", t, "")).await;
        let what = String::from_utf8_lossy(t);
        assert_eq!(r.status, status, "{what}: {}", r.text());
        let v = r.json();
        assert!(
            v.get("target").is_none(),
            "{what} reached the upstream: {v}"
        );
        if status == 200 {
            assert_eq!(v["agent"], "bot", "{what}: {v}");
            assert!(v["tools"].is_array(), "{what}: {v}");
        } else {
            assert_eq!(v["reason"], "not_found", "{what}: {v}");
        }
        assert!(
            r.header("x-request-id").is_some(),
            "{what}: no X-Request-Id"
        );
    }
    assert_eq!(f.up.hits(), 0, "{:#?}", f.up.seen());
    // Without a credential it is a bare 401 like any other path.
    let r = raw_request(
        f.proxy.addr,
        &raw_get("GET", b"/_portcullis/tools", &f.host, "", ""),
    )
    .await;
    assert_eq!(r.status, 401, "{}", r.text());
    // The same proxy does forward a normal request (the fixture is live).
    assert_eq!(f.expect_forwarded(b"/api/x").await, "/base/api/x");
}

#[tokio::test]
async fn refused_request_on_a_keep_alive_connection_forwards_nothing() {
    // A refused request followed by a valid one on the same connection: the refused one
    // must not reach the upstream in any form; the valid one is forwarded only as itself.
    let f = setup().await;
    let auth = Proxy::auth_line(&f.token);
    let two = format!(
        "GET /api/a/%2e%2e/admin HTTP/1.1\r\nHost: {0}\r\n{auth}\r\nGET /api/ok HTTP/1.1\r\nHost: {0}\r\n{auth}Connection: close\r\n\r\n",
        f.host
    );
    let mut s = tokio::net::TcpStream::connect(f.proxy.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut s, two.as_bytes())
        .await
        .unwrap();
    let all = read_to_eof(&mut s).await;
    let resps = parse_pipelined(&all);
    assert!(
        !resps.is_empty(),
        "no response at all: {:?}",
        String::from_utf8_lossy(&all)
    );
    assert_refusal("first (encoded dot segment)", &resps[0], 400);
    let forwarded: Vec<String> = f.up.seen().into_iter().map(|s| s.target).collect();
    if resps.len() > 1 {
        // The proxy kept the connection open and answered the second request.
        assert_eq!(resps[1].status, 200, "{}", resps[1].text());
        assert_eq!(forwarded, vec!["/base/api/ok".to_string()]);
    } else {
        assert!(forwarded.is_empty(), "{forwarded:?}");
    }
}

/// What one row of the reason table must be answered with.
#[derive(Clone, Copy, Debug)]
enum Want {
    /// A proxy answer: this status and `reason`, `Portcullis-Decision` deny (4xx) or
    /// error (5xx), the body's `request_id` equal to `X-Request-Id`, and an audit record
    /// with the same reason and status.
    Proxy(u16, &'static str),
    /// Refused by the HTTP/1 parser before the proxy sees a request: this status, no
    /// proxy body. (Bytes that `http::Uri` cannot hold never reach canonicalisation.)
    Parser(u16),
}

fn head(method: &str, target: &[u8], host: &str, token: &str, extra: &str, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(method.as_bytes());
    v.push(b' ');
    v.extend_from_slice(target);
    v.extend_from_slice(b" HTTP/1.1\r\n");
    if !host.is_empty() {
        v.extend_from_slice(format!("Host: {host}\r\n").as_bytes());
    }
    v.extend_from_slice(Proxy::auth_line(token).as_bytes());
    v.extend_from_slice(extra.as_bytes());
    v.extend_from_slice(b"Connection: close\r\n\r\n");
    v.extend_from_slice(body);
    v
}

/// Issue 14: every canonicalisation reason and every upstream-error reason the product
/// has, pinned as (request, status, reason) through the real binary, each checked in
/// the response and in the audit trail; nothing refused reaches an upstream, and
/// controls on the same routes are forwarded.
#[tokio::test]
async fn every_refusal_and_upstream_error_reason_end_to_end() {
    let api = Upstream::start(Behaviour::Echo).await;
    let slow = Upstream::start(Behaviour::Slow(Duration::from_secs(30))).await;
    let held = Upstream::start(Behaviour::Hold).await;
    let dead = crate::common::DeadPort::new();
    let cfg = config(&format!(
        "{no_signals}limits: {{ max_body_bytes: 1024, request_deadline: 3s }}\n\
         upstreams:\n\
         \x20 api: {{ url: \"{api}\" }}\n\
         \x20 dead: {{ url: \"http://{dead}\", timeouts: {{ connect: 10s }} }}\n\
         \x20 slow: {{ url: \"{slow}\", timeouts: {{ response: 400ms }} }}\n\
         \x20 held: {{ url: \"{held}\", timeouts: {{ response: 60s }} }}\n\
         routes:\n\
         \x20 - {{ prefix: /api, upstream: api }}\n\
         \x20 - {{ prefix: /enc, upstream: api, allow_encoded_slash: true }}\n\
         \x20 - {{ prefix: /known, upstream: api, unknown_paths: deny, paths: [\"/known/{{id}}\"] }}\n\
         \x20 - {{ prefix: /dead, upstream: dead }}\n\
         \x20 - {{ prefix: /slow, upstream: slow }}\n\
         \x20 - {{ prefix: /held, upstream: held }}\n",
        api = api.url(),
        dead = dead.addr,
        slow = slow.url(),
        held = held.url(),
        no_signals = crate::common::NO_SIGNALS,
    ));
    let proxy = Proxy::start(&cfg, &[]);
    let token = proxy.agent_token("bot").await;
    let host = proxy.addr.to_string();
    let h = host.as_str();
    let t = token.as_str();
    let form = "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 14\r\n";
    let rows: Vec<(&str, Vec<u8>, Want)> = vec![
        // Canonicalisation of the target.
        ("encoded /", head("GET", b"/api/a%2Fb", h, t, "", b""), Want::Proxy(400, "encoded_slash")),
        ("encoded .", head("GET", b"/api/%2e%2e/x", h, t, "", b""), Want::Proxy(400, "encoded_dot")),
        ("encoded \\", head("GET", b"/api/a%5Cb", h, t, "", b""), Want::Proxy(400, "encoded_backslash")),
        ("encoded %", head("GET", b"/api/a%252e", h, t, "", b""), Want::Proxy(400, "encoded_percent")),
        ("encoded ;", head("GET", b"/api/a%3Bb", h, t, "", b""), Want::Proxy(400, "encoded_semicolon")),
        ("encoded #", head("GET", b"/api/a%23b", h, t, "", b""), Want::Proxy(400, "encoded_hash")),
        ("encoded NUL", head("GET", b"/api/a%00b", h, t, "", b""), Want::Proxy(400, "encoded_control")),
        ("encoded LF", head("GET", b"/api/a%0Ab", h, t, "", b""), Want::Proxy(400, "encoded_control")),
        ("malformed escape", head("GET", b"/api/a%zzb", h, t, "", b""), Want::Proxy(400, "bad_escape")),
        ("escape cut short", head("GET", b"/api/a%4", h, t, "", b""), Want::Proxy(400, "bad_escape")),
        ("overlong UTF-8 `.`", head("GET", b"/api/%C0%AE", h, t, "", b""), Want::Proxy(400, "bad_utf8")),
        ("lone continuation byte in the query", head("GET", b"/api/x?q=%80", h, t, "", b""), Want::Proxy(400, "bad_utf8")),
        ("raw \\", head("GET", b"/api/a\\b", h, t, "", b""), Want::Proxy(400, "backslash")),
        ("raw ; in the path", head("GET", b"/api/a;b=1", h, t, "", b""), Want::Proxy(400, "semicolon")),
        ("raw ; in the query", head("GET", b"/api/a?x=1;y=2", h, t, "", b""), Want::Proxy(400, "semicolon")),
        ("raw non-ASCII", head("GET", b"/api/caf\xc3\xa9", h, t, "", b""), Want::Proxy(400, "non_ascii")),
        ("raw {", head("GET", b"/api/a{b", h, t, "", b""), Want::Proxy(400, "bad_character")),
        ("raw |", head("GET", b"/api/a|b", h, t, "", b""), Want::Proxy(400, "bad_character")),
        // Raw control bytes: the HTTP/1 parser refuses them first.
        ("raw DEL", head("GET", b"/api/a\x7fb", h, t, "", b""), Want::Parser(400)),
        ("raw ESC", head("GET", b"/api/a\x1bb", h, t, "", b""), Want::Parser(400)),
        ("dot segment", head("GET", b"/api/x/../y", h, t, "", b""), Want::Proxy(400, "dot_segment")),
        ("`.` segment", head("GET", b"/api/./y", h, t, "", b""), Want::Proxy(400, "dot_segment")),
        ("empty segment", head("GET", b"/api//x", h, t, "", b""), Want::Proxy(400, "empty_segment")),
        // Authority-form naming another host fails the Host check first (`host_mismatch`).
        ("authority-form naming the proxy", head("GET", h.as_bytes(), h, t, "", b""), Want::Proxy(400, "authority_form")),
        ("authority-form, other host", head("GET", b"example.com:80", h, t, "", b""), Want::Proxy(400, "host_mismatch")),
        ("`*` target", head("GET", b"*", h, t, "", b""), Want::Proxy(400, "bad_target")),
        ("absolute-form, other host", head("GET", b"http://evil.example/api/x", h, t, "", b""), Want::Proxy(400, "host_mismatch")),
        // Host.
        ("two Hosts", head("GET", b"/api/x", h, t, &format!("Host: {h}\r\n"), b""), Want::Proxy(400, "duplicate_host")),
        ("no Host", head("GET", b"/api/x", "", t, "", b""), Want::Proxy(400, "missing_host")),
        ("Host with userinfo", head("GET", b"/api/x", "u@evil.example", t, "", b""), Want::Proxy(400, "bad_host")),
        // Headers.
        ("X-HTTP-Method-Override", head("GET", b"/api/x", h, t, "X-HTTP-Method-Override: DELETE\r\n", b""), Want::Proxy(400, "method_override")),
        ("_method query", head("GET", b"/api/x?_method=DELETE", h, t, "", b""), Want::Proxy(400, "method_override")),
        ("header name with _", head("GET", b"/api/x", h, t, "X_Tenant_Id: evil\r\n", b""), Want::Proxy(400, "underscore_header")),
        ("Upgrade", head("GET", b"/api/x", h, t, "Upgrade: websocket\r\n", b""), Want::Proxy(400, "upgrade")),
        // Methods.
        ("TRACE", head("TRACE", b"/api/x", h, t, "", b""), Want::Proxy(405, "method_not_allowed")),
        ("lower-case get", head("get", b"/api/x", h, t, "", b""), Want::Proxy(405, "method_not_allowed")),
        // Route rules and bodies.
        ("body on GET", head("GET", b"/api/x", h, t, "Content-Length: 5\r\n", b"hello"), Want::Proxy(400, "body_not_allowed")),
        ("_method in a form body", head("POST", b"/api/x", h, t, form, b"_method=DELETE"), Want::Proxy(400, "method_override")),
        (
            "two Content-Types",
            head("POST", b"/api/x", h, t, "Content-Type: application/json\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n", b"{}"),
            Want::Proxy(400, "ambiguous_content_type"),
        ),
        ("Content-Length over max_body_bytes", head("POST", b"/api/x", h, t, "Content-Length: 2048\r\n", &[b'x'; 2048]), Want::Proxy(413, "body_too_large")),
        ("under no route", head("GET", b"/nowhere", h, t, "", b""), Want::Proxy(403, "no_route")),
        ("unknown path of a deny route", head("GET", b"/known/1/x", h, t, "", b""), Want::Proxy(403, "unknown_path")),
        // Upstream errors.
        ("upstream refuses connections", head("GET", b"/dead/x", h, t, "", b""), Want::Proxy(502, "upstream_unreachable")),
        ("upstream slower than its response timeout", head("GET", b"/slow/x", h, t, "", b""), Want::Proxy(504, "upstream_timeout")),
        ("request past request_deadline", head("GET", b"/held/x", h, t, "", b""), Want::Proxy(504, "request_deadline")),
    ];
    let audit = proxy.path("data/audit.jsonl");
    let mut failures = Vec::new();
    let mut recorded = Vec::new();
    for (what, bytes, want) in &rows {
        let r = match try_raw_request(proxy.addr, bytes).await {
            Ok(r) => r,
            Err(e) => {
                failures.push(format!("{what}: no response ({e})"));
                continue;
            }
        };
        match *want {
            Want::Proxy(status, reason) => {
                let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
                let decision = if status >= 500 { "error" } else { "deny" };
                let id = r.header("x-request-id").unwrap_or_default().to_string();
                if r.status != status
                    || v["reason"].as_str() != Some(reason)
                    || r.header("portcullis-decision") != Some(decision)
                    || id.is_empty()
                    || v["request_id"].as_str() != Some(id.as_str())
                {
                    failures.push(format!(
                        "{what}: want {status} `{reason}` ({decision}); got {} {:?} decision {:?}: {}",
                        r.status,
                        v["reason"],
                        r.header("portcullis-decision"),
                        r.text()
                    ));
                } else {
                    recorded.push((what.to_string(), id, status, reason));
                }
            }
            Want::Parser(status) => {
                if r.status != status || r.header("portcullis-decision").is_some() {
                    failures.push(format!(
                        "{what}: want a bare {status} from the HTTP parser; got {} {:?}: {}",
                        r.status,
                        r.headers,
                        r.text()
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "rows answered otherwise:\n{}",
        failures.join("\n")
    );
    for (what, id, status, reason) in &recorded {
        let rec = crate::support::audit::wait_request_record(&audit, id).await;
        assert_eq!(rec["reason"].as_str(), Some(*reason), "{what}: audit {rec}");
        assert_eq!(
            rec["status"].as_u64(),
            Some(*status as u64),
            "{what}: audit {rec}"
        );
    }
    assert_eq!(
        api.hits(),
        0,
        "a refused request reached the upstream: {:#?}",
        api.seen()
    );
    assert_eq!(
        slow.hits(),
        1,
        "the slow upstream was asked once, not retried"
    );
    assert_eq!(held.hits(), 1, "the held upstream was asked once");
    // Controls on the same proxy and routes: forwarded as they are.
    for (target, seen) in [
        (&b"/api/x?q=1"[..], "/api/x?q=1"),
        (b"/enc/a%2Fb", "/enc/a%2Fb"),
        (b"/known/1", "/known/1"),
        (b"/api/caf%C3%A9", "/api/caf%C3%A9"),
    ] {
        let r = raw_request(proxy.addr, &head("GET", target, h, t, "", b"")).await;
        assert_eq!(r.status, 200, "control {seen}: {}", r.text());
        assert_eq!(api.last().target, seen);
    }
    let r = raw_request(
        proxy.addr,
        &head("POST", b"/api/x", h, t, form, b"_xethod=DELETE"),
    )
    .await;
    assert_eq!(r.status, 200, "control form: {}", r.text());
    assert_eq!(api.hits(), 5);
}

/// What the h2 table expects for one stream.
#[derive(Clone, Copy, Debug)]
enum WantH2 {
    /// The proxy's answer: status and `reason`.
    Proxy(u16, &'static str),
    /// The stream is reset with this HTTP/2 error code before the proxy sees it.
    Reset(u32),
    /// Forwarded: 200 from the upstream.
    Ok,
}

/// The canonicalisation refusals over HTTP/2 (cleartext, prior knowledge), sent as raw
/// frames so nothing is tidied on the way: each is answered with the same status and
/// reason as over HTTP/1 (the table above), and what HTTP/2 itself forbids
/// (connection-specific headers such as `Upgrade`) is reset with PROTOCOL_ERROR. One
/// connection per row, so every status is read from a fresh HPACK context. Nothing
/// refused reaches the upstream; the controls do.
#[tokio::test]
async fn h2_refuses_what_http1_refuses_with_the_same_reason() {
    use crate::h2_raw::{h2_frame, H2Answer, H2Raw, DATA, END_STREAM, PROTOCOL_ERROR};
    let api = Upstream::start(Behaviour::Echo).await;
    let cfg = config(&format!(
        "{}limits: {{ max_body_bytes: 1024 }}\n\
         upstreams:\n  api: {{ url: \"{}\" }}\n\
         routes:\n\
         \x20 - {{ prefix: /api, upstream: api }}\n\
         \x20 - {{ prefix: /enc, upstream: api, allow_encoded_slash: true }}\n\
         \x20 - {{ prefix: /known, upstream: api, unknown_paths: deny, paths: [\"/known/{{id}}\"] }}\n",
        crate::common::NO_SIGNALS,
        api.url()
    ));
    let proxy = Proxy::start(&cfg, &[]);
    let token = proxy.agent_token("bot").await;
    let auth = format!("Bearer {token}");
    let host = proxy.addr.to_string();
    let big = "x".repeat(2048);
    let form = "application/x-www-form-urlencoded";
    // (what, method, path, :authority (None: left out), extra fields, body, expected)
    type Row<'a> = (
        &'a str,
        &'a str,
        &'a str,
        Option<&'a str>,
        Vec<(&'a str, &'a str)>,
        &'a str,
        WantH2,
    );
    let a = Some(host.as_str());
    let rows: Vec<Row> = vec![
        (
            "encoded /",
            "GET",
            "/api/a%2Fb",
            a,
            vec![],
            "",
            WantH2::Proxy(400, "encoded_slash"),
        ),
        (
            "encoded .",
            "GET",
            "/api/%2e%2e/x",
            a,
            vec![],
            "",
            WantH2::Proxy(400, "encoded_dot"),
        ),
        (
            "encoded \\",
            "GET",
            "/api/a%5Cb",
            a,
            vec![],
            "",
            WantH2::Proxy(400, "encoded_backslash"),
        ),
        (
            "encoded %",
            "GET",
            "/api/a%252e",
            a,
            vec![],
            "",
            WantH2::Proxy(400, "encoded_percent"),
        ),
        (
            "encoded ;",
            "GET",
            "/api/a%3Bb",
            a,
            vec![],
            "",
            WantH2::Proxy(400, "encoded_semicolon"),
        ),
        (
            "encoded #",
            "GET",
            "/api/a%23b",
            a,
            vec![],
            "",
            WantH2::Proxy(400, "encoded_hash"),
        ),
        (
            "encoded NUL",
            "GET",
            "/api/a%00b",
            a,
            vec![],
            "",
            WantH2::Proxy(400, "encoded_control"),
        ),
        (
            "malformed escape",
            "GET",
            "/api/a%zzb",
            a,
            vec![],
            "",
            WantH2::Proxy(400, "bad_escape"),
        ),
        (
            "overlong UTF-8",
            "GET",
            "/api/%C0%AE",
            a,
            vec![],
            "",
            WantH2::Proxy(400, "bad_utf8"),
        ),
        (
            "raw \\",
            "GET",
            "/api/a\\b",
            a,
            vec![],
            "",
            WantH2::Proxy(400, "backslash"),
        ),
        (
            "raw ;",
            "GET",
            "/api/a;b=1",
            a,
            vec![],
            "",
            WantH2::Proxy(400, "semicolon"),
        ),
        (
            "raw {",
            "GET",
            "/api/a{b",
            a,
            vec![],
            "",
            WantH2::Proxy(400, "bad_character"),
        ),
        (
            "dot segment",
            "GET",
            "/api/x/../y",
            a,
            vec![],
            "",
            WantH2::Proxy(400, "dot_segment"),
        ),
        (
            "empty segment",
            "GET",
            "/api//x",
            a,
            vec![],
            "",
            WantH2::Proxy(400, "empty_segment"),
        ),
        (
            "`*` target",
            "GET",
            "*",
            a,
            vec![],
            "",
            WantH2::Proxy(400, "bad_target"),
        ),
        (
            "Host differs from :authority",
            "GET",
            "/api/x",
            a,
            vec![("host", "evil.example")],
            "",
            WantH2::Proxy(400, "host_mismatch"),
        ),
        (
            "two Hosts",
            "GET",
            "/api/x",
            None,
            vec![("host", &host), ("host", &host)],
            "",
            WantH2::Proxy(400, "duplicate_host"),
        ),
        (
            "no :authority, no Host",
            "GET",
            "/api/x",
            None,
            vec![],
            "",
            WantH2::Proxy(400, "missing_host"),
        ),
        (
            "userinfo in :authority",
            "GET",
            "/api/x",
            Some("u@evil.example"),
            vec![],
            "",
            WantH2::Proxy(400, "bad_host"),
        ),
        (
            "x-http-method-override",
            "GET",
            "/api/x",
            a,
            vec![("x-http-method-override", "DELETE")],
            "",
            WantH2::Proxy(400, "method_override"),
        ),
        (
            "_method query",
            "GET",
            "/api/x?_method=DELETE",
            a,
            vec![],
            "",
            WantH2::Proxy(400, "method_override"),
        ),
        (
            "header name with _",
            "GET",
            "/api/x",
            a,
            vec![("x_tenant_id", "evil")],
            "",
            WantH2::Proxy(400, "underscore_header"),
        ),
        (
            "TRACE",
            "TRACE",
            "/api/x",
            a,
            vec![],
            "",
            WantH2::Proxy(405, "method_not_allowed"),
        ),
        (
            "lower-case get",
            "get",
            "/api/x",
            a,
            vec![],
            "",
            WantH2::Proxy(405, "method_not_allowed"),
        ),
        (
            "body on GET",
            "GET",
            "/api/x",
            a,
            vec![],
            "hello",
            WantH2::Proxy(400, "body_not_allowed"),
        ),
        (
            "_method in a form body",
            "POST",
            "/api/x",
            a,
            vec![("content-type", form)],
            "_method=DELETE",
            WantH2::Proxy(400, "method_override"),
        ),
        (
            "two Content-Types",
            "POST",
            "/api/x",
            a,
            vec![
                ("content-type", "application/json"),
                ("content-type", "text/plain"),
            ],
            "{}",
            WantH2::Proxy(400, "ambiguous_content_type"),
        ),
        (
            "content-length over max_body_bytes",
            "POST",
            "/api/x",
            a,
            vec![("content-length", "2048")],
            &big,
            WantH2::Proxy(413, "body_too_large"),
        ),
        (
            "under no route",
            "GET",
            "/nowhere",
            a,
            vec![],
            "",
            WantH2::Proxy(403, "no_route"),
        ),
        (
            "unknown path of a deny route",
            "GET",
            "/known/1/x",
            a,
            vec![],
            "",
            WantH2::Proxy(403, "unknown_path"),
        ),
        // Connection-specific headers are malformed HTTP/2: the stream is reset.
        (
            "upgrade",
            "GET",
            "/api/x",
            a,
            vec![("upgrade", "websocket")],
            "",
            WantH2::Reset(PROTOCOL_ERROR),
        ),
        (
            "connection",
            "GET",
            "/api/x",
            a,
            vec![("connection", "close")],
            "",
            WantH2::Reset(PROTOCOL_ERROR),
        ),
        (
            "te: gzip",
            "GET",
            "/api/x",
            a,
            vec![("te", "gzip")],
            "",
            WantH2::Reset(PROTOCOL_ERROR),
        ),
        (
            "transfer-encoding",
            "POST",
            "/api/x",
            a,
            vec![("transfer-encoding", "chunked")],
            "",
            WantH2::Reset(PROTOCOL_ERROR),
        ),
        // Controls.
        (
            "control: plain GET",
            "GET",
            "/api/x?q=1",
            a,
            vec![],
            "",
            WantH2::Ok,
        ),
        (
            "control: %2F where allowed",
            "GET",
            "/enc/a%2Fb",
            a,
            vec![],
            "",
            WantH2::Ok,
        ),
        (
            "control: POST with a body",
            "POST",
            "/api/x",
            a,
            vec![("content-type", form)],
            "a=1",
            WantH2::Ok,
        ),
    ];
    let mut failures = Vec::new();
    let mut forwarded = 0;
    for (what, method, path, authority, extra, body, want) in &rows {
        let mut fields = vec![(":method", *method), (":scheme", "http")];
        if let Some(au) = authority {
            fields.push((":authority", au));
        }
        fields.push((":path", path));
        fields.push(("authorization", auth.as_str()));
        fields.extend(extra.iter().copied());
        let mut h2 = H2Raw::connect(proxy.addr).await;
        let mut bytes = H2Raw::headers_frames(1, &fields, body.is_empty());
        if !body.is_empty() {
            bytes.extend(h2_frame(DATA, END_STREAM, 1, body.as_bytes()));
        }
        h2.write(&bytes).await;
        let got = h2.response(1, REQUEST_BOUND).await;
        let ok = match (want, &got) {
            (WantH2::Proxy(status, reason), H2Answer::Response { status: s, body }) => {
                let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
                *s == Some(*status) && v["reason"].as_str() == Some(*reason)
            }
            (WantH2::Reset(code), H2Answer::Reset(c)) => c == code,
            (WantH2::Ok, H2Answer::Response { status: s, body }) => {
                forwarded += 1;
                let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
                *s == Some(200) && v["target"].as_str() == Some(*path)
            }
            _ => false,
        };
        if !ok {
            let shown = match &got {
                H2Answer::Response { status, body } => {
                    format!("{status:?} {}", String::from_utf8_lossy(body))
                }
                H2Answer::Reset(c) => format!("RST_STREAM {c}"),
            };
            failures.push(format!("{what}: want {want:?}, got {shown}"));
        }
    }
    assert!(
        failures.is_empty(),
        "h2 rows answered otherwise:\n{}",
        failures.join("\n")
    );
    assert_eq!(forwarded, 3);
    let targets: Vec<String> = api.seen().into_iter().map(|s| s.target).collect();
    assert_eq!(targets, vec!["/api/x?q=1", "/enc/a%2Fb", "/api/x"]);
}
