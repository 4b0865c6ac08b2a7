//! The kill switches in force on this node: read from the store, cached while the
//! invalidation feed is live (and for at most `timers.cache_max_age`), dropped on
//! every change notice.

use crate::error::Error;
use crate::identity::Filled;
use crate::policy::Switches;
use crate::store::Store;
use arc_swap::ArcSwapOption;
use std::sync::{Arc, Mutex};

#[derive(Default)]
pub struct Switchboard {
    /// What requests read: lock-free.
    cached: ArcSwapOption<Entry>,
    /// Invalidations so far. A refill stores only under this lock and only if no
    /// invalidation came since it started, so it never outlives one.
    gen: Mutex<u64>,
}

struct Entry {
    switches: Arc<Switches>,
    filled: Filled,
}

impl Switchboard {
    pub async fn current(&self, store: &Store) -> Result<Arc<Switches>, Error> {
        let epoch = store.feed_epoch();
        if let (Some(e), Some(c)) = (epoch, &*self.cached.load()) {
            if c.filled.fresh(e) {
                return Ok(c.switches.clone());
            }
        }
        let g = *self.gen.lock().expect("switchboard lock");
        let s = Arc::new(store.switches().await?.to_policy());
        if let Some(e) = epoch {
            let gen = self.gen.lock().expect("switchboard lock");
            if *gen == g && store.feed_epoch() == Some(e) {
                self.cached.store(Some(Arc::new(Entry {
                    switches: s.clone(),
                    filled: Filled::now(e),
                })));
            }
        }
        Ok(s)
    }

    pub fn invalidate(&self) {
        let mut gen = self.gen.lock().expect("switchboard lock");
        *gen += 1;
        self.cached.store(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refill_that_read_before_an_invalidation_is_not_stored() {
        let sb = Switchboard::default();
        // The refill's two halves around an invalidation, as `current` runs them.
        let g = *sb.gen.lock().unwrap();
        sb.invalidate();
        {
            let gen = sb.gen.lock().unwrap();
            if *gen == g {
                sb.cached.store(Some(Arc::new(Entry {
                    switches: Arc::new(Switches::default()),
                    filled: Filled::now(0),
                })));
            }
        }
        assert!(sb.cached.load().is_none());
    }
}
