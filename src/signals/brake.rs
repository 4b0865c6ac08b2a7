//! Raising a signal: the store's claim (one replica, once while it is open), the brake
//! through the existing switches and credentials, then the evidence — the signal
//! record, the audit record, the metric, the log line and the webhook.

use super::record::Signal;
use super::{Action, Crossing, Kind};
use crate::app::App;
use crate::audit::{Record, SignalEvidence};
use crate::error::Error;
use crate::store::{now_ms, Scope, SwitchChange, ToolSeen};
use tracing::{debug, warn};

/// Raises the signal `c` describes, unless it is already open (or, for `new_tool`, the
/// tool is not new to the agent or the agent is still learning). Never fails the request
/// that crossed it: a store that cannot be reached is logged and the crossing is
/// evaluated again on a later request.
pub async fn fire(app: &App, c: Crossing) -> Option<Signal> {
    let now = now_ms();
    if c.kind == Kind::NewTool {
        let tool = c.tool.as_deref()?;
        match app.store.tool_seen(&c.agent, tool, c.max_tools, now).await {
            Ok(ToolSeen::New { first_seen_ms })
                if now.saturating_sub(first_seen_ms) >= c.learn_for.as_millis() as u64 => {}
            Ok(_) => return None,
            Err(e) => {
                warn!(agent.id = %c.agent, error = %e, "signal new_tool: tool history unavailable");
                return None;
            }
        }
    }
    let id = uuid::Uuid::now_v7().to_string();
    match app.store.signal_claim(&c.agent, c.kind.as_str(), &id).await {
        Ok(None) => {}
        Ok(Some(open)) => {
            // Quiet while the open signal's brake holds; once it was lifted without an
            // acknowledgement, the agent is watched again.
            let lifted = brake_lifted(app, &c, &open).await;
            let reclaimed = lifted
                && app
                    .store
                    .signal_reclaim(&c.agent, c.kind.as_str(), &open, &id)
                    .await
                    .unwrap_or(false);
            if !reclaimed {
                debug!(agent.id = %c.agent, kind = c.kind.as_str(), signal = %open, "signal already open");
                if let (Kind::NewTool, Some(tool)) = (c.kind, &c.tool) {
                    // Now in the agent's history, so never new again: kept on the open
                    // signal instead of lost.
                    add_tool(app, &open, tool).await;
                }
                return None;
            }
        }
        Err(e) => {
            warn!(agent.id = %c.agent, kind = c.kind.as_str(), error = %e, "signal could not be claimed");
            return None;
        }
    }
    let brake = match apply(app, &c, &id).await {
        Ok(b) => b.to_string(),
        Err(e) => format!("failed: {}", e.reason()),
    };
    if brake == "applied" {
        // The brake stops the counting now; once it is lifted, the agent is watched at
        // once (not after the quiet period a crossing starts).
        app.signals.unhush(&c.agent, c.kind);
    }
    let live = app.live.load();
    let tenant = live
        .snap
        .agents
        .get(&c.agent)
        .and_then(|a| a.tenant.clone());
    let s = Signal {
        id,
        kind: c.kind.as_str().into(),
        agent: c.agent.clone(),
        credential: c.credential.clone(),
        tenant,
        request_id: c.request_id.clone(),
        tool: c.tool.clone(),
        more_tools: Vec::new(),
        window: c.window.map(|w| humantime::format_duration(w).to_string()),
        observed: c.observed,
        threshold: c.threshold,
        baseline: c.baseline,
        action: c.action.as_str().into(),
        brake,
        node: live.snap.node.clone(),
        at_ms: now,
        state: "open".into(),
        acked_by: None,
        ack_note: None,
        acked_at_ms: None,
    };
    drop(live);
    if let Err(e) = put(app, &s).await {
        warn!(signal = %s.id, error = %e, "signal record could not be stored");
    }
    metrics::counter!("portcullis_signals_total", "kind" => c.kind.as_str(), "action" => c.action.as_str()).increment(1);
    warn!(signal = %s.id, kind = %s.kind, agent.id = %s.agent, credential = s.credential.as_deref().unwrap_or(""), request_id = s.request_id.as_deref().unwrap_or(""), observed = s.observed, threshold = s.threshold, baseline = s.baseline, action = %s.action, brake = %s.brake, "signal raised");
    let rec = Record {
        event: "signal",
        request_id: s.request_id.clone(),
        agent: Some(s.agent.clone()),
        credential: s.credential.clone(),
        tenant: s.tenant.clone(),
        tool: s.tool.clone(),
        decision: Some(s.action.clone().into()),
        reason: Some(format!("signal:{}", s.kind).into()),
        policy_version: Some(app.live.load().snap.policy_version.to_string()),
        signal: Some(SignalEvidence {
            id: s.id.clone(),
            kind: s.kind.clone(),
            window: s.window.clone(),
            observed: s.observed,
            threshold: s.threshold,
            baseline: s.baseline,
            action: s.action.clone(),
            brake: s.brake.clone(),
        }),
        ..Default::default()
    };
    if app.audit.record_durable(rec.clone()).await.is_err() {
        // Queued to be written when the trail recovers.
        let _ = app.audit.record(rec);
    }
    crate::notify::signal(app, &s);
    Some(s)
}

