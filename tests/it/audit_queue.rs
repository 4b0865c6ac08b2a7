//! The audit writer's queue bound (README "Audit trail": "If the file cannot be written
//! … or the queue is full, requests get 503 `audit_unavailable` and nothing is
//! forwarded"; `portcullis_audit_write_errors_total{kind="queue_full"}`). The bound is
//! `audit.max_queue_records` (65,536 by default; 256 here, the same code path), and the
//! test reaches it for real: the writer thread of the real binary is stopped with ptrace (every other
//! thread runs on, and the disk stays writable, so only the queue can refuse), agent
//! requests fill the queue to exactly its bound, and then a request that would be
//! forwarded, a deny and a park are each answered 503 with nothing forwarded or parked,
//! `/readyz` answers 503, and the refusal is counted. Once the writer runs again the queue
//! drains: every queued record is written in one chain and requests are served again.
//! It needs ptrace permission over its own child (root, or `kernel.yama.ptrace_scope`
//! 0 or 1); without it the test fails, it never skips.

use crate::common::{self, Behaviour, Proxy, Upstream};
use crate::support::admin::{call, issue, op};
use crate::support::audit::{out_text, records_of, scrape, verify};
use serde_json::json;
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `audit.max_queue_records` in the test's config.
const QUEUE: usize = 256;
const AUDIT: &str = "data/audit.jsonl";
/// How long draining the queue and the fill itself may take on a loaded machine.
const BOUND: Duration = Duration::from_secs(60);

fn config(url: &str) -> String {
    format!(
        r#"{head}upstreams:
  api: {{ url: "{url}" }}
routes:
  - prefix: /tickets
    upstream: api
    tool_prefix: tickets
    paths: ["/tickets/{{id}}"]
    tools:
      - {{ match: "POST /tickets/{{id}}/refund", name: tickets.refund, risk: critical }}
profiles:
  drafter:
    tools: ["tickets.get", "tickets.list"]
    max_risk: medium
    approval: ["tickets.refund"]
    deny: ["*.delete"]
agents:
  bot: {{ profile: drafter, tenant: acme }}
"#,
        head =
            common::Head::new().audit(&format!("{{ path: {AUDIT}, max_queue_records: {QUEUE} }}")),
    )
}

/// One thread of a child process held in a ptrace stop (the process's other threads run
/// on) until [`Frozen::thaw`] or drop. All ptrace calls are made from one OS thread, the
/// tracer, as ptrace requires.
struct Frozen {
    go: Option<mpsc::Sender<()>>,
    tracer: Option<std::thread::JoinHandle<()>>,
}

impl Frozen {
    /// Stops the thread of `pid` named `name` (`/proc/PID/task/TID/comm`). Retries until
    /// the thread is stopped inside a system call (waiting for work, writing, fsyncing):
    /// never in the middle of its own code, where it might hold a lock the request path
    /// also takes.
    fn thread(pid: u32, name: &str) -> Frozen {
        let tid = std::fs::read_dir(format!("/proc/{pid}/task"))
            .expect("/proc/PID/task")
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .find(|tid| {
                std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"))
                    .is_ok_and(|c| c.trim() == name)
            })
            .unwrap_or_else(|| panic!("no thread named `{name}` in process {pid}"));
        let (ready_tx, ready_rx) = mpsc::channel::<Result<String, String>>();
        let (go, go_rx) = mpsc::channel::<()>();
        let tracer = std::thread::spawn(move || {
            let syscall = format!("/proc/{pid}/task/{tid}/syscall");
            let mut last = String::new();
            for _ in 0..200 {
                // SAFETY: ptrace and waitpid on a thread of a child process we spawned;
                // the thread is released (PTRACE_DETACH) on every path below.
                unsafe {
                    if libc::ptrace(libc::PTRACE_SEIZE, tid, 0, 0) != 0 {
                        let e = std::io::Error::last_os_error();
                        let _ = ready_tx.send(Err(format!("PTRACE_SEIZE {tid}: {e}")));
                        return;
                    }
                    if libc::ptrace(libc::PTRACE_INTERRUPT, tid, 0, 0) != 0 {
                        let e = std::io::Error::last_os_error();
                        libc::ptrace(libc::PTRACE_DETACH, tid, 0, 0);
                        let _ = ready_tx.send(Err(format!("PTRACE_INTERRUPT {tid}: {e}")));
                        return;
                    }
                    let mut status = 0;
                    if libc::waitpid(tid, &mut status, libc::__WALL) != tid
                        || !libc::WIFSTOPPED(status)
                    {
                        let _ = ready_tx.send(Err(format!("waitpid {tid}: status {status:#x}")));
                        return;
                    }
                }
                // "-1 …": stopped outside a system call; "N …": inside system call N.
                last = std::fs::read_to_string(&syscall).unwrap_or_default();
                let in_syscall = last
                    .split_whitespace()
                    .next()
                    .and_then(|n| n.parse::<i64>().ok())
                    .is_some_and(|n| n >= 0);
                if in_syscall {
                    let _ = ready_tx.send(Ok(last.clone()));
                    let _ = go_rx.recv();
                    // SAFETY: as above; the thread is in its ptrace stop.
                    unsafe { libc::ptrace(libc::PTRACE_DETACH, tid, 0, 0) };
                    return;
                }
                // SAFETY: as above.
                unsafe { libc::ptrace(libc::PTRACE_DETACH, tid, 0, 0) };
                std::thread::yield_now();
            }
            let _ = ready_tx.send(Err(format!(
                "thread {tid} was never stopped inside a system call (last: {last})"
            )));
        });
        match ready_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok(_)) => Frozen {
                go: Some(go),
                tracer: Some(tracer),
            },
            Ok(Err(e)) => panic!("cannot stop the `{name}` thread with ptrace: {e}"),
            Err(e) => panic!("the ptrace tracer did not answer: {e}"),
        }
    }

    fn thaw(&mut self) {
        if let Some(go) = self.go.take() {
            let _ = go.send(());
        }
        if let Some(t) = self.tracer.take() {
            t.join().expect("the tracer thread");
        }
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        self.thaw();
    }
}

