//! The tamper-evident audit trail: one JSON object per line, SHA-256 chained
//! (`prev`, `hash`), written by one dedicated thread with group commit.
//!
//! Deny and park records are durable before the agent hears back (`record_durable`);
//! allow records are queued after the upstream answered (`record`). While the writer is
//! unhealthy or its queue is full, `ready()` is false and the proxy answers 503: the
//! writer is unhealthy from its first failed write until it has written (and fsynced)
//! every record it kept meanwhile (see `writer`).

mod backlog;
mod chain;
mod files;
mod line;
pub mod tail;
pub mod verify;
mod watch;
mod writer;

pub use chain::{redact_query, LINE_HASH_SUFFIX_LEN};

use crate::config::AuditConfig;
use crate::error::Error;
use serde::Serialize;
use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::oneshot;

/// One event. Every field is always present in the line (null when unknown), so a SIEM
/// sees one schema. Never a secret, an Authorization/Cookie value, or a body.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Record {
    pub event: &'static str,
    pub request_id: Option<String>,
    pub agent: Option<String>,
    pub credential: Option<String>,
    pub tenant: Option<String>,
    pub remote_addr: Option<String>,
    pub method: Option<Cow<'static, str>>,
    pub path: Option<String>,
    pub tool: Option<String>,
    pub risk: Option<Cow<'static, str>>,
    pub decision: Option<Cow<'static, str>>,
    pub reason: Option<Cow<'static, str>>,
    pub policy_version: Option<String>,
    pub body_sha256: Option<String>,
    pub approval_id: Option<String>,
    pub operator: Option<String>,
    pub status: Option<u16>,
    pub upstream_status: Option<u16>,
    pub duration_us: Option<u64>,
    /// Free text an operator supplied (comment, reason); never request data.
    pub comment: Option<String>,
    pub old_policy_version: Option<String>,
    /// The recorded path was cut at [`MAX_PATH`] bytes (only present when it was).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub truncated: Option<bool>,
    /// `mcp` for a request an MCP `tools/call` made (absent for plain HTTP).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via: Option<&'static str>,
    /// The JSON-RPC id of that `tools/call`, as JSON text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jsonrpc_id: Option<String>,
    /// The condition that decided the request (`request.body.amount > 100`), when one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
    /// `refusals_aggregated`: how many refusals, and the first and last of them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_request_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_request_id: Option<String>,
    /// A park's `Portcullis-Rationale` (the agent's words, checked; only when given).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rationale: Option<String>,
    /// `signal`: what crossed which threshold (only present on signal records).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<SignalEvidence>,
}

/// The evidence a `signal` record carries (`crate::signals`).
#[derive(Debug, Clone, Serialize)]
pub struct SignalEvidence {
    pub id: String,
    pub kind: String,
    pub window: Option<String>,
    pub observed: f64,
    pub threshold: f64,
    pub baseline: Option<f64>,
    pub action: String,
    pub brake: String,
}

/// The longest path (with its query) a record keeps.
pub const MAX_PATH: usize = 2048;

/// Caps a recorded path at [`MAX_PATH`] bytes on a character boundary; true if cut.
pub fn cap_path(p: &mut String) -> bool {
    if p.len() <= MAX_PATH {
        return false;
    }
    let mut end = MAX_PATH;
    while !p.is_char_boundary(end) {
        end -= 1;
    }
    p.truncate(end);
    true
}

/// What reaches the writer through its channel: work someone waits for, or a nudge to
/// look at the buffer of records nobody waits for.
pub(crate) enum Msg {
    /// Boxed: the channel's slots stay one pointer wide.
    Job(Box<Job>),
    Wake,
    /// Write and fsync everything buffered, then answer (shutdown).
    Flush(oneshot::Sender<()>),
}

pub(crate) struct Job {
    record: Record,
    ack: Option<oneshot::Sender<Result<(), String>>>,
}

/// What the writer thread and the request path share about the sink's health.
pub(crate) struct Health {
    pub healthy: AtomicBool,
    pub depth: AtomicU64,
    /// Inode of the file the writer holds open; 0 before the first open.
    pub ino: AtomicU64,
    /// Bumped when the writer starts and when it finishes swapping files (rotation,
    /// re-open): odd while a swap is under way. A check that saw it change saw our own
    /// swap, not a vanished file.
    pub swaps: AtomicU64,
    /// Records nobody waits for, taken by the writer on its group-commit tick: queuing
    /// one costs a short uncontended lock, not a thread wake-up.
    pub buffered: std::sync::Mutex<Vec<Job>>,
    /// The writer is in its long idle sleep and must be nudged for buffered records.
    pub idle: AtomicBool,
    /// A full queue was reported (ERROR) and has not drained since: once per episode.
    pub full_reported: AtomicBool,
    pub path: std::path::PathBuf,
    /// Set once the file is open, where the path can be watched: spares the request
    /// path a `stat` while nothing on the path changed.
    pub watch: std::sync::OnceLock<watch::PathWatch>,
}

