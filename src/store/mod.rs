//! The state store: credentials and switches (approvals join later), behind one type
//! with two backends — `embedded` (redb, single node) and `redis` (shared by replicas).
//! Both pass the same conformance suite (`tests/it/store_conformance.rs`).

mod embedded;
mod link;
mod redb_handle;
mod redis;
mod redis_conn;
mod signals;

pub use signals::{Baseline, ToolSeen};

use crate::classify::Risk;
use crate::config::{StoreConfig, StoreKind};
use crate::error::Error;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use tokio::sync::broadcast;

/// The store layout this build writes; a store marked with a newer one is refused.
pub const SCHEMA_VERSION: u64 = 1;

/// A credential as kept at rest: the secret's hash only, never the secret.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenRecord {
    pub id: String,
    pub agent: String,
    /// Hex SHA-256 (or HMAC-SHA256 with the pepper) of the secret.
    pub hash: String,
    pub created_at_ms: u64,
    pub expires_at_ms: u64,
    #[serde(default)]
    pub tools: Option<Vec<String>>,
    #[serde(default)]
    pub max_risk: Option<Risk>,
    #[serde(default)]
    pub max_calls: Option<u64>,
    #[serde(default)]
    pub revoked: bool,
    pub issued_by: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    All,
    Agent,
    Tool,
    Tenant,
}

impl Scope {
    pub fn parse(s: &str) -> Option<Scope> {
        Some(match s {
            "all" => Scope::All,
            "agent" => Scope::Agent,
            "tool" => Scope::Tool,
            "tenant" => Scope::Tenant,
            _ => return None,
        })
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::All => "all",
            Scope::Agent => "agent",
            Scope::Tool => "tool",
            Scope::Tenant => "tenant",
        }
    }
}

/// The switches as stored (plain sets; the gate compiles tool patterns).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwitchState {
    pub paused_all: bool,
    pub paused_agents: BTreeSet<String>,
    pub paused_tools: BTreeSet<String>,
    pub paused_tenants: BTreeSet<String>,
    pub disabled_agents: BTreeSet<String>,
    pub draft_only: bool,
}

impl SwitchState {
    pub fn to_policy(&self) -> crate::policy::Switches {
        crate::policy::Switches {
            paused_all: self.paused_all,
            paused_agents: self.paused_agents.iter().cloned().collect(),
            paused_tools: self
                .paused_tools
                .iter()
                .map(|t| crate::policy::Glob(t.clone()))
                .collect(),
            paused_tenants: self.paused_tenants.iter().cloned().collect(),
            disabled_agents: self.disabled_agents.iter().cloned().collect(),
            draft_only: self.draft_only,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SwitchChange {
    Pause(Scope, String),
    Resume(Scope, String),
    Disable(String),
    Enable(String),
    DraftOnly(bool),
}

impl SwitchChange {
    /// Applies the change to an in-memory state (used by the embedded backend).
    pub fn apply_to(&self, s: &mut SwitchState) {
        match self {
            SwitchChange::Pause(Scope::All, _) => s.paused_all = true,
            SwitchChange::Resume(Scope::All, _) => s.paused_all = false,
            SwitchChange::Pause(scope, t) => {
                target_set(s, *scope).insert(t.clone());
            }
            SwitchChange::Resume(scope, t) => {
                target_set(s, *scope).remove(t);
            }
            SwitchChange::Disable(a) => {
                s.disabled_agents.insert(a.clone());
            }
            SwitchChange::Enable(a) => {
                s.disabled_agents.remove(a);
            }
            SwitchChange::DraftOnly(on) => s.draft_only = *on,
        }
    }
}

fn target_set(s: &mut SwitchState, scope: Scope) -> &mut BTreeSet<String> {
    match scope {
        Scope::Agent => &mut s.paused_agents,
        Scope::Tool => &mut s.paused_tools,
        Scope::Tenant => &mut s.paused_tenants,
        Scope::All => unreachable!("`all` is a flag, not a set"),
    }
}

/// An invalidation: something another node (or this one) changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Switches,
    Token(String),
    /// An approval record changed state.
    Approval(String),
    /// The invalidation feed was (re)established: anything cached may be stale.
    Resync,
}

/// The time indexes over approvals, read by the sweeper so that it touches only what
/// fell due: when a pending approval expires (`expires_at_ms`), and when a decided one
/// was decided (`updated_at_ms`, for `approval_retention`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeIndex {
    Expiry,
    Decided,
}

/// One compare-and-set on an approval record.
pub struct Cas<'a> {
    pub id: &'a str,
    pub agent: &'a str,
    pub old: &'a [u8],
    pub new: &'a [u8],
    /// The states before and after: the per-state index and the agent's pending quota
    /// move with the record in the same atomic step.
    pub old_state: &'a str,
    pub new_state: &'a str,
    pub result: Option<&'a [u8]>,
}

