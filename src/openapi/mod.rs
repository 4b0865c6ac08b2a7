//! OpenAPI import: the specs a route names (`openapi:`) become known templates and
//! tools — name, description, risk, input and output schema — that feed the existing
//! classifier. Nothing here decides: requests are judged by `pipeline::judge` and
//! `policy::decide` as before; `validate: request` is a refusal in the proxy's path
//! before anything is forwarded or parked.
//!
//! `load` reads a document, `refs` resolves `$ref`s, `schema` converts schemas to JSON
//! Schema 2020-12, `names` makes tool names, `ops` builds operations, `validate` checks
//! requests.

pub mod load;
pub mod names;
mod ops;
pub mod refs;
pub mod schema;
pub mod validate;

use crate::canon::Method;
use crate::classify::{Conflict, Risk, RouteRules};
use crate::config::raw::RawRoute;
use crate::config::{ConfigError, Snapshot, Upstream};
use schema::Schema;
use serde::Serialize;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use ops::MAX_DESCRIPTION;

/// A spec file as routes.yaml names it, and where it was read.
#[derive(Debug)]
pub struct SpecFile {
    pub shown: String,
    pub file: PathBuf,
}

/// Where an operation comes from: method, path and operationId in a spec file.
#[derive(Debug, Clone)]
pub struct OpRef {
    pub method: Method,
    pub spec_path: String,
    pub operation_id: Option<String>,
    pub spec: Arc<SpecFile>,
}

impl OpRef {
    /// `GET /pets/{id} (getPet)`.
    pub fn label(&self) -> String {
        match &self.operation_id {
            Some(id) => format!("{} {} ({id})", self.method.as_str(), self.spec_path),
            None => format!("{} {}", self.method.as_str(), self.spec_path),
        }
    }

    fn method_key(&self) -> String {
        self.method.as_str().to_ascii_lowercase()
    }
}

/// `label at file:line:col` for each operation, the file of each read once.
pub fn located(refs: &[&OpRef]) -> Vec<String> {
    let mut at: Vec<Option<(usize, usize)>> = vec![None; refs.len()];
    let mut by_file: HashMap<&Path, Vec<usize>> = HashMap::new();
    for (i, r) in refs.iter().enumerate() {
        by_file.entry(r.spec.file.as_path()).or_default().push(i);
    }
    for (file, idx) in by_file {
        let methods: Vec<String> = idx.iter().map(|&i| refs[i].method_key()).collect();
        let keys: Vec<Vec<&str>> = idx
            .iter()
            .zip(&methods)
            .map(|(&i, m)| vec!["paths", refs[i].spec_path.as_str(), m.as_str()])
            .collect();
        for (&i, spot) in idx.iter().zip(load::locate(file, &keys)) {
            at[i] = spot;
        }
    }
    refs.iter()
        .zip(at)
        .map(|(r, spot)| match spot {
            Some((l, c)) => format!("{} at {}:{l}:{c}", r.label(), r.spec.shown),
            None => format!("{} in {}", r.label(), r.spec.shown),
        })
        .collect()
}

/// One operation of a spec, as a tool.
pub struct Operation {
    /// The tool name (`<tool_prefix>.<operationId>` normalised, or generated).
    pub name: Arc<str>,
    pub method: Method,
    /// The matchit template on the agent side (`/pets/{petId}`).
    pub template: Arc<str>,
    /// The agent-side path in the spec's own syntax (`/gh/compare/{base}...{head}`),
    /// to build a request from arguments.
    pub path: String,
    pub source: OpRef,
    /// `summary`, trimmed.
    pub summary: Option<String>,
    /// `summary` and `description`, trimmed, at most [`MAX_DESCRIPTION`] bytes.
    pub description: Option<String>,
    /// From the method, or `x-portcullis-risk`; overrides and sensitive paths apply on top.
    pub risk: Risk,
    pub risk_from_spec: bool,
    /// The name came from the operationId (not generated from the template).
    pub from_operation_id: bool,
    /// The spec's security requirements, one entry per alternative. Shown, never a grant.
    pub security: Vec<String>,
    pub deprecated: bool,
    pub input: Schema,
    pub output: Option<Schema>,
    query: Vec<validate::QueryParam>,
    json_body: bool,
    body_required: bool,
    /// `validate: request` applies to this operation.
    pub validate: bool,
    check: Option<validate::RequestCheck>,
}

