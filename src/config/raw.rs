//! The routes.yaml schema as written: plain serde structs, unknown keys refused.
//!
//! Nothing here is validated beyond its type; `config::compile` turns these into a
//! [`crate::config::Snapshot`] and the request path never sees them.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default = "default_listen")]
    pub listen: String,
    #[serde(default = "default_admin_listen")]
    pub admin_listen: String,
    #[serde(default)]
    pub admin_tls: Option<RawTls>,
    /// The admin listener may be off loopback without `admin_tls`: its network is
    /// trusted (a container network whose port is published on the host's loopback).
    #[serde(default)]
    pub admin_trusted_network: bool,
    #[serde(default)]
    pub node: Option<String>,
    #[serde(default)]
    pub tls: Option<RawTls>,
    #[serde(default)]
    pub store: RawStore,
    #[serde(default)]
    pub audit: RawAudit,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub timers: RawTimers,
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// The public authority agents address; sent upstream as X-Forwarded-Host.
    #[serde(default)]
    pub public_host: Option<String>,
    /// Authorities agents may address; a Host among them is sent as X-Forwarded-Host.
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub notify: Option<RawNotify>,
    #[serde(default)]
    pub operators: Vec<RawOperator>,
    #[serde(default)]
    pub upstreams: BTreeMap<String, RawUpstream>,
    #[serde(default)]
    pub sensitive_paths: Vec<String>,
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    #[serde(default)]
    pub profiles: BTreeMap<String, RawProfile>,
    #[serde(default)]
    pub agents: BTreeMap<String, RawAgent>,
    #[serde(default)]
    pub mcp: RawMcp,
    /// Signals and brakes (`crate::signals::config`).
    #[serde(default)]
    pub signals: Option<crate::signals::config::RawSignals>,
}

