//! The same gate: 50 requests sent once over plain HTTP and once as MCP `tools/call`
//! get the same decision, reason, tool, risk and recorded path (read from their audit
//! records), and the allowed ones reach the upstream as the same request (method, target,
//! header fields but the per-request id, body bytes).

use crate::common::{self, Proxy, Resp, Seen};
use crate::mcp::Mcp;
use crate::support::approvals::{self as ap, issue, ReplayUpstream, BOUND, EMBEDDED, UPSTREAM_KEY};
use serde_json::{json, Value};

/// The MCP side's encoding of one path parameter (everything but unreserved).
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

struct Case {
    tool: &'static str,
    method: &'static str,
    /// `{id}` in it is replaced by the encoded id.
    template: &'static str,
    id: String,
    query: Vec<(&'static str, &'static str)>,
    body: Option<Value>,
}

fn cases() -> Vec<Case> {
    let ids = ["1", "42", "abc", "a b", "caf\u{e9}", "%41", "x-y_z~", "007"];
    let mut out = Vec::new();
    let tools: [(&str, &str, &str, bool); 12] = [
        ("tickets.get", "GET", "/tickets/{id}", false),
        (
            "tickets.comments.list",
            "GET",
            "/tickets/{id}/comments",
            false,
        ),
        (
            "tickets.comments.create",
            "POST",
            "/tickets/{id}/comments",
            true,
        ),
        (
            "tickets.comments.update",
            "PUT",
            "/tickets/{id}/comments",
            true,
        ),
        (
            "tickets.comments.delete",
            "DELETE",
            "/tickets/{id}/comments",
            false,
        ),
        ("tickets.create", "POST", "/tickets/{id}", true),
        ("tickets.update", "PUT", "/tickets/{id}", true),
        ("tickets.delete", "DELETE", "/tickets/{id}", false),
        ("tickets.refund", "POST", "/tickets/{id}/refund", true),
        ("tickets.close", "POST", "/tickets/{id}/close", true),
        ("tickets.quick", "POST", "/tickets/{id}/quick", true),
        ("tickets.get", "GET", "/tickets/{id}", false),
    ];
    let mut i = 0;
    while out.len() < 50 {
        let (tool, method, template, body) = tools[i % tools.len()];
        let id = ids[i % ids.len()].to_string();
        let query = match i % 3 {
            0 => vec![],
            1 => vec![("q", "a&b=c"), ("n", "5")],
            _ => vec![("tag", "x y")],
        };
        out.push(Case {
            tool,
            method,
            template,
            id,
            query,
            body: body.then(|| json!({"n": i, "text": "caf\u{e9} \"quoted\""})),
        });
        i += 1;
    }
    out
}

fn audit_by_request_id(p: &Proxy, id: &str) -> Option<Value> {
    p.audit_text()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|r| r["request_id"] == id && r["event"] == "request")
}

/// The upstream's view of a request, without what differs per request by design (the
/// request id). Header fields are compared by name and value in name order: their order
/// on the wire is the client's (hyper appends `content-length` after the fields it is
/// given), and a field repeated under one name keeps its own order (stable sort).
fn upstream_bytes(s: &Seen) -> (String, String, Vec<(String, String)>, Vec<u8>) {
    let mut headers: Vec<(String, String)> = s
        .headers
        .iter()
        .filter(|(k, _)| k != "x-request-id")
        .cloned()
        .collect();
    headers.sort_by(|a, b| a.0.cmp(&b.0));
    (s.method.clone(), s.target.clone(), headers, s.body.clone())
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_requests_over_http_and_mcp_are_judged_and_sent_alike() {
    let up = ReplayUpstream::start().await;
    let p = Proxy::start(
        &ap::config("n1", EMBEDDED, &up.url(), crate::common::NO_SIGNALS),
        &[("API_KEY", UPSTREAM_KEY)],
    );
    let (token, _) = issue(p.admin, "bot").await;
    let mut m = Mcp::modern(p.addr, &token, false);
    let mut allowed = 0;
    let mut decisions = std::collections::BTreeMap::<String, usize>::new();
    for (n, c) in cases().into_iter().enumerate() {
        let mut path = c.template.replace("{id}", &enc(&c.id));
        if !c.query.is_empty() {
            // A JSON object's members have no order: MCP sends them sorted by name.
            let mut sorted = c.query.clone();
            sorted.sort();
            let q: Vec<String> = sorted
                .iter()
                .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
                .collect();
            path = format!("{path}?{}", q.join("&"));
        }
        // Over HTTP, with the headers an MCP-built request carries.
        let hits = up.hits();
        let mut b =
            common::request(c.method, p.addr, &path, &token).header("accept", "application/json");
        let body = c.body.as_ref().map(|b| b.to_string()).unwrap_or_default();
        if c.body.is_some() {
            b = b.header("content-type", "application/json");
        }
        let r: Resp = common::send(p.addr, b.body(common::full(body)).unwrap())
            .await
            .unwrap();
        let http_id = r.header("x-request-id").unwrap().to_string();
        let http_seen = (up.hits() > hits).then(|| upstream_bytes(&up.last()));
        // Over MCP.
        let hits = up.hits();
        let mut args = json!({"id": c.id});
        if !c.query.is_empty() {
            let q: serde_json::Map<String, Value> = c
                .query
                .iter()
                .map(|(k, v)| (k.to_string(), Value::from(*v)))
                .collect();
            args["query"] = Value::Object(q);
        }
        if let Some(b) = &c.body {
            args["body"] = b.clone();
        }
        let res = m.tool(c.tool, args).await;
        let mcp_id = res["_meta"]["portcullis/request_id"]
            .as_str()
            .unwrap_or_else(|| panic!("#{n} {}: no request id in {res}", c.tool))
            .to_string();
        let mcp_seen = (up.hits() > hits).then(|| upstream_bytes(&up.last()));
        let (h, mc) = common::eventually("both audit records", BOUND, || {
            let (a, b) = (
                audit_by_request_id(&p, &http_id),
                audit_by_request_id(&p, &mcp_id),
            );
            async move { a.zip(b).ok_or_else(|| "a record is missing".to_string()) }
        })
        .await;
        for k in [
            "decision", "reason", "tool", "risk", "path", "status", "method",
        ] {
            assert_eq!(
                h[k], mc[k],
                "#{n} {} {path}: `{k}` differs\nhttp: {h}\nmcp:  {mc}",
                c.tool
            );
        }
        assert_eq!(mc["via"], "mcp");
        assert!(h.get("via").is_none_or(Value::is_null));
        assert_eq!(
            http_seen, mcp_seen,
            "#{n} {} {path}: upstream bytes",
            c.tool
        );
        if h["decision"] == "allow" {
            allowed += 1;
            assert!(mcp_seen.is_some());
            assert_eq!(res["isError"], false, "{res}");
        }
        *decisions
            .entry(format!("{}/{}", h["decision"], h["reason"]))
            .or_default() += 1;
    }
    // The set covers every outcome the gate has here.
    assert!(allowed >= 10, "{decisions:?}");
    for want in [
        "\"deny\"/\"not_granted\"",
        "\"deny\"/\"risk_ceiling\"",
        "\"park\"/\"approval_required\"",
    ] {
        assert!(
            decisions.contains_key(want),
            "{want} missing: {decisions:?}"
        );
    }
}
