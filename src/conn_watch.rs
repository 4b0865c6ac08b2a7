//! Per-connection deadlines: a complete request head within `header_timeout` of accept
//! (whatever the protocol, TLS handshake included), a graceful close after `idle_timeout`
//! with no request in flight, the shutdown drain, and a bound on each close.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

/// What one connection has done so far; shared by its service (possibly on other tasks,
/// for HTTP/2 streams) and its watchdog.
pub struct Activity {
    born: Instant,
    /// A request head was parsed (the service was entered at least once).
    entered: AtomicBool,
    in_flight: AtomicU32,
    /// When the last request finished, in ms after `born`.
    idle_since_ms: AtomicU64,
    /// Rung when the last request in flight finishes.
    wake: Notify,
}

impl Activity {
    /// `born`: when the connection was accepted.
    pub fn new(born: Instant) -> Arc<Activity> {
        Arc::new(Activity {
            born,
            entered: AtomicBool::new(false),
            in_flight: AtomicU32::new(0),
            idle_since_ms: AtomicU64::new(0),
            wake: Notify::new(),
        })
    }

    pub fn born(&self) -> Instant {
        self.born
    }

    /// A request head arrived: the request is in flight until the guard is dropped
    /// (hold it in the response body with [`Tracked`]).
    pub fn enter(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.entered.store(true, Ordering::Release);
        InFlight(self.clone())
    }

    fn idle_since(&self) -> Instant {
        self.born + Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire))
    }
}

/// One request in flight on its connection.
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        let ms = a.born.elapsed().as_millis().min(u64::MAX as u128) as u64;
        a.idle_since_ms.fetch_max(ms, Ordering::AcqRel);
        if a.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            a.wake.notify_one();
        }
    }
}

/// A response body that keeps its request in flight until it is sent (or dropped).
pub struct Tracked<B> {
    inner: B,
    _in_flight: InFlight,
}

impl<B> Tracked<B> {
    pub fn new(inner: B, in_flight: InFlight) -> Self {
        Tracked {
            inner,
            _in_flight: in_flight,
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Tracked<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A handler's boxed response future; its answer is [`Tracked`], so the request stays
/// in flight until the response body is sent. A plain struct rather than a combinator
/// closure: hyper keeps it in the connection's request slot, and it is two pointers.
pub struct Answer<B> {
    handler: Pin<Box<dyn Future<Output = http::Response<B>> + Send>>,
    in_flight: Option<InFlight>,
}

impl<B> Answer<B> {
    pub fn new(
        handler: Pin<Box<dyn Future<Output = http::Response<B>> + Send>>,
        in_flight: InFlight,
    ) -> Self {
        Answer {
            handler,
            in_flight: Some(in_flight),
        }
    }
}

impl<B> Future for Answer<B> {
    type Output = Result<http::Response<Tracked<B>>, std::convert::Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let resp = std::task::ready!(self.handler.as_mut().poll(cx));
        let in_flight = self
            .in_flight
            .take()
            .expect("an Answer is not polled after it is ready");
        Poll::Ready(Ok(resp.map(|body| Tracked::new(body, in_flight))))
    }
}

/// The deadlines one connection runs under.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    /// From accept to the first complete request head; also how long a peer gets to
    /// finish a close once the connection has nothing in flight.
    pub header: Duration,
    /// No request in flight for this long: close gracefully.
    pub idle: Duration,
}

/// How a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The connection finished (the peer closed, a protocol error, or a graceful close).
    Closed,
    /// No complete request head within `header_timeout`: cut.
    HeaderTimeout,
    /// A graceful close (idle or shutdown) the peer did not finish in time: cut.
    CloseTimeout,
}

impl Ended {
    pub fn as_str(self) -> &'static str {
        match self {
            Ended::Closed => "closed",
            Ended::HeaderTimeout => "header_timeout",
            Ended::CloseTimeout => "close_timeout",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the first request head.
    Head,
    Open,
    /// A graceful close was asked for at this instant.
    Closing(Instant),
}

/// Drives `conn` (a hyper connection; `graceful` asks it to close gracefully) until it
/// ends, enforcing `d`. `stop` turning true starts a graceful close (shutdown).
/// `on_idle` is called when the idle deadline starts a close. `conn` is pinned by the
/// caller: taken by value, it would be stored twice in this future's state (once as the
/// argument, once pinned), on every connection for its whole life.
pub async fn drive<C, E, G>(
    mut conn: Pin<&mut C>,
    mut graceful: G,
    activity: &Activity,
    d: Deadlines,
    mut stop: watch::Receiver<bool>,
    on_idle: impl FnOnce(),
) -> Ended
where
    C: Future<Output = Result<(), E>>,
    G: FnMut(Pin<&mut C>),
{
    let mut on_idle = Some(on_idle);
    let mut stopping = false;
    let mut phase = Phase::Head;
    let sleep = tokio::time::sleep_until(activity.born + d.header);
    let mut sleep = pin!(sleep);
    let mut armed = activity.born + d.header;
    loop {
        if !stopping && *stop.borrow_and_update() {
            stopping = true;
            if !matches!(phase, Phase::Closing(_)) {
                graceful(conn.as_mut());
                phase = Phase::Closing(Instant::now());
            }
        }
        if phase == Phase::Head && activity.entered.load(Ordering::Acquire) {
            phase = Phase::Open;
        }
        let busy = activity.in_flight.load(Ordering::Acquire) > 0;
        let deadline = match phase {
            Phase::Head => Some(activity.born + d.header),
            Phase::Open if busy => None,
            Phase::Open => Some(activity.idle_since() + d.idle),
            Phase::Closing(_) if busy => None,
            Phase::Closing(at) => Some(at.max(activity.idle_since()) + d.header),
        };
        if let Some(at) = deadline {
            if at != armed {
                sleep.as_mut().reset(at);
                armed = at;
            }
        }
        tokio::select! {
            biased;
            _ = conn.as_mut() => {
                // hyper's own HTTP/1 header timer runs for the same `header_timeout` and
                // can end the connection in the same tick as ours: a connection that never
                // completed a head and ended past its deadline was cut for it.
                let head_missed = phase == Phase::Head
                    && !activity.entered.load(Ordering::Acquire)
                    && Instant::now() >= activity.born + d.header;
                return if head_missed {
                    Ended::HeaderTimeout
                } else {
                    Ended::Closed
                };
            }
            r = stop.changed(), if !stopping => {
                if r.is_err() {
                    // The drain's sender is gone: nothing will ever ask for a close.
                    stopping = true;
                }
            }
            () = activity.wake.notified() => {}
            () = sleep.as_mut(), if deadline.is_some() => {
                let now = Instant::now();
                match phase {
                    Phase::Head if activity.entered.load(Ordering::Acquire) => {
                        phase = Phase::Open;
                    }
                    Phase::Head => return Ended::HeaderTimeout,
                    Phase::Open => {
                        if activity.in_flight.load(Ordering::Acquire) == 0
                            && activity.idle_since() + d.idle <= now
                        {
                            if let Some(f) = on_idle.take() {
                                f();
                            }
                            graceful(conn.as_mut());
                            phase = Phase::Closing(now);
                        }
                    }
                    Phase::Closing(at) => {
                        if activity.in_flight.load(Ordering::Acquire) == 0
                            && at.max(activity.idle_since()) + d.header <= now
                        {
                            return Ended::CloseTimeout;
                        }
                    }
                }
            }
        }
    }
}
