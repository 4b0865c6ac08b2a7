//! What signals keep in the store: open signals (one per agent and kind, claimed
//! atomically so one replica fires), signal records, per-agent baselines and tool
//! history, and — with redis — the windows every replica flushes its counts into.

use super::embedded::Embedded;
use super::{unavailable, Store};
use crate::error::Error;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::sync::LazyLock;

/// Signal records kept; older ones are dropped first.
pub const MAX_RECORDS: usize = 1000;

/// `open/<agent>/<kind>`, `rec/<id>`, `base/<agent>`, `tools/<agent>`.
const SIGNALS: TableDefinition<&str, &[u8]> = TableDefinition::new("signals");

/// An agent's baseline for one signal: calls or response bytes per window,
/// exponentially weighted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    pub value: f64,
    /// When it was last moved.
    pub at_ms: u64,
}

/// Whether a tool was new to an agent, and since when the agent has been seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolSeen {
    Known,
    New {
        first_seen_ms: u64,
    },
    /// The agent's history is full: nothing more is remembered or flagged.
    Full,
}

#[derive(Default, Serialize, Deserialize)]
struct Tools {
    first_seen_ms: u64,
    tools: BTreeSet<String>,
}

/// Moves a baseline by one observation (per window) at `now_ms`, unless it was moved
/// less than `every_ms` ago; the first observation seeds it.
pub fn ewma(
    b: Option<Baseline>,
    now_ms: u64,
    half_life_ms: u64,
    every_ms: u64,
    obs: f64,
) -> Baseline {
    match b {
        None => Baseline {
            value: obs,
            at_ms: now_ms,
        },
        Some(b) if now_ms.saturating_sub(b.at_ms) < every_ms => b,
        Some(b) => {
            let dt = now_ms.saturating_sub(b.at_ms) as f64;
            let a = 1.0 - (-dt / half_life_ms.max(1) as f64).exp2();
            Baseline {
                value: b.value + a * (obs - b.value),
                at_ms: now_ms,
            }
        }
    }
}

static WINDOW: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        "local b = tonumber(ARGV[1]) local n = tonumber(ARGV[2]) local d = tonumber(ARGV[3]) \
         if d > 0 then redis.call('HINCRBY', KEYS[1], ARGV[1], d) redis.call('PEXPIRE', KEYS[1], ARGV[4]) end \
         local total = 0 local all = redis.call('HGETALL', KEYS[1]) \
         for i = 1, #all, 2 do \
           if tonumber(all[i]) > b - n then total = total + tonumber(all[i + 1]) \
           else redis.call('HDEL', KEYS[1], all[i]) end \
         end return total",
    )
});

static RUN: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        "if ARGV[1] == '1' then redis.call('SET', KEYS[1], ARGV[2], 'PX', 86400000) return tonumber(ARGV[2]) end \
         if tonumber(ARGV[2]) > 0 then local v = redis.call('INCRBY', KEYS[1], ARGV[2]) \
           redis.call('PEXPIRE', KEYS[1], 86400000) return v end \
         return tonumber(redis.call('GET', KEYS[1]) or '0')",
    )
});

static CLAIM: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        "if redis.call('SET', KEYS[1], ARGV[1], 'NX') then return '' end \
         return redis.call('GET', KEYS[1])",
    )
});

static RECLAIM: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('SET', KEYS[1], ARGV[2]) return 1 end return 0",
    )
});

static RELEASE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        "redis.call('DEL', KEYS[2], KEYS[3]) \
         if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) return 1 end return 0",
    )
});

static PUT: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        "redis.call('SET', KEYS[1] .. ARGV[1], ARGV[2]) redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1]) \
         local over = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[4]) \
         if over > 0 then local old = redis.call('ZRANGE', KEYS[2], 0, over - 1) \
           for _, id in ipairs(old) do redis.call('DEL', KEYS[1] .. id) end \
           redis.call('ZREMRANGEBYRANK', KEYS[2], 0, over - 1) end return 1",
    )
});

static BASELINE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        "local h = redis.call('HMGET', KEYS[1], 'value', 'at') \
         local now = tonumber(ARGV[1]) local v = tonumber(h[1]) local at = tonumber(h[2]) \
         if ARGV[4] == '' then if not at then return {} end return {tostring(v), tostring(at)} end \
         local obs = tonumber(ARGV[4]) \
         if not at then v = obs at = now \
         elseif now - at >= tonumber(ARGV[3]) then \
           local a = 1 - 2 ^ (-(now - at) / tonumber(ARGV[2])) v = v + a * (obs - v) at = now \
         end \
         redis.call('HSET', KEYS[1], 'value', tostring(v), 'at', tostring(at)) \
         redis.call('PEXPIRE', KEYS[1], 2592000000) \
         return {tostring(v), tostring(at)}",
    )
});

