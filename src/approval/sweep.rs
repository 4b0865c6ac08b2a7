//! The background sweep every node runs: expire pending approvals, pick up orphaned
//! `approved` ones, turn expired `executing` leases into `unknown`, and delete decided
//! records past `approval_retention`.

use super::{audit, list, load, transition, State};
use crate::app::App;
use crate::store::now_ms;
use std::sync::Arc;
use std::time::Duration;
use tracing::warn;

const EVERY: Duration = Duration::from_secs(1);

pub async fn run_sweeper(app: Arc<App>) {
    let mut tick = tokio::time::interval(EVERY);
    loop {
        tick.tick().await;
        if let Err(e) = sweep(&app, false).await {
            warn!(error = %e, "approval sweep failed");
        }
    }
}

/// At start: `executing` records this node held before it restarted cannot be
/// executing now — their outcome is `unknown` (never an automatic second call).
pub async fn recover_own_leases(app: &Arc<App>) -> Result<(), crate::error::Error> {
    sweep(app, true).await
}

async fn sweep(app: &Arc<App>, at_start: bool) -> Result<(), crate::error::Error> {
    let now = now_ms();
    let (node, retention) = {
        let live = app.live.load();
        (
            live.snap.node.clone(),
            live.snap.limits.approval_retention.as_millis() as u64,
        )
    };
    for a in list(app, None).await? {
        let stale_lease = a.lease.as_ref().is_some_and(|l| {
            l.until_ms <= now || (at_start && l.node == node && l.boot != app.boot_id)
        });
        match a.state {
            State::Expired
                if now >= a.expires_at_ms && a.reason.as_deref().is_none_or(|r| r != "expired") =>
            {
                // Listed as expired while still stored pending: `load` moves it and audits.
                let _ = load(app, &a.id).await?;
            }
            State::Approved if !at_start => {
                let (app2, id) = (app.clone(), a.id.clone());
                tokio::spawn(async move { super::replay(app2, id).await });
            }
            State::Executing if stale_lease => {
                if let Some(l) = load(app, &a.id).await? {
                    if l.a.state != State::Executing {
                        continue;
                    }
                    let mut n = l.a.clone();
                    n.state = State::Unknown;
                    n.reason = Some("outcome_unknown".into());
                    n.detail = Some("the node replaying this request stopped before storing the result; the upstream may or may not have acted".into());
                    n.lease = None;
                    if let Some(l2) = transition(app, &l, n, None).await? {
                        audit(app, &l2.a, "replay_unknown", None, l2.a.detail.as_deref()).await;
                    }
                }
            }
            s if s.is_final() && now.saturating_sub(a.updated_at_ms) > retention => {
                app.store.delete_approval(&a.id, &a.agent).await?;
            }
            _ => {}
        }
    }
    Ok(())
}
