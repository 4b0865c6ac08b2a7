//! routes.yaml → a validated, immutable [`Snapshot`]. Every error names
//! `file:line:col` and the key path; the request path never touches raw YAML.

pub mod duration;
pub(crate) mod locate;
pub mod raw;
mod store_redis;

pub use store_redis::{Redacted, RedisSettings, RedisTarget, SentinelSettings, WaitReplicas};

use crate::canon::Method;
use crate::classify::{self, Classifier, Override, Pattern, Risk, RouteRules};
use crate::fastmap::FastMap;
use crate::policy::{Agent, CondEntry, Glob, List, Profile};
use http::{HeaderName, HeaderValue};
use locate::Locator;
use raw::RawConfig;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// A configuration error with its place in the file.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{file}:{line}:{col}: {path}{sep}{message}", sep = if path.is_empty() { "" } else { ": " })]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub col: usize,
    pub path: String,
    pub message: String,
}

/// The MCP endpoint (`mcp:`): where it is, whether it is on, which browser origins may
/// reach it, and the key that signs its session ids.
#[derive(Clone)]
pub struct McpConfig {
    pub enabled: bool,
    pub path: String,
    /// Lower-cased `scheme://host[:port]` origins; a request with any other `Origin` → 403.
    pub allowed_origins: Vec<String>,
    /// From `session_key_env`: never logged, never in `Debug`.
    pub session_key: Option<Vec<u8>>,
}

impl std::fmt::Debug for McpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpConfig")
            .field("enabled", &self.enabled)
            .field("path", &self.path)
            .field("allowed_origins", &self.allowed_origins)
            .field(
                "session_key",
                &self.session_key.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// Where secrets named by `*_env` come from (the process env, or a test's map).
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone)]
pub enum StoreKind {
    Embedded(PathBuf),
    Redis(Box<RedisSettings>),
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub kind: StoreKind,
    pub pepper: Option<Vec<u8>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    Batch,
    Always,
}

#[derive(Debug, Clone)]
pub struct AuditConfig {
    pub path: PathBuf,
    pub fsync: Fsync,
    pub rotate_bytes: u64,
    pub checkpoint: Option<(u64, Vec<u8>)>,
    pub redact_query: Vec<String>,
    /// Refusals per second one agent may cause before they are answered 429 and
    /// recorded as one aggregate record per second.
    pub max_refusals_per_second: u32,
    /// Records kept in memory while the trail cannot be written, written first when it
    /// can again; past this, they are counted into one `gap` record.
    pub max_pending_bytes: u64,
    /// Records waiting for the writer beyond which requests are refused (503
    /// `audit_unavailable`) rather than recorded late. Read at start.
    pub max_queue_records: usize,
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_body_bytes: u64,
    pub max_parked_body_bytes: u64,
    pub max_result_bytes: u64,
    pub max_pending_per_agent: u32,
    pub approval_ttl: Duration,
    pub approval_retention: Duration,
    pub header_timeout: Duration,
    pub request_deadline: Duration,
    pub max_header_bytes: u64,
    /// A connection with no request in flight for this long is closed (HTTP/1 and h2).
    pub idle_timeout: Duration,
    /// Open agent-port connections; more are closed right after accept.
    pub max_connections: u32,
    /// Open agent-port connections per client address (IPv6: per /64).
    pub max_connections_per_ip: u32,
    /// Parks one agent may have reading their bodies into the store at once (each up to
    /// `max_parked_body_bytes` in memory); more are answered 429 `parking_concurrency`.
    pub max_concurrent_parks_per_agent: u32,
    /// The most of a body read for a condition on `request.body`.
    pub max_inspected_body_bytes: u64,
}

/// How often the background work runs and how long its bounds last (`timers:`).
#[derive(Debug, Clone)]
pub struct Timers {
    /// The approval sweeper's tick: expiries, abandoned parks, lapsed replay leases.
    pub sweep_every: Duration,
    /// How often the config file's modification time is checked for a reload.
    pub watch_every: Duration,
    /// A replaying node's lease on an approval; renewed every third of it.
    pub replay_lease: Duration,
    /// The longest a cached credential or switch state is served without a re-read
    /// (the bound on a lost invalidation notice between replicas).
    pub cache_max_age: Duration,
    /// How often each replica takes its signal counts to the store and re-reads the
    /// totals across replicas and the baselines.
    pub signals_flush: Duration,
}

#[derive(Debug, Clone)]
pub struct Operator {
    pub name: String,
    pub token_sha256: [u8; 32],
    pub roles: Vec<String>,
}

/// The upstream's credential: never logged, never in `Debug`.
#[derive(Clone)]
pub struct Inject {
    pub header: HeaderName,
    pub value: HeaderValue,
}

impl std::fmt::Debug for Inject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Inject {{ header: {}, value: <redacted> }}", self.header)
    }
}

#[derive(Debug, Clone)]
pub struct Upstream {
    pub name: String,
    pub https: bool,
    pub authority: http::uri::Authority,
    /// The `Host` the upstream receives (its authority), built once.
    pub host: Option<HeaderValue>,
    /// The URL's path without a trailing slash ("" for none).
    pub base_path: String,
    pub ca_file: Option<PathBuf>,
    pub inject: Option<Inject>,
    pub tenant_header: Option<HeaderName>,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    /// `cookies: pass`: Cookie goes up and Set-Cookie comes back (weakens the boundary).
    pub cookies_pass: bool,
}

/// The forwarding half of a route (the classifying half is in `classifier.routes`, same index).
#[derive(Debug, Clone)]
pub struct Route {
    pub prefix: String,
    pub upstream: usize,
    pub strip_prefix: bool,
    pub allow_encoded_slash: bool,
    /// Bodiless methods that may carry a body here (sent on a connection not reused).
    pub allow_body_on: Vec<Method>,
    /// X-Forwarded-Host for this route (over the top-level `public_host`).
    pub public_host: Option<HeaderValue>,
    /// `preview: current` on the route, and the tools[] entries that set it otherwise.
    pub preview: bool,
    pub preview_tools: Vec<(Arc<str>, bool)>,
}

impl Route {
    /// Whether a parked write to `tool` first reads the current resource.
    pub fn previews(&self, tool: &str) -> bool {
        self.preview_tools
            .iter()
            .find(|(n, _)| &**n == tool)
            .map_or(self.preview, |(_, on)| *on)
    }
}

