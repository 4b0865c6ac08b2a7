//! Listeners: bind, optional inbound TLS (rustls), HTTP/1.1 + HTTP/2 via hyper-util's
//! auto builder, per-connection deadlines and caps (`conn_watch`, `conn_limits`), and
//! graceful shutdown with a bounded drain.

use crate::admin;
use crate::app::App;
use crate::config::{Snapshot, TlsFiles};
use crate::conn_limits::{self, Caps, Listener};
use crate::conn_watch::{self, Activity, Answer, Deadlines, Ended};
use crate::error::Error;
use crate::proxy::{self, Conn};
use hyper::rt::{Read, Write};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

/// How long in-flight requests get to finish after SIGTERM/SIGINT.
pub const DRAIN: Duration = Duration::from_secs(30);

pub fn tls_acceptor(files: &TlsFiles) -> Result<TlsAcceptor, Error> {
    let fail = |what: &str, e: &dyn std::fmt::Display| Error::Internal(format!("tls {what}: {e}"));
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| fail(&files.cert.display().to_string(), &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(&files.cert.display().to_string(), &e))?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| fail(&files.key.display().to_string(), &e))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| fail("versions", &e))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| fail("certificate", &e))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(cfg)))
}

fn builder(snap: &Snapshot) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(snap.limits.header_timeout)
        .max_buf_size(snap.limits.max_header_bytes.max(8192) as usize)
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(100)
        .max_header_list_size(snap.limits.max_header_bytes as u32)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    b
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Proxy,
    Admin,
}

/// Runs both listeners until a shutdown signal, then drains.
///
/// The agent port is served by `workers` threads (default: the CPUs this process may
/// run on), each with its own single-threaded runtime, all accepting from the one
/// listening socket (the least busy thread tends to win the accept). A request then
/// lives on one thread from accept to answer — no work-stealing hand-offs, no
/// cross-thread wake-ups; on one CPU that measured 35 → 29 µs of CPU per request
/// against tokio's multi-threaded scheduler (bench/README.md). With one worker the
/// agent port shares the main runtime (admin port, store feeds, sweeper) instead.
pub async fn serve(app: Arc<App>, workers: Option<usize>) -> Result<(), Error> {
    let bound = bind(&app.live.load().snap).await?;
    serve_bound(app, bound, workers).await
}

/// Both listeners, bound: `serve` binds them before the store and the audit trail are
/// opened, so a taken port fails the start before anything is created on disk.
pub struct Bound {
    proxy: TcpListener,
    admin: TcpListener,
}

impl Bound {
    /// The agent-facing address (the real port when the config says port 0).
    pub fn proxy_addr(&self) -> Result<SocketAddr, Error> {
        self.proxy
            .local_addr()
            .map_err(|e| Error::Internal(format!("proxy listener: {e}")))
    }
    /// The operator-facing address.
    pub fn admin_addr(&self) -> Result<SocketAddr, Error> {
        self.admin
            .local_addr()
            .map_err(|e| Error::Internal(format!("admin listener: {e}")))
    }
}

/// Binds `listen` and `admin_listen`.
pub async fn bind(snap: &Snapshot) -> Result<Bound, Error> {
    bind_addrs(snap.listen, snap.admin_listen).await
}

/// Binds the agent-facing and the operator-facing address.
pub async fn bind_addrs(proxy: SocketAddr, admin: SocketAddr) -> Result<Bound, Error> {
    let bind = |addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|e| Error::Internal(format!("cannot listen on {addr}: {e}")))
    };
    Ok(Bound {
        proxy: bind(proxy).await?,
        admin: bind(admin).await?,
    })
}

/// [`serve`] on listeners bound by [`bind`].
pub async fn serve_bound(app: Arc<App>, bound: Bound, workers: Option<usize>) -> Result<(), Error> {
    serve_until(app, bound, workers, shutdown_signal()).await
}

