//! Connecting to the redis store as `store.redis` says: a URL (`redis://`, or `rediss://`
//! over rustls with the system's roots or `ca_file`), an ACL user and password, a db
//! index, connect and command timeouts; or the master a Sentinel quorum names now, asked
//! again after every failover. Nothing here prints a URL or a password.

use crate::config::{RedisSettings, RedisTarget, SentinelSettings};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{
    Client, ConnectionAddr, ConnectionInfo, ErrorKind, IntoConnectionInfo, RedisError, RedisResult,
    TlsCertificates,
};
use std::time::Duration;

/// Builds clients and connections for the configured redis.
pub struct Connector {
    s: RedisSettings,
    /// With Sentinel: the master address the connections in use were made to.
    current: std::sync::Mutex<Option<(String, u16)>>,
}

fn err(detail: String) -> RedisError {
    RedisError::from((ErrorKind::Io, "redis connection", detail))
}

/// Within `bound`, or an I/O-kind error saying what did not finish.
async fn bounded<T>(
    bound: Duration,
    what: &str,
    f: impl std::future::Future<Output = RedisResult<T>>,
) -> RedisResult<T> {
    match tokio::time::timeout(bound, f).await {
        Ok(r) => r,
        Err(_) => Err(err(format!("{what}: no answer within {bound:?}"))),
    }
}

impl Connector {
    pub fn new(s: &RedisSettings) -> Connector {
        Connector {
            s: s.clone(),
            current: std::sync::Mutex::new(None),
        }
    }

    pub fn settings(&self) -> &RedisSettings {
        &self.s
    }

    /// Whether the master is found through Sentinel (and so may move).
    pub fn follows_failover(&self) -> bool {
        matches!(self.s.target, RedisTarget::Sentinel(_))
    }

    /// A client for the master: the URL's, or the one the sentinels name now.
    pub async fn client(&self) -> RedisResult<Client> {
        let info = match &self.s.target {
            RedisTarget::Url(url) => self.with_auth(url.as_str().into_connection_info()?, true),
            RedisTarget::Sentinel(s) => self.sentinel_master(s).await?,
        };
        self.open(info)
    }

