//! The audit trail end to end, through the real `portcullis serve` binary and real hyper
//! upstreams: every request decision (allow with the upstream's status, each deny
//! reason, no_route, a canonical refusal, 401, 429, 502, park) writes exactly one record
//! with the fields DESIGN.md names; refusals are on disk before the response; operator
//! changes (token issued/revoked, pause/resume, agent disabled/enabled, mode, reload) are
//! recorded with the operator and policy versions; `X-Request-Id` is the record's
//! `request_id` and is in the log line; two replicas write distinct `node`s.

use crate::common;
use crate::support::audit as audit_support;

use crate::common::{Behaviour, Head, Proxy, Resp, Upstream};
use crate::support::admin::{call, issue, op_ok, policy_version, Issued};
use crate::support::audit::{
    assert_schema, lines_of, records_of, s, verify, wait_record, wait_request_record,
    with_request_id, StatusUpstream,
};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::path::PathBuf;

const AUDIT: &str = "audit/audit.jsonl";

fn config_text(node: &str, api: &str, codes: &str, dead: SocketAddr, extra_agent: bool) -> String {
    let spare = if extra_agent {
        "  spare: { profile: limited, tenant: acme }\n"
    } else {
        ""
    };
    format!(
        r#"{head}upstreams:
  api: {{ url: "{api}/v1", tenant_header: X-Tenant-Id }}
  codes: {{ url: "{codes}" }}
  down: {{ url: "http://{dead}", timeouts: {{ connect: 500ms, response: 2s }} }}
routes:
  - prefix: /tickets
    upstream: api
    tool_prefix: tickets
    paths: ["/tickets/{{id}}", "/tickets/{{id}}/comments"]
    sensitive_paths: ["/tickets/{{id}}/export"]
    tools:
      - {{ match: "POST /tickets/{{id}}/refund", name: tickets.refund, risk: critical }}
  - {{ prefix: /reports, upstream: api, tool_prefix: reports }}
  - {{ prefix: /codes, upstream: codes, tool_prefix: codes }}
  - {{ prefix: /down, upstream: down, tool_prefix: down }}
profiles:
  drafter:
    tools: ["tickets.get", "tickets.list", "tickets.comments.*", "tickets.export.*", "tickets.delete", "codes.*", "down.*"]
    max_risk: medium
    approval: ["tickets.refund"]
    deny: ["*.delete"]
  limited:
    tools: ["tickets.*"]
    max_risk: low
    rate_limit: {{ per_minute: 1 }}
agents:
  bot: {{ profile: drafter, tenant: acme }}
  slow: {{ profile: limited, tenant: globex }}
{spare}"#,
        head = Head::new()
            .node(node)
            .audit(&format!("{{ path: {AUDIT} }}")),
    )
}

struct Fixture {
    api: Upstream,
    codes: StatusUpstream,
    dead: SocketAddr,
    p: Proxy,
}

impl Fixture {
    async fn start(node: &str) -> Fixture {
        let api = Upstream::start(Behaviour::Echo).await;
        let codes = StatusUpstream::start().await;
        let dead = common::dead_port();
        let p = Proxy::start(
            &config_text(node, &api.url(), &codes.url(), dead, false),
            &[],
        );
        Fixture {
            api,
            codes,
            dead,
            p,
        }
    }

    fn audit(&self) -> PathBuf {
        self.p.path(AUDIT)
    }

    fn hits(&self) -> usize {
        self.api.hits() + self.codes.hits()
    }
}

/// What one request's record must say.
struct Want<'a> {
    what: &'a str,
    method: &'a str,
    /// The path (and query) the record must carry.
    path: &'a str,
    /// `None`: the request carried no valid credential.
    who: Option<(&'a Issued, &'a str, &'a str)>,
    tool: Option<&'a str>,
    risk: Option<&'a str>,
    decision: &'a str,
    reason: Option<&'a str>,
    upstream_status: Option<u16>,
}

