//! Evaluating the conditions that can apply to one request: the matched override's
//! `when_risk` entries (first that holds sets the risk and name), then the profile's
//! conditional entries for the tool's names. A condition that fails at run time (a
//! missing field, a wrong type) has the safe side as its outcome — `decide` reads a
//! failed grant as not granting and a failed deny or approval as holding — and the
//! failure is kept for the reason detail. Error texts name types and keys, never a
//! value from the request.

use super::body::{self, Read};
use super::compile::{self, Condition, Needs};
use super::context::{self, Facts};
use crate::classify::Tool;
use crate::policy::{Agent, CondEntry};
use cel::{ExecutionError, Value};
use std::sync::Arc;

/// What one condition came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Holds(bool),
    /// It could not be evaluated; why (no value from the request in it).
    Failed(String),
}

/// The conditions evaluated for one request.
#[derive(Debug, Clone, Default)]
pub struct Evaluated {
    /// One per conditional entry of the agent's profile (same order); `None` for an
    /// entry none of the tool's names matches (it was not evaluated).
    pub entries: Vec<Option<Outcome>>,
    /// Every condition evaluated, in order, with its outcome (`explain` prints them).
    pub trail: Vec<(Arc<str>, Outcome)>,
}

impl Evaluated {
    /// For listings (MCP `tools/list`, `check`'s table): every conditional entry as it
    /// may hold — a conditional grant grants, a conditional approval parks, a
    /// conditional deny does not deny.
    pub fn listing(p: &crate::policy::Profile) -> Evaluated {
        Evaluated {
            entries: p
                .conditional
                .iter()
                .map(|e| Some(Outcome::Holds(e.list != crate::policy::List::Deny)))
                .collect(),
            trail: Vec::new(),
        }
    }
    /// The outcome of conditional entry `i`.
    pub fn entry(&self, i: usize) -> Option<&Outcome> {
        self.entries.get(i).and_then(Option::as_ref)
    }
}

