//! Conditions through the config loader and the dry-run path (`explain`), which runs
//! the proxy's classify → conditions → decide.

use crate::config::Snapshot;
use crate::explain::{explain_with, json_body, Explanation};
use crate::policy::Switches;
use std::path::Path;

const CONFIG: &str = r#"
upstreams:
  tickets: { url: "http://127.0.0.1:7000" }
routes:
  - prefix: /tickets
    upstream: tickets
    paths: ["/tickets/{id}"]
    tools:
      - { match: "POST /tickets/{id}/refund", name: tickets.refund, risk: medium }
      - match: "DELETE /tickets/{id}"
        name: tickets.delete
        risk: high
        when_risk:
          - { when: "has(request.query.force) && 'true' in request.query.force", risk: critical }
profiles:
  support:
    tools:
      - tickets.get
      - tickets.delete
      - { tool: tickets.refund, when: "request.body.amount <= 50" }
    approval:
      - { tool: tickets.refund, when: "request.body.amount > 100" }
    deny:
      - { tool: "tickets.*", when: "agent.tenant == 'blocked' || request.params.id == '666'" }
    max_risk: high
agents:
  bot: { profile: support, tenant: acme }
"#;

fn snap(text: &str) -> Result<Snapshot, String> {
    Snapshot::parse(Path::new("routes.yaml"), text, &|_| None).map_err(|e| e.to_string())
}

fn ask(s: &Snapshot, method: &str, target: &str, body: Option<&str>) -> Explanation {
    let body = body.map(|b| json_body(b.as_bytes().to_vec()));
    explain_with(
        s,
        &Switches::default(),
        "bot",
        method,
        target,
        body.as_ref(),
    )
    .unwrap()
}

