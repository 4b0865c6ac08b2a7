//! The cost of one condition on a 1 KiB JSON body, for an instruction counter or a CPU
//! clock: `N` requests through `pipeline::decide_all` (canon, classify, conditions,
//! decide) for agent `plain` (granted the tool outright: no condition applies, the body
//! is not read) or `cond` (granted it `when: "request.body.amount <= 50"`).
//!
//! ```sh
//! cargo build --release --example bench-conditions
//! for a in plain cond; do /usr/bin/time -f "$a %U s" target/release/examples/bench-conditions $a 200000; done
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null target/release/examples/bench-conditions cond 20000
//! ```
//!
//! `benches/gate.rs` (`cond_none`, `cond_body`) times the same with criterion.

use http::{HeaderMap, HeaderValue, Method, Version};
use portcullis::conditions::body::Read;
use portcullis::config::Snapshot;
use std::hint::black_box;
use std::path::Path;

const CONFIG: &str = r#"
upstreams:
  pay: { url: "http://127.0.0.1:7000" }
routes:
  - prefix: /pay
    upstream: pay
    paths: ["/pay/{id}"]
    tools: [{ match: "POST /pay/{id}/refund", name: pay.refund, risk: medium }]
profiles:
  plain: { tools: [pay.refund], max_risk: medium }
  cond: { tools: [{ tool: pay.refund, when: "request.body.amount <= 50" }], max_risk: medium }
agents:
  plain: { profile: plain }
  cond: { profile: cond }
"#;

/// A 1 KiB JSON refund body (the one `benches/gate.rs` uses).
fn body() -> String {
    let mut items = String::new();
    let mut body = String::new();
    let mut i = 0;
    while body.len() < 1024 {
        if i > 0 {
            items.push_str(", ");
        }
        items.push_str(&format!(
            r#"{{"sku": "SKU-{i:05}", "qty": {}, "price": 9.5}}"#,
            i % 4 + 1
        ));
        i += 1;
        body = format!(
            r#"{{"amount": 42, "currency": "EUR", "reason": "damaged in transit", "items": [{items}]}}"#
        );
    }
    body
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(agent), Some(n)) = (args.get(1), args.get(2).and_then(|n| n.parse::<u32>().ok()))
    else {
        eprintln!("usage: bench-conditions plain|cond N");
        std::process::exit(2);
    };
    let snap = Snapshot::parse(Path::new("bench.yaml"), CONFIG, &|_| None).expect("config");
    let read = Read::Bytes {
        bytes: body().into_bytes().into(),
        json: true,
    };
    let mut h = HeaderMap::new();
    h.insert(http::header::HOST, HeaderValue::from_static("api.example"));
    let a = snap.agents[agent.as_str()].clone();
    let uri: http::Uri = "/pay/7/refund".parse().expect("uri");
    for _ in 0..n {
        let c = portcullis::canon::canonicalize(&Method::POST, &uri, Version::HTTP_11, &h)
            .expect("canonical");
        let tool = snap.classifier.classify(c.method, &c.path).expect("tool");
        let j = portcullis::pipeline::decide_all(
            &snap,
            &a,
            &Default::default(),
            &Default::default(),
            &c,
            &h,
            Some(&read),
            tool,
        )
        .expect("decided");
        assert_eq!(j.decision.label(), "allow");
        black_box(j.decision);
    }
}
