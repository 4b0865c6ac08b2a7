//! Dry-run decisions: `explain` (CLI and `GET /explain`), `portcullis test` policy
//! files, and per-agent tool listings — all through the same canon, classify and decide.

use crate::canon;
use crate::conditions::{body::Read, Outcome};
use crate::config::Snapshot;
use crate::error::Error;
use crate::pipeline;
use crate::policy::{decide, Agent, Decision, Input, Narrowing, Switches};
use crate::tooltable;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    pub agent: String,
    pub method: String,
    pub path: String,
    pub tool: Option<String>,
    pub risk: Option<String>,
    pub template: Option<String>,
    pub route: Option<String>,
    pub upstream: Option<String>,
    /// `spec`, `paths`, `override` or `heuristic`.
    pub source: Option<String>,
    /// The spec operation matched: `getPetById: GET /pet/{petId} in specs/petstore.yaml`.
    pub operation: Option<String>,
    pub description: Option<String>,
    pub decision: String,
    pub reason: String,
    pub detail: String,
    /// Every condition evaluated, in order: `(expression, outcome)` with outcome
    /// `true`, `false` or `error: …`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<(String, String)>,
    /// The condition that decided the request, when one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
    pub policy_version: String,
}

/// Explains `METHOD TARGET` for `agent` under `switches` (no token narrowing).
pub fn explain(
    snap: &Snapshot,
    switches: &Switches,
    agent: &str,
    method: &str,
    target: &str,
) -> Result<Explanation, Error> {
    explain_with(snap, switches, agent, method, target, None)
}

/// A request body for a dry run, sent as JSON (`body:`) or as given.
pub fn json_body(bytes: Vec<u8>) -> Read {
    if bytes.is_empty() {
        Read::Empty
    } else {
        Read::Bytes {
            bytes: bytes.into(),
            json: true,
        }
    }
}

