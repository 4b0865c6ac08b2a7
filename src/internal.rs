//! `/_portcullis/…` on the agent port: matched before any route, needs an agent
//! credential, never forwarded.

use crate::app::{App, Live};
use crate::body::Body;
use crate::canon::{Canonical, Method};
use crate::error::Error;
use crate::explain;
use crate::identity::Identity;
use http::{Response, StatusCode};

pub async fn handle(
    app: &App,
    live: &Live,
    who: &Identity,
    c: &Canonical,
) -> Result<Response<Body>, Error> {
    match (c.method, c.path.as_str()) {
        (Method::Get, "/_portcullis/tools") => {
            let switches = app.switches.current(&app.store).await?;
            let tools =
                explain::agent_tools(&live.snap, &who.agent, &who.token.narrowing, &switches);
            Ok(crate::proxy::json(
                StatusCode::OK,
                serde_json::json!({"agent": who.agent.id, "policy_version": &*live.snap.policy_version, "tools": tools}),
            ))
        }
        _ => Err(Error::NotFound),
    }
}
