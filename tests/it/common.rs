//! The end-to-end harness every integration test uses: the real `portcullis` binary
//! (`Proxy`), real hyper upstreams that record what reaches them (`Upstream`), a raw
//! socket client for request targets a normal client would tidy up (`raw_request`),
//! and a small hyper client (`send`, `get`, TLS variants).
//!
//! Nothing here sleeps to synchronise: the proxy is ready when it logs its
//! `listening proxy=ADDR admin=ADDR` line, and everything else polls a condition
//! with a bounded deadline.
#![allow(dead_code)]

use bytes::Bytes;
use http::{Request, Response, StatusCode, Version};
use http_body::{Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = BoxBody<Bytes, BoxError>;

/// The operator secret the harness configures (its SHA-256 goes into `operators`).
pub const OPERATOR_SECRET: &str = "pco-test-operator-3f9c2a7e61b04d58";

/// How long the proxy gets to log its `listening` line.
const STARTUP: Duration = Duration::from_secs(30);
/// Upper bound for one request made by a helper.
pub const REQUEST_BOUND: Duration = Duration::from_secs(30);

pub fn operator_hash() -> String {
    hex::encode(Sha256::digest(OPERATOR_SECRET.as_bytes()))
}

/// The head every test config starts with: loopback listeners on port 0, optionally a
/// `node:` name, the store (default: embedded, `data/p.redb`), the audit sink (default:
/// `data/audit.jsonl`) and an `operators:` list starting with `tester` (all roles, secret
/// [`OPERATOR_SECRET`]). A config continues it with more `  - { name: … }` operator lines
/// or the next top-level key. It is a format argument: `format!("{head}upstreams: …")`.
#[derive(Clone, Debug)]
pub struct Head {
    node: Option<String>,
    store: String,
    audit: String,
    tester: bool,
}

impl Head {
    pub fn new() -> Head {
        Head {
            node: None,
            store: "{ embedded: data/p.redb }".into(),
            audit: "{ path: data/audit.jsonl }".into(),
            tester: true,
        }
    }
    pub fn node(mut self, node: &str) -> Head {
        self.node = Some(node.into());
        self
    }
    /// The `store:` value (YAML, flow style).
    pub fn store(mut self, store: &str) -> Head {
        self.store = store.into();
        self
    }
    /// The `audit:` value (YAML, flow style).
    pub fn audit(mut self, audit: &str) -> Head {
        self.audit = audit.into();
        self
    }
    /// An `operators:` list that does not start with `tester` (the config lists its own).
    pub fn without_tester(mut self) -> Head {
        self.tester = false;
        self
    }
}

impl Default for Head {
    fn default() -> Head {
        Head::new()
    }
}

impl std::fmt::Display for Head {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "listen: 127.0.0.1:0")?;
        writeln!(f, "admin_listen: 127.0.0.1:0")?;
        if let Some(n) = &self.node {
            writeln!(f, "node: {n}")?;
        }
        writeln!(f, "store: {}", self.store)?;
        writeln!(f, "audit: {}", self.audit)?;
        writeln!(f, "operators:")?;
        if self.tester {
            writeln!(
                f,
                "  - {{ name: tester, token_sha256: \"{}\", roles: [viewer, approver, admin] }}",
                operator_hash()
            )?;
        }
        Ok(())
    }
}

/// [`Head`] and one agent (`bot`, tenant `acme`, admin profile). Append `upstreams:`,
/// `routes:` and anything else a test needs.
pub fn base_config() -> String {
    format!(
        "{}profiles: {{ all: {{ admin: true }} }}\n\
         agents: {{ bot: {{ profile: all, tenant: acme }} }}\n",
        Head::new()
    )
}

/// A top-level line for configs of tests that are refused on purpose, many times a
/// minute (corpora of refusals): signals would pause their agent (`refusal_burst`)
/// and turn the rest of the corpus into `paused`.
pub const NO_SIGNALS: &str = "signals: { enabled: false }\n";

/// The background cadences the suite runs the proxy at (`timers:`), appended to a config
/// that does not set its own: the sweeper and the config watcher tick every 100 ms, so
/// expiries, abandoned parks and file reloads are seen in a tenth of the production
/// time with the same code.
pub const TEST_TIMERS: &str = "timers: { sweep_every: 100ms, watch_every: 100ms }";

pub fn with_test_timers(yaml: &str) -> String {
    if yaml.lines().any(|l| l.starts_with("timers:")) {
        return yaml.to_string();
    }
    let mut s = yaml.to_string();
    if !s.is_empty() && !s.ends_with('\n') {
        s.push('\n');
    }
    s.push_str(TEST_TIMERS);
    s.push('\n');
    s
}

/// Writes `bytes` to `path` through a temp file in the same directory and a rename.
pub fn write_atomically(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp-write");
    std::fs::write(&tmp, bytes).expect("write temp file");
    std::fs::rename(&tmp, path).expect("rename into place");
}