/// [`explain`] with a request body (what conditions on `request.body` read).
pub fn explain_with(
    snap: &Snapshot,
    switches: &Switches,
    agent: &str,
    method: &str,
    target: &str,
    body: Option<&Read>,
) -> Result<Explanation, Error> {
    let a = snap.agents.get(agent).ok_or_else(|| Error::BadRequest {
        reason: "unknown_agent",
        detail: format!("no agent `{agent}` in the config"),
    })?;
    let uri: http::Uri = target.parse().map_err(|_| Error::BadRequest {
        reason: "bad_target",
        detail: format!("`{target}` is not a request target"),
    })?;
    let m = http::Method::from_bytes(method.as_bytes())
        .map_err(|_| Error::MethodNotAllowed(method.to_string()))?;
    let mut h = http::HeaderMap::new();
    h.insert(
        http::header::HOST,
        http::HeaderValue::from_static("portcullis.explain"),
    );
    let mut e = Explanation {
        agent: agent.into(),
        method: method.into(),
        path: target.into(),
        tool: None,
        risk: None,
        template: None,
        route: None,
        upstream: None,
        source: None,
        operation: None,
        description: None,
        decision: "deny".into(),
        reason: String::new(),
        detail: String::new(),
        conditions: Vec::new(),
        condition: None,
        policy_version: snap.policy_version.to_string(),
    };
    // The proxy's own path: canonicalise, then `pipeline::judge` (the body given, no
    // token narrowing, no rate). A refusal is explained with the reason the proxy gives.
    let c = match canon::canonicalize(&m, &uri, http::Version::HTTP_11, &h) {
        Ok(c) => c,
        Err(err) => return Ok(refused(e, &err)),
    };
    e.method = c.method.as_str().into();
    e.path = c.path_and_query();
    let mut seen = None;
    if matches!(body, Some(Read::Bytes { .. })) {
        h.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
    }
    let carries = matches!(body, Some(Read::Bytes { .. }));
    let judged = pipeline::judge(
        snap,
        a,
        &Narrowing::default(),
        switches,
        &c,
        &h,
        body,
        carries,
        &mut |tool| {
            seen = tool.cloned();
            Ok(())
        },
    );
    if let Ok(j) = &judged {
        // The tool as its conditions left it (risk, name).
        seen = Some(j.tool.clone());
        e.conditions = j
            .evaluated
            .trail
            .iter()
            .map(|(text, o)| {
                let o = match o {
                    Outcome::Holds(b) => b.to_string(),
                    Outcome::Failed(why) => format!("error: {why}"),
                };
                (text.to_string(), o)
            })
            .collect();
        e.condition = j.decision.condition().map(|c| c.to_string());
    }
    if let Some(tool) = &seen {
        let route = &snap.routes[tool.route];
        e.tool = Some(tool.name.to_string());
        e.risk = Some(tool.risk.to_string());
        e.template = Some(tool.template.to_string());
        e.route = Some(route.prefix.clone());
        e.upstream = Some(snap.upstreams[route.upstream].name.clone());
        e.source = Some(tool.source.as_str().into());
        e.operation = tool.op.as_ref().map(|op| {
            let mut o = format!(
                "{} {} in {}",
                op.source.method.as_str(),
                op.source.spec_path,
                op.source.spec.shown
            );
            if let Some(id) = &op.source.operation_id {
                o = format!("{id}: {o}");
            }
            if !op.security.is_empty() {
                o.push_str(&format!(
                    "; security (shown, never a grant): {}",
                    op.security.join(" | ")
                ));
            }
            o
        });
        e.description = tooltable::description(snap, tool);
    } else if let Some(r) = snap.classifier.route_of(&c.path) {
        e.route = Some(snap.routes[r].prefix.clone());
    }
    match judged {
        Ok(j) => {
            e.decision = j.decision.label().into();
            e.reason = j.decision.reason().into();
            e.detail = match j.decision {
                Decision::Park { condition: Some(c) } => format!(
                    "`{}` waits for an operator's approval (condition `{c}`)",
                    j.tool.name
                ),
                Decision::Park { condition: None } => {
                    format!("`{}` waits for an operator's approval", j.tool.name)
                }
                Decision::Allow {
                    rule,
                    condition: Some(c),
                } => format!("allowed by the profile's `{rule}` rule (condition `{c}`)"),
                Decision::Allow { rule, .. } => format!("allowed by the profile's `{rule}` rule"),
                Decision::Deny { detail, .. } => detail,
            };
            Ok(e)
        }
        Err(err) => Ok(refused(e, &err)),
    }
}

/// An explanation of a refusal: the decision, reason and detail the proxy would give.
fn refused(mut e: Explanation, err: &Error) -> Explanation {
    e.decision = err.decision().into();
    e.reason = err.reason().into();
    e.detail = err.to_string();
    e
}

impl std::fmt::Display for Explanation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let o = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        writeln!(f, "agent:    {}", self.agent)?;
        writeln!(f, "request:  {} {}", self.method, self.path)?;
        writeln!(
            f,
            "tool:     {} (risk {}, template {}, source {})",
            o(&self.tool),
            o(&self.risk),
            o(&self.template),
            o(&self.source)
        )?;
        if let Some(op) = &self.operation {
            writeln!(f, "operation: {op}")?;
        }
        if let Some(d) = &self.description {
            writeln!(f, "about:    {}", d.lines().next().unwrap_or(""))?;
        }
        writeln!(
            f,
            "route:    {} → upstream {}",
            o(&self.route),
            o(&self.upstream)
        )?;
        for (text, outcome) in &self.conditions {
            writeln!(f, "when:     {text} → {outcome}")?;
        }
        writeln!(f, "decision: {} ({})", self.decision, self.reason)?;
        writeln!(f, "because:  {}", self.detail)?;
        write!(f, "policy:   {}", self.policy_version)
    }
}

