//! Canaries: a live agent token, an upstream secret (`value_env`) and the operator's secret
//! go through allowed, denied, parked, malformed, unreachable-upstream and admin-port
//! requests (and near misses of the operator secret) with `RUST_LOG=debug`; none may then
//! appear in the proxy's logs, in any response the client got (error messages included),
//! in the audit file, or in the store (the redb file's bytes; every redis key and value).
//! The digest the store keeps of the token's secret (SHA-256, or HMAC-SHA256 with a
//! pepper) is in the store and nowhere else: not in a log line, an audit record, a parked
//! record, a response — and `GET /tokens` shows no hash at all.

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
        r#"{head}upstreams:
  api:
    url: {url}
    inject: {{ header: Authorization, value_env: CANARY_UPSTREAM_SECRET }}
    tenant_header: X-Tenant-Id
    # Cookies are forwarded here, yet a parked record still never keeps one (README
    # "What is kept"): the park below sends the token as a cookie.
    cookies: pass
  dead:
    url: http://{dead}
    inject: {{ header: X-Api-Key, value_env: CANARY_UPSTREAM_SECRET }}
    timeouts: {{ connect: 500ms, response: 2s }}
routes:
  - prefix: /tickets
    upstream: api
    tool_prefix: tickets
    paths: ["/tickets/{{id}}"]
    tools:
      - {{ match: "POST /tickets/{{id}}/refund", name: tickets.refund, risk: critical }}
  - {{ prefix: /gone, upstream: dead, tool_prefix: gone }}
profiles:
  drafter:
    tools: ["tickets.get", "tickets.list", "gone.*"]
    max_risk: medium
    approval: ["tickets.refund"]
    deny: ["*.delete"]
agents:
  bot: {{ profile: drafter, tenant: acme }}
"#,
        head = common::Head::new().store(store),
        url = up.url(),
    )
}

