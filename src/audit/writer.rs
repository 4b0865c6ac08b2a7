//! The writer thread: numbers, chains and appends records in batches (group commit),
//! fsyncs before acknowledging durable records, and rotates by size keeping the chain.
//!
//! A failed write or fsync rolls the file back to its last fsynced length, so it never
//! holds a half-written chain; records nobody waits for go into the backlog. From then
//! on the sink is unhealthy until a real write of that backlog (and an `audit_resumed`
//! record) has been fsynced, retried every [`RETRY`].

use super::backlog::Backlog;
use super::chain::{self, GENESIS};
use super::files::{head_of, last_line, open_append, rotated};
use super::{Health, Job, Msg, Record};
use crate::config::{AuditConfig, Fsync};
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{error, info, warn};

/// Batch mode: records nobody waits for are fsynced at least this often.
const GROUP_COMMIT: Duration = Duration::from_millis(5);
const MAX_BATCH: usize = 4096;
/// How often an idle writer re-checks its file.
const PROBE: Duration = Duration::from_millis(200);
/// How often an unhealthy writer tries to write its backlog again.
pub const RETRY: Duration = Duration::from_millis(100);
/// Backlog bytes written (and fsynced) per step of a recovery: a recovery that fails
/// again wastes at most this much work.
const CHUNK: u64 = 1 << 20;

pub struct Writer {
    path: PathBuf,
    node: String,
    fsync: Fsync,
    rotate_bytes: u64,
    checkpoint: Option<(u64, Vec<u8>)>,
    file: File,
    size: u64,
    seq: u64,
    prev: String,
    /// The file's length and the chain's seq and head as of the last successful fsync:
    /// what any failure rolls the file back to.
    synced: (u64, u64, String),
    /// Records nobody waits for that were accepted for writing since the last fsync. If
    /// a write or an fsync fails they go back into the backlog and are written again.
    unsynced: Vec<Record>,
    /// A failed write left bytes past `synced.0` that could not be truncated yet.
    torn: bool,
    backlog: Backlog,
    outage: Option<Outage>,
    health: Arc<Health>,
    last_sync: Instant,
    stamp: super::line::Stamp,
}

/// The sink is down: since when, why, and when to try again.
struct Outage {
    since: Instant,
    error: String,
    retry_at: Instant,
}

#[derive(Serialize)]
struct Checkpoint<'a> {
    seq: u64,
    #[serde(serialize_with = "as_display")]
    ts: humantime::Rfc3339Timestamp,
    node: &'a str,
    event: &'static str,
    head: &'a str,
    hmac: String,
    prev: &'a str,
}

fn now_rfc3339() -> humantime::Rfc3339Timestamp {
    humantime::format_rfc3339_micros(std::time::SystemTime::now())
}

/// Writes the timestamp straight into the line (no intermediate string).
fn as_display<S: serde::Serializer>(
    ts: &humantime::Rfc3339Timestamp,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_str(ts)
}

/// HMAC-SHA256 (hex) over `{seq}:{head}`: `head` is the `hash` of the record at `seq`
/// (the line before the checkpoint). Signing the seq with the head ties the checkpoint to
/// its position, so it cannot be replayed elsewhere in this or another chain.
pub fn checkpoint_mac(key: &[u8], seq: u64, head: &str) -> String {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("hmac takes any key length");
    m.update(format!("{seq}:{head}").as_bytes());
    hex::encode(m.finalize().into_bytes())
}

