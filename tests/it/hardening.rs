//! Issue 11, "the backend never runs what the gate did not see": one regression test per
//! class, through the real binary, against real upstreams. Hostile requests go over raw
//! sockets so nothing tidies them up on the way.

use crate::common::*;
use crate::support::admin::{issue, op};
use std::time::Duration;

const BOUND: Duration = Duration::from_secs(10);

/// A low-risk agent (`low`) and an admin agent (`bot`) on routes `/x` (strict defaults)
/// and `/enc` (`allow_encoded_slash`, `allow_body_on: [GET]`).
fn hardened_config(url: &str, extra: &str) -> String {
    format!(
        r#"{head}upstreams:
  api: {{ url: "{url}" }}
routes:
  - prefix: /x
    upstream: api
    tool_prefix: x
    paths: ["/x/items/{{id}}", "/x/items/export", "/x/items"]
    sensitive_paths: ["/x/admin/{{*rest}}"]
    tools:
      - {{ match: "POST|PATCH|PUT /x/items/{{id}}/refund", name: x.refund, risk: critical }}
  - prefix: /enc
    upstream: api
    tool_prefix: enc
    allow_encoded_slash: true
    allow_body_on: [GET]
    paths: ["/enc/items/{{id}}"]
    sensitive_paths: ["/enc/admin/{{*rest}}"]
    tools:
      - {{ match: "POST /enc/items/{{id}}/refund", name: enc.refund, risk: critical }}
profiles:
  all: {{ admin: true }}
  low:
    tools: ["x.items.get", "x.items.list", "x.items.create", "enc.*", "x.admin.*"]
    max_risk: medium
    deny: ["*.delete"]
    rate_limit: {{ per_minute: 100000 }}
agents:
  bot: {{ profile: all, tenant: acme }}
  low: {{ profile: low, tenant: acme }}
{extra}"#,
        head = Head::new().audit("{ path: data/audit.jsonl, max_refusals_per_second: 1000 }"),
    )
}

struct Fx {
    up: Upstream,
    p: Proxy,
    low: String,
    bot: String,
}

async fn fx_with(extra: &str) -> Fx {
    let up = Upstream::start(Behaviour::Echo).await;
    let p = Proxy::start(&hardened_config(&up.url(), extra), &[]);
    let low = p.agent_token("low").await;
    let bot = p.agent_token("bot").await;
    Fx { up, p, low, bot }
}

async fn fx() -> Fx {
    fx_with("").await
}

impl Fx {
    /// A raw request with extra header lines and a body (Content-Length or chunked as
    /// the caller's header lines say).
    async fn raw(&self, method: &str, target: &str, token: &str, extra: &str, body: &[u8]) -> Resp {
        let mut bytes = raw_get(
            method,
            target.as_bytes(),
            &self.p.addr.to_string(),
            token,
            extra,
        );
        bytes.extend_from_slice(body);
        raw_request(self.p.addr, &bytes).await
    }
}

fn refused(r: &Resp, status: u16, reason: &str, what: &str) {
    assert_eq!(r.status, status, "{what}: {}", r.text());
    assert_eq!(r.reason().as_deref(), Some(reason), "{what}: {}", r.text());
}

