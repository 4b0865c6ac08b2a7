//! The differential suite (issue 11, "How to prove it"): the backend never runs what the
//! gate did not see. Every input goes over a raw socket to the real binary, which forwards
//! to a *lenient recording backend* — a raw tokio server that parses HTTP/1.1 with
//! `httparse` (not hyper) the way permissive frameworks do: it ignores bodies on
//! GET/HEAD/OPTIONS (so a body there would be read as the next request on the keep-alive
//! connection, the CL.0 desync), reads Content-Length or chunked bodies otherwise, runs
//! every complete request in its buffer, and records each one.
//!
//! Invariant, checked for every input after the proxy has drained and closed its upstream
//! connections: the proxy refused (4xx/5xx) and the backend ran nothing of it, *or* the
//! backend ran exactly one request carrying its request id, whose method, path, query and
//! body are what the proxy audited as allowed and what the client sent, with the identity
//! headers the proxy owns and none of the ones it strips; and a model of what a lenient
//! framework would run for it (`%2F` decoded, `_method` and override headers honoured,
//! `.ext` and a trailing slash stripped, case folded) is allowed for that agent by the
//! library's own classifier and gate. The backend never runs a request without a proxy
//! request id (that would be a smuggled one).
//!
//! Inputs: a hand-written corpus with cases for each request-level class of issue 11, and
//! proptest generators (targets, methods, header sets, framing, bodies). The generated
//! run prints its seed; `DIFF_SEED=<seed>` replays it, `DIFF_CASES=<n>` changes its size.

use crate::common::*;
use portcullis::canon::Method;
use portcullis::config::Snapshot;
use portcullis::policy::{decide, Decision, Input, Narrowing, Switches};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config as PtConfig, RngAlgorithm, TestRng, TestRunner};
use sha2::{Digest, Sha256};
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The credential the proxy injects upstream (the agent never holds it).
const API_KEY: &str = "diff-upstream-secret-5b1e";
/// Generated cases per run unless `DIFF_CASES` says otherwise.
const DEFAULT_CASES: usize = 2400;
/// Requests in flight at once against the proxy.
const IN_FLIGHT: usize = 8;

// ---------------------------------------------------------------------------------------
// The lenient recording backend
// ---------------------------------------------------------------------------------------

/// One request the backend parsed completely (and so would have run).
#[derive(Debug, Clone)]
struct Recorded {
    conn: usize,
    method: String,
    target: String,
    /// Names lower-cased, in arrival order.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Recorded {
    fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
    fn request_id(&self) -> Option<&str> {
        self.all("x-request-id").first().copied()
    }
}

#[derive(Default)]
struct BackendState {
    open: AtomicUsize,
    accepted: AtomicUsize,
    recorded: Mutex<Vec<Recorded>>,
    /// Bytes the backend could not make a request of (a desync), or a request cut off
    /// at EOF: (connection, request id if the head parsed, what happened).
    leftovers: Mutex<Vec<(usize, Option<String>, String)>>,
}

struct Backend {
    addr: SocketAddr,
    state: Arc<BackendState>,
}

impl Backend {
    async fn start() -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(BackendState::default());
        let st = state.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let id = st.accepted.fetch_add(1, Ordering::SeqCst);
                st.open.fetch_add(1, Ordering::SeqCst);
                let st = st.clone();
                tokio::spawn(async move {
                    serve_conn(sock, id, &st).await;
                    st.open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Backend { addr, state }
    }
    fn open(&self) -> usize {
        self.state.open.load(Ordering::SeqCst)
    }
}

enum Parsed {
    Complete(Recorded, usize),
    Partial(Option<String>),
    Garbage(String),
}

/// The request at the start of `buf`, read as a lenient framework reads it.
fn parse_one(buf: &[u8], conn: usize) -> Parsed {
    let mut hs = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut hs);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial(None),
        Err(e) => return Parsed::Garbage(format!("unparseable request head ({e})")),
    };
    let method = req.method.unwrap_or("").to_string();
    let target = req.path.unwrap_or("").to_string();
    let headers: Vec<(String, String)> = req
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    let rid = headers
        .iter()
        .find(|(n, _)| n == "x-request-id")
        .map(|(_, v)| v.clone());
    let find = |name: &str| {
        headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect::<Vec<_>>()
    };
    let rest = &buf[head_len..];
    // The lenient part: no body on these methods, whatever the framing headers say.
    let bodiless = ["GET", "HEAD", "OPTIONS"]
        .iter()
        .any(|m| m.eq_ignore_ascii_case(&method));
    let (body, used) = if bodiless {
        (Vec::new(), 0)
    } else if find("transfer-encoding")
        .iter()
        .any(|v| v.to_ascii_lowercase().contains("chunked"))
    {
        match dechunk(rest) {
            Ok(Some(x)) => x,
            Ok(None) => return Parsed::Partial(rid),
            Err(e) => return Parsed::Garbage(format!("bad chunked body: {e}")),
        }
    } else if let Some(cl) = find("content-length").first() {
        let Ok(n) = cl.trim().parse::<usize>() else {
            return Parsed::Garbage(format!("bad Content-Length {cl:?}"));
        };
        if rest.len() < n {
            return Parsed::Partial(rid);
        }
        (rest[..n].to_vec(), n)
    } else {
        (Vec::new(), 0)
    };
    Parsed::Complete(
        Recorded {
            conn,
            method,
            target,
            headers,
            body,
        },
        head_len + used,
    )
}

/// A chunked body at the start of `b`: (payload, bytes used), `None` if incomplete.
fn dechunk(b: &[u8]) -> Result<Option<(Vec<u8>, usize)>, String> {
    let mut out = Vec::new();
    let mut pos = 0;
    let line = |from: usize| b[from..].windows(2).position(|w| w == b"\r\n");
    loop {
        let Some(eol) = line(pos) else {
            return Ok(None);
        };
        let size_line = std::str::from_utf8(&b[pos..pos + eol]).map_err(|e| e.to_string())?;
        let hex = size_line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(hex, 16).map_err(|e| format!("{size_line:?}: {e}"))?;
        pos += eol + 2;
        if size == 0 {
            // Trailer fields up to an empty line.
            loop {
                let Some(eol) = line(pos) else {
                    return Ok(None);
                };
                pos += eol + 2;
                if eol == 0 {
                    return Ok(Some((out, pos)));
                }
            }
        }
        if b.len() < pos + size + 2 {
            return Ok(None);
        }
        out.extend_from_slice(&b[pos..pos + size]);
        if &b[pos + size..pos + size + 2] != b"\r\n" {
            return Err("chunk not followed by CRLF".into());
        }
        pos += size + 2;
    }
}

async fn serve_conn(mut sock: TcpStream, conn: usize, st: &BackendState) {
    let mut buf = Vec::new();
    let mut tmp = vec![0u8; 65536];
    loop {
        // Every complete request in the buffer runs (pipelining), in order.
        loop {
            match parse_one(&buf, conn) {
                Parsed::Complete(rec, used) => {
                    buf.drain(..used);
                    st.recorded.lock().unwrap().push(rec);
                    // A session the upstream mints: it must never reach the agent.
                    let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nSet-Cookie: upstream_session=minted-under-the-injected-key\r\n\r\nok";
                    if sock.write_all(resp).await.is_err() {
                        return;
                    }
                }
                Parsed::Partial(_) => break,
                Parsed::Garbage(what) => {
                    st.leftovers.lock().unwrap().push((
                        conn,
                        None,
                        format!("{what}: {:?}", String::from_utf8_lossy(&buf)),
                    ));
                    let _ = sock
                        .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                        .await;
                    return;
                }
            }
        }
        match sock.read(&mut tmp).await {
            Ok(0) | Err(_) => {
                if !buf.is_empty() {
                    let rid = match parse_one(&buf, conn) {
                        Parsed::Partial(rid) => rid,
                        _ => None,
                    };
                    st.leftovers.lock().unwrap().push((
                        conn,
                        rid,
                        format!(
                            "{} bytes left at EOF: {:?}",
                            buf.len(),
                            String::from_utf8_lossy(&buf[..buf.len().min(300)])
                        ),
                    ));
                }
                return;
            }
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
        }
    }
}

// ---------------------------------------------------------------------------------------
// The configuration under test
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Who {
    /// `tools: [x.items.get, x.items.list, …]`, `max_risk: low`.
    Low,
    /// `tools: [x.*, enc.*]`, `max_risk: medium`: reaches writes, so `_method`, `%2F`
    /// refunds and sensitive spellings are decided by the rules under test.
    Mid,
    /// No credential.
    Anon,
}

impl Who {
    fn agent(self) -> Option<&'static str> {
        match self {
            Who::Low => Some("lowbot"),
            Who::Mid => Some("midbot"),
            Who::Anon => None,
        }
    }
    fn tenant(self) -> &'static str {
        match self {
            Who::Low => "acme",
            Who::Mid => "beta",
            Who::Anon => "",
        }
    }
}

