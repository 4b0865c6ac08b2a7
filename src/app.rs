//! Shared runtime state: the configuration in force (swapped whole on reload) with the
//! clients and rate limiters built from it, the store, and the caches in front of it.

use crate::audit::{Audit, Record};
use crate::config::Snapshot;
use crate::error::Error;
use crate::identity::Credentials;
use crate::store::{Event, Store};
use crate::switchboard::Switchboard;
use crate::upstream::{self, HttpsClient};
use arc_swap::ArcSwap;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use metrics_exporter_prometheus::PrometheusHandle;
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::broadcast::error::RecvError;
use tracing::{info, warn};

/// This process's id: leases on replays belong to it (not to the `node` name), and
/// heartbeats announce it.
pub fn boot_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| uuid::Uuid::now_v7().simple().to_string())
}

/// Seconds between the metrics recorder's upkeep runs.
const UPKEEP_EVERY_S: u64 = 5;

/// One configuration and everything derived from it; immutable once built.
pub struct Live {
    pub snap: Snapshot,
    pub clients: Vec<HttpsClient>,
    /// Per-agent token buckets (per replica), from the profile's `rate_limit`.
    pub limiters: HashMap<String, DefaultDirectRateLimiter>,
}

impl Live {
    pub fn new(snap: Snapshot) -> Result<Live, Error> {
        let clients = snap
            .upstreams
            .iter()
            .map(|u| {
                upstream::build_client(u)
                    .map_err(|e| Error::Internal(format!("upstream `{}`: {e}", u.name)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let limiters = snap
            .agents
            .values()
            .filter_map(|a| {
                let n = NonZeroU32::new(a.profile.rate_per_minute?)?;
                Some((a.id.clone(), RateLimiter::direct(Quota::per_minute(n))))
            })
            .collect();
        Ok(Live {
            snap,
            clients,
            limiters,
        })
    }
}

pub struct App {
    pub live: ArcSwap<Live>,
    pub audit: Audit,
    /// Bounds how many unauthenticated refusals reach the audit log.
    pub unauth_sampler: DefaultDirectRateLimiter,
    pub metrics: PrometheusHandle,
    /// Distinguishes this process from an earlier run with the same node id (leases).
    pub boot_id: String,
    pub ui_sessions: crate::ui::Sessions,
    pub config_path: PathBuf,
    pub draining: AtomicBool,
    pub store: Store,
    pub creds: Credentials,
    pub switches: Switchboard,
    /// Per-agent refusal rate (`audit.max_refusals_per_second`).
    pub refusals: crate::refusals::Meter,
    /// Parks reading their bodies, per agent.
    pub parking: crate::approval::inflight::Parking,
    /// Per-agent counters behind signals and brakes.
    pub signals: crate::signals::Signals,
    reload_lock: tokio::sync::Mutex<()>,
}

impl App {
    /// Opens the store and starts the task that applies invalidations to the caches.
    pub async fn start(snap: Snapshot, config_path: PathBuf) -> Result<Arc<App>, Error> {
        let metrics = crate::metrics::install();
        let store = Store::open(&snap.store, &snap.node).await?;
        let audit = Audit::start(&snap.audit, &snap.node)?;
        let live = Live::new(snap)?;
        crate::store::set_cache_max_age(live.snap.timers.cache_max_age);
        let app = Arc::new(App {
            live: ArcSwap::from_pointee(live),
            audit,
            unauth_sampler: RateLimiter::direct(
                Quota::per_second(NonZeroU32::new(10).expect("nonzero"))
                    .allow_burst(NonZeroU32::new(50).expect("nonzero")),
            ),
            metrics,
            boot_id: boot_id().to_string(),
            ui_sessions: Default::default(),
            config_path,
            draining: AtomicBool::new(false),
            store,
            creds: Credentials::default(),
            switches: Switchboard::default(),
            refusals: Default::default(),
            parking: Default::default(),
            signals: Default::default(),
            reload_lock: tokio::sync::Mutex::new(()),
        });
        let mut rx = app.store.events();
        let weak = Arc::downgrade(&app);
        tokio::spawn(async move {
            loop {
                let ev = rx.recv().await;
                let Some(app) = weak.upgrade() else { return };
                match ev {
                    Ok(Event::Switches) => app.switches.invalidate(),
                    Ok(Event::Token(id)) => app.creds.invalidate(&id),
                    Ok(Event::Approval(_)) => {}
                    Ok(Event::Resync) | Err(RecvError::Lagged(_)) => {
                        app.switches.invalidate();
                        app.creds.clear();
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        });
        let weak = Arc::downgrade(&app);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            let mut tick_count: u64 = 0;
            loop {
                tick.tick().await;
                let Some(app) = weak.upgrade() else { return };
                app.flush_refusals(false);
                // Histograms keep every sample until upkeep drains them into their
                // buckets; without this, memory grows whenever nobody scrapes /metrics.
                if tick_count % UPKEEP_EVERY_S == 0 {
                    app.metrics.run_upkeep();
                }
                tick_count += 1;
            }
        });
        crate::approval::recover_own_leases(&app).await?;
        tokio::spawn(crate::approval::run_sweeper(app.clone()));
        tokio::spawn(crate::signals::aggregate::run(Arc::downgrade(&app)));
        Ok(app)
    }

    /// Writes the aggregate records of refusal floods whose second has ended (`all`:
    /// also the current one, at shutdown).
    pub fn flush_refusals(&self, all: bool) {
        for r in self.refusals.take_closed(all) {
            if self.audit.record(r).is_err() {
                warn!("an aggregate refusal record could not be queued");
            }
        }
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub fn pepper(&self) -> Option<Vec<u8>> {
        self.live.load().snap.store.pepper.clone()
    }

    /// Re-reads the config file; swaps it in only if it is valid whole.
    /// Returns (old, new) policy versions.
    pub async fn reload(&self, by: &str) -> Result<(String, String), Error> {
        let r = self.reload_inner().await;
        let result = if r.is_ok() { "ok" } else { "refused" };
        metrics::counter!("portcullis_config_reloads_total", "result" => result).increment(1);
        let (old, new) = match &r {
            Ok((o, n)) => (Some(o.clone()), Some(n.clone())),
            Err(_) => (Some(self.live.load().snap.policy_version.to_string()), None),
        };
        let rec = Record {
            event: "reload",
            operator: Some(by.to_string()),
            decision: Some(result.into()),
            reason: r.as_ref().err().map(|e| e.to_string().into()),
            old_policy_version: old,
            policy_version: new,
            ..Default::default()
        };
        self.audit.record_durable(rec).await?;
        r
    }

    async fn reload_inner(&self) -> Result<(String, String), Error> {
        let _g = self.reload_lock.lock().await;
        let path = self.config_path.clone();
        let snap = tokio::task::spawn_blocking(move || Snapshot::load(&path))
            .await
            .map_err(|e| Error::Internal(e.to_string()))?;
        let snap = match snap {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "reload refused; the previous configuration stays in force");
                return Err(e.into());
            }
        };
        let live = Live::new(snap)?;
        crate::store::set_cache_max_age(live.snap.timers.cache_max_age);
        let new = live.snap.policy_version.to_string();
        let old = self
            .live
            .swap(Arc::new(live))
            .snap
            .policy_version
            .to_string();
        info!(old_policy_version = %old, policy_version = %new, "configuration reloaded");
        Ok((old, new))
    }
}