/// Checks the record of `r` (found by its X-Request-Id) against `w`.
fn check_record(rec: &Value, r: &Resp, w: &Want, pv: &str, node: &str) {
    let what = w.what;
    assert_schema(what, rec);
    let rid = r
        .header("x-request-id")
        .unwrap_or_else(|| panic!("{what}: no X-Request-Id"));
    assert_eq!(s(what, rec, "request_id"), rid, "{what}: request_id");
    assert_eq!(s(what, rec, "event"), "request", "{what}: event in {rec}");
    assert_eq!(s(what, rec, "node"), node, "{what}: node in {rec}");
    assert_eq!(
        s(what, rec, "remote_addr"),
        "127.0.0.1",
        "{what}: remote_addr in {rec}"
    );
    assert_eq!(s(what, rec, "method"), w.method, "{what}: method in {rec}");
    assert_eq!(s(what, rec, "path"), w.path, "{what}: path in {rec}");
    match w.who {
        Some((t, agent, tenant)) => {
            assert_eq!(s(what, rec, "agent"), agent, "{what}: agent in {rec}");
            assert_eq!(
                s(what, rec, "credential"),
                t.id,
                "{what}: credential (token id) in {rec}"
            );
            assert_eq!(s(what, rec, "tenant"), tenant, "{what}: tenant in {rec}");
            let secret = t.token.rsplit('_').next().unwrap();
            assert!(
                !rec.to_string().contains(secret),
                "{what}: the token secret is in the record {rec}"
            );
        }
        None => {
            for k in ["agent", "credential", "tenant"] {
                assert!(
                    rec[k].is_null(),
                    "{what}: `{k}` without a credential: {rec}"
                );
            }
        }
    }
    assert_eq!(rec["tool"].as_str(), w.tool, "{what}: tool in {rec}");
    assert_eq!(rec["risk"].as_str(), w.risk, "{what}: risk in {rec}");
    assert_eq!(
        s(what, rec, "decision"),
        w.decision,
        "{what}: decision in {rec}"
    );
    if let Some(reason) = w.reason {
        assert_eq!(s(what, rec, "reason"), reason, "{what}: reason in {rec}");
        // The agent was told the same reason.
        if let Some(told) = r.reason() {
            assert_eq!(told, reason, "{what}: reason told to the agent");
        }
    }
    assert_eq!(
        s(what, rec, "policy_version"),
        pv,
        "{what}: policy_version (GET /policy) in {rec}"
    );
    assert_eq!(
        rec["status"].as_u64(),
        Some(u64::from(r.status)),
        "{what}: status in {rec}"
    );
    assert_eq!(
        rec["upstream_status"].as_u64(),
        w.upstream_status.map(u64::from),
        "{what}: upstream_status in {rec}"
    );
    assert!(
        rec["duration_us"].as_u64().is_some(),
        "{what}: duration_us in {rec}"
    );
}

/// A refusal's record is durable before the response: it is in the file the moment the
/// response arrived (no polling), exactly once.
fn durable_record(f: &Fixture, what: &str, r: &Resp) -> Value {
    let rid = r
        .header("x-request-id")
        .unwrap_or_else(|| panic!("{what}: no X-Request-Id; {}", r.text()));
    let found = with_request_id(&f.audit(), rid);
    assert_eq!(
        found.len(),
        1,
        "{what}: the refusal's record must be on disk when the response arrives (exactly one); \
         status {} body {}; file:\n{}",
        r.status,
        r.text(),
        std::fs::read_to_string(f.audit()).unwrap_or_default()
    );
    found.into_iter().next().unwrap()
}

async fn raw(f: &Fixture, method: &str, target: &str, token: &str, extra: &str) -> Resp {
    let host = f.p.addr.to_string();
    common::raw_request(
        f.p.addr,
        &common::raw_get(method, target.as_bytes(), &host, token, extra),
    )
    .await
}

async fn post_body(addr: SocketAddr, path: &str, token: &str, body: &str) -> Resp {
    common::send(
        addr,
        common::request("POST", addr, path, token)
            .header("content-type", "application/json")
            .body(common::full(body.to_string()))
            .unwrap(),
    )
    .await
    .unwrap_or_else(|e| panic!("POST {path}: {e}"))
}

