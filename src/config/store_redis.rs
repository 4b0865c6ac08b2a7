//! `store.redis` compiled: where the shared store is (a URL, or the master a Sentinel
//! quorum names), how to reach it (TLS roots, ACL user and password, db, timeouts) and
//! how many replicas must hold a write before it is acknowledged. Secrets stay out of
//! `Debug` and out of every error message.

use super::raw::{RawRedis, RawSentinel};
use super::{ConfigError, Ctx, UNCHECKED_SECRET};
use redis::{ConnectionAddr, IntoConnectionInfo};
use std::time::Duration;

/// A compiled `store.redis`.
#[derive(Clone)]
pub struct RedisSettings {
    pub target: RedisTarget,
    pub key_prefix: String,
    /// The ACL user and password for the data nodes, over the URL's.
    pub username: Option<String>,
    pub password: Option<String>,
    /// The database index, over the URL's.
    pub db: Option<i64>,
    /// PEM roots for TLS (`ca_file`); `None`: the system's roots.
    pub ca_pem: Option<Vec<u8>>,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
    pub wait: Option<WaitReplicas>,
}

#[derive(Clone)]
pub enum RedisTarget {
    /// `redis://` or `rediss://` (a secret: it may hold the password).
    Url(String),
    Sentinel(SentinelSettings),
}

#[derive(Clone, Debug)]
pub struct SentinelSettings {
    pub master_name: String,
    pub addrs: Vec<(String, u16)>,
    /// TLS to the sentinels and the nodes.
    pub tls: bool,
    pub username: Option<String>,
    pub password: Option<Redacted>,
}

/// A secret that prints as `<redacted>`.
#[derive(Clone)]
pub struct Redacted(pub String);

impl std::fmt::Debug for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// `WAIT replicas timeout` after the writes that must survive a failover.
#[derive(Clone, Copy, Debug)]
pub struct WaitReplicas {
    pub replicas: u32,
    pub timeout: Duration,
}

impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let target = match &self.target {
            RedisTarget::Url(_) => "url <redacted>".to_string(),
            RedisTarget::Sentinel(s) => format!("{s:?}"),
        };
        f.debug_struct("RedisSettings")
            .field("target", &target)
            .field("key_prefix", &self.key_prefix)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("db", &self.db)
            .field("ca_pem", &self.ca_pem.as_ref().map(|_| "<pem>"))
            .field("connect_timeout", &self.connect_timeout)
            .field("command_timeout", &self.command_timeout)
            .field("wait", &self.wait)
            .finish()
    }
}

impl RedisSettings {
    /// A plain URL with the default timeouts and no replica acknowledgement.
    pub fn from_url(url: String, key_prefix: String) -> RedisSettings {
        RedisSettings {
            target: RedisTarget::Url(url),
            key_prefix,
            username: None,
            password: None,
            db: None,
            ca_pem: None,
            connect_timeout: Duration::from_secs(2),
            command_timeout: Duration::from_millis(500),
            wait: None,
        }
    }
}

const AT: &str = "store.redis";

fn positive(
    c: &Ctx,
    key: &str,
    v: &Option<String>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let d = c.duration(key, v, default)?;
    if d.is_zero() {
        return Err(c.err(key, "must be more than zero"));
    }
    Ok(d)
}