// ---- class 1 -------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn cl0_bodies_on_bodiless_methods_are_refused() {
    let f = fx().await;
    let smuggled = b"DELETE /x/items/1 HTTP/1.1\r\nHost: up\r\nContent-Length: 0\r\n\r\n";
    for method in ["GET", "OPTIONS", "DELETE"] {
        let cl = format!("Content-Length: {}\r\n", smuggled.len());
        let r = f.raw(method, "/x/items/1", &f.bot, &cl, smuggled).await;
        refused(
            &r,
            400,
            "body_not_allowed",
            &format!("{method} with Content-Length"),
        );
        let mut chunked = format!("{:x}\r\n", smuggled.len()).into_bytes();
        chunked.extend_from_slice(smuggled);
        chunked.extend_from_slice(b"\r\n0\r\n\r\n");
        let r = f
            .raw(
                method,
                "/x/items/1",
                &f.bot,
                "Transfer-Encoding: chunked\r\n",
                &chunked,
            )
            .await;
        refused(&r, 400, "body_not_allowed", &format!("{method} chunked"));
    }
    // HEAD: the answer has no body, so read its status line only.
    let head = format!(
        "HEAD /x/items/1 HTTP/1.1\r\nHost: {}\r\n{}Content-Length: {}\r\nConnection: close\r\n\r\n",
        f.p.addr,
        Proxy::auth_line(&f.bot),
        smuggled.len()
    );
    let mut s = tokio::net::TcpStream::connect(f.p.addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(smuggled).await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(BOUND, s.read_to_end(&mut got))
        .await
        .expect("HEAD answered")
        .unwrap();
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 400"), "HEAD with a body: {got}");
    assert_eq!(f.up.hits(), 0, "nothing reached the upstream");
    // An empty body is no body.
    let r = f
        .raw("GET", "/x/items/1", &f.bot, "Content-Length: 0\r\n", b"")
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // A POST keeps its body, and the pooled connection serves the next request.
    let r = f
        .raw(
            "POST",
            "/x/items",
            &f.bot,
            "Content-Type: text/plain\r\nContent-Length: 2\r\n",
            b"hi",
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread")]
async fn cl0_opted_in_bodies_are_sent_on_a_connection_not_reused() {
    let f = fx().await;
    let body = b"{\"query\":1}";
    let cl = format!(
        "Content-Type: application/octet-stream\r\nContent-Length: {}\r\n",
        body.len()
    );
    for i in 1..=3 {
        let r = f.raw("GET", "/enc/items/1", &f.bot, &cl, body).await;
        assert_eq!(
            r.status,
            200,
            "GET with a body on an allow_body_on route: {}",
            r.text()
        );
        assert!(
            f.up.wait_hits(i, BOUND).await,
            "request {i} reached the upstream"
        );
        let seen = f.up.last();
        assert_eq!(seen.body_bytes, body.len() as u64);
        assert_eq!(seen.header("connection"), Some("close"), "{seen:?}");
    }
    // Each went on its own connection: none was reused after a GET body.
    assert_eq!(f.up.connections(), 3);
    // Only GET was opted in.
    let r = f.raw("OPTIONS", "/enc/items/1", &f.bot, &cl, body).await;
    refused(&r, 400, "body_not_allowed", "OPTIONS on the GET-only route");
}

// ---- class 2 -------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn encoded_slashes_are_classified_as_the_backend_decodes_them() {
    let f = fx().await;
    // `1%2Frefund` fills `{id}` literally; a decoding backend runs the critical refund.
    let r = f
        .raw(
            "POST",
            "/enc/items/1%2Frefund",
            &f.low,
            "Content-Length: 0\r\n",
            b"",
        )
        .await;
    refused(&r, 403, "risk_ceiling", "hidden refund");
    assert_eq!(r.json()["tool"], "enc.refund", "{}", r.text());
    assert_eq!(r.json()["risk"], "critical", "{}", r.text());
    // A sensitive path hidden behind %2F is still high.
    let r = f.raw("GET", "/enc/admin%2Fusers", &f.low, "", b"").await;
    refused(&r, 403, "risk_ceiling", "hidden admin path");
    assert_eq!(r.json()["risk"], "high", "{}", r.text());
    // A pause written for the decoded name holds for the encoded spelling.
    let pause = op(
        &f.p,
        "POST",
        "/pause",
        Some(&serde_json::json!({"scope": "tool", "target": "enc.refund"})),
    )
    .await;
    assert_eq!(pause.status, 200, "{}", pause.text());
    let r = f
        .raw(
            "POST",
            "/enc/items/1%2Frefund",
            &f.bot,
            "Content-Length: 0\r\n",
            b"",
        )
        .await;
    refused(&r, 403, "paused", "paused under its decoded name");
    assert_eq!(f.up.hits(), 0);
    // A plain id still passes.
    let r = f.raw("GET", "/enc/items/1%2F2", &f.low, "", b"").await;
    assert_eq!(r.status, 200, "{}", r.text());
}

// ---- class 3 -------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn method_override_in_bodies_is_refused() {
    let f = fx().await;
    let multipart =
        b"--b\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\nDELETE\r\n--b--\r\n";
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "application/x-www-form-urlencoded",
            b"a=1&_method=DELETE".to_vec(),
        ),
        (
            "application/x-www-form-urlencoded",
            b"%5Fmethod=DELETE".to_vec(),
        ),
        (
            "application/x-www-form-urlencoded; charset=utf-8",
            b"+_method=DELETE".to_vec(),
        ),
        (
            "application/x-www-form-urlencoded",
            b".method=DELETE".to_vec(),
        ),
        ("multipart/form-data; boundary=b", multipart.to_vec()),
        (
            "application/json",
            br#"{"note":"x","_method":"DELETE"}"#.to_vec(),
        ),
    ];
    for (ct, body) in &cases {
        let h = format!("Content-Type: {ct}\r\nContent-Length: {}\r\n", body.len());
        let r = f.raw("POST", "/x/items", &f.low, &h, body).await;
        refused(
            &r,
            400,
            "method_override",
            &format!("{ct}: {}", String::from_utf8_lossy(body)),
        );
    }
    // Without Content-Type, Rack parses a POST body as a form.
    let r = f
        .raw(
            "POST",
            "/x/items",
            &f.low,
            "Content-Length: 14\r\n",
            b"_method=DELETE",
        )
        .await;
    refused(&r, 400, "method_override", "no Content-Type");
    assert_eq!(f.up.hits(), 0, "nothing reached the upstream");
    // Past the first 64 KiB the field is found while streaming: the upstream never gets
    // a complete request.
    let mut big = b"a=".to_vec();
    big.extend(std::iter::repeat_n(b'x', 200 * 1024));
    big.extend_from_slice(b"&_method=DELETE");
    let h = format!(
        "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
        big.len()
    );
    let r = f.raw("POST", "/x/items", &f.low, &h, &big).await;
    refused(&r, 400, "method_override", "override after 200 KiB");
    assert!(f.up.wait_bodies_settled(BOUND).await);
    assert!(
        f.up.seen()
            .iter()
            .all(|s| s.body_state != BodyState::Complete),
        "the upstream received a complete request: {:?}",
        f.up.seen()
    );
    // Harmless forms and JSON pass.
    for (ct, body) in [
        (
            "application/x-www-form-urlencoded",
            &b"a=_method&method=x"[..],
        ),
        ("application/json", &br#"{"a":{"_method":"x"}}"#[..]),
    ] {
        let h = format!("Content-Type: {ct}\r\nContent-Length: {}\r\n", body.len());
        let r = f.raw("POST", "/x/items", &f.low, &h, body).await;
        assert_eq!(r.status, 200, "{ct}: {}", r.text());
    }
}