// ---------------------------------------------------------------------------------------
// Request decisions
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn every_decision_kind_writes_exactly_one_record_with_its_fields() {
    let f = Fixture::start("node-one").await;
    let bot = issue(&f.p, json!({"agent": "bot", "ttl": "1h"})).await;
    let slow = issue(&f.p, json!({"agent": "slow", "ttl": "1h"})).await;
    let pv = policy_version(&f.p).await;
    let node = "node-one";
    let mut ids: Vec<String> = Vec::new();
    let b = Some((&bot, "bot", "acme"));

    // allow, with the upstream's own status (418 from the status upstream).
    let hits = f.hits();
    let r = call(f.p.addr, "GET", "/codes/418", &bot.token).await;
    assert_eq!(r.status, 418, "allow: the upstream's status: {}", r.text());
    assert_eq!(f.hits(), hits + 1, "allow reached the upstream once");
    let rec = wait_request_record(&f.audit(), r.header("x-request-id").unwrap()).await;
    check_record(
        &rec,
        &r,
        &Want {
            what: "allow (418)",
            method: "GET",
            path: "/codes/418",
            who: b,
            tool: Some("codes.get"),
            risk: Some("low"),
            decision: "allow",
            reason: None,
            upstream_status: Some(418),
        },
        &pv,
        node,
    );
    ids.push(s("allow", &rec, "request_id").into());

    // allow, 200 from the echo upstream.
    let r = call(f.p.addr, "GET", "/tickets/7", &bot.token).await;
    assert_eq!(r.status, 200, "allow: {}", r.text());
    let rec = wait_request_record(&f.audit(), r.header("x-request-id").unwrap()).await;
    check_record(
        &rec,
        &r,
        &Want {
            what: "allow (200)",
            method: "GET",
            path: "/tickets/7",
            who: b,
            tool: Some("tickets.get"),
            risk: Some("low"),
            decision: "allow",
            reason: None,
            upstream_status: Some(200),
        },
        &pv,
        node,
    );
    ids.push(s("allow", &rec, "request_id").into());

    // Denies: each durable before the response, none forwarded.
    for (what, method, path, tool, risk, reason) in [
        (
            "profile_deny",
            "DELETE",
            "/tickets/7",
            "tickets.delete",
            "high",
            "profile_deny",
        ),
        (
            "not_granted",
            "GET",
            "/reports",
            "reports.list",
            "low",
            "not_granted",
        ),
        (
            "risk_ceiling",
            "POST",
            "/tickets/7/export",
            "tickets.export.create",
            "high",
            "risk_ceiling",
        ),
    ] {
        let hits = f.hits();
        let r = call(f.p.addr, method, path, &bot.token).await;
        assert_eq!(r.status, 403, "{what}: {}", r.text());
        assert_eq!(f.hits(), hits, "{what}: a deny reached an upstream");
        let rec = durable_record(&f, what, &r);
        check_record(
            &rec,
            &r,
            &Want {
                what,
                method,
                path,
                who: b,
                tool: Some(tool),
                risk: Some(risk),
                decision: "deny",
                reason: Some(reason),
                upstream_status: None,
            },
            &pv,
            node,
        );
        ids.push(s(what, &rec, "request_id").into());
    }

    // no_route.
    let r = call(f.p.addr, "GET", "/nowhere/1", &bot.token).await;
    assert_eq!(r.status, 403, "no_route: {}", r.text());
    let rec = durable_record(&f, "no_route", &r);
    check_record(
        &rec,
        &r,
        &Want {
            what: "no_route",
            method: "GET",
            path: "/nowhere/1",
            who: b,
            tool: None,
            risk: None,
            decision: "deny",
            reason: Some("no_route"),
            upstream_status: None,
        },
        &pv,
        node,
    );
    ids.push(s("no_route", &rec, "request_id").into());

    // A canonical refusal with a valid credential: 400, attributed to the agent.
    let hits = f.hits();
    let r = raw(&f, "GET", "/tickets/%2e%2e/x", &bot.token, "").await;
    assert_eq!(r.status, 400, "canon refusal: {}", r.text());
    assert_eq!(f.hits(), hits, "canon refusal was forwarded");
    let told = r.reason().expect("a canon refusal names its reason");
    let rec = durable_record(&f, "canon refusal", &r);
    check_record(
        &rec,
        &r,
        &Want {
            what: "canon refusal",
            method: "GET",
            path: "/tickets/%2e%2e/x",
            who: b,
            tool: None,
            risk: None,
            decision: "deny",
            reason: Some(&told),
            upstream_status: None,
        },
        &pv,
        node,
    );
    ids.push(s("canon", &rec, "request_id").into());

    // 401 without a credential: sampled into the log (the first ones always are).
    let r = call(f.p.addr, "GET", "/tickets/7", "").await;
    assert_eq!(r.status, 401, "unauthenticated: {}", r.text());
    let rec = wait_request_record(&f.audit(), r.header("x-request-id").unwrap()).await;
    check_record(
        &rec,
        &r,
        &Want {
            what: "401",
            method: "GET",
            path: "/tickets/7",
            who: None,
            tool: None,
            risk: None,
            decision: "deny",
            reason: None,
            upstream_status: None,
        },
        &pv,
        node,
    );
    ids.push(s("401", &rec, "request_id").into());

    // 429: `slow` may make one call a minute.
    let r = call(f.p.addr, "GET", "/tickets/7", &slow.token).await;
    assert_eq!(r.status, 200, "slow's first call: {}", r.text());
    let first = wait_request_record(&f.audit(), r.header("x-request-id").unwrap()).await;
    ids.push(s("slow", &first, "request_id").into());
    let hits = f.hits();
    let r = call(f.p.addr, "GET", "/tickets/7", &slow.token).await;
    assert_eq!(r.status, 429, "rate limited: {}", r.text());
    assert_eq!(f.hits(), hits, "a rate-limited request was forwarded");
    let rec = durable_record(&f, "429", &r);
    check_record(
        &rec,
        &r,
        &Want {
            what: "429",
            method: "GET",
            path: "/tickets/7",
            who: Some((&slow, "slow", "globex")),
            tool: Some("tickets.get"),
            risk: Some("low"),
            decision: "deny",
            reason: Some("rate_limited"),
            upstream_status: None,
        },
        &pv,
        node,
    );
    ids.push(s("429", &rec, "request_id").into());

    // 502: the upstream is down. An error, not a deny, and no upstream status.
    let r = call(f.p.addr, "GET", "/down/1", &bot.token).await;
    assert_eq!(r.status, 502, "upstream down: {}", r.text());
    let rec = wait_request_record(&f.audit(), r.header("x-request-id").unwrap()).await;
    check_record(
        &rec,
        &r,
        &Want {
            what: "502",
            method: "GET",
            path: "/down/1",
            who: b,
            tool: Some("down.get"),
            risk: Some("low"),
            decision: "error",
            reason: r.reason().as_deref(),
            upstream_status: None,
        },
        &pv,
        node,
    );
    ids.push(s("502", &rec, "request_id").into());

    // Finally: still exactly one record per request, and the file is one valid chain.
    for id in &ids {
        assert_eq!(
            with_request_id(&f.audit(), id).len(),
            1,
            "request {id}: not exactly one record"
        );
    }
    let recs = records_of(&f.audit());
    for w in recs.windows(2) {
        assert_eq!(
            w[1]["seq"].as_u64(),
            w[0]["seq"].as_u64().map(|n| n + 1),
            "seq is not consecutive: {} then {}",
            w[0],
            w[1]
        );
        assert_eq!(w[1]["prev"], w[0]["hash"], "prev does not link: {}", w[1]);
    }
    let o = verify(&[f.audit()], &[], &[]);
    assert!(
        o.status.success(),
        "audit verify on the live log: {}",
        audit_support::out_text(&o)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn park_decision_writes_one_durable_record() {
    let f = Fixture::start("park-node").await;
    let bot = issue(&f.p, json!({"agent": "bot", "ttl": "1h"})).await;
    let pv = policy_version(&f.p).await;
    let node = "park-node";
    let b = Some((&bot, "bot", "acme"));
    // Park: 202, decision `park`, reason `approval_required`, durable before the answer.
    let body = r#"{"amount":12}"#;
    let hits = f.hits();
    let r = post_body(f.p.addr, "/tickets/7/refund", &bot.token, body).await;
    assert_eq!(r.status, 202, "park: {}", r.text());
    assert_eq!(f.hits(), hits, "a parked request was forwarded");
    assert_eq!(
        r.header("portcullis-decision"),
        Some("park"),
        "park: Portcullis-Decision"
    );
    let rec = durable_record(&f, "park", &r);
    check_record(
        &rec,
        &r,
        &Want {
            what: "park",
            method: "POST",
            path: "/tickets/7/refund",
            who: b,
            tool: Some("tickets.refund"),
            risk: Some("critical"),
            decision: "park",
            reason: Some("approval_required"),
            upstream_status: None,
        },
        &pv,
        node,
    );
    let v = r.json();
    let id = v["approval_id"]
        .as_str()
        .unwrap_or_else(|| panic!("park: no approval_id in {v}"));
    assert_eq!(
        rec["approval_id"].as_str(),
        Some(id),
        "park: approval_id in {rec}"
    );
    assert_eq!(
        rec["body_sha256"].as_str(),
        Some(hex::encode(Sha256::digest(body)).as_str()),
        "park: body_sha256 in {rec}"
    );
    assert!(
        !std::fs::read_to_string(f.audit())
            .unwrap()
            .contains("amount"),
        "the parked body is in the audit file"
    );
}

// ---------------------------------------------------------------------------------------
// Operator changes
// ---------------------------------------------------------------------------------------

/// The number of complete lines in the audit file now.
fn mark(f: &Fixture) -> usize {
    lines_of(&f.audit()).len()
}

/// The records appended since `mark`; they must be on disk by the time the admin API
/// answered, so this is read right after the answer, without polling.
fn since(f: &Fixture, mark: usize) -> Vec<Value> {
    let recs = records_of(&f.audit());
    recs[mark.min(recs.len())..].to_vec()
}

fn one_event<'a>(what: &str, recs: &'a [Value], event: &str) -> &'a Value {
    let found: Vec<&Value> = recs
        .iter()
        .filter(|r| r["event"].as_str() == Some(event))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "{what}: want exactly one `{event}` record on disk when the admin API answered; got {recs:#?}"
    );
    let r = found[0];
    assert_schema(what, r);
    assert_eq!(
        r["operator"].as_str(),
        Some("tester"),
        "{what}: operator in {r}"
    );
    r
}