pub(super) fn compile(c: &Ctx, r: &RawRedis) -> Result<RedisSettings, ConfigError> {
    let has_url = r.url_env.is_some() || r.url_file.is_some();
    let password = match (&r.password_env, &r.password_file) {
        (None, None) => None,
        (env, file) => Some(c.secret_named(AT, "password", env, file)?),
    };
    if let Some(u) = &r.username {
        if u.is_empty() {
            return Err(c.err(&format!("{AT}.username"), "must not be empty"));
        }
    }
    if let Some(db) = r.db {
        if db < 0 {
            return Err(c.err(&format!("{AT}.db"), "must be 0 or more"));
        }
    }
    let (target, tls) = match (&r.sentinel, has_url) {
        (Some(_), true) => {
            return Err(c.err(
                AT,
                "give either a URL (`url_env`, `url_file`) or `sentinel`, not both",
            ))
        }
        (None, false) => {
            return Err(c.err(AT, "needs `url_env`, `url_file` or `sentinel`"));
        }
        (None, true) => {
            if r.tls.is_some() {
                return Err(c.err(
                    &format!("{AT}.tls"),
                    "with a URL, its scheme says it: `rediss://` is TLS",
                ));
            }
            let url = c.secret(AT, &r.url_env, &r.url_file)?;
            let key = if r.url_env.is_some() {
                format!("{AT}.url_env")
            } else {
                format!("{AT}.url_file")
            };
            let tls = if url == UNCHECKED_SECRET && c.offline() {
                r.ca_file.is_some()
            } else {
                check_url(c, &key, &url, r)?
            };
            (RedisTarget::Url(url), tls)
        }
        (Some(s), false) => {
            let s = compile_sentinel(c, s, r.tls.unwrap_or(false))?;
            let tls = s.tls;
            (RedisTarget::Sentinel(s), tls)
        }
    };
    let ca_pem = match &r.ca_file {
        None => None,
        Some(f) => {
            let key = format!("{AT}.ca_file");
            if !tls {
                return Err(c.err(
                    &key,
                    "ca_file is for TLS: a `rediss://` URL, or `tls: true` with sentinel",
                ));
            }
            let p = c.resolve(f);
            let pem = std::fs::read(&p)
                .map_err(|e| c.err(&key, format!("cannot read `{}`: {e}", p.display())))?;
            use rustls_pki_types::pem::PemObject;
            let n = rustls_pki_types::CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| c.err(&key, format!("`{}`: {e}", p.display())))?
                .len();
            if n == 0 {
                return Err(c.err(&key, format!("`{}` holds no PEM certificate", p.display())));
            }
            Some(pem)
        }
    };
    let t = r.timeouts.clone().unwrap_or(super::raw::RawRedisTimeouts {
        connect: None,
        command: None,
    });
    let wait = match &r.wait {
        None => None,
        Some(w) => {
            if w.replicas == 0 {
                return Err(c.err(&format!("{AT}.wait.replicas"), "must be at least 1"));
            }
            Some(WaitReplicas {
                replicas: w.replicas,
                timeout: positive(
                    c,
                    &format!("{AT}.wait.timeout"),
                    &w.timeout,
                    Duration::from_millis(500),
                )?,
            })
        }
    };
    Ok(RedisSettings {
        target,
        key_prefix: r.key_prefix.clone(),
        username: r.username.clone(),
        password,
        db: r.db,
        ca_pem,
        connect_timeout: positive(
            c,
            &format!("{AT}.timeouts.connect"),
            &t.connect,
            Duration::from_secs(2),
        )?,
        command_timeout: positive(
            c,
            &format!("{AT}.timeouts.command"),
            &t.command,
            Duration::from_millis(500),
        )?,
        wait,
    })
}

/// Checks a redis URL without ever printing it (it may hold the password); answers
/// whether it is TLS.
fn check_url(c: &Ctx, key: &str, url: &str, r: &RawRedis) -> Result<bool, ConfigError> {
    let info = url.into_connection_info().map_err(|e| {
        c.err(
            key,
            format!("not a redis URL ({e}); expected redis://… or rediss://…"),
        )
    })?;
    let tls = match info.addr() {
        ConnectionAddr::TcpTls { insecure: true, .. } => {
            return Err(c.err(
                key,
                "`#insecure` would turn certificate checks off: give the CA with `ca_file`",
            ))
        }
        ConnectionAddr::TcpTls { .. } => true,
        _ => false,
    };
    let settings = info.redis_settings();
    if r.username.is_some() && settings.username().is_some() {
        return Err(c.err(
            &format!("{AT}.username"),
            "the URL names a user already: give it in one place",
        ));
    }
    if (r.password_env.is_some() || r.password_file.is_some()) && settings.password().is_some() {
        return Err(c.err(
            AT,
            "the URL holds a password already: give it in one place (URL or password_env/password_file)",
        ));
    }
    let url_db = redis::parse_redis_url(url)
        .map(|u| !u.path().trim_matches('/').is_empty())
        .unwrap_or(false);
    if r.db.is_some() && url_db {
        return Err(c.err(
            &format!("{AT}.db"),
            "the URL's path names a database already: give it in one place",
        ));
    }
    Ok(tls)
}