impl Health {
    /// The file the writer appends to is still the one at the path. Catches a removed
    /// directory or a replaced file before anything is forwarded: one `stat`, or, while
    /// the directories on the path report no change, one `ioctl` (`watch`).
    fn file_in_place(&self) -> bool {
        let before = self.swaps.load(Ordering::Acquire);
        if before % 2 == 1 {
            return true;
        }
        // (may pass, verified by the `stat`)
        let look = || {
            let ino = self.ino.load(Ordering::Acquire);
            let same = std::fs::metadata(&self.path)
                .is_ok_and(|m| m.is_file() && std::os::unix::fs::MetadataExt::ino(&m) == ino);
            (same || self.swaps.load(Ordering::Acquire) != before, same)
        };
        match self.watch.get() {
            Some(w) if w.quiet() => true,
            Some(w) => w.confirm(look),
            None => look().0,
        }
    }
}

pub struct Audit {
    /// Unbounded: what bounds the queue is `depth` ([`Audit::admit`]) — every job is
    /// admitted before it is sent, and `Wake` is sent only by whoever ends the writer's
    /// idle state. A bounded channel allocated (and touched) all its slots up front:
    /// 1.5 MiB of an idle proxy's memory at the default `max_queue_records`.
    tx: std::sync::mpsc::Sender<Msg>,
    health: Arc<Health>,
    /// Queue depth beyond which requests are refused rather than recorded late
    /// (`audit.max_queue_records`).
    queue: usize,
}

impl Audit {
    /// Opens (or continues) the chain at `cfg.path` and starts the writer thread.
    pub fn start(cfg: &AuditConfig, node: &str) -> Result<Audit, Error> {
        let health = Arc::new(Health {
            healthy: AtomicBool::new(true),
            depth: AtomicU64::new(0),
            ino: AtomicU64::new(0),
            swaps: AtomicU64::new(0),
            buffered: std::sync::Mutex::new(Vec::new()),
            idle: AtomicBool::new(false),
            full_reported: AtomicBool::new(false),
            path: cfg.path.clone(),
            watch: std::sync::OnceLock::new(),
        });
        let queue = cfg.max_queue_records;
        let (tx, rx) = std::sync::mpsc::channel();
        let w = writer::Writer::open(cfg, node, health.clone())
            .map_err(|e| Error::Internal(format!("audit log {}: {e}", cfg.path.display())))?;
        if let Some(w) = watch::PathWatch::new(&cfg.path) {
            let _ = health.watch.set(w);
        }
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || w.run(rx))
            .map_err(|e| Error::Internal(format!("audit writer: {e}")))?;
        Ok(Audit { tx, health, queue })
    }

    /// Whether a request may proceed to be recorded: the writer is healthy, its queue
    /// is not full, and its file is still in place.
    pub fn ready(&self) -> bool {
        let h = &self.health;
        h.healthy.load(Ordering::Acquire) && self.has_room() && h.file_in_place()
    }

    /// Whether the queue can take another record (a full one is reported once, at ERROR).
    pub fn has_room(&self) -> bool {
        let room = (self.health.depth.load(Ordering::Relaxed) as usize) < self.queue;
        if !room {
            self.report_full();
        }
        room
    }

    fn report_full(&self) {
        if !self.health.full_reported.swap(true, Ordering::Relaxed) {
            tracing::error!(
                records = self.queue,
                file = %self.health.path.display(),
                "AUDIT QUEUE FULL: the writer is not keeping up; refusing requests until it drains"
            );
        }
    }

    pub fn unavailable() -> Error {
        Error::Unavailable {
            reason: "audit_unavailable",
            detail: "the audit trail cannot be written; nothing was forwarded".into(),
        }
    }

    /// Counts a record against the queue bound; refuses when full.
    fn admit(&self) -> Result<(), Error> {
        let depth = self.health.depth.fetch_add(1, Ordering::Relaxed);
        if depth as usize >= self.queue {
            self.health.depth.fetch_sub(1, Ordering::Relaxed);
            metrics::counter!("portcullis_audit_write_errors_total", "kind" => "queue_full")
                .increment(1);
            self.report_full();
            return Err(Self::unavailable());
        }
        if self.health.full_reported.load(Ordering::Relaxed) {
            self.health.full_reported.store(false, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Queues a record nobody waits for; the writer group-commits it within ~5 ms.
    pub fn record(&self, r: Record) -> Result<(), Error> {
        self.admit()?;
        self.health
            .buffered
            .lock()
            .expect("audit buffer")
            .push(Job {
                record: r,
                ack: None,
            });
        if self.health.idle.swap(false, Ordering::AcqRel) {
            let _ = self.tx.send(Msg::Wake);
        }
        Ok(())
    }

    /// Writes and fsyncs everything queued so far; used on shutdown so that records of
    /// requests already answered are not lost with the process.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// Writes a record and waits until it is on disk (fsynced).
    pub async fn record_durable(&self, r: Record) -> Result<(), Error> {
        if !self.health.healthy.load(Ordering::Acquire) {
            return Err(Self::unavailable());
        }
        let (ack, done) = oneshot::channel();
        self.admit()?;
        if self
            .tx
            .send(Msg::Job(Box::new(Job {
                record: r,
                ack: Some(ack),
            })))
            .is_err()
        {
            self.health.depth.fetch_sub(1, Ordering::Relaxed);
            return Err(Self::unavailable());
        }
        match done.await {
            Ok(Ok(())) => Ok(()),
            _ => Err(Self::unavailable()),
        }
    }
}
