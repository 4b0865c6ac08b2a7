//! The background sweep every node runs: expire pending approvals (through the expiry
//! index), pick up orphaned `approved` ones, turn expired `executing` leases into
//! `unknown` and abandoned `parking` records into `failed` (`unaudited`) (each `timers.sweep_every`,
//! through the per-state index), and delete decided records past `approval_retention`
//! (each minute, through the decided index).

use super::{audit, in_state, load, transition, State};
use crate::app::App;
use crate::error::Error;
use crate::store::{now_ms, TimeIndex};
use std::sync::Arc;
use std::time::Duration;
use tracing::warn;

/// Retention runs this often, or every `approval_retention` when that is shorter.
const RETENTION_EVERY: Duration = Duration::from_secs(60);

pub async fn run_sweeper(app: Arc<App>) {
    let mut last_retention = tokio::time::Instant::now();
    loop {
        // `timers.sweep_every`, re-read each tick so a reload takes effect.
        tokio::time::sleep(app.live.load().snap.timers.sweep_every).await;
        if let Err(e) = sweep(&app, false).await {
            warn!(error = %e, "approval sweep failed");
        }
        let every = RETENTION_EVERY.min(app.live.load().snap.limits.approval_retention);
        if last_retention.elapsed() >= every {
            last_retention = tokio::time::Instant::now();
            if let Err(e) = retention(&app).await {
                warn!(error = %e, "approval retention failed");
            }
        }
    }
}

/// At start: one sweep. `executing` records whose lease has lapsed (their owner stopped
/// renewing it, e.g. this node before it restarted) become `unknown` — never an
/// automatic second call; live leases are left to their owners. This process's own
/// earlier `parking` records were never confirmed audited — they fail `unaudited`.
pub async fn recover_own_leases(app: &Arc<App>) -> Result<(), Error> {
    sweep(app, true).await
}

/// Expiry-index entries taken per store call.
const DUE_BATCH: usize = 1000;

async fn sweep(app: &Arc<App>, at_start: bool) -> Result<(), Error> {
    // The store's clock: leases are renewed by it, so every node judges them alike.
    let now = app.store.clock_ms().await?;
    if at_start {
        // Once per boot, every pending record: expire what is due, and (re-)index the
        // rest — records stored before the index existed, or whose entry a sweep took
        // and then failed on.
        let mut live = Vec::new();
        for a in in_state(app, State::Pending).await? {
            if now >= a.expires_at_ms {
                // `load` moves it to `expired` and audits it.
                let _ = load(app, &a.id).await?;
            } else {
                live.push(a);
            }
        }
        let entries: Vec<_> = live
            .iter()
            .map(|a| (a.id.as_str(), a.expires_at_ms))
            .collect();
        index_all(app, TimeIndex::Expiry, &entries).await?;
        // Likewise every decided record, for retention: delete what is past it, index
        // the rest (records from before the index, entries lost between a decision and
        // its indexing).
        let keep = retention_ms(app);
        for s in DECIDED {
            let mut young = Vec::new();
            for a in in_state(app, s).await? {
                if now.saturating_sub(a.updated_at_ms) > keep {
                    app.store
                        .delete_approval(&a.id, &a.agent, s.as_str())
                        .await?;
                } else {
                    young.push(a);
                }
            }
            let entries: Vec<_> = young
                .iter()
                .map(|a| (a.id.as_str(), a.updated_at_ms))
                .collect();
            index_all(app, TimeIndex::Decided, &entries).await?;
        }
    } else {
        // Each second, only what fell due: O(expiring), not O(pending).
        loop {
            let due = app
                .store
                .take_due_approvals(TimeIndex::Expiry, now, DUE_BATCH)
                .await?;
            for raw in &due {
                let Ok(a) = serde_json::from_slice::<super::Approval>(raw) else {
                    continue;
                };
                if a.state == State::Pending && now >= a.expires_at_ms {
                    let _ = load(app, &a.id).await?;
                }
            }
            if due.len() < DUE_BATCH {
                break;
            }
        }
    }
    if !at_start {
        // An `approved` record is an orphan only once the node that approved it had
        // time to take its lease (it starts the replay at once): half a lease. Younger
        // ones are left to it, so replicas do not race every fresh approval.
        let grace = app.live.load().snap.timers.replay_lease.as_millis() as u64 / 2;
        for a in in_state(app, State::Approved).await? {
            if now.saturating_sub(a.updated_at_ms) < grace {
                continue;
            }
            let (app2, id) = (app.clone(), a.id.clone());
            tokio::spawn(async move { super::replay(app2, id).await });
        }
    }
    // `parking` records live for one request: this node's own from before a restart
    // are abandoned at once, anyone's once their lease lapsed.
    let node = app.live.load().snap.node.clone();
    for a in in_state(app, State::Parking).await? {
        let stale = a.lease.as_ref().is_none_or(|l| {
            l.until_ms <= now || (at_start && l.node == node && l.boot != app.boot_id)
        });
        if stale {
            abandon(app, &a.id).await?;
        }
    }
    for a in in_state(app, State::Executing).await? {
        // A replay's lease is the owner process's (its boot id), renewed while it
        // works: it is reclaimed only once it has lapsed by the store's clock. The
        // `node` name is a label — a restart of one replica never takes over another's
        // live replay, even when both share one name.
        let stale = a.lease.as_ref().is_none_or(|l| l.until_ms <= now);
        if !stale {
            continue;
        }
        let Some(l) = load(app, &a.id).await? else {
            continue;
        };
        if l.a.state != State::Executing {
            continue;
        }
        let mut n = l.a.clone();
        n.state = State::Unknown;
        n.reason = Some("outcome_unknown".into());
        n.detail = Some(
            "the node replaying this request stopped before storing the result; the upstream may or may not have acted".into(),
        );
        n.lease = None;
        if let Some(l2) = transition(app, &l, n, None).await? {
            audit(app, &l2.a, "replay_unknown", None, l2.a.detail.as_deref()).await;
        }
    }
    Ok(())
}