/// Polls `f` until it returns `Ok`, with a short back-off (5 ms doubling to 100 ms), for
/// at most `bound`; then panics naming `what` and the last `Err` (the state it saw, for
/// the failure message). Replaces hand-written poll loops: the condition is the
/// synchronisation, never a sleep.
pub async fn eventually<T, F, Fut>(what: &str, bound: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let end = Instant::now() + bound;
    let mut pause = Duration::from_millis(5);
    loop {
        match f().await {
            Ok(v) => return v,
            Err(last) => assert!(
                Instant::now() < end,
                "{what}: not within {bound:?}; last seen: {last}"
            ),
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// Runs the `portcullis` binary with `args` and `env` (no inherited operator token, admin
/// address or audit HMAC key: a test passes those where it means to), its
/// stdin closed, and waits at most `bound`: a hung CLI is killed and fails the test
/// instead of hanging the suite.
pub fn run_bin(args: &[&str], env: &[(&str, &str)], bound: Duration) -> std::process::Output {
    run_bin_in(None, args, env, bound)
}

/// [`run_bin`] in working directory `cwd`.
pub fn run_bin_in(
    cwd: Option<&Path>,
    args: &[&str],
    env: &[(&str, &str)],
    bound: Duration,
) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_portcullis"));
    cmd.args(args)
        .env_remove("PORTCULLIS_OPERATOR_TOKEN")
        .env_remove("PORTCULLIS_ADMIN")
        .env_remove("AUDIT_HMAC_KEY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(d) = cwd {
        cmd.current_dir(d);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn portcullis");
    let (out, err) = (
        child.stdout.take().expect("stdout"),
        child.stderr.take().expect("stderr"),
    );
    let read = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    };
    let (out, err) = (read(Box::new(out)), read(Box::new(err)));
    let end = Instant::now() + bound;
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait portcullis") {
            break st;
        }
        if Instant::now() >= end {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`portcullis {}` did not finish within {bound:?}",
                args.join(" ")
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    std::process::Output {
        status,
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
    }
}

/// How long a CLI run may take before the suite calls it hung.
pub const CLI_BOUND: Duration = Duration::from_secs(60);

/// A local address nothing will ever answer on: a socket bound to it, never listening,
/// held for as long as this value lives, so no other test can take the port in between
/// (connecting is refused at once).
pub struct DeadPort {
    _socket: tokio::net::TcpSocket,
    pub addr: SocketAddr,
}

impl DeadPort {
    pub fn new() -> DeadPort {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind("127.0.0.1:0".parse().unwrap())
            .expect("bind a port");
        let addr = socket.local_addr().expect("local addr");
        DeadPort {
            _socket: socket,
            addr,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// A [`DeadPort`] held until the test process exits (the socket is leaked on purpose:
/// a handful of bound descriptors, and no test can ever be handed the port).
pub fn dead_port() -> SocketAddr {
    let d = DeadPort::new();
    let addr = d.addr;
    std::mem::forget(d);
    addr
}

impl Default for DeadPort {
    fn default() -> Self {
        Self::new()
    }
}

/// `base_config()` followed by `rest`.
pub fn config(rest: &str) -> String {
    let mut s = base_config();
    s.push_str(rest);
    if !s.ends_with('\n') {
        s.push('\n');
    }
    s
}

/// Polls `cond` every 10 ms until it holds or `bound` has passed; returns whether it held.
pub fn poll_until(bound: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + bound;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Async twin of [`poll_until`] (does not block the runtime).
pub async fn poll_until_async(bound: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + bound;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------------------------------
// The proxy process
// ---------------------------------------------------------------------------------------

/// One `portcullis serve` child process on a config in its own temp dir.
pub struct Proxy {
    child: Child,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    /// The agent-facing listener.
    pub addr: SocketAddr,
    /// The operator-facing listener.
    pub admin: SocketAddr,
    logs: Arc<Mutex<String>>,
    /// Set when the proxy's stderr reached end of file (the process exited and every
    /// line it wrote has been read).
    stderr_done: Arc<std::sync::atomic::AtomicBool>,
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        if c == '\x1b' {
            if it.peek() == Some(&'[') {
                it.next();
                for d in it.by_ref() {
                    if d.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

fn field_addr(line: &str, key: &str) -> Option<SocketAddr> {
    let i = line.find(key)? + key.len();
    let rest = &line[i..];
    let end = rest.find(|c: char| c.is_whitespace()).unwrap_or(rest.len());
    rest[..end].trim_matches('"').parse().ok()
}

/// Parses `... listening proxy=ADDR admin=ADDR` (also tolerates JSON logs).
pub fn parse_listening(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    let line = strip_ansi(line);
    if !line.contains("listening") {
        return None;
    }
    let proxy = field_addr(&line, "proxy=").or_else(|| field_addr(&line, "\"proxy\":"))?;
    let admin = field_addr(&line, "admin=").or_else(|| field_addr(&line, "\"admin\":"))?;
    Some((proxy, admin))
}

fn drain_into(
    mut r: impl Read + Send + 'static,
    logs: Arc<Mutex<String>>,
    ready: Option<std::sync::mpsc::Sender<String>>,
    done: Option<Arc<std::sync::atomic::AtomicBool>>,
) {
    std::thread::spawn(move || {
        let mut r = BufReader::new(&mut r);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => {
                    if let Some(d) = &done {
                        d.store(true, std::sync::atomic::Ordering::Release);
                    }
                    return;
                }
                Ok(_) => {
                    let line = strip_ansi(&String::from_utf8_lossy(&buf));
                    logs.lock().unwrap().push_str(&line);
                    if let Some(tx) = &ready {
                        if parse_listening(&line).is_some() {
                            let _ = tx.send(line);
                        }
                    }
                }
            }
        }
    });
}

impl Proxy {
    /// Writes `config_yaml` into a fresh temp dir and runs `portcullis serve` on it.
    pub fn start(config_yaml: &str, env: &[(&str, &str)]) -> Proxy {
        Self::start_with_files(config_yaml, env, &[])
    }

    /// Like [`Proxy::start`], first writing `files` (paths relative to the config's dir).
    pub fn start_with_files(
        config_yaml: &str,
        env: &[(&str, &str)],
        files: &[(&str, &[u8])],
    ) -> Proxy {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, bytes) in files {
            let p = dir.path().join(name);
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent).expect("create dir");
            }
            std::fs::write(&p, bytes).expect("write file");
        }
        let config_path = dir.path().join("portcullis.yaml");
        let config_yaml = &with_test_timers(config_yaml);
        std::fs::write(&config_path, config_yaml).expect("write config");
        // Run from a different directory so that relative paths must resolve against the config's dir.
        let cwd = dir.path().join("cwd");
        std::fs::create_dir_all(&cwd).expect("cwd");

        let mut cmd = Command::new(env!("CARGO_BIN_EXE_portcullis"));
        cmd.arg("serve")
            .arg("--config")
            .arg(&config_path)
            .current_dir(&cwd)
            .env("RUST_LOG", "info")
            .env_remove("PORTCULLIS_OPERATOR_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn portcullis");
        let logs = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr_done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        drain_into(
            child.stderr.take().expect("stderr"),
            logs.clone(),
            Some(tx),
            Some(stderr_done.clone()),
        );
        drain_into(
            child.stdout.take().expect("stdout"),
            logs.clone(),
            None,
            None,
        );

        let line = match rx.recv_timeout(STARTUP) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                let status = child.wait().ok();
                // The reader threads may still be flushing the last lines.
                poll_until(Duration::from_secs(2), || !logs.lock().unwrap().is_empty());
                panic!(
                    "portcullis did not log `listening proxy=.. admin=..` (exit: {status:?}); config:\n{config_yaml}\nlog:\n{}",
                    logs.lock().unwrap()
                );
            }
        };
        let (addr, admin) = parse_listening(&line).expect("listening line");
        Proxy {
            child,
            dir,
            config_path,
            addr,
            admin,
            logs,
            stderr_done,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Replaces the running proxy's config file the way an operator's deploy should:
    /// a temp file renamed into place, so the file watcher never reads half a file.
    /// The harness' test timers are added as at start.
    pub fn write_config(&self, yaml: &str) {
        write_atomically(&self.config_path, with_test_timers(yaml).as_bytes());
    }

    /// Everything the process wrote to stderr and stdout so far.
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    /// The logs, up to everything the proxy had logged when this was called. Log lines
    /// reach stderr through the proxy's log queue and its writer thread, so a line about
    /// something that just happened may not be in the pipe yet: this sends an
    /// unauthenticated request, whose `request refused` line (info, with the request id
    /// the 401 carries) is written after every line queued before it, and waits for it.
    /// Checks that a line is absent (canaries) or present read these.
    /// Once the process has exited (the marker cannot connect), this waits instead for
    /// its stderr to be read to the end (it writes out its queued lines before it exits).
    pub async fn logs_synced(&self) -> String {
        let marker = send(
            self.addr,
            request("GET", self.addr, "/_portcullis-log-sync", "")
                .body(empty())
                .unwrap(),
        )
        .await;
        let r = match marker {
            Ok(r) => r,
            Err(e) => {
                let done = self.stderr_done.clone();
                assert!(
                    poll_until_async(Duration::from_secs(10), || done
                        .load(std::sync::atomic::Ordering::Acquire))
                    .await,
                    "no marker ({e}) and the proxy's stderr did not end: is it still running?"
                );
                return self.logs();
            }
        };
        assert_eq!(r.status, 401, "log sync marker: {}", r.text());
        let id = r
            .header("x-request-id")
            .expect("a 401 carries X-Request-Id")
            .to_string();
        assert!(
            self.wait_for_log(&id, Duration::from_secs(10)).await,
            "the marker request {id} never reached the log:\n{}",
            self.logs()
        );
        self.logs()
    }

    /// Waits (bounded) for `needle` to appear in the logs; whether it did.
    #[must_use = "assert it: a line that never came means the check after it proves nothing"]
    pub async fn wait_for_log(&self, needle: &str, bound: Duration) -> bool {
        let logs = self.logs.clone();
        poll_until_async(bound, || logs.lock().unwrap().contains(needle)).await
    }

    /// Resident set size of the proxy process in KiB (from /proc/PID/status).
    pub fn vm_rss_kib(&self) -> Option<u64> {
        vm_rss_kib(self.pid())
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn sigterm(&self) {
        // SAFETY: `kill` with a pid we spawned and still own (not yet reaped).
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill(SIGTERM) failed");
    }

    /// Polls for the process to exit; `None` if it is still running after `bound`.
    pub async fn wait_exit(&mut self, bound: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + bound;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            if Instant::now() >= end {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// SIGTERM, then wait (bounded) for the exit status.
    pub async fn terminate(&mut self, bound: Duration) -> Option<ExitStatus> {
        self.sigterm();
        self.wait_exit(bound).await
    }

    /// An agent credential for `agent`, issued through the admin API (`POST /tokens`) as the
    /// configured operator.
    pub async fn agent_token(&self, agent: &str) -> String {
        let body = serde_json::json!({ "agent": agent, "ttl": "1h" }).to_string();
        let req = Request::post("/tokens")
            .header("host", self.admin.to_string())
            .header("authorization", format!("Bearer {OPERATOR_SECRET}"))
            .header("content-type", "application/json")
            .body(full(body))
            .unwrap();
        let resp = send(self.admin, req)
            .await
            .expect("POST /tokens on the admin listener");
        assert!(
            resp.status == 201,
            "POST /tokens answered {}: {}",
            resp.status,
            resp.text()
        );
        let v = resp.json();
        let secret = v["secret"]
            .as_str()
            .unwrap_or_else(|| panic!("no `secret` in {v}"))
            .to_string();
        if secret.starts_with("pcx_") {
            secret
        } else {
            let id = v["id"].as_str().unwrap_or_else(|| panic!("no `id` in {v}"));
            format!("pcx_{id}_{secret}")
        }
    }

    /// `Authorization` header line for raw requests (empty when there is no token).
    pub fn auth_line(token: &str) -> String {
        if token.is_empty() {
            String::new()
        } else {
            format!("Authorization: Bearer {token}\r\n")
        }
    }

    /// The audit file's contents (empty if it does not exist).
    pub fn audit_text(&self) -> String {
        std::fs::read_to_string(self.path("data/audit.jsonl")).unwrap_or_default()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn vm_rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Samples a process's VmRSS every 2 ms on a thread until stopped; keeps the peak.
pub struct RssSampler {
    stop: Arc<std::sync::atomic::AtomicBool>,
    peak: Arc<std::sync::atomic::AtomicU64>,
    samples: Arc<AtomicUsize>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl RssSampler {
    pub fn start(pid: u32) -> RssSampler {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let peak = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let samples = Arc::new(AtomicUsize::new(0));
        let (s, p, n) = (stop.clone(), peak.clone(), samples.clone());
        let handle = std::thread::spawn(move || {
            // Bounded: at most ~10 minutes of sampling.
            for _ in 0..300_000 {
                if s.load(Ordering::Relaxed) {
                    return;
                }
                if let Some(kib) = vm_rss_kib(pid) {
                    p.fetch_max(kib, Ordering::Relaxed);
                    n.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        RssSampler {
            stop,
            peak,
            samples,
            handle: Some(handle),
        }
    }

    /// Stops sampling; returns (peak KiB, number of samples).
    pub fn finish(mut self) -> (u64, usize) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        (
            self.peak.load(Ordering::Relaxed),
            self.samples.load(Ordering::Relaxed),
        )
    }
}

// ---------------------------------------------------------------------------------------
// Bodies
// ---------------------------------------------------------------------------------------

pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

pub fn empty() -> Body {
    full(Bytes::new())
}

/// The byte pattern streamed bodies carry: byte at offset `i` is `i % 251`.
const PERIOD: usize = 251;
const CHUNK: usize = PERIOD * 256;

fn template() -> &'static Bytes {
    static T: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();
    T.get_or_init(|| {
        Bytes::from(
            (0..CHUNK + PERIOD)
                .map(|i| (i % PERIOD) as u8)
                .collect::<Vec<u8>>(),
        )
    })
}

/// Whether `data`, found at stream offset `offset`, carries the pattern.
pub fn pattern_matches(offset: u64, data: &[u8]) -> bool {
    let t = template();
    let mut off = offset;
    let mut rest = data;
    while !rest.is_empty() {
        let start = (off % PERIOD as u64) as usize;
        let n = rest.len().min(CHUNK);
        if rest[..n] != t[start..start + n] {
            return false;
        }
        rest = &rest[n..];
        off += n as u64;
    }
    true
}

/// A generated body of `len` pattern bytes, produced chunk by chunk (never buffered whole).
/// With `exact_size` it reports its length (so hyper sends Content-Length); without, it
/// is sent chunked.
pub struct PatternBody {
    left: u64,
    exact_size: bool,
}

impl PatternBody {
    pub fn new(len: u64, exact_size: bool) -> PatternBody {
        PatternBody {
            left: len,
            exact_size,
        }
    }
}

impl http_body::Body for PatternBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        // Every chunk is a multiple of the period long, so each starts at pattern offset 0.
        let n = self.left.min(CHUNK as u64) as usize;
        self.left -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(template().slice(0..n)))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> SizeHint {
        if self.exact_size {
            SizeHint::with_exact(self.left)
        } else {
            let mut h = SizeHint::new();
            h.set_lower(0);
            h
        }
    }
}

pub fn pattern_body(len: u64, exact_size: bool) -> Body {
    PatternBody::new(len, exact_size).boxed()
}

/// Reads a body to its end, counting bytes and checking the pattern; keeps at most `keep` bytes.
pub async fn drain_body<B>(mut body: B, keep: usize) -> Result<(u64, bool, Vec<u8>), BoxError>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let mut n = 0u64;
    let mut ok = true;
    let mut kept = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(Into::into)?;
        if let Ok(data) = frame.into_data() {
            if ok && !pattern_matches(n, &data) {
                ok = false;
            }
            if kept.len() < keep {
                let take = (keep - kept.len()).min(data.len());
                kept.extend_from_slice(&data[..take]);
            }
            n += data.len() as u64;
        }
    }
    Ok((n, ok, kept))
}

// ---------------------------------------------------------------------------------------
// Responses and clients
// ---------------------------------------------------------------------------------------

/// A response as the test saw it.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub version: Version,
    /// Header names lower-cased, in received order.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// The body as JSON; panics with the body text if it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {} body is not JSON ({e}): {:?}",
                self.status,
                self.text()
            )
        })
    }
    /// The `reason` field of a JSON body, if any.
    pub fn reason(&self) -> Option<String> {
        serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v.get("reason").and_then(|r| r.as_str()).map(str::to_string))
    }
    /// Everything the client received (status line aside), for leak checks.
    pub fn all_text(&self) -> String {
        let mut s = String::new();
        for (n, v) in &self.headers {
            s.push_str(n);
            s.push_str(": ");
            s.push_str(v);
            s.push('\n');
        }
        s.push_str(&self.text());
        s
    }
}

fn headers_vec(h: &http::HeaderMap) -> Vec<(String, String)> {
    h.iter()
        .map(|(n, v)| {
            (
                n.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

async fn collect(resp: Response<Incoming>) -> Result<Resp, BoxError> {
    let (parts, body) = resp.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Resp {
        status: parts.status.as_u16(),
        version: parts.version,
        headers: headers_vec(&parts.headers),
        body,
    })
}

/// Sends one HTTP/1.1 request on a new connection to `addr`. The request must carry its
/// own `Host` header (the helpers below do). Bounded by [`REQUEST_BOUND`].
pub async fn send<B>(addr: SocketAddr, req: Request<B>) -> Result<Resp, BoxError>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let fut = async move {
        let tcp = TcpStream::connect(addr).await?;
        let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let resp = tx.send_request(req).await?;
        collect(resp).await
    };
    match tokio::time::timeout(REQUEST_BOUND, fut).await {
        Ok(r) => r,
        Err(_) => Err(format!("no response from {addr} within {REQUEST_BOUND:?}").into()),
    }
}

/// A request builder aimed at the proxy: `Host` = its address, bearer token if non-empty.
pub fn request(method: &str, addr: SocketAddr, path: &str, token: &str) -> http::request::Builder {
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    if !token.is_empty() {
        b = b.header("authorization", format!("Bearer {token}"));
    }
    b
}

/// `GET path` through the proxy with the agent token (if any).
pub async fn get(addr: SocketAddr, path: &str, token: &str) -> Resp {
    send(
        addr,
        request("GET", addr, path, token).body(empty()).unwrap(),
    )
    .await
    .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

// ---- raw socket client ----

/// Writes `bytes` as-is to `addr` and parses one HTTP/1.x response (Content-Length,
/// chunked, or read to EOF). Panics if no response arrives within [`REQUEST_BOUND`].
pub async fn raw_request(addr: SocketAddr, bytes: &[u8]) -> Resp {
    match try_raw_request(addr, bytes).await {
        Ok(r) => r,
        Err(e) => panic!("raw request {:?}: {e}", String::from_utf8_lossy(bytes)),
    }
}

pub async fn try_raw_request(addr: SocketAddr, bytes: &[u8]) -> Result<Resp, BoxError> {
    let bytes = bytes.to_vec();
    match tokio::time::timeout(REQUEST_BOUND, async move {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(&bytes).await?;
        read_response(&mut s).await
    })
    .await
    {
        Ok(r) => r,
        Err(_) => Err(format!("no response within {REQUEST_BOUND:?}").into()),
    }
}

/// Parses one response from a stream (used by the raw client).
pub async fn read_response<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> Result<Resp, BoxError> {
    let mut buf = Vec::with_capacity(8192);
    let mut tmp = [0u8; 16384];
    let (status, version, headers, head_len) = loop {
        let n = s.read(&mut tmp).await?;
        if n == 0 {
            return Err(format!(
                "connection closed before a complete response head ({} bytes)",
                buf.len()
            )
            .into());
        }
        buf.extend_from_slice(&tmp[..n]);
        let mut hs = [httparse::EMPTY_HEADER; 128];
        let mut r = httparse::Response::new(&mut hs);
        if let httparse::Status::Complete(len) = r.parse(&buf)? {
            let headers: Vec<(String, String)> = r
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_ascii_lowercase(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect();
            let version = if r.version == Some(0) {
                Version::HTTP_10
            } else {
                Version::HTTP_11
            };
            break (r.code.unwrap_or(0), version, headers, len);
        }
    };
    let mut body = buf[head_len..].to_vec();
    let find = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    if status == 204 || status == 304 {
        body.clear();
    } else if let Some(cl) = find("content-length") {
        let cl: usize = cl.trim().parse()?;
        while body.len() < cl {
            let n = s.read(&mut tmp).await?;
            if n == 0 {
                return Err("connection closed inside the body".into());
            }
            body.extend_from_slice(&tmp[..n]);
        }
        body.truncate(cl);
    } else if find("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    {
        let mut raw = body;
        let mut out = Vec::new();
        loop {
            // Parse as many chunks as are complete.
            let mut pos = 0;
            let mut done = false;
            while let Some(eol) = raw[pos..].windows(2).position(|w| w == b"\r\n") {
                let size_line = std::str::from_utf8(&raw[pos..pos + eol])?;
                let size =
                    usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)?;
                let need = pos + eol + 2 + size + 2;
                if size == 0 {
                    done = true;
                    break;
                }
                if raw.len() < need {
                    break;
                }
                out.extend_from_slice(&raw[pos + eol + 2..pos + eol + 2 + size]);
                pos = need;
            }
            raw.drain(..pos);
            if done {
                break;
            }
            let n = s.read(&mut tmp).await?;
            if n == 0 {
                return Err("connection closed inside a chunked body".into());
            }
            raw.extend_from_slice(&tmp[..n]);
        }
        body = out;
    } else {
        loop {
            let n = s.read(&mut tmp).await?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&tmp[..n]);
        }
    }
    Ok(Resp {
        status,
        version,
        headers,
        body: Bytes::from(body),
    })
}

/// A complete raw request: `METHOD TARGET HTTP/1.1`, `Host`, the token, `extra` header
/// lines (each ending in `\r\n`), `Connection: close`.
pub fn raw_get(method: &str, target: &[u8], host: &str, token: &str, extra: &str) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(method.as_bytes());
    v.push(b' ');
    v.extend_from_slice(target);
    v.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    v.extend_from_slice(host.as_bytes());
    v.extend_from_slice(b"\r\n");
    v.extend_from_slice(Proxy::auth_line(token).as_bytes());
    v.extend_from_slice(extra.as_bytes());
    v.extend_from_slice(b"Connection: close\r\n\r\n");
    v
}

// ---- TLS ----

/// A private certificate authority for tests.
pub struct TestCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: String,
}

impl TestCa {
    pub fn new() -> TestCa {
        let key = rcgen::KeyPair::generate().expect("CA key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "portcullis test CA");
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        TestCa {
            issuer: rcgen::CertifiedIssuer::self_signed(params, key).expect("CA cert"),
        }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A leaf certificate for `localhost` and `127.0.0.1`.
    pub fn issue(&self) -> IssuedCert {
        let key = rcgen::KeyPair::generate().expect("leaf key");
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .expect("leaf params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "localhost");
        let cert = params.signed_by(&key, &self.issuer).expect("sign leaf");
        IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

fn ring() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub fn tls_server_config(cert: &IssuedCert, alpn: &[&[u8]]) -> rustls::ServerConfig {
    let certs = CertificateDer::pem_slice_iter(cert.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("cert pem");
    let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).expect("key pem");
    let mut cfg = rustls::ServerConfig::builder_with_provider(ring())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server config");
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    cfg
}

pub fn tls_client_config(ca_pem: &str, alpn: &[&[u8]]) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.expect("ca pem")).expect("add root");
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(ring())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    cfg
}

/// Sends one request over TLS to `addr` (server name `localhost`), offering `alpn`.
/// Speaks HTTP/2 if the server picked `h2`, else HTTP/1.1. Returns the negotiated ALPN.
pub async fn send_tls(
    addr: SocketAddr,
    ca_pem: &str,
    alpn: &[&[u8]],
    req: Request<Body>,
) -> Result<(Option<Vec<u8>>, Resp), BoxError> {
    let cfg = Arc::new(tls_client_config(ca_pem, alpn));
    let fut = async move {
        let tcp = TcpStream::connect(addr).await?;
        let tls = tokio_rustls::TlsConnector::from(cfg)
            .connect(ServerName::try_from("localhost").unwrap().to_owned(), tcp)
            .await?;
        let negotiated = tls.get_ref().1.alpn_protocol().map(|p| p.to_vec());
        let resp = if negotiated.as_deref() == Some(b"h2") {
            let (mut tx, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                    .await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            let resp = tx.send_request(req).await?;
            collect(resp).await?
        } else {
            let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            let resp = tx.send_request(req).await?;
            collect(resp).await?
        };
        Ok::<_, BoxError>((negotiated, resp))
    };
    match tokio::time::timeout(REQUEST_BOUND, fut).await {
        Ok(r) => r,
        Err(_) => Err(format!("no TLS response from {addr} within {REQUEST_BOUND:?}").into()),
    }
}

// ---------------------------------------------------------------------------------------
// Upstreams
// ---------------------------------------------------------------------------------------

/// What an upstream does with each request.
#[derive(Clone, Debug)]
pub enum Behaviour {
    /// Reads the body, answers 200 with JSON of what it saw.
    Echo,
    /// Reads the body, answers 200 `{"ok":true}` (nothing of the request reflected).
    Fixed,
    /// Answers 200 with a generated body of this many pattern bytes (Content-Length set).
    Stream(u64),
    /// Reads and counts the body (checking the pattern), answers `{"received":N,"pattern_ok":B}`.
    Consume,
    /// Waits this long before sending response headers, then echoes.
    Slow(Duration),
    /// Waits until [`Upstream::release`] before sending response headers, then echoes
    /// (the same as [`Upstream::start_holding`] with [`Behaviour::Echo`]).
    Hold,
    /// Reads the body, answers this status, headers and body.
    Reply(Reply),
    /// Answers the status the last path segment names (`/x/503` → 503; otherwise 200)
    /// with `{"status":N}`.
    StatusFromPath,
}

/// A programmed answer: status, headers, body.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Reply {
    pub fn new(status: u16, body: impl Into<Bytes>) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
}

/// How much of each request body the upstream keeps in [`Seen::body`] (all of it is
/// counted in `body_bytes` and checked against the pattern).
pub const CAPTURE_CAP: usize = 1 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyState {
    Reading,
    Complete,
    Failed,
}

/// One request as the upstream received it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    /// Path and query exactly as received.
    pub target: String,
    pub version: Version,
    /// Header names lower-case, in the order hyper parsed them.
    pub headers: Vec<(String, String)>,
    pub body_bytes: u64,
    /// The body's first [`CAPTURE_CAP`] bytes.
    pub body: Vec<u8>,
    pub body_pattern_ok: bool,
    pub body_state: BodyState,
    /// Trailer fields received after a chunked body.
    pub trailers: Vec<(String, String)>,
}

impl Seen {
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.header_all(name).first().copied()
    }
    pub fn has(&self, name: &str) -> bool {
        !self.header_all(name).is_empty()
    }
}

struct UpState {
    behaviour: Behaviour,
    /// Answers wait for [`Upstream::release`] (after the body is read).
    hold: bool,
    hits: AtomicUsize,
    connections: AtomicUsize,
    seen: Mutex<Vec<Seen>>,
    release: watch::Sender<bool>,
}

/// A real HTTP (or HTTPS) server on 127.0.0.1:0 that records what reaches it.
pub struct Upstream {
    pub addr: SocketAddr,
    /// For the HTTPS variant: the PEM of the private CA that signed its certificate.
    pub ca_pem: Option<String>,
    state: Arc<UpState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    /// Starts a plain HTTP upstream (HTTP/1.1) on the current tokio runtime.
    pub async fn start(behaviour: Behaviour) -> Upstream {
        Self::start_inner(behaviour, false, None).await
    }

    /// Like [`Upstream::start`], each answer held until [`Upstream::release`].
    pub async fn start_holding(behaviour: Behaviour) -> Upstream {
        Self::start_inner(behaviour, true, None).await
    }

    /// Starts an HTTPS upstream whose certificate a fresh private CA signed.
    pub async fn start_tls(behaviour: Behaviour) -> Upstream {
        let ca = TestCa::new();
        let leaf = ca.issue();
        let acceptor =
            tokio_rustls::TlsAcceptor::from(Arc::new(tls_server_config(&leaf, &[b"http/1.1"])));
        let mut u = Self::start_inner(behaviour, false, Some(acceptor)).await;
        u.ca_pem = Some(ca.pem());
        u
    }

    async fn start_inner(
        behaviour: Behaviour,
        hold: bool,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().unwrap();
        let (release, _) = watch::channel(false);
        let hold = hold || matches!(behaviour, Behaviour::Hold);
        let state = Arc::new(UpState {
            behaviour,
            hold,
            hits: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            seen: Mutex::new(Vec::new()),
            release,
        });
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                st.connections.fetch_add(1, Ordering::SeqCst);
                let st = st.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let svc = {
                        let st = st.clone();
                        service_fn(move |req| {
                            let st = st.clone();
                            async move {
                                Ok::<_, std::convert::Infallible>(handle_upstream(st, req).await)
                            }
                        })
                    };
                    let mut b = hyper::server::conn::http1::Builder::new();
                    b.keep_alive(true);
                    match tls {
                        None => {
                            let _ = b.serve_connection(TokioIo::new(tcp), svc).await;
                        }
                        Some(acc) => {
                            if let Ok(s) = acc.accept(tcp).await {
                                let _ = b.serve_connection(TokioIo::new(s), svc).await;
                            }
                        }
                    }
                });
            }
        });
        Upstream {
            addr,
            ca_pem: None,
            state,
            task,
        }
    }

    /// `http://ADDR` or `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        let scheme = if self.ca_pem.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.addr)
    }

    /// Requests that reached this upstream (counted when their head arrives).
    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    /// TCP connections accepted.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    pub fn last(&self) -> Seen {
        self.seen()
            .last()
            .cloned()
            .expect("the upstream saw no request")
    }

    /// Requests whose whole body arrived, in arrival order.
    pub fn got(&self) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.body_state == BodyState::Complete)
            .collect()
    }

    /// Waits (bounded) until `n` requests have arrived with their whole body.
    pub async fn wait_got(&self, n: usize, bound: Duration) -> bool {
        let st = self.state.clone();
        poll_until_async(bound, || {
            st.seen
                .lock()
                .unwrap()
                .iter()
                .filter(|s| s.body_state == BodyState::Complete)
                .count()
                >= n
        })
        .await
    }

    /// Lets held requests answer, now and from now on.
    pub fn release(&self) {
        self.state.release.send_replace(true);
    }

    /// Waits (bounded) until the upstream has seen `n` requests.
    pub async fn wait_hits(&self, n: usize, bound: Duration) -> bool {
        let st = self.state.clone();
        poll_until_async(bound, || st.hits.load(Ordering::SeqCst) >= n).await
    }

    /// Waits (bounded) until no recorded request is still reading its body.
    pub async fn wait_bodies_settled(&self, bound: Duration) -> bool {
        let st = self.state.clone();
        poll_until_async(bound, || {
            st.seen
                .lock()
                .unwrap()
                .iter()
                .all(|s| s.body_state != BodyState::Reading)
        })
        .await
    }
}