impl std::fmt::Debug for Operation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Operation")
            .field("name", &self.name)
            .field("method", &self.method)
            .field("template", &self.template)
            .finish_non_exhaustive()
    }
}

impl Operation {
    /// Whether a request body is required by the spec.
    pub fn body_required(&self) -> bool {
        self.body_required
    }

    /// The compiled validator, when `validate: request` applies.
    pub fn request_check(&self) -> Option<&validate::RequestCheck> {
        self.check.as_ref()
    }
}

/// What `check` says about one spec.
#[derive(Debug)]
pub struct SpecReport {
    pub file: Arc<SpecFile>,
    /// The `openapi:` version the document declares.
    pub openapi: String,
    pub title: String,
    pub api_version: String,
    /// Operations imported as tools.
    pub operations: usize,
    /// How the servers' base path, the upstream URL and the route prefix combined.
    pub combined: String,
    /// Operations whose template is not under the route prefix (not imported).
    pub outside: Vec<OpRef>,
    pub notes: Vec<String>,
    /// `components.securitySchemes` names.
    pub schemes: Vec<String>,
}

/// The specs of one route.
#[derive(Debug, Default)]
pub struct RouteImport {
    pub specs: Vec<SpecReport>,
    /// Every operation imported (conflict losers included).
    pub ops: Vec<Arc<Operation>>,
    /// Operations an override (`tools[]` index) shadows.
    pub shadowed: Vec<(Arc<Operation>, usize)>,
    /// Operations whose templates conflict with another source.
    pub conflicts: Vec<Conflict>,
    /// Files read (root specs and referenced files): shown name, path, SHA-256.
    files: Vec<(String, PathBuf, [u8; 32])>,
}

/// Every route's specs; `routes[i]` belongs to route `i`.
#[derive(Debug, Default)]
pub struct Imported {
    pub routes: Vec<RouteImport>,
    by_name: HashMap<Arc<str>, Arc<Operation>>,
}

/// The route a spec is imported for.
pub struct RouteIn<'a> {
    /// `routes[N]`, for error key paths.
    pub at: &'a str,
    pub raw: &'a RawRoute,
    /// The config file's directory.
    pub dir: &'a Path,
    pub upstream: &'a Upstream,
}

fn validate_setting(
    v: &Option<String>,
    key: &str,
    err: &dyn Fn(&str, String) -> ConfigError,
) -> Result<Option<bool>, ConfigError> {
    match v.as_deref() {
        None => Ok(None),
        Some("request") => Ok(Some(true)),
        Some("none") => Ok(Some(false)),
        Some(o) => Err(err(key, format!("`{o}`: expected request or none"))),
    }
}