static TOOL: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        "redis.call('SET', KEYS[2], ARGV[3], 'NX') local first = redis.call('GET', KEYS[2]) \
         if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then return {0, first} end \
         if redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[2]) then return {2, first} end \
         redis.call('SADD', KEYS[1], ARGV[1]) return {1, first}",
    )
});

impl Store {
    /// Whether counts must be aggregated across replicas (redis).
    pub fn shared(&self) -> bool {
        matches!(self, Store::Redis(_))
    }

    /// Adds `delta` to this replica's share of a window (redis) and answers the window's
    /// total across replicas: buckets of `bucket_ms`, the last `buckets` of them.
    pub async fn window_add(
        &self,
        key: &str,
        bucket_ms: u64,
        buckets: u64,
        now_ms: u64,
        delta: u64,
    ) -> Result<u64, Error> {
        let Store::Redis(r) = self else {
            return Ok(delta);
        };
        let mut c = r.conn()?;
        WINDOW
            .key(r.key(&format!("sigw:{key}")))
            .arg(now_ms / bucket_ms.max(1))
            .arg(buckets)
            .arg(delta)
            .arg(bucket_ms * (buckets + 1))
            .invoke_async(&mut c)
            .await
            .map_err(|e| r.fail(e))
    }

    /// A run (consecutive events) across replicas: reset to `delta` or increased by it.
    pub async fn run_add(&self, key: &str, reset: bool, delta: u64) -> Result<u64, Error> {
        let Store::Redis(r) = self else {
            return Ok(delta);
        };
        let mut c = r.conn()?;
        RUN.key(r.key(&format!("sigr:{key}")))
            .arg(if reset { "1" } else { "0" })
            .arg(delta)
            .invoke_async(&mut c)
            .await
            .map_err(|e| r.fail(e))
    }

    /// Claims the open signal of `agent` and `kind` for `id`; the id already open otherwise.
    pub async fn signal_claim(
        &self,
        agent: &str,
        kind: &str,
        id: &str,
    ) -> Result<Option<String>, Error> {
        match self {
            Store::Redis(r) => {
                let mut c = r.conn()?;
                let got: String = CLAIM
                    .key(r.key(&format!("sigopen:{agent}:{kind}")))
                    .arg(id)
                    .invoke_async(&mut c)
                    .await
                    .map_err(|e| r.fail(e))?;
                Ok((!got.is_empty()).then_some(got))
            }
            Store::Embedded(e) => {
                let (k, id) = (format!("open/{agent}/{kind}"), id.to_string());
                e.write(move |tx| {
                    let mut t = tx.open_table(SIGNALS).map_err(unavailable)?;
                    let old = t
                        .get(k.as_str())
                        .map_err(unavailable)?
                        .map(|g| String::from_utf8_lossy(g.value()).into_owned());
                    if old.is_none() {
                        t.insert(k.as_str(), id.as_bytes()).map_err(unavailable)?;
                    }
                    Ok(old)
                })
                .await
            }
        }
    }

    /// Replaces the open signal `old` of `agent` and `kind` by `new` (the brake `old`
    /// applied was lifted without acknowledging it); false if `old` is no longer open.
    pub async fn signal_reclaim(
        &self,
        agent: &str,
        kind: &str,
        old: &str,
        new: &str,
    ) -> Result<bool, Error> {
        match self {
            Store::Redis(r) => {
                let mut c = r.conn()?;
                let n: i64 = RECLAIM
                    .key(r.key(&format!("sigopen:{agent}:{kind}")))
                    .arg(old)
                    .arg(new)
                    .invoke_async(&mut c)
                    .await
                    .map_err(|e| r.fail(e))?;
                Ok(n == 1)
            }
            Store::Embedded(e) => {
                let (k, old, new) = (
                    format!("open/{agent}/{kind}"),
                    old.to_string(),
                    new.to_string(),
                );
                e.write(move |tx| {
                    let mut t = tx.open_table(SIGNALS).map_err(unavailable)?;
                    let same = t
                        .get(k.as_str())
                        .map_err(unavailable)?
                        .is_some_and(|g| g.value() == old.as_bytes());
                    if same {
                        t.insert(k.as_str(), new.as_bytes()).map_err(unavailable)?;
                    }
                    Ok(same)
                })
                .await
            }
        }
    }

