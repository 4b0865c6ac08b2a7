//! What watching an agent costs the request path: `Signals::observe` for an answered
//! call (every signal on, a known tool) and for a refusal below the threshold, on one
//! thread and on two threads counting the same agent at once.
//!
//! ```sh
//! CARGO_TARGET_DIR=target/bench cargo bench --bench signals
//! ```
//!
//! Prints one `signals ns/request` line per case (target: ≤ 200 ns).

use portcullis::signals::config::{compile, RawSignals};
use portcullis::signals::{Outcome, Signals};
use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

const REQUEST_ID: &str = "01a22cc1-6708-756e-9830-cba9e3eeb760";

fn main() {
    // Every signal on; thresholds out of reach, so the loop measures counting only.
    let raw: RawSignals = serde_yaml::from_str(
        "refusal_burst: { threshold: 1000000000 }\nnew_tool: { learn_for: 0s }\n",
    )
    .expect("yaml");
    let cfg = compile(Some(&raw), &BTreeMap::new(), std::iter::empty()).expect("rules");
    let rules = cfg.default.clone();
    let s = Arc::new(Signals::default());
    let tool: Arc<str> = Arc::from("tickets.get");
    let answered = |s: &Signals| {
        s.observe(
            &rules,
            false,
            "support-bot",
            Some("01a22cc1d2"),
            REQUEST_ID,
            Outcome::Answered {
                upstream_status: Some(200),
                tool: Some(&tool),
                bytes: Some(512),
            },
        )
    };
    // The first call of the tool is the rare path; it is not what is measured.
    answered(&s);
    let refused = |s: &Signals| {
        s.observe(
            &rules,
            false,
            "support-bot",
            Some("01a22cc1d2"),
            REQUEST_ID,
            Outcome::Refused { brake: false },
        )
    };
    let n = 2_000_000u32;
    let time = |name: &str, f: &dyn Fn() -> bool| {
        let t = Instant::now();
        for _ in 0..n {
            black_box(f());
        }
        let ns = t.elapsed().as_nanos() as f64 / f64::from(n);
        println!("signals ns/request {name:<24} {ns:>8.0}");
    };
    time("answered", &|| answered(black_box(&s)).is_some());
    time("refused", &|| refused(black_box(&s)).is_some());
    // Two threads, one agent: the per-agent lock shared.
    let t = Instant::now();
    std::thread::scope(|sc| {
        for _ in 0..2 {
            sc.spawn(|| {
                for _ in 0..n / 2 {
                    black_box(answered(black_box(&s)));
                }
            });
        }
    });
    let ns = t.elapsed().as_nanos() as f64 / f64::from(n);
    println!("signals ns/request {:<24} {ns:>8.0}", "answered, 2 threads");
}