/// What an agent may call (`allow`) or request (`park`).
#[derive(Debug, Clone, Serialize)]
pub struct ToolEntry {
    pub tool: String,
    pub method: String,
    pub template: String,
    pub risk: String,
    pub posture: String,
    /// `spec`, `paths` or `override`.
    pub source: &'static str,
    pub description: Option<String>,
    /// JSON Schema 2020-12 of the arguments: `{path, query, header, body}`.
    pub input_schema: serde_json::Value,
    /// JSON Schema 2020-12 of the first 2xx JSON response, when the spec has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_schema: Option<serde_json::Value>,
    pub annotations: crate::openapi::Annotations,
    /// The spec operation behind the tool.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operation: Option<OperationInfo>,
}

/// Where a spec tool comes from, and what its spec says about it.
#[derive(Debug, Clone, Serialize)]
pub struct OperationInfo {
    pub operation_id: Option<String>,
    pub spec: String,
    pub method: String,
    pub path: String,
    /// The spec's security requirements: shown, never used as grants.
    pub security: Vec<String>,
    pub deprecated: bool,
    /// `validate: request` applies.
    pub validate: bool,
}

/// The listing fields of a classified tool.
pub fn tool_entry(
    snap: &Snapshot,
    tool: &crate::classify::Tool,
    m: crate::canon::Method,
    posture: &str,
) -> ToolEntry {
    let op = tool.op.as_deref();
    ToolEntry {
        tool: tool.name.to_string(),
        method: m.as_str().into(),
        template: tool.template.to_string(),
        risk: tool.risk.to_string(),
        posture: posture.into(),
        source: tool.source.as_str(),
        description: tooltable::description(snap, tool),
        input_schema: match op {
            Some(op) => op.input.to_value(),
            None => crate::openapi::template_schema(&tool.template, m),
        },
        output_schema: op.and_then(|op| op.output.as_ref().map(|s| s.to_value())),
        annotations: crate::openapi::annotations(m, tool.risk),
        operation: op.map(|op| OperationInfo {
            operation_id: op.source.operation_id.clone(),
            spec: op.source.spec.shown.clone(),
            method: op.source.method.as_str().into(),
            path: op.path.clone(),
            security: op.security.clone(),
            deprecated: op.deprecated,
            validate: op.validate,
        }),
    }
}