fn proxy_config(backend: SocketAddr) -> String {
    format!(
        r#"{head}{no_signals}upstreams:
  api:
    url: http://{backend}
    inject: {{ header: X-Api-Key, value_env: DIFF_API_KEY }}
    tenant_header: X-Tenant-Id
routes:
  - prefix: /x
    upstream: api
    tool_prefix: x
    paths: ["/x/items/{{id}}", "/x/items/export"]
    sensitive_paths: ["/x/items/export"]
    tools:
      - {{ match: "POST /x/items/{{id}}/refund", name: x.items.refund, risk: critical }}
  - prefix: /enc
    upstream: api
    tool_prefix: enc
    allow_encoded_slash: true
    paths: ["/enc/items/{{id}}", "/enc/items/export"]
    sensitive_paths: ["/enc/items/export", "/enc/admin", "/enc/admin/{{*rest}}"]
    tools:
      - {{ match: "POST /enc/items/{{id}}/refund", name: enc.items.refund, risk: critical }}
profiles:
  low:
    tools: ["x.items.get", "x.items.list", "enc.items.get", "enc.items.list"]
    max_risk: low
    deny: ["*.delete"]
  mid:
    tools: ["x.*", "enc.*"]
    max_risk: medium
    deny: ["*.delete"]
agents:
  lowbot: {{ profile: low, tenant: acme }}
  midbot: {{ profile: mid, tenant: beta }}
"#,
        head = Head::new().audit(
            "{ path: data/audit.jsonl, redact_query: [], max_refusals_per_second: 1000000 }"
        ),
        no_signals = crate::common::NO_SIGNALS,
    )
}

// ---------------------------------------------------------------------------------------
// Cases
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No Content-Length, no Transfer-Encoding (and no body).
    None,
    ZeroLength,
    Length,
    Chunked,
    /// `Content-Length` (a wrong one) before `Transfer-Encoding: chunked`.
    LengthThenChunked,
    /// `Transfer-Encoding: chunked` before a `Content-Length`.
    ChunkedThenLength,
}

#[derive(Debug, Clone)]
enum Expect {
    /// Only the invariant.
    Any,
    /// Forwarded (200 from the backend).
    Forwarded,
    /// Refused with this status and JSON reason (no body, so no reason, on HEAD and 401).
    Refused(u16, Option<&'static str>),
}

#[derive(Clone)]
struct Case {
    label: String,
    who: Who,
    method: String,
    target: Vec<u8>,
    /// Extra header lines, sent as given.
    headers: Vec<(String, String)>,
    framing: Framing,
    body: Vec<u8>,
    expect: Expect,
}

impl std::fmt::Debug for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let body = if self.body.len() > 400 {
            format!(
                "{:?}… ({} bytes)",
                String::from_utf8_lossy(&self.body[..400]),
                self.body.len()
            )
        } else {
            format!("{:?}", String::from_utf8_lossy(&self.body))
        };
        write!(
            f,
            "[{}] agent {:?}: {} {} headers {:?} framing {:?} body {}",
            self.label,
            self.who,
            self.method,
            String::from_utf8_lossy(&self.target),
            self.headers,
            self.framing,
            body
        )
    }
}

impl Case {
    fn new(label: &str, who: Who, method: &str, target: &str) -> Case {
        Case {
            label: label.into(),
            who,
            method: method.into(),
            target: target.as_bytes().to_vec(),
            headers: Vec::new(),
            framing: Framing::None,
            body: Vec::new(),
            expect: Expect::Any,
        }
    }
    fn header(mut self, n: &str, v: &str) -> Case {
        self.headers.push((n.into(), v.into()));
        self
    }
    fn body(mut self, framing: Framing, b: impl AsRef<[u8]>) -> Case {
        self.framing = framing;
        self.body = b.as_ref().to_vec();
        self
    }
    fn form(self, b: &str) -> Case {
        self.header("Content-Type", "application/x-www-form-urlencoded")
            .body(Framing::Length, b)
    }
    fn forwarded(mut self) -> Case {
        self.expect = Expect::Forwarded;
        self
    }
    fn refused(mut self, status: u16, reason: &'static str) -> Case {
        self.expect = Expect::Refused(status, (self.method != "HEAD").then_some(reason));
        self
    }
    fn unauthenticated(mut self) -> Case {
        self.expect = Expect::Refused(401, None);
        self
    }

    /// The bytes on the wire. `@HOST@` (in the target and header values), `@LOW@` and
    /// `@MID@` (header values) stand for the proxy's address and the agents' tokens.
    fn render(&self, host: &str, tokens: &HashMap<Who, String>) -> Vec<u8> {
        let fill = |s: &str| {
            s.replace("@HOST@", host)
                .replace("@LOW@", &tokens[&Who::Low])
                .replace("@MID@", &tokens[&Who::Mid])
        };
        let mut v = Vec::with_capacity(self.body.len() + 512);
        v.extend_from_slice(self.method.as_bytes());
        v.push(b' ');
        match self.target.strip_prefix(b"http://@HOST@") {
            Some(rest) => {
                v.extend_from_slice(format!("http://{host}").as_bytes());
                v.extend_from_slice(rest);
            }
            None => v.extend_from_slice(&self.target),
        }
        v.extend_from_slice(b" HTTP/1.1\r\nHost: ");
        v.extend_from_slice(host.as_bytes());
        v.extend_from_slice(b"\r\n");
        if self.who != Who::Anon {
            v.extend_from_slice(Proxy::auth_line(&tokens[&self.who]).as_bytes());
        }
        for (n, val) in &self.headers {
            v.extend_from_slice(format!("{n}: {}\r\n", fill(val)).as_bytes());
        }
        let len = self.body.len();
        match self.framing {
            Framing::None => {}
            Framing::ZeroLength => v.extend_from_slice(b"Content-Length: 0\r\n"),
            Framing::Length => v.extend_from_slice(format!("Content-Length: {len}\r\n").as_bytes()),
            Framing::Chunked => v.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
            Framing::LengthThenChunked => v.extend_from_slice(
                format!(
                    "Content-Length: {}\r\nTransfer-Encoding: chunked\r\n",
                    len.min(3)
                )
                .as_bytes(),
            ),
            Framing::ChunkedThenLength => v.extend_from_slice(
                format!("Transfer-Encoding: chunked\r\nContent-Length: {len}\r\n").as_bytes(),
            ),
        }
        v.extend_from_slice(b"Connection: close\r\n\r\n");
        match self.framing {
            Framing::None | Framing::ZeroLength => {}
            Framing::Length => v.extend_from_slice(&self.body),
            Framing::Chunked | Framing::LengthThenChunked | Framing::ChunkedThenLength => {
                // Up to three chunks, split where the body's length puts them.
                let cuts = [0, len / 3, (2 * len) / 3, len];
                for w in cuts.windows(2) {
                    let part = &self.body[w[0]..w[1]];
                    if !part.is_empty() {
                        v.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
                        v.extend_from_slice(part);
                        v.extend_from_slice(b"\r\n");
                    }
                }
                v.extend_from_slice(b"0\r\n\r\n");
            }
        }
        v
    }
}

// ---------------------------------------------------------------------------------------
// Running a batch
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Outcome {
    /// 0 when the connection closed without a response.
    status: u16,
    request_id: Option<String>,
    reason: Option<String>,
    set_cookie: bool,
    /// Why there is no response, when there is none.
    error: Option<String>,
}

/// Sends one request, writing and reading at once (a proxy may answer before it has
/// read the whole body), reads to EOF (`Connection: close`) and parses one response. A
/// response to HEAD has no body, whatever its Content-Length says.
async fn exchange(addr: SocketAddr, bytes: Vec<u8>, head: bool) -> Outcome {
    let fut = async move {
        let s = TcpStream::connect(addr).await?;
        let (mut rd, mut wr) = s.into_split();
        let writer = tokio::spawn(async move {
            let _ = wr.write_all(&bytes).await;
            wr
        });
        let mut buf = Vec::new();
        let read = rd.read_to_end(&mut buf).await;
        let _wr = writer.await;
        if buf.is_empty() {
            read?;
        }
        Ok::<_, BoxError>(buf)
    };
    let buf = match tokio::time::timeout(REQUEST_BOUND, fut).await {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => return Outcome::none(e.to_string()),
        Err(_) => panic!("no response within {REQUEST_BOUND:?}"),
    };
    // Interim responses (`100 Continue` to an `Expect`) come first; skip them.
    let mut at = 0;
    loop {
        let mut hs = [httparse::EMPTY_HEADER; 64];
        let mut r = httparse::Response::new(&mut hs);
        match r.parse(&buf[at..]) {
            Ok(httparse::Status::Complete(n)) if r.code.is_some_and(|c| c < 200) => at += n,
            _ => break,
        }
    }
    let mut hs = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut hs);
    let len = match resp.parse(&buf[at..]) {
        Ok(httparse::Status::Complete(n)) => at + n,
        other => {
            return Outcome::none(format!(
                "no complete response ({other:?}): {:?}",
                String::from_utf8_lossy(&buf)
            ))
        }
    };
    let header = |name: &str| {
        resp.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).into_owned())
    };
    let body = if head { &[][..] } else { &buf[len..] };
    Outcome {
        status: resp.code.unwrap_or(0),
        request_id: header("x-request-id"),
        reason: serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v["reason"].as_str().map(str::to_string)),
        set_cookie: header("set-cookie").is_some(),
        error: None,
    }
}