// ---- class 4 -------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn grants_hold_for_every_spelling() {
    let f = fx().await;
    // `low` may call x.items.get but not x.items.export.list.
    let r = f.raw("GET", "/x/items/42", &f.low, "", b"").await;
    assert_eq!(r.status, 200, "{}", r.text());
    for path in [
        "/x/items/export",
        "/x/items/export.json",
        "/x/items/EXPORT",
        "/x/items/Export/",
    ] {
        let r = f.raw("GET", path, &f.low, "", b"").await;
        refused(&r, 403, "not_granted", path);
        assert_eq!(
            r.json()["tool"],
            "x.items.export.list",
            "{path}: {}",
            r.text()
        );
    }
    // A narrowed credential: the same rule for token scope.
    let t = issue(
        &f.p,
        serde_json::json!({"agent": "bot", "ttl": "1h", "tools": ["x.items.get"]}),
    )
    .await
    .token;
    let r = f.raw("GET", "/x/items/EXPORT", &t, "", b"").await;
    refused(&r, 403, "token_scope", "narrowed token, lenient spelling");
    assert_eq!(f.up.hits(), 1);
    // An override for several methods covers each of them.
    for m in ["POST", "PATCH", "PUT"] {
        let r = f
            .raw(m, "/x/items/1/refund", &f.low, "Content-Length: 0\r\n", b"")
            .await;
        refused(&r, 403, "not_granted", m);
        assert_eq!(r.json()["tool"], "x.refund", "{m}: {}", r.text());
        assert_eq!(r.json()["risk"], "critical", "{m}: {}", r.text());
    }
}

