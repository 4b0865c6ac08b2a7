//! Issue 14: `explain` runs the proxy's own path (canon → `pipeline::judge`), so for
//! every request the dry run and the live proxy give the same decision, reason, tool and
//! risk — refusals of every canonical class, every gate rule, lenient spellings, encoded
//! slashes and unknown paths included.

use crate::common::*;
use crate::support::admin::op;
use serde_json::Value;

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
    tools: ["x.items.get", "x.items.list", "x.items.create", "enc.*", "strict.*", "x.admin.*"]
    resources: ["/x/{{*rest}}", "/enc/{{*rest}}", "/strict/{{*rest}}"]
    max_risk: medium
    approval: ["x.refund"]
    deny: ["*.delete"]
agents:
  low: {{ profile: low, tenant: acme }}
"#,
        head = Head::new(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn explain_and_the_proxy_decide_alike() {
    let up = Upstream::start(Behaviour::Fixed).await;
    let p = Proxy::start(&cfg(&up.url()), &[]);
    let token = p.agent_token("low").await;
    let corpus: &[(&str, &str)] = &[
        ("GET", "/x/items/1"),
        ("GET", "/x/items"),
        ("POST", "/x/items"),
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
    let host = p.addr.to_string();
    let mut sent = Vec::new();
    for (m, target) in corpus {
        let q = format!(
            "/explain?agent=low&method={m}&path={}",
            target
                .replace('%', "%25")
                .replace('?', "%3F")
                .replace('&', "%26")
        );
        let x = op(&p, "GET", &q, None).await;
        let r = raw_request(p.addr, &raw_get(m, target.as_bytes(), &host, &token, "")).await;
        sent.push((*m, *target, x, r));
    }
    // Every record is on the trail once the proxy has drained.
    let mut p = p;
    assert!(p
        .terminate(std::time::Duration::from_secs(10))
        .await
        .is_some());
    let trail: Vec<Value> = p
        .audit_text()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    for (m, target, x, r) in sent {
        let what = format!("{m} {target}");
        let (decision, reason) = if m == "TRACE" {
            // Refused before anything is explained or recorded as a request.
            ("deny".to_string(), "method_not_allowed".to_string())
        } else {
            assert_eq!(x.status, 200, "{what}: explain answered {}", x.text());
            let v = x.json();
            (
                v["decision"].as_str().unwrap().to_string(),
                v["reason"].as_str().unwrap().to_string(),
            )
        };
        let live_decision = r.header("portcullis-decision").unwrap_or("").to_string();
        assert_eq!(
            live_decision,
            decision,
            "{what}: explain {} / proxy {} {}",
            x.text(),
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
        if m == "TRACE" {
            continue;
        }
        let id = r.header("x-request-id").unwrap();
        let rec = trail
            .iter()
            .find(|t| t["request_id"] == id && t["event"] == "request")
            .unwrap_or_else(|| panic!("{what}: no record"));
        let v = x.json();
        assert_eq!(
            rec["tool"], v["tool"],
            "{what}: tool; explain {v}, record {rec}"
        );
        assert_eq!(
            rec["risk"], v["risk"],
            "{what}: risk; explain {v}, record {rec}"
        );
    }
}
