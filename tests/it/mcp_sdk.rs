//! The official MCP Python SDK (PyPI `mcp`, v2) drives the real binary in both modes —
//! handshake sessions and 2026-07-28 — through `tests/mcp_sdk/prove.py`: the agent's
//! exact tool list, an allowed call, a readable denial, a parked refund approved
//! through the admin API and its executed result (through the task, and through
//! `portcullis.approval_status` without tasks). The SDK must be installed (`.ci/run`
//! makes the venv): a missing one fails this test, it never skips.

use crate::common::{self, Proxy};
use crate::support::approvals::{
    self as ap, issue, ReplayUpstream, ALICE, BOB, EMBEDDED, UPSTREAM_KEY,
};
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;

/// The venv `.ci/run` creates (`PORTCULLIS_MCP_PYTHON` names another interpreter).
fn python() -> PathBuf {
    let p = std::env::var_os("PORTCULLIS_MCP_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| common::crate_path("target/mcp-venv/bin/python"));
    assert!(
        p.exists(),
        "the MCP Python SDK is not installed at {}: run `.ci/run`, or \
         `python3 -m venv target/mcp-venv && target/mcp-venv/bin/pip install 'mcp>=2,<3'`",
        p.display()
    );
    p
}

async fn prove(mode: &str) -> (Value, ReplayUpstream, Proxy) {
    let py = python();
    let up = ReplayUpstream::start().await;
    let p = Proxy::start(
        &ap::config("n1", EMBEDDED, &up.url(), ""),
        &[("API_KEY", UPSTREAM_KEY)],
    );
    let (token, _) = issue(p.admin, "bot").await;
    let mut cmd = tokio::process::Command::new(py);
    cmd.arg(common::crate_path("tests/mcp_sdk/prove.py"))
        .arg(format!("http://{}/mcp", p.addr))
        .arg(&token)
        .arg(format!("http://{}", p.admin))
        .arg(ALICE)
        .arg(BOB)
        .arg(mode)
        .kill_on_drop(true)
        .stdin(std::process::Stdio::null());
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("prove.py {mode} did not finish within 120 s"))
        .expect("run prove.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "prove.py {mode} failed ({}):\n{stdout}\n{stderr}\n--- proxy log ---\n{}",
        out.status,
        p.logs()
    );
    let last = stdout.lines().last().unwrap_or_default();
    let v: Value = serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("prove.py {mode}: no summary ({e}): {stdout}\n{stderr}"));
    (v, up, p)
}

fn check_common(v: &Value, up: &ReplayUpstream) {
    let tools: Vec<&str> = v["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(
        tools,
        [
            "portcullis.approval_status",
            "tickets.close",
            "tickets.comments.create",
            "tickets.comments.list",
            "tickets.comments.update",
            "tickets.get",
            "tickets.quick",
            "tickets.refund",
        ],
        "{v}"
    );
    assert_eq!(v["refund_risk"], "critical");
    assert_eq!(v["allowed"]["refund"], "r-991", "{v}");
    assert_eq!(v["denied_reason"], "not_granted", "{v}");
    assert!(v["denied_text"].as_str().unwrap().contains("not_granted"));
    assert_eq!(v["refund"]["refund"], "r-991", "{v}");
    // tickets.get once, the approved refund once; the denial never.
    assert_eq!(up.hits(), 2, "{v}");
    let last = up.last();
    assert_eq!(last.target, "/v2/tickets/9/refund");
    assert_eq!(last.body, br#"{"amount":5}"#);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_python_sdk_with_sessions_and_approval_status() {
    let (v, up, _p) = prove("legacy").await;
    assert_eq!(v["protocol_version"], "2025-11-25", "{v}");
    assert!(v["parked_text"]
        .as_str()
        .unwrap()
        .contains("portcullis.approval_status"));
    assert_eq!(v["approval_status"], "executed");
    check_common(&v, &up);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_python_sdk_on_2026_07_28_with_tasks() {
    let (v, up, _p) = prove("auto").await;
    assert_eq!(v["protocol_version"], "2026-07-28", "{v}");
    assert_eq!(v["task_status_at_creation"], "working", "{v}");
    assert!(v["task_statuses"]
        .as_array()
        .unwrap()
        .contains(&Value::from("completed")));
    check_common(&v, &up);
}