#[tokio::test(flavor = "multi_thread")]
async fn operator_changes_are_recorded_with_operator_and_policy_version() {
    let f = Fixture::start("ops-node").await;
    let pv = policy_version(&f.p).await;

    // token_issued: the id, never the secret.
    let m = mark(&f);
    let bot = issue(&f.p, json!({"agent": "bot", "ttl": "1h"})).await;
    let recs = since(&f, m);
    let r = one_event("token_issued", &recs, "token_issued");
    assert_eq!(r["credential"].as_str(), Some(bot.id.as_str()), "{r}");
    assert_eq!(r["agent"].as_str(), Some("bot"), "{r}");
    assert_eq!(r["tenant"].as_str(), Some("acme"), "{r}");
    assert_eq!(r["policy_version"].as_str(), Some(pv.as_str()), "{r}");
    assert_eq!(r["node"].as_str(), Some("ops-node"), "{r}");
    let secret = bot.token.rsplit('_').next().unwrap();
    assert!(
        !std::fs::read_to_string(f.audit()).unwrap().contains(secret),
        "the issued secret is in the audit file"
    );

    // token_revoked.
    let spare = issue(&f.p, json!({"agent": "slow", "ttl": "1h"})).await;
    let m = mark(&f);
    op_ok(&f.p, "DELETE", &format!("/tokens/{}", spare.id), None).await;
    let recs = since(&f, m);
    let r = one_event("token_revoked", &recs, "token_revoked");
    assert_eq!(r["credential"].as_str(), Some(spare.id.as_str()), "{r}");

    // pause: the next request is denied `paused` (and recorded so); resume.
    let m = mark(&f);
    op_ok(
        &f.p,
        "POST",
        "/pause",
        Some(&json!({"scope": "tool", "target": "tickets.get"})),
    )
    .await;
    let recs = since(&f, m);
    let r = one_event("pause", &recs, "pause");
    assert_eq!(r["policy_version"].as_str(), Some(pv.as_str()), "{r}");
    assert!(
        r.to_string().contains("tickets.get"),
        "pause: the record names what was paused: {r}"
    );
    let resp = call(f.p.addr, "GET", "/tickets/1", &bot.token).await;
    assert_eq!(resp.status, 403, "paused tool: {}", resp.text());
    let rec = durable_record(&f, "paused", &resp);
    assert_eq!(rec["reason"].as_str(), Some("paused"), "{rec}");
    assert_eq!(rec["decision"].as_str(), Some("deny"), "{rec}");
    let m = mark(&f);
    op_ok(
        &f.p,
        "POST",
        "/resume",
        Some(&json!({"scope": "tool", "target": "tickets.get"})),
    )
    .await;
    let recs = since(&f, m);
    one_event("resume", &recs, "resume");
    let resp = call(f.p.addr, "GET", "/tickets/1", &bot.token).await;
    assert_eq!(resp.status, 200, "resumed: {}", resp.text());

    // agent_disabled / agent_enabled.
    let m = mark(&f);
    op_ok(&f.p, "POST", "/agents/bot/disable", None).await;
    let recs = since(&f, m);
    let r = one_event("agent_disabled", &recs, "agent_disabled");
    assert_eq!(r["agent"].as_str(), Some("bot"), "{r}");
    let resp = call(f.p.addr, "GET", "/tickets/1", &bot.token).await;
    assert_eq!(resp.status, 403, "disabled agent: {}", resp.text());
    let rec = durable_record(&f, "disabled", &resp);
    assert_eq!(rec["reason"].as_str(), Some("agent_disabled"), "{rec}");
    let m = mark(&f);
    op_ok(&f.p, "POST", "/agents/bot/enable", None).await;
    let recs = since(&f, m);
    let r = one_event("agent_enabled", &recs, "agent_enabled");
    assert_eq!(r["agent"].as_str(), Some("bot"), "{r}");

    // mode.
    let m = mark(&f);
    op_ok(&f.p, "POST", "/mode", Some(&json!({"draft_only": true}))).await;
    let recs = since(&f, m);
    one_event("mode on", &recs, "mode");
    let m = mark(&f);
    op_ok(&f.p, "POST", "/mode", Some(&json!({"draft_only": false}))).await;
    let recs = since(&f, m);
    one_event("mode off", &recs, "mode");

    // reload with a changed policy: old and new policy_version. (The file watcher may
    // also pick the change up; whichever reload swapped it, one record says old → new.)
    common::write_atomically(
        &f.p.config_path,
        config_text(
            "ops-node",
            &f.api.url(),
            &f.codes.url(),
            f.dead,
            /* extra_agent */ true,
        )
        .as_bytes(),
    );
    let m = mark(&f);
    let v = op_ok(&f.p, "POST", "/reload", None).await;
    let recs = since(&f, m);
    let new_pv = policy_version(&f.p).await;
    assert_ne!(new_pv, pv, "the changed config has a new policy_version");
    assert_eq!(
        v["policy_version"].as_str(),
        Some(new_pv.as_str()),
        "POST /reload: {v}"
    );
    let mine: Vec<&Value> = recs
        .iter()
        .filter(|r| r["event"] == "reload" && r["operator"] == "tester")
        .collect();
    assert_eq!(
        mine.len(),
        1,
        "one reload record by the operator on disk when /reload answered: {recs:#?}"
    );
    assert_schema("reload", mine[0]);
    assert_eq!(
        mine[0]["old_policy_version"], v["old_policy_version"],
        "{}",
        mine[0]
    );
    assert_eq!(
        mine[0]["policy_version"].as_str(),
        Some(new_pv.as_str()),
        "{}",
        mine[0]
    );
    let all = records_of(&f.audit());
    assert!(
        all.iter().any(|r| r["event"] == "reload"
            && r["old_policy_version"].as_str() == Some(pv.as_str())
            && r["policy_version"].as_str() == Some(new_pv.as_str())),
        "no reload record says {pv} → {new_pv}"
    );
    // Requests after the reload carry the new version.
    let resp = call(f.p.addr, "DELETE", "/tickets/1", &bot.token).await;
    let rec = durable_record(&f, "after reload", &resp);
    assert_eq!(
        rec["policy_version"].as_str(),
        Some(new_pv.as_str()),
        "{rec}"
    );

    let o = verify(&[f.audit()], &[], &[]);
    assert!(o.status.success(), "{}", audit_support::out_text(&o));
}

