//! `explain` runs the proxy's own path (canon → `pipeline::judge`), so for every request
//! the dry run and the live proxy give the same decision, reason, tool, risk and deciding
//! condition — refusals of every canonical class, every gate rule (the profile's lists,
//! its resources and risk ceiling, its conditional entries, and the kill switches: a
//! paused tool, a disabled agent, draft-only mode), lenient spellings, encoded slashes
//! and unknown paths included.

use crate::common::*;
use crate::support::admin::{op, op_ok};
use serde_json::{json, Value};

fn cfg(url: &str) -> String {
    format!(
        r#"{head}upstreams:
  api: {{ url: "{url}" }}
sensitive_paths: ["/x/admin/{{*rest}}"]
routes:
  - prefix: /x
    upstream: api
    tool_prefix: x
    paths: ["/x/items/{{id}}", "/x/items/export", "/x/items"]
    tools:
      - {{ match: "POST /x/items/{{id}}/refund", name: x.refund, risk: critical }}
      - {{ match: "PATCH /x/items/{{id}}", name: x.items.patch, risk: medium,
          when_risk: [{{ when: "has(request.query.force)", risk: critical }}] }}
  - prefix: /enc
    upstream: api
    tool_prefix: enc
    allow_encoded_slash: true
    paths: ["/enc/items/{{id}}"]
    tools:
      - {{ match: "POST /enc/items/{{id}}/refund", name: enc.refund, risk: critical }}
  - {{ prefix: /strict, upstream: api, tool_prefix: strict, unknown_paths: deny, paths: ["/strict/a"] }}
profiles:
  low:
    tools:
      - x.items.get
      - x.items.create
      - x.items.patch
      - "enc.*"
      - "strict.*"
      - "x.admin.*"
      - {{ tool: x.items.list, when: "!has(request.query.all)" }}
    resources: ["/x/{{*rest}}", "/enc/{{*rest}}", "/strict/{{*rest}}"]
    max_risk: medium
    approval:
      - x.refund
      - {{ tool: x.items.create, when: "has(request.query.bulk)" }}
    deny:
      - "*.delete"
      - {{ tool: x.items.get, when: "has(request.query.purge)" }}
  narrow:
    tools: ["x.items.get", "x.items.list"]
    resources: ["/x/items/{{id}}"]
    max_risk: high
agents:
  low: {{ profile: low, tenant: acme }}
  narrow: {{ profile: narrow, tenant: acme }}
"#,
        head = Head::new(),
    )
}

/// Every canonical class, gate rule and lenient spelling, for the agent `low`.
const LOW: &[(&str, &str)] = &[
    ("GET", "/x/items/1"),
    ("GET", "/x/items"),
    ("GET", "/x/items?all=1"),
    ("GET", "/x/items/1?purge=1"),
    ("POST", "/x/items"),
    ("POST", "/x/items?bulk=1"),
    ("PATCH", "/x/items/1"),
    ("PATCH", "/x/items/1?force=1"),
    ("DELETE", "/x/items/1"),
    ("PUT", "/x/items/1"),
    ("POST", "/x/items/1/refund"),
    ("POST", "/x/items/1/Refund.json"),
    ("GET", "/x/items/export"),
    ("GET", "/x/items/EXPORT"),
    ("GET", "/x/items/export.json"),
    ("GET", "/x/admin/users"),
    ("GET", "/x/Admin/users/"),
    ("GET", "/x/other/7"),
    ("GET", "/nowhere"),
    ("GET", "/strict/a"),
    ("GET", "/strict/b"),
    ("GET", "/x/items/1%2F2"),
    ("GET", "/enc/items/1%2F2"),
    ("POST", "/enc/items/1%2Frefund"),
    ("GET", "/x/../admin"),
    ("GET", "/x//items"),
    ("GET", "/x/%2e%2e/admin"),
    ("GET", "/x/items/%C0%AE"),
    ("GET", "/x/items?_method=DELETE"),
    ("GET", "/x/items?a=%zz"),
    ("GET", "/x/items/a%3Bb"),
    ("TRACE", "/x/items"),
    ("OPTIONS", "/x/items"),
];

/// The agent `narrow`: its resources (`out_of_scope`) and its grants.
const NARROW: &[(&str, &str)] = &[
    ("GET", "/x/items/1"),
    ("GET", "/x/items"),
    ("GET", "/x/items/export"),
    ("GET", "/enc/items/1"),
    ("POST", "/x/items"),
];

/// With the switches on: a paused tool, a disabled agent, draft-only mode.
const SWITCHED: &[(&str, &str, &str)] = &[
    ("low", "GET", "/x/items/1"),
    ("low", "GET", "/x/items"),
    ("low", "POST", "/x/items"),
    ("low", "PATCH", "/x/items/1"),
    ("low", "POST", "/x/items/1/refund"),
    ("low", "GET", "/x/items/1%2F2"),
    ("narrow", "GET", "/x/items/1"),
    ("narrow", "GET", "/x/items"),
];

/// One request asked of both: the explanation and the proxy's answer.
struct Asked {
    what: String,
    explained: Resp,
    live: Resp,
}