async fn handle_upstream(st: Arc<UpState>, req: Request<Incoming>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let target = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| parts.uri.to_string());
    let idx = {
        let mut seen = st.seen.lock().unwrap();
        seen.push(Seen {
            method: parts.method.as_str().to_string(),
            target: target.clone(),
            version: parts.version,
            headers: headers_vec(&parts.headers),
            body_bytes: 0,
            body: Vec::new(),
            body_pattern_ok: true,
            body_state: BodyState::Reading,
            trailers: Vec::new(),
        });
        seen.len() - 1
    };
    st.hits.fetch_add(1, Ordering::SeqCst);

    if let Behaviour::Stream(n) = st.behaviour {
        // The request body (if any) is not needed; answer right away.
        st.seen.lock().unwrap()[idx].body_state = BodyState::Complete;
        let mut r = Response::new(pattern_body(n, true));
        r.headers_mut().insert("content-length", n.into());
        r.headers_mut().insert(
            "content-type",
            http::HeaderValue::from_static("application/octet-stream"),
        );
        return r;
    }

    // Read the body, counting as we go so a failed upload still shows what arrived.
    let mut body = body;
    let mut n = 0u64;
    let mut ok = true;
    let mut state = BodyState::Complete;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => match f.into_data() {
                Ok(d) => {
                    if ok && !pattern_matches(n, &d) {
                        ok = false;
                    }
                    n += d.len() as u64;
                    let mut seen = st.seen.lock().unwrap();
                    let keep = CAPTURE_CAP
                        .saturating_sub(seen[idx].body.len())
                        .min(d.len());
                    seen[idx].body.extend_from_slice(&d[..keep]);
                    seen[idx].body_bytes = n;
                    seen[idx].body_pattern_ok = ok;
                }
                Err(f) => {
                    if let Ok(t) = f.into_trailers() {
                        st.seen.lock().unwrap()[idx]
                            .trailers
                            .extend(headers_vec(&t));
                    }
                }
            },
            Err(_) => {
                state = BodyState::Failed;
                break;
            }
        }
    }
    {
        let mut seen = st.seen.lock().unwrap();
        seen[idx].body_bytes = n;
        seen[idx].body_pattern_ok = ok;
        seen[idx].body_state = state;
    }
    if state == BodyState::Failed {
        let mut r = Response::new(full("body failed"));
        *r.status_mut() = StatusCode::BAD_REQUEST;
        return r;
    }

    if let Behaviour::Slow(d) = &st.behaviour {
        tokio::time::sleep(*d).await;
    }
    if st.hold {
        let mut rx = st.release.subscribe();
        let _ = rx.wait_for(|v| *v).await;
    }
    match &st.behaviour {
        Behaviour::Reply(reply) => {
            let mut r = Response::new(full(reply.body.clone()));
            *r.status_mut() = StatusCode::from_u16(reply.status).expect("a valid status");
            for (name, value) in &reply.headers {
                r.headers_mut().append(
                    http::HeaderName::from_bytes(name.as_bytes()).expect("a header name"),
                    http::HeaderValue::from_str(value).expect("a header value"),
                );
            }
            return r;
        }
        Behaviour::StatusFromPath => {
            let code = parts
                .uri
                .path()
                .rsplit('/')
                .next()
                .and_then(|s| s.parse::<u16>().ok())
                .and_then(|c| StatusCode::from_u16(c).ok())
                .unwrap_or(StatusCode::OK);
            let mut r = Response::new(full(format!("{{\"status\":{}}}", code.as_u16())));
            *r.status_mut() = code;
            return r;
        }
        _ => {}
    }
    let v = match st.behaviour {
        Behaviour::Fixed => serde_json::json!({ "ok": true }),
        Behaviour::Consume => serde_json::json!({ "received": n, "pattern_ok": ok }),
        _ => serde_json::json!({
            "method": parts.method.as_str(),
            "target": target,
            "headers": headers_vec(&parts.headers),
            "body_bytes": n,
        }),
    };
    let mut r = Response::new(full(serde_json::to_vec(&v).unwrap()));
    r.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/json"),
    );
    r
}

