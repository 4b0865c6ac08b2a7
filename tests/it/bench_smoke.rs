//! The benchmark harness must not rot: `bench/run.sh` in its ~5-second smoke mode
//! (`SMOKE=1`) against the binaries this test run built, asserting that it printed the
//! report table and wrote a CSV. The numbers themselves are not checked (CI is noisy).
//!
//! Skipped, with the reason printed, where the harness cannot run: without nginx, wrk
//! (`.ci/run` installs neither), or the `bench-upstream` example (`cargo test` builds
//! examples; `cargo test --test bench_smoke` alone does not).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Upper bound for the whole smoke run (it takes ~5 s; CI machines are slow and busy).
const BOUND: Duration = Duration::from_secs(180);

fn installed(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn reader(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = r.read_to_string(&mut s);
        s
    })
}

#[test]
fn bench_smoke_mode_prints_the_table_and_writes_a_csv() {
    for tool in [
        "bash",
        "nginx",
        "wrk",
        "taskset",
        "curl",
        "pgrep",
        "sha256sum",
    ] {
        if !installed(tool) {
            eprintln!(
                "skipping the benchmark smoke test: `{tool}` is not installed \
                 (apt-get install -y nginx wrk)"
            );
            return;
        }
    }
    let portcullis = PathBuf::from(env!("CARGO_BIN_EXE_portcullis"));
    let upstream = portcullis
        .parent()
        .expect("bin dir")
        .join("examples")
        .join("bench-upstream");
    if !upstream.exists() {
        eprintln!(
            "skipping the benchmark smoke test: {} is not built \
             (`cargo test` builds it; or `cargo build --example bench-upstream`)",
            upstream.display()
        );
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = tempfile::tempdir().expect("temp dir");
    let mut child = Command::new("bash")
        .arg(root.join("bench/run.sh"))
        .env("SMOKE", "1")
        .env("PORTCULLIS_BIN", &portcullis)
        .env("UPSTREAM_BIN", &upstream)
        .env("OUT_DIR", out.path())
        .env("TMPDIR", out.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run bench/run.sh");
    let stdout = reader(child.stdout.take().expect("stdout"));
    let stderr = reader(child.stderr.take().expect("stderr"));

    let end = Instant::now() + BOUND;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break Some(s);
        }
        if Instant::now() >= end {
            // SIGTERM (not SIGKILL) lets the script's trap stop the servers it started.
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let grace = Instant::now() + Duration::from_secs(15);
            while Instant::now() < grace && child.try_wait().ok().flatten().is_none() {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    let report = format!("--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}");
    let status = status.unwrap_or_else(|| panic!("bench/run.sh ran past {BOUND:?}\n{report}"));
    assert!(status.success(), "bench/run.sh failed: {status}\n{report}");
    assert!(
        stdout.contains("| scenario | conns | req/s |"),
        "no table header on stdout\n{report}"
    );
    assert!(
        stdout.contains("| target (issue 6) |"),
        "no targets table on stdout\n{report}"
    );

    let csvs: Vec<PathBuf> = std::fs::read_dir(out.path())
        .expect("read OUT_DIR")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "csv"))
        .collect();
    assert_eq!(csvs.len(), 1, "expected one CSV in OUT_DIR\n{report}");
    let csv = std::fs::read_to_string(&csvs[0]).expect("read the CSV");
    let mut lines = csv.lines();
    assert!(
        lines
            .next()
            .is_some_and(|h| h.starts_with("round,scenario,")),
        "CSV header missing:\n{csv}"
    );
    for scenario in ["direct", "nginx", "passthrough", "enforcing", "deny"] {
        assert!(
            csv.lines().any(|l| l.split(',').nth(1) == Some(scenario)),
            "no `{scenario}` row in the CSV:\n{csv}\n{report}"
        );
    }
}