/// [`serve_bound`] until `shutdown` completes (see [`shutdown_signal`]), then drains.
pub async fn serve_until(
    app: Arc<App>,
    bound: Bound,
    workers: Option<usize>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), Error> {
    let live = app.live.load_full();
    let snap = &live.snap;
    conn_limits::raise_nofile(snap.limits.max_connections);
    let internal = |e: std::io::Error| Error::Internal(format!("proxy workers: {e}"));
    let Bound {
        proxy: proxy_l,
        admin: admin_l,
    } = bound;
    let proxy_tls = snap.tls.as_ref().map(tls_acceptor).transpose()?;
    let admin_tls = snap.admin_tls.as_ref().map(tls_acceptor).transpose()?;
    let workers = workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    // `true` stops the accept loops and asks every connection to close gracefully;
    // each connection holds a receiver, so the drain is over when all are dropped.
    let (stop_tx, stop_rx) = watch::channel(false);
    // Worker runtimes outlive their accept loops until the drain is over: the
    // connections being drained are tasks on them.
    let (drained_tx, drained_rx) = watch::channel(false);
    // Separate counts: a full agent port never refuses the operators.
    let agents = Listener::new("agent");
    let operators = Listener::new("admin");
    info!(
        proxy = %proxy_l.local_addr().map_err(internal)?,
        admin = %admin_l.local_addr().map_err(internal)?,
        workers,
        "listening"
    );
    let reloader = tokio::spawn(reload_triggers(app.clone()));
    let mut accepting = Vec::with_capacity(workers);
    let mut threads = Vec::new();
    if workers == 1 {
        accepting.push(tokio::spawn(accept_loop(
            app.clone(),
            proxy_l,
            proxy_tls,
            Side::Proxy,
            stop_rx.clone(),
            agents.clone(),
        )));
    } else {
        let shared = proxy_l.into_std().map_err(internal)?;
        for i in 0..workers {
            // Built here, so a runtime that cannot start fails `serve`, not a thread.
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(internal)?;
            let listener = shared.try_clone().map_err(internal)?;
            let (app, tls, stop, counts) = (
                app.clone(),
                proxy_tls.clone(),
                stop_rx.clone(),
                agents.clone(),
            );
            let (accepted_tx, accepted_rx) = tokio::sync::oneshot::channel::<()>();
            let mut drained = drained_rx.clone();
            let t = std::thread::Builder::new()
                .name(format!("proxy-{i}"))
                .spawn(move || {
                    rt.block_on(async move {
                        match TcpListener::from_std(listener) {
                            Ok(l) => accept_loop(app, l, tls, Side::Proxy, stop, counts).await,
                            Err(e) => warn!(error = %e, "proxy worker cannot accept"),
                        }
                        let _ = accepted_tx.send(());
                        let _ = drained.wait_for(|d| *d).await;
                    })
                })
                .map_err(internal)?;
            threads.push(t);
            accepting.push(tokio::spawn(async move {
                let _ = accepted_rx.await;
            }));
        }
    }
    accepting.push(tokio::spawn(accept_loop(
        app.clone(),
        admin_l,
        admin_tls,
        Side::Admin,
        stop_rx,
        operators,
    )));
    shutdown.await;
    info!("shutting down: no new connections, draining in-flight requests");
    app.draining.store(true, Ordering::Relaxed);
    let _ = stop_tx.send(true);
    reloader.abort();
    for a in accepting {
        let _ = a.await;
    }
    match tokio::time::timeout(DRAIN, stop_tx.closed()).await {
        Ok(()) => info!("drained"),
        Err(_) => warn!(
            after_s = DRAIN.as_secs(),
            "drain bound reached; closing remaining connections"
        ),
    }
    let _ = drained_tx.send(true);
    for t in threads {
        let _ = tokio::task::spawn_blocking(move || t.join()).await;
    }
    // Records of requests already answered must not be lost with the process.
    app.flush_refusals(true);
    app.audit.flush().await;
    Ok(())
}

