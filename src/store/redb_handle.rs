//! The open redb database, replaceable whole. After an I/O failure (a full disk) redb
//! refuses every further write until the file is reopened; reopening rolls it back to
//! the last durable commit (nothing half-written survives) and, once there is space
//! again, writes succeed as before. Reads that arrive during a reopen wait for it
//! (bounded) rather than fail.

use redb::Database;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// How long a reopen waits for reads still holding the old handle.
const READERS_BOUND: Duration = Duration::from_secs(5);

/// How long a read waits for a reopen under way before it is refused.
pub const REOPEN_WAIT: Duration = Duration::from_secs(2);

pub struct Handle {
    path: PathBuf,
    db: arc_swap::ArcSwapOption<Database>,
    /// A write failed on the open database: redb refuses every transaction on it,
    /// reads too, until it is reopened.
    poisoned: std::sync::atomic::AtomicBool,
    /// Woken when a reopen put a database back.
    reopened: tokio::sync::Notify,
}

impl Handle {
    pub fn new(path: PathBuf, db: Database) -> Handle {
        Handle {
            path,
            db: arc_swap::ArcSwapOption::from_pointee(db),
            poisoned: std::sync::atomic::AtomicBool::new(false),
            reopened: tokio::sync::Notify::new(),
        }
    }

    /// The database, or `None` while it is being reopened (or could not be).
    pub fn get(&self) -> Option<Arc<Database>> {
        self.db.load_full()
    }

    /// Marks the open database as failed (the committer reopens it on its cadence).
    pub fn poison(&self) {
        self.poisoned
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// The database to read from; while it is failed or being reopened, the one the
    /// reopen puts back, waited for at most `bound` (a read must not fail only because
    /// a write failed a moment ago). Past the bound, whatever is there (a read on a
    /// failed database is refused, never answered wrongly).
    pub async fn get_or_wait(&self, bound: Duration) -> Option<Arc<Database>> {
        let end = tokio::time::Instant::now() + bound;
        loop {
            let woken = self.reopened.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if !self.poisoned.load(std::sync::atomic::Ordering::SeqCst) {
                if let Some(db) = self.get() {
                    return Some(db);
                }
            }
            if tokio::time::timeout_at(end, woken).await.is_err() {
                return self.get();
            }
        }
    }

    /// Closes the database and opens it again (redb's repair runs if it must). Waits
    /// (bounded) for reads under way on the old handle: the file lock allows one.
    pub fn reopen(&self) -> Result<(), String> {
        if let Some(old) = self.db.swap(None) {
            let end = Instant::now() + READERS_BOUND;
            while Arc::strong_count(&old) > 1 {
                if Instant::now() >= end {
                    self.db.store(Some(old));
                    return Err("reads on the old handle did not finish".into());
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            drop(old);
        }
        match Database::create(&self.path) {
            Ok(db) => {
                self.db.store(Some(Arc::new(db)));
                self.poisoned
                    .store(false, std::sync::atomic::Ordering::SeqCst);
                self.reopened.notify_waiters();
                info!(file = %self.path.display(), "store reopened after a write failure");
                Ok(())
            }
            Err(e) => {
                warn!(file = %self.path.display(), error = %e, "store could not be reopened");
                Err(e.to_string())
            }
        }
    }
}