/// `preview:` — `current` or `none`.
fn preview_option(c: &Ctx, at: &str, v: Option<&str>) -> Result<Option<bool>, ConfigError> {
    match v {
        None => Ok(None),
        Some("current") => Ok(Some(true)),
        Some("none") => Ok(Some(false)),
        Some(o) => Err(c.err(at, format!("`{o}`: expected current or none"))),
    }
}

#[derive(Debug)]
pub struct Snapshot {
    pub file: PathBuf,
    pub policy_version: Arc<str>,
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub node: String,
    pub tls: Option<TlsFiles>,
    pub admin_tls: Option<TlsFiles>,
    pub store: StoreConfig,
    pub audit: AuditConfig,
    pub limits: Limits,
    pub timers: Timers,
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub public_host: Option<HeaderValue>,
    /// Lower-cased authorities from `hosts:`.
    pub hosts: Vec<String>,
    pub webhook_url: Option<String>,
    /// `notify.admin_url` without a trailing `/`: the page links are built under it.
    pub admin_url: Option<String>,
    pub operators: Vec<Operator>,
    pub upstreams: Vec<Upstream>,
    pub routes: Vec<Route>,
    pub classifier: Classifier,
    pub profiles: BTreeMap<String, Arc<Profile>>,
    pub agents: FastMap<String, Arc<Agent>>,
    /// Route prefixes shadowed by a longer one: (shorter, longer).
    pub shadows: Vec<(String, String)>,
    /// The routes' OpenAPI specs (`openapi:`), as imported into `classifier`.
    pub openapi: crate::openapi::Imported,
    pub mcp: McpConfig,
    /// `signals:` and each profile's override, by agent.
    pub signals: crate::signals::config::SignalsConfig,
}

struct Ctx<'a> {
    file: String,
    dir: PathBuf,
    loc: Locator,
    env: EnvLookup<'a>,
    /// Offline (`check`, `explain`, `test`): a secret that does not resolve is recorded
    /// here and stood in for, instead of failing the load. `None`: every secret must resolve.
    unchecked: Option<&'a std::cell::RefCell<Vec<ConfigError>>>,
}

/// What stands in for a secret that was not resolved offline.
pub const UNCHECKED_SECRET: &str = "unchecked-offline";

impl Ctx<'_> {
    fn err(&self, path: &str, message: impl Into<String>) -> ConfigError {
        let (line, col) = self.loc.find(path);
        ConfigError {
            file: self.file.clone(),
            line,
            col,
            path: path.to_string(),
            message: message.into(),
        }
    }
    fn resolve(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.dir.join(p)
        }
    }
    fn duration(
        &self,
        path: &str,
        v: &Option<String>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        match v {
            None => Ok(default),
            Some(s) => duration::parse(s).map_err(|e| self.err(path, e)),
        }
    }
    /// A secret from `*_env` or `*_file`: exactly one must be given.
    fn secret(
        &self,
        path: &str,
        env: &Option<String>,
        file: &Option<String>,
    ) -> Result<String, ConfigError> {
        let leaf = if path.ends_with("inject") {
            "value"
        } else {
            "url"
        };
        self.secret_named(path, leaf, env, file)
    }

    /// A secret from `<leaf>_env` or `<leaf>_file` under `path`: exactly one must be given.
    fn secret_named(
        &self,
        path: &str,
        leaf: &str,
        env: &Option<String>,
        file: &Option<String>,
    ) -> Result<String, ConfigError> {
        match (env, file) {
            (Some(_), Some(_)) => {
                Err(self.err(path, "give either the `_env` or the `_file` key, not both"))
            }
            (None, None) => Err(self.err(path, "needs a `_env` or `_file` key")),
            (Some(name), None) => self.env_secret(&format!("{path}.{leaf}_env"), name),
            (None, Some(f)) => {
                let key = format!("{path}.{leaf}_file");
                let p = self.resolve(f);
                std::fs::read_to_string(&p)
                    .map(|s| s.trim_end_matches(['\r', '\n']).to_string())
                    .or_else(|e| {
                        self.unresolved(
                            self.err(&key, format!("cannot read `{}`: {e}", p.display())),
                        )
                    })
            }
        }
    }

    /// The secret in environment variable `name`, named by the key at `key`.
    fn env_secret(&self, key: &str, name: &str) -> Result<String, ConfigError> {
        match (self.env)(name) {
            Some(v) => Ok(v),
            None => {
                self.unresolved(self.err(key, format!("environment variable `{name}` is not set")))
            }
        }
    }

    /// A secret that did not resolve: the error, or offline a stand-in and a note.
    fn unresolved(&self, e: ConfigError) -> Result<String, ConfigError> {
        match self.unchecked {
            Some(u) => {
                u.borrow_mut().push(e);
                Ok(UNCHECKED_SECRET.into())
            }
            None => Err(e),
        }
    }

    /// Whether secrets that do not resolve are stood in for (`check`, `explain`, `test`).
    fn offline(&self) -> bool {
        self.unchecked.is_some()
    }
}

impl Snapshot {
    pub fn load(file: &Path) -> Result<Snapshot, ConfigError> {
        Self::load_with(file, &process_env)
    }