/// SIGHUP and a change to the config file or to a spec it imports (`openapi:`) reload;
/// a bad file is refused and logged.
async fn reload_triggers(app: Arc<App>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mtime = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let stamps = |app: &App| {
        let live = app.live.load();
        std::iter::once(app.config_path.as_path())
            .chain(live.snap.openapi.files())
            .map(|p| (p.to_path_buf(), mtime(p)))
            .collect::<Vec<_>>()
    };
    let mut seen = stamps(&app);
    let mut hup = signal(SignalKind::hangup()).ok();
    loop {
        let every = app.live.load().snap.timers.watch_every;
        let by_signal = tokio::select! {
            _ = async { match hup.as_mut() { Some(h) => { h.recv().await; } None => std::future::pending::<()>().await } } => true,
            _ = tokio::time::sleep(every) => false,
        };
        let now = stamps(&app);
        if by_signal || now != seen {
            seen = now;
            let _ = app
                .reload(if by_signal {
                    "signal:SIGHUP"
                } else {
                    "file-change"
                })
                .await;
            // A reload may name other spec files: watch those of the config in force.
            let after = stamps(&app);
            if !after.iter().map(|f| &f.0).eq(seen.iter().map(|f| &f.0)) {
                seen = after;
            }
        }
    }
}

/// SIGTERM or SIGINT. The handlers are installed when this is called, not when it is
/// first polled: a signal that arrives in between ends the wait instead of the process.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, Signal, SignalKind};
    let term = signal(SignalKind::terminate()).ok();
    let int = signal(SignalKind::interrupt()).ok();
    async fn wait(s: Option<Signal>) {
        match s {
            Some(mut s) => {
                s.recv().await;
            }
            None => std::future::pending::<()>().await,
        }
    }
    async move {
        tokio::select! {
            _ = wait(term) => {},
            _ = wait(int) => {},
        }
    }
}

async fn accept_loop(
    app: Arc<App>,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    side: Side,
    mut stop: watch::Receiver<bool>,
    counts: Arc<Listener>,
) {
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let born = tokio::time::Instant::now();
        let live = app.live.load_full();
        let limits = &live.snap.limits;
        let caps = (side == Side::Proxy).then_some(Caps {
            max: limits.max_connections as usize,
            per_ip: limits.max_connections_per_ip as usize,
        });
        // Before any read: a refused connection costs an accept and a close.
        let slot = match counts.admit(peer.ip(), caps) {
            Ok(s) => s,
            Err(why) => {
                debug!(peer = %peer.ip(), reason = why.as_str(), "connection refused");
                drop(stream);
                continue;
            }
        };
        let deadlines = Deadlines {
            header: limits.header_timeout,
            idle: limits.idle_timeout,
        };
        let b = builder(&live.snap);
        drop(live);
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let tls = tls.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let conn = Conn {
                peer,
                https: tls.is_some(),
            };
            let activity = Activity::new(born);
            // The first bytes, peeked, and the TLS handshake count against the same
            // deadline as the request head.
            let at = born + deadlines.header;
            let ended = match tls {
                None => match tokio::time::timeout_at(at, sniff(&stream, stop.clone())).await {
                    Ok(Some(Ok(h2))) => {
                        let b = if h2 { b } else { b.http1_only() };
                        Box::pin(serve_io(
                            app,
                            side,
                            conn,
                            b,
                            TokioIo::new(stream),
                            &activity,
                            deadlines,
                            stop,
                        ))
                        .await
                    }
                    // An error, or a shutdown before the first byte: nothing to drain.
                    Ok(Some(Err(_)) | None) => Ended::Closed,
                    Err(_) => Ended::HeaderTimeout,
                },
                // Boxed: the handshake's state (about 1.3 KB) is not carried by every
                // plaintext connection's task.
                Some(acc) => {
                    Box::pin(serve_tls(
                        acc, stream, at, app, side, conn, b, &activity, deadlines, stop,
                    ))
                    .await
                }
            };
            if ended != Ended::Closed {
                count_close(ended.as_str());
            }
        });
    }
}

