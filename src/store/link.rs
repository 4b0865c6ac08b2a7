//! Whether the redis connection is known to be down. The first command that fails at
//! the connection level (refused, reset, timed out) marks it down; from then on every
//! store call answers 503 `store_unavailable` at once instead of waiting on a reconnect,
//! while one background task pings (which reconnects) until redis answers again.

use redis::aio::ConnectionManager;
use redis::RedisError;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tracing::{info, warn};

/// How often the background task tries redis while it is down.
const RETRY: Duration = Duration::from_millis(100);
/// One background ping's bound (a stopped server never answers).
const PING_BOUND: Duration = Duration::from_millis(500);

#[derive(Clone)]
pub struct Link(Arc<State>);

struct State {
    down: AtomicBool,
    wake: Notify,
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
    pub fn start(conn: ConnectionManager) -> Link {
        let link = Link(Arc::new(State {
            down: AtomicBool::new(false),
            wake: Notify::new(),
        }));
        let l = link.clone();
        tokio::spawn(async move { l.reconnect(conn).await });
        link
    }

    pub fn is_down(&self) -> bool {
        self.0.down.load(Ordering::Acquire)
    }

    /// Looks at a failed command: a connection-level error marks the link down.
    pub fn saw(&self, e: &RedisError) {
        if is_connection_error(e) && !self.0.down.swap(true, Ordering::AcqRel) {
            warn!(error = %e, "redis unreachable: store calls answer 503 at once until it is back");
            self.0.wake.notify_one();
        }
    }

    async fn reconnect(&self, mut conn: ConnectionManager) {
        loop {
            self.0.wake.notified().await;
            while self.is_down() {
                tokio::time::sleep(RETRY).await;
                let cmd = redis::cmd("PING");
                let ping = cmd.query_async::<String>(&mut conn);
                if let Ok(Ok(_)) = tokio::time::timeout(PING_BOUND, ping).await {
                    self.0.down.store(false, Ordering::Release);
                    info!("redis reachable again");
                }
            }
        }
    }
}