pub enum Store {
    Embedded(embedded::Embedded),
    /// Boxed: the redis handle is several times the size of the embedded one.
    Redis(Box<redis::RedisStore>),
}

pub(crate) fn unavailable(e: impl std::fmt::Display) -> Error {
    tracing::error!(error = %e, "store error");
    metrics::counter!("portcullis_store_errors_total").increment(1);
    Error::Unavailable {
        reason: "store_unavailable",
        detail: "the state store is unavailable; nothing was forwarded".into(),
    }
}

/// The longest a cached credential or switch state is served without re-reading the
/// store, even while the invalidation feed is live: the backstop for a lost notice
/// (`timers.cache_max_age`, set from the config in force; one config per process).
static CACHE_MAX_AGE_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(5_000);

pub fn cache_max_age() -> std::time::Duration {
    std::time::Duration::from_millis(CACHE_MAX_AGE_MS.load(std::sync::atomic::Ordering::Relaxed))
}

pub fn set_cache_max_age(d: std::time::Duration) {
    CACHE_MAX_AGE_MS.store(d.as_millis() as u64, std::sync::atomic::Ordering::Relaxed);
}

/// The store is known to be down (a fast refusal): counted, not logged each time.
pub(crate) fn known_down() -> Error {
    metrics::counter!("portcullis_store_errors_total").increment(1);
    Error::Unavailable {
        reason: "store_unavailable",
        detail: "the state store is unavailable; nothing was forwarded".into(),
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Store {
    /// Opens the configured backend and checks its schema version.
    pub async fn open(cfg: &StoreConfig, node: &str) -> Result<Store, Error> {
        match &cfg.kind {
            StoreKind::Embedded(path) => Ok(Store::Embedded(embedded::Embedded::open(path).await?)),
            StoreKind::Redis(settings) => Ok(Store::Redis(Box::new(
                redis::RedisStore::open(settings, node).await?,
            ))),
        }
    }

    /// Invalidations from every node sharing this store (including this one).
    pub fn events(&self) -> broadcast::Receiver<Event> {
        match self {
            Store::Embedded(s) => s.events(),
            Store::Redis(s) => s.events(),
        }
    }

    /// Whether invalidations are live: caches may be trusted only while this is true.
    pub fn feed_live(&self) -> bool {
        self.feed_epoch().is_some()
    }

    /// The invalidation feed's generation while it is live (`None` while it is not).
    /// A cache entry is served only under the generation it was filled in, so entries
    /// from before a lost and re-established feed are never trusted again.
    pub fn feed_epoch(&self) -> Option<u64> {
        match self {
            Store::Embedded(_) => Some(0),
            Store::Redis(s) => s.feed_epoch(),
        }
    }

    /// Milliseconds since the epoch by the store's clock (redis `TIME`; the local clock
    /// for the embedded store): leases are compared against one clock for every node.
    pub async fn clock_ms(&self) -> Result<u64, Error> {
        match self {
            Store::Embedded(_) => Ok(now_ms()),
            Store::Redis(s) => s.clock_ms().await,
        }
    }

    pub async fn ping(&self) -> Result<(), Error> {
        match self {
            Store::Embedded(s) => s.ping().await,
            Store::Redis(s) => s.ping().await,
        }
    }

    pub async fn put_token(&self, t: &TokenRecord) -> Result<(), Error> {
        match self {
            Store::Embedded(s) => s.put_token(t).await,
            Store::Redis(s) => s.put_token(t).await,
        }
    }

    pub async fn get_token(&self, id: &str) -> Result<Option<TokenRecord>, Error> {
        match self {
            Store::Embedded(s) => s.get_token(id).await,
            Store::Redis(s) => s.get_token(id).await,
        }
    }

    pub async fn list_tokens(&self) -> Result<Vec<TokenRecord>, Error> {
        let mut v = match self {
            Store::Embedded(s) => s.list_tokens().await,
            Store::Redis(s) => s.list_tokens().await,
        }?;
        v.sort_by(|a, b| a.created_at_ms.cmp(&b.created_at_ms).then(a.id.cmp(&b.id)));
        Ok(v)
    }

    /// Marks a token revoked; false if there is no such token.
    pub async fn revoke_token(&self, id: &str) -> Result<bool, Error> {
        match self {
            Store::Embedded(s) => s.revoke_token(id).await,
            Store::Redis(s) => s.revoke_token(id).await,
        }
    }

    /// Spends one call of a token's budget atomically; false once `max` are spent.
    pub async fn spend_call(&self, id: &str, max: u64) -> Result<bool, Error> {
        match self {
            Store::Embedded(s) => s.spend_call(id, max).await,
            Store::Redis(s) => s.spend_call(id, max).await,
        }
    }

    /// How many approvals `agent` has pending (the quota `create_approval` enforces
    /// atomically; read first so a full quota refuses before a body is read).
    pub async fn pending_count(&self, agent: &str) -> Result<u64, Error> {
        match self {
            Store::Embedded(s) => s.pending_count(agent).await,
            Store::Redis(s) => s.pending_count(agent).await,
        }
    }

    pub async fn switches(&self) -> Result<SwitchState, Error> {
        match self {
            Store::Embedded(s) => s.switches().await,
            Store::Redis(s) => s.switches().await,
        }
    }

    pub async fn apply(&self, c: &SwitchChange) -> Result<(), Error> {
        match self {
            Store::Embedded(s) => s.apply(c).await,
            Store::Redis(s) => s.apply(c).await,
        }
    }

    /// Stores a new approval (in `state`, which counts as pending) and its body, unless
    /// `agent` already has `max_pending` pending ones (then false). Atomic with the
    /// count; enters the approval in the per-state index under `state` and in the expiry
    /// index under `expires_at_ms`.
    #[allow(clippy::too_many_arguments)]
    pub async fn create_approval(
        &self,
        id: &str,
        agent: &str,
        state: &str,
        record: &[u8],
        body: &[u8],
        max_pending: u32,
        expires_at_ms: u64,
    ) -> Result<bool, Error> {
        match self {
            Store::Embedded(s) => {
                s.create_approval(id, agent, state, record, body, max_pending, expires_at_ms)
                    .await
            }
            Store::Redis(s) => {
                s.create_approval(id, agent, state, record, body, max_pending, expires_at_ms)
                    .await
            }
        }
    }

    /// Takes (removes) up to `limit` entries of `index` at or before `until_ms` and
    /// answers the records they name that still exist, whatever their state now: the
    /// caller re-checks each (expires those still pending; deletes those decided long
    /// enough ago). An entry is taken once, by one replica; records that moved on are
    /// simply skipped when their time comes.
    pub async fn take_due_approvals(
        &self,
        index: TimeIndex,
        until_ms: u64,
        limit: usize,
    ) -> Result<Vec<Vec<u8>>, Error> {
        match self {
            Store::Embedded(s) => s.take_due(index, until_ms, limit).await,
            Store::Redis(s) => s.take_due(index, until_ms, limit).await,
        }
    }

    /// (Re-)enters an approval in `index` at `at_ms` (idempotent): when it is created or
    /// decided, and at start for records written before the index existed or whose
    /// entry a failed sweep took.
    pub async fn track_approval(
        &self,
        index: TimeIndex,
        id: &str,
        at_ms: u64,
    ) -> Result<(), Error> {
        match self {
            Store::Embedded(s) => s.track(index, id, at_ms).await,
            Store::Redis(s) => s.track(index, id, at_ms).await,
        }
    }

    pub async fn get_approval(&self, id: &str) -> Result<Option<Vec<u8>>, Error> {
        match self {
            Store::Embedded(s) => s.get_blob("approvals", id).await,
            Store::Redis(s) => s.get_blob(&format!("approval:{id}")).await,
        }
    }

    pub async fn get_approval_body(&self, id: &str) -> Result<Option<Vec<u8>>, Error> {
        match self {
            Store::Embedded(s) => s.get_blob("approval_bodies", id).await,
            Store::Redis(s) => s.get_blob(&format!("approval:{id}:body")).await,
        }
    }

    pub async fn get_approval_result(&self, id: &str) -> Result<Option<Vec<u8>>, Error> {
        match self {
            Store::Embedded(s) => s.get_blob("approval_results", id).await,
            Store::Redis(s) => s.get_blob(&format!("approval:{id}:result")).await,
        }
    }

    /// Replaces the record only if it still reads exactly `old` (compare-and-set).
    /// `still_pending` says whether the new state counts against the agent's quota;
    /// `result` is stored in the same atomic step.
    pub async fn cas_approval(&self, c: Cas<'_>) -> Result<bool, Error> {
        match self {
            Store::Embedded(s) => s.cas_approval(c).await,
            Store::Redis(s) => s.cas_approval(c).await,
        }
    }

    /// Every record, or (through the per-state index) only those in `state`.
    pub async fn list_approvals(&self, state: Option<&str>) -> Result<Vec<Vec<u8>>, Error> {
        match self {
            Store::Embedded(s) => s.list_approvals(state).await,
            Store::Redis(s) => s.list_approvals(state).await,
        }
    }

    /// Deletes a decided record, its body and its result (retention).
    pub async fn delete_approval(&self, id: &str, agent: &str, state: &str) -> Result<(), Error> {
        match self {
            Store::Embedded(s) => s.delete_approval(id, agent, state).await,
            Store::Redis(s) => s.delete_approval(id, agent, state).await,
        }
    }
}
