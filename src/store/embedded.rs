//! The embedded backend: one redb file, single node. Every write is durable before it
//! is acknowledged; concurrent writes share one commit (group commit, see `Committer`).
//! A commit that fails (a full disk) is refused whole, and the file is reopened before
//! the next write (see `redb_handle`), so the store works again once there is space.

use super::redb_handle::Handle;
use super::{
    unavailable, Event, SwitchChange, SwitchState, TimeIndex, TokenRecord, SCHEMA_VERSION,
};
use crate::error::Error;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, oneshot};

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("tokens");
const CALLS: TableDefinition<&str, u64> = TableDefinition::new("token_calls");
const SWITCHES: TableDefinition<&str, &[u8]> = TableDefinition::new("switches");
const APPROVALS: TableDefinition<&str, &[u8]> = TableDefinition::new("approvals");
const BODIES: TableDefinition<&str, &[u8]> = TableDefinition::new("approval_bodies");
const RESULTS: TableDefinition<&str, &[u8]> = TableDefinition::new("approval_results");
/// `agent/id` for every pending approval: the per-agent quota is a range count.
const PENDING: TableDefinition<&str, u8> = TableDefinition::new("approvals_pending");
/// `state/id` for every approval: the sweeper reads only the states it acts on.
const BY_STATE: TableDefinition<&str, u8> = TableDefinition::new("approvals_by_state");
/// Pending approvals per agent (the rows of `PENDING` under `agent/`): the quota check
/// reads one number instead of counting the agent's whole backlog on every park.
const PENDING_COUNT: TableDefinition<&str, u64> = TableDefinition::new("approvals_pending_count");
/// `<expires_at_ms, 20 digits>/id` for approvals created pending: the sweeper takes
/// what fell due instead of reading every pending record each second.
const DUE: TableDefinition<&str, u8> = TableDefinition::new("approvals_due");
/// Decided approvals by `<updated_at_ms, 20 digits>/<id>`: retention reads only what is old.
const DECIDED: TableDefinition<&str, u8> = TableDefinition::new("approvals_decided");

fn index_table(index: TimeIndex) -> TableDefinition<'static, &'static str, u8> {
    match index {
        TimeIndex::Expiry => DUE,
        TimeIndex::Decided => DECIDED,
    }
}

fn due_key(expires_at_ms: u64, id: &str) -> String {
    format!("{expires_at_ms:020}/{id}")
}

/// One less pending approval for `agent` (its `PENDING` row was just removed).
fn uncount_pending(tx: &WriteTransaction, agent: &str) -> Result<(), Error> {
    let mut counts = tx.open_table(PENDING_COUNT).map_err(unavailable)?;
    let n = counts
        .get(agent)
        .map_err(unavailable)?
        .map_or(0, |g| g.value());
    if n <= 1 {
        counts.remove(agent).map_err(unavailable)?;
    } else {
        counts.insert(agent, n - 1).map_err(unavailable)?;
    }
    Ok(())
}

fn table(name: &str) -> TableDefinition<'static, &'static str, &'static [u8]> {
    match name {
        "approvals" => APPROVALS,
        "approval_bodies" => BODIES,
        _ => RESULTS,
    }
}

