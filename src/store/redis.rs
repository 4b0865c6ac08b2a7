//! The redis backend: `ConnectionManager` for commands, one pub/sub connection for
//! invalidations, and a heartbeat so a silent feed is noticed within a second. While the
//! connection is known down (`link`), calls fail at once and a background task reconnects
//! (with Sentinel: to the master the sentinels name now). With `store.redis.wait`, the
//! writes that must survive a failover are acknowledged only once `WAIT` says enough
//! replicas hold them.

use super::link::{Link, Probe};
use super::redis_conn::Connector;
use super::{
    known_down, unavailable, Event, Scope, SwitchChange, SwitchState, TimeIndex, TokenRecord,
    SCHEMA_VERSION,
};
use crate::config::{RedisSettings, WaitReplicas};
use crate::error::Error;
use arc_swap::ArcSwap;
use futures_util::StreamExt;
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, RedisError};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::broadcast;
use tracing::warn;

/// How often each node publishes a heartbeat on the invalidation channel.
const HEARTBEAT: Duration = Duration::from_millis(250);
/// A feed silent for longer than this is not trusted.
const STALE_AFTER: Duration = Duration::from_millis(1000);

/// The connections in use: swapped whole when a Sentinel failover moves the master.
struct Conns {
    main: ConnectionManager,
    /// Writes followed by `WAIT` go here, so a `WAIT` never holds up the main
    /// connection's other commands (the same connection as `main` without `wait`).
    acked: ConnectionManager,
}

/// How long a probe of a down link may take.
const PROBE_BOUND: Duration = Duration::from_millis(1500);

pub struct RedisStore {
    conns: Arc<ArcSwap<Conns>>,
    link: Link,
    wait: Option<WaitReplicas>,
    prefix: String,
    events: broadcast::Sender<Event>,
    /// Milliseconds since `epoch` when the feed last delivered anything.
    last_seen: Arc<AtomicU64>,
    /// Bumped each time the feed (re)subscribes, before it is trusted again: cache
    /// entries filled under an older generation are never served (they may predate a
    /// change sent while the feed was down).
    feed_gen: Arc<AtomicU64>,
    epoch: Instant,
    spend: redis::Script,
    create: redis::Script,
    cas: redis::Script,
    take_due: redis::Script,
}

impl RedisStore {
    pub async fn open(settings: &RedisSettings, node: &str) -> Result<RedisStore, Error> {
        let prefix = settings.key_prefix.as_str();
        let connector = Arc::new(Connector::new(settings));
        let first = open_conns(&connector)
            .await
            .map_err(|e| Error::Internal(format!("cannot reach redis: {e}")))?;
        let mut conn = first.main.clone();
        // `<prefix>schema` holds the newest layout any node wrote; data keys are versioned.
        let schema_key = format!("{prefix}schema");
        let _: bool = conn
            .set_nx(&schema_key, SCHEMA_VERSION)
            .await
            .map_err(unavailable)?;
        let found: u64 = conn.get(&schema_key).await.map_err(unavailable)?;
        if found > SCHEMA_VERSION {
            return Err(Error::Internal(format!(
                "the redis store was written by schema {found}; this build knows {SCHEMA_VERSION}"
            )));
        }
        let prefix = format!("{prefix}v{SCHEMA_VERSION}:");
        let (events, _) = broadcast::channel(1024);
        let epoch = Instant::now();
        let conns = Arc::new(ArcSwap::from_pointee(first));
        let s = RedisStore {
            link: Link::start(
                probe(connector.clone(), conns.clone()),
                connector.follows_failover(),
            ),
            conns,
            wait: settings.wait,
            prefix,
            events,
            last_seen: Arc::new(AtomicU64::new(0)),
            feed_gen: Arc::new(AtomicU64::new(0)),
            epoch,
            // No change notice on creation: nobody can be waiting on an approval whose
            // id has not been answered yet (it is, after the `pending` change, which
            // announces it). The other scripts publish their notice themselves.
            create: redis::Script::new(
                "if redis.call('SCARD', KEYS[3]) >= tonumber(ARGV[3]) then return 0 end \
                 redis.call('SET', KEYS[1], ARGV[1]) redis.call('SET', KEYS[2], ARGV[2]) \
                 redis.call('SADD', KEYS[3], ARGV[4]) redis.call('SADD', KEYS[4], ARGV[4]) \
                 redis.call('SADD', KEYS[5], ARGV[4]) redis.call('ZADD', KEYS[6], ARGV[5], ARGV[4]) \
                 return 1",
            ),
            cas: redis::Script::new(
                "if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end \
                 redis.call('SET', KEYS[1], ARGV[2]) \
                 if ARGV[3] == '0' then redis.call('SREM', KEYS[2], ARGV[4]) end \
                 if ARGV[5] == '1' then redis.call('SET', KEYS[3], ARGV[6]) end \
                 if KEYS[4] ~= KEYS[5] then redis.call('SREM', KEYS[4], ARGV[4]) redis.call('SADD', KEYS[5], ARGV[4]) end \
                 redis.call('PUBLISH', KEYS[6], 'approval:' .. ARGV[4]) return 1",
            ),
            take_due: redis::Script::new(
                "local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2])) \
                 if #ids > 0 then redis.call('ZREM', KEYS[1], unpack(ids)) end return ids",
            ),
            spend: redis::Script::new(
                "local n = redis.call('INCR', KEYS[1]) if n > tonumber(ARGV[1]) then redis.call('DECR', KEYS[1]) return 0 end return 1",
            ),
        };
        if connector.follows_failover() {
            spawn_master_watch(connector.clone(), s.link.clone());
        }
        s.spawn_feed(
            connector,
            node.to_string(),
            crate::app::boot_id().to_string(),
        );
        Ok(s)
    }