// ---------------------------------------------------------------------------------------
// Request ids
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn x_request_id_is_the_record_request_id_and_in_the_log_line() {
    let f = Fixture::start("rid-node").await;
    let bot = issue(&f.p, json!({"agent": "bot", "ttl": "1h"})).await;
    let client_id = "client-chosen-request-id-5c1f";
    let mut responses = Vec::new();
    for (what, method, path, token) in [
        ("allow", "GET", "/tickets/3", bot.token.as_str()),
        ("deny", "DELETE", "/tickets/3", bot.token.as_str()),
        ("no_route", "GET", "/nowhere", bot.token.as_str()),
        ("401", "GET", "/tickets/3", ""),
    ] {
        let r = common::send(
            f.p.addr,
            common::request(method, f.p.addr, path, token)
                .header("x-request-id", client_id)
                .body(common::empty())
                .unwrap(),
        )
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
        responses.push((what, r));
    }
    let canon = raw(&f, "GET", "/tickets/a;b", &bot.token, "").await;
    responses.push(("canon", canon));

    let mut seen = std::collections::HashSet::new();
    for (what, r) in &responses {
        let rid = r
            .header("x-request-id")
            .unwrap_or_else(|| panic!("{what}: no X-Request-Id ({})", r.status))
            .to_string();
        assert_eq!(
            r.header_all("x-request-id").len(),
            1,
            "{what}: one X-Request-Id"
        );
        assert_ne!(
            rid, client_id,
            "{what}: a client-sent X-Request-Id is replaced"
        );
        assert!(seen.insert(rid.clone()), "{what}: request id {rid} reused");
        let rec = wait_request_record(&f.audit(), &rid).await;
        assert_eq!(
            rec["status"].as_u64(),
            Some(u64::from(r.status)),
            "{what}: {rec}"
        );
        assert!(
            f.p.wait_for_log(&rid, std::time::Duration::from_secs(5))
                .await,
            "{what}: request id {rid} not in the log:\n{}",
            f.p.logs()
        );
        let logs = f.p.logs();
        let line = logs.lines().find(|l| l.contains(&rid)).unwrap();
        let decision = rec["decision"].as_str().unwrap();
        assert!(
            line.contains(decision),
            "{what}: the log line with {rid} does not carry the decision `{decision}`: {line}"
        );
    }
    // The upstream got the proxy's id — the one the client was answered with — and only
    // it (the allowed request is the only one forwarded).
    assert_eq!(f.api.hits(), 1, "requests forwarded");
    let up = f.api.last();
    let (_, allow) = &responses[0];
    assert_eq!(
        up.header_all("x-request-id"),
        vec![allow.header("x-request-id").unwrap()],
        "X-Request-Id at the upstream (the client sent {client_id}): {:?}",
        up.headers
    );
}