pub struct Embedded {
    db: Arc<Handle>,
    events: broadcast::Sender<Event>,
    /// `None` only while dropping.
    writes: Option<std::sync::mpsc::Sender<Op>>,
    committer: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Embedded {
    /// Stops the committer and waits for it: it holds the database (and its file lock)
    /// until it has finished the commit under way, and a reopen must find it released.
    fn drop(&mut self) {
        self.writes.take();
        if let Some(t) = self.committer.take() {
            let _ = t.join();
        }
    }
}

/// Most writes one commit takes; more wait for the next.
const MAX_GROUP: usize = 512;
/// After a failed write, the file is reopened at most this often: writes in between
/// are refused at once.
const REOPEN_EVERY: Duration = Duration::from_millis(100);

/// One write, run inside a shared transaction. It answers `None` when it failed (it has
/// already told its caller why; the whole transaction is then aborted), otherwise how to
/// tell its caller the outcome of the commit.
type Op = Box<dyn FnOnce(&WriteTransaction) -> Option<Reply> + Send>;
type Reply = Box<dyn FnOnce(Result<(), Error>) + Send>;

/// The one thread that writes: it takes every write queued while the previous commit
/// was being fsynced and runs them in one transaction, so N concurrent writers cost one
/// fsync, not N. Each write reads its own state inside the transaction and decides from
/// it before it writes (check, then write), so sharing a transaction changes nothing a
/// caller can observe. A write that fails aborts the transaction: every write in it is
/// refused and none is acknowledged — nothing is reported durable that is not. After a
/// failure the database is reopened before the next write (redb refuses writes after an
/// I/O error until then).
struct Committer {
    db: Arc<Handle>,
    queue: std::sync::mpsc::Receiver<Op>,
    /// A write failed: reopen before the next one.
    poisoned: bool,
    last_reopen: Option<Instant>,
}

impl Committer {
    /// Reopens a poisoned database (at most every [`REOPEN_EVERY`]); true when it is
    /// fit to write.
    fn ready(&mut self) -> bool {
        if !self.poisoned {
            return true;
        }
        if self.last_reopen.is_some_and(|t| t.elapsed() < REOPEN_EVERY) {
            return false;
        }
        self.last_reopen = Some(Instant::now());
        self.poisoned = self.db.reopen().is_err();
        !self.poisoned
    }

    /// A write failed: redb now refuses reads as well as writes until it is reopened.
    fn poison(&mut self) {
        self.poisoned = true;
        self.db.poison();
    }

    fn run(mut self) {
        loop {
            // While poisoned, reopen on the cadence even with no write waiting: reads are
            // held until then.
            let first = if self.poisoned {
                match self.queue.recv_timeout(REOPEN_EVERY) {
                    Ok(op) => op,
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                        self.ready();
                        continue;
                    }
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                }
            } else {
                match self.queue.recv() {
                    Ok(op) => op,
                    Err(_) => break,
                }
            };
            let mut ops = vec![first];
            while ops.len() < MAX_GROUP {
                match self.queue.try_recv() {
                    Ok(op) => ops.push(op),
                    Err(_) => break,
                }
            }
            // Dropping an op drops its caller's channel: it hears "unavailable".
            if !self.ready() {
                continue;
            }
            let Some(db) = self.db.get() else {
                self.poison();
                continue;
            };
            let tx = match db.begin_write() {
                Ok(tx) => tx,
                Err(e) => {
                    let _ = unavailable(e);
                    self.poison();
                    continue;
                }
            };
            let mut replies = Vec::with_capacity(ops.len());
            let mut failed = false;
            for op in ops {
                if failed {
                    continue;
                }
                match op(&tx) {
                    Some(r) => replies.push(r),
                    None => failed = true,
                }
            }
            if failed {
                let _ = tx.abort();
                for r in replies {
                    r(Err(unavailable("a write sharing this commit failed")));
                }
                self.poison();
                continue;
            }
            match tx.commit() {
                Ok(()) => {
                    for r in replies {
                        r(Ok(()));
                    }
                }
                Err(e) => {
                    self.poison();
                    let msg = e.to_string();
                    for r in replies {
                        r(Err(unavailable(&msg)));
                    }
                }
            }
        }
    }
}