impl Writer {
    pub fn open(cfg: &AuditConfig, node: &str, health: Arc<Health>) -> std::io::Result<Writer> {
        if let Some(dir) = cfg.path.parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir)?;
            }
        }
        let mut last = last_line(&cfg.path, true)?;
        if last.is_none() {
            if let Some(r) = rotated(&cfg.path).last() {
                last = last_line(r, false)?;
            }
        }
        let (seq, prev) = match last {
            Some(l) => head_of(&l).ok_or_else(|| {
                std::io::Error::other("the last audit line is not a sealed record")
            })?,
            None => (0, GENESIS.to_string()),
        };
        let file = open_append(&cfg.path)?;
        let size = file.metadata()?.len();
        health.ino.store(file.metadata()?.ino(), Ordering::Release);
        info!(file = %cfg.path.display(), seq, "audit log open");
        Ok(Writer {
            path: cfg.path.clone(),
            node: node.to_string(),
            fsync: cfg.fsync,
            rotate_bytes: cfg.rotate_bytes.max(4096),
            checkpoint: cfg.checkpoint.clone(),
            file,
            size,
            synced: (size, seq, prev.clone()),
            seq,
            prev,
            unsynced: Vec::new(),
            torn: false,
            backlog: Backlog::new(cfg.max_pending_bytes),
            outage: None,
            health,
            last_sync: Instant::now(),
            stamp: super::line::Stamp::new(),
        })
    }

    pub fn run(mut self, rx: Receiver<Msg>) {
        // Both vectors keep their capacity across rounds, and the shared buffer is
        // swapped with `spare` rather than taken: a fresh buffer each round meant the
        // request path re-grew it (realloc, page faults) every 5 ms.
        let mut batch: Vec<Job> = Vec::new();
        let mut spare: Vec<Job> = Vec::new();
        loop {
            let wait = self.wait();
            let mut flushes = Vec::new();
            match rx.recv_timeout(wait) {
                Ok(Msg::Job(j)) => batch.push(*j),
                Ok(Msg::Wake) => {}
                Ok(Msg::Flush(ack)) => flushes.push(ack),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            self.health.idle.store(false, Ordering::Release);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(Msg::Job(j)) => batch.push(*j),
                    Ok(Msg::Wake) => {}
                    Ok(Msg::Flush(ack)) => flushes.push(ack),
                    Err(_) => break,
                }
            }
            std::mem::swap(
                &mut *self.health.buffered.lock().expect("audit buffer"),
                &mut spare,
            );
            batch.append(&mut spare);
            if !batch.is_empty() {
                self.health
                    .depth
                    .fetch_sub(batch.len() as u64, Ordering::Relaxed);
                metrics::gauge!("portcullis_audit_queue_depth")
                    .set(self.health.depth.load(Ordering::Relaxed) as f64);
            }
            self.round(&mut batch, !flushes.is_empty());
            for f in flushes {
                let _ = f.send(());
            }
        }
        std::mem::swap(
            &mut *self.health.buffered.lock().expect("audit buffer"),
            &mut batch,
        );
        self.round(&mut batch, true);
        if !self.backlog.is_empty() {
            error!(
                file = %self.path.display(),
                records = self.backlog.kept,
                "AUDIT RECORDS LOST: the trail was still unwritable when the proxy stopped"
            );
        }
    }

    /// How long to wait for work: the group-commit tick while records flow, the retry
    /// time while unhealthy, else the idle probe (announced, so the next record nudges).
    fn wait(&self) -> Duration {
        if let Some(o) = &self.outage {
            return o
                .retry_at
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1));
        }
        let buffered = || {
            !self
                .health
                .buffered
                .lock()
                .expect("audit buffer")
                .is_empty()
        };
        if self.size != self.synced.0 || buffered() {
            return GROUP_COMMIT
                .saturating_sub(self.last_sync.elapsed())
                .max(Duration::from_millis(1));
        }
        self.health.idle.store(true, Ordering::Release);
        if buffered() {
            Duration::ZERO
        } else {
            PROBE
        }
    }

    /// One round: recover first if the sink is down (when it is time to try, or a flush
    /// asks), then write this batch. Durable records are answered here.
    fn round(&mut self, batch: &mut Vec<Job>, force: bool) {
        if self.outage.is_some() {
            let due = self
                .outage
                .as_ref()
                .is_some_and(|o| Instant::now() >= o.retry_at);
            if !(due || force) {
                self.shelve(batch);
                return;
            }
            if let Err(e) = self.recover() {
                self.fail(e);
                self.shelve(batch);
                return;
            }
        }
        if batch.is_empty() {
            // Idle: fsync what is pending, and check the file is still ours.
            if let Err(e) = self.sync().and_then(|()| self.ensure_file()) {
                self.fail(e);
            }
            return;
        }
        let waiting = batch.iter().any(|j| j.ack.is_some());
        let sync_now = waiting
            || force
            || self.fsync == Fsync::Always
            || self.last_sync.elapsed() >= GROUP_COMMIT;
        match self.append(batch, sync_now) {
            Ok(()) => {
                for j in batch.drain(..) {
                    if let Some(ack) = j.ack {
                        let _ = ack.send(Ok(()));
                    }
                }
            }
            Err(e) => {
                // What was written goes back into the backlog (`fail`); what never got
                // that far is still in the batch and follows it there.
                self.fail(e);
                self.shelve(batch);
            }
        }
    }

    /// While unhealthy: durable records are refused (their caller answers 503), the
    /// others are kept for the recovery.
    fn shelve(&mut self, batch: &mut Vec<Job>) {
        for j in batch.drain(..) {
            match j.ack {
                Some(ack) => {
                    let _ = ack.send(Err("the audit trail is unwritable".into()));
                }
                None => self.backlog.push(j.record),
            }
        }
        metrics::gauge!("portcullis_audit_backlog_bytes").set(self.backlog.bytes() as f64);
    }

    /// Writes the backlog (in chunks, each fsynced), then an `audit_resumed` record, and
    /// only then reports the sink healthy.
    fn recover(&mut self) -> std::io::Result<()> {
        while !self.backlog.is_empty() {
            let recs = self.backlog.front(CHUNK);
            self.write_synced(&recs)?;
            self.backlog.pop_front(recs.len());
            metrics::gauge!("portcullis_audit_backlog_bytes").set(self.backlog.bytes() as f64);
        }
        let o = self.outage.take().expect("recover runs in an outage");
        let marker = Record {
            event: "audit_resumed",
            reason: Some(o.error.clone().into()),
            count: Some(self.backlog.kept),
            comment: Some(format!(
                "the audit trail could not be written for {} ms: requests that would have \
                 been forwarded were answered 503 audit_unavailable; {} records were written \
                 late, {} lost (see `gap`)",
                o.since.elapsed().as_millis(),
                self.backlog.kept,
                self.backlog.lost
            )),
            ..Default::default()
        };
        if let Err(e) = self.write_synced(std::slice::from_ref(&marker)) {
            self.outage = Some(o);
            return Err(e);
        }
        info!(
            file = %self.path.display(),
            written_late = self.backlog.kept,
            lost = self.backlog.lost,
            "audit log writable again"
        );
        self.backlog.reset_counts();
        self.health.healthy.store(true, Ordering::Release);
        Ok(())
    }

    /// A write, an fsync or the file check failed: roll the file back to its last
    /// fsynced state, keep what was not durable, and be unhealthy until a recovery.
    fn fail(&mut self, e: std::io::Error) {
        metrics::counter!("portcullis_audit_write_errors_total", "kind" => "io").increment(1);
        // Always: a write that failed part-way may have left bytes even when nothing
        // before it was pending.
        self.torn = self.file.set_len(self.synced.0).is_err();
        self.size = self.synced.0;
        self.seq = self.synced.1;
        self.prev = self.synced.2.clone();
        self.backlog
            .requeue_front(std::mem::take(&mut self.unsynced));
        metrics::gauge!("portcullis_audit_backlog_bytes").set(self.backlog.bytes() as f64);
        let retry_at = Instant::now() + RETRY;
        match &mut self.outage {
            Some(o) => o.retry_at = retry_at,
            None => {
                self.health.healthy.store(false, Ordering::Release);
                error!(error = %e, file = %self.path.display(), "AUDIT LOG UNWRITABLE: refusing requests until it recovers");
                self.outage = Some(Outage {
                    since: Instant::now(),
                    error: e.to_string(),
                    retry_at,
                });
            }
        }
    }

    /// Appends the batch. Records nobody waits for leave the batch for `unsynced`
    /// before the write (they count as written only once fsynced); the batch keeps the
    /// durable ones, whose callers are answered by `round`.
    fn append(&mut self, batch: &mut Vec<Job>, sync_now: bool) -> std::io::Result<()> {
        self.prepare()?;
        let mut buf = Vec::with_capacity(batch.len() * 512);
        for j in batch.iter() {
            self.line(&j.record, &mut buf);
        }
        let mut durable = Vec::with_capacity(batch.len());
        for j in batch.drain(..) {
            if j.ack.is_some() {
                durable.push(j);
            } else {
                self.unsynced.push(j.record);
            }
        }
        *batch = durable;
        self.file.write_all(&buf)?;
        self.size += buf.len() as u64;
        if sync_now {
            self.sync()?;
        }
        Ok(())
    }

    /// Appends records and fsyncs them (the recovery path).
    fn write_synced(&mut self, recs: &[Record]) -> std::io::Result<()> {
        self.prepare()?;
        let mut buf = Vec::with_capacity(recs.len() * 512);
        for r in recs {
            self.line(r, &mut buf);
        }
        self.file.write_all(&buf)?;
        self.size += buf.len() as u64;
        self.sync()
    }

    /// Before a write: cut what a failed write left, rotate if due, and make sure the
    /// file at the path is the one written to.
    fn prepare(&mut self) -> std::io::Result<()> {
        if self.torn {
            self.file.set_len(self.synced.0)?;
            self.torn = false;
        }
        if self.size >= self.rotate_bytes {
            self.rotate()?;
        }
        self.ensure_file()
    }

    /// Points the writer at a new file handle (the request path compares inodes). Only
    /// called with everything written so far fsynced (or lost with the old file).
    fn adopt(&mut self, f: File) -> std::io::Result<()> {
        let m = f.metadata()?;
        self.size = m.len();
        self.synced = (self.size, self.seq, self.prev.clone());
        self.unsynced.clear();
        self.health.ino.store(m.ino(), Ordering::Release);
        self.file = f;
        Ok(())
    }

    fn sync(&mut self) -> std::io::Result<()> {
        if self.size != self.synced.0 {
            self.file.sync_data()?;
            self.synced = (self.size, self.seq, self.prev.clone());
            self.unsynced.clear();
        }
        self.last_sync = Instant::now();
        Ok(())
    }

    /// Re-opens the path if the file was removed, replaced or became unwritable.
    fn ensure_file(&mut self) -> std::io::Result<()> {
        let probe = OpenOptions::new().append(true).open(&self.path);
        let same = match (&probe, self.file.metadata()) {
            (Ok(p), Ok(cur)) => p
                .metadata()
                .map(|m| m.ino() == cur.ino() && m.dev() == cur.dev())
                .unwrap_or(false),
            _ => false,
        };
        if same {
            return Ok(());
        }
        // What the old file holds stays there; make it durable before moving on.
        let _ = self.file.sync_data();
        self.health.swaps.fetch_add(1, Ordering::AcqRel);
        let r = match probe {
            Ok(f) => self.adopt(f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                open_append(&self.path).and_then(|f| self.adopt(f))
            }
            Err(e) => Err(e),
        };
        self.health.swaps.fetch_add(1, Ordering::AcqRel);
        r
    }

    fn line(&mut self, rec: &Record, out: &mut Vec<u8>) {
        self.seq += 1;
        let start = out.len();
        let ts = self.stamp.at(std::time::SystemTime::now());
        super::line::write(out, self.seq, ts, &self.node, rec, &self.prev);
        self.prev = chain::seal_in_place(out, start);
        out.push(b'\n');
        if let Some((every, key)) = &self.checkpoint {
            if self.seq % every == 0 {
                self.seq += 1;
                let mac = checkpoint_mac(key, self.seq - 1, &self.prev);
                let start = out.len();
                serde_json::to_writer(
                    &mut *out,
                    &Checkpoint {
                        seq: self.seq,
                        ts: now_rfc3339(),
                        node: &self.node,
                        event: "checkpoint",
                        head: &self.prev,
                        hmac: mac,
                        prev: &self.prev,
                    },
                )
                .expect("checkpoints serialise");
                self.prev = chain::seal_in_place(out, start);
                out.push(b'\n');
            }
        }
    }

    /// Renames the full file to `<path>.<last seq>` and starts a new one; the chain
    /// continues. Only an fsync failure is an error here: a rename or create that fails
    /// is logged, and the write that follows (`ensure_file`) creates the file or fails
    /// and keeps its records for later.
    fn rotate(&mut self) -> std::io::Result<()> {
        self.sync()?;
        // Only our own file is renamed: after an attempt that renamed it but could not
        // create the next one, the path is empty (or holds someone else's file), and a
        // rename now would overwrite the rotated file of that name.
        let ours = match (std::fs::metadata(&self.path), self.file.metadata()) {
            (Ok(p), Ok(f)) => p.ino() == f.ino() && p.dev() == f.dev(),
            _ => false,
        };
        if !ours {
            return Ok(());
        }
        let mut name = self.path.as_os_str().to_owned();
        name.push(format!(".{:012}", self.seq));
        let name = PathBuf::from(name);
        self.health.swaps.fetch_add(1, Ordering::AcqRel);
        let r = std::fs::rename(&self.path, &name)
            .and_then(|()| open_append(&self.path))
            .and_then(|f| self.adopt(f));
        self.health.swaps.fetch_add(1, Ordering::AcqRel);
        match r {
            Ok(()) => {
                info!(file = %self.path.display(), rotated_to = %name.display(), "audit log rotated")
            }
            Err(e) => {
                warn!(error = %e, file = %self.path.display(), "audit log rotation failed; retrying before the next write")
            }
        }
        Ok(())
    }
}
