//! Secrets a client sends never reach the audit trail or the log (`RUST_LOG=debug`): an
//! agent token and a foreign bearer secret in `Authorization`, a `Cookie` value, and a
//! request body — on allowed, denied, parked, refused and unauthenticated requests. Query
//! values named in `audit.redact_query` are `REDACTED` in the audit `path` (and are not
//! logged); other query parameters are kept.
//!
//! (tests/canary.rs covers malformed `Authorization` variants of a live token, the
//! upstream's injected secret, and the store; this file covers cookies, bodies, foreign
//! bearer secrets and query redaction.)

use crate::common;

use crate::common::{Behaviour, Head, Proxy, Resp, Upstream};
use crate::support::admin::issue;
use crate::support::audit::{records_of, wait_request_record, with_request_id};
use serde_json::json;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const AUDIT: &str = "audit/audit.jsonl";

fn config(url: &str) -> String {
    format!(
        r#"{head}upstreams:
  # `cookies: pass` keeps the cookie canary live: it reaches the upstream, and still
  # must appear in no log line or record.
  api: {{ url: "{url}", cookies: pass }}
routes:
  - prefix: /tickets
    upstream: api
    tool_prefix: tickets
    paths: ["/tickets/{{id}}", "/tickets/{{id}}/comments"]
    tools:
      - {{ match: "POST /tickets/{{id}}/refund", name: tickets.refund, risk: critical }}
profiles:
  drafter:
    tools: ["tickets.*"]
    max_risk: medium
    approval: ["tickets.refund"]
    deny: ["*.delete"]
agents:
  bot: {{ profile: drafter, tenant: acme }}
"#,
        head = Head::new().audit(&format!(
            "{{ path: {AUDIT}, redact_query: [token, api_key, sig] }}"
        )),
    )
}

/// A value unique to this run and this purpose.
fn canary(what: &str) -> String {
    let n = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("canary{what}{n:x}{}", std::process::id())
}

