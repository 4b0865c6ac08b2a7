//! Canaries: a live agent token and an upstream secret (`value_env`) go through allowed,
//! denied, malformed, unreachable-upstream and admin-port requests with `RUST_LOG=debug`;
//! neither may then appear in the proxy's logs, in any response the client got, in the
//! audit file, or in the store (the redb file's bytes; every redis key and value).

use crate::common;

use crate::common::{Behaviour, Proxy, Resp, Upstream, OPERATOR_SECRET};
use crate::support::admin::{admin_call, call, issue, Issued};
use crate::support::redis::{random_prefix, RedisServer};
use serde_json::json;
use std::time::Duration;

fn canary_upstream_secret() -> String {
    // Random per run so nothing else could produce it by accident.
    format!("canary-upstream-{}", random_prefix().trim_end_matches(':'))
}

fn config(store: &str, up: &Upstream, dead: std::net::SocketAddr) -> String {
    format!(
        r#"listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
{store}
audit: {{ path: data/audit.jsonl }}
operators:
  - {{ name: tester, token_sha256: "{op}", roles: [viewer, approver, admin] }}
upstreams:
  api:
    url: {url}
    inject: {{ header: Authorization, value_env: CANARY_UPSTREAM_SECRET }}
    tenant_header: X-Tenant-Id
  dead:
    url: http://{dead}
    inject: {{ header: X-Api-Key, value_env: CANARY_UPSTREAM_SECRET }}
    timeouts: {{ connect: 500ms, response: 2s }}
routes:
  - prefix: /tickets
    upstream: api
    tool_prefix: tickets
    paths: ["/tickets/{{id}}"]
  - {{ prefix: /gone, upstream: dead, tool_prefix: gone }}
profiles:
  drafter:
    tools: ["tickets.*", "gone.*"]
    max_risk: medium
    deny: ["*.delete"]
agents:
  bot: {{ profile: drafter, tenant: acme }}
"#,
        op = common::operator_hash(),
        url = up.url(),
    )
}

/// Everything a client saw, for the leak check.
struct Seen {
    responses: Vec<(String, Resp)>,
}

impl Seen {
    fn push(&mut self, what: &str, r: Resp) -> &Resp {
        self.responses.push((what.to_string(), r));
        &self.responses.last().unwrap().1
    }
}