    pub fn load_with(file: &Path, env: EnvLookup) -> Result<Snapshot, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|e| ConfigError {
            file: file.display().to_string(),
            line: 0,
            col: 0,
            path: String::new(),
            message: format!("cannot read the config: {e}"),
        })?;
        Self::parse(file, &text, env)
    }

    pub fn parse(file: &Path, text: &str, env: EnvLookup) -> Result<Snapshot, ConfigError> {
        Self::parse_inner(file, text, env, None)
    }

    /// Loads the config without its secrets (`check`, `explain`, `test`: deciding needs
    /// none): a secret that does not resolve is stood in for and returned as the error
    /// `serve` would fail with. Secrets that resolve are checked as usual.
    pub fn load_offline(file: &Path) -> Result<(Snapshot, Vec<ConfigError>), ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|e| ConfigError {
            file: file.display().to_string(),
            line: 0,
            col: 0,
            path: String::new(),
            message: format!("cannot read the config: {e}"),
        })?;
        let unchecked = std::cell::RefCell::new(Vec::new());
        let snap = Self::parse_inner(file, &text, &process_env, Some(&unchecked))?;
        Ok((snap, unchecked.into_inner()))
    }

    fn parse_inner(
        file: &Path,
        text: &str,
        env: EnvLookup,
        unchecked: Option<&std::cell::RefCell<Vec<ConfigError>>>,
    ) -> Result<Snapshot, ConfigError> {
        let name = file.display().to_string();
        let raw: RawConfig = serde_yaml::from_str(text).map_err(|e| {
            let (line, col) = e
                .location()
                .map(|l| (l.line(), l.column()))
                .unwrap_or((1, 1));
            let msg = e.to_string();
            let msg = match msg.rfind(" at line ") {
                Some(i) => msg[..i].to_string(),
                None => msg,
            };
            let (mut path, message) = match msg.split_once(": ") {
                Some((p, m)) if !p.contains(' ') => (p.to_string(), m.to_string()),
                _ => (String::new(), msg),
            };
            // Name the offending key itself, not just its parent.
            for lead in ["unknown field `", "missing field `"] {
                if let Some(key) = message.strip_prefix(lead).and_then(|r| r.split('`').next()) {
                    path = if path.is_empty() || path == "." {
                        key.to_string()
                    } else {
                        format!("{path}.{key}")
                    };
                }
            }
            ConfigError {
                file: name.clone(),
                line,
                col,
                path,
                message,
            }
        })?;
        let dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
        let ctx = Ctx {
            file: name,
            dir: if dir.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                dir
            },
            loc: Locator::new(text),
            env,
            unchecked,
        };
        compile(&ctx, raw, file)
    }
}

/// `sha256:` over the normalised config. The replica's own `node` id is left out, so
/// replicas sharing one routes.yaml report one version.
fn policy_version(raw: &RawConfig) -> String {
    let mut raw = raw.clone();
    raw.node = None;
    let normal = serde_json::to_vec(&raw).expect("config serialises");
    format!("sha256:{}", hex::encode(Sha256::digest(&normal)))
}