#[test]
fn refunds_by_amount() {
    let s = snap(CONFIG).unwrap();
    let e = ask(&s, "POST", "/tickets/7/refund", Some(r#"{"amount": 50}"#));
    assert_eq!((e.decision.as_str(), e.reason.as_str()), ("allow", "tools"));
    assert_eq!(e.condition.as_deref(), Some("request.body.amount <= 50"));
    let e = ask(&s, "POST", "/tickets/7/refund", Some(r#"{"amount": 500}"#));
    assert_eq!(e.decision, "park", "{e:?}");
    assert_eq!(e.condition.as_deref(), Some("request.body.amount > 100"));
    // Every condition evaluated is listed with its outcome.
    assert!(e
        .conditions
        .contains(&("request.body.amount > 100".into(), "true".into())));
    // A double compares with an int literal.
    let e = ask(
        &s,
        "POST",
        "/tickets/7/refund",
        Some(r#"{"amount": 150.5}"#),
    );
    assert_eq!(e.decision, "park");
    // Between the two: no grant holds, nothing parks.
    let e = ask(&s, "POST", "/tickets/7/refund", Some(r#"{"amount": 75}"#));
    assert_eq!(
        (e.decision.as_str(), e.reason.as_str()),
        ("deny", "not_granted")
    );
    assert!(
        e.detail.contains("only when `request.body.amount <= 50`"),
        "{}",
        e.detail
    );
}

#[test]
fn failures_take_the_safe_side() {
    let s = snap(CONFIG).unwrap();
    // No `amount`: the grant fails (not granted), the approval fails (holds): parked.
    let e = ask(
        &s,
        "POST",
        "/tickets/7/refund",
        Some(r#"{"currency": "EUR"}"#),
    );
    assert_eq!(e.decision, "park", "{e:?}");
    assert!(e
        .conditions
        .iter()
        .any(|(c, o)| c == "request.body.amount > 100" && o.contains("no such key")));
    // A string where a number is compared: the same.
    let e = ask(&s, "POST", "/tickets/7/refund", Some(r#"{"amount": "5"}"#));
    assert_eq!(e.decision, "park", "{e:?}");
    // No body at all: `request.body` is absent.
    let e = ask(&s, "POST", "/tickets/7/refund", None);
    assert_eq!(e.decision, "park", "{e:?}");
}

#[test]
fn bodies_that_cannot_be_inspected_are_refused() {
    let s = snap(CONFIG).unwrap();
    for body in [
        r#"{"amount": 5, "amount": 5000}"#,
        r#"{"x": {"amount": 5, "amount": 6}}"#,
        r#"[{"amount": 5}]"#,
        "amount=5",
    ] {
        let e = ask(&s, "POST", "/tickets/7/refund", Some(body));
        assert_eq!(
            (e.decision.as_str(), e.reason.as_str()),
            ("deny", "uninspectable_body"),
            "{body}"
        );
    }
}

#[test]
fn query_raises_risk_and_params_deny() {
    let s = snap(CONFIG).unwrap();
    let e = ask(&s, "DELETE", "/tickets/7", None);
    assert_eq!(
        (e.decision.as_str(), e.risk.as_deref()),
        ("allow", Some("high"))
    );
    let e = ask(&s, "DELETE", "/tickets/7?force=true", None);
    assert_eq!(e.risk.as_deref(), Some("critical"), "{e:?}");
    assert_eq!(
        (e.decision.as_str(), e.reason.as_str()),
        ("deny", "risk_ceiling")
    );
    assert_eq!(
        e.condition.as_deref(),
        Some("has(request.query.force) && 'true' in request.query.force")
    );
    let e = ask(&s, "GET", "/tickets/666", None);
    assert_eq!(
        (e.decision.as_str(), e.reason.as_str()),
        ("deny", "profile_deny")
    );
    let e = ask(&s, "GET", "/tickets/7", None);
    assert_eq!(e.decision, "allow");
    assert!(e.conditions.iter().all(|(_, o)| o == "false"), "{e:?}");
}

#[test]
fn bad_conditions_are_config_errors() {
    let cases = [
        (
            CONFIG.replace("amount <= 50", "amount <="),
            "profiles.support.tools[2].when",
            "CEL",
        ),
        (
            CONFIG.replace("request.body.amount > 100", "reqest.body.amount > 100"),
            "profiles.support.approval[0].when",
            "unknown variable `reqest`",
        ),
        (
            CONFIG.replace("risk: critical }", "risk: low }"),
            "when_risk[0].risk",
            "below the method's risk",
        ),
        (
            CONFIG.replace("'true' in request.query.force", "request.qury.force"),
            "when_risk[0].when",
            "no field `qury`",
        ),
    ];
    for (text, key, says) in cases {
        let e = snap(&text).unwrap_err();
        assert!(e.starts_with("routes.yaml:"), "{e}");
        assert!(e.contains(key) && e.contains(says), "{key}: {e}");
    }
    // Lowering below the method's risk is allowed when the override says so.
    let lowered = CONFIG.replace("risk: critical }", "risk: low }").replace(
        "        risk: high\n",
        "        risk: high\n        risk_floor: false\n",
    );
    snap(&lowered).unwrap();
}

#[test]
fn when_risk_renames_and_profile_entries_see_the_new_name() {
    let text = CONFIG.replace(
        r#"name: tickets.refund, risk: medium }"#,
        r#"name: tickets.refund, risk: medium,
          when_risk: [{ when: "request.body.amount > 1000", name: tickets.refund_large, risk: critical }] }"#,
    )
    .replace(
        "      - { tool: tickets.refund, when: \"request.body.amount > 100\" }",
        "      - { tool: tickets.refund, when: \"request.body.amount > 100\" }\n      - tickets.refund_large",
    );
    let s = snap(&text).unwrap();
    let e = ask(&s, "POST", "/tickets/7/refund", Some(r#"{"amount": 5000}"#));
    assert_eq!(e.tool.as_deref(), Some("tickets.refund_large"), "{e:?}");
    assert_eq!(e.risk.as_deref(), Some("critical"));
    assert_eq!(e.decision, "park");
    assert_eq!(
        e.condition.as_deref(),
        Some("request.body.amount > 1000"),
        "the rename decided which entry parked it"
    );
    let e = ask(&s, "POST", "/tickets/7/refund", Some(r#"{"amount": 5}"#));
    assert_eq!(e.tool.as_deref(), Some("tickets.refund"));
    assert_eq!(e.decision, "allow");
}
