//! The kill switches in force on this node: read from the store, cached while the
//! invalidation feed is live (and for at most `store::CACHE_MAX_AGE`), dropped on
//! every change notice.

use crate::error::Error;
use crate::identity::Filled;
use crate::policy::Switches;
use crate::store::Store;
use std::sync::{Arc, Mutex};

#[derive(Default)]
pub struct Switchboard {
    /// The cached switches and when they were read; `gen` counts invalidations. Both
    /// under one lock, so a refill that read before an invalidation is never stored
    /// after it.
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    cached: Option<(Arc<Switches>, Filled)>,
    gen: u64,
}

impl Switchboard {
    pub async fn current(&self, store: &Store) -> Result<Arc<Switches>, Error> {
        let epoch = store.feed_epoch();
        let g = {
            let st = self.state.lock().expect("switchboard lock");
            if let (Some(e), Some((s, filled))) = (epoch, &st.cached) {
                if filled.fresh(e) {
                    return Ok(s.clone());
                }
            }
            st.gen
        };
        let s = Arc::new(store.switches().await?.to_policy());
        if let Some(e) = epoch {
            let mut st = self.state.lock().expect("switchboard lock");
            if st.gen == g && store.feed_epoch() == Some(e) {
                st.cached = Some((s.clone(), Filled::now(e)));
            }
        }
        Ok(s)
    }

    pub fn invalidate(&self) {
        let mut st = self.state.lock().expect("switchboard lock");
        st.gen += 1;
        st.cached = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refill_that_read_before_an_invalidation_is_not_stored() {
        let sb = Switchboard::default();
        // Simulate the refill's two halves around an invalidation.
        let g = sb.state.lock().unwrap().gen;
        sb.invalidate();
        {
            let mut st = sb.state.lock().unwrap();
            if st.gen == g {
                st.cached = Some((Arc::new(Switches::default()), Filled::now(0)));
            }
        }
        assert!(sb.state.lock().unwrap().cached.is_none());
    }
}
