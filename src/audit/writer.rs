//! The writer thread: numbers, chains and appends records in batches (group commit),
//! fsyncs before acknowledging durable records, rotates by size keeping the chain, and
//! truncates a failed batch away so the file never holds a half-written chain.

use super::chain::{self, GENESIS};
use super::{Health, Job, Msg, Record};
use crate::config::{AuditConfig, Fsync};
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
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
    health: Arc<Health>,
    dirty: bool,
    last_sync: Instant,
}

#[derive(Serialize)]
struct Line<'a> {
    seq: u64,
    #[serde(serialize_with = "as_display")]
    ts: humantime::Rfc3339Timestamp,
    node: &'a str,
    #[serde(flatten)]
    rec: &'a Record,
    prev: &'a str,
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

/// The last complete line of a file, after cutting off a torn (unterminated) tail.
fn last_line(path: &Path, repair: bool) -> std::io::Result<Option<String>> {
    let mut f = match OpenOptions::new().read(true).write(repair).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    let start = len.saturating_sub(1 << 20);
    f.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)?;
    let end = match buf.iter().rposition(|&b| b == b'\n') {
        Some(i) => i,
        None => {
            if repair && len > 0 && start == 0 {
                warn!(file = %path.display(), "audit log holds only a torn line; truncating it");
                f.set_len(0)?;
            }
            return Ok(None);
        }
    };
    if repair && (end as u64 + 1 + start) < len {
        warn!(file = %path.display(), "audit log ends in a torn line (crash mid-write); truncating it");
        f.set_len(start + end as u64 + 1)?;
    }
    let body = &buf[..end];
    let from = body.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    Ok(Some(String::from_utf8_lossy(&body[from..]).into_owned()))
}

/// Rotated files: `<name>.<seq, 12 digits>`, oldest first.
pub fn rotated(path: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
        return vec![];
    };
    let mut v: Vec<PathBuf> = std::fs::read_dir(if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    })
    .into_iter()
    .flatten()
    .flatten()
    .map(|e| e.path())
    .filter(|p| {
        p.file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix(name))
            .and_then(|r| r.strip_prefix('.'))
            .is_some_and(|r| r.len() == 12 && r.bytes().all(|b| b.is_ascii_digit()))
    })
    .collect();
    v.sort();
    v
}

fn head_of(line: &str) -> Option<(u64, String)> {
    let (_, hash) = chain::unseal(line)?;
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    Some((v.get("seq")?.as_u64()?, hash.to_string()))
}

fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
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
            seq,
            prev,
            health,
            dirty: false,
            last_sync: Instant::now(),
        })
    }

    pub fn run(mut self, rx: Receiver<Msg>) {
        // Both vectors keep their capacity across rounds, and the shared buffer is
        // swapped with `spare` rather than taken: a fresh buffer each round meant the
        // request path re-grew it (realloc, page faults) every 5 ms.
        let mut batch: Vec<Job> = Vec::new();
        let mut spare: Vec<Job> = Vec::new();
        loop {
            // Wake every GROUP_COMMIT while records flow (buffered ones arrive without a
            // wake-up); otherwise sleep up to PROBE, announcing it so the next record
            // nudges us, and re-check the file on the way.
            let busy = self.dirty
                || !self
                    .health
                    .buffered
                    .lock()
                    .expect("audit buffer")
                    .is_empty();
            let wait = if busy {
                GROUP_COMMIT
                    .saturating_sub(self.last_sync.elapsed())
                    .max(Duration::from_millis(1))
            } else {
                self.health.idle.store(true, Ordering::Release);
                if self
                    .health
                    .buffered
                    .lock()
                    .expect("audit buffer")
                    .is_empty()
                {
                    PROBE
                } else {
                    Duration::ZERO
                }
            };
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
            if batch.is_empty() {
                let _ = self.sync();
                self.probe();
                for f in flushes {
                    let _ = f.send(());
                }
                continue;
            }
            self.health
                .depth
                .fetch_sub(batch.len() as u64, Ordering::Relaxed);
            metrics::gauge!("portcullis_audit_queue_depth")
                .set(self.health.depth.load(Ordering::Relaxed) as f64);
            let waiting = batch.iter().any(|j| j.ack.is_some());
            let result = self.write_batch(&batch, waiting).map_err(|e| e.to_string());
            match &result {
                Ok(()) => {
                    if !self.health.healthy.swap(true, Ordering::Relaxed) {
                        info!("audit log writable again");
                    }
                }
                Err(e) => {
                    metrics::counter!("portcullis_audit_write_errors_total", "kind" => "io")
                        .increment(1);
                    if self.health.healthy.swap(false, Ordering::Relaxed) {
                        error!(error = %e, file = %self.path.display(), "AUDIT LOG UNWRITABLE: refusing requests until it recovers");
                    }
                }
            }
            for j in batch.drain(..) {
                if let Some(ack) = j.ack {
                    let _ = ack.send(result.clone());
                }
            }
            if !flushes.is_empty() {
                let _ = self.sync();
                for f in flushes {
                    let _ = f.send(());
                }
            }
        }
        let _ = self.sync();
    }

    /// Re-checks the file between writes: re-opens it if it was replaced or removed
    /// (and can be re-created), and reports health either way.
    fn probe(&mut self) {
        match self.ensure_file() {
            Ok(()) => {
                if !self.health.healthy.swap(true, Ordering::Relaxed) {
                    info!(file = %self.path.display(), "audit log writable again");
                }
            }
            Err(e) => {
                if self.health.healthy.swap(false, Ordering::Relaxed) {
                    metrics::counter!("portcullis_audit_write_errors_total", "kind" => "io")
                        .increment(1);
                    error!(error = %e, file = %self.path.display(), "AUDIT LOG UNWRITABLE: refusing requests until it recovers");
                }
            }
        }
    }

    /// Points the writer at a new file handle (the request path compares inodes).
    fn adopt(&mut self, f: File) -> std::io::Result<()> {
        let m = f.metadata()?;
        self.size = m.len();
        self.health.ino.store(m.ino(), Ordering::Release);
        self.file = f;
        Ok(())
    }

    fn sync(&mut self) -> std::io::Result<()> {
        if self.dirty {
            self.file.sync_data()?;
            self.dirty = false;
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
        serde_json::to_writer(
            &mut *out,
            &Line {
                seq: self.seq,
                ts: now_rfc3339(),
                node: &self.node,
                rec,
                prev: &self.prev,
            },
        )
        .expect("records serialise");
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

    fn write_batch(&mut self, batch: &[Job], waiting: bool) -> std::io::Result<()> {
        self.ensure_file()?;
        let (seq0, prev0, size0) = (self.seq, self.prev.clone(), self.size);
        let mut buf = Vec::with_capacity(batch.len() * 512);
        for j in batch {
            self.line(&j.record, &mut buf);
        }
        let res = self.file.write_all(&buf).and_then(|()| {
            self.dirty = true;
            if waiting || self.fsync == Fsync::Always || self.last_sync.elapsed() >= GROUP_COMMIT {
                self.sync()
            } else {
                Ok(())
            }
        });
        if let Err(e) = res {
            // Nothing of this batch counts: cut it off so the chain on disk stays whole.
            let _ = self.file.set_len(size0);
            self.seq = seq0;
            self.prev = prev0;
            self.dirty = false;
            return Err(e);
        }
        self.size += buf.len() as u64;
        if self.size >= self.rotate_bytes {
            self.rotate()?;
        }
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.sync()?;
        let mut name = self.path.as_os_str().to_owned();
        name.push(format!(".{:012}", self.seq));
        self.health.swaps.fetch_add(1, Ordering::AcqRel);
        let r = std::fs::rename(&self.path, PathBuf::from(&name))
            .and_then(|()| open_append(&self.path))
            .and_then(|f| self.adopt(f));
        self.health.swaps.fetch_add(1, Ordering::AcqRel);
        r?;
        info!(file = %self.path.display(), rotated_to = %PathBuf::from(name).display(), "audit log rotated");
        Ok(())
    }
}
