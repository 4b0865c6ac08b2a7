//! Reading and acknowledging signals: shared by the admin API, the CLI (through it) and
//! the operator page. Acknowledging releases the signal (the same agent and kind may
//! fire again) and starts its count afresh; it does not lift a brake (`resume` does).

use super::record::Signal;
use super::Kind;
use crate::app::App;
use crate::audit::Record;
use crate::error::Error;
use crate::store::now_ms;

/// Signals shown at most.
pub const LIST_LIMIT: usize = 200;

/// The newest signals, newest first; `open`: only those not yet acknowledged.
pub async fn list(app: &App, open: Option<bool>) -> Result<Vec<Signal>, Error> {
    let raw = app.store.signal_list(LIST_LIMIT).await?;
    Ok(raw
        .iter()
        .filter_map(|b| serde_json::from_slice::<Signal>(b).ok())
        .filter(|s| open.is_none_or(|o| s.is_open() == o))
        .collect())
}

pub async fn get(app: &App, id: &str) -> Result<Signal, Error> {
    let b = app.store.signal_get(id).await?.ok_or(Error::NotFound)?;
    serde_json::from_slice(&b).map_err(|e| Error::Internal(format!("signal record: {e}")))
}

/// Acknowledges an open signal for `op`, with an optional note.
pub async fn ack(app: &App, id: &str, op: &str, note: Option<String>) -> Result<Signal, Error> {
    let mut s = get(app, id).await?;
    if !s.is_open() {
        return Err(Error::Conflict(format!(
            "signal {id} was already acknowledged by {}",
            s.acked_by.as_deref().unwrap_or("someone")
        )));
    }
    if note.as_ref().is_some_and(|n| n.len() > 2000) {
        return Err(Error::BadRequest {
            reason: "note_too_long",
            detail: "a note is at most 2000 bytes".into(),
        });
    }
    s.state = "acknowledged".into();
    s.acked_by = Some(op.to_string());
    s.ack_note = note.clone();
    s.acked_at_ms = Some(now_ms());
    super::brake::put(app, &s).await?;
    app.store.signal_release(&s.agent, &s.kind, &s.id).await?;
    if let Some(k) = Kind::parse(&s.kind) {
        app.signals.reset(&s.agent, k);
    }
    tracing::info!(operator = %op, signal = %s.id, kind = %s.kind, agent.id = %s.agent, "signal acknowledged");
    let rec = Record {
        event: "signal_ack",
        operator: Some(op.to_string()),
        agent: Some(s.agent.clone()),
        credential: s.credential.clone(),
        reason: Some(format!("signal:{}", s.kind).into()),
        decision: Some("ok".into()),
        comment: Some(match &note {
            Some(n) => format!("signal {}: {n}", s.id),
            None => format!("signal {}", s.id),
        }),
        policy_version: Some(app.live.load().snap.policy_version.to_string()),
        ..Default::default()
    };
    app.audit.record_durable(rec).await?;
    Ok(s)
}

/// `agent`'s baselines as the store holds them (per window; null while learning), with
/// the thresholds they make now: what an operator reads to tune a spike signal.
pub async fn baselines(app: &App, agent: &str) -> Result<serde_json::Value, Error> {
    let live = app.live.load_full();
    if !live.snap.agents.contains_key(agent) {
        return Err(Error::NotFound);
    }
    let rules = live.snap.signals.rules(agent);
    let mut out = serde_json::json!({ "agent": agent });
    for k in [Kind::RateSpike, Kind::VolumeSpike] {
        let r = rules.get(k);
        let b = app
            .store
            .baseline(agent, k.as_str(), now_ms(), 1, 0, None)
            .await?;
        out[k.as_str()] = serde_json::json!({
            "enabled": rules.on(k).is_some(),
            "window": humantime::format_duration(r.window).to_string(),
            "baseline": b.map(|b| b.value),
            "baseline_at": b.map(|b| super::record::rfc3339(b.at_ms)),
            "threshold": b.map(|b| super::spike_threshold(r, b.value)),
        });
    }
    Ok(out)
}