impl Outcome {
    fn none(error: String) -> Outcome {
        Outcome {
            status: 0,
            request_id: None,
            reason: None,
            set_cookie: false,
            error: Some(error),
        }
    }
}

struct Report {
    /// How many cases ended how (`200`, `403 risk_ceiling`, …).
    outcomes: std::collections::BTreeMap<String, usize>,
    cases: usize,
    forwarded: usize,
    refused: usize,
    violations: Vec<String>,
}

/// Starts a backend and a proxy, sends every case, stops the proxy, waits until the
/// backend has no connection left, then checks every invariant.
async fn run_batch(cases: &[Case]) -> Report {
    let backend = Backend::start().await;
    let cfg = proxy_config(backend.addr);
    let mut proxy = Proxy::start(&cfg, &[("DIFF_API_KEY", API_KEY)]);
    let env = |k: &str| (k == "DIFF_API_KEY").then(|| API_KEY.to_string());
    let snap = Snapshot::parse(&proxy.config_path, &cfg, &env).expect("the config parses");
    let mut tokens: HashMap<Who, String> = HashMap::new();
    for who in [Who::Low, Who::Mid] {
        let t = proxy.agent_token(who.agent().unwrap()).await;
        assert!(!t.is_empty(), "POST /tokens issued no credential");
        tokens.insert(who, t);
    }
    tokens.insert(Who::Anon, String::new());
    let host = proxy.addr.to_string();

    let sem = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, c) in cases.iter().enumerate() {
        let bytes = c.render(&host, &tokens);
        let permit = sem.clone().acquire_owned().await.unwrap();
        let addr = proxy.addr;
        let head = c.method == "HEAD";
        tasks.spawn(async move {
            let o = exchange(addr, bytes, head).await;
            drop(permit);
            (i, o)
        });
    }
    let mut outcomes: Vec<Option<Outcome>> = vec![None; cases.len()];
    while let Some(r) = tasks.join_next().await {
        let (i, o) = r.expect("a request task panicked");
        outcomes[i] = Some(o);
    }
    let outcomes: Vec<Outcome> = outcomes.into_iter().map(Option::unwrap).collect();

    // Every byte the proxy will ever send has been sent once it has exited and the
    // backend has seen every connection close.
    let status = proxy.terminate(Duration::from_secs(20)).await;
    assert!(
        status.is_some(),
        "the proxy did not exit within 20 s of SIGTERM"
    );
    let st = backend.state.clone();
    assert!(
        poll_until_async(Duration::from_secs(10), || st.open.load(Ordering::SeqCst)
            == 0)
        .await,
        "the backend still has {} open connections after the proxy exited",
        backend.open()
    );
    let audit = audit_by_id(&proxy.audit_text());
    check(cases, &outcomes, &backend, &snap, &audit)
}

fn audit_by_id(text: &str) -> HashMap<String, serde_json::Value> {
    let mut m = HashMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).expect("audit line is JSON");
        if let Some(id) = v["request_id"].as_str() {
            m.insert(id.to_string(), v);
        }
    }
    m
}

/// Headers the backend must never see: routing overrides, client-address claims, the
/// agent's own credential and cookies, method overrides.
const NEVER_UPSTREAM: [&str; 20] = [
    "x-original-url",
    "x-rewrite-url",
    "x-override-url",
    "x-forwarded-prefix",
    "x-forwarded-path",
    "x-forwarded-host",
    "true-client-ip",
    "x-client-ip",
    "cf-connecting-ip",
    "x-cluster-client-ip",
    "fastly-client-ip",
    "x-originating-ip",
    "x-real-ip",
    "forwarded",
    "cookie",
    "authorization",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "proxy-authorization",
];

fn check(
    cases: &[Case],
    outcomes: &[Outcome],
    backend: &Backend,
    snap: &Snapshot,
    audit: &HashMap<String, serde_json::Value>,
) -> Report {
    let recorded = backend.state.recorded.lock().unwrap().clone();
    let leftovers = backend.state.leftovers.lock().unwrap().clone();
    let mut by_id: HashMap<&str, Vec<&Recorded>> = HashMap::new();
    let mut violations = Vec::new();
    for r in &recorded {
        match r.request_id() {
            Some(id) => by_id.entry(id).or_default().push(r),
            None => violations.push(format!(
                "SMUGGLED: the backend ran a request without a proxy request id (connection {}): {} {} {:?}",
                r.conn, r.method, r.target, r.headers
            )),
        }
    }
    let mut case_of_id: HashMap<&str, usize> = HashMap::new();
    let (mut forwarded, mut refused) = (0, 0);
    for (i, (c, o)) in cases.iter().zip(outcomes).enumerate() {
        let mut fail = |what: String| {
            violations.push(format!(
                "{what}\n    case #{i} {c:?}\n    proxy answered {o:?}"
            ))
        };
        if let Some(id) = &o.request_id {
            case_of_id.insert(id.as_str(), i);
        }
        if o.set_cookie {
            fail("the agent received an upstream Set-Cookie".into());
        }
        let got: &[&Recorded] = o
            .request_id
            .as_deref()
            .and_then(|id| by_id.get(id))
            .map_or(&[], |v| v.as_slice());
        match &c.expect {
            Expect::Any => {}
            Expect::Forwarded if o.status != 200 => {
                fail(format!("expected to be forwarded, got {}", o.status))
            }
            Expect::Refused(s, reason)
                if o.status != *s || reason.is_some_and(|r| o.reason.as_deref() != Some(r)) =>
            {
                fail(format!("expected {s} {reason:?}"))
            }
            _ => {}
        }
        if o.status >= 400 || o.status == 0 {
            refused += 1;
            if !got.is_empty() {
                fail(format!(
                    "refused ({}), yet the backend ran {} request(s) with its id: {:?}",
                    o.status,
                    got.len(),
                    got
                ));
            }
            continue;
        }
        if o.status != 200 {
            fail(format!("unexpected status {}", o.status));
            continue;
        }
        forwarded += 1;
        let Some(id) = o.request_id.as_deref() else {
            fail("a forwarded response without X-Request-Id".into());
            continue;
        };
        if got.len() != 1 {
            fail(format!(
                "forwarded, but the backend ran {} requests with its id: {got:?}",
                got.len()
            ));
            continue;
        }
        let r = got[0];
        // What was audited as allowed is what ran.
        match audit.get(id) {
            None => fail("no audit record for a forwarded request".into()),
            Some(a) => {
                // A path past 2 KiB is recorded cut and marked `truncated` (issue 11,
                // class 9): then what was recorded must be the start of what ran.
                let path_ok = match a["path"].as_str() {
                    Some(p) if a["truncated"] == true => {
                        p.len() >= 2000 && r.target.starts_with(p) && r.target.len() > p.len()
                    }
                    Some(p) => p == r.target,
                    None => false,
                };
                if a["decision"] != "allow"
                    || a["method"].as_str() != Some(r.method.as_str())
                    || !path_ok
                {
                    fail(format!(
                        "audit says {} {} ({}), the backend ran {} {}",
                        a["method"], a["path"], a["decision"], r.method, r.target
                    ));
                }
            }
        }
        // The body that ran is the body the client sent.
        if Sha256::digest(&r.body) != Sha256::digest(&c.body) {
            fail(format!(
                "the backend ran a body of {} bytes ({:?}), the client sent {} bytes",
                r.body.len(),
                String::from_utf8_lossy(&r.body[..r.body.len().min(200)]),
                c.body.len()
            ));
        }
        // Identity headers are the proxy's, exactly once; stripped ones are gone.
        let one = |name: &str, want: &str| {
            let v = r.all(name);
            (v.len() == 1 && v[0] == want)
                .then_some(())
                .ok_or_else(|| format!("{name}: {v:?} (want exactly {want:?})"))
        };
        for e in [
            one("x-request-id", id),
            one("x-tenant-id", c.who.tenant()),
            one("x-api-key", API_KEY),
            one("x-forwarded-for", "127.0.0.1"),
        ]
        .into_iter()
        .filter_map(Result::err)
        {
            fail(format!("identity header at the backend: {e}"));
        }
        for n in NEVER_UPSTREAM {
            if !r.all(n).is_empty() {
                fail(format!("the backend received `{n}`: {:?}", r.all(n)));
            }
        }
        // What a lenient framework would run must be allowed for this agent.
        for e in lenient_violations(snap, c.who, r) {
            fail(e);
        }
    }
    // Every request the backend ran belongs to a response the client got (refused ones
    // with a record were reported above).
    for (id, rs) in &by_id {
        if !case_of_id.contains_key(id) {
            violations.push(format!(
                "the backend ran request id {id} that no client response carried: {rs:?}"
            ));
        }
    }
    for (conn, rid, what) in leftovers {
        let ok = rid
            .as_deref()
            .and_then(|id| case_of_id.get(id))
            .is_some_and(|&i| outcomes[i].status >= 400);
        if !ok {
            violations.push(format!(
                "DESYNC on backend connection {conn} (request id {rid:?}): {what}"
            ));
        }
    }
    let mut hist = std::collections::BTreeMap::new();
    if std::env::var("DIFF_VERBOSE").is_ok() {
        for (c, o) in cases.iter().zip(outcomes) {
            println!("{} {:?} <- {c:?}", o.status, o.reason);
        }
    }
    for o in outcomes {
        let k = match &o.error {
            Some(_) => "no response".to_string(),
            None => format!("{} {}", o.status, o.reason.as_deref().unwrap_or("")),
        };
        *hist.entry(k.trim().to_string()).or_insert(0) += 1;
    }
    Report {
        outcomes: hist,
        cases: cases.len(),
        forwarded,
        refused,
        violations,
    }
}