/// Drives the canary token through every kind of request; returns the responses.
async fn exercise(p: &Proxy, up: &Upstream, t: &Issued, upstream_secret: &str) -> Seen {
    let mut seen = Seen {
        responses: Vec::new(),
    };
    let tok = &t.token;
    let host = p.addr.to_string();

    let r = seen.push("allowed", call(p.addr, "GET", "/tickets/1", tok).await);
    assert_eq!(r.status, 200, "allowed: {}", r.text());
    // The canary is live: the upstream did receive the injected secret.
    assert_eq!(
        up.last().header("authorization"),
        Some(upstream_secret),
        "the upstream secret is injected"
    );
    let r = seen.push("denied", call(p.addr, "DELETE", "/tickets/1", tok).await);
    assert_eq!(r.status, 403, "denied: {}", r.text());
    let r = seen.push("no route", call(p.addr, "GET", "/elsewhere", tok).await);
    assert_eq!(r.status, 403, "no route: {}", r.text());
    let r = seen.push(
        "internal",
        call(p.addr, "GET", "/_portcullis/tools", tok).await,
    );
    assert_eq!(r.status, 200, "tools: {}", r.text());
    seen.push(
        "internal 404",
        call(p.addr, "GET", "/_portcullis/nothing", tok).await,
    );
    let r = seen.push(
        "unreachable upstream",
        call(p.addr, "GET", "/gone", tok).await,
    );
    assert!(
        r.status >= 500,
        "unreachable upstream: {} {}",
        r.status,
        r.text()
    );
    let r = seen.push(
        "canonical refusal",
        common::raw_request(
            p.addr,
            &common::raw_get("GET", b"/tickets/%2e%2e/x", &host, tok, ""),
        )
        .await,
    );
    assert_eq!(r.status, 400, "refused target: {}", r.text());
    for (what, extra) in [
        ("no scheme", format!("Authorization: {tok}\r\n")),
        ("basic scheme", format!("Authorization: Basic {tok}\r\n")),
        (
            "two headers",
            format!("Authorization: Bearer {tok}\r\nAuthorization: Bearer {tok}\r\n"),
        ),
        ("tampered", format!("Authorization: Bearer {tok}0\r\n")),
        (
            "agent token as cookie",
            format!("Cookie: session={tok}\r\nAuthorization: Bearer {tok}\r\n"),
        ),
    ] {
        let r = seen.push(
            what,
            common::raw_request(
                p.addr,
                &common::raw_get("GET", b"/tickets/1", &host, "", &extra),
            )
            .await,
        );
        assert!(
            r.status == 401 || r.status == 200,
            "{what}: {} {}",
            r.status,
            r.text()
        );
    }
    // The agent token on the admin port.
    for path in ["/policy", "/tokens", "/switches"] {
        let r = seen.push(
            "agent token on admin",
            admin_call(p.admin, "GET", path, tok, None).await,
        );
        assert_eq!(r.status, 403, "agent token on admin {path}: {}", r.text());
    }
    seen.push(
        "token list",
        admin_call(p.admin, "GET", "/tokens", OPERATOR_SECRET, None).await,
    );
    // Revoked, then used again.
    let r = seen.push(
        "revoke",
        admin_call(
            p.admin,
            "DELETE",
            &format!("/tokens/{}", t.id),
            OPERATOR_SECRET,
            None,
        )
        .await,
    );
    assert_eq!(r.status, 200, "revoke: {}", r.text());
    let r = seen.push("revoked", call(p.addr, "GET", "/tickets/1", tok).await);
    assert_eq!(r.status, 401, "revoked: {}", r.text());
    seen
}

/// The parts of a canary token that must never leak: the whole token and its secret.
fn needles(t: &Issued, upstream_secret: &str) -> Vec<(String, String)> {
    let secret = t
        .token
        .rsplit_once('_')
        .map(|(_, s)| s.to_string())
        .expect("pcx_<id>_<secret>");
    assert!(secret.len() >= 32, "the token's secret part: {secret}");
    vec![
        ("agent token".into(), t.token.clone()),
        ("agent token secret".into(), secret),
        ("upstream secret".into(), upstream_secret.to_string()),
    ]
}

fn assert_absent(place: &str, hay: &[u8], needles: &[(String, String)]) {
    for (name, n) in needles {
        if let Some(i) = hay.windows(n.len()).position(|w| w == n.as_bytes()) {
            let start = i.saturating_sub(200);
            let end = (i + n.len() + 200).min(hay.len());
            panic!(
                "the {name} appears in {place}:\n…{}…",
                String::from_utf8_lossy(&hay[start..end])
            );
        }
    }
}

fn check_client_and_logs(p: &Proxy, seen: &Seen, needles: &[(String, String)], id: &str) {
    for (what, r) in &seen.responses {
        assert_absent(
            &format!("the response to `{what}`"),
            r.all_text().as_bytes(),
            needles,
        );
    }
    let logs = p.logs();
    assert!(
        logs.contains("DEBUG") || logs.contains("\"level\":\"DEBUG\""),
        "RUST_LOG=debug produced no debug lines; the log check would be vacuous:\n{logs}"
    );
    assert!(
        logs.contains(id),
        "the credential id is not in the logs either; are the logs captured?\n{logs}"
    );
    assert_absent(
        "the proxy's logs (RUST_LOG=debug)",
        logs.as_bytes(),
        needles,
    );
    assert_absent("the audit file", p.audit_text().as_bytes(), needles);
}