    /// A connection for one call, or at once 503 while redis is known down.
    pub(super) fn conn(&self) -> Result<ConnectionManager, Error> {
        if self.link.is_down() {
            return Err(known_down());
        }
        Ok(self.conns.load().main.clone())
    }

    /// The connection for writes that `acknowledged` will wait on.
    fn acked_conn(&self) -> Result<ConnectionManager, Error> {
        if self.link.is_down() {
            return Err(known_down());
        }
        Ok(self.conns.load().acked.clone())
    }

    /// With `store.redis.wait`: waits until that many replicas hold every write made on
    /// `c` so far; fewer within the timeout is a store error (503), so nothing is
    /// acknowledged that a failover could lose. Used after token issue and revoke,
    /// switch changes, parks and approval state changes.
    async fn acknowledged(&self, c: &mut ConnectionManager) -> Result<(), Error> {
        let Some(w) = self.wait else { return Ok(()) };
        let n: i64 = redis::cmd("WAIT")
            .arg(w.replicas)
            .arg(w.timeout.as_millis() as u64)
            .query_async(c)
            .await
            .map_err(|e| self.fail(e))?;
        if n < i64::from(w.replicas) {
            return Err(unavailable(format!(
                "a write reached {n} of the {} replicas store.redis.wait asks for within {:?}",
                w.replicas, w.timeout
            )));
        }
        Ok(())
    }

    /// A failed command: marks the link down if the connection failed; 503 either way.
    pub(super) fn fail(&self, e: RedisError) -> Error {
        self.link.saw(&e);
        unavailable(e)
    }

    pub(super) fn key(&self, k: &str) -> String {
        format!("{}{k}", self.prefix)
    }

    fn channel(&self) -> String {
        self.key("events")
    }

