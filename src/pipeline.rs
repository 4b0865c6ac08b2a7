//! The one path from a canonical request to a decision: classify → route checks →
//! `decide`. The proxy and `explain` both call [`judge`], so a dry run cannot drift from
//! what the proxy does.

use crate::canon::{Canonical, Method};
use crate::classify::{Tool, Unclassified};
use crate::config::Snapshot;
use crate::error::{Denial, Error};
use crate::policy::{decide, Agent, Decision, Input, Narrowing, Switches};

/// What a request was judged as.
pub struct Judged {
    pub tool: Tool,
    pub decision: Decision,
}

/// A policy refusal for `tool` (none when the path could not be classified).
pub fn denial(snap: &Snapshot, reason: &'static str, detail: String, tool: Option<&Tool>) -> Error {
    Error::Denied(Box::new(Denial {
        reason,
        detail,
        tool: tool.map(|t| t.name.clone()),
        risk: tool.map(|t| t.risk),
        policy_version: snap.policy_version.clone(),
    }))
}

/// Whether a method takes no body unless a route opts in (`allow_body_on`).
pub fn bodiless(m: Method) -> bool {
    matches!(
        m,
        Method::Get | Method::Head | Method::Options | Method::Delete
    )
}

/// Judges a canonical request for `agent`. `carries_body`: the request has a body.
/// `classified` runs once the request has a tool (or failed to get one) and may refuse
/// it — the proxy counts the agent's rate there; a dry run passes a no-op.
pub fn judge(
    snap: &Snapshot,
    agent: &Agent,
    narrowing: &Narrowing,
    switches: &Switches,
    c: &Canonical,
    carries_body: bool,
    classified: &mut dyn FnMut(Option<&Tool>) -> Result<(), Error>,
) -> Result<Judged, Error> {
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
    let decision = decide(&Input {
        agent,
        narrowing,
        tool: &tool,
        path: &c.path,
        switches,
        approved: false,
    });
    if let Decision::Deny { reason, detail } = decision {
        return Err(denial(snap, reason, detail, Some(&tool)));
    }
    Ok(Judged { tool, decision })
}