fn compile(c: &Ctx, raw: RawConfig, file: &Path) -> Result<Snapshot, ConfigError> {
    let policy_version = policy_version(&raw);
    let listen: SocketAddr = raw
        .listen
        .parse()
        .map_err(|e| c.err("listen", format!("`{}`: {e}", raw.listen)))?;
    let admin_listen: SocketAddr = raw
        .admin_listen
        .parse()
        .map_err(|e| c.err("admin_listen", format!("`{}`: {e}", raw.admin_listen)))?;
    if !admin_listen.ip().is_loopback() && raw.admin_tls.is_none() && !raw.admin_trusted_network {
        return Err(c.err(
            "admin_listen",
            "admin_tls is required when the admin listener is not on loopback \
             (or `admin_trusted_network: true` where only a trusted network reaches it)",
        ));
    }
    let tls_files = |t: &raw::RawTls| TlsFiles {
        cert: c.resolve(&t.cert),
        key: c.resolve(&t.key),
    };
    let node = raw.node.clone().unwrap_or_else(hostname);

    let store = compile_store(c, &raw.store)?;
    let audit = compile_audit(c, &raw.audit)?;
    let limits = compile_limits(c, &raw.limits)?;
    let timers = compile_timers(c, &raw.timers)?;
    let trusted_proxies = raw
        .trusted_proxies
        .iter()
        .enumerate()
        .map(|(i, s)| {
            s.parse::<ipnet::IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    c.err(
                        &format!("trusted_proxies[{i}]"),
                        format!("`{s}` is not a CIDR"),
                    )
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let public_host = raw
        .public_host
        .as_deref()
        .map(|h| authority(c, "public_host", h))
        .transpose()?;
    let hosts = raw
        .hosts
        .iter()
        .enumerate()
        .map(|(i, h)| authority(c, &format!("hosts[{i}]"), h).map(|_| h.to_ascii_lowercase()))
        .collect::<Result<Vec<_>, _>>()?;
    let webhook_url = match raw.notify.as_ref().and_then(|n| n.webhook.as_ref()) {
        Some(w) => Some(c.secret("notify.webhook", &w.url_env, &w.url_file)?),
        None => None,
    };
    let admin_url = match raw.notify.as_ref().and_then(|n| n.admin_url.as_deref()) {
        Some(u) if u.starts_with("http://") || u.starts_with("https://") => {
            http::Uri::try_from(u).map_err(|e| c.err("notify.admin_url", format!("`{u}`: {e}")))?;
            Some(u.trim_end_matches('/').to_string())
        }
        Some(_) => return Err(c.err("notify.admin_url", "must be an http:// or https:// URL")),
        None => None,
    };
    let operators = compile_operators(c, &raw.operators)?;

    let mut up_index = HashMap::new();
    let mut upstreams = Vec::new();
    for (name, u) in &raw.upstreams {
        up_index.insert(name.clone(), upstreams.len());
        upstreams.push(compile_upstream(c, name, u)?);
    }

    let global_sensitive = raw
        .sensitive_paths
        .iter()
        .enumerate()
        .map(|(i, p)| Pattern::new(p).map_err(|e| c.err(&format!("sensitive_paths[{i}]"), e)))
        .collect::<Result<Vec<_>, _>>()?;

    let mut routes = Vec::new();
    let mut rules = Vec::new();
    let mut explicit_names: HashMap<String, String> = HashMap::new();
    let mut openapi = crate::openapi::Imported::default();
    for (ri, r) in raw.routes.iter().enumerate() {
        let at = format!("routes[{ri}]");
        let prefix = check_prefix(&r.prefix).map_err(|e| c.err(&format!("{at}.prefix"), e))?;
        if routes.iter().any(|x: &Route| x.prefix == prefix) {
            return Err(c.err(
                &format!("{at}.prefix"),
                format!("prefix `{prefix}` is already routed"),
            ));
        }
        if classify::under_prefix("/_portcullis", &prefix)
            || classify::under_prefix(&prefix, "/_portcullis")
        {
            return Err(c.err(
                &format!("{at}.prefix"),
                "routes may not overlap /_portcullis/",
            ));
        }
        let upstream = *up_index.get(&r.upstream).ok_or_else(|| {
            c.err(
                &format!("{at}.upstream"),
                format!("unknown upstream `{}`", r.upstream),
            )
        })?;
        let unknown_deny = match r.unknown_paths.as_deref() {
            None | Some("classify") => false,
            Some("deny") => true,
            Some(o) => {
                return Err(c.err(
                    &format!("{at}.unknown_paths"),
                    format!("`{o}`: expected classify or deny"),
                ))
            }
        };
        let tool_prefix = r.tool_prefix.clone().unwrap_or_else(|| r.upstream.clone());
        if tool_prefix.is_empty() || tool_prefix.contains(['*', ' ']) {
            return Err(c.err(
                &format!("{at}.tool_prefix"),
                "must be a non-empty name without `*` or spaces",
            ));
        }
        let mut overrides = Vec::new();
        let mut preview_tools = Vec::new();
        for (ti, t) in r.tools.iter().enumerate() {
            let tat = format!("{at}.tools[{ti}]");
            let (methods, template) =
                parse_match(&t.match_).map_err(|e| c.err(&format!("{tat}.match"), e))?;
            let pattern = Pattern::new(template).map_err(|e| c.err(&format!("{tat}.match"), e))?;
            if !classify::under_prefix(template, &prefix) {
                return Err(c.err(
                    &format!("{tat}.match"),
                    format!("`{template}` is not under the route prefix `{prefix}`"),
                ));
            }
            let risk = match &t.risk {
                Some(s) => Risk::parse(s).ok_or_else(|| {
                    c.err(
                        &format!("{tat}.risk"),
                        format!("`{s}`: expected low, medium, high or critical"),
                    )
                })?,
                // Several methods: the highest of their default risks.
                None => methods.as_ref().map_or(Risk::Low, |ms| {
                    ms.iter()
                        .map(|m| Risk::of_method(*m))
                        .max()
                        .unwrap_or(Risk::Low)
                }),
            };
            let name = match &t.name {
                Some(n) => {
                    if n.is_empty() || n.contains(['*', ' ']) {
                        return Err(c.err(
                            &format!("{tat}.name"),
                            "must be a non-empty name without `*` or spaces",
                        ));
                    }
                    if let Some(prev) = explicit_names.insert(n.clone(), tat.clone()) {
                        return Err(c.err(
                            &format!("{tat}.name"),
                            format!("duplicate tool name `{n}` (first at {prev})"),
                        ));
                    }
                    n.clone()
                }
                None => match methods.as_deref() {
                    Some([one]) => classify::generated_name(&tool_prefix, &prefix, template, *one),
                    None => classify::generated_name(&tool_prefix, &prefix, template, Method::Get),
                    Some(_) => {
                        return Err(c.err(
                            &format!("{tat}.name"),
                            "an override for several methods needs a `name`",
                        ))
                    }
                },
            };
            let approval_ttl = match &t.approval_ttl {
                Some(s) => {
                    Some(duration::parse(s).map_err(|e| c.err(&format!("{tat}.approval_ttl"), e))?)
                }
                None => None,
            };
            if let Some(on) = preview_option(c, &format!("{tat}.preview"), t.preview.as_deref())? {
                preview_tools.push((Arc::<str>::from(name.as_str()), on));
            }
            let floor = methods.as_ref().map_or(Risk::Low, |ms| {
                ms.iter()
                    .map(|m| Risk::of_method(*m))
                    .max()
                    .unwrap_or(Risk::Low)
            });
            let when_risk = compile_when_risk(c, &tat, t, risk, floor)?;
            overrides.push(Override {
                methods,
                pattern,
                name: name.into(),
                risk,
                approval_ttl,
                description: t.description.clone(),
                when_risk,
            });
        }
        let sensitive = r
            .sensitive_paths
            .iter()
            .enumerate()
            .map(|(i, p)| {
                Pattern::new(p).map_err(|e| c.err(&format!("{at}.sensitive_paths[{i}]"), e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut rule = RouteRules::new(
            prefix.clone(),
            tool_prefix,
            unknown_deny,
            overrides,
            &r.paths,
            sensitive,
        )
        .map_err(|(i, e)| c.err(&format!("{at}.paths[{i}]"), e))?;
        openapi.import_route(
            crate::openapi::RouteIn {
                at: &at,
                raw: r,
                dir: &c.dir,
                upstream: &upstreams[upstream],
            },
            &mut rule,
            &|p, m| c.err(p, m),
        )?;
        let mut allow_body_on = Vec::new();
        for (mi, m) in r.allow_body_on.iter().enumerate() {
            match Method::parse(m) {
                Some(m @ (Method::Get | Method::Head | Method::Options | Method::Delete)) => {
                    allow_body_on.push(m)
                }
                _ => {
                    return Err(c.err(
                        &format!("{at}.allow_body_on[{mi}]"),
                        format!("`{m}`: expected GET, HEAD, OPTIONS or DELETE (the methods that take no body by default)"),
                    ))
                }
            }
        }
        let route_public_host = r
            .public_host
            .as_deref()
            .map(|h| authority(c, &format!("{at}.public_host"), h))
            .transpose()?;
        rules.push(rule);
        routes.push(Route {
            prefix,
            upstream,
            strip_prefix: r.strip_prefix,
            allow_encoded_slash: r.allow_encoded_slash,
            allow_body_on,
            public_host: route_public_host,
            preview: preview_option(c, &format!("{at}.preview"), r.preview.as_deref())?
                .unwrap_or(false),
            preview_tools,
        });
    }
    let mut shadows = Vec::new();
    for a in &routes {
        for b in &routes {
            if a.prefix != b.prefix && classify::under_prefix(&b.prefix, &a.prefix) {
                shadows.push((a.prefix.clone(), b.prefix.clone()));
            }
        }
    }
    let classifier = Classifier::new(rules, global_sensitive);

    let profiles = compile_profiles(c, &raw.profiles)?;
    let agents = compile_agents(c, &raw.agents, &profiles, &upstreams)?;
    let mcp = compile_mcp(c, &raw.mcp, &routes)?;
    let signals = crate::signals::config::compile(
        raw.signals.as_ref(),
        &raw.profiles
            .iter()
            .map(|(n, p)| (n.clone(), p.signals.clone()))
            .collect(),
        raw.agents
            .iter()
            .map(|(a, r)| (a.clone(), r.profile.clone())),
    )
    .map_err(|(at, m)| c.err(&at, m))?;

    Ok(Snapshot {
        file: file.to_path_buf(),
        policy_version: openapi.fold_version(policy_version).into(),
        listen,
        admin_listen,
        node,
        tls: raw.tls.as_ref().map(tls_files),
        admin_tls: raw.admin_tls.as_ref().map(tls_files),
        store,
        audit,
        limits,
        timers,
        trusted_proxies,
        public_host,
        hosts,
        webhook_url,
        admin_url,
        operators,
        upstreams,
        routes,
        classifier,
        profiles,
        agents,
        shadows,
        openapi,
        mcp,
        signals,
    })
}

fn compile_mcp(c: &Ctx, m: &raw::RawMcp, routes: &[Route]) -> Result<McpConfig, ConfigError> {
    let enabled = m.enabled.unwrap_or(true);
    let path = m.path.clone().unwrap_or_else(|| "/mcp".into());
    if path == "/" || !path.starts_with('/') || path.ends_with('/') {
        return Err(c.err(
            "mcp.path",
            format!("`{path}` must start with `/`, not end with one, and not be `/`"),
        ));
    }
    classify::check_template(&path).map_err(|e| c.err("mcp.path", e))?;
    if path.contains('{') {
        return Err(c.err("mcp.path", format!("`{path}` cannot hold parameters")));
    }
    if enabled {
        if classify::under_prefix(&path, "/_portcullis") {
            return Err(c.err(
                "mcp.path",
                "the MCP endpoint may not be under /_portcullis/",
            ));
        }
        if let Some(r) = routes.iter().find(|r| {
            classify::under_prefix(&path, &r.prefix) || classify::under_prefix(&r.prefix, &path)
        }) {
            return Err(c.err(
                "mcp.path",
                format!(
                    "`{path}` overlaps the route prefix `{}` (the MCP endpoint is matched before routes; move it or set `enabled: false`)",
                    r.prefix
                ),
            ));
        }
    }
    let mut allowed_origins = Vec::new();
    for (i, o) in m.allowed_origins.iter().enumerate() {
        let at = format!("mcp.allowed_origins[{i}]");
        let ok = o
            .parse::<http::Uri>()
            .ok()
            .filter(|u| {
                matches!(u.scheme_str(), Some("http" | "https"))
                    && u.authority().is_some()
                    && u.path_and_query()
                        .is_none_or(|p| p.as_str().is_empty() || p.as_str() == "/")
            })
            .is_some()
            && !o.ends_with('/');
        if !ok {
            return Err(c.err(
                &at,
                format!("`{o}`: expected an origin, `scheme://host[:port]`"),
            ));
        }
        allowed_origins.push(o.to_ascii_lowercase());
    }
    let session_key = match &m.session_key_env {
        Some(name) => {
            let key = (c.env)(name).ok_or_else(|| {
                c.err(
                    "mcp.session_key_env",
                    format!("environment variable `{name}` is not set"),
                )
            })?;
            if key.len() < 32 {
                return Err(c.err(
                    "mcp.session_key_env",
                    format!("the key in `{name}` must be at least 32 bytes"),
                ));
            }
            Some(key.into_bytes())
        }
        None => None,
    };
    Ok(McpConfig {
        enabled,
        path,
        allowed_origins,
        session_key,
    })
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "portcullis".into())
}

/// `/tickets`, `/api/v2` or `/`: absolute, no trailing slash, no parameters.
fn check_prefix(p: &str) -> Result<String, String> {
    if p == "/" {
        return Ok(p.into());
    }
    if !p.starts_with('/') || p.ends_with('/') {
        return Err(format!("`{p}` must start with `/` and not end with one"));
    }
    classify::check_template(p)?;
    if p.contains('{') {
        return Err(format!("`{p}`: a prefix cannot hold parameters"));
    }
    Ok(p.into())
}

/// `"POST /tickets/{id}/refund"` or `"* /x"`.
/// `"POST /t"`, `"POST|PATCH|PUT /t"` or `"* /t"` → (methods, template); `None` = any.
fn parse_match(s: &str) -> Result<(Option<Vec<Method>>, &str), String> {
    let (m, t) = s.trim().split_once(' ').ok_or_else(|| {
        format!("`{s}`: expected `METHOD /template` (or `M1|M2 /template`, `* /template`)")
    })?;
    let t = t.trim();
    if m == "*" {
        return Ok((None, t));
    }
    let mut methods = Vec::new();
    for one in m.split('|') {
        let parsed = Method::parse(one).ok_or_else(|| format!("`{one}` is not a method portcullis forwards (GET HEAD POST PUT PATCH DELETE OPTIONS or *)"))?;
        if methods.contains(&parsed) {
            return Err(format!("`{one}` is listed twice"));
        }
        methods.push(parsed);
    }
    Ok((Some(methods), t))
}

fn compile_store(c: &Ctx, s: &raw::RawStore) -> Result<StoreConfig, ConfigError> {
    let kind = match (&s.embedded, &s.redis) {
        (Some(_), Some(_)) => return Err(c.err("store", "choose one of `embedded` and `redis`")),
        (_, Some(r)) => StoreKind::Redis(Box::new(store_redis::compile(c, r)?)),
        (Some(p), None) => StoreKind::Embedded(c.resolve(p)),
        (None, None) => StoreKind::Embedded(c.resolve("data/portcullis.redb")),
    };
    let pepper = match &s.token_pepper_env {
        Some(name) => Some(c.env_secret("store.token_pepper_env", name)?.into_bytes()),
        None => None,
    };
    Ok(StoreConfig { kind, pepper })
}

fn compile_audit(c: &Ctx, a: &raw::RawAudit) -> Result<AuditConfig, ConfigError> {
    let fsync = match a.fsync.as_deref() {
        None | Some("batch") => Fsync::Batch,
        Some("always") => Fsync::Always,
        Some(o) => return Err(c.err("audit.fsync", format!("`{o}`: expected batch or always"))),
    };
    let checkpoint = match &a.checkpoint {
        Some(cp) => {
            if cp.every == 0 {
                return Err(c.err("audit.checkpoint.every", "must be at least 1"));
            }
            let key = c.env_secret("audit.checkpoint.key_env", &cp.key_env)?;
            Some((cp.every, key.into_bytes()))
        }
        None => None,
    };
    Ok(AuditConfig {
        path: c.resolve(a.path.as_deref().unwrap_or("data/audit.jsonl")),
        fsync,
        rotate_bytes: a.rotate_bytes.unwrap_or(104_857_600),
        checkpoint,
        redact_query: a.redact_query.clone().unwrap_or_else(|| {
            ["access_token", "api_key", "token", "signature"]
                .map(String::from)
                .to_vec()
        }),
        max_refusals_per_second: match a.max_refusals_per_second {
            Some(0) => return Err(c.err("audit.max_refusals_per_second", "must be at least 1")),
            Some(n) => n,
            None => 100,
        },
        max_pending_bytes: a.max_pending_bytes.unwrap_or(64 << 20),
        max_queue_records: match a.max_queue_records {
            None => 65_536,
            Some(n @ 16..=16_777_216) => n as usize,
            Some(_) => {
                return Err(c.err("audit.max_queue_records", "must be between 16 and 16777216"))
            }
        },
    })
}

/// A `host[:port]` authority (no userinfo, no path), as a header value.
fn authority(c: &Ctx, at: &str, h: &str) -> Result<HeaderValue, ConfigError> {
    match h.parse::<http::uri::Authority>() {
        Ok(a) if !a.as_str().contains('@') && !a.host().is_empty() && a.as_str() == h => {
            HeaderValue::from_str(h).map_err(|_| c.err(at, format!("`{h}` is not a valid host")))
        }
        _ => Err(c.err(at, format!("`{h}`: expected host or host:port"))),
    }
}

fn compile_timers(c: &Ctx, t: &raw::RawTimers) -> Result<Timers, ConfigError> {
    let ms = Duration::from_millis;
    let get = |k: &str, v: &Option<String>, default: Duration, min: Duration, max: Duration| {
        let at = format!("timers.{k}");
        let d = c.duration(&at, v, default)?;
        if d < min || d > max {
            return Err(c.err(
                &at,
                format!(
                    "must be between {} and {}",
                    humantime::format_duration(min),
                    humantime::format_duration(max)
                ),
            ));
        }
        Ok(d)
    };
    Ok(Timers {
        sweep_every: get("sweep_every", &t.sweep_every, ms(1000), ms(10), ms(60_000))?,
        watch_every: get("watch_every", &t.watch_every, ms(1000), ms(10), ms(60_000))?,
        replay_lease: get(
            "replay_lease",
            &t.replay_lease,
            ms(6000),
            ms(300),
            ms(600_000),
        )?,
        cache_max_age: get(
            "cache_max_age",
            &t.cache_max_age,
            ms(5000),
            ms(10),
            ms(60_000),
        )?,
        signals_flush: get(
            "signals_flush",
            &t.signals_flush,
            ms(250),
            ms(10),
            ms(10_000),
        )?,
    })
}

fn compile_limits(c: &Ctx, l: &raw::RawLimits) -> Result<Limits, ConfigError> {
    let limits = Limits {
        max_body_bytes: l.max_body_bytes.unwrap_or(10_485_760),
        max_parked_body_bytes: l.max_parked_body_bytes.unwrap_or(1_048_576),
        max_result_bytes: l.max_result_bytes.unwrap_or(1_048_576),
        max_pending_per_agent: l.max_pending_per_agent.unwrap_or(100),
        approval_ttl: c.duration(
            "limits.approval_ttl",
            &l.approval_ttl,
            Duration::from_secs(3600),
        )?,
        approval_retention: c.duration(
            "limits.approval_retention",
            &l.approval_retention,
            Duration::from_secs(7 * 86400),
        )?,
        header_timeout: c.duration(
            "limits.header_timeout",
            &l.header_timeout,
            Duration::from_secs(10),
        )?,
        request_deadline: c.duration(
            "limits.request_deadline",
            &l.request_deadline,
            Duration::from_secs(60),
        )?,
        max_header_bytes: l.max_header_bytes.unwrap_or(65_536),
        idle_timeout: c.duration(
            "limits.idle_timeout",
            &l.idle_timeout,
            Duration::from_secs(60),
        )?,
        max_connections: l.max_connections.unwrap_or(10_000),
        max_connections_per_ip: l.max_connections_per_ip.unwrap_or(256),
        max_concurrent_parks_per_agent: l.max_concurrent_parks_per_agent.unwrap_or(4),
        max_inspected_body_bytes: l.max_inspected_body_bytes.unwrap_or(1_048_576),
    };
    if limits.max_header_bytes < 8192 {
        return Err(c.err("limits.max_header_bytes", "must be at least 8192"));
    }
    for (k, d) in [
        ("header_timeout", limits.header_timeout),
        ("request_deadline", limits.request_deadline),
        ("approval_ttl", limits.approval_ttl),
        ("idle_timeout", limits.idle_timeout),
    ] {
        if d.is_zero() {
            return Err(c.err(&format!("limits.{k}"), "must be more than zero"));
        }
    }
    for (k, n) in [
        ("max_connections", limits.max_connections),
        ("max_connections_per_ip", limits.max_connections_per_ip),
        (
            "max_concurrent_parks_per_agent",
            limits.max_concurrent_parks_per_agent,
        ),
    ] {
        if n == 0 {
            return Err(c.err(&format!("limits.{k}"), "must be more than zero"));
        }
    }
    Ok(limits)
}

fn compile_operators(c: &Ctx, ops: &[raw::RawOperator]) -> Result<Vec<Operator>, ConfigError> {
    let mut out: Vec<Operator> = Vec::new();
    for (i, o) in ops.iter().enumerate() {
        let at = format!("operators[{i}]");
        if out.iter().any(|x| x.name == o.name) {
            return Err(c.err(
                &format!("{at}.name"),
                format!("duplicate operator `{}`", o.name),
            ));
        }
        let hash = operator_hash(c, &at, o)?;
        for (ri, r) in o.roles.iter().enumerate() {
            if !matches!(r.as_str(), "viewer" | "approver" | "admin") {
                return Err(c.err(
                    &format!("{at}.roles[{ri}]"),
                    format!("`{r}`: expected viewer, approver or admin"),
                ));
            }
        }
        out.push(Operator {
            name: o.name.clone(),
            token_sha256: hash,
            roles: o.roles.clone(),
        });
    }
    Ok(out)
}

/// The operator's token hash from `token_sha256`, `token_sha256_env`, `token_sha256_file`
/// or (hashed here) `token_env`: exactly one.
fn operator_hash(c: &Ctx, at: &str, o: &raw::RawOperator) -> Result<[u8; 32], ConfigError> {
    let given = [
        o.token_sha256.is_some(),
        o.token_sha256_env.is_some(),
        o.token_sha256_file.is_some(),
        o.token_env.is_some(),
    ];
    match given.iter().filter(|g| **g).count() {
        1 => {}
        0 => {
            return Err(c.err(
                at,
                "needs one of `token_sha256`, `token_sha256_env`, `token_sha256_file`, `token_env`",
            ))
        }
        _ => return Err(c.err(
            at,
            "give only one of `token_sha256`, `token_sha256_env`, `token_sha256_file`, `token_env`",
        )),
    }
    if let Some(name) = &o.token_env {
        let key = format!("{at}.token_env");
        let token = c.env_secret(&key, name)?;
        if token == UNCHECKED_SECRET && c.offline() {
            return Ok([0u8; 32]);
        }
        if !token.starts_with(crate::identity::OPERATOR_PREFIX) || token.len() < 36 {
            return Err(c.err(
                &key,
                format!(
                    "`{name}` must hold an operator token: `pco_` and at least 32 characters \
                     (`portcullis operators new-token NAME` makes one)"
                ),
            ));
        }
        return Ok(Sha256::digest(token.as_bytes()).into());
    }
    let (key, hex_text) = match (&o.token_sha256, &o.token_sha256_env, &o.token_sha256_file) {
        (Some(h), _, _) => (format!("{at}.token_sha256"), h.clone()),
        (None, env, file) => {
            let leaf = if env.is_some() { "_env" } else { "_file" };
            let v = c.secret_named(at, "token_sha256", env, file)?;
            if v == UNCHECKED_SECRET && c.offline() {
                return Ok([0u8; 32]);
            }
            (format!("{at}.token_sha256{leaf}"), v.trim().to_string())
        }
    };
    let mut hash = [0u8; 32];
    hex::decode_to_slice(&hex_text, &mut hash).map_err(|_| {
        c.err(
            &key,
            "expected 64 hex digits (see `portcullis operators new-token`)",
        )
    })?;
    Ok(hash)
}

fn header_name(c: &Ctx, path: &str, s: &str) -> Result<HeaderName, ConfigError> {
    let h = HeaderName::from_bytes(s.as_bytes())
        .map_err(|_| c.err(path, format!("`{s}` is not a header name")))?;
    if s.contains('_') {
        return Err(c.err(path, "header names with `_` are refused by the proxy"));
    }
    Ok(h)
}

fn compile_upstream(c: &Ctx, name: &str, u: &raw::RawUpstream) -> Result<Upstream, ConfigError> {
    let at = format!("upstreams.{name}");
    let url: http::Uri = u
        .url
        .parse()
        .map_err(|e| c.err(&format!("{at}.url"), format!("`{}`: {e}", u.url)))?;
    let https = match url.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err(c.err(&format!("{at}.url"), "must be an http:// or https:// URL")),
    };
    let authority = url
        .authority()
        .cloned()
        .ok_or_else(|| c.err(&format!("{at}.url"), "has no host"))?;
    if authority.as_str().contains('@') {
        return Err(c.err(
            &format!("{at}.url"),
            "credentials in the URL are not allowed; use `inject`",
        ));
    }
    if url.query().is_some() {
        return Err(c.err(
            &format!("{at}.url"),
            "a query is not allowed in an upstream URL",
        ));
    }
    let base_path = url.path().trim_end_matches('/').to_string();
    let inject = match &u.inject {
        Some(i) => {
            let header = header_name(c, &format!("{at}.inject.header"), &i.header)?;
            let value = c.secret(&format!("{at}.inject"), &i.value_env, &i.value_file)?;
            let mut value = HeaderValue::from_str(&value).map_err(|_| {
                c.err(
                    &format!("{at}.inject"),
                    "the credential is not a valid header value",
                )
            })?;
            value.set_sensitive(true);
            Some(Inject { header, value })
        }
        None => None,
    };
    let tenant_header = match &u.tenant_header {
        Some(h) => Some(header_name(c, &format!("{at}.tenant_header"), h)?),
        None => None,
    };
    let connect_timeout = c.duration(
        &format!("{at}.timeouts.connect"),
        &u.timeouts.connect,
        Duration::from_secs(2),
    )?;
    let response_timeout = c.duration(
        &format!("{at}.timeouts.response"),
        &u.timeouts.response,
        Duration::from_secs(30),
    )?;
    let cookies_pass = match u.cookies.as_deref() {
        None | Some("strip") => false,
        Some("pass") => true,
        Some(o) => {
            return Err(c.err(
                &format!("{at}.cookies"),
                format!("`{o}`: expected strip or pass"),
            ))
        }
    };
    let ca_file = u.ca_file.as_ref().map(|f| c.resolve(f));
    if let Some(f) = &ca_file {
        if !https {
            return Err(c.err(&format!("{at}.ca_file"), "ca_file needs an https:// url"));
        }
        if let Err(e) = std::fs::metadata(f) {
            return Err(c.err(
                &format!("{at}.ca_file"),
                format!("cannot read `{}`: {e}", f.display()),
            ));
        }
    }
    Ok(Upstream {
        name: name.into(),
        https,
        host: HeaderValue::from_str(authority.as_str()).ok(),
        authority,
        base_path,
        ca_file,
        inject,
        tenant_header,
        connect_timeout,
        response_timeout,
        cookies_pass,
    })
}

/// A tool override's `when_risk` entries. An entry's risk may not be below the method's
/// default risk (`floor`) unless the override says `risk_floor: false`.
fn compile_when_risk(
    c: &Ctx,
    tat: &str,
    t: &raw::RawTool,
    risk: Risk,
    floor: Risk,
) -> Result<Option<Arc<[crate::conditions::WhenRisk]>>, ConfigError> {
    if t.when_risk.is_empty() {
        if t.risk_floor.is_some() {
            return Err(c.err(
                &format!("{tat}.risk_floor"),
                "`risk_floor` applies to `when_risk` entries, and there are none",
            ));
        }
        return Ok(None);
    }
    let mut out = Vec::new();
    for (wi, w) in t.when_risk.iter().enumerate() {
        let wat = format!("{tat}.when_risk[{wi}]");
        let when = crate::conditions::compile::compile(&w.when)
            .map_err(|m| c.err(&format!("{wat}.when"), m))?;
        let r = match &w.risk {
            Some(s) => Risk::parse(s).ok_or_else(|| {
                c.err(
                    &format!("{wat}.risk"),
                    format!("`{s}`: expected low, medium, high or critical"),
                )
            })?,
            None => risk,
        };
        if w.risk.is_none() && w.name.is_none() {
            return Err(c.err(&wat, "a `when_risk` entry sets a `risk`, a `name` or both"));
        }
        if r < floor && t.risk_floor != Some(false) {
            return Err(c.err(
                &format!("{wat}.risk"),
                format!(
                    "`{r}` is below the method's risk ({floor}); say `risk_floor: false` on the override to allow it"
                ),
            ));
        }
        if let Some(n) = &w.name {
            if n.is_empty() || n.contains(['*', ' ']) {
                return Err(c.err(
                    &format!("{wat}.name"),
                    "must be a non-empty name without `*` or spaces",
                ));
            }
        }
        out.push(crate::conditions::WhenRisk {
            when: Arc::new(when),
            risk: r,
            name: w.name.as_deref().map(Arc::from),
            raises: r >= risk,
        });
    }
    Ok(Some(out.into()))
}

fn compile_profiles(
    c: &Ctx,
    raw: &BTreeMap<String, raw::RawProfile>,
) -> Result<BTreeMap<String, Arc<Profile>>, ConfigError> {
    // Plain entries become globs; `{ tool, when }` entries conditional ones.
    let globs = |path: String,
                 v: &Option<Vec<raw::RawEntry>>,
                 list: List,
                 conditional: &mut Vec<CondEntry>|
     -> Result<Vec<Glob>, ConfigError> {
        let mut out = Vec::new();
        for (i, e) in v.as_deref().unwrap_or_default().iter().enumerate() {
            let (pattern, at) = match e {
                raw::RawEntry::Plain(s) => (s, format!("{path}[{i}]")),
                raw::RawEntry::When(w) => (&w.tool, format!("{path}[{i}].tool")),
            };
            if pattern.is_empty() {
                return Err(c.err(&at, "empty pattern"));
            }
            match e {
                raw::RawEntry::Plain(s) => out.push(Glob(s.clone())),
                raw::RawEntry::When(w) => conditional.push(CondEntry {
                    list,
                    glob: Glob(w.tool.clone()),
                    when: Arc::new(
                        crate::conditions::compile::compile(&w.when)
                            .map_err(|m| c.err(&format!("{path}[{i}].when"), m))?,
                    ),
                }),
            }
        }
        Ok(out)
    };
    let mut out = BTreeMap::new();
    for (name, p) in raw {
        let at = format!("profiles.{name}");
        let admin = p.admin.unwrap_or(false);
        if admin
            && (p.tools.is_some()
                || p.resources.is_some()
                || p.max_risk.is_some()
                || p.approval.is_some()
                || p.deny.is_some()
                || p.rate_limit.is_some())
        {
            return Err(c.err(
                &format!("{at}.admin"),
                "an admin profile takes no other keys",
            ));
        }
        let max_risk = match p.max_risk.as_deref() {
            None => Risk::Low,
            Some(s) => match Risk::parse(s) {
                Some(r) if r != Risk::Critical => r,
                _ => {
                    return Err(c.err(
                        &format!("{at}.max_risk"),
                        format!("`{s}`: expected low, medium or high"),
                    ))
                }
            },
        };
        if let Some(res) = &p.resources {
            for (i, r) in res.iter().enumerate() {
                Pattern::new(&r.replace("{tenant}", "t"))
                    .map_err(|e| c.err(&format!("{at}.resources[{i}]"), e))?;
            }
        }
        if let Some(rl) = &p.rate_limit {
            if rl.per_minute == 0 {
                return Err(c.err(&format!("{at}.rate_limit.per_minute"), "must be at least 1"));
            }
        }
        let mut conditional = Vec::new();
        let tools = globs(
            format!("{at}.tools"),
            &p.tools,
            List::Tools,
            &mut conditional,
        )?;
        let approval = globs(
            format!("{at}.approval"),
            &p.approval,
            List::Approval,
            &mut conditional,
        )?;
        let deny = globs(format!("{at}.deny"), &p.deny, List::Deny, &mut conditional)?;
        out.insert(
            name.clone(),
            Arc::new(Profile {
                name: name.clone(),
                admin,
                tools,
                resources: p.resources.clone(),
                max_risk,
                approval,
                deny,
                conditional,
                rate_per_minute: p.rate_limit.as_ref().map(|r| r.per_minute),
            }),
        );
    }
    Ok(out)
}

pub fn valid_tenant(t: &str) -> bool {
    (1..=64).contains(&t.len())
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn compile_agents(
    c: &Ctx,
    raw: &BTreeMap<String, raw::RawAgent>,
    profiles: &BTreeMap<String, Arc<Profile>>,
    upstreams: &[Upstream],
) -> Result<FastMap<String, Arc<Agent>>, ConfigError> {
    let mut out = FastMap::default();
    for (id, a) in raw {
        let at = format!("agents.{id}");
        if id.is_empty()
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(c.err(&at, format!("agent id `{id}` must match [A-Za-z0-9._-]+")));
        }
        let profile = profiles.get(&a.profile).cloned().ok_or_else(|| {
            c.err(
                &format!("{at}.profile"),
                format!("unknown profile `{}`", a.profile),
            )
        })?;
        if let Some(t) = &a.tenant {
            if !valid_tenant(t) {
                return Err(c.err(
                    &format!("{at}.tenant"),
                    format!("`{t}` must match [A-Za-z0-9._-]{{1,64}}"),
                ));
            }
        } else if let Some(u) = upstreams.iter().find(|u| u.tenant_header.is_some()) {
            return Err(c.err(
                &at,
                format!(
                    "agent has no tenant but upstream `{}` sets a tenant_header",
                    u.name
                ),
            ));
        }
        if a.tenant.is_none()
            && profile
                .resources
                .iter()
                .flatten()
                .any(|r| r.contains("{tenant}"))
        {
            return Err(c.err(
                &at,
                format!(
                    "profile `{}` scopes resources by {{tenant}} but the agent has no tenant",
                    a.profile
                ),
            ));
        }
        let resources = match &profile.resources {
            Some(rs) => Some(
                rs.iter()
                    .map(|r| {
                        Pattern::new(
                            &r.replace("{tenant}", a.tenant.as_deref().unwrap_or_default()),
                        )
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| c.err(&format!("profiles.{}.resources", a.profile), e))?,
            ),
            None => None,
        };
        out.insert(
            id.clone(),
            Arc::new(Agent {
                id: id.clone(),
                profile,
                tenant: a.tenant.clone(),
                owner: a.owner.clone(),
                resources,
            }),
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