    /// Releases the open signal `id` of `agent` and `kind` (acknowledged) and empties
    /// the counts behind it.
    pub async fn signal_release(&self, agent: &str, kind: &str, id: &str) -> Result<(), Error> {
        match self {
            Store::Redis(r) => {
                let mut c = r.conn()?;
                let _: i64 = RELEASE
                    .key(r.key(&format!("sigopen:{agent}:{kind}")))
                    .key(r.key(&format!("sigw:{kind}:{agent}")))
                    .key(r.key(&format!("sigr:{kind}:{agent}")))
                    .arg(id)
                    .invoke_async(&mut c)
                    .await
                    .map_err(|e| r.fail(e))?;
                Ok(())
            }
            Store::Embedded(e) => {
                let (k, id) = (format!("open/{agent}/{kind}"), id.to_string());
                e.write(move |tx| {
                    let mut t = tx.open_table(SIGNALS).map_err(unavailable)?;
                    let same = t
                        .get(k.as_str())
                        .map_err(unavailable)?
                        .is_some_and(|g| g.value() == id.as_bytes());
                    if same {
                        t.remove(k.as_str()).map_err(unavailable)?;
                    }
                    Ok(())
                })
                .await
            }
        }
    }

    /// Stores (or replaces) a signal record; `id`s sort by time (UUIDv7).
    pub async fn signal_put(&self, id: &str, at_ms: u64, json: &[u8]) -> Result<(), Error> {
        match self {
            Store::Redis(r) => {
                let mut c = r.conn()?;
                let _: i64 = PUT
                    .key(r.key("sig:"))
                    .key(r.key("sigs"))
                    .arg(id)
                    .arg(json)
                    .arg(at_ms)
                    .arg(MAX_RECORDS)
                    .invoke_async(&mut c)
                    .await
                    .map_err(|e| r.fail(e))?;
                Ok(())
            }
            Store::Embedded(e) => {
                let (k, json) = (format!("rec/{id}"), json.to_vec());
                e.write(move |tx| {
                    let mut t = tx.open_table(SIGNALS).map_err(unavailable)?;
                    t.insert(k.as_str(), json.as_slice()).map_err(unavailable)?;
                    let mut old = Vec::new();
                    let n = t.range("rec/".."rec0").map_err(unavailable)?.count();
                    if n > MAX_RECORDS {
                        for row in t
                            .range("rec/".."rec0")
                            .map_err(unavailable)?
                            .take(n - MAX_RECORDS)
                        {
                            old.push(row.map_err(unavailable)?.0.value().to_string());
                        }
                    }
                    for k in old {
                        t.remove(k.as_str()).map_err(unavailable)?;
                    }
                    Ok(())
                })
                .await
            }
        }
    }

    pub async fn signal_get(&self, id: &str) -> Result<Option<Vec<u8>>, Error> {
        match self {
            Store::Redis(r) => r.get_blob(&format!("sig:{id}")).await,
            Store::Embedded(e) => {
                let k = format!("rec/{id}");
                embedded_get(e, k).await
            }
        }
    }

    /// The newest `limit` signal records, newest first.
    pub async fn signal_list(&self, limit: usize) -> Result<Vec<Vec<u8>>, Error> {
        match self {
            Store::Redis(r) => {
                let mut c = r.conn()?;
                let ids: Vec<String> = redis::cmd("ZREVRANGE")
                    .arg(r.key("sigs"))
                    .arg(0)
                    .arg(limit.saturating_sub(1))
                    .query_async(&mut c)
                    .await
                    .map_err(|e| r.fail(e))?;
                if ids.is_empty() {
                    return Ok(Vec::new());
                }
                let keys: Vec<String> = ids.iter().map(|i| r.key(&format!("sig:{i}"))).collect();
                let v: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
                    .arg(keys)
                    .query_async(&mut c)
                    .await
                    .map_err(|e| r.fail(e))?;
                Ok(v.into_iter().flatten().collect())
            }
            Store::Embedded(e) => {
                e.blocking(move |db| {
                    let tx = db.begin_read().map_err(unavailable)?;
                    let t = match tx.open_table(SIGNALS) {
                        Ok(t) => t,
                        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                        Err(e) => return Err(unavailable(e)),
                    };
                    let mut out = Vec::new();
                    for row in t
                        .range("rec/".."rec0")
                        .map_err(unavailable)?
                        .rev()
                        .take(limit)
                    {
                        out.push(row.map_err(unavailable)?.1.value().to_vec());
                    }
                    Ok(out)
                })
                .await
            }
        }
    }

