//! The kill switches in force on this node: read from the store, cached while the
//! invalidation feed is live, dropped on every change notice.

use crate::error::Error;
use crate::policy::Switches;
use crate::store::Store;
use arc_swap::ArcSwapOption;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Default)]
pub struct Switchboard {
    cached: ArcSwapOption<Switches>,
    gen: AtomicU64,
}

impl Switchboard {
    pub async fn current(&self, store: &Store) -> Result<Arc<Switches>, Error> {
        let live = store.feed_live();
        if live {
            if let Some(s) = self.cached.load_full() {
                return Ok(s);
            }
        }
        let g = self.gen.load(Ordering::Acquire);
        let s = Arc::new(store.switches().await?.to_policy());
        if live && store.feed_live() && self.gen.load(Ordering::Acquire) == g {
            // A change notice after `g` bumps gen; a stale read then is not cached.
            self.cached.rcu(|_| {
                if self.gen.load(Ordering::Acquire) == g {
                    Some(s.clone())
                } else {
                    None
                }
            });
        }
        Ok(s)
    }

    pub fn invalidate(&self) {
        self.gen.fetch_add(1, Ordering::AcqRel);
        self.cached.store(None);
    }
}