impl Embedded {
    pub async fn open(path: &Path) -> Result<Embedded, Error> {
        let file = path.to_path_buf();
        let path = path.to_path_buf();
        let db = tokio::task::spawn_blocking(move || -> Result<Database, Error> {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| Error::Internal(format!("{}: {e}", dir.display())))?;
            }
            let db = Database::create(&path).map_err(|e| {
                Error::Internal(format!("cannot open the store {}: {e}", path.display()))
            })?;
            let tx = db.begin_write().map_err(unavailable)?;
            {
                let mut meta = tx.open_table(META).map_err(unavailable)?;
                let found = meta.get("schema").map_err(unavailable)?.map(|g| g.value());
                match found {
                    Some(v) if v > SCHEMA_VERSION => {
                        return Err(Error::Internal(format!(
                        "the store {} was written by schema {v}; this build knows {SCHEMA_VERSION}",
                        path.display()
                    )))
                    }
                    Some(_) => {}
                    None => {
                        meta.insert("schema", SCHEMA_VERSION).map_err(unavailable)?;
                    }
                }
                tx.open_table(TOKENS).map_err(unavailable)?;
                tx.open_table(CALLS).map_err(unavailable)?;
                tx.open_table(SWITCHES).map_err(unavailable)?;
                tx.open_table(APPROVALS).map_err(unavailable)?;
                tx.open_table(BODIES).map_err(unavailable)?;
                tx.open_table(RESULTS).map_err(unavailable)?;
                tx.open_table(PENDING).map_err(unavailable)?;
                tx.open_table(BY_STATE).map_err(unavailable)?;
                tx.open_table(DUE).map_err(unavailable)?;
                tx.open_table(DECIDED).map_err(unavailable)?;
                // Stores written before the per-agent count existed: count once.
                if meta.get("pending_count").map_err(unavailable)?.is_none() {
                    let mut n: std::collections::BTreeMap<String, u64> = Default::default();
                    for row in tx
                        .open_table(PENDING)
                        .map_err(unavailable)?
                        .iter()
                        .map_err(unavailable)?
                    {
                        let (k, _) = row.map_err(unavailable)?;
                        if let Some((agent, _)) = k.value().rsplit_once('/') {
                            *n.entry(agent.to_string()).or_default() += 1;
                        }
                    }
                    let mut counts = tx.open_table(PENDING_COUNT).map_err(unavailable)?;
                    for (agent, c) in n {
                        counts.insert(agent.as_str(), c).map_err(unavailable)?;
                    }
                    meta.insert("pending_count", 1).map_err(unavailable)?;
                }
            }
            tx.commit().map_err(unavailable)?;
            Ok(db)
        })
        .await
        .map_err(unavailable)??;
        let (events, _) = broadcast::channel(1024);
        let db = Arc::new(Handle::new(file, db));
        let (writes, queue) = std::sync::mpsc::channel();
        let committer = Committer {
            db: db.clone(),
            queue,
            poisoned: false,
            last_reopen: None,
        };
        let committer = std::thread::Builder::new()
            .name("store-commit".into())
            .spawn(move || committer.run())
            .map_err(|e| Error::Internal(format!("store committer: {e}")))?;
        Ok(Embedded {
            db,
            events,
            writes: Some(writes),
            committer: Some(committer),
        })
    }

    /// Runs `f` in the next group commit; answers once that commit is durable.
    pub(super) async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&WriteTransaction) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let (done, answer) = oneshot::channel::<Result<T, Error>>();
        let op: Op = Box::new(move |tx| match f(tx) {
            Ok(v) => Some(Box::new(move |committed: Result<(), Error>| {
                let _ = done.send(committed.map(|()| v));
            })),
            Err(e) => {
                let _ = done.send(Err(e));
                None
            }
        });
        self.writes
            .as_ref()
            .ok_or_else(|| unavailable("the store is closing"))?
            .send(op)
            .map_err(|_| unavailable("the store's committer stopped"))?;
        answer
            .await
            .map_err(|_| unavailable("the store's committer dropped a write"))?
    }

    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    pub(super) async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let db = self
            .db
            .get_or_wait(super::redb_handle::REOPEN_WAIT)
            .await
            .ok_or_else(|| unavailable("the store is being reopened"))?;
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(unavailable)?
    }

    pub async fn ping(&self) -> Result<(), Error> {
        self.blocking(|db| db.begin_read().map(|_| ()).map_err(unavailable))
            .await
    }

    pub async fn put_token(&self, t: &TokenRecord) -> Result<(), Error> {
        let bytes = serde_json::to_vec(t).map_err(unavailable)?;
        let id = t.id.clone();
        self.write(move |tx| {
            tx.open_table(TOKENS)
                .map_err(unavailable)?
                .insert(id.as_str(), bytes.as_slice())
                .map_err(unavailable)?;
            Ok(())
        })
        .await?;
        let _ = self.events.send(Event::Token(t.id.clone()));
        Ok(())
    }

    pub async fn pending_count(&self, agent: &str) -> Result<u64, Error> {
        let agent = agent.to_string();
        self.blocking(move |db| {
            let tx = db.begin_read().map_err(unavailable)?;
            let t = tx.open_table(PENDING_COUNT).map_err(unavailable)?;
            Ok(t.get(agent.as_str())
                .map_err(unavailable)?
                .map_or(0, |g| g.value()))
        })
        .await
    }

    pub async fn get_token(&self, id: &str) -> Result<Option<TokenRecord>, Error> {
        let id = id.to_string();
        self.blocking(move |db| {
            let tx = db.begin_read().map_err(unavailable)?;
            let t = tx.open_table(TOKENS).map_err(unavailable)?;
            match t.get(id.as_str()).map_err(unavailable)? {
                Some(g) => Ok(Some(
                    serde_json::from_slice(g.value()).map_err(unavailable)?,
                )),
                None => Ok(None),
            }
        })
        .await
    }

    pub async fn list_tokens(&self) -> Result<Vec<TokenRecord>, Error> {
        self.blocking(|db| {
            let tx = db.begin_read().map_err(unavailable)?;
            let t = tx.open_table(TOKENS).map_err(unavailable)?;
            let mut out = Vec::new();
            for row in t.iter().map_err(unavailable)? {
                let (_, v) = row.map_err(unavailable)?;
                out.push(serde_json::from_slice(v.value()).map_err(unavailable)?);
            }
            Ok(out)
        })
        .await
    }

    pub async fn revoke_token(&self, id: &str) -> Result<bool, Error> {
        let key = id.to_string();
        let found = self
            .write(move |tx| {
                let found = {
                    let mut t = tx.open_table(TOKENS).map_err(unavailable)?;
                    let rec: Option<TokenRecord> = match t.get(key.as_str()).map_err(unavailable)? {
                        Some(g) => Some(serde_json::from_slice(g.value()).map_err(unavailable)?),
                        None => None,
                    };
                    match rec {
                        Some(mut r) => {
                            r.revoked = true;
                            let bytes = serde_json::to_vec(&r).map_err(unavailable)?;
                            t.insert(key.as_str(), bytes.as_slice())
                                .map_err(unavailable)?;
                            true
                        }
                        None => false,
                    }
                };
                Ok(found)
            })
            .await?;
        let _ = self.events.send(Event::Token(id.to_string()));
        Ok(found)
    }

    pub async fn spend_call(&self, id: &str, max: u64) -> Result<bool, Error> {
        let id = id.to_string();
        self.write(move |tx| {
            let ok = {
                let mut t = tx.open_table(CALLS).map_err(unavailable)?;
                let n = t
                    .get(id.as_str())
                    .map_err(unavailable)?
                    .map(|g| g.value())
                    .unwrap_or(0);
                if n >= max {
                    false
                } else {
                    t.insert(id.as_str(), n + 1).map_err(unavailable)?;
                    true
                }
            };
            Ok(ok)
        })
        .await
    }

    pub async fn switches(&self) -> Result<SwitchState, Error> {
        self.blocking(|db| {
            let tx = db.begin_read().map_err(unavailable)?;
            let t = tx.open_table(SWITCHES).map_err(unavailable)?;
            match t.get("state").map_err(unavailable)? {
                Some(g) => serde_json::from_slice(g.value()).map_err(unavailable),
                None => Ok(SwitchState::default()),
            }
        })
        .await
    }

    pub async fn apply(&self, c: &SwitchChange) -> Result<(), Error> {
        let c = c.clone();
        self.write(move |tx| {
            {
                let mut t = tx.open_table(SWITCHES).map_err(unavailable)?;
                let mut s: SwitchState = match t.get("state").map_err(unavailable)? {
                    Some(g) => serde_json::from_slice(g.value()).map_err(unavailable)?,
                    None => SwitchState::default(),
                };
                c.apply_to(&mut s);
                let bytes = serde_json::to_vec(&s).map_err(unavailable)?;
                t.insert("state", bytes.as_slice()).map_err(unavailable)?;
            }
            Ok(())
        })
        .await?;
        let _ = self.events.send(Event::Switches);
        Ok(())
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
        let (id, agent, state, record, body) = (
            id.to_string(),
            agent.to_string(),
            state.to_string(),
            record.to_vec(),
            body.to_vec(),
        );
        // No change notice (as with redis): nobody can wait on an id not yet answered.
        self.write(move |tx| {
            {
                let mut counts = tx.open_table(PENDING_COUNT).map_err(unavailable)?;
                let n = counts
                    .get(agent.as_str())
                    .map_err(unavailable)?
                    .map_or(0, |g| g.value());
                if n >= u64::from(max_pending) {
                    return Ok(false);
                }
                counts.insert(agent.as_str(), n + 1).map_err(unavailable)?;
                tx.open_table(PENDING)
                    .map_err(unavailable)?
                    .insert(format!("{agent}/{id}").as_str(), 1)
                    .map_err(unavailable)?;
                tx.open_table(DUE)
                    .map_err(unavailable)?
                    .insert(due_key(expires_at_ms, &id).as_str(), 1)
                    .map_err(unavailable)?;
                tx.open_table(BY_STATE)
                    .map_err(unavailable)?
                    .insert(format!("{state}/{id}").as_str(), 1)
                    .map_err(unavailable)?;
                tx.open_table(APPROVALS)
                    .map_err(unavailable)?
                    .insert(id.as_str(), record.as_slice())
                    .map_err(unavailable)?;
                tx.open_table(BODIES)
                    .map_err(unavailable)?
                    .insert(id.as_str(), body.as_slice())
                    .map_err(unavailable)?;
            }
            Ok(true)
        })
        .await
    }

    pub async fn get_blob(&self, name: &'static str, id: &str) -> Result<Option<Vec<u8>>, Error> {
        let id = id.to_string();
        self.blocking(move |db| {
            let tx = db.begin_read().map_err(unavailable)?;
            let t = tx.open_table(table(name)).map_err(unavailable)?;
            Ok(t.get(id.as_str())
                .map_err(unavailable)?
                .map(|g| g.value().to_vec()))
        })
        .await
    }

    pub async fn cas_approval(&self, c: super::Cas<'_>) -> Result<bool, Error> {
        let (id, agent, old, new) = (
            c.id.to_string(),
            c.agent.to_string(),
            c.old.to_vec(),
            c.new.to_vec(),
        );
        let (from, to) = (c.old_state.to_string(), c.new_state.to_string());
        let result = c.result.map(<[u8]>::to_vec);
        let ev = id.clone();
        let ok = self
            .write(move |tx| {
                {
                    let mut t = tx.open_table(APPROVALS).map_err(unavailable)?;
                    let same = t
                        .get(id.as_str())
                        .map_err(unavailable)?
                        .is_some_and(|g| g.value() == old.as_slice());
                    if !same {
                        return Ok(false);
                    }
                    t.insert(id.as_str(), new.as_slice()).map_err(unavailable)?;
                    if from != to {
                        let mut by = tx.open_table(BY_STATE).map_err(unavailable)?;
                        by.remove(format!("{from}/{id}").as_str())
                            .map_err(unavailable)?;
                        by.insert(format!("{to}/{id}").as_str(), 1)
                            .map_err(unavailable)?;
                    }
                    if to != "pending" {
                        let was = tx
                            .open_table(PENDING)
                            .map_err(unavailable)?
                            .remove(format!("{agent}/{id}").as_str())
                            .map_err(unavailable)?
                            .is_some();
                        if was {
                            uncount_pending(tx, &agent)?;
                        }
                    }
                    if let Some(r) = &result {
                        tx.open_table(RESULTS)
                            .map_err(unavailable)?
                            .insert(id.as_str(), r.as_slice())
                            .map_err(unavailable)?;
                    }
                }
                Ok(true)
            })
            .await?;
        if ok {
            let _ = self.events.send(Event::Approval(ev));
        }
        Ok(ok)
    }

    pub async fn list_approvals(&self, state: Option<&str>) -> Result<Vec<Vec<u8>>, Error> {
        let state = state.map(str::to_string);
        self.blocking(move |db| {
            let tx = db.begin_read().map_err(unavailable)?;
            let t = tx.open_table(APPROVALS).map_err(unavailable)?;
            let mut out = Vec::new();
            match state {
                None => {
                    for row in t.iter().map_err(unavailable)? {
                        out.push(row.map_err(unavailable)?.1.value().to_vec());
                    }
                }
                Some(s) => {
                    let by = tx.open_table(BY_STATE).map_err(unavailable)?;
                    let (lo, hi) = (format!("{s}/"), format!("{s}0"));
                    for row in by.range(lo.as_str()..hi.as_str()).map_err(unavailable)? {
                        let (k, _) = row.map_err(unavailable)?;
                        let id = &k.value()[lo.len()..];
                        if let Some(v) = t.get(id).map_err(unavailable)? {
                            out.push(v.value().to_vec());
                        }
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    pub async fn delete_approval(&self, id: &str, agent: &str, state: &str) -> Result<(), Error> {
        let (id, agent, state) = (id.to_string(), agent.to_string(), state.to_string());
        self.write(move |tx| {
            {
                for t in [APPROVALS, BODIES, RESULTS] {
                    tx.open_table(t)
                        .map_err(unavailable)?
                        .remove(id.as_str())
                        .map_err(unavailable)?;
                }
                let was = tx
                    .open_table(PENDING)
                    .map_err(unavailable)?
                    .remove(format!("{agent}/{id}").as_str())
                    .map_err(unavailable)?
                    .is_some();
                if was {
                    uncount_pending(tx, &agent)?;
                }
                tx.open_table(BY_STATE)
                    .map_err(unavailable)?
                    .remove(format!("{state}/{id}").as_str())
                    .map_err(unavailable)?;
            }
            Ok(())
        })
        .await
    }
    /// Removes up to `limit` entries of `index` at or before `now_ms` and answers the
    /// records they name that still exist (in whatever state they are now).
    pub async fn take_due(
        &self,
        index: TimeIndex,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<Vec<u8>>, Error> {
        let table = index_table(index);
        // Most sweeps find nothing: look first, so an idle node does not commit (fsync)
        // an empty transaction every second.
        let any = self
            .blocking(move |db| {
                let tx = db.begin_read().map_err(unavailable)?;
                let due = tx.open_table(table).map_err(unavailable)?;
                let hi = format!("{:020}0", now_ms);
                let found = due.range(..hi.as_str()).map_err(unavailable)?.next();
                Ok(found.is_some())
            })
            .await?;
        if !any {
            return Ok(vec![]);
        }
        self.write(move |tx| {
            let mut due = tx.open_table(table).map_err(unavailable)?;
            let hi = format!("{:020}0", now_ms);
            let mut keys = Vec::new();
            for row in due.range(..hi.as_str()).map_err(unavailable)?.take(limit) {
                keys.push(row.map_err(unavailable)?.0.value().to_string());
            }
            let approvals = tx.open_table(APPROVALS).map_err(unavailable)?;
            let mut out = Vec::with_capacity(keys.len());
            for k in &keys {
                due.remove(k.as_str()).map_err(unavailable)?;
                let id = k.split_once('/').map_or("", |(_, id)| id);
                if let Some(v) = approvals.get(id).map_err(unavailable)? {
                    out.push(v.value().to_vec());
                }
            }
            Ok(out)
        })
        .await
    }

    /// (Re-)enters an approval in `index` at `at_ms`; idempotent.
    pub async fn track(&self, index: TimeIndex, id: &str, at_ms: u64) -> Result<(), Error> {
        let key = due_key(at_ms, id);
        let table = index_table(index);
        self.write(move |tx| {
            tx.open_table(table)
                .map_err(unavailable)?
                .insert(key.as_str(), 1)
                .map_err(unavailable)?;
            Ok(())
        })
        .await
    }
}