impl Imported {
    /// Imports route `r.at`'s specs into `rules` (call once per route, in order).
    pub fn import_route(
        &mut self,
        r: RouteIn,
        rules: &mut RouteRules,
        err: &dyn Fn(&str, String) -> ConfigError,
    ) -> Result<(), ConfigError> {
        let at = r.at;
        let raw = r.raw;
        let generated = match raw.tool_names.as_deref() {
            None | Some("operation_id") => false,
            Some("generated") => true,
            Some(o) => {
                return Err(err(
                    &format!("{at}.tool_names"),
                    format!("`{o}`: expected operation_id or generated"),
                ))
            }
        };
        let route_validate =
            validate_setting(&raw.validate, &format!("{at}.validate"), err)?.unwrap_or(false);
        let tool_validate = raw
            .tools
            .iter()
            .enumerate()
            .map(|(i, t)| validate_setting(&t.validate, &format!("{at}.tools[{i}].validate"), err))
            .collect::<Result<Vec<_>, _>>()?;
        let specs: &[String] = raw.openapi.as_ref().map_or(&[], |o| o.items());
        let mut out = RouteImport::default();
        if specs.is_empty() {
            let needs = |k: &str| {
                err(
                    &format!("{at}.{k}"),
                    "applies to the operations of an `openapi:` spec; this route names none".into(),
                )
            };
            if raw.tool_names.is_some() {
                return Err(needs("tool_names"));
            }
            if raw.validate.is_some() {
                return Err(needs("validate"));
            }
            if let Some(i) = tool_validate.iter().position(Option::is_some) {
                return Err(needs(&format!("tools[{i}].validate")));
            }
            self.routes.push(out);
            return Ok(());
        }
        let (prefix, tool_prefix) = (rules.prefix.clone(), rules.tool_prefix.clone());
        let view = ops::RouteView {
            prefix: &prefix,
            strip_prefix: raw.strip_prefix,
            tool_prefix: &tool_prefix,
            upstream: &r.upstream.name,
            upstream_base: &r.upstream.base_path,
            generated_names: generated,
        };
        let mut used_by_tool = vec![false; raw.tools.len()];
        let mut all: Vec<Arc<Operation>> = Vec::new();
        for (si, s) in specs.iter().enumerate() {
            let key = match raw.openapi {
                Some(crate::config::raw::OneOrMany::Many(_)) => format!("{at}.openapi[{si}]"),
                _ => format!("{at}.openapi"),
            };
            let file = if Path::new(s).is_absolute() {
                PathBuf::from(s)
            } else {
                r.dir.join(s)
            };
            let (ops, report, docs) = ops::import(&file, s, &view).map_err(|e| err(&key, e))?;
            for ((shown, sha), path) in docs.files().zip(docs.paths()) {
                out.files
                    .push((shown.to_string(), path.to_path_buf(), *sha));
            }
            let mut arcs = Vec::with_capacity(ops.len());
            for mut op in ops {
                let sample = crate::tooltable::sample_path(&op.template);
                let mm = if op.method == Method::Head {
                    Method::Get
                } else {
                    op.method
                };
                let shadow = rules.overrides.iter().position(|o| {
                    o.methods.as_ref().is_none_or(|ms| ms.contains(&mm))
                        && o.pattern.matches(&sample)
                });
                op.validate = match shadow.and_then(|i| tool_validate[i]) {
                    Some(v) => v,
                    None => route_validate,
                };
                if let Some(i) = shadow {
                    used_by_tool[i] = true;
                }
                if op.validate {
                    let check = validate::RequestCheck::build(&op)
                        .map_err(|e| err(&key, format!("{}: {e}", located(&[&op.source])[0])))?;
                    op.check = Some(check);
                }
                let op = Arc::new(op);
                if let Some(i) = shadow {
                    out.shadowed.push((op.clone(), i));
                }
                arcs.push(op);
            }
            for op in &arcs {
                self.claim_name(op, &all, &key, err)?;
                all.push(op.clone());
            }
            out.conflicts.extend(rules.add_operations(arcs));
            out.specs.push(report);
        }
        if let Some(i) =
            (0..raw.tools.len()).find(|&i| tool_validate[i] == Some(true) && !used_by_tool[i])
        {
            return Err(err(
                &format!("{at}.tools[{i}].validate"),
                format!(
                    "`{}` shadows no operation of this route's specs; there is no schema to validate against",
                    raw.tools[i].match_
                ),
            ));
        }
        for op in &all {
            self.by_name.insert(op.name.clone(), op.clone());
        }
        out.ops = all;
        self.routes.push(out);
        Ok(())
    }

    /// Refuses a name another operation already has (unless both names were generated
    /// from templates, which may share a name as `paths` templates do).
    fn claim_name(
        &self,
        op: &Arc<Operation>,
        this_route: &[Arc<Operation>],
        key: &str,
        err: &dyn Fn(&str, String) -> ConfigError,
    ) -> Result<(), ConfigError> {
        let other = this_route
            .iter()
            .find(|o| o.name == op.name)
            .or_else(|| self.by_name.get(&op.name));
        match other {
            Some(o) if o.from_operation_id || op.from_operation_id => {
                let both = located(&[&o.source, &op.source]);
                Err(err(
                    key,
                    format!(
                        "tool name `{}` is produced by two operations: {} and {}; rename one operationId (or set `tool_names: generated`)",
                        op.name, both[0], both[1]
                    ),
                ))
            }
            _ => Ok(()),
        }
    }