    /// A connection manager on the master, with the configured timeouts; `extra` is added
    /// to the command timeout (for `WAIT`, which blocks up to its own timeout).
    pub async fn manager(&self, extra: Duration) -> RedisResult<ConnectionManager> {
        let client = self.client().await?;
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.s.connect_timeout))
            .set_response_timeout(Some(self.s.command_timeout + extra))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        bounded(
            self.s.connect_timeout + self.s.command_timeout,
            "connect",
            ConnectionManager::new_with_config(client, cfg),
        )
        .await
    }

    /// A pub/sub connection on the master (for the invalidation feed).
    pub async fn pubsub(&self) -> RedisResult<redis::aio::PubSub> {
        let client = self.client().await?;
        bounded(
            self.s.connect_timeout + self.s.command_timeout,
            "pub/sub connect",
            client.get_async_pubsub(),
        )
        .await
    }

    /// The configured user, password and db over what `info` carries (data nodes only).
    fn with_auth(&self, info: ConnectionInfo, data_node: bool) -> ConnectionInfo {
        if !data_node {
            return info;
        }
        let mut r = info.redis_settings().clone();
        if let Some(u) = &self.s.username {
            r = r.set_username(u);
        }
        if let Some(p) = &self.s.password {
            r = r.set_password(p);
        }
        if let Some(db) = self.s.db {
            r = r.set_db(db);
        }
        info.set_redis_settings(r)
    }

    /// A client for `info`, with `ca_file`'s roots when it is TLS and one is given.
    fn open(&self, info: ConnectionInfo) -> RedisResult<Client> {
        match (&self.s.ca_pem, info.addr()) {
            (Some(pem), ConnectionAddr::TcpTls { .. }) => Client::build_with_tls(
                info,
                TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem.clone()),
                },
            ),
            _ => Client::open(info),
        }
    }

    fn node_addr(&self, host: String, port: u16, tls: bool) -> ConnectionAddr {
        if tls {
            ConnectionAddr::TcpTls {
                host,
                port,
                insecure: false,
                tls_params: None,
            }
        } else {
            ConnectionAddr::Tcp(host, port)
        }
    }

    /// With Sentinel: whether the sentinels now name another master than the one the
    /// connections in use were made to (a switchover, or a failover this process has not
    /// seen fail yet). `false` when they cannot be asked.
    pub async fn master_moved(&self) -> bool {
        let RedisTarget::Sentinel(s) = &self.s.target else {
            return false;
        };
        let Some(current) = self.current.lock().expect("master lock").clone() else {
            return false;
        };
        match self.named(s).await {
            Ok((votes, _)) => votes.first().is_some_and(|(a, _)| *a != current),
            Err(_) => false,
        }
    }

    /// Every sentinel's answer at once (each within the timeouts): the addresses they
    /// name, most named first, and the last error.
    async fn named(
        &self,
        s: &SentinelSettings,
    ) -> RedisResult<(Vec<((String, u16), usize)>, Option<RedisError>)> {
        let bound = self.s.connect_timeout + self.s.command_timeout;
        let asks = s
            .addrs
            .iter()
            .map(|(h, p)| bounded(bound, "sentinel", self.ask_sentinel(s, h, *p)));
        let mut votes: Vec<((String, u16), usize)> = Vec::new();
        let mut last_err = None;
        for answer in futures_util::future::join_all(asks).await {
            match answer {
                Ok(Some(addr)) => match votes.iter_mut().find(|(a, _)| *a == addr) {
                    Some((_, n)) => *n += 1,
                    None => votes.push((addr, 1)),
                },
                Ok(None) => {}
                Err(e) => last_err = Some(e),
            }
        }
        votes.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
        Ok((votes, last_err))
    }

    /// Asks every sentinel at once which node is the master, and takes the most named
    /// one that itself answers `ROLE` as a master.
    async fn sentinel_master(&self, s: &SentinelSettings) -> RedisResult<ConnectionInfo> {
        let bound = self.s.connect_timeout + self.s.command_timeout;
        let (votes, last_err) = self.named(s).await?;
        for ((host, port), _) in votes {
            let addr = (host.clone(), port);
            let info = self.with_auth(
                self.node_addr(host, port, s.tls).into_connection_info()?,
                true,
            );
            if bounded(bound, "role", self.is_master(&info)).await? {
                *self.current.lock().expect("master lock") = Some(addr);
                return Ok(info);
            }
        }
        Err(match last_err {
            Some(e) => err(format!(
                "no sentinel names a reachable master `{}`: {e}",
                s.master_name
            )),
            None => RedisError::from((
                ErrorKind::MasterNameNotFoundBySentinel,
                "no sentinel names a reachable master",
                s.master_name.clone(),
            )),
        })
    }

    async fn ask_sentinel(
        &self,
        s: &SentinelSettings,
        host: &str,
        port: u16,
    ) -> RedisResult<Option<(String, u16)>> {
        let mut info = self
            .node_addr(host.to_string(), port, s.tls)
            .into_connection_info()?;
        let mut r = info.redis_settings().clone();
        if let Some(u) = &s.username {
            r = r.set_username(u);
        }
        if let Some(p) = &s.password {
            r = r.set_password(&p.0);
        }
        info = info.set_redis_settings(r);
        let mut c = self.open(info)?.get_multiplexed_async_connection().await?;
        let v: Option<Vec<String>> = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(&s.master_name)
            .query_async(&mut c)
            .await?;
        Ok(v.and_then(|v| match v.as_slice() {
            [h, p] => Some((h.clone(), p.parse().ok()?)),
            _ => None,
        }))
    }

    async fn is_master(&self, info: &ConnectionInfo) -> RedisResult<bool> {
        let mut c = self
            .open(info.clone())?
            .get_multiplexed_async_connection()
            .await?;
        let role: redis::Value = redis::cmd("ROLE").query_async(&mut c).await?;
        Ok(match role {
            redis::Value::Array(v) => matches!(
                v.first(),
                Some(redis::Value::BulkString(b)) if b == b"master"
            ),
            _ => false,
        })
    }
}

/// An error that says this node no longer takes writes: the master moved (`READONLY`
/// from a demoted master). With Sentinel, the connection is re-targeted.
pub fn is_demoted(e: &RedisError) -> bool {
    e.kind() == ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
}
