//! Whether the redis connection is known to be down. The first command that fails at
//! the connection level (refused, reset, timed out; with Sentinel also `READONLY` from a
//! demoted master) marks it down; from then on every store call answers 503
//! `store_unavailable` at once instead of waiting on a reconnect, while one background
//! task probes (which reconnects, or with Sentinel finds the new master) until redis
//! answers again.

use futures_util::future::BoxFuture;
use redis::RedisError;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tracing::{info, warn};

/// How often the background task tries redis while it is down.
const RETRY: Duration = Duration::from_millis(100);

/// One attempt to reach redis again: `true` once it answers (and the store's
/// connections point at it).
pub type Probe = Arc<dyn Fn() -> BoxFuture<'static, bool> + Send + Sync>;

#[derive(Clone)]
pub struct Link(Arc<State>);

struct State {
    down: AtomicBool,
    wake: Notify,
    /// With Sentinel: a `READONLY` answer means the master moved.
    follows_failover: bool,
}

/// An error that says the connection, not the command, failed.
pub fn is_connection_error(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
}

impl Link {
    /// Starts the reconnect task on the current runtime.
    pub fn start(probe: Probe, follows_failover: bool) -> Link {
        let link = Link(Arc::new(State {
            down: AtomicBool::new(false),
            wake: Notify::new(),
            follows_failover,
        }));
        let l = link.clone();
        tokio::spawn(async move { l.reconnect(probe).await });
        link
    }

    pub fn is_down(&self) -> bool {
        self.0.down.load(Ordering::Acquire)
    }

    /// Looks at a failed command: a connection-level error marks the link down.
    pub fn saw(&self, e: &RedisError) {
        let lost =
            is_connection_error(e) || (self.0.follows_failover && super::redis_conn::is_demoted(e));
        if lost && !self.0.down.swap(true, Ordering::AcqRel) {
            warn!(error = %e, "redis unreachable: store calls answer 503 at once until it is back");
            self.0.wake.notify_one();
        }
    }

    /// The master moved (the sentinels name another): reconnect as after a lost link.
    pub fn master_moved(&self) {
        if !self.0.down.swap(true, Ordering::AcqRel) {
            warn!("the sentinels name a new redis master: reconnecting to it");
            self.0.wake.notify_one();
        }
    }

    async fn reconnect(&self, probe: Probe) {
        loop {
            self.0.wake.notified().await;
            while self.is_down() {
                tokio::time::sleep(RETRY).await;
                if probe().await {
                    self.0.down.store(false, Ordering::Release);
                    info!("redis reachable again");
                }
            }
        }
    }
}