/// `host:port`, with `[v6]:port` for IPv6.
fn parse_addr(s: &str) -> Option<(String, u16)> {
    let s = s.trim();
    let (host, port) = s.rsplit_once(':')?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() || host.contains(['/', '@', ' ']) {
        return None;
    }
    Some((host.to_string(), port.parse().ok()?))
}

fn compile_sentinel(c: &Ctx, s: &RawSentinel, tls: bool) -> Result<SentinelSettings, ConfigError> {
    let at = format!("{AT}.sentinel");
    if s.master_name.is_empty() {
        return Err(c.err(&format!("{at}.master_name"), "must not be empty"));
    }
    let (list, key): (Vec<String>, String) = match (&s.addrs, &s.addrs_env) {
        (Some(_), Some(_)) => {
            return Err(c.err(&at, "give either `addrs` or `addrs_env`, not both"))
        }
        (None, None) => return Err(c.err(&at, "needs `addrs` or `addrs_env`")),
        (Some(v), None) => (v.clone(), format!("{at}.addrs")),
        (None, Some(name)) => {
            let key = format!("{at}.addrs_env");
            // Offline (`check`), a missing variable is noted like a secret and stood in for.
            let v = match c.env_secret(&key, name)? {
                v if v == UNCHECKED_SECRET && c.offline() => "127.0.0.1:26379".into(),
                v => v,
            };
            (
                v.split([',', ' ', '\n'])
                    .filter(|p| !p.trim().is_empty())
                    .map(str::to_string)
                    .collect(),
                key,
            )
        }
    };
    if list.is_empty() {
        return Err(c.err(&key, "names no sentinel"));
    }
    let addrs = list
        .iter()
        .map(|a| parse_addr(a).ok_or_else(|| c.err(&key, format!("`{a}`: expected host:port"))))
        .collect::<Result<Vec<_>, _>>()?;
    let password = match (&s.password_env, &s.password_file) {
        (None, None) => None,
        (env, file) => Some(Redacted(c.secret_named(&at, "password", env, file)?)),
    };
    Ok(SentinelSettings {
        master_name: s.master_name.clone(),
        addrs,
        tls,
        username: s.username.clone(),
        password,
    })
}

#[cfg(test)]
mod tests {
    use super::parse_addr;
    use crate::config::{ConfigError, RedisTarget, Snapshot, StoreKind};
    use std::path::Path;

    const PW: &str = "pw-canary-51ab";

    fn parse(store: &str) -> Result<Snapshot, ConfigError> {
        let env = |n: &str| match n {
            "REDIS_URL" => Some(format!("rediss://u:{PW}@127.0.0.1:6380/2")),
            "PLAIN_URL" => Some("redis://127.0.0.1:6379".into()),
            "SENTINELS" => Some("127.0.0.1:26379, 127.0.0.1:26380".into()),
            "PW" => Some(PW.into()),
            _ => None,
        };
        Snapshot::parse(
            Path::new("r.yaml"),
            &format!("store:\n  redis:\n{store}"),
            &env,
        )
    }

    /// The error for `store`: it names `r.yaml:LINE:` and `key`, and never the password.
    fn refused(store: &str, line: usize, key: &str) -> String {
        let e = parse(store).expect_err("refused").to_string();
        assert!(e.starts_with(&format!("r.yaml:{line}:")), "{e}");
        assert!(e.contains(key), "{e}");
        assert!(!e.contains(PW), "{e}");
        e
    }

