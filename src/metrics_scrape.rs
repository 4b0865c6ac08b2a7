//! Gauges computed when `/metrics` is scraped, so alerts need no extra exporter:
//! `portcullis_ready` (what `/readyz` would answer) and the pending approvals in the
//! shared store with the age of the oldest one; the log lines dropped by a full log
//! queue.

use crate::app::App;
use crate::approval::{self, State};
use crate::store::now_ms;

/// Sets the scrape-time gauges. A store that cannot be read leaves the approval gauges
/// as they were and reports not ready.
pub async fn refresh(app: &App) {
    let ready = !app.is_draining() && app.audit.ready() && app.store.ping().await.is_ok();
    metrics::gauge!("portcullis_ready").set(if ready { 1.0 } else { 0.0 });
    metrics::counter!("portcullis_log_lines_dropped_total")
        .absolute(crate::logging::dropped_lines());
    if let Ok(pending) = approval::list(app, Some(State::Pending)).await {
        let now = now_ms();
        let oldest_ms = pending
            .iter()
            .map(|a| now.saturating_sub(a.created_at_ms))
            .max()
            .unwrap_or(0);
        metrics::gauge!("portcullis_approvals_pending").set(pending.len() as f64);
        metrics::gauge!("portcullis_approval_oldest_pending_seconds")
            .set(oldest_ms as f64 / 1000.0);
    }
}