/// Sends `n` pipelined `GET path` requests over `conns` keep-alive connections; returns
/// how many were answered 200.
async fn pipelined_ok(p: &Proxy, token: &str, path: &str, n: usize, conns: usize) -> usize {
    let mut tasks = Vec::new();
    for c in 0..conns {
        let share = n / conns + usize::from(c < n % conns);
        let (addr, token, path) = (p.addr, token.to_string(), path.to_string());
        tasks.push(tokio::spawn(async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let req = format!(
                "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\r\n"
            );
            let (mut ok, mut seen) = (0usize, 0usize);
            let mut tail: Vec<u8> = Vec::new();
            let mut buf = vec![0u8; 1 << 16];
            let mut sent = 0;
            while sent < share {
                let batch = (share - sent).min(128);
                s.write_all(req.repeat(batch).as_bytes())
                    .await
                    .expect("write");
                sent += batch;
                while seen < sent {
                    let n = s.read(&mut buf).await.expect("read");
                    assert!(n > 0, "the proxy closed a pipelined connection");
                    // Count status lines; keep the last bytes for one split across reads.
                    let from = tail.len();
                    tail.extend_from_slice(&buf[..n]);
                    let start = from.saturating_sub(12);
                    for w in tail[start..].windows(13) {
                        if w.starts_with(b"HTTP/1.1 ") && w[12] == b' ' {
                            seen += 1;
                            if &w[9..12] == b"200" {
                                ok += 1;
                            }
                        }
                    }
                    let keep = tail.len().saturating_sub(12);
                    tail.drain(..keep);
                }
            }
            ok
        }));
    }
    let mut ok = 0;
    for t in tasks {
        ok += t.await.expect("pipelining task");
    }
    ok
}

async fn readyz(p: &Proxy) -> u16 {
    common::send(
        p.admin,
        http::Request::get("/readyz")
            .header("host", p.admin.to_string())
            .body(common::empty())
            .unwrap(),
    )
    .await
    .expect("GET /readyz")
    .status
}

