//! The one path from a canonical request to a decision: classify → route checks →
//! conditions → `decide`. The proxy calls [`classify`] then [`decide_for`], reading the
//! body between the two when a condition needs it; `explain` calls [`judge`], which
//! runs the same two steps, so a dry run cannot drift from what the proxy does.

use crate::canon::{Canonical, Method};
use crate::classify::{Tool, Unclassified};
use crate::conditions::{self, body::Read, context::Facts, Evaluated};
use crate::config::Snapshot;
use crate::error::{Denial, Error};
use crate::policy::{decide, Agent, Decision, Input, Narrowing, Switches};

/// What a request was judged as.
pub struct Judged {
    /// The tool, with the risk and name its `when_risk` conditions gave it.
    pub tool: Tool,
    pub decision: Decision,
    /// The conditions evaluated, with their outcomes.
    pub evaluated: Evaluated,
}

/// A policy refusal for `tool` (none when the path could not be classified).
pub fn denial(snap: &Snapshot, reason: &'static str, detail: String, tool: Option<&Tool>) -> Error {
    denial_by(snap, reason, detail, tool, None)
}

/// A policy refusal that names the condition that decided it.
pub fn denial_by(
    snap: &Snapshot,
    reason: &'static str,
    detail: String,
    tool: Option<&Tool>,
    condition: Option<std::sync::Arc<str>>,
) -> Error {
    Error::Denied(Box::new(Denial {
        reason,
        detail,
        tool: tool.map(|t| t.name.clone()),
        risk: tool.map(|t| t.risk),
        policy_version: snap.policy_version.clone(),
        condition,
    }))
}

/// Whether a method takes no body unless a route opts in (`allow_body_on`).
pub fn bodiless(m: Method) -> bool {
    matches!(
        m,
        Method::Get | Method::Head | Method::Options | Method::Delete
    )
}

/// Judges a canonical request for `agent`: [`classify`], then [`decide_all`] with the
/// body given (`None`: none was read); a deny is in the [`Judged`].
#[allow(clippy::too_many_arguments)]
pub fn judge(
    snap: &Snapshot,
    agent: &Agent,
    narrowing: &Narrowing,
    switches: &Switches,
    c: &Canonical,
    headers: &http::HeaderMap,
    body: Option<&Read>,
    carries_body: bool,
    classified: &mut dyn FnMut(Option<&Tool>) -> Result<(), Error>,
) -> Result<Judged, Error> {
    let tool = classify(snap, c, carries_body, classified)?;
    decide_all(snap, agent, narrowing, switches, c, headers, body, tool)
}

/// Classifies a canonical request and applies the route's checks. `carries_body`: the
/// request has a body. `classified` runs once the request has a tool (or failed to get
/// one) and may refuse it — the proxy counts the agent's rate there; a dry run passes a
/// no-op.
pub fn classify(
    snap: &Snapshot,
    c: &Canonical,
    carries_body: bool,
    classified: &mut dyn FnMut(Option<&Tool>) -> Result<(), Error>,
) -> Result<Tool, Error> {
    let tool = match snap.classifier.classify(c.method, &c.path) {
        Ok(t) => t,
        Err(u) => {
            classified(None)?;
            return Err(match u {
                Unclassified::NoRoute => denial(
                    snap,
                    "no_route",
                    format!("no route serves `{}`", c.path),
                    None,
                ),
                Unclassified::UnknownPath(r) => denial(
                    snap,
                    "unknown_path",
                    format!(
                        "`{}` is not a known path of route `{}`",
                        c.path, snap.routes[r].prefix
                    ),
                    None,
                ),
            });
        }
    };
    classified(Some(&tool))?;
    let route = &snap.routes[tool.route];
    if c.encoded_slash && !route.allow_encoded_slash {
        return Err(Error::BadRequest {
            reason: "encoded_slash",
            detail: "an encoded `/` is not accepted on this route".into(),
        });
    }
    if carries_body && bodiless(c.method) && !route.allow_body_on.contains(&c.method) {
        return Err(Error::BadRequest {
            reason: "body_not_allowed",
            detail: format!(
                "a body on {} is not accepted on this route (allow_body_on)",
                c.method
            ),
        });
    }
    Ok(tool)
}

/// [`decide_all`], with a denial as the error the proxy answers.
#[allow(clippy::too_many_arguments)]
pub fn decide_for(
    snap: &Snapshot,
    agent: &Agent,
    narrowing: &Narrowing,
    switches: &Switches,
    c: &Canonical,
    headers: &http::HeaderMap,
    body: Option<&Read>,
    tool: Tool,
) -> Result<Judged, Error> {
    let j = decide_all(snap, agent, narrowing, switches, c, headers, body, tool)?;
    if let Decision::Deny {
        reason,
        detail,
        condition,
    } = j.decision
    {
        return Err(denial_by(snap, reason, detail, Some(&j.tool), condition));
    }
    Ok(j)
}

/// Evaluates the conditions that can apply to `tool` for `agent` (none: nothing is
/// built), then decides; a deny is in the [`Judged`]. `body`: the body as read, when a
/// condition reads it; one it cannot read is the error `uninspectable_body`.
#[allow(clippy::too_many_arguments)]
pub fn decide_all(
    snap: &Snapshot,
    agent: &Agent,
    narrowing: &Narrowing,
    switches: &Switches,
    c: &Canonical,
    headers: &http::HeaderMap,
    body: Option<&Read>,
    mut tool: Tool,
) -> Result<Judged, Error> {
    let facts = Facts {
        c,
        headers,
        upstream: &snap.upstreams[snap.routes[tool.route].upstream],
        body,
    };
    let evaluated = match conditions::eval::evaluate(agent, &mut tool, &facts) {
        Ok(e) => e,
        Err(conditions::eval::Uninspectable(detail)) => {
            return Err(denial(snap, "uninspectable_body", detail, Some(&tool)))
        }
    };
    let decision = decide(&Input {
        agent,
        narrowing,
        tool: &tool,
        path: &c.path,
        switches,
        approved: false,
        evaluated: &evaluated,
    });
    Ok(Judged {
        tool,
        decision,
        evaluated,
    })
}