async fn ask(p: &Proxy, agent: &str, token: &str, m: &str, target: &str) -> Asked {
    let q = format!(
        "/explain?agent={agent}&method={m}&path={}",
        target
            .replace('%', "%25")
            .replace('?', "%3F")
            .replace('&', "%26")
    );
    let explained = op(p, "GET", &q, None).await;
    let host = p.addr.to_string();
    let live = raw_request(p.addr, &raw_get(m, target.as_bytes(), &host, token, "")).await;
    Asked {
        what: format!("{agent} {m} {target}"),
        explained,
        live,
    }
}

/// The live answer agrees with the explanation: decision, status, reason; and the
/// request's audit record names the same tool, risk and condition.
fn check(a: &Asked, trail: &[Value]) -> String {
    let what = &a.what;
    let (x, r) = (&a.explained, &a.live);
    assert_eq!(x.status, 200, "{what}: explain answered {}", x.text());
    let v = x.json();
    let decision = v["decision"].as_str().unwrap().to_string();
    let reason = v["reason"].as_str().unwrap().to_string();
    assert_eq!(
        r.header("portcullis-decision"),
        Some(decision.as_str()),
        "{what}: explain {v} / proxy {} {}",
        r.status,
        r.text()
    );
    match decision.as_str() {
        "allow" => assert!(r.status < 300, "{what}: {}", r.text()),
        "park" => assert_eq!(r.status, 202, "{what}: {}", r.text()),
        _ => assert_eq!(
            r.reason().as_deref(),
            Some(reason.as_str()),
            "{what}: explain said {reason}; proxy {}",
            r.text()
        ),
    }
    let id = r.header("x-request-id").expect("X-Request-Id");
    if let Some(rec) = trail
        .iter()
        .find(|t| t["request_id"] == id && t["event"] == "request")
    {
        for k in ["tool", "risk", "condition"] {
            assert_eq!(rec[k], v[k], "{what}: `{k}`; explain {v}, record {rec}");
        }
        if decision != "allow" {
            assert_eq!(
                rec["reason"].as_str(),
                Some(reason.as_str()),
                "{what}: {rec}"
            );
        }
    } else {
        // Refused before a record is written: only the method check does that.
        assert_eq!(
            reason, "method_not_allowed",
            "{what}: no record; explain {v}"
        );
    }
    format!("{decision} ({reason})")
}

#[tokio::test(flavor = "multi_thread")]
async fn explain_and_the_proxy_decide_alike() {
    let up = Upstream::start(Behaviour::Fixed).await;
    let mut p = Proxy::start(&format!("{}{NO_SIGNALS}", cfg(&up.url())), &[]);
    let low = p.agent_token("low").await;
    let narrow = p.agent_token("narrow").await;
    let mut asked = Vec::new();
    for (m, target) in LOW {
        asked.push(ask(&p, "low", &low, m, target).await);
    }
    for (m, target) in NARROW {
        asked.push(ask(&p, "narrow", &narrow, m, target).await);
    }
    // The kill switches, as the operators flip them (effective on the next request).
    op_ok(&p, "POST", "/mode", Some(&json!({"draft_only": true}))).await;
    op_ok(
        &p,
        "POST",
        "/pause",
        Some(&json!({"scope": "tool", "target": "x.items.get"})),
    )
    .await;
    op_ok(&p, "POST", "/agents/narrow/disable", None).await;
    let unswitched = asked.len();
    for (agent, m, target) in SWITCHED {
        let token = if *agent == "low" { &low } else { &narrow };
        asked.push(ask(&p, agent, token, m, target).await);
    }

    // Every record is on the trail once the proxy has drained.
    assert!(p
        .terminate(std::time::Duration::from_secs(10))
        .await
        .is_some());
    let trail: Vec<Value> = p
        .audit_text()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let outcomes: Vec<String> = asked.iter().map(|a| check(a, &trail)).collect();

    // The corpus reaches every outcome it is meant to cover (so a change that made the
    // two agree by answering everything alike would not pass).
    let reached = |o: &str| outcomes.iter().any(|x| x == o);
    for want in [
        "allow (tools)",
        "park (approval_required)",
        "deny (profile_deny)",
        "deny (not_granted)",
        "deny (risk_ceiling)",
        "deny (out_of_scope)",
        "deny (no_route)",
        "deny (unknown_path)",
        "deny (encoded_slash)",
        "deny (dot_segment)",
        "deny (bad_utf8)",
        "deny (method_override)",
        "deny (method_not_allowed)",
    ] {
        assert!(reached(want), "no request was {want}: {outcomes:?}");
    }
    let switched = &outcomes[unswitched..];
    for want in [
        "deny (paused)",
        "deny (agent_disabled)",
        "deny (draft_only)",
    ] {
        assert!(
            switched.iter().any(|x| x == want),
            "no switched request was {want}: {switched:?}"
        );
    }
    // Conditional entries decided some of them, named alike by both.
    let conditioned = asked
        .iter()
        .filter(|a| a.explained.json()["condition"].is_string())
        .count();
    assert!(
        conditioned >= 3,
        "conditional grant, approval and deny: {conditioned} decided by a condition"
    );
}
