//! `notifications/tools/list_changed` for connected agents: the handshake era's GET
//! stream and the 2026-07-28 `subscriptions/listen` stream. Each stream re-reads the
//! agent's listing when the store announces a change (switches, credentials) and on
//! the config watcher's cadence (reloads), and tells the client when it differs. The
//! credential is re-checked every time; a revoked one ends the stream.

use super::tools;
use super::transport::sse_event;
use crate::app::App;
use crate::body::{Body, BoxError};
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Response};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A comment line at least this often keeps intermediaries from closing an idle stream.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// Which wire the stream speaks.
pub enum Mode {
    Handshake,
    /// `subscriptions/listen`, with the id of the request that opened it.
    Modern {
        subscription: Value,
    },
}

/// What a listing was computed from: the policy version and the switches in force.
type Inputs = (Arc<str>, Arc<crate::policy::Switches>);

/// The agent's listing fingerprint, recomputed only when the policy version or the
/// switches differ from `prev` (the switchboard hands out a new `Arc` when it re-reads
/// them); `None` when the credential no longer authenticates (revoked, expired, its
/// agent gone).
async fn current(
    app: &App,
    auth: &HeaderMap,
    prev: Option<(&Inputs, &str)>,
) -> Option<(Inputs, String)> {
    let live = app.live.load_full();
    let snap = &live.snap;
    let who = app
        .creds
        .authenticate(&app.store, snap.store.pepper.as_deref(), &snap.agents, auth)
        .await
        .ok()?;
    let switches = app.switches.current(&app.store).await.ok()?;
    if let Some(((v, sw), fp)) = prev {
        if *v == snap.policy_version && Arc::ptr_eq(sw, &switches) {
            return Some(((v.clone(), sw.clone()), fp.to_string()));
        }
    }
    let fp = tools::fingerprint(&tools::listed(
        snap,
        &who.agent,
        &who.token.narrowing,
        &switches,
        false,
    ));
    Some(((snap.policy_version.clone(), switches), fp))
}

fn changed(mode: &Mode) -> Value {
    match mode {
        Mode::Handshake => json!({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"}),
        Mode::Modern { subscription } => {
            json!({"jsonrpc": "2.0", "method": "notifications/tools/list_changed",
            "params": {"_meta": {"io.modelcontextprotocol/subscriptionId": subscription}}})
        }
    }
}

/// Opens the stream: an SSE response whose events a task writes until the client goes,
/// the credential stops authenticating, or the proxy drains.
pub fn open(app: Arc<App>, caller: &HeaderMap, mode: Mode) -> Response<Body> {
    let mut auth = HeaderMap::new();
    if let Some(v) = caller.get(header::AUTHORIZATION) {
        auth.insert(header::AUTHORIZATION, v.clone());
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(8);
    tokio::spawn(async move {
        let mut events = app.store.events();
        let Some((mut inputs, mut seen)) = current(&app, &auth, None).await else {
            return;
        };
        // The listing the client is told about from here on is the one read above:
        // the stream opens (acknowledged, or a comment line) only after it.
        if let Mode::Modern { subscription } = &mode {
            let ack = json!({"jsonrpc": "2.0", "method": "notifications/subscriptions/acknowledged",
                "params": {"notifications": {"toolsListChanged": true},
                           "_meta": {"io.modelcontextprotocol/subscriptionId": subscription}}});
            if tx.send(Bytes::from(sse_event(&ack))).await.is_err() {
                return;
            }
        } else if tx
            .send(Bytes::from_static(b": stream open\n\n"))
            .await
            .is_err()
        {
            return;
        }
        let mut last = Instant::now();
        loop {
            let every = app.live.load().snap.timers.watch_every;
            // A store notice wakes the stream early; the cadence covers reloads.
            tokio::select! {
                r = events.recv() => {
                    if matches!(r, Err(tokio::sync::broadcast::error::RecvError::Closed)) {
                        return;
                    }
                }
                _ = tokio::time::sleep(every) => {}
                _ = tx.closed() => return,
            }
            if app.is_draining() {
                return;
            }
            let Some((now_inputs, now)) = current(&app, &auth, Some((&inputs, &seen))).await else {
                return;
            };
            inputs = now_inputs;
            let out = if now != seen {
                seen = now;
                Some(Bytes::from(sse_event(&changed(&mode))))
            } else if last.elapsed() >= KEEPALIVE {
                Some(Bytes::from_static(b": keepalive\n\n"))
            } else {
                None
            };
            if let Some(b) = out {
                if tx.send(b).await.is_err() {
                    return;
                }
                last = Instant::now();
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, BoxError>(Frame::data(b)), rx))
    });
    let mut r = Response::new(StreamBody::new(stream).boxed());
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-transform"),
    );
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    h.insert("portcullis-decision", HeaderValue::from_static("allow"));
    r
}
