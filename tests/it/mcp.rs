//! The MCP endpoint against the real binary: both protocol eras, the agent's exact tool
//! list, calls that go through the same gate (allowed, denied, smuggled, parked → task or
//! approval_status), the 2026-07-28 header ladder, Origin, sessions that hold across
//! processes, list_changed streams, pagination, and the audit records MCP calls leave.

use crate::common::{self, Proxy, Resp};
use crate::support::approvals::{
    self as ap, approve, issue, wait_state, ReplayUpstream, ALICE, BOB, BOUND, EMBEDDED,
    UPSTREAM_KEY,
};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use std::net::SocketAddr;

pub const MODERN: &str = "2026-07-28";

/// A minimal MCP client over the harness's HTTP client.
pub struct Mcp {
    pub addr: SocketAddr,
    pub token: String,
    /// Handshake era: the negotiated version and session id.
    pub session: Option<(String, String)>,
    /// Modern: declare the tasks extension.
    pub tasks: bool,
    next: u64,
}

impl Mcp {
    pub fn modern(addr: SocketAddr, token: &str, tasks: bool) -> Mcp {
        Mcp {
            addr,
            token: token.into(),
            session: None,
            tasks,
            next: 1,
        }
    }

    /// Handshake era: `initialize` at `version`, then `notifications/initialized`.
    pub async fn legacy(addr: SocketAddr, token: &str, version: &str) -> Mcp {
        let mut m = Mcp::modern(addr, token, false);
        let r = post(
            addr,
            token,
            &[],
            &json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{
                "protocolVersion": version, "capabilities": {},
                "clientInfo": {"name":"it","version":"1"}}}),
        )
        .await;
        assert_eq!(r.status, 200, "initialize: {}", r.text());
        let sid = r
            .header("mcp-session-id")
            .unwrap_or_else(|| panic!("no Mcp-Session-Id: {:?}", r.headers))
            .to_string();
        let v = r.json();
        let got = v["result"]["protocolVersion"].as_str().unwrap().to_string();
        m.session = Some((got.clone(), sid.clone()));
        let n = post(
            addr,
            token,
            &[("mcp-session-id", &sid), ("mcp-protocol-version", &got)],
            &json!({"jsonrpc":"2.0","method":"notifications/initialized"}),
        )
        .await;
        assert_eq!(n.status, 202, "initialized: {}", n.text());
        m
    }

    /// Sends a request; returns the HTTP answer.
    pub async fn raw(&mut self, method: &str, mut params: Value) -> Resp {
        let id = self.next;
        self.next += 1;
        let mut headers: Vec<(String, String)> = Vec::new();
        match &self.session {
            Some((v, sid)) => {
                headers.push(("mcp-session-id".into(), sid.clone()));
                headers.push(("mcp-protocol-version".into(), v.clone()));
            }
            None => {
                let caps = if self.tasks {
                    json!({"extensions": {"io.modelcontextprotocol/tasks": {}}})
                } else {
                    json!({})
                };
                let mut meta = json!({
                    "io.modelcontextprotocol/protocolVersion": MODERN,
                    "io.modelcontextprotocol/clientCapabilities": caps,
                    "io.modelcontextprotocol/clientInfo": {"name": "it", "version": "1"}});
                if let Some(given) = params.get("_meta").and_then(Value::as_object) {
                    for (k, v) in given {
                        meta[k] = v.clone();
                    }
                }
                params["_meta"] = meta;
                headers.push(("mcp-protocol-version".into(), MODERN.into()));
                headers.push(("mcp-method".into(), method.into()));
                if let Some(n) = params.get("name").and_then(Value::as_str) {
                    headers.push(("mcp-name".into(), n.into()));
                }
            }
        }
        let h: Vec<(&str, &str)> = headers
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        post(
            self.addr,
            &self.token,
            &h,
            &json!({"jsonrpc":"2.0","id":id,"method":method,"params":params}),
        )
        .await
    }

    /// Sends a request; returns its `result` (panics on an error reply).
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        let r = self.raw(method, params).await;
        let v = r.json();
        assert!(
            v.get("result").is_some(),
            "{method}: {} {}",
            r.status,
            r.text()
        );
        v["result"].clone()
    }

    pub async fn tool(&mut self, name: &str, args: Value) -> Value {
        self.call("tools/call", json!({"name": name, "arguments": args}))
            .await
    }

    pub async fn tool_names(&mut self) -> Vec<String> {
        let mut names = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let params = match &cursor {
                Some(c) => json!({"cursor": c}),
                None => json!({}),
            };
            let r = self.call("tools/list", params).await;
            for t in r["tools"].as_array().unwrap() {
                names.push(t["name"].as_str().unwrap().to_string());
            }
            match r["nextCursor"].as_str() {
                Some(c) => cursor = Some(c.into()),
                None => return names,
            }
        }
    }
}