    /// Subscriber with reconnect, plus the heartbeat publisher.
    fn spawn_feed(&self, connector: Arc<Connector>, node: String, boot: String) {
        let own_boot = boot.clone();
        let own_node = node.clone();
        let channel = self.channel();
        let events = self.events.clone();
        let last_seen = self.last_seen.clone();
        let feed_gen = self.feed_gen.clone();
        let epoch = self.epoch;
        tokio::spawn(async move {
            loop {
                match connector.pubsub().await {
                    Ok(mut ps) => {
                        if ps.subscribe(&channel).await.is_ok() {
                            // A new generation first, then live: no entry cached before
                            // the outage is trusted again.
                            feed_gen.fetch_add(1, Ordering::SeqCst);
                            last_seen.store(epoch.elapsed().as_millis() as u64, Ordering::SeqCst);
                            let _ = events.send(Event::Resync);
                            let mut stream = ps.on_message();
                            // Heartbeats arrive every 250 ms; a second of silence means the feed is gone.
                            while let Ok(Some(msg)) =
                                tokio::time::timeout(STALE_AFTER, stream.next()).await
                            {
                                last_seen
                                    .store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
                                let payload: String = msg.get_payload().unwrap_or_default();
                                if let Some((n, boot)) =
                                    payload.strip_prefix("hb:").and_then(|r| r.rsplit_once('/'))
                                {
                                    if n == own_node && boot != own_boot {
                                        warn!(node = %n, "another live process announces the same `node` name; it is only a label (leases belong to processes), but logs and audit records of the two cannot be told apart by it");
                                    }
                                } else if payload == "switches" {
                                    let _ = events.send(Event::Switches);
                                } else if let Some(id) = payload.strip_prefix("token:") {
                                    let _ = events.send(Event::Token(id.to_string()));
                                } else if let Some(id) = payload.strip_prefix("approval:") {
                                    let _ = events.send(Event::Approval(id.to_string()));
                                }
                            }
                        }
                        // Untrusted at once, not a second later.
                        last_seen.store(0, Ordering::Relaxed);
                        warn!("redis invalidation feed lost; caches bypassed until it is back");
                    }
                    Err(e) => warn!(error = %e, "redis invalidation feed: cannot connect"),
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        let conns = self.conns.clone();
        let channel = self.channel();
        let link = self.link.clone();
        tokio::spawn(async move {
            let beat = format!("hb:{node}/{boot}");
            let mut tick = tokio::time::interval(HEARTBEAT);
            loop {
                tick.tick().await;
                if link.is_down() {
                    continue;
                }
                let mut conn = conns.load().main.clone();
                // A failed heartbeat marks the link down before any request has to wait.
                if let Err(e) = conn.publish::<_, _, i64>(&channel, &beat).await {
                    link.saw(&e);
                }
            }
        });
    }

    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Whether invalidations are live: not while the command connection is known down
    /// (nothing could be invalidated then), nor after a second without a heartbeat.
    pub fn feed_live(&self) -> bool {
        self.feed_epoch().is_some()
    }

    /// The feed's generation while it is live (and the command link is up).
    pub fn feed_epoch(&self) -> Option<u64> {
        let gen = self.feed_gen.load(Ordering::SeqCst);
        let seen = self.last_seen.load(Ordering::SeqCst);
        let live = !self.link.is_down()
            && seen != 0
            && (self.epoch.elapsed().as_millis() as u64).saturating_sub(seen)
                < STALE_AFTER.as_millis() as u64;
        live.then_some(gen)
    }

    pub async fn clock_ms(&self) -> Result<u64, Error> {
        let mut c = self.conn()?;
        let (secs, micros): (u64, u64) = redis::cmd("TIME")
            .query_async(&mut c)
            .await
            .map_err(|e| self.fail(e))?;
        Ok(secs * 1000 + micros / 1000)
    }

    pub async fn ping(&self) -> Result<(), Error> {
        let mut c = self.conn()?;
        let _: String = redis::cmd("PING")
            .query_async(&mut c)
            .await
            .map_err(|e| self.fail(e))?;
        Ok(())
    }

    pub async fn put_token(&self, t: &TokenRecord) -> Result<(), Error> {
        let mut c = self.acked_conn()?;
        let json = serde_json::to_string(t).map_err(unavailable)?;
        let _: () = redis::pipe()
            .atomic()
            .set(self.key(&format!("token:{}", t.id)), json)
            .sadd(self.key("tokens"), &t.id)
            .publish(self.channel(), format!("token:{}", t.id))
            .ignore()
            .query_async(&mut c)
            .await
            .map_err(|e| self.fail(e))?;
        self.acknowledged(&mut c).await
    }

    pub async fn pending_count(&self, agent: &str) -> Result<u64, Error> {
        let mut c = self.conn()?;
        redis::cmd("SCARD")
            .arg(self.key(&format!("pending:{agent}")))
            .query_async(&mut c)
            .await
            .map_err(|e| self.fail(e))
    }

    pub async fn get_token(&self, id: &str) -> Result<Option<TokenRecord>, Error> {
        let mut c = self.conn()?;
        let (json, revoked): (Option<String>, Option<String>) = redis::pipe()
            .get(self.key(&format!("token:{id}")))
            .get(self.key(&format!("revoked:{id}")))
            .query_async(&mut c)
            .await
            .map_err(|e| self.fail(e))?;
        match json {
            Some(j) => {
                let mut t: TokenRecord = serde_json::from_str(&j).map_err(unavailable)?;
                t.revoked |= revoked.is_some();
                Ok(Some(t))
            }
            None => Ok(None),
        }
    }

    pub async fn list_tokens(&self) -> Result<Vec<TokenRecord>, Error> {
        let mut c = self.conn()?;
        let ids: Vec<String> = c
            .smembers(self.key("tokens"))
            .await
            .map_err(|e| self.fail(e))?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(t) = self.get_token(&id).await? {
                out.push(t);
            }
        }
        Ok(out)
    }

    pub async fn revoke_token(&self, id: &str) -> Result<bool, Error> {
        let mut c = self.conn()?;
        let exists: bool = c
            .exists(self.key(&format!("token:{id}")))
            .await
            .map_err(|e| self.fail(e))?;
        if !exists {
            return Ok(false);
        }
        // The write and its change notice are one transaction: a notice that cannot be
        // sent (a lost connection, an ACL without PUBLISH) leaves the write undone too,
        // and the caller hears 503 instead of a change other replicas never learn of.
        let mut c = self.acked_conn()?;
        let _: () = redis::pipe()
            .atomic()
            .set(self.key(&format!("revoked:{id}")), 1)
            .ignore()
            .publish(self.channel(), format!("token:{id}"))
            .ignore()
            .query_async(&mut c)
            .await
            .map_err(|e| self.fail(e))?;
        self.acknowledged(&mut c).await?;
        Ok(true)
    }

    pub async fn spend_call(&self, id: &str, max: u64) -> Result<bool, Error> {
        let mut c = self.conn()?;
        let ok: i64 = self
            .spend
            .key(self.key(&format!("calls:{id}")))
            .arg(max)
            .invoke_async(&mut c)
            .await
            .map_err(|e| self.fail(e))?;
        Ok(ok == 1)
    }

    pub async fn switches(&self) -> Result<SwitchState, Error> {
        let mut c = self.conn()?;
        type Raw = (
            Option<String>,
            Vec<String>,
            Vec<String>,
            Vec<String>,
            Vec<String>,
            Option<String>,
        );
        let (all, agents, tools, tenants, disabled, draft): Raw = redis::pipe()
            .get(self.key("sw:paused_all"))
            .smembers(self.key("sw:paused_agents"))
            .smembers(self.key("sw:paused_tools"))
            .smembers(self.key("sw:paused_tenants"))
            .smembers(self.key("sw:disabled_agents"))
            .get(self.key("sw:draft_only"))
            .query_async(&mut c)
            .await
            .map_err(|e| self.fail(e))?;
        Ok(SwitchState {
            paused_all: all.as_deref() == Some("1"),
            paused_agents: agents.into_iter().collect(),
            paused_tools: tools.into_iter().collect(),
            paused_tenants: tenants.into_iter().collect(),
            disabled_agents: disabled.into_iter().collect(),
            draft_only: draft.as_deref() == Some("1"),
        })
    }

    pub async fn apply(&self, ch: &SwitchChange) -> Result<(), Error> {
        let mut c = self.acked_conn()?;
        let set = |s: Scope| match s {
            Scope::Agent => "sw:paused_agents",
            Scope::Tool => "sw:paused_tools",
            Scope::Tenant => "sw:paused_tenants",
            Scope::All => "sw:paused_all",
        };
        let mut p = redis::pipe();
        p.atomic();
        match ch {
            SwitchChange::Pause(Scope::All, _) => p.set(self.key("sw:paused_all"), "1"),
            SwitchChange::Resume(Scope::All, _) => p.del(self.key("sw:paused_all")),
            SwitchChange::Pause(s, t) => p.sadd(self.key(set(*s)), t),
            SwitchChange::Resume(s, t) => p.srem(self.key(set(*s)), t),
            SwitchChange::Disable(a) => p.sadd(self.key("sw:disabled_agents"), a),
            SwitchChange::Enable(a) => p.srem(self.key("sw:disabled_agents"), a),
            SwitchChange::DraftOnly(true) => p.set(self.key("sw:draft_only"), "1"),
            SwitchChange::DraftOnly(false) => p.del(self.key("sw:draft_only")),
        }
        .ignore();
        // One transaction with its notice (see `revoke_token`).
        let _: () = p
            .publish(self.channel(), "switches")
            .ignore()
            .query_async(&mut c)
            .await
            .map_err(|e| self.fail(e))?;
        self.acknowledged(&mut c).await
    }

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
        let mut c = self.acked_conn()?;
        let ok: i64 = self
            .create
            .key(self.key(&format!("approval:{id}")))
            .key(self.key(&format!("approval:{id}:body")))
            .key(self.key(&format!("pending:{agent}")))
            .key(self.key("approvals"))
            .key(self.key(&format!("state:{state}")))
            .key(self.key(index_key(TimeIndex::Expiry)))
            .arg(record)
            .arg(body)
            .arg(max_pending)
            .arg(id)
            .arg(expires_at_ms)
            .invoke_async(&mut c)
            .await
            .map_err(|e| self.fail(e))?;
        if ok == 1 {
            self.acknowledged(&mut c).await?;
        }
        Ok(ok == 1)
    }

    /// Pops up to `limit` ids scored at or before `now_ms` from `index` (so one replica
    /// acts on each) and answers the records that still exist.
    pub async fn take_due(
        &self,
        index: TimeIndex,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<Vec<u8>>, Error> {
        let mut c = self.conn()?;
        let ids: Vec<String> = self
            .take_due
            .key(self.key(index_key(index)))
            .arg(now_ms)
            .arg(limit)
            .invoke_async(&mut c)
            .await
            .map_err(|e| self.fail(e))?;
        self.approvals_by_id(&mut c, &ids).await
    }

    /// The records of `ids` that exist, read with MGET in chunks.
    async fn approvals_by_id(
        &self,
        c: &mut ConnectionManager,
        ids: &[String],
    ) -> Result<Vec<Vec<u8>>, Error> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(500) {
            let keys: Vec<String> = chunk
                .iter()
                .map(|id| self.key(&format!("approval:{id}")))
                .collect();
            let vals: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
                .arg(&keys)
                .query_async(c)
                .await
                .map_err(|e| self.fail(e))?;
            out.extend(vals.into_iter().flatten());
        }
        Ok(out)
    }

    /// (Re-)enters an approval in `index` at `at_ms`; idempotent.
    pub async fn track(&self, index: TimeIndex, id: &str, at_ms: u64) -> Result<(), Error> {
        let mut c = self.conn()?;
        let _: i64 = c
            .zadd(self.key(index_key(index)), id, at_ms)
            .await
            .map_err(|e| self.fail(e))?;
        Ok(())
    }

    pub async fn get_blob(&self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        let mut c = self.conn()?;
        c.get(self.key(key)).await.map_err(|e| self.fail(e))
    }

    pub async fn cas_approval(&self, cas: super::Cas<'_>) -> Result<bool, Error> {
        let mut c = self.acked_conn()?;
        let ok: i64 = self
            .cas
            .key(self.key(&format!("approval:{}", cas.id)))
            .key(self.key(&format!("pending:{}", cas.agent)))
            .key(self.key(&format!("approval:{}:result", cas.id)))
            .key(self.key(&format!("state:{}", cas.old_state)))
            .key(self.key(&format!("state:{}", cas.new_state)))
            .key(self.channel())
            .arg(cas.old)
            .arg(cas.new)
            .arg(if cas.new_state == "pending" { "1" } else { "0" })
            .arg(cas.id)
            .arg(if cas.result.is_some() { "1" } else { "0" })
            .arg(cas.result.unwrap_or_default())
            .invoke_async(&mut c)
            .await
            .map_err(|e| self.fail(e))?;
        if ok == 1 {
            self.acknowledged(&mut c).await?;
        }
        Ok(ok == 1)
    }

    pub async fn list_approvals(&self, state: Option<&str>) -> Result<Vec<Vec<u8>>, Error> {
        let mut c = self.conn()?;
        let set = match state {
            Some(s) => self.key(&format!("state:{s}")),
            None => self.key("approvals"),
        };
        let ids: Vec<String> = c.smembers(set).await.map_err(|e| self.fail(e))?;
        self.approvals_by_id(&mut c, &ids).await
    }

    pub async fn delete_approval(&self, id: &str, agent: &str, state: &str) -> Result<(), Error> {
        let mut c = self.conn()?;
        let _: () = redis::pipe()
            .atomic()
            .del(self.key(&format!("approval:{id}")))
            .del(self.key(&format!("approval:{id}:body")))
            .del(self.key(&format!("approval:{id}:result")))
            .srem(self.key("approvals"), id)
            .srem(self.key(&format!("pending:{agent}")), id)
            .srem(self.key(&format!("state:{state}")), id)
            .zrem(self.key(index_key(TimeIndex::Expiry)), id)
            .zrem(self.key(index_key(TimeIndex::Decided)), id)
            .query_async(&mut c)
            .await
            .map_err(|e| self.fail(e))?;
        Ok(())
    }
}

/// The sorted set behind each time index (scores are milliseconds).
fn index_key(index: TimeIndex) -> &'static str {
    match index {
        TimeIndex::Expiry => "due",
        TimeIndex::Decided => "decided",
    }
}

/// The main connection and the one for acknowledged writes.
async fn open_conns(connector: &Connector) -> redis::RedisResult<Conns> {
    let main = connector.manager(Duration::ZERO).await?;
    let acked = match connector.settings().wait {
        Some(w) => connector.manager(w.timeout).await?,
        None => main.clone(),
    };
    Ok(Conns { main, acked })
}

/// How often the sentinels are asked whether the master moved.
const MASTER_WATCH: Duration = Duration::from_secs(1);

/// With Sentinel: once a second, asks the sentinels whether the master moved (a
/// switchover, or a partition in which the old master still answers this process) and
/// if so reconnects to the new one, without waiting for a command to fail there.
fn spawn_master_watch(connector: Arc<Connector>, link: Link) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(MASTER_WATCH);
        loop {
            tick.tick().await;
            if !link.is_down() && connector.master_moved().await {
                link.master_moved();
            }
        }
    });
}

/// What the link runs while redis is down: a `PING` on the connection in use (which
/// reconnects to the same address), or with Sentinel new connections to the master the
/// sentinels name now, swapped in once it answers.
fn probe(connector: Arc<Connector>, conns: Arc<ArcSwap<Conns>>) -> Probe {
    Arc::new(move || {
        let (connector, conns) = (connector.clone(), conns.clone());
        Box::pin(async move {
            let attempt = async {
                if connector.follows_failover() {
                    let fresh = open_conns(&connector).await.ok()?;
                    let mut c = fresh.main.clone();
                    let _: String = redis::cmd("PING").query_async(&mut c).await.ok()?;
                    conns.store(Arc::new(fresh));
                } else {
                    let mut c = conns.load().main.clone();
                    let _: String = redis::cmd("PING").query_async(&mut c).await.ok()?;
                }
                Some(())
            };
            matches!(
                tokio::time::timeout(PROBE_BOUND, attempt).await,
                Ok(Some(()))
            )
        })
    })
}