/// A `parking` record whose node stopped (or gave up) before confirming its park record
/// durable: it was never answered 202 and must never be decided. `failed`, reason
/// `unaudited`, with an `approval_abandoned` record.
async fn abandon(app: &App, id: &str) -> Result<(), Error> {
    let Some(l) = load(app, id).await? else {
        return Ok(());
    };
    if l.a.state != State::Parking {
        return Ok(());
    }
    let mut n = l.a.clone();
    n.state = State::Failed;
    n.reason = Some("unaudited".into());
    n.detail = Some(
        "the node parking this request stopped before its park record was confirmed in the audit trail; it was never answered 202 and is never executed".into(),
    );
    n.lease = None;
    if let Some(l2) = transition(app, &l, n, None).await? {
        warn!(approval_id = %id, "a park that was never confirmed audited is failed as unaudited");
        audit(
            app,
            &l2.a,
            "approval_abandoned",
            None,
            l2.a.detail.as_deref(),
        )
        .await;
    }
    Ok(())
}

/// Enters `(id, at_ms)` pairs in `index` concurrently, so the entries share commits
/// (embedded) or a pipeline (redis) instead of costing a round trip and an fsync each.
async fn index_all(app: &App, index: TimeIndex, entries: &[(&str, u64)]) -> Result<(), Error> {
    for chunk in entries.chunks(DUE_BATCH) {
        futures_util::future::try_join_all(
            chunk
                .iter()
                .map(|(id, at)| app.store.track_approval(index, id, *at)),
        )
        .await?;
    }
    Ok(())
}

const DECIDED: [State; 4] = [
    State::Executed,
    State::Failed,
    State::Denied,
    State::Expired,
];

fn retention_ms(app: &App) -> u64 {
    app.live.load().snap.limits.approval_retention.as_millis() as u64
}

/// Deletes decided records older than `approval_retention`, reading only the decided
/// index entries that are at least that old: O(expiring), not O(decided).
async fn retention(app: &Arc<App>) -> Result<(), Error> {
    let now = now_ms();
    let keep = retention_ms(app);
    // Entries at or before `cutoff` are strictly older than `keep`.
    let Some(cutoff) = now.checked_sub(keep.saturating_add(1)) else {
        return Ok(());
    };
    loop {
        let taken = app
            .store
            .take_due_approvals(TimeIndex::Decided, cutoff, DUE_BATCH)
            .await?;
        for raw in &taken {
            let Ok(a) = serde_json::from_slice::<super::Approval>(raw) else {
                continue;
            };
            if !a.state.is_final() {
                continue;
            }
            if a.updated_at_ms <= cutoff {
                app.store
                    .delete_approval(&a.id, &a.agent, a.state.as_str())
                    .await?;
            } else {
                // Indexed under an older time than the record says: put it back under
                // its own (after the cutoff, so this pass does not take it again).
                app.store
                    .track_approval(TimeIndex::Decided, &a.id, a.updated_at_ms)
                    .await?;
            }
        }
        if taken.len() < DUE_BATCH {
            return Ok(());
        }
    }
}