    #[test]
    fn a_url_with_user_password_and_db() {
        let s = parse("    url_env: REDIS_URL\n    ca_file: /nonexistent\n");
        // ca_file is read at load: a missing one names the key.
        assert!(s.is_err_and(|e| e.path == "store.redis.ca_file"));
        let snap = parse("    url_env: REDIS_URL\n    wait: { replicas: 1 }\n").unwrap();
        let StoreKind::Redis(r) = &snap.store.kind else {
            panic!("redis")
        };
        assert!(matches!(r.target, RedisTarget::Url(_)));
        assert_eq!(r.wait.map(|w| w.replicas), Some(1));
        assert!(!format!("{r:?}").contains(PW), "{r:?}");
        assert_eq!(r.command_timeout, std::time::Duration::from_millis(500));
    }

    #[test]
    fn refusals_name_the_key_and_never_the_url() {
        refused(
            "    url_env: REDIS_URL\n    username: other\n",
            4,
            "store.redis.username",
        );
        refused(
            "    url_env: REDIS_URL\n    password_env: PW\n",
            2,
            "store.redis",
        );
        refused("    url_env: REDIS_URL\n    db: 1\n", 4, "store.redis.db");
        refused(
            "    url_env: PLAIN_URL\n    ca_file: x.pem\n",
            4,
            "store.redis.ca_file",
        );
        refused(
            "    url_env: PLAIN_URL\n    tls: true\n",
            4,
            "store.redis.tls",
        );
        refused(
            "    url_env: PLAIN_URL\n    wait: { replicas: 0 }\n",
            4,
            "store.redis.wait.replicas",
        );
        refused(
            "    url_env: PLAIN_URL\n    timeouts: { command: 0s }\n",
            4,
            "store.redis.timeouts.command",
        );
        refused(
            "    url_env: PLAIN_URL\n    sentinel: { master_name: m, addrs_env: SENTINELS }\n",
            2,
            "not both",
        );
        refused(
            "    key_prefix: x\n",
            2,
            "needs `url_env`, `url_file` or `sentinel`",
        );
        refused(
            "    sentinel: { master_name: m, addrs: [\"nohost\"] }\n",
            3,
            "store.redis.sentinel.addrs",
        );
        refused(
            "    sentinel: { master_name: m, adrs: [\"h:1\"] }\n",
            3,
            "store.redis.sentinel.adrs",
        );
        refused(
            "    sentinel: { master_name: m, addrs_env: NOPE }\n",
            3,
            "store.redis.sentinel.addrs_env",
        );
    }

    #[test]
    fn sentinel_from_the_environment() {
        let snap = parse(
            "    sentinel: { master_name: pc, addrs_env: SENTINELS, password_env: PW }\n    password_env: PW\n    tls: true\n",
        )
        .unwrap();
        let StoreKind::Redis(r) = &snap.store.kind else {
            panic!("redis")
        };
        let RedisTarget::Sentinel(s) = &r.target else {
            panic!("sentinel")
        };
        assert_eq!(s.master_name, "pc");
        assert_eq!(
            s.addrs,
            vec![
                ("127.0.0.1".to_string(), 26379),
                ("127.0.0.1".to_string(), 26380)
            ]
        );
        assert!(s.tls && r.password.as_deref() == Some(PW));
        assert!(!format!("{r:?}").contains(PW), "{r:?}");
    }

    #[test]
    fn sentinel_addresses() {
        assert_eq!(
            parse_addr("127.0.0.1:26379"),
            Some(("127.0.0.1".into(), 26379))
        );
        assert_eq!(
            parse_addr(" s1.internal:1 "),
            Some(("s1.internal".into(), 1))
        );
        assert_eq!(parse_addr("[::1]:26379"), Some(("::1".into(), 26379)));
        assert_eq!(parse_addr("nohost"), None);
        assert_eq!(parse_addr(":26379"), None);
        assert_eq!(parse_addr("h:99999"), None);
        assert_eq!(parse_addr("user@h:1"), None);
    }
}
