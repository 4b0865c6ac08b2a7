//! Shared runtime state: the configuration in force (swapped whole on reload) with
//! the upstream clients built from it.

use crate::config::Snapshot;
use crate::error::Error;
use crate::upstream::{self, HttpsClient};
use arc_swap::ArcSwap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// One configuration and everything derived from it; immutable once built.
pub struct Live {
    pub snap: Snapshot,
    pub clients: Vec<HttpsClient>,
}

impl Live {
    pub fn new(snap: Snapshot) -> Result<Live, Error> {
        let clients = snap
            .upstreams
            .iter()
            .map(|u| upstream::build_client(u).map_err(|e| Error::Internal(format!("upstream `{}`: {e}", u.name))))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Live { snap, clients })
    }
}

pub struct App {
    pub live: ArcSwap<Live>,
    pub config_path: PathBuf,
    pub draining: AtomicBool,
}

impl App {
    pub fn new(live: Live, config_path: PathBuf) -> Arc<App> {
        Arc::new(App { live: ArcSwap::from_pointee(live), config_path, draining: AtomicBool::new(false) })
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
}
