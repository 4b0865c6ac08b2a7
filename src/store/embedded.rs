//! The embedded backend: one redb file, durable on every commit, single node.

use super::{unavailable, Event, SwitchChange, SwitchState, TokenRecord, SCHEMA_VERSION};
use crate::error::Error;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::path::Path;
use std::sync::Arc;
use tokio::sync::broadcast;

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

fn table(name: &str) -> TableDefinition<'static, &'static str, &'static [u8]> {
    match name {
        "approvals" => APPROVALS,
        "approval_bodies" => BODIES,
        _ => RESULTS,
    }
}

pub struct Embedded {
    db: Arc<Database>,
    events: broadcast::Sender<Event>,
}

impl Embedded {
    pub async fn open(path: &Path) -> Result<Embedded, Error> {
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
            }
            tx.commit().map_err(unavailable)?;
            Ok(db)
        })
        .await
        .map_err(unavailable)??;
        let (events, _) = broadcast::channel(1024);
        Ok(Embedded {
            db: Arc::new(db),
            events,
        })
    }

    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let db = self.db.clone();
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
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(unavailable)?;
            tx.open_table(TOKENS)
                .map_err(unavailable)?
                .insert(id.as_str(), bytes.as_slice())
                .map_err(unavailable)?;
            tx.commit().map_err(unavailable)
        })
        .await?;
        let _ = self.events.send(Event::Token(t.id.clone()));
        Ok(())
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
            .blocking(move |db| {
                let tx = db.begin_write().map_err(unavailable)?;
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
                tx.commit().map_err(unavailable)?;
                Ok(found)
            })
            .await?;
        let _ = self.events.send(Event::Token(id.to_string()));
        Ok(found)
    }

    pub async fn spend_call(&self, id: &str, max: u64) -> Result<bool, Error> {
        let id = id.to_string();
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(unavailable)?;
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
            tx.commit().map_err(unavailable)?;
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
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(unavailable)?;
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
            tx.commit().map_err(unavailable)
        })
        .await?;
        let _ = self.events.send(Event::Switches);
        Ok(())
    }

    pub async fn create_approval(
        &self,
        id: &str,
        agent: &str,
        record: &[u8],
        body: &[u8],
        max_pending: u32,
    ) -> Result<bool, Error> {
        let (id, agent, record, body) = (
            id.to_string(),
            agent.to_string(),
            record.to_vec(),
            body.to_vec(),
        );
        let ev = id.clone();
        let ok = self
            .blocking(move |db| {
                let tx = db.begin_write().map_err(unavailable)?;
                {
                    let mut pending = tx.open_table(PENDING).map_err(unavailable)?;
                    let lo = format!("{agent}/");
                    let hi = format!("{agent}0");
                    let n = pending
                        .range(lo.as_str()..hi.as_str())
                        .map_err(unavailable)?
                        .count();
                    if n >= max_pending as usize {
                        return Ok(false);
                    }
                    pending
                        .insert(format!("{agent}/{id}").as_str(), 1)
                        .map_err(unavailable)?;
                    tx.open_table(BY_STATE)
                        .map_err(unavailable)?
                        .insert(format!("pending/{id}").as_str(), 1)
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
                tx.commit().map_err(unavailable)?;
                Ok(true)
            })
            .await?;
        if ok {
            let _ = self.events.send(Event::Approval(ev));
        }
        Ok(ok)
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
            .blocking(move |db| {
                let tx = db.begin_write().map_err(unavailable)?;
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
                        tx.open_table(PENDING)
                            .map_err(unavailable)?
                            .remove(format!("{agent}/{id}").as_str())
                            .map_err(unavailable)?;
                    }
                    if let Some(r) = &result {
                        tx.open_table(RESULTS)
                            .map_err(unavailable)?
                            .insert(id.as_str(), r.as_slice())
                            .map_err(unavailable)?;
                    }
                }
                tx.commit().map_err(unavailable)?;
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
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(unavailable)?;
            {
                for t in [APPROVALS, BODIES, RESULTS] {
                    tx.open_table(t)
                        .map_err(unavailable)?
                        .remove(id.as_str())
                        .map_err(unavailable)?;
                }
                tx.open_table(PENDING)
                    .map_err(unavailable)?
                    .remove(format!("{agent}/{id}").as_str())
                    .map_err(unavailable)?;
                tx.open_table(BY_STATE)
                    .map_err(unavailable)?
                    .remove(format!("{state}/{id}").as_str())
                    .map_err(unavailable)?;
            }
            tx.commit().map_err(unavailable)
        })
        .await
    }
}