fn queue_full_errors(e: &crate::support::audit::Exposition) -> f64 {
    e.value(
        "portcullis_audit_write_errors_total",
        &[("kind", "queue_full")],
    )
    .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_audit_queue_refuses_with_503_and_forwards_nothing_until_it_drains() {
    let up = Upstream::start(Behaviour::Fixed).await;
    // Only what the test reads is logged (the listening line): a log line per request
    // would cost more than the request.
    let p = Proxy::start(
        &config(&up.url()),
        &[("RUST_LOG", "warn,portcullis::server=info")],
    );
    let bot = issue(&p, json!({"agent": "bot", "ttl": "1h"})).await.token;
    let trail = p.path(AUDIT);

    // Served, and recorded, before anything happens.
    let r = call(p.addr, "GET", "/tickets/1", &bot).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let first = r.header("x-request-id").unwrap().to_string();
    assert!(
        common::poll_until_async(BOUND, || records_of(&trail)
            .iter()
            .any(|r| r["request_id"].as_str() == Some(first.as_str())))
        .await,
        "the first request was never recorded"
    );
    assert_eq!(up.hits(), 1);
    assert_eq!(readyz(&p).await, 200);
    let before = records_of(&trail).len();
    let errors_before = queue_full_errors(&scrape(&p).await);

    // The writer stops taking records; the disk is fine. Agent requests that need no
    // upstream (`/_portcullis/tools`, recorded like any allowed request) fill the queue
    // to exactly its bound.
    let mut frozen = Frozen::thread(p.pid(), "audit-writer");
    let t = Instant::now();
    let ok = pipelined_ok(&p, &bot, "/_portcullis/tools", QUEUE, 16).await;
    assert_eq!(ok, QUEUE, "requests answered 200 while the queue filled");
    eprintln!(
        "filled the audit queue ({QUEUE} records) in {:?}",
        t.elapsed()
    );

    // Full: nothing is forwarded, denied or parked without its record.
    let r = call(p.addr, "GET", "/tickets/2", &bot).await;
    assert_eq!(r.status, 503, "a request to forward: {}", r.text());
    assert_eq!(
        r.reason().as_deref(),
        Some("audit_unavailable"),
        "{}",
        r.text()
    );
    assert_eq!(
        up.hits(),
        1,
        "a request was forwarded past a full audit queue"
    );
    let r = call(p.addr, "DELETE", "/tickets/2", &bot).await;
    assert_eq!(r.status, 503, "a deny: {}", r.text());
    assert_eq!(
        r.reason().as_deref(),
        Some("audit_unavailable"),
        "{}",
        r.text()
    );
    // An agent request the proxy answers itself would be recorded after its answer: with
    // no room for the record, it is refused too (it used to be answered, unrecorded).
    let r = call(p.addr, "GET", "/_portcullis/tools", &bot).await;
    assert_eq!(r.status, 503, "GET /_portcullis/tools: {}", r.text());
    assert_eq!(
        r.reason().as_deref(),
        Some("audit_unavailable"),
        "{}",
        r.text()
    );
    let park = common::request("POST", p.addr, "/tickets/2/refund", &bot)
        .body(common::full("{\"amount\":5}"))
        .unwrap();
    let r = common::send(p.addr, park).await.expect("park");
    assert_eq!(r.status, 503, "a park: {}", r.text());
    assert_eq!(
        r.reason().as_deref(),
        Some("audit_unavailable"),
        "{}",
        r.text()
    );
    let list = op(&p, "GET", "/approvals", None).await;
    assert_eq!(list.status, 200, "{}", list.text());
    assert_eq!(
        list.json()["approvals"].as_array().map(Vec::len),
        Some(0),
        "a request was parked past a full audit queue: {}",
        list.text()
    );
    assert_eq!(readyz(&p).await, 503, "/readyz with a full audit queue");
    assert!(
        p.wait_for_log("AUDIT QUEUE FULL", Duration::from_secs(5))
            .await,
        "a full audit queue is not logged; log:\n{}",
        p.logs()
    );
    assert!(
        p.logs()
            .lines()
            .any(|l| l.contains("AUDIT QUEUE FULL") && l.contains("ERROR")),
        "the full queue is logged at ERROR; log:\n{}",
        p.logs()
    );
    assert_eq!(
        p.logs().matches("AUDIT QUEUE FULL").count(),
        1,
        "the full queue is reported once per episode, not per refused request"
    );
    let m = scrape(&p).await;
    assert!(
        queue_full_errors(&m) > errors_before,
        "the refusal is not counted in portcullis_audit_write_errors_total{{kind=\"queue_full\"}}: {:?}",
        m.all("portcullis_audit_write_errors_total")
    );
    assert_eq!(
        m.value("portcullis_audit_write_errors_total", &[("kind", "io")])
            .unwrap_or(0.0),
        0.0,
        "a full queue is not an I/O failure"
    );

    // The writer runs again: the queue drains, requests are served again.
    frozen.thaw();
    common::eventually("/readyz 200 after the writer ran again", BOUND, || async {
        match readyz(&p).await {
            200 => Ok(()),
            s => Err(format!("/readyz {s}")),
        }
    })
    .await;
    let r = call(p.addr, "GET", "/tickets/3", &bot).await;
    assert_eq!(r.status, 200, "after the queue drained: {}", r.text());
    assert_eq!(up.hits(), 2);
    let last = r.header("x-request-id").unwrap().to_string();

    // Every queued record was written, in one chain.
    common::eventually(
        "the record of the request after the drain",
        BOUND,
        || async {
            let recs = records_of(&trail);
            if recs
                .iter()
                .any(|r| r["request_id"].as_str() == Some(last.as_str()))
            {
                Ok(())
            } else {
                Err(format!("{} records", recs.len()))
            }
        },
    )
    .await;
    let recs = records_of(&trail);
    let tools = recs[before..]
        .iter()
        .filter(|r| r["path"] == "/_portcullis/tools" && r["status"] == 200)
        .count();
    assert_eq!(
        tools, QUEUE,
        "records of the requests that filled the queue (and none of the one refused)"
    );
    let o = verify(std::slice::from_ref(&trail), &[], &[]);
    assert!(o.status.success(), "{}", out_text(&o));
}
