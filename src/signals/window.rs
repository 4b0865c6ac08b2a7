//! The counters a replica keeps per agent on the request path: bucketed sliding windows
//! (refusals, calls, response bytes, operator denials), the run of upstream failures,
//! and the tools it has seen. Plain integers under one uncontended lock per agent; the
//! flusher (`aggregate`) takes the unflushed deltas to the store.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Buckets per window: a window is counted in tenths, so an event leaves it up to one
/// tenth of the window late.
pub const BUCKETS: u64 = 10;

/// A sliding window of counts in [`BUCKETS`] buckets, numbered by wall-clock time so
/// every replica agrees on them.
#[derive(Debug, Default)]
pub struct Window {
    bucket_ms: u64,
    head: u64,
    counts: [u64; BUCKETS as usize],
    /// Counted here since the last flush (redis only).
    pub unflushed: u64,
    /// The window's total across replicas at the last flush (redis only).
    pub remote: u64,
}

impl Window {
    fn fit(&mut self, window: Duration) {
        let bucket_ms = (window.as_millis() as u64 / BUCKETS).max(1);
        if bucket_ms != self.bucket_ms {
            *self = Window {
                bucket_ms,
                ..Default::default()
            };
        }
    }

    fn roll(&mut self, now_ms: u64) {
        let b = now_ms / self.bucket_ms;
        if b <= self.head {
            return;
        }
        let gap = (b - self.head).min(BUCKETS);
        for i in 1..=gap {
            self.counts[((self.head + i) % BUCKETS) as usize] = 0;
        }
        self.head = b;
    }

    /// Counts `n` at `now_ms`; answers this replica's total over the window.
    pub fn add(&mut self, window: Duration, now_ms: u64, n: u64) -> u64 {
        self.fit(window);
        self.roll(now_ms);
        self.counts[(self.head % BUCKETS) as usize] += n;
        self.unflushed += n;
        self.local(now_ms)
    }

    /// This replica's total over the window ending at `now_ms`.
    pub fn local(&mut self, now_ms: u64) -> u64 {
        if self.bucket_ms == 0 {
            return 0;
        }
        self.roll(now_ms);
        self.counts.iter().sum()
    }

    /// The count that is compared with a threshold: this replica's own (one node), or
    /// with replicas (`shared`) the total across them at the last flush plus what was
    /// counted here since.
    pub fn estimate(&mut self, now_ms: u64, shared: bool) -> u64 {
        if shared {
            self.remote + self.unflushed
        } else {
            self.local(now_ms)
        }
    }

    pub fn bucket_ms(&self) -> u64 {
        self.bucket_ms
    }

    pub fn reset(&mut self) {
        let bucket_ms = self.bucket_ms;
        *self = Window {
            bucket_ms,
            ..Default::default()
        };
    }
}

/// Consecutive events (upstream failures) and whether a success broke the run since the
/// last flush.
#[derive(Debug, Default)]
pub struct Run {
    pub local: u64,
    pub unflushed: u64,
    pub reset: bool,
    pub remote: u64,
}

impl Run {
    pub fn fail(&mut self) {
        self.local += 1;
        self.unflushed += 1;
    }
    pub fn succeed(&mut self) {
        if self.local != 0 || self.remote != 0 || self.unflushed != 0 {
            *self = Run {
                reset: true,
                ..Default::default()
            };
        }
    }
    /// Like [`Window::estimate`]: since a success here, only what followed it counts.
    pub fn estimate(&self, shared: bool) -> u64 {
        match (shared, self.reset) {
            (false, _) => self.local,
            (true, true) => self.unflushed,
            (true, false) => self.remote + self.unflushed,
        }
    }
}

/// A request id kept without allocating (empty: first byte 0).
#[derive(Debug)]
pub struct RequestId(pub [u8; 36]);

impl Default for RequestId {
    fn default() -> RequestId {
        RequestId([0; 36])
    }
}

/// One agent's counters.
#[derive(Debug, Default)]
pub struct Tracks {
    pub refusals: Window,
    pub calls: Window,
    pub bytes: Window,
    pub denials: Window,
    pub failures: Run,
    /// Tools this replica has seen the agent call (bounded by `new_tool.max_tools`).
    pub tools: HashSet<Arc<str>>,
    /// The tool of the last call (the configuration's own `Arc`): an agent calling the
    /// same tool again is recognised without hashing its name.
    pub last_tool: Option<Arc<str>>,
    /// `rate_spike` and `volume_spike` baselines (from the store, refreshed by the
    /// flusher), and when the flusher moves each next.
    pub baseline: [Option<f64>; 2],
    pub baseline_due: [Option<Instant>; 2],
    /// The last request counted, and its credential: the evidence of a signal the
    /// flusher finds crossed.
    pub last_request: RequestId,
    pub last_credential: String,
    /// Per kind: no evaluation before this instant (a signal just fired or is open).
    pub quiet_until: [Option<Instant>; 6],
}

impl Tracks {
    pub fn note(&mut self, request_id: &str, credential: Option<&str>) {
        // A request id is a UUID (36 bytes); anything else is not kept.
        match <[u8; 36]>::try_from(request_id.as_bytes()) {
            Ok(b) => self.last_request.0 = b,
            Err(_) => self.last_request.0[0] = 0,
        }
        if let Some(c) = credential {
            if self.last_credential != c {
                self.last_credential = c.to_string();
            }
        }
    }
    pub fn last_request(&self) -> String {
        let h = &self.last_request.0;
        if h[0] == 0 {
            return String::new();
        }
        String::from_utf8_lossy(h).into_owned()
    }
    pub fn quiet(&self, k: super::Kind, now: Instant) -> bool {
        self.quiet_until[k as usize].is_some_and(|t| now < t)
    }
    pub fn hush(&mut self, k: super::Kind, for_: Duration) {
        self.quiet_until[k as usize] = Some(Instant::now() + for_);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Duration = Duration::from_secs(10);

    #[test]
    fn a_window_forgets_what_left_it() {
        let mut w = Window::default();
        assert_eq!(w.add(W, 0, 3), 3);
        assert_eq!(w.add(W, 5_000, 2), 5);
        assert_eq!(w.local(9_999), 5);
        assert_eq!(w.local(10_000), 2, "the first bucket left");
        assert_eq!(w.local(15_000), 0);
        assert_eq!(w.unflushed, 5);
    }

    #[test]
    fn the_estimate_adds_the_flushed_total() {
        let mut w = Window::default();
        w.add(W, 0, 2);
        w.unflushed = 0;
        w.remote = 7;
        w.add(W, 1, 1);
        assert_eq!(w.estimate(1, true), 8);
        assert_eq!(w.estimate(1, false), 3);
    }

    #[test]
    fn a_success_ends_a_run() {
        let mut r = Run::default();
        r.fail();
        r.remote = 3;
        r.fail();
        assert_eq!((r.estimate(false), r.estimate(true)), (2, 5));
        r.succeed();
        assert_eq!(r.estimate(true), 0);
        r.fail();
        assert_eq!((r.estimate(false), r.estimate(true)), (1, 1));
    }
}