/// One POST to `/mcp`.
pub async fn post(addr: SocketAddr, token: &str, headers: &[(&str, &str)], body: &Value) -> Resp {
    let mut b = common::request("POST", addr, "/mcp", token)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    common::send(addr, b.body(common::full(body.to_string())).unwrap())
        .await
        .unwrap_or_else(|e| panic!("POST /mcp: {e}"))
}

pub fn text_of(result: &Value) -> String {
    result["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

async fn start() -> (Proxy, ReplayUpstream, String) {
    start_with("").await
}

async fn start_with(extra: &str) -> (Proxy, ReplayUpstream, String) {
    let up = ReplayUpstream::start().await;
    let p = Proxy::start(
        &ap::config("n1", EMBEDDED, &up.url(), extra),
        &[("API_KEY", UPSTREAM_KEY)],
    );
    let (token, _) = issue(p.admin, "bot").await;
    (p, up, token)
}

/// The drafter profile's tools (support/approvals.rs), as MCP names them.
const BOT_TOOLS: [&str; 8] = [
    "portcullis.approval_status",
    "tickets.close",
    "tickets.comments.create",
    "tickets.comments.list",
    "tickets.comments.update",
    "tickets.get",
    "tickets.quick",
    "tickets.refund",
];

#[tokio::test(flavor = "multi_thread")]
async fn both_eras_list_exactly_the_agents_tools() {
    let (p, _up, token) = start().await;
    let mut legacy = Mcp::legacy(p.addr, &token, "2025-06-18").await;
    assert_eq!(legacy.tool_names().await, BOT_TOOLS);
    let mut modern = Mcp::modern(p.addr, &token, false);
    assert_eq!(modern.tool_names().await, BOT_TOOLS);
    // The same set `GET /_portcullis/tools` gives (plus the built-in tool).
    let http = common::get(p.addr, "/_portcullis/tools", &token)
        .await
        .json();
    let mut names: Vec<String> = http["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["tool"].as_str().unwrap().to_string())
        .collect();
    names.push("portcullis.approval_status".into());
    names.sort();
    names.dedup();
    assert_eq!(names, BOT_TOOLS);
    // Schema, risk, posture, hints.
    let list = modern.call("tools/list", json!({})).await;
    assert_eq!(list["resultType"], "complete");
    assert_eq!(list["cacheScope"], "private");
    assert!(list["ttlMs"].is_u64());
    let tools = list["tools"].as_array().unwrap();
    let get = tools.iter().find(|t| t["name"] == "tickets.get").unwrap();
    assert_eq!(get["inputSchema"]["required"], json!(["id"]));
    assert_eq!(get["inputSchema"]["properties"]["id"]["type"], "string");
    assert!(get["inputSchema"]["properties"].get("body").is_none());
    assert_eq!(get["annotations"]["readOnlyHint"], true);
    assert_eq!(get["_meta"]["portcullis/posture"], "allow");
    let refund = tools
        .iter()
        .find(|t| t["name"] == "tickets.refund")
        .unwrap();
    assert_eq!(refund["_meta"]["portcullis/risk"], "critical");
    assert_eq!(refund["_meta"]["portcullis/posture"], "approval");
    assert!(refund["inputSchema"]["properties"]["body"].is_object());
    assert_eq!(refund["annotations"]["destructiveHint"], true);
    // A narrowed credential lists less.
    let r = ap::admin(
        p.admin,
        ap::ISSUER,
        "POST",
        "/tokens",
        Some(&json!({"agent": "bot", "ttl": "1h", "tools": ["tickets.get"]})),
    )
    .await;
    let narrow = r.json()["secret"].as_str().unwrap().to_string();
    let mut m = Mcp::modern(p.addr, &narrow, false);
    assert_eq!(
        m.tool_names().await,
        ["portcullis.approval_status", "tickets.get"]
    );
    // A paused tool drops out of the list.
    let r = ap::admin(
        p.admin,
        ap::ISSUER,
        "POST",
        "/pause",
        Some(&json!({"scope": "tool", "target": "tickets.comments.*"})),
    )
    .await;
    assert!(r.status < 300, "{}", r.text());
    let names = common::eventually("the paused tools leave the list", BOUND, || {
        let mut m = Mcp::modern(p.addr, &token, false);
        async move {
            let n = m.tool_names().await;
            if n.iter().any(|t| t.starts_with("tickets.comments")) {
                Err(format!("{n:?}"))
            } else {
                Ok(n)
            }
        }
    })
    .await;
    assert!(names.contains(&"tickets.get".to_string()));
}

#[tokio::test(flavor = "multi_thread")]
async fn calls_go_through_the_gate_and_are_audited_like_http() {
    let (p, up, token) = start().await;
    for mut m in [
        Mcp::legacy(p.addr, &token, "2025-11-25").await,
        Mcp::modern(p.addr, &token, false),
    ] {
        assert_eq!(m.tool_names().await, BOT_TOOLS);
        let before = up.hits();
        let r = m
            .tool(
                "tickets.get",
                json!({"id": "42", "query": {"expand": "all", "tag": ["a b", "c"]}}),
            )
            .await;
        assert_eq!(r["isError"], false, "{r}");
        assert_eq!(r["structuredContent"]["refund"], "r-991", "{r}");
        assert!(text_of(&r).contains("r-991"));
        assert_eq!(up.hits(), before + 1);
        let seen = up.last();
        assert_eq!(seen.method, "GET");
        assert_eq!(seen.target, "/v2/tickets/42?expand=all&tag=a%20b&tag=c");
        assert_eq!(seen.header("authorization"), Some(UPSTREAM_KEY));
        assert_eq!(seen.header("x-tenant-id"), Some("acme"));
        assert!(!seen.has("idempotency-key"));
        // An idempotency key from `_meta` is sent as the header.
        let r = m
            .call(
                "tools/call",
                json!({"name": "tickets.get", "arguments": {"id": "43"},
                       "_meta": {"idempotencyKey": "key-7f3a"}}),
            )
            .await;
        assert_eq!(r["isError"], false, "{r}");
        assert_eq!(up.last().header("idempotency-key"), Some("key-7f3a"));
        // A body for a method that takes one.
        let r = m
            .tool(
                "tickets.comments.create",
                json!({"id": "7", "body": {"text": "hi"}}),
            )
            .await;
        assert_eq!(r["isError"], false, "{r}");
        let seen = up.last();
        assert_eq!(seen.target, "/v2/tickets/7/comments");
        assert_eq!(seen.body, br#"{"text":"hi"}"#);
        assert_eq!(seen.header("content-type"), Some("application/json"));
        // Denied: not granted; the upstream sees nothing, the model reads why.
        let hits = up.hits();
        let r = m.tool("tickets.delete", json!({"id": "42"})).await;
        assert_eq!(r["isError"], true, "{r}");
        assert_eq!(r["structuredContent"]["reason"], "not_granted", "{r}");
        assert_eq!(r["structuredContent"]["tool"], "tickets.delete");
        assert!(text_of(&r).contains("not_granted"));
        // Over the ceiling.
        let r = m.tool("tickets.comments.delete", json!({"id": "1"})).await;
        assert_eq!(r["structuredContent"]["reason"], "risk_ceiling", "{r}");
        assert_eq!(up.hits(), hits);
        // An unknown tool is a protocol error, not a call.
        let e = m
            .raw(
                "tools/call",
                json!({"name": "nope.nothing", "arguments": {}}),
            )
            .await
            .json();
        assert_eq!(e["error"]["code"], -32602, "{e}");
        // Missing or unknown arguments.
        let e = m
            .raw(
                "tools/call",
                json!({"name": "tickets.get", "arguments": {"nope": 1}}),
            )
            .await
            .json();
        assert_eq!(e["error"]["code"], -32602, "{e}");
        assert_eq!(up.hits(), hits);
    }
    // One record per call, with via and the JSON-RPC id; the upstream key never there.
    let audit = p.audit_text();
    let recs: Vec<Value> = audit
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|r: &Value| r["via"] == "mcp")
        .collect();
    let gets: Vec<&Value> = recs.iter().filter(|r| r["tool"] == "tickets.get").collect();
    assert_eq!(gets.len(), 4, "{audit}");
    assert_eq!(gets[0]["decision"], "allow");
    assert_eq!(gets[0]["path"], "/tickets/42?expand=all&tag=a%20b&tag=c");
    assert!(gets.iter().all(|r| r["jsonrpc_id"].is_string()));
    let denied: Vec<&Value> = recs
        .iter()
        .filter(|r| r["tool"] == "tickets.delete")
        .collect();
    assert_eq!(denied.len(), 2);
    assert_eq!(denied[0]["reason"], "not_granted");
    assert!(!audit.contains("upstream-key-0f4e2d9c8b7a"));
    // tools/list is counted, not recorded.
    assert!(!recs.iter().any(|r| r["tool"].is_null()), "{audit}");
    let m = common::admin_call(p.admin, "GET", "/metrics", ap::ALICE, None).await;
    let text = m.text();
    assert!(
        text.lines()
            .any(|l| l.starts_with("portcullis_requests_total{")
                && l.contains("via=\"mcp\"")
                && l.contains("tool=\"tickets.get\"")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("portcullis_mcp_messages_total{") && l.contains("tools/list")),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn arguments_that_move_the_request_are_refused_and_never_sent() {
    // A route that accepts %2F: `1/refund` as the id of `tickets.create` would reach the
    // critical refund if the proxy took the built request for what it became.
    let up = ReplayUpstream::start().await;
    let cfg = ap::config("n1", EMBEDDED, &up.url(), "").replace(
        "    tool_prefix: tickets\n",
        "    tool_prefix: tickets\n    allow_encoded_slash: true\n",
    );
    let cfg = cfg.replace(
        r#"tools: ["tickets.get", "tickets.list", "tickets.comments.*"]"#,
        r#"tools: ["tickets.get", "tickets.list", "tickets.comments.*", "tickets.create"]"#,
    );
    let p = Proxy::start(&cfg, &[("API_KEY", UPSTREAM_KEY)]);
    let (token, _) = issue(p.admin, "bot").await;
    let mut m = Mcp::modern(p.addr, &token, true);
    let r = m.tool("tickets.create", json!({"id": "1/refund"})).await;
    assert_eq!(r["isError"], true, "{r}");
    assert_eq!(r["structuredContent"]["reason"], "tool_mismatch", "{r}");
    for id in ["..", ".", "", "1/../../admin"] {
        let r = m.tool("tickets.get", json!({"id": id})).await;
        assert_eq!(r["isError"], true, "{id:?}: {r}");
    }
    // The plain one still works: the refusals were about the arguments.
    let r = m.tool("tickets.create", json!({"id": "1"})).await;
    assert_eq!(r["isError"], false, "{r}");
    assert_eq!(up.hits(), 1, "only the plain call reached the upstream");
    let pending = ap::admin(p.admin, ALICE, "GET", "/approvals", None)
        .await
        .json();
    assert_eq!(pending.as_array().map_or(0, Vec::len), 0, "{pending}");
    let audit = p.audit_text();
    assert!(audit.contains("\"reason\":\"tool_mismatch\""), "{audit}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_parked_call_is_a_task_that_completes_after_approval() {
    let (p, up, token) = start().await;
    let mut m = Mcp::modern(p.addr, &token, true);
    let t = m
        .tool("tickets.refund", json!({"id": "9", "body": {"amount": 5}}))
        .await;
    assert_eq!(t["resultType"], "task", "{t}");
    assert_eq!(t["status"], "working");
    assert!(t["ttlMs"].is_u64() && t["pollIntervalMs"].is_u64(), "{t}");
    let id = t["taskId"].as_str().unwrap().to_string();
    assert_eq!(up.hits(), 0);
    let g = m.call("tasks/get", json!({"taskId": id})).await;
    assert_eq!(g["status"], "working");
    assert_eq!(g["resultType"], "complete");
    // Another agent cannot see it.
    let (other, _) = issue(p.admin, "other").await;
    let e = Mcp::modern(p.addr, &other, true)
        .raw("tasks/get", json!({"taskId": id}))
        .await
        .json();
    assert_eq!(e["error"]["code"], -32602, "{e}");
    // Critical: two approvers.
    assert!(approve(p.admin, ALICE, &id, None).await.status < 300);
    assert!(approve(p.admin, BOB, &id, None).await.status < 300);
    wait_state(p.admin, &id, "executed", BOUND).await;
    let g = m.call("tasks/get", json!({"taskId": id})).await;
    assert_eq!(g["status"], "completed", "{g}");
    assert_eq!(g["result"]["structuredContent"]["refund"], "r-991", "{g}");
    assert_eq!(g["result"]["isError"], false, "{g}");
    assert_eq!(up.hits(), 1);
    assert_eq!(up.last().body, br#"{"amount":5}"#);
    // The park record is MCP's, with its JSON-RPC id.
    let audit = p.audit_text();
    let park = audit
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|r| r["decision"] == "park")
        .expect("a park record");
    assert_eq!(park["via"], "mcp");
    assert_eq!(park["approval_id"], id.as_str());
}

#[tokio::test(flavor = "multi_thread")]
async fn without_tasks_a_parked_call_names_its_approval_and_approval_status_waits() {
    let (p, up, token) = start().await;
    let mut m = Mcp::legacy(p.addr, &token, "2025-06-18").await;
    let r = m.tool("tickets.close", json!({"id": "3"})).await;
    assert_eq!(r["isError"], false, "{r}");
    let parked = &r["_meta"]["portcullis/approval"];
    let id = parked["approval_id"].as_str().unwrap().to_string();
    assert!(text_of(&r).contains(&id));
    assert!(text_of(&r).contains("portcullis.approval_status"));
    assert!(parked["expires_at"].is_string());
    let s = m
        .tool(
            "portcullis.approval_status",
            json!({"approval_id": id, "wait_seconds": 0}),
        )
        .await;
    assert_eq!(
        s["_meta"]["portcullis/approval"]["status"], "pending",
        "{s}"
    );
    assert_eq!(up.hits(), 0);
    // The long poll returns when the operator's approval lands.
    let waiter = {
        let (addr, token, session) = (p.addr, token.clone(), m.session.clone());
        let id = id.clone();
        tokio::spawn(async move {
            let mut m = Mcp::modern(addr, &token, false);
            m.session = session;
            m.tool(
                "portcullis.approval_status",
                json!({"approval_id": id, "wait_seconds": 20}),
            )
            .await
        })
    };
    assert!(approve(p.admin, ALICE, &id, None).await.status < 300);
    let mut s = waiter.await.unwrap();
    // The poll wakes on the first change (approved, executing); ask until executed.
    while s["_meta"]["portcullis/approval"]["status"] != "executed" {
        s = m
            .tool(
                "portcullis.approval_status",
                json!({"approval_id": id, "wait_seconds": 10}),
            )
            .await;
    }
    assert_eq!(s["isError"], false, "{s}");
    assert_eq!(s["structuredContent"]["refund"], "r-991", "{s}");
    assert_eq!(up.hits(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn cancelling_a_task_withdraws_the_request() {
    let (p, up, token) = start().await;
    // 2025-11-25 experimental tasks: asked for on the call.
    let mut m = Mcp::legacy(p.addr, &token, "2025-11-25").await;
    let t = m
        .call(
            "tools/call",
            json!({"name": "tickets.close", "arguments": {"id": "5"}, "task": {"ttl": 60000}}),
        )
        .await;
    let id = t["task"]["taskId"].as_str().expect("a task").to_string();
    assert_eq!(t["task"]["status"], "working");
    let c = m.call("tasks/cancel", json!({"taskId": id})).await;
    assert_eq!(c["status"], "cancelled", "{c}");
    let v = wait_state(p.admin, &id, "denied", BOUND).await;
    assert_eq!(v["reason"], "withdrawn");
    let r = approve(p.admin, ALICE, &id, None).await;
    assert_eq!(r.status, 409, "{}", r.text());
    let res = m.call("tasks/result", json!({"taskId": id})).await;
    assert_eq!(res["isError"], true, "{res}");
    assert_eq!(up.hits(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_modern_wire_checks_its_headers_and_the_endpoint_its_callers() {
    let (p, _up, token) = start().await;
    let env = |name: &str| {
        json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":name,"arguments":{"id":"1"},
            "_meta":{"io.modelcontextprotocol/protocolVersion":MODERN,"io.modelcontextprotocol/clientCapabilities":{}}}})
    };
    let ok_headers = [
        ("mcp-protocol-version", MODERN),
        ("mcp-method", "tools/call"),
        ("mcp-name", "tickets.get"),
    ];
    let r = post(p.addr, &token, &ok_headers, &env("tickets.get")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // Mcp-Name disagrees with the body: refused before anything is called.
    let r = post(p.addr, &token, &ok_headers, &env("tickets.refund")).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["code"], -32020);
    let r = post(
        p.addr,
        &token,
        &[
            ("mcp-protocol-version", MODERN),
            ("mcp-method", "tools/list"),
            ("mcp-name", "tickets.get"),
        ],
        &env("tickets.get"),
    )
    .await;
    assert_eq!(r.json()["error"]["code"], -32020);
    let mut future = env("tickets.get");
    future["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"] = "2099-01-01".into();
    let r = post(
        p.addr,
        &token,
        &[
            ("mcp-protocol-version", "2099-01-01"),
            ("mcp-method", "tools/call"),
            ("mcp-name", "tickets.get"),
        ],
        &future,
    )
    .await;
    assert_eq!(r.status, 400);
    let v = r.json();
    assert_eq!(v["error"]["code"], -32022);
    assert!(v["error"]["data"]["supported"]
        .as_array()
        .unwrap()
        .contains(&json!(MODERN)));
    let mut m = Mcp::modern(p.addr, &token, false);
    let r = m.raw("no/such", json!({})).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], -32601);
    let d = m.call("server/discover", json!({})).await;
    assert!(d["supportedVersions"]
        .as_array()
        .unwrap()
        .contains(&json!("2025-11-25")));
    assert!(d["capabilities"]["extensions"]["io.modelcontextprotocol/tasks"].is_object());
    // GET and DELETE on the modern wire.
    for method in ["GET", "DELETE"] {
        let r = common::send(
            p.addr,
            common::request(method, p.addr, "/mcp", &token)
                .header("mcp-protocol-version", MODERN)
                .body(common::empty())
                .unwrap(),
        )
        .await
        .unwrap();
        assert_eq!(r.status, 405, "{method}");
    }
    // A notification: 202.
    let r = post(
        p.addr,
        &token,
        &[("mcp-protocol-version", MODERN)],
        &json!({"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":1}}),
    )
    .await;
    assert_eq!(r.status, 202);
    // No credential: the same 401 as HTTP; an operator token is not an agent.
    for t in ["", ap::ALICE] {
        let r = post(p.addr, t, &ok_headers, &env("tickets.get")).await;
        assert_eq!(r.status, 401);
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    }
    // A foreign Origin: 403 (DNS rebinding).
    let r = post(
        p.addr,
        &token,
        &[
            ("origin", "http://evil.example"),
            ("mcp-protocol-version", MODERN),
            ("mcp-method", "tools/call"),
            ("mcp-name", "tickets.get"),
        ],
        &env("tickets.get"),
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.text());
    // A loopback page of this very address (Origin = the Host it was sent to) passes;
    // a loopback page of another port does not.
    let same = format!("http://{}", p.addr);
    let other_port = format!("http://127.0.0.1:{}", p.addr.port() ^ 1);
    for (origin, want) in [(same.as_str(), 200), (other_port.as_str(), 403)] {
        let r = post(
            p.addr,
            &token,
            &[
                ("origin", origin),
                ("mcp-protocol-version", MODERN),
                ("mcp-method", "tools/call"),
                ("mcp-name", "tickets.get"),
            ],
            &env("tickets.get"),
        )
        .await;
        assert_eq!(r.status, want, "Origin {origin}: {}", r.text());
    }
    // Handshake era without a session, and with a forged one.
    let list = json!({"jsonrpc":"2.0","id":2,"method":"tools/list"});
    let r = post(p.addr, &token, &[], &list).await;
    assert_eq!(r.status, 400, "{}", r.text());
    let r = post(
        p.addr,
        &token,
        &[("mcp-session-id", "s1.forged.sig")],
        &list,
    )
    .await;
    assert_eq!(r.status, 404, "{}", r.text());
    // A session is bound to the credential that opened it.
    let mine = Mcp::legacy(p.addr, &token, "2025-03-26").await;
    let (other, _) = issue(p.admin, "other").await;
    let sid = mine.session.as_ref().unwrap().1.clone();
    let r = post(p.addr, &other, &[("mcp-session-id", &sid)], &list).await;
    assert_eq!(r.status, 404);
    let r = post(p.addr, &token, &[("mcp-session-id", &sid)], &list).await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread")]
async fn origins_on_the_allow_list_pass_and_sessions_hold_on_any_replica() {
    use crate::support::redis::{random_prefix, RedisServer};
    let redis = RedisServer::start();
    let prefix = random_prefix();
    let up = ReplayUpstream::start().await;
    let key = "an-mcp-session-key-of-at-least-32-bytes";
    let extra = "mcp: { allowed_origins: [\"https://app.example\"], session_key_env: MCP_KEY }\n";
    let replica = |node: &str, extra: &str| {
        Proxy::start(
            &ap::config(node, &ap::redis_store(&prefix), &up.url(), extra),
            &[
                ("API_KEY", UPSTREAM_KEY),
                ("REDIS_URL", &redis.url()),
                ("MCP_KEY", key),
            ],
        )
    };
    let a = replica("a", extra);
    let b = replica("b", extra);
    let c = replica("c", "");
    let (token, _) = issue(a.admin, "bot").await;
    let m = Mcp::legacy(a.addr, &token, "2025-06-18").await;
    let sid = m.session.as_ref().unwrap().1.clone();
    let ping = json!({"jsonrpc":"2.0","id":3,"method":"ping"});
    for p in [&a, &b] {
        let r = post(
            p.addr,
            &token,
            &[("origin", "https://app.example"), ("mcp-session-id", &sid)],
            &ping,
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // A replica with another key does not know the session: the client starts anew.
    let r = post(c.addr, &token, &[("mcp-session-id", &sid)], &ping).await;
    assert_eq!(r.status, 404, "{}", r.text());
    let r = post(
        b.addr,
        &token,
        &[
            ("origin", "https://other.example"),
            ("mcp-session-id", &sid),
        ],
        &ping,
    )
    .await;
    assert_eq!(r.status, 403);
}

/// Reads an SSE response until `needle` shows up (bounded).
async fn stream_until(
    addr: SocketAddr,
    req: http::Request<http_body_util::Full<Bytes>>,
    needle: &str,
    mut on_open: impl FnMut(),
) -> String {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let resp = tx.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let mut body = resp.into_body();
    let mut seen = String::new();
    let mut opened = false;
    let end = tokio::time::Instant::now() + BOUND;
    loop {
        let f = tokio::time::timeout_at(end, body.frame())
            .await
            .unwrap_or_else(|_| panic!("no `{needle}` on the stream: {seen}"));
        let f = f.expect("stream ended").unwrap();
        if let Ok(d) = f.into_data() {
            seen.push_str(&String::from_utf8_lossy(&d));
        }
        if !opened {
            opened = true;
            on_open();
        }
        if seen.contains(needle) {
            return seen;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_switch_that_changes_the_list_is_announced_on_both_streams() {
    let (p, _up, token) = start().await;
    let m = Mcp::legacy(p.addr, &token, "2025-06-18").await;
    let (v, sid) = m.session.clone().unwrap();
    let admin = p.admin;
    let pause = move |target: &'static str| {
        tokio::spawn(async move {
            let r = ap::admin(
                admin,
                ap::ISSUER,
                "POST",
                "/pause",
                Some(&json!({"scope": "tool", "target": target})),
            )
            .await;
            assert!(r.status < 300, "{}", r.text());
        });
    };
    let get = common::request("GET", p.addr, "/mcp", &token)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", &sid)
        .header("mcp-protocol-version", &v)
        .body(http_body_util::Full::new(Bytes::new()))
        .unwrap();
    stream_until(p.addr, get, "notifications/tools/list_changed", || {
        pause("tickets.get")
    })
    .await;
    let body = json!({"jsonrpc":"2.0","id":"listen-1","method":"subscriptions/listen","params":{
        "notifications": {"toolsListChanged": true},
        "_meta": {"io.modelcontextprotocol/protocolVersion": MODERN, "io.modelcontextprotocol/clientCapabilities": {}}}});
    let listen = common::request("POST", p.addr, "/mcp", &token)
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .header("mcp-protocol-version", MODERN)
        .header("mcp-method", "subscriptions/listen")
        .body(http_body_util::Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let seen = stream_until(p.addr, listen, "notifications/tools/list_changed", || {
        pause("tickets.close")
    })
    .await;
    assert!(
        seen.contains("notifications/subscriptions/acknowledged"),
        "{seen}"
    );
    assert!(seen.contains("listen-1"), "{seen}");
    // A reload that changes the agent's profile is announced too.
    let get = common::request("GET", p.addr, "/mcp", &token)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", &sid)
        .header("mcp-protocol-version", &v)
        .body(http_body_util::Full::new(Bytes::new()))
        .unwrap();
    let cfg = std::fs::read_to_string(&p.config_path).unwrap().replace(
        r#"approval: ["tickets.refund", "tickets.close", "tickets.quick"]"#,
        r#"approval: ["tickets.refund", "tickets.close"]"#,
    );
    assert!(!cfg.contains("tickets.quick\"]"), "the edit applies");
    let p = &p;
    stream_until(p.addr, get, "notifications/tools/list_changed", move || {
        p.write_config(&cfg)
    })
    .await;
    let names = Mcp::modern(p.addr, &token, false).tool_names().await;
    assert!(!names.contains(&"tickets.quick".to_string()), "{names:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn more_than_a_hundred_tools_come_in_pages() {
    let up = ReplayUpstream::start().await;
    let paths: Vec<String> = (0..130).map(|i| format!("\"/many/p{i:03}\"")).collect();
    let cfg = format!(
        "{}upstreams: {{ api: {{ url: {} }} }}\nroutes:\n  - {{ prefix: /many, upstream: api, paths: [{}] }}\n",
        common::config(""),
        up.url(),
        paths.join(", ")
    );
    let p = Proxy::start(&cfg, &[]);
    let token = p.agent_token("bot").await;
    let mut m = Mcp::modern(p.addr, &token, false);
    let first = m.call("tools/list", json!({})).await;
    assert_eq!(first["tools"].as_array().unwrap().len(), 100);
    assert!(first["nextCursor"].is_string());
    let names = m.tool_names().await;
    // 130 templates × (list, create, update for PUT and PATCH, delete), plus the
    // built-in tool.
    assert_eq!(names.len(), 130 * 4 + 1);
    let mut sorted = names.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(names, sorted, "deterministic order, no repeats");
    assert_eq!(m.tool_names().await, names, "the same order every time");
    let e = m
        .raw("tools/list", json!({"cursor": "not-a-cursor"}))
        .await
        .json();
    assert_eq!(e["error"]["code"], -32602);
}