/// Whether the open signal `open` applied a brake that no longer stops `c`'s agent (or,
/// for a revoked credential, `c`'s credential). An alert has no brake: it stays quiet
/// until acknowledged.
async fn brake_lifted(app: &App, c: &Crossing, open: &str) -> bool {
    let raw = match app.store.signal_get(open).await {
        Ok(Some(raw)) => raw,
        // No record: either its claimer is still applying the brake (it writes the
        // record after), or the record was trimmed away. Only an old claim leaves the
        // way free — a young one is another replica firing this very signal.
        Ok(None) => return claim_age_ms(open).is_none_or(|age| age >= RECORD_PENDING_MS),
        // The store cannot say: stay quiet rather than fire twice.
        Err(_) => return false,
    };
    let Ok(s) = serde_json::from_slice::<Signal>(&raw) else {
        return true;
    };
    if s.brake != "applied" {
        return false;
    }
    match Action::parse(&s.action) {
        Some(Action::PauseAgent) | Some(Action::DraftOnly) => match app.store.switches().await {
            Ok(sw) if s.action == "pause_agent" => !sw.paused_agents.contains(&c.agent),
            Ok(sw) => !sw.draft_only,
            Err(_) => false,
        },
        Some(Action::RevokeCredential) => s.credential != c.credential,
        _ => false,
    }
}

/// How long a claim may stand without its record before it counts as abandoned (the
/// claimer writes the record right after applying the brake, within milliseconds).
const RECORD_PENDING_MS: u64 = 30_000;

/// How long ago the open signal `id` was claimed (its id is a UUIDv7, minted just
/// before the claim); `None` for an id that carries no time.
fn claim_age_ms(id: &str) -> Option<u64> {
    let (secs, nanos) = uuid::Uuid::parse_str(id).ok()?.get_timestamp()?.to_unix();
    let at = secs.saturating_mul(1000) + u64::from(nanos) / 1_000_000;
    Some(now_ms().saturating_sub(at))
}

async fn add_tool(app: &App, open: &str, tool: &str) {
    let Ok(Some(raw)) = app.store.signal_get(open).await else {
        return;
    };
    let Ok(mut s) = serde_json::from_slice::<Signal>(&raw) else {
        return;
    };
    if s.more_tools.len() < super::record::MORE_TOOLS && !s.more_tools.iter().any(|t| t == tool) {
        s.more_tools.push(tool.to_string());
        if let Err(e) = put(app, &s).await {
            warn!(signal = %s.id, error = %e, "signal record could not be updated");
        }
    }
}

pub async fn put(app: &App, s: &Signal) -> Result<(), Error> {
    let json = serde_json::to_vec(s).map_err(|e| Error::Internal(e.to_string()))?;
    app.store.signal_put(&s.id, s.at_ms, &json).await
}

/// Applies the crossing's brake through the switches and credentials every replica
/// already obeys; records it as that switch's change, made by `signal:<kind>`.
async fn apply(app: &App, c: &Crossing, id: &str) -> Result<&'static str, Error> {
    let by = format!("signal:{}", c.kind.as_str());
    let (event, change) = match c.action {
        Action::Alert => return Ok("none"),
        Action::PauseAgent => ("pause", SwitchChange::Pause(Scope::Agent, c.agent.clone())),
        Action::DraftOnly => ("mode", SwitchChange::DraftOnly(true)),
        Action::RevokeCredential => {
            let cred = c
                .credential
                .as_deref()
                .ok_or_else(|| Error::Internal("no credential to revoke".into()))?;
            if !app.store.revoke_token(cred).await? {
                return Err(Error::NotFound);
            }
            app.creds.invalidate(cred);
            record(
                app,
                "token_revoked",
                &by,
                c,
                Some(cred),
                format!("signal {id}"),
            )
            .await;
            return Ok("applied");
        }
    };
    app.store.apply(&change).await?;
    app.switches.invalidate();
    let what = match c.action {
        Action::DraftOnly => "draft_only=true".to_string(),
        _ => format!("agent {}", c.agent),
    };
    record(app, event, &by, c, None, format!("{what} (signal {id})")).await;
    Ok("applied")
}

async fn record(
    app: &App,
    event: &'static str,
    by: &str,
    c: &Crossing,
    cred: Option<&str>,
    comment: String,
) {
    let rec = Record {
        event,
        operator: Some(by.to_string()),
        agent: Some(c.agent.clone()),
        credential: cred.map(str::to_string),
        reason: Some(by.to_string().into()),
        decision: Some("ok".into()),
        comment: Some(comment),
        policy_version: Some(app.live.load().snap.policy_version.to_string()),
        ..Default::default()
    };
    if app.audit.record_durable(rec.clone()).await.is_err() {
        let _ = app.audit.record(rec);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_is_young_until_its_record_had_time_to_be_written() {
        let fresh = uuid::Uuid::now_v7().to_string();
        assert!(claim_age_ms(&fresh).is_some_and(|a| a < RECORD_PENDING_MS));
        let then = now_ms() - 60_000;
        let old = uuid::Uuid::new_v7(uuid::Timestamp::from_unix(
            uuid::NoContext,
            then / 1000,
            (then % 1000) as u32 * 1_000_000,
        ))
        .to_string();
        assert!(claim_age_ms(&old).is_some_and(|a| a >= RECORD_PENDING_MS));
        assert_eq!(claim_age_ms("not-a-uuid"), None);
        assert_eq!(claim_age_ms(&uuid::Uuid::nil().to_string()), None);
    }
}