pub fn agent_tools(
    snap: &Snapshot,
    agent: &Agent,
    narrowing: &Narrowing,
    switches: &Switches,
) -> Vec<ToolEntry> {
    let mut out: Vec<ToolEntry> = Vec::new();
    for row in tooltable::rows(snap) {
        let Ok(tool) = snap.classifier.classify(
            crate::canon::Method::parse(&row.method).unwrap_or(crate::canon::Method::Get),
            &tooltable::sample_path(&row.template),
        ) else {
            continue;
        };
        let path = tooltable::sample_path(&row.template);
        // A conditional entry is listed as it may hold: granted, parked, not denied.
        let listing = crate::conditions::Evaluated::listing(&agent.profile);
        let d = decide(&Input {
            agent,
            narrowing,
            tool: &tool,
            path: &path,
            switches,
            approved: false,
            evaluated: &listing,
        });
        let posture = match d {
            Decision::Allow { .. } => "allow",
            Decision::Park { .. } => "approval",
            Decision::Deny { .. } => continue,
        };
        let m = crate::canon::Method::parse(&row.method).unwrap_or(crate::canon::Method::Get);
        let mut entry = tool_entry(snap, &tool, m, posture);
        entry.template = row.template;
        out.push(entry);
    }
    out
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyCase {
    #[serde(default)]
    pub name: Option<String>,
    pub agent: String,
    pub request: String,
    pub expect: String,
    #[serde(default)]
    pub reason: Option<String>,
    /// The request's JSON body, written as YAML (`body: { amount: 50 }`).
    #[serde(default)]
    pub body: Option<serde_json::Value>,
    /// Or the file holding the body (sent as JSON), relative to the test file.
    #[serde(default)]
    pub body_file: Option<String>,
    /// The condition expected to decide (`request.body.amount > 100`).
    #[serde(default)]
    pub condition: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum PolicyFile {
    List(Vec<PolicyCase>),
    Doc(PolicyDoc),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyDoc {
    tests: Vec<PolicyCase>,
}

pub fn parse_cases(file: &str, text: &str) -> Result<Vec<PolicyCase>, String> {
    match serde_yaml::from_str::<PolicyFile>(text) {
        Ok(PolicyFile::List(v)) | Ok(PolicyFile::Doc(PolicyDoc { tests: v })) => Ok(v),
        Err(_) => {
            // Re-parse strictly for a precise message.
            serde_yaml::from_str::<Vec<PolicyCase>>(text).map_err(|e| format!("{file}: {e}"))?;
            Err(format!("{file}: expected a list of cases or `tests:`"))
        }
    }
}

/// Runs policy cases (`dir`: where `body_file`s are found); returns the report and
/// whether all passed.
pub fn run_cases(snap: &Snapshot, cases: &[PolicyCase], dir: &std::path::Path) -> (String, bool) {
    let mut out = String::new();
    let mut failed = 0;
    for (i, c) in cases.iter().enumerate() {
        let label = c
            .name
            .clone()
            .unwrap_or_else(|| format!("#{} {} {}", i + 1, c.agent, c.request));
        let body = match (&c.body, &c.body_file) {
            (Some(_), Some(_)) => Err("give `body` or `body_file`, not both".to_string()),
            (Some(v), None) => Ok(Some(json_body(serde_json::to_vec(v).unwrap_or_default()))),
            (None, Some(f)) => std::fs::read(dir.join(f))
                .map(|b| Some(json_body(b)))
                .map_err(|e| format!("body_file `{f}`: {e}")),
            (None, None) => Ok(None),
        };
        let got = match (c.request.trim().split_once(' '), body) {
            (_, Err(e)) => Err(e),
            (Some((m, p)), Ok(body)) => explain_with(
                snap,
                &Switches::default(),
                &c.agent,
                m.trim(),
                p.trim(),
                body.as_ref(),
            )
            .map_err(|e| e.to_string()),
            (None, _) => Err(format!("`{}`: expected `METHOD /path`", c.request)),
        };
        let ok = match &got {
            Ok(e) => {
                e.decision == c.expect
                    && c.reason.as_ref().is_none_or(|r| *r == e.reason)
                    && c.condition
                        .as_ref()
                        .is_none_or(|w| Some(w) == e.condition.as_ref())
            }
            Err(_) => false,
        };
        if ok {
            out.push_str(&format!("ok    {label}\n"));
        } else {
            failed += 1;
            out.push_str(&format!("FAIL  {label}\n"));
            let mut want = match &c.reason {
                Some(r) => format!("{} ({r})", c.expect),
                None => c.expect.clone(),
            };
            if let Some(w) = &c.condition {
                want.push_str(&format!(" when `{w}`"));
            }
            out.push_str(&format!("  - expected: {want}\n"));
            match got {
                Ok(e) => out.push_str(&format!(
                    "  + got:      {} ({}){} — tool {}, risk {}: {}\n",
                    e.decision,
                    e.reason,
                    e.condition
                        .as_ref()
                        .map(|w| format!(" when `{w}`"))
                        .unwrap_or_default(),
                    e.tool.unwrap_or_default(),
                    e.risk.unwrap_or_default(),
                    e.detail
                )),
                Err(e) => out.push_str(&format!("  + error:    {e}\n")),
            }
        }
    }
    out.push_str(&format!(
        "{} passed, {} failed\n",
        cases.len() - failed,
        failed
    ));
    (out, failed == 0)
}