/// Checks a proxy-generated refusal: status, JSON body with a non-empty `reason`,
/// `Portcullis-Decision: deny` and an `X-Request-Id`. Returns the reason.
pub fn check_refusal(r: &Resp, status: u16) -> Result<String, String> {
    if r.status != status {
        return Err(format!(
            "status {} (want {status}); body: {:?}",
            r.status,
            r.text()
        ));
    }
    let v: serde_json::Value = serde_json::from_slice(&r.body)
        .map_err(|e| format!("body is not JSON ({e}): {:?}", r.text()))?;
    let reason = match v.get("reason").and_then(|x| x.as_str()) {
        Some(s) if !s.is_empty() => s.to_string(),
        _ => return Err(format!("no `reason` in {v}")),
    };
    if r.header("portcullis-decision") != Some("deny") {
        return Err(format!(
            "Portcullis-Decision is {:?}, want deny",
            r.header("portcullis-decision")
        ));
    }
    if r.header("x-request-id").is_none() {
        return Err("no X-Request-Id header".into());
    }
    Ok(reason)
}

/// [`check_refusal`] that panics with `what` on a mismatch.
pub fn assert_refusal(what: &str, r: &Resp, status: u16) -> String {
    check_refusal(r, status).unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// Splits bytes holding several pipelined responses (each with Content-Length).
pub fn parse_pipelined(mut buf: &[u8]) -> Vec<Resp> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        let mut hs = [httparse::EMPTY_HEADER; 128];
        let mut r = httparse::Response::new(&mut hs);
        let Ok(httparse::Status::Complete(len)) = r.parse(buf) else {
            break;
        };
        let headers: Vec<(String, String)> = r
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect();
        let cl = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.trim().parse::<usize>().ok())
            .unwrap_or(buf.len() - len);
        let end = (len + cl).min(buf.len());
        out.push(Resp {
            status: r.code.unwrap_or(0),
            version: Version::HTTP_11,
            headers,
            body: Bytes::copy_from_slice(&buf[len..end]),
        });
        buf = &buf[end..];
    }
    out
}

/// Reads a stream to EOF (bounded by [`REQUEST_BOUND`]).
pub async fn read_to_eof<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> Vec<u8> {
    let mut v = Vec::new();
    let _ = tokio::time::timeout(REQUEST_BOUND, s.read_to_end(&mut v)).await;
    v
}

/// Reads a file relative to the crate root (for fixtures).
pub fn crate_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// One admin API call with `token` (empty: no Authorization header).
pub async fn admin_call(
    admin: SocketAddr,
    method: &str,
    path: &str,
    token: &str,
    body: Option<&serde_json::Value>,
) -> Resp {
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header("host", admin.to_string());
    if !token.is_empty() {
        b = b.header("authorization", format!("Bearer {token}"));
    }
    let req = match body {
        Some(v) => b
            .header("content-type", "application/json")
            .body(full(v.to_string()))
            .unwrap(),
        None => b.body(empty()).unwrap(),
    };
    send(admin, req)
        .await
        .unwrap_or_else(|e| panic!("{method} {path} on the admin API ({admin}): {e}"))
}