    /// Moves `agent`'s baseline for `kind` by one observation (see [`ewma`]) and
    /// answers it; with no observation, only reads it.
    pub async fn baseline(
        &self,
        agent: &str,
        kind: &str,
        now_ms: u64,
        half_life_ms: u64,
        every_ms: u64,
        obs: Option<f64>,
    ) -> Result<Option<Baseline>, Error> {
        match self {
            Store::Redis(r) => {
                let mut c = r.conn()?;
                let v: Vec<String> = BASELINE
                    .key(r.key(&format!("sigb:{kind}:{agent}")))
                    .arg(now_ms)
                    .arg(half_life_ms.max(1))
                    .arg(every_ms)
                    .arg(obs.map(|o| o.to_string()).unwrap_or_default())
                    .invoke_async(&mut c)
                    .await
                    .map_err(|e| r.fail(e))?;
                let f = |s: &str| s.parse::<f64>().unwrap_or(0.0);
                Ok(match v.as_slice() {
                    [value, at] => Some(Baseline {
                        value: f(value),
                        at_ms: f(at) as u64,
                    }),
                    _ => None,
                })
            }
            Store::Embedded(e) => {
                let k = format!("base/{agent}/{kind}");
                let Some(obs) = obs else {
                    let b = embedded_get(e, k).await?;
                    return Ok(b.and_then(|b| serde_json::from_slice(&b).ok()));
                };
                e.write(move |tx| {
                    let mut t = tx.open_table(SIGNALS).map_err(unavailable)?;
                    let old: Option<Baseline> = t
                        .get(k.as_str())
                        .map_err(unavailable)?
                        .and_then(|g| serde_json::from_slice(g.value()).ok());
                    let b = ewma(old, now_ms, half_life_ms, every_ms, obs);
                    if old != Some(b) {
                        let j = serde_json::to_vec(&b).map_err(unavailable)?;
                        t.insert(k.as_str(), j.as_slice()).map_err(unavailable)?;
                    }
                    Ok(Some(b))
                })
                .await
            }
        }
    }

    /// Records that `agent` called `tool` (at most `max` tools per agent).
    pub async fn tool_seen(
        &self,
        agent: &str,
        tool: &str,
        max: u64,
        now_ms: u64,
    ) -> Result<ToolSeen, Error> {
        let (code, first) = match self {
            Store::Redis(r) => {
                let mut c = r.conn()?;
                let (code, first): (i64, String) = TOOL
                    .key(r.key(&format!("sigt:{agent}")))
                    .key(r.key(&format!("sigf:{agent}")))
                    .arg(tool)
                    .arg(max)
                    .arg(now_ms)
                    .invoke_async(&mut c)
                    .await
                    .map_err(|e| r.fail(e))?;
                (code, first.parse().unwrap_or(now_ms))
            }
            Store::Embedded(e) => {
                let (k, tool) = (format!("tools/{agent}"), tool.to_string());
                e.write(move |tx| {
                    let mut t = tx.open_table(SIGNALS).map_err(unavailable)?;
                    let mut h: Tools = t
                        .get(k.as_str())
                        .map_err(unavailable)?
                        .and_then(|g| serde_json::from_slice(g.value()).ok())
                        .unwrap_or(Tools {
                            first_seen_ms: now_ms,
                            tools: BTreeSet::new(),
                        });
                    let code = if h.tools.contains(&tool) {
                        0
                    } else if h.tools.len() as u64 >= max {
                        2
                    } else {
                        h.tools.insert(tool);
                        let j = serde_json::to_vec(&h).map_err(unavailable)?;
                        t.insert(k.as_str(), j.as_slice()).map_err(unavailable)?;
                        1
                    };
                    Ok((code, h.first_seen_ms))
                })
                .await?
            }
        };
        Ok(match code {
            0 => ToolSeen::Known,
            1 => ToolSeen::New {
                first_seen_ms: first,
            },
            _ => ToolSeen::Full,
        })
    }
}

async fn embedded_get(e: &Embedded, k: String) -> Result<Option<Vec<u8>>, Error> {
    e.blocking(move |db| {
        let tx = db.begin_read().map_err(unavailable)?;
        let t = match tx.open_table(SIGNALS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(unavailable(e)),
        };
        Ok(t.get(k.as_str())
            .map_err(unavailable)?
            .map(|g| g.value().to_vec()))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_observation_seeds_and_a_half_life_halves_the_gap() {
        let b = ewma(None, 1000, 60_000, 1000, 10.0);
        assert_eq!(b.value, 10.0);
        assert_eq!(ewma(Some(b), 1500, 60_000, 1000, 99.0), b, "moved too soon");
        let b2 = ewma(Some(b), 61_000, 60_000, 1000, 20.0);
        assert!((b2.value - 15.0).abs() < 1e-9, "{b2:?}");
    }
}
