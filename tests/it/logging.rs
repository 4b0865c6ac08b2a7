//! The log sink never stalls a request: with stderr's reader stopped (a full pipe), the
//! proxy keeps answering, drops the lines its bounded queue cannot hold, and counts them
//! in `portcullis_log_lines_dropped_total`.

use crate::common::{self, admin_call, base_config, parse_listening, Behaviour, Upstream};
use crate::support::admin::issue_at;
use crate::support::audit::parse_exposition;
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_stderr_drops_log_lines_and_never_stalls_requests() {
    let up = Upstream::start(Behaviour::Fixed).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("portcullis.yaml");
    let yaml = format!(
        "{}{}upstreams: {{ api: {{ url: \"{}\" }} }}\nroutes: [{{ prefix: /tickets, upstream: api, tool_prefix: tickets }}]\n",
        base_config(),
        common::TEST_TIMERS.to_string() + "\n",
        up.url()
    );
    std::fs::write(&cfg, yaml).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["serve", "--log-queue", "64", "--config"])
        .arg(&cfg)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read up to the listening line, then never read stderr again: once the pipe's
    // buffer (64 KiB on Linux) and the 64-line queue are full, every further line is
    // dropped, never waited for.
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let (addr, admin) = loop {
        let mut line = String::new();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "exited before listening"
        );
        if let Some(a) = parse_listening(&line) {
            break a;
        }
    };
    let bot = issue_at(admin, json!({"agent": "bot", "ttl": "1h"}))
        .await
        .token;
    // ~250 bytes of log line each: 1,000 requests write far more than the pipe holds.
    for i in 0..1000 {
        let r = tokio::time::timeout(
            common::REQUEST_BOUND,
            common::get(addr, &format!("/tickets/{i}"), &bot),
        )
        .await
        .unwrap_or_else(|_| panic!("request {i} stalled behind the log"));
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
    }
    let m = admin_call(admin, "GET", "/metrics", common::OPERATOR_SECRET, None).await;
    let e = parse_exposition(&m.text()).unwrap();
    let dropped = e
        .value("portcullis_log_lines_dropped_total", &[])
        .expect("portcullis_log_lines_dropped_total exported");
    assert!(dropped > 0.0, "no line counted as dropped");
    assert_eq!(up.hits(), 1000, "every request reached the upstream");
    let _ = child.kill();
    let _ = child.wait();
    drop(stderr);
}
