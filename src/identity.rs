//! Credentials: issue (`pcx_<id>_<secret>`), hash at rest (SHA-256, or HMAC-SHA256 with a
//! pepper), verify in constant time, expire, revoke — and a cache that is trusted only
//! while the store's invalidation feed is live.

use crate::classify::Risk;
use crate::error::Error;
use crate::fastmap::FastMap;
use crate::policy::{Agent, Glob, Narrowing};
use crate::store::{now_ms, Store, TokenRecord};
use hmac::{Hmac, Mac};
use ring::rand::SecureRandom;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use subtle::ConstantTimeEq;

pub const AGENT_PREFIX: &str = "pcx_";
pub const OPERATOR_PREFIX: &str = "pco_";
const CACHE_MAX: usize = 100_000;
/// Made-up ids remembered as unknown (their own map: a flood of them clears only it).
const UNKNOWN_MAX: usize = 10_000;

pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    ring::rand::SystemRandom::new()
        .fill(&mut buf)
        .expect("the system RNG works");
    hex::encode(buf)
}

/// Hex hash of a secret as stored.
pub fn hash_secret(pepper: Option<&[u8]>, secret: &str) -> String {
    match pepper {
        Some(p) => {
            let mut m =
                <Hmac<Sha256> as Mac>::new_from_slice(p).expect("hmac takes any key length");
            m.update(secret.as_bytes());
            crate::digest::to_hex(&m.finalize().into_bytes())
        }
        None => crate::digest::to_hex(&Sha256::digest(secret.as_bytes())),
    }
}

pub fn sha256_hex(s: &str) -> String {
    crate::digest::to_hex(&Sha256::digest(s.as_bytes()))
}