/// Everything a client saw, for the leak check, and the approval the agent parked.
struct Seen {
    responses: Vec<(String, Resp)>,
    approval_id: String,
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
        approval_id: String::new(),
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
    // A park, with the token also offered as a cookie: the parked record keeps the
    // request's headers, never a credential.
    let park = common::request("POST", p.addr, "/tickets/9/refund", tok)
        .header("cookie", format!("session={tok}"))
        .header("x-note", "kept-header")
        .header("content-type", "application/json")
        .body(common::full("{\"amount\":1}"))
        .unwrap();
    let r = seen.push(
        "park",
        common::send(p.addr, park).await.expect("park request"),
    );
    assert_eq!(r.status, 202, "park: {}", r.text());
    let id = r.json()["approval_id"]
        .as_str()
        .expect("approval_id")
        .to_string();
    let r = seen.push(
        "the parked record (operator view)",
        admin_call(
            p.admin,
            "GET",
            &format!("/approvals/{id}"),
            OPERATOR_SECRET,
            None,
        )
        .await,
    );
    assert_eq!(r.status, 200, "GET /approvals/{id}: {}", r.text());
    assert!(
        r.text().contains("kept-header"),
        "the view shows the kept headers (so the check covers them): {}",
        r.text()
    );
    seen.push(
        "approvals list",
        admin_call(p.admin, "GET", "/approvals", OPERATOR_SECRET, None).await,
    );
    let r = seen.push(
        "the agent's view of its approval",
        call(p.addr, "GET", &format!("/_portcullis/approvals/{id}"), tok).await,
    );
    assert_eq!(r.status, 200, "agent poll: {}", r.text());
    seen.approval_id = id;
    // Near misses of the operator secret, and the operator secret where it does not
    // belong: refused without echoing what was sent.
    let near = near_miss_operator_secret();
    let r = seen.push(
        "near-miss operator secret on admin",
        admin_call(p.admin, "GET", "/tokens", &near, None).await,
    );
    assert_eq!(r.status, 401, "near-miss operator secret: {}", r.text());
    let r = seen.push(
        "near-miss operator secret deciding",
        admin_call(
            p.admin,
            "POST",
            &format!("/approvals/{}/approve", seen.approval_id),
            &near,
            Some(&json!({"comment": "x"})),
        )
        .await,
    );
    assert_eq!(r.status, 401, "near-miss operator secret: {}", r.text());
    let r = seen.push(
        "operator secret on the agent port",
        call(p.addr, "GET", "/tickets/1", OPERATOR_SECRET).await,
    );
    assert_eq!(
        r.status,
        401,
        "operator secret as an agent token: {}",
        r.text()
    );
    let r = seen.push(
        "unreachable upstream",
        call(p.addr, "GET", "/gone", tok).await,
    );
    assert_eq!(
        (r.status, r.reason().as_deref()),
        (502, Some("upstream_unreachable")),
        "unreachable upstream: {}",
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
    // (what, headers, status): malformed credentials are 401; a cookie beside a good
    // bearer token is ignored (never a second credential) and the request is served.
    for (what, extra, want) in [
        ("no scheme", format!("Authorization: {tok}\r\n"), 401),
        (
            "basic scheme",
            format!("Authorization: Basic {tok}\r\n"),
            401,
        ),
        (
            "two headers",
            format!("Authorization: Bearer {tok}\r\nAuthorization: Bearer {tok}\r\n"),
            401,
        ),
        ("tampered", format!("Authorization: Bearer {tok}0\r\n"), 401),
        (
            "agent token as cookie",
            format!("Cookie: session={tok}\r\nAuthorization: Bearer {tok}\r\n"),
            200,
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
        assert_eq!(r.status, want, "{what}: {}", r.text());
    }
    // The agent token on the admin port.
    for path in ["/policy", "/tokens", "/switches"] {
        let r = seen.push(
            "agent token on admin",
            admin_call(p.admin, "GET", path, tok, None).await,
        );
        assert_eq!(r.status, 403, "agent token on admin {path}: {}", r.text());
    }
    let r = seen.push(
        "token list",
        admin_call(p.admin, "GET", "/tokens", OPERATOR_SECRET, None).await,
    );
    check_token_list(r, &t.id);
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

/// The operator secret with its last character changed.
fn near_miss_operator_secret() -> String {
    let mut s = OPERATOR_SECRET.to_string();
    let last = s.pop().unwrap();
    s.push(if last == '0' { '1' } else { '0' });
    s
}

fn secret_of(t: &Issued) -> String {
    let secret = t
        .token
        .rsplit_once('_')
        .map(|(_, s)| s.to_string())
        .expect("pcx_<id>_<secret>");
    assert!(secret.len() >= 32, "the token's secret part: {secret}");
    secret
}

/// What must never leak anywhere, the store included: the whole token, its secret, the
/// upstream secret, the operator secret (and a near miss of it).
fn needles(t: &Issued, upstream_secret: &str) -> Vec<(String, String)> {
    vec![
        ("agent token".into(), t.token.clone()),
        ("agent token secret".into(), secret_of(t)),
        ("upstream secret".into(), upstream_secret.to_string()),
        ("operator secret".into(), OPERATOR_SECRET.to_string()),
        (
            "near-miss operator secret".into(),
            near_miss_operator_secret(),
        ),
    ]
}

/// The digest the store keeps of the token's secret (DESIGN.md: hashed at rest; with a
/// pepper, HMAC-SHA256 keyed by it), computed here independently of the proxy.
fn stored_digest(t: &Issued, pepper: Option<&str>) -> String {
    let secret = secret_of(t);
    match pepper {
        None => sha256_hex(&secret),
        Some(p) => {
            use hmac::Mac;
            let mut m = <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(p.as_bytes())
                .expect("any key length");
            m.update(secret.as_bytes());
            hex::encode(m.finalize().into_bytes())
        }
    }
}

/// `GET /tokens` lists the credential by id and never shows a secret or a hash: no
/// field named like one, no value that looks like a digest.
fn check_token_list(r: &Resp, id: &str) {
    assert_eq!(r.status, 200, "GET /tokens: {}", r.text());
    let v = r.json();
    let tokens = v["tokens"]
        .as_array()
        .unwrap_or_else(|| panic!("GET /tokens: no `tokens` array in {v}"));
    assert!(
        tokens.iter().any(|x| x["id"].as_str() == Some(id)),
        "GET /tokens does not list {id}: {v}"
    );
    fn walk(v: &serde_json::Value, path: &str, bad: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(o) => {
                for (k, x) in o {
                    let kl = k.to_ascii_lowercase();
                    if kl.contains("hash") || kl.contains("secret") || kl.contains("sha") {
                        bad.push(format!("{path}.{k}"));
                    }
                    walk(x, &format!("{path}.{k}"), bad);
                }
            }
            serde_json::Value::Array(a) => {
                for (i, x) in a.iter().enumerate() {
                    walk(x, &format!("{path}[{i}]"), bad);
                }
            }
            serde_json::Value::String(s)
                if s.len() >= 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) =>
            {
                bad.push(format!("{path} = {s}"));
            }
            _ => {}
        }
    }
    let mut bad = Vec::new();
    walk(&v, "", &mut bad);
    assert!(
        bad.is_empty(),
        "GET /tokens shows secrets or hashes: {bad:?} in {v}"
    );
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

async fn check_client_and_logs(p: &Proxy, seen: &Seen, needles: &[(String, String)], id: &str) {
    for (what, r) in &seen.responses {
        assert_absent(
            &format!("the response to `{what}`"),
            r.all_text().as_bytes(),
            needles,
        );
    }
    let logs = p.logs_synced().await;
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

/// Every needle plus the stored digest of the token's secret: for places other than the
/// credential's own record in the store.
fn with_digest(needles: &[(String, String)], digest: &str) -> Vec<(String, String)> {
    let mut v = needles.to_vec();
    v.push((
        "stored digest of the token secret".into(),
        digest.to_string(),
    ));
    v
}

/// The embedded store, with or without a token pepper.
async fn embedded_run(pepper: Option<&str>) {
    let up = Upstream::start(Behaviour::Fixed).await;
    let secret = canary_upstream_secret();
    let dead = common::dead_port();
    let store = match pepper {
        Some(_) => "{ embedded: data/p.redb, token_pepper_env: CANARY_PEPPER }",
        None => "{ embedded: data/p.redb }",
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
    let digest = stored_digest(&t, pepper);
    let everywhere_else = with_digest(&needles, &digest);
    check_client_and_logs(&p, &seen, &everywhere_else, &t.id).await;

    let status = p.terminate(Duration::from_secs(20)).await;
    assert!(status.is_some(), "the proxy did not exit on SIGTERM");
    let bytes = std::fs::read(p.path("data/p.redb")).expect("the redb file");
    assert!(
        contains(&bytes, &t.id),
        "the token id is not in the redb file; is this the store the proxy used?"
    );
    assert_absent("the redb file", &bytes, &needles);
    // At rest the credential is its digest (the canary is live: it is in the store), and
    // with a pepper not the plain SHA-256 (an offline guess needs the pepper).
    assert!(
        contains(&bytes, &digest),
        "the store does not hold the digest of the token's secret"
    );
    let plain = sha256_hex(&secret_of(&t));
    if pepper.is_some() {
        assert!(
            !contains(&bytes, &plain),
            "with a pepper the store holds the plain SHA-256"
        );
    }
    // The parked record, its body and any result: no credential, no digest.
    let db = redb::Database::open(p.path("data/p.redb")).expect("open the redb file");
    let tx = redb::ReadableDatabase::begin_read(&db).expect("begin_read");
    let mut parked = 0;
    for name in ["approvals", "approval_bodies", "approval_results"] {
        let def: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new(name);
        let Ok(table) = tx.open_table(def) else {
            continue;
        };
        for row in redb::ReadableTable::iter(&table).expect("iterate") {
            let (k, v) = row.expect("row");
            if k.value() == seen.approval_id && name == "approvals" {
                parked += 1;
            }
            assert_absent(
                &format!("the stored `{name}` row {}", k.value()),
                v.value(),
                &everywhere_else,
            );
        }
    }
    assert_eq!(
        parked, 1,
        "the parked record is not in the `approvals` table"
    );
    // The logs written during shutdown too.
    assert_absent(
        "the proxy's logs after shutdown",
        p.logs_synced().await.as_bytes(),
        &everywhere_else,
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
        "{{ redis: {{ url_env: REDIS_URL, key_prefix: \"{}\" }} }}",
        random_prefix()
    );
    // The proxy connects as an ACL user whose password is a canary too (the `default`
    // user stays open for the dump below).
    let redis_password = format!("canary-redis-pw-{}", random_prefix().trim_end_matches(':'));
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("pcx")
        .arg("on")
        .arg(format!(">{redis_password}"))
        .arg("~*")
        .arg("&*")
        .arg("+@all")
        .query(&mut redis.conn())
        .expect("ACL SETUSER");
    let url = redis
        .url()
        .replace("redis://", &format!("redis://pcx:{redis_password}@"));
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
    let mut needles = needles(&t, &secret);
    needles.push(("redis password".into(), redis_password.clone()));
    let digest = stored_digest(&t, None);
    let everywhere_else = with_digest(&needles, &digest);
    check_client_and_logs(&p, &seen, &everywhere_else, &t.id).await;

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
    assert!(
        dump.contains(&digest),
        "the redis store does not hold the digest of the token's secret"
    );
    // Only the credential's own record holds the digest: never an approval's keys.
    let approval_lines: Vec<&str> = dump
        .lines()
        .filter(|l| {
            l.split(" = ")
                .next()
                .is_some_and(|k| k.contains("approval"))
        })
        .collect();
    assert!(
        approval_lines
            .iter()
            .any(|l| l.contains(&seen.approval_id) && l.contains("tickets.refund")),
        "the parked record is not in the redis dump:\n{dump}"
    );
    assert_absent(
        "the stored approvals in redis",
        approval_lines.join("\n").as_bytes(),
        &everywhere_else,
    );
}