/// The TLS handshake (bounded by `at`, the request head's deadline), then the
/// connection. A client that agreed on HTTP/1.1 speaks HTTP/1.1; one that agreed on h2
/// or on nothing is read by its first bytes.
#[allow(clippy::too_many_arguments)]
async fn serve_tls(
    acc: TlsAcceptor,
    stream: tokio::net::TcpStream,
    at: tokio::time::Instant,
    app: Arc<App>,
    side: Side,
    conn: Conn,
    b: auto::Builder<TokioExecutor>,
    activity: &Arc<Activity>,
    deadlines: Deadlines,
    stop: watch::Receiver<bool>,
) -> Ended {
    match tokio::time::timeout_at(at, acc.accept(stream)).await {
        Ok(Ok(s)) => {
            let h1 = s.get_ref().1.alpn_protocol() == Some(b"http/1.1");
            let b = if h1 { b.http1_only() } else { b };
            Box::pin(serve_io(
                app,
                side,
                conn,
                b,
                TokioIo::new(s),
                activity,
                deadlines,
                stop,
            ))
            .await
        }
        Ok(Err(_)) => Ended::Closed,
        Err(_) => Ended::HeaderTimeout,
    }
}

/// Whether a plaintext connection's first bytes can be the HTTP/2 preface (prior
/// knowledge), peeked, not consumed. Anything else is served as HTTP/1 directly: the
/// version sniffing of hyper-util's auto builder hands HTTP/1 its first bytes as a
/// separate 24-byte read, and hyper's read buffer then doubles to 16 KiB for the
/// connection's life (a heap profile of 1,000 idle keep-alive connections). Bytes that
/// are a prefix of the preface but not all of it go to the auto builder, which waits
/// for the rest; so does a connection closed before sending anything.
async fn can_be_h2(stream: &tokio::net::TcpStream) -> std::io::Result<bool> {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut buf = [0u8; PREFACE.len()];
    let n = stream.peek(&mut buf).await?;
    Ok(buf[..n] == PREFACE[..n])
}

/// [`can_be_h2`], or `None` once a shutdown starts: a connection that has sent nothing
/// yet is closed at once rather than holding the drain up to its head deadline.
async fn sniff(
    stream: &tokio::net::TcpStream,
    mut stop: watch::Receiver<bool>,
) -> Option<std::io::Result<bool>> {
    tokio::select! {
        r = can_be_h2(stream) => Some(r),
        _ = stop.wait_for(|s| *s) => None,
    }
}

fn count_close(reason: &'static str) {
    metrics::counter!("portcullis_connections_closed_total", "reason" => reason).increment(1);
}

/// Serves one accepted connection (plain or TLS) under its deadlines.
#[allow(clippy::too_many_arguments)]
async fn serve_io<I>(
    app: Arc<App>,
    side: Side,
    conn: Conn,
    b: auto::Builder<TokioExecutor>,
    io: I,
    activity: &Arc<Activity>,
    deadlines: Deadlines,
    stop: watch::Receiver<bool>,
) -> Ended
where
    I: Read + Write + Unpin + Send + 'static,
{
    let tracker = activity.clone();
    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let app = app.clone();
        // The head is parsed: this request is in flight until its response is sent.
        let in_flight = tracker.enter();
        // Each handler's future is boxed on its own: hyper keeps a connection's request
        // future in one slot for the connection's life, so an unboxed one (about 10 KiB)
        // would stay resident on every idle keep-alive connection after its first
        // request; and one box around a block awaiting any of the three would be as
        // large as the largest of them, copied into the box and again into the block on
        // every request (about 25 KB of memcpy per request, measured with callgrind).
        let handler: std::pin::Pin<
            Box<dyn std::future::Future<Output = http::Response<crate::body::Body>> + Send>,
        > = match side {
            // The MCP endpoint is matched before routes, like `/_portcullis/`.
            Side::Proxy if crate::mcp::matches(&app, req.uri().path()) => {
                Box::pin(crate::mcp::handle(app, conn, req))
            }
            Side::Proxy => Box::pin(proxy::handle(app, conn, req)),
            Side::Admin => Box::pin(admin::handle(app, conn, req)),
        };
        Answer::new(handler, in_flight)
    });
    let c = std::pin::pin!(b.serve_connection(io, svc).into_owned());
    drop(b);
    conn_watch::drive(
        c,
        |c| c.graceful_shutdown(),
        activity,
        deadlines,
        stop,
        || count_close("idle_timeout"),
    )
    .await
}