fn sha256_hex(s: &str) -> String {
    hex::encode(<sha2::Sha256 as sha2::Digest>::digest(s.as_bytes()))
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// The embedded store, with or without a token pepper.
async fn embedded_run(pepper: Option<&str>) {
    let up = Upstream::start(Behaviour::Fixed).await;
    let secret = canary_upstream_secret();
    let dead = common::dead_port();
    let store = match pepper {
        Some(_) => "store: { embedded: data/p.redb, token_pepper_env: CANARY_PEPPER }",
        None => "store: { embedded: data/p.redb }",
    };
    let mut env = vec![
        ("CANARY_UPSTREAM_SECRET", secret.as_str()),
        ("RUST_LOG", "debug"),
    ];
    if let Some(pp) = pepper {
        env.push(("CANARY_PEPPER", pp));
    }
    let mut p = Proxy::start(&config(store, &up, dead), &env);
    let t = issue(&p, json!({"agent": "bot", "ttl": "1h"})).await;
    let seen = exercise(&p, &up, &t, &secret).await;
    let mut needles = needles(&t, &secret);
    if let Some(pp) = pepper {
        needles.push(("token pepper".into(), pp.to_string()));
    }
    check_client_and_logs(&p, &seen, &needles, &t.id);

    let status = p.terminate(Duration::from_secs(20)).await;
    assert!(status.is_some(), "the proxy did not exit on SIGTERM");
    let bytes = std::fs::read(p.path("data/p.redb")).expect("the redb file");
    assert!(
        contains(&bytes, &t.id),
        "the token id is not in the redb file; is this the store the proxy used?"
    );
    assert_absent("the redb file", &bytes, &needles);
    // At rest the credential is a hash: plain SHA-256 without a pepper, and with a
    // pepper not the plain SHA-256 (an offline guess needs the pepper).
    let token_secret = t.token.rsplit_once('_').unwrap().1;
    let plain = [sha256_hex(token_secret), sha256_hex(&t.token)];
    let has_plain = plain.iter().any(|h| contains(&bytes, h));
    match pepper {
        None => assert!(has_plain, "no SHA-256 of the token in the store"),
        Some(_) => assert!(
            !has_plain,
            "with a pepper the store holds the plain SHA-256"
        ),
    }
    // The logs written during shutdown too.
    assert_absent(
        "the proxy's logs after shutdown",
        p.logs().as_bytes(),
        &needles,
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn canaries_never_leak_with_the_embedded_store() {
    embedded_run(None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn canaries_never_leak_with_a_token_pepper() {
    let pepper = format!("canary-pepper-{}", random_prefix().trim_end_matches(':'));
    embedded_run(Some(&pepper)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn canaries_never_leak_with_the_redis_store() {
    let redis = RedisServer::start();
    let up = Upstream::start(Behaviour::Fixed).await;
    let secret = canary_upstream_secret();
    let dead = common::dead_port();
    let store = format!(
        "store:\n  redis: {{ url_env: REDIS_URL, key_prefix: \"{}\" }}",
        random_prefix()
    );
    let url = redis.url();
    let p = Proxy::start(
        &config(&store, &up, dead),
        &[
            ("CANARY_UPSTREAM_SECRET", secret.as_str()),
            ("REDIS_URL", url.as_str()),
            ("RUST_LOG", "debug"),
        ],
    );
    let t = issue(&p, json!({"agent": "bot", "ttl": "1h"})).await;
    let seen = exercise(&p, &up, &t, &secret).await;
    let needles = needles(&t, &secret);
    check_client_and_logs(&p, &seen, &needles, &t.id);

    let dump = redis.dump();
    assert!(
        dump.contains(&t.id),
        "the token id is not in the redis dump; is this the store the proxy used?\n{dump}"
    );
    assert_absent(
        "the redis dump (KEYS * and values)",
        dump.as_bytes(),
        &needles,
    );
}