/// The profile's conditional entries that can apply to `names`.
fn applicable<'a>(
    agent: &'a Agent,
    names: &'a [&'a str],
) -> impl Iterator<Item = (usize, &'a CondEntry)> + 'a {
    agent
        .profile
        .conditional
        .iter()
        .enumerate()
        .filter(move |(_, e)| names.iter().any(|n| e.glob.matches(n)))
}

/// Every name the request can go by: its names and the ones a `when_risk` entry gives.
fn names_of(tool: &Tool) -> Vec<&str> {
    let mut n: Vec<&str> = tool.names().collect();
    if let Some(w) = &tool.when_risk {
        n.extend(w.iter().filter_map(|w| w.name.as_deref()));
    }
    n
}

/// What the conditions that can apply to `tool` for `agent` read; `None` when none can
/// (the request then costs nothing more: no body is read, nothing is built).
pub fn needs(agent: &Agent, tool: &Tool) -> Option<Needs> {
    if tool.when_risk.is_none() && agent.profile.conditional.is_empty() {
        return None;
    }
    let names = names_of(tool);
    let mut any = false;
    let mut n = Needs::default();
    for w in tool.when_risk.iter().flat_map(|w| w.iter()) {
        any = true;
        n = n.union(w.when.needs);
    }
    for (_, e) in applicable(agent, &names) {
        any = true;
        n = n.union(e.when.needs);
    }
    any.then_some(n)
}

/// The top-level body keys the applicable conditions read; `None`: the whole body.
fn body_keys<'a>(agent: &'a Agent, tool: &'a Tool) -> Option<Vec<&'a str>> {
    let names = names_of(tool);
    let entries: Vec<&'a CondEntry> = agent
        .profile
        .conditional
        .iter()
        .filter(|e| names.iter().any(|n| e.glob.matches(n)))
        .collect();
    let conds = tool
        .when_risk
        .iter()
        .flat_map(|w| w.iter().map(|w| &*w.when))
        .chain(entries.into_iter().map(|e| &*e.when));
    let mut out: Vec<&str> = Vec::new();
    for c in conds.filter(|c| c.needs.body) {
        out.extend(c.body_keys.as_ref()?.iter().map(String::as_str));
    }
    Some(out)
}

/// A body that a condition needs but that cannot be read as one JSON object.
#[derive(Debug)]
pub struct Uninspectable(pub String);

/// Evaluates the conditions that can apply: `tool` takes the risk and name of the
/// first `when_risk` entry that holds (its `condition` names it).
pub fn evaluate(agent: &Agent, tool: &mut Tool, f: &Facts) -> Result<Evaluated, Uninspectable> {
    let Some(needs) = needs(agent, tool) else {
        return Ok(Evaluated::default());
    };
    let parsed = match (needs.body, f.body) {
        (true, Some(Read::Bytes { bytes, json: true })) => {
            let keys = body_keys(agent, tool);
            Some(body::parse_object(bytes, keys.as_deref()).map_err(|e| {
                Uninspectable(format!("the body cannot be read as one JSON object: {e}"))
            })?)
        }
        (true, Some(Read::Bytes { json: false, .. })) => {
            return Err(Uninspectable(
                "a condition reads the body, and it is not sent as JSON (Content-Type)".into(),
            ))
        }
        _ => None,
    };
    let template = tool.template.clone();
    let mut ctx = cel::Context::with_env(compile::env().clone());
    ctx.add_variable_as_val("request", context::request(f, &template, needs, parsed));
    ctx.add_variable_as_val("agent", context::agent(agent));
    let mut out = Evaluated::default();
    if let Some(ws) = tool.when_risk.clone() {
        ctx.add_variable_as_val("tool", context::tool(&tool.name, tool.risk));
        for w in ws.iter() {
            let o = run(&w.when, &ctx);
            let applies = match &o {
                Outcome::Holds(b) => *b,
                Outcome::Failed(_) => w.raises,
            };
            out.trail.push((w.when.text.clone(), o));
            if applies {
                tool.risk = w.risk;
                if let Some(n) = &w.name {
                    tool.name = n.clone();
                }
                tool.condition = Some(w.when.text.clone());
                break;
            }
        }
    }
    if agent.profile.conditional.is_empty() {
        return Ok(out);
    }
    ctx.add_variable_as_val("tool", context::tool(&tool.name, tool.risk));
    let names: Vec<&str> = tool.names().collect();
    out.entries = vec![None; agent.profile.conditional.len()];
    for (i, e) in applicable(agent, &names) {
        let o = run(&e.when, &ctx);
        out.trail.push((e.when.text.clone(), o.clone()));
        out.entries[i] = Some(o);
    }
    Ok(out)
}

/// Runs one condition.
pub fn run(c: &Condition, ctx: &cel::Context) -> Outcome {
    match c.program().execute(ctx) {
        Ok(Value::Bool(b)) => Outcome::Holds(b),
        Ok(v) => Outcome::Failed(format!("it gave a {}, not true or false", v.type_of())),
        Err(e) => Outcome::Failed(describe(&e)),
    }
}

/// An execution error in words that carry no value from the request.
fn describe(e: &ExecutionError) -> String {
    match e {
        ExecutionError::NoSuchKey(k) => format!("no such key `{k}`"),
        ExecutionError::NoSuchOverload(o) => o.to_string(),
        ExecutionError::UnexpectedType { got, want } => {
            format!("a value of type {got} where {want} was expected")
        }
        ExecutionError::UndeclaredReference(r) => format!("undeclared reference `{r}`"),
        ExecutionError::ValuesNotComparable(a, b) => format!(
            "a {} cannot be compared with a {}",
            a.type_of(),
            b.type_of()
        ),
        ExecutionError::UnsupportedBinaryOperator(op, a, b) => format!(
            "`{op}` does not apply to a {} and a {}",
            a.type_of(),
            b.type_of()
        ),
        ExecutionError::DivisionByZero(_) => "division by zero".into(),
        ExecutionError::RemainderByZero(_) => "remainder by zero".into(),
        ExecutionError::Overflow(op, ..) => format!("overflow in `{op}`"),
        ExecutionError::IndexOutOfBounds(_) => "index out of bounds".into(),
        ExecutionError::UnsupportedIndex(..) | ExecutionError::UnsupportedKeyType(_) => {
            "a value that cannot index this list or map".into()
        }
        ExecutionError::InvalidArgumentCount { expected, actual } => {
            format!("{actual} arguments where {expected} were expected")
        }
        ExecutionError::FunctionError { function, .. } => format!("`{function}` failed"),
        _ => "the condition could not be evaluated".into(),
    }
}