// ---------------------------------------------------------------------------------------
// Replicas
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_record_distinct_nodes() {
    let api = Upstream::start(Behaviour::Echo).await;
    let codes = StatusUpstream::start().await;
    let dead = common::dead_port();
    let a = Proxy::start(
        &config_text("replica-a", &api.url(), &codes.url(), dead, false),
        &[],
    );
    let b = Proxy::start(
        &config_text("replica-b", &api.url(), &codes.url(), dead, false),
        &[],
    );
    assert_ne!(a.path(AUDIT), b.path(AUDIT));
    let mut nodes = Vec::new();
    for (name, p) in [("replica-a", &a), ("replica-b", &b)] {
        let t = issue(p, json!({"agent": "bot", "ttl": "1h"})).await;
        let allow = call(p.addr, "GET", "/tickets/1", &t.token).await;
        assert_eq!(allow.status, 200, "{name}: {}", allow.text());
        let deny = call(p.addr, "DELETE", "/tickets/1", &t.token).await;
        assert_eq!(deny.status, 403, "{name}: {}", deny.text());
        for r in [&allow, &deny] {
            let rec = wait_request_record(&p.path(AUDIT), r.header("x-request-id").unwrap()).await;
            assert_eq!(rec["node"].as_str(), Some(name), "{rec}");
        }
        // Every line of this replica's file (token_issued too) carries its node.
        let recs = records_of(&p.path(AUDIT));
        assert!(recs.len() >= 3, "{name}: {recs:#?}");
        for r in &recs {
            assert_eq!(r["node"].as_str(), Some(name), "{name}: {r}");
        }
        nodes.push(recs[0]["node"].as_str().unwrap().to_string());
    }
    assert_ne!(nodes[0], nodes[1]);
    // The request ids are distinct across replicas.
    let ids = |p: &Proxy| -> Vec<String> {
        records_of(&p.path(AUDIT))
            .iter()
            .filter_map(|r| r["request_id"].as_str().map(str::to_string))
            .collect()
    };
    let (ia, ib) = (ids(&a), ids(&b));
    assert!(ia.iter().all(|x| !ib.contains(x)), "{ia:?} / {ib:?}");
    // Each file verifies on its own.
    for p in [&a, &b] {
        let o = verify(&[p.path(AUDIT)], &[], &[]);
        assert!(o.status.success(), "{}", audit_support::out_text(&o));
    }
    let _ = wait_record(&a.path(AUDIT), "token_issued on a", |r| {
        r["event"] == "token_issued"
    })
    .await;
}