/// `mcp:` — the MCP endpoint on the agent port.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawMcp {
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// Names the environment variable holding the key that signs session ids (shared
    /// by every replica).
    #[serde(default)]
    pub session_key_env: Option<String>,
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}
fn default_admin_listen() -> String {
    "127.0.0.1:9090".into()
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    #[serde(default)]
    pub embedded: Option<String>,
    #[serde(default)]
    pub redis: Option<RawRedis>,
    #[serde(default)]
    pub token_pepper_env: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawRedis {
    #[serde(default)]
    pub url_env: Option<String>,
    #[serde(default)]
    pub url_file: Option<String>,
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    /// The ACL user (else the URL's).
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password_env: Option<String>,
    #[serde(default)]
    pub password_file: Option<String>,
    /// The database index (else the URL's path, else 0).
    #[serde(default)]
    pub db: Option<i64>,
    /// Sentinel only: TLS to the sentinels and the nodes (a URL says it with `rediss://`).
    #[serde(default)]
    pub tls: Option<bool>,
    /// PEM roots for TLS to redis: this CA only (default: the system's roots).
    #[serde(default)]
    pub ca_file: Option<String>,
    #[serde(default)]
    pub timeouts: Option<RawRedisTimeouts>,
    /// Writes that must reach this many replicas before they are acknowledged.
    #[serde(default)]
    pub wait: Option<RawRedisWait>,
    #[serde(default)]
    pub sentinel: Option<RawSentinel>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawRedisTimeouts {
    #[serde(default)]
    pub connect: Option<String>,
    #[serde(default)]
    pub command: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawRedisWait {
    pub replicas: u32,
    #[serde(default)]
    pub timeout: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawSentinel {
    pub master_name: String,
    /// `host:port` of each sentinel, or `addrs_env`: a variable holding them, comma-separated.
    #[serde(default)]
    pub addrs: Option<Vec<String>>,
    #[serde(default)]
    pub addrs_env: Option<String>,
    /// The sentinels' own ACL user and password, when they require one.
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password_env: Option<String>,
    #[serde(default)]
    pub password_file: Option<String>,
}

fn default_key_prefix() -> String {
    "pc:".into()
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub fsync: Option<String>,
    #[serde(default)]
    pub rotate_bytes: Option<u64>,
    #[serde(default)]
    pub checkpoint: Option<RawCheckpoint>,
    #[serde(default)]
    pub redact_query: Option<Vec<String>>,
    #[serde(default)]
    pub max_refusals_per_second: Option<u32>,
    #[serde(default)]
    pub max_pending_bytes: Option<u64>,
    #[serde(default)]
    pub max_queue_records: Option<u64>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawCheckpoint {
    pub every: u64,
    pub key_env: String,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_body_bytes: Option<u64>,
    pub max_parked_body_bytes: Option<u64>,
    pub max_result_bytes: Option<u64>,
    pub max_pending_per_agent: Option<u32>,
    pub approval_ttl: Option<String>,
    pub approval_retention: Option<String>,
    pub header_timeout: Option<String>,
    pub request_deadline: Option<String>,
    pub max_header_bytes: Option<u64>,
    pub idle_timeout: Option<String>,
    pub max_connections: Option<u32>,
    pub max_connections_per_ip: Option<u32>,
    pub max_concurrent_parks_per_agent: Option<u32>,
    /// The most of a body read for a condition on `request.body` (else 413).
    pub max_inspected_body_bytes: Option<u64>,
}

/// Background cadences; the defaults suit production, tests shorten them.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimers {
    pub sweep_every: Option<String>,
    pub watch_every: Option<String>,
    pub replay_lease: Option<String>,
    pub cache_max_age: Option<String>,
    pub signals_flush: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawNotify {
    #[serde(default)]
    pub webhook: Option<RawWebhook>,
    /// The operator page's public base URL (`https://portcullis-admin.example`): the
    /// webhook text links to the request's page under it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_url: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebhook {
    #[serde(default)]
    pub url_env: Option<String>,
    #[serde(default)]
    pub url_file: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawOperator {
    pub name: String,
    /// Exactly one of these four: the hash, the hash from the environment or a file, or
    /// the token itself from the environment (hashed at load; for a bootstrap operator).
    #[serde(default)]
    pub token_sha256: Option<String>,
    #[serde(default)]
    pub token_sha256_env: Option<String>,
    #[serde(default)]
    pub token_sha256_file: Option<String>,
    #[serde(default)]
    pub token_env: Option<String>,
    #[serde(default)]
    pub roles: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub url: String,
    #[serde(default)]
    pub ca_file: Option<String>,
    #[serde(default)]
    pub inject: Option<RawInject>,
    #[serde(default)]
    pub tenant_header: Option<String>,
    #[serde(default)]
    pub timeouts: RawTimeouts,
    /// `strip` (default) or `pass`.
    #[serde(default)]
    pub cookies: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawInject {
    pub header: String,
    #[serde(default)]
    pub value_env: Option<String>,
    #[serde(default)]
    pub value_file: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    #[serde(default)]
    pub connect: Option<String>,
    #[serde(default)]
    pub response: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub prefix: String,
    pub upstream: String,
    #[serde(default)]
    pub tool_prefix: Option<String>,
    #[serde(default)]
    pub strip_prefix: bool,
    #[serde(default)]
    pub unknown_paths: Option<String>,
    #[serde(default)]
    pub allow_encoded_slash: bool,
    /// Bodiless methods (GET HEAD OPTIONS DELETE) that may carry a body on this route.
    #[serde(default)]
    pub allow_body_on: Vec<String>,
    #[serde(default)]
    pub public_host: Option<String>,
    #[serde(default)]
    pub paths: Vec<String>,
    #[serde(default)]
    pub sensitive_paths: Vec<String>,
    #[serde(default)]
    pub tools: Vec<RawTool>,
    /// OpenAPI descriptions (one file or a list), relative to the config file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub openapi: Option<OneOrMany>,
    /// `operation_id` (default): spec tools are named from their operationId;
    /// `generated`: every tool keeps the name generated from its template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_names: Option<String>,
    /// `request`: query parameters and JSON bodies are checked against the operation's
    /// schema before anything is forwarded or parked; `none` (default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validate: Option<String>,
    /// `current`: a parked PUT, PATCH or DELETE first reads the resource (a GET of the
    /// same path) so the operator sees the change; `none` (default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview: Option<String>,
}

/// A string or a list of strings (`openapi: a.yaml` or `openapi: [a.yaml, b.json]`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn items(&self) -> &[String] {
        match self {
            OneOrMany::One(s) => std::slice::from_ref(s),
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawTool {
    #[serde(rename = "match")]
    pub match_: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub risk: Option<String>,
    #[serde(default)]
    pub approval_ttl: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    /// `request` or `none`: overrides the route's `validate` for the spec operations
    /// this entry shadows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validate: Option<String>,
    /// `current` or `none`: overrides the route's `preview` for this tool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview: Option<String>,
    /// Conditions that set the risk (and name) of a request: the first that holds wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub when_risk: Vec<RawWhenRisk>,
    /// `false`: a `when_risk` entry may lower the risk below the method's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub risk_floor: Option<bool>,
}

/// `{ when: EXPR, risk: RISK, name: NAME }` under a tool override's `when_risk`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawWhenRisk {
    pub when: String,
    #[serde(default)]
    pub risk: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
}

/// A profile's `tools`, `approval` or `deny` entry: a pattern, or a pattern that holds
/// only when a condition does.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum RawEntry {
    Plain(String),
    When(RawWhenEntry),
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawWhenEntry {
    pub tool: String,
    pub when: String,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawProfile {
    #[serde(default)]
    pub admin: Option<bool>,
    #[serde(default)]
    pub tools: Option<Vec<RawEntry>>,
    #[serde(default)]
    pub resources: Option<Vec<String>>,
    #[serde(default)]
    pub max_risk: Option<String>,
    #[serde(default)]
    pub approval: Option<Vec<RawEntry>>,
    #[serde(default)]
    pub deny: Option<Vec<RawEntry>>,
    #[serde(default)]
    pub rate_limit: Option<RawRateLimit>,
    /// Overrides of the top-level `signals:` for this profile's agents.
    #[serde(default)]
    pub signals: Option<crate::signals::config::RawSignals>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    pub per_minute: u32,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawAgent {
    pub profile: String,
    #[serde(default)]
    pub tenant: Option<String>,
    #[serde(default)]
    pub owner: Option<String>,
}