// ---------------------------------------------------------------------------------------
// The lenient-framework model
// ---------------------------------------------------------------------------------------

fn hexv(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Form decoding: `+` is a space, `%XX` a byte, a broken escape stays as it is.
fn form_decode(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < s.len() => match (hexv(s[i + 1]), hexv(s[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    out
}

/// PHP's (and so Laravel's and Symfony's) reading of a field name: leading spaces
/// dropped, ` ` and `.` become `_`. Names are case-sensitive there and in Rack.
fn php_name(raw: &[u8]) -> Vec<u8> {
    raw.iter()
        .skip_while(|b| **b == b' ')
        .map(|&b| if b == b' ' || b == b'.' { b'_' } else { b })
        .collect()
}

/// Values of `_method` fields in an urlencoded string (Rack splits on `&` and `;`).
fn urlencoded_overrides(s: &[u8]) -> Vec<String> {
    s.split(|b| *b == b'&' || *b == b';')
        .filter_map(|pair| {
            let mut it = pair.splitn(2, |b| *b == b'=');
            let name = php_name(&form_decode(it.next()?));
            let value = form_decode(it.next().unwrap_or(b""));
            (name == b"_method").then(|| String::from_utf8_lossy(&value).into_owned())
        })
        .collect()
}

/// Media type as PHP cuts it: lower case, up to the first `;`, `,` or white space.
fn lenient_media(ct: &str) -> String {
    let t = ct.trim_start().to_ascii_lowercase();
    let end = t.find([';', ',', ' ', '\t']).unwrap_or(t.len());
    t[..end].to_string()
}

fn boundary_of(ct: &str) -> Option<String> {
    let lower = ct.to_ascii_lowercase();
    let i = lower.find("boundary=")? + "boundary=".len();
    let rest = &ct[i..];
    let b = if let Some(q) = rest.strip_prefix('"') {
        &q[..q.find('"')?]
    } else {
        let end = rest.find([';', ',']).unwrap_or(rest.len());
        rest[..end].trim()
    };
    (!b.is_empty()).then(|| b.to_string())
}

/// `_method` fields of a multipart/form-data body.
fn multipart_overrides(body: &[u8], boundary: &str) -> Vec<String> {
    let delim = format!("--{boundary}");
    let text = String::from_utf8_lossy(body);
    let mut out = Vec::new();
    for part in text.split(delim.as_str()).skip(1) {
        let part = part.strip_prefix("\r\n").unwrap_or(part);
        let Some((head, content)) = part.split_once("\r\n\r\n") else {
            continue;
        };
        let content = content.strip_suffix("\r\n").unwrap_or(content);
        for line in head.split("\r\n") {
            let Some((hn, hv)) = line.split_once(':') else {
                continue;
            };
            if !hn.trim().eq_ignore_ascii_case("content-disposition") {
                continue;
            }
            let mut name = None;
            let mut file = false;
            for p in hv.split(';').skip(1) {
                let Some((k, v)) = p.split_once('=') else {
                    continue;
                };
                let v = v.trim().trim_matches('"');
                match k.trim().to_ascii_lowercase().as_str() {
                    "name" => name = Some(v.to_string()),
                    "name*" => name = Some(v.rsplit("''").next().unwrap_or(v).to_string()),
                    "filename" | "filename*" => file = true,
                    _ => {}
                }
            }
            if let Some(n) = name {
                if !file && php_name(n.as_bytes()) == b"_method" {
                    out.push(content.to_string());
                }
            }
        }
    }
    out
}

/// The methods a lenient framework may run a recorded request as.
fn lenient_methods(r: &Recorded) -> Result<BTreeSet<Method>, String> {
    let base = Method::parse(&r.method)
        .ok_or_else(|| format!("the backend received method {:?}", r.method))?;
    let mut ms = BTreeSet::from([base]);
    if base != Method::Post {
        return Ok(ms);
    }
    let mut values: Vec<String> = Vec::new();
    for h in [
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
    ] {
        values.extend(r.all(h).iter().map(|v| v.to_string()));
    }
    // Symfony reads `_method` from the query too.
    if let Some((_, q)) = r.target.split_once('?') {
        values.extend(urlencoded_overrides(q.as_bytes()));
    }
    let cts = r.all("content-type");
    // Rack parses a POST without a Content-Type as a form.
    if cts.is_empty() {
        values.extend(urlencoded_overrides(&r.body));
    }
    // With several Content-Types, a framework may believe any one of them.
    for ct in cts {
        let media = lenient_media(ct);
        if media == "application/x-www-form-urlencoded" {
            values.extend(urlencoded_overrides(&r.body));
        }
        if media == "multipart/form-data" {
            if let Some(b) = boundary_of(ct) {
                values.extend(multipart_overrides(&r.body, &b));
            }
        }
        // Laravel's isJson(): the header contains `/json` or `+json`.
        let lower = ct.to_ascii_lowercase();
        if lower.contains("/json") || lower.contains("+json") || media.contains("json") {
            if let Ok(serde_json::Value::Object(o)) =
                serde_json::from_slice::<serde_json::Value>(&r.body)
            {
                if let Some(v) = o.get("_method").and_then(|v| v.as_str()) {
                    values.push(v.to_string());
                }
            }
        }
    }
    for v in values {
        if let Some(m) = Method::parse(&v.trim().to_ascii_uppercase()) {
            ms.insert(m);
        }
    }
    Ok(ms)
}

/// The paths a lenient router may resolve a recorded path to: the closure under
/// decoding `%2F`, dropping one trailing slash, dropping a `.ext` (from the first or the
/// last dot of the last segment) and folding ASCII case.
fn lenient_paths(path: &str) -> BTreeSet<String> {
    let mut all = BTreeSet::from([path.to_string()]);
    let mut todo = vec![path.to_string()];
    while let Some(p) = todo.pop() {
        let mut next = vec![
            p.replace("%2F", "/").replace("%2f", "/"),
            p.to_ascii_lowercase(),
        ];
        if p.len() > 1 {
            if let Some(s) = p.strip_suffix('/') {
                next.push(s.to_string());
            }
        }
        let last = p.rfind('/').map_or(0, |i| i + 1);
        let seg = &p[last..];
        for dot in [seg.find('.'), seg.rfind('.')].into_iter().flatten() {
            if dot > 0 {
                next.push(p[..last + dot].to_string());
            }
        }
        for n in next {
            if !n.is_empty() && all.insert(n.clone()) {
                todo.push(n);
            }
        }
    }
    all
}

/// Everything a lenient framework may run for `r` that the agent may not call.
fn lenient_violations(snap: &Snapshot, who: Who, r: &Recorded) -> Vec<String> {
    let Some(agent) = who.agent().and_then(|a| snap.agents.get(a)) else {
        return vec![format!(
            "an unauthenticated request reached the backend: {} {}",
            r.method, r.target
        )];
    };
    let methods = match lenient_methods(r) {
        Ok(m) => m,
        Err(e) => return vec![e],
    };
    let path = r.target.split('?').next().unwrap_or("");
    let mut out = Vec::new();
    for m in &methods {
        for p in lenient_paths(path) {
            let verdict = match snap.classifier.classify(*m, &p) {
                Err(e) => format!("unclassified ({e:?})"),
                Ok(tool) => match decide(&Input {
                    agent,
                    narrowing: &Narrowing::default(),
                    tool: &tool,
                    path: &p,
                    switches: &Switches::default(),
                    approved: false,
                    evaluated: &Default::default(),
                }) {
                    Decision::Allow { .. } => continue,
                    d => format!(
                        "{} as `{}` ({} risk, aliases {:?}): {}",
                        d.label(),
                        tool.name,
                        tool.risk,
                        tool.aliases,
                        d.reason()
                    ),
                },
            };
            out.push(format!(
                "LENIENT BACKEND: the backend received {} {}; a lenient framework would run {m} {p}, which is {verdict} for {}",
                r.method,
                r.target,
                agent.id
            ));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// The hand-written corpus
// ---------------------------------------------------------------------------------------

const SMUGGLED: &str = "DELETE /x/items/1 HTTP/1.1\r\nHost: backend\r\nContent-Length: 0\r\n\r\n";
const BOUNDARY: &str = "XyZdiffBoundary";

fn multipart(fields: &[(&str, &str)]) -> String {
    let mut s = String::new();
    for (disp, value) in fields {
        s.push_str(&format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; {disp}\r\n\r\n{value}\r\n"
        ));
    }
    s.push_str(&format!("--{BOUNDARY}--\r\n"));
    s
}

fn corpus() -> Vec<Case> {
    use Framing::*;
    use Who::*;
    let mp_ct = format!("multipart/form-data; boundary={BOUNDARY}");
    let mut v = vec![
        // Controls: plain allowed calls are forwarded.
        Case::new("control get", Low, "GET", "/x/items/1").forwarded(),
        Case::new("control head", Low, "HEAD", "/x/items/1").forwarded(),
        Case::new("control list", Low, "GET", "/x/items").forwarded(),
        Case::new("control enc", Low, "GET", "/enc/items/7").forwarded(),
        Case::new("control zero length get", Low, "GET", "/x/items/1")
            .body(ZeroLength, "")
            .forwarded(),
        Case::new("control form post", Mid, "POST", "/x/items/1")
            .form("a=1&b=2")
            .forwarded(),
        Case::new("control chunked post", Mid, "POST", "/x/items/1")
            .header("Content-Type", "application/json")
            .body(Chunked, r#"{"a":{"_method":"DELETE"},"b":"_method"}"#)
            .forwarded(),
        Case::new("control te+cl post", Mid, "POST", "/x/items/1")
            .header("Content-Type", "text/plain")
            .body(LengthThenChunked, "hello world")
            .forwarded(),
        Case::new("control utf-8", Low, "GET", "/x/items/caf%C3%A9").forwarded(),
        Case::new("control 4-byte utf-8", Low, "GET", "/x/items/%F0%9F%98%80").forwarded(),
        Case::new("control id with suffix", Low, "GET", "/x/items/42.json").forwarded(),
        Case::new("control enc slash", Mid, "GET", "/enc/items/a%2Fb").forwarded(),
        Case::new("control mid patch", Mid, "PATCH", "/x/items/1")
            .header("Content-Type", "application/json")
            .body(Length, r#"{"name":"n"}"#)
            .forwarded(),
        // 1. Bodies on bodiless methods (CL.0).
        Case::new("cl0 get smuggle", Low, "GET", "/x/items/1")
            .body(Length, SMUGGLED)
            .refused(400, "body_not_allowed"),
        Case::new("cl0 get chunked smuggle", Low, "GET", "/x/items/1")
            .body(Chunked, SMUGGLED)
            .refused(400, "body_not_allowed"),
        Case::new("cl0 head smuggle", Low, "HEAD", "/x/items/1")
            .body(Length, SMUGGLED)
            .refused(400, "body_not_allowed"),
        Case::new("cl0 head chunked", Low, "HEAD", "/x/items/1")
            .body(Chunked, "a=1")
            .refused(400, "body_not_allowed"),
        Case::new("cl0 options smuggle", Mid, "OPTIONS", "/x/items/1")
            .body(Length, SMUGGLED)
            .refused(400, "body_not_allowed"),
        Case::new("cl0 options chunked", Mid, "OPTIONS", "/x/items")
            .body(Chunked, SMUGGLED)
            .refused(400, "body_not_allowed"),
        Case::new("cl0 get te+cl", Low, "GET", "/x/items/1")
            .body(ChunkedThenLength, SMUGGLED)
            .refused(400, "body_not_allowed"),
        Case::new("cl0 delete body", Mid, "DELETE", "/x/items/1")
            .body(Length, SMUGGLED)
            .refused(400, "body_not_allowed"),
        Case::new("cl0 get chunked empty", Low, "GET", "/x/items/1")
            .body(Chunked, "")
            .refused(400, "body_not_allowed"),
        // 2. Encoded slashes are classified as the backend sees them.
        Case::new("%2F refund", Mid, "POST", "/enc/items/1%2Frefund")
            .form("amount=1")
            .refused(403, "risk_ceiling"),
        Case::new("%2f refund", Mid, "POST", "/enc/items/1%2frefund")
            .form("amount=1")
            .refused(403, "risk_ceiling"),
        Case::new("%2F refund.json", Mid, "POST", "/enc/items/1%2Frefund.json")
            .form("amount=1")
            .refused(403, "risk_ceiling"),
        Case::new("%2F admin", Mid, "GET", "/enc/admin%2Fusers").refused(403, "risk_ceiling"),
        Case::new("%2F admin deeper", Mid, "GET", "/enc/admin%2Fusers%2F1")
            .refused(403, "risk_ceiling"),
        Case::new("%2F export", Mid, "GET", "/enc/items%2Fexport").refused(403, "risk_ceiling"),
        Case::new("%2F export low", Low, "GET", "/enc/items%2Fexport").refused(403, "not_granted"),
        Case::new("%2F on /x refused", Mid, "GET", "/x/items/1%2Frefund")
            .refused(400, "encoded_slash"),
        // 3. Method override in bodies (and the query).
        Case::new("_method form", Mid, "POST", "/x/items/1")
            .form("_method=DELETE")
            .refused(400, "method_override"),
        Case::new("%5Fmethod form", Mid, "POST", "/x/items/1")
            .form("a=1&%5Fmethod=DELETE")
            .refused(400, "method_override"),
        Case::new("+_method form", Mid, "POST", "/x/items/1")
            .form("+_method=DELETE")
            .refused(400, "method_override"),
        Case::new(".method form", Mid, "POST", "/x/items/1")
            .form(".method=DELETE")
            .refused(400, "method_override"),
        Case::new("_method form no content-type", Mid, "POST", "/x/items/1")
            .body(Length, "_method=DELETE")
            .refused(400, "method_override"),
        Case::new("_method form chunked", Mid, "POST", "/x/items/1")
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(Chunked, "a=1&_method=DELETE")
            .refused(400, "method_override"),
        Case::new("_method multipart", Mid, "POST", "/x/items/1")
            .header("Content-Type", &mp_ct)
            .body(Length, multipart(&[("name=\"_method\"", "DELETE")]))
            .refused(400, "method_override"),
        Case::new("_method multipart token", Mid, "POST", "/x/items/1")
            .header("Content-Type", &mp_ct)
            .body(Length, multipart(&[("name=_method", "DELETE")]))
            .refused(400, "method_override"),
        Case::new(".method multipart", Mid, "POST", "/x/items/1")
            .header("Content-Type", &mp_ct)
            .body(
                Chunked,
                multipart(&[("name=\"a\"", "1"), ("name=\".method\"", "DELETE")]),
            )
            .refused(400, "method_override"),
        Case::new("_method json", Mid, "POST", "/x/items/1")
            .header("Content-Type", "application/json")
            .body(Length, r#"{"_method":"DELETE"}"#)
            .refused(400, "method_override"),
        Case::new("_method json escaped", Mid, "POST", "/x/items/1")
            .header("Content-Type", "application/json")
            .body(Length, r#"{"a":1, "\u005fmethod" : "DELETE"}"#)
            .refused(400, "method_override"),
        Case::new("_method json vnd", Mid, "POST", "/x/items/1")
            .header("Content-Type", "application/vnd.api+json")
            .body(Length, r#"{"_method":"DELETE"}"#)
            .refused(400, "method_override"),
        Case::new("_method query", Mid, "POST", "/x/items/1?_method=DELETE")
            .form("a=1")
            .refused(400, "method_override"),
        Case::new("override header", Mid, "POST", "/x/items/1")
            .header("X-HTTP-Method-Override", "DELETE")
            .form("a=1")
            .refused(400, "method_override"),
        Case::new("override header x-http-method", Mid, "POST", "/x/items/1")
            .header("X-HTTP-Method", "DELETE")
            .form("a=1")
            .refused(400, "method_override"),
        Case::new(
            "override header x-method-override",
            Mid,
            "POST",
            "/x/items/1",
        )
        .header("X-Method-Override", "DELETE")
        .form("a=1")
        .refused(400, "method_override"),
        // Found by this suite: `_method` query names as PHP reads them (Symfony and
        // Laravel honour the query's `_method` on a POST).
        Case::new("+_method query", Mid, "POST", "/x/items/1?+_method=DELETE")
            .form("a=1")
            .refused(400, "method_override"),
        Case::new(".method query", Mid, "POST", "/x/items/1?.method=DELETE")
            .refused(400, "method_override"),
        Case::new(
            "%20_method query",
            Mid,
            "POST",
            "/x/items/1?a=1&%20_method=DELETE",
        )
        .refused(400, "method_override"),
        // Found by this suite: Content-Types as PHP (media type cut at `;` `,` or a
        // space) and Laravel (`/json` or `+json` anywhere) read them.
        Case::new("form content-type, comma", Mid, "POST", "/x/items/1")
            .header(
                "Content-Type",
                "application/x-www-form-urlencoded, text/plain",
            )
            .body(Length, "_method=DELETE")
            .refused(400, "method_override"),
        Case::new("form content-type, space", Mid, "POST", "/x/items/1")
            .header("Content-Type", "application/x-www-form-urlencoded foo")
            .body(Length, "%5Fmethod=DELETE")
            .refused(400, "method_override"),
        Case::new("json by parameter", Mid, "POST", "/x/items/1")
            .header("Content-Type", "text/plain; profile=\"/json\"")
            .body(Length, r#"{"_method":"DELETE"}"#)
            .refused(400, "method_override"),
        Case::new("form and json", Mid, "POST", "/x/items/1")
            .header("Content-Type", "application/x-www-form-urlencoded; p=/json")
            .body(Length, r#"{"_method":"DELETE"}"#)
            .refused(400, "ambiguous_content_type"),
        Case::new("two content-types", Mid, "POST", "/x/items/1")
            .header("Content-Type", "application/json")
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(Length, r#"{"_method":"DELETE"}"#)
            .refused(400, "ambiguous_content_type"),
        Case::new("control plain text", Mid, "POST", "/x/items/1")
            .header(
                "Content-Type",
                "text/plain, application/x-www-form-urlencoded",
            )
            .body(Length, "_method is a word here")
            .forwarded(),
        // 4. Grants hold for every spelling.
        Case::new("export.json", Low, "GET", "/x/items/export.json").refused(403, "not_granted"),
        Case::new("EXPORT", Low, "GET", "/x/items/EXPORT").refused(403, "not_granted"),
        Case::new("Export/", Low, "GET", "/x/items/Export/").refused(403, "not_granted"),
        Case::new("export.json mid", Mid, "GET", "/x/items/export.json")
            .refused(403, "risk_ceiling"),
        Case::new("EXPORT mid", Mid, "GET", "/x/items/EXPORT").refused(403, "risk_ceiling"),
        Case::new("refund.json", Mid, "POST", "/x/items/1/refund.json")
            .form("a=1")
            .refused(403, "risk_ceiling"),
        Case::new("REFUND", Mid, "POST", "/x/items/1/REFUND")
            .form("a=1")
            .refused(403, "risk_ceiling"),
        // 5. Invalid UTF-8 in escapes.
        Case::new("overlong ..", Low, "GET", "/x/items/%C0%AE%C0%AE/export")
            .refused(400, "bad_utf8"),
        Case::new("overlong /", Low, "GET", "/x/items/1%E0%80%AFexport").refused(400, "bad_utf8"),
        Case::new("lone continuation", Low, "GET", "/x/items/%80").refused(400, "bad_utf8"),
        Case::new("truncated sequence", Low, "GET", "/x/items/%C3").refused(400, "bad_utf8"),
        Case::new("surrogate", Low, "GET", "/x/items/%ED%A0%80").refused(400, "bad_utf8"),
        Case::new("overlong in query", Low, "GET", "/x/items/1?q=%C0%AE").refused(400, "bad_utf8"),
        // 6. Headers a backend routes or trusts on: forwarded, never seen upstream.
        Case::new("routing headers", Low, "GET", "/x/items/1")
            .header("X-Original-URL", "/x/items/export")
            .header("X-Rewrite-URL", "/x/items/1/refund")
            .header("X-Override-URL", "/x/items/export")
            .header("X-Forwarded-Prefix", "/admin")
            .header("X-Forwarded-Path", "/admin")
            .forwarded(),
        Case::new("client-ip headers", Low, "GET", "/x/items/1")
            .header("True-Client-IP", "10.9.8.7")
            .header("X-Client-IP", "10.9.8.7")
            .header("CF-Connecting-IP", "10.9.8.7")
            .header("X-Cluster-Client-IP", "10.9.8.7")
            .header("Fastly-Client-IP", "10.9.8.7")
            .header("X-Originating-IP", "10.9.8.7")
            .header("X-Real-IP", "10.9.8.7")
            .header("X-Forwarded-For", "10.9.8.7")
            .header("Forwarded", "for=10.9.8.7")
            .forwarded(),
        Case::new("forwarded host", Low, "GET", "/x/items/1")
            .header("X-Forwarded-Host", "evil.example")
            .forwarded(),
        Case::new("identity spoof", Mid, "GET", "/x/items/1")
            .header("X-Tenant-Id", "acme")
            .header("X-Api-Key", "agent-chosen")
            .forwarded(),
        // 7. Cookies never cross.
        Case::new("cookie", Low, "GET", "/x/items/1")
            .header("Cookie", "session=agent-held")
            .forwarded(),
        // 9. Long paths are refused or recorded capped, never half-checked.
        Case::new(
            "long path",
            Low,
            "GET",
            &format!("/x/items/{}", "a".repeat(3000)),
        ),
        // Identity: one credential, or none.
        Case::new("two credentials", Low, "GET", "/x/items/1")
            .header("Authorization", "Bearer @MID@")
            .unauthenticated(),
        Case::new(
            "proxy-authorization is not a credential",
            Anon,
            "GET",
            "/x/items/1",
        )
        .header("Proxy-Authorization", "Bearer @MID@")
        .unauthenticated(),
        Case::new(
            "control absolute-form",
            Low,
            "GET",
            "http://@HOST@/x/items/1",
        )
        .forwarded(),
        Case::new(
            "absolute-form elsewhere",
            Low,
            "GET",
            "http://evil.example/x/items/1",
        )
        .refused(400, "host_mismatch"),
        // 12. Authentication first.
        Case::new("unauthenticated overlong", Anon, "GET", "/x/items/%C0%AE").unauthenticated(),
        Case::new("unauthenticated smuggle", Anon, "GET", "/x/items/1")
            .body(Length, SMUGGLED)
            .unauthenticated(),
    ];
    // `_method` past the pre-scanned 64 KiB: found while streaming, the upstream
    // request is aborted before its body completes.
    let mut big = "a=".to_string() + &"b".repeat(70 * 1024);
    big.push_str("&_method=DELETE");
    v.push(
        Case::new("_method after 64 KiB", Mid, "POST", "/x/items/1")
            .form(&big)
            .refused(400, "method_override"),
    );
    v.push(
        Case::new("_method after 64 KiB chunked", Mid, "POST", "/x/items/1")
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(Chunked, &big)
            .refused(400, "method_override"),
    );
    v
}

// ---------------------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------------------

fn weighted<T: Clone + std::fmt::Debug + 'static>(items: &[(u32, T)]) -> BoxedStrategy<T> {
    let arms: Vec<(u32, BoxedStrategy<T>)> = items
        .iter()
        .map(|(w, t)| (*w, Just(t.clone()).boxed()))
        .collect();
    proptest::strategy::Union::new_weighted(arms).boxed()
}

fn segment() -> impl Strategy<Value = String> {
    let word = weighted(&[
        (6, "items"),
        (4, "1"),
        (3, "42"),
        (4, "export"),
        (3, "refund"),
        (2, "admin"),
        (1, "users"),
        (1, "7f3e2d1c0b9a8f7e"),
        (1, "abc"),
        (1, "caf%C3%A9"),
        (1, "%F0%9F%98%80"),
        (1, "%61dmin"),
        (1, "%65xport"),
        (1, "a%20b"),
        (1, "."),
        (1, ".."),
        (1, "%2e"),
        (1, "%2E%2E"),
        (1, "%C0%AE%C0%AE"),
        (1, "%E0%80%AF"),
        (1, "%80"),
        (1, "%ED%A0%80"),
        (1, "%C3"),
        (1, "%25"),
        (1, "%5C"),
        (1, "%00"),
        (1, ""),
    ]);
    let case = weighted(&[(6, 0u8), (1, 1), (1, 2)]);
    let suffix = weighted(&[
        (10, ""),
        (2, ".json"),
        (1, ".JSON"),
        (1, ".tar.gz"),
        (1, "."),
        (1, "%2Ejson"),
        (1, ".json/"),
    ]);
    (word, case, suffix).prop_map(|(w, c, s)| {
        let w = match c {
            1 => w.to_ascii_uppercase(),
            2 => {
                let mut cs = w.chars();
                cs.next()
                    .map(|f| f.to_ascii_uppercase().to_string() + cs.as_str())
                    .unwrap_or_default()
            }
            _ => w.to_string(),
        };
        w + s
    })
}

fn target() -> impl Strategy<Value = Vec<u8>> {
    let prefix = weighted(&[
        (9, "/x"),
        (9, "/enc"),
        (1, "/X"),
        (1, "/other"),
        (1, "http://@HOST@/x"),
        (1, "http://@HOST@/enc"),
        (1, "http://evil.example/x"),
    ]);
    let sep = weighted(&[(10, "/"), (1, "%2F"), (1, "%2f")]);
    let query = weighted(&[
        (10, ""),
        (2, "?a=1"),
        (1, "?"),
        (1, "?_method=DELETE"),
        (1, "?%5Fmethod=DELETE"),
        (1, "?+_method=DELETE"),
        (1, "?.method=DELETE"),
        (1, "?%20_method=PATCH"),
        (1, "?q=%2F"),
        (1, "?q=%C0%AE"),
        (1, "?q=caf%C3%A9"),
        (1, "#frag"),
        (1, "?a=1?b=/x"),
    ]);
    let slash = weighted(&[(5, ""), (1, "/")]);
    (
        prefix,
        prop::collection::vec((sep, segment()), 0..4),
        slash,
        query,
    )
        .prop_map(|(p, segs, slash, q)| {
            let mut t = p.to_string();
            for (i, (sep, seg)) in segs.into_iter().enumerate() {
                t.push_str(if i == 0 { "/" } else { sep });
                t.push_str(&seg);
            }
            t.push_str(slash);
            t.push_str(q);
            t.into_bytes()
        })
}

fn method() -> BoxedStrategy<&'static str> {
    weighted(&[
        (30, "GET"),
        (4, "HEAD"),
        (4, "OPTIONS"),
        (30, "POST"),
        (7, "PUT"),
        (7, "PATCH"),
        (6, "DELETE"),
        (1, "get"),
        (1, "PROPFIND"),
    ])
}

const CONTENT_TYPES: [&str; 14] = [
    "application/x-www-form-urlencoded",
    "application/x-www-form-urlencoded; charset=utf-8",
    "APPLICATION/X-WWW-FORM-URLENCODED",
    "application/x-www-form-urlencoded, text/plain",
    "application/x-www-form-urlencoded foo",
    "multipart/form-data; boundary=XyZdiffBoundary",
    "multipart/form-data; boundary=\"XyZdiffBoundary\"",
    "Multipart/Form-Data;boundary=XyZdiffBoundary",
    "application/json",
    "application/vnd.api+json",
    "application/json; charset=utf-8",
    "text/plain",
    "text/plain; profile=\"/json\"",
    "application/octet-stream",
];

fn header_set() -> impl Strategy<Value = Vec<(String, String)>> {
    let extra = weighted(&[
        (3, ("X-HTTP-Method-Override", "DELETE")),
        (1, ("X-HTTP-Method", "DELETE")),
        (1, ("X-Method-Override", "PUT")),
        (1, ("X_HTTP_Method_Override", "DELETE")),
        (1, ("X-Original-URL", "/x/items/export")),
        (1, ("X-Rewrite-URL", "/x/items/1/refund")),
        (1, ("X-Override-URL", "/enc/admin/users")),
        (1, ("X-Forwarded-Prefix", "/admin")),
        (1, ("X-Forwarded-Path", "/admin")),
        (1, ("True-Client-IP", "10.1.2.3")),
        (1, ("X-Client-IP", "10.1.2.3")),
        (1, ("CF-Connecting-IP", "10.1.2.3")),
        (1, ("X-Cluster-Client-IP", "10.1.2.3")),
        (1, ("Fastly-Client-IP", "10.1.2.3")),
        (1, ("X-Originating-IP", "10.1.2.3")),
        (1, ("X-Forwarded-Host", "evil.example")),
        (1, ("X-Forwarded-For", "10.1.2.3")),
        (1, ("Forwarded", "for=10.1.2.3")),
        (2, ("Cookie", "sid=agent")),
        (1, ("X-Tenant-Id", "other")),
        (1, ("X-Api-Key", "agent-chosen")),
        (1, ("Expect", "100-continue")),
        (1, ("Connection", "keep-alive, X-Tenant-Id")),
        // A second credential: whichever one the proxy believed, the backend must see
        // the tenant of the agent that was decided (or nothing).
        (1, ("Authorization", "Bearer @MID@")),
        (1, ("Authorization", "Bearer @LOW@")),
        (1, ("authorization", "bearer @MID@")),
        (1, ("Proxy-Authorization", "Bearer @MID@")),
    ])
    .prop_map(|(n, v)| (n.to_string(), v.to_string()));
    let ct = prop::sample::select(&CONTENT_TYPES[..])
        .prop_map(|v| ("Content-Type".to_string(), v.to_string()));
    (
        prop::collection::vec(ct, 0..3),
        prop::collection::vec(extra, 0..3),
        prop::bool::weighted(0.15),
    )
        .prop_map(|(mut cts, extra, no_ct)| {
            if no_ct {
                cts.clear();
            }
            cts.extend(extra);
            cts
        })
}

fn form_body() -> impl Strategy<Value = String> {
    let name = weighted(&[
        (6, "a"),
        (3, "name"),
        (3, "_method"),
        (1, "%5Fmethod"),
        (1, "%5fmethod"),
        (1, "+_method"),
        (1, "%20_method"),
        (1, ".method"),
        (1, "_METHOD"),
        (1, "_method[]"),
        (1, "_me%74hod"),
        (1, "x_method"),
        (1, "_methodx"),
    ]);
    let value = weighted(&[
        (3, "1"),
        (3, "DELETE"),
        (1, "delete"),
        (1, "PUT"),
        (1, "GET"),
        (1, "x%26_method%3DDELETE"),
    ]);
    let sep = weighted(&[(5, "&"), (1, ";")]);
    prop::collection::vec((name, value, sep), 1..4).prop_map(|fields| {
        let mut s = String::new();
        for (i, (n, v, sep)) in fields.into_iter().enumerate() {
            if i > 0 {
                s.push_str(sep);
            }
            s.push_str(n);
            s.push('=');
            s.push_str(v);
        }
        s
    })
}

fn json_body() -> impl Strategy<Value = String> {
    let key = weighted(&[
        (4, "a"),
        (3, "_method"),
        (1, "_METHOD"),
        (1, "\\u005fmethod"),
        (1, "_me\\u0074hod"),
        (1, " _method"),
    ]);
    let nested = prop::bool::weighted(0.2);
    prop::collection::vec((key, nested), 1..3).prop_map(|ks| {
        let fields: Vec<String> = ks
            .into_iter()
            .map(|(k, nested)| {
                if nested {
                    format!("\"n\":{{\"{k}\":\"DELETE\"}}")
                } else {
                    format!("\"{k}\":\"DELETE\"")
                }
            })
            .collect();
        format!("{{{}}}", fields.join(","))
    })
}

fn multipart_body() -> impl Strategy<Value = String> {
    let disp = weighted(&[
        (4, "name=\"a\""),
        (3, "name=\"_method\""),
        (1, "name=_method"),
        (1, "NAME=\"_method\""),
        (1, "name=\".method\""),
        (1, "name=\" _method\""),
        (1, "name*=utf-8''_method"),
        (1, "filename=\"f.txt\"; name=\"_method\""),
        (1, "name=\"_METHOD\""),
    ]);
    prop::collection::vec(disp, 1..3).prop_map(|ds| {
        let fields: Vec<(&str, &str)> = ds.into_iter().map(|d| (d, "DELETE")).collect();
        multipart(&fields)
    })
}

fn body() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => Just(String::new()),
        4 => form_body(),
        2 => json_body(),
        2 => multipart_body(),
        1 => Just(SMUGGLED.to_string()),
        1 => Just("plain text".to_string()),
    ]
}

fn framing() -> BoxedStrategy<Framing> {
    weighted(&[
        (8, Framing::Length),
        (4, Framing::Chunked),
        (1, Framing::LengthThenChunked),
        (1, Framing::ChunkedThenLength),
    ])
}

/// Anything goes: hostile targets, methods, headers, framing and bodies.
fn hostile_case() -> impl Strategy<Value = Case> {
    let who = weighted(&[(6, Who::Mid), (4, Who::Low), (1, Who::Anon)]);
    let empty_framing = weighted(&[(6, Framing::None), (1, Framing::ZeroLength)]);
    (
        who,
        method(),
        target(),
        header_set(),
        body(),
        framing(),
        empty_framing,
    )
        .prop_map(|(who, m, t, mut headers, body, f, ef)| Case {
            label: "generated".into(),
            who,
            method: m.to_string(),
            target: t,
            headers: {
                // A case without a credential stays without one.
                if who == Who::Anon {
                    headers.retain(|(n, _)| !n.eq_ignore_ascii_case("authorization"));
                }
                headers
            },
            framing: if body.is_empty() { ef } else { f },
            body: body.into_bytes(),
            expect: Expect::Any,
        })
}

/// Mostly calls an agent may make, in every spelling and framing, with the headers the
/// proxy must strip and bodies without `_method`: these reach the backend, so the
/// recorded side of the invariant is exercised, not only refusals.
fn plausible_case() -> impl Strategy<Value = Case> {
    let who = weighted(&[(4, Who::Mid), (1, Who::Low)]);
    let m = weighted(&[
        (8, "GET"),
        (1, "HEAD"),
        (1, "OPTIONS"),
        (6, "POST"),
        (2, "PUT"),
        (2, "PATCH"),
    ]);
    let prefix = weighted(&[(1, "/x"), (1, "/enc")]);
    let word = weighted(&[
        (4, "items"),
        (4, "1"),
        (2, "42"),
        (2, "7f3e2d1c0b9a8f7e"),
        (2, "export"),
        (2, "refund"),
        (1, "admin"),
        (1, "abc"),
        (1, "caf%C3%A9"),
    ]);
    let variant = weighted(&[(8, ""), (1, "upper"), (1, ".json"), (1, "/")]);
    let sep = weighted(&[(8, "/"), (1, "%2F")]);
    let query = weighted(&[(6, ""), (2, "?a=1"), (1, "?q=%2F&b=caf%C3%A9")]);
    let stripped = weighted(&[
        (1, ("X-Original-URL", "/x/items/export")),
        (1, ("X-Rewrite-URL", "/x/items/1/refund")),
        (1, ("X-Forwarded-Prefix", "/admin")),
        (1, ("True-Client-IP", "10.1.2.3")),
        (1, ("X-Client-IP", "10.1.2.3")),
        (1, ("X-Forwarded-Host", "evil.example")),
        (1, ("X-Forwarded-For", "10.1.2.3")),
        (1, ("Cookie", "sid=agent")),
        (1, ("X-Tenant-Id", "other")),
        (1, ("X-Api-Key", "agent-chosen")),
        (1, ("Expect", "100-continue")),
    ])
    .prop_map(|(n, v)| (n.to_string(), v.to_string()));
    let ct = prop::option::weighted(0.8, prop::sample::select(&CONTENT_TYPES[..]));
    let benign_form = weighted(&[
        (1, "a=1&name=x"),
        (1, "x_method=DELETE"),
        (1, "_methodx=DELETE;a=2"),
        (1, "name=x%26_method%3DDELETE"),
    ]);
    let benign_json = weighted(&[
        (1, r#"{"a":1}"#),
        (1, r#"{"n":{"_method":"DELETE"}}"#),
        (1, r#"[{"_method":"DELETE"}]"#),
        (1, r#"{"a":"_method"}"#),
    ]);
    let benign_body = prop_oneof![
        benign_form.prop_map(str::to_string),
        benign_json.prop_map(str::to_string),
        Just(multipart(&[
            ("name=\"a\"", "1"),
            ("name=\"x_method\"", "DELETE")
        ])),
        Just("plain text".to_string()),
    ];
    (
        (
            who,
            m,
            prefix,
            prop::collection::vec((sep, word, variant), 0..4),
            query,
        ),
        (
            prop::collection::vec(stripped, 0..3),
            ct,
            benign_body,
            framing(),
        ),
    )
        .prop_map(|((who, m, prefix, segs, q), (mut headers, ct, body, f))| {
            let mut t = prefix.to_string();
            for (i, (sep, w, v)) in segs.into_iter().enumerate() {
                t.push_str(if i == 0 || prefix == "/x" { "/" } else { sep });
                match v {
                    "upper" => t.push_str(&w.to_ascii_uppercase()),
                    v => {
                        t.push_str(w);
                        t.push_str(v);
                    }
                }
            }
            t.push_str(q);
            let bodiless = matches!(m, "GET" | "HEAD" | "OPTIONS");
            if let Some(ct) = ct.filter(|_| !bodiless) {
                headers.push(("Content-Type".into(), ct.to_string()));
            }
            Case {
                label: "generated".into(),
                who,
                method: m.to_string(),
                target: t.into_bytes(),
                headers,
                framing: if bodiless { Framing::None } else { f },
                body: if bodiless {
                    Vec::new()
                } else {
                    body.into_bytes()
                },
                expect: Expect::Any,
            }
        })
}

fn generated_case() -> impl Strategy<Value = Case> {
    prop_oneof![hostile_case(), plausible_case()]
}

fn seed() -> u64 {
    match std::env::var("DIFF_SEED") {
        Ok(s) => {
            let s = s.trim();
            let parsed = match s.strip_prefix("0x") {
                Some(h) => u64::from_str_radix(h, 16),
                None => s.parse(),
            };
            parsed.unwrap_or_else(|e| panic!("DIFF_SEED={s:?}: {e}"))
        }
        Err(_) => {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap();
            (t.as_nanos() as u64) ^ ((std::process::id() as u64) << 32)
        }
    }
}

fn generate(seed: u64, n: usize) -> Vec<Case> {
    let mut bytes = [0u8; 32];
    for (i, chunk) in bytes.chunks_mut(8).enumerate() {
        chunk.copy_from_slice(
            &(seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)).to_le_bytes(),
        );
    }
    let mut runner = TestRunner::new_with_rng(
        PtConfig::default(),
        TestRng::from_seed(RngAlgorithm::ChaCha, &bytes),
    );
    let strategy = generated_case();
    (0..n)
        .map(|i| {
            let mut c = strategy
                .new_tree(&mut runner)
                .expect("generate a case")
                .current();
            c.label = format!("generated #{i} of DIFF_SEED={seed:#x}");
            c
        })
        .collect()
}

fn report(name: &str, r: &Report, started: Instant) {
    println!(
        "{name}: {} cases, {} forwarded, {} refused, {} violations in {:.1} s",
        r.cases,
        r.forwarded,
        r.refused,
        r.violations.len(),
        started.elapsed().as_secs_f64()
    );
    println!("{name}: outcomes {:?}", r.outcomes);
    if !r.violations.is_empty() {
        let shown: Vec<&String> = r.violations.iter().take(40).collect();
        panic!(
            "{name}: {} invariant violations (first {}):\n{}",
            r.violations.len(),
            shown.len(),
            shown
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("\n\n")
        );
    }
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[test]
fn the_lenient_model_is_lenient() {
    // The model must see through what the frameworks see through, or the suite proves
    // nothing: a few direct checks of it.
    let paths = lenient_paths("/enc/items/EXPORT.json%2F");
    assert!(paths.contains("/enc/items/export"), "{paths:?}");
    let rec = |ct: Option<&str>, target: &str, body: &str| Recorded {
        conn: 0,
        method: "POST".into(),
        target: target.into(),
        headers: ct
            .map(|c| vec![("content-type".to_string(), c.to_string())])
            .unwrap_or_default(),
        body: body.as_bytes().to_vec(),
    };
    let del = |r: Recorded| lenient_methods(&r).unwrap().contains(&Method::Delete);
    assert!(del(rec(None, "/x", "+_method=delete")));
    assert!(del(rec(
        Some("application/x-www-form-urlencoded, text/plain"),
        "/x",
        "a=1;.method=DELETE"
    )));
    assert!(del(rec(
        Some("text/plain; p=/json"),
        "/x",
        r#"{"_method":"DELETE"}"#
    )));
    assert!(del(rec(Some("text/plain"), "/x?%20_method=DELETE", "")));
    assert!(del(rec(
        Some(&format!("multipart/form-data; boundary=\"{BOUNDARY}\"")),
        "/x",
        &multipart(&[("name=\" .method\"", "DELETE")])
    )));
    assert!(!del(rec(Some("text/plain"), "/x", "_method=DELETE")));
    assert!(!del(rec(
        Some("application/json"),
        "/x",
        r#"{"n":{"_method":"DELETE"}}"#
    )));
    // The backend's framing: a GET body is the next request.
    let wire = format!(
        "GET /x/items/1 HTTP/1.1\r\nContent-Length: {}\r\n\r\n{SMUGGLED}",
        SMUGGLED.len()
    );
    let Parsed::Complete(first, used) = parse_one(wire.as_bytes(), 0) else {
        panic!("the GET did not parse");
    };
    assert!(first.body.is_empty());
    let Parsed::Complete(second, _) = parse_one(&wire.as_bytes()[used..], 0) else {
        panic!("the smuggled request did not parse");
    };
    assert_eq!(
        (second.method.as_str(), second.target.as_str()),
        ("DELETE", "/x/items/1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_written_corpus() {
    let started = Instant::now();
    let cases = corpus();
    let r = run_batch(&cases).await;
    report("hand-written corpus", &r, started);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_cases() {
    let started = Instant::now();
    let seed = seed();
    let n: usize = std::env::var("DIFF_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_CASES);
    println!("differential: DIFF_SEED={seed:#x} DIFF_CASES={n}");
    let cases = generate(seed, n);
    let r = run_batch(&cases).await;
    report("generated cases", &r, started);
    // A proxy that refused everything would pass the invariant: demand real traffic.
    assert!(
        r.forwarded * 5 >= r.cases,
        "only {} of {} generated cases were forwarded; the generators no longer reach the backend",
        r.forwarded,
        r.cases
    );
}