fn raw_request(
    method: &str,
    target: &str,
    host: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Vec<u8> {
    let mut s = format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\n");
    for (k, v) in headers {
        s.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        s.push_str("Content-Type: application/json\r\n");
        s.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    s.push_str("Connection: close\r\n\r\n");
    s.push_str(body);
    s.into_bytes()
}

fn assert_absent(place: &str, hay: &str, needles: &[(&str, String)]) {
    for (name, n) in needles {
        if let Some(i) = hay.find(n.as_str()) {
            let start = hay[..i].char_indices().rev().nth(200).map_or(0, |(j, _)| j);
            let end = (i + n.len() + 200).min(hay.len());
            panic!(
                "the {name} appears in {place}:\n…{}…",
                hay.get(start..end).unwrap_or(hay)
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cookie_body_and_bearer_secrets_appear_in_no_audit_line_and_no_log_line() {
    let up = Upstream::start(Behaviour::Echo).await;
    let p = Proxy::start(&config(&up.url()), &[("RUST_LOG", "debug")]);
    let bot = issue(&p, json!({"agent": "bot", "ttl": "1h"})).await;
    let token_secret = bot.token.rsplit('_').next().unwrap().to_string();
    let cookie = canary("cookie");
    let body_secret = canary("body");
    let foreign = canary("bearer");
    let near_miss = canary("nearmiss");
    let host = p.addr.to_string();
    let auth = format!("Bearer {}", bot.token);
    let cookie_h = format!("session={cookie}; theme=dark");
    let body = format!(r#"{{"comment":"hello","password":"{body_secret}"}}"#);

    let mut sent: Vec<(&str, Resp)> = Vec::new();
    for (what, method, target, headers, body, want) in [
        (
            "allowed GET with a cookie",
            "GET",
            "/tickets/1",
            vec![
                ("Authorization", auth.as_str()),
                ("Cookie", cookie_h.as_str()),
            ],
            "",
            &[200][..],
        ),
        (
            "allowed POST with a secret body and a cookie",
            "POST",
            "/tickets/1/comments",
            vec![
                ("Authorization", auth.as_str()),
                ("Cookie", cookie_h.as_str()),
            ],
            body.as_str(),
            &[200][..],
        ),
        (
            "denied DELETE with a secret body",
            "DELETE",
            "/tickets/1",
            vec![
                ("Authorization", auth.as_str()),
                ("Cookie", cookie_h.as_str()),
            ],
            body.as_str(),
            // A body on DELETE is refused before the gate (issue 11, class 1).
            &[400][..],
        ),
        (
            "parked POST with a secret body",
            "POST",
            "/tickets/1/refund",
            vec![
                ("Authorization", auth.as_str()),
                ("Cookie", cookie_h.as_str()),
            ],
            body.as_str(),
            &[202][..],
        ),
        (
            "no route, with a cookie",
            "GET",
            "/elsewhere",
            vec![
                ("Authorization", auth.as_str()),
                ("Cookie", cookie_h.as_str()),
            ],
            "",
            &[403][..],
        ),
        (
            "canonical refusal with a cookie",
            "GET",
            "/tickets/%2e%2e/x",
            vec![
                ("Authorization", auth.as_str()),
                ("Cookie", cookie_h.as_str()),
            ],
            "",
            &[400][..],
        ),
    ] {
        let r =
            common::raw_request(p.addr, &raw_request(method, target, &host, &headers, body)).await;
        assert!(
            want.contains(&r.status),
            "{what}: status {} (want {want:?}): {}",
            r.status,
            r.text()
        );
        sent.push((what, r));
    }
    // Unauthenticated: a foreign bearer secret, and a near-miss of the real token.
    let foreign_h = format!("Bearer {foreign}");
    let near_h = format!("Bearer pcx_{}_{near_miss}", bot.id);
    for (what, a) in [
        ("a foreign bearer secret", foreign_h.as_str()),
        ("a wrong secret for a real token id", near_h.as_str()),
    ] {
        let r = common::raw_request(
            p.addr,
            &raw_request(
                "POST",
                "/tickets/1/comments",
                &host,
                &[("Authorization", a), ("Cookie", cookie_h.as_str())],
                &body,
            ),
        )
        .await;
        assert_eq!(r.status, 401, "{what}: {}", r.text());
        sent.push((what, r));
    }

    // The canaries were live: the upstream received the cookie and the body.
    let seen = up.seen();
    assert!(
        seen.iter()
            .any(|s| s.header_all("cookie").iter().any(|c| c.contains(&cookie))),
        "the cookie was forwarded: {seen:?}"
    );
    assert!(
        seen.iter().any(|s| s.body_bytes == body.len() as u64),
        "the body was forwarded: {seen:?}"
    );

    // Every request was recorded (so the audit check below covers them); the 401s are
    // within the sampler's initial burst.
    let path = p.path(AUDIT);
    for (what, r) in &sent {
        let id = r
            .header("x-request-id")
            .unwrap_or_else(|| panic!("{what}: no X-Request-Id"));
        wait_request_record(&path, id).await;
        assert!(
            p.wait_for_log(id, Duration::from_secs(5)).await,
            "{what}: its request id is not in the log"
        );
    }
    let logs = p.logs_synced().await;
    assert!(
        logs.contains("DEBUG"),
        "RUST_LOG=debug produced no debug lines; the log check would be vacuous:\n{logs}"
    );
    let needles = [
        ("agent token", bot.token.clone()),
        ("agent token secret", token_secret),
        ("cookie value", cookie),
        ("body secret", body_secret),
        ("foreign bearer secret", foreign),
        ("near-miss token secret", near_miss),
    ];
    let audit = std::fs::read_to_string(&path).unwrap();
    assert_absent("the audit file", &audit, &needles);
    assert_absent("the proxy's log (RUST_LOG=debug)", &logs, &needles);
    for r in records_of(&path) {
        assert!(
            !r.to_string().contains("hello"),
            "a request body in the audit record {r}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn redact_query_values_are_redacted_in_the_audit_path() {
    let up = Upstream::start(Behaviour::Fixed).await;
    let p = Proxy::start(&config(&up.url()), &[("RUST_LOG", "debug")]);
    let bot = issue(&p, json!({"agent": "bot", "ttl": "1h"})).await;
    let path = p.path(AUDIT);
    let host = p.addr.to_string();
    let q = |n: &str| canary(&format!("q{n}"));
    let (q1, q2, q3, q4, q5, q6) = (q("1"), q("2"), q("3"), q("4"), q("5"), q("6"));
    let auth = format!("Bearer {}", bot.token);

    let cases: Vec<(&str, &str, String, bool, u16, String)> = vec![
        (
            "allowed",
            "GET",
            format!("/tickets/1?token={q1}&x=1&sig={q2}&api_key={q3}&page=2"),
            true,
            200,
            "/tickets/1?token=REDACTED&x=1&sig=REDACTED&api_key=REDACTED&page=2".into(),
        ),
        (
            "denied",
            "DELETE",
            format!("/tickets/1?sig={q4}&keep=yes"),
            true,
            403,
            "/tickets/1?sig=REDACTED&keep=yes".into(),
        ),
        (
            "unauthenticated",
            "GET",
            format!("/tickets/1?token={q5}"),
            false,
            401,
            "/tickets/1?token=REDACTED".into(),
        ),
        (
            "canonical refusal",
            "GET",
            format!("/tickets/%2e%2e/x?api_key={q6}"),
            true,
            400,
            "/tickets/%2e%2e/x?api_key=REDACTED".into(),
        ),
    ];
    for (what, method, target, with_token, status, want_path) in &cases {
        let headers: Vec<(&str, &str)> = if *with_token {
            vec![("Authorization", auth.as_str())]
        } else {
            vec![]
        };
        let r =
            common::raw_request(p.addr, &raw_request(method, target, &host, &headers, "")).await;
        assert_eq!(r.status, *status, "{what}: {}", r.text());
        let id = r.header("x-request-id").unwrap();
        let rec = wait_request_record(&path, id).await;
        assert_eq!(
            rec["path"].as_str(),
            Some(want_path.as_str()),
            "{what}: audit path in {rec}"
        );
        assert_eq!(with_request_id(&path, id).len(), 1);
    }
    // The allowed request went upstream with its query intact (redaction is for the record).
    assert!(
        up.seen().iter().any(|s| s.target.contains(&q1)),
        "the upstream got the query as sent: {:?}",
        up.seen()
    );
    let audit = std::fs::read_to_string(&path).unwrap();
    let needles: Vec<(&str, String)> = [&q1, &q2, &q3, &q4, &q5, &q6]
        .iter()
        .map(|v| ("redacted query value", v.to_string()))
        .collect();
    assert_absent("the audit file", &audit, &needles);
    // Nor are they logged, even at debug level.
    let logs = p.logs_synced().await;
    assert!(logs.contains("DEBUG"), "no debug lines:\n{logs}");
    assert_absent("the proxy's log (RUST_LOG=debug)", &logs, &needles);
}
