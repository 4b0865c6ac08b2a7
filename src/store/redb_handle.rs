//! The open redb database, replaceable whole. After an I/O failure (a full disk) redb
//! refuses every further write until the file is reopened; reopening rolls it back to
//! the last durable commit (nothing half-written survives) and, once there is space
//! again, writes succeed as before.

use redb::Database;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// How long a reopen waits for reads still holding the old handle.
const READERS_BOUND: Duration = Duration::from_secs(5);

pub struct Handle {
    path: PathBuf,
    db: arc_swap::ArcSwapOption<Database>,
}

impl Handle {
    pub fn new(path: PathBuf, db: Database) -> Handle {
        Handle {
            path,
            db: arc_swap::ArcSwapOption::from_pointee(db),
        }
    }

    /// The database, or `None` while it is being reopened (or could not be).
    pub fn get(&self) -> Option<Arc<Database>> {
        self.db.load_full()
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