/// Constant-time comparison of two hex digests.
pub fn digest_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// Splits `pcx_<id>_<secret>`; anything else is malformed.
pub fn parse_agent_token(t: &str) -> Option<(&str, &str)> {
    let rest = t.strip_prefix(AGENT_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let ok = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (ok(id, 32) && ok(secret, 64)).then_some((id, secret))
}

/// The bearer credential of a request, if exactly one well-formed one was sent.
pub fn bearer(h: &http::HeaderMap) -> Option<&str> {
    let mut all = h.get_all(http::header::AUTHORIZATION).iter();
    let v = all.next()?;
    if all.next().is_some() {
        return None;
    }
    let v = v.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// A new credential: the full token is returned once and never stored.
pub struct Issued {
    pub token: String,
    pub record: TokenRecord,
}

pub struct IssueRequest {
    pub agent: String,
    pub ttl_ms: u64,
    pub tools: Option<Vec<String>>,
    pub max_risk: Option<Risk>,
    pub max_calls: Option<u64>,
    pub issued_by: String,
}

pub fn issue(pepper: Option<&[u8]>, r: IssueRequest) -> Issued {
    let id = uuid::Uuid::now_v7().simple().to_string();
    let secret = random_hex(32);
    let now = now_ms();
    let record = TokenRecord {
        id: id.clone(),
        agent: r.agent,
        hash: hash_secret(pepper, &secret),
        created_at_ms: now,
        expires_at_ms: now.saturating_add(r.ttl_ms),
        tools: r.tools,
        max_risk: r.max_risk,
        max_calls: r.max_calls,
        revoked: false,
        issued_by: r.issued_by,
    };
    Issued {
        token: format!("{AGENT_PREFIX}{id}_{secret}"),
        record,
    }
}

/// A token as cached: the record plus its compiled narrowing.
pub struct Cached {
    pub record: TokenRecord,
    pub narrowing: Narrowing,
}

/// What a credential narrows its agent's profile to.
pub fn narrowing_of(record: &TokenRecord) -> Narrowing {
    Narrowing {
        tools: record
            .tools
            .as_ref()
            .map(|t| t.iter().map(|s| Glob(s.clone())).collect()),
        max_risk: record.max_risk,
    }
}

fn compile(record: TokenRecord) -> Arc<Cached> {
    let narrowing = narrowing_of(&record);
    Arc::new(Cached { record, narrowing })
}

/// The authenticated caller of one request.
pub struct Identity {
    pub token: Arc<Cached>,
    pub agent: Arc<Agent>,
}

#[derive(Default)]
pub struct Credentials {
    /// Credentials the store knows, with the feed generation and time they were read in.
    cache: RwLock<FastMap<String, Entry>>,
    /// Ids the store does not know, in their own bounded map: ids are server-generated
    /// UUIDv7s, so an unknown one is never about to become valid, and a flood of
    /// made-up ids costs one store round trip each, not one per request — and cannot
    /// evict the valid credentials above when this map fills and is cleared.
    unknown: RwLock<HashMap<String, Filled>>,
    /// Bumped on every invalidation; a lookup that raced one does not fill the cache.
    gen: AtomicU64,
}

/// When and under which feed generation a cache entry was read from the store.
#[derive(Clone, Copy)]
pub struct Filled {
    epoch: u64,
    at: std::time::Instant,
}

impl Filled {
    /// Served only under the feed generation it was read in, and for at most
    /// [`crate::store::cache_max_age`]: a notice lost on the way still takes effect
    /// within that bound.
    pub fn fresh(&self, epoch: u64) -> bool {
        self.epoch == epoch && self.at.elapsed() < crate::store::cache_max_age()
    }
    pub fn now(epoch: u64) -> Filled {
        Filled {
            epoch,
            at: std::time::Instant::now(),
        }
    }
}

struct Entry {
    cached: Arc<Cached>,
    filled: Filled,
}

impl Credentials {
    async fn lookup(&self, store: &Store, id: &str) -> Result<Option<Arc<Cached>>, Error> {
        let epoch = store.feed_epoch();
        if let Some(e) = epoch {
            if let Some(c) = self.cache.read().expect("cache lock").get(id) {
                if c.filled.fresh(e) {
                    return Ok(Some(c.cached.clone()));
                }
            }
            if let Some(f) = self.unknown.read().expect("cache lock").get(id) {
                if f.fresh(e) {
                    return Ok(None);
                }
            }
        }
        let g = self.gen.load(Ordering::Acquire);
        let c = store.get_token(id).await?.map(compile);
        if let Some(e) = epoch {
            // The generation is checked under the lock an invalidation takes, so a
            // lookup that raced one never stores what it read before it; an entry
            // filled while the feed was re-subscribing carries the old epoch and is
            // never served.
            let mut w = self.cache.write().expect("cache lock");
            if self.gen.load(Ordering::Acquire) == g && store.feed_epoch() == Some(e) {
                let filled = Filled::now(e);
                match &c {
                    Some(c) => {
                        if w.len() >= CACHE_MAX {
                            w.clear();
                        }
                        w.insert(
                            id.to_string(),
                            Entry {
                                cached: c.clone(),
                                filled,
                            },
                        );
                    }
                    None => {
                        let mut u = self.unknown.write().expect("cache lock");
                        if u.len() >= UNKNOWN_MAX {
                            u.clear();
                        }
                        u.insert(id.to_string(), filled);
                    }
                }
            }
        }
        Ok(c)
    }

    pub fn invalidate(&self, id: &str) {
        let mut w = self.cache.write().expect("cache lock");
        self.gen.fetch_add(1, Ordering::AcqRel);
        w.remove(id);
        self.unknown.write().expect("cache lock").remove(id);
    }

    pub fn clear(&self) {
        let mut w = self.cache.write().expect("cache lock");
        self.gen.fetch_add(1, Ordering::AcqRel);
        w.clear();
        self.unknown.write().expect("cache lock").clear();
    }

    /// Missing, malformed, unknown, expired, revoked or unconfigured agent → 401.
    pub async fn authenticate(
        &self,
        store: &Store,
        pepper: Option<&[u8]>,
        agents: &FastMap<String, Arc<Agent>>,
        h: &http::HeaderMap,
    ) -> Result<Identity, Error> {
        let token = bearer(h).ok_or(Error::Unauthorized)?;
        let (id, secret) = parse_agent_token(token).ok_or(Error::Unauthorized)?;
        let cached = self.lookup(store, id).await?.ok_or(Error::Unauthorized)?;
        let r = &cached.record;
        let hash_ok = digest_eq(&hash_secret(pepper, secret), &r.hash);
        if !hash_ok || r.revoked || now_ms() >= r.expires_at_ms {
            return Err(Error::Unauthorized);
        }
        let agent = agents.get(&r.agent).cloned().ok_or(Error::Unauthorized)?;
        Ok(Identity {
            token: cached,
            agent,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_flood_of_made_up_ids_does_not_evict_valid_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            &crate::config::StoreConfig {
                kind: crate::config::StoreKind::Embedded(dir.path().join("s.redb")),
                pepper: None,
            },
            "n",
        )
        .await
        .unwrap();
        let i = issue(
            None,
            IssueRequest {
                agent: "a".into(),
                ttl_ms: 3_600_000,
                tools: None,
                max_risk: None,
                max_calls: None,
                issued_by: "op".into(),
            },
        );
        store.put_token(&i.record).await.unwrap();
        let creds = Credentials::default();
        assert!(creds.lookup(&store, &i.record.id).await.unwrap().is_some());
        for n in 0..UNKNOWN_MAX + 10 {
            let made_up = format!("{n:032x}");
            assert!(creds.lookup(&store, &made_up).await.unwrap().is_none());
        }
        // The unknown map filled and was cleared; the valid credential is still cached.
        assert!(creds.unknown.read().unwrap().len() < UNKNOWN_MAX);
        assert!(creds.cache.read().unwrap().contains_key(&i.record.id));
    }

    #[test]
    fn tokens_parse_and_hash() {
        let i = issue(
            None,
            IssueRequest {
                agent: "a".into(),
                ttl_ms: 1000,
                tools: None,
                max_risk: None,
                max_calls: None,
                issued_by: "op".into(),
            },
        );
        let (id, secret) = parse_agent_token(&i.token).unwrap();
        assert_eq!(id, i.record.id);
        assert!(digest_eq(&hash_secret(None, secret), &i.record.hash));
        assert!(!i.record.hash.contains(secret));
        assert_ne!(hash_secret(Some(b"pepper"), secret), i.record.hash);
        for bad in [
            "",
            "pcx_",
            "pcx_abc_def",
            "pco_x_y",
            &i.token.replace("pcx_", "pcy_"),
            &format!("{}0", i.token),
        ] {
            assert!(parse_agent_token(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn bearer_needs_exactly_one() {
        let mut h = http::HeaderMap::new();
        assert!(bearer(&h).is_none());
        h.append("authorization", "Bearer abc".parse().unwrap());
        assert_eq!(bearer(&h), Some("abc"));
        h.append("authorization", "Bearer def".parse().unwrap());
        assert!(bearer(&h).is_none());
        let mut h = http::HeaderMap::new();
        h.insert("authorization", "Basic abc".parse().unwrap());
        assert!(bearer(&h).is_none());
    }
}
