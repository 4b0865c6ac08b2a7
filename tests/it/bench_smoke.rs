//! The benchmark harness must not rot: `bench/run.sh` in its ~5-second smoke mode
//! (`SMOKE=1`) against the binaries this test run built, asserting that it printed the
//! report tables and wrote a CSV in which every scenario moved requests and every answer
//! was the expected one (`unexpected` and `socket_errors` zero). The rates themselves
//! are not compared (CI is noisy; the full runs live in bench/README.md).
//!
//! It needs nginx, wrk and the `bench-upstream` example, so it is `#[ignore]`d in the
//! plain `cargo test` run and `.ci/run` runs it as its own step after installing them
//! (`cargo build --example bench-upstream && cargo test -- --ignored`). Run that way, a
//! missing tool is a failure, never a skip.

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
#[ignore = "needs nginx, wrk and the bench-upstream example; .ci/run runs it with --ignored"]
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
        assert!(
            installed(tool),
            "the benchmark smoke test needs `{tool}` (apt-get install -y nginx wrk)"
        );
    }
    let portcullis = PathBuf::from(env!("CARGO_BIN_EXE_portcullis"));
    let upstream = portcullis
        .parent()
        .expect("bin dir")
        .join("examples")
        .join("bench-upstream");
    assert!(
        upstream.exists(),
        "{} is not built (`cargo build --example bench-upstream`)",
        upstream.display()
    );
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
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .unwrap_or_else(|| panic!("no `{name}` column in the CSV header: {header:?}"))
    };
    let (scenario_at, rps_at, requests_at) = (col("scenario"), col("rps"), col("requests"));
    let (unexpected_at, socket_at) = (col("unexpected"), col("socket_errors"));
    for scenario in [
        "direct",
        "nginx",
        "passthrough",
        "enforcing",
        "mcp-call",
        "deny",
    ] {
        let rows: Vec<Vec<&str>> = csv
            .lines()
            .skip(1)
            .map(|l| l.split(',').collect::<Vec<_>>())
            .filter(|r| r.get(scenario_at) == Some(&scenario))
            .collect();
        assert!(
            !rows.is_empty(),
            "no `{scenario}` row in the CSV:\n{csv}\n{report}"
        );
        for r in rows {
            let num = |i: usize| r.get(i).and_then(|v| v.parse::<f64>().ok());
            assert!(
                num(rps_at).is_some_and(|v| v > 0.0) && num(requests_at).is_some_and(|v| v > 0.0),
                "`{scenario}` moved no requests: {r:?}\n{report}"
            );
            assert_eq!(
                (num(unexpected_at), num(socket_at)),
                (Some(0.0), Some(0.0)),
                "`{scenario}` had unexpected answers or socket errors: {r:?}\n{report}"
            );
        }
    }
}
