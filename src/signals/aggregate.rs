//! The flusher: every `timers.signals_flush` each replica takes its unflushed counts to
//! the store (redis: atomic per-window totals across replicas), moves each agent's
//! baseline once per window, and raises what only the totals show — a burst split
//! across replicas, a volume spike (bytes are counted when a response ends).

use super::window::{Tracks, BUCKETS};
use super::{brake, config::Rules, spike_threshold, Crossing, Kind, QUIET};
use crate::app::App;
use crate::error::Error;
use crate::store::now_ms;
use std::sync::{Arc, Weak};
use std::time::Instant;
use tracing::warn;

/// Runs until the app is gone.
pub async fn run(app: Weak<App>) {
    loop {
        let every = match app.upgrade() {
            Some(a) => a.live.load().snap.timers.signals_flush,
            None => return,
        };
        tokio::time::sleep(every).await;
        let Some(app) = app.upgrade() else { return };
        flush(&app).await;
    }
}

/// One pass over every agent with counters.
pub async fn flush(app: &App) {
    let live = app.live.load_full();
    for (agent, t) in app.signals.all().iter() {
        let rules = live.snap.signals.rules(agent).clone();
        if !rules.enabled {
            continue;
        }
        if let Err(e) = flush_agent(app, &rules, agent, &t.clone()).await {
            warn!(agent.id = %agent, error = %e, "signal counts could not be flushed");
        }
    }
}

/// The deltas one flush takes, and the window each is counted over.
struct Taken {
    windows: Vec<(Kind, u64, u64, u64)>,
    run: Option<(bool, u64)>,
}

async fn flush_agent(
    app: &App,
    rules: &Rules,
    agent: &str,
    t: &Arc<super::AgentTracks>,
) -> Result<(), Error> {
    let shared = app.store.shared();
    let now = now_ms();
    if shared {
        let taken = take(rules, &mut t.lock());
        for (kind, bucket_ms, delta, remote) in taken.windows {
            if delta == 0 && remote == 0 {
                continue;
            }
            let key = format!("{}:{agent}", kind.as_str());
            match app
                .store
                .window_add(&key, bucket_ms, BUCKETS, now, delta)
                .await
            {
                Ok(total) => {
                    let mut g = t.lock();
                    let w = window_of(&mut g, kind);
                    w.remote = total;
                }
                Err(e) => {
                    window_of(&mut t.lock(), kind).unflushed += delta;
                    return Err(e);
                }
            }
        }
        if let Some((reset, delta)) = taken.run {
            let key = format!("{}:{agent}", Kind::UpstreamFailures.as_str());
            match app.store.run_add(&key, reset, delta).await {
                Ok(total) => {
                    let mut g = t.lock();
                    g.failures.remote = total;
                }
                Err(e) => {
                    let mut g = t.lock();
                    g.failures.unflushed += delta;
                    g.failures.reset |= reset;
                    return Err(e);
                }
            }
        }
    }
    for (i, k) in [Kind::RateSpike, Kind::VolumeSpike].into_iter().enumerate() {
        let Some(r) = rules.on(k) else { continue };
        let obs = {
            let mut g = t.lock();
            let at = Instant::now();
            match g.baseline_due[i] {
                // Right after this replica first saw the agent: the baseline so far
                // (the window under way is partial, not observed).
                None => {
                    g.baseline_due[i] = Some(at + r.window);
                    None
                }
                Some(d) if at >= d => {
                    g.baseline_due[i] = Some(at + r.window);
                    Some(match k {
                        Kind::RateSpike => g.calls.estimate(now, shared),
                        _ => g.bytes.estimate(now, shared),
                    } as f64)
                }
                Some(_) => continue,
            }
        };
        let b = app
            .store
            .baseline(
                agent,
                k.as_str(),
                now,
                r.half_life.as_millis() as u64,
                // A little under the window: flush ticks drift.
                (r.window.as_millis() as u64) * 9 / 10,
                obs,
            )
            .await?;
        t.lock().baseline[i] = b.map(|b| b.value);
    }
    let crossed = evaluate(rules, shared, agent, &mut t.lock(), now);
    for c in crossed {
        brake::fire(app, c).await;
    }
    Ok(())
}

fn window_of(g: &mut Tracks, k: Kind) -> &mut super::window::Window {
    match k {
        Kind::RefusalBurst => &mut g.refusals,
        Kind::RateSpike => &mut g.calls,
        Kind::VolumeSpike => &mut g.bytes,
        _ => &mut g.denials,
    }
}

fn take(rules: &Rules, g: &mut Tracks) -> Taken {
    let mut windows = Vec::new();
    for k in [
        Kind::RefusalBurst,
        Kind::RateSpike,
        Kind::VolumeSpike,
        Kind::ApprovalDenials,
    ] {
        if rules.on(k).is_none() {
            continue;
        }
        let w = window_of(g, k);
        if w.bucket_ms() == 0 {
            continue;
        }
        windows.push((k, w.bucket_ms(), std::mem::take(&mut w.unflushed), w.remote));
    }
    let f = &mut g.failures;
    let run = (rules.on(Kind::UpstreamFailures).is_some()
        && (f.reset || f.unflushed > 0 || f.remote > 0))
        .then(|| {
            let r = (f.reset, f.unflushed);
            f.reset = false;
            f.unflushed = 0;
            r
        });
    Taken { windows, run }
}

/// What the totals cross now (after a flush); each kind at most once per quiet period.
fn evaluate(rules: &Rules, shared: bool, agent: &str, g: &mut Tracks, now: u64) -> Vec<Crossing> {
    let at = Instant::now();
    let mut out = Vec::new();
    let evidence = |g: &Tracks, mut c: Crossing| {
        c.request_id = Some(g.last_request()).filter(|s| !s.is_empty());
        c.credential = Some(g.last_credential.clone()).filter(|s| !s.is_empty());
        c
    };
    let counted = [
        (Kind::RefusalBurst, true),
        (Kind::ApprovalDenials, true),
        (Kind::UpstreamFailures, false),
    ];
    for (k, windowed) in counted {
        let Some(r) = rules.on(k) else { continue };
        // One node: the request path saw every event and raised what crossed.
        if !shared || g.quiet(k, at) {
            continue;
        }
        let n = if windowed {
            window_of(g, k).estimate(now, shared)
        } else {
            g.failures.estimate(shared)
        };
        if n >= r.threshold {
            g.hush(k, QUIET);
            let mut c = Crossing::new(k, r, agent, n as f64, r.threshold as f64);
            c.window = windowed.then_some(r.window);
            out.push(evidence(g, c));
        }
    }
    for (i, k) in [Kind::RateSpike, Kind::VolumeSpike].into_iter().enumerate() {
        let Some(r) = rules.on(k) else { continue };
        let Some(base) = g.baseline[i] else { continue };
        if g.quiet(k, at) || (k == Kind::RateSpike && !shared) {
            continue;
        }
        let n = match k {
            Kind::RateSpike => g.calls.estimate(now, shared),
            _ => g.bytes.estimate(now, shared),
        } as f64;
        let thr = spike_threshold(r, base);
        if n >= thr {
            g.hush(k, QUIET);
            let mut c = Crossing::new(k, r, agent, n, thr);
            c.window = Some(r.window);
            c.baseline = Some(base);
            out.push(evidence(g, c));
        }
    }
    out
}
