//! The gate on GitHub's whole imported REST description (1,223 operations), for an
//! instruction counter or a CPU clock: `N` requests of one case through
//! `canon::canonicalize` → `classifier.classify` → `pipeline::decide_all`, on the config
//! `benches/gate.rs` uses for its `github_*` cases. Prints the loop's own CPU time per
//! request (the thread's clock: time the process spends descheduled on a busy machine
//! is not counted; the import before the loop is not either).
//!
//! ```sh
//! cargo build --release --example bench-gate-github
//! target/release/examples/bench-gate-github allow 2000000
//! # instructions per request: the difference of two counts over the difference of N
//! for n in 0 100000; do valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!   target/release/examples/bench-gate-github allow $n 2>&1 | grep 'refs:'; done
//! ```

use http::{Method, Uri, Version};
use portcullis::canon;
use portcullis::config::Snapshot;
use portcullis::policy::{Narrowing, Switches};
use std::hint::black_box;
use std::path::Path;

#[path = "github_gate.rs"]
mod github_gate;
use github_gate::{github_spec, github_yaml, request_headers};

/// (case, agent, method, target, decision): `benches/gate.rs`'s `github_*` cases.
const CASES: [(&str, &str, &str, &str, &str); 5] = [
    (
        "allow",
        "bot",
        "GET",
        "/github/repos/octo/hello/issues/42/comments?per_page=50",
        "allow",
    ),
    ("deny", "bot", "DELETE", "/github/repos/octo/hello", "deny"),
    (
        "park",
        "bot",
        "POST",
        "/github/repos/octo/hello/forks",
        "park",
    ),
    (
        "lenient",
        "bot",
        "GET",
        "/github/repos/octo/hello/Pulls.json",
        "deny",
    ),
    (
        "passthrough",
        "opsbot",
        "PATCH",
        "/github/repos/octo/hello/issues/7",
        "allow",
    ),
];

fn thread_cpu() -> std::time::Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to fill.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime");
    std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: bench-gate-github allow|deny|park|lenient|passthrough N";
    let case = args.get(1).expect(usage);
    let n: u64 = args.get(2).and_then(|s| s.parse().ok()).expect(usage);
    let (_, agent, method, target, expect) = *CASES.iter().find(|c| c.0 == case).expect(usage);

    let dir = tempfile::tempdir().expect("tempdir");
    let spec = github_spec(dir.path());
    let snap = Snapshot::parse(Path::new("bench.yaml"), &github_yaml(&spec), &|_| {
        Some("k".into())
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let agent = snap.agents[agent].clone();
    let headers = request_headers();
    let method: Method = method.parse().expect("method");
    let uri: Uri = target.parse().expect("target");
    let (narrowing, switches) = (Narrowing::default(), Switches::default());
    let once = || {
        let c = canon::canonicalize(
            black_box(&method),
            black_box(&uri),
            Version::HTTP_11,
            &headers,
        )
        .expect("canonical");
        let tool = snap
            .classifier
            .classify(c.method, &c.path)
            .expect("classified");
        portcullis::pipeline::decide_all(
            &snap, &agent, &narrowing, &switches, &c, &headers, None, tool,
        )
        .expect("decided")
        .decision
    };
    let d = once();
    assert_eq!(d.label(), expect, "{case}: {d:?}");
    let t0 = thread_cpu();
    for _ in 0..n {
        black_box(once());
    }
    let spent = thread_cpu() - t0;
    if n > 0 {
        println!(
            "github_{case}: {n} requests, {:.0} ns/request (thread CPU time)",
            spent.as_nanos() as f64 / n as f64
        );
    }
}