// ---- class 5 -------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn invalid_utf8_escapes_are_refused() {
    let f = fx().await;
    for target in [
        "/x/items/%C0%AE%C0%AE/admin",
        "/x/items/%E0%80%AF",
        "/x/items/%80",
        "/x/items/%ED%A0%80",
        "/x/items/%C3",
        "/x/items?q=%C0%AF",
    ] {
        let r = f.raw("GET", target, &f.bot, "", b"").await;
        refused(&r, 400, "bad_utf8", target);
    }
    assert_eq!(f.up.hits(), 0);
    let r = f.raw("GET", "/x/items/caf%C3%A9", &f.bot, "", b"").await;
    assert_eq!(r.status, 200, "valid UTF-8 passes: {}", r.text());
    assert_eq!(f.up.last().target, "/x/items/caf%C3%A9");
}

// ---- class 6 -------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn routing_and_client_ip_headers_never_reach_the_backend() {
    let f = fx().await;
    let hostile = [
        "X-Original-URL",
        "X-Rewrite-URL",
        "X-Override-URL",
        "X-Forwarded-Prefix",
        "X-Forwarded-Path",
        "X-Forwarded-Host",
        "True-Client-IP",
        "X-Client-IP",
        "CF-Connecting-IP",
        "X-Cluster-Client-IP",
        "Fastly-Client-IP",
        "X-Originating-IP",
    ];
    let extra: String = hostile
        .iter()
        .map(|h| format!("{h}: /x/admin/users\r\n"))
        .collect();
    let r = f.raw("GET", "/x/items/1", &f.low, &extra, b"").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = f.up.last();
    for h in hostile {
        assert!(!seen.has(h), "{h} reached the backend: {seen:?}");
    }
    // No configured host: the agent's arbitrary Host is not forwarded at all.
    assert!(!seen.has("x-forwarded-host"), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn forwarded_host_comes_from_configuration() {
    let up = Upstream::start(Behaviour::Echo).await;
    // (config, Host sent, X-Forwarded-Host expected)
    let cases: [(&str, &str, Option<&str>); 4] = [
        (
            "public_host: api.example.test\n",
            "evil.test",
            Some("api.example.test"),
        ),
        (
            "hosts: [\"agents.example.test\"]\n",
            "agents.example.test",
            Some("agents.example.test"),
        ),
        (
            "hosts: [\"agents.example.test\"]\n",
            "AGENTS.example.test:8443",
            Some("AGENTS.example.test:8443"),
        ),
        ("hosts: [\"agents.example.test\"]\n", "evil.test", None),
    ];
    for (extra, host, want) in cases {
        let p = Proxy::start(&hardened_config(&up.url(), extra), &[]);
        let bot = p.agent_token("bot").await;
        let r = raw_request(p.addr, &raw_get("GET", b"/x/items/1", host, &bot, "")).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(
            up.last().header("x-forwarded-host"),
            want,
            "{extra} with Host {host}"
        );
    }
}

// ---- class 7 -------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn upstream_sessions_never_reach_the_agent() {
    // An upstream that mints a session cookie.
    let up = Upstream::start(Behaviour::Reply(
        Reply::new(200, "{}").header("set-cookie", "session=minted-under-the-upstream-key"),
    ))
    .await;
    let url = up.url();
    for (cookies, passes) in [("", false), ("    cookies: pass\n", true)] {
        let cfg = hardened_config(&url, "").replace(
            &format!("  api: {{ url: \"{url}\" }}\n"),
            &format!("  api:\n    url: \"{url}\"\n{cookies}"),
        );
        let p = Proxy::start(&cfg, &[]);
        let bot = p.agent_token("bot").await;
        let r = raw_request(
            p.addr,
            &raw_get(
                "GET",
                b"/x/items/1",
                &p.addr.to_string(),
                &bot,
                "Cookie: sid=agent\r\n",
            ),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(
            r.header("set-cookie").is_some(),
            passes,
            "Set-Cookie ({cookies:?})"
        );
        assert_eq!(
            up.last().header("cookie"),
            passes.then_some("sid=agent"),
            "Cookie upstream ({cookies:?})"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn hop_by_hop_response_headers_stop_at_the_proxy() {
    // Headers that describe the upstream's hop, and one its `Connection` header names,
    // never reach the agent; an ordinary header does. Also the answer with none of them,
    // so the path that finds nothing to strip is checked against the same expectation.
    for hop in [true, false] {
        let mut reply = Reply::new(200, "{}").header("x-kept", "yes");
        if hop {
            reply = reply
                .header("connection", "x-upstream-internal")
                .header("x-upstream-internal", "secret-route")
                .header("keep-alive", "timeout=5")
                .header("proxy-authenticate", "Basic realm=upstream")
                .header("trailer", "x-checksum")
                .header("set-cookie2", "legacy=1");
        }
        let up = Upstream::start(Behaviour::Reply(reply)).await;
        let p = Proxy::start(&hardened_config(&up.url(), ""), &[]);
        let bot = p.agent_token("bot").await;
        let host = p.addr.to_string();
        let r = raw_request(p.addr, &raw_get("GET", b"/x/items/1", &host, &bot, "")).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-kept"), Some("yes"), "hop={hop}");
        for name in [
            "x-upstream-internal",
            "keep-alive",
            "proxy-authenticate",
            "trailer",
            "set-cookie2",
        ] {
            assert_eq!(r.header(name), None, "{name} reached the agent (hop={hop})");
        }
        assert_ne!(
            r.header("connection"),
            Some("x-upstream-internal"),
            "the upstream's Connection header reached the agent"
        );
    }
}

// ---- class 9 -------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn refusal_floods_keep_the_audit_and_metrics_bounded() {
    let up = Upstream::start(Behaviour::Echo).await;
    let cfg = hardened_config(&up.url(), "").replace(
        "max_refusals_per_second: 1000",
        "max_refusals_per_second: 5",
    );
    let p = Proxy::start(&cfg, &[]);
    let low = p.agent_token("low").await;
    let bot = p.agent_token("bot").await;
    let f = Fx { up, p, low, bot };
    // A flood of denied requests with long paths from one agent (5 refusals/s recorded).
    let long = format!("/x/items/1/{}", "a".repeat(30_000));
    let n = 60;
    let mut statuses = std::collections::BTreeMap::new();
    let mut ids = Vec::new();
    for i in 0..n {
        let target = if i == 0 { long.as_str() } else { "/x/items/1" };
        let r = f.raw("DELETE", target, &f.low, "", b"").await;
        *statuses.entry(r.status).or_insert(0) += 1;
        ids.push(r.header("x-request-id").unwrap_or_default().to_string());
    }
    assert!(statuses.get(&429).copied().unwrap_or(0) > 0, "{statuses:?}");
    assert_eq!(statuses.values().sum::<usize>(), n, "{statuses:?}");
    // Drain the proxy so the aggregate of the last second is written.
    let mut p = f.p;
    assert!(p.terminate(BOUND).await.is_some());
    let audit = p.audit_text();
    let recs: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .filter(|r: &serde_json::Value| r["agent"] == "low")
        .collect();
    let single = recs.iter().filter(|r| r["event"] == "request").count();
    let aggregated: u64 = recs
        .iter()
        .filter(|r| r["event"] == "refusals_aggregated")
        .map(|r| r["count"].as_u64().unwrap())
        .sum();
    assert_eq!(
        single as u64 + aggregated,
        n as u64,
        "every refusal counted: {recs:#?}"
    );
    assert!(
        single < n,
        "the flood was aggregated: {single} single records"
    );
    // The first, very long, path was cut and marked.
    let first = recs
        .iter()
        .find(|r| r["request_id"] == ids[0].as_str())
        .expect("the first refusal has its own record");
    assert!(first["path"].as_str().unwrap().len() <= 2048);
    assert_eq!(first["truncated"], true);
    assert!(
        audit.len() < 64 * 1024,
        "audit grew to {} bytes",
        audit.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_tool_labels_stay_bounded_under_distinct_paths() {
    let f = fx().await;
    // 1,100 distinct heuristic names, each a new path word.
    for i in 0..1100 {
        let r = f.raw("GET", &format!("/x/w{i}"), &f.bot, "", b"").await;
        assert_eq!(r.status, 200);
    }
    let m = op(&f.p, "GET", "/metrics", None).await;
    let text = m.text();
    let labels: std::collections::BTreeSet<&str> = text
        .lines()
        .filter(|l| l.starts_with("portcullis_requests_total{"))
        .filter_map(|l| l.split("tool=\"").nth(1)?.split('"').next())
        .collect();
    assert!(labels.len() <= 1001, "{} tool labels", labels.len());
    assert!(labels.contains("other"), "overflow goes to `other`");
}

// ---- class 12 ------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn unauthenticated_requests_learn_nothing_but_401() {
    let f = fx().await;
    for (target, extra) in [
        ("/x/../admin", ""),
        ("/x/%2e%2e/admin", ""),
        ("/x/items/%C0%AE", ""),
        ("/x/items/1", "X-HTTP-Method-Override: DELETE\r\n"),
    ] {
        for token in ["", "pcx_00000000000000000000000000000000_nope"] {
            let r = f.raw("GET", target, token, extra, b"").await;
            assert_eq!(r.status, 401, "{target} {token:?}: {}", r.text());
            assert!(r.reason().is_none(), "a 401 says nothing: {}", r.text());
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn check_warns_about_overrides_for_some_methods_only() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("routes.yaml");
    let text = hardened_config("http://127.0.0.1:9", "").replace(
        "\"POST|PATCH|PUT /x/items/{id}/refund\"",
        "\"POST /x/items/{id}/refund\"",
    );
    std::fs::write(&cfg, text).unwrap();
    let path = cfg.display().to_string();
    let out = run_bin(&["check", "--config", &path], &[], CLI_BOUND);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("warning: `/x/items/{id}/refund` has an override for POST but not for GET, PUT, PATCH, DELETE"),
        "{stdout}"
    );
}

// ---- class 13 (parking) --------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_full_pending_quota_refuses_before_the_body_is_read() {
    let up = Upstream::start(Behaviour::Echo).await;
    let cfg = hardened_config(&up.url(), "")
        .replace(
            "max_refusals_per_second: 1000 }",
            "max_refusals_per_second: 1000 }\nlimits: { max_pending_per_agent: 1 }",
        )
        .replace(
            "    deny: [\"*.delete\"]\n",
            "    deny: [\"*.delete\"]\n    approval: [\"x.refund\"]\n",
        );
    let p = Proxy::start(&cfg, &[]);
    let low = p.agent_token("low").await;
    let host = p.addr.to_string();
    let parked = raw_request(
        p.addr,
        &raw_get(
            "POST",
            b"/x/items/1/refund",
            &host,
            &low,
            "Content-Length: 0\r\n",
        ),
    )
    .await;
    assert_eq!(parked.status, 202, "{}", parked.text());
    // The next park declares a large body and sends none of it: the quota answers at once.
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    let head = format!(
        "POST /x/items/2/refund HTTP/1.1\r\nHost: {host}\r\n{}Content-Type: text/plain\r\nContent-Length: 500000\r\n\r\n",
        Proxy::auth_line(&low)
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let r = match tokio::time::timeout(BOUND, read_response(&mut s)).await {
        Ok(r) => r.unwrap(),
        Err(_) => panic!("not answered without the body; log:\n{}", p.logs()),
    };
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.reason().as_deref(), Some("pending_quota"));
    assert_eq!(up.hits(), 0);
}