    /// Every imported operation, route by route.
    pub fn operations(&self) -> impl Iterator<Item = &Arc<Operation>> {
        self.routes.iter().flat_map(|r| r.ops.iter())
    }

    /// The operation a tool name belongs to.
    pub fn by_name(&self, name: &str) -> Option<&Arc<Operation>> {
        self.by_name.get(name)
    }

    /// Every file read for the specs (to watch for changes).
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        self.routes
            .iter()
            .flat_map(|r| r.files.iter().map(|f| f.1.as_path()))
    }

    /// The policy version with the specs folded in: a spec change is a config change.
    /// Without specs it is the config's own version, unchanged.
    pub fn fold_version(&self, version: String) -> String {
        let files: Vec<&(String, PathBuf, [u8; 32])> =
            self.routes.iter().flat_map(|r| r.files.iter()).collect();
        if files.is_empty() {
            return version;
        }
        let mut h = Sha256::new();
        h.update(version.as_bytes());
        for (shown, _, sha) in files {
            h.update(b"\n");
            h.update(shown.as_bytes());
            h.update(b" ");
            h.update(hex::encode(sha).as_bytes());
        }
        format!("sha256:{}", hex::encode(h.finalize()))
    }
}

/// MCP-style hints derived from the method and the risk in force.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Annotations {
    #[serde(rename = "readOnlyHint")]
    pub read_only: bool,
    #[serde(rename = "destructiveHint")]
    pub destructive: bool,
    #[serde(rename = "idempotentHint")]
    pub idempotent: bool,
}

/// Read-only for GET/HEAD; destructive for DELETE or risk ≥ high; idempotent for
/// GET/HEAD/PUT/DELETE (OPTIONS counts as a read).
pub fn annotations(m: Method, risk: Risk) -> Annotations {
    let read = matches!(m, Method::Get | Method::Head | Method::Options);
    Annotations {
        read_only: read,
        destructive: m == Method::Delete || (risk >= Risk::High && !read),
        idempotent: read || matches!(m, Method::Put | Method::Delete),
    }
}

/// The input schema of a tool without a spec operation: one string property per path
/// parameter, a `query` object, and a `body` for methods that take one.
pub fn template_schema(template: &str, m: Method) -> Value {
    let mut path = Map::new();
    let mut names = Vec::new();
    for seg in template.split('/') {
        if let Some(name) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            let name = name.trim_start_matches('*');
            path.insert(name.into(), json!({"type": "string"}));
            names.push(Value::String(name.into()));
        }
    }
    let mut props = Map::new();
    let mut required = Vec::new();
    if !path.is_empty() {
        props.insert(
            "path".into(),
            json!({"type": "object", "properties": path, "required": names, "additionalProperties": false}),
        );
        required.push(Value::String("path".into()));
    }
    props.insert("query".into(), json!({"type": "object"}));
    if matches!(m, Method::Post | Method::Put | Method::Patch) {
        props.insert("body".into(), json!({}));
    }
    let mut s = json!({"type": "object", "properties": props, "additionalProperties": false});
    if !required.is_empty() {
        s["required"] = Value::Array(required);
    }
    s
}

impl Snapshot {
    /// A tool's description: its `tools[]` entry's own, else its spec operation's.
    pub fn tool_description(&self, name: &str) -> Option<&str> {
        self.classifier
            .routes
            .iter()
            .flat_map(|r| r.overrides.iter())
            .find(|o| &*o.name == name && o.description.is_some())
            .and_then(|o| o.description.as_deref())
            .or_else(|| {
                self.openapi
                    .by_name(name)
                    .and_then(|op| op.description.as_deref())
            })
    }
}

#[cfg(test)]
mod tests;
